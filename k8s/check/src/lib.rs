//! Checks tcp-echo's manifests (`k8s/`) as strictly as an API server would, cross-checks them as
//! a set, and derives from them the routing that the local Envoy rehearsal reproduces.
//!
//! * [`build`] renders a kustomization with the real kustomize (`kubectl kustomize`, pinned,
//!   installed by `make kubectl`): what a cluster would get, not an imitation of it.
//! * [`schema::validate`] checks Gateway API and Istio objects against their CRDs' own schemas
//!   (Gateway API 1.6.1, both channels; Istio's networking CRDs), for the version they name.
//! * [`parse`] turns each document into its typed model: `k8s-openapi` for the core kinds and
//!   `kcr_networking_istio_io` for Istio's. Through `serde_ignored`, a field the model does not
//!   know (unknown or misspelt) is an error, as are a wrong type and a missing required field.
//! * [`cross_check`] checks what only the set shows: selectors, ports, subsets, gateways,
//!   weights, the grace period.
//! * [`routes`] derives, per gateway port, the weighted backends, with each backend's
//!   container settings: what the Envoy rehearsal starts and configures.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, PodTemplateSpec, Service, ServiceAccount};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kcr_networking_istio_io::v1::destinationrules::DestinationRule;
use kcr_networking_istio_io::v1::gateways::Gateway;
use kcr_networking_istio_io::v1::virtualservices::VirtualService;

/// Gateway API's TCPRoute (v1 and v1alpha2 have the same schema).
pub use gateway_api::apis::experimental::tcproutes::TCPRoute;
/// Gateway API's UDPRoute (v1 and v1alpha2 have the same schema).
pub use gateway_api::apis::experimental::udproutes::UDPRoute;
/// Gateway API's Gateway (`gateway.networking.k8s.io/v1`).
pub use gateway_api::apis::standard::gateways::Gateway as ApiGateway;
/// Gateway API's TLSRoute (`gateway.networking.k8s.io/v1`).
pub use gateway_api::apis::standard::tlsroutes::TLSRoute;

/// The API group of Gateway API kinds.
pub(crate) const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

/// The `gatewayClassName` the TCP and TLS walkthroughs are written for.
pub const GATEWAY_CLASS: &str = "istio";

/// The `gatewayClassName` of the UDP walkthroughs: Istio's gateways route no UDP, so they are
/// written for Envoy Gateway (the class its quickstart installs).
pub const UDP_GATEWAY_CLASS: &str = "eg";

/// The shortest shutdown delay a Deployment may set: Kubernetes takes a terminating pod out
/// of the endpoints asynchronously (the endpoints controller, then kube-proxy or the mesh's
/// EDS), which takes seconds.
pub const MIN_SHUTDOWN_DELAY: std::time::Duration = std::time::Duration::from_secs(3);

/// One YAML document and the file it came from.
#[derive(Debug, Clone)]
pub struct Doc {
    /// The file.
    pub file: PathBuf,
    /// The document.
    pub value: serde_yaml::Value,
}

impl Doc {
    fn str_at(&self, key: &str) -> &str {
        self.value.get(key).and_then(|v| v.as_str()).unwrap_or("")
    }

    /// `kind/name` (for messages).
    pub fn label(&self) -> String {
        let name = self
            .value
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(|n| n.as_str())
            .unwrap_or("?");
        format!("{}/{} ({})", self.str_at("kind"), name, self.file.display())
    }
}

pub mod render;
mod routing;
pub mod schema;

pub use routing::{routes, Protocol, Route};

/// Renders the kustomization in `dir` with the real kustomize (see [`render::render`]).
pub fn build(dir: &Path) -> Result<Vec<Doc>, String> {
    render::render(dir)
}

