//! Keeping a client connected: when its connection is lost, reconnect with
//! exponential backoff and jitter (to its servers in turn, shuffled),
//! resume the session, rejoin every room from the last offset delivered,
//! and resend the outbox.
//!
//! Only a connection QUIC has given up on (idle timeout, or closed) leads
//! here: short outages that QUIC rides out never trigger a reconnect.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rand::seq::SliceRandom;
use rand::Rng;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::link::Link;
use super::{lock, ClientError, Core, Incoming, Reply};
use crate::wire::{close_code, Frame, Recovery, RecoveryFailure, Resume};

/// The waits between attempts: attempt `n` waits a random time up to
/// `min(initial × 2ⁿ, max)` ("full jitter").
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max: max.max(initial),
            attempt: 0,
        }
    }

    /// The upper bound of the next wait.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// The next wait, drawn from `rng`.
    pub fn next(&mut self, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        ceiling.mul_f64(rng.random_range(0.0..=1.0))
    }
}

/// The order reconnect attempts try the servers in: each server once per
/// round, every round shuffled anew. A round does not start with the server
/// the previous one ended with, so with two or more servers none is tried
/// twice in a row.
#[derive(Debug, Clone)]
pub(crate) struct Rotation {
    /// Every server, without repeats; never empty.
    servers: Vec<SocketAddr>,
    /// What is left of this round, taken from the back.
    round: Vec<SocketAddr>,
    last: Option<SocketAddr>,
}

impl Rotation {
    pub fn new(first: SocketAddr, others: &[SocketAddr]) -> Self {
        let mut servers = vec![first];
        for server in others {
            if !servers.contains(server) {
                servers.push(*server);
            }
        }
        Rotation {
            servers,
            round: Vec::new(),
            last: None,
        }
    }

    /// The server to try next, drawn with `rng` at the start of each round.
    pub fn next(&mut self, rng: &mut impl Rng) -> SocketAddr {
        if self.round.is_empty() {
            self.round = self.servers.clone();
            self.round.shuffle(rng);
            let n = self.round.len();
            if n > 1 && self.round.last() == self.last.as_ref() {
                let other = rng.random_range(0..n - 1);
                self.round.swap(other, n - 1);
            }
        }
        let server = self.round.pop().unwrap_or(self.servers[0]);
        self.last = Some(server);
        server
    }
}

/// Whether the token was refused as expired: reconnecting waits for the
/// application to give a new one ([`crate::client::Client::set_token`]).
fn token_expired(error: &ClientError) -> bool {
    match error {
        ClientError::Closed { code, .. } => *code == u64::from(close_code::TOKEN_EXPIRED),
        ClientError::Rejected { code, .. } => *code == crate::wire::ErrorCode::TokenExpired,
        _ => false,
    }
}

/// Tells the application its token expired and waits until it sets a new
/// one; `false` if the client closed first.
async fn new_token(core: &Core, events: &mpsc::Sender<Incoming>, error: &ClientError) -> bool {
    let mut token = core.token.subscribe();
    token.mark_unchanged();
    let notice = Incoming::TokenExpired {
        reason: error.to_string(),
    };
    // Waited for, like recovery notices: the application must learn it.
    tokio::select! {
        _ = events.send(notice) => {}
        () = core.closing.notified() => return false,
    }
    let closing = core.closing.notified();
    tokio::pin!(closing);
    closing.as_mut().enable();
    if core.is_closing() {
        return false;
    }
    tokio::select! {
        changed = token.changed() => changed.is_ok(),
        () = &mut closing => false,
    }
}

/// Whether losing the connection this way rules out reconnecting.
fn fatal(error: &ClientError) -> bool {
    if token_expired(error) {
        return false;
    }
    match error {
        ClientError::Closed { code, .. } => matches!(
            u32::try_from(*code),
            Ok(close_code::UNSUPPORTED_VERSION | close_code::UNAUTHORIZED)
        ),
        ClientError::VersionMismatch { .. } | ClientError::Rejected { .. } => true,
        ClientError::Tls(_) | ClientError::Protocol(_) => true,
        _ => false,
    }
}

/// Whether another server might accept a client that this error turned
/// away: not after a fatal error (the same version, TLS material and
/// credentials go to every server), nor after an expired token.
pub(crate) fn another_server_may_answer(error: &ClientError) -> bool {
    !fatal(error) && !token_expired(error)
}

