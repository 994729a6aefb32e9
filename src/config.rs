//! Configuration: command line, environment variables and defaults, validated into [`Config`].
//!
//! Every setting is defined once, in [`Cli`]: its flag, its environment variable, its default
//! and its typed parser. Precedence: a flag (or the positional form of Istio's sample,
//! `tcp-echo 9000,9001 one`) beats its variable, which beats the default. Every mistake is one
//! line naming the flag and its variable.
//!
//! The same definitions serve the three ways to a [`Config`]: the process's command line and
//! environment ([`from_args`]), a container's environment as a manifest declares it
//! ([`Config::from_env`], which the manifest checker uses), and a program embedding the server
//! ([`Config::new`] and the `with_*` methods, which apply the same parsers).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
#[cfg(feature = "tls")]
use std::path::PathBuf;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser};

use crate::banner::BannerMode;
use crate::echo::MAX_PREFIX;
use crate::proxy;

/// A client whose replies cannot be written for this long is disconnected when
/// `--idle-timeout` is 0 (never); otherwise the idle timeout is used for writes too.
pub(crate) const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(300);

/// The largest accepted `--max-connections` (each connection may hold a worker thread).
const MAX_CONNECTIONS_LIMIT: usize = 100_000;

/// The most ports (listeners, each with its acceptor thread) one server takes.
const MAX_PORTS: usize = 64;

/// Range of a non-zero `--socket-buffer`.
const SOCKET_BUFFER_RANGE: std::ops::RangeInclusive<usize> = 4096..=16 * 1024 * 1024;

/// The shortest non-zero duration a setting takes: shorter ones are mistakes (`1e-10` would
/// otherwise round to zero, which means "never").
const MIN_DURATION: Duration = Duration::from_millis(1);

/// The validated settings of one server.
///
/// Built from the command line, from a container's environment ([`Config::from_env`]), or by
/// [`Config::new`] and the `with_*` methods; all three validate every value alike.
#[derive(Debug, Clone)]
pub struct Config {
    /// One listener per port; 0 asks the OS for a free port.
    pub(crate) ports: Vec<u16>,
    /// Prefix put before each echoed line (followed by one space).
    pub(crate) prefix: Option<String>,
    /// Address the listeners bind to.
    pub(crate) bind: IpAddr,
    /// Whether `bind` is `::`, which falls back to `0.0.0.0` without IPv6.
    pub(crate) bind_fallback: bool,
    /// Connections served at once; one more is told `busy`.
    pub(crate) max_connections: usize,
    /// Close a connection that moves no data (input or replies) for this long (`None`: never).
    pub(crate) idle_timeout: Option<Duration>,
    /// Close a connection open this long, however active (`None`: never).
    pub(crate) max_duration: Option<Duration>,
    /// Longest wait for open connections at shutdown.
    pub(crate) drain_timeout: Duration,
    /// At shutdown, how long to keep accepting after `/readyz` turned 503.
    pub(crate) shutdown_delay: Duration,
    /// Send and receive buffer size of each connection's socket (`None`: the kernel's
    /// autotuning, which can reach megabytes per connection).
    pub(crate) socket_buffer: Option<usize>,
    /// When the banner is sent.
    pub(crate) banner_mode: BannerMode,
    /// The banner's bytes (possibly empty), see [`crate::banner`].
    pub(crate) banner: Vec<u8>,
    /// Whether connections start with a PROXY protocol header.
    pub(crate) proxy_protocol: proxy::Mode,
    /// Whether the banner ends with the client's address (`Your address is IP:PORT.`).
    pub(crate) banner_client: bool,
    /// The admin port (health, readiness, metrics), if any; 0 asks for a free port.
    pub(crate) admin_port: Option<u16>,
    /// Whether every plain port also echoes UDP datagrams.
    pub(crate) udp: bool,
    /// The faults set at start (`--fault`).
    pub(crate) fault: Option<crate::fault::Spec>,
    /// Whether the admin port may change the faults (`PUT /fault`, `DELETE /fault`).
    pub(crate) admin_control: bool,
    /// The ports that speak TLS (one listener each; 0 asks for a free port).
    pub(crate) tls_ports: Vec<u16>,
    /// The TLS settings, with TLS ports.
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<crate::tls::Settings>,
}

/// The command line. Each field's attribute is the one definition of its flag, variable,
/// default and parser.
#[derive(Parser, Debug)]
#[command(
    name = "tcp-echo",
    version,
    about = "A small, fast and hardened TCP echo server for testing TCP routing in Kubernetes and Istio.",
    after_help = "Banner variables (downward API): NODE_NAME, POD_NAME, POD_NAMESPACE, POD_IP, \
                  SERVICE_ACCOUNT.\nLog filter: RUST_LOG (default info).\n\
                  Example (Istio's sample): tcp-echo 9000,9001 one\n\
                  Client: tcp-echo probe ADDR checks which versions answer (tcp-echo probe --help)"
)]
struct Cli {
    /// Ports, as in Istio's sample (same as --port)
    #[arg(value_name = "PORTS", value_parser = parse_ports)]
    ports_arg: Option<Ports>,

    /// Prefix, as in Istio's sample (same as --prefix)
    #[arg(value_name = "PREFIX", value_parser = parse_prefix)]
    prefix_arg: Option<Prefix>,

