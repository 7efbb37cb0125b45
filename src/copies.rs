//! When a datagram copy of a reliable event is worth its packet (see
//! `ClientOptions::copies` and docs/PROTOCOL.md 4.6). Shared by the client
//! (copies of its publishes) and the server (copies of room events).
//!
//! A copy pays off for an event that is alone on the wire: if its packet is
//! lost and nothing follows, QUIC waits for the probe timeout, while the
//! copy is already there. When events of a room follow each other closely,
//! QUIC learns of a loss from the later packets' ACKs almost as fast, and
//! copies (a whole packet each) only add load; on a congested path they
//! would even take the stream's turn. So an event gets a copy only when it
//! comes at least half a round trip after the previous event of its room on
//! that connection, and no datagram is waiting to be sent.

use std::time::{Duration, Instant};

/// Bytes quinn counts against the datagram send buffer beyond queued
/// datagrams (its bookkeeping).
const BOOKKEEPING: usize = 256;

/// Notes an event of one room at `now` (`last` is the time of the previous
/// one, updated here) and says whether it is alone enough for a copy:
/// at least `rtt / 2` after the previous one.
pub(crate) fn spaced(last: &mut Option<Instant>, now: Instant, rtt: Duration) -> bool {
    let alone = last.is_none_or(|t| now.saturating_duration_since(t) >= rtt / 2);
    *last = Some(now);
    alone
}

/// Whether `conn` has no datagram waiting in its send buffer of `buffer` bytes.
pub(crate) fn path_idle(conn: &quinn::Connection, buffer: usize) -> bool {
    conn.datagram_send_buffer_space() + BOOKKEEPING >= buffer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_events_half_a_round_trip_apart_are_copied() {
        let rtt = Duration::from_millis(10);
        let t0 = Instant::now();
        let mut last = None;
        assert!(spaced(&mut last, t0, rtt), "the first event");
        assert!(!spaced(&mut last, t0 + Duration::from_millis(1), rtt));
        // Measured from the previous event, copied or not.
        assert!(!spaced(&mut last, t0 + Duration::from_millis(5), rtt));
        assert!(spaced(&mut last, t0 + Duration::from_millis(10), rtt));
    }
}