/// A document, typed.
#[derive(Debug, Clone)]
pub enum Object {
    /// `v1/ServiceAccount`
    ServiceAccount(Box<ServiceAccount>),
    /// `apps/v1/Deployment`
    Deployment(Box<Deployment>),
    /// `v1/Service`
    Service(Box<Service>),
    /// `networking.istio.io/v1/Gateway`
    Gateway(Box<Gateway>),
    /// `networking.istio.io/v1/VirtualService`
    VirtualService(Box<VirtualService>),
    /// `networking.istio.io/v1/DestinationRule`
    DestinationRule(Box<DestinationRule>),
    /// `gateway.networking.k8s.io/v1/Gateway`
    ApiGateway(Box<ApiGateway>),
    /// `gateway.networking.k8s.io/v1/TCPRoute` (or `v1alpha2`)
    TcpRoute(Box<TCPRoute>),
    /// `gateway.networking.k8s.io/v1/TLSRoute`
    TlsRoute(Box<TLSRoute>),
    /// `gateway.networking.k8s.io/v1/UDPRoute` (or `v1alpha2`)
    UdpRoute(Box<UDPRoute>),
}

/// Deserializes `value` into `T`, failing on any field `T` does not know.
pub fn strict<T: serde::de::DeserializeOwned>(value: &serde_yaml::Value) -> Result<T, Vec<String>> {
    strict_except::<T>(value, &[])
}

/// [`strict`], except for the top-level fields in `allowed`: kube's derived custom-resource
/// types do not model `apiVersion` and `kind` (checked by [`parse`] before it gets here).
fn strict_except<T: serde::de::DeserializeOwned>(
    value: &serde_yaml::Value,
    allowed: &[&str],
) -> Result<T, Vec<String>> {
    let mut unknown = Vec::new();
    let parsed: Result<T, _> = serde_ignored::deserialize(value.clone(), |path| {
        // serde_ignored writes `?` for each Option on the way; a reader wants the YAML path.
        let path = path
            .to_string()
            .split('.')
            .filter(|s| *s != "?")
            .collect::<Vec<_>>()
            .join(".");
        if !allowed.contains(&path.as_str()) {
            unknown.push(format!("unknown field `{path}`"));
        }
    });
    match parsed {
        Err(e) => {
            unknown.push(e.to_string());
            Err(unknown)
        }
        Ok(_) if !unknown.is_empty() => Err(unknown),
        Ok(v) => Ok(v),
    }
}

/// A core kind: [`strict`], plus the required fields its OpenAPI schema names (k8s-openapi
/// would otherwise default a missing one silently).
fn core<T: serde::de::DeserializeOwned + schemars::JsonSchema>(
    value: &serde_yaml::Value,
) -> Result<T, Vec<String>> {
    let root = schemars::SchemaGenerator::default().into_root_schema_for::<T>();
    let root = serde_json::to_value(&root).expect("schema as JSON");
    let json = serde_json::to_value(value).map_err(|e| vec![e.to_string()])?;
    let mut missing = Vec::new();
    missing_required(&root, &root, &json, "", &mut missing);
    match strict::<T>(value) {
        Ok(v) if missing.is_empty() => Ok(v),
        Ok(_) => Err(missing),
        Err(mut e) => {
            e.extend(missing);
            Err(e)
        }
    }
}

/// Walks `value` along `schema` (resolving `$ref`s in `root`), reporting every required field
/// that is absent.
fn missing_required(
    root: &serde_json::Value,
    schema: &serde_json::Value,
    value: &serde_json::Value,
    path: &str,
    out: &mut Vec<String>,
) {
    let mut schema = schema;
    while let Some(r) = schema.get("$ref").and_then(|r| r.as_str()) {
        let Some(target) = r.strip_prefix('#').and_then(|p| root.pointer(p)) else {
            return;
        };
        schema = target;
    }
    let at = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    match value {
        serde_json::Value::Object(map) => {
            for req in schema
                .get("required")
                .and_then(|r| r.as_array())
                .into_iter()
                .flatten()
            {
                let req = req.as_str().unwrap_or_default();
                if !map.contains_key(req) {
                    out.push(format!(
                        "missing field `{req}` at `{}`",
                        if path.is_empty() { "." } else { path }
                    ));
                }
            }
            let props = schema.get("properties").and_then(|p| p.as_object());
            let extra = schema.get("additionalProperties").filter(|a| a.is_object());
            for (k, v) in map {
                if let Some(sub) = props.and_then(|p| p.get(k)).or(extra) {
                    missing_required(root, sub, v, &at(k), out);
                }
            }
        }
        serde_json::Value::Array(items) => {
            if let Some(sub) = schema.get("items") {
                for (i, v) in items.iter().enumerate() {
                    missing_required(root, sub, v, &at(&i.to_string()), out);
                }
            }
        }
        _ => {}
    }
}

