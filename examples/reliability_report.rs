//! Renders RELIABILITY.md from the stress suite's results (`target/stress/*.json`), so that the
//! report is produced by the suite rather than written by hand. Run by `make stress`.

use std::fmt::Write as _;

fn main() {
    let dir = std::path::Path::new("target/stress");
    let mut rows: Vec<serde_json::Value> = std::fs::read_dir(dir)
        .expect("target/stress: run the stress suite first")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .map(|e| serde_json::from_str(&std::fs::read_to_string(e.path()).unwrap()).unwrap())
        .collect();
    rows.sort_by_key(|r| r["order"].as_u64());
    let machine = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mut md = String::new();
    md.push_str("# Reliability\n\n");
    md.push_str(
        "What nothing a client or the machine does may do to tcp-echo: lose data, harm another \
         client, grow without bound, die or spin. Each case below attacks the release binary over \
         loopback and asserts its outcome; this file is written by the suite from what it measured \
         (`make stress`), not by hand. Limits are the server process's peaks, sampled from \
         `/proc/PID/status` and `/proc/PID/fd`; CPU is its user+system time during the case.\n\n",
    );
    let _ = writeln!(md, "Machine: {machine}, {cores} cores. Rerun: `make stress` (a few minutes; `STRESS_SOAK_SECS` sets the soak's length, default 180).\n");
    md.push_str("| # | case | load | peak RSS | peak threads | peak fds | CPU | outcome |\n");
    md.push_str("|---|---|---|---|---|---|---|---|\n");
    for r in &rows {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.1} MiB | {} | {} | {:.2} s | {} |",
            r["order"],
            r["case"].as_str().unwrap_or(""),
            r["load"].as_str().unwrap_or(""),
            r["peak_rss_kb"].as_f64().unwrap_or(0.0) / 1024.0,
            r["peak_threads"],
            r["peak_fds"],
            r["cpu_s"].as_f64().unwrap_or(0.0),
            r["outcome"].as_str().unwrap_or(""),
        );
    }
    md.push_str(
        "\nAlso part of the suite, in `make test`: the framing property (`tests/framing.rs`): for \
         arbitrary bytes, arbitrary read boundaries and an arbitrary output limit, the output \
         equals the specified echo, after every read it is the echo of everything read so far \
         (nothing held back), and the output buffer never exceeds its limit.\n\n\
         Defects this suite found, fixed, and kept as regression tests:\n\n\
         - At shutdown the server shut a connection's read side, sent FIN and then waited for \
         the client to acknowledge its replies; a client still sending made Linux reset the \
         connection (data after FIN on a read-shut socket, RFC 1122), which discarded megabytes \
         of queued replies. The worker now waits for the acknowledgements first, discarding late \
         input, and sends FIN after (`tests/shutdown.rs`, \
         `every_byte_read_before_the_signal_reaches_the_client_even_when_it_keeps_sending`; case 6 \
         here).\n\
         - The log budget first counted only pieces it logged: while the server-wide limit held \
         records back, a connection never spent its own budget, and a flood of empty lines went \
         through the limiter byte by byte: 22 MB/s echoed at `info` against 192 MB/s with the \
         records filtered out. The budget now counts every piece it is asked about (case 10).\n\
         - A client that reset while its replies were unacknowledged held a draining worker until \
         the drain deadline (the kernel keeps counting the bytes); and connections waiting in \
         the accept queue at the signal were reset when the listener was shut \
         (`tests/shutdown.rs`).\n",
    );
    std::fs::write("RELIABILITY.md", md).expect("write RELIABILITY.md");
    println!("RELIABILITY.md: {} cases", rows.len());
}
