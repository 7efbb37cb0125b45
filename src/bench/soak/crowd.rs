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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use quicbus::client::{
    Client, ClientError, ClientOptions, Delivery, Event, Events, Incoming, JoinOptions, Reconnect,
};
use quicbus::netsim::{Netsim, NetsimConfig, NetsimHandle};
use quicbus::wire::{Recovery, ResumeOutcome};
use rand::Rng;

use super::{SoakConfig, Timeline};
use crate::bench::{BenchError, Progress};

/// Clients sharing one UDP socket, as in `bench fanout`.
const CLIENTS_PER_SOCKET: usize = 8;
/// Clients connecting at once.
const CONNECT_BATCH: usize = 50;
/// Error messages kept for the report.
const ERROR_SAMPLES: usize = 20;
/// Payload bytes of every event: publisher, room, sequence, padding.
const PAYLOAD: usize = 64;
/// How long the crowd may take to settle after the publishers stop.
const DRAIN: Duration = Duration::from_secs(30);
/// Flaky paths (netsims) the flaky clients are spread over.
const FLAKY_PATHS: usize = 4;
/// Tries of an operation a flaky client's lost connection failed.
const ATTEMPTS: usize = 5;
/// How long a flaky client waits to be connected again before a retry.
const RECONNECT_WAIT: Duration = Duration::from_secs(20);

/// Whether `e` is the loss of the connection an operation was sent on (or
/// of the path to the server), not a refusal.
fn connection_lost(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::Disconnected(_)
            | ClientError::Timeout { .. }
            | ClientError::ConnectTimeout { .. }
            | ClientError::Handshake { .. }
    )
}

/// What the crowd counted; every field of the report that is about it.
#[derive(Debug, Default)]
pub(super) struct Tally {
    pub errors: AtomicU64,
    pub error_samples: Mutex<Vec<String>>,
    pub published: AtomicU64,
    pub delivered: AtomicU64,
    pub duplicates: AtomicU64,
    pub out_of_order: AtomicU64,
    pub missing: AtomicU64,
    pub datagrams_sent: AtomicU64,
    pub datagrams_unsent: AtomicU64,
    pub datagrams_received: AtomicU64,
    pub datagrams_lost: AtomicU64,
    pub joins: AtomicU64,
    pub rejoins: AtomicU64,
    pub replayed: AtomicU64,
    pub renewals: AtomicU64,
    /// Connections tried again: the connect storm at the start, and new
    /// sessions a busy server (or a dark path) turned away.
    pub connect_retries: AtomicU64,
    pub connect_retry_samples: Mutex<Vec<String>>,
    /// Operations of flaky clients tried again after their connection was
    /// lost under them.
    pub retries: AtomicU64,
    pub disconnects: AtomicU64,
    pub resumes: AtomicU64,
    pub outages: AtomicU64,
}

impl Tally {
    pub(super) fn connect_retry(&self, why: String) {
        self.connect_retries.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut samples) = self.connect_retry_samples.lock() {
            if samples.len() < ERROR_SAMPLES {
                samples.push(why);
            }
        }
    }

    pub(super) fn error(&self, message: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut samples) = self.error_samples.lock() {
            if samples.len() < ERROR_SAMPLES {
                samples.push(message);
            }
        }
    }
}

/// What a publisher's last acked event in a room was.
#[derive(Debug, Clone, Copy, Default)]
struct Last {
    seq: u64,
    offset: u64,
}

/// Shared by the whole crowd: the tally and every publisher's last event
/// per room (what subscribers must reach).
struct Shared {
    tally: Arc<Tally>,
    finals: Mutex<HashMap<(u32, u32), Last>>,
}

/// What one client has processed of one room.
#[derive(Debug, Default)]
struct RoomSeen {
    /// The newest offset processed (at least the offset at the first join).
    last_offset: u64,
    /// Per publisher, the newest sequence processed.
    publishers: HashMap<u32, u64>,
}

/// One client's view, kept across its sessions.
#[derive(Default)]
struct Seen {
    rooms: HashMap<u32, RoomSeen>,
}

