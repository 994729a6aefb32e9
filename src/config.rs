//! Configuration: command line, environment variables and defaults, validated into [`Config`].
//!
//! Precedence: a flag (or the positional form of Istio's sample, `tcp-echo 9000,9001 one`) beats
//! its environment variable, which beats the default. Values are taken as text by clap and
//! validated here, so that every mistake produces one line naming the flag and its variable.

use std::ffi::OsString;
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser};

use crate::banner::BannerMode;
use crate::echo::MAX_PREFIX;

/// A client whose replies cannot be written for this long is disconnected when
/// `--idle-timeout` is 0 (never); otherwise the idle timeout is used for writes too.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(300);

/// Default `--max-connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

/// The largest accepted `--max-connections` (each connection may hold a worker thread).
pub const MAX_CONNECTIONS_LIMIT: usize = 100_000;

/// Default `--socket-buffer`: each connection's send and receive buffers (the kernel doubles
/// the value for its bookkeeping). Sized by measurement: see ARCHITECTURE.md and BENCHMARKS.md.
pub const DEFAULT_SOCKET_BUFFER: usize = 64 * 1024;

/// Range of a non-zero `--socket-buffer`.
pub const SOCKET_BUFFER_RANGE: std::ops::RangeInclusive<usize> = 4096..=16 * 1024 * 1024;

/// The validated settings of one server.
#[derive(Debug, Clone)]
pub struct Config {
    /// One listener per port; 0 asks the OS for a free port.
    pub ports: Vec<u16>,
    /// Prefix put before each echoed line (followed by one space).
    pub prefix: Option<String>,
    /// Address the listeners bind to.
    pub bind: IpAddr,
    /// Whether `bind` is the default `::`, which falls back to `0.0.0.0` without IPv6.
    pub bind_fallback: bool,
    /// Connections served at once; one more is told `busy`.
    pub max_connections: usize,
    /// Close a connection that moves no data (input or replies) for this long (`None`: never).
    pub idle_timeout: Option<Duration>,
    /// Longest wait for open connections at shutdown.
    pub drain_timeout: Duration,
    /// Send and receive buffer size of each connection's socket (`None`: the kernel's
    /// autotuning, which can reach megabytes per connection).
    pub socket_buffer: Option<usize>,
    /// When the banner is sent.
    pub banner_mode: BannerMode,
    /// The banner's bytes (possibly empty), see [`crate::banner`].
    pub banner: Vec<u8>,
}

impl Config {
    /// Settings for tests and embedding: the defaults with the given ports, no banner.
    pub fn new(ports: Vec<u16>) -> Config {
        Config {
            ports,
            prefix: None,
            bind: IpAddr::from([127, 0, 0, 1]),
            bind_fallback: false,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            idle_timeout: Some(Duration::from_secs(300)),
            drain_timeout: Duration::from_secs(5),
            socket_buffer: Some(DEFAULT_SOCKET_BUFFER),
            banner_mode: BannerMode::Connect,
            banner: Vec::new(),
        }
    }

    /// How long one blocked write of replies may take before the client is disconnected.
    pub fn write_timeout(&self) -> Duration {
        self.idle_timeout.unwrap_or(DEFAULT_WRITE_TIMEOUT)
    }
}

impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "prefix={:?} max_connections={} idle_timeout={} drain_timeout={}s socket_buffer={} \
             banner={} ({} lines)",
            self.prefix.as_deref().unwrap_or(""),
            self.max_connections,
            match self.idle_timeout {
                Some(d) => format!("{}s", d.as_secs_f64()),
                None => "never".to_string(),
            },
            self.drain_timeout.as_secs_f64(),
            match self.socket_buffer {
                Some(n) => n.to_string(),
                None => "auto".to_string(),
            },
            self.banner_mode,
            self.banner.iter().filter(|&&b| b == b'\n').count(),
        )
    }
}

/// An invalid setting: which flag, which variable, what value and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The flag, e.g. `--port`.
    pub flag: &'static str,
    /// Its environment variable, e.g. `TCP_PORT`.
    pub var: &'static str,
    /// The offending value as given.
    pub value: String,
    /// What is wrong with it.
    pub reason: String,
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
                  Example (Istio's sample): tcp-echo 9000,9001 one"
)]
struct Cli {
    /// Ports, as in Istio's sample (same as --port)
    #[arg(value_name = "PORTS")]
    ports_arg: Option<String>,

    /// Prefix, as in Istio's sample (same as --prefix)
    #[arg(value_name = "PREFIX")]
    prefix_arg: Option<String>,

    /// Comma-separated ports, one listener each (0: any free port)
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

    /// Address to bind ("::" is dual-stack, falling back to 0.0.0.0 without IPv6)
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

    /// Close a connection silent (or not reading) this long, in seconds (0: never)
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
        let err = |flag, var, value: &str, reason: &str| ConfigError {
            flag,
            var,
            value: value.to_string(),
            reason: reason.to_string(),
        };

