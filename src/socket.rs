//! What the kernel knows about a connected socket: how much input is queued, how much output
//! the peer has not yet acknowledged, and whether the connection is gone; and writing to it
//! with the socket calls.
//!
//! Linux answers all three. Other systems answer what they can: every Unix has `FIONREAD`;
//! macOS has `SO_NWRITE` for output not yet acknowledged; elsewhere the answer is "unknown",
//! and the drain at shutdown then waits for nothing (see drain.rs).

use std::io::{self, IoSlice};
use std::net::TcpStream;
use std::os::fd::AsRawFd;

/// `sendmsg` flags: a peer gone is an error, never a `SIGPIPE` (as with std's own `send`).
#[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
const NO_SIGPIPE: libc::c_int = libc::MSG_NOSIGNAL;
#[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
const NO_SIGPIPE: libc::c_int = 0;

/// Reads into `buf` with one `recv`: std's `read` on a socket, without its layers of calls
/// (the echo reads once per round trip; inlined, this and [`send`] took 27 fewer user-space
/// instructions per 64-byte round trip than std's: callgrind, 16 clients in lockstep, as
/// `make bench` counts them).
#[inline(always)]
pub(crate) fn recv(socket: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: a valid socket descriptor, and a buffer writable for `buf.len()` bytes.
    let n = unsafe { libc::recv(socket.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Writes `buf` with one `send` (a peer gone is an error, never a `SIGPIPE`): std's `write` on
/// a socket, without its layers of calls (see [`recv`]).
#[inline(always)]
pub(crate) fn send(socket: &TcpStream, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: a valid socket descriptor, and a buffer readable for `buf.len()` bytes.
    let n = unsafe {
        libc::send(
            socket.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            NO_SIGPIPE,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Writes `bufs` to `socket` with the socket calls rather than `writev`, which goes through
/// the file layer first: `send` for one slice (the usual echo of a read), `sendmsg` for
/// several. (`perf` of ping-pong at 256 connections: the `writev` path took 2.7% of the
/// server's samples, `sendto` 0.7%.)
pub(crate) fn send_vectored(socket: &TcpStream, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    match bufs {
        [one] => send(socket, one),
        _ => socket2::SockRef::from(socket).send_vectored_with_flags(bufs, NO_SIGPIPE),
    }
}

/// `sendmsg` flag: more of the same reply follows at once, so the kernel holds a part of a
/// segment back for it (`MSG_MORE`; where there is no such flag, nothing is held back).
#[cfg(any(target_os = "linux", target_os = "android"))]
const MORE: libc::c_int = libc::MSG_MORE;
#[cfg(not(any(target_os = "linux", target_os = "android")))]
const MORE: libc::c_int = 0;

/// [`send_vectored`] for a part of a reply whose next part is written right after (a read
/// framed in several steps): the kernel sends the parts in as few segments as if they were one
/// write. The last part of a reply is written with [`send_vectored`], which sends everything.
pub(crate) fn send_vectored_more(socket: &TcpStream, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    socket2::SockRef::from(socket).send_vectored_with_flags(bufs, NO_SIGPIPE | MORE)
}

/// Whether a congestion control of this name paces what it sends: BBR and its versions. Linux
/// then paces the socket in TCP itself (unless the fq qdisc does it), with a timer that lets
/// out each burst; there, a part held back with `MSG_MORE` leaves with the next as one burst
/// for that timer to release, and holding back costs more than it saves (`make bench` A/B,
/// 16 streaming connections of 64-byte lines, bbr without fq: 1.02x to 1.10x MB/s without
/// `MSG_MORE`; cubic on the same machine: 0.86x to 0.95x).
#[cfg_attr(not(any(target_os = "linux", target_os = "android")), allow(dead_code))]
pub(crate) fn paces(congestion_control: &[u8]) -> bool {
    congestion_control.starts_with(b"bbr")
}

/// Whether to hold back the parts of a reply with `MSG_MORE` on `socket`: unless the socket's
/// congestion control [`paces`] its sending.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) fn holds_back_parts(socket: &TcpStream) -> bool {
    let name = socket2::SockRef::from(socket).tcp_congestion();
    !name.is_ok_and(|name| paces(&name))
}

/// Without `MSG_MORE`, nothing is held back.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub(crate) fn holds_back_parts(_: &TcpStream) -> bool {
    false
}

/// A socket as a writer that uses [`send_vectored`] (for rustls' `write_tls`).
#[cfg(feature = "tls")]
pub(crate) struct Sender<'a>(pub(crate) &'a TcpStream);

#[cfg(feature = "tls")]
impl io::Write for Sender<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        send(self.0, buf)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        send_vectored(self.0, bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Bytes received by the kernel and not yet read (`FIONREAD`, Linux's `SIOCINQ`).
pub(crate) fn queued_input(stream: &TcpStream) -> Option<u64> {
    let mut n: libc::c_int = 0;
    // SAFETY: a valid socket descriptor and a pointer to an int, as FIONREAD expects.
    let rc = unsafe { libc::ioctl(stream.as_raw_fd(), libc::FIONREAD, &mut n) };
    (rc == 0 && n >= 0).then_some(n as u64)
}

/// Bytes written and not yet acknowledged by the peer (Linux's `SIOCOUTQ`, macOS's
/// `SO_NWRITE`); `None` where unknown.
pub(crate) fn unacknowledged_output(stream: &TcpStream) -> Option<u64> {
    imp::unacknowledged_output(stream)
}

/// Whether the connection is closed in the kernel (after a reset, say): nothing written can
/// be acknowledged any more. `false` where unknown.
pub(crate) fn is_closed(stream: &TcpStream) -> bool {
    imp::is_closed(stream)
}

#[cfg(target_os = "linux")]
mod imp {
    use std::net::TcpStream;
    use std::os::fd::AsRawFd;

    /// `TCP_CLOSE` in `include/net/tcp_states.h`.
    const TCP_CLOSE: u8 = 7;

    pub fn unacknowledged_output(stream: &TcpStream) -> Option<u64> {
        let mut n: libc::c_int = 0;
        // SAFETY: a valid socket descriptor and a pointer to an int, as SIOCOUTQ expects.
        let rc = unsafe { libc::ioctl(stream.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
        (rc == 0 && n >= 0).then_some(n as u64)
    }

    pub fn is_closed(stream: &TcpStream) -> bool {
        // SAFETY: an all-zero tcp_info is a valid value of this plain C struct.
        let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        // SAFETY: a valid socket descriptor, and a buffer of `len` bytes for TCP_INFO.
        let rc = unsafe {
            libc::getsockopt(
                stream.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                (&mut info as *mut libc::tcp_info).cast(),
                &mut len,
            )
        };
        rc == 0 && info.tcpi_state == TCP_CLOSE
    }
}

#[cfg(target_vendor = "apple")]
mod imp {
    use std::net::TcpStream;
    use std::os::fd::AsRawFd;

    pub fn unacknowledged_output(stream: &TcpStream) -> Option<u64> {
        let mut n: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: a valid socket descriptor, and an int-sized buffer for SO_NWRITE.
        let rc = unsafe {
            libc::getsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_NWRITE,
                (&mut n as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        (rc == 0 && n >= 0).then_some(n as u64)
    }

    pub fn is_closed(_: &TcpStream) -> bool {
        false
    }
}

#[cfg(not(any(target_os = "linux", target_vendor = "apple")))]
mod imp {
    use std::net::TcpStream;

    pub fn unacknowledged_output(_: &TcpStream) -> Option<u64> {
        None
    }

    pub fn is_closed(_: &TcpStream) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn bbr_paces_and_the_others_do_not() {
        assert!(paces(b"bbr"));
        assert!(paces(b"bbr3"));
        for name in [&b"cubic"[..], b"reno", b"dctcp", b""] {
            assert!(!paces(name), "{}", String::from_utf8_lossy(name));
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_socket_s_own_congestion_control_decides_whether_parts_are_held_back() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        // A fresh socket runs the machine's default (this one's, whatever it is).
        let default = std::fs::read("/proc/sys/net/ipv4/tcp_congestion_control").unwrap();
        let default = default.trim_ascii();
        assert_eq!(holds_back_parts(&client), !paces(default));
        // Reno is built into every kernel, and any process may choose it.
        socket2::SockRef::from(&client)
            .set_tcp_congestion(b"reno")
            .unwrap();
        assert!(holds_back_parts(&client));
    }

    #[test]
    fn recv_and_send_move_bytes_and_report_short_writes_and_errors() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        assert_eq!(send(&client, b"ping\n").unwrap(), 5);
        let mut buf = [0u8; 16];
        assert_eq!(recv(&server, &mut buf).unwrap(), 5);
        assert_eq!(&buf[..5], b"ping\n");

        // A peer that does not read, and a write timeout: the write that times out after
        // filling the buffers reports what it sent, and the next one the timeout.
        server
            .set_write_timeout(Some(std::time::Duration::from_millis(50)))
            .unwrap();
        let big: Vec<u8> = (0..16u32 << 20).map(|i| i as u8).collect();
        let (mut sent, mut short) = (0, false);
        let e = loop {
            match send(&server, &big[sent..]) {
                Ok(n) => {
                    assert!(n > 0 && sent + n < big.len(), "sent {n} after {sent}");
                    short = true;
                    sent += n;
                }
                Err(e) => break e,
            }
        };
        assert!(short, "no short write");
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        // What was sent is what arrives, in order.
        let mut got = vec![0u8; sent];
        let mut at = 0;
        while at < sent {
            at += recv(&client, &mut got[at..]).unwrap();
        }
        assert!(got == big[..sent]);

        // The peer's end: `recv` reads end of stream; `send` to a closed peer fails (sooner
        // or later: the first write may still be accepted).
        drop(client);
        assert_eq!(recv(&server, &mut buf).unwrap(), 0);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let e = loop {
            match send(&server, b"x") {
                Err(e) => break e,
                Ok(_) => assert!(std::time::Instant::now() < deadline, "no error"),
            }
        };
        assert!(
            matches!(
                e.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            ),
            "{e}"
        );
    }
}
