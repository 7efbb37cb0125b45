//! One direction of the proxy as a state machine with time as an input: it
//! rolls each packet's [`Decision`] with that client's [`Dice`], keeps the
//! reorder hold slot, and queues what survives in departure order. The
//! queue is bounded in packets and bytes; the socket tasks only pop what
//! is due and send it.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::impair::{Dice, Direction, Impairment};

/// A held packet that no later packet releases leaves this long after its
/// own delay.
pub(crate) const HOLD_TIMEOUT: Duration = Duration::from_millis(10);

/// A packet waiting to leave, with where it goes.
#[derive(Debug)]
pub(crate) struct Queued<D> {
    pub dest: D,
    pub payload: Bytes,
    /// 1, or 2 when duplicated.
    pub copies: u8,
}

/// What [`Lane::admit`] did with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Dropped by the loss setting.
    Lost,
    /// Dropped because the queue was full.
    Overflow,
    /// Queued; `held` means it waits for the next packet.
    Queued { duplicated: bool, held: bool },
}

/// Queue position: departure time, then arrival order.
type Key = (Instant, u64);

struct ClientLane {
    dice: Dice,
    /// The packet held for reordering, if it has not left yet.
    held: Option<Key>,
}

pub(crate) struct Lane<D> {
    direction: Direction,
    seed: u64,
    impairment: Impairment,
    clients: HashMap<u64, ClientLane>,
    queue: BTreeMap<Key, Queued<D>>,
    queued_bytes: usize,
    next_seq: u64,
    max_packets: usize,
    max_bytes: usize,
}

impl<D: Clone> Lane<D> {
    pub(crate) fn new(
        direction: Direction,
        seed: u64,
        impairment: Impairment,
        max_packets: usize,
        max_bytes: usize,
    ) -> Self {
        Lane {
            direction,
            seed,
            impairment,
            clients: HashMap::new(),
            queue: BTreeMap::new(),
            queued_bytes: 0,
            next_seq: 0,
            max_packets,
            max_bytes,
        }
    }

    /// Applies to packets admitted from now on.
    pub(crate) fn set_impairment(&mut self, impairment: Impairment) {
        self.impairment = impairment;
    }

    /// Decides and queues one packet of client `mapping` arriving at `now`.
    ///
    /// At most one packet per client is held: a packet arriving while one is
    /// held releases it (the held one leaves right after it) and is not held
    /// itself. A lost packet releases nothing.
    pub(crate) fn admit(
        &mut self,
        mapping: u64,
        now: Instant,
        dest: D,
        payload: Bytes,
    ) -> Admission {
        let (direction, seed) = (self.direction, self.seed);
        let client = self.clients.entry(mapping).or_insert_with(|| ClientLane {
            dice: Dice::new(seed, mapping, direction),
            held: None,
        });
        let decision = client.dice.roll(&self.impairment);
        if decision.lose {
            return Admission::Lost;
        }
        if self.queue.len() >= self.max_packets
            || self.queued_bytes + payload.len() > self.max_bytes
        {
            return Admission::Overflow;
        }
        let held = client
            .held
            .take()
            .filter(|key| self.queue.contains_key(key));
        let hold = decision.hold && held.is_none();
        let leaves = now + decision.delay;
        let key = if hold {
            (leaves + HOLD_TIMEOUT, self.next_seq)
        } else {
            (leaves, self.next_seq)
        };
        self.next_seq += 1;
        if hold {
            client.held = Some(key);
        }
        self.queued_bytes += payload.len();
        let copies = if decision.duplicate { 2 } else { 1 };
        self.queue.insert(
            key,
            Queued {
                dest,
                payload,
                copies,
            },
        );
        if let Some(old) = held.and_then(|k| self.queue.remove(&k)) {
            // Same departure, later sequence: right after this packet.
            self.queue.insert((leaves, self.next_seq), old);
            self.next_seq += 1;
        }
        Admission::Queued {
            duplicated: decision.duplicate,
            held: hold,
        }
    }

