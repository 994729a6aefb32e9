//! `tcp-echo probe ADDR`: the walkthroughs' check as one command, runnable from the scratch
//! image itself (the `tcp-echo` binary runs it when its first argument is `probe`).
//! Synchronous like the server: `std::net`, a thread per concurrent connection.
//!
//! Each connection sends one line, reads the banner lines if any come (recognised by go-echo's
//! wording; the pod from `Running on Pod NAME.`), reads the echo of its line (the version is
//! the prefix before it), half-closes and expects the end of the connection, all within
//! `--timeout`. The answers are tallied by version and pod, with a 95% interval for each
//! share, and `--expect` tests the split against weights (Pearson's chi-square).

use std::ffi::OsString;
use std::io::{self, IsTerminal};
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{CommandFactory, FromArgMatches, Parser};

mod datagram;
mod exchange;
mod report;
pub mod stats;
#[cfg(feature = "tls")]
mod tls;

use exchange::{Answer, Failure, Kind, Target};
use report::Report;

/// The banner's lines: (variable, text before its value, text after), as the server writes
/// them (`tcp_echo::banner::BANNER_VARS`); the probe recognises them and reads the pod from
/// the `POD_NAME` line.
pub type BannerLines = [(&'static str, &'static str, &'static str)];

/// An expectation fails when a split at least this far from the weights would happen less
/// often than this if the weights were right: a correct split essentially always passes, and
/// with 200 connections an even split where 80/20 is expected fails (chi-square 112.5).
pub const EXPECT_P_MIN: f64 = 1e-6;

/// The command line of `tcp-echo probe`.
#[derive(Parser, Debug)]
#[command(
    name = "tcp-echo probe",
    about = "Checks which versions and pods of tcp-echo answer at ADDR, and in what proportions.",
    after_help = "Exit status: 0 when every connection echoed correctly (and --expect holds), 1 \
                  otherwise, 2 for a usage error.\n\
                  Example: tcp-echo probe $INGRESS_HOST:31400 --connections 200 --expect one=80,two=20"
)]
struct ProbeCli {
    /// Where to connect: HOST:PORT (a name, an IPv4 address, or [IPv6]:PORT)
    #[arg(value_name = "ADDR")]
    addr: String,

    /// Connections to open in all
    #[arg(long, default_value_t = 20, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    connections: u32,

    /// Connections open at once
    #[arg(long, default_value_t = 1, value_name = "C",
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    concurrency: u32,

    /// The line each connection sends (default: the date, as `date` prints it in UTC)
    #[arg(long, value_name = "TEXT")]
    send: Option<String>,

    /// The expected split of versions: VERSION=WEIGHT,... (weights of any scale; an empty
    /// VERSION is the answer without prefix), tested with Pearson's chi-square at p < 1e-6
    #[arg(long, value_name = "SPLIT")]
    expect: Option<String>,

    /// Print one JSON object instead of the table
    #[arg(long)]
    json: bool,

    /// Seconds each connection may take in all, connect to close (with --udp: a datagram's
    /// answer may take)
    #[arg(long, default_value = "5", value_name = "SECONDS")]
    timeout: String,

    /// Send UDP datagrams instead (to a server with --udp): one per "connection", each from
    /// its own port; an answer that does not come within --timeout counts as lost
    #[arg(long)]
    udp: bool,

    /// Speak TLS (to a --tls-port); needs --ca or --insecure. The table then shows, per
    /// version, the TLS version, SNI and ALPN the server reported in its banner
    #[cfg(feature = "tls")]
    #[arg(long, help_heading = "TLS", conflicts_with = "udp")]
    tls: bool,

    /// The server name to send (SNI) and verify [default: the host of ADDR, none for an IP]
    #[cfg(feature = "tls")]
    #[arg(long, value_name = "NAME", requires = "tls", help_heading = "TLS")]
    sni: Option<String>,

    /// Comma-separated ALPN protocols to offer
    #[cfg(feature = "tls")]
    #[arg(long, value_name = "LIST", requires = "tls", help_heading = "TLS")]
    alpn: Option<String>,

    /// PEM CA certificates to verify the server with
    #[cfg(feature = "tls")]
    #[arg(long, value_name = "FILE", requires = "tls", help_heading = "TLS")]
    ca: Option<std::path::PathBuf>,

    /// Accept any server certificate (a self-signed one)
    #[cfg(feature = "tls")]
    #[arg(long, requires = "tls", conflicts_with = "ca", help_heading = "TLS")]
    insecure: bool,

    /// PEM client certificate (mTLS), with --key
    #[cfg(feature = "tls")]
    #[arg(long, value_name = "FILE", requires_all = ["tls", "key"], help_heading = "TLS")]
    cert: Option<std::path::PathBuf>,

