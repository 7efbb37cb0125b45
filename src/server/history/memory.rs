//! Room history in RAM: gone with the process.
//!
//! Each room keeps a bounded window of its newest reliable events (by count,
//! age and bytes) as the already-encoded `Event` frames that fan-out sends,
//! so replaying costs no encoding. A room opened again after its handle was
//! dropped (evicted) has lost its events but not its place: its offsets go
//! on above the old ones, so a client's old position is answered
//! `TooShort`, never served the new room's events as if they followed it.
//! (The store remembers the last offsets of 100,000 dropped rooms; beyond
//! that, every new room starts above the highest one it forgot.) Every
//! start of a [`MemoryStore`] has a new epoch, so no client mistakes the
//! new history for the old one.
//!
//! Offsets are opaque and may be sparse, so coverage is never computed as
//! "offset + 1": the history remembers the newest offset it has dropped
//! (`dropped_through`), and a position `since` is covered exactly when
//! nothing after it has been dropped.
//!
//! With a budget ([`MemoryStore::with_budget`]) the total is a hard bound
//! on what the rooms hold after every append: each event is charged its
//! frame plus [`EVENT_OVERHEAD`], and the budget may take a room's every
//! event, even its newest (its offsets go on all the same; the disk store
//! keeps a room's newest segment, because its file carries the offset).
//! Each room's events sit behind their own mutex, shared with the store's
//! ledger, so that one room's append can shed another's; the newest offset
//! the budget took (`budget_through`) tells its gaps apart.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;

use super::budget::{Budget, HistoryUsage};
use super::{
    Gap, HistoryError, HistoryLimits, HistoryStats, HistoryStore, Publisher, Record, Replay,
    ReplaySource, RoomHistory, RoomLimits,
};
use crate::sync::lock;

/// Dropped rooms remembered by name, for their offsets to go on.
const MAX_FORGOTTEN: usize = 100_000;

/// What an event costs the budget beyond its frame: its entry (64 bytes),
/// the shared header of its `Bytes` and the allocator's headers. Counted
/// so that many tiny events cannot hold far more RAM than the budget says.
pub const EVENT_OVERHEAD: u64 = 128;

/// Every room's history in RAM, bounded by each room's [`HistoryLimits`]
/// (its namespace's, see [`RoomLimits`]) and, with
/// [`MemoryStore::with_budget`], by one budget across all.
pub struct MemoryStore {
    epoch: u64,
    shared: Arc<Shared>,
}

/// What the store and its room handles share.
struct Shared {
    limits: RoomLimits,
    forgotten: Mutex<Forgotten>,
    budget: Budget<Arc<Mutex<Events>>>,
    next_id: AtomicU64,
}

/// The last offsets of rooms whose history was dropped.
#[derive(Debug, Default)]
struct Forgotten {
    last: HashMap<Arc<str>, u64>,
    /// Oldest first, for the bound (a name may appear again after it was
    /// opened and dropped once more; stale entries are skipped).
    order: VecDeque<(Arc<str>, u64)>,
    /// The highest last offset of a room no longer remembered: a room the
    /// store knows nothing of starts above it.
    floor: u64,
}

impl Forgotten {
    fn remember(&mut self, name: Arc<str>, last: u64) {
        self.last.insert(name.clone(), last);
        self.order.push_back((name, last));
        while self.last.len() > MAX_FORGOTTEN {
            let Some((name, last)) = self.order.pop_front() else {
                break;
            };
            if self.last.get(&name) == Some(&last) {
                self.last.remove(&name);
                self.floor = self.floor.max(last);
            }
        }
        // Entries superseded by a later remember or taken by an open.
        if self.order.len() > 2 * MAX_FORGOTTEN {
            let last = &self.last;
            self.order
                .retain(|(name, offset)| last.get(name) == Some(offset));
        }
    }

    /// Where a room opened now starts: after its own last offset if it is
    /// remembered, else after the floor.
    fn take(&mut self, name: &str) -> u64 {
        self.last.remove(name).unwrap_or(self.floor)
    }
}

