//! The embedded backplane: every room of one server process, over a
//! history store (a data directory by default, or memory).
//!
//! Each room is a mutex around its offset counter, its history handle and
//! its subscribers. Publishing takes the room lock, assigns the offset,
//! writes the event to history (for a durable store, the write has
//! returned before anyone sees the event), and hands the encoded frame to
//! every subscriber: sequence order is storage order is delivery order.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;

use super::idle_rooms::IdleRooms;
use super::{
    Backplane, BackplaneError, BoxFuture, EventCopy, PublishRequest, RoomSubscriber, SessionId,
    Subscribed,
};
use crate::server::history::{self, Gap, HistoryStore, HistoryUsage, Record, RoomHistory};
use crate::sync::{lock, read, write};
use crate::wire::{self, DatagramTemplate, Frame, Recovery, RecoveryFailure};

/// The embedded, in-process backplane.
///
/// It holds at most `max_rooms` rooms. When a new room would exceed that,
/// the room nobody has been subscribed to for the longest is evicted (kept
/// in an ordered set, so this costs O(log n), never a scan), so that no
/// client can use the room table up for everyone by naming many rooms; if
/// every room has a subscriber, the new name is refused at once. An evicted room
/// named again continues from its stored history with a durable store; with
/// a memory store its events are gone but its offsets go on above the old
/// ones, so a client's old position is answered `HistoryTooShort`, never
/// served the new events as if they followed it.
pub struct EmbeddedBackplane {
    registry: RwLock<HashMap<Arc<str>, Arc<Room>>>,
    /// The rooms of the registry nobody is subscribed to. Locked after a
    /// room's state (subscribe, unsubscribe) or after the registry
    /// (eviction), never while waiting for either.
    idle: Mutex<IdleRooms>,
    store: Arc<dyn HistoryStore>,
    max_rooms: usize,
    closed: AtomicBool,
}

struct Room {
    name: Arc<str>,
    state: Mutex<RoomState>,
}

struct RoomState {
    last_offset: u64,
    history: Box<dyn RoomHistory>,
    last_datagram_seq: u64,
    subscribers: Vec<Arc<dyn RoomSubscriber>>,
    /// Set (under this lock) when the room leaves the registry, so that a
    /// subscribe or publish that raced with the eviction names it again
    /// instead of reaching a room nobody can see.
    evicted: bool,
}

impl EmbeddedBackplane {
    /// A backplane that holds at most `max_rooms` rooms, keeping their
    /// history in `store`.
    pub fn new(max_rooms: usize, store: Arc<dyn HistoryStore>) -> Self {
        EmbeddedBackplane {
            registry: RwLock::new(HashMap::new()),
            idle: Mutex::new(IdleRooms::default()),
            store,
            max_rooms,
            closed: AtomicBool::new(false),
        }
    }

    /// How many rooms are held now.
    pub fn room_count(&self) -> usize {
        read(&self.registry).len()
    }

    /// The room called `name`, created (or loaded from the store) if needed.
    fn room(&self, name: &str) -> Result<Arc<Room>, BackplaneError> {
        if let Some(room) = read(&self.registry).get(name) {
            return Ok(room.clone());
        }
        let mut registry = write(&self.registry);
        if let Some(room) = registry.get(name) {
            return Ok(room.clone());
        }
        while registry.len() >= self.max_rooms {
            let Some(idle) = lock(&self.idle).pop_oldest() else {
                return Err(BackplaneError::TooManyRooms {
                    max: self.max_rooms,
                });
            };
            evict(&mut registry, &idle);
        }
        let history = self
            .store
            .open_room(name)
            .map_err(|e| BackplaneError::Unavailable(e.to_string()))?;
        let name: Arc<str> = Arc::from(name);
        let room = Arc::new(Room {
            name: name.clone(),
            state: Mutex::new(RoomState {
                last_offset: history.last_offset(),
                history,
                last_datagram_seq: 0,
                subscribers: Vec::new(),
                evicted: false,
            }),
        });
        lock(&self.idle).insert(name.clone());
        registry.insert(name, room.clone());
        Ok(room)
    }

