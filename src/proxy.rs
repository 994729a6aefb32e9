//! The PROXY protocol (haproxy.org's `proxy-protocol.txt`, versions 1 and 2): the address of
//! the real client, which a proxy or load balancer in front of the server sends at the start
//! of each connection. Parsed with the `ppp` crate; this module bounds what is read and decides
//! what a connection's first bytes are.
//!
//! With `--proxy-protocol optional` or `required`, a connection starts with [`read_start`]: it
//! reads at most [`MAX_HEADER`] bytes until they are a complete header (v1 text or v2 binary,
//! told apart by their signatures), or cannot be one. The header is consumed, never echoed;
//! bytes after it (or, without a header, all of them) are the client's first data.

use std::fmt;
use std::io::{self, ErrorKind, Read};
use std::net::{SocketAddr, TcpStream};
use std::str::FromStr;
use std::time::{Duration, Instant};

/// Whether connections start with a PROXY header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// No: the first bytes are the client's data (a header would be echoed as data).
    Off,
    /// If one comes, it is read; a connection without one is served as usual.
    Optional,
    /// A connection without a valid header is closed.
    Required,
}

impl FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "off" => Ok(Mode::Off),
            "optional" => Ok(Mode::Optional),
            "required" => Ok(Mode::Required),
            _ => Err("expected one of off, optional, required".to_string()),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Off => "off",
            Mode::Optional => "optional",
            Mode::Required => "required",
        })
    }
}

/// How a version 1 header starts.
const V1_SIGNATURE: &[u8] = b"PROXY ";
/// How a version 2 header starts.
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
/// The longest version 1 header, CRLF included (the specification's bound).
pub(crate) const MAX_V1: usize = 107;
/// The longest header read: a version 2 header of 16 bytes and at most 520 of addresses and
/// TLVs, so that a header fits in one TCP segment of the minimum size the specification has in
/// mind (536 bytes). Longer ones are refused rather than waited for.
pub(crate) const MAX_HEADER: usize = 536;
/// The time a header has to arrive in full: a slow header is a slowloris.
pub(crate) const HEADER_DEADLINE: Duration = Duration::from_secs(3);

/// How long, since the last byte arrived, bytes that are only the beginning of a signature
/// (`P`, `\r\n`, ...) wait for more before they are taken for data. A proxy writes its header
/// in one piece, so its signature arrives whole; a client that typed `P` or an empty line and
/// waits for its echo gets it after this, not after [`HEADER_DEADLINE`].
pub(crate) const SIGNATURE_WAIT: Duration = Duration::from_millis(200);

/// What the start of a connection held.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Start {
    /// The header that came, if one did: `v1`, `v1 UNKNOWN`, `v2`, `v2 LOCAL`, ...
    pub(crate) header: Option<&'static str>,
    /// The client it names (`None`: no header, or one that names none, such as a proxy's own
    /// health check: the peer is the client).
    pub(crate) client: Option<SocketAddr>,
    /// The bytes read after the header (all of them without one): the client's first data.
    pub(crate) rest: Vec<u8>,
}

/// What the bytes read so far are.
#[derive(Debug, PartialEq)]
enum Verdict {
    /// Not a PROXY header: the client's data.
    Data,
    /// Possibly a header, not complete yet.
    More,
    /// A complete header of this many bytes.
    Header(usize, &'static str, Option<SocketAddr>),
    /// A header, but a broken one.
    Malformed(String),
}

/// A source of a connection's first bytes whose every read waits at most until a given time.
pub(crate) trait ReadUntil {
    /// Reads into `buf`, waiting at most until `until` (`WouldBlock` or `TimedOut` then).
    fn read_until(&mut self, buf: &mut [u8], until: Instant) -> io::Result<usize>;
}

impl ReadUntil for &TcpStream {
    fn read_until(&mut self, buf: &mut [u8], until: Instant) -> io::Result<usize> {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ErrorKind::TimedOut.into());
        }
        self.set_read_timeout(Some(left))?;
        self.read(buf)
    }
}