impl MemoryStore {
    /// A store with a new random epoch: nothing from an earlier process is
    /// here, and no client's position from one can be taken for ours. No
    /// budget across rooms: see [`MemoryStore::with_budget`].
    pub fn new(limits: impl Into<RoomLimits>) -> Self {
        MemoryStore {
            epoch: new_epoch(),
            shared: Arc::new(Shared {
                limits: limits.into(),
                forgotten: Mutex::default(),
                budget: Budget::new(u64::MAX),
                next_id: AtomicU64::new(0),
            }),
        }
    }

    /// Bounds the bytes (of encoded frames) kept across all rooms: an
    /// append that takes the total over `total_bytes` drops the oldest
    /// events of the largest rooms until it is under again.
    pub fn with_budget(self, total_bytes: u64) -> Self {
        self.shared.budget.set_limit(total_bytes);
        self
    }
}

/// A random non-zero epoch.
pub(super) fn new_epoch() -> u64 {
    loop {
        let epoch = rand::random::<u64>();
        if epoch != 0 {
            return epoch;
        }
    }
}

impl HistoryStore for MemoryStore {
    fn epoch(&self) -> u64 {
        self.epoch
    }

    fn open_room(&self, name: &str) -> Result<Box<dyn RoomHistory>, HistoryError> {
        let start = lock(&self.shared.forgotten).take(name);
        let mut events = Events::new(self.shared.limits.for_room(name));
        events.last_offset = start;
        events.dropped_through = start;
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let events = Arc::new(Mutex::new(events));
        self.shared.budget.register(id, events.clone());
        Ok(Box::new(MemoryHistory {
            id,
            name: Arc::from(name),
            events,
            shared: self.shared.clone(),
        }))
    }

    /// Nothing to do: a memory room's history lives in its handle, which the
    /// owner trims, and there is nothing to make durable.
    fn maintain(&self, _now_ms: u64) {}

    fn usage(&self) -> HistoryUsage {
        self.shared.budget.usage()
    }
}

struct Entry {
    offset: u64,
    at_ms: u64,
    publisher: Publisher,
    frame: Bytes,
}

/// A handle on one room's history. The events themselves are shared with
/// the store's budget, so that another room's append can shed them.
struct MemoryHistory {
    id: u64,
    name: Arc<str>,
    events: Arc<Mutex<Events>>,
    shared: Arc<Shared>,
}

/// The retained events of one room.
struct Events {
    /// The room's own, resolved when it was opened.
    limits: HistoryLimits,
    entries: VecDeque<Entry>,
    bytes: usize,
    /// The newest offset dropped by the room's limits, or before the room
    /// was opened (0: none).
    dropped_through: u64,
    /// The newest offset dropped for the budget across rooms (0: none).
    budget_through: u64,
    last_offset: u64,
    /// The newest `at_ms` seen: times are kept non-decreasing, so that a
    /// clock stepping back cannot hide old events behind a young one.
    last_at_ms: u64,
}

/// The room's history is gone: the store remembers its last offset, and
/// the budget forgets its bytes.
impl Drop for MemoryHistory {
    fn drop(&mut self) {
        self.shared.budget.remove(self.id);
        let last = lock(&self.events).last_offset;
        lock(&self.shared.forgotten).remember(self.name.clone(), last);
    }
}

impl Events {
    fn new(limits: HistoryLimits) -> Self {
        Events {
            limits,
            entries: VecDeque::new(),
            bytes: 0,
            dropped_through: 0,
            budget_through: 0,
            last_offset: 0,
            last_at_ms: 0,
        }
    }

    /// Drops the oldest event; returns its offset.
    fn drop_oldest(&mut self) -> Option<u64> {
        let entry = self.entries.pop_front()?;
        self.bytes -= entry.frame.len();
        Some(entry.offset)
    }

    /// Drops the oldest event for the room's limits.
    fn drop_for_limits(&mut self) {
        if let Some(offset) = self.drop_oldest() {
            self.dropped_through = offset;
        }
    }

