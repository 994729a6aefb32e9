//! `tcp-echo probe ADDR`: the walkthroughs' check as one command, runnable from the scratch
//! image itself (the `tcp-echo` binary runs it when its first argument is `probe`).
//! Synchronous like the server: `std::net`, a thread per concurrent connection.
//!
//! Each connection sends one line, reads the banner lines if any come (recognised by go-echo's
//! wording; the pod from `Running on Pod NAME.`), reads the echo of its line (the version is
//! the prefix before it), half-closes and expects the end of the connection, all within
//! `--timeout`. The answers are tallied by version and pod, with a 95% interval for each
//! share, and `--expect` tests the split against weights (Pearson's chi-square).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, ErrorKind, IsTerminal, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use clap::{CommandFactory, FromArgMatches, Parser};

pub mod stats;

/// The banner's lines: (variable, text before its value, text after), as the server writes
/// them (`tcp_echo::banner::BANNER_VARS`); the probe recognises them and reads the pod from
/// the `POD_NAME` line.
pub type BannerLines = [(&'static str, &'static str, &'static str)];

/// An expectation fails when a split at least this far from the weights would happen less
/// often than this if the weights were right: a correct split essentially always passes, and
/// with 200 connections an even split where 80/20 is expected fails (chi-square 112.5).
pub const EXPECT_P_MIN: f64 = 1e-6;

/// The longest line read from a server.
const MAX_LINE: u64 = 64 * 1024;

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

    /// Seconds each connection may take in all, connect to close
    #[arg(long, default_value = "5", value_name = "SECONDS")]
    timeout: String,
}

/// A validated probe.
#[derive(Debug)]
struct Probe {
    addr: String,
    targets: Vec<SocketAddr>,
    connections: usize,
    concurrency: usize,
    text: String,
    expect: Option<Vec<(String, f64)>>,
    json: bool,
    timeout: Duration,
}

/// What one connection found.
#[derive(Debug, Clone)]
struct Answer {
    version: String,
    pod: Option<String>,
    connect: Duration,
    round_trip: Duration,
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
    let text = match cli.send {
        Some(t) if t.is_empty() || t.chars().any(char::is_control) => {
            return Err(format!(
                "--send {t:?}: expected one line of text, without control characters"
            ))
        }
        Some(t) => t,
        None => date(jiff::Timestamp::now()),
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
    }))
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
fn run(probe: &Probe, banner: &'static BannerLines) -> Vec<Result<Answer, String>> {
    let next = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = mpsc::channel();
    let mut workers = Vec::new();
    for n in 0..probe.concurrency {
        let (next, tx) = (Arc::clone(&next), tx.clone());
        let (targets, text, total, timeout) = (
            probe.targets.clone(),
            probe.text.clone(),
            probe.connections,
            probe.timeout,
        );
        let spawned = std::thread::Builder::new()
            .name(format!("tcp-echo-probe-{n}"))
            .spawn(move || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let result = connection(&targets, &text, timeout, banner);
                if tx.send((i, result)).is_err() {
                    break;
                }
            });
        match spawned {
            Ok(join) => workers.push(join),
            // Fewer threads than asked for: the ones that started do the work.
            Err(e) if n > 0 => {
                eprintln!("tcp-echo probe: {e}; going on with {n} at a time");
                break;
            }
            Err(e) => {
                return (0..probe.connections)
                    .map(|_| Err(format!("cannot start a thread: {e}")))
                    .collect()
            }
        }
    }
    drop(tx);
    let progress = io::stderr().is_terminal();
    let mut results: Vec<Option<Result<Answer, String>>> = vec![None; probe.connections];
    for (done, (i, result)) in rx.iter().enumerate() {
        results[i] = Some(result);
        if progress {
            eprint!("\r{}/{} connections", done + 1, probe.connections);
        }
    }
    if progress {
        eprint!("\r{:40}\r", "");
    }
    for w in workers {
        let _ = w.join();
    }
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err("not probed".to_string())))
        .collect()
}

