//! Validation against the CRDs' own schemas (`crds/`): Gateway API 1.6.1's, Standard and
//! Experimental channels, and Istio's networking CRDs. An object is checked against the
//! `openAPIV3Schema` of the version its `apiVersion` names, in every channel that serves that
//! version; a version no channel serves is an error. Fields the schema does not name are
//! errors too (an API server prunes them, or with `--validate=strict` refuses them), unless
//! the schema keeps unknown fields. Not evaluated: the CEL rules (`x-kubernetes-validations`),
//! which the typed cross-checks cover where the walkthroughs rely on them.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;

use serde_json::Value;

/// A CRD version's schema in one channel.
struct Served {
    channel: &'static str,
    schema: Value,
}

/// (apiVersion, kind) -> the schemas of every channel that serves it.
type Schemas = BTreeMap<(String, String), Vec<Served>>;

fn crds_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("crds")
}

/// Marks every object schema that lists its properties as closed to others.
fn strict(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            let closed = map.contains_key("properties")
                && !map.contains_key("additionalProperties")
                && map.get("x-kubernetes-preserve-unknown-fields") != Some(&Value::Bool(true));
            if closed {
                map.insert("additionalProperties".into(), Value::Bool(false));
            }
            for v in map.values_mut() {
                strict(v);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(strict),
        _ => {}
    }
}

fn load() -> Schemas {
    let mut schemas = Schemas::new();
    let gateway = crds_dir().join("gateway-api-v1.6.1");
    for channel in ["standard", "experimental"] {
        let dir = gateway.join(channel);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .flatten()
            .map(|e| e.path())
            .collect();
        files.sort();
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            let crd: Value =
                serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            let group = crd["spec"]["group"].as_str().unwrap_or_default();
            let kind = crd["spec"]["names"]["kind"].as_str().unwrap_or_default();
            for v in crd["spec"]["versions"].as_array().into_iter().flatten() {
                if v["served"] != Value::Bool(true) {
                    continue;
                }
                let mut schema = v["schema"]["openAPIV3Schema"].clone();
                strict(&mut schema);
                let key = (
                    format!("{group}/{}", v["name"].as_str().unwrap_or_default()),
                    kind.to_string(),
                );
                schemas.entry(key).or_default().push(Served {
                    channel: if channel == "standard" {
                        "Standard"
                    } else {
                        "Experimental"
                    },
                    schema,
                });
            }
        }
    }
    let istio = crds_dir().join("istio-networking-crds.json");
    let istio: Value = serde_json::from_str(&std::fs::read_to_string(&istio).unwrap()).unwrap();
    for (key, schema) in istio["schemas"].as_object().into_iter().flatten() {
        let Some((api, kind)) = key.rsplit_once('/') else {
            continue;
        };
        let mut schema = schema.clone();
        // Istio's generated schemas describe `spec` and `status` only; the rest of an object
        // is every custom resource's.
        if let Some(props) = schema["properties"].as_object_mut() {
            props.insert("apiVersion".into(), serde_json::json!({"type": "string"}));
            props.insert("kind".into(), serde_json::json!({"type": "string"}));
            props.insert("metadata".into(), serde_json::json!({"type": "object"}));
        }
        strict(&mut schema);
        schemas
            .entry((api.to_string(), kind.to_string()))
            .or_default()
            .push(Served {
                channel: "Istio",
                schema,
            });
    }
    schemas
}

fn schemas() -> &'static Schemas {
    static SCHEMAS: OnceLock<Schemas> = OnceLock::new();
    SCHEMAS.get_or_init(load)
}

/// Whether the CRDs here cover `api_version` (its group is Gateway API's or Istio's).
pub fn covers(api_version: &str) -> bool {
    api_version.starts_with("gateway.networking.k8s.io/")
        || api_version.starts_with("networking.istio.io/")
}

/// The channels that serve `api_version`/`kind` (`Standard`, `Experimental`, `Istio`).
pub fn channels(api_version: &str, kind: &str) -> Vec<&'static str> {
    schemas()
        .get(&(api_version.to_string(), kind.to_string()))
        .map(|s| s.iter().map(|s| s.channel).collect())
        .unwrap_or_default()
}

/// Validates `doc` against the schema of its version in every channel that serves it;
/// every problem, naming the channel and the field.
pub fn validate(doc: &Value) -> Vec<String> {
    let api = doc["apiVersion"].as_str().unwrap_or_default();
    let kind = doc["kind"].as_str().unwrap_or_default();
    let Some(served) = schemas().get(&(api.to_string(), kind.to_string())) else {
        return vec![format!(
            "{api} {kind} is served by no channel of Gateway API 1.6.1 (nor by Istio's CRDs)"
        )];
    };
    let mut problems = Vec::new();
    for s in served {
        let validator = jsonschema::draft4::new(&s.schema)
            .unwrap_or_else(|e| panic!("the {} schema of {api} {kind}: {e}", s.channel));
        for e in validator.iter_errors(doc) {
            let at = e.instance_path().to_string();
            problems.push(format!(
                "{api} {kind} ({} channel): {}: {e}",
                s.channel,
                if at.is_empty() { "/" } else { &at }
            ));
        }
    }
    problems
}
