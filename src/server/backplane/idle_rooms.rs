//! The rooms nobody is subscribed to, in the order they became so: what a
//! full room table evicts first, found in O(log n) instead of a scan.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// An ordered set of room names, oldest first.
#[derive(Default)]
pub(super) struct IdleRooms {
    by_age: BTreeMap<u64, Arc<str>>,
    age_of: HashMap<Arc<str>, u64>,
    next: u64,
}

impl IdleRooms {
    /// Marks `name` idle from now (moving it to the back if it was already).
    pub fn insert(&mut self, name: Arc<str>) {
        self.remove(&name);
        let age = self.next;
        self.next += 1;
        self.by_age.insert(age, name.clone());
        self.age_of.insert(name, age);
    }

    /// `name` has a subscriber again (or is gone).
    pub fn remove(&mut self, name: &str) {
        if let Some(age) = self.age_of.remove(name) {
            self.by_age.remove(&age);
        }
    }

    /// Takes the room idle the longest.
    pub fn pop_oldest(&mut self) -> Option<Arc<str>> {
        let (_, name) = self.by_age.pop_first()?;
        self.age_of.remove(&name);
        Some(name)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.age_of.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_room_idle_longest_goes_first_and_busy_rooms_never() {
        let mut idle = IdleRooms::default();
        for name in ["a", "b", "c"] {
            idle.insert(Arc::from(name));
        }
        idle.remove("b"); // subscribed
        idle.insert(Arc::from("a")); // idle again later: to the back
        assert_eq!(idle.len(), 2);
        assert_eq!(idle.pop_oldest().as_deref(), Some("c"));
        assert_eq!(idle.pop_oldest().as_deref(), Some("a"));
        assert_eq!(idle.pop_oldest(), None);
        idle.remove("nothing");
        assert_eq!(idle.len(), 0);
    }
}
