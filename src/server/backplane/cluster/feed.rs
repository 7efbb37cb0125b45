//! One room's live feed on one node: the events and datagrams other nodes
//! (and this one) publish, handed to this node's subscribers in order.
//!
//! A node follows a room only while it has a subscriber there. Following
//! starts with two core-NATS subscriptions (the room's republished events and
//! its datagrams), confirmed by a request on the same connection, and then
//! the stream's newest sequence as the room's position: every event stored
//! after it reaches the subscription, so nothing falls between history and
//! live. Each live event carries the room's previous sequence
//! (`Nats-Last-Sequence`); when that is ahead of what this node delivered,
//! core NATS lost something (a reconnect, a slow route) and the feed reads
//! the missing events from the stream before going on. For a room that has
//! gone quiet after a loss, the same read happens on every reconnect to
//! NATS and every slow-consumer report, once a second after following
//! starts (interest takes a moment to reach every server of a NATS
//! cluster), and every 30 s as a last resort.
//!
//! Datagrams from other nodes get this node's own per-room sequence as they
//! are fanned out, so a client's stale filter compares one node's numbers;
//! an origin's datagram older than one already seen from that origin is
//! dropped as stale.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::{Message, Subscriber};
use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::store::{self, ClusterStore, StoredEvent};
use crate::server::backplane::{EventCopy, RoomSubscriber, SessionId};
use crate::sync::lock;
use crate::wire::{self, DatagramTemplate, Frame};

/// Events read from the stream per request while catching up.
const CATCH_UP_BATCH: usize = 256;
/// A followed room checks the stream for events it missed this long after
/// it started (interest in its subjects reaches every server of a NATS
/// cluster a moment after the subscription)...
const SETTLE: Duration = Duration::from_secs(1);
/// ...and then this often, as a last resort: losses that NATS reports
/// (reconnects, slow consumers) start a check at once.
const TICK: Duration = Duration::from_secs(30);
/// Most origins remembered per room for stale filtering.
const MAX_ORIGINS: usize = 1024;

/// A datagram as it travels between nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeDatagram {
    /// The node that published it, and its sequence there (per node, across
    /// rooms: increasing is all that matters).
    pub origin: u64,
    pub seq: u64,
    /// The connection that published it, for echo suppression.
    pub from_node: u64,
    pub from_connection: u64,
    pub event: String,
    pub payload: Bytes,
}

/// A room this node follows.
pub struct Room {
    pub name: Arc<str>,
    /// Held while following starts, so that one subscribe starts it.
    pub start: tokio::sync::Mutex<()>,
    pub state: Mutex<RoomState>,
}

pub struct RoomState {
    /// The sequence delivered through (or the position following began at).
    pub last: u64,
    pub subscribers: Vec<Arc<dyn RoomSubscriber>>,
    /// This node's datagram sequence for the room.
    pub datagram_seq: u64,
    /// The newest datagram sequence seen from each origin node.
    origins: HashMap<u64, u64>,
    /// The feed task, once following has started.
    pub feed: Option<tokio::task::AbortHandle>,
    /// Set when the room is no longer followed: a subscribe that raced with
    /// that starts over.
    pub closed: bool,
}

impl Room {
    pub fn new(name: &str) -> Self {
        Room {
            name: Arc::from(name),
            start: tokio::sync::Mutex::new(()),
            state: Mutex::new(RoomState {
                last: 0,
                subscribers: Vec::new(),
                datagram_seq: 0,
                origins: HashMap::new(),
                feed: None,
                closed: false,
            }),
        }
    }
}

impl RoomState {
    /// Hands one stored event to the subscribers if it is the next one;
    /// returns whether it was.
    pub fn deliver(&mut self, event: &StoredEvent) -> bool {
        if event.seq <= self.last {
            return false;
        }
        let previous = self.last;
        self.last = event.seq;
        let frame = wire::encode_framed(&Frame::Event {
            offset: event.seq,
            event: event.event.clone(),
            payload: event.payload.clone(),
        });
        let copy = (event.event.len() + event.payload.len() <= wire::MAX_COPY_BYTES
            && self.subscribers.iter().any(|s| s.copies()))
        .then(|| EventCopy {
            previous,
            offset: event.seq,
            event: event.event.clone(),
            payload: event.payload.clone(),
        });
        for sub in &self.subscribers {
            if Some(sub.session()) == event.from && !sub.echo() {
                continue;
            }
            sub.deliver_reliable(&frame);
            if let Some(copy) = copy.as_ref().filter(|_| sub.copies()) {
                sub.deliver_copy(copy);
            }
        }
        true
    }

    /// Fans out one datagram with this node's next sequence for the room.
    pub fn deliver_datagram(&mut self, from: SessionId, event: String, payload: Bytes) -> u64 {
        self.datagram_seq += 1;
        let datagram = DatagramTemplate::new(self.datagram_seq, event, payload);
        for sub in &self.subscribers {
            if sub.session() == from && !sub.echo() {
                continue;
            }
            sub.deliver_datagram(&datagram);
        }
        self.datagram_seq
    }