/// Top-level fields of custom resources (Istio's, Gateway API's) that kube's derived models
/// leave to [`parse`].
const KUBE_TOP: &[&str] = &["apiVersion", "kind"];

/// Parses one document into its typed model (see [`Object`]); unknown kinds are errors.
pub fn parse(doc: &Doc) -> Result<Object, Vec<String>> {
    let errors = |e: Vec<String>| {
        e.into_iter()
            .map(|m| format!("{}: {m}", doc.label()))
            .collect::<Vec<_>>()
    };
    let v = &doc.value;
    match (doc.str_at("apiVersion"), doc.str_at("kind")) {
        ("v1", "ServiceAccount") => core::<ServiceAccount>(v)
            .map(|o| Object::ServiceAccount(Box::new(o)))
            .map_err(errors),
        ("apps/v1", "Deployment") => core::<Deployment>(v)
            .map(|o| Object::Deployment(Box::new(o)))
            .map_err(errors),
        ("v1", "Service") => core::<Service>(v)
            .map(|o| Object::Service(Box::new(o)))
            .map_err(errors),
        ("networking.istio.io/v1", "Gateway") => strict_except(v, KUBE_TOP)
            .map(|o| Object::Gateway(Box::new(o)))
            .map_err(errors),
        ("networking.istio.io/v1", "VirtualService") => strict_except(v, KUBE_TOP)
            .map(|o| Object::VirtualService(Box::new(o)))
            .map_err(errors),
        ("networking.istio.io/v1", "DestinationRule") => strict_except(v, KUBE_TOP)
            .map(|o| Object::DestinationRule(Box::new(o)))
            .map_err(errors),
        ("gateway.networking.k8s.io/v1", "Gateway") => strict_except(v, KUBE_TOP)
            .map(|o| Object::ApiGateway(Box::new(o)))
            .map_err(errors),
        // v1 (Gateway API 1.6) has the same schema as v1alpha2.
        ("gateway.networking.k8s.io/v1alpha2" | "gateway.networking.k8s.io/v1", "TCPRoute") => {
            strict_except(v, KUBE_TOP)
                .map(|o| Object::TcpRoute(Box::new(o)))
                .map_err(errors)
        }
        ("gateway.networking.k8s.io/v1", "TLSRoute") => strict_except(v, KUBE_TOP)
            .map(|o| Object::TlsRoute(Box::new(o)))
            .map_err(errors),
        ("gateway.networking.k8s.io/v1alpha2" | "gateway.networking.k8s.io/v1", "UDPRoute") => {
            strict_except(v, KUBE_TOP)
                .map(|o| Object::UdpRoute(Box::new(o)))
                .map_err(errors)
        }
        (api, kind) => Err(vec![format!(
            "{}: unsupported apiVersion/kind {api}/{kind}",
            doc.label()
        )]),
    }
}

/// Every object of a kustomization, typed.
#[derive(Debug, Default, Clone)]
pub struct Set {
    /// ServiceAccounts.
    pub service_accounts: Vec<ServiceAccount>,
    /// Deployments.
    pub deployments: Vec<Deployment>,
    /// Services.
    pub services: Vec<Service>,
    /// Gateways.
    pub gateways: Vec<Gateway>,
    /// VirtualServices.
    pub virtual_services: Vec<VirtualService>,
    /// DestinationRules.
    pub destination_rules: Vec<DestinationRule>,
    /// Gateway API Gateways.
    pub api_gateways: Vec<ApiGateway>,
    /// TCPRoutes.
    pub tcp_routes: Vec<TCPRoute>,
    /// TLSRoutes.
    pub tls_routes: Vec<TLSRoute>,
    /// UDPRoutes.
    pub udp_routes: Vec<UDPRoute>,
}

