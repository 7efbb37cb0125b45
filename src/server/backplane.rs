//! The seam between sessions and "where a room's events are sequenced and fanned out".
//!
//! A session never touches another session: it publishes into a
//! [`Backplane`] and registers a [`RoomSubscriber`] for each room it joins.
//! [`MemoryBackplane`] is the embedded default (one process, in memory). A
//! clustered backplane (several nodes sharing rooms) is another implementation
//! of the same trait; that is why `subscribe` and `publish` return futures even
//! though the in-memory one completes at once.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Instant;

use bytes::Bytes;

use super::history::{Gap, History, HistoryLimits};
use crate::wire::{self, ErrorCode, Frame, Recovery, RecoveryFailure, RoomId};

/// Identifies one connection on a server.
pub type SessionId = u64;

/// A boxed future, so that [`Backplane`] can be used as a trait object.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a backplane operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackplaneError {
    /// No room has this id.
    #[error("unknown room id {0}")]
    UnknownRoom(RoomId),
    /// Creating the room would exceed the configured number of rooms.
    #[error("the server already has its maximum of {max} rooms")]
    TooManyRooms { max: usize },
    /// The backplane is closed for shutdown and accepts no more events.
    #[error("server shutting down")]
    ShuttingDown,
}

impl BackplaneError {
    /// The wire error code that reports this failure to a client.
    pub fn code(&self) -> ErrorCode {
        match self {
            BackplaneError::UnknownRoom(_) => ErrorCode::UnknownRoom,
            BackplaneError::TooManyRooms { .. } => ErrorCode::TooManyRooms,
            BackplaneError::ShuttingDown => ErrorCode::ShuttingDown,
        }
    }
}

/// Receives a room's events on behalf of one session. Both deliver methods
/// are called with the room locked, so they must not block: they queue, and
/// decide themselves what to do when their queue is full.
pub trait RoomSubscriber: Send + Sync {
    /// The session this subscriber belongs to.
    fn session(&self) -> SessionId;
    /// Whether the session wants to receive the events it publishes itself.
    fn echo(&self) -> bool;
    /// Queues one length-prefixed `Event` frame for the room's stream.
    fn deliver_reliable(&self, frame: &Bytes);
    /// Queues one `Datagram` frame.
    fn deliver_datagram(&self, frame: &Bytes);
    /// Whether the session wants `EventCopy` datagrams of small reliable events.
    fn copies(&self) -> bool {
        false
    }
    /// Queues the `EventCopy` datagram of a reliable event just delivered.
    fn deliver_copy(&self, copy: &EventCopy) {
        let _ = copy;
    }
}

/// A reliable event for its `EventCopy` datagram, which each subscriber
/// encodes padded to its own connection's packet size.
#[derive(Debug, Clone)]
pub struct EventCopy {
    pub room_id: RoomId,
    /// The offset of the room's event before this one.
    pub previous: u64,
    pub offset: u64,
    pub event: String,
    pub payload: Bytes,
}

/// The outcome of [`Backplane::subscribe`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribed {
    /// The room's current offset: that of its newest event, 0 if none.
    pub offset: u64,
    /// What became of `since`.
    pub recovery: Recovery,
    /// The frames to send before any live event (empty unless recovered).
    pub replay: Vec<Bytes>,
}