    /// Runs `f` on the live state of room `name`: a room evicted between
    /// the lookup and the lock is named again, once (a second eviction in
    /// that window would need the table to refill meanwhile; it is reported
    /// as a full table).
    fn with_room<T>(
        &self,
        name: &str,
        mut f: impl FnMut(&mut RoomState) -> Result<T, BackplaneError>,
    ) -> Result<T, BackplaneError> {
        for _ in 0..2 {
            let room = self.room(name)?;
            let mut state = lock(&room.state);
            if !state.evicted {
                return f(&mut state);
            }
        }
        Err(BackplaneError::TooManyRooms {
            max: self.max_rooms,
        })
    }

    /// Sequences, stores and fans out one reliable event of `room`, all
    /// under the room lock so that sequence order is delivery order.
    fn publish_reliable(&self, request: PublishRequest<'_>) -> Result<u64, BackplaneError> {
        let PublishRequest {
            room,
            from,
            publisher,
            event,
            payload,
        } = request;
        self.with_room(room, |state| {
            // Checked under the room lock: once `close` has returned and a
            // session has unsubscribed (which takes this lock), no event can
            // be accepted that that session would miss.
            if self.closed.load(Ordering::SeqCst) {
                return Err(BackplaneError::ShuttingDown);
            }
            let previous = state.last_offset;
            let offset = previous + 1;
            let frame = wire::encode_framed(&Frame::Event {
                offset,
                event: event.clone(),
                payload: payload.clone(),
            });
            // Stored before anyone sees it: a crash after this loses nothing
            // that was acknowledged or delivered.
            state
                .history
                .append(Record {
                    offset,
                    at_ms: history::now_ms(),
                    publisher,
                    frame: frame.clone(),
                })
                .map_err(|e| {
                    tracing::error!(room, "cannot store event: {e}");
                    BackplaneError::Unavailable(e.to_string())
                })?;
            state.last_offset = offset;
            // Encoded once, and only if someone wants it.
            let copy = (event.len() + payload.len() <= wire::MAX_COPY_BYTES
                && state.subscribers.iter().any(|s| s.copies()))
            .then(|| EventCopy {
                previous,
                offset,
                event: event.clone(),
                payload: payload.clone(),
            });
            for sub in state.subscribers.iter() {
                if sub.session() == from && !sub.echo() {
                    continue;
                }
                sub.deliver_reliable(&frame);
                if let Some(copy) = copy.as_ref().filter(|_| sub.copies()) {
                    sub.deliver_copy(copy);
                }
            }
            Ok(offset)
        })
    }
}

impl Backplane for EmbeddedBackplane {
    fn epoch(&self) -> u64 {
        self.store.epoch()
    }

    fn open(&self, room: &str) -> Result<(), BackplaneError> {
        self.room(room).map(|_| ())
    }