/// Parses documents into a [`Set`], collecting every error.
pub fn parse_all(docs: &[Doc]) -> Result<Set, Vec<String>> {
    let mut set = Set::default();
    let mut errors = Vec::new();
    for doc in docs {
        match parse(doc) {
            Ok(Object::ServiceAccount(o)) => set.service_accounts.push(*o),
            Ok(Object::Deployment(o)) => set.deployments.push(*o),
            Ok(Object::Service(o)) => set.services.push(*o),
            Ok(Object::Gateway(o)) => set.gateways.push(*o),
            Ok(Object::VirtualService(o)) => set.virtual_services.push(*o),
            Ok(Object::DestinationRule(o)) => set.destination_rules.push(*o),
            Ok(Object::ApiGateway(o)) => set.api_gateways.push(*o),
            Ok(Object::TcpRoute(o)) => set.tcp_routes.push(*o),
            Ok(Object::TlsRoute(o)) => set.tls_routes.push(*o),
            Ok(Object::UdpRoute(o)) => set.udp_routes.push(*o),
            Err(e) => errors.extend(e),
        }
    }
    if errors.is_empty() {
        Ok(set)
    } else {
        Err(errors)
    }
}

/// Renders, validates against the CRD schemas, parses and cross-checks the kustomization in
/// `dir`.
pub fn check(dir: &Path) -> Result<Set, Vec<String>> {
    let docs = build(dir).map_err(|e| vec![e])?;
    check_docs(&docs)
}

/// Validates against the CRD schemas, parses and cross-checks rendered documents.
pub fn check_docs(docs: &[Doc]) -> Result<Set, Vec<String>> {
    let invalid: Vec<String> = docs
        .iter()
        .filter(|d| schema::covers(d.str_at("apiVersion")))
        .flat_map(|d| {
            schema::validate(&serde_json::to_value(&d.value).unwrap_or_default())
                .into_iter()
                .map(|e| format!("{}: {e}", d.label()))
                .collect::<Vec<_>>()
        })
        .collect();
    // Both layers report: the CRD schema and the typed model each say what they found.
    let set = match parse_all(docs) {
        Ok(set) if invalid.is_empty() => set,
        Ok(_) => return Err(invalid),
        Err(mut e) => {
            e.extend(invalid);
            return Err(e);
        }
    };
    let problems = cross_check(&set);
    if problems.is_empty() {
        Ok(set)
    } else {
        Err(problems)
    }
}

pub(crate) fn name_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    meta.name.clone().unwrap_or_default()
}

