//! Routing, whatever API declares it: Istio's VirtualService `tcp` and `tls` routes, and
//! Gateway API's TCPRoute, TLSRoute and UDPRoute. Each is read into one shape ([`IstioRoute`],
//! [`ApiRoute`]), checked by one function per API, and derived into [`Route`]s, what the Envoy
//! rehearsal reproduces: a gateway port (and SNI name), and the weighted pods behind it.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kcr_networking_istio_io::v1::gateways::GatewayServersTlsMode;

use crate::{
    backend, host_is, name_of, pod_labels, selected, selects, service_ports, Backend, Set,
    GATEWAY_CLASS, GATEWAY_GROUP, UDP_GATEWAY_CLASS,
};

/// What a gateway port speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// TCP, routed by port.
    Tcp,
    /// TLS passed through, routed by SNI.
    Tls,
    /// UDP, routed by port.
    Udp,
}

impl Protocol {
    /// The protocol name Gateway API listeners and Istio servers use.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Tls => "TLS",
            Protocol::Udp => "UDP",
        }
    }

    /// The transport a Service port of this protocol declares.
    pub fn transport(self) -> &'static str {
        match self {
            Protocol::Udp => "UDP",
            Protocol::Tcp | Protocol::Tls => "TCP",
        }
    }
}

/// One port (and, for TLS, one SNI name) of the ingress gateway and where its connections go.
#[derive(Debug, Clone)]
pub struct Route {
    /// The gateway port (`31400`).
    pub gateway_port: u16,
    /// What it speaks.
    pub protocol: Protocol,
    /// The SNI name it matches (TLS), `None` for any.
    pub sni: Option<String>,
    /// The Service port the backends are reached on (`3333`, or the TLS port `8443`).
    pub target_port: u16,
    /// The backends with their weights.
    pub backends: Vec<Backend>,
}

/// A destination of an Istio route.
struct IstioDestination {
    host: String,
    port: Option<i64>,
    subset: Option<String>,
    weight: Option<i32>,
}

/// An Istio VirtualService `tcp` or `tls` route.
struct IstioRoute {
    vs: String,
    /// `tcp[i]` or `tls[i]`, for messages.
    at: String,
    protocol: Protocol,
    /// The VirtualService's gateways.
    gateways: Vec<String>,
    /// Each match: its port, the gateways it is scoped to, its SNI names.
    matches: Vec<(Option<i64>, Vec<String>, Vec<String>)>,
    routes: Vec<IstioDestination>,
}

fn istio_routes(set: &Set) -> Vec<IstioRoute> {
    let mut out = Vec::new();
    for vs in &set.virtual_services {
        let name = name_of(&vs.metadata);
        let gateways = vs.spec.gateways.clone().unwrap_or_default();
        let scope = |g: &Option<Vec<String>>| {
            g.clone()
                .filter(|g| !g.is_empty())
                .unwrap_or_else(|| gateways.clone())
        };
        for (i, tcp) in vs.spec.tcp.iter().flatten().enumerate() {
            out.push(IstioRoute {
                vs: name.clone(),
                at: format!("tcp[{i}]"),
                protocol: Protocol::Tcp,
                gateways: gateways.clone(),
                matches: tcp
                    .r#match
                    .iter()
                    .flatten()
                    .map(|m| (m.port, scope(&m.gateways), Vec::new()))
                    .collect(),
                routes: tcp
                    .route
                    .iter()
                    .flatten()
                    .map(|r| IstioDestination {
                        host: r.destination.host.clone(),
                        port: r.destination.port.as_ref().and_then(|p| p.number),
                        subset: r.destination.subset.clone(),
                        weight: r.weight,
                    })
                    .collect(),
            });
        }
        for (i, tls) in vs.spec.tls.iter().flatten().enumerate() {
            out.push(IstioRoute {
                vs: name.clone(),
                at: format!("tls[{i}]"),
                protocol: Protocol::Tls,
                gateways: gateways.clone(),
                matches: tls
                    .r#match
                    .iter()
                    .map(|m| (m.port, scope(&m.gateways), m.sni_hosts.clone()))
                    .collect(),
                routes: tls
                    .route
                    .iter()
                    .flatten()
                    .map(|r| IstioDestination {
                        host: r.destination.host.clone(),
                        port: r.destination.port.as_ref().and_then(|p| p.number),
                        subset: r.destination.subset.clone(),
                        weight: r.weight,
                    })
                    .collect(),
            });
        }
    }
    out
}

