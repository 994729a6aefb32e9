//! Closing a connection without losing replies, at shutdown or when it reaches
//! `--max-duration`.
//!
//! The client may still be sending when the server stops. Closing with unread input answers
//! with a reset that discards replies not yet delivered, and Linux also resets a connection
//! whose read side is shut when input arrives after our FIN (RFC 1122). So before it sends
//! FIN, a draining worker waits until the client has acknowledged every reply, reading and
//! discarding whatever new input arrives meanwhile. A client that resets (or whose connection
//! fails otherwise) ends the wait at once: nothing it has not acknowledged can reach it any
//! more, although the kernel still counts those bytes as unacknowledged.

use std::io::{BufRead, BufReader, ErrorKind};
use std::time::{Duration, Instant};

use crate::connection::Stream;
use crate::registry::{Ended, Ticket};
use crate::socket;

/// How often a closing connection checks whether the peer has acknowledged every reply.
const ACK_POLL: Duration = Duration::from_millis(2);

/// How a drain ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Drained {
    /// The peer acknowledged every reply (or the platform cannot tell).
    Acknowledged,
    /// The connection failed while waiting (the peer reset it): the wait ended at once.
    Failed(ErrorKind),
    /// The deadline passed with replies still unacknowledged.
    OutOfTime,
}

/// Waits until the peer has acknowledged every byte written, or `deadline` passes, or the
/// server closes the connection by force. Input that arrives meanwhile is read and discarded
/// (it came after the end began): left unread, it would close the receive window and stall
/// the very acknowledgements being waited for.
#[inline(never)]
pub(crate) fn wait_acknowledged(
    ticket: &Ticket,
    reader: &mut BufReader<Stream<'_>>,
    deadline: Instant,
) -> Drained {
    let stream = ticket.stream();
    let _ = stream.set_nonblocking(true);
    // A socket closed by force (the drain deadline) may still count unacknowledged bytes for
    // as long as the kernel retransmits them: nothing is waited for after that.
    while Instant::now() < deadline && ticket.ended() != Some(Ended::Forced) {
        // At most 64 reads per round, so a fast sender cannot keep this loop from checking.
        for _ in 0..64 {
            match reader.fill_buf() {
                Ok([]) => break,
                Ok(data) => {
                    let n = data.len();
                    reader.consume(n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Drained::Failed(e.kind()),
            }
        }
        // A reset after the peer's FIN leaves reads at end-of-file rather than failing: ask
        // the kernel whether the connection is still there.
        if socket::is_closed(stream) {
            return Drained::Failed(ErrorKind::ConnectionReset);
        }
        match socket::unacknowledged_output(stream) {
            Some(0) | None => return Drained::Acknowledged,
            Some(_) => std::thread::sleep(ACK_POLL),
        }
    }
    Drained::OutOfTime
}
