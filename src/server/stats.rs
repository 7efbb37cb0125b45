//! Server-wide counters, readable while the server runs.

use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters; [`ServerStats::snapshot`] reads them all at once.
#[derive(Debug, Default)]
pub struct ServerStats {
    pub connections_accepted: AtomicU64,
    pub connections_refused: AtomicU64,
    pub active_sessions: AtomicU64,
    pub events_published: AtomicU64,
    pub copies_published: AtomicU64,
    pub datagrams_published: AtomicU64,
    pub datagrams_dropped: AtomicU64,
    pub slow_consumers: AtomicU64,
    pub protocol_errors: AtomicU64,
    pub unknown_room_ids: AtomicU64,
    pub handshakes_retried: AtomicU64,
    pub handshakes_refused: AtomicU64,
    pub handshakes_timed_out: AtomicU64,
}

/// A copy of [`ServerStats`] at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatsSnapshot {
    /// Connections that completed the QUIC handshake and got a session task.
    pub connections_accepted: u64,
    /// Connections closed at once because the server was at its limit.
    pub connections_refused: u64,
    /// Sessions currently running.
    pub active_sessions: u64,
    /// Reliable events accepted (offset assigned).
    pub events_published: u64,
    /// Of those, published from their `PublishCopy` datagram (the copy
    /// arrived before the stream frame).
    pub copies_published: u64,
    /// Datagrams accepted (sequence assigned).
    pub datagrams_published: u64,
    /// Datagrams dropped from full per-connection rings or too large to send.
    pub datagrams_dropped: u64,
    /// Connections closed with `slow consumer`.
    pub slow_consumers: u64,
    /// Connections closed for a protocol violation.
    pub protocol_errors: u64,
    /// Frames dropped because they used a room id their connection was
    /// never given (answered with an `UnknownRoom` error).
    pub unknown_room_ids: u64,
    /// Connection attempts answered with a QUIC Retry (address validation
    /// under load).
    pub handshakes_retried: u64,
    /// Connection attempts refused because the handshake bound was reached.
    pub handshakes_refused: u64,
    /// QUIC handshakes given up after the handshake timeout.
    pub handshakes_timed_out: u64,
}

impl ServerStats {
    /// Reads every counter.
    pub fn snapshot(&self) -> StatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            connections_accepted: get(&self.connections_accepted),
            connections_refused: get(&self.connections_refused),
            active_sessions: get(&self.active_sessions),
            events_published: get(&self.events_published),
            copies_published: get(&self.copies_published),
            datagrams_published: get(&self.datagrams_published),
            datagrams_dropped: get(&self.datagrams_dropped),
            slow_consumers: get(&self.slow_consumers),
            protocol_errors: get(&self.protocol_errors),
            unknown_room_ids: get(&self.unknown_room_ids),
            handshakes_retried: get(&self.handshakes_retried),
            handshakes_refused: get(&self.handshakes_refused),
            handshakes_timed_out: get(&self.handshakes_timed_out),
        }
    }
}