        if self.ports_arg.is_some() && from_command_line(matches, "port") {
            return Err(err(
                "--port",
                "TCP_PORT",
                &self.port,
                "ports are also given as PORTS; give one",
            ));
        }
        if self.prefix_arg.is_some() && from_command_line(matches, "prefix") {
            let value = self.prefix.as_deref().unwrap_or("");
            return Err(err(
                "--prefix",
                "ECHO_PREFIX",
                value,
                "prefix is also given as PREFIX; give one",
            ));
        }
        let ports_text = self.ports_arg.unwrap_or(self.port);
        let ports = parse_ports(&ports_text)
            .map_err(|reason| err("--port", "TCP_PORT", &ports_text, &reason))?;
        let prefix = self.prefix_arg.or(self.prefix).filter(|p| !p.is_empty());
        if let Some(p) = &prefix {
            if p.chars().any(|c| c.is_control()) {
                return Err(err(
                    "--prefix",
                    "ECHO_PREFIX",
                    p,
                    "control characters are not allowed",
                ));
            }
            if p.len() > MAX_PREFIX {
                return Err(err(
                    "--prefix",
                    "ECHO_PREFIX",
                    p,
                    &format!("at most {MAX_PREFIX} bytes (it has {})", p.len()),
                ));
            }
        }

        let bind: IpAddr = self.bind.trim().parse().map_err(|_| {
            err(
                "--bind",
                "ECHO_BIND",
                &self.bind,
                "expected an IP address such as :: or 0.0.0.0",
            )
        })?;
        let bind_fallback = matches.value_source("bind") == Some(ValueSource::DefaultValue);

        let max_connections = self
            .max_connections
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_CONNECTIONS_LIMIT).contains(n))
            .ok_or_else(|| {
                err(
                    "--max-connections",
                    "ECHO_MAX_CONNECTIONS",
                    &self.max_connections,
                    &format!("expected a whole number from 1 to {MAX_CONNECTIONS_LIMIT}"),
                )
            })?;

        let idle = parse_seconds(&self.idle_timeout).map_err(|r| {
            err(
                "--idle-timeout",
                "ECHO_IDLE_TIMEOUT",
                &self.idle_timeout,
                &r,
            )
        })?;
        let idle_timeout = (!idle.is_zero()).then_some(idle);

        // Still parsed, so that a typo is reported, but without effect.
        let mut warnings = Vec::new();
        if let Some(text) = &self.max_line {
            text.trim()
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=1 << 30).contains(n))
                .ok_or_else(|| {
                    err(
                        "--max-line",
                        "ECHO_MAX_LINE",
                        text,
                        "expected bytes from 1 to 1073741824",
                    )
                })?;
            warnings.push(format!(
                "--max-line/ECHO_MAX_LINE ({text}) has no effect: every byte is echoed as soon \
                 as it arrives, nothing waits for a newline"
            ));
        }

        let drain_timeout = parse_seconds(&self.drain_timeout).map_err(|r| {
            err(
                "--drain-timeout",
                "ECHO_DRAIN_TIMEOUT",
                &self.drain_timeout,
                &r,
            )
        })?;

        let socket_buffer = match self.socket_buffer.trim().parse::<usize>() {
            Ok(0) => None,
            Ok(n) if SOCKET_BUFFER_RANGE.contains(&n) => Some(n),
            _ => {
                return Err(err(
                    "--socket-buffer",
                    "ECHO_SOCKET_BUFFER",
                    &self.socket_buffer,
                    &format!(
                        "expected 0 (the kernel's autotuning) or bytes from {} to {}",
                        SOCKET_BUFFER_RANGE.start(),
                        SOCKET_BUFFER_RANGE.end()
                    ),
                ))
            }
        };

        let banner_mode = self
            .banner
            .trim()
            .parse::<BannerMode>()
            .map_err(|r| err("--banner", "ECHO_BANNER", &self.banner, &r))?;

        let config = Config {
            ports,
            prefix,
            bind,
            bind_fallback,
            max_connections,
            idle_timeout,
            drain_timeout,
            socket_buffer,
            banner_mode,
            banner: crate::banner::from_env(),
        };
        Ok((config, warnings))
    }
}

/// Parses a comma-separated list of ports (`9000,9001`); 0 may appear more than once.
pub fn parse_ports(text: &str) -> Result<Vec<u16>, String> {
    let mut ports = Vec::new();
    for part in text.split(',') {
        let part = part.trim();
        if part.is_empty() {
            return Err("expected comma-separated ports such as 9000,9001".to_string());
        }
        let port: u16 = part
            .parse()
            .map_err(|_| format!("{part} is not a port (0 to 65535)"))?;
        if port != 0 && ports.contains(&port) {
            return Err(format!("port {port} is listed twice"));
        }
        ports.push(port);
    }
    Ok(ports)
}

/// Parses seconds, fractions allowed (`0.5`), never negative or absurdly large.
pub fn parse_seconds(text: &str) -> Result<Duration, String> {
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
    }

    #[test]
    fn seconds() {
        assert_eq!(parse_seconds("5"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_seconds("0.25"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_seconds("0"), Ok(Duration::ZERO));
        assert!(parse_seconds("-1").is_err());
        assert!(parse_seconds("NaN").is_err());
        assert!(parse_seconds("inf").is_err());
        assert!(parse_seconds("1e300").is_err());
        assert!(parse_seconds("soon").is_err());
    }

    #[test]
    fn error_names_flag_and_variable() {
        let e = ConfigError {
            flag: "--port",
            var: "TCP_PORT",
            value: "70000".into(),
            reason: "70000 is not a port (0 to 65535)".into(),
        };
        let s = e.to_string();
        assert!(s.contains("--port") && s.contains("TCP_PORT") && s.contains("70000"));
        assert!(!s.contains('\n'));
    }
}
