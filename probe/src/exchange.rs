//! One probe connection: connect (with TLS, the handshake), send a line, read the banner and
//! the echo, half-close, expect the end; all within one deadline. What went wrong is told
//! apart ([`Kind`]): a refused connection, a reset, a timeout, a connection closed early, a
//! wrong echo, a failed TLS handshake.

use std::io::{self, BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::BannerLines;

/// The longest line read from a server.
const MAX_LINE: u64 = 64 * 1024;

/// What kind of failure a connection met.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Kind {
    /// The connection was refused (nothing listening, or a proxy that refuses).
    Refused,
    /// The connection was reset.
    Reset,
    /// Something did not happen within `--timeout`.
    Timeout,
    /// The server closed the connection before the whole echo came back.
    ClosedEarly,
    /// Bytes came back that are not the echo.
    WrongEcho,
    /// The TLS handshake failed.
    Tls,
    /// A datagram (`--udp`) got no answer within `--timeout`.
    Lost,
    /// Anything else (a name that does not resolve, a local error).
    Error,
}

impl Kind {
    /// Every kind, in the order reports list them.
    pub(crate) const ALL: [Kind; 8] = [
        Kind::Refused,
        Kind::Reset,
        Kind::Timeout,
        Kind::ClosedEarly,
        Kind::WrongEcho,
        Kind::Tls,
        Kind::Lost,
        Kind::Error,
    ];

    /// Its name in the report and the JSON.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Kind::Refused => "refused",
            Kind::Reset => "reset",
            Kind::Timeout => "timeout",
            Kind::ClosedEarly => "closed_early",
            Kind::WrongEcho => "wrong_echo",
            Kind::Tls => "tls",
            Kind::Lost => "lost",
            Kind::Error => "error",
        }
    }
}

/// A connection that failed: what kind of failure, why, and what it had learnt of the server.
#[derive(Debug, Clone)]
pub(crate) struct Failure {
    /// The kind.
    pub(crate) kind: Kind,
    /// One line that says what happened.
    pub(crate) detail: String,
    /// The pod, if its banner came.
    pub(crate) pod: Option<String>,
    /// The version, if the echo began with it.
    pub(crate) version: Option<String>,
}

impl Failure {
    pub(crate) fn new(kind: Kind, detail: impl Into<String>) -> Failure {
        Failure {
            kind,
            detail: detail.into(),
            pod: None,
            version: None,
        }
    }
}

/// What the server reported of a TLS handshake (the banner's `TLS:` line).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TlsFacts {
    /// `TLSv1.3`.
    pub(crate) version: String,
    /// The SNI it saw (`none`).
    pub(crate) sni: String,
    /// The ALPN protocol agreed (`none`).
    pub(crate) alpn: String,
}

impl TlsFacts {
    /// Reads `version=... sni=... alpn=...` (other keys are skipped).
    pub(crate) fn parse(facts: &str) -> TlsFacts {
        let mut t = TlsFacts::default();
        for pair in facts.split(' ') {
            match pair.split_once('=') {
                Some(("version", v)) => t.version = v.to_string(),
                Some(("sni", v)) => t.sni = v.to_string(),
                Some(("alpn", v)) => t.alpn = v.to_string(),
                _ => {}
            }
        }
        t
    }
}

/// What one connection found.
#[derive(Debug, Clone)]
pub(crate) struct Answer {
    /// The version: the echo's prefix (empty without one).
    pub(crate) version: String,
    /// The pod, from the banner.
    pub(crate) pod: Option<String>,
    /// Time to connect (with TLS: and to complete the handshake).
    pub(crate) connect: Duration,
    /// From the line sent to its echo.
    pub(crate) round_trip: Duration,
    /// What the server reported of the TLS handshake.
    pub(crate) tls: Option<TlsFacts>,
}

/// How to reach the server.
pub(crate) struct Target<'a> {
    /// Its addresses, tried in turn.
    pub(crate) addrs: &'a [SocketAddr],
    /// The line to send.
    pub(crate) text: &'a str,
    /// The time each connection has in all.
    pub(crate) timeout: Duration,
    /// The banner lines to recognise.
    pub(crate) banner: &'a BannerLines,
    /// TLS, with `--tls`.
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<&'a crate::tls::Client>,
}

/// A socket read and written against one deadline: each call waits only for what is left of
/// it, so a server that trickles bytes cannot stretch `--timeout`.
struct Deadline<'a> {
    stream: &'a TcpStream,
    until: Instant,
}

impl Deadline<'_> {
    /// Sets what is left of the time as the socket's timeout for the next call.
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