/// Where rooms live: naming, sequencing, history and fan-out.
pub trait Backplane: Send + Sync + 'static {
    /// Identifies this backplane's history: it changes when history is lost
    /// (for the in-memory backplane, on every start).
    fn epoch(&self) -> u64;
    /// The id of the room called `name`, creating the room if needed.
    fn resolve(&self, name: &str) -> Result<RoomId, BackplaneError>;
    /// The name of a room.
    fn room_name(&self, room: RoomId) -> Option<Arc<str>>;
    /// Adds a subscriber (replacing any earlier one of the same session).
    /// With `since`, also returns the history after that offset, taken in
    /// the same step, so that replay followed by live events has no gap and
    /// no duplicate.
    fn subscribe(
        &self,
        room: RoomId,
        subscriber: Arc<dyn RoomSubscriber>,
        since: Option<u64>,
    ) -> BoxFuture<'_, Result<Subscribed, BackplaneError>>;
    /// Removes the session's subscriber from a room; once this returns, no
    /// more events of that room are delivered to it.
    fn unsubscribe(&self, room: RoomId, session: SessionId);
    /// Assigns the next offset, then fans the event out to every subscriber
    /// (except the publisher unless it asked for echo). Returns the offset.
    fn publish(
        &self,
        room: RoomId,
        from: SessionId,
        event: String,
        payload: Bytes,
    ) -> BoxFuture<'_, Result<u64, BackplaneError>>;
    /// [`Backplane::publish`] done at once, for the datagram copy of a
    /// publish (which must not wait); `None` when this backplane cannot
    /// publish without waiting (the stream frame then publishes the event).
    fn publish_now(
        &self,
        room: RoomId,
        from: SessionId,
        event: String,
        payload: Bytes,
    ) -> Option<Result<u64, BackplaneError>> {
        let _ = (room, from, event, payload);
        None
    }
    /// Assigns the next datagram sequence number and fans the datagram out.
    fn publish_datagram(
        &self,
        room: RoomId,
        from: SessionId,
        event: String,
        payload: Bytes,
    ) -> Result<u64, BackplaneError>;
    /// Stops accepting events: every publish after this returns
    /// `ShuttingDown`. Events already accepted have been handed to subscribers.
    fn close(&self);
}

/// The embedded, in-process backplane.
///
/// It holds at most `max_rooms` rooms. When a new room would exceed that,
/// rooms nobody is subscribed to are evicted first, so that no client can
/// use the room table up for everyone by naming many rooms. Room ids are
/// never reused; an evicted room that is named again starts over with a new
/// id and offsets from 1.
pub struct MemoryBackplane {
    registry: RwLock<Registry>,
    max_rooms: usize,
    history: HistoryLimits,
    epoch: u64,
    closed: AtomicBool,
}

#[derive(Default)]
struct Registry {
    names: HashMap<Arc<str>, RoomId>,
    rooms: HashMap<RoomId, Arc<Room>>,
    next_id: RoomId,
}

struct Room {
    name: Arc<str>,
    state: Mutex<RoomState>,
}

struct RoomState {
    last_offset: u64,
    history: History,
    /// When the room last had an event, for choosing what to evict.
    last_activity: Instant,
    last_datagram_seq: u64,
    subscribers: Vec<Arc<dyn RoomSubscriber>>,
    /// Set (under this lock) when the room leaves the registry, so that a
    /// subscribe or publish that raced with the eviction fails as
    /// `UnknownRoom` instead of reaching a room nobody can see.
    evicted: bool,
}

impl MemoryBackplane {
    /// A backplane that holds at most `max_rooms` rooms, each keeping the
    /// history `history` allows. Its epoch is random: history does not
    /// survive the process.
    pub fn new(max_rooms: usize, history: HistoryLimits) -> Self {
        MemoryBackplane {
            registry: RwLock::new(Registry::default()),
            max_rooms,
            history,
            epoch: rand::random::<u64>().max(1),
            closed: AtomicBool::new(false),
        }
    }

    /// How many rooms exist now.
    pub fn room_count(&self) -> usize {
        read(&self.registry).rooms.len()
    }

    fn room(&self, id: RoomId) -> Result<Arc<Room>, BackplaneError> {
        read(&self.registry)
            .rooms
            .get(&id)
            .cloned()
            .ok_or(BackplaneError::UnknownRoom(id))
    }

