//! What happens to one packet: the impairment settings, their validation, and
//! [`Dice`], the seeded source that rolls a [`Decision`] per packet. No
//! sockets and no clock, so the statistics are unit-tested exactly.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Longest delay or jitter accepted; keeps every deadline far from overflow.
pub const MAX_DELAY: Duration = Duration::from_secs(3600);

/// How one direction of the path is impaired. The default impairs nothing.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Impairment {
    /// Percentage of packets dropped (0 to 100).
    pub loss_pct: f64,
    /// Fixed delay added to every packet.
    pub delay: Duration,
    /// Each packet's delay varies uniformly within `delay ± jitter` (never
    /// below zero), so jitter may reorder packets, as netem does.
    pub jitter: Duration,
    /// Percentage of packets held back and sent right after the next packet
    /// of the same client and direction.
    pub reorder_pct: f64,
    /// Percentage of packets sent twice.
    pub duplicate_pct: f64,
}

/// Why an [`Impairment`] was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ImpairmentError {
    /// A percentage outside 0..=100, or not a number.
    #[error("{field} must be a percentage from 0 to 100, got {value}")]
    Percentage { field: &'static str, value: f64 },
    /// A delay or jitter longer than [`MAX_DELAY`].
    #[error("{field} of {value:?} is longer than the limit of {MAX_DELAY:?}")]
    TooLong {
        field: &'static str,
        value: Duration,
    },
}

impl Impairment {
    /// Checks that percentages are in 0..=100 and durations within [`MAX_DELAY`].
    pub fn validate(&self) -> Result<(), ImpairmentError> {
        for (field, value) in [
            ("loss", self.loss_pct),
            ("reorder", self.reorder_pct),
            ("duplicate", self.duplicate_pct),
        ] {
            if !(0.0..=100.0).contains(&value) {
                return Err(ImpairmentError::Percentage { field, value });
            }
        }
        for (field, value) in [("delay", self.delay), ("jitter", self.jitter)] {
            if value > MAX_DELAY {
                return Err(ImpairmentError::TooLong { field, value });
            }
        }
        Ok(())
    }
}

/// Which way a packet travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    /// Client to upstream server.
    Up = 0,
    /// Upstream server to client.
    Down = 1,
}

/// What happens to one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Decision {
    /// Dropped; the other fields do not apply.
    pub lose: bool,
    /// Sent twice.
    pub duplicate: bool,
    /// Held back until the next packet (at most one is held at a time).
    pub hold: bool,
    /// How long after arrival it leaves.
    pub delay: Duration,
}

/// The seeded random source of one client's direction.
pub(crate) struct Dice {
    rng: StdRng,
}

impl Dice {
    /// A stream of its own for every (seed, mapping, direction), so a run
    /// with the same seed and the same traffic repeats every decision.
    pub(crate) fn new(seed: u64, mapping: u64, direction: Direction) -> Dice {
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&seed.to_le_bytes());
        key[8..16].copy_from_slice(&mapping.to_le_bytes());
        key[16] = direction as u8;
        Dice {
            rng: StdRng::from_seed(key),
        }
    }

    /// Decides the fate of the next packet. Always draws the same four
    /// numbers, so changing one setting does not shift the others' choices.
    pub(crate) fn roll(&mut self, imp: &Impairment) -> Decision {
        let [loss, duplicate, hold, jitter]: [f64; 4] = std::array::from_fn(|_| self.rng.random());
        Decision {
            lose: loss * 100.0 < imp.loss_pct,
            duplicate: duplicate * 100.0 < imp.duplicate_pct,
            hold: hold * 100.0 < imp.reorder_pct,
            delay: jittered(imp.delay, imp.jitter, jitter),
        }
    }
}

