//! Rendering a kustomization with the real kustomize: `kubectl kustomize DIR`, from the pinned
//! kubectl that `make kubectl` installs (its path in `KUBECTL`). Whatever kubectl refuses (a
//! duplicate resource, a file outside the kustomization's root, a patch that misses) fails
//! here as it would fail `kubectl apply -k`, with kubectl's own message.

use std::path::Path;
use std::process::Command;

use crate::Doc;

/// The kubectl to render with (`KUBECTL`); panics with what to run when it is not there, so
/// that no check passes without the real renderer.
pub fn kubectl() -> String {
    let path = std::env::var("KUBECTL")
        .unwrap_or_else(|_| panic!("KUBECTL is not set: run `make manifests` (or `make test`)"));
    assert!(
        Path::new(&path).is_file(),
        "KUBECTL={path} does not exist: run `make kubectl`"
    );
    path
}

/// Renders the kustomization in `dir` into its documents, as `kubectl apply -k` would send
/// them; an error is kubectl's message, naming the directory.
pub fn render(dir: &Path) -> Result<Vec<Doc>, String> {
    let out = Command::new(kubectl())
        .arg("kustomize")
        .arg(dir)
        .output()
        .map_err(|e| format!("{}: cannot run kubectl: {e}", dir.display()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!(
            "{}: kubectl kustomize: {}",
            dir.display(),
            err.trim()
        ));
    }
    let text = String::from_utf8(out.stdout).map_err(|_| {
        format!(
            "{}: kubectl printed something that is not UTF-8",
            dir.display()
        )
    })?;
    let mut docs = Vec::new();
    for de in serde_yaml::Deserializer::from_str(&text) {
        let value: serde_yaml::Value = serde::Deserialize::deserialize(de)
            .map_err(|e| format!("{}: kubectl's output: {e}", dir.display()))?;
        if !matches!(value, serde_yaml::Value::Null) {
            docs.push(Doc {
                file: dir.to_path_buf(),
                value,
            });
        }
    }
    Ok(docs)
}

/// Every kustomization under `root` that can be applied on its own (`kind: Kustomization`,
/// not a component), in path order.
pub fn kustomizations(root: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() && path.file_name().is_some_and(|n| n != "check") {
                stack.push(path);
            }
        }
        let file = dir.join("kustomization.yaml");
        if let Ok(text) = std::fs::read_to_string(&file) {
            if !text.lines().any(|l| l.trim() == "kind: Component") {
                out.push(dir);
            }
        }
    }
    out.sort();
    out
}
