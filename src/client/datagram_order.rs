//! Receiver-side ordering of datagrams: drop the stale, count the gaps.
//!
//! Every datagram of a room carries the room's datagram sequence number. A
//! receiver keeps only the newest: one that is not newer than the newest
//! already delivered is stale (late or duplicated) and dropped, because for
//! state updates an older value is worse than none.

/// What to do with an arriving datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Newer than anything seen: deliver it. `skipped` sequence numbers
    /// between the previous newest and this one were never delivered.
    Fresh { skipped: u64 },
    /// Not newer than the newest already delivered: drop it.
    Stale,
}

/// Tracks the newest datagram sequence number of one room.
#[derive(Debug, Clone, Default)]
pub struct DatagramOrder {
    newest: Option<u64>,
}

impl DatagramOrder {
    /// Judges `seq` and, if fresh, records it as the newest.
    pub fn observe(&mut self, seq: u64) -> Verdict {
        match self.newest {
            Some(newest) if seq <= newest => Verdict::Stale,
            previous => {
                self.newest = Some(seq);
                let skipped = previous.map_or(0, |p| seq - p - 1);
                Verdict::Fresh { skipped }
            }
        }
    }

    /// The newest sequence number delivered so far.
    pub fn newest(&self) -> Option<u64> {
        self.newest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_is_fresh_without_gaps() {
        let mut o = DatagramOrder::default();
        for seq in 1..=5 {
            assert_eq!(o.observe(seq), Verdict::Fresh { skipped: 0 });
        }
        assert_eq!(o.newest(), Some(5));
    }

    #[test]
    fn first_datagram_starts_anywhere() {
        let mut o = DatagramOrder::default();
        assert_eq!(o.observe(1000), Verdict::Fresh { skipped: 0 });
    }

    #[test]
    fn gaps_are_counted_and_late_ones_are_stale() {
        let mut o = DatagramOrder::default();
        assert_eq!(o.observe(1), Verdict::Fresh { skipped: 0 });
        assert_eq!(o.observe(4), Verdict::Fresh { skipped: 2 });
        assert_eq!(o.observe(3), Verdict::Stale);
        assert_eq!(o.observe(4), Verdict::Stale, "duplicate");
        assert_eq!(o.observe(5), Verdict::Fresh { skipped: 0 });
        assert_eq!(o.newest(), Some(5));
    }

    #[test]
    fn extreme_values_do_not_overflow() {
        let mut o = DatagramOrder::default();
        assert_eq!(o.observe(0), Verdict::Fresh { skipped: 0 });
        assert_eq!(
            o.observe(u64::MAX),
            Verdict::Fresh {
                skipped: u64::MAX - 1
            }
        );
        assert_eq!(o.observe(u64::MAX), Verdict::Stale);
    }
}