/// Whether every `selector` entry is among `labels`.
pub(crate) fn selects(
    selector: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

pub(crate) fn pod_labels(t: &PodTemplateSpec) -> BTreeMap<String, String> {
    t.metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default()
}

fn env_value(c: &Container, name: &str) -> Option<String> {
    c.env
        .as_ref()?
        .iter()
        .find(|e| e.name == name)?
        .value
        .clone()
}

/// Resolves a port given as a number or a container port name.
fn resolve_port(port: &IntOrString, c: &Container) -> Option<i32> {
    match port {
        IntOrString::Int(n) => Some(*n),
        IntOrString::String(name) => c
            .ports
            .as_ref()?
            .iter()
            .find(|p| p.name.as_deref() == Some(name))?
            .container_port
            .into(),
    }
}

/// The settings the container runs tcp-echo with: its literal environment read by the
/// server's own parser (values from the downward API are not literal and left out), so that
/// the checks see exactly what the server would, defaults included.
pub fn server_config(c: &Container) -> Result<tcp_echo::Config, tcp_echo::ConfigError> {
    tcp_echo::Config::from_env(&literal_env(c))
}

/// The container's admin port (`ECHO_ADMIN_PORT`), if its settings are valid and set one.
fn admin_port(c: &Container) -> Option<i32> {
    server_config(c).ok()?.admin_port().map(i32::from)
}

/// The admin port and what uses it: `ECHO_ADMIN_PORT` is a declared containerPort other than
/// `TCP_PORT`; readiness and liveness are `httpGet` probes of `/readyz` and `/healthz` on it
/// (a `tcpSocket` probe would be an echo connection, logged every few seconds); the pod's
/// `prometheus.io/*` annotations scrape `/metrics` on it.
fn admin_problems(name: &str, c: &Container, template: &PodTemplateSpec) -> Vec<String> {
    let mut p = Vec::new();
    let ports: Vec<i32> = c.ports.iter().flatten().map(|p| p.container_port).collect();
    let Some(admin) = admin_port(c) else {
        p.push(format!(
            "Deployment {name}: container {} sets no literal ECHO_ADMIN_PORT: its probes would have to be echo connections",
            c.name
        ));
        return p;
    };
    if !ports.contains(&admin) {
        p.push(format!(
            "Deployment {name}: ECHO_ADMIN_PORT={admin} is not a containerPort ({ports:?})"
        ));
    }
    for (kind, probe, path) in [
        ("readinessProbe", &c.readiness_probe, "/readyz"),
        ("livenessProbe", &c.liveness_probe, "/healthz"),
    ] {
        let Some(http) = probe.as_ref().and_then(|pr| pr.http_get.as_ref()) else {
            p.push(format!(
                "Deployment {name}: no httpGet {kind} (on the admin port, {path})"
            ));
            continue;
        };
        match resolve_port(&http.port, c) {
            Some(port) if port == admin => {}
            _ => p.push(format!(
                "Deployment {name}: {kind} port {:?} is not the admin port {admin}",
                http.port
            )),
        }
        if http.path.as_deref() != Some(path) {
            p.push(format!(
                "Deployment {name}: {kind} path {:?} is not {path}",
                http.path
            ));
        }
    }
    let annotations = template
        .metadata
        .as_ref()
        .and_then(|m| m.annotations.clone())
        .unwrap_or_default();
    let admin_text = admin.to_string();
    for (key, want) in [
        ("prometheus.io/scrape", "true"),
        ("prometheus.io/port", admin_text.as_str()),
        ("prometheus.io/path", "/metrics"),
    ] {
        if annotations.get(key).map(String::as_str) != Some(want) {
            p.push(format!(
                "Deployment {name}: pod annotation {key} is {:?}, not {want:?}",
                annotations.get(key)
            ));
        }
    }
    p
}

/// Checks what only the set as a whole shows; returns every problem found.
pub fn cross_check(set: &Set) -> Vec<String> {
    let mut p = Vec::new();
    // Deployments: their own selector selects their pods; ports, TCP_PORT and probes agree; the
    // grace period exceeds the drain timeout.
    for d in &set.deployments {
        let name = name_of(&d.metadata);
        let Some(spec) = &d.spec else {
            p.push(format!("Deployment {name}: no spec"));
            continue;
        };
        let labels = pod_labels(&spec.template);
        let sel = spec.selector.match_labels.clone().unwrap_or_default();
        if !selects(&sel, &labels) {
            p.push(format!(
                "Deployment {name}: spec.selector does not select its own pod template labels"
            ));
        }
        for l in ["app", "version"] {
            if !labels.contains_key(l) {
                p.push(format!("Deployment {name}: pod template has no `{l}` label (Istio subsets select by it)"));
            }
        }
        let Some(pod) = &spec.template.spec else {
            p.push(format!("Deployment {name}: no pod spec"));
            continue;
        };
        for c in &pod.containers {
            let config = match server_config(c) {
                Ok(config) => config,
                Err(e) => {
                    p.push(format!(
                        "Deployment {name}: container {}: tcp-echo would not start: {e}",
                        c.name
                    ));
                    continue;
                }
            };
            let ports: Vec<i32> = c.ports.iter().flatten().map(|p| p.container_port).collect();
            if env_value(c, "TCP_PORT").is_none() {
                p.push(format!(
                    "Deployment {name}: container {} sets no literal TCP_PORT",
                    c.name
                ));
            }
            for port in config.ports() {
                if !ports.contains(&i32::from(*port)) {
                    p.push(format!(
                        "Deployment {name}: TCP_PORT port {port} is not a containerPort ({ports:?})"
                    ));
                }
            }
            p.extend(admin_problems(&name, c, &spec.template));
            p.extend(memory_problems(&name, c, &config));
            p.extend(tls_problems(&name, c, pod, &config));
            if config.shutdown_delay() < MIN_SHUTDOWN_DELAY {
                p.push(format!(
                    "Deployment {name}: ECHO_SHUTDOWN_DELAY is {}s, under {}s: during a rollout the pod would stop accepting before the endpoints drop it, and connections routed to it meanwhile would be refused",
                    config.shutdown_delay().as_secs_f64(),
                    MIN_SHUTDOWN_DELAY.as_secs()
                ));
            }
            let drain =
                config.drain_timeout().as_secs_f64() + config.shutdown_delay().as_secs_f64();
            let grace = pod.termination_grace_period_seconds.unwrap_or(30) as f64;
            if grace <= drain {
                p.push(format!(
                    "Deployment {name}: terminationGracePeriodSeconds {grace} does not exceed the shutdown delay and the drain timeout ({drain}s in all)"
                ));
            }
        }
    }
    // Services select pods, target their ports, and declare TCP (the banner speaks first).
    for s in &set.services {
        let name = name_of(&s.metadata);
        let Some(spec) = &s.spec else { continue };
        let sel = spec.selector.clone().unwrap_or_default();
        let pods: Vec<&Deployment> = set
            .deployments
            .iter()
            .filter(|d| {
                d.spec
                    .as_ref()
                    .is_some_and(|ds| selects(&sel, &pod_labels(&ds.template)))
            })
            .collect();
        if pods.is_empty() {
            p.push(format!(
                "Service {name}: selector {sel:?} selects no Deployment's pods"
            ));
        }
        // Istio's sample ships IPv4, IPv6 and dual-stack variants; PreferDualStack serves all.
        if spec.ip_family_policy.as_deref() != Some("PreferDualStack") {
            p.push(format!(
                "Service {name}: ipFamilyPolicy is {:?}, not PreferDualStack",
                spec.ip_family_policy
            ));
        }
        for port in spec.ports.iter().flatten() {
            let pname = port.name.clone().unwrap_or_default();
            let declared = |proto: &str| {
                pname == proto
                    || pname.starts_with(&format!("{proto}-"))
                    || port.app_protocol.as_deref() == Some(proto)
            };
            // TCP carries the banner at once; TLS is routed by SNI (the banner follows the
            // handshake); UDP is UDP.
            let declared_ok = match port.protocol.as_deref().unwrap_or("TCP") {
                "UDP" => declared("udp"),
                _ => declared("tcp") || declared("tls"),
            };
            if !declared_ok {
                p.push(format!(
                    "Service {name}: port {} is neither named tcp/tcp-* (or tls/tls-*, udp/udp-*) nor given that appProtocol: Istio's protocol sniffing would hold back the banner",
                    port.port
                ));
            }
            let target = port
                .target_port
                .clone()
                .unwrap_or(IntOrString::Int(port.port));
            for d in &pods {
                let containers = d
                    .spec
                    .as_ref()
                    .and_then(|s| s.template.spec.as_ref())
                    .map(|p| p.containers.clone())
                    .unwrap_or_default();
                let protocol = port.protocol.as_deref().unwrap_or("TCP");
                let ok = containers.iter().any(|c| {
                    resolve_port(&target, c).is_some_and(|n| {
                        c.ports.iter().flatten().any(|cp| {
                            cp.container_port == n
                                && cp.protocol.as_deref().unwrap_or("TCP") == protocol
                        })
                    })
                });
                if !ok {
                    p.push(format!("Service {name}: targetPort {target:?} is not a {protocol} containerPort of Deployment {}", name_of(&d.metadata)));
                }
                let admin = containers.iter().any(|c| {
                    let port = resolve_port(&target, c);
                    port.is_some() && port == admin_port(c)
                });
                if admin {
                    p.push(format!("Service {name}: port {} targets the admin port of Deployment {} (ECHO_ADMIN_PORT): a gateway could route to it", port.port, name_of(&d.metadata)));
                }
            }
        }
    }
    // DestinationRules: the host is a Service; every subset selects pods of that Service.
    for dr in &set.destination_rules {
        let name = name_of(&dr.metadata);
        let Some(svc) = set.services.iter().find(|s| host_is(&dr.spec.host, s)) else {
            p.push(format!(
                "DestinationRule {name}: host {} is not a Service here",
                dr.spec.host
            ));
            continue;
        };
        let svc_sel = service_selector(svc);
        for subset in dr.spec.subsets.iter().flatten() {
            let labels = subset.labels.clone().unwrap_or_default();
            let hit = set.deployments.iter().any(|d| {
                d.spec.as_ref().is_some_and(|ds| {
                    let pl = pod_labels(&ds.template);
                    selects(&labels, &pl) && selects(&svc_sel, &pl)
                })
            });
            if !hit {
                p.push(format!("DestinationRule {name}: subset {} (labels {labels:?}) selects no pods of Service {}", subset.name, name_of(&svc.metadata)));
            }
        }
    }
    p.extend(routing::istio_problems(set));
    p.extend(routing::gateway_api_problems(set));
    p
}

/// The Deployments whose pods `svc` selects.
pub(crate) fn selected<'a>(set: &'a Set, svc: &Service) -> Vec<&'a Deployment> {
    let sel = service_selector(svc);
    set.deployments
        .iter()
        .filter(|d| {
            d.spec
                .as_ref()
                .is_some_and(|ds| selects(&sel, &pod_labels(&ds.template)))
        })
        .collect()
}

