//! What the kernel knows about a connected socket: how much input is queued, how much output
//! the peer has not yet acknowledged, and whether the connection is gone.
//!
//! Linux answers all three. Other systems answer what they can: every Unix has `FIONREAD`;
//! macOS has `SO_NWRITE` for output not yet acknowledged; elsewhere the answer is "unknown",
//! and the drain at shutdown then waits for nothing (see drain.rs).

use std::net::TcpStream;
use std::os::fd::AsRawFd;

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