/// Reads the start of a connection for `mode` (not [`Mode::Off`]) from its socket: the
/// header, if any, and the bytes after it, within [`HEADER_DEADLINE`]. An error says why the
/// connection must be closed. The socket has no read timeout afterwards.
// Never inlined: its header buffer must not sit in the frame of every connection (see
// ARCHITECTURE.md, "Memory per connection").
#[inline(never)]
pub(crate) fn read_start(socket: &TcpStream, mode: Mode) -> Result<Start, String> {
    let start = read_start_from(&mut { socket }, mode, Instant::now());
    let _ = socket.set_read_timeout(None);
    start
}

/// [`read_start`] over any [`ReadUntil`], starting at `begun`. Reads stop at [`MAX_HEADER`]
/// bytes.
pub(crate) fn read_start_from(
    r: &mut impl ReadUntil,
    mode: Mode,
    begun: Instant,
) -> Result<Start, String> {
    let deadline = begun + HEADER_DEADLINE;
    let mut buf = [0u8; MAX_HEADER];
    let mut filled = 0;
    let mut last_arrival = begun;
    loop {
        let verdict = classify(&buf[..filled]);
        let data = |rest: &[u8]| {
            if mode == Mode::Required {
                Err("no PROXY header, and one is required".to_string())
            } else {
                Ok(Start {
                    header: None,
                    client: None,
                    rest: rest.to_vec(),
                })
            }
        };
        match verdict {
            Verdict::Data => return data(&buf[..filled]),
            Verdict::Header(len, header, client) => {
                return Ok(Start {
                    header: Some(header),
                    client,
                    rest: buf[len..filled].to_vec(),
                })
            }
            Verdict::Malformed(reason) => return Err(reason),
            Verdict::More if filled == MAX_HEADER => {
                return Err(format!("a PROXY header longer than {MAX_HEADER} bytes"))
            }
            Verdict::More => {}
        }
        // Bytes that are only the beginning of a signature are data if nothing more comes
        // soon (a proxy sends its signature whole).
        let undecided = filled > 0
            && (filled < V1_SIGNATURE.len().min(V2_SIGNATURE.len())
                || (filled < V2_SIGNATURE.len() && V2_SIGNATURE.starts_with(&buf[..filled])));
        let until = if undecided {
            deadline.min(last_arrival + SIGNATURE_WAIT)
        } else {
            deadline
        };
        match r.read_until(&mut buf[filled..], until) {
            Ok(0) if filled == 0 || undecided => return data(&buf[..filled]),
            Ok(0) => return Err("the connection ended in the middle of a PROXY header".into()),
            Ok(n) => {
                filled += n;
                last_arrival = Instant::now();
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                // A silent client (one waiting for the banner) or one whose first bytes only
                // look like the beginning of a signature: not a header.
                return if filled == 0 || undecided {
                    data(&buf[..filled])
                } else {
                    Err(format!(
                        "the PROXY header did not arrive within {}s",
                        HEADER_DEADLINE.as_secs()
                    ))
                };
            }
            Err(e) => return Err(format!("reading the PROXY header: {e}")),
        }
    }
}