/// The port numbers a Service exposes for `protocol` (`TCP` or `UDP`).
pub(crate) fn service_ports(s: &Service, protocol: &str) -> Vec<i32> {
    s.spec
        .iter()
        .flat_map(|spec| spec.ports.iter().flatten())
        .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == protocol)
        .map(|p| p.port)
        .collect()
}

/// A Service's pod selector.
pub(crate) fn service_selector(s: &Service) -> BTreeMap<String, String> {
    s.spec
        .as_ref()
        .and_then(|spec| spec.selector.clone())
        .unwrap_or_default()
}

/// Whether an Istio `host` names Service `s` (short name or cluster-local FQDN).
pub(crate) fn host_is(host: &str, s: &Service) -> bool {
    let name = name_of(&s.metadata);
    host == name || host.starts_with(&format!("{name}."))
}

/// A backend of a gateway port: one Deployment's pods.
#[derive(Debug, Clone)]
pub struct Backend {
    /// The Deployment's name (`tcp-echo-v1`).
    pub deployment: String,
    /// Its pods' `version` label.
    pub version: String,
    /// Literal environment values of its container (`TCP_PORT`, `ECHO_PREFIX`, ...).
    pub env: BTreeMap<String, String>,
    /// Its pods' service account.
    pub service_account: String,
    /// The weight of this backend on the route (100 when alone).
    pub weight: u32,
    /// Its HTTP readiness and liveness probes: (port, path).
    pub http_probes: Vec<(u16, String)>,
    /// The settings tcp-echo runs with there (`None` when they are invalid).
    pub config: Option<tcp_echo::Config>,
}

