//! UDP echo (`--udp`, RFC 862): every plain port also listens on UDP, same number and
//! address; each datagram is answered by one datagram to its source, the prefix and a space
//! then the data. One thread per UDP socket (`tcp-echo-udp-PORT`), blocking `recv_from` and
//! `send_to`.
//!
//! An echo on UDP is a reflector (anyone can forge a datagram's source): a reply is never more
//! than the prefix (and its space) larger than its request, and a datagram whose reply would not
//! fit in one datagram is dropped, not answered, and counted. Records are one per datagram,
//! within the server-wide log budget.

use std::io::{self, ErrorKind};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use log::{info, log_enabled, warn, Level};
use socket2::{Domain, Protocol, Socket, Type};

use crate::connection::canonical;
use crate::error::Error;
use crate::log_budget::{Verdict, SERVER_RATE};
use crate::logging::EscapedText;
use crate::metrics::labelled;
use crate::server::Context;
use crate::threads::{Background, Stop};

/// Log target of the per-datagram records: `RUST_LOG=info,tcp_echo::udp=off` drops them.
pub(crate) const UDP_TARGET: &str = "tcp_echo::udp";

/// The largest UDP payload over IPv4 (65,535 less the IP and UDP headers). A reply larger
/// than this would not fit in one datagram; over IPv6 the bound is 65,527, but the dual-stack
/// socket answers IPv4 clients too, so the smaller bound holds for all.
pub(crate) const MAX_REPLY: usize = 65_507;

labelled! {
    /// What became of a datagram, for `/metrics`.
    pub(crate) enum Datagram {
        /// Answered.
        Answered => "answered",
        /// Not answered: the reply would not fit in one datagram.
        TooLarge => "too_large",
        /// Not answered: sending failed.
        SendFailed => "send_failed",
    }
}

/// The counters of the UDP echo.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Datagrams received.
    pub(crate) received: AtomicU64,
    /// Bytes received in datagrams.
    pub(crate) bytes: AtomicU64,
    /// Datagrams by what became of them.
    pub(crate) by_result: crate::metrics::Counters<Datagram>,
}

/// The reply to `data`: the prefix (with its space) and the data, or `None` when it would not
/// fit in one datagram of `max` bytes. Never longer than the data and the prefix.
pub(crate) fn reply(prefix: Option<&[u8]>, data: &[u8], out: &mut Vec<u8>, max: usize) -> bool {
    out.clear();
    let prefix = prefix.unwrap_or_default();
    if prefix.len() + data.len() > max {
        return false;
    }
    out.extend_from_slice(prefix);
    out.extend_from_slice(data);
    true
}

/// Binds a UDP socket on `addr` (dual-stack for `::`, with the IPv4 fallback of the TCP
/// listeners when `fallback`).
pub(crate) fn bind(addr: SocketAddr, fallback: bool) -> Result<UdpSocket, Error> {
    let open = |addr: SocketAddr| -> io::Result<UdpSocket> {
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        if addr.is_ipv6() && addr.ip().is_unspecified() {
            socket.set_only_v6(false)?;
        }
        socket.bind(&addr.into())?;
        Ok(socket.into())
    };
    match open(addr) {
        Err(e) if fallback && addr.is_ipv6() && e.kind() != ErrorKind::AddrInUse => {
            let v4 = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), addr.port());
            open(v4).map_err(|source| Error::Bind { addr: v4, source })
        }
        other => other.map_err(|source| Error::Bind { addr, source }),
    }
}

/// The UDP threads, one per socket; dropping them stops and joins them.
///
/// A thread blocks in `recv_from` with no timeout (a timeout would arm a kernel timer for
/// every datagram awaited); to stop, it is asked to, then woken: its socket's reading side is
/// shut (which wakes a blocked `recv_from` on Linux), and an empty datagram is sent to it
/// (which wakes it anywhere).
pub(crate) struct Udp {
    threads: Vec<(Background, Arc<UdpSocket>, SocketAddr)>,
}