    /// PEM private key of --cert
    #[cfg(feature = "tls")]
    #[arg(long, value_name = "FILE", requires = "cert", help_heading = "TLS")]
    key: Option<std::path::PathBuf>,
}

/// A validated probe.
pub(crate) struct Probe {
    addr: String,
    targets: Vec<SocketAddr>,
    connections: usize,
    concurrency: usize,
    text: String,
    expect: Option<Vec<(String, f64)>>,
    json: bool,
    timeout: Duration,
    udp: bool,
    #[cfg(feature = "tls")]
    tls: Option<tls::Client>,
}

/// Runs `tcp-echo probe` with `args` (the first is `probe`), recognising `banner` lines.
pub fn main(args: &[OsString], banner: &'static BannerLines) -> ExitCode {
    let mut probe = match parse(args) {
        Ok(Ok(p)) => p,
        Ok(Err(text)) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("tcp-echo probe: {message} (try tcp-echo probe --help)");
            return ExitCode::from(2);
        }
    };
    probe.targets = match probe.addr.to_socket_addrs() {
        Ok(targets) => targets.collect(),
        Err(e) => {
            eprintln!("tcp-echo probe: cannot resolve {}: {e}", probe.addr);
            return ExitCode::FAILURE;
        }
    };
    if probe.targets.is_empty() {
        eprintln!("tcp-echo probe: cannot resolve {}: no address", probe.addr);
        return ExitCode::FAILURE;
    }
    let results = run(&probe, banner);
    let report = Report::new(&probe, &results);
    if probe.json {
        println!("{}", report.json());
    } else {
        print!("{}", report.table());
    }
    if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Parses the command line: a probe, the text of `--help`, or a one-line error.
fn parse(args: &[OsString]) -> Result<Result<Probe, String>, String> {
    let matches = match ProbeCli::command().try_get_matches_from(args) {
        Ok(m) => m,
        Err(e) => {
            use clap::error::ErrorKind::*;
            let text = e.render().to_string();
            return match e.kind() {
                DisplayHelp | DisplayVersion => Ok(Err(text)),
                _ => {
                    let first = text.lines().next().unwrap_or("invalid arguments").trim();
                    Err(first.strip_prefix("error: ").unwrap_or(first).to_string())
                }
            };
        }
    };
    let cli = ProbeCli::from_arg_matches(&matches).map_err(|e| e.to_string())?;
    let timeout: f64 = cli
        .timeout
        .trim()
        .parse()
        .ok()
        .filter(|t: &f64| t.is_finite() && *t >= 0.001 && *t <= 3600.0)
        .ok_or_else(|| {
            format!(
                "--timeout {}: expected seconds from 0.001 to 3600",
                cli.timeout
            )
        })?;
    #[cfg(feature = "tls")]
    let tls = cli.tls.then(|| tls_client(&cli)).transpose()?;
    let text = match cli.send {
        Some(t) if t.is_empty() || t.chars().any(char::is_control) => {
            return Err(format!(
                "--send {t:?}: expected one line of text, without control characters"
            ))
        }
        Some(t) => t,
        None => date(SystemTime::now()),
    };
    let expect = cli.expect.as_deref().map(parse_expect).transpose()?;
    // The shape is checked here; the name is resolved when the probe runs.
    let shaped = cli
        .addr
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if !shaped {
        return Err(format!(
            "{}: expected HOST:PORT, such as tcp-echo:3333 or [::1]:3333",
            cli.addr
        ));
    }
    Ok(Ok(Probe {
        addr: cli.addr,
        targets: Vec::new(),
        connections: cli.connections as usize,
        concurrency: cli.concurrency.min(cli.connections) as usize,
        text,
        expect,
        json: cli.json,
        timeout: Duration::from_secs_f64(timeout),
        udp: cli.udp,
        #[cfg(feature = "tls")]
        tls,
    }))
}