    fn append(&mut self, record: Record) {
        debug_assert!(record.offset > self.last_offset, "offsets must increase");
        let at_ms = record.at_ms.max(self.last_at_ms);
        self.last_offset = record.offset;
        self.last_at_ms = at_ms;
        if self.limits.max_events == 0 {
            self.dropped_through = record.offset;
            return;
        }
        self.bytes += record.frame.len();
        self.entries.push_back(Entry {
            offset: record.offset,
            at_ms,
            publisher: record.publisher,
            frame: record.frame,
        });
        while self.entries.len() > self.limits.max_events
            || (self.bytes > self.limits.max_bytes && self.entries.len() > 1)
        {
            self.drop_for_limits();
        }
        self.trim(at_ms);
    }

    /// Drops events older than the age limit (the count and byte limits
    /// are applied on every append).
    fn trim(&mut self, now_ms: u64) {
        while let Some(oldest) = self.entries.front() {
            let age = Duration::from_millis(now_ms.saturating_sub(oldest.at_ms));
            if age <= self.limits.max_age {
                break;
            }
            self.drop_for_limits();
        }
    }
}

impl Events {
    /// What the room costs the budget.
    fn charged(&self) -> u64 {
        self.bytes as u64 + self.entries.len() as u64 * EVENT_OVERHEAD
    }
}

impl MemoryHistory {
    /// Tells the budget what the room holds now.
    fn account(&self, events: &Events) {
        let sheddable = !events.entries.is_empty();
        (self.shared.budget).update(self.id, events.charged(), sheddable);
    }
}

/// Drops the oldest event of room `id` for the budget; whether there was one.
fn shed(budget: &Budget<Arc<Mutex<Events>>>, id: u64, room: &Mutex<Events>) -> bool {
    let mut events = lock(room);
    let Some(offset) = events.drop_oldest() else {
        return false;
    };
    events.budget_through = offset;
    budget.update(id, events.charged(), !events.entries.is_empty());
    budget.count_drops(1);
    true
}

impl RoomHistory for MemoryHistory {
    fn last_offset(&self) -> u64 {
        lock(&self.events).last_offset
    }

    fn append(&mut self, record: Record) -> Result<(), HistoryError> {
        {
            let mut events = lock(&self.events);
            events.append(record);
            self.account(&events);
        }
        // Not under this room's lock: shedding takes another room's.
        let budget = &self.shared.budget;
        budget.enforce(|id, room| shed(budget, id, room));
        Ok(())
    }

    fn replay(&mut self, since: u64, now_ms: u64) -> Result<Result<Replay, Gap>, HistoryError> {
        let mut events = lock(&self.events);
        events.trim(now_ms);
        self.account(&events);
        if since > events.last_offset {
            return Ok(Err(Gap::UnknownPosition));
        }
        if since < events.dropped_through {
            return Ok(Err(Gap::TooShort));
        }
        if since < events.budget_through {
            return Ok(Err(Gap::Budget));
        }
        let start = events.entries.partition_point(|e| e.offset <= since);
        // Cheap refcount clones: later trims cannot shorten this replay.
        let frames: VecDeque<Bytes> = events
            .entries
            .range(start..)
            .map(|e| e.frame.clone())
            .collect();
        Ok(Ok(Replay {
            count: frames.len() as u64,
            source: Box::new(MemoryReplay { frames }),
        }))
    }

    fn trim(&mut self, now_ms: u64) {
        let mut events = lock(&self.events);
        events.trim(now_ms);
        self.account(&events);
    }

    fn stats(&mut self, now_ms: u64) -> HistoryStats {
        let mut events = lock(&self.events);
        events.trim(now_ms);
        self.account(&events);
        HistoryStats {
            events: events.entries.len() as u64,
            bytes: events.bytes as u64,
            oldest_ms: events.entries.front().map(|e| e.at_ms),
        }
    }

    fn publishes_of(&mut self, session: u64) -> Result<Vec<(u64, u64)>, HistoryError> {
        Ok(lock(&self.events)
            .entries
            .iter()
            .filter(|e| e.publisher.session == session)
            .map(|e| (e.publisher.id, e.offset))
            .collect())
    }
}

/// The frames of a replay, taken when it was asked for.
pub(super) struct MemoryReplay {
    pub(super) frames: VecDeque<Bytes>,
}