/// Watches the client's connection for as long as the client lives.
pub(crate) async fn supervise(
    core: Arc<Core>,
    mut link: Arc<Link>,
    events: mpsc::Sender<Incoming>,
) {
    loop {
        let reason = link.conn.closed().await;
        // This client closed it: for good, or because the server broke the
        // protocol (no point in reconnecting to that).
        let closed_here = matches!(reason, quinn::ConnectionError::LocallyClosed);
        let lost = ClientError::from_connection(&reason);
        core.set_link(None, Some(lost.clone()));
        if core.is_closing() {
            break;
        }
        // Connection notices are informational: an application that never
        // reads its events (a pure publisher) must not stall reconnecting,
        // so they are dropped when the queue is full. Recovery notices are
        // not: they are waited for, like the events they announce.
        let _ = events.try_send(Incoming::Disconnected {
            reason: lost.to_string(),
        });
        let Some(policy) = core.options.reconnect else {
            break;
        };
        if closed_here || fatal(&lost) {
            break;
        }
        if token_expired(&lost) {
            tracing::warn!("the token expired: reconnecting once the application sets a new one");
            if !new_token(&core, &events, &lost).await {
                break;
            }
        }
        let mut backoff = Backoff::new(policy.initial_backoff, policy.max_backoff);
        let mut rotation = Rotation::new(core.options.server, &core.options.servers);
        let give_up = policy.give_up_after.map(|d| Instant::now() + d);
        let next = loop {
            if core.is_closing() || give_up.is_some_and(|at| Instant::now() >= at) {
                break None;
            }
            let closing = core.closing.notified();
            tokio::pin!(closing);
            closing.as_mut().enable();
            if core.is_closing() {
                break None;
            }
            let wait = backoff.next(&mut rand::rng());
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = &mut closing => break None,
            }
            let server = rotation.next(&mut rand::rng());
            match reconnect_once(&core, server, &events).await {
                Ok(next) => break Some(next),
                Err(e) if fatal(&e) => {
                    tracing::warn!("not reconnecting: {e}");
                    break None;
                }
                Err(e) if token_expired(&e) => {
                    tracing::warn!("{e}: reconnecting once the application sets a new token");
                    if !new_token(&core, &events, &e).await {
                        break None;
                    }
                }
                Err(e) => tracing::debug!("reconnect to {server} failed: {e}"),
            }
        };
        match next {
            Some(next) => link = next,
            None => break,
        }
    }
    // Closed for good: fail whatever still waits, and end the event stream
    // (by dropping this, the last sender the reading tasks do not hold).
    core.finished
        .store(true, std::sync::atomic::Ordering::SeqCst);
    core.link.send_modify(|_| {});
    core.fail_requests(true);
}

/// One attempt: connect to `server`, resume, rejoin, resend.
async fn reconnect_once(
    core: &Arc<Core>,
    server: SocketAddr,
    events: &mpsc::Sender<Incoming>,
) -> Result<Arc<Link>, ClientError> {
    let (resume, old_epoch) = {
        let session = lock(&core.session);
        (
            Resume {
                token: session.resume_token.clone(),
                epoch: session.epoch,
            },
            session.epoch,
        )
    };
    let link = Link::open(core, server, Some(resume), events.clone()).await?;
    match rejoin(core, &link, old_epoch, events).await {
        Ok(()) => {}
        Err(e) => {
            // This attempt is abandoned: do not leave its connection open.
            link.conn
                .close(close_code::NORMAL.into(), b"reconnect abandoned");
            return Err(e);
        }
    }
    if core.is_closing() {
        link.conn.close(close_code::NORMAL.into(), b"client closed");
        return Err(ClientError::Disconnected("the client is closed".into()));
    }
    core.adopt(&link);
    core.counters
        .reconnects
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    for room in core.outbox.rooms_waiting() {
        link.ensure_writer(core, &room);
    }
    // Notices first: Recovery per room (in `rejoin`), Reconnected, then the
    // events they announce.
    let _ = events.try_send(Incoming::Reconnected {
        resumed: link.welcome.resumed,
    });
    link.set_ready();
    Ok(link)
}