/// Whether an Istio server host (`*`, `*.example.com`, `v1.example.com`) covers `sni`.
fn host_covers(host: &str, sni: &str) -> bool {
    let host = host.rsplit('/').next().unwrap_or(host);
    host == "*"
        || host == sni
        || host
            .strip_prefix('*')
            .is_some_and(|suffix| sni.ends_with(suffix))
}

/// The Deployments behind `svc` restricted to `subset` (labels of a DestinationRule subset).
fn subset_pods<'a>(set: &'a Set, svc: &Service, subset: Option<&str>) -> Vec<&'a Deployment> {
    let labels = subset
        .and_then(|sub| {
            set.destination_rules
                .iter()
                .flat_map(|dr| dr.spec.subsets.iter().flatten())
                .find(|s| s.name == sub)
                .and_then(|s| s.labels.clone())
        })
        .unwrap_or_default();
    selected(set, svc)
        .into_iter()
        .filter(|d| {
            labels.is_empty()
                || d.spec
                    .as_ref()
                    .is_some_and(|ds| selects(&labels, &pod_labels(&ds.template)))
        })
        .collect()
}

/// Istio: every gateway a route names exists and has a server on the matched port speaking
/// its protocol (TLS ones passing TLS through, and covering the SNI names); destinations are
/// ports of Services here, of the right kind (a TLS route to a TLS port); subsets exist;
/// weights sum to 100.
pub(crate) fn istio_problems(set: &Set) -> Vec<String> {
    let mut p = Vec::new();
    for vs in &set.virtual_services {
        for g in vs.spec.gateways.iter().flatten() {
            if !set.gateways.iter().any(|gw| &name_of(&gw.metadata) == g) {
                p.push(format!(
                    "VirtualService {}: gateway {g} does not exist",
                    name_of(&vs.metadata)
                ));
            }
        }
    }
    for r in istio_routes(set) {
        let (name, at) = (&r.vs, &r.at);
        for (port, scope, snis) in &r.matches {
            for g in scope {
                if !r.gateways.contains(g) {
                    p.push(format!("VirtualService {name}: {at} matches gateway {g}, which is not in spec.gateways"));
                }
            }
            let Some(port) = port else { continue };
            let servers: Vec<_> = set
                .gateways
                .iter()
                .filter(|gw| scope.contains(&name_of(&gw.metadata)))
                .flat_map(|gw| gw.spec.servers.iter().flatten())
                .filter(|s| {
                    s.port.number == *port
                        && s.port.protocol.eq_ignore_ascii_case(r.protocol.name())
                })
                .collect();
            if servers.is_empty() {
                p.push(format!(
                    "VirtualService {name}: {at} matches port {port}, on which no gateway of {scope:?} has a {} server",
                    r.protocol.name()
                ));
            }
            if r.protocol == Protocol::Tls {
                if snis.is_empty() {
                    p.push(format!("VirtualService {name}: {at} matches no sniHosts"));
                }
                for s in &servers {
                    let mode = s.tls.as_ref().and_then(|t| t.mode.clone());
                    if mode != Some(GatewayServersTlsMode::Passthrough) {
                        p.push(format!(
                            "VirtualService {name}: {at}: the gateway server on port {port} does not pass TLS through (tls.mode {mode:?}): the pod would not see the client's TLS"
                        ));
                    }
                    for sni in snis {
                        if !s.hosts.iter().any(|h| host_covers(h, sni)) {
                            p.push(format!(
                                "VirtualService {name}: {at}: SNI {sni} is not among the hosts {:?} of the gateway server on port {port}",
                                s.hosts
                            ));
                        }
                    }
                }
            }
        }
        if r.routes.is_empty() {
            p.push(format!("VirtualService {name}: {at} has no route"));
        }
        let weights: Vec<i64> = r
            .routes
            .iter()
            .filter_map(|d| d.weight.map(i64::from))
            .collect();
        if r.routes.len() > 1 || !weights.is_empty() {
            let sum: i64 = weights.iter().sum();
            if weights.len() != r.routes.len() || sum != 100 {
                p.push(format!(
                    "VirtualService {name}: {at} weights {weights:?} do not sum to 100"
                ));
            }
        }
        for d in &r.routes {
            let Some(svc) = set.services.iter().find(|s| host_is(&d.host, s)) else {
                p.push(format!(
                    "VirtualService {name}: destination host {} is not a Service here",
                    d.host
                ));
                continue;
            };
            if let Some(num) = d.port {
                let ports = service_ports(svc, r.protocol.transport());
                if !ports.contains(&(num as i32)) {
                    p.push(format!(
                        "VirtualService {name}: destination port {num} is not a port of Service {} ({ports:?})",
                        d.host
                    ));
                }
                p.extend(port_kind_problems(
                    set,
                    svc,
                    num as u16,
                    r.protocol,
                    &format!("VirtualService {name}: {at}"),
                ));
            }
            if let Some(subset) = &d.subset {
                let known = set
                    .destination_rules
                    .iter()
                    .filter(|dr| host_is(&dr.spec.host, svc))
                    .any(|dr| dr.spec.subsets.iter().flatten().any(|s| &s.name == subset));
                if !known {
                    p.push(format!(
                        "VirtualService {name}: subset {subset} of {} is defined by no DestinationRule",
                        d.host
                    ));
                }
            }
        }
    }
    p
}

