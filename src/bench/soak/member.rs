//! One well-behaved client of the crowd and what it does: publish with
//! acks, send datagrams, leave and rejoin a room from the last offset it
//! processed, start a new session. A flaky client whose connection was lost
//! under an operation tries it again once connected, as an application
//! would.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quicbus::client::{Client, ClientError, ClientOptions, JoinOptions};
use quicbus::wire::Recovery;

use super::checks::{payload, receive, room_name, Seen, Tally};
use crate::bench::BenchError;

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

/// What a publisher's last acked event in a room was.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Last {
    pub seq: u64,
    pub offset: u64,
}

/// Shared by the whole crowd: the tally and every publisher's last event
/// per room (what subscribers must reach).
pub(super) struct Shared {
    pub tally: Arc<Tally>,
    pub finals: Mutex<HashMap<(u32, u32), Last>>,
}

/// One well-behaved client: its identity, where it connects, and its rooms.
pub(super) struct Member {
    pub me: u32,
    flaky: bool,
    options: ClientOptions,
    rooms: Vec<u32>,
    seen: Arc<Mutex<Seen>>,
    pub client: Client,
    /// The task reading the current session's events (taken when awaited).
    pub receiver: Option<tokio::task::JoinHandle<()>>,
    /// Per room, the sequence of this client's last event there.
    sequences: HashMap<u32, u64>,
}

impl Member {
    pub(super) async fn connect(
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

    pub(super) async fn publish(&mut self, shared: &Shared, turn: u64) {
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

    pub(super) async fn datagram(&mut self, shared: &Shared, turn: u64) {
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
    pub(super) async fn churn(&mut self, shared: &Shared, turn: u64, pause: Duration) {
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
                echo: Some(false),
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
    pub(super) async fn renew(&mut self, shared: &Shared) {
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
    pub(super) fn account_datagrams(&self, shared: &Shared) {
        let stats = self.client.stats();
        shared
            .tally
            .datagrams_lost
            .fetch_add(stats.datagrams_lost, Ordering::Relaxed);
    }

    /// Events this client still lacks: per room it is in, per other
    /// publisher, the sequences between what it processed and that
    /// publisher's last acked event there.
    pub(super) fn lacking(&self, finals: &HashMap<(u32, u32), Last>) -> u64 {
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
