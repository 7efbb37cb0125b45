//! The well-behaved crowd of a soak: N clients over shared endpoints, each
//! in a few rooms, publishing reliable events (with acks) and datagrams,
//! leaving and rejoining rooms (from the last offset it processed), now
//! and then starting a new session, and, for the clients behind a flaky
//! path, losing their connection and resuming it.
//!
//! Every reliable event a client receives is checked: its room and name,
//! its offset (strictly increasing per room), and its payload, which
//! carries the publisher, the room and the publisher's sequence in that
//! room (each one exactly once and in order). After the publishers stop,
//! every client must have reached every other publisher's last event of
//! each room it is in. Anything else is an error.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quicbus::client::{ClientOptions, Reconnect};
use quicbus::netsim::{Netsim, NetsimConfig, NetsimHandle};
use rand::Rng;

use super::checks::Tally;
use super::member::{Member, Shared};
use super::{SoakConfig, Timeline};
use crate::bench::{BenchError, Progress};

/// Clients sharing one UDP socket, as in `bench fanout`.
const CLIENTS_PER_SOCKET: usize = 8;
/// Clients connecting at once.
const CONNECT_BATCH: usize = 50;
/// How long the crowd may take to settle after the publishers stop.
const DRAIN: Duration = Duration::from_secs(30);
/// Flaky paths (netsims) the flaky clients are spread over.
const FLAKY_PATHS: usize = 4;

/// The crowd, connected and ready to start.
pub(super) struct Crowd {
    members: Vec<Member>,
    shared: Arc<Shared>,
    netsims: Vec<NetsimHandle>,
    _endpoints: Vec<quinn::Endpoint>,
}

impl Crowd {
    /// Connects `config.clients` clients (every `flaky_every`-th behind a
    /// netsim whose path goes dark now and then) and joins their rooms.
    pub(super) async fn connect(
        config: &SoakConfig,
        base: &ClientOptions,
        server: SocketAddr,
        tally: Arc<Tally>,
        progress: &Progress,
    ) -> Result<Crowd, BenchError> {
        let shared = Arc::new(Shared {
            tally,
            finals: Mutex::new(HashMap::new()),
        });
        let mut netsims = Vec::new();
        if config.flaky_every > 0 {
            for _ in 0..FLAKY_PATHS {
                let netsim = Netsim::start(NetsimConfig::new(
                    SocketAddr::from(([127, 0, 0, 1], 0)),
                    server,
                ))
                .await
                .map_err(|e| BenchError::Other(format!("starting a flaky path: {e}")))?;
                netsims.push(netsim);
            }
        }
        // Steady and flaky clients get sockets of their own kind; the flaky
        // ones per path.
        let bind = || {
            quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0)))
                .map_err(BenchError::io("binding the clients' sockets"))
        };
        let mut endpoints: Vec<quinn::Endpoint> = Vec::new();
        let mut steady: Option<(quinn::Endpoint, usize)> = None;
        let mut flaky_sockets: Vec<Option<(quinn::Endpoint, usize)>> = vec![None; netsims.len()];
        let mut plans = Vec::with_capacity(config.clients);
        for i in 0..config.clients {
            let flaky =
                config.flaky_every > 0 && i % config.flaky_every == 0 && !netsims.is_empty();
            let path = (i / config.flaky_every.max(1)) % netsims.len().max(1);
            let slot = if flaky {
                &mut flaky_sockets[path]
            } else {
                &mut steady
            };
            if slot.as_ref().is_none_or(|(_, n)| *n >= CLIENTS_PER_SOCKET) {
                let e = bind()?;
                endpoints.push(e.clone());
                *slot = Some((e, 0));
            }
            let Some((endpoint, used)) = slot.as_mut() else {
                return Err(BenchError::Other("no socket for a client".into()));
            };
            *used += 1;
            let mut options = base.clone();
            options.endpoint = Some(endpoint.clone());
            options.client_name = format!("soak-{i}");
            options.request_timeout = Duration::from_secs(20);
            options.reconnect = Some(Reconnect {
                initial_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(1),
                give_up_after: Some(Duration::from_secs(30)),
            });
            if flaky {
                options.server = netsims[path].local_addr();
                // Lose the connection soon after the path goes dark.
                options.transport.idle_timeout = Duration::from_millis(1500);
                options.transport.keep_alive = Duration::from_millis(400);
            }
            let rooms = (0..config.rooms_per_client)
                .map(|k| ((i * 7 + k * 31) % config.rooms) as u32)
                .collect::<Vec<_>>();
            plans.push((i as u32, flaky, options, rooms));
        }
        let mut members = Vec::with_capacity(config.clients);
        let total = plans.len() as u64;
        let mut plans = plans.into_iter();
        loop {
            let batch: Vec<_> = plans.by_ref().take(CONNECT_BATCH).collect();
            if batch.is_empty() {
                break;
            }
            let mut connecting = Vec::new();
            for (me, flaky, options, rooms) in batch {
                let shared = shared.clone();
                connecting.push(tokio::spawn(async move {
                    Member::connect(me, flaky, options, rooms, &shared).await
                }));
            }
            for handle in connecting {
                let member = handle
                    .await
                    .map_err(|e| BenchError::Other(format!("client task: {e}")))??;
                members.push(member);
            }
            progress.tick(members.len() as u64, total);
        }
        Ok(Crowd {
            members,
            shared,
            netsims,
            _endpoints: endpoints,
        })
    }

    /// Runs every client's schedule until `timeline.stop`, the flaky paths'
    /// outages meanwhile; then waits for every event to arrive and counts
    /// what is still lacking. Closes every client.
    pub(super) async fn run(self, config: &SoakConfig, timeline: Timeline) {
        let Crowd {
            members,
            shared,
            netsims,
            _endpoints,
        } = self;
        let netsims = Arc::new(netsims);
        let outages = tokio::spawn(outages(
            netsims.clone(),
            config.outage_every,
            config.outage_len,
            timeline.stop,
            shared.tally.clone(),
        ));
        let mut tasks = Vec::new();
        for member in members {
            let (shared, config) = (shared.clone(), config.clone());
            tasks.push(tokio::spawn(schedule(
                member,
                shared,
                config,
                timeline.stop,
            )));
        }
        let mut members = Vec::new();
        for task in tasks {
            match task.await {
                Ok(member) => members.push(member),
                Err(e) => shared.tally.error(format!("a client's task failed: {e}")),
            }
        }
        let _ = outages.await;
        // Nothing more is published: wait until every client has what it
        // should (or the drain time is up), then count what is missing.
        let drain_until = Instant::now() + DRAIN;
        let mut lacking = u64::MAX;
        while Instant::now() < drain_until {
            lacking = match shared.finals.lock() {
                Ok(finals) => members.iter().map(|m| m.lacking(&finals)).sum(),
                Err(_) => 0,
            };
            if lacking == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if lacking > 0 {
            shared.tally.missing.fetch_add(lacking, Ordering::Relaxed);
            shared.tally.error(format!(
                "{lacking} reliable events never reached a subscriber within {DRAIN:?} after the publishers stopped"
            ));
        }
        for member in &members {
            member.account_datagrams(&shared);
            member.client.close().await;
        }
        for member in members {
            if let Some(receiver) = member.receiver {
                let _ = tokio::time::timeout(Duration::from_secs(5), receiver).await;
            }
        }
        if let Ok(netsims) = Arc::try_unwrap(netsims) {
            for netsim in netsims {
                netsim.shutdown().await;
            }
        }
    }
}