    /// Locks a room's state, failing if it has been evicted meanwhile.
    fn live_state(room: &Room, id: RoomId) -> Result<MutexGuard<'_, RoomState>, BackplaneError> {
        let state = lock(&room.state);
        if state.evicted {
            return Err(BackplaneError::UnknownRoom(id));
        }
        Ok(state)
    }

    /// Sequences one event of `room` and fans it out, all under the room
    /// lock so that sequence order is delivery order. `kind` picks the
    /// counter, the encoding and the subscriber queue.
    fn sequence_and_fan_out(
        &self,
        room: RoomId,
        from: SessionId,
        kind: Kind,
        event: String,
        payload: Bytes,
    ) -> Result<u64, BackplaneError> {
        let room_id = room;
        let room = self.room(room_id)?;
        let mut state = Self::live_state(&room, room_id)?;
        // Checked under the room lock: once `close` has returned and a
        // session has unsubscribed (which takes this lock), no event can
        // be accepted that that session would miss.
        if self.closed.load(Ordering::SeqCst) {
            return Err(BackplaneError::ShuttingDown);
        }
        let mut copy = None;
        let (number, frame) = match kind {
            Kind::Reliable => {
                let previous = state.last_offset;
                state.last_offset += 1;
                let offset = state.last_offset;
                // Encoded once, and only if someone wants it.
                if event.len() + payload.len() <= wire::MAX_COPY_BYTES
                    && state.subscribers.iter().any(|s| s.copies())
                {
                    copy = Some(EventCopy {
                        room_id,
                        previous,
                        offset,
                        event: event.clone(),
                        payload: payload.clone(),
                    });
                }
                let frame = wire::encode_framed(&Frame::Event {
                    offset,
                    event,
                    payload,
                });
                let now = Instant::now();
                state.last_activity = now;
                state.history.push(offset, frame.clone(), now);
                (offset, frame)
            }
            Kind::Datagram => {
                state.last_datagram_seq += 1;
                let seq = state.last_datagram_seq;
                let frame = wire::encode(&Frame::Datagram {
                    room_id,
                    seq,
                    event,
                    payload,
                });
                (seq, frame)
            }
        };
        for sub in state.subscribers.iter() {
            if sub.session() == from && !sub.echo() {
                continue;
            }
            match kind {
                Kind::Reliable => {
                    sub.deliver_reliable(&frame);
                    if let Some(copy) = copy.as_ref().filter(|_| sub.copies()) {
                        sub.deliver_copy(copy);
                    }
                }
                Kind::Datagram => sub.deliver_datagram(&frame),
            }
        }
        Ok(number)
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Reliable,
    Datagram,
}

impl Backplane for MemoryBackplane {
    fn epoch(&self) -> u64 {
        self.epoch
    }

    fn resolve(&self, name: &str) -> Result<RoomId, BackplaneError> {
        if let Some(id) = read(&self.registry).names.get(name) {
            return Ok(*id);
        }
        let mut registry = write(&self.registry);
        if let Some(id) = registry.names.get(name) {
            return Ok(*id);
        }
        if registry.rooms.len() >= self.max_rooms {
            registry.evict_unsubscribed(self.max_rooms);
        }
        let too_many = BackplaneError::TooManyRooms {
            max: self.max_rooms,
        };
        if registry.rooms.len() >= self.max_rooms {
            return Err(too_many);
        }
        let id = registry.next_id;
        registry.next_id = id.checked_add(1).ok_or(too_many)?;
        let name: Arc<str> = Arc::from(name);
        registry.rooms.insert(
            id,
            Arc::new(Room {
                name: name.clone(),
                state: Mutex::new(RoomState {
                    last_offset: 0,
                    history: History::new(self.history),
                    last_activity: Instant::now(),
                    last_datagram_seq: 0,
                    subscribers: Vec::new(),
                    evicted: false,
                }),
            }),
        );
        registry.names.insert(name, id);
        Ok(id)
    }

    fn room_name(&self, room: RoomId) -> Option<Arc<str>> {
        self.room(room).ok().map(|r| r.name.clone())
    }

