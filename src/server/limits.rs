//! Defences against clients that take more than their share: the limits
//! each connection and each address lives under, and the token buckets
//! that enforce rates. Pure logic with time as an input, so it is tested
//! without sockets; the session and the accept loop apply it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// A rate: `per_second` on average, up to `burst` at once. A rate of 0
/// per second means unlimited.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: f64,
}

impl Rate {
    /// `per_second` with a burst of as many.
    pub fn per_second(per_second: f64) -> Self {
        Rate {
            per_second,
            burst: per_second,
        }
    }

    /// No limit.
    pub const UNLIMITED: Rate = Rate {
        per_second: 0.0,
        burst: 0.0,
    };

    fn is_unlimited(&self) -> bool {
        self.per_second <= 0.0
    }
}

/// What one connection may hold and do. Every limit, when reached, is a
/// typed error on the control stream (or a close code) and a count in
/// [`Limit`](super::Limit).
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectionLimits {
    /// Rooms joined at once (`Join`); more are refused with `LimitReached`.
    pub rooms_joined: usize,
    /// Room names given an id on this connection (`Join`, `Resolve`).
    pub room_names: usize,
    /// Rooms a session publishes reliable events to: one publish stream
    /// and one publish log each. A stream for a room beyond it has every
    /// publish answered `LimitReached`.
    pub publish_streams: usize,
    /// Publish outcomes a session remembers across all its rooms for
    /// answering retries; beyond it each room keeps only its newest.
    pub publish_log_entries: usize,
    /// Control requests (`Join`, `Leave`, `Resolve`, `Ping`).
    pub control_rate: Rate,
    /// Publishes, reliable and datagram.
    pub publish_rate: Rate,
    /// Requests over the rate in a row before the connection is closed
    /// with `rate limited`; each of them is answered `RateLimited`.
    pub rate_strikes: u32,
    /// How long a frame may stay half-sent before the connection is closed.
    pub frame_timeout: Duration,
    /// Bytes of partly received frames one connection may hold, across its
    /// streams; a stream that needs more waits (QUIC flow control then
    /// stops the client) until the frame timeout closes it.
    pub partial_frame_bytes: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            rooms_joined: 1024,
            room_names: 4096,
            publish_streams: 256,
            publish_log_entries: 16_384,
            control_rate: Rate {
                per_second: 500.0,
                burst: 2000.0,
            },
            publish_rate: Rate {
                per_second: 50_000.0,
                burst: 50_000.0,
            },
            rate_strikes: 64,
            frame_timeout: Duration::from_secs(10),
            partial_frame_bytes: 4 * 1024 * 1024,
        }
    }
}

/// What one client address may do. IPv6 addresses count by their /64
/// prefix: one subscriber usually holds a whole /64.
#[derive(Debug, Clone, PartialEq)]
pub struct AddressLimits {
    /// Connections from one address at once (0: unlimited).
    pub connections: usize,
    /// Completed QUIC handshakes from one address.
    pub handshake_rate: Rate,
    /// `Hello`s refused for a wrong token, from one address; once over, a
    /// `Hello` from there is refused without looking at its token.
    pub failed_hello_rate: Rate,
    /// Rooms joined at once by all connections from one address together
    /// (0: unlimited), so that many connections of one client cannot fill
    /// the server's room table.
    pub rooms_joined: usize,
}

impl Default for AddressLimits {
    fn default() -> Self {
        AddressLimits {
            connections: 1024,
            handshake_rate: Rate {
                per_second: 200.0,
                burst: 1000.0,
            },
            failed_hello_rate: Rate {
                per_second: 1.0,
                burst: 10.0,
            },
            rooms_joined: 16_384,
        }
    }
}

/// A token bucket: `take` succeeds while tokens last; they come back at
/// the rate, up to the burst.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: Rate,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: Rate, now: Instant) -> Self {
        TokenBucket {
            rate,
            tokens: rate.burst.max(1.0),
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + elapsed * self.rate.per_second).min(self.rate.burst.max(1.0));
    }

    /// Takes a token if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        if self.rate.is_unlimited() {
            return true;
        }
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whether a token is there, without taking it.
    pub fn has_token(&mut self, now: Instant) -> bool {
        if self.rate.is_unlimited() {
            return true;
        }
        self.refill(now);
        self.tokens >= 1.0
    }

    /// Whether the bucket is full again (nothing to remember).
    fn is_full(&mut self, now: Instant) -> bool {
        self.rate.is_unlimited() || {
            self.refill(now);
            self.tokens >= self.rate.burst.max(1.0)
        }
    }
}

/// A rate over one connection's requests: over it, each request is
/// refused; [`ConnectionLimits::rate_strikes`] refusals in a row close the
/// connection.
#[derive(Debug)]
pub(crate) struct Throttle {
    bucket: TokenBucket,
    strikes: u32,
    max_strikes: u32,
}

