//! The client's tables of rooms: membership and delivery position, which
//! live as long as the client ([`RoomTable`]), and the room ids of one
//! connection ([`LinkRooms`]), which die with it.
//!
//! Room ids belong to a connection: the server hands them out per
//! connection, so a client never carries one across a reconnect. After a
//! reconnect every room is named again on the new connection.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::DatagramOrder;
use crate::wire::RoomId;

/// A room as one connection names it: which connection, and its id there.
/// Delivery positions remember it, so that a reply or event of one
/// connection is never taken for another's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RoomRef {
    /// The connection (`Link::id`), unique within the client.
    pub link: u64,
    pub room_id: RoomId,
}

/// How far delivery has got in a room, as seen on which connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Position {
    at: RoomRef,
    offset: u64,
}

/// The room ids the server gave one connection, and the datagram order of
/// each room on it.
#[derive(Default)]
pub(crate) struct LinkRooms {
    ids: HashMap<Arc<str>, RoomId>,
    names: HashMap<RoomId, Arc<str>>,
    datagrams: HashMap<RoomId, DatagramOrder>,
}

impl LinkRooms {
    /// Records the id the server gave `name` on this connection; returns
    /// the name as this table keeps it.
    pub(crate) fn learn(&mut self, room_id: RoomId, name: &str) -> Arc<str> {
        if let Some(existing) = self.names.get(&room_id) {
            if &**existing == name {
                return existing.clone();
            }
            // The server never gives one id to two names on a connection;
            // should it, the newer answer wins and the old name is re-resolved.
            self.ids.remove(existing);
        }
        let name: Arc<str> = Arc::from(name);
        self.ids.insert(name.clone(), room_id);
        self.names.insert(room_id, name.clone());
        name
    }

    /// This connection's id for `name`, if it has one.
    pub(crate) fn id(&self, name: &str) -> Option<RoomId> {
        self.ids.get(name).copied()
    }

    /// The room an id names on this connection.
    pub(crate) fn name(&self, room_id: RoomId) -> Option<&Arc<str>> {
        self.names.get(&room_id)
    }

    /// The datagram order of a room on this connection.
    pub(crate) fn datagram_order(&mut self, room_id: RoomId) -> &mut DatagramOrder {
        self.datagrams.entry(room_id).or_default()
    }

    /// A fresh join: the room may have started over (evicted from a memory
    /// store while nobody was subscribed), so its datagram sequence too.
    pub(crate) fn reset_datagrams(&mut self, room_id: RoomId) {
        self.datagrams.remove(&room_id);
    }
}

/// What the client knows of rooms across its connections: which are
/// joined, with what echo, and how far delivery has got in each.
#[derive(Default)]
pub(crate) struct RoomTable {
    /// Rooms joined or being joined, by name. A room counts from the moment
    /// its `Join` is sent: its event stream (which names the room) may
    /// overtake the `Joined` reply, and those events must not be lost.
    pub joined: HashSet<Arc<str>>,
    /// Whether each joined room was joined with echo (to rejoin it alike).
    echo: HashMap<Arc<str>, Option<bool>>,
    /// The newest reliable event delivered, per room. Events at or below it
    /// (the tail of a stream replaced by a re-join, or an event its datagram
    /// copy delivered first) are dropped.
    delivered: HashMap<Arc<str>, Position>,
}

impl RoomTable {
    /// Marks a room joined from the moment its `Join` is sent; returns
    /// whether it already was. A fresh join forgets the delivery position:
    /// the room may have been evicted and started over meanwhile.
    pub(crate) fn start_joining(&mut self, name: &Arc<str>, echo: Option<bool>) -> bool {
        let already = !self.joined.insert(name.clone());
        if !already {
            self.delivered.remove(name);
        }
        self.echo.insert(name.clone(), echo);
        already
    }

    /// After `Joined` on connection `at`: where delivery goes on — after
    /// `since` if the history was replayed from there, else live from the
    /// room's `offset` now. On the same connection the position never moves
    /// back: events its stream or their copies delivered before this reply
    /// was handled stay delivered. A reply on another connection (a rejoin
    /// after a reconnect, whose stream waits for it) starts from the answer.
    pub(crate) fn settle(
        &mut self,
        name: &Arc<str>,
        at: RoomRef,
        offset: u64,
        since: Option<u64>,
        recovery: crate::wire::Recovery,
    ) {
        let base = match (recovery, since) {
            (crate::wire::Recovery::Recovered { .. }, Some(since)) => since,
            _ => offset,
        };
        match self.delivered.get_mut(name) {
            Some(p) if p.at == at => p.offset = p.offset.max(base),
            _ => {
                self.delivered
                    .insert(name.clone(), Position { at, offset: base });
            }
        }
    }

