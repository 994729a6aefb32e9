//! Medians, per-round ratios, the targets, BENCHMARKS.md, results.json and plot.svg.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use plotters::prelude::*;

use crate::Record;

const ECHO: &str = "tcp-echo";
const NAIVE: &str = "naive threads";
const TOKIO: &str = "tokio batched";
const SERVERS: [&str; 3] = [ECHO, NAIVE, TOKIO];
const NAIVE_COPY: &str = "naive copy";
const TOKIO_COPY: &str = "tokio copy";
const COPY_SERVERS: [&str; 3] = [ECHO, NAIVE_COPY, TOKIO_COPY];
const AUTOTUNED: &str = "tcp-echo autotuned";
const DEPLOYMENT: &str = "tcp-echo 24 KiB";
const NO_PREFIX: &str = "tcp-echo no prefix";
const UDP_PEER: &str = "std UdpSocket";
const TLS_PEER: &str = "tokio-rustls";
const GLIBC: &str = "tcp-echo glibc";
/// The build before this work, when `--tcp-echo-baseline` gives it.
pub const BEFORE: &str = "tcp-echo before";

/// A one-line summary of a measurement, for progress output.
pub fn brief(m: &BTreeMap<String, f64>) -> String {
    m.iter()
        .filter(|(k, _)| !k.ends_with("cpu_s"))
        .map(|(k, v)| format!("{k}={}", num(*v)))
        .collect::<Vec<_>>()
        .join(" ")
}

fn num(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn median(mut xs: Vec<f64>) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    Some(if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    })
}

struct Data<'a> {
    records: &'a [Record],
}

impl Data<'_> {
    fn values(&self, scenario: &str, server: &str, metric: &str) -> Vec<(usize, f64)> {
        self.records
            .iter()
            .filter(|r| r.scenario == scenario && r.server == server)
            .filter_map(|r| r.metrics.get(metric).map(|v| (r.round, *v)))
            .collect()
    }

    /// Median over rounds.
    fn med(&self, scenario: &str, server: &str, metric: &str) -> Option<f64> {
        median(
            self.values(scenario, server, metric)
                .into_iter()
                .map(|(_, v)| v)
                .collect(),
        )
    }

    /// Median over rounds of the within-round ratio a/b.
    fn ratio(&self, scenario: &str, metric: &str, a: &str, b: &str) -> Option<f64> {
        median(self.round_ratios(scenario, metric, a, b))
    }

    /// The ratio `a` / `b` of each round where both were measured, in round order.
    fn round_ratios(&self, scenario: &str, metric: &str, a: &str, b: &str) -> Vec<f64> {
        let bs: BTreeMap<usize, f64> = self.values(scenario, b, metric).into_iter().collect();
        self.values(scenario, a, metric)
            .into_iter()
            .filter_map(|(round, v)| bs.get(&round).filter(|d| **d > 0.0).map(|d| v / d))
            .collect()
    }

    /// The ratio `a` / `b` of each round, in round order, as text.
    fn per_round_ratios(&self, scenario: &str, metric: &str, a: &str, b: &str) -> String {
        let all: Vec<String> = self
            .round_ratios(scenario, metric, a, b)
            .into_iter()
            .map(|r| format!("{r:.2}"))
            .collect();
        if all.is_empty() {
            "–".into()
        } else {
            all.join(", ")
        }
    }

    /// The largest value over rounds (for error counts).
    fn max(&self, scenario: &str, server: &str, metric: &str) -> f64 {
        self.values(scenario, server, metric)
            .into_iter()
            .map(|(_, v)| v)
            .fold(0.0, f64::max)
    }
}

fn cell(v: Option<f64>) -> String {
    v.map_or("–".into(), num)
}

/// A share (0 to 1) as a percentage.
fn pct_cell(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{:.0}%", v * 100.0))
}

fn ratio_cell(v: Option<f64>) -> String {
    v.map_or("–".into(), |r| format!("{r:.2}×"))
}

/// One server's round-trip cells in scenario `sc`: rate, p50, p99, p99.9, CPU per round trip,
/// errors.
fn round_trip_cells(d: &Data, sc: &str, s: &str) -> String {
    format!(
        "{} | {} | {} | {} | {} | {}",
        cell(d.med(sc, s, "rt_per_s")),
        cell(d.med(sc, s, "p50_us")),
        cell(d.med(sc, s, "p99_us")),
        cell(d.med(sc, s, "p999_us")),
        cell(d.med(sc, s, "server_us_per_op")),
        d.max(sc, s, "errors")
    )
}

/// The table of a round-trip scenario (`ping-pong`, `fortio`): rate, latency, CPU, errors.
fn round_trip_table(md: &mut String, d: &Data, scenario: &str, conns: &[usize], servers: &[&str]) {
    md.push_str("| conns | server | round trips/s | p50 µs | p99 µs | p99.9 µs | server CPU µs/rt | errors |\n|---|---|---|---|---|---|---|---|\n");
    for conns in conns {
        let sc = format!("{scenario} {conns}");
        for s in servers {
            let _ = writeln!(md, "| {conns} | {s} | {} |", round_trip_cells(d, &sc, s));
        }
    }
}

