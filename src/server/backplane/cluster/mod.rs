//! The cluster backplane: several quicbus nodes serve the same rooms, with
//! NATS JetStream as the distributed engine underneath. We build no
//! consensus and no replication of our own; the nodes are NATS clients.
//!
//! ```text
//!  node B: publish ──▶ JetStream stream  <P>_EVENTS   (<p>.ev.<room>, file, R1..R5)
//!                        │ stores, acks with its sequence = the room offset
//!                        │ republishes as stored (RePublish): <p>.live.<room>
//!                        ▼          + Nats-Sequence, Nats-Last-Sequence
//!  node A, C: room feed (core NATS subscription per followed room) ──▶ subscribers
//!  datagrams: node ──▶ core NATS <p>.dg.<room> ──▶ other nodes (never stored)
//! ```
//!
//! - **Offsets** are stream sequences: sparse per room, the same on every
//!   node, so a replayed event and a live one are the same event. The epoch
//!   is the stream's identity (name and creation time): unchanged when a
//!   node dies, new only if the stream is lost.
//! - **Live delivery** is JetStream's RePublish over core NATS, chosen on
//!   measurements (the issue's figures, loopback R1): publish with live
//!   delivery over a core subscription 159 µs against 183–193 µs p50 through
//!   ordered consumers, and a republished event carries its sequence and
//!   its room's previous sequence, which is all a feed needs to notice a
//!   loss and read the gap from the stream (`feed`).
//! - **A publish** is acknowledged only with the sequence JetStream
//!   acknowledged (stored, on R replicas); no node delivers an event before
//!   it is stored. The publishing node's own subscribers get it over the
//!   same live path as everyone else's, so every node delivers a room in
//!   stream order. `Nats-Msg-Id` (session key, room, publish id) makes a
//!   publish retried on any node within the duplicate window land once.
//! - **History and recovery** read the stream on whichever node the client
//!   reaches: a join with `since` reads `(since, position]` from the stream
//!   and asks JetStream whether anything after `since` can have been dropped
//!   (`store::Coverage`); if so the client is told `HistoryTooShort`.
//! - **Datagrams** go to the local subscribers at once and to other nodes
//!   over core NATS, never stored; each node numbers a room's datagrams for
//!   its own clients, and stale filtering between nodes is per origin node.
//! - **NATS unreachable**: reliable publishes fail at once with
//!   `Unavailable` (nothing is acknowledged that was not stored); local
//!   datagrams keep flowing; async-nats reconnects by itself, and every
//!   followed room then reads what it missed from the stream.
//!
//! - **Sessions** are shared through a KV bucket (`sessions`): a client
//!   whose node died presents its token to another node, which takes the
//!   session over (`Resumed`); the session key is unchanged, so its resent
//!   outbox is deduplicated by `Nats-Msg-Id` and published once.

mod feed;
mod sessions;
mod store;
mod subject;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, watch};

use super::{
    Backplane, BackplaneError, BoxFuture, PublishOutcome, PublishRequest, RoomSubscriber,
    SessionId, Subscribed,
};
use crate::server::history::Replay;
use crate::sync::lock;
use crate::wire::{Recovery, RecoveryFailure};
use feed::{FeedContext, NodeDatagram, Room};
pub use sessions::SharedSessions;
pub use store::{ClusterError, Coverage, StreamSettings};
pub use subject::{room_token, BadPrefix, Subjects};

/// Datagrams waiting to go to NATS; more are dropped (datagrams may be lost).
const DATAGRAM_QUEUE: usize = 4096;
/// The longest replay read from the stream for one join.
const MAX_REPLAY: usize = 100_000;

/// How a node joins a cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// NATS servers (`nats://host:port`), tried in turn.
    pub urls: Vec<String>,
    /// This node's name (NATS connection name, logs, metrics).
    pub node: String,
    /// Subject prefix and stream name of this bus on NATS.
    pub prefix: String,
    pub stream: StreamSettings,
    /// How long a publish waits for JetStream's acknowledgement.
    pub ack_timeout: Duration,
    /// Most rooms this node follows at once.
    pub max_rooms: usize,
}

/// Counters of the cluster backplane, for `--metrics`.
#[derive(Debug, Default)]
pub struct ClusterCounters {
    reconnects: AtomicU64,
    publish_failures: AtomicU64,
    gaps: AtomicU64,
    checks: AtomicU64,
    caught_up: AtomicU64,
    malformed: AtomicU64,
    stale_datagrams: AtomicU64,
    datagrams_dropped: AtomicU64,
}

