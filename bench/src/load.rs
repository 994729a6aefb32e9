//! Load scenarios. Each runs on a single-threaded tokio runtime (the load generator's one core)
//! and verifies every reply byte: a wrong or missing byte is counted as an error, and a run
//! with errors is invalid.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::runtime::Runtime;

/// A line of exactly `len` bytes (the last is `\n`), numbered `n`.
pub fn line(n: usize, len: usize) -> Vec<u8> {
    let mut l = format!("{n:08} ").into_bytes();
    l.resize(len - 1, b'x');
    l.push(b'\n');
    l
}

fn reply(prefix: &str, line: &[u8]) -> Vec<u8> {
    let mut r = if prefix.is_empty() {
        Vec::new()
    } else {
        format!("{prefix} ").into_bytes()
    };
    r.extend_from_slice(line);
    r
}

/// The load generator's runtime: one thread.
pub fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Connects `n` clients (at most 64 handshakes in flight, so that the set-up itself does not
/// overflow a small listen queue).
async fn connect_all(addr: SocketAddr, n: usize) -> std::io::Result<Vec<TcpStream>> {
    let mut all = Vec::with_capacity(n);
    while all.len() < n {
        let batch = (n - all.len()).min(64);
        let mut handles = Vec::new();
        for _ in 0..batch {
            handles.push(tokio::spawn(async move {
                let s = TcpStream::connect(addr).await?;
                s.set_nodelay(true)?;
                Ok::<_, std::io::Error>(s)
            }));
        }
        for h in handles {
            all.push(h.await.expect("connect task")?);
        }
    }
    Ok(all)
}

/// A latency histogram in nanoseconds, 1 µs to 60 s, 3 significant digits.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1_000, 60_000_000_000, 3).expect("histogram bounds")
}

/// Waits for every client task and adds up their results; gives back what each task returned
/// beside its result, in order.
async fn collect<T>(
    tasks: Vec<tokio::task::JoinHandle<(T, PingPong)>>,
    start: Instant,
) -> (Vec<T>, PingPong) {
    let mut total = PingPong::empty();
    let mut kept = Vec::with_capacity(tasks.len());
    for t in tasks {
        let (k, r) = t.await.expect("client task");
        kept.push(k);
        total.merge(&r);
    }
    total.elapsed = start.elapsed();
    (kept, total)
}

/// One round trip: sends `line`, reads its echo into `got`, and checks it is `want`.
async fn round_trip(s: &mut TcpStream, line: &[u8], want: &[u8], got: &mut [u8]) -> bool {
    s.write_all(line).await.is_ok() && s.read_exact(got).await.is_ok() && got == want
}

/// What a latency client sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message {
    /// A numbered 64-byte line.
    Line,
    /// fortio's `tcp://` payload: `Fortio\n%04d\n%012d`, 24 bytes, no trailing newline (on a
    /// kept-open connection its echo is exact only without a prefix).
    Fortio,
}

/// fortio's 24-byte payload for client `i`.
pub fn fortio_payload(i: usize) -> Vec<u8> {
    format!("Fortio\n{:04}\n{:012}", i % 10_000, i).into_bytes()
}

/// One client of a latency scenario: its socket, its message and the echo it expects.
struct Client {
    s: TcpStream,
    line: Vec<u8>,
    want: Vec<u8>,
    got: Vec<u8>,
}

impl Client {
    fn new(i: usize, s: TcpStream, prefix: &str, message: Message) -> Client {
        let (line, want) = match message {
            Message::Line => {
                let line = line(i, 64);
                let want = reply(prefix, &line);
                (line, want)
            }
            Message::Fortio => {
                assert!(prefix.is_empty(), "fortio's messages want an exact echo");
                let payload = fortio_payload(i);
                (payload.clone(), payload)
            }
        };
        let got = vec![0u8; want.len()];
        Client { s, line, want, got }
    }

    /// One round trip, timed from now and added to `result`; false (counted as an error) if
    /// it failed or the echo was wrong.
    async fn timed_round_trip(&mut self, result: &mut PingPong) -> bool {
        let sent = Instant::now();
        if !round_trip(&mut self.s, &self.line, &self.want, &mut self.got).await {
            result.errors += 1;
            return false;
        }
        let _ = result
            .latency
            .record((sent.elapsed().as_nanos() as u64).max(1_000));
        result.round_trips += 1;
        true
    }
}