/// A container's memory limit in bytes, if it has one.
pub fn memory_limit(c: &Container) -> Option<u64> {
    let limits = c.resources.as_ref()?.limits.as_ref()?;
    quantity_bytes(&limits.get("memory")?.0)
}

/// A Kubernetes memory quantity (`128Mi`, `1Gi`, `64M`, `134217728`) in bytes.
pub fn quantity_bytes(q: &str) -> Option<u64> {
    let q = q.trim();
    let split = q.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let scale: u64 = match suffix {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        _ => return None,
    };
    let n: f64 = number.parse().ok()?;
    (n.is_finite() && n >= 0.0).then_some((n * scale as f64) as u64)
}

/// TLS ports are container ports, and certificate files come from a Secret volume (so that
/// a renewal, which updates the volume in place, reaches the server).
fn tls_problems(
    name: &str,
    c: &Container,
    pod: &k8s_openapi::api::core::v1::PodSpec,
    config: &tcp_echo::Config,
) -> Vec<String> {
    let mut p = Vec::new();
    let ports: Vec<i32> = c.ports.iter().flatten().map(|p| p.container_port).collect();
    for port in config.tls_ports() {
        if !ports.contains(&i32::from(*port)) {
            p.push(format!(
                "Deployment {name}: ECHO_TLS_PORT port {port} is not a containerPort ({ports:?})"
            ));
        }
    }
    for var in ["ECHO_TLS_CERT", "ECHO_TLS_KEY", "ECHO_TLS_CLIENT_CA"] {
        let Some(file) = env_value(c, var) else {
            continue;
        };
        let mount = c
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| file.starts_with(&format!("{}/", m.mount_path.trim_end_matches('/'))));
        let Some(mount) = mount else {
            p.push(format!(
                "Deployment {name}: {var}={file} is on no volume mount: the image holds no certificates"
            ));
            continue;
        };
        let secret = pod
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == mount.name)
            .and_then(|v| v.secret.as_ref());
        if secret.is_none() {
            p.push(format!(
                "Deployment {name}: {var}={file} is on volume {}, which is not a Secret",
                mount.name
            ));
        }
    }
    p
}

