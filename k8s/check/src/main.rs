//! `make manifests`: renders every kustomization under `k8s/` with the real kubectl, validates
//! the objects against their CRD schemas, parses them strictly and cross-checks each set.
//! Prints one line per kustomization and every problem; exits 1 when there is any.

use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let root = root.canonicalize().unwrap_or(root);
    let mut failed = 0;
    for dir in tcp_echo_k8s::render::kustomizations(&root) {
        let shown = dir
            .strip_prefix(&root)
            .unwrap_or(&dir)
            .display()
            .to_string();
        let shown = if shown.is_empty() {
            ".".to_string()
        } else {
            shown
        };
        match tcp_echo_k8s::check(&dir) {
            Ok(set) => println!(
                "ok      k8s/{shown}: {} objects",
                set.deployments.len()
                    + set.services.len()
                    + set.service_accounts.len()
                    + set.gateways.len()
                    + set.virtual_services.len()
                    + set.destination_rules.len()
                    + set.api_gateways.len()
                    + set.tcp_routes.len()
                    + set.tls_routes.len()
                    + set.udp_routes.len()
            ),
            Err(problems) => {
                failed += 1;
                println!("FAILED  k8s/{shown}:");
                for p in problems {
                    println!("        {p}");
                }
            }
        }
    }
    if failed > 0 {
        eprintln!("make manifests: {failed} kustomizations have problems");
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
