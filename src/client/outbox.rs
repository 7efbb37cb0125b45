//! Reliable emits not yet confirmed by the server.
//!
//! Every reliable emit goes into the outbox first, with a per-room id (1, 2,
//! 3… in emit order), and stays there until the server's `Progress` says it
//! was handled. The room's writer sends from the outbox; after a reconnect
//! the new connection's writer sends everything still unconfirmed again,
//! and the server (which remembers ids per session) publishes each id once.
//! The outbox is bounded in events and bytes: an emit that finds it full
//! waits for room, at most the request timeout, then gets an error — never
//! a silent drop.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::Notify;
use tokio::time::{timeout_at, Instant};

/// The outbox is full; the emit was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

struct Entry {
    id: u64,
    frame: Bytes,
}

#[derive(Default)]
struct RoomOutbox {
    next_id: u64,
    entries: VecDeque<Entry>,
    changed: Arc<Notify>,
}

#[derive(Default)]
struct Inner {
    rooms: HashMap<Arc<str>, RoomOutbox>,
    events: usize,
    bytes: usize,
}

/// The client's outbox.
pub struct Outbox {
    inner: Mutex<Inner>,
    space: Notify,
    max_events: usize,
    max_bytes: usize,
}

impl Outbox {
    /// An outbox holding at most `max_events` events and `max_bytes` bytes
    /// (one event is always allowed, however large).
    pub fn new(max_events: usize, max_bytes: usize) -> Self {
        Outbox {
            inner: Mutex::new(Inner::default()),
            space: Notify::new(),
            max_events: max_events.max(1),
            max_bytes,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        crate::sync::lock(&self.inner)
    }

    /// Adds an event to `room`: `frame` is called with its id and returns
    /// the encoded `Publish`. Returns the id, or `Full`.
    pub fn try_push(&self, room: &str, frame: impl FnOnce(u64) -> Bytes) -> Result<u64, Full> {
        let mut inner = self.lock();
        if inner.events >= self.max_events || (inner.events > 0 && inner.bytes >= self.max_bytes) {
            return Err(Full);
        }
        let outbox = match inner.rooms.get_mut(room) {
            Some(outbox) => outbox,
            None => inner.rooms.entry(Arc::from(room)).or_default(),
        };
        outbox.next_id += 1;
        let id = outbox.next_id;
        let frame = frame(id);
        let len = frame.len();
        outbox.entries.push_back(Entry { id, frame });
        outbox.changed.notify_waiters();
        inner.events += 1;
        inner.bytes += len;
        Ok(id)
    }

    /// [`Outbox::try_push`], waiting for room until `deadline`.
    pub async fn push(
        &self,
        room: &str,
        frame: impl Fn(u64) -> Bytes,
        deadline: Instant,
    ) -> Result<u64, Full> {
        loop {
            let freed = self.space.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            match self.try_push(room, &frame) {
                Ok(id) => return Ok(id),
                Err(Full) => {
                    if timeout_at(deadline, freed).await.is_err() {
                        return Err(Full);
                    }
                }
            }
        }
    }

    /// Up to `max` unconfirmed events of `room` with ids above `after`.
    pub fn after(&self, room: &str, after: u64, max: usize) -> Vec<(u64, Bytes)> {
        let inner = self.lock();
        let Some(outbox) = inner.rooms.get(room) else {
            return Vec::new();
        };
        let start = outbox.entries.partition_point(|e| e.id <= after);
        outbox
            .entries
            .range(start..)
            .take(max)
            .map(|e| (e.id, e.frame.clone()))
            .collect()
    }

    /// Notified whenever an event is added to `room`.
    pub fn changed(&self, room: &str) -> Arc<Notify> {
        let mut inner = self.lock();
        match inner.rooms.get(room) {
            Some(outbox) => outbox.changed.clone(),
            None => inner
                .rooms
                .entry(Arc::from(room))
                .or_default()
                .changed
                .clone(),
        }
    }

    /// The server has handled every event of `room` up to `through`.
    pub fn confirm(&self, room: &str, through: u64) {
        let mut inner = self.lock();
        let Some(outbox) = inner.rooms.get_mut(room) else {
            return;
        };
        let mut freed = (0, 0);
        while outbox.entries.front().is_some_and(|e| e.id <= through) {
            if let Some(e) = outbox.entries.pop_front() {
                freed.0 += 1;
                freed.1 += e.frame.len();
            }
        }
        inner.events -= freed.0;
        inner.bytes -= freed.1;
        if freed.0 > 0 {
            self.space.notify_waiters();
        }
    }

    /// Rooms with unconfirmed events.
    pub fn rooms_waiting(&self) -> Vec<Arc<str>> {
        self.lock()
            .rooms
            .iter()
            .filter(|(_, o)| !o.entries.is_empty())
            .map(|(room, _)| room.clone())
            .collect()
    }

    /// How many events are unconfirmed.
    pub fn len(&self) -> usize {
        self.lock().events
    }

    /// Whether every event has been confirmed.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn frame(id: u64) -> Bytes {
        Bytes::from(id.to_be_bytes().to_vec())
    }

    #[test]
    fn ids_count_per_room_and_confirmation_frees_space() {
        let outbox = Outbox::new(3, 1 << 20);
        assert_eq!(outbox.try_push("a", frame), Ok(1));
        assert_eq!(outbox.try_push("a", frame), Ok(2));
        assert_eq!(outbox.try_push("b", frame), Ok(1));
        assert_eq!(outbox.try_push("a", frame), Err(Full));
        assert_eq!(outbox.after("a", 0, 10).len(), 2);
        assert_eq!(outbox.after("a", 1, 10)[0].0, 2);
        outbox.confirm("a", 1);
        assert_eq!(outbox.len(), 2);
        assert_eq!(outbox.try_push("a", frame), Ok(3));
        let mut waiting = outbox.rooms_waiting();
        waiting.sort();
        assert_eq!(waiting, vec![Arc::from("a"), Arc::from("b")]);
        outbox.confirm("a", 99);
        outbox.confirm("b", 1);
        assert!(outbox.is_empty());
        assert!(outbox.rooms_waiting().is_empty());
    }

    #[test]
    fn the_byte_bound_always_admits_one_event() {
        let outbox = Outbox::new(100, 4);
        assert_eq!(outbox.try_push("a", |_| Bytes::from(vec![0u8; 50])), Ok(1));
        assert_eq!(outbox.try_push("a", frame), Err(Full));
    }

    #[tokio::test]
    async fn a_full_outbox_waits_for_confirmation_then_times_out() {
        let outbox = Arc::new(Outbox::new(1, 1 << 20));
        outbox.try_push("a", frame).unwrap();
        let soon = Instant::now() + Duration::from_millis(50);
        assert_eq!(outbox.push("a", frame, soon).await, Err(Full));
        let o = outbox.clone();
        let waiter = tokio::spawn(async move {
            o.push("a", frame, Instant::now() + Duration::from_secs(20))
                .await
        });
        // The waiter is parked on `space`; confirming wakes it.
        tokio::task::yield_now().await;
        outbox.confirm("a", 1);
        assert_eq!(waiter.await.unwrap(), Ok(2));
    }
}