/// The memory limit must hold the server at its fullest: every connection at its worst
/// (tcp-echo's stated ceiling) plus the base.
fn memory_problems(name: &str, c: &Container, config: &tcp_echo::Config) -> Vec<String> {
    let max = config.max_connections();
    let Some(needed) = config.memory_needed() else {
        return vec![format!(
            "Deployment {name}: ECHO_SOCKET_BUFFER=0 (autotuning) leaves a connection's memory \
             unbounded (megabytes per client that stops reading)"
        )];
    };
    match memory_limit(c) {
        None => vec![format!(
            "Deployment {name}: container {} has no memory limit",
            c.name
        )],
        Some(limit) if limit < needed => vec![format!(
            "Deployment {name}: memory limit {limit} bytes is below what {max} connections can \
             hold at worst ({needed} bytes: tcp-echo's ceiling per connection times \
             ECHO_MAX_CONNECTIONS, plus the base)"
        )],
        Some(_) => Vec::new(),
    }
}

/// What the container test runs: one Deployment's container as its pods run it.
#[derive(Debug, Clone)]
pub struct Pod {
    /// The Deployment's name.
    pub deployment: String,
    /// Literal environment values of its container.
    pub env: BTreeMap<String, String>,
    /// Its memory limit in bytes.
    pub memory_limit: Option<u64>,
    /// The settings tcp-echo runs with there.
    pub config: tcp_echo::Config,
    /// Its HTTP probes, as the kubelet sends them: (port, path) of readiness and liveness.
    pub http_probes: Vec<(u16, String)>,
}

/// Every Deployment's first container, as [`Pod`]s.
pub fn pods(set: &Set) -> Vec<Pod> {
    set.deployments
        .iter()
        .filter_map(|d| {
            let c = d
                .spec
                .as_ref()?
                .template
                .spec
                .as_ref()?
                .containers
                .first()?;
            Some(Pod {
                deployment: name_of(&d.metadata),
                env: literal_env(c),
                memory_limit: memory_limit(c),
                config: server_config(c).ok()?,
                http_probes: http_probes(c),
            })
        })
        .collect()
}

/// The container's HTTP readiness and liveness probes: (port, path), as the kubelet sends them.
fn http_probes(c: &Container) -> Vec<(u16, String)> {
    [&c.readiness_probe, &c.liveness_probe]
        .into_iter()
        .filter_map(|p| {
            let http = p.as_ref()?.http_get.as_ref()?;
            let port = u16::try_from(resolve_port(&http.port, c)?).ok()?;
            Some((port, http.path.clone()?))
        })
        .collect()
}

fn literal_env(c: &Container) -> BTreeMap<String, String> {
    c.env
        .iter()
        .flatten()
        .filter_map(|e| e.value.clone().map(|v| (e.name.clone(), v)))
        .collect()
}

/// Deployment `d`'s pods as a backend of `weight`.
pub(crate) fn backend(d: &Deployment, weight: u32) -> Backend {
    let template = d
        .spec
        .as_ref()
        .map(|ds| ds.template.clone())
        .unwrap_or_default();
    let pod = template.spec.clone().unwrap_or_default();
    let c = pod.containers.first().cloned().unwrap_or_default();
    Backend {
        deployment: name_of(&d.metadata),
        version: pod_labels(&template)
            .get("version")
            .cloned()
            .unwrap_or_default(),
        env: literal_env(&c),
        service_account: pod
            .service_account_name
            .clone()
            .unwrap_or_else(|| "default".into()),
        weight,
        http_probes: http_probes(&c),
        config: server_config(&c).ok(),
    }
}