    /// Moves every packet due at `now` into `out`, in departure order.
    pub(crate) fn pop_due(&mut self, now: Instant, out: &mut Vec<Queued<D>>) {
        while let Some(entry) = self.queue.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let queued = entry.remove();
            self.queued_bytes -= queued.payload.len();
            out.push(queued);
        }
    }

    /// When the next packet is due.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.queue.first_key_value().map(|(k, _)| k.0)
    }

    /// Forgets an expired client; what it has queued still leaves.
    pub(crate) fn forget(&mut self, mapping: u64) {
        self.clients.remove(&mapping);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.queue.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn lane(imp: Impairment) -> Lane<()> {
        Lane::new(Direction::Up, 9, imp, 100, 1 << 20)
    }

    fn packet(n: u8) -> Bytes {
        Bytes::from(vec![n])
    }

    fn due(lane: &mut Lane<()>, at: Instant) -> Vec<u8> {
        let mut out = Vec::new();
        lane.pop_due(at, &mut out);
        out.iter().map(|q| q.payload[0]).collect()
    }

    #[test]
    fn clean_lane_sends_at_once_in_order() {
        let mut l = lane(Impairment::default());
        let t = Instant::now();
        for n in 0..5 {
            assert_eq!(
                l.admit(0, t, (), packet(n)),
                Admission::Queued {
                    duplicated: false,
                    held: false
                }
            );
        }
        assert_eq!(due(&mut l, t), [0, 1, 2, 3, 4]);
        assert_eq!(l.next_due(), None);
    }

    #[test]
    fn delay_holds_packets_until_due() {
        let mut l = lane(Impairment {
            delay: 30 * MS,
            ..Impairment::default()
        });
        let t = Instant::now();
        l.admit(0, t, (), packet(1));
        assert_eq!(l.next_due(), Some(t + 30 * MS));
        assert!(due(&mut l, t + 29 * MS).is_empty());
        assert_eq!(due(&mut l, t + 30 * MS), [1]);
    }

    #[test]
    fn jitter_reorders_within_bounds() {
        let mut l = lane(Impairment {
            delay: 20 * MS,
            jitter: 10 * MS,
            ..Impairment::default()
        });
        let t = Instant::now();
        for n in 0..50 {
            l.admit(0, t + u32::from(n) * MS / 10, (), packet(n));
        }
        assert!(due(&mut l, t + 9 * MS).is_empty());
        let order = due(&mut l, t + 36 * MS);
        assert_eq!(order.len(), 50);
        assert!(order.windows(2).any(|w| w[0] > w[1]), "{order:?}");
    }

    #[test]
    fn a_held_packet_leaves_right_after_the_next() {
        let mut l = lane(Impairment {
            reorder_pct: 100.0,
            ..Impairment::default()
        });
        let t = Instant::now();
        let held = Admission::Queued {
            duplicated: false,
            held: true,
        };
        let releasing = Admission::Queued {
            duplicated: false,
            held: false,
        };
        assert_eq!(l.admit(0, t, (), packet(0)), held);
        assert_eq!(l.admit(0, t, (), packet(1)), releasing);
        assert_eq!(l.admit(0, t, (), packet(2)), held);
        assert_eq!(l.admit(0, t, (), packet(3)), releasing);
        assert_eq!(due(&mut l, t), [1, 0, 3, 2]);
    }

    #[test]
    fn a_held_packet_alone_leaves_after_the_timeout() {
        let mut l = lane(Impairment {
            reorder_pct: 100.0,
            delay: 5 * MS,
            ..Impairment::default()
        });
        let t = Instant::now();
        l.admit(0, t, (), packet(7));
        assert!(due(&mut l, t + 5 * MS + HOLD_TIMEOUT - MS).is_empty());
        assert_eq!(due(&mut l, t + 5 * MS + HOLD_TIMEOUT), [7]);
        // It has left, so the next packet may be held again.
        assert!(matches!(
            l.admit(0, t + 20 * MS, (), packet(8)),
            Admission::Queued { held: true, .. }
        ));
    }

    #[test]
    fn holds_are_per_client() {
        let mut l = lane(Impairment {
            reorder_pct: 100.0,
            ..Impairment::default()
        });
        let t = Instant::now();
        l.admit(0, t, (), packet(0));
        l.admit(1, t, (), packet(10));
        assert!(due(&mut l, t).is_empty(), "both held");
        l.admit(1, t, (), packet(11));
        assert_eq!(due(&mut l, t), [11, 10]);
    }

    #[test]
    fn a_lost_packet_releases_nothing() {
        let mut l = lane(Impairment {
            reorder_pct: 100.0,
            ..Impairment::default()
        });
        let t = Instant::now();
        l.admit(0, t, (), packet(0));
        l.set_impairment(Impairment {
            loss_pct: 100.0,
            ..Impairment::default()
        });
        assert_eq!(l.admit(0, t, (), packet(1)), Admission::Lost);
        assert!(due(&mut l, t).is_empty());
        assert_eq!(due(&mut l, t + HOLD_TIMEOUT), [0]);
    }

    #[test]
    fn duplicates_are_two_copies_of_one_entry() {
        let mut l = lane(Impairment {
            duplicate_pct: 100.0,
            ..Impairment::default()
        });
        let t = Instant::now();
        assert_eq!(
            l.admit(0, t, (), packet(1)),
            Admission::Queued {
                duplicated: true,
                held: false
            }
        );
        let mut out = Vec::new();
        l.pop_due(t, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].copies, 2);
    }

    #[test]
    fn a_full_queue_drops_and_says_so() {
        let mut l: Lane<()> = Lane::new(Direction::Down, 1, Impairment::default(), 3, 10);
        let t = Instant::now();
        for n in 0..3 {
            assert!(matches!(
                l.admit(0, t, (), packet(n)),
                Admission::Queued { .. }
            ));
        }
        assert_eq!(l.admit(0, t, (), packet(3)), Admission::Overflow);
        assert_eq!(l.len(), 3);
        due(&mut l, t);
        assert_eq!(
            l.admit(0, t, (), Bytes::from(vec![0; 11])),
            Admission::Overflow,
            "the byte bound too"
        );
        assert!(matches!(
            l.admit(0, t, (), Bytes::from(vec![0; 10])),
            Admission::Queued { .. }
        ));
    }

    #[test]
    fn the_same_seed_and_traffic_repeat_the_same_departures() {
        let imp = Impairment {
            loss_pct: 10.0,
            delay: 10 * MS,
            jitter: 5 * MS,
            reorder_pct: 10.0,
            duplicate_pct: 10.0,
        };
        let run = || {
            let mut l = lane(imp);
            let t = Instant::now();
            for n in 0..200u8 {
                l.admit(u64::from(n % 3), t + u32::from(n) * MS, (), packet(n));
            }
            let mut out = Vec::new();
            l.pop_due(t + Duration::from_secs(1), &mut out);
            out.iter()
                .map(|q| (q.payload[0], q.copies))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(), run());
    }
}