impl Udp {
    /// Starts a thread per socket.
    pub(crate) fn start(sockets: Vec<UdpSocket>, ctx: &Arc<Context>) -> Result<Udp, Error> {
        let mut threads = Vec::new();
        for socket in sockets {
            let local = socket.local_addr().map_err(|source| Error::Bind {
                addr: SocketAddr::new(ctx.config.bind, 0),
                source,
            })?;
            let ctx = Arc::clone(ctx);
            let socket = Arc::new(socket);
            let thread = Background::start(&format!("tcp-echo-udp-{}", local.port()), {
                let socket = Arc::clone(&socket);
                move |stop| serve(&socket, local, &ctx, &stop)
            })?;
            threads.push((thread, socket, local));
        }
        Ok(Udp { threads })
    }
}

impl Drop for Udp {
    fn drop(&mut self) {
        for (thread, socket, local) in &mut self.threads {
            thread.request_stop();
            let _ = socket2::SockRef::from(&**socket).shutdown(std::net::Shutdown::Read);
            wake(*local);
        }
        // Each Background joins its thread as it drops.
    }
}

/// Sends an empty datagram to the socket bound at `local` (on loopback when it is bound to
/// every address), so that its thread returns from `recv_from`.
fn wake(local: SocketAddr) {
    let to = match local.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), local.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), local.port())
        }
        _ => local,
    };
    let from = if to.is_ipv4() {
        SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0)
    } else {
        SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), 0)
    };
    if let Ok(socket) = UdpSocket::bind(from) {
        let _ = socket.send_to(&[], to);
    }
}

fn serve(socket: &UdpSocket, local: SocketAddr, ctx: &Context, stop: &Stop) {
    let mut buf = vec![0u8; 65_536];
    let mut out = Vec::with_capacity(MAX_REPLY);
    let counters = &ctx.metrics.udp;
    let logging = log_enabled!(target: UDP_TARGET, Level::Info);
    loop {
        let received = socket.recv_from(&mut buf);
        if stop.requested() {
            return;
        }
        let (n, peer) = match received {
            Ok(got) => got,
            // An ICMP error for an earlier reply (the client had gone), a signal, and the like.
            Err(_) => continue,
        };
        counters.received.fetch_add(1, Ordering::Relaxed);
        counters.bytes.fetch_add(n as u64, Ordering::Relaxed);
        let data = &buf[..n];
        let peer = canonical(peer);
        let result = if !reply(ctx.prefix.as_deref(), data, &mut out, MAX_REPLY) {
            Datagram::TooLarge
        } else {
            match socket.send_to(&out, peer) {
                Ok(_) => Datagram::Answered,
                Err(_) => Datagram::SendFailed,
            }
        };
        counters.by_result.add(result);
        if logging {
            match ctx.log_budget.admit_one() {
                Verdict::Log => match result {
                    Datagram::Answered => info!(
                        target: UDP_TARGET,
                        "UDP datagram echoed. peer={peer} local={local} bytes={n} data={}",
                        EscapedText(data)
                    ),
                    _ => warn!(
                        target: UDP_TARGET,
                        "UDP datagram not answered ({}). peer={peer} local={local} bytes={n}",
                        match result {
                            Datagram::TooLarge => "its reply would not fit in one datagram",
                            _ => "sending the reply failed",
                        }
                    ),
                },
                Verdict::ServerNotice => warn!(
                    target: UDP_TARGET,
                    "UDP datagram records are being held back: more than {SERVER_RATE} records \
                     a second server-wide; /metrics counts every datagram"
                ),
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_is_never_more_than_the_prefix_larger_and_always_fits() {
        let mut out = Vec::new();
        assert!(reply(Some(b"one "), b"hello\n", &mut out, MAX_REPLY));
        assert_eq!(out, b"one hello\n");
        assert!(reply(None, b"x", &mut out, MAX_REPLY));
        assert_eq!(out, b"x");
        for len in [0, 1, 8192, MAX_REPLY - 4, MAX_REPLY - 3, MAX_REPLY] {
            let data = vec![7u8; len];
            let fits = reply(Some(b"one "), &data, &mut out, MAX_REPLY);
            assert_eq!(fits, len + 4 <= MAX_REPLY, "{len}");
            if fits {
                assert_eq!(out.len(), len + 4);
            }
        }
    }
}
