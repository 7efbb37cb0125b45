//! Server-wide counters, readable while the server runs.

use std::sync::atomic::{AtomicU64, Ordering};

/// A defence that turned something away. Each is counted on its own
/// ([`StatsSnapshot::limit`]) and, over `--metrics`, labelled by
/// [`Limit::name`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limit {
    /// A connection refused: its IP address already holds its share.
    ConnectionsPerIp,
    /// A handshake refused: its IP address started too many per second.
    HandshakeRatePerIp,
    /// A `Hello` refused: its IP address failed authentication too often.
    FailedHellos,
    /// A `Join` refused: the connection has joined its maximum of rooms.
    RoomsJoined,
    /// A name refused: the connection has named its maximum of rooms.
    RoomNames,
    /// A publish stream refused: the connection has its maximum open.
    PublishStreams,
    /// A publish stream refused: the session's publish logs are full.
    PublishLog,
    /// A control request refused: over the connection's rate.
    ControlRate,
    /// A publish refused: over the connection's rate.
    PublishRate,
    /// A connection closed: a frame stayed half-sent too long.
    HalfSentFrame,
    /// History dropped early to keep the total under its budget
    /// (counted in events).
    HistoryBudget,
}

impl Limit {
    /// Every kind, in a fixed order.
    pub const ALL: [Limit; 11] = [
        Limit::ConnectionsPerIp,
        Limit::HandshakeRatePerIp,
        Limit::FailedHellos,
        Limit::RoomsJoined,
        Limit::RoomNames,
        Limit::PublishStreams,
        Limit::PublishLog,
        Limit::ControlRate,
        Limit::PublishRate,
        Limit::HalfSentFrame,
        Limit::HistoryBudget,
    ];

    /// A short, stable name (a metrics label).
    pub fn name(self) -> &'static str {
        match self {
            Limit::ConnectionsPerIp => "connections_per_ip",
            Limit::HandshakeRatePerIp => "handshake_rate_per_ip",
            Limit::FailedHellos => "failed_hellos",
            Limit::RoomsJoined => "rooms_joined",
            Limit::RoomNames => "room_names",
            Limit::PublishStreams => "publish_streams",
            Limit::PublishLog => "publish_log",
            Limit::ControlRate => "control_rate",
            Limit::PublishRate => "publish_rate",
            Limit::HalfSentFrame => "half_sent_frame",
            Limit::HistoryBudget => "history_budget",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Something a client was not allowed: a token refused, an action its
/// permissions or its room's namespace do not allow. Counted on its own
/// ([`StatsSnapshot::refusal`]) and, over `--metrics`, labelled by
/// [`Refusal::name`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// `Hello` without a token on a server that needs one.
    TokenRequired,
    /// A token whose `exp` had passed (at `Hello` or `Refresh`).
    TokenExpired,
    /// A token that is not valid (signature, algorithm, claims, `nbf`).
    TokenInvalid,
    /// A connection closed because its token expired without a refresh.
    ExpiredLive,
    /// A publish (reliable or datagram) to a room the token may not publish to.
    Publish,
    /// A join of a room the token may not subscribe to.
    Subscribe,
    /// A join with `since` whose token may not replay the room's history.
    History,
    /// A resume of a session that belongs to another user.
    AnotherUser,
    /// A datagram to a namespace that takes none.
    DatagramsDisabled,
    /// An event whose payload is over its namespace's maximum.
    PayloadTooLarge,
}

impl Refusal {
    /// Every kind, in a fixed order.
    pub const ALL: [Refusal; 10] = [
        Refusal::TokenRequired,
        Refusal::TokenExpired,
        Refusal::TokenInvalid,
        Refusal::ExpiredLive,
        Refusal::Publish,
        Refusal::Subscribe,
        Refusal::History,
        Refusal::AnotherUser,
        Refusal::DatagramsDisabled,
        Refusal::PayloadTooLarge,
    ];