/// A route of `protocol` must reach a port of the pods' matching kind: a TLS route a TLS port
/// (`ECHO_TLS_PORT`), a TCP route a plain one (`TCP_PORT`), a UDP route a plain one with UDP on.
fn port_kind_problems(
    set: &Set,
    svc: &Service,
    port: u16,
    protocol: Protocol,
    who: &str,
) -> Vec<String> {
    let mut p = Vec::new();
    for d in selected(set, svc) {
        let b = backend(d, 0);
        let Some(config) = &b.config else { continue };
        let ok = match protocol {
            Protocol::Tls => config.tls_ports().contains(&port),
            Protocol::Tcp => config.ports().contains(&port),
            Protocol::Udp => config.ports().contains(&port) && config.udp(),
        };
        if !ok {
            p.push(format!(
                "{who}: port {port} of Deployment {} is not a {} port of tcp-echo",
                b.deployment,
                protocol.name()
            ));
        }
    }
    p
}

/// A Gateway API parent reference.
struct ApiParent {
    group: Option<String>,
    kind: Option<String>,
    namespace: Option<String>,
    name: String,
    section_name: Option<String>,
    port: Option<i32>,
}

/// A Gateway API backend reference.
struct ApiBackend {
    group: Option<String>,
    kind: Option<String>,
    namespace: Option<String>,
    name: String,
    port: Option<i32>,
    weight: Option<i32>,
}

/// A Gateway API route of any kind.
struct ApiRoute {
    kind: &'static str,
    name: String,
    protocol: Protocol,
    parents: Vec<ApiParent>,
    hostnames: Vec<String>,
    rules: Vec<Vec<ApiBackend>>,
}

/// Reads a typed Gateway API route (their fields have the same names) into an [`ApiRoute`].
macro_rules! api_route {
    ($r:expr, $kind:literal, $protocol:expr, $hostnames:expr) => {
        ApiRoute {
            kind: $kind,
            name: name_of(&$r.metadata),
            protocol: $protocol,
            parents: $r
                .spec
                .parent_refs
                .iter()
                .flatten()
                .map(|p| ApiParent {
                    group: p.group.clone(),
                    kind: p.kind.clone(),
                    namespace: p.namespace.clone(),
                    name: p.name.clone(),
                    section_name: p.section_name.clone(),
                    port: p.port,
                })
                .collect(),
            hostnames: $hostnames,
            rules: $r
                .spec
                .rules
                .iter()
                .map(|rule| {
                    rule.backend_refs
                        .iter()
                        .map(|b| ApiBackend {
                            group: b.group.clone(),
                            kind: b.kind.clone(),
                            namespace: b.namespace.clone(),
                            name: b.name.clone(),
                            port: b.port,
                            weight: b.weight,
                        })
                        .collect()
                })
                .collect(),
        }
    };
}

fn api_routes(set: &Set) -> Vec<ApiRoute> {
    let mut out = Vec::new();
    for r in &set.tcp_routes {
        out.push(api_route!(r, "TCPRoute", Protocol::Tcp, Vec::new()));
    }
    for r in &set.tls_routes {
        out.push(api_route!(
            r,
            "TLSRoute",
            Protocol::Tls,
            r.spec.hostnames.clone()
        ));
    }
    for r in &set.udp_routes {
        out.push(api_route!(r, "UDPRoute", Protocol::Udp, Vec::new()));
    }
    out
}

/// The listener of Gateway `gateway` named `section`, if both exist.
fn listener<'a>(
    set: &'a Set,
    gateway: &str,
    section: &str,
) -> Option<&'a gateway_api::apis::standard::gateways::GatewayListeners> {
    set.api_gateways
        .iter()
        .find(|g| name_of(&g.metadata) == gateway)?
        .spec
        .listeners
        .iter()
        .find(|l| l.name == section)
}