/// The TLS client `--tls` and its options describe.
#[cfg(feature = "tls")]
fn tls_client(cli: &ProbeCli) -> Result<tls::Client, String> {
    let host = cli.addr.rsplit_once(':').map_or("", |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let alpn = match &cli.alpn {
        None => Vec::new(),
        Some(list) => {
            let protocols: Vec<Vec<u8>> = list
                .split(',')
                .map(|p| p.trim().as_bytes().to_vec())
                .collect();
            if protocols.iter().any(|p| p.is_empty() || p.len() > 255) {
                return Err(format!(
                    "--alpn {list}: expected protocols such as h2,http/1.1"
                ));
            }
            protocols
        }
    };
    tls::Client::new(&tls::Options {
        name: cli.sni.as_deref().unwrap_or(host),
        ca: cli.ca.as_deref(),
        insecure: cli.insecure,
        alpn,
        identity: cli.cert.as_deref().zip(cli.key.as_deref()),
    })
}

/// `one=80,two=20` as `[("one", 80.0), ("two", 20.0)]`.
fn parse_expect(text: &str) -> Result<Vec<(String, f64)>, String> {
    let mut out: Vec<(String, f64)> = Vec::new();
    for part in text.split(',') {
        let (version, weight) = part
            .split_once('=')
            .ok_or_else(|| format!("--expect {text}: expected VERSION=WEIGHT,..."))?;
        let weight: f64 = weight
            .trim()
            .parse()
            .ok()
            .filter(|w: &f64| w.is_finite() && *w >= 0.0)
            .ok_or_else(|| format!("--expect {text}: {weight:?} is not a weight"))?;
        let version = version.trim().to_string();
        if out.iter().any(|(v, _)| *v == version) {
            return Err(format!("--expect {text}: {version:?} is listed twice"));
        }
        out.push((version, weight));
    }
    if out.iter().all(|(_, w)| *w == 0.0) {
        return Err(format!("--expect {text}: the weights sum to 0"));
    }
    Ok(out)
}

/// Probes every connection, `concurrency` at a time; the results in connection order.
fn run(probe: &Probe, banner: &'static BannerLines) -> Vec<Result<Answer, Failure>> {
    let next = AtomicUsize::new(0);
    let (tx, rx) = mpsc::channel();
    let target = Target {
        addrs: &probe.targets,
        text: &probe.text,
        timeout: probe.timeout,
        banner,
        #[cfg(feature = "tls")]
        tls: probe.tls.as_ref(),
    };
    std::thread::scope(|scope| {
        let mut started = 0;
        for n in 0..probe.concurrency {
            let (next, tx, target) = (&next, tx.clone(), &target);
            let spawned = std::thread::Builder::new()
                .name(format!("tcp-echo-probe-{n}"))
                .spawn_scoped(scope, move || loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= probe.connections {
                        break;
                    }
                    let result = if probe.udp {
                        datagram::exchange(target)
                    } else {
                        exchange::connection(target)
                    };
                    if tx.send((i, result)).is_err() {
                        break;
                    }
                });
            match spawned {
                Ok(_) => started += 1,
                // Fewer threads than asked for: the ones that started do the work.
                Err(e) => {
                    eprintln!("tcp-echo probe: {e}; going on with {started} at a time");
                    break;
                }
            }
        }
        drop(tx);
        if started == 0 {
            return (0..probe.connections)
                .map(|_| Err(Failure::new(Kind::Error, "cannot start a thread")))
                .collect();
        }
        collect(probe, &rx)
    })
}

/// The results, in connection order, as the workers send them; progress on a terminal.
fn collect(
    probe: &Probe,
    rx: &mpsc::Receiver<(usize, Result<Answer, Failure>)>,
) -> Vec<Result<Answer, Failure>> {
    let progress = io::stderr().is_terminal();
    let mut results: Vec<Option<Result<Answer, Failure>>> = vec![None; probe.connections];
    for (done, (i, result)) in rx.iter().enumerate() {
        results[i] = Some(result);
        if progress {
            eprint!("\r{}/{} connections", done + 1, probe.connections);
        }
    }
    if progress {
        eprint!("\r{:40}\r", "");
    }
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(Failure::new(Kind::Error, "not probed"))))
        .collect()
}

/// `date`'s output in UTC: `Mon Nov 30 10:12:01 UTC 2026`. (jiff, in the tree through
/// env_logger, formats this too, but its `strftime` adds 40 KB to a binary kept under 2.5 MiB.)
fn date(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = (secs / 86_400) as i64;
    let (h, m, s) = (secs / 3600 % 24, secs / 60 % 60, secs % 60);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{} {} {day:2} {h:02}:{m:02}:{s:02} UTC {year}",
        DAYS[days.rem_euclid(7) as usize],
        MONTHS[(month - 1) as usize]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_line_is_the_date_as_date_prints_it() {
        let at = |s: u64| UNIX_EPOCH + Duration::from_secs(s);
        assert_eq!(date(at(1_796_033_521)), "Mon Nov 30 10:12:01 UTC 2026");
        assert_eq!(date(at(0)), "Thu Jan  1 00:00:00 UTC 1970");
        assert_eq!(date(at(951_782_400)), "Tue Feb 29 00:00:00 UTC 2000");
    }

    #[test]
    fn expectations_parse_and_reject_mistakes() {
        assert_eq!(
            parse_expect("one=80,two=20"),
            Ok(vec![("one".to_string(), 80.0), ("two".to_string(), 20.0)])
        );
        assert_eq!(parse_expect("=1"), Ok(vec![(String::new(), 1.0)]));
        for bad in ["one", "one=x", "one=-1", "one=1,one=2", "one=0", ""] {
            assert!(parse_expect(bad).is_err(), "{bad}");
        }
    }
}