/// Writes BENCHMARKS.md, bench/results.json and bench/plot.svg.
pub fn write(records: &[Record], rounds: usize, secs: Duration, command: &str, took: Duration) {
    let d = Data { records };
    let mut md = String::new();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    // Loopback streaming depends on these: BBR without the fq qdisc has TCP pace every
    // socket with a timer of its own, which costs the server's core far more than CUBIC does.
    let sysctl = |name: &str| {
        std::fs::read_to_string(format!("/proc/sys/net/{name}"))
            .map_or_else(|_| "unknown".to_string(), |v| v.trim().to_string())
    };
    md.push_str("# Benchmarks\n\n");
    md.push_str("Written by `make bench` (the `bench/` crate) from the run described below; not edited by hand.\n\n");
    let _ = writeln!(
        md,
        "- Machine: {cpu}, {} cores, Linux {}, TCP congestion control {} (default qdisc {}; \
         with bbr and no fq, TCP paces each socket itself, and loopback streams run slower).",
        crate::proc::cores(),
        kernel.trim(),
        sysctl("ipv4/tcp_congestion_control"),
        sysctl("core/default_qdisc"),
    );
    let _ = writeln!(
        md,
        "- Command: `{command}` ({rounds} rounds, {:.1} s per timed run, {:.0} s in all).",
        secs.as_secs_f64(),
        took.as_secs_f64()
    );
    md.push_str(
        "- Method: the load generator (one tokio thread) is pinned to core 0, each server to core 1 \
         (`taskset`; the benchmark checks both placements). The machine's speed changes within \
         seconds to minutes, so servers are compared only within a round. Ping-pong (and the \
         open-loop run) starts every server of the round, connects all the clients, and then measures the servers in \
         alternating 250 ms windows (A B C, B C A, ...), each server about the timed-run length in \
         all; start-up launches the servers in turns (A B C, A B C, ..., 11 launches each, at `info` \
         with the log read from a pipe, as a script waiting for `listening on` reads it); the other \
         scenarios run the servers one after another (the order, the build before included, \
         rotates every round), a fresh server process each time. Figures are medians over rounds, and ratios are \
         the median of the per-round ratios. Every reply byte is verified; a run with errors is \
         flagged. Server CPU per operation is the server process's CPU clock before and after \
         (all threads, nanoseconds), so it stays fair whichever core saturates. Servers log to \
         /dev/null.\n",
    );
    md.push_str(
        "- Servers: **tcp-echo** (release build, `--prefix one --banner off`, `RUST_LOG=warn`); \
         **naive threads** (a thread spawned per connection, `read_line` then `write_all` per line, \
         std's listener); **tokio batched** (tokio, replies of everything read flushed once no more \
         input is waiting). For fortio's message shape, which has no newline and wants its bytes \
         back exactly, tcp-echo runs without prefix against two prompt-echo peers: **naive copy** \
         (a thread per connection, `read` then `write_all` of whatever arrived, as go-echo does) \
         and **tokio copy** (the same with tokio tasks). The peers live in `bench/src/peers.rs` and \
         are built only there. Lines are 64 bytes unless stated; every line server adds the prefix \
         `one `. tcp-echo runs with its default `--socket-buffer 65536` unless stated.\n\n",
    );

    // Ping-pong.
    md.push_str("## Ping-pong (send a line, wait for its echo, repeat)\n\n");
    round_trip_table(&mut md, &d, "ping-pong", &[1, 16, 256, 1000], &SERVERS);
    md.push_str("\n| conns | rt/s vs naive | rt/s vs tokio | CPU/rt vs naive | CPU/rt vs tokio | p99 vs naive | p99 vs tokio |\n|---|---|---|---|---|---|---|\n");
    for conns in [1, 16, 256, 1000] {
        let sc = format!("ping-pong {conns}");
        let _ = writeln!(
            md,
            "| {conns} | {} | {} | {} | {} | {} | {} |",
            ratio_cell(d.ratio(&sc, "rt_per_s", ECHO, NAIVE)),
            ratio_cell(d.ratio(&sc, "rt_per_s", ECHO, TOKIO)),
            ratio_cell(d.ratio(&sc, "server_us_per_op", ECHO, NAIVE)),
            ratio_cell(d.ratio(&sc, "server_us_per_op", ECHO, TOKIO)),
            ratio_cell(d.ratio(&sc, "p99_us", ECHO, NAIVE)),
            ratio_cell(d.ratio(&sc, "p99_us", ECHO, TOKIO)),
        );
    }
    let busy = |conns: usize, s: &str, metric: &str| {
        pct_cell(d.med(&format!("ping-pong {conns}"), s, metric))
    };
    md.push_str(
        "\nWhere the round trips go:\n\n| conns | server | server core busy | load generator core busy | server context switches per rt | server CPU in user space |\n|---|---|---|---|---|---|\n",
    );
    for conns in [16, 256] {
        let sc = format!("ping-pong {conns}");
        for s in SERVERS {
            let _ = writeln!(
                md,
                "| {conns} | {s} | {} | {} | {} | {} |",
                busy(conns, s, "server_core_busy"),
                busy(conns, s, "client_core_busy"),
                cell(d.med(&sc, s, "switches_per_op")),
                busy(conns, s, "user_share"),
            );
        }
    }
    let _ = write!(
        md,
        "\nServer syscalls per round trip (16 connections, `strace -c` attached to the server): {}.\n",
        SERVERS
            .iter()
            .map(|s| format!("{s} {}", cell(d.med("writes", s, "syscalls_per_rt"))))
            .collect::<Vec<_>>()
            .join(", ")
    );
    md.push_str(
        "\nIn closed loop, latency is the time a line waits on whichever core is busier; CPU per \
         round trip is the fair comparison of the servers' work. tcp-echo and the naive server do \
         the same work per round trip: one `recv`, one `send` and one context switch (the worker \
         sleeps in `recv` until the next line), and nearly all of it is the kernel's loopback TCP \
         path, the same for both. Their CPU per round trip can only be equal within what this \
         machine can measure, and the per-round ratios scatter around 1.00. tcp-echo arms no \
         timer per read (its idle timeout is a separate watch), so the kernel does no more for it \
         than for the naive server; tokio batched answers several connections per wake-up, which \
         a thread-per-connection server cannot. In the open-loop run below, 256 connections each \
         send a line every 20 ms (12,800 round trips/s), and latency runs from the moment each \
         line is sent to its complete echo. Both cores stay below saturation (both are in the \
         table); the load generator's is the busier, as it wakes on a timer for each line (at \
         a line every 10 ms it was 0.8 to 0.9 busy, and its own queueing set every server's \
         p99 alike). Like ping-pong, the servers are measured in alternating 250 ms windows \
         (the first period of each not recorded), so that the machine's changes of speed, \
         which move p99 several-fold from one minute to the next here, fall on all of them \
         alike.\n\n",
    );
    md.push_str("| 256 conns, one line each per 20 ms | round trips/s | p50 µs | p99 µs | p99.9 µs | server CPU µs/rt | errors | server core busy | load generator core busy |\n|---|---|---|---|---|---|---|---|---|\n");
    for s in SERVERS {
        let _ = writeln!(
            md,
            "| {s} | {} | {} | {} |",
            round_trip_cells(&d, "paced 256", s),
            cell(d.med("paced 256", s, "server_core_busy")),
            cell(d.med("paced 256", s, "client_core_busy"))
        );
    }
    md.push_str("\n![round trips/s and p99 against connections](bench/plot.svg)\n\n");

    // Instructions per round trip.
    md.push_str(
        "### User-space instructions per round trip\n\n\
         64-byte lines, 16 clients in lockstep, each server run under callgrind with 200 and \
         with 2,200 round trips per client; the difference, over the 32,000 extra round trips. \
         A count, not a time: the same for the same binary however busy the machine is, so it \
         shows what a change to the echo path costs where the timings above cannot (their \
         rounds differ by several per cent). Server CPU per round trip is mostly the kernel's \
         (the user share is a few per cent at 16 connections), which this does not count.\n\n\
         | server | instructions per round trip | vs naive threads | errors |\n|---|---|---|---|\n",
    );
    let counted: Vec<&str> = SERVERS
        .iter()
        .copied()
        .chain(
            d.records
                .iter()
                .any(|r| r.server == BEFORE)
                .then_some(BEFORE),
        )
        .collect();
    for s in counted {
        let _ = writeln!(
            md,
            "| {s} | {} | {} | {} |",
            cell(d.med("instructions 16", s, "user_instructions_per_rt")),
            ratio_cell(d.ratio("instructions 16", "user_instructions_per_rt", s, NAIVE)),
            d.max("instructions 16", s, "errors")
        );
    }
    md.push('\n');

    // Streaming.
    md.push_str("## Streaming (each connection pipelines lines while a reader drains them)\n\n");
    md.push_str("| lines | conns | server | MB/s | lines/s | server CPU ns/line | errors |\n|---|---|---|---|---|---|---|\n");
    let streams = [(64, 1), (64, 16), (4096, 1), (4096, 16)];
    for (len, conns) in streams {
        let sc = format!("stream {len}B x{conns}");
        for s in SERVERS {
            let _ = writeln!(
                md,
                "| {len} B | {conns} | {s} | {} | {} | {} | {} |",
                cell(d.med(&sc, s, "mb_per_s")),
                cell(d.med(&sc, s, "lines_per_s")),
                cell(d.med(&sc, s, "server_us_per_op").map(|v| v * 1000.0)),
                d.max(&sc, s, "errors")
            );
        }
    }
    md.push_str("\n| lines | conns | MB/s vs naive | MB/s vs tokio | CPU/line vs naive | CPU/line vs tokio |\n|---|---|---|---|---|---|\n");
    for (len, conns) in streams {
        let sc = format!("stream {len}B x{conns}");
        let _ = writeln!(
            md,
            "| {len} B | {conns} | {} | {} | {} | {} |",
            ratio_cell(d.ratio(&sc, "mb_per_s", ECHO, NAIVE)),
            ratio_cell(d.ratio(&sc, "mb_per_s", ECHO, TOKIO)),
            ratio_cell(d.ratio(&sc, "server_us_per_op", ECHO, NAIVE)),
            ratio_cell(d.ratio(&sc, "server_us_per_op", ECHO, TOKIO)),
        );
    }

    // fortio's shape.
    md.push_str(
        "\n## fortio's `tcp://` shape (24-byte messages without newline on kept-open connections)\n\n\
         Each client sends `Fortio\\n%04d\\n%012d` and waits for exactly those 24 bytes, as fortio's \
         load client does; measured like ping-pong, in alternating windows.\n\n",
    );
    round_trip_table(&mut md, &d, "fortio", &[1, 16, 256], &COPY_SERVERS);
    md.push_str("\n| conns | rt/s vs naive copy | rt/s vs tokio copy | CPU/rt vs naive copy | CPU/rt vs tokio copy | p99 vs naive copy |\n|---|---|---|---|---|---|\n");
    for conns in [1, 16, 256] {
        let sc = format!("fortio {conns}");
        let _ = writeln!(
            md,
            "| {conns} | {} | {} | {} | {} | {} |",
            ratio_cell(d.ratio(&sc, "rt_per_s", ECHO, NAIVE_COPY)),
            ratio_cell(d.ratio(&sc, "rt_per_s", ECHO, TOKIO_COPY)),
            ratio_cell(d.ratio(&sc, "server_us_per_op", ECHO, NAIVE_COPY)),
            ratio_cell(d.ratio(&sc, "server_us_per_op", ECHO, TOKIO_COPY)),
            ratio_cell(d.ratio(&sc, "p99_us", ECHO, NAIVE_COPY)),
        );
    }
    md.push_str(
        "\nWithout a prefix tcp-echo writes each read straight from its read buffer, so per round \
         trip it makes the same `recv` and `send` as the naive copy server.\n",
    );

    // Churn, memory, start-up, burst.
    md.push_str("\n## Churn, memory, start-up, a burst of connects\n\n");
    md.push_str("| server | churn conn/s (4 clients) | server CPU µs/conn | idle RSS kB | RSS with 1,000 idle conns kB | RSS per idle conn kB | kernel stack per conn kB | threads idle / with 1,000 | start-up to first echo ms | burst of 1,000: connects > 900 ms | listen overflows | slowest connect ms |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for s in SERVERS.into_iter().chain([TOKIO_COPY]) {
        let _ = writeln!(
            md,
            "| {s} | {} | {} | {} | {} | {} | {} | {} / {} | {} | {} | {} | {} |",
            cell(d.med("churn", s, "conn_per_s")),
            cell(d.med("churn", s, "server_us_per_op")),
            cell(d.med("memory", s, "idle_rss_kb")),
            cell(d.med("memory", s, "rss_1000_kb")),
            cell(d.med("memory", s, "rss_per_conn_kb")),
            cell(d.med("memory", s, "kernel_stack_per_conn_kb")),
            cell(d.med("memory", s, "idle_threads")),
            cell(d.med("memory", s, "threads_1000")),
            cell(d.med("startup", s, "startup_ms")),
            cell(d.med("burst 1000", s, "slow_connects")),
            cell(d.med("burst 1000", s, "listen_overflows")),
            cell(d.med("burst 1000", s, "slowest_connect_ms")),
        );
    }
    let _ = writeln!(
        md,
        "\nWrite syscalls per 1,000 lines streamed (64-byte lines, 1 connection, counted by `strace -c` attached to the server): {}.",
        SERVERS.iter().map(|s| format!("{s} {}", cell(d.med("writes", s, "writes_per_line").map(|w| w * 1000.0)))).collect::<Vec<_>>().join(", ")
    );
    md.push_str(
        "\nRSS per connection is what RSS shows; each connection's thread also has a kernel stack that \
         RSS does not show (`KernelStack` in /proc/meminfo, the machine-wide delta divided by 1,000). \
         tokio needs no thread per connection, hence its smaller kernel share.\n\n",
    );

    // Logging and prefix.
    md.push_str("## The cost of logging and of the prefix (tcp-echo against itself)\n\n");
    md.push_str("| variant | ping-pong 16: rt/s | server CPU µs/rt | stream 64 B x1: MB/s | server CPU ns/line |\n|---|---|---|---|---|\n");
    for s in [ECHO, "tcp-echo info", "tcp-echo no prefix"] {
        let label = match s {
            ECHO => "`RUST_LOG=warn`, prefix",
            "tcp-echo info" => "`RUST_LOG=info` (default), prefix",
            _ => "`RUST_LOG=warn`, no prefix",
        };
        let _ = writeln!(
            md,
            "| {label} | {} | {} | {} | {} |",
            cell(d.med("log ping-pong 16", s, "rt_per_s")),
            cell(d.med("log ping-pong 16", s, "server_us_per_op")),
            cell(d.med("log stream 64B x1", s, "mb_per_s")),
            cell(
                d.med("log stream 64B x1", s, "server_us_per_op")
                    .map(|v| v * 1000.0)
            ),
        );
    }
    let info_cost = d
        .med("log ping-pong 16", "tcp-echo info", "server_us_per_op")
        .zip(d.med("log ping-pong 16", ECHO, "server_us_per_op"))
        .map(|(a, b)| a - b);
    let info_stream_cost = d
        .med("log stream 64B x1", "tcp-echo info", "server_us_per_op")
        .zip(d.med("log stream 64B x1", ECHO, "server_us_per_op"))
        .map(|(a, b)| a - b);
    let _ = writeln!(
        md,
        "\nAt the default `info`, each piece received (a line, or the open end of a read) may be \
         logged twice (go-echo's `Received Raw Data` and `Received Data` records), within the log \
         budget: each connection's first 1,000 pieces (64 KiB), and 100 pieces a second \
         server-wide after a burst of 1,000; the rest are counted on the close record, not \
         logged. Measured cost over `warn`, averaged over every line of the run: **{} µs of server \
         CPU per line** in ping-pong and **{} µs per line** when streaming. With `warn` no record is \
         formatted: the level is checked once per connection.\n",
        cell(info_cost),
        cell(info_stream_cost)
    );

    // The socket buffer cap.
    md.push_str("## The cost of the socket buffer cap (tcp-echo against itself)\n\n");
    md.push_str(
        "`--socket-buffer` fixes each connection's send and receive buffers (the kernel doubles \
         the value): 24576 is what the Deployments set, 65536 the default; `--socket-buffer 0` \
         leaves them to the kernel's autotuning. The three run one after the other in each \
         round, in rotating order. Memory: 64 clients that flood empty lines and never read, once \
         all are stalled.\n\n",
    );
    md.push_str(
        "| measure | Deployments (24576) | default (65536) | autotuned (0) | Deployments vs autotuned | default vs autotuned |\n|---|---|---|---|---|---|\n",
    );
    for (len, conns) in [(64, 1), (4096, 1), (4096, 16)] {
        let sc = format!("cap stream {len}B x{conns}");
        let _ = writeln!(
            md,
            "| streaming {len} B lines, {conns} conn: MB/s | {} | {} | {} | {} | {} |",
            cell(d.med(&sc, DEPLOYMENT, "mb_per_s")),
            cell(d.med(&sc, ECHO, "mb_per_s")),
            cell(d.med(&sc, AUTOTUNED, "mb_per_s")),
            ratio_cell(d.ratio(&sc, "mb_per_s", DEPLOYMENT, AUTOTUNED)),
            ratio_cell(d.ratio(&sc, "mb_per_s", ECHO, AUTOTUNED)),
        );
    }
    for (label, metric) in [
        (
            "kernel socket memory per non-reading client, kB",
            "socket_per_conn_kb",
        ),
        ("RSS per non-reading client, kB", "rss_per_conn_kb"),
    ] {
        let _ = writeln!(
            md,
            "| {label} | {} | {} | {} | {} | {} |",
            cell(d.med("cap flooders", DEPLOYMENT, metric)),
            cell(d.med("cap flooders", ECHO, metric)),
            cell(d.med("cap flooders", AUTOTUNED, metric)),
            ratio_cell(d.ratio("cap flooders", metric, DEPLOYMENT, AUTOTUNED)),
            ratio_cell(d.ratio("cap flooders", metric, ECHO, AUTOTUNED)),
        );
    }
    md.push_str(
        "\nThe cap is what makes a per-connection memory ceiling possible (ARCHITECTURE.md): with \
         autotuning, a client that stops reading leaves megabytes queued in the kernel, charged \
         to the pod's memory cgroup on cgroup v2. Its price is the streaming throughput above; \
         ping-pong, whose messages are small, does not notice it.\n\n",
    );

    // Memory per connection against the peers.
    md.push_str("## Memory per connection against the peers\n\n");
    md.push_str(
        "Idle: 1,000 connections that each had one line echoed (the table above). Flooding: 64 \
         clients that send empty lines as fast as they can and never read, once all are stalled; \
         the server's RSS growth per client and its kernel socket memory per client (`ss -tm`). \
         tcp-echo at its default `--socket-buffer 65536`; the peers leave their buffers to the \
         kernel's autotuning.\n\n",
    );
    md.push_str("| server | RSS per idle conn kB | kernel stack per conn kB | RSS per flooding conn kB | kernel socket memory per flooding conn kB |\n|---|---|---|---|---|\n");
    for s in [ECHO, NAIVE, TOKIO_COPY] {
        let _ = writeln!(
            md,
            "| {s} | {} | {} | {} | {} |",
            cell(d.med("memory", s, "rss_per_conn_kb")),
            cell(d.med("memory", s, "kernel_stack_per_conn_kb")),
            cell(d.med("flooders 64", s, "rss_per_conn_kb")),
            cell(d.med("flooders 64", s, "socket_per_conn_kb")),
        );
    }

    // The prefix.
    md.push_str("\n## The prefixed stream against the plain one (tcp-echo against itself)\n\n");
    md.push_str(
        "Lines of 8 KiB or more leave from the read buffer after their prefix (slices of \
         one `sendmsg`); shorter lines are copied with their prefix into a staging buffer of nine \
         sixteenths of the read buffer and leave together (a slice costs the kernel more than copying a short \
         line, and a write within nine sixteenths of a read suits a pacing congestion control); a read that \
         takes several such writes sends all but the last with `MSG_MORE` (unless the \
         connection's congestion control is BBR), so the kernel cuts its segments as for one \
         write. That copy and the longer reply are what the prefix costs: runs of lines of up to 64 bytes take a loop of two fixed-size moves \
         per line (built for speed, in a binary built for size), and the last column, the share \
         of the server's CPU spent in user space, shows the copy and the framing (without a \
         prefix, user space only counts newlines). Without a prefix each read is written as it \
         is. In each round the two run in turns, A B B A B A A B, each for half the timed run at a \
         time (which goes first alternates between rounds), and each one's four parts are \
         combined, so that the machine's changes of speed fall on both alike. MB/s counts the bytes the \
         clients sent.\n\n",
    );
    md.push_str("| lines | conns | prefix `one`: MB/s | no prefix: MB/s | prefixed vs plain | server CPU/line, prefixed vs plain | server CPU in user space, prefixed / plain |\n|---|---|---|---|---|---|---|\n");
    for (len, conns) in [(64, 1), (4096, 1), (64, 16)] {
        let sc = format!("prefix stream {len}B x{conns}");
        let _ = writeln!(
            md,
            "| {len} B | {conns} | {} | {} | {} | {} | {} / {} |",
            cell(d.med(&sc, ECHO, "mb_per_s")),
            cell(d.med(&sc, NO_PREFIX, "mb_per_s")),
            ratio_cell(d.ratio(&sc, "mb_per_s", ECHO, NO_PREFIX)),
            ratio_cell(d.ratio(&sc, "server_us_per_op", ECHO, NO_PREFIX)),
            pct_cell(d.med(&sc, ECHO, "user_share")),
            pct_cell(d.med(&sc, NO_PREFIX, "user_share")),
        );
    }

    // UDP.
    md.push_str("\n## UDP (`--udp`): a datagram and its answer, repeated\n\n");
    md.push_str(
        "Each client thread has a socket of its own and sends a 64-byte datagram, then waits for \
         its answer (the prefix and the datagram) before the next; a lost or wrong answer is an \
         error. The peer, **std UdpSocket**, is one thread doing `recv_from` then `send_to` with \
         the prefix, as tcp-echo's UDP thread does.\n\n",
    );
    md.push_str("| clients | server | datagrams/s | p50 µs | p99 µs | server CPU µs/datagram | errors |\n|---|---|---|---|---|---|---|\n");
    for clients in [1, 16] {
        let sc = format!("udp {clients}");
        for s in [ECHO, UDP_PEER] {
            let _ = writeln!(
                md,
                "| {clients} | {s} | {} | {} | {} | {} | {} |",
                cell(d.med(&sc, s, "dgram_per_s")),
                cell(d.med(&sc, s, "p50_us")),
                cell(d.med(&sc, s, "p99_us")),
                cell(d.med(&sc, s, "server_us_per_op")),
                d.max(&sc, s, "errors"),
            );
        }
    }
    md.push_str("\n| clients | datagrams/s vs std UdpSocket | CPU/datagram vs std UdpSocket |\n|---|---|---|\n");
    for clients in [1, 16] {
        let sc = format!("udp {clients}");
        let _ = writeln!(
            md,
            "| {clients} | {} | {} |",
            ratio_cell(d.ratio(&sc, "dgram_per_s", ECHO, UDP_PEER)),
            ratio_cell(d.ratio(&sc, "server_us_per_op", ECHO, UDP_PEER)),
        );
    }

    // TLS.
    md.push_str("\n## TLS (`--tls-port`)\n\n");
    md.push_str(
        "Both servers hold the same self-signed ECDSA P-256 certificate and echo without prefix. \
         Handshakes: 4 clients connect, complete a full TLS 1.3 handshake (the client never \
         resumes), have one line echoed and close, for the timed run. Streaming: as above, inside \
         TLS. The peer, **tokio-rustls**, is rustls with ring (as tcp-echo) under tokio, a task \
         per connection.\n\n",
    );
    md.push_str(
        "| measure | tcp-echo | tokio-rustls | tcp-echo vs tokio-rustls | tcp-echo built for glibc | glibc build vs tokio-rustls |\n|---|---|---|---|---|---|\n",
    );
    let mut tls_row = |label: &str, sc: &str, metric: &str, scale: f64| {
        let v = |s: &str| d.med(sc, s, metric).map(|v| v * scale);
        let _ = writeln!(
            md,
            "| {label} | {} | {} | {} | {} | {} |",
            cell(v(ECHO)),
            cell(v(TLS_PEER)),
            ratio_cell(d.ratio(sc, metric, ECHO, TLS_PEER)),
            cell(v(GLIBC)),
            ratio_cell(d.ratio(sc, metric, GLIBC, TLS_PEER)),
        );
    };
    tls_row(
        "full handshakes/s (4 clients)",
        "tls handshakes",
        "handshakes_per_s",
        1.0,
    );
    tls_row(
        "server CPU µs per handshake",
        "tls handshakes",
        "server_us_per_op",
        1.0,
    );
    for (len, conns) in [(64, 1), (4096, 1), (4096, 16)] {
        let sc = format!("tls stream {len}B x{conns}");
        tls_row(
            &format!("streaming {len} B lines, {conns} conn: MB/s"),
            &sc,
            "mb_per_s",
            1.0,
        );
        tls_row("… server CPU ns per line", &sc, "server_us_per_op", 1000.0);
    }
    let errors: f64 = [
        "tls handshakes",
        "tls stream 64B x1",
        "tls stream 4096B x1",
        "tls stream 4096B x16",
    ]
    .iter()
    .flat_map(|sc| [ECHO, TLS_PEER].map(|s| d.max(sc, s, "errors")))
    .sum();
    let _ = writeln!(md, "\nErrors in the TLS runs: {errors}. Inside TLS rustls keeps the plaintext in buffers of its own, so there the echo is a copy: each read is handed to rustls, which encrypts it into its output buffer. The image ships the static build, whose musl `memcpy` and `memmove` are slower than glibc's on these copies (and on rustls' own, which tokio-rustls, built for glibc, makes too); the glibc build of the same code shows what is the design's and what the C library's.\n");

    // Before and after.
    if d.records.iter().any(|r| r.server == BEFORE) {
        md.push_str("## Before and after (the same run)\n\n");
        md.push_str(
            "**tcp-echo before** is the build given by `--tcp-echo-baseline` (the code before \
             this round of work), measured in every round beside the others, the same way. Each \
             ratio against a peer, before and after, is the median of its per-round ratios.\n\n",
        );
        md.push_str("| scenario | measure | before | after | after vs before | before vs peer | after vs peer |\n|---|---|---|---|---|---|---|\n");
        let mut rows: Vec<(String, &str, &str, &str)> = Vec::new();
        for conns in [1, 16, 256, 1000] {
            let sc = format!("ping-pong {conns}");
            rows.push((sc.clone(), "rt_per_s", "round trips/s", NAIVE));
            rows.push((sc.clone(), "server_us_per_op", "server CPU µs/rt", NAIVE));
            rows.push((sc, "p99_us", "p99 µs", NAIVE));
        }
        for conns in [1, 16, 256] {
            let sc = format!("fortio {conns}");
            rows.push((sc.clone(), "rt_per_s", "round trips/s", NAIVE_COPY));
            rows.push((sc, "server_us_per_op", "server CPU µs/rt", NAIVE_COPY));
        }
        rows.push(("paced 256".into(), "p99_us", "p99 µs", NAIVE));
        for (len, conns) in [(64, 1), (64, 16), (4096, 1), (4096, 16)] {
            let sc = format!("stream {len}B x{conns}");
            rows.push((sc.clone(), "mb_per_s", "MB/s", TOKIO));
            rows.push((sc, "server_us_per_op", "server CPU/line", TOKIO));
        }
        rows.push(("churn".into(), "conn_per_s", "connections/s", NAIVE));
        rows.push((
            "memory".into(),
            "rss_per_conn_kb",
            "RSS per idle conn kB",
            NAIVE,
        ));
        rows.push((
            "flooders 64".into(),
            "rss_per_conn_kb",
            "RSS per flooding conn kB",
            NAIVE,
        ));
        rows.push(("startup".into(), "startup_ms", "start-up ms", NAIVE));
        rows.push((
            "instructions 16".into(),
            "user_instructions_per_rt",
            "user-space instructions/rt (callgrind)",
            NAIVE,
        ));
        for (sc, metric, label, peer) in rows {
            let unit = |v: Option<f64>| cell(v);
            let _ = writeln!(
                md,
                "| {sc} | {label} | {} | {} | {} | {} | {} |",
                unit(d.med(&sc, BEFORE, metric)),
                unit(d.med(&sc, ECHO, metric)),
                ratio_cell(d.ratio(&sc, metric, ECHO, BEFORE)),
                ratio_cell(d.ratio(&sc, metric, BEFORE, peer)).replace('×', &format!("× {peer}")),
                ratio_cell(d.ratio(&sc, metric, ECHO, peer)).replace('×', &format!("× {peer}")),
            );
        }
        md.push_str(
            "\nThe streams above run one server after another. The prefixed stream was also run \
             against the build before in turns (`A B B A B A A B`, as for the prefixed stream \
             against the plain one below), where a change of the machine's speed falls on both \
             alike:\n\n| scenario | after vs before, MB/s (median) | per round |\n|---|---|---|\n",
        );
        for (len, conns) in [(64, 1), (4096, 1), (64, 16)] {
            let sc = format!("ab stream {len}B x{conns}");
            let _ = writeln!(
                md,
                "| stream {len}B x{conns}, in turns | {} | {} |",
                ratio_cell(d.ratio(&sc, "mb_per_s", ECHO, BEFORE)),
                d.per_round_ratios(&sc, "mb_per_s", ECHO, BEFORE)
            );
        }
        md.push('\n');
    }

    // Targets.
    md.push_str("## Targets\n\n| target | measured | met |\n|---|---|---|\n");
    let mut target = |name: &str, measured: String, ok: Option<bool>| {
        let mark = match ok {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "–",
        };
        let _ = writeln!(md, "| {name} | {measured} | {mark} |");
    };
    for conns in [1, 16] {
        let r = d.ratio(&format!("stream 64B x{conns}"), "mb_per_s", ECHO, TOKIO);
        target(
            &format!("streaming 64 B, {conns} conn: at least tokio batched"),
            ratio_cell(r),
            r.map(|r| r >= 1.0),
        );
    }
    for conns in [1, 16] {
        let sc = format!("stream 4096B x{conns}");
        let best = [NAIVE, TOKIO]
            .iter()
            .filter_map(|p| d.ratio(&sc, "mb_per_s", ECHO, p))
            .fold(None, |m: Option<f64>, r| Some(m.map_or(r, |m| m.min(r))));
        target(
            &format!("streaming 4 KiB, {conns} conns: at least the best peer"),
            format!("{} of the best peer", ratio_cell(best)),
            best.map(|r| r >= 1.0),
        );
    }
    for conns in [16, 256] {
        let sc = format!("ping-pong {conns}");
        let n = d.ratio(&sc, "server_us_per_op", ECHO, NAIVE);
        let t = d.ratio(&sc, "server_us_per_op", ECHO, TOKIO);
        target(
            &format!("ping-pong {conns}: server CPU/rt ≤ naive and ≤ 1.5× tokio"),
            format!("{} of naive, {} of tokio", ratio_cell(n), ratio_cell(t)),
            n.zip(t).map(|(n, t)| n <= 1.0 && t <= 1.5),
        );
    }
    let p99 = d.ratio("ping-pong 256", "p99_us", ECHO, NAIVE);
    target(
        "ping-pong 256: p99 no worse than naive",
        ratio_cell(p99),
        p99.map(|r| r <= 1.0),
    );
    let glibc = GLIBC;
    target(
        "… the same code built for glibc (the image ships the static musl build), at 256 conns",
        format!(
            "p99 {}, CPU/rt {}, round trips/s {} of naive's",
            ratio_cell(d.ratio("ping-pong 256", "p99_us", glibc, NAIVE)),
            ratio_cell(d.ratio("ping-pong 256", "server_us_per_op", glibc, NAIVE)),
            ratio_cell(d.ratio("ping-pong 256", "rt_per_s", glibc, NAIVE)),
        ),
        None,
    );
    let paced = d.ratio("paced 256", "p99_us", ECHO, NAIVE);
    target(
        "… the same below saturation (open loop, 256 conns): p99 no worse than naive",
        ratio_cell(paced),
        paced.map(|r| r <= 1.0),
    );
    for conns in [16, 256] {
        let sc = format!("fortio {conns}");
        let n = d.ratio(&sc, "server_us_per_op", ECHO, NAIVE_COPY);
        let errors = d.max(&sc, ECHO, "errors");
        target(
            &format!(
                "fortio's 24-byte messages, {conns} conns: every echo exact, server CPU/rt level with naive copy (≤ 1.05×)"
            ),
            format!("{errors} errors, {} of naive copy", ratio_cell(n)),
            n.map(|n| errors == 0.0 && n <= 1.05),
        );
    }
    let e1000 = d.max("ping-pong 1000", ECHO, "errors");
    target(
        "1,000 connections served without errors",
        format!("{e1000} errors"),
        Some(e1000 == 0.0),
    );
    let idle = d.med("memory", ECHO, "idle_rss_kb");
    target(
        "idle RSS ≤ 2 MB",
        format!(
            "{} kB, of which {} kB anonymous; the rest is the binary's code as mapped from the \
             page cache (a larger binary since TLS: a build without it measures about 1.1 MB)",
            cell(idle),
            cell(d.med("memory", ECHO, "idle_rss_anon_kb"))
        ),
        idle.map(|v| v <= 2048.0),
    );
    let per = d.med("memory", ECHO, "rss_per_conn_kb");
    target(
        "≤ 8 kB RSS per idle connection",
        format!("{} kB", cell(per)),
        per.map(|v| v <= 8.0),
    );
    for (len, conns) in [(64, 1), (4096, 1), (64, 16)] {
        let sc = format!("prefix stream {len}B x{conns}");
        let r = d.ratio(&sc, "mb_per_s", ECHO, NO_PREFIX);
        target(
            &format!(
                "the prefixed stream within 10 % of the plain one ({len} B lines, {conns} conn)"
            ),
            format!(
                "{} (per round {})",
                ratio_cell(r),
                d.per_round_ratios(&sc, "mb_per_s", ECHO, NO_PREFIX)
            ),
            r.map(|r| r >= 0.9),
        );
    }
    let flood = d
        .med("cap flooders", DEPLOYMENT, "rss_per_conn_kb")
        .zip(d.med("cap flooders", DEPLOYMENT, "socket_per_conn_kb"))
        .zip(d.med("memory", ECHO, "kernel_stack_per_conn_kb"))
        .map(|((rss, socket), stack)| rss + socket + stack);
    target(
        "a flooding, non-reading connection at the Deployments' settings: at most 256 KiB (RSS, kernel stack, socket buffers)",
        format!("{} kB", cell(flood)),
        flood.map(|v| v <= 256.0 * 1.024),
    );
    for clients in [1, 16] {
        let r = d.ratio(&format!("udp {clients}"), "dgram_per_s", ECHO, UDP_PEER);
        target(
            &format!(
                "UDP, {clients} client(s): datagrams/s level with a std UdpSocket echo (≥ 0.9×)"
            ),
            ratio_cell(r),
            r.map(|r| r >= 0.9),
        );
    }
    let threads = d.med("memory", ECHO, "idle_threads");
    let busy_threads = d.med("memory", ECHO, "threads_1000");
    target(
        "threads created as load needs them",
        format!(
            "{} threads idle (main, signal, acceptor, and the worker started with the server, \
             which served the benchmark's readiness probe and retires after 30 s idle); {} with \
             1,000 connections",
            cell(threads),
            cell(busy_threads)
        ),
        threads
            .zip(busy_threads)
            .map(|(idle, busy)| idle <= 4.0 && busy <= 1000.0 + 4.0),
    );
    let up = d.med("startup", ECHO, "startup_ms");
    target(
        "start-up to first accept < 5 ms",
        format!("{} ms (to the first echo)", cell(up)),
        up.map(|v| v < 5.0),
    );
    let slow = d.med("burst 1000", ECHO, "slow_connects");
    let over = d.med("burst 1000", ECHO, "listen_overflows");
    target(
        "a burst of 1,000 connects without listen-queue overflow",
        format!("{} slow connects, {} overflows", cell(slow), cell(over)),
        slow.zip(over).map(|(s, o)| s == 0.0 && o == 0.0),
    );
    let writes = d.med("writes", ECHO, "writes_per_line");
    target(
        "pipelined replies leave in as few writes as the input allows",
        format!(
            "{} write syscalls per 1,000 lines streamed (naive: {}, tokio: {}; `strace -c`)",
            cell(writes.map(|w| w * 1000.0)),
            cell(
                d.med("writes", NAIVE, "writes_per_line")
                    .map(|w| w * 1000.0)
            ),
            cell(
                d.med("writes", TOKIO, "writes_per_line")
                    .map(|w| w * 1000.0)
            )
        ),
        writes.map(|w| w < 0.05),
    );
    target(
        "cost per line of `info` logging stated",
        format!(
            "{} µs/line (ping-pong), {} µs/line (streaming)",
            cell(info_cost),
            cell(info_stream_cost)
        ),
        None,
    );
    let ks = d.med("memory", ECHO, "kernel_stack_per_conn_kb");
    target(
        "kernel memory per connection stated",
        format!("{} kB kernel stack per connection, not in RSS", cell(ks)),
        None,
    );

    std::fs::write("BENCHMARKS.md", md).expect("write BENCHMARKS.md");
    let json: Vec<serde_json::Value> = records
        .iter()
        .map(|r| serde_json::json!({"round": r.round, "scenario": r.scenario, "server": r.server, "metrics": r.metrics}))
        .collect();
    std::fs::write(
        "bench/results.json",
        serde_json::to_string_pretty(&json).unwrap(),
    )
    .expect("write results.json");
    plot(&d).expect("plot");
    eprintln!("wrote BENCHMARKS.md, bench/results.json, bench/plot.svg");
}

