//! The client's table of rooms: ids, names, membership and delivery position.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::wire::RoomId;

/// What the client knows of rooms: ids, names, which are joined, and how
/// far delivery has got in each.
#[derive(Default)]
pub(crate) struct RoomTable {
    pub ids: HashMap<Arc<str>, RoomId>,
    names: HashMap<RoomId, Arc<str>>,
    /// Rooms joined or being joined, by name. A room counts from the moment
    /// its `Join` is sent: its event stream (which names the room) may
    /// overtake the `Joined` reply, and those events must not be lost.
    pub joined: HashSet<Arc<str>>,
    /// Whether each joined room was joined with echo (to rejoin it alike).
    echo: HashMap<Arc<str>, bool>,
    /// Offset of the newest reliable event delivered, per room. Events at or
    /// below it (the tail of a stream replaced by a re-join) are dropped.
    delivered: HashMap<Arc<str>, u64>,
}

impl RoomTable {
    pub(crate) fn learn(&mut self, room_id: RoomId, name: &str) -> Arc<str> {
        if let Some(existing) = self.names.get(&room_id) {
            return existing.clone();
        }
        let name: Arc<str> = Arc::from(name);
        self.ids.insert(name.clone(), room_id);
        self.names.insert(room_id, name.clone());
        name
    }

    /// Marks a room joined from the moment its `Join` is sent; returns
    /// whether it already was. A fresh join forgets the delivery position:
    /// the room may have been evicted and started over meanwhile.
    pub(crate) fn start_joining(&mut self, name: &Arc<str>, echo: bool) -> bool {
        let already = !self.joined.insert(name.clone());
        if !already {
            self.delivered.remove(name);
        }
        self.echo.insert(name.clone(), echo);
        already
    }

    /// After `Joined`: delivery continues from `base` (the offset asked to
    /// replay from, or the room's offset at the join) unless events already
    /// delivered got further.
    pub(crate) fn set_position(&mut self, name: &Arc<str>, base: u64) {
        let position = self.delivered.entry(name.clone()).or_insert(base);
        *position = (*position).max(base);
    }

    /// After `Joined`: learns the room's id and where delivery goes on —
    /// after `since` if the history was replayed from there, else live from
    /// the room's `offset` now (its history, or its very life, no longer
    /// matches an older position).
    pub(crate) fn settle(
        &mut self,
        name: &Arc<str>,
        room_id: RoomId,
        offset: u64,
        since: Option<u64>,
        recovery: crate::wire::Recovery,
    ) {
        self.learn(room_id, name);
        match (recovery, since) {
            (crate::wire::Recovery::Recovered { .. }, Some(since)) => {
                self.set_position(name, since)
            }
            _ => self.reset_position(name, offset),
        }
    }

    /// Delivery continues from exactly `offset` (a new life of the room, or
    /// a history that no longer reaches the old position).
    pub(crate) fn reset_position(&mut self, name: &Arc<str>, offset: u64) {
        self.delivered.insert(name.clone(), offset);
    }

    /// Every joined room with its echo and the offset of the newest event
    /// delivered from it: what a reconnect rejoins and replays from.
    pub(crate) fn rejoin_list(&self) -> Vec<(Arc<str>, bool, Option<u64>)> {
        self.joined
            .iter()
            .map(|room| {
                let echo = self.echo.get(room).copied().unwrap_or(false);
                (room.clone(), echo, self.delivered.get(room).copied())
            })
            .collect()
    }

    /// The server's history epoch changed: old offsets mean nothing now.
    pub(crate) fn forget_positions(&mut self) {
        self.delivered.clear();
    }

    /// Forgets the ids of rooms not joined: the server said one of them no
    /// longer exists (rooms nobody subscribes to can be evicted), so they
    /// are resolved again when next used.
    pub(crate) fn forget_unjoined(&mut self) {
        let joined = &self.joined;
        self.ids.retain(|name, _| joined.contains(name));
        self.names.retain(|_, name| joined.contains(name));
    }

    /// The name of a joined room, by id.
    pub(crate) fn joined_name(&self, room_id: RoomId) -> Option<Arc<str>> {
        self.names
            .get(&room_id)
            .filter(|name| self.joined.contains(*name))
            .cloned()
    }

