//! The manifests pass, and every check fails on a broken copy.

use std::path::PathBuf;

use serde_yaml::Value;
use tcp_echo_k8s::{build, check, check_docs, routes, schema, Doc};

fn k8s(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(rel)
}

/// The value at a dotted path (`spec.template.spec.containers.0`), for editing.
fn at<'a>(v: &'a mut Value, path: &str) -> &'a mut Value {
    path.split('.')
        .filter(|s| !s.is_empty())
        .fold(v, |v, key| match key.parse::<usize>() {
            Ok(i) => &mut v[i],
            Err(_) => &mut v[key],
        })
}

/// Builds `dir`, applies `edit` to the document `kind`/`name`, and returns every error the
/// checker reports for the broken set.
fn broken(dir: &str, kind: &str, name: &str, edit: impl FnOnce(&mut Value)) -> Vec<String> {
    let mut docs: Vec<Doc> = build(&k8s(dir)).expect("build");
    let doc = docs
        .iter_mut()
        .find(|d| {
            d.value["kind"].as_str() == Some(kind)
                && d.value["metadata"]["name"].as_str() == Some(name)
        })
        .unwrap_or_else(|| panic!("no {kind}/{name} in {dir}"));
    edit(&mut doc.value);
    match check_docs(&docs) {
        Err(e) => e,
        Ok(_) => Vec::new(),
    }
}

fn assert_fails(errors: &[String], needle: &str) {
    assert!(
        errors.iter().any(|e| e.contains(needle)),
        "expected an error containing {needle:?}, got {errors:#?}"
    );
}

