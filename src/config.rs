//! Configuration: command line, environment variables and defaults, validated into [`Config`].
//!
//! Precedence: a flag (or the positional form of Istio's sample, `tcp-echo 9000,9001 one`) beats
//! its environment variable, which beats the default. Values are taken as text by clap and
//! validated here, so that every mistake produces one line naming the flag and its variable.
//! A program embedding the server builds its [`Config`] with [`Config::new`] and the `with_*`
//! methods, which apply the same rules: there is no way to a `Config` around them.

use std::ffi::OsString;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser};

use crate::banner::BannerMode;
use crate::echo::MAX_PREFIX;
use crate::proxy;

/// A client whose replies cannot be written for this long is disconnected when
/// `--idle-timeout` is 0 (never); otherwise the idle timeout is used for writes too.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(300);

/// Default `--max-connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

/// The largest accepted `--max-connections` (each connection may hold a worker thread).
pub const MAX_CONNECTIONS_LIMIT: usize = 100_000;

/// The most ports (listeners, each with its acceptor thread) one server takes.
pub const MAX_PORTS: usize = 64;

/// Default `--socket-buffer`: each connection's send and receive buffers (the kernel doubles
/// the value for its bookkeeping). Sized by measurement: see ARCHITECTURE.md and BENCHMARKS.md.
pub const DEFAULT_SOCKET_BUFFER: usize = 64 * 1024;

/// Range of a non-zero `--socket-buffer`.
pub const SOCKET_BUFFER_RANGE: std::ops::RangeInclusive<usize> = 4096..=16 * 1024 * 1024;

/// The shortest non-zero duration a setting takes: shorter ones are mistakes (`1e-10` would
/// otherwise round to zero, which means "never").
pub const MIN_DURATION: Duration = Duration::from_millis(1);

/// The validated settings of one server.
///
/// Built from the command line by [`from_args`], or by [`Config::new`] and the `with_*`
/// methods, which validate every value as the command line does.
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
}

/// A setting: its flag and its environment variable, for error messages.
#[derive(Clone, Copy)]
struct Setting(&'static str, &'static str);

const PORT: Setting = Setting("--port", "TCP_PORT");
const PREFIX: Setting = Setting("--prefix", "ECHO_PREFIX");
const BIND: Setting = Setting("--bind", "ECHO_BIND");
const MAX_CONNECTIONS: Setting = Setting("--max-connections", "ECHO_MAX_CONNECTIONS");
const IDLE_TIMEOUT: Setting = Setting("--idle-timeout", "ECHO_IDLE_TIMEOUT");
const MAX_DURATION: Setting = Setting("--max-duration", "ECHO_MAX_DURATION");
const DRAIN_TIMEOUT: Setting = Setting("--drain-timeout", "ECHO_DRAIN_TIMEOUT");
const SOCKET_BUFFER: Setting = Setting("--socket-buffer", "ECHO_SOCKET_BUFFER");
const BANNER: Setting = Setting("--banner", "ECHO_BANNER");
const MAX_LINE: Setting = Setting("--max-line", "ECHO_MAX_LINE");
const PROXY_PROTOCOL: Setting = Setting("--proxy-protocol", "ECHO_PROXY_PROTOCOL");
const BANNER_CLIENT: Setting = Setting("--banner-client", "ECHO_BANNER_CLIENT");
const ADMIN_PORT: Setting = Setting("--admin-port", "ECHO_ADMIN_PORT");

impl Setting {
    fn error(self, value: impl fmt::Display, reason: impl Into<String>) -> ConfigError {
        ConfigError {
            flag: self.0,
            var: self.1,
            value: value.to_string(),
            reason: reason.into(),
        }
    }
}

impl Config {
    /// The defaults with the given ports, bound to 127.0.0.1, without a banner. At most
    /// [`MAX_PORTS`] ports, none (but 0) twice.
    pub fn new(ports: &[u16]) -> Result<Config, ConfigError> {
        check_ports(ports).map_err(|reason| PORT.error(format!("{ports:?}"), reason))?;
        Ok(Config {
            ports: ports.to_vec(),
            prefix: None,
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            bind_fallback: false,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            idle_timeout: Some(Duration::from_secs(300)),
            max_duration: None,
            drain_timeout: Duration::from_secs(5),
            socket_buffer: Some(DEFAULT_SOCKET_BUFFER),
            banner_mode: BannerMode::Connect,
            banner: Vec::new(),
            proxy_protocol: proxy::Mode::Off,
            banner_client: false,
            admin_port: None,
        })
    }