    /// Comma-separated ports, one listener each, at most 64 (0: any free port); "none" for no
    /// plain port (a server with only --tls-port ports)
    #[arg(short = 'p', long = "port", env = "TCP_PORT", allow_negative_numbers = true,
          default_value = "3333", value_name = "PORTS", value_parser = parse_ports)]
    port: Ports,

    /// Put PREFIX and a space before each echoed line
    #[arg(long, env = "ECHO_PREFIX", value_name = "PREFIX", value_parser = parse_prefix)]
    prefix: Option<Prefix>,

    /// Address to bind ("::", explicit or by default, is dual-stack and falls back to 0.0.0.0
    /// without IPv6)
    #[arg(long, env = "ECHO_BIND", default_value = "::", value_name = "ADDR",
          value_parser = parse_ip)]
    bind: IpAddr,

    /// Connections served at once; one more is told "busy" and closed
    #[arg(long, env = "ECHO_MAX_CONNECTIONS", allow_negative_numbers = true,
          default_value = "1024", value_name = "N", value_parser = parse_max_connections)]
    max_connections: usize,

    /// Close a connection that moves no data (input or replies) for this long, in seconds
    /// (0: never); also bounds a blocked write
    #[arg(long, env = "ECHO_IDLE_TIMEOUT", allow_negative_numbers = true,
          default_value = "300", value_name = "SECONDS", value_parser = parse_seconds)]
    idle_timeout: Duration,

    /// No effect since 1.0.0, accepted so that existing configurations start: every byte is
    /// echoed as soon as it arrives, nothing waits for a newline
    #[arg(long, env = "ECHO_MAX_LINE", allow_negative_numbers = true, value_name = "BYTES",
          value_parser = parse_max_line)]
    max_line: Option<usize>,

    /// Close a connection open this long, however active, in seconds (0: never); what it sent
    /// is echoed first, for at most --drain-timeout. Bounds how long a slow client can hold a
    /// slot
    #[arg(long, env = "ECHO_MAX_DURATION", allow_negative_numbers = true,
          default_value = "0", value_name = "SECONDS", value_parser = parse_seconds)]
    max_duration: Duration,

    /// At shutdown, wait at most this long for open connections, in seconds
    #[arg(long, env = "ECHO_DRAIN_TIMEOUT", allow_negative_numbers = true,
          default_value = "5", value_name = "SECONDS", value_parser = parse_seconds)]
    drain_timeout: Duration,

    /// On SIGTERM, keep accepting and serving for this long, in seconds, while /readyz
    /// answers 503 (so that the endpoints drop the pod before it stops accepting); then drain
    #[arg(long, env = "ECHO_SHUTDOWN_DELAY", allow_negative_numbers = true,
          default_value = "0", value_name = "SECONDS", value_parser = parse_seconds)]
    shutdown_delay: Duration,

    /// Send and receive buffer of each connection, in bytes (0: the kernel's autotuning, up to
    /// megabytes per connection)
    #[arg(long, env = "ECHO_SOCKET_BUFFER", allow_negative_numbers = true,
          default_value = "65536", value_name = "BYTES", value_parser = parse_socket_buffer)]
    socket_buffer: SocketBuffer,

    /// Read a PROXY protocol header (v1 or v2) at the start of each connection: off, optional
    /// or required. Enable it only where every client comes through a proxy that sends one:
    /// otherwise any client can claim any address
    #[arg(long, env = "ECHO_PROXY_PROTOCOL", default_value = "off", value_name = "MODE",
          value_parser = parse_from_str::<proxy::Mode>)]
    proxy_protocol: proxy::Mode,

    /// End the banner with "Your address is IP:PORT.", the client as the server sees it (the
    /// PROXY header's, else the peer's): true or false
    #[arg(long, env = "ECHO_BANNER_CLIENT", default_value = "false", value_name = "BOOL",
          num_args = 0..=1, default_missing_value = "true", value_parser = parse_bool)]
    banner_client: bool,

    /// Serve /healthz, /readyz and /metrics (Prometheus) over HTTP on this port of the same
    /// address (0: any free port); off when unset or empty
    #[arg(long, env = "ECHO_ADMIN_PORT", value_name = "PORT", value_parser = parse_optional_port)]
    admin_port: Option<OptionalPort>,

    /// When to send the welcome banner: connect, first-read or off
    #[arg(long, env = "ECHO_BANNER", default_value = "connect", value_name = "MODE",
          value_parser = parse_from_str::<BannerMode>)]
    banner: BannerMode,

    /// Misbehave on purpose: a comma-separated SPEC of delay=DUR, jitter=DUR, connect-delay=DUR,
    /// rate=SIZE, close-after=SIZE|DUR, reset, hang, refuse, percent=P (durations 250ms or
    /// 1.5s, sizes 4096, 64KiB or 1MiB). See docs/faults.md
    #[arg(long, env = "ECHO_FAULT", value_name = "SPEC", value_parser = parse_fault)]
    fault: Option<FaultSpec>,

    /// Let the admin port change the faults: PUT /fault with a SPEC, DELETE /fault (without it
    /// they answer 403): true or false
    #[arg(long, env = "ECHO_ADMIN_CONTROL", default_value = "false", value_name = "BOOL",
          num_args = 0..=1, default_missing_value = "true", value_parser = parse_bool)]
    admin_control: bool,

    /// Also echo UDP datagrams on every plain port (same number and address): one reply per
    /// datagram, the prefix and a space then the data, never larger than that: true or false
    #[arg(long, env = "ECHO_UDP", default_value = "false", value_name = "BOOL",
          num_args = 0..=1, default_missing_value = "true", value_parser = parse_bool)]
    udp: bool,

    /// Comma-separated ports that speak TLS, one listener each (inside, the echo is as on a
    /// plain port); the banner ends with what the handshake agreed
    #[cfg(feature = "tls")]
    #[arg(long, env = "ECHO_TLS_PORT", value_name = "PORTS", value_parser = parse_optional_ports,
          help_heading = "TLS")]
    tls_port: Option<Ports>,

    /// PEM certificate chain of the TLS ports, reloaded when the file changes (without it: a
    /// self-signed certificate made at start for --tls-names)
    #[cfg(feature = "tls")]
    #[arg(long, env = "ECHO_TLS_CERT", value_name = "FILE", help_heading = "TLS")]
    tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert: PKCS#8, PKCS#1 or SEC1; RSA, ECDSA or Ed25519
    #[cfg(feature = "tls")]
    #[arg(long, env = "ECHO_TLS_KEY", value_name = "FILE", help_heading = "TLS")]
    tls_key: Option<PathBuf>,

    /// Comma-separated names of the self-signed certificate [default: POD_NAME when set, the
    /// hostname, localhost]
    #[cfg(feature = "tls")]
    #[arg(long, env = "ECHO_TLS_NAMES", value_name = "NAMES", value_parser = parse_names,
          help_heading = "TLS")]
    tls_names: Option<Names>,

    /// PEM CA certificates: clients must present a certificate signed by one of them (mTLS)
    #[cfg(feature = "tls")]
    #[arg(
        long,
        env = "ECHO_TLS_CLIENT_CA",
        value_name = "FILE",
        help_heading = "TLS"
    )]
    tls_client_ca: Option<PathBuf>,

    /// With --tls-client-ca: required, or optional (clients without a certificate are served)
    #[cfg(feature = "tls")]
    #[arg(long, env = "ECHO_TLS_CLIENT_AUTH", default_value = "required", value_name = "MODE",
          value_parser = parse_from_str::<crate::tls::ClientAuth>, help_heading = "TLS")]
    tls_client_auth: crate::tls::ClientAuth,

    /// Comma-separated ALPN protocols the server agrees to, in its order of preference (no
    /// overlap: the handshake fails with no_application_protocol) [default: the client's
    /// first offered]
    #[cfg(feature = "tls")]
    #[arg(long, env = "ECHO_TLS_ALPN", value_name = "LIST", value_parser = parse_alpn,
          help_heading = "TLS")]
    tls_alpn: Option<Alpn>,

    /// Seconds a TLS handshake may take from accept; a client that sends nothing, or
    /// trickles its hello, is closed then
    #[cfg(feature = "tls")]
    #[arg(long, env = "ECHO_TLS_HANDSHAKE_TIMEOUT", default_value = "10", value_name = "SECONDS",
          value_parser = parse_seconds, help_heading = "TLS")]
    tls_handshake_timeout: Duration,
}