/// `delay` moved by `(2u − 1) · jitter` for `u` in [0, 1), clamped at zero.
fn jittered(delay: Duration, jitter: Duration, u: f64) -> Duration {
    if jitter.is_zero() {
        return delay;
    }
    // Truncation toward zero keeps the offset within ±jitter exactly.
    let offset = ((u * 2.0 - 1.0) * jitter.as_nanos() as f64) as i128;
    let nanos = (delay.as_nanos() as i128 + offset).max(0);
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    const N: usize = 100_000;

    fn rate(imp: Impairment, pick: impl Fn(&Decision) -> bool) -> f64 {
        let mut dice = Dice::new(7, 0, Direction::Up);
        let hits = (0..N).filter(|_| pick(&dice.roll(&imp))).count();
        hits as f64 * 100.0 / N as f64
    }

    fn loss(pct: f64) -> Impairment {
        Impairment {
            loss_pct: pct,
            ..Impairment::default()
        }
    }

    #[test]
    fn loss_rate_is_within_one_point_of_the_setting() {
        let r = rate(loss(5.0), |d| d.lose);
        assert!((4.0..=6.0).contains(&r), "{r}%");
    }

    #[test]
    fn zero_and_hundred_percent_are_exact() {
        assert_eq!(rate(loss(0.0), |d| d.lose), 0.0);
        assert_eq!(rate(loss(100.0), |d| d.lose), 100.0);
        let none = Impairment::default();
        assert_eq!(rate(none, |d| d.duplicate || d.hold), 0.0);
        assert_eq!(rate(none, |d| !d.delay.is_zero()), 0.0);
    }

    #[test]
    fn duplicate_and_reorder_rates_follow_the_setting() {
        let imp = Impairment {
            duplicate_pct: 10.0,
            reorder_pct: 25.0,
            ..Impairment::default()
        };
        let dup = rate(imp, |d| d.duplicate);
        assert!((9.0..=11.0).contains(&dup), "{dup}%");
        let hold = rate(imp, |d| d.hold);
        assert!((24.0..=26.0).contains(&hold), "{hold}%");
    }

    fn sequence(seed: u64, mapping: u64, direction: Direction) -> Vec<Decision> {
        let imp = Impairment {
            loss_pct: 30.0,
            duplicate_pct: 30.0,
            reorder_pct: 30.0,
            delay: Duration::from_millis(20),
            jitter: Duration::from_millis(10),
        };
        let mut dice = Dice::new(seed, mapping, direction);
        (0..1000).map(|_| dice.roll(&imp)).collect()
    }

    #[test]
    fn same_seed_repeats_and_others_differ() {
        let a = sequence(42, 0, Direction::Up);
        assert_eq!(a, sequence(42, 0, Direction::Up));
        assert_ne!(a, sequence(43, 0, Direction::Up));
        assert_ne!(
            a,
            sequence(42, 1, Direction::Up),
            "each mapping has its own stream"
        );
        assert_ne!(a, sequence(42, 0, Direction::Down), "each direction too");
    }

    #[test]
    fn one_setting_does_not_shift_another() {
        let mut a = Dice::new(1, 0, Direction::Up);
        let mut b = Dice::new(1, 0, Direction::Up);
        let with_dup = Impairment {
            loss_pct: 20.0,
            duplicate_pct: 50.0,
            ..Impairment::default()
        };
        for _ in 0..1000 {
            assert_eq!(a.roll(&loss(20.0)).lose, b.roll(&with_dup).lose);
        }
    }

    #[test]
    fn jitter_stays_within_bounds_and_spreads() {
        let imp = Impairment {
            delay: Duration::from_millis(30),
            jitter: Duration::from_millis(10),
            ..Impairment::default()
        };
        let mut dice = Dice::new(3, 0, Direction::Down);
        let delays: Vec<Duration> = (0..N).map(|_| dice.roll(&imp).delay).collect();
        let (lo, hi) = (Duration::from_millis(20), Duration::from_millis(40));
        assert!(delays.iter().all(|d| (lo..=hi).contains(d)));
        let min = delays.iter().min().copied().unwrap();
        let max = delays.iter().max().copied().unwrap();
        assert!(min < Duration::from_millis(21) && max > Duration::from_millis(39));
    }

    #[test]
    fn jitter_larger_than_delay_clamps_at_zero() {
        let imp = Impairment {
            delay: Duration::from_millis(5),
            jitter: Duration::from_millis(20),
            ..Impairment::default()
        };
        let mut dice = Dice::new(3, 0, Direction::Up);
        let delays: Vec<Duration> = (0..10_000).map(|_| dice.roll(&imp).delay).collect();
        assert!(delays.iter().all(|d| *d <= Duration::from_millis(25)));
        let zeros = delays.iter().filter(|d| d.is_zero()).count();
        // P(offset < −5 ms) = 15/40.
        assert!((3000..=4500).contains(&zeros), "{zeros}");
    }

    #[test]
    fn validation_names_the_bad_field() {
        assert_eq!(Impairment::default().validate(), Ok(()));
        let cases = [
            (loss(100.5), "loss"),
            (loss(-1.0), "loss"),
            (loss(f64::NAN), "loss"),
            (
                Impairment {
                    duplicate_pct: f64::INFINITY,
                    ..Impairment::default()
                },
                "duplicate",
            ),
        ];
        for (imp, field) in cases {
            match imp.validate() {
                Err(ImpairmentError::Percentage { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{imp:?}: {other:?}"),
            }
        }
        let slow = Impairment {
            jitter: MAX_DELAY + Duration::from_secs(1),
            ..Impairment::default()
        };
        assert!(matches!(
            slow.validate(),
            Err(ImpairmentError::TooLong {
                field: "jitter",
                ..
            })
        ));
    }
}