/// What to do with one request under a [`Throttle`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Allow,
    /// Refuse it; `first` when it starts a run of refusals (worth telling
    /// the client about even where refusals are otherwise silent).
    Refuse {
        first: bool,
    },
    /// Too many refusals in a row: close the connection.
    Close,
}

impl Throttle {
    pub fn new(rate: Rate, max_strikes: u32, now: Instant) -> Self {
        Throttle {
            bucket: TokenBucket::new(rate, now),
            strikes: 0,
            max_strikes: max_strikes.max(1),
        }
    }

    /// Takes a token if there is one, without counting a refusal (for
    /// work that is dropped quietly and done another way, like a copy).
    pub fn try_take(&mut self, now: Instant) -> bool {
        self.bucket.take(now)
    }

    pub fn check(&mut self, now: Instant) -> Verdict {
        if self.bucket.take(now) {
            self.strikes = 0;
            return Verdict::Allow;
        }
        self.strikes += 1;
        if self.strikes > self.max_strikes {
            Verdict::Close
        } else {
            Verdict::Refuse {
                first: self.strikes == 1,
            }
        }
    }
}

/// The key an address is counted under: IPv4 as is, IPv6 by its /64.
pub(crate) fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                IpAddr::V6(segments.into())
            }
        },
    }
}

struct AddressState {
    connections: usize,
    rooms_joined: usize,
    handshakes: TokenBucket,
    failed_hellos: TokenBucket,
}

/// Per-address accounting. An address gets an entry only once it has
/// completed a handshake (so a spoofed source address never creates or
/// drains one); entries with nothing to remember are swept.
pub(crate) struct AddressTable {
    limits: AddressLimits,
    entries: HashMap<IpAddr, AddressState>,
}

/// What the accept loop does with a new connection attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admit {
    Accept,
    /// Its address is over its handshake rate but not validated: a
    /// stateless Retry makes it prove the address before anything counts.
    Retry,
    /// Its (validated) address is over its handshake rate.
    Refuse,
}

impl AddressTable {
    pub fn new(limits: AddressLimits) -> Self {
        AddressTable {
            limits,
            entries: HashMap::new(),
        }
    }

    fn entry(&mut self, key: IpAddr, now: Instant) -> &mut AddressState {
        let limits = &self.limits;
        self.entries.entry(key).or_insert_with(|| AddressState {
            connections: 0,
            rooms_joined: 0,
            handshakes: TokenBucket::new(limits.handshake_rate, now),
            failed_hellos: TokenBucket::new(limits.failed_hello_rate, now),
        })
    }

    /// Before a handshake: may it start?
    pub fn admit(&mut self, ip: IpAddr, validated: bool, now: Instant) -> Admit {
        let Some(state) = self.entries.get_mut(&address_key(ip)) else {
            return Admit::Accept;
        };
        if state.handshakes.has_token(now) {
            Admit::Accept
        } else if validated {
            Admit::Refuse
        } else {
            Admit::Retry
        }
    }

    /// After a handshake: counts it, and takes a connection slot of its
    /// address unless the address holds its share (`false`).
    pub fn connect(&mut self, ip: IpAddr, now: Instant) -> bool {
        let max = self.limits.connections;
        let state = self.entry(address_key(ip), now);
        state.handshakes.take(now);
        if max != 0 && state.connections >= max {
            return false;
        }
        state.connections += 1;
        true
    }

    /// A connection from `ip` has ended.
    pub fn disconnect(&mut self, ip: IpAddr) {
        if let Some(state) = self.entries.get_mut(&address_key(ip)) {
            state.connections = state.connections.saturating_sub(1);
        }
    }

    /// A connection from `ip` joins one more room: `false` if the
    /// address already has its share joined.
    pub fn join_room(&mut self, ip: IpAddr, now: Instant) -> bool {
        let max = self.limits.rooms_joined;
        let state = self.entry(address_key(ip), now);
        if max != 0 && state.rooms_joined >= max {
            return false;
        }
        state.rooms_joined += 1;
        true
    }

    /// A connection from `ip` left `n` rooms (or ended with them joined).
    pub fn leave_rooms(&mut self, ip: IpAddr, n: usize) {
        if let Some(state) = self.entries.get_mut(&address_key(ip)) {
            state.rooms_joined = state.rooms_joined.saturating_sub(n);
        }
    }

    /// Whether `ip` may try a token now (it has not failed too often).
    pub fn may_try_token(&mut self, ip: IpAddr, now: Instant) -> bool {
        self.entry(address_key(ip), now)
            .failed_hellos
            .has_token(now)
    }

    /// A `Hello` from `ip` had a wrong token.
    pub fn failed_hello(&mut self, ip: IpAddr, now: Instant) {
        self.entry(address_key(ip), now).failed_hellos.take(now);
    }

    /// Forgets addresses with no connection and full buckets.
    pub fn sweep(&mut self, now: Instant) {
        self.entries.retain(|_, s| {
            s.connections > 0
                || s.rooms_joined > 0
                || !s.handshakes.is_full(now)
                || !s.failed_hellos.is_full(now)
        });
    }