    /// Every joined room with its echo and the offset of the newest event
    /// delivered from it: what a reconnect rejoins and replays from.
    pub(crate) fn rejoin_list(&self) -> Vec<(Arc<str>, Option<bool>, Option<u64>)> {
        self.joined
            .iter()
            .map(|room| {
                let echo = self.echo.get(room).copied().flatten();
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

    /// Whether the reliable event at `offset` of `room`, received on `at`,
    /// should reach the application: its room is joined and it is newer
    /// than anything delivered.
    pub(crate) fn accept_reliable(&mut self, room: &Arc<str>, at: RoomRef, offset: u64) -> bool {
        if !self.joined.contains(room) {
            return false;
        }
        match self.delivered.get_mut(room) {
            Some(p) => {
                if offset <= p.offset {
                    return false;
                }
                *p = Position { at, offset };
            }
            None => {
                self.delivered.insert(room.clone(), Position { at, offset });
            }
        }
        true
    }

    /// Whether the datagram copy of the reliable event at `offset`, whose
    /// room's previous event is at `previous`, should reach the application:
    /// its room is joined, its position is known on this connection, and
    /// that previous event is exactly the newest one delivered. A copy never
    /// skips ahead, so the room's order holds; the stream frame that follows
    /// is a duplicate.
    pub(crate) fn accept_copy(
        &mut self,
        room: &Arc<str>,
        at: RoomRef,
        previous: u64,
        offset: u64,
    ) -> bool {
        if !self.joined.contains(room) || offset <= previous {
            return false;
        }
        match self.delivered.get_mut(room) {
            Some(p) if p.at == at && p.offset == previous => {
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

    fn on(link: u64, room_id: RoomId) -> RoomRef {
        RoomRef { link, room_id }
    }

    #[test]
    fn link_ids_are_per_connection_and_a_reused_id_takes_the_newer_name() {
        let mut first = LinkRooms::default();
        let a = first.learn(1, "a");
        first.learn(2, "b");
        assert_eq!(first.id("a"), Some(1));
        assert_eq!(first.name(2).map(|n| &**n), Some("b"));
        assert_eq!(&*first.learn(1, "a"), &*a);
        // A new connection starts with nothing, whatever the old one knew.
        let mut second = LinkRooms::default();
        assert_eq!(second.id("a"), None);
        second.learn(1, "b");
        assert_eq!(second.name(1).map(|n| &**n), Some("b"));
        // Should a server ever reuse an id, the old name is forgotten.
        first.learn(1, "c");
        assert_eq!(first.id("a"), None);
        assert_eq!(first.name(1).map(|n| &**n), Some("c"));
    }

    #[test]
    fn a_fresh_join_resets_the_datagram_order() {
        let mut link = LinkRooms::default();
        link.learn(1, "r");
        assert!(matches!(
            link.datagram_order(1).observe(50),
            crate::client::Verdict::Fresh { .. }
        ));
        assert_eq!(
            link.datagram_order(1).observe(3),
            crate::client::Verdict::Stale
        );
        link.reset_datagrams(1);
        assert!(matches!(
            link.datagram_order(1).observe(3),
            crate::client::Verdict::Fresh { .. }
        ));
    }

    #[test]
    fn a_room_counts_as_joined_before_its_reply() {
        let mut rooms = RoomTable::default();
        let name: Arc<str> = Arc::from("r");
        assert!(!rooms.start_joining(&name, Some(false)));
        // The event stream names the room; its events pass before `Joined`.
        assert!(rooms.accept_reliable(&name, on(1, 4), 1));
    }

    #[test]
    fn a_fresh_join_resets_the_position_and_epochs_forget_it() {
        let mut rooms = RoomTable::default();
        let kept: Arc<str> = Arc::from("kept");
        assert!(!rooms.start_joining(&kept, Some(false)));
        assert!(
            rooms.start_joining(&kept, Some(true)),
            "second join of the same room"
        );
        assert!(rooms.accept_reliable(&kept, on(1, 1), 10));
        assert_eq!(
            rooms.rejoin_list(),
            vec![(kept.clone(), Some(true), Some(10))]
        );
        rooms.joined.remove(&kept);
        assert!(!rooms.start_joining(&kept, Some(false)));
        assert!(
            rooms.accept_reliable(&kept, on(1, 1), 1),
            "a fresh join starts over"
        );
        rooms.settle(&kept, on(1, 1), 0, None, Recovery::Live);
        assert_eq!(
            rooms.rejoin_list(),
            vec![(kept.clone(), Some(false), Some(1))]
        );
        rooms.forget_positions();
        assert_eq!(rooms.rejoin_list(), vec![(kept, Some(false), None)]);
    }

    #[test]
    fn the_position_never_moves_back_on_one_connection() {
        let mut rooms = RoomTable::default();
        let name: Arc<str> = Arc::from("r");
        assert!(!rooms.start_joining(&name, Some(false)));
        // The stream and a copy overtake the `Joined { offset: 10 }` reply.
        assert!(rooms.accept_reliable(&name, on(1, 7), 11));
        assert!(rooms.accept_copy(&name, on(1, 7), 11, 12));
        rooms.settle(&name, on(1, 7), 10, None, Recovery::Live);
        assert!(
            !rooms.accept_reliable(&name, on(1, 7), 12),
            "delivered by its copy"
        );
        assert!(
            !rooms.accept_copy(&name, on(1, 7), 10, 11),
            "a late copy of 11"
        );
        assert!(rooms.accept_reliable(&name, on(1, 7), 13));
        // A rejoin on a new connection starts from its answer.
        rooms.settle(
            &name,
            on(2, 1),
            2,
            Some(13),
            Recovery::NotRecovered {
                reason: RecoveryFailure::UnknownPosition,
            },
        );
        assert_eq!(
            rooms.rejoin_list(),
            vec![(name.clone(), Some(false), Some(2))]
        );
        assert!(rooms.accept_reliable(&name, on(2, 1), 3));
        // A gap the history no longer covers moves the position forward.
        rooms.settle(
            &name,
            on(3, 5),
            50,
            Some(3),
            Recovery::NotRecovered {
                reason: RecoveryFailure::HistoryTooShort,
            },
        );
        assert_eq!(rooms.rejoin_list(), vec![(name, Some(false), Some(50))]);
    }

    #[test]
    fn a_copy_is_delivered_only_right_after_the_newest_delivered_on_its_connection() {
        let mut rooms = RoomTable::default();
        let name: Arc<str> = Arc::from("r");
        rooms.joined.insert(name.clone());
        assert!(
            !rooms.accept_copy(&name, on(1, 1), 0, 1),
            "position unknown until Joined"
        );
        rooms.settle(&name, on(1, 1), 4, None, Recovery::Live);
        assert!(!rooms.accept_copy(&name, on(1, 1), 5, 6), "would skip 5");
        assert!(
            !rooms.accept_copy(&name, on(2, 1), 4, 5),
            "another connection's copy"
        );
        assert!(rooms.accept_copy(&name, on(1, 1), 4, 5));
        assert!(
            !rooms.accept_reliable(&name, on(1, 1), 5),
            "the stream frame is a duplicate"
        );
        assert!(
            !rooms.accept_copy(&name, on(1, 1), 4, 5),
            "a repeated copy too"
        );
        assert!(rooms.accept_reliable(&name, on(1, 1), 6));
        // Offsets need not be consecutive: `previous` says what comes before.
        assert!(rooms.accept_copy(&name, on(1, 1), 6, 9));
        rooms.joined.remove(&name);
        assert!(!rooms.accept_copy(&name, on(1, 1), 9, 10), "left");
    }

    #[test]
    fn old_or_repeated_offsets_and_left_rooms_are_dropped() {
        let mut rooms = RoomTable::default();
        let name: Arc<str> = Arc::from("r");
        assert!(!rooms.accept_reliable(&name, on(1, 1), 1), "not joined");
        rooms.joined.insert(name.clone());
        assert!(rooms.accept_reliable(&name, on(1, 1), 5));
        assert!(!rooms.accept_reliable(&name, on(1, 1), 5), "duplicate");
        assert!(
            !rooms.accept_reliable(&name, on(2, 3), 3),
            "older, on any connection"
        );
        assert!(rooms.accept_reliable(&name, on(1, 1), 9), "gaps are normal");
        rooms.joined.remove(&name);
        assert!(!rooms.accept_reliable(&name, on(1, 1), 10), "left");
    }
}