    /// Puts `prefix` and a space before each echoed line (none when empty). At most
    /// [`MAX_PREFIX`] bytes, no control characters.
    pub fn with_prefix(mut self, prefix: &str) -> Result<Config, ConfigError> {
        self.prefix = check_prefix(prefix)?;
        Ok(self)
    }

    /// Listens on `addr`; `::` is dual-stack and falls back to `0.0.0.0` without IPv6.
    pub fn with_bind(mut self, addr: IpAddr) -> Config {
        self.bind = addr;
        self.bind_fallback = addr == IpAddr::V6(Ipv6Addr::UNSPECIFIED);
        self
    }

    /// Serves at most `n` connections at once (1 to [`MAX_CONNECTIONS_LIMIT`]).
    pub fn with_max_connections(mut self, n: usize) -> Result<Config, ConfigError> {
        self.max_connections = check_max_connections(n, &n.to_string())?;
        Ok(self)
    }

    /// Closes a connection that moves no data for `t` (zero: never).
    pub fn with_idle_timeout(mut self, t: Duration) -> Result<Config, ConfigError> {
        self.idle_timeout = check_duration(IDLE_TIMEOUT, t, &format!("{t:?}"))?;
        Ok(self)
    }

    /// Closes a connection open for `t`, however active (zero: never).
    pub fn with_max_duration(mut self, t: Duration) -> Result<Config, ConfigError> {
        self.max_duration = check_duration(MAX_DURATION, t, &format!("{t:?}"))?;
        Ok(self)
    }

    /// Waits at most `t` for open connections at shutdown (zero: not at all).
    pub fn with_drain_timeout(mut self, t: Duration) -> Result<Config, ConfigError> {
        check_duration(DRAIN_TIMEOUT, t, &format!("{t:?}"))?;
        self.drain_timeout = t;
        Ok(self)
    }

    /// Each connection's socket send and receive buffers, in bytes (0: the kernel's
    /// autotuning).
    pub fn with_socket_buffer(mut self, bytes: usize) -> Result<Config, ConfigError> {
        self.socket_buffer = check_socket_buffer(bytes, &bytes.to_string())?;
        Ok(self)
    }

    /// Sends `banner` as `mode` says (see [`crate::banner::build`] for go-echo's).
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
        self.admin_port = Some(check_admin_port(port, &self.ports, &port.to_string())?);
        Ok(self)
    }

    /// How long one blocked write of replies may take before the client is disconnected.
    pub(crate) fn write_timeout(&self) -> Duration {
        self.idle_timeout.unwrap_or(DEFAULT_WRITE_TIMEOUT)
    }
}

fn check_ports(ports: &[u16]) -> Result<(), String> {
    if ports.is_empty() {
        return Err("expected at least one port".to_string());
    }
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

fn check_admin_port(port: u16, echo: &[u16], shown: &str) -> Result<u16, ConfigError> {
    if port != 0 && echo.contains(&port) {
        return Err(ADMIN_PORT.error(shown, format!("port {port} is an echo port")));
    }
    Ok(port)
}

fn check_prefix(prefix: &str) -> Result<Option<String>, ConfigError> {
    if prefix.chars().any(|c| c.is_control()) {
        return Err(PREFIX.error(prefix, "control characters are not allowed"));
    }
    if prefix.len() > MAX_PREFIX {
        let reason = format!("at most {MAX_PREFIX} bytes (it has {})", prefix.len());
        return Err(PREFIX.error(prefix, reason));
    }
    Ok((!prefix.is_empty()).then(|| prefix.to_string()))
}

fn check_max_connections(n: usize, shown: &str) -> Result<usize, ConfigError> {
    if (1..=MAX_CONNECTIONS_LIMIT).contains(&n) {
        Ok(n)
    } else {
        Err(MAX_CONNECTIONS.error(
            shown,
            format!("expected a whole number from 1 to {MAX_CONNECTIONS_LIMIT}"),
        ))
    }
}

/// A duration setting: zero is `None` (never, or not at all), anything else at least
/// [`MIN_DURATION`].
fn check_duration(
    setting: Setting,
    t: Duration,
    shown: &str,
) -> Result<Option<Duration>, ConfigError> {
    if !t.is_zero() && t < MIN_DURATION {
        return Err(setting.error(shown, "expected 0 or at least 0.001 seconds"));
    }
    Ok((!t.is_zero()).then_some(t))
}

fn check_socket_buffer(bytes: usize, shown: &str) -> Result<Option<usize>, ConfigError> {
    match bytes {
        0 => Ok(None),
        n if SOCKET_BUFFER_RANGE.contains(&n) => Ok(Some(n)),
        _ => Err(SOCKET_BUFFER.error(
            shown,
            format!(
                "expected 0 (the kernel's autotuning) or bytes from {} to {}",
                SOCKET_BUFFER_RANGE.start(),
                SOCKET_BUFFER_RANGE.end()
            ),
        )),
    }
}

impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "prefix={:?} max_connections={} idle_timeout={} max_duration={} drain_timeout={}s \
             socket_buffer={} banner={} ({} lines{}) proxy_protocol={} admin_port={}",
            self.prefix.as_deref().unwrap_or(""),
            self.max_connections,
            seconds_or_never(self.idle_timeout),
            seconds_or_never(self.max_duration),
            self.drain_timeout.as_secs_f64(),
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
        )
    }
}