/// Result of a ping-pong run.
pub struct PingPong {
    /// Round trips completed.
    pub round_trips: u64,
    /// Wall time of the measured phase.
    pub elapsed: Duration,
    /// Round-trip latency in nanoseconds.
    pub latency: Histogram<u64>,
    /// Failed or wrong round trips.
    pub errors: u64,
}

impl PingPong {
    fn empty() -> PingPong {
        PingPong {
            round_trips: 0,
            elapsed: Duration::ZERO,
            latency: histogram(),
            errors: 0,
        }
    }

    /// Adds `other` (a later window of the same clients) to this result.
    pub fn merge(&mut self, other: &PingPong) {
        self.round_trips += other.round_trips;
        self.elapsed += other.elapsed;
        self.errors += other.errors;
        self.latency.add(&other.latency).expect("merge histograms");
    }
}

/// Connected ping-pong clients of one server, kept open between timed windows so that several
/// servers can be measured in turns.
pub struct Clients {
    clients: Vec<Client>,
}

impl Clients {
    /// Connects `conns` clients to `addr`, whose echo starts with `prefix` and a space, each
    /// sending `message`.
    pub fn connect(
        rt: &Runtime,
        addr: SocketAddr,
        conns: usize,
        prefix: &str,
        message: Message,
    ) -> Clients {
        let streams = rt.block_on(connect_all(addr, conns)).expect("connect");
        Clients {
            clients: streams
                .into_iter()
                .enumerate()
                .map(|(i, s)| Client::new(i, s, prefix, message))
                .collect(),
        }
    }

    /// Every client sends its line, waits for the echo, and repeats for `dur`; all of them
    /// then wait for their last echo, so the server is idle when this returns.
    pub fn ping_pong(&mut self, rt: &Runtime, dur: Duration) -> PingPong {
        let clients = std::mem::take(&mut self.clients);
        let (clients, result) = rt.block_on(async move {
            let start = Instant::now();
            let deadline = start + dur;
            let tasks: Vec<_> = clients
                .into_iter()
                .map(|mut c| {
                    tokio::spawn(async move {
                        let mut r = PingPong::empty();
                        while Instant::now() < deadline && c.timed_round_trip(&mut r).await {}
                        (c, r)
                    })
                })
                .collect();
            collect(tasks, start).await
        });
        self.clients = clients;
        result
    }

    /// Open loop, below saturation: every client sends its line once per `period` (phases
    /// spread evenly over the period) for `dur`. Latency runs from the send to the complete
    /// echo; the send times come from tokio's timer (1 ms granularity), and the echo always
    /// returns well within the period, so no send waits on a slow reply. The first period is
    /// not recorded (a window's start, where the clients' tasks are spawned). All echoes are in
    /// when this returns.
    pub fn paced(&mut self, rt: &Runtime, period: Duration, dur: Duration) -> PingPong {
        let clients = std::mem::take(&mut self.clients);
        let conns = clients.len().max(1) as u32;
        let (clients, result) = rt.block_on(async move {
            // A short lead, so that every client's first send is scheduled before it is due.
            let start = Instant::now() + Duration::from_millis(5);
            let deadline = start + dur;
            let tasks: Vec<_> = clients
                .into_iter()
                .enumerate()
                .map(|(i, mut c)| {
                    let mut next = start + period * i as u32 / conns;
                    tokio::spawn(async move {
                        let mut r = PingPong::empty();
                        let mut warm = PingPong::empty();
                        while next < deadline {
                            tokio::time::sleep_until(next.into()).await;
                            let into = if next < start + period {
                                &mut warm
                            } else {
                                &mut r
                            };
                            if !c.timed_round_trip(into).await {
                                break;
                            }
                            next += period;
                        }
                        r.errors += warm.errors;
                        (c, r)
                    })
                })
                .collect();
            collect(tasks, start).await
        });
        self.clients = clients;
        result
    }
}

/// Result of a streaming run.
pub struct Streaming {
    /// Lines echoed and verified.
    pub lines: u64,
    /// Input bytes echoed.
    pub bytes: u64,
    /// From the first write to the last reply.
    pub elapsed: Duration,
    /// Wrong or missing bytes (any makes the run invalid).
    pub errors: u64,
}

/// A stream of replies checked against an expected block that repeats.
pub struct Replies {
    expected: Vec<u8>,
    pos: usize,
    /// Bytes received.
    pub got: u64,
    /// Chunks that differed from the expected bytes.
    pub errors: u64,
}

impl Replies {
    pub fn new(expected: Vec<u8>) -> Replies {
        Replies {
            expected,
            pos: 0,
            got: 0,
            errors: 0,
        }
    }