/// Names (of a certificate).
#[cfg(feature = "tls")]
#[derive(Debug, Clone, PartialEq, Eq)]
struct Names(Vec<String>);

/// ALPN protocol names.
#[cfg(feature = "tls")]
#[derive(Debug, Clone, PartialEq, Eq)]
struct Alpn(Vec<Vec<u8>>);

/// A comma-separated list of names, none empty.
#[cfg(feature = "tls")]
fn parse_names(text: &str) -> Result<Names, String> {
    let names: Vec<String> = text.split(',').map(|n| n.trim().to_string()).collect();
    if names
        .iter()
        .any(|n| n.is_empty() || n.chars().any(|c| c.is_control() || c == ' '))
    {
        return Err("expected comma-separated names such as tcp-echo,localhost".to_string());
    }
    Ok(Names(names))
}

/// A comma-separated list of ALPN protocol names (1 to 255 bytes each).
#[cfg(feature = "tls")]
fn parse_alpn(text: &str) -> Result<Alpn, String> {
    let protocols: Vec<Vec<u8>> = text
        .split(',')
        .map(|p| p.trim().as_bytes().to_vec())
        .collect();
    if protocols.iter().any(|p| p.is_empty() || p.len() > 255) {
        return Err("expected comma-separated protocols such as h2,http/1.1".to_string());
    }
    Ok(Alpn(protocols))
}

/// Ports, or none when the value is empty.
#[cfg(feature = "tls")]
fn parse_optional_ports(text: &str) -> Result<Ports, String> {
    if text.trim().is_empty() {
        return Ok(Ports(Vec::new()));
    }
    parse_ports(text)
}

/// A list of ports.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Ports(Vec<u16>);

/// A prefix (`None`: empty, no prefix).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Prefix(Option<String>);

/// A fault SPEC (`None`: empty, no fault).
#[derive(Debug, Clone, PartialEq)]
struct FaultSpec(Option<crate::fault::Spec>);

fn parse_fault(text: &str) -> Result<FaultSpec, String> {
    if text.trim().is_empty() {
        return Ok(FaultSpec(None));
    }
    text.parse().map(|s| FaultSpec(Some(s)))
}

/// A socket buffer size (`None`: the kernel's autotuning).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SocketBuffer(Option<usize>);

/// A port, or nothing (an empty value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct OptionalPort(Option<u16>);

/// Parses a comma-separated list of ports (`9000,9001`): at most [`MAX_PORTS`]; 0 may appear
/// more than once, another port only once.
fn parse_ports(text: &str) -> Result<Ports, String> {
    if text.trim() == "none" {
        return Ok(Ports(Vec::new()));
    }
    let mut ports = Vec::new();
    for part in text.split(',') {
        let part = part.trim();
        if part.is_empty() {
            return Err("expected comma-separated ports such as 9000,9001".to_string());
        }
        let port: u16 = part
            .parse()
            .map_err(|_| format!("{part} is not a port (0 to 65535)"))?;
        ports.push(port);
    }
    check_ports(&ports)?;
    Ok(Ports(ports))
}

fn check_ports(ports: &[u16]) -> Result<(), String> {
    if ports.len() > MAX_PORTS {
        return Err(format!("at most {MAX_PORTS} ports (got {})", ports.len()));
    }
    for (i, &port) in ports.iter().enumerate() {
        if port != 0 && ports[..i].contains(&port) {
            return Err(format!("port {port} is listed twice"));
        }
    }
    Ok(())
}

/// A prefix: at most [`MAX_PREFIX`] bytes, no control characters; empty is none.
fn parse_prefix(prefix: &str) -> Result<Prefix, String> {
    if prefix.chars().any(|c| c.is_control()) {
        return Err("control characters are not allowed".to_string());
    }
    if prefix.len() > MAX_PREFIX {
        return Err(format!(
            "at most {MAX_PREFIX} bytes (it has {})",
            prefix.len()
        ));
    }
    Ok(Prefix((!prefix.is_empty()).then(|| prefix.to_string())))
}

fn parse_ip(text: &str) -> Result<IpAddr, String> {
    text.trim()
        .parse()
        .map_err(|_| "expected an IP address such as :: or 0.0.0.0".to_string())
}

fn parse_max_connections(text: &str) -> Result<usize, String> {
    text.trim()
        .parse()
        .ok()
        .filter(|n| (1..=MAX_CONNECTIONS_LIMIT).contains(n))
        .ok_or_else(|| format!("expected a whole number from 1 to {MAX_CONNECTIONS_LIMIT}"))
}

fn parse_max_line(text: &str) -> Result<usize, String> {
    text.trim()
        .parse()
        .ok()
        .filter(|n| (1..=1 << 30).contains(n))
        .ok_or_else(|| "expected bytes from 1 to 1073741824".to_string())
}