fn seconds_or_never(d: Option<Duration>) -> String {
    match d {
        Some(d) => format!("{}s", d.as_secs_f64()),
        None => "never".to_string(),
    }
}

/// An invalid setting: which flag, which variable, what value and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    flag: &'static str,
    var: &'static str,
    value: String,
    reason: String,
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

/// The command line as clap sees it: every value is text, validated by [`Cli::validate`].
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
    #[arg(value_name = "PORTS")]
    ports_arg: Option<String>,

    /// Prefix, as in Istio's sample (same as --prefix)
    #[arg(value_name = "PREFIX")]
    prefix_arg: Option<String>,

    /// Comma-separated ports, one listener each, at most 64 (0: any free port)
    #[arg(
        short = 'p',
        long = "port",
        env = "TCP_PORT",
        allow_negative_numbers = true,
        default_value = "3333",
        value_name = "PORTS"
    )]
    port: String,

    /// Put PREFIX and a space before each echoed line
    #[arg(long, env = "ECHO_PREFIX", value_name = "PREFIX")]
    prefix: Option<String>,

    /// Address to bind ("::", explicit or by default, is dual-stack and falls back to 0.0.0.0
    /// without IPv6)
    #[arg(long, env = "ECHO_BIND", default_value = "::", value_name = "ADDR")]
    bind: String,

    /// Connections served at once; one more is told "busy" and closed
    #[arg(
        long,
        env = "ECHO_MAX_CONNECTIONS",
        allow_negative_numbers = true,
        default_value = "1024",
        value_name = "N"
    )]
    max_connections: String,

    /// Close a connection silent (or not reading) this long, in seconds (0: never, else at
    /// least 0.001)
    #[arg(
        long,
        env = "ECHO_IDLE_TIMEOUT",
        allow_negative_numbers = true,
        default_value = "300",
        value_name = "SECONDS"
    )]
    idle_timeout: String,

    /// No effect since 1.0.0, accepted so that existing configurations start: every byte is
    /// echoed as soon as it arrives, nothing waits for a newline
    #[arg(
        long,
        env = "ECHO_MAX_LINE",
        allow_negative_numbers = true,
        value_name = "BYTES"
    )]
    max_line: Option<String>,

    /// Close a connection open this long, however active, in seconds (0: never); what it sent
    /// is echoed first. Bounds how long a slow client can hold a slot
    #[arg(
        long,
        env = "ECHO_MAX_DURATION",
        allow_negative_numbers = true,
        default_value = "0",
        value_name = "SECONDS"
    )]
    max_duration: String,

    /// At shutdown, wait at most this long for open connections, in seconds
    #[arg(
        long,
        env = "ECHO_DRAIN_TIMEOUT",
        allow_negative_numbers = true,
        default_value = "5",
        value_name = "SECONDS"
    )]
    drain_timeout: String,

    /// Send and receive buffer of each connection, in bytes (0: the kernel's autotuning, up to
    /// megabytes per connection)
    #[arg(
        long,
        env = "ECHO_SOCKET_BUFFER",
        allow_negative_numbers = true,
        default_value = "65536",
        value_name = "BYTES"
    )]
    socket_buffer: String,

    /// Read a PROXY protocol header (v1 or v2) at the start of each connection: off, optional
    /// or required. Enable it only where every client comes through a proxy that sends one:
    /// otherwise any client can claim any address
    #[arg(
        long,
        env = "ECHO_PROXY_PROTOCOL",
        default_value = "off",
        value_name = "MODE"
    )]
    proxy_protocol: String,

    /// End the banner with "Your address is IP:PORT.", the client as the server sees it (the
    /// PROXY header's, else the peer's): true or false
    #[arg(
        long,
        env = "ECHO_BANNER_CLIENT",
        default_value = "false",
        value_name = "BOOL",
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    banner_client: String,

    /// Serve /healthz, /readyz and /metrics (Prometheus) over HTTP on this port of the same
    /// address (0: any free port); off when unset
    #[arg(long, env = "ECHO_ADMIN_PORT", value_name = "PORT")]
    admin_port: Option<String>,

    /// When to send the welcome banner: connect, first-read or off
    #[arg(
        long,
        env = "ECHO_BANNER",
        default_value = "connect",
        value_name = "MODE"
    )]
    banner: String,
}