fn plot(d: &Data) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new("bench/plot.svg", (1000, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(500);
    let conns = [1.0, 16.0, 256.0, 1000.0];
    // tcp-echo last, so that it is drawn on top.
    let order = [(NAIVE, BLUE, 2), (TOKIO, GREEN, 2), (ECHO, RED, 3)];
    let series = |metric: &str, server: &str| -> Vec<(f64, f64)> {
        conns
            .iter()
            .filter_map(|&c| {
                d.med(&format!("ping-pong {c}"), server, metric)
                    .map(|v| (c, v))
            })
            .collect()
    };
    let max = |metric: &str| {
        SERVERS
            .iter()
            .flat_map(|s| series(metric, s))
            .map(|(_, v)| v)
            .fold(1.0, f64::max)
    };

    // Round trips/s: a linear axis from 0.
    let mut chart = ChartBuilder::on(&left)
        .caption("ping-pong: round trips/s", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d((1f64..1000f64).log_scale(), 0f64..max("rt_per_s") * 1.15)?;
    chart
        .configure_mesh()
        .x_desc("connections")
        .y_desc("round trips/s")
        .draw()?;
    draw_lines(
        &mut chart,
        |server| series("rt_per_s", server),
        &order,
        SeriesLabelPosition::LowerLeft,
    )?;

    // p99: a log axis (it spans four decades).
    let mut chart = ChartBuilder::on(&right)
        .caption("ping-pong: p99 latency (µs)", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d(
            (1f64..1000f64).log_scale(),
            (1f64..max("p99_us") * 1.5).log_scale(),
        )?;
    chart
        .configure_mesh()
        .x_desc("connections")
        .y_desc("p99 (µs)")
        .draw()?;
    draw_lines(
        &mut chart,
        |server| series("p99_us", server),
        &order,
        SeriesLabelPosition::UpperLeft,
    )?;
    root.present()?;
    Ok(())
}

/// Draws one line (with points) per server, in `order`, and the legend.
fn draw_lines<'a, Y: plotters::coord::ranged1d::Ranged<ValueType = f64>>(
    chart: &mut ChartContext<
        'a,
        SVGBackend<'a>,
        Cartesian2d<plotters::coord::combinators::LogCoord<f64>, Y>,
    >,
    series: impl Fn(&str) -> Vec<(f64, f64)>,
    order: &[(&'static str, RGBColor, u32)],
    legend: SeriesLabelPosition,
) -> Result<(), Box<dyn std::error::Error>> {
    for &(s, color, width) in order {
        let pts = series(s);
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(width)))?
            .label(s)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
            });
        chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(legend)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}
