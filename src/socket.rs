//! What the kernel knows about a connected socket: how much input is queued, and how much
//! output the peer has not yet acknowledged.

use std::net::TcpStream;

/// Bytes received by the kernel and not yet read (`SIOCINQ`); `None` where unknown.
pub fn queued_input(stream: &TcpStream) -> Option<u64> {
    imp::queue(stream, imp::INQ)
}

/// Bytes written and not yet acknowledged by the peer (`SIOCOUTQ`); `None` where unknown.
pub fn unacknowledged_output(stream: &TcpStream) -> Option<u64> {
    imp::queue(stream, imp::OUTQ)
}

#[cfg(target_os = "linux")]
mod imp {
    use std::net::TcpStream;
    use std::os::fd::AsRawFd;

    pub const INQ: libc::Ioctl = libc::FIONREAD;
    pub const OUTQ: libc::Ioctl = libc::TIOCOUTQ;

    pub fn queue(stream: &TcpStream, request: libc::Ioctl) -> Option<u64> {
        let mut n: libc::c_int = 0;
        // SAFETY: a valid socket descriptor and a pointer to an int, as SIOCINQ/SIOCOUTQ
        // expect.
        let rc = unsafe { libc::ioctl(stream.as_raw_fd(), request, &mut n) };
        (rc == 0 && n >= 0).then_some(n as u64)
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use std::net::TcpStream;

    pub const INQ: u8 = 0;
    pub const OUTQ: u8 = 1;

    pub fn queue(_: &TcpStream, _: u8) -> Option<u64> {
        None
    }
}