/// What the command line asks for.
#[derive(Debug)]
pub enum Command {
    /// Serve with these settings, logging these warnings about them once logging is up.
    Serve(Config, Vec<String>),
    /// Print this text to stdout and exit 0 (`--help`, `--version`).
    Print(String),
}

/// A command line that cannot be used: the message to print and the exit code (2).
#[derive(Debug)]
pub struct UsageError {
    /// One line (no trailing newline).
    pub message: String,
}

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Parses the process's arguments and environment (banner variables included).
pub fn from_args<I, T>(args: I) -> Result<Command, UsageError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let matches = match Cli::command().try_get_matches_from(args) {
        Ok(m) => m,
        Err(e) => {
            use clap::error::ErrorKind::*;
            return match e.kind() {
                DisplayHelp | DisplayVersion => Ok(Command::Print(e.render().to_string())),
                _ => {
                    // clap's message is several lines (usage, tips); keep its first line.
                    let text = e.render().to_string();
                    let first = text.lines().next().unwrap_or("invalid arguments").trim();
                    let first = first.strip_prefix("error: ").unwrap_or(first);
                    Err(UsageError {
                        message: format!("{first} (try --help)"),
                    })
                }
            };
        }
    };
    let cli = Cli::from_arg_matches(&matches).map_err(|e| UsageError {
        message: e
            .to_string()
            .lines()
            .next()
            .unwrap_or("invalid arguments")
            .to_string(),
    })?;
    cli.validate(&matches)
        .map(|(config, warnings)| Command::Serve(config, warnings))
        .map_err(|e| UsageError {
            message: e.to_string(),
        })
}

fn from_command_line(matches: &ArgMatches, id: &str) -> bool {
    matches.value_source(id) == Some(ValueSource::CommandLine)
}