fn room_name(room: u32) -> String {
    format!("soak-{room}")
}

fn room_index(name: &str) -> Option<u32> {
    name.strip_prefix("soak-")?.parse().ok()
}

/// `publisher ‖ room ‖ seq`, little-endian, padded to [`PAYLOAD`] bytes.
fn payload(publisher: u32, room: u32, seq: u64) -> Bytes {
    let mut p = vec![0u8; PAYLOAD];
    p[..4].copy_from_slice(&publisher.to_le_bytes());
    p[4..8].copy_from_slice(&room.to_le_bytes());
    p[8..16].copy_from_slice(&seq.to_le_bytes());
    Bytes::from(p)
}

fn parse(p: &[u8]) -> Option<(u32, u32, u64)> {
    if p.len() != PAYLOAD {
        return None;
    }
    let publisher = u32::from_le_bytes(p.get(..4)?.try_into().ok()?);
    let room = u32::from_le_bytes(p.get(4..8)?.try_into().ok()?);
    let seq = u64::from_le_bytes(p.get(8..16)?.try_into().ok()?);
    Some((publisher, room, seq))
}

/// Checks one received reliable event against what `me` has seen.
fn check_reliable(me: u32, event: &Event, offset: u64, seen: &mut Seen, tally: &Tally) {
    let Some(room) = room_index(&event.room) else {
        tally.error(format!("client {me}: event of unknown room {}", event.room));
        return;
    };
    let Some((publisher, payload_room, seq)) = parse(&event.payload) else {
        tally.error(format!("client {me}: damaged payload in {}", event.room));
        return;
    };
    if payload_room != room || event.name != "r" {
        tally.error(format!(
            "client {me}: event {} of room {payload_room} arrived in {} at {offset}",
            event.name, event.room
        ));
        return;
    }
    let r = seen.rooms.entry(room).or_default();
    if offset <= r.last_offset {
        tally.duplicates.fetch_add(1, Ordering::Relaxed);
        tally.error(format!(
            "client {me}: offset {offset} in {} after {}",
            event.room, r.last_offset
        ));
        return;
    }
    r.last_offset = offset;
    tally.delivered.fetch_add(1, Ordering::Relaxed);
    if publisher == me {
        return;
    }
    if let Some(prev) = r.publishers.get(&publisher).copied() {
        if seq <= prev {
            tally.out_of_order.fetch_add(1, Ordering::Relaxed);
            tally.error(format!(
                "client {me}: publisher {publisher}'s #{seq} in {} after #{prev}",
                event.room
            ));
            return;
        }
        if seq > prev + 1 {
            tally.missing.fetch_add(seq - prev - 1, Ordering::Relaxed);
            tally.error(format!(
                "client {me}: publisher {publisher}'s #{} to #{} in {} missing",
                prev + 1,
                seq - 1,
                event.room
            ));
        }
    }
    r.publishers.insert(publisher, seq);
}

/// Reads one session's events until the client closes.
async fn receive(
    me: u32,
    flaky: bool,
    mut events: Events,
    seen: Arc<Mutex<Seen>>,
    tally: Arc<Tally>,
) {
    while let Some(incoming) = events.next_incoming().await {
        match incoming {
            Incoming::Event(event) => match event.delivery {
                Delivery::Reliable { offset } => {
                    if let Ok(mut seen) = seen.lock() {
                        check_reliable(me, &event, offset, &mut seen, &tally);
                    }
                }
                Delivery::Datagram { .. } => {
                    let ok = event.name == "d"
                        && parse(&event.payload)
                            .is_some_and(|(_, room, _)| room_index(&event.room) == Some(room));
                    if ok {
                        tally.datagrams_received.fetch_add(1, Ordering::Relaxed);
                    } else {
                        tally.error(format!("client {me}: damaged datagram in {}", event.room));
                    }
                }
            },
            Incoming::Disconnected { reason } => {
                if flaky {
                    tally.disconnects.fetch_add(1, Ordering::Relaxed);
                } else {
                    tally.error(format!("client {me}: unexpected close: {reason}"));
                }
            }
            Incoming::Reconnected { resumed } => match resumed {
                ResumeOutcome::Resumed => {
                    tally.resumes.fetch_add(1, Ordering::Relaxed);
                }
                other => tally.error(format!(
                    "client {me}: reconnected without resume: {other:?}"
                )),
            },
            Incoming::Recovery { room, recovery } => match recovery {
                Recovery::Recovered { replayed } => {
                    tally.replayed.fetch_add(replayed, Ordering::Relaxed);
                }
                Recovery::Live => {}
                Recovery::NotRecovered { reason } => {
                    tally.error(format!("client {me}: {room} not recovered: {reason}"));
                }
            },
        }
    }
}