/// Dark periods of the flaky paths, one path at a time, round robin.
async fn outages(
    netsims: Arc<Vec<NetsimHandle>>,
    every: Duration,
    len: Duration,
    stop: Instant,
    tally: Arc<Tally>,
) {
    if netsims.is_empty() || every.is_zero() {
        return;
    }
    let mut turn = 0usize;
    let mut next = Instant::now() + every / 2;
    // Bounded: one outage per `every` until stop.
    while next + len < stop {
        tokio::time::sleep_until(next.into()).await;
        let netsim = &netsims[turn % netsims.len()];
        netsim.set_blackhole(true);
        tally.outages.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(len).await;
        netsim.set_blackhole(false);
        turn += 1;
        next += every;
    }
}

/// One client's actions until `stop`: publish, send datagrams, churn, renew.
async fn schedule(
    mut member: Member,
    shared: Arc<Shared>,
    config: SoakConfig,
    stop: Instant,
) -> Member {
    let jittered = |period: Duration| {
        if period.is_zero() {
            None
        } else {
            Some(Instant::now() + period.mul_f64(rand::rng().random_range(0.05..1.0)))
        }
    };
    let mut next_reliable = jittered(config.reliable_every);
    let mut next_datagram = jittered(config.datagram_every);
    let mut next_churn = jittered(config.churn_every);
    let mut next_renew = jittered(config.renew_every);
    let mut turn = u64::from(member.me);
    // Bounded by `stop`; every step advances one of the due times.
    loop {
        let due = [next_reliable, next_datagram, next_churn, next_renew]
            .into_iter()
            .flatten()
            .min();
        let Some(due) = due else { break };
        if due >= stop {
            break;
        }
        tokio::time::sleep_until(due.into()).await;
        turn += 1;
        let now = Instant::now();
        if next_reliable.is_some_and(|t| t <= now) {
            member.publish(&shared, turn).await;
            next_reliable = next_reliable.map(|t| (t + config.reliable_every).max(now));
        } else if next_datagram.is_some_and(|t| t <= now) {
            member.datagram(&shared, turn).await;
            next_datagram = next_datagram.map(|t| (t + config.datagram_every).max(now));
        } else if next_churn.is_some_and(|t| t <= now) {
            let pause = Duration::from_millis(200 + turn % 800);
            member.churn(&shared, turn, pause).await;
            next_churn = next_churn.map(|t| (t + config.churn_every).max(Instant::now()));
        } else if next_renew.is_some_and(|t| t <= now) {
            member.renew(&shared).await;
            next_renew = next_renew.map(|t| (t + config.renew_every).max(Instant::now()));
        }
    }
    member
}