    /// Whether the datagram copy of the reliable event at `offset` should
    /// reach the application: its room is joined and it is exactly the next
    /// offset after the newest delivered (a copy never skips ahead, so the
    /// room's order holds; the stream frame that follows is a duplicate).
    pub(crate) fn accept_copy(&mut self, room: &Arc<str>, offset: u64) -> bool {
        if !self.joined.contains(room) {
            return false;
        }
        match self.delivered.get_mut(room) {
            Some(last) if offset > 0 && *last == offset - 1 => {
                *last = offset;
                true
            }
            _ => false,
        }
    }

    /// Whether a reliable event should reach the application: its room is
    /// joined and it is newer than anything delivered from that room.
    pub(crate) fn accept_reliable(&mut self, room: &Arc<str>, offset: u64) -> bool {
        if !self.joined.contains(room) {
            return false;
        }
        let last = self.delivered.entry(room.clone()).or_insert(0);
        if offset <= *last {
            return false;
        }
        *last = offset;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_room_counts_as_joined_before_its_id_is_known() {
        let mut rooms = RoomTable::default();
        let name: Arc<str> = Arc::from("r");
        rooms.joined.insert(name.clone());
        // The event stream names the room; its events pass before `Joined`.
        let learned = rooms.learn(4, "r");
        assert!(rooms.accept_reliable(&learned, 1));
        assert_eq!(rooms.joined_name(4).as_deref(), Some("r"));
    }

    #[test]
    fn forgetting_keeps_joined_rooms_and_a_fresh_join_resets_the_position() {
        let mut rooms = RoomTable::default();
        let kept = rooms.learn(1, "kept");
        rooms.learn(2, "gone");
        assert!(!rooms.start_joining(&kept, false));
        assert!(
            rooms.start_joining(&kept, true),
            "second join of the same room"
        );
        assert!(rooms.accept_reliable(&kept, 10));
        rooms.forget_unjoined();
        assert_eq!(rooms.ids.get("kept"), Some(&1));
        assert_eq!(rooms.ids.get("gone"), None);
        assert_eq!(rooms.rejoin_list(), vec![(kept.clone(), true, Some(10))]);
        rooms.joined.remove(&kept);
        assert!(!rooms.start_joining(&kept, false));
        assert!(rooms.accept_reliable(&kept, 1), "offsets may start over");
        rooms.set_position(&kept, 0);
        assert_eq!(rooms.rejoin_list(), vec![(kept.clone(), false, Some(1))]);
        rooms.forget_positions();
        assert_eq!(rooms.rejoin_list(), vec![(kept, false, None)]);
    }

    #[test]
    fn a_copy_is_delivered_only_as_the_very_next_offset() {
        let mut rooms = RoomTable::default();
        let name = rooms.learn(1, "r");
        rooms.joined.insert(name.clone());
        assert!(
            !rooms.accept_copy(&name, 1),
            "position unknown until Joined"
        );
        rooms.settle(&name, 1, 4, None, crate::wire::Recovery::Live);
        assert!(!rooms.accept_copy(&name, 6), "would skip 5");
        assert!(rooms.accept_copy(&name, 5));
        assert!(
            !rooms.accept_reliable(&name, 5),
            "the stream frame is a duplicate"
        );
        assert!(!rooms.accept_copy(&name, 5), "a repeated copy too");
        assert!(rooms.accept_reliable(&name, 6));
        rooms.joined.remove(&name);
        assert!(!rooms.accept_copy(&name, 7), "left");
    }

    #[test]
    fn old_or_repeated_offsets_and_left_rooms_are_dropped() {
        let mut rooms = RoomTable::default();
        let name = rooms.learn(1, "r");
        assert!(!rooms.accept_reliable(&name, 1), "not joined");
        rooms.joined.insert(name.clone());
        assert!(rooms.accept_reliable(&name, 5));
        assert!(!rooms.accept_reliable(&name, 5), "duplicate");
        assert!(!rooms.accept_reliable(&name, 3), "older");
        assert!(rooms.accept_reliable(&name, 9), "gaps are normal");
        rooms.joined.remove(&name);
        assert!(!rooms.accept_reliable(&name, 10), "left");
        assert_eq!(rooms.joined_name(1), None);
    }
}