/// One well-behaved client: its identity, where it connects, and its rooms.
struct Member {
    me: u32,
    flaky: bool,
    options: ClientOptions,
    rooms: Vec<u32>,
    seen: Arc<Mutex<Seen>>,
    client: Client,
    /// The task reading the current session's events (taken when awaited).
    receiver: Option<tokio::task::JoinHandle<()>>,
    /// Per room, the sequence of this client's last event there.
    sequences: HashMap<u32, u64>,
}

impl Member {
    async fn connect(
        me: u32,
        flaky: bool,
        options: ClientOptions,
        rooms: Vec<u32>,
        shared: &Shared,
    ) -> Result<Self, BenchError> {
        let seen = Arc::new(Mutex::new(Seen::default()));
        // A connect storm may meet the server's handshake bounds: the
        // bench tries again, as an application would, and counts it.
        let mut attempt = 0;
        let (client, events) = loop {
            match Client::connect(options.clone()).await {
                Ok(pair) => break pair,
                Err(e) if attempt + 1 < ATTEMPTS => {
                    shared
                        .tally
                        .connect_retry(format!("client {me}, first connection: {e}"));
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(BenchError::client(format!("connecting client {me}"))(e)),
            }
        };
        let receiver = tokio::spawn(receive(
            me,
            flaky,
            events,
            seen.clone(),
            shared.tally.clone(),
        ));
        let member = Member {
            me,
            flaky,
            options,
            rooms,
            seen,
            client,
            receiver: Some(receiver),
            sequences: HashMap::new(),
        };
        for &room in &member.rooms {
            let offset = member
                .client
                .join(&room_name(room))
                .await
                .map_err(BenchError::client(format!("client {me} joins {room}")))?;
            member.first_join(room, offset);
            shared.tally.joins.fetch_add(1, Ordering::Relaxed);
        }
        Ok(member)
    }

    /// Starts the room's record at the offset of a first join (unless
    /// events already came past it).
    fn first_join(&self, room: u32, offset: u64) {
        if let Ok(mut seen) = self.seen.lock() {
            let r = seen.rooms.entry(room).or_default();
            r.last_offset = r.last_offset.max(offset);
        }
    }

    fn last_offset(&self, room: u32) -> u64 {
        self.seen
            .lock()
            .ok()
            .and_then(|s| s.rooms.get(&room).map(|r| r.last_offset))
            .unwrap_or(0)
    }

    /// Whether to try `e`'s operation again: a flaky client whose
    /// connection was lost under it, connected again within
    /// [`RECONNECT_WAIT`], on one of its first [`ATTEMPTS`] tries. What a
    /// well-behaved application does.
    async fn again(&self, e: &ClientError, attempt: usize, shared: &Shared) -> bool {
        if !self.flaky || attempt + 1 >= ATTEMPTS || !connection_lost(e) {
            return false;
        }
        shared.tally.retries.fetch_add(1, Ordering::Relaxed);
        let until = Instant::now() + RECONNECT_WAIT;
        // Bounded by RECONNECT_WAIT.
        while Instant::now() < until {
            if self.client.is_connected() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    async fn publish(&mut self, shared: &Shared, turn: u64) {
        let Some(&room) = self.rooms.get(turn as usize % self.rooms.len().max(1)) else {
            return;
        };
        let seq = self.sequences.get(&room).copied().unwrap_or(0) + 1;
        let name = room_name(room);
        let mut attempt = 0;
        let ack = loop {
            match self
                .client
                .emit_acked(&name, "r", payload(self.me, room, seq))
                .await
            {
                Ok(ack) => break ack,
                Err(e) if self.again(&e, attempt, shared).await => attempt += 1,
                Err(e) => {
                    shared
                        .tally
                        .error(format!("client {}: emit to {name}: {e}", self.me));
                    return;
                }
            }
        };
        // Queued: it will be published, acked or not.
        self.sequences.insert(room, seq);
        match ack.wait().await {
            Ok(offset) => {
                shared.tally.published.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut finals) = shared.finals.lock() {
                    finals.insert((room, self.me), Last { seq, offset });
                }
            }
            Err(e) => shared
                .tally
                .error(format!("client {}: ack from {name}: {e}", self.me)),
        }
    }

    async fn datagram(&mut self, shared: &Shared, turn: u64) {
        let Some(&room) = self.rooms.get(turn as usize % self.rooms.len().max(1)) else {
            return;
        };
        let name = room_name(room);
        match self
            .client
            .emit_datagram(&name, "d", payload(self.me, room, turn))
            .await
        {
            Ok(()) => {
                shared.tally.datagrams_sent.fetch_add(1, Ordering::Relaxed);
            }
            // A datagram is not kept while disconnected, by design.
            Err(
                ClientError::Disconnected(_)
                | ClientError::Closed { .. }
                | ClientError::Timeout { .. },
            ) if self.flaky => {
                shared
                    .tally
                    .datagrams_unsent
                    .fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => shared
                .tally
                .error(format!("client {}: datagram to {name}: {e}", self.me)),
        }
    }

    /// Leaves one room, pauses, and rejoins it from the last offset processed.
    async fn churn(&mut self, shared: &Shared, turn: u64, pause: Duration) {
        let Some(&room) = self.rooms.get(turn as usize % self.rooms.len().max(1)) else {
            return;
        };
        let name = room_name(room);
        match self.client.leave(&name).await {
            Ok(()) => {}
            // The room is left on this side at once, and the server
            // forgets it with the lost connection: left all the same.
            Err(e) if self.flaky && connection_lost(&e) => {
                shared.tally.retries.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                shared
                    .tally
                    .error(format!("client {}: leave {name}: {e}", self.me));
                return;
            }
        }
        tokio::time::sleep(pause).await;
        self.rejoin(shared, room).await;
    }

    async fn rejoin(&self, shared: &Shared, room: u32) {
        let name = room_name(room);
        let mut attempt = 0;
        let (since, joined) = loop {
            let since = self.last_offset(room);
            let options = JoinOptions {
                echo: false,
                since: Some(since),
            };
            match self.client.join_with(&name, options).await {
                Err(e) if self.again(&e, attempt, shared).await => attempt += 1,
                other => break (since, other),
            }
        };
        match joined {
            Ok(outcome) => match outcome.recovery {
                Recovery::Recovered { replayed } => {
                    shared.tally.rejoins.fetch_add(1, Ordering::Relaxed);
                    shared.tally.replayed.fetch_add(replayed, Ordering::Relaxed);
                }
                other => shared.tally.error(format!(
                    "client {}: rejoin {name} since {since}: {other:?}",
                    self.me
                )),
            },
            Err(e) => shared
                .tally
                .error(format!("client {}: rejoin {name}: {e}", self.me)),
        }
    }

    /// Closes this session and starts a new one that rejoins every room
    /// from the last offset processed.
    async fn renew(&mut self, shared: &Shared) {
        self.account_datagrams(shared);
        self.client.close().await;
        if let Some(receiver) = self.receiver.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), receiver).await;
        }
        let mut attempt = 0;
        let (client, events) = loop {
            match Client::connect(self.options.clone()).await {
                Ok(pair) => break pair,
                // A flaky path may be dark, a busy server may turn a
                // handshake away: try again a little later, as an
                // application would (counted).
                Err(e) if attempt + 1 < ATTEMPTS => {
                    shared
                        .tally
                        .connect_retry(format!("client {}, new session: {e}", self.me));
                    attempt += 1;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => {
                    shared
                        .tally
                        .error(format!("client {}: new session: {e}", self.me));
                    return;
                }
            }
        };
        self.client = client;
        self.receiver = Some(tokio::spawn(receive(
            self.me,
            self.flaky,
            events,
            self.seen.clone(),
            shared.tally.clone(),
        )));
        shared.tally.renewals.fetch_add(1, Ordering::Relaxed);
        for room in self.rooms.clone() {
            self.rejoin(shared, room).await;
        }
    }

    /// Adds this session's datagram losses (as its receiver counted them).
    fn account_datagrams(&self, shared: &Shared) {
        let stats = self.client.stats();
        shared
            .tally
            .datagrams_lost
            .fetch_add(stats.datagrams_lost, Ordering::Relaxed);
    }

    /// Events this client still lacks: per room it is in, per other
    /// publisher, the sequences between what it processed and that
    /// publisher's last acked event there.
    fn lacking(&self, finals: &HashMap<(u32, u32), Last>) -> u64 {
        let Ok(seen) = self.seen.lock() else { return 0 };
        let mut lacking = 0;
        for &room in &self.rooms {
            let Some(r) = seen.rooms.get(&room) else {
                continue;
            };
            for (&(final_room, publisher), last) in finals {
                if final_room != room || publisher == self.me || last.offset <= r.last_offset {
                    continue;
                }
                let processed = r.publishers.get(&publisher).copied().unwrap_or(0);
                lacking += last.seq.saturating_sub(processed).max(1);
            }
        }
        lacking
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn event(room: &str, payload: Bytes, offset: u64) -> Event {
        Event {
            room: Arc::from(room),
            name: "r".into(),
            delivery: Delivery::Reliable { offset },
            payload,
        }
    }

    #[test]
    fn payload_round_trips() {
        let p = payload(7, 3, 42);
        assert_eq!(p.len(), PAYLOAD);
        assert_eq!(parse(&p), Some((7, 3, 42)));
        assert_eq!(parse(&p[..10]), None);
        assert_eq!(room_index("soak-12"), Some(12));
        assert_eq!(room_index("other"), None);
    }

    #[test]
    fn checks_catch_gaps_duplicates_and_wrong_rooms() {
        let tally = Tally::default();
        let mut seen = Seen::default();
        let ok = |seen: &mut Seen, seq, offset| {
            check_reliable(
                1,
                &event("soak-3", payload(2, 3, seq), offset),
                offset,
                seen,
                &tally,
            )
        };
        ok(&mut seen, 5, 10);
        ok(&mut seen, 6, 11);
        assert_eq!(tally.errors.load(Ordering::Relaxed), 0);
        ok(&mut seen, 6, 11); // the same offset again
        assert_eq!(tally.duplicates.load(Ordering::Relaxed), 1);
        ok(&mut seen, 9, 14); // #7 and #8 skipped
        assert_eq!(tally.missing.load(Ordering::Relaxed), 2);
        ok(&mut seen, 8, 15); // older sequence at a newer offset
        assert_eq!(tally.out_of_order.load(Ordering::Relaxed), 1);
        let wrong = event("soak-4", payload(2, 3, 10), 16);
        check_reliable(1, &wrong, 16, &mut seen, &tally);
        assert_eq!(tally.errors.load(Ordering::Relaxed), 4);
        assert_eq!(tally.delivered.load(Ordering::Relaxed), 4);
    }

    #[test]
    fn own_events_do_not_count_as_another_publisher() {
        let tally = Tally::default();
        let mut seen = Seen::default();
        check_reliable(
            2,
            &event("soak-3", payload(2, 3, 1), 1),
            1,
            &mut seen,
            &tally,
        );
        check_reliable(
            2,
            &event("soak-3", payload(2, 3, 5), 2),
            2,
            &mut seen,
            &tally,
        );
        assert_eq!(tally.errors.load(Ordering::Relaxed), 0);
    }
}