impl Cli {
    fn validate(self, matches: &ArgMatches) -> Result<(Config, Vec<String>), ConfigError> {
        if self.ports_arg.is_some() && from_command_line(matches, "port") {
            return Err(PORT.error(&self.port, "ports are also given as PORTS; give one"));
        }
        if self.prefix_arg.is_some() && from_command_line(matches, "prefix") {
            let value = self.prefix.as_deref().unwrap_or("");
            return Err(PREFIX.error(value, "prefix is also given as PREFIX; give one"));
        }
        let ports_text = self.ports_arg.unwrap_or(self.port);
        let ports = parse_ports(&ports_text).map_err(|reason| PORT.error(&ports_text, reason))?;
        let prefix = check_prefix(&self.prefix_arg.or(self.prefix).unwrap_or_default())?;

        let bind: IpAddr =
            self.bind.trim().parse().map_err(|_| {
                BIND.error(&self.bind, "expected an IP address such as :: or 0.0.0.0")
            })?;

        let text = &self.max_connections;
        let max_connections = match text.trim().parse::<usize>() {
            Ok(n) => check_max_connections(n, text)?,
            Err(_) => check_max_connections(0, text)?,
        };

        let seconds = |setting: Setting, text: &str| -> Result<Option<Duration>, ConfigError> {
            let t = parse_seconds(text).map_err(|reason| setting.error(text, reason))?;
            check_duration(setting, t, text)
        };
        let idle_timeout = seconds(IDLE_TIMEOUT, &self.idle_timeout)?;
        let max_duration = seconds(MAX_DURATION, &self.max_duration)?;
        let drain_timeout = seconds(DRAIN_TIMEOUT, &self.drain_timeout)?.unwrap_or_default();

        // Still parsed, so that a typo is reported, but without effect.
        let mut warnings = Vec::new();
        if let Some(text) = &self.max_line {
            text.trim()
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=1 << 30).contains(n))
                .ok_or_else(|| MAX_LINE.error(text, "expected bytes from 1 to 1073741824"))?;
            warnings.push(format!(
                "--max-line/ECHO_MAX_LINE ({text}) has no effect: every byte is echoed as soon \
                 as it arrives, nothing waits for a newline"
            ));
        }

        let text = &self.socket_buffer;
        let socket_buffer = match text.trim().parse::<usize>() {
            Ok(n) => check_socket_buffer(n, text)?,
            Err(_) => check_socket_buffer(1, text)?,
        };

        let banner_mode = self
            .banner
            .trim()
            .parse::<BannerMode>()
            .map_err(|r| BANNER.error(&self.banner, r))?;
        let proxy_protocol = self
            .proxy_protocol
            .trim()
            .parse::<proxy::Mode>()
            .map_err(|r| PROXY_PROTOCOL.error(&self.proxy_protocol, r))?;
        let admin_port = match &self.admin_port {
            // Set to nothing (`ECHO_ADMIN_PORT=`): off, like unset.
            None => None,
            Some(text) if text.trim().is_empty() => None,
            Some(text) => {
                let port: u16 = text
                    .trim()
                    .parse()
                    .map_err(|_| ADMIN_PORT.error(text, "expected a port (0 to 65535)"))?;
                Some(check_admin_port(port, &ports, text)?)
            }
        };
        let banner_client = match self.banner_client.trim() {
            "true" | "1" | "yes" | "on" => true,
            "false" | "0" | "no" | "off" => false,
            _ => return Err(BANNER_CLIENT.error(&self.banner_client, "expected true or false")),
        };

        let config = Config {
            ports,
            prefix,
            bind,
            bind_fallback: false,
            max_connections,
            idle_timeout,
            max_duration,
            drain_timeout,
            socket_buffer,
            banner_mode,
            banner: crate::banner::from_env(),
            proxy_protocol,
            banner_client,
            admin_port,
        }
        .with_bind(bind);
        Ok((config, warnings))
    }
}

/// Parses a comma-separated list of ports (`9000,9001`): at most [`MAX_PORTS`]; 0 may appear
/// more than once, another port only once.
fn parse_ports(text: &str) -> Result<Vec<u16>, String> {
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
    Ok(ports)
}

/// Parses seconds, fractions allowed (`0.5`), never negative, absurdly large, or so small
/// that it would round to zero.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_lists() {
        assert_eq!(parse_ports("3333"), Ok(vec![3333]));
        assert_eq!(parse_ports("9000, 9001"), Ok(vec![9000, 9001]));
        assert_eq!(parse_ports("0,0"), Ok(vec![0, 0]));
        assert!(parse_ports("70000").unwrap_err().contains("70000"));
        assert!(parse_ports("9000,9000").is_err());
        assert!(parse_ports("").is_err());
        assert!(parse_ports("9000,").is_err());
        assert!(parse_ports("-1").is_err());
        let many = vec!["0"; MAX_PORTS].join(",");
        assert_eq!(parse_ports(&many).map(|p| p.len()), Ok(MAX_PORTS));
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
    fn error_names_flag_and_variable() {
        let e = PORT.error("70000", "70000 is not a port (0 to 65535)");
        let s = e.to_string();
        assert!(s.contains("--port") && s.contains("TCP_PORT") && s.contains("70000"));
        assert!(!s.contains('\n'));
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
    fn the_admin_port_is_off_by_default_and_never_an_echo_port() {
        let admin = |args: &[&str]| match from_args(["tcp-echo"].iter().chain(args)) {
            Ok(Command::Serve(c, _)) => Ok(c.admin_port),
            Err(e) => Err(e.to_string()),
            other => panic!("{other:?}"),
        };
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
        let from_flag = |args: &[&str]| match from_args(["tcp-echo"].iter().chain(args)) {
            Ok(Command::Serve(c, _)) => c.bind_fallback,
            other => panic!("{other:?}"),
        };
        assert!(from_flag(&["--bind", "::"]));
        assert!(from_flag(&["--bind", "0:0::0"]));
        assert!(!from_flag(&["--bind", "127.0.0.1"]));
    }
}