/// The kind of an I/O failure while `what`.
fn io_failure(e: &io::Error, what: &str, timeout: Duration) -> Failure {
    match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => Failure::new(
            Kind::Timeout,
            format!("timed out after {:.1}s {what}", timeout.as_secs_f64()),
        ),
        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe => {
            Failure::new(Kind::Reset, format!("{what}: connection reset"))
        }
        ErrorKind::UnexpectedEof => Failure::new(
            Kind::ClosedEarly,
            format!("{what}: the server closed the connection"),
        ),
        ErrorKind::InvalidData => Failure::new(Kind::Tls, format!("{what}: {e}")),
        _ => Failure::new(Kind::Error, format!("{what}: {e}")),
    }
}

/// One connection to `target`.
pub(crate) fn connection(target: &Target<'_>) -> Result<Answer, Failure> {
    let start = Instant::now();
    let deadline = start + target.timeout;
    let mut last = None;
    let mut stream = None;
    for addr in target.addrs {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match TcpStream::connect_timeout(addr, left) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => {
                let kind = match e.kind() {
                    ErrorKind::ConnectionRefused => Kind::Refused,
                    ErrorKind::WouldBlock | ErrorKind::TimedOut => Kind::Timeout,
                    _ => Kind::Error,
                };
                last = Some(Failure::new(kind, format!("connect to {addr}: {e}")));
            }
        }
    }
    let stream = stream.ok_or_else(|| {
        last.unwrap_or_else(|| {
            Failure::new(
                Kind::Timeout,
                format!(
                    "timed out after {:.1}s connecting",
                    target.timeout.as_secs_f64()
                ),
            )
        })
    })?;
    let _ = stream.set_nodelay(true);
    let io = Deadline {
        stream: &stream,
        until: deadline,
    };
    let half_close = |_: &mut Deadline<'_>| stream.shutdown(Shutdown::Write);
    #[cfg(feature = "tls")]
    if let Some(tls) = target.tls {
        let mut conn = tls.connection()?;
        let mut io = io;
        while conn.is_handshaking() {
            conn.complete_io(&mut io)
                .map_err(|e| tls_failure(&e, target.timeout))?;
        }
        let connect = start.elapsed();
        let stream_owned = rustls::StreamOwned::new(conn, io);
        return exchange(
            stream_owned,
            |s| {
                s.conn.send_close_notify();
                let _ = s.conn.complete_io(&mut s.sock);
                s.sock.stream.shutdown(Shutdown::Write)
            },
            target,
            connect,
        );
    }
    let connect = start.elapsed();
    let mut io = io;
    exchange_with(&mut io, half_close, target, connect)
}

/// A failed handshake: a timeout, a reset, or what TLS said.
#[cfg(feature = "tls")]
fn tls_failure(e: &io::Error, timeout: Duration) -> Failure {
    match e.kind() {
        ErrorKind::InvalidData => Failure::new(Kind::Tls, format!("TLS handshake: {e}")),
        _ => {
            let mut f = io_failure(e, "during the TLS handshake", timeout);
            if f.kind == Kind::Error {
                f.kind = Kind::Tls;
            }
            f
        }
    }
}

#[cfg(feature = "tls")]
fn exchange<S: Read + Write>(
    mut stream: S,
    half_close: impl FnOnce(&mut S) -> io::Result<()>,
    target: &Target<'_>,
    connect: Duration,
) -> Result<Answer, Failure> {
    exchange_with(&mut stream, half_close, target, connect)
}