/// Decides what `bytes`, the first of a connection, are.
fn classify(bytes: &[u8]) -> Verdict {
    let prefix_of = |sig: &[u8]| sig.starts_with(&bytes[..bytes.len().min(sig.len())]);
    if bytes.is_empty() {
        return Verdict::More;
    }
    if prefix_of(V2_SIGNATURE) {
        if bytes.len() < 16 {
            return Verdict::More;
        }
        let len = 16 + usize::from(u16::from_be_bytes([bytes[14], bytes[15]]));
        if len > MAX_HEADER {
            return Verdict::Malformed(format!(
                "a PROXY v2 header of {len} bytes, beyond {MAX_HEADER}"
            ));
        }
        if bytes.len() < len {
            return Verdict::More;
        }
        return match ppp::v2::Header::try_from(&bytes[..len]) {
            Ok(h) => {
                let client = match (h.command, h.addresses) {
                    (ppp::v2::Command::Local, _) => None,
                    (_, ppp::v2::Addresses::IPv4(a)) => {
                        Some(SocketAddr::from((a.source_address, a.source_port)))
                    }
                    (_, ppp::v2::Addresses::IPv6(a)) => {
                        Some(SocketAddr::from((a.source_address, a.source_port)))
                    }
                    _ => None,
                };
                let label = match (h.command, client) {
                    (ppp::v2::Command::Local, _) => "v2 LOCAL",
                    (_, None) => "v2 UNSPEC",
                    (_, Some(_)) => "v2",
                };
                Verdict::Header(len, label, client)
            }
            Err(e) => Verdict::Malformed(format!("a malformed PROXY v2 header: {e}")),
        };
    }
    if prefix_of(V1_SIGNATURE) {
        if bytes.len() < V1_SIGNATURE.len() {
            return Verdict::More;
        }
        let window = &bytes[..bytes.len().min(MAX_V1)];
        let Some(end) = window.iter().position(|&b| b == b'\n') else {
            return if bytes.len() >= MAX_V1 {
                Verdict::Malformed(format!(
                    "a PROXY v1 header without CRLF within {MAX_V1} bytes"
                ))
            } else {
                Verdict::More
            };
        };
        let line = &bytes[..=end];
        let parsed = std::str::from_utf8(line)
            .map_err(|_| "not text".to_string())
            .and_then(|text| ppp::v1::Header::try_from(text).map_err(|e| e.to_string()));
        return match parsed {
            Ok(h) => {
                let client = match h.addresses {
                    ppp::v1::Addresses::Tcp4(a) => {
                        Some(SocketAddr::from((a.source_address, a.source_port)))
                    }
                    ppp::v1::Addresses::Tcp6(a) => {
                        Some(SocketAddr::from((a.source_address, a.source_port)))
                    }
                    ppp::v1::Addresses::Unknown => None,
                };
                let label = if client.is_some() { "v1" } else { "v1 UNKNOWN" };
                Verdict::Header(line.len(), label, client)
            }
            Err(e) => Verdict::Malformed(format!("a malformed PROXY v1 header: {e}")),
        };
    }
    Verdict::Data
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that hands out `chunks` one per read, then end-of-file (or a timeout).
    pub(crate) struct Chunks {
        pub chunks: Vec<Vec<u8>>,
        pub then_timeout: bool,
    }

    impl ReadUntil for Chunks {
        fn read_until(&mut self, buf: &mut [u8], _: Instant) -> io::Result<usize> {
            if self.chunks.is_empty() {
                return if self.then_timeout {
                    Err(ErrorKind::WouldBlock.into())
                } else {
                    Ok(0)
                };
            }
            let chunk = &mut self.chunks[0];
            let n = chunk.len().min(buf.len());
            buf[..n].copy_from_slice(&chunk[..n]);
            chunk.drain(..n);
            if chunk.is_empty() {
                self.chunks.remove(0);
            }
            Ok(n)
        }
    }

    fn start(input: &[u8], mode: Mode) -> Result<Start, String> {
        read(
            &mut Chunks {
                chunks: vec![input.to_vec()],
                then_timeout: true,
            },
            mode,
        )
    }

    fn read(chunks: &mut Chunks, mode: Mode) -> Result<Start, String> {
        read_start_from(chunks, mode, Instant::now())
    }

    fn v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | command);
        h.push(family);
        h.extend_from_slice(&(body.len() as u16).to_be_bytes());
        h.extend_from_slice(body);
        h
    }

    /// A v2 PROXY header for TCP over IPv4 from 127.0.0.2:4242 to 10.0.0.1:3333, with a TLV.
    pub(crate) fn v2_tcp4() -> Vec<u8> {
        let mut body = vec![127, 0, 0, 2, 10, 0, 0, 1];
        body.extend_from_slice(&4242u16.to_be_bytes());
        body.extend_from_slice(&3333u16.to_be_bytes());
        body.extend_from_slice(&[0x04, 0, 3, b'a', b'b', b'c']); // a NOOP TLV
        v2(1, 0x11, &body)
    }

    #[test]
    fn v1_headers_give_the_client_and_leave_the_data() {
        let s = start(
            b"PROXY TCP4 192.0.2.7 10.0.0.1 56324 3333\r\nhello\n",
            Mode::Required,
        )
        .unwrap();
        assert_eq!(s.client, Some("192.0.2.7:56324".parse().unwrap()));
        assert_eq!((s.header, s.rest.as_slice()), (Some("v1"), &b"hello\n"[..]));
        let s = start(
            b"PROXY TCP6 2001:db8::7 2001:db8::1 4000 3333\r\n",
            Mode::Optional,
        )
        .unwrap();
        assert_eq!(s.client, Some("[2001:db8::7]:4000".parse().unwrap()));
        let s = start(b"PROXY UNKNOWN\r\nx", Mode::Required).unwrap();
        assert_eq!(
            (s.header, s.client, s.rest),
            (Some("v1 UNKNOWN"), None, b"x".to_vec())
        );
    }

    #[test]
    fn v2_headers_give_the_client_skip_tlvs_and_serve_local() {
        let mut input = v2_tcp4();
        input.extend_from_slice(b"data");
        let s = start(&input, Mode::Required).unwrap();
        assert_eq!(s.client, Some("127.0.0.2:4242".parse().unwrap()));
        assert_eq!((s.header, s.rest.as_slice()), (Some("v2"), &b"data"[..]));
        let s = start(&v2(0, 0x00, &[]), Mode::Required).unwrap();
        assert_eq!((s.header, s.client), (Some("v2 LOCAL"), None));
    }

    #[test]
    fn without_a_header_optional_serves_and_required_refuses() {
        let s = start(b"hello\n", Mode::Optional).unwrap();
        assert_eq!((s.header, s.rest.as_slice()), (None, &b"hello\n"[..]));
        assert!(start(b"hello\n", Mode::Required)
            .unwrap_err()
            .contains("required"));
        // A first byte that could start a signature, then a pause: the client's data.
        let s = start(b"P", Mode::Optional).unwrap();
        assert_eq!(s.rest, b"P");
        let s = start(b"PING", Mode::Optional).unwrap();
        assert_eq!(s.rest, b"PING");
        // Nothing at all before the end: nothing to echo.
        let s = read(
            &mut Chunks {
                chunks: vec![],
                then_timeout: false,
            },
            Mode::Optional,
        )
        .unwrap();
        assert!(s.rest.is_empty() && s.header.is_none());
    }

    #[test]
    fn malformed_headers_are_refused_with_a_reason() {
        for (input, reason) in [
            (b"PROXY TCP4 1.2.3.4\r\n".to_vec(), "malformed PROXY v1"),
            (
                b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n".to_vec(),
                "malformed PROXY v1",
            ),
            (
                [b"PROXY TCP4 ".to_vec(), vec![b'1'; 120]].concat(),
                "without CRLF",
            ),
            (v2(2, 0x11, &[0; 12]), "malformed PROXY v2"),
            (v2(1, 0x51, &[0; 12]), "malformed PROXY v2"),
            (v2(1, 0x11, &[0; 4]), "malformed PROXY v2"),
            (v2(1, 0x11, &[0; 600]), "beyond 536"),
        ] {
            let e = start(&input, Mode::Optional).unwrap_err();
            assert!(e.contains(reason), "{e}");
        }
    }

    #[test]
    fn a_silent_client_is_served_without_a_header_when_optional() {
        let silent = || Chunks {
            chunks: vec![],
            then_timeout: true,
        };
        let s = read(&mut silent(), Mode::Optional).unwrap();
        assert!(s.header.is_none() && s.rest.is_empty());
        assert!(read(&mut silent(), Mode::Required).is_err());
    }

    #[test]
    fn a_slow_or_truncated_header_is_refused() {
        let half = &v2_tcp4()[..20];
        assert!(start(half, Mode::Optional)
            .unwrap_err()
            .contains("did not arrive within"));
        let e = read(
            &mut Chunks {
                chunks: vec![half.to_vec()],
                then_timeout: false,
            },
            Mode::Optional,
        )
        .unwrap_err();
        assert!(e.contains("ended in the middle"), "{e}");
        let e = start(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2", Mode::Optional).unwrap_err();
        assert!(e.contains("did not arrive within"), "{e}");
    }

    #[test]
    fn modes_parse_and_print() {
        for m in ["off", "optional", "required"] {
            assert_eq!(m.parse::<Mode>().unwrap().to_string(), m);
        }
        assert!("sometimes".parse::<Mode>().is_err());
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Valid headers of both versions, each followed by some data.
        fn headers() -> impl Strategy<Value = Vec<u8>> {
            prop_oneof![
                Just(b"PROXY TCP4 192.0.2.7 10.0.0.1 56324 3333\r\n".to_vec()),
                Just(b"PROXY TCP6 2001:db8::7 2001:db8::1 4000 3333\r\n".to_vec()),
                Just(b"PROXY UNKNOWN\r\n".to_vec()),
                Just(v2_tcp4()),
                Just(v2(0, 0x00, &[])),
            ]
        }

        /// Splits `input` into chunks at `cuts` (taken modulo its length).
        fn chunks(input: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
            let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
            cuts.sort_unstable();
            let mut out = Vec::new();
            let mut at = 0;
            for c in cuts.into_iter().chain([input.len()]) {
                if c > at {
                    out.push(input[at..c].to_vec());
                    at = c;
                }
            }
            out
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(300))]

            #[test]
            fn any_split_of_a_valid_header_parses_the_same(
                header in headers(),
                cuts in prop::collection::vec(any::<usize>(), 0..20),
                data in prop::collection::vec(any::<u8>(), 0..40),
            ) {
                let input = [header.clone(), data.clone()].concat();
                let whole = start(&input, Mode::Required).unwrap();
                let mut split = Chunks { chunks: chunks(&input, &cuts), then_timeout: true };
                let parts = read(&mut split, Mode::Required).unwrap();
                prop_assert_eq!(&parts.header, &whole.header);
                prop_assert_eq!(parts.client, whole.client);
                // The header is never part of the data; what follows it comes first, whole
                // or in part (the rest arrives through the echo loop's own reads).
                let after: Vec<u8> = parts.rest.iter().chain(split.chunks.iter().flatten()).copied().collect();
                prop_assert_eq!(after, data);
            }

            #[test]
            fn any_mutation_is_refused_or_parsed_never_a_panic(
                header in headers(),
                at in any::<usize>(),
                byte in any::<u8>(),
                cut in any::<usize>(),
            ) {
                let mut input = header;
                let i = at % input.len();
                input[i] = byte;
                input.truncate(1 + cut % input.len());
                for mode in [Mode::Optional, Mode::Required] {
                    match start(&input, mode) {
                        // Data: all of it is the client's, nothing lost.
                        Ok(s) if s.header.is_none() => {
                            prop_assert_eq!(mode, Mode::Optional);
                            prop_assert_eq!(&s.rest, &input);
                        }
                        // A header: it was consumed, and it came first.
                        Ok(s) => {
                            prop_assert!(s.rest.len() < input.len());
                            let head = &input[..input.len() - s.rest.len()];
                            prop_assert!(head.starts_with(V1_SIGNATURE) || head.starts_with(V2_SIGNATURE));
                        }
                        Err(_) => {}
                    }
                }
            }
        }
    }
}