    fn subscribe(
        &self,
        room: RoomId,
        subscriber: Arc<dyn RoomSubscriber>,
        since: Option<u64>,
    ) -> BoxFuture<'_, Result<Subscribed, BackplaneError>> {
        let result = self.room(room).and_then(|r| {
            let mut state = Self::live_state(&r, room)?;
            let session = subscriber.session();
            state.subscribers.retain(|s| s.session() != session);
            state.subscribers.push(subscriber);
            let offset = state.last_offset;
            let (recovery, replay) = match since {
                None => (Recovery::Live, Vec::new()),
                Some(since) => match state.history.since(since, offset, Instant::now()) {
                    Ok(replay) => (
                        Recovery::Recovered {
                            replayed: replay.len() as u64,
                        },
                        replay,
                    ),
                    Err(gap) => {
                        let reason = match gap {
                            Gap::TooShort => RecoveryFailure::HistoryTooShort,
                            Gap::UnknownPosition => RecoveryFailure::UnknownPosition,
                        };
                        (Recovery::NotRecovered { reason }, Vec::new())
                    }
                },
            };
            Ok(Subscribed {
                offset,
                recovery,
                replay,
            })
        });
        Box::pin(std::future::ready(result))
    }

    fn unsubscribe(&self, room: RoomId, session: SessionId) {
        if let Ok(room) = self.room(room) {
            lock(&room.state)
                .subscribers
                .retain(|s| s.session() != session);
        }
    }

    fn publish(
        &self,
        room: RoomId,
        from: SessionId,
        event: String,
        payload: Bytes,
    ) -> BoxFuture<'_, Result<u64, BackplaneError>> {
        Box::pin(std::future::ready(self.sequence_and_fan_out(
            room,
            from,
            Kind::Reliable,
            event,
            payload,
        )))
    }

    fn publish_now(
        &self,
        room: RoomId,
        from: SessionId,
        event: String,
        payload: Bytes,
    ) -> Option<Result<u64, BackplaneError>> {
        Some(self.sequence_and_fan_out(room, from, Kind::Reliable, event, payload))
    }

    fn publish_datagram(
        &self,
        room: RoomId,
        from: SessionId,
        event: String,
        payload: Bytes,
    ) -> Result<u64, BackplaneError> {
        self.sequence_and_fan_out(room, from, Kind::Datagram, event, payload)
    }

    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        // Take every room lock once so that a publish already past its
        // check has finished its fan-out when `close` returns.
        for room in read(&self.registry).rooms.values() {
            drop(lock(&room.state));
        }
    }
}

impl Registry {
    /// Makes room in a full registry. Rooms with subscribers always stay.
    /// Unsubscribed rooms whose history is empty go first; if that frees
    /// nothing, the least recently active eighth of the unsubscribed rooms
    /// goes, history and all (a client that later asks to recover from one
    /// is told `UnknownPosition`, never silently served nothing).
    fn evict_unsubscribed(&mut self, max_rooms: usize) {
        let now = Instant::now();
        let mut idle = Vec::new();
        for (id, room) in &self.rooms {
            let mut state = lock(&room.state);
            state.history.trim(now);
            if state.subscribers.is_empty() {
                idle.push((state.history.is_empty(), state.last_activity, *id));
            }
        }
        if idle.is_empty() {
            return;
        }
        let empty = idle.iter().filter(|(empty, ..)| *empty).count();
        let count = if empty > 0 {
            empty
        } else {
            (max_rooms / 8).clamp(1, idle.len())
        };
        // Empty histories first, then the least recently active.
        idle.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        for (_, _, id) in idle.into_iter().take(count) {
            if let Some(room) = self.rooms.remove(&id) {
                lock(&room.state).evicted = true;
                self.names.remove(&room.name);
            }
        }
    }
}