/// Rejoins every joined room on `link` from the newest event delivered,
/// reporting the recovery of each.
async fn rejoin(
    core: &Arc<Core>,
    link: &Arc<Link>,
    old_epoch: u64,
    events: &mpsc::Sender<Incoming>,
) -> Result<(), ClientError> {
    let epoch_changed = link.welcome.epoch != old_epoch;
    // Taken before positions are forgotten: a room without a position is
    // one whose own join is still in flight; that join (with whatever
    // `since` it asked for) will run on this connection, so it is skipped.
    let rooms = lock(&core.rooms).rejoin_list();
    if epoch_changed {
        lock(&core.rooms).forget_positions();
    }
    for (room, echo, position) in rooms {
        let Some(position) = position else {
            continue;
        };
        let since = (!epoch_changed).then_some(position);
        let reply = core
            .request_on(link, "rejoin", |request| Frame::Join {
                request,
                room: room.to_string(),
                echo,
                since,
            })
            .await;
        let recovery = match reply {
            Ok(Reply::Joined {
                room_id,
                offset,
                recovery,
            }) => {
                let at = link.learn(room_id, &room);
                lock(&core.rooms).settle(&room, at, offset, since, recovery);
                if epoch_changed {
                    Recovery::NotRecovered {
                        reason: RecoveryFailure::EpochChanged,
                    }
                } else {
                    recovery
                }
            }
            // The server refused the room (say, its room table is full of
            // rooms in use): report it and carry on with the others.
            // (A token that no longer allows the room is a refusal too.)
            Err(ClientError::Rejected { .. } | ClientError::Forbidden { .. }) => {
                lock(&core.rooms).joined.remove(&room);
                Recovery::NotRecovered {
                    reason: RecoveryFailure::JoinRefused,
                }
            }
            Err(e) => return Err(e),
            Ok(_) => return Err(ClientError::Protocol("unexpected answer to Join".into())),
        };
        let notice = Incoming::Recovery { room, recovery };
        tokio::select! {
            _ = events.send(notice) => {}
            () = core.closing.notified() => return Err(core.gone()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use std::collections::HashSet;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter_below_the_ceiling() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let mut rng = StdRng::seed_from_u64(1);
        let mut ceilings = Vec::new();
        for _ in 0..6 {
            let ceiling = b.ceiling();
            let wait = b.next(&mut rng);
            assert!(wait <= ceiling);
            ceilings.push(ceiling.as_millis());
        }
        assert_eq!(ceilings, vec![100, 200, 400, 800, 1000, 1000]);
        for _ in 0..100 {
            b.next(&mut rng);
        }
        assert_eq!(b.ceiling(), Duration::from_secs(1), "no overflow");
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn rotation_tries_every_server_once_per_round_in_varying_orders() {
        let servers = [addr(1), addr(2), addr(3), addr(4)];
        // The first repeated: listed twice, still tried once per round.
        let mut rotation = Rotation::new(
            servers[0],
            &[servers[1], servers[0], servers[2], servers[3]],
        );
        let mut rng = StdRng::seed_from_u64(7);
        let mut orders = HashSet::new();
        let mut previous = None;
        for round in 0..20 {
            let order: Vec<SocketAddr> = (0..servers.len())
                .map(|_| rotation.next(&mut rng))
                .collect();
            let mut sorted = order.clone();
            sorted.sort();
            assert_eq!(sorted, servers, "round {round}: {order:?}");
            assert_ne!(
                previous,
                Some(order[0]),
                "round {round} starts with the server just tried"
            );
            previous = order.last().copied();
            orders.insert(order);
        }
        assert!(orders.len() >= 5, "rounds are shuffled anew: {orders:?}");
    }

    #[test]
    fn rotation_of_one_server_always_tries_it() {
        let mut rotation = Rotation::new(addr(1), &[addr(1)]);
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..5 {
            assert_eq!(rotation.next(&mut rng), addr(1));
        }
    }

    #[test]
    fn rotation_of_two_never_repeats_a_server() {
        let mut rotation = Rotation::new(addr(1), &[addr(2)]);
        let mut rng = StdRng::seed_from_u64(3);
        let tried: Vec<SocketAddr> = (0..40).map(|_| rotation.next(&mut rng)).collect();
        for pair in tried.windows(2) {
            assert_ne!(pair[0], pair[1], "{tried:?}");
        }
    }

    #[test]
    fn only_errors_another_server_could_answer_differently_move_on() {
        let server = addr(1);
        assert!(another_server_may_answer(&ClientError::ConnectTimeout {
            server,
            after: Duration::from_secs(1)
        }));
        assert!(another_server_may_answer(&ClientError::Handshake {
            server,
            reason: "connection refused".into()
        }));
        assert!(!another_server_may_answer(&ClientError::VersionMismatch {
            client: 2,
            server: 1
        }));
        assert!(!another_server_may_answer(&ClientError::Tls(
            "no CA".into()
        )));
        assert!(!another_server_may_answer(&ClientError::Rejected {
            code: crate::wire::ErrorCode::TokenExpired,
            reason: String::new()
        }));
    }

    #[test]
    fn version_and_auth_failures_are_fatal_losses_are_not() {
        assert!(fatal(&ClientError::Closed {
            code: u64::from(close_code::UNAUTHORIZED),
            reason: String::new()
        }));
        assert!(!fatal(&ClientError::Closed {
            code: u64::from(close_code::SLOW_CONSUMER),
            reason: String::new()
        }));
        assert!(!fatal(&ClientError::Disconnected("timed out".into())));
    }
}