    /// Whether a datagram from `origin` numbered `seq` is newer than every
    /// earlier one from there (and remembers it).
    fn fresh(&mut self, origin: u64, seq: u64) -> bool {
        if let Some(newest) = self.origins.get_mut(&origin) {
            if seq <= *newest {
                return false;
            }
            *newest = seq;
            return true;
        }
        if self.origins.len() >= MAX_ORIGINS {
            self.origins.clear();
        }
        self.origins.insert(origin, seq);
        true
    }
}

/// What the feed of a room needs from its node.
pub struct FeedContext {
    pub store: ClusterStore,
    /// This node, to skip its own datagrams (already fanned out locally).
    pub origin: u64,
    /// Bumped whenever core NATS may have lost messages: every reconnect,
    /// every slow-consumer report.
    pub losses: watch::Receiver<u64>,
    pub counters: Arc<super::ClusterCounters>,
}

/// Follows `room` until aborted (or until NATS closes the subscriptions
/// for good).
pub async fn run(room: Arc<Room>, ctx: FeedContext, live: Subscriber, datagrams: Subscriber) {
    let FeedContext {
        store,
        origin,
        mut losses,
        counters,
    } = ctx;
    let mut live = live;
    let mut datagrams = datagrams;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + SETTLE, TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            message = live.next() => match message {
                Some(message) => on_live(&room, &store, &counters, message).await,
                None => break,
            },
            message = datagrams.next() => match message {
                Some(message) => on_datagram(&room, origin, &counters, message),
                None => break,
            },
            _ = tick.tick() => catch_up(&room, &store, &counters, u64::MAX).await,
            changed = losses.changed() => {
                if changed.is_err() {
                    break;
                }
                catch_up(&room, &store, &counters, u64::MAX).await;
            }
        }
    }
    tracing::debug!(room = %room.name, "room feed ended");
}

async fn on_live(
    room: &Room,
    store: &ClusterStore,
    counters: &super::ClusterCounters,
    message: Message,
) {
    let Some(headers) = message.headers.as_ref() else {
        counters.malformed();
        return;
    };
    let (Some(seq), Some(previous)) = (
        store::number(headers, store::SEQUENCE),
        store::number(headers, store::LAST_SEQUENCE),
    ) else {
        counters.malformed();
        return;
    };
    let last = lock(&room.state).last;
    if seq <= last {
        return;
    }
    if previous > last {
        // Core NATS lost something: fill the gap from the stream, which
        // delivers this event too if it can.
        counters.gap();
        catch_up(room, store, counters, seq).await;
        return;
    }
    match store::decode(seq, Some(previous), Some(headers), &message.payload) {
        Ok(event) => {
            lock(&room.state).deliver(&event);
        }
        Err(e) => {
            counters.malformed();
            tracing::warn!(room = %room.name, "{e}");
        }
    }
}

/// Delivers the room's stored events after the last delivered one, up to
/// `through`. On failure nothing is skipped: the next tick, live event or
/// reconnect tries again from the same place.
async fn catch_up(
    room: &Room,
    store: &ClusterStore,
    counters: &super::ClusterCounters,
    through: u64,
) {
    counters.checked();
    loop {
        let last = lock(&room.state).last;
        let events = match store.read(&room.name, last, through, CATCH_UP_BATCH).await {
            Ok(events) => events,
            Err(e) => {
                tracing::debug!(room = %room.name, "catching up failed, will retry: {e}");
                return;
            }
        };
        let Some(newest) = events.last().map(|e| e.seq) else {
            return;
        };
        let mut state = lock(&room.state);
        for event in &events {
            if state.deliver(event) {
                counters.caught_up();
            }
        }
        drop(state);
        if events.len() < CATCH_UP_BATCH || newest >= through {
            return;
        }
    }
}

fn on_datagram(room: &Room, origin: u64, counters: &super::ClusterCounters, message: Message) {
    let datagram: NodeDatagram = match postcard::from_bytes(&message.payload) {
        Ok(datagram) => datagram,
        Err(_) => {
            counters.malformed();
            return;
        }
    };
    if datagram.origin == origin {
        return;
    }
    let mut state = lock(&room.state);
    if !state.fresh(datagram.origin, datagram.seq) {
        counters.stale_datagram();
        return;
    }
    let from = SessionId {
        node: datagram.from_node,
        connection: datagram.from_connection,
    };
    state.deliver_datagram(from, datagram.event, datagram.payload);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_datagram_is_stale_only_against_its_own_origin() {
        let room = Room::new("r");
        let mut state = lock(&room.state);
        assert!(state.fresh(1, 10));
        // Another node far behind is not stale.
        assert!(state.fresh(2, 3));
        assert!(!state.fresh(1, 9));
        assert!(!state.fresh(1, 10));
        assert!(state.fresh(2, 4));
        assert!(state.fresh(1, 11));
    }

    #[test]
    fn an_event_is_delivered_once_and_only_after_the_last() {
        let room = Room::new("r");
        let mut state = lock(&room.state);
        state.last = 5;
        let event = |seq| StoredEvent {
            seq,
            previous: None,
            from: None,
            event: "e".into(),
            payload: Bytes::from_static(b"p"),
        };
        assert!(!state.deliver(&event(5)));
        assert!(state.deliver(&event(9)));
        assert!(!state.deliver(&event(9)));
        assert!(!state.deliver(&event(7)));
        assert_eq!(state.last, 9);
    }
}