#[test]
fn the_port_routing_walkthrough_is_valid() {
    let set = check(&k8s("")).unwrap_or_else(|e| panic!("{e:#?}"));
    assert_eq!(set.deployments.len(), 2);
    assert_eq!(set.services.len(), 1);
    assert_eq!(set.service_accounts.len(), 1);
    assert_eq!(set.gateways.len(), 2);
    assert_eq!(set.virtual_services.len(), 1);
    assert_eq!(set.destination_rules.len(), 1);
    let r = routes(&set);
    let summary: Vec<(u16, Vec<(String, u32)>)> = r
        .iter()
        .map(|r| {
            (
                r.gateway_port,
                r.backends
                    .iter()
                    .map(|b| (b.deployment.clone(), b.weight))
                    .collect(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (31400, vec![("tcp-echo-v1".into(), 100)]),
            (31401, vec![("tcp-echo-v2".into(), 100)])
        ]
    );
}

#[test]
fn the_weighted_walkthrough_is_valid() {
    let set = check(&k8s("weighted")).unwrap_or_else(|e| panic!("{e:#?}"));
    let r = routes(&set);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].gateway_port, 31400);
    let weights: Vec<(String, u32, String)> = r[0]
        .backends
        .iter()
        .map(|b| {
            (
                b.version.clone(),
                b.weight,
                b.env.get("ECHO_PREFIX").cloned().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        weights,
        vec![
            ("v1".into(), 80, "one".into()),
            ("v2".into(), 20, "two".into())
        ]
    );
}

#[test]
fn pods_pass_the_restricted_pod_security_standard() {
    let set = check(&k8s("")).unwrap();
    for d in &set.deployments {
        let pod = d.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        let psc = pod.security_context.as_ref().expect("pod securityContext");
        assert_eq!(psc.run_as_non_root, Some(true));
        assert_eq!(psc.run_as_user, Some(65532));
        assert_eq!(
            psc.seccomp_profile.as_ref().map(|s| s.type_.as_str()),
            Some("RuntimeDefault")
        );
        for c in &pod.containers {
            let sc = c
                .security_context
                .as_ref()
                .expect("container securityContext");
            assert_eq!(sc.allow_privilege_escalation, Some(false));
            assert_eq!(sc.read_only_root_filesystem, Some(true));
            assert_eq!(
                sc.capabilities.as_ref().and_then(|c| c.drop.clone()),
                Some(vec!["ALL".to_string()])
            );
            assert_ne!(sc.run_as_user, Some(1337), "1337 is Istio's proxy uid");
            let res = c.resources.as_ref().expect("resources");
            assert!(res.requests.is_some() && res.limits.is_some());
            // Downward API for every banner variable.
            let env: Vec<&str> = c
                .env
                .iter()
                .flatten()
                .filter(|e| e.value_from.is_some())
                .map(|e| e.name.as_str())
                .collect();
            for v in [
                "NODE_NAME",
                "POD_NAME",
                "POD_NAMESPACE",
                "POD_IP",
                "SERVICE_ACCOUNT",
            ] {
                assert!(env.contains(&v), "{v} not from the downward API");
            }
        }
    }
}

// Strict parsing, as an API server would: unknown fields, wrong types, missing fields.

#[test]
fn an_unknown_or_misspelt_field_fails() {
    let e = broken("", "Deployment", "tcp-echo-v1", |v| {
        at(v, "spec.template.spec.containers.0")["imagePullPolicyy"] = "Always".into();
    });
    assert_fails(
        &e,
        "unknown field `spec.template.spec.containers.0.imagePullPolicyy`",
    );
    let e = broken("", "Service", "tcp-echo", |v| {
        at(v, "spec")["selectr"] = Value::Null
    });
    assert_fails(&e, "unknown field `spec.selectr`");
    let e = broken("", "DestinationRule", "tcp-echo-destination", |v| {
        let subset = at(v, "spec.subsets.0");
        let labels = subset["labels"].clone();
        subset["lables"] = labels;
    });
    assert_fails(&e, "unknown field `spec.subsets.0.lables`");
    let e = broken("weighted", "VirtualService", "tcp-echo", |v| {
        let route = at(v, "spec.tcp.0.route.0");
        route["destinaton"] = route["destination"].clone();
    });
    assert_fails(&e, "destinaton");
    let e = broken("", "Gateway", "tcp-echo-gateway-v1", |v| {
        at(v, "spec.servers.0.port")["protocl"] = "TCP".into()
    });
    assert_fails(&e, "unknown field `spec.servers.0.port.protocl`");
    let e = broken("", "ServiceAccount", "tcp-echo", |v| {
        v["automountServiceAccountTokens"] = false.into()
    });
    assert_fails(&e, "unknown field `automountServiceAccountTokens`");
}

#[test]
fn a_wrong_type_fails() {
    let e = broken("", "Deployment", "tcp-echo-v1", |v| {
        at(v, "spec.template.spec.containers.0.ports.0")["containerPort"] = "3333".into()
    });
    assert!(!e.is_empty(), "a string containerPort passed");
    let e = broken("", "Gateway", "tcp-echo-gateway-v2", |v| {
        at(v, "spec.servers.0.port")["number"] = "many".into()
    });
    assert!(!e.is_empty(), "a string port number passed");
    let e = broken("", "Deployment", "tcp-echo-v2", |v| {
        at(v, "spec")["replicas"] = "one".into()
    });
    assert!(!e.is_empty());
}

#[test]
fn a_missing_required_field_fails() {
    let e = broken("", "Deployment", "tcp-echo-v1", |v| {
        at(v, "spec").as_mapping_mut().unwrap().remove("selector");
    });
    assert_fails(&e, "missing field `selector`");
    let e = broken("", "Gateway", "tcp-echo-gateway-v1", |v| {
        at(v, "spec.servers.0")
            .as_mapping_mut()
            .unwrap()
            .remove("hosts");
    });
    assert_fails(&e, "missing field `hosts`");
    let e = broken("weighted", "VirtualService", "tcp-echo", |v| {
        at(v, "spec.tcp.0.route.0.destination")
            .as_mapping_mut()
            .unwrap()
            .remove("host");
    });
    assert_fails(&e, "missing field `host`");
    let e = broken("", "Deployment", "tcp-echo-v2", |v| {
        at(v, "spec.template.spec.containers.0")
            .as_mapping_mut()
            .unwrap()
            .remove("name");
    });
    assert_fails(&e, "missing field `name`");
}

#[test]
fn an_unsupported_kind_or_kustomization_field_fails() {
    let e = broken("", "Service", "tcp-echo", |v| v["apiVersion"] = "v2".into());
    assert_fails(&e, "unsupported apiVersion/kind v2/Service");
}

// Cross-checks of the set.

#[test]
fn a_service_selecting_no_pods_fails() {
    let e = broken("", "Service", "tcp-echo", |v| {
        at(v, "spec.selector")["app"] = "tcp-eco".into()
    });
    assert_fails(&e, "selects no Deployment's pods");
}

#[test]
fn a_deployment_selector_not_matching_its_pods_fails() {
    let e = broken("", "Deployment", "tcp-echo-v1", |v| {
        at(v, "spec.selector.matchLabels")["version"] = "v9".into()
    });
    assert_fails(&e, "does not select its own pod template labels");
}

#[test]
fn disagreeing_ports_fail() {
    let e = broken("", "Service", "tcp-echo", |v| {
        at(v, "spec.ports.0")["targetPort"] = 3334.into()
    });
    assert_fails(&e, "targetPort Int(3334) is not a TCP containerPort");
    let e = broken("", "Deployment", "tcp-echo-v2", |v| {
        at(v, "spec.template.spec.containers.0.env.0")["value"] = "9000".into()
    });
    assert_fails(&e, "TCP_PORT port 9000 is not a containerPort");
}

#[test]
fn probes_off_the_admin_port_or_its_paths_fail() {
    let e = broken("", "Deployment", "tcp-echo-v1", |v| {
        at(v, "spec.template.spec.containers.0.readinessProbe.httpGet")["port"] = 8080.into()
    });
    assert_fails(
        &e,
        "readinessProbe port Int(8080) is not the admin port 9090",
    );
    let e = broken("", "Deployment", "tcp-echo-v1", |v| {
        at(v, "spec.template.spec.containers.0.livenessProbe.httpGet")["port"] = "tcp".into()
    });
    assert_fails(
        &e,
        "livenessProbe port String(\"tcp\") is not the admin port 9090",
    );
    let e = broken("", "Deployment", "tcp-echo-v2", |v| {
        at(v, "spec.template.spec.containers.0.livenessProbe.httpGet")["path"] = "/readyz".into()
    });
    assert_fails(&e, "livenessProbe path Some(\"/readyz\") is not /healthz");
    // Back to a tcpSocket probe: an echo connection every few seconds.
    let e = broken("", "Deployment", "tcp-echo-v1", |v| {
        let probe = at(v, "spec.template.spec.containers.0.readinessProbe");
        probe.as_mapping_mut().unwrap().remove("httpGet");
        probe["tcpSocket"] = serde_yaml::from_str("port: 3333").unwrap();
    });
    assert_fails(&e, "no httpGet readinessProbe");
}

#[test]
fn an_admin_port_undeclared_missing_or_in_the_service_fails() {
    let e = broken("", "Deployment", "tcp-echo-v1", |v| {
        let ports = at(v, "spec.template.spec.containers.0.ports");
        ports.as_sequence_mut().unwrap().remove(1);
    });
    assert_fails(&e, "ECHO_ADMIN_PORT=9090 is not a containerPort ([3333])");
    let e = broken("", "Deployment", "tcp-echo-v2", |v| {
        let env = at(v, "spec.template.spec.containers.0.env");
        env.as_sequence_mut()
            .unwrap()
            .retain(|e| e["name"].as_str() != Some("ECHO_ADMIN_PORT"));
    });
    assert_fails(&e, "sets no literal ECHO_ADMIN_PORT");
    let e = broken("", "Deployment", "tcp-echo-v1", |v| {
        at(v, "spec.template.spec.containers.0.env.0")["value"] = "3333,9090".into()
    });
    assert_fails(
        &e,
        "tcp-echo would not start: invalid value \"9090\" for --admin-port (ECHO_ADMIN_PORT): port 9090 is an echo port",
    );
    let e = broken("", "Deployment", "tcp-echo-v1", |v| {
        at(v, "spec.template.metadata.annotations")["prometheus.io/port"] = "3333".into()
    });
    assert_fails(
        &e,
        "pod annotation prometheus.io/port is Some(\"3333\"), not \"9090\"",
    );
    let e = broken("", "Deployment", "tcp-echo-v2", |v| {
        at(v, "spec.template.metadata")
            .as_mapping_mut()
            .unwrap()
            .remove("annotations");
    });
    assert_fails(&e, "pod annotation prometheus.io/scrape is None");
    // The gateway must never reach the admin port: not by number, not by name.
    for target in [Value::from(9090), Value::from("admin")] {
        let e = broken("", "Service", "tcp-echo", |v| {
            let ports = at(v, "spec.ports").as_sequence_mut().unwrap();
            let mut admin = ports[0].clone();
            admin["name"] = "tcp-admin".into();
            admin["port"] = 9090.into();
            admin["targetPort"] = target;
            ports.push(admin);
        });
        assert_fails(
            &e,
            "port 9090 targets the admin port of Deployment tcp-echo-v1",
        );
    }
    // The Gateway API walkthrough's Services too.
    let e = broken("gateway-api", "Service", "tcp-echo-v1", |v| {
        at(v, "spec.ports.0")["targetPort"] = 9090.into()
    });
    assert_fails(&e, "targets the admin port of Deployment tcp-echo-v1");
}

#[test]
fn a_port_not_declared_tcp_fails() {
    let e = broken("", "Service", "tcp-echo", |v| {
        let port = at(v, "spec.ports.0");
        port["name"] = "echo".into();
        port.as_mapping_mut().unwrap().remove("appProtocol");
    });
    assert_fails(&e, "protocol sniffing would hold back the banner");
}

#[test]
fn a_subset_selecting_no_pods_fails() {
    let e = broken("", "DestinationRule", "tcp-echo-destination", |v| {
        at(v, "spec.subsets.1.labels")["version"] = "v3".into()
    });
    assert_fails(
        &e,
        "subset v2 (labels {\"version\": \"v3\"}) selects no pods",
    );
    let e = broken("", "DestinationRule", "tcp-echo-destination", |v| {
        at(v, "spec")["host"] = "tcp-echo-2".into()
    });
    assert_fails(&e, "host tcp-echo-2 is not a Service here");
}

#[test]
fn routing_to_an_unknown_subset_or_port_fails() {
    let e = broken("", "VirtualService", "tcp-echo", |v| {
        at(v, "spec.tcp.1.route.0.destination")["subset"] = "v3".into()
    });
    assert_fails(&e, "subset v3 of tcp-echo is defined by no DestinationRule");
    let e = broken("", "VirtualService", "tcp-echo", |v| {
        at(v, "spec.tcp.0.route.0.destination.port")["number"] = 9000.into()
    });
    assert_fails(
        &e,
        "destination port 9000 is not a port of Service tcp-echo",
    );
}

#[test]
fn a_missing_gateway_fails() {
    let e = broken("", "VirtualService", "tcp-echo", |v| {
        at(v, "spec.gateways")[1] = "tcp-echo-gateway-x".into()
    });
    assert_fails(&e, "gateway tcp-echo-gateway-x does not exist");
}

#[test]
fn a_port_no_gateway_listens_on_fails() {
    let e = broken("", "VirtualService", "tcp-echo", |v| {
        at(v, "spec.tcp.1.match.0")["port"] = 31402.into()
    });
    assert_fails(&e, "matches port 31402, on which no gateway");
    let e = broken("", "Gateway", "tcp-echo-gateway-v2", |v| {
        at(v, "spec.servers.0.port")["protocol"] = "HTTP".into()
    });
    assert_fails(&e, "matches port 31401, on which no gateway");
}

#[test]
fn weights_not_summing_to_100_fail() {
    let e = broken("weighted", "VirtualService", "tcp-echo", |v| {
        at(v, "spec.tcp.0.route.1")["weight"] = 10.into()
    });
    assert_fails(&e, "weights [80, 10] do not sum to 100");
}

#[test]
fn a_grace_period_not_longer_than_the_drain_timeout_fails() {
    let e = broken("", "Deployment", "tcp-echo-v1", |v| {
        at(v, "spec.template.spec")["terminationGracePeriodSeconds"] = 5.into()
    });
    assert_fails(
        &e,
        "terminationGracePeriodSeconds 5 does not exceed the shutdown delay and the drain timeout (10s in all)",
    );
}

#[test]
fn a_deployment_without_a_shutdown_delay_or_with_a_grace_period_below_delay_and_drain_fails() {
    let e = broken("", "Deployment", "tcp-echo-v1", |v| {
        set_env(v, "ECHO_SHUTDOWN_DELAY", "0")
    });
    assert_fails(&e, "ECHO_SHUTDOWN_DELAY is 0s, under 3s");
    let e = broken("", "Deployment", "tcp-echo-v2", |v| {
        set_env(v, "ECHO_SHUTDOWN_DELAY", "12")
    });
    assert_fails(
        &e,
        "terminationGracePeriodSeconds 15 does not exceed the shutdown delay and the drain timeout (17s in all)",
    );
}

#[test]
fn a_setting_the_server_would_reject_fails_as_the_server_would() {
    // The server exits 2 on these; a second parser in the checker used to fall back to the
    // default instead.
    for (name, value, message) in [
        (
            "ECHO_SOCKET_BUFFER",
            "lots",
            "for --socket-buffer (ECHO_SOCKET_BUFFER)",
        ),
        (
            "ECHO_BANNER_CLIENT",
            "maybe",
            "for --banner-client (ECHO_BANNER_CLIENT)",
        ),
        (
            "ECHO_MAX_CONNECTIONS",
            "0",
            "for --max-connections (ECHO_MAX_CONNECTIONS)",
        ),
    ] {
        let e = broken("", "Deployment", "tcp-echo-v1", |v| set_env(v, name, value));
        assert_fails(&e, "tcp-echo would not start: invalid value");
        assert_fails(&e, message);
    }
}

/// Sets (or adds) a literal environment variable of the first container.
fn set_env(v: &mut Value, name: &str, value: &str) {
    let env = at(v, "spec.template.spec.containers.0.env")
        .as_sequence_mut()
        .expect("env list");
    match env.iter_mut().find(|e| e["name"].as_str() == Some(name)) {
        Some(e) => e["value"] = value.into(),
        None => {
            let mut e = serde_yaml::Mapping::new();
            e.insert("name".into(), name.into());
            e.insert("value".into(), value.into());
            env.push(Value::Mapping(e));
        }
    }
}

#[test]
fn more_connections_than_the_memory_limit_holds_fail() {
    // The default 1024 connections in the old 64 MiB: OOM-killed by 300 non-reading clients.
    let e = broken("", "Deployment", "tcp-echo-v1", |v| {
        at(v, "spec.template.spec.containers.0.resources.limits")["memory"] = "64Mi".into();
        set_env(v, "ECHO_MAX_CONNECTIONS", "1024");
    });
    assert_fails(
        &e,
        "memory limit 67108864 bytes is below what 1024 connections",
    );
    let e = broken("", "Deployment", "tcp-echo-v2", |v| {
        set_env(v, "ECHO_MAX_CONNECTIONS", "1250");
    });
    assert_fails(
        &e,
        "Deployment tcp-echo-v2: memory limit 268435456 bytes is below",
    );
    // TLS connections hold more: the TLS walkthroughs raise the limit, and without that
    // the check fails.
    let e = broken("tls", "Deployment", "tcp-echo-v1", |v| {
        at(v, "spec.template.spec.containers.0.resources.limits")["memory"] = "256Mi".into();
    });
    assert_fails(&e, "is below what 1024 connections");
    // Larger socket buffers make each connection larger.
    let e = broken("", "Deployment", "tcp-echo-v1", |v| {
        set_env(v, "ECHO_SOCKET_BUFFER", "262144");
    });
    assert_fails(&e, "is below what 1024 connections");
}

#[test]
fn autotuned_socket_buffers_or_no_memory_limit_fail() {
    let e = broken("", "Deployment", "tcp-echo-v1", |v| {
        set_env(v, "ECHO_SOCKET_BUFFER", "0");
    });
    assert_fails(
        &e,
        "ECHO_SOCKET_BUFFER=0 (autotuning) leaves a connection's memory unbounded",
    );
    let e = broken("", "Deployment", "tcp-echo-v1", |v| {
        at(v, "spec.template.spec.containers.0.resources.limits")
            .as_mapping_mut()
            .unwrap()
            .remove("memory");
    });
    assert_fails(&e, "has no memory limit");
}

#[test]
fn memory_quantities_are_read_in_bytes() {
    use tcp_echo_k8s::quantity_bytes;
    assert_eq!(quantity_bytes("128Mi"), Some(128 << 20));
    assert_eq!(quantity_bytes("1Gi"), Some(1 << 30));
    assert_eq!(quantity_bytes("64M"), Some(64_000_000));
    assert_eq!(quantity_bytes("134217728"), Some(134_217_728));
    assert_eq!(quantity_bytes("0.5Gi"), Some(1 << 29));
    assert_eq!(quantity_bytes("12Qi"), None);
}

/// Each gateway port with its backends' Deployments and weights.
fn summary(dir: &str) -> Vec<(u16, Vec<(String, u32)>)> {
    let set = check(&k8s(dir)).unwrap_or_else(|e| panic!("{e:#?}"));
    routes(&set)
        .iter()
        .map(|r| {
            (
                r.gateway_port,
                r.backends
                    .iter()
                    .map(|b| (b.deployment.clone(), b.weight))
                    .collect(),
            )
        })
        .collect()
}

#[test]
fn the_gateway_api_port_walkthrough_is_valid() {
    let set = check(&k8s("gateway-api")).unwrap_or_else(|e| panic!("{e:#?}"));
    assert_eq!(set.deployments.len(), 2);
    assert_eq!(set.services.len(), 3);
    assert_eq!(set.api_gateways.len(), 1);
    assert_eq!(set.tcp_routes.len(), 2);
    assert!(set.gateways.is_empty() && set.virtual_services.is_empty());
    assert!(set.destination_rules.is_empty());
    assert_eq!(
        summary("gateway-api"),
        vec![
            (31400, vec![("tcp-echo-v1".into(), 1)]),
            (31401, vec![("tcp-echo-v2".into(), 1)])
        ]
    );
}

#[test]
fn the_gateway_api_weighted_walkthrough_is_valid() {
    assert_eq!(
        summary("gateway-api/weighted"),
        vec![(
            31400,
            vec![("tcp-echo-v1".into(), 80), ("tcp-echo-v2".into(), 20)]
        )]
    );
}

#[test]
fn gateway_api_documents_are_parsed_strictly() {
    let e = broken("gateway-api", "TCPRoute", "tcp-echo-v1", |v| {
        at(v, "spec")["rulez"] = Value::Sequence(vec![]);
    });
    assert_fails(&e, "unknown field `spec.rulez`");
    let e = broken("gateway-api", "TCPRoute", "tcp-echo-v1", |v| {
        let b = at(v, "spec.rules.0.backendRefs.0");
        b["prot"] = 3333.into();
    });
    assert_fails(&e, "unknown field `spec.rules.0.backendRefs.0.prot`");
    let e = broken("gateway-api", "TCPRoute", "tcp-echo-v1", |v| {
        at(v, "spec.rules.0.backendRefs.0")["port"] = "tcp".into();
    });
    assert_fails(&e, "invalid type");
    let e = broken("gateway-api", "Gateway", "tcp-echo-gateway", |v| {
        at(v, "spec.listeners.0")
            .as_mapping_mut()
            .unwrap()
            .remove("port");
    });
    assert_fails(&e, "missing field `port`");
    let e = broken("gateway-api", "TCPRoute", "tcp-echo-v2", |v| {
        at(v, "spec.rules.0.backendRefs.0")
            .as_mapping_mut()
            .unwrap()
            .remove("name");
    });
    assert_fails(&e, "missing field `name`");
    let e = broken("gateway-api", "Gateway", "tcp-echo-gateway", |v| {
        at(v, "spec")
            .as_mapping_mut()
            .unwrap()
            .remove("gatewayClassName");
    });
    assert_fails(&e, "missing field `gatewayClassName`");
}

#[test]
fn a_parent_ref_to_a_missing_gateway_or_listener_fails() {
    let e = broken("gateway-api", "TCPRoute", "tcp-echo-v1", |v| {
        at(v, "spec.parentRefs.0")["name"] = "no-such-gateway".into();
    });
    assert_fails(
        &e,
        "TCPRoute tcp-echo-v1: Gateway no-such-gateway does not exist",
    );
    let e = broken("gateway-api", "TCPRoute", "tcp-echo-v2", |v| {
        at(v, "spec.parentRefs.0")["sectionName"] = "tcp-9999".into();
    });
    assert_fails(&e, "Gateway tcp-echo-gateway has no listener tcp-9999");
    let e = broken("gateway-api", "TCPRoute", "tcp-echo-v2", |v| {
        at(v, "spec.parentRefs.0")
            .as_mapping_mut()
            .unwrap()
            .remove("sectionName");
    });
    assert_fails(&e, "names no listener (sectionName)");
}

#[test]
fn a_listener_not_tcp_or_not_admitting_tcproutes_fails() {
    let e = broken("gateway-api", "Gateway", "tcp-echo-gateway", |v| {
        at(v, "spec.listeners.0")["protocol"] = "HTTP".into();
    });
    assert_fails(
        &e,
        "listener tcp-31400 of Gateway tcp-echo-gateway speaks HTTP, not TCP",
    );
    let e = broken("gateway-api/weighted", "Gateway", "tcp-echo-gateway", |v| {
        at(v, "spec.listeners.0.allowedRoutes.kinds.0")["kind"] = "TLSRoute".into();
    });
    assert_fails(&e, "does not admit TCPRoutes");
}

#[test]
fn a_backend_ref_to_a_missing_service_or_port_fails() {
    let e = broken("gateway-api", "TCPRoute", "tcp-echo-v1", |v| {
        at(v, "spec.rules.0.backendRefs.0")["name"] = "tcp-echo-v9".into();
    });
    assert_fails(&e, "backend Service tcp-echo-v9 does not exist");
    let e = broken("gateway-api/weighted", "TCPRoute", "tcp-echo", |v| {
        at(v, "spec.rules.0.backendRefs.1")["port"] = 80.into();
    });
    assert_fails(&e, "backend Service tcp-echo-v2 has no TCP port 80");
}

#[test]
fn a_backend_service_selecting_no_pods_or_another_port_fails() {
    let e = broken("gateway-api", "Service", "tcp-echo-v2", |v| {
        at(v, "spec.selector")["version"] = "v3".into();
    });
    assert_fails(
        &e,
        "backend Service tcp-echo-v2 selects no Deployment's pods",
    );
    let e = broken("gateway-api", "Service", "tcp-echo-v1", |v| {
        at(v, "spec.ports.0")["targetPort"] = 8080.into();
    });
    assert_fails(
        &e,
        "Service tcp-echo-v1: targetPort Int(8080) is not a TCP containerPort",
    );
}

#[test]
fn weights_of_a_rule_summing_to_zero_fail() {
    let e = broken("gateway-api/weighted", "TCPRoute", "tcp-echo", |v| {
        at(v, "spec.rules.0.backendRefs.0")["weight"] = 0.into();
        at(v, "spec.rules.0.backendRefs.1")["weight"] = 0.into();
    });
    assert_fails(&e, "TCPRoute tcp-echo: rules[0] weights sum to 0");
}

#[test]
fn a_gateway_class_other_than_istio_fails() {
    let e = broken("gateway-api", "Gateway", "tcp-echo-gateway", |v| {
        at(v, "spec")["gatewayClassName"] = "cilium".into();
    });
    assert_fails(&e, "gatewayClassName cilium is not istio");
}

#[test]
fn services_not_dual_stack_fail() {
    for (dir, name) in [("", "tcp-echo"), ("gateway-api", "tcp-echo-v1")] {
        let e = broken(dir, "Service", name, |v| {
            at(v, "spec")["ipFamilyPolicy"] = "SingleStack".into();
        });
        assert_fails(
            &e,
            &format!("Service {name}: ipFamilyPolicy is Some(\"SingleStack\")"),
        );
    }
}

#[test]
fn tcproutes_are_v1_and_the_component_makes_them_v1alpha2_for_older_istio() {
    for dir in ["gateway-api", "gateway-api/weighted"] {
        let docs = build(&k8s(dir)).unwrap();
        let routes: Vec<&Doc> = docs
            .iter()
            .filter(|d| d.value["kind"].as_str() == Some("TCPRoute"))
            .collect();
        assert!(!routes.is_empty());
        for r in routes {
            assert_eq!(
                r.value["apiVersion"].as_str(),
                Some("gateway.networking.k8s.io/v1")
            );
        }
        // v1 is served by both channels of Gateway API 1.6.1, and validates in both.
        assert_eq!(
            schema::channels("gateway.networking.k8s.io/v1", "TCPRoute"),
            vec!["Standard", "Experimental"]
        );
        check(&k8s(dir)).unwrap_or_else(|e| panic!("{e:#?}"));
    }
    let docs = build(&k8s("gateway-api-v1alpha2")).unwrap();
    let versions: Vec<&str> = docs
        .iter()
        .filter(|d| d.value["kind"].as_str() == Some("TCPRoute"))
        .map(|d| d.value["apiVersion"].as_str().unwrap())
        .collect();
    assert_eq!(versions, vec!["gateway.networking.k8s.io/v1alpha2"; 2]);
    // Only the Experimental channel still serves v1alpha2, and it validates there.
    assert_eq!(
        schema::channels("gateway.networking.k8s.io/v1alpha2", "TCPRoute"),
        vec!["Experimental"]
    );
    check(&k8s("gateway-api-v1alpha2")).unwrap_or_else(|e| panic!("{e:#?}"));
    // A version no channel serves is an error.
    let e = broken("gateway-api", "TCPRoute", "tcp-echo-v1", |v| {
        v["apiVersion"] = "gateway.networking.k8s.io/v1beta1".into();
    });
    assert_fails(&e, "served by no channel of Gateway API 1.6.1");
}

#[test]
fn routes_are_validated_against_the_crd_schema_of_their_version() {
    // A misspelt field, a weight out of range, a port out of range: each names the field.
    let e = broken("gateway-api/weighted", "TCPRoute", "tcp-echo", |v| {
        let b = at(v, "spec.rules.0.backendRefs.0");
        b["wieght"] = b["weight"].clone();
    });
    assert_fails(&e, "/spec/rules/0/backendRefs/0");
    assert_fails(&e, "wieght");
    let e = broken("gateway-api/weighted", "TCPRoute", "tcp-echo", |v| {
        at(v, "spec.rules.0.backendRefs.1")["weight"] = (-5).into();
    });
    assert_fails(&e, "(Standard channel): /spec/rules/0/backendRefs/1/weight");
    let e = broken("gateway-api", "Gateway", "tcp-echo-gateway", |v| {
        at(v, "spec.listeners.0")["port"] = 70000.into();
    });
    assert_fails(&e, "/spec/listeners/0/port");
    // Istio's kinds too.
    let e = broken("weighted", "VirtualService", "tcp-echo", |v| {
        at(v, "spec.tcp.0.route.0")["weight"] = "eighty".into();
    });
    assert_fails(&e, "(Istio channel): /spec/tcp/0/route/0/weight");
}

#[test]
fn the_proxy_protocol_example_turns_it_on_for_every_pod() {
    let set = check(&k8s("proxy-protocol")).unwrap_or_else(|e| panic!("{e:#?}"));
    assert_eq!(set.deployments.len(), 2);
    for d in &set.deployments {
        let c = &d
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0];
        let env: Vec<(String, Option<String>)> = c
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.clone(), e.value.clone()))
            .collect();
        for (k, v) in [
            ("ECHO_PROXY_PROTOCOL", "required"),
            ("ECHO_BANNER_CLIENT", "true"),
        ] {
            assert!(
                env.contains(&(k.to_string(), Some(v.to_string()))),
                "{k}={v} missing: {env:?}"
            );
        }
    }
    assert!(set
        .services
        .iter()
        .any(|s| s.metadata.name.as_deref() == Some("tcp-echo-nlb")));
}