    /// A short, stable name (a metrics label).
    pub fn name(self) -> &'static str {
        match self {
            Refusal::TokenRequired => "token_required",
            Refusal::TokenExpired => "token_expired",
            Refusal::TokenInvalid => "token_invalid",
            Refusal::ExpiredLive => "expired_live",
            Refusal::Publish => "forbidden_publish",
            Refusal::Subscribe => "forbidden_subscribe",
            Refusal::History => "forbidden_history",
            Refusal::AnotherUser => "resume_another_user",
            Refusal::DatagramsDisabled => "datagrams_disabled",
            Refusal::PayloadTooLarge => "payload_too_large",
        }
    }

    /// The refusal of a forbidden action.
    pub fn forbidden(action: crate::auth::Action) -> Refusal {
        match action {
            crate::auth::Action::Publish => Refusal::Publish,
            crate::auth::Action::Subscribe => Refusal::Subscribe,
            crate::auth::Action::History => Refusal::History,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

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
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub events_out: AtomicU64,
    pub dedup_hits: AtomicU64,
    pub history_bytes: AtomicU64,
    limits: [AtomicU64; Limit::ALL.len()],
    refusals: [AtomicU64; Refusal::ALL.len()],
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
    /// Event name and payload bytes of accepted publishes, reliable and
    /// datagram.
    pub bytes_in: u64,
    /// Frame bytes handed to QUIC for clients: room streams (replays
    /// included) and datagrams.
    pub bytes_out: u64,
    /// Events and datagrams handed to QUIC for clients.
    pub events_out: u64,
    /// Retried publishes answered from the publish log, not published again.
    pub dedup_hits: u64,
    /// History kept across all rooms, in bytes (updated once a second).
    pub history_bytes: u64,
    /// Refusals by each defence, indexed like [`Limit::ALL`]; read with
    /// [`StatsSnapshot::limit`].
    pub limits_hit: [u64; Limit::ALL.len()],
    /// Refusals of each kind, indexed like [`Refusal::ALL`]; read with
    /// [`StatsSnapshot::refusal`].
    pub refusals: [u64; Refusal::ALL.len()],
}

impl StatsSnapshot {
    /// How often `kind` turned something away.
    pub fn limit(&self, kind: Limit) -> u64 {
        self.limits_hit[kind.index()]
    }

    /// How often `kind` was refused.
    pub fn refusal(&self, kind: Refusal) -> u64 {
        self.refusals[kind.index()]
    }
}

impl ServerStats {
    /// Counts one refusal by `kind`.
    pub fn limit_hit(&self, kind: Limit) {
        self.limits[kind.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one refusal of a client's token or permissions.
    pub fn refused(&self, kind: Refusal) {
        self.refusals[kind.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts `n` refusals by `kind`.
    pub fn limit_hits(&self, kind: Limit, n: u64) {
        self.limits[kind.index()].fetch_add(n, Ordering::Relaxed);
    }

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
            bytes_in: get(&self.bytes_in),
            bytes_out: get(&self.bytes_out),
            events_out: get(&self.events_out),
            dedup_hits: get(&self.dedup_hits),
            history_bytes: get(&self.history_bytes),
            limits_hit: std::array::from_fn(|i| get(&self.limits[i])),
            refusals: std::array::from_fn(|i| get(&self.refusals[i])),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_counted_by_kind() {
        let stats = ServerStats::default();
        stats.limit_hit(Limit::PublishRate);
        stats.limit_hits(Limit::HistoryBudget, 3);
        let snap = stats.snapshot();
        assert_eq!(snap.limit(Limit::PublishRate), 1);
        assert_eq!(snap.limit(Limit::HistoryBudget), 3);
        assert_eq!(snap.limit(Limit::ControlRate), 0);
        for (i, kind) in Limit::ALL.iter().enumerate() {
            assert_eq!(kind.index(), i, "{kind:?} out of order in Limit::ALL");
        }
        for (i, kind) in Refusal::ALL.iter().enumerate() {
            assert_eq!(kind.index(), i, "{kind:?} out of order in Refusal::ALL");
        }
        stats.refused(Refusal::Subscribe);
        assert_eq!(stats.snapshot().refusal(Refusal::Subscribe), 1);
    }
}