    fn subscribe(
        &self,
        room: &str,
        subscriber: Arc<dyn RoomSubscriber>,
        since: Option<u64>,
    ) -> BoxFuture<'_, Result<Subscribed, BackplaneError>> {
        let result = self.with_room(room, |state| {
            let offset = state.last_offset;
            let (recovery, replay) = match since {
                None => (Recovery::Live, None),
                Some(since) => match state.history.replay(since, history::now_ms()) {
                    Ok(Ok(replay)) => (
                        Recovery::Recovered {
                            replayed: replay.count,
                        },
                        Some(replay),
                    ),
                    Ok(Err(gap)) => {
                        let reason = match gap {
                            Gap::TooShort => RecoveryFailure::HistoryTooShort,
                            Gap::Budget => RecoveryFailure::HistoryBudget,
                            Gap::UnknownPosition => RecoveryFailure::UnknownPosition,
                        };
                        (Recovery::NotRecovered { reason }, None)
                    }
                    Err(e) => {
                        // Unreadable history is history the client cannot
                        // have: say so, and deliver live from here.
                        tracing::error!(room, "cannot read history: {e}");
                        let reason = RecoveryFailure::HistoryTooShort;
                        (Recovery::NotRecovered { reason }, None)
                    }
                },
            };
            let session = subscriber.session();
            state.subscribers.retain(|s| s.session() != session);
            state.subscribers.push(subscriber.clone());
            lock(&self.idle).remove(room);
            Ok(Subscribed {
                offset,
                recovery,
                replay,
            })
        });
        Box::pin(std::future::ready(result))
    }

    fn unsubscribe(&self, room: &str, session: SessionId) {
        let room = read(&self.registry).get(room).cloned();
        if let Some(room) = room {
            let mut state = lock(&room.state);
            state.subscribers.retain(|s| s.session() != session);
            if state.subscribers.is_empty() && !state.evicted {
                lock(&self.idle).insert(room.name.clone());
            }
        }
    }

    fn publish(&self, request: PublishRequest<'_>) -> BoxFuture<'_, Result<u64, BackplaneError>> {
        let result = self.publish_reliable(request);
        Box::pin(std::future::ready(result))
    }

    fn publish_now(&self, request: PublishRequest<'_>) -> Option<Result<u64, BackplaneError>> {
        Some(self.publish_reliable(request))
    }

    fn publish_datagram(
        &self,
        room: &str,
        from: SessionId,
        event: String,
        payload: Bytes,
    ) -> Result<u64, BackplaneError> {
        let mut payload = Some((event, payload));
        self.with_room(room, |state| {
            if self.closed.load(Ordering::SeqCst) {
                return Err(BackplaneError::ShuttingDown);
            }
            let Some((event, payload)) = payload.take() else {
                return Err(BackplaneError::ShuttingDown);
            };
            state.last_datagram_seq += 1;
            let seq = state.last_datagram_seq;
            // Encoded once; each subscriber only puts in its own room id.
            let datagram = DatagramTemplate::new(seq, event, payload);
            for sub in state.subscribers.iter() {
                if sub.session() == from && !sub.echo() {
                    continue;
                }
                sub.deliver_datagram(&datagram);
            }
            Ok(seq)
        })
    }

    fn publishes_of(
        &self,
        room: &str,
        session: u64,
    ) -> BoxFuture<'_, Result<Vec<(u64, u64)>, BackplaneError>> {
        let result = self.with_room(room, |state| {
            state
                .history
                .publishes_of(session)
                .map_err(|e| BackplaneError::Unavailable(e.to_string()))
        });
        Box::pin(std::future::ready(result))
    }

    fn maintain(&self) {
        let now = history::now_ms();
        let rooms: Vec<Arc<Room>> = read(&self.registry).values().cloned().collect();
        for room in rooms {
            lock(&room.state).history.trim(now);
        }
        self.store.maintain(now);
    }

    fn sync(&self) {
        self.store.sync();
    }

    fn history_usage(&self) -> HistoryUsage {
        self.store.usage()
    }

    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        // Take every room lock once so that a publish already past its
        // check has finished its fan-out when `close` returns.
        let rooms: Vec<Arc<Room>> = read(&self.registry).values().cloned().collect();
        for room in rooms {
            drop(lock(&room.state));
        }
    }
}