    /// Addresses remembered.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(
            Rate {
                per_second: 10.0,
                burst: 3.0,
            },
            t0,
        );
        assert!(b.take(t0) && b.take(t0) && b.take(t0));
        assert!(!b.take(t0));
        // A tenth of a second brings one token back, and no more than the burst.
        assert!(b.take(t0 + secs(0.1)));
        assert!(!b.take(t0 + secs(0.1)));
        assert!(b.has_token(t0 + secs(100.0)));
        let later = t0 + secs(100.0);
        assert!(b.take(later) && b.take(later) && b.take(later));
        assert!(!b.take(later));
    }

    #[test]
    fn an_unlimited_rate_never_refuses() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(Rate::UNLIMITED, t0);
        assert!((0..10_000).all(|_| b.take(t0)));
    }

    #[test]
    fn a_throttle_refuses_then_closes_after_its_strikes() {
        let t0 = Instant::now();
        let mut t = Throttle::new(Rate::per_second(2.0), 3, t0);
        assert_eq!(t.check(t0), Verdict::Allow);
        assert_eq!(t.check(t0), Verdict::Allow);
        assert_eq!(t.check(t0), Verdict::Refuse { first: true });
        assert_eq!(t.check(t0), Verdict::Refuse { first: false });
        // A request within the rate again clears the strikes.
        assert_eq!(t.check(t0 + secs(0.5)), Verdict::Allow);
        for first in [true, false, false] {
            assert_eq!(t.check(t0 + secs(0.5)), Verdict::Refuse { first });
        }
        assert_eq!(t.check(t0 + secs(0.5)), Verdict::Close);
    }

    #[test]
    fn ipv6_counts_by_its_64_prefix_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(address_key(a), address_key(b));
        assert_ne!(address_key(a), address_key(c));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(address_key(mapped), "10.0.0.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn connections_per_address_are_capped_and_released() {
        let t0 = Instant::now();
        let mut table = AddressTable::new(AddressLimits {
            connections: 2,
            ..AddressLimits::default()
        });
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(table.connect(ip, t0));
        assert!(table.connect(ip, t0));
        assert!(!table.connect(ip, t0), "a third from one address");
        assert!(
            table.connect(other, t0),
            "another address has its own share"
        );
        table.disconnect(ip);
        assert!(table.connect(ip, t0));
    }

    #[test]
    fn an_address_over_its_handshake_rate_gets_a_retry_then_a_refusal() {
        let t0 = Instant::now();
        let mut table = AddressTable::new(AddressLimits {
            handshake_rate: Rate {
                per_second: 1.0,
                burst: 2.0,
            },
            ..AddressLimits::default()
        });
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        // Unknown addresses are never held up: nothing proves they are real.
        assert_eq!(table.admit(ip, false, t0), Admit::Accept);
        assert!(table.connect(ip, t0));
        assert!(table.connect(ip, t0));
        assert_eq!(table.admit(ip, false, t0), Admit::Retry);
        assert_eq!(table.admit(ip, true, t0), Admit::Refuse);
        assert_eq!(table.admit(ip, true, t0 + secs(1.0)), Admit::Accept);
    }

    #[test]
    fn rooms_joined_per_address_are_capped_and_released() {
        let t0 = Instant::now();
        let mut table = AddressTable::new(AddressLimits {
            rooms_joined: 3,
            ..AddressLimits::default()
        });
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        assert!((0..3).all(|_| table.join_room(ip, t0)));
        assert!(!table.join_room(ip, t0));
        assert!(table.join_room("10.0.0.2".parse().unwrap(), t0));
        table.leave_rooms(ip, 2);
        assert!(table.join_room(ip, t0) && table.join_room(ip, t0));
        assert!(!table.join_room(ip, t0));
    }

    #[test]
    fn failed_hellos_run_out_and_come_back() {
        let t0 = Instant::now();
        let mut table = AddressTable::new(AddressLimits {
            failed_hello_rate: Rate {
                per_second: 1.0,
                burst: 2.0,
            },
            ..AddressLimits::default()
        });
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..2 {
            assert!(table.may_try_token(ip, t0));
            table.failed_hello(ip, t0);
        }
        assert!(!table.may_try_token(ip, t0));
        assert!(table.may_try_token(ip, t0 + secs(1.0)));
    }

    #[test]
    fn the_sweep_forgets_only_addresses_with_nothing_to_remember() {
        let t0 = Instant::now();
        let mut table = AddressTable::new(AddressLimits::default());
        let busy: IpAddr = "10.0.0.1".parse().unwrap();
        let gone: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(table.connect(busy, t0));
        assert!(table.connect(gone, t0));
        table.disconnect(gone);
        table.sweep(t0);
        assert_eq!(table.len(), 2, "a spent handshake token is remembered");
        table.sweep(t0 + secs(60.0));
        assert_eq!(table.len(), 1, "only the address with a connection stays");
    }
}
