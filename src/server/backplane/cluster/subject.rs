//! How rooms are named on NATS.
//!
//! A room name may hold anything a NATS subject token may not (`.`, `*`,
//! `>`, spaces), so each room becomes one token: `r` followed by its name in
//! unpadded URL-safe base64. Every subject of a cluster starts with its
//! prefix, so that several buses can share one NATS:
//!
//! - `<prefix>.ev.<token>`: the room's reliable events, stored in the stream;
//! - `<prefix>.live.<token>`: the same events republished by JetStream as they
//!   are stored, with their sequence in the headers (live delivery);
//! - `<prefix>.dg.<token>`: the room's datagrams, core NATS only, never stored.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

/// The subjects of one cluster (one prefix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subjects {
    prefix: String,
}

/// Why a prefix cannot name a cluster's subjects.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cluster prefix {0:?}: use 1 to 32 of A-Z a-z 0-9 _ -")]
pub struct BadPrefix(pub String);

impl Subjects {
    /// Subjects under `prefix` (letters, digits, `_` and `-`: it also names
    /// the stream).
    pub fn new(prefix: &str) -> Result<Self, BadPrefix> {
        let fine = !prefix.is_empty()
            && prefix.len() <= 32
            && prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !fine {
            return Err(BadPrefix(prefix.to_string()));
        }
        Ok(Subjects {
            prefix: prefix.to_string(),
        })
    }

    /// The JetStream stream that stores every room's events.
    pub fn stream(&self) -> String {
        format!(
            "{}_EVENTS",
            self.prefix.to_ascii_uppercase().replace('-', "_")
        )
    }

    /// Where room `room`'s events are stored.
    pub fn events(&self, room: &str) -> String {
        format!("{}.ev.{}", self.prefix, room_token(room))
    }

    /// Every room's stored events (the stream's subjects).
    pub fn all_events(&self) -> String {
        format!("{}.ev.>", self.prefix)
    }

    /// Where room `room`'s stored events are republished as they are stored.
    pub fn live(&self, room: &str) -> String {
        format!("{}.live.{}", self.prefix, room_token(room))
    }

    /// Where every room's events are republished.
    pub fn all_live(&self) -> String {
        format!("{}.live.>", self.prefix)
    }

    /// Where room `room`'s datagrams travel between nodes.
    pub fn datagrams(&self, room: &str) -> String {
        format!("{}.dg.{}", self.prefix, room_token(room))
    }
}

/// One NATS subject token that names room `room`, and no other room.
pub fn room_token(room: &str) -> String {
    let mut token = String::with_capacity(1 + room.len().div_ceil(3) * 4);
    token.push('r');
    URL_SAFE_NO_PAD.encode_string(room.as_bytes(), &mut token);
    token
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn subjects_carry_the_prefix_and_the_room_token() {
        let subjects = Subjects::new("qb-test").unwrap();
        assert_eq!(subjects.stream(), "QB_TEST_EVENTS");
        assert_eq!(subjects.events("chat"), "qb-test.ev.rY2hhdA");
        assert_eq!(subjects.live("chat"), "qb-test.live.rY2hhdA");
        assert_eq!(subjects.datagrams("chat"), "qb-test.dg.rY2hhdA");
        assert_eq!(subjects.all_events(), "qb-test.ev.>");
        assert_eq!(subjects.all_live(), "qb-test.live.>");
    }

    #[test]
    fn a_prefix_that_would_break_a_subject_is_refused() {
        for bad in ["", "a.b", "a b", "a*", ">", "é", &"x".repeat(33)] {
            assert_eq!(Subjects::new(bad), Err(BadPrefix(bad.to_string())));
        }
    }

    proptest! {
        #[test]
        fn a_room_token_is_one_subject_token_and_names_one_room(a in ".{0,40}", b in ".{0,40}") {
            let token = room_token(&a);
            prop_assert!(token.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
            prop_assert_eq!(a == b, token == room_token(&b));
        }
    }
}
