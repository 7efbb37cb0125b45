//! The client's table of rooms: ids, names, membership and delivery position.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::wire::RoomId;

/// How far delivery has got in a room, in which life of it: a room evicted
/// and named again is a new room with a new id, whose offsets start over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Position {
    room_id: RoomId,
    offset: u64,
}

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
    /// The newest reliable event delivered, per room. Events at or below it
    /// (the tail of a stream replaced by a re-join, or an event its datagram
    /// copy delivered first) are dropped.
    delivered: HashMap<Arc<str>, Position>,
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

    /// After `Joined`: learns the room's id and where delivery goes on —
    /// after `since` if the history was replayed from there, else live from
    /// the room's `offset` now. Within the same life of the room the
    /// position never moves back: events its stream or their copies
    /// delivered before this reply was handled stay delivered. A new life
    /// (another id) starts from the answer.
    pub(crate) fn settle(
        &mut self,
        name: &Arc<str>,
        room_id: RoomId,
        offset: u64,
        since: Option<u64>,
        recovery: crate::wire::Recovery,
    ) {
        self.learn(room_id, name);
        let base = match (recovery, since) {
            (crate::wire::Recovery::Recovered { .. }, Some(since)) => since,
            _ => offset,
        };
        match self.delivered.get_mut(name) {
            Some(p) if p.room_id == room_id => p.offset = p.offset.max(base),
            _ => {
                self.delivered.insert(
                    name.clone(),
                    Position {
                        room_id,
                        offset: base,
                    },
                );
            }
        }
    }

    /// Every joined room with its echo and the offset of the newest event
    /// delivered from it: what a reconnect rejoins and replays from.
    pub(crate) fn rejoin_list(&self) -> Vec<(Arc<str>, bool, Option<u64>)> {
        self.joined
            .iter()
            .map(|room| {
                let echo = self.echo.get(room).copied().unwrap_or(false);
                (
                    room.clone(),
                    echo,
                    self.delivered.get(room).map(|p| p.offset),
                )
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

    /// Whether the reliable event at `offset` of room `room_id` should reach
    /// the application: its room is joined and it is newer than anything
    /// delivered from that life of the room.
    pub(crate) fn accept_reliable(
        &mut self,
        room: &Arc<str>,
        room_id: RoomId,
        offset: u64,
    ) -> bool {
        if !self.joined.contains(room) {
            return false;
        }
        match self.delivered.get_mut(room) {
            Some(p) if p.room_id == room_id => {
                if offset <= p.offset {
                    return false;
                }
                p.offset = offset;
            }
            _ => {
                self.delivered
                    .insert(room.clone(), Position { room_id, offset });
            }
        }
        true
    }

    /// Whether the datagram copy of the reliable event at `offset`, whose
    /// room's previous event is at `previous`, should reach the application:
    /// its room is joined, its position is known, and that previous event is
    /// exactly the newest one delivered. A copy never skips ahead, so the
    /// room's order holds; the stream frame that follows is a duplicate.
    pub(crate) fn accept_copy(
        &mut self,
        room: &Arc<str>,
        room_id: RoomId,
        previous: u64,
        offset: u64,
    ) -> bool {
        if !self.joined.contains(room) || offset <= previous {
            return false;
        }
        match self.delivered.get_mut(room) {
            Some(p) if p.room_id == room_id && p.offset == previous => {
                p.offset = offset;
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Recovery, RecoveryFailure};

    #[test]
    fn a_room_counts_as_joined_before_its_id_is_known() {
        let mut rooms = RoomTable::default();
        let name: Arc<str> = Arc::from("r");
        rooms.joined.insert(name.clone());
        // The event stream names the room; its events pass before `Joined`.
        let learned = rooms.learn(4, "r");
        assert!(rooms.accept_reliable(&learned, 4, 1));
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
        assert!(rooms.accept_reliable(&kept, 1, 10));
        rooms.forget_unjoined();
        assert_eq!(rooms.ids.get("kept"), Some(&1));
        assert_eq!(rooms.ids.get("gone"), None);
        assert_eq!(rooms.rejoin_list(), vec![(kept.clone(), true, Some(10))]);
        rooms.joined.remove(&kept);
        assert!(!rooms.start_joining(&kept, false));
        assert!(
            rooms.accept_reliable(&kept, 1, 1),
            "a fresh join starts over"
        );
        rooms.settle(&kept, 1, 0, None, Recovery::Live);
        assert_eq!(rooms.rejoin_list(), vec![(kept.clone(), false, Some(1))]);
        rooms.forget_positions();
        assert_eq!(rooms.rejoin_list(), vec![(kept, false, None)]);
    }

    #[test]
    fn the_position_never_moves_back_within_a_life_of_the_room() {
        let mut rooms = RoomTable::default();
        let name: Arc<str> = Arc::from("r");
        assert!(!rooms.start_joining(&name, false));
        let name = rooms.learn(7, "r");
        // The stream and a copy overtake the `Joined { offset: 10 }` reply.
        assert!(rooms.accept_reliable(&name, 7, 11));
        assert!(rooms.accept_copy(&name, 7, 11, 12));
        rooms.settle(&name, 7, 10, None, Recovery::Live);
        assert!(
            !rooms.accept_reliable(&name, 7, 12),
            "delivered by its copy"
        );
        assert!(!rooms.accept_copy(&name, 7, 10, 11), "a late copy of 11");
        assert!(rooms.accept_reliable(&name, 7, 13));
        // A new life of the room (evicted, named again) starts from the answer.
        rooms.settle(
            &name,
            9,
            2,
            Some(13),
            Recovery::NotRecovered {
                reason: RecoveryFailure::UnknownPosition,
            },
        );
        assert_eq!(rooms.rejoin_list(), vec![(name.clone(), false, Some(2))]);
        assert!(rooms.accept_reliable(&name, 9, 3));
        // A gap the history no longer covers moves the position forward.
        rooms.settle(
            &name,
            9,
            50,
            Some(3),
            Recovery::NotRecovered {
                reason: RecoveryFailure::HistoryTooShort,
            },
        );
        assert_eq!(rooms.rejoin_list(), vec![(name, false, Some(50))]);
    }

    #[test]
    fn a_copy_is_delivered_only_right_after_the_newest_delivered() {
        let mut rooms = RoomTable::default();
        let name = rooms.learn(1, "r");
        rooms.joined.insert(name.clone());
        assert!(
            !rooms.accept_copy(&name, 1, 0, 1),
            "position unknown until Joined"
        );
        rooms.settle(&name, 1, 4, None, Recovery::Live);
        assert!(!rooms.accept_copy(&name, 1, 5, 6), "would skip 5");
        assert!(
            !rooms.accept_copy(&name, 2, 4, 5),
            "another life of the room"
        );
        assert!(rooms.accept_copy(&name, 1, 4, 5));
        assert!(
            !rooms.accept_reliable(&name, 1, 5),
            "the stream frame is a duplicate"
        );
        assert!(!rooms.accept_copy(&name, 1, 4, 5), "a repeated copy too");
        assert!(rooms.accept_reliable(&name, 1, 6));
        // Offsets need not be consecutive: `previous` says what comes before.
        assert!(rooms.accept_copy(&name, 1, 6, 9));
        rooms.joined.remove(&name);
        assert!(!rooms.accept_copy(&name, 1, 9, 10), "left");
    }

    #[test]
    fn old_or_repeated_offsets_and_left_rooms_are_dropped() {
        let mut rooms = RoomTable::default();
        let name = rooms.learn(1, "r");
        assert!(!rooms.accept_reliable(&name, 1, 1), "not joined");
        rooms.joined.insert(name.clone());
        assert!(rooms.accept_reliable(&name, 1, 5));
        assert!(!rooms.accept_reliable(&name, 1, 5), "duplicate");
        assert!(!rooms.accept_reliable(&name, 1, 3), "older");
        assert!(rooms.accept_reliable(&name, 1, 9), "gaps are normal");
        rooms.joined.remove(&name);
        assert!(!rooms.accept_reliable(&name, 1, 10), "left");
        assert_eq!(rooms.joined_name(1), None);
    }
}