/// A snapshot of [`ClusterCounters`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClusterHealth {
    /// Whether NATS is connected now.
    pub connected: bool,
    /// Reconnects to NATS since the start.
    pub reconnects: u64,
    /// Reliable publishes refused because JetStream did not store them.
    pub publish_failures: u64,
    /// Times core NATS lost live events that were then read from the stream.
    pub gaps: u64,
    /// Times a followed room read the stream for events it may have missed.
    pub checks: u64,
    /// Events delivered from the stream rather than live.
    pub caught_up: u64,
    /// Messages on our subjects that could not be read.
    pub malformed: u64,
    /// Datagrams from other nodes dropped as stale.
    pub stale_datagrams: u64,
    /// Datagrams not sent to other nodes because NATS was not keeping up.
    pub datagrams_dropped: u64,
    /// Rooms this node follows now.
    pub rooms_followed: usize,
}

impl ClusterCounters {
    fn gap(&self) {
        self.gaps.fetch_add(1, Ordering::Relaxed);
    }
    fn checked(&self) {
        self.checks.fetch_add(1, Ordering::Relaxed);
    }
    fn caught_up(&self) {
        self.caught_up.fetch_add(1, Ordering::Relaxed);
    }
    fn malformed(&self) {
        self.malformed.fetch_add(1, Ordering::Relaxed);
    }
    fn stale_datagram(&self) {
        self.stale_datagrams.fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> ClusterHealth {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ClusterHealth {
            connected: false,
            reconnects: get(&self.reconnects),
            publish_failures: get(&self.publish_failures),
            gaps: get(&self.gaps),
            checks: get(&self.checks),
            caught_up: get(&self.caught_up),
            malformed: get(&self.malformed),
            stale_datagrams: get(&self.stale_datagrams),
            datagrams_dropped: get(&self.datagrams_dropped),
            rooms_followed: 0,
        }
    }
}

/// The backplane of one node of a cluster.
pub struct ClusterBackplane {
    client: async_nats::Client,
    js: async_nats::jetstream::Context,
    prefix: String,
    replicas: usize,
    store: store::ClusterStore,
    /// Names this node in datagrams between nodes.
    origin: u64,
    rooms: Mutex<HashMap<Arc<str>, Arc<Room>>>,
    max_rooms: usize,
    datagrams_out: mpsc::Sender<(String, Bytes)>,
    next_datagram: AtomicU64,
    /// Bumped when core NATS may have lost messages (feeds then catch up).
    losses: watch::Receiver<u64>,
    counters: Arc<ClusterCounters>,
    closed: AtomicBool,
}

impl ClusterBackplane {
    /// Connects to NATS and opens (or creates) the event stream. Fails if
    /// NATS cannot be reached now; once connected, the node rides out NATS
    /// outages by itself.
    pub async fn connect(config: ClusterConfig) -> Result<Self, ClusterError> {
        let subjects =
            Subjects::new(&config.prefix).map_err(|e| ClusterError::Settings(e.to_string()))?;
        let counters = Arc::new(ClusterCounters::default());
        let (losses_tx, losses) = watch::channel(0u64);
        let events = counters.clone();
        let options = async_nats::ConnectOptions::new()
            .name(format!("quicbus {}", config.node))
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(Duration::from_secs(2))
            .event_callback(move |event| {
                let counters = events.clone();
                let losses = losses_tx.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            counters.reconnects.fetch_add(1, Ordering::Relaxed);
                            losses.send_modify(|n| *n += 1);
                            tracing::info!("connected to NATS");
                        }
                        async_nats::Event::SlowConsumer(_) => {
                            losses.send_modify(|n| *n += 1);
                            tracing::warn!("NATS dropped messages for a slow subscription; catching up from the stream");
                        }
                        async_nats::Event::Disconnected => {
                            tracing::warn!("disconnected from NATS");
                        }
                        other => tracing::info!("NATS: {other}"),
                    }
                }
            });
        let urls = config.urls.join(",");
        let addrs: Vec<async_nats::ServerAddr> = config
            .urls
            .iter()
            .map(|url| url.parse())
            .collect::<Result<_, _>>()
            .map_err(|e: std::io::Error| ClusterError::Settings(format!("NATS address: {e}")))?;
        // `retry_on_initial_connect` makes connect return at once; wait for
        // the first connection ourselves, bounded.
        let client = options
            .connect(addrs)
            .await
            .map_err(|source| ClusterError::Connect {
                urls: urls.clone(),
                source,
            })?;
        let mut first = losses.clone();
        let waited = config.ack_timeout.max(Duration::from_secs(5));
        let connected = tokio::time::timeout(waited, first.wait_for(|n| *n > 0)).await;
        if !matches!(connected, Ok(Ok(_))) {
            return Err(ClusterError::Unreachable { urls, waited });
        }
        // The first connection is not a reconnect.
        counters.reconnects.store(0, Ordering::Relaxed);
        let mut js = async_nats::jetstream::new(client.clone());
        js.set_timeout(config.ack_timeout);
        let store = store::ClusterStore::open(js.clone(), subjects, &config.stream).await?;
        let (datagrams_out, datagrams_in) = mpsc::channel(DATAGRAM_QUEUE);
        tokio::spawn(send_datagrams(client.clone(), datagrams_in));
        Ok(ClusterBackplane {
            client,
            js,
            prefix: config.prefix.clone(),
            replicas: config.stream.replicas,
            store,
            origin: rand::random(),
            rooms: Mutex::new(HashMap::new()),
            max_rooms: config.max_rooms.max(1),
            datagrams_out,
            next_datagram: AtomicU64::new(0),
            losses,
            counters,
            closed: AtomicBool::new(false),
        })
    }

    /// The cluster's shared sessions (a KV bucket next to the stream),
    /// resumable for `window` after their node last refreshed them.
    pub async fn shared_sessions(&self, window: Duration) -> Result<SharedSessions, ClusterError> {
        let bucket = format!(
            "{}_SESSIONS",
            self.prefix.to_ascii_uppercase().replace('-', "_")
        );
        SharedSessions::open(&self.js, bucket, self.replicas, window).await
    }

    /// The state of the connection to NATS and what the node had to do.
    pub fn health(&self) -> ClusterHealth {
        ClusterHealth {
            // Read live: the connection's own state, not the last event.
            connected: self.client.connection_state() == async_nats::connection::State::Connected,
            rooms_followed: lock(&self.rooms).len(),
            ..self.counters.snapshot()
        }
    }

    /// The room `name` as followed by this node (not yet started).
    fn room(&self, name: &str) -> Result<Arc<Room>, BackplaneError> {
        let mut rooms = lock(&self.rooms);
        if let Some(room) = rooms.get(name) {
            return Ok(room.clone());
        }
        if rooms.len() >= self.max_rooms {
            return Err(BackplaneError::TooManyRooms {
                max: self.max_rooms,
            });
        }
        let room = Arc::new(Room::new(name));
        rooms.insert(room.name.clone(), room.clone());
        Ok(room)
    }

    /// Starts following `room` if nobody has: subscriptions first, then the
    /// position, so that every event after the position arrives live.
    /// `Ok(false)`: the room was given up meanwhile; start over.
    async fn follow(&self, room: &Arc<Room>) -> Result<bool, ClusterError> {
        let _starting = room.start.lock().await;
        {
            let state = lock(&room.state);
            if state.closed {
                return Ok(false);
            }
            if state.feed.is_some() {
                return Ok(true);
            }
        }
        if self.client.connection_state() != async_nats::connection::State::Connected {
            return Err(ClusterError::Disconnected);
        }
        let subjects = self.store.subjects();
        let subscribe = |subject: String| async {
            self.client
                .subscribe(subject)
                .await
                .map_err(|e| ClusterError::JetStream {
                    what: "subscribing to a room",
                    source: e.into(),
                })
        };
        let live = subscribe(subjects.live(&room.name)).await?;
        let datagrams = subscribe(subjects.datagrams(&room.name)).await?;
        // A request on the same connection: NATS has registered both
        // subscriptions before it answers, so every event stored after the
        // position it reports reaches them.
        let position = self.store.last_sequence().await?;
        let ctx = FeedContext {
            store: self.store.clone(),
            origin: self.origin,
            losses: self.losses.clone(),
            counters: self.counters.clone(),
        };
        let mut state = lock(&room.state);
        if state.closed {
            return Ok(false);
        }
        state.last = state.last.max(position);
        let task = tokio::spawn(feed::run(room.clone(), ctx, live, datagrams));
        state.feed = Some(task.abort_handle());
        Ok(true)
    }

    /// The replay of `room` after `since`, up to `position` (the offset the
    /// subscriber's live events start after).
    async fn replay(
        &self,
        room: &str,
        since: u64,
        position: u64,
    ) -> Result<(Recovery, Option<Replay>), ClusterError> {
        let too_short = Recovery::NotRecovered {
            reason: RecoveryFailure::HistoryTooShort,
        };
        if since >= position {
            // Ahead of this node's feed is fine if the stream has got
            // there (another node delivered it first); the client drops
            // what it already has.
            if since > position && since > self.store.last_sequence().await? {
                let reason = RecoveryFailure::UnknownPosition;
                return Ok((Recovery::NotRecovered { reason }, None));
            }
            return Ok((
                Recovery::Recovered { replayed: 0 },
                Some(Replay::from_frames(vec![])),
            ));
        }
        let events = self.store.read(room, since, position, MAX_REPLAY).await?;
        if events.len() == MAX_REPLAY && events.last().is_some_and(|e| e.seq < position) {
            return Ok((too_short, None));
        }
        // Asked after reading: if nothing after `since` has been dropped
        // now, nothing was dropped while we read either.
        let coverage = self.store.coverage(room).await?;
        if !coverage.covers(since, self.store.max_per_room()) {
            return Ok((too_short, None));
        }
        let frames: Vec<Bytes> = events
            .into_iter()
            .map(|e| {
                crate::wire::encode_framed(&crate::wire::Frame::Event {
                    offset: e.seq,
                    event: e.event,
                    payload: e.payload,
                })
            })
            .collect();
        let replay = Replay::from_frames(frames);
        let replayed = replay.count;
        Ok((Recovery::Recovered { replayed }, Some(replay)))
    }

    async fn subscribe_async(
        &self,
        name: &str,
        subscriber: Arc<dyn RoomSubscriber>,
        since: Option<u64>,
    ) -> Result<Subscribed, BackplaneError> {
        let unavailable = |e: ClusterError| BackplaneError::Unavailable(e.to_string());
        let mut position = None;
        for _ in 0..3 {
            let room = self.room(name)?;
            let followed = match self.follow(&room).await {
                Ok(followed) => followed,
                Err(e) => {
                    self.give_up_if_empty(&room);
                    return Err(unavailable(e));
                }
            };
            if !followed {
                continue;
            }
            let mut state = lock(&room.state);
            if state.closed {
                continue;
            }
            let session = subscriber.session();
            state.subscribers.retain(|s| s.session() != session);
            state.subscribers.push(subscriber.clone());
            position = Some(state.last);
            break;
        }
        let Some(offset) = position else {
            return Err(BackplaneError::Unavailable(
                "the room was closed and opened again while joining".into(),
            ));
        };
        let (recovery, replay) = match since {
            None => (Recovery::Live, None),
            Some(since) => match self.replay(name, since, offset).await {
                Ok(answer) => answer,
                Err(e) => {
                    tracing::error!(room = name, "cannot read history: {e}");
                    let reason = RecoveryFailure::HistoryTooShort;
                    (Recovery::NotRecovered { reason }, None)
                }
            },
        };
        Ok(Subscribed {
            offset,
            recovery,
            replay,
        })
    }

    /// Stops following `room` if it has no subscriber.
    fn give_up_if_empty(&self, room: &Arc<Room>) {
        let mut rooms = lock(&self.rooms);
        let mut state = lock(&room.state);
        if !state.subscribers.is_empty() || state.closed {
            return;
        }
        state.closed = true;
        if let Some(feed) = state.feed.take() {
            feed.abort();
        }
        if rooms.get(&room.name).is_some_and(|r| Arc::ptr_eq(r, room)) {
            rooms.remove(&room.name);
        }
    }
}