/// Gateway API: the class is Istio's (Envoy Gateway's with UDP listeners); listeners are
/// unique; each route's parents are listeners of Gateways here that speak its protocol (TLS
/// ones passing TLS through) and admit its kind; each backend is a port of a Service here (of
/// the route's transport) that selects pods and serves the protocol; the weights of a rule sum
/// to something positive; a TLSRoute names hostnames.
pub(crate) fn gateway_api_problems(set: &Set) -> Vec<String> {
    let mut p = Vec::new();
    for g in &set.api_gateways {
        let name = name_of(&g.metadata);
        // Istio's gateways route TCP and TLS but no UDP: a Gateway with UDP listeners is
        // written for a class that routes UDP.
        let udp = g.spec.listeners.iter().any(|l| l.protocol == "UDP");
        let class = if udp {
            UDP_GATEWAY_CLASS
        } else {
            GATEWAY_CLASS
        };
        if g.spec.gateway_class_name != class {
            let why = if udp && g.spec.gateway_class_name == GATEWAY_CLASS {
                " (Istio's gateways do not route UDP)"
            } else {
                ""
            };
            p.push(format!(
                "Gateway {name}: gatewayClassName {} is not {class}{why}",
                g.spec.gateway_class_name
            ));
        }
        let mut seen = Vec::new();
        for l in &g.spec.listeners {
            if seen.contains(&&l.name) {
                p.push(format!(
                    "Gateway {name}: listener {} is defined twice",
                    l.name
                ));
            }
            seen.push(&l.name);
        }
    }
    for r in api_routes(set) {
        let (kind, name) = (r.kind, &r.name);
        if r.parents.is_empty() {
            p.push(format!("{kind} {name}: no parentRefs"));
        }
        if r.protocol == Protocol::Tls && r.hostnames.is_empty() {
            p.push(format!(
                "{kind} {name}: no hostnames: every SNI name would match"
            ));
        }
        for parent in &r.parents {
            let group = parent.group.as_deref().unwrap_or(GATEWAY_GROUP);
            let pkind = parent.kind.as_deref().unwrap_or("Gateway");
            if group != GATEWAY_GROUP || pkind != "Gateway" || parent.namespace.is_some() {
                p.push(format!(
                    "{kind} {name}: parentRef {group}/{pkind} {} is not a Gateway of this namespace",
                    parent.name
                ));
                continue;
            }
            if !set
                .api_gateways
                .iter()
                .any(|g| name_of(&g.metadata) == parent.name)
            {
                p.push(format!(
                    "{kind} {name}: Gateway {} does not exist",
                    parent.name
                ));
                continue;
            }
            let Some(section) = &parent.section_name else {
                p.push(format!(
                    "{kind} {name}: parentRef {} names no listener (sectionName)",
                    parent.name
                ));
                continue;
            };
            let Some(l) = listener(set, &parent.name, section) else {
                p.push(format!(
                    "{kind} {name}: Gateway {} has no listener {section}",
                    parent.name
                ));
                continue;
            };
            if l.protocol != r.protocol.name() {
                p.push(format!(
                    "{kind} {name}: listener {section} of Gateway {} speaks {}, not {}",
                    parent.name,
                    l.protocol,
                    r.protocol.name()
                ));
            }
            if r.protocol == Protocol::Tls {
                let mode = l.tls.as_ref().and_then(|t| t.mode.clone());
                let passthrough = matches!(
                    mode,
                    Some(
                        gateway_api::apis::standard::gateways::GatewayListenersTlsMode::Passthrough
                    )
                );
                if !passthrough {
                    p.push(format!(
                        "{kind} {name}: listener {section} of Gateway {} does not pass TLS through (tls.mode {mode:?}): the pod would not see the client's TLS",
                        parent.name
                    ));
                }
            }
            if parent.port.is_some_and(|port| port != l.port) {
                p.push(format!(
                    "{kind} {name}: parentRef port {:?} is not listener {section}'s port {}",
                    parent.port, l.port
                ));
            }
            let kinds = l
                .allowed_routes
                .as_ref()
                .and_then(|a| a.kinds.clone())
                .unwrap_or_default();
            // Unset, the kinds follow the protocol.
            let admits = kinds.is_empty()
                || kinds.iter().any(|k| {
                    k.kind == kind && k.group.as_deref().unwrap_or(GATEWAY_GROUP) == GATEWAY_GROUP
                });
            if !admits {
                p.push(format!(
                    "{kind} {name}: listener {section} of Gateway {} does not admit {kind}s",
                    parent.name
                ));
            }
        }
        if r.rules.is_empty() {
            p.push(format!("{kind} {name}: no rules"));
        }
        for (i, rule) in r.rules.iter().enumerate() {
            if rule.is_empty() {
                p.push(format!("{kind} {name}: rules[{i}] has no backendRefs"));
            }
            let mut sum = 0i64;
            for b in rule {
                let weight = b.weight.unwrap_or(1);
                sum += i64::from(weight);
                let core = b.group.as_deref().unwrap_or("").is_empty();
                if !core
                    || b.kind.as_deref().unwrap_or("Service") != "Service"
                    || b.namespace.is_some()
                {
                    p.push(format!(
                        "{kind} {name}: backend {} is not a Service of this namespace",
                        b.name
                    ));
                    continue;
                }
                let Some(svc) = set.services.iter().find(|s| name_of(&s.metadata) == b.name) else {
                    p.push(format!(
                        "{kind} {name}: backend Service {} does not exist",
                        b.name
                    ));
                    continue;
                };
                let ports = service_ports(svc, r.protocol.transport());
                match b.port {
                    Some(port) if ports.contains(&port) => p.extend(port_kind_problems(
                        set,
                        svc,
                        port as u16,
                        r.protocol,
                        &format!("{kind} {name}"),
                    )),
                    Some(port) => p.push(format!(
                        "{kind} {name}: backend Service {} has no {} port {port} ({ports:?})",
                        b.name,
                        r.protocol.transport()
                    )),
                    None => p.push(format!(
                        "{kind} {name}: backend Service {} needs a port",
                        b.name
                    )),
                }
                if selected(set, svc).is_empty() {
                    p.push(format!(
                        "{kind} {name}: backend Service {} selects no Deployment's pods",
                        b.name
                    ));
                }
            }
            if sum <= 0 {
                p.push(format!(
                    "{kind} {name}: rules[{i}] weights sum to {sum}, not more than 0"
                ));
            }
        }
    }
    p
}

