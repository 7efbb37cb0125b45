//! The history budget: one bound on the bytes kept across all rooms of a
//! store, on top of each room's own limits.
//!
//! A [`Budget`] is a ledger of how many bytes each room holds, ordered by
//! size (a `BTreeSet`, so finding the largest room costs O(log n), never a
//! scan of 100,000 rooms). When an append takes the total over the budget,
//! the store sheds the oldest events of the largest room, one step at a
//! time, re-reading which room is largest after each step, until the total
//! is back under: the largest rooms shrink towards each other, the small
//! ones are not touched.
//!
//! The ledger holds a handle `R` on each room so that any room's append can
//! shed another room's events. Lock order: a room's own lock, then the
//! ledger's; the ledger's lock is never held while a room's is taken, and
//! no two rooms' locks are ever held at once.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::sync::lock;

/// What a store holds across its rooms, and what its budget has cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HistoryUsage {
    /// Bytes of encoded frames kept, over all rooms.
    pub bytes: u64,
    /// Events dropped to stay under the budget since the store opened.
    pub budget_drops: u64,
}

pub struct Budget<R> {
    ledger: Mutex<Ledger<R>>,
    drops: AtomicU64,
}

struct Ledger<R> {
    limit: u64,
    total: u64,
    rooms: HashMap<u64, Held<R>>,
    /// `(bytes, room id)` of the rooms that have something they can shed.
    sheddable: BTreeSet<(u64, u64)>,
}

struct Held<R> {
    bytes: u64,
    sheddable: bool,
    room: R,
}

impl<R: Clone> Budget<R> {
    /// A budget of `limit` bytes (`u64::MAX`: unbounded).
    pub fn new(limit: u64) -> Self {
        Budget {
            ledger: Mutex::new(Ledger {
                limit,
                total: 0,
                rooms: HashMap::new(),
                sheddable: BTreeSet::new(),
            }),
            drops: AtomicU64::new(0),
        }
    }

    pub fn set_limit(&self, limit: u64) {
        lock(&self.ledger).limit = limit;
    }

    /// Starts accounting for room `id` (holding nothing until its first
    /// [`Budget::update`]), unless it is already.
    pub fn register(&self, id: u64, room: R) {
        lock(&self.ledger).rooms.entry(id).or_insert(Held {
            bytes: 0,
            sheddable: false,
            room,
        });
    }

    /// Room `id` now holds `bytes`, and has something it can shed or not.
    /// A room not registered (or removed meanwhile) is ignored.
    pub fn update(&self, id: u64, bytes: u64, sheddable: bool) {
        let mut ledger = lock(&self.ledger);
        let Some(held) = ledger.rooms.get_mut(&id) else {
            return;
        };
        let (old_bytes, old_sheddable) = (held.bytes, held.sheddable);
        held.bytes = bytes;
        held.sheddable = sheddable;
        ledger.total = ledger.total - old_bytes + bytes;
        if old_sheddable {
            ledger.sheddable.remove(&(old_bytes, id));
        }
        if sheddable {
            ledger.sheddable.insert((bytes, id));
        }
    }

    /// Stops accounting for room `id` (its history is gone).
    pub fn remove(&self, id: u64) {
        lock(&self.ledger).remove(id);
    }

    /// While the total is over the budget, the largest room that can shed
    /// something.
    pub fn largest_over(&self) -> Option<(u64, R)> {
        let ledger = lock(&self.ledger);
        if ledger.total <= ledger.limit {
            return None;
        }
        let &(_, id) = ledger.sheddable.last()?;
        ledger.rooms.get(&id).map(|held| (id, held.room.clone()))
    }

    /// Counts `n` events dropped for the budget.
    pub fn count_drops(&self, n: u64) {
        self.drops.fetch_add(n, Ordering::Relaxed);
    }

    pub fn usage(&self) -> HistoryUsage {
        HistoryUsage {
            bytes: lock(&self.ledger).total,
            budget_drops: self.drops.load(Ordering::Relaxed),
        }
    }

    /// Sheds until the total is under the budget: `shed(id, room)` drops
    /// the oldest events of the largest room (and updates the ledger), and
    /// returns whether it dropped anything; a room that could not is no
    /// longer asked.
    pub fn enforce(&self, mut shed: impl FnMut(u64, &R) -> bool) {
        while let Some((id, room)) = self.largest_over() {
            if !shed(id, &room) {
                let mut ledger = lock(&self.ledger);
                if let Some(held) = ledger.rooms.get_mut(&id) {
                    if held.sheddable {
                        held.sheddable = false;
                        let bytes = held.bytes;
                        ledger.sheddable.remove(&(bytes, id));
                    }
                }
            }
        }
    }
}

impl<R> Ledger<R> {
    fn remove(&mut self, id: u64) {
        if let Some(held) = self.rooms.remove(&id) {
            self.total -= held.bytes;
            if held.sheddable {
                self.sheddable.remove(&(held.bytes, id));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_largest_sheddable_room_is_found_only_over_the_limit() {
        let budget = Budget::new(100);
        for id in 1..=3 {
            budget.register(id, id * 10);
        }
        budget.update(1, 40, true);
        budget.update(2, 50, true);
        assert_eq!(budget.largest_over(), None, "90 of 100");
        budget.update(3, 70, false);
        assert_eq!(budget.usage().bytes, 160);
        assert_eq!(
            budget.largest_over(),
            Some((2, 20)),
            "3 has nothing to shed"
        );
        budget.remove(2);
        assert_eq!(budget.largest_over(), Some((1, 10)));
        budget.update(2, 10, true); // removed: ignored
        assert_eq!(budget.usage().bytes, 110);
        budget.update(1, 20, true);
        assert_eq!(budget.largest_over(), None);
    }

    #[test]
    fn enforce_stops_when_nothing_can_be_shed() {
        let budget = Budget::new(10);
        budget.register(1, ());
        budget.update(1, 50, true);
        let mut asked = 0;
        budget.enforce(|_, _| {
            asked += 1;
            false
        });
        assert_eq!(asked, 1);
        assert_eq!(budget.usage().bytes, 50);
    }
}