/// Sends the line on `stream`, reads the banner and the echo, half-closes and expects the end.
fn exchange_with<S: Read + Write>(
    stream: &mut S,
    half_close: impl FnOnce(&mut S) -> io::Result<()>,
    target: &Target<'_>,
    connect: Duration,
) -> Result<Answer, Failure> {
    let text = target.text;
    let timeout = target.timeout;
    let sent = Instant::now();
    stream
        .write_all(format!("{text}\n").as_bytes())
        .map_err(|e| io_failure(&e, "sending the line", timeout))?;
    let mut reader = BufReader::new(stream);
    let mut pod = None;
    let mut tls = None;
    let fail = |mut f: Failure, pod: &Option<String>, version: Option<String>| {
        f.pod = pod.clone();
        f.version = version;
        f
    };
    let (version, round_trip) = loop {
        let mut line = Vec::new();
        let n = (&mut reader)
            .take(MAX_LINE)
            .read_until(b'\n', &mut line)
            .map_err(|e| fail(io_failure(&e, "waiting for the echo", timeout), &pod, None))?;
        if n == 0 {
            return Err(fail(
                Failure::new(
                    Kind::ClosedEarly,
                    "the server closed the connection without echoing the line",
                ),
                &pod,
                None,
            ));
        }
        if line.pop() != Some(b'\n') {
            let partial = String::from_utf8_lossy(&line).into_owned();
            let version = partial_version(&partial, text);
            return Err(fail(
                Failure::new(
                    Kind::ClosedEarly,
                    format!(
                        "the server closed the connection in the middle of a line: {partial:?}"
                    ),
                ),
                &pod,
                version,
            ));
        }
        let line = String::from_utf8_lossy(&line).into_owned();
        if let Some(version) = echo_version(&line, text) {
            break (version.to_string(), sent.elapsed());
        }
        match banner_line(target.banner, &line) {
            Some(("POD_NAME", name)) => pod = Some(name.to_string()),
            Some(("TLS", facts)) => tls = Some(TlsFacts::parse(facts)),
            Some(_) => {}
            None => {
                return Err(fail(
                    Failure::new(
                        Kind::WrongEcho,
                        format!("wrong echo: {line:?} for {text:?}"),
                    ),
                    &pod,
                    None,
                ))
            }
        }
    };
    let known = |f: Failure| fail(f, &pod, Some(version.clone()));
    half_close(reader.get_mut()).map_err(|e| known(io_failure(&e, "half-closing", timeout)))?;
    let mut rest = Vec::new();
    match (&mut reader).take(MAX_LINE).read_to_end(&mut rest) {
        Ok(_) => {}
        // With TLS, a server that ends without close_notify: the end all the same.
        Err(e) if e.kind() == ErrorKind::UnexpectedEof => {}
        Err(e) => {
            return Err(known(io_failure(
                &e,
                "waiting for the end after the half-close",
                timeout,
            )))
        }
    }
    if !rest.is_empty() {
        return Err(known(Failure::new(
            Kind::WrongEcho,
            format!(
                "unexpected bytes after the echo: {:?}",
                String::from_utf8_lossy(&rest)
            ),
        )));
    }
    Ok(Answer {
        version,
        pod,
        connect,
        round_trip,
        tls,
    })
}

/// The version of a line if it is the echo of `text`: the prefix before it (`one` in
/// `one TEXT`), or `""` without one.
pub(crate) fn echo_version<'a>(line: &'a str, text: &str) -> Option<&'a str> {
    if line == text {
        return Some("");
    }
    line.strip_suffix(text)?.strip_suffix(' ')
}

/// The version of an echo cut short (`one Mon No` of `Mon Nov ...`), if it shows one.
fn partial_version(partial: &str, text: &str) -> Option<String> {
    let (version, rest) = partial.split_once(' ')?;
    (!rest.is_empty() && text.starts_with(rest)).then(|| version.to_string())
}

/// Which banner line `line` is, and its value: `("POD_NAME", pod)`, `("TLS", facts)`, ...;
/// `None` if it is not a banner line.
pub(crate) fn banner_line<'a>(
    banner: &BannerLines,
    line: &'a str,
) -> Option<(&'static str, &'a str)> {
    banner.iter().find_map(|(var, before, after)| {
        let value = line.strip_prefix(before)?.strip_suffix(after)?;
        Some((*var, value))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// go-echo's wording, as the server writes it, and the TLS line.
    const BANNER: [(&str, &str, &str); 3] = [
        ("POD_NAME", "Running on Pod ", "."),
        ("POD_NAMESPACE", "In namespace ", "."),
        ("TLS", "TLS: ", ""),
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
            Some(("POD_NAME", "tcp-echo-v1-6b9f7c7d5-x2x8k"))
        );
        assert_eq!(
            banner_line(&BANNER, "In namespace default."),
            Some(("POD_NAMESPACE", "default"))
        );
        assert_eq!(banner_line(&BANNER, "one hello"), None);
        assert_eq!(partial_version("one Mon No", text), Some("one".to_string()));
        assert_eq!(partial_version("garbage here", text), None);
    }

    #[test]
    fn the_tls_line_gives_what_the_server_saw() {
        let (_, facts) = banner_line(
            &BANNER,
            "TLS: version=TLSv1.3 cipher=TLS13_AES_128_GCM_SHA256 sni=v1.example.com alpn=h2 offered=h2 client=\"CN=a b\"",
        )
        .unwrap();
        assert_eq!(
            TlsFacts::parse(facts),
            TlsFacts {
                version: "TLSv1.3".into(),
                sni: "v1.example.com".into(),
                alpn: "h2".into()
            }
        );
    }
}