/// Parses seconds, fractions allowed (`0.5`), never negative, absurdly large, or so small
/// that it would round to zero (which means "never").
fn parse_seconds(text: &str) -> Result<Duration, String> {
    let secs: f64 = text
        .trim()
        .parse()
        .map_err(|_| "expected seconds such as 5 or 0.5".to_string())?;
    if !secs.is_finite() || secs < 0.0 {
        return Err("expected a number of seconds, 0 or more".to_string());
    }
    if secs > 1e9 {
        return Err("at most 1000000000 seconds".to_string());
    }
    if secs > 0.0 && secs < MIN_DURATION.as_secs_f64() {
        return Err("expected 0 or at least 0.001 seconds".to_string());
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A duration: zero, or at least [`MIN_DURATION`].
fn check_duration(t: Duration) -> Result<Duration, String> {
    if !t.is_zero() && t < MIN_DURATION {
        return Err("expected 0 or at least 0.001 seconds".to_string());
    }
    Ok(t)
}

/// Bytes of a socket buffer: 0 (autotuning, `None`) or within [`SOCKET_BUFFER_RANGE`].
fn parse_socket_buffer(text: &str) -> Result<SocketBuffer, String> {
    match text.trim().parse::<usize>() {
        Ok(0) => Ok(SocketBuffer(None)),
        Ok(n) if SOCKET_BUFFER_RANGE.contains(&n) => Ok(SocketBuffer(Some(n))),
        _ => Err(format!(
            "expected 0 (the kernel's autotuning) or bytes from {} to {}",
            SOCKET_BUFFER_RANGE.start(),
            SOCKET_BUFFER_RANGE.end()
        )),
    }
}

fn parse_bool(text: &str) -> Result<bool, String> {
    match text.trim() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err("expected true or false".to_string()),
    }
}

fn parse_optional_port(text: &str) -> Result<OptionalPort, String> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(OptionalPort(None));
    }
    text.parse()
        .map(|p| OptionalPort(Some(p)))
        .map_err(|_| "expected a port (0 to 65535)".to_string())
}

fn parse_from_str<T: std::str::FromStr<Err = String>>(text: &str) -> Result<T, String> {
    text.trim().parse()
}

/// An invalid setting: which flag, which variable, what value and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    flag: String,
    var: String,
    value: String,
    reason: String,
}

impl ConfigError {
    /// The error for the setting whose clap id is `id` (its flag and variable are read from
    /// its definition in [`Cli`]).
    pub(crate) fn new(
        id: &str,
        value: impl fmt::Display,
        reason: impl Into<String>,
    ) -> ConfigError {
        let cmd = Cli::command();
        let arg = cmd.get_arguments().find(|a| a.get_id() == id);
        let flag = arg
            .and_then(|a| a.get_long())
            .map_or_else(|| id.to_string(), |l| format!("--{l}"));
        let var = arg
            .and_then(|a| a.get_env())
            .map_or_else(String::new, |v| v.to_string_lossy().into_owned());
        ConfigError {
            flag,
            var,
            value: value.to_string(),
            reason: reason.into(),
        }
    }

    /// The flag of the invalid setting (`--port`).
    pub fn flag(&self) -> &str {
        &self.flag
    }

    /// Its environment variable (`TCP_PORT`).
    pub fn variable(&self) -> &str {
        &self.var
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid value {:?} for {} ({}): {}",
            self.value, self.flag, self.var, self.reason
        )
    }
}

impl std::error::Error for ConfigError {}

/// What the command line asks for.
#[derive(Debug)]
pub(crate) enum Command {
    /// Serve with these settings, logging these warnings about them once logging is up.
    Serve(Box<Config>, Vec<String>, ClapState),
    /// Print this text to stdout and exit 0 (`--help`, `--version`).
    Print(String),
}

/// What clap built to read the command line: its `Command` and `ArgMatches`, tens of kB in
/// many small blocks. Kept to be freed once the server has started: freed on the way, the
/// groups of blocks that musl's allocator gives back to the kernel as they empty cost a
/// dozen `munmap`s before the server listens (5 % of the start-up to the first echo, see
/// ARCHITECTURE.md).
pub(crate) struct ClapState(#[allow(dead_code)] Box<(clap::Command, ArgMatches)>);

impl fmt::Debug for ClapState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClapState")
    }
}

/// Parses the process's arguments and environment (banner variables included); an error is
/// one line (no trailing newline).
pub(crate) fn from_args<I, T>(args: I) -> Result<Command, String>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let mut cmd = Cli::command();
    let (cli, matches) = match parse(&mut cmd, args) {
        Ok(parsed) => parsed,
        Err(Parsed::Print(text)) => return Ok(Command::Print(text)),
        Err(e) => return Err(e.message()),
    };
    let warnings = cli.warnings();
    let config = cli
        .into_config(&matches, crate::banner::from_env())
        .map_err(|e| e.to_string())?;
    let clap = ClapState(Box::new((cmd, matches)));
    Ok(Command::Serve(Box::new(config), warnings, clap))
}

/// Why [`parse`] produced no [`Cli`].
enum Parsed {
    /// `--help` or `--version`: the text to print.
    Print(String),
    /// An invalid value.
    Setting(ConfigError),
    /// Another mistake (an unknown flag, a missing value), as one line.
    Usage(String),
}

impl Parsed {
    /// The mistake as one line, or the text to print.
    fn message(self) -> String {
        match self {
            Parsed::Print(text) | Parsed::Usage(text) => text,
            Parsed::Setting(e) => e.to_string(),
        }
    }
}

/// Runs clap over `args` with `cmd` (the [`Cli`] command, possibly without its environment).
fn parse<I, T>(cmd: &mut clap::Command, args: I) -> Result<(Cli, ArgMatches), Parsed>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let matches = cmd.try_get_matches_from_mut(args).map_err(|e| {
        use clap::error::{ContextKind, ContextValue, ErrorKind::*};
        match e.kind() {
            DisplayHelp | DisplayVersion => Parsed::Print(e.render().to_string()),
            ValueValidation | InvalidValue => {
                let context = |kind| match e.get(kind) {
                    Some(ContextValue::String(s)) => s.clone(),
                    _ => String::new(),
                };
                let arg = context(ContextKind::InvalidArg);
                let value = context(ContextKind::InvalidValue);
                let reason = std::error::Error::source(&e)
                    .map_or_else(|| "invalid value".to_string(), |s| s.to_string());
                Parsed::Setting(ConfigError::new(&setting_of(&arg), value, reason))
            }
            _ => {
                // clap's message is several lines (usage, tips); keep its first line.
                let text = e.render().to_string();
                let first = text.lines().next().unwrap_or("invalid arguments").trim();
                let first = first.strip_prefix("error: ").unwrap_or(first);
                Parsed::Usage(format!("{first} (try --help)"))
            }
        }
    })?;
    let cli = Cli::from_arg_matches(&matches).map_err(|e| {
        Parsed::Usage(
            e.to_string()
                .lines()
                .next()
                .unwrap_or("invalid")
                .to_string(),
        )
    })?;
    Ok((cli, matches))
}

