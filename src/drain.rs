//! Closing a connection at shutdown without losing replies.
//!
//! The client may still be sending when the server stops. Closing with unread input answers
//! with a reset that discards replies not yet delivered, and Linux also resets a connection
//! whose read side is shut when input arrives after our FIN (RFC 1122). So before it sends
//! FIN, a draining worker waits until the client has acknowledged every reply, reading and
//! discarding whatever new input arrives meanwhile.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::socket;

/// How often a closing connection checks whether the peer has acknowledged every reply.
const ACK_POLL: Duration = Duration::from_millis(2);

/// Waits until the peer has acknowledged every byte written, or `deadline` passes. Input that
/// arrives meanwhile is read and discarded (it came after the shutdown began): left unread, it
/// would close the receive window and stall the very acknowledgements being waited for.
pub fn wait_acknowledged(reader: &mut BufReader<&TcpStream>, deadline: Instant) {
    let stream = *reader.get_ref();
    let _ = stream.set_nonblocking(true);
    while Instant::now() < deadline {
        // At most 64 reads per round, so a fast sender cannot keep this loop from checking.
        for _ in 0..64 {
            match reader.fill_buf() {
                Ok(data) if !data.is_empty() => {
                    let n = data.len();
                    reader.consume(n);
                }
                _ => break,
            }
        }
        match socket::unacknowledged_output(stream) {
            Some(0) | None => return,
            Some(_) => std::thread::sleep(ACK_POLL),
        }
    }
}