    /// Checks the next `data` received.
    pub fn check(&mut self, mut data: &[u8]) {
        self.got += data.len() as u64;
        while !data.is_empty() {
            let take = data.len().min(self.expected.len() - self.pos);
            if data[..take] != self.expected[self.pos..self.pos + take] {
                self.errors += 1;
            }
            self.pos = (self.pos + take) % self.expected.len();
            data = &data[take..];
        }
    }
}

/// `conns` clients each pipeline `line_len`-byte lines for `dur` while a reader drains and
/// verifies the echo; then each half-closes and reads the rest.
pub fn streaming(
    addr: SocketAddr,
    conns: usize,
    line_len: usize,
    dur: Duration,
    prefix: &str,
) -> Streaming {
    let prefix = prefix.to_string();
    runtime().block_on(async move {
        let streams = connect_all(addr, conns).await.expect("connect");
        let per_block = (64 * 1024 / line_len).max(1);
        let block: Vec<u8> = (0..per_block).flat_map(|i| line(i, line_len)).collect();
        let expected: Vec<u8> = (0..per_block)
            .flat_map(|i| reply(&prefix, &line(i, line_len)))
            .collect();
        let reply_line = expected.len() / per_block;
        let start = Instant::now();
        let deadline = start + dur;
        let mut tasks = Vec::new();
        for s in streams {
            let (mut r, mut w) = s.into_split();
            let block = block.clone();
            let expected = expected.clone();
            tasks.push(tokio::spawn(async move {
                let writer = tokio::spawn(async move {
                    let mut sent = 0u64;
                    while Instant::now() < deadline {
                        if w.write_all(&block).await.is_err() {
                            break;
                        }
                        sent += block.len() as u64;
                    }
                    let _ = w.shutdown().await;
                    sent
                });
                let mut buf = vec![0u8; 256 * 1024];
                let mut replies = Replies::new(expected);
                loop {
                    match r.read(&mut buf).await {
                        Ok(0) => break,
                        Ok(n) => replies.check(&buf[..n]),
                        Err(_) => {
                            replies.errors += 1;
                            break;
                        }
                    }
                }
                let sent = writer.await.unwrap_or(0);
                let lines = replies.got / reply_line as u64;
                if lines * line_len as u64 != sent {
                    replies.errors += 1; // missing bytes
                }
                (lines, replies.errors)
            }));
        }
        let mut out = Streaming {
            lines: 0,
            bytes: 0,
            elapsed: Duration::ZERO,
            errors: 0,
        };
        for t in tasks {
            let (lines, errors) = t.await.expect("stream task");
            out.lines += lines;
            out.errors += errors;
        }
        out.bytes = out.lines * line_len as u64;
        out.elapsed = start.elapsed();
        out
    })
}

/// Connect, one line, close, by `concurrency` clients for `dur`: (connections, errors).
pub fn churn(
    addr: SocketAddr,
    concurrency: usize,
    dur: Duration,
    prefix: &str,
) -> (u64, u64, Duration) {
    let prefix = prefix.to_string();
    runtime().block_on(async move {
        let start = Instant::now();
        let deadline = start + dur;
        let tasks: Vec<_> = (0..concurrency)
            .map(|i| {
                let l = line(i, 64);
                let want = reply(&prefix, &l);
                tokio::spawn(async move {
                    let (mut n, mut errors) = (0u64, 0u64);
                    let mut got = vec![0u8; want.len()];
                    while Instant::now() < deadline {
                        let ok = async {
                            let mut s = TcpStream::connect(addr).await?;
                            s.write_all(&l).await?;
                            s.read_exact(&mut got).await?;
                            Ok::<_, std::io::Error>(got == want)
                        }
                        .await;
                        match ok {
                            Ok(true) => n += 1,
                            _ => errors += 1,
                        }
                    }
                    (n, errors)
                })
            })
            .collect();
        let (mut n, mut e) = (0, 0);
        for t in tasks {
            let (a, b) = t.await.expect("churn task");
            n += a;
            e += b;
        }
        (n, e, start.elapsed())
    })
}

/// Result of a burst of connects.
pub struct Burst {
    /// Connects that took over 900 ms (a SYN was retried: the listen queue overflowed).
    pub slow_connects: u64,
    /// Slowest connect.
    pub slowest: Duration,
    /// Clients whose line was echoed.
    pub served: u64,
    /// Clients that failed.
    pub errors: u64,
}