impl ReplaySource for MemoryReplay {
    fn next_batch(&mut self, max_bytes: usize) -> Result<Vec<Bytes>, HistoryError> {
        let mut batch = Vec::new();
        let mut bytes = 0;
        while let Some(frame) = self.frames.front() {
            if !batch.is_empty() && bytes + frame.len() > max_bytes {
                break;
            }
            bytes += frame.len();
            batch.extend(self.frames.pop_front());
        }
        Ok(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{append_all, limits, replayed, T0};
    use super::*;

    #[test]
    fn a_room_opened_again_loses_its_events_but_not_its_place() {
        let store = MemoryStore::new(limits(100, 60, 1 << 20));
        let mut room = store.open_room("r").unwrap();
        append_all(&mut *room, 1..=3, T0);
        drop(room);
        let mut again = store.open_room("r").unwrap();
        assert_eq!(again.last_offset(), 3, "offsets go on");
        assert!(replayed(&mut *again, 3, T0).unwrap().is_empty());
        append_all(&mut *again, 4..=9, T0);
        // A client at 2 missed 3, which is gone: told so, not served 4..9.
        assert_eq!(replayed(&mut *again, 2, T0), Err(Gap::TooShort));
        assert_eq!(replayed(&mut *again, 3, T0).unwrap().len(), 6);
        // Another room is not affected.
        assert_eq!(store.open_room("other").unwrap().last_offset(), 0);
    }

    #[test]
    fn beyond_what_it_remembers_a_new_room_starts_above_what_was_forgotten() {
        let store = MemoryStore::new(limits(100, 60, 1 << 20));
        let mut busy = store.open_room("busy").unwrap();
        append_all(&mut *busy, 1..=50, T0);
        drop(busy);
        for i in 0..MAX_FORGOTTEN {
            drop(store.open_room(&format!("idle.{i}")).unwrap());
        }
        // "busy" fell out of the table: any room now starts above it.
        assert_eq!(store.open_room("busy").unwrap().last_offset(), 50);
        assert_eq!(store.open_room("brand.new").unwrap().last_offset(), 50);
    }

    #[test]
    fn the_budget_may_take_every_event_of_a_room_but_not_its_place() {
        let one = 8 + EVENT_OVERHEAD;
        let store = MemoryStore::new(limits(100, 60, 1 << 20)).with_budget(one + 1);
        let mut room = store.open_room("r").unwrap();
        append_all(&mut *room, 1..=3, T0); // 8 bytes each
        assert_eq!(room.last_offset(), 3);
        assert_eq!(replayed(&mut *room, 2, T0), Ok(vec![3]));
        assert_eq!(replayed(&mut *room, 1, T0), Err(Gap::Budget));
        let usage = store.usage();
        assert_eq!((usage.bytes, usage.budget_drops), (one, 2));
        // A budget smaller than one event keeps none, and still knows where
        // the room is.
        let store = MemoryStore::new(limits(100, 60, 1 << 20)).with_budget(one - 1);
        let mut room = store.open_room("r").unwrap();
        append_all(&mut *room, 1..=2, T0);
        assert_eq!(room.last_offset(), 2);
        assert_eq!(replayed(&mut *room, 2, T0), Ok(vec![]));
        assert_eq!(replayed(&mut *room, 1, T0), Err(Gap::Budget));
        assert_eq!(store.usage().bytes, 0);
    }

    #[test]
    fn a_dropped_room_leaves_the_budget() {
        let one = 8 + EVENT_OVERHEAD;
        let store = MemoryStore::new(limits(100, 60, 1 << 20)).with_budget(12 * one);
        let mut gone = store.open_room("gone").unwrap();
        append_all(&mut *gone, 1..=10, T0);
        assert_eq!(store.usage().bytes, 10 * one);
        drop(gone);
        assert_eq!(store.usage().bytes, 0);
        let mut kept = store.open_room("kept").unwrap();
        append_all(&mut *kept, 1..=12, T0);
        assert_eq!(replayed(&mut *kept, 0, T0).unwrap().len(), 12);
        assert_eq!(store.usage().budget_drops, 0);
    }

    #[test]
    fn every_store_has_its_own_nonzero_epoch() {
        let a = MemoryStore::new(HistoryLimits::default());
        let b = MemoryStore::new(HistoryLimits::default());
        assert_ne!(a.epoch(), 0);
        assert_ne!(a.epoch(), b.epoch());
    }
}