/// Derives, from a checked set, every gateway port's (and SNI name's) weighted backends.
pub fn routes(set: &Set) -> Vec<Route> {
    let mut out = Vec::new();
    for r in istio_routes(set) {
        for (port, _, snis) in &r.matches {
            let Some(port) = port else { continue };
            let mut backends = Vec::new();
            let mut target_port = 0;
            for d in &r.routes {
                let Some(svc) = set.services.iter().find(|s| host_is(&d.host, s)) else {
                    continue;
                };
                target_port = d.port.unwrap_or(0) as u16;
                let weight = d.weight.unwrap_or(100) as u32;
                backends.extend(
                    subset_pods(set, svc, d.subset.as_deref())
                        .into_iter()
                        .map(|dep| backend(dep, weight)),
                );
            }
            let snis: Vec<Option<String>> = if snis.is_empty() {
                vec![None]
            } else {
                snis.iter().cloned().map(Some).collect()
            };
            for sni in snis {
                out.push(Route {
                    gateway_port: *port as u16,
                    protocol: r.protocol,
                    sni,
                    target_port,
                    backends: backends.clone(),
                });
            }
        }
    }
    // Gateway API: a route attached to a listener sends its connections to the pods of its
    // backend Services, by weight (1 when unset).
    for r in api_routes(set) {
        for parent in &r.parents {
            let Some(l) = parent
                .section_name
                .as_deref()
                .and_then(|section| listener(set, &parent.name, section))
            else {
                continue;
            };
            let mut backends = Vec::new();
            let mut target_port = 0;
            for b in r.rules.iter().flatten() {
                let Some(svc) = set.services.iter().find(|s| name_of(&s.metadata) == b.name) else {
                    continue;
                };
                target_port = b.port.unwrap_or(0) as u16;
                let weight = b.weight.unwrap_or(1).max(0) as u32;
                backends.extend(selected(set, svc).into_iter().map(|d| backend(d, weight)));
            }
            let snis: Vec<Option<String>> = if r.hostnames.is_empty() {
                vec![None]
            } else {
                r.hostnames.iter().cloned().map(Some).collect()
            };
            for sni in snis {
                out.push(Route {
                    gateway_port: l.port as u16,
                    protocol: r.protocol,
                    sni,
                    target_port,
                    backends: backends.clone(),
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_hosts_cover_sni_names_as_istio_matches_them() {
        assert!(host_covers("*", "v1.example.com"));
        assert!(host_covers("*.example.com", "v1.example.com"));
        assert!(host_covers("ns/v1.example.com", "v1.example.com"));
        assert!(!host_covers("v2.example.com", "v1.example.com"));
        assert!(!host_covers("*.example.org", "v1.example.com"));
    }
}
