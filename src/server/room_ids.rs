//! The room ids of one connection.
//!
//! Room ids on the wire belong to a connection: the server hands one out
//! for each room name the connection names (`Join`, `Resolve`), keeps it
//! for the connection's life, and accepts only ids it handed out there. So
//! no id can be guessed into a room the connection never named, and ids
//! never outlive the connection they were given on (a client resolves
//! names again after every reconnect).
//!
//! Each id keeps what the connection may do in its room ([`RoomGrant`]),
//! so a datagram's permission check is part of the id lookup.

use std::collections::HashMap;
use std::sync::Arc;

use super::access::RoomGrant;
use crate::wire::RoomId;

/// Most room names one connection may hold ids for.
pub const MAX_ROOM_IDS: usize = 65_536;

/// The ids handed out on one connection. Owned by its session task.
pub(crate) struct RoomIds {
    by_name: HashMap<Arc<str>, RoomId>,
    names: HashMap<RoomId, Named>,
    next: RoomId,
    max: usize,
}

impl Default for RoomIds {
    fn default() -> Self {
        RoomIds::with_max(MAX_ROOM_IDS)
    }
}

/// A room as one connection named it.
#[derive(Debug, Clone)]
pub(crate) struct Named {
    pub name: Arc<str>,
    pub grant: RoomGrant,
    /// The client was told once that a datagram to this room was refused;
    /// later refusals are counted, not repeated.
    pub told: bool,
}

/// The connection already holds ids for its maximum of rooms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TooManyIds;

impl RoomIds {
    /// Ids for at most `max` names (never more than [`MAX_ROOM_IDS`]).
    pub fn with_max(max: usize) -> Self {
        RoomIds {
            by_name: HashMap::new(),
            names: HashMap::new(),
            next: 0,
            max: max.min(MAX_ROOM_IDS),
        }
    }

    /// The most names this connection may hold ids for.
    pub fn max(&self) -> usize {
        self.max
    }

    /// The id of room `name` on this connection, handing out the next one
    /// the first time (with `grant`); with the name as the connection keeps it.
    pub fn id_for(
        &mut self,
        name: &str,
        grant: RoomGrant,
    ) -> Result<(RoomId, Arc<str>), TooManyIds> {
        if let Some((name, id)) = self.by_name.get_key_value(name) {
            return Ok((*id, name.clone()));
        }
        if self.by_name.len() >= self.max {
            return Err(TooManyIds);
        }
        // Ids start at 1 and are never given to a second name.
        self.next += 1;
        let id = self.next;
        let name: Arc<str> = Arc::from(name);
        self.by_name.insert(name.clone(), id);
        let named = Named {
            name: name.clone(),
            grant,
            told: false,
        };
        self.names.insert(id, named);
        Ok((id, name))
    }

    /// The room an id names on this connection, if it was handed out here.
    pub fn name(&self, id: RoomId) -> Option<&Arc<str>> {
        self.names.get(&id).map(|named| &named.name)
    }

    /// The room an id names, with its grant.
    pub fn named(&mut self, id: RoomId) -> Option<&mut Named> {
        self.names.get_mut(&id)
    }

    /// Computes every room's grant again (the connection's token changed).
    pub fn regrant(&mut self, mut grant: impl FnMut(&str) -> RoomGrant) {
        for named in self.names.values_mut() {
            named.grant = grant(&named.name);
            named.told = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRANT: RoomGrant = RoomGrant {
        allowed: crate::auth::Allowed::ALL,
        datagrams: true,
        max_payload: usize::MAX,
        echo: None,
    };

    #[test]
    fn ids_are_per_name_stable_and_only_those_handed_out_are_known() {
        let mut ids = RoomIds::default();
        let (a, _) = ids.id_for("a", GRANT).unwrap();
        let (b, name) = ids.id_for("b", GRANT).unwrap();
        assert_ne!(a, b);
        assert_eq!(&*name, "b");
        assert_eq!(
            ids.id_for("a", GRANT).unwrap().0,
            a,
            "the same name keeps its id"
        );
        assert_eq!(ids.name(b).map(|n| &**n), Some("b"));
        assert_eq!(ids.name(0), None);
        assert_eq!(ids.name(b + 1), None, "an id never handed out");
        // Another connection's table knows nothing of these.
        assert_eq!(RoomIds::default().name(a), None);
    }

    #[test]
    fn the_table_is_bounded() {
        let mut ids = RoomIds::default();
        for i in 0..MAX_ROOM_IDS {
            ids.id_for(&i.to_string(), GRANT).unwrap();
        }
        assert_eq!(ids.id_for("one more", GRANT), Err(TooManyIds));
        assert!(ids.id_for("0", GRANT).is_ok(), "known names still resolve");
    }
}