/// The clap id of the setting that clap names `arg` in an error (`--port <PORTS>`, or the
/// positional `[PORTS]`, which is the same setting).
fn setting_of(arg: &str) -> String {
    match arg {
        "[PORTS]" => "port".to_string(),
        "[PREFIX]" => "prefix".to_string(),
        _ => {
            let long = arg.trim_start_matches('-');
            let long = long.split([' ', '=']).next().unwrap_or(long);
            Cli::command()
                .get_arguments()
                .find(|a| a.get_long() == Some(long))
                .map_or_else(|| long.to_string(), |a| a.get_id().to_string())
        }
    }
}

/// [`Cli`]'s command with no environment variables read: the defaults are the definitions'
/// own, whatever this process's environment holds.
fn without_env() -> clap::Command {
    Cli::command().mut_args(|a| a.env(None::<&'static str>))
}

fn from_command_line(matches: &ArgMatches, id: &str) -> bool {
    matches.value_source(id) == Some(ValueSource::CommandLine)
}

impl Cli {
    /// Warnings about settings that are accepted but have no effect.
    fn warnings(&self) -> Vec<String> {
        self.max_line
            .iter()
            .map(|n| {
                format!(
                    "--max-line/ECHO_MAX_LINE ({n}) has no effect: every byte is echoed as soon \
                     as it arrives, nothing waits for a newline"
                )
            })
            .collect()
    }

    /// The validated settings, with `banner` (built from the banner variables).
    fn into_config(self, matches: &ArgMatches, banner: Vec<u8>) -> Result<Config, ConfigError> {
        let show = |ports: &[u16]| {
            ports
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        if self.ports_arg.is_some() && from_command_line(matches, "port") {
            return Err(ConfigError::new(
                "port",
                show(&self.port.0),
                "ports are also given as PORTS; give one",
            ));
        }
        if self.prefix_arg.is_some() && from_command_line(matches, "prefix") {
            let value = self.prefix.and_then(|p| p.0).unwrap_or_default();
            return Err(ConfigError::new(
                "prefix",
                value,
                "prefix is also given as PREFIX; give one",
            ));
        }
        #[cfg(feature = "tls")]
        let (tls_ports, tls) = self.tls_settings()?;
        let ports = self.ports_arg.unwrap_or(self.port).0;
        #[cfg(not(feature = "tls"))]
        let tls_ports: Vec<u16> = Vec::new();
        if ports.is_empty() && tls_ports.is_empty() {
            return Err(ConfigError::new(
                "port",
                "none",
                "no port to listen on: --port none needs --tls-port",
            ));
        }
        for &port in &tls_ports {
            if port != 0 && ports.contains(&port) {
                return Err(ConfigError::new(
                    "tls_port",
                    port,
                    format!("port {port} is also a plain port (--port)"),
                ));
            }
        }
        if ports.len() + tls_ports.len() > MAX_PORTS {
            return Err(ConfigError::new(
                "port",
                ports.len() + tls_ports.len(),
                format!("at most {MAX_PORTS} ports with --tls-port"),
            ));
        }
        let admin_port = match self.admin_port.and_then(|p| p.0) {
            Some(port) if port != 0 && (ports.contains(&port) || tls_ports.contains(&port)) => {
                return Err(ConfigError::new(
                    "admin_port",
                    port,
                    format!("port {port} is an echo port"),
                ))
            }
            other => other,
        };
        if self.udp && ports.is_empty() {
            return Err(ConfigError::new(
                "udp",
                "true",
                "UDP echoes on the plain ports (--port), and there are none",
            ));
        }
        if self.admin_control && admin_port.is_none() {
            return Err(ConfigError::new(
                "admin_control",
                "true",
                "has no effect without --admin-port (ECHO_ADMIN_PORT)",
            ));
        }
        let none = |t: Duration| (!t.is_zero()).then_some(t);
        Ok(Config {
            ports,
            prefix: self.prefix_arg.or(self.prefix).and_then(|p| p.0),
            bind: self.bind,
            bind_fallback: false,
            max_connections: self.max_connections,
            idle_timeout: none(self.idle_timeout),
            max_duration: none(self.max_duration),
            drain_timeout: self.drain_timeout,
            shutdown_delay: self.shutdown_delay,
            socket_buffer: self.socket_buffer.0,
            banner_mode: self.banner,
            banner,
            proxy_protocol: self.proxy_protocol,
            banner_client: self.banner_client,
            admin_port,
            udp: self.udp,
            fault: self.fault.and_then(|f| f.0),
            admin_control: self.admin_control,
            tls_ports,
            #[cfg(feature = "tls")]
            tls,
        }
        .with_bind(self.bind))
    }

    /// The TLS ports and settings; settings without TLS ports are mistakes.
    #[cfg(feature = "tls")]
    fn tls_settings(&self) -> Result<(Vec<u16>, Option<crate::tls::Settings>), ConfigError> {
        let ports = self.tls_port.clone().map(|p| p.0).unwrap_or_default();
        let given: [(&str, bool); 5] = [
            ("tls_cert", self.tls_cert.is_some()),
            ("tls_key", self.tls_key.is_some()),
            ("tls_names", self.tls_names.is_some()),
            ("tls_client_ca", self.tls_client_ca.is_some()),
            ("tls_alpn", self.tls_alpn.is_some()),
        ];
        if ports.is_empty() {
            if let Some((id, _)) = given.iter().find(|(_, set)| *set) {
                return Err(ConfigError::new(
                    id,
                    "",
                    "has no effect without --tls-port (ECHO_TLS_PORT)",
                ));
            }
            return Ok((ports, None));
        }
        let files = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
            (None, None) => None,
            (Some(cert), None) => {
                return Err(ConfigError::new(
                    "tls_key",
                    "",
                    format!("--tls-cert {} needs its key", cert.display()),
                ))
            }
            (None, Some(key)) => {
                return Err(ConfigError::new(
                    "tls_cert",
                    "",
                    format!("--tls-key {} needs its certificate", key.display()),
                ))
            }
        };
        if files.is_some() && self.tls_names.is_some() {
            return Err(ConfigError::new(
                "tls_names",
                self.tls_names
                    .clone()
                    .map(|n| n.0.join(","))
                    .unwrap_or_default(),
                "names the self-signed certificate, which --tls-cert replaces",
            ));
        }
        let settings = crate::tls::Settings {
            files,
            names: self
                .tls_names
                .clone()
                .map_or_else(crate::tls::default_names, |n| n.0),
            client_ca: self
                .tls_client_ca
                .clone()
                .map(|ca| (ca, self.tls_client_auth)),
            alpn: self.tls_alpn.clone().map(|a| a.0),
            handshake_timeout: self.tls_handshake_timeout,
        };
        if settings.handshake_timeout.is_zero() {
            return Err(ConfigError::new(
                "tls_handshake_timeout",
                0,
                "expected more than 0 seconds",
            ));
        }
        Ok((ports, Some(settings)))
    }
}

impl Config {
    /// The defaults with the given ports, bound to 127.0.0.1, without a banner. At most 64
    /// ports, none (but 0) twice.
    pub fn new(ports: &[u16]) -> Result<Config, ConfigError> {
        let shown = format!("{ports:?}");
        if ports.is_empty() {
            return Err(ConfigError::new(
                "port",
                &shown,
                "expected at least one port",
            ));
        }
        check_ports(ports).map_err(|reason| ConfigError::new("port", &shown, reason))?;
        let (cli, matches) = parse(&mut without_env(), ["tcp-echo"])
            .map_err(|_| ConfigError::new("port", &shown, ""))?;
        let mut config = cli.into_config(&matches, Vec::new())?;
        config.ports = ports.to_vec();
        Ok(config.with_bind(IpAddr::V4(Ipv4Addr::LOCALHOST)))
    }

    /// The settings a container with these environment variables runs with, as the server
    /// would read them (flags are not involved; the banner comes from the banner variables).
    /// The manifest checker reads Deployments with it.
    pub fn from_env(vars: &BTreeMap<String, String>) -> Result<Config, ConfigError> {
        let cmd = Cli::command();
        let mut args = vec!["tcp-echo".to_string()];
        for arg in cmd.get_arguments() {
            let (Some(var), Some(long)) = (arg.get_env(), arg.get_long()) else {
                continue;
            };
            if let Some(value) = vars.get(var.to_string_lossy().as_ref()) {
                args.push(format!("--{long}={value}"));
            }
        }
        let (cli, matches) = parse(&mut without_env(), args).map_err(|e| match e {
            Parsed::Setting(e) => e,
            other => ConfigError::new("port", "", other.message()),
        })?;
        let banner = crate::banner::build(|var| vars.get(var).cloned());
        cli.into_config(&matches, banner)
    }

    /// Puts `prefix` and a space before each echoed line (none when empty). At most 256 bytes,
    /// no control characters.
    pub fn with_prefix(mut self, prefix: &str) -> Result<Config, ConfigError> {
        self.prefix = parse_prefix(prefix)
            .map_err(|reason| ConfigError::new("prefix", prefix, reason))?
            .0;
        Ok(self)
    }

    /// Listens on `addr`; `::` is dual-stack and falls back to `0.0.0.0` without IPv6.
    pub fn with_bind(mut self, addr: IpAddr) -> Config {
        self.bind = addr;
        self.bind_fallback = addr == IpAddr::V6(Ipv6Addr::UNSPECIFIED);
        self
    }

    /// Serves at most `n` connections at once (1 to 100,000).
    pub fn with_max_connections(mut self, n: usize) -> Result<Config, ConfigError> {
        self.max_connections = parse_max_connections(&n.to_string())
            .map_err(|reason| ConfigError::new("max_connections", n, reason))?;
        Ok(self)
    }

    /// Closes a connection that moves no data for `t` (zero: never).
    pub fn with_idle_timeout(mut self, t: Duration) -> Result<Config, ConfigError> {
        self.idle_timeout = duration("idle_timeout", t)?;
        Ok(self)
    }

    /// Closes a connection open for `t`, however active (zero: never).
    pub fn with_max_duration(mut self, t: Duration) -> Result<Config, ConfigError> {
        self.max_duration = duration("max_duration", t)?;
        Ok(self)
    }

    /// Waits at most `t` for open connections at shutdown (zero: not at all).
    pub fn with_drain_timeout(mut self, t: Duration) -> Result<Config, ConfigError> {
        self.drain_timeout = duration("drain_timeout", t)?.unwrap_or_default();
        Ok(self)
    }

    /// At shutdown, keeps accepting for `t` after readiness turned false (zero: stops at once).
    pub fn with_shutdown_delay(mut self, t: Duration) -> Result<Config, ConfigError> {
        self.shutdown_delay = duration("shutdown_delay", t)?.unwrap_or_default();
        Ok(self)
    }

    /// Each connection's socket send and receive buffers, in bytes (0: the kernel's
    /// autotuning).
    pub fn with_socket_buffer(mut self, bytes: usize) -> Result<Config, ConfigError> {
        self.socket_buffer = parse_socket_buffer(&bytes.to_string())
            .map_err(|reason| ConfigError::new("socket_buffer", bytes, reason))?
            .0;
        Ok(self)
    }

    /// Sends `banner` as `mode` says.
    pub fn with_banner(mut self, mode: BannerMode, banner: Vec<u8>) -> Config {
        self.banner_mode = mode;
        self.banner = banner;
        self
    }

    /// Reads a PROXY protocol header at the start of each connection (see [`proxy::Mode`]).
    pub fn with_proxy_protocol(mut self, mode: proxy::Mode) -> Config {
        self.proxy_protocol = mode;
        self
    }

    /// Ends the banner with `Your address is IP:PORT.`, the client as the server sees it.
    pub fn with_banner_client(mut self, on: bool) -> Config {
        self.banner_client = on;
        self
    }

    /// Serves `/healthz`, `/readyz` and `/metrics` on `port` (0: a free one) of the same
    /// address; not one of the echo ports.
    pub fn with_admin_port(mut self, port: u16) -> Result<Config, ConfigError> {
        if port != 0 && self.ports.contains(&port) {
            return Err(ConfigError::new(
                "admin_port",
                port,
                format!("port {port} is an echo port"),
            ));
        }
        self.admin_port = Some(port);
        Ok(self)
    }

    /// The echo ports.
    pub fn ports(&self) -> &[u16] {
        &self.ports
    }

    /// The ports that speak TLS.
    pub fn tls_ports(&self) -> &[u16] {
        &self.tls_ports
    }

    /// Whether the plain ports also echo UDP.
    pub fn udp(&self) -> bool {
        self.udp
    }

    /// Sets faults from the start (see `tcp-echo --help`, `--fault`).
    pub fn with_fault(mut self, spec: &str) -> Result<Config, ConfigError> {
        self.fault = parse_fault(spec)
            .map_err(|reason| ConfigError::new("fault", spec, reason))?
            .0;
        Ok(self)
    }

    /// Also echoes UDP datagrams on every plain port.
    pub fn with_udp(mut self, on: bool) -> Config {
        self.udp = on;
        self
    }

    /// Serves TLS on `ports` (0: a free one) with a self-signed certificate for `localhost`
    /// (see [`Config::with_tls_certificate`]).
    #[cfg(feature = "tls")]
    pub fn with_tls_ports(mut self, ports: &[u16]) -> Result<Config, ConfigError> {
        check_ports(ports)
            .map_err(|reason| ConfigError::new("tls_port", format!("{ports:?}"), reason))?;
        self.tls_ports = ports.to_vec();
        self.tls.get_or_insert_with(|| crate::tls::Settings {
            files: None,
            names: vec!["localhost".to_string()],
            client_ca: None,
            alpn: None,
            handshake_timeout: Duration::from_secs(10),
        });
        Ok(self)
    }

    /// The TLS ports use this PEM certificate chain and key (instead of a self-signed
    /// certificate); they are read when the server binds.
    #[cfg(feature = "tls")]
    pub fn with_tls_certificate(
        mut self,
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
    ) -> Result<Config, ConfigError> {
        match self.tls.as_mut() {
            Some(tls) => tls.files = Some((cert.into(), key.into())),
            None => {
                return Err(ConfigError::new(
                    "tls_cert",
                    "",
                    "has no effect without TLS ports (Config::with_tls_ports)",
                ))
            }
        }
        Ok(self)
    }

    /// The admin port, if any.
    pub fn admin_port(&self) -> Option<u16> {
        self.admin_port
    }

    /// Connections served at once.
    pub fn max_connections(&self) -> usize {
        self.max_connections
    }

    /// The longest wait for open connections at shutdown.
    pub fn drain_timeout(&self) -> Duration {
        self.drain_timeout
    }

    /// How long the server keeps accepting after a SIGTERM.
    pub fn shutdown_delay(&self) -> Duration {
        self.shutdown_delay
    }

    /// The prefix, if any.
    pub fn prefix(&self) -> Option<&str> {
        self.prefix.as_deref()
    }

    /// The memory the server may need at its fullest, as a memory cgroup charges it: its base
    /// and `max_connections` times the ceiling of one connection at its worst (a TLS one, with
    /// TLS ports); `None` when the socket buffers autotune (no bound).
    pub fn memory_needed(&self) -> Option<u64> {
        crate::limits::memory_needed(
            self.max_connections,
            self.socket_buffer,
            !self.tls_ports.is_empty(),
        )
    }

    /// The ceiling of one connection's memory at its worst, as a memory cgroup charges it;
    /// `None` when the socket buffers autotune.
    pub fn memory_per_connection(&self) -> Option<u64> {
        crate::limits::memory_per_connection(self.socket_buffer, !self.tls_ports.is_empty())
    }

    /// How long one blocked write of replies may take before the client is disconnected.
    pub(crate) fn write_timeout(&self) -> Duration {
        self.idle_timeout.unwrap_or(DEFAULT_WRITE_TIMEOUT)
    }
}

/// A duration setting given as a value: zero is `None`, anything else at least
/// [`MIN_DURATION`].
fn duration(id: &str, t: Duration) -> Result<Option<Duration>, ConfigError> {
    check_duration(t).map_err(|reason| ConfigError::new(id, format!("{t:?}"), reason))?;
    Ok((!t.is_zero()).then_some(t))
}

impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "prefix={:?} max_connections={} idle_timeout={} max_duration={} drain_timeout={}s \
             shutdown_delay={}s socket_buffer={} banner={} ({} lines{}) proxy_protocol={} \
             admin_port={} tls_ports={} udp={} fault={:?}{}",
            self.prefix.as_deref().unwrap_or(""),
            self.max_connections,
            seconds_or_never(self.idle_timeout),
            seconds_or_never(self.max_duration),
            self.drain_timeout.as_secs_f64(),
            self.shutdown_delay.as_secs_f64(),
            match self.socket_buffer {
                Some(n) => n.to_string(),
                None => "auto".to_string(),
            },
            self.banner_mode,
            self.banner.iter().filter(|&&b| b == b'\n').count(),
            if self.banner_client {
                " and the client's address"
            } else {
                ""
            },
            self.proxy_protocol,
            self.admin_port
                .map_or_else(|| "off".to_string(), |p| p.to_string()),
            if self.tls_ports.is_empty() {
                "none".to_string()
            } else {
                self.tls_ports
                    .iter()
                    .map(u16::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            },
            self.udp,
            self.fault
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            if self.admin_control {
                " admin_control=on"
            } else {
                ""
            },
        )
    }
}