/// One connection: connect, send `text`, read banner lines and the echo, half-close, expect
/// the end; all within `timeout`.
fn connection(
    targets: &[SocketAddr],
    text: &str,
    timeout: Duration,
    banner: &BannerLines,
) -> Result<Answer, String> {
    let start = Instant::now();
    let deadline = start + timeout;
    let left = || {
        let left = deadline.saturating_duration_since(Instant::now());
        (!left.is_zero())
            .then_some(left)
            .ok_or_else(|| format!("timed out after {:.1}s", timeout.as_secs_f64()))
    };
    let mut last = None;
    let mut stream = None;
    for target in targets {
        match TcpStream::connect_timeout(target, left()?) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = Some(format!("connect to {target}: {e}")),
        }
    }
    let stream = stream.ok_or_else(|| last.unwrap_or_default())?;
    let connect = start.elapsed();
    let failed = |what: &str, e: io::Error| match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => {
            format!("timed out after {:.1}s {what}", timeout.as_secs_f64())
        }
        _ => format!("{what}: {e}"),
    };
    let _ = stream.set_nodelay(true);
    let mut io = Deadline {
        stream: &stream,
        until: deadline,
    };
    let sent = Instant::now();
    io.write_all(format!("{text}\n").as_bytes())
        .map_err(|e| failed("sending the line", e))?;
    let mut reader = BufReader::new(io);
    let mut pod = None;
    let (version, round_trip) = loop {
        let mut line = Vec::new();
        let n = (&mut reader)
            .take(MAX_LINE)
            .read_until(b'\n', &mut line)
            .map_err(|e| failed("waiting for the echo", e))?;
        if n == 0 {
            return Err("the server closed the connection without echoing the line".into());
        }
        if line.pop() != Some(b'\n') {
            return Err(format!(
                "the server closed the connection in the middle of a line: {:?}",
                String::from_utf8_lossy(&line)
            ));
        }
        let line = String::from_utf8_lossy(&line).into_owned();
        if let Some(version) = echo_version(&line, text) {
            break (version.to_string(), sent.elapsed());
        }
        match banner_line(banner, &line) {
            Some(Some(name)) => pod = Some(name.to_string()),
            Some(None) => {}
            None => return Err(format!("wrong echo: {line:?} for {text:?}")),
        }
    };
    stream
        .shutdown(Shutdown::Write)
        .map_err(|e| failed("half-closing", e))?;
    let mut rest = Vec::new();
    (&mut reader)
        .take(MAX_LINE)
        .read_to_end(&mut rest)
        .map_err(|e| failed("waiting for the end after the half-close", e))?;
    if !rest.is_empty() {
        return Err(format!(
            "unexpected bytes after the echo: {:?}",
            String::from_utf8_lossy(&rest)
        ));
    }
    Ok(Answer {
        version,
        pod,
        connect,
        round_trip,
    })
}

/// A connection's socket read and written against one deadline: each call waits only for
/// what is left of it, so a server that trickles bytes cannot stretch `--timeout`.
struct Deadline<'a> {
    stream: &'a TcpStream,
    until: Instant,
}

impl Deadline<'_> {
    /// What is left of the time, set as the socket's timeout for the next call.
    fn arm(&self, set: impl Fn(&TcpStream, Option<Duration>) -> io::Result<()>) -> io::Result<()> {
        let left = self.until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ErrorKind::TimedOut.into());
        }
        set(self.stream, Some(left))
    }
}

impl Read for Deadline<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.arm(TcpStream::set_read_timeout)?;
        (&mut &*self.stream).read(buf)
    }
}

impl Write for Deadline<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.arm(TcpStream::set_write_timeout)?;
        (&mut &*self.stream).write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The version of a line if it is the echo of `text`: the prefix before it (`one` in
/// `one TEXT`), or `""` without one.
fn echo_version<'a>(line: &'a str, text: &str) -> Option<&'a str> {
    if line == text {
        return Some("");
    }
    line.strip_suffix(text)?.strip_suffix(' ')
}

/// Whether `line` is one of go-echo's banner lines: `Some(Some(pod))` for `Running on Pod
/// NAME.`, `Some(None)` for the others, `None` if it is not a banner line.
fn banner_line<'a>(banner: &BannerLines, line: &'a str) -> Option<Option<&'a str>> {
    banner.iter().find_map(|(var, before, after)| {
        let value = line.strip_prefix(before)?.strip_suffix(after)?;
        Some((*var == "POD_NAME").then_some(value))
    })
}

/// `date`'s output in UTC: `Mon Nov 30 10:12:01 UTC 2026`.
fn date(t: jiff::Timestamp) -> String {
    t.strftime("%a %b %e %H:%M:%S UTC %Y").to_string()
}

