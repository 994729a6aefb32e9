//! The welcome banner, word for word from go-echo, built from the pod's downward-API variables.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use crate::config::Config;

/// The variables the banner reads, in the order its lines appear, with each line's template.
pub(crate) const BANNER_VARS: [(&str, &str, &str); 5] = [
    ("NODE_NAME", "Welcome, you are connected to node ", "."),
    ("POD_NAME", "Running on Pod ", "."),
    ("POD_NAMESPACE", "In namespace ", "."),
    ("POD_IP", "With IP address ", "."),
    ("SERVICE_ACCOUNT", "Service ", "."),
];

/// The line `--banner-client` adds at the end of the banner: (before the address, after it).
pub(crate) const CLIENT_LINE: (&str, &str) = ("Your address is ", ".");

/// The line a TLS port's banner ends with: (before what the handshake agreed, after it).
pub(crate) const TLS_LINE: (&str, &str) = ("TLS: ", "");

/// Every banner line a client may see, as (name, text before the value, text after): the
/// variables' lines, the client line and the TLS line. `tcp-echo probe` recognises them.
pub(crate) const BANNER_LINES: [(&str, &str, &str); 7] = [
    BANNER_VARS[0],
    BANNER_VARS[1],
    BANNER_VARS[2],
    BANNER_VARS[3],
    BANNER_VARS[4],
    ("CLIENT", CLIENT_LINE.0, CLIENT_LINE.1),
    ("TLS", TLS_LINE.0, TLS_LINE.1),
];

/// The client line: `Your address is 192.0.2.7:56324.`
pub(crate) fn client_line(client: SocketAddr) -> String {
    format!("{}{client}{}\n", CLIENT_LINE.0, CLIENT_LINE.1)
}

/// When the banner is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BannerMode {
    /// Right after accept: the server speaks first, as go-echo does.
    Connect,
    /// Just before the first echo, once the client has spoken (safe behind Istio's protocol
    /// sniffing and PERMISSIVE mTLS).
    FirstRead,
    /// Never.
    Off,
}

impl FromStr for BannerMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "connect" => Ok(BannerMode::Connect),
            "first-read" => Ok(BannerMode::FirstRead),
            "off" => Ok(BannerMode::Off),
            _ => Err("expected one of connect, first-read, off".to_string()),
        }
    }
}

impl fmt::Display for BannerMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BannerMode::Connect => "connect",
            BannerMode::FirstRead => "first-read",
            BannerMode::Off => "off",
        })
    }
}

/// Builds the banner from a variable lookup: one line per variable that is set and non-empty,
/// nothing when none is. Values are used verbatim except that line breaks are replaced by
/// spaces, so each variable stays on its one line.
pub(crate) fn build(lookup: impl Fn(&str) -> Option<String>) -> Vec<u8> {
    let mut banner = String::new();
    for (var, before, after) in BANNER_VARS {
        if let Some(value) = lookup(var).filter(|v| !v.is_empty()) {
            let value = value.replace(['\r', '\n'], " ");
            banner.push_str(before);
            banner.push_str(&value);
            banner.push_str(after);
            banner.push('\n');
        }
    }
    banner.into_bytes()
}

/// The banner `client` gets (`None`: none): go-echo's lines, with `--banner-client` its
/// address, and on a TLS port what the handshake agreed (`end`).
pub(crate) fn for_client(
    config: &Config,
    client: SocketAddr,
    end: Option<&[u8]>,
) -> Option<Vec<u8>> {
    if config.banner_mode == BannerMode::Off {
        return None;
    }
    let mut banner = config.banner.clone();
    if config.banner_client {
        banner.extend_from_slice(client_line(client).as_bytes());
    }
    if let Some(end) = end {
        banner.extend_from_slice(end);
    }
    (!banner.is_empty()).then_some(banner)
}

/// The banner for this process's environment.
pub(crate) fn from_env() -> Vec<u8> {
    build(|var| std::env::var(var).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn with(vars: &[(&str, &str)]) -> String {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        String::from_utf8(build(|k| map.get(k).cloned())).unwrap()
    }

    #[test]
    fn all_variables_in_go_echo_order_and_wording() {
        let b = with(&[
            ("SERVICE_ACCOUNT", "default"),
            ("POD_IP", "10.1.2.3"),
            ("POD_NAMESPACE", "demo"),
            ("POD_NAME", "tcp-echo-v1-abc"),
            ("NODE_NAME", "node-1"),
        ]);
        assert_eq!(
            b,
            "Welcome, you are connected to node node-1.\n\
             Running on Pod tcp-echo-v1-abc.\n\
             In namespace demo.\n\
             With IP address 10.1.2.3.\n\
             Service default.\n"
        );
    }

    #[test]
    fn unset_and_empty_variables_are_skipped() {
        assert_eq!(with(&[]), "");
        assert_eq!(
            with(&[("NODE_NAME", ""), ("POD_IP", "::1")]),
            "With IP address ::1.\n"
        );
    }

    #[test]
    fn values_cannot_add_lines() {
        assert_eq!(with(&[("POD_NAME", "a\nb")]), "Running on Pod a b.\n");
    }

    #[test]
    fn modes_parse_and_print() {
        for m in ["connect", "first-read", "off"] {
            assert_eq!(m.parse::<BannerMode>().unwrap().to_string(), m);
        }
        assert!("sometimes".parse::<BannerMode>().is_err());
    }
}