/// A scratch copy of `k8s/` (kustomize refuses files outside a kustomization's root, so
/// overlays of the repository's manifests are written inside a copy of them).
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("tcp-echo-k8s-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        copy(&k8s(""), &dir.join("k8s"));
        Scratch(dir)
    }

    /// Writes `files` (name, contents) into a new overlay `k8s/{name}`; its directory.
    fn overlay(&self, name: &str, files: &[(&str, &str)]) -> std::path::PathBuf {
        let dir = self.0.join("k8s").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for (file, text) in files {
            std::fs::write(dir.join(file), text).unwrap();
        }
        dir
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn copy(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let path = entry.path();
        if path.file_name().is_some_and(|n| n == "check") {
            continue;
        }
        let target = to.join(entry.file_name());
        if path.is_dir() {
            copy(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

const KUSTOMIZATION: &str = "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n";

#[test]
fn the_overlays_a_user_writes_next_are_rendered_as_a_cluster_would() {
    let s = Scratch::new("overlays");
    // The obvious patch of the NLB's scheme: an escaped `/` in the path is the annotation.
    let dir = s.overlay(
        "internal-nlb",
        &[(
            "kustomization.yaml",
            &format!(
                "{KUSTOMIZATION}resources:\n  - ../proxy-protocol\npatches:\n  - target: {{ kind: Service, name: tcp-echo-nlb }}\n    patch: |-\n      - op: replace\n        path: /metadata/annotations/service.beta.kubernetes.io~1aws-load-balancer-scheme\n        value: internal\n"
            ),
        )],
    );
    let set = check(&dir).unwrap_or_else(|e| panic!("{e:#?}"));
    let nlb = set
        .services
        .iter()
        .find(|svc| svc.metadata.name.as_deref() == Some("tcp-echo-nlb"))
        .unwrap();
    let annotations = nlb.metadata.annotations.clone().unwrap();
    assert_eq!(
        annotations["service.beta.kubernetes.io/aws-load-balancer-scheme"],
        "internal"
    );
    assert!(
        !annotations.keys().any(|k| k.contains("~1")),
        "{annotations:?}"
    );

    // `value: on` is YAML 1.1's true: a boolean where the API server wants a string.
    let dir = s.overlay(
        "bool-env",
        &[(
            "kustomization.yaml",
            &format!(
                "{KUSTOMIZATION}resources:\n  - ../base\npatches:\n  - target: {{ kind: Deployment, name: tcp-echo-v1 }}\n    patch: |-\n      - op: add\n        path: /spec/template/spec/containers/0/env/-\n        value: {{ name: ECHO_BANNER_CLIENT, value: on }}\n"
            ),
        )],
    );
    let e = check(&dir).unwrap_err();
    assert_fails(&e, "Deployment/tcp-echo-v1");
    assert_fails(&e, "invalid type: boolean `true`, expected a string");

    // The same resource twice.
    let dup = std::fs::read_to_string(k8s("base/service.yml")).unwrap();
    let dir = s.overlay(
        "duplicate",
        &[
            (
                "kustomization.yaml",
                &format!("{KUSTOMIZATION}resources:\n  - ../base\n  - service.yml\n"),
            ),
            ("service.yml", &dup),
        ],
    );
    let e = check(&dir).unwrap_err();
    assert_fails(&e, "already registered id");
    assert_fails(&e, "duplicate");

    // A file outside the kustomization's root.
    let dir = s.overlay(
        "outside",
        &[(
            "kustomization.yaml",
            &format!("{KUSTOMIZATION}resources:\n  - ../base/service.yml\n"),
        )],
    );
    let e = check(&dir).unwrap_err();
    assert_fails(&e, "is not in or below");

    // `kustomize edit set image tcp-echo=registry.example.com/tcp-echo:1.1.0` writes this.
    let dir = s.overlay(
        "registry",
        &[(
            "kustomization.yaml",
            &format!("{KUSTOMIZATION}resources:\n  - ../gateway-api\nimages:\n  - name: tcp-echo\n    newName: registry.example.com/tcp-echo\n    newTag: 1.1.0\n"),
        )],
    );
    let set = check(&dir).unwrap_or_else(|e| panic!("{e:#?}"));
    for d in &set.deployments {
        let c = &d
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0];
        assert_eq!(
            c.image.as_deref(),
            Some("registry.example.com/tcp-echo:1.1.0")
        );
    }
}

// TLS walkthroughs.

/// A route summed up: (gateway port, SNI, [(version, weight)], target port).
type RouteSummary = (u16, Option<String>, Vec<(String, u32)>, u16);

/// Each route of `dir`, summed up.
fn tls_summary(dir: &str) -> Vec<RouteSummary> {
    let set = check(&k8s(dir)).unwrap_or_else(|e| panic!("{dir}: {e:#?}"));
    routes(&set)
        .iter()
        .map(|r| {
            (
                r.gateway_port,
                r.sni.clone(),
                r.backends
                    .iter()
                    .map(|b| (b.version.clone(), b.weight))
                    .collect(),
                r.target_port,
            )
        })
        .collect()
}

#[test]
fn the_tls_walkthroughs_route_by_sni_to_the_tls_port() {
    for dir in ["tls", "gateway-api/tls"] {
        let weight = if dir == "tls" { 100 } else { 1 };
        assert_eq!(
            tls_summary(dir),
            vec![
                (
                    31443,
                    Some("v1.example.com".into()),
                    vec![("v1".into(), weight)],
                    8443
                ),
                (
                    31443,
                    Some("v2.example.com".into()),
                    vec![("v2".into(), weight)],
                    8443
                ),
            ],
            "{dir}"
        );
    }
    for dir in ["tls/weighted", "gateway-api/tls/weighted"] {
        assert_eq!(
            tls_summary(dir),
            vec![(
                31443,
                Some("echo.example.com".into()),
                vec![("v1".into(), 80), ("v2".into(), 20)],
                8443
            )],
            "{dir}"
        );
    }
    // The pods serve TLS on 8443 with the Secret's certificate.
    let set = check(&k8s("tls")).unwrap();
    for pod in tcp_echo_k8s::pods(&set) {
        assert_eq!(pod.config.tls_ports(), &[8443]);
        assert_eq!(pod.env["ECHO_TLS_CERT"], "/etc/tcp-echo/tls/tls.crt");
    }
}

#[test]
fn tls_routing_that_would_not_reach_the_pods_tls_fails() {
    // A gateway that terminates TLS: the pod would not see the client's TLS.
    let e = broken("tls", "Gateway", "tcp-echo-tls-gateway", |v| {
        at(v, "spec.servers.0.tls")["mode"] = "SIMPLE".into();
    });
    assert_fails(&e, "does not pass TLS through");
    // An SNI name the gateway server does not serve.
    let e = broken("tls", "VirtualService", "tcp-echo-tls", |v| {
        at(v, "spec.tls.1.match.0.sniHosts")[0] = "v3.example.com".into();
    });
    assert_fails(&e, "SNI v3.example.com is not among the hosts");
    // A TLS route to the plain port.
    let e = broken("tls", "VirtualService", "tcp-echo-tls", |v| {
        at(v, "spec.tls.0.route.0.destination.port")["number"] = 3333.into();
    });
    assert_fails(
        &e,
        "port 3333 of Deployment tcp-echo-v1 is not a TLS port of tcp-echo",
    );
    // Gateway API: a listener that terminates, a route without hostnames.
    let e = broken("gateway-api/tls", "Gateway", "tcp-echo-gateway", |v| {
        at(v, "spec.listeners.0.tls")["mode"] = "Terminate".into();
    });
    assert_fails(&e, "does not pass TLS through");
    let e = broken("gateway-api/tls", "TLSRoute", "tcp-echo-v1", |v| {
        at(v, "spec").as_mapping_mut().unwrap().remove("hostnames");
    });
    assert_fails(&e, "\"hostnames\" is a required property");
    // A certificate that is not on the Secret's volume.
    let e = broken("tls", "Deployment", "tcp-echo-v2", |v| {
        set_env(v, "ECHO_TLS_CERT", "/tmp/tls.crt");
    });
    assert_fails(&e, "ECHO_TLS_CERT=/tmp/tls.crt is on no volume mount");
}

#[test]
fn the_faults_overlay_lets_v2_only_switch_faults_and_ejects_failing_pods() {
    let set = check(&k8s("faults")).unwrap_or_else(|e| panic!("{e:#?}"));
    for pod in tcp_echo_k8s::pods(&set) {
        let control = pod.env.get("ECHO_ADMIN_CONTROL").map(String::as_str);
        match pod.deployment.as_str() {
            "tcp-echo-v2" => assert_eq!(control, Some("true")),
            _ => assert_eq!(control, None, "{}", pod.deployment),
        }
    }
    let dr = &set.destination_rules[0];
    let policy = dr.spec.traffic_policy.as_ref().expect("a traffic policy");
    assert_eq!(
        policy
            .outlier_detection
            .as_ref()
            .and_then(|o| o.consecutive5xx_errors),
        Some(3)
    );
}

// UDP walkthroughs.

#[test]
fn the_udp_walkthroughs_route_by_port_and_by_weight_to_the_udp_port() {
    assert_eq!(
        tls_summary("gateway-api/udp"),
        vec![
            (31500, None, vec![("v1".into(), 1)], 3333),
            (31501, None, vec![("v2".into(), 1)], 3333),
        ]
    );
    assert_eq!(
        tls_summary("gateway-api/udp/weighted"),
        vec![(
            31500,
            None,
            vec![("v1".into(), 80), ("v2".into(), 20)],
            3333
        )]
    );
    let set = check(&k8s("gateway-api/udp")).unwrap();
    assert!(routes(&set)
        .iter()
        .all(|r| r.protocol == tcp_echo_k8s::Protocol::Udp));
    assert_eq!(set.udp_routes.len(), 2);
    // The pods echo UDP on 3333, and every Service has the UDP port beside the TCP one.
    for pod in tcp_echo_k8s::pods(&set) {
        assert!(pod.config.udp(), "{}", pod.deployment);
        assert_eq!(pod.config.ports(), &[3333]);
    }
    for svc in &set.services {
        let ports: Vec<(i32, String)> = svc
            .spec
            .as_ref()
            .unwrap()
            .ports
            .iter()
            .flatten()
            .map(|p| (p.port, p.protocol.clone().unwrap_or_default()))
            .collect();
        assert!(ports.contains(&(3333, "TCP".into())), "{ports:?}");
        assert!(ports.contains(&(3333, "UDP".into())), "{ports:?}");
    }
    // The UDPRoutes are v1 (Standard channel).
    let docs = build(&k8s("gateway-api/udp")).unwrap();
    for d in docs.iter().filter(|d| d.value["kind"] == "UDPRoute") {
        assert_eq!(d.value["apiVersion"], "gateway.networking.k8s.io/v1");
    }
}

#[test]
fn udp_routing_that_would_not_reach_the_pods_udp_echo_fails() {
    // Istio's gateways do not route UDP.
    let e = broken("gateway-api/udp", "Gateway", "tcp-echo-udp-gateway", |v| {
        at(v, "spec")["gatewayClassName"] = "istio".into();
    });
    assert_fails(
        &e,
        "gatewayClassName istio is not eg (Istio's gateways do not route UDP)",
    );
    // A pod without ECHO_UDP: the port is not a UDP port of tcp-echo.
    let e = broken("gateway-api/udp", "Deployment", "tcp-echo-v2", |v| {
        set_env(v, "ECHO_UDP", "false");
    });
    assert_fails(
        &e,
        "port 3333 of Deployment tcp-echo-v2 is not a UDP port of tcp-echo",
    );
    // A Service without the UDP port: the route's backend has no UDP port 3333.
    let e = broken("gateway-api/udp", "Service", "tcp-echo-v1", |v| {
        at(v, "spec.ports")
            .as_sequence_mut()
            .unwrap()
            .retain(|p| p["protocol"] != "UDP");
    });
    assert_fails(
        &e,
        "UDPRoute tcp-echo-v1: backend Service tcp-echo-v1 has no UDP port 3333",
    );
    // The container does not declare the UDP port.
    let e = broken("gateway-api/udp", "Deployment", "tcp-echo-v1", |v| {
        at(v, "spec.template.spec.containers.0.ports")
            .as_sequence_mut()
            .unwrap()
            .retain(|p| p["protocol"] != "UDP");
    });
    assert_fails(&e, "is not a UDP containerPort of Deployment tcp-echo-v1");
    // A UDPRoute on a TCP listener.
    let e = broken("gateway-api/udp", "Gateway", "tcp-echo-udp-gateway", |v| {
        at(v, "spec.listeners.1")["protocol"] = "TCP".into();
    });
    assert_fails(
        &e,
        "listener udp-31501 of Gateway tcp-echo-udp-gateway speaks TCP, not UDP",
    );
}