/// The answers tallied.
struct Report<'a> {
    probe: &'a Probe,
    answers: Vec<&'a Answer>,
    failures: BTreeMap<&'a str, usize>,
    /// (version, pod) -> answers.
    rows: BTreeMap<(&'a str, &'a str), Vec<&'a Answer>>,
    versions: BTreeMap<&'a str, u64>,
    pods: BTreeMap<&'a str, u64>,
    /// (statistic, degrees of freedom, p), when an expectation was given and can be tested.
    test: Option<(f64, usize, f64)>,
    /// Versions answered but not expected.
    unexpected: Vec<&'a str>,
}

impl<'a> Report<'a> {
    fn new(probe: &'a Probe, results: &'a [Result<Answer, String>]) -> Report<'a> {
        let mut r = Report {
            probe,
            answers: Vec::new(),
            failures: BTreeMap::new(),
            rows: BTreeMap::new(),
            versions: BTreeMap::new(),
            pods: BTreeMap::new(),
            test: None,
            unexpected: Vec::new(),
        };
        for result in results {
            match result {
                Ok(a) => {
                    let pod = a.pod.as_deref().unwrap_or("");
                    r.answers.push(a);
                    r.rows.entry((&a.version, pod)).or_default().push(a);
                    *r.versions.entry(&a.version).or_default() += 1;
                    if let Some(p) = &a.pod {
                        *r.pods.entry(p).or_default() += 1;
                    }
                }
                Err(e) => *r.failures.entry(e).or_default() += 1,
            }
        }
        if let Some(expect) = &probe.expect {
            let observed: Vec<u64> = expect
                .iter()
                .map(|(v, _)| r.versions.get(v.as_str()).copied().unwrap_or(0))
                .collect();
            let weights: Vec<f64> = expect.iter().map(|(_, w)| *w).collect();
            r.test = stats::chi_square(&observed, &weights);
            r.unexpected = r
                .versions
                .keys()
                .filter(|v| !expect.iter().any(|(e, _)| e == *v))
                .copied()
                .collect();
        }
        r
    }

    fn failed(&self) -> usize {
        self.failures.values().sum()
    }

    /// Whether the expectation, if any, holds.
    fn expect_ok(&self) -> Option<bool> {
        self.probe.expect.as_ref()?;
        Some(self.unexpected.is_empty() && self.test.is_some_and(|(_, _, p)| p >= EXPECT_P_MIN))
    }

    fn ok(&self) -> bool {
        self.failed() == 0 && self.expect_ok() != Some(false)
    }

    fn millis(answers: &[&Answer], f: fn(&Answer) -> Duration, q: f64) -> Option<f64> {
        let mut v: Vec<f64> = answers
            .iter()
            .map(|a| f(a).as_secs_f64() * 1000.0)
            .collect();
        v.sort_by(f64::total_cmp);
        stats::quantile(&v, q)
    }

    fn expectation_line(&self) -> Option<String> {
        let expect = self.probe.expect.as_ref()?;
        let split = expect
            .iter()
            .map(|(v, w)| format!("{v}={w}"))
            .collect::<Vec<_>>()
            .join(",");
        let verdict = if self.expect_ok() == Some(true) {
            "holds"
        } else {
            "does not hold"
        };
        let detail = match (&self.test, self.unexpected.is_empty()) {
            (_, false) => format!("versions not expected answered: {:?}", self.unexpected),
            (Some((s, df, p)), true) => {
                let unit = if *df == 1 { "degree" } else { "degrees" };
                format!("chi-square {s:.2} with {df} {unit} of freedom, p = {p:.2e}")
            }
            (None, true) => "no answer to test, or an answer where the weight is 0".into(),
        };
        Some(format!(
            "expect {split}: {detail}: {verdict} (it fails below p = {EXPECT_P_MIN:e})"
        ))
    }

    /// The human-readable report.
    fn table(&self) -> String {
        let mut out = String::new();
        let total = self.probe.connections;
        let _ = writeln!(
            out,
            "tcp-echo probe {}: {total} connections, {} ok, {} failed",
            self.probe.addr,
            self.answers.len(),
            self.failed()
        );
        let n = self.answers.len() as u64;
        let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2} ms"));
        let mut rows = vec![[
            "VERSION".to_string(),
            "POD".into(),
            "COUNT".into(),
            "SHARE".into(),
            "95% INTERVAL".into(),
            "CONNECT P50".into(),
            "RTT P50".into(),
            "RTT P99".into(),
        ]];
        for ((version, pod), answers) in &self.rows {
            let k = answers.len() as u64;
            let (lo, hi) = stats::wilson_95(k, n);
            rows.push([
                if version.is_empty() {
                    "(none)".into()
                } else {
                    version.to_string()
                },
                if pod.is_empty() {
                    "-".into()
                } else {
                    pod.to_string()
                },
                k.to_string(),
                format!("{:.1}%", 100.0 * k as f64 / n as f64),
                format!("{:.1}-{:.1}%", 100.0 * lo, 100.0 * hi),
                ms(Self::millis(answers, |a| a.connect, 0.5)),
                ms(Self::millis(answers, |a| a.round_trip, 0.5)),
                ms(Self::millis(answers, |a| a.round_trip, 0.99)),
            ]);
        }
        if rows.len() > 1 {
            let widths: Vec<usize> = (0..8)
                .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
                .collect();
            for row in &rows {
                let mut line = String::new();
                for (c, cell) in row.iter().enumerate() {
                    // Text columns to the left, numbers to the right.
                    if c < 2 {
                        let _ = write!(line, "{cell:<w$}  ", w = widths[c]);
                    } else {
                        let _ = write!(line, "{cell:>w$}  ", w = widths[c]);
                    }
                }
                let _ = writeln!(out, "{}", line.trim_end());
            }
        }
        for (reason, count) in &self.failures {
            let _ = writeln!(out, "failed: {count} x {reason}");
        }
        if let Some(line) = self.expectation_line() {
            let _ = writeln!(out, "{line}");
        }
        out
    }

    /// The report as one JSON object.
    fn json(&self) -> String {
        let map = |m: &BTreeMap<&str, u64>| {
            let items: Vec<String> = m
                .iter()
                .map(|(k, v)| format!("{}:{v}", json_str(k)))
                .collect();
            format!("{{{}}}", items.join(","))
        };
        let failures: Vec<String> = self
            .failures
            .iter()
            .map(|(k, v)| format!("{}:{v}", json_str(k)))
            .collect();
        let num = |v: Option<f64>| v.map_or("null".to_string(), |v| format!("{v:.3}"));
        let mut out = format!(
            "{{\"addr\":{},\"connections\":{},\"ok\":{},\"failed\":{},\"versions\":{},\"pods\":{},\
             \"failures\":{{{}}},\"connect_ms_p50\":{},\"rtt_ms_p50\":{},\"rtt_ms_p99\":{}",
            json_str(&self.probe.addr),
            self.probe.connections,
            self.answers.len(),
            self.failed(),
            map(&self.versions),
            map(&self.pods),
            failures.join(","),
            num(Self::millis(&self.answers, |a| a.connect, 0.5)),
            num(Self::millis(&self.answers, |a| a.round_trip, 0.5)),
            num(Self::millis(&self.answers, |a| a.round_trip, 0.99)),
        );
        if let Some(ok) = self.expect_ok() {
            let _ = write!(out, ",\"expect_ok\":{ok}");
            if let Some((s, df, p)) = self.test {
                let _ = write!(
                    out,
                    ",\"chi_square\":{s:.4},\"degrees_of_freedom\":{df},\"p_value\":{p:e}"
                );
            }
        }
        out.push('}');
        out
    }
}