/// Evicts room `name` if it is still in the registry with nobody
/// subscribed: checked and marked in one step under the room's lock, so a
/// subscribe that found the room a moment before never ends up in a room
/// nobody can reach.
fn evict(registry: &mut HashMap<Arc<str>, Arc<Room>>, name: &str) {
    let Some(room) = registry.get(name).cloned() else {
        return;
    };
    let mut state = lock(&room.state);
    if state.subscribers.is_empty() {
        state.evicted = true;
        registry.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::history::{HistoryLimits, MemoryStore, Publisher, Replay, RoomLimits};
    use crate::wire::FrameDecoder;
    use std::time::Duration;

    const NO_HISTORY: HistoryLimits = HistoryLimits {
        max_events: 0,
        max_age: Duration::ZERO,
        max_bytes: 0,
    };

    fn backplane(max_rooms: usize, limits: HistoryLimits) -> EmbeddedBackplane {
        EmbeddedBackplane::new(max_rooms, Arc::new(MemoryStore::new(limits)))
    }

    fn session(connection: u64) -> SessionId {
        SessionId {
            node: 1,
            connection,
        }
    }

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

    fn replayed(replay: Option<Replay>) -> Vec<u64> {
        let Some(mut replay) = replay else {
            return Vec::new();
        };
        let mut frames = Vec::new();
        loop {
            let batch = replay.source.next_batch(1 << 16).unwrap();
            if batch.is_empty() {
                break;
            }
            frames.extend(batch);
        }
        assert_eq!(frames.len() as u64, replay.count);
        offsets_of(&frames)
    }

    fn publish(bp: &EmbeddedBackplane, room: &str, from: u64) -> Result<u64, BackplaneError> {
        now(bp.publish(PublishRequest {
            room,
            from: session(from),
            publisher: Publisher::default(),
            event: "e".into(),
            payload: Bytes::new(),
        }))
    }

    #[test]
    fn subscribing_since_a_position_replays_then_goes_live() {
        let bp = backplane(10, HistoryLimits::default());
        for _ in 0..5 {
            publish(&bp, "r", 9).unwrap();
        }
        let sub = Probe::new(1, false);
        let got = now(bp.subscribe("r", sub.clone(), Some(2))).unwrap();
        assert_eq!(got.offset, 5);
        assert_eq!(got.recovery, Recovery::Recovered { replayed: 3 });
        assert_eq!(replayed(got.replay), vec![3, 4, 5]);
        publish(&bp, "r", 9).unwrap();
        assert_eq!(sub.offsets(), vec![6], "live events follow the replay");
        let ahead = now(bp.subscribe("r", Probe::new(2, false), Some(99))).unwrap();
        assert_eq!(
            ahead.recovery,
            Recovery::NotRecovered {
                reason: RecoveryFailure::UnknownPosition
            }
        );
        let live = now(bp.subscribe("r", Probe::new(3, false), None)).unwrap();
        assert_eq!(live.recovery, Recovery::Live);
        assert!(live.replay.is_none());
    }

    #[test]
    fn a_history_shorter_than_the_gap_is_reported() {
        let limits = HistoryLimits {
            max_events: 2,
            ..HistoryLimits::default()
        };
        let bp = backplane(10, limits);
        for _ in 0..5 {
            publish(&bp, "r", 9).unwrap();
        }
        let got = now(bp.subscribe("r", Probe::new(1, false), Some(1))).unwrap();
        assert_eq!(
            got.recovery,
            Recovery::NotRecovered {
                reason: RecoveryFailure::HistoryTooShort
            }
        );
        assert!(got.replay.is_none());
        assert_ne!(bp.epoch(), 0);
    }

    #[test]
    fn a_namespace_without_history_recovers_only_an_up_to_date_client() {
        let limits = RoomLimits::new(
            HistoryLimits::default(),
            [("live".to_string(), NO_HISTORY)].into(),
        );
        let bp = EmbeddedBackplane::new(10, Arc::new(MemoryStore::new(limits)));
        for room in ["live.x", "chat.x"] {
            for _ in 0..3 {
                publish(&bp, room, 9).unwrap();
            }
        }
        let join = |room, connection, since| {
            let got = now(bp.subscribe(room, Probe::new(connection, false), Some(since)));
            got.unwrap().recovery
        };
        assert_eq!(join("live.x", 1, 3), Recovery::Recovered { replayed: 0 });
        publish(&bp, "live.x", 9).unwrap();
        let reason = RecoveryFailure::HistoryTooShort;
        assert_eq!(join("live.x", 2, 3), Recovery::NotRecovered { reason });
        assert_eq!(join("chat.x", 3, 0), Recovery::Recovered { replayed: 3 });
    }

    #[test]
    fn history_dropped_for_the_budget_is_reported_as_such() {
        let store = MemoryStore::new(HistoryLimits::default()).with_budget(200);
        let bp = EmbeddedBackplane::new(10, Arc::new(store));
        for _ in 0..20 {
            publish(&bp, "r", 9).unwrap();
        }
        let usage = bp.history_usage();
        assert!(usage.bytes <= 200, "{usage:?}");
        assert!(usage.budget_drops > 0, "{usage:?}");
        let got = now(bp.subscribe("r", Probe::new(1, false), Some(1))).unwrap();
        assert_eq!(
            got.recovery,
            Recovery::NotRecovered {
                reason: RecoveryFailure::HistoryBudget
            }
        );
        let recent = now(bp.subscribe("r", Probe::new(2, false), Some(19))).unwrap();
        assert_eq!(recent.recovery, Recovery::Recovered { replayed: 1 });
    }

    #[test]
    fn stored_publishers_are_found_again() {
        let bp = backplane(10, HistoryLimits::default());
        let me = Publisher { session: 42, id: 7 };
        let at = now(bp.publish(PublishRequest {
            room: "r",
            from: session(1),
            publisher: me,
            event: "e".into(),
            payload: Bytes::new(),
        }))
        .unwrap();
        publish(&bp, "r", 2).unwrap();
        assert_eq!(now(bp.publishes_of("r", 42)).unwrap(), vec![(7, at)]);
        assert!(now(bp.publishes_of("r", 43)).unwrap().is_empty());
    }

    #[test]
    fn the_room_idle_longest_goes_first() {
        let bp = backplane(3, HistoryLimits::default());
        let sub = Probe::new(1, false);
        now(bp.subscribe("a", sub, None)).unwrap();
        publish(&bp, "b", 9).unwrap();
        publish(&bp, "c", 9).unwrap();
        // "a" has been idle since now: after "b" and "c".
        bp.unsubscribe("a", session(1));
        let held = |name: &str| read(&bp.registry).contains_key(name);
        bp.open("d").unwrap();
        assert!(!held("b"), "idle the longest");
        assert!(held("a") && held("c"));
        bp.open("e").unwrap();
        assert!(!held("c"));
        assert!(held("a"));
        // A memory room named again has lost its events, not its place.
        assert_eq!(publish(&bp, "b", 9), Ok(2));
        let late = now(bp.subscribe("b", Probe::new(2, false), Some(0))).unwrap();
        assert_eq!(
            late.recovery,
            Recovery::NotRecovered {
                reason: RecoveryFailure::HistoryTooShort
            },
            "event 1 is gone, and the client is told"
        );
    }

    #[test]
    fn a_room_that_gains_a_subscriber_before_its_eviction_stays() {
        let bp = backplane(2, NO_HISTORY);
        bp.open("a").unwrap();
        bp.open("b").unwrap();
        // Eviction picked "a", but a subscribe that had found the room got
        // its lock first.
        let a = bp.room("a").unwrap();
        lock(&a.state).subscribers.push(Probe::new(1, false));
        evict(&mut write(&bp.registry), "a");
        assert!(
            !lock(&a.state).evicted,
            "a room with a subscriber is never evicted"
        );
        assert!(read(&bp.registry).contains_key("a"));
        evict(&mut write(&bp.registry), "b");
        assert!(!read(&bp.registry).contains_key("b"));
    }

    struct Probe {
        session: SessionId,
        echo: bool,
        frames: Mutex<Vec<Bytes>>,
        datagrams: Mutex<Vec<Bytes>>,
    }

    impl Probe {
        fn new(connection: u64, echo: bool) -> Arc<Probe> {
            Arc::new(Probe {
                session: session(connection),
                echo,
                frames: Mutex::new(Vec::new()),
                datagrams: Mutex::new(Vec::new()),
            })
        }
        fn offsets(&self) -> Vec<u64> {
            offsets_of(&self.frames.lock().unwrap())
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
        fn deliver_datagram(&self, datagram: &DatagramTemplate) {
            // Each subscriber's own id for the room.
            let frame = datagram.for_room(self.session.connection as u32);
            self.datagrams.lock().unwrap().push(frame);
        }
    }

    fn now<T>(f: BoxFuture<'_, T>) -> T {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let mut f = f;
        match f.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(v) => v,
            std::task::Poll::Pending => panic!("embedded backplane future was pending"),
        }
    }

    #[test]
    fn offsets_increase_per_room_and_rooms_are_independent() {
        let bp = backplane(10, HistoryLimits::default());
        let sub = Probe::new(1, false);
        assert_eq!(now(bp.subscribe("a", sub.clone(), None)).unwrap().offset, 0);
        for _ in 0..3 {
            publish(&bp, "a", 2).unwrap();
        }
        assert_eq!(publish(&bp, "b", 2).unwrap(), 1);
        assert_eq!(sub.offsets(), vec![1, 2, 3]);
    }

    #[test]
    fn publisher_is_skipped_unless_echo_and_datagrams_carry_each_subscribers_id() {
        let bp = backplane(10, HistoryLimits::default());
        let quiet = Probe::new(1, false);
        let echoing = Probe::new(2, true);
        let other = Probe::new(3, false);
        for probe in [&quiet, &echoing, &other] {
            now(bp.subscribe("r", (*probe).clone(), None)).unwrap();
        }
        publish(&bp, "r", 1).unwrap();
        publish(&bp, "r", 2).unwrap();
        bp.publish_datagram("r", session(1), "d".into(), Bytes::new())
            .unwrap();
        assert_eq!(quiet.offsets(), vec![2]);
        assert_eq!(echoing.offsets(), vec![1, 2]);
        assert_eq!(quiet.datagrams.lock().unwrap().len(), 0);
        for (probe, id) in [(&echoing, 2), (&other, 3)] {
            let got = probe.datagrams.lock().unwrap();
            match crate::wire::decode(&got[0]).unwrap() {
                Frame::Datagram { room_id, seq, .. } => assert_eq!((room_id, seq), (id, 1)),
                f => panic!("not a datagram: {f:?}"),
            }
        }
    }

    #[test]
    fn unsubscribe_stops_delivery_and_close_refuses_events() {
        let bp = backplane(10, HistoryLimits::default());
        let sub = Probe::new(1, false);
        now(bp.subscribe("r", sub.clone(), None)).unwrap();
        publish(&bp, "r", 9).unwrap();
        bp.unsubscribe("r", session(1));
        publish(&bp, "r", 9).unwrap();
        assert_eq!(sub.offsets(), vec![1]);
        bp.close();
        assert_eq!(publish(&bp, "r", 9), Err(BackplaneError::ShuttingDown));
        assert_eq!(
            bp.publish_datagram("r", session(9), "d".into(), Bytes::new()),
            Err(BackplaneError::ShuttingDown)
        );
    }

    #[test]
    fn a_full_registry_evicts_unsubscribed_rooms_only() {
        let bp = backplane(2, NO_HISTORY);
        now(bp.subscribe("kept", Probe::new(1, false), None)).unwrap();
        bp.open("idle").unwrap();
        // Full: naming a third room evicts the idle one, not the kept one.
        now(bp.subscribe("third", Probe::new(2, false), None)).unwrap();
        assert_eq!(bp.room_count(), 2);
        assert_eq!(
            bp.open("idle"),
            Err(BackplaneError::TooManyRooms { max: 2 }),
            "every room is subscribed: nothing to evict"
        );
        assert_eq!(
            publish(&bp, "fourth", 1),
            Err(BackplaneError::TooManyRooms { max: 2 })
        );
    }
}