impl Backplane for ClusterBackplane {
    fn epoch(&self) -> u64 {
        self.store.epoch()
    }

    fn open(&self, _room: &str) -> Result<(), BackplaneError> {
        // Rooms are subjects: naming one creates nothing until it is used.
        Ok(())
    }

    fn subscribe(
        &self,
        room: &str,
        subscriber: Arc<dyn RoomSubscriber>,
        since: Option<u64>,
    ) -> BoxFuture<'_, Result<Subscribed, BackplaneError>> {
        let room = room.to_string();
        Box::pin(async move { self.subscribe_async(&room, subscriber, since).await })
    }

    fn unsubscribe(&self, room: &str, session: SessionId) {
        let room = lock(&self.rooms).get(room).cloned();
        if let Some(room) = room {
            lock(&room.state)
                .subscribers
                .retain(|s| s.session() != session);
            self.give_up_if_empty(&room);
        }
    }

    fn publish(&self, request: PublishRequest<'_>) -> BoxFuture<'_, Result<u64, BackplaneError>> {
        // Both steps of `publish_ordered`, one after the other.
        let ordered = self.publish_ordered(request);
        Box::pin(async move { ordered.await.await })
    }

    // The first step yields the second on purpose.
    #[allow(clippy::async_yields_async)]
    fn publish_ordered(&self, request: PublishRequest<'_>) -> BoxFuture<'_, PublishOutcome> {
        let room = request.room.to_string();
        let PublishRequest {
            from,
            publisher,
            event,
            payload,
            ..
        } = request;
        Box::pin(async move {
            let failed = |e: ClusterError, counters: &ClusterCounters, room: &str| {
                counters.publish_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(room, "publish not stored: {e}");
                BackplaneError::Unavailable(e.to_string())
            };
            let refused =
                |e: BackplaneError| Box::pin(std::future::ready(Err(e))) as PublishOutcome;
            if self.closed.load(Ordering::SeqCst) {
                return refused(BackplaneError::ShuttingDown);
            }
            if self.client.connection_state() != async_nats::connection::State::Connected {
                return refused(failed(ClusterError::Disconnected, &self.counters, &room));
            }
            let ack = match self
                .store
                .send(PublishRequest {
                    room: &room,
                    from,
                    publisher,
                    event,
                    payload,
                })
                .await
            {
                Ok(ack) => ack,
                Err(e) => return refused(failed(e, &self.counters, &room)),
            };
            let counters = self.counters.clone();
            Box::pin(async move {
                ack.await.map(|ack| ack.sequence).map_err(|e| {
                    let e = ClusterError::JetStream {
                        what: "storing an event",
                        source: e.into(),
                    };
                    failed(e, &counters, &room)
                })
            }) as PublishOutcome
        })
    }

    fn publish_datagram(
        &self,
        room: &str,
        from: SessionId,
        event: String,
        payload: Bytes,
    ) -> Result<u64, BackplaneError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(BackplaneError::ShuttingDown);
        }
        let seq = self.next_datagram.fetch_add(1, Ordering::Relaxed) + 1;
        let message = NodeDatagram {
            origin: self.origin,
            seq,
            from_node: from.node,
            from_connection: from.connection,
            event,
            payload,
        };
        let encoded = postcard::to_stdvec(&message)
            .map_err(|e| BackplaneError::Unavailable(format!("cannot encode a datagram: {e}")))?;
        let subject = self.store.subjects().datagrams(room);
        if self
            .datagrams_out
            .try_send((subject, encoded.into()))
            .is_err()
        {
            self.counters
                .datagrams_dropped
                .fetch_add(1, Ordering::Relaxed);
        }
        let followed = lock(&self.rooms).get(room).cloned();
        Ok(match followed {
            Some(room) => lock(&room.state).deliver_datagram(from, message.event, message.payload),
            None => seq,
        })
    }

    fn publishes_of(
        &self,
        _room: &str,
        _session: u64,
    ) -> BoxFuture<'_, Result<Vec<(u64, u64)>, BackplaneError>> {
        // A retried publish is deduplicated by JetStream (`Nats-Msg-Id`)
        // and answered with its first sequence: nothing to restore.
        Box::pin(std::future::ready(Ok(Vec::new())))
    }

    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }
}

impl Drop for ClusterBackplane {
    fn drop(&mut self) {
        for room in lock(&self.rooms).values() {
            if let Some(feed) = lock(&room.state).feed.take() {
                feed.abort();
            }
        }
    }
}

/// Sends this node's datagrams to the other nodes, in order.
async fn send_datagrams(client: async_nats::Client, mut queue: mpsc::Receiver<(String, Bytes)>) {
    while let Some((subject, payload)) = queue.recv().await {
        if let Err(e) = client.publish(subject, payload).await {
            tracing::debug!("datagram not sent to the cluster: {e}");
        }
    }
}