/// `s` as a JSON string.
fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// go-echo's wording, as the server writes it.
    const BANNER: [(&str, &str, &str); 2] = [
        ("POD_NAME", "Running on Pod ", "."),
        ("POD_NAMESPACE", "In namespace ", "."),
    ];

    #[test]
    fn the_echo_is_told_from_the_banner_and_gives_the_version() {
        let text = "Mon Nov 30 10:12:01 UTC 2026";
        assert_eq!(echo_version(&format!("one {text}"), text), Some("one"));
        assert_eq!(echo_version(text, text), Some(""));
        assert_eq!(echo_version(&format!("x y {text}"), text), Some("x y"));
        assert_eq!(echo_version(&format!("one{text}"), text), None);
        assert_eq!(echo_version("something else", text), None);
        assert_eq!(
            banner_line(&BANNER, "Running on Pod tcp-echo-v1-6b9f7c7d5-x2x8k."),
            Some(Some("tcp-echo-v1-6b9f7c7d5-x2x8k"))
        );
        assert_eq!(banner_line(&BANNER, "In namespace default."), Some(None));
        assert_eq!(banner_line(&BANNER, "one hello"), None);
    }

    #[test]
    fn the_default_line_is_the_date_as_date_prints_it() {
        let at = |s: i64| jiff::Timestamp::from_second(s).unwrap();
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

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_str("a\"b\\c\nd"), "\"a\\\"b\\\\c\\u000ad\"");
    }
}