// A poisoned lock only means another thread panicked while holding it; the
// room state is still consistent (every mutation is a single push/retain/add).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}
fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::FrameDecoder;
    use std::time::Duration;

    const NO_HISTORY: HistoryLimits = HistoryLimits {
        max_events: 0,
        max_age: Duration::ZERO,
        max_bytes: 0,
    };

    fn offsets_of(frames: &[Bytes]) -> Vec<u64> {
        let mut dec = FrameDecoder::new(1 << 20);
        for f in frames {
            dec.extend(f);
        }
        let mut out = Vec::new();
        while let Some(Frame::Event { offset, .. }) = dec.next_frame().unwrap() {
            out.push(offset);
        }
        out
    }

    #[test]
    fn subscribing_since_a_position_replays_then_goes_live() {
        let bp = MemoryBackplane::new(10, HistoryLimits::default());
        let room = bp.resolve("r").unwrap();
        for _ in 0..5 {
            now(bp.publish(room, 9, "e".into(), Bytes::new())).unwrap();
        }
        let sub = Probe::new(1, false);
        let got = now(bp.subscribe(room, sub.clone(), Some(2))).unwrap();
        assert_eq!(got.offset, 5);
        assert_eq!(got.recovery, Recovery::Recovered { replayed: 3 });
        assert_eq!(offsets_of(&got.replay), vec![3, 4, 5]);
        now(bp.publish(room, 9, "e".into(), Bytes::new())).unwrap();
        assert_eq!(sub.offsets(), vec![6], "live events follow the replay");
        let ahead = now(bp.subscribe(room, Probe::new(2, false), Some(99))).unwrap();
        assert_eq!(
            ahead.recovery,
            Recovery::NotRecovered {
                reason: RecoveryFailure::UnknownPosition
            }
        );
        let live = now(bp.subscribe(room, Probe::new(3, false), None)).unwrap();
        assert_eq!((live.recovery, live.replay.len()), (Recovery::Live, 0));
    }

    #[test]
    fn a_history_shorter_than_the_gap_is_reported() {
        let limits = HistoryLimits {
            max_events: 2,
            ..HistoryLimits::default()
        };
        let bp = MemoryBackplane::new(10, limits);
        let room = bp.resolve("r").unwrap();
        for _ in 0..5 {
            now(bp.publish(room, 9, "e".into(), Bytes::new())).unwrap();
        }
        let got = now(bp.subscribe(room, Probe::new(1, false), Some(1))).unwrap();
        assert_eq!(
            got.recovery,
            Recovery::NotRecovered {
                reason: RecoveryFailure::HistoryTooShort
            }
        );
        assert!(got.replay.is_empty());
        assert_ne!(bp.epoch(), 0);
    }

    #[test]
    fn idle_rooms_without_history_go_before_the_least_recently_active() {
        let bp = MemoryBackplane::new(3, HistoryLimits::default());
        let old = bp.resolve("old").unwrap();
        now(bp.publish(old, 9, "e".into(), Bytes::new())).unwrap();
        let recent = bp.resolve("recent").unwrap();
        now(bp.publish(recent, 9, "e".into(), Bytes::new())).unwrap();
        let empty = bp.resolve("empty").unwrap();
        let fourth = bp.resolve("fourth").unwrap();
        now(bp.publish(fourth, 9, "e".into(), Bytes::new())).unwrap();
        assert_eq!(bp.room_name(empty), None, "no history: evicted first");
        assert!(bp.room_name(old).is_some() && bp.room_name(recent).is_some());
        bp.resolve("fifth").unwrap();
        assert_eq!(bp.room_name(old), None, "then the least recently active");
        assert!(bp.room_name(recent).is_some());
    }

    struct Probe {
        session: SessionId,
        echo: bool,
        frames: Mutex<Vec<Bytes>>,
        datagrams: Mutex<Vec<Bytes>>,
    }

    impl Probe {
        fn new(session: SessionId, echo: bool) -> Arc<Probe> {
            Arc::new(Probe {
                session,
                echo,
                frames: Mutex::new(Vec::new()),
                datagrams: Mutex::new(Vec::new()),
            })
        }
        fn offsets(&self) -> Vec<u64> {
            let mut dec = FrameDecoder::new(1 << 20);
            for f in self.frames.lock().unwrap().iter() {
                dec.extend(f);
            }
            let mut out = Vec::new();
            while let Some(Frame::Event { offset, .. }) = dec.next_frame().unwrap() {
                out.push(offset);
            }
            out
        }
    }

    impl RoomSubscriber for Probe {
        fn session(&self) -> SessionId {
            self.session
        }
        fn echo(&self) -> bool {
            self.echo
        }
        fn deliver_reliable(&self, frame: &Bytes) {
            self.frames.lock().unwrap().push(frame.clone());
        }
        fn deliver_datagram(&self, frame: &Bytes) {
            self.datagrams.lock().unwrap().push(frame.clone());
        }
    }

    fn now<T>(f: BoxFuture<'_, T>) -> T {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let mut f = f;
        match f.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(v) => v,
            std::task::Poll::Pending => panic!("memory backplane future was pending"),
        }
    }

    #[test]
    fn offsets_increase_per_room_and_rooms_are_independent() {
        let bp = MemoryBackplane::new(10, HistoryLimits::default());
        let a = bp.resolve("a").unwrap();
        let b = bp.resolve("b").unwrap();
        assert_eq!(bp.resolve("a").unwrap(), a);
        let sub = Probe::new(1, false);
        assert_eq!(now(bp.subscribe(a, sub.clone(), None)).unwrap().offset, 0);
        for _ in 0..3 {
            now(bp.publish(a, 2, "e".into(), Bytes::new())).unwrap();
        }
        assert_eq!(now(bp.publish(b, 2, "e".into(), Bytes::new())).unwrap(), 1);
        assert_eq!(sub.offsets(), vec![1, 2, 3]);
        assert_eq!(bp.room_name(b).as_deref(), Some("b"));
    }

    #[test]
    fn publisher_is_skipped_unless_echo() {
        let bp = MemoryBackplane::new(10, HistoryLimits::default());
        let room = bp.resolve("r").unwrap();
        let quiet = Probe::new(1, false);
        let echoing = Probe::new(2, true);
        now(bp.subscribe(room, quiet.clone(), None)).unwrap();
        now(bp.subscribe(room, echoing.clone(), None)).unwrap();
        now(bp.publish(room, 1, "e".into(), Bytes::new())).unwrap();
        now(bp.publish(room, 2, "e".into(), Bytes::new())).unwrap();
        bp.publish_datagram(room, 1, "d".into(), Bytes::new())
            .unwrap();
        assert_eq!(quiet.offsets(), vec![2]);
        assert_eq!(echoing.offsets(), vec![1, 2]);
        assert_eq!(quiet.datagrams.lock().unwrap().len(), 0);
        assert_eq!(echoing.datagrams.lock().unwrap().len(), 1);
    }

    #[test]
    fn unsubscribe_stops_delivery_and_close_refuses_events() {
        let bp = MemoryBackplane::new(10, HistoryLimits::default());
        let room = bp.resolve("r").unwrap();
        let sub = Probe::new(1, false);
        now(bp.subscribe(room, sub.clone(), None)).unwrap();
        now(bp.publish(room, 9, "e".into(), Bytes::new())).unwrap();
        bp.unsubscribe(room, 1);
        now(bp.publish(room, 9, "e".into(), Bytes::new())).unwrap();
        assert_eq!(sub.offsets(), vec![1]);
        bp.close();
        assert_eq!(
            now(bp.publish(room, 9, "e".into(), Bytes::new())),
            Err(BackplaneError::ShuttingDown)
        );
    }

    #[test]
    fn a_full_registry_evicts_unsubscribed_rooms_and_never_reuses_ids() {
        let bp = MemoryBackplane::new(2, NO_HISTORY);
        let kept = bp.resolve("kept").unwrap();
        now(bp.subscribe(kept, Probe::new(1, false), None)).unwrap();
        let idle = bp.resolve("idle").unwrap();
        // Full: naming a third room evicts the idle one, not the kept one.
        let third = bp.resolve("third").unwrap();
        assert_eq!(bp.room_count(), 2);
        assert!(third > idle);
        assert_eq!(bp.resolve("kept").unwrap(), kept);
        assert_eq!(
            now(bp.publish(idle, 9, "e".into(), Bytes::new())),
            Err(BackplaneError::UnknownRoom(idle))
        );
        // Named again, the evicted room comes back with a new id.
        now(bp.subscribe(third, Probe::new(2, false), None)).unwrap();
        assert_eq!(
            bp.resolve("idle"),
            Err(BackplaneError::TooManyRooms { max: 2 }),
            "every room is subscribed: nothing to evict"
        );
    }

    #[test]
    fn room_limit_and_unknown_room() {
        let bp = MemoryBackplane::new(1, NO_HISTORY);
        let one = bp.resolve("one").unwrap();
        now(bp.subscribe(one, Probe::new(1, false), None)).unwrap();
        assert_eq!(
            bp.resolve("two"),
            Err(BackplaneError::TooManyRooms { max: 1 })
        );
        assert_eq!(
            bp.publish_datagram(7, 1, "d".into(), Bytes::new()),
            Err(BackplaneError::UnknownRoom(7))
        );
    }
}