fn seconds_or_never(d: Option<Duration>) -> String {
    match d {
        Some(d) => format!("{}s", d.as_secs_f64()),
        None => "never".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve(args: &[&str]) -> Result<Config, String> {
        match from_args(["tcp-echo"].iter().chain(args)) {
            Ok(Command::Serve(c, _, _)) => Ok(*c),
            Ok(Command::Print(_)) => Err("printed".into()),
            Err(e) => Err(e),
        }
    }

    #[test]
    fn ports_lists() {
        assert_eq!(parse_ports("3333"), Ok(Ports(vec![3333])));
        assert_eq!(parse_ports("9000, 9001"), Ok(Ports(vec![9000, 9001])));
        assert_eq!(parse_ports("0,0"), Ok(Ports(vec![0, 0])));
        assert!(parse_ports("70000").unwrap_err().contains("70000"));
        assert!(parse_ports("9000,9000").is_err());
        assert!(parse_ports("").is_err());
        assert!(parse_ports("9000,").is_err());
        assert!(parse_ports("-1").is_err());
        let many = vec!["0"; MAX_PORTS].join(",");
        assert_eq!(parse_ports(&many).map(|p| p.0.len()), Ok(MAX_PORTS));
        let too_many = vec!["0"; MAX_PORTS + 1].join(",");
        assert!(parse_ports(&too_many)
            .unwrap_err()
            .contains("at most 64 ports"));
    }

    #[test]
    fn seconds() {
        assert_eq!(parse_seconds("5"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_seconds("0.25"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_seconds("0"), Ok(Duration::ZERO));
        assert_eq!(parse_seconds("0.001"), Ok(Duration::from_millis(1)));
        assert!(parse_seconds("-1").is_err());
        assert!(parse_seconds("NaN").is_err());
        assert!(parse_seconds("inf").is_err());
        assert!(parse_seconds("1e300").is_err());
        assert!(parse_seconds("soon").is_err());
        // Would round to zero, which means "never": a mistake, not a wish.
        assert!(parse_seconds("1e-10").is_err());
        assert!(parse_seconds("0.0009").is_err());
    }

    #[test]
    fn errors_name_the_flag_and_the_variable_from_the_definition() {
        for (args, flag, var) in [
            (&["--port", "70000"][..], "--port", "TCP_PORT"),
            (&["70000"][..], "--port", "TCP_PORT"),
            (&["--banner", "loud"][..], "--banner", "ECHO_BANNER"),
            (
                &["--shutdown-delay", "-1"][..],
                "--shutdown-delay",
                "ECHO_SHUTDOWN_DELAY",
            ),
            (&["--bind=nowhere"][..], "--bind", "ECHO_BIND"),
        ] {
            let e = serve(args).unwrap_err();
            assert!(e.contains(flag) && e.contains(var), "{args:?}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn the_builder_validates_like_the_command_line() {
        let c = Config::new(&[0]).unwrap();
        assert!(c.clone().with_prefix(&"p".repeat(MAX_PREFIX + 1)).is_err());
        assert!(c.clone().with_prefix("a\tb").is_err());
        assert_eq!(c.clone().with_prefix("").unwrap().prefix, None);
        assert!(c.clone().with_max_connections(0).is_err());
        assert!(c
            .clone()
            .with_max_connections(MAX_CONNECTIONS_LIMIT + 1)
            .is_err());
        assert!(c
            .clone()
            .with_idle_timeout(Duration::from_nanos(1))
            .is_err());
        assert_eq!(
            c.clone()
                .with_idle_timeout(Duration::ZERO)
                .unwrap()
                .idle_timeout,
            None
        );
        assert!(c.clone().with_socket_buffer(100).is_err());
        assert_eq!(c.clone().with_socket_buffer(0).unwrap().socket_buffer, None);
        assert!(Config::new(&[]).is_err());
        assert!(Config::new(&[80, 80]).is_err());
        assert!(Config::new(&[0; MAX_PORTS + 1]).is_err());
    }

    #[test]
    fn the_library_defaults_are_the_command_line_defaults() {
        let lib = Config::new(&[3333]).unwrap();
        let cli = serve(&["--port", "3333"]).unwrap();
        assert_eq!(lib.max_connections, cli.max_connections);
        assert_eq!(lib.idle_timeout, cli.idle_timeout);
        assert_eq!(lib.drain_timeout, cli.drain_timeout);
        assert_eq!(lib.socket_buffer, cli.socket_buffer);
        assert_eq!(lib.shutdown_delay, cli.shutdown_delay);
        assert_eq!(lib.bind, IpAddr::V4(Ipv4Addr::LOCALHOST));
    }

    #[test]
    fn a_container_environment_is_read_as_the_server_reads_it() {
        let env = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let c = Config::from_env(&env(&[
            ("TCP_PORT", "3333"),
            ("ECHO_PREFIX", "one"),
            ("ECHO_ADMIN_PORT", "9090"),
            ("ECHO_MAX_CONNECTIONS", "256"),
            ("POD_NAME", "p"),
        ]))
        .unwrap();
        assert_eq!(
            (c.ports(), c.prefix(), c.admin_port(), c.max_connections()),
            (&[3333][..], Some("one"), Some(9090), 256)
        );
        assert_eq!(c.banner, b"Running on Pod p.\n");
        // An invalid value fails as the server would fail, naming the variable.
        let e = Config::from_env(&env(&[("ECHO_SOCKET_BUFFER", "lots")])).unwrap_err();
        assert!(e.to_string().contains("ECHO_SOCKET_BUFFER"), "{e}");
        let e = Config::from_env(&env(&[("ECHO_BANNER_CLIENT", "maybe")])).unwrap_err();
        assert!(e.to_string().contains("ECHO_BANNER_CLIENT"), "{e}");
    }

    #[test]
    fn the_admin_port_is_off_by_default_and_never_an_echo_port() {
        let admin = |args: &[&str]| serve(args).map(|c| c.admin_port);
        assert_eq!(admin(&[]), Ok(None));
        assert_eq!(admin(&["--admin-port", ""]), Ok(None));
        assert_eq!(admin(&["--admin-port", "0"]), Ok(Some(0)));
        assert_eq!(admin(&["--port", "0", "--admin-port", "0"]), Ok(Some(0)));
        assert_eq!(admin(&["--admin-port", "9090"]), Ok(Some(9090)));
        let e = admin(&["--port", "9000,9090", "--admin-port", "9090"]).unwrap_err();
        assert!(
            e.contains("ECHO_ADMIN_PORT") && e.contains("echo port"),
            "{e}"
        );
        let e = admin(&["--admin-port", "http"]).unwrap_err();
        assert!(
            e.contains("--admin-port") && e.contains("expected a port"),
            "{e}"
        );
        let c = Config::new(&[9000]).unwrap();
        assert!(c.clone().with_admin_port(9000).is_err());
        assert_eq!(c.with_admin_port(9090).unwrap().admin_port, Some(9090));
    }

    #[test]
    fn an_explicit_unspecified_ipv6_address_falls_back_like_the_default() {
        let c = Config::new(&[0]).unwrap();
        assert!(c.clone().with_bind("::".parse().unwrap()).bind_fallback);
        assert!(!c.clone().with_bind("::1".parse().unwrap()).bind_fallback);
        assert!(!c.with_bind("0.0.0.0".parse().unwrap()).bind_fallback);
        let from_flag = |args: &[&str]| serve(args).unwrap().bind_fallback;
        assert!(from_flag(&["--bind", "::"]));
        assert!(from_flag(&["--bind", "0:0::0"]));
        assert!(!from_flag(&["--bind", "127.0.0.1"]));
    }
}
