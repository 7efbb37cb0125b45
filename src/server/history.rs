//! Per-room history, for recovery of missed events.
//!
//! A bounded window of a room's newest reliable events (by count, age and
//! bytes), kept as the already-encoded `Event` frames that fan-out sends, so
//! replaying costs no encoding. Pure logic: time is an argument.
//!
//! Offsets are opaque and may be sparse, so coverage is never computed as
//! "offset + 1": the history remembers the newest offset it has dropped
//! (`dropped_through`), and a position `since` is covered exactly when
//! nothing after it has been dropped.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;

/// How much history each room keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryLimits {
    /// Most events kept per room.
    pub max_events: usize,
    /// Events older than this are dropped.
    pub max_age: Duration,
    /// Most bytes (of encoded frames) kept per room.
    pub max_bytes: usize,
}

impl Default for HistoryLimits {
    fn default() -> Self {
        HistoryLimits {
            max_events: 10_000,
            max_age: Duration::from_secs(120),
            max_bytes: 64 * 1024 * 1024,
        }
    }
}

/// Why a position cannot be replayed from history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gap {
    /// Events after the position have already been dropped from history.
    TooShort,
    /// The position is beyond the room's newest offset: it belongs to an
    /// earlier life of the room (the room was evicted, or the server restarted).
    UnknownPosition,
}

struct Entry {
    offset: u64,
    at: Instant,
    frame: Bytes,
}

/// The retained events of one room.
pub struct History {
    limits: HistoryLimits,
    entries: VecDeque<Entry>,
    bytes: usize,
    /// The newest offset no longer held (0: nothing dropped yet).
    dropped_through: u64,
}

impl History {
    pub fn new(limits: HistoryLimits) -> Self {
        History {
            limits,
            entries: VecDeque::new(),
            bytes: 0,
            dropped_through: 0,
        }
    }

    /// Records the room's newest event (offsets must increase).
    pub fn push(&mut self, offset: u64, frame: Bytes, now: Instant) {
        if self.limits.max_events == 0 {
            self.dropped_through = offset;
            return;
        }
        self.bytes += frame.len();
        self.entries.push_back(Entry {
            offset,
            at: now,
            frame,
        });
        while self.entries.len() > self.limits.max_events
            || (self.bytes > self.limits.max_bytes && self.entries.len() > 1)
        {
            self.drop_oldest();
        }
        self.trim(now);
    }

    /// Drops events older than the age limit.
    pub fn trim(&mut self, now: Instant) {
        while let Some(oldest) = self.entries.front() {
            if now.saturating_duration_since(oldest.at) <= self.limits.max_age {
                break;
            }
            self.drop_oldest();
        }
    }

    fn drop_oldest(&mut self) {
        if let Some(entry) = self.entries.pop_front() {
            self.bytes -= entry.frame.len();
            self.dropped_through = entry.offset;
        }
    }

    /// Whether the history holds nothing (after trimming by age).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The frames of every event after `since`, oldest first, given the
    /// room's newest offset `last`; or why that is impossible.
    pub fn since(&mut self, since: u64, last: u64, now: Instant) -> Result<Vec<Bytes>, Gap> {
        self.trim(now);
        if since > last {
            return Err(Gap::UnknownPosition);
        }
        if since < self.dropped_through {
            return Err(Gap::TooShort);
        }
        let start = self.entries.partition_point(|e| e.offset <= since);
        Ok(self
            .entries
            .range(start..)
            .map(|e| e.frame.clone())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_events: usize, max_age_s: u64, max_bytes: usize) -> HistoryLimits {
        HistoryLimits {
            max_events,
            max_age: Duration::from_secs(max_age_s),
            max_bytes,
        }
    }

    fn frame(offset: u64) -> Bytes {
        Bytes::from(offset.to_be_bytes().to_vec())
    }

    fn offsets(frames: &[Bytes]) -> Vec<u64> {
        frames
            .iter()
            .map(|f| u64::from_be_bytes(f[..8].try_into().unwrap()))
            .collect()
    }

    #[test]
    fn replays_exactly_what_follows_a_position() {
        let t0 = Instant::now();
        let mut h = History::new(limits(100, 60, 1 << 20));
        for o in 1..=10 {
            h.push(o, frame(o), t0);
        }
        assert_eq!(offsets(&h.since(7, 10, t0).unwrap()), vec![8, 9, 10]);
        assert_eq!(
            offsets(&h.since(0, 10, t0).unwrap()),
            (1..=10).collect::<Vec<_>>()
        );
        assert!(h.since(10, 10, t0).unwrap().is_empty(), "up to date");
        assert_eq!(h.since(11, 10, t0), Err(Gap::UnknownPosition));
    }

    #[test]
    fn count_bound_drops_the_oldest_and_reports_gaps() {
        let t0 = Instant::now();
        let mut h = History::new(limits(3, 60, 1 << 20));
        for o in 1..=5 {
            h.push(o, frame(o), t0);
        }
        assert_eq!(offsets(&h.since(2, 5, t0).unwrap()), vec![3, 4, 5]);
        assert_eq!(h.since(1, 5, t0), Err(Gap::TooShort));
        assert_eq!(h.since(0, 5, t0), Err(Gap::TooShort));
    }

    #[test]
    fn age_bound_drops_old_events_at_read_time() {
        let t0 = Instant::now();
        let mut h = History::new(limits(100, 10, 1 << 20));
        h.push(1, frame(1), t0);
        h.push(2, frame(2), t0 + Duration::from_secs(5));
        let later = t0 + Duration::from_secs(12);
        assert_eq!(h.since(0, 2, later), Err(Gap::TooShort));
        assert_eq!(offsets(&h.since(1, 2, later).unwrap()), vec![2]);
        h.trim(t0 + Duration::from_secs(30));
        assert!(h.is_empty());
        assert!(h
            .since(2, 2, t0 + Duration::from_secs(30))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn byte_bound_keeps_at_least_the_newest_event() {
        let t0 = Instant::now();
        let mut h = History::new(limits(100, 60, 20));
        for o in 1..=4 {
            h.push(o, frame(o), t0); // 8 bytes each
        }
        assert_eq!(offsets(&h.since(2, 4, t0).unwrap()), vec![3, 4]);
        assert_eq!(h.since(1, 4, t0), Err(Gap::TooShort));
        h.push(5, Bytes::from(vec![0u8; 100]), t0);
        assert!(!h.is_empty());
    }

    #[test]
    fn sparse_offsets_are_handled_without_arithmetic() {
        let t0 = Instant::now();
        let mut h = History::new(limits(2, 60, 1 << 20));
        for o in [10, 20, 30, 40] {
            h.push(o, frame(o), t0);
        }
        // 20 was dropped: a client at 20 has it already and misses nothing.
        assert_eq!(offsets(&h.since(20, 40, t0).unwrap()), vec![30, 40]);
        assert_eq!(offsets(&h.since(25, 40, t0).unwrap()), vec![30, 40]);
        assert_eq!(h.since(15, 40, t0), Err(Gap::TooShort));
    }

    #[test]
    fn zero_history_keeps_nothing_but_knows_the_position() {
        let t0 = Instant::now();
        let mut h = History::new(limits(0, 60, 1 << 20));
        h.push(1, frame(1), t0);
        assert!(h.since(1, 1, t0).unwrap().is_empty());
        assert_eq!(h.since(0, 1, t0), Err(Gap::TooShort));
    }
}