/// `n` clients connect at the same moment, each then sends a line and checks its echo.
pub fn burst(addr: SocketAddr, n: usize, prefix: &str) -> Burst {
    let prefix = prefix.to_string();
    runtime().block_on(async move {
        let tasks: Vec<_> = (0..n)
            .map(|i| {
                let l = line(i, 64);
                let want = reply(&prefix, &l);
                tokio::spawn(async move {
                    let t = Instant::now();
                    let s = tokio::time::timeout(Duration::from_secs(20), TcpStream::connect(addr))
                        .await;
                    let took = t.elapsed();
                    let Ok(Ok(mut s)) = s else {
                        return (took, false, None);
                    };
                    let mut got = vec![0u8; want.len()];
                    let ok = s.write_all(&l).await.is_ok()
                        && tokio::time::timeout(Duration::from_secs(20), s.read_exact(&mut got))
                            .await
                            .is_ok_and(|r| r.is_ok())
                        && got == want;
                    (took, ok, Some(s))
                })
            })
            .collect();
        let mut out = Burst {
            slow_connects: 0,
            slowest: Duration::ZERO,
            served: 0,
            errors: 0,
        };
        let mut keep = Vec::new();
        for t in tasks {
            let (took, ok, s) = t.await.expect("burst task");
            if took > Duration::from_millis(900) {
                out.slow_connects += 1;
            }
            out.slowest = out.slowest.max(took);
            if ok {
                out.served += 1;
            } else {
                out.errors += 1;
            }
            keep.push(s);
        }
        out
    })
}

/// Opens `n` connections, echoes one line on each, and keeps them open until `hold` returns.
pub fn hold_idle<T>(
    addr: SocketAddr,
    n: usize,
    prefix: &str,
    hold: impl FnOnce() -> T,
) -> (T, u64) {
    let prefix = prefix.to_string();
    let rt = runtime();
    let (streams, errors) = rt.block_on(async move {
        let mut streams = connect_all(addr, n).await.expect("connect");
        let mut errors = 0;
        for (i, s) in streams.iter_mut().enumerate() {
            let l = line(i, 64);
            let want = reply(&prefix, &l);
            let mut got = vec![0u8; want.len()];
            if !round_trip(s, &l, &want, &mut got).await {
                errors += 1;
            }
        }
        (streams, errors)
    });
    let out = hold();
    drop(streams);
    (out, errors)
}

/// Time from `spawn` to the first echoed line on `addr`.
pub fn time_to_first_echo(spawn: impl FnOnce() -> std::process::ChildStderr) -> Duration {
    use std::io::{BufRead, BufReader, Read, Write};
    let l = line(0, 64);
    let start = Instant::now();
    // The server binds port 0 and says where it listens: every server here prints
    // `listening on ADDR` (tcp-echo at `info`).
    let mut lines = BufReader::new(spawn()).lines();
    let addr: SocketAddr = loop {
        let line = lines
            .next()
            .expect("the server exited before it listened")
            .expect("read the server's log");
        if let Some(a) = line.split("listening on ").nth(1) {
            let a: SocketAddr = a.trim().parse().expect("address");
            break SocketAddr::from(([127, 0, 0, 1], a.port()));
        }
    };
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    let mut b = [0u8; 1];
    s.write_all(&l).expect("send");
    s.read_exact(&mut b).expect("echo");
    let took = start.elapsed();
    // Keep draining its log so that the server never blocks on it.
    std::thread::spawn(move || for _ in lines {});
    took
}

/// Ping-pong in lockstep, for counting instructions: `conns` blocking clients each send one
/// 64-byte line, then each reads its echo, `rounds` times. Returns the replies that were wrong
/// or missing (each client stops at its first).
pub fn lockstep(addr: SocketAddr, conns: usize, rounds: usize, prefix: &str) -> u64 {
    use std::io::{Read, Write};
    let mut clients: Vec<(std::net::TcpStream, Vec<u8>, Vec<u8>)> = (0..conns)
        .filter_map(|i| {
            let s = std::net::TcpStream::connect(addr).ok()?;
            s.set_nodelay(true).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
            let l = line(i, 64);
            let want = reply(prefix, &l);
            Some((s, l, want))
        })
        .collect();
    let mut errors = (conns - clients.len()) as u64;
    let mut got = Vec::new();
    for _ in 0..rounds {
        clients.retain_mut(|(s, l, _)| {
            let sent = s.write_all(l).is_ok();
            errors += u64::from(!sent);
            sent
        });
        clients.retain_mut(|(s, _, want)| {
            got.resize(want.len(), 0);
            let ok = s.read_exact(&mut got).is_ok() && got == *want;
            errors += u64::from(!ok);
            ok
        });
    }
    errors
}
