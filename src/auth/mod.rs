//! Who may do what: room patterns, permissions, and signed tokens.
//!
//! A client proves who it is with a JSON Web Token in `Hello` ([`token`]);
//! the token's claims say which rooms it may publish to, subscribe to and
//! replay the history of, as lists of [`Pattern`]s. The server compiles a
//! connection's lists once and caches each room's answer ([`Allowed`]) with
//! the room's id on that connection, so a check on the hot path is a lookup,
//! not a pattern match.

pub mod pattern;
pub mod token;

use serde::{Deserialize, Serialize};

pub use pattern::{namespace_of, Pattern, PatternError};

/// What a permission allows. On the wire in `Frame::Forbidden`: the
/// variant order is the tag, never reorder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Action {
    /// Publish reliable events and datagrams to a room.
    Publish,
    /// Join a room and receive its events.
    Subscribe,
    /// Replay a room's history (a join with `since`, a resume).
    History,
}

impl Action {
    /// The action's name, as in claims and messages.
    pub fn name(self) -> &'static str {
        match self {
            Action::Publish => "publish",
            Action::Subscribe => "subscribe",
            Action::History => "history",
        }
    }

    /// Every action, in a fixed order.
    pub const ALL: [Action; 3] = [Action::Publish, Action::Subscribe, Action::History];

    fn bit(self) -> u8 {
        match self {
            Action::Publish => 1,
            Action::Subscribe => 2,
            Action::History => 4,
        }
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Permission lists as written in a token's claims or the config file:
/// patterns of rooms per action. A missing list allows nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PermissionLists {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub publish: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subscribe: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<String>,
}

impl PermissionLists {
    /// The list for one action.
    pub fn list(&self, action: Action) -> &[String] {
        match action {
            Action::Publish => &self.publish,
            Action::Subscribe => &self.subscribe,
            Action::History => &self.history,
        }
    }
}

/// Compiled permission lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Permissions {
    lists: [Vec<Pattern>; 3],
}

impl Permissions {
    /// Compiles every pattern; the first bad one is the error.
    pub fn compile(lists: &PermissionLists) -> Result<Permissions, PatternError> {
        let compile = |action: Action| -> Result<Vec<Pattern>, PatternError> {
            lists
                .list(action)
                .iter()
                .map(|p| Pattern::parse(p))
                .collect()
        };
        Ok(Permissions {
            lists: [
                compile(Action::Publish)?,
                compile(Action::Subscribe)?,
                compile(Action::History)?,
            ],
        })
    }

    /// Everything on every room (a server without token checks).
    pub fn everything() -> Permissions {
        let all = || vec![Pattern::parse(">").unwrap_or_else(|_| unreachable!())];
        Permissions {
            lists: [all(), all(), all()],
        }
    }

    /// Nothing at all.
    pub fn nothing() -> Permissions {
        Permissions::default()
    }

    /// Whether `action` is allowed on `room`: a pattern match. Callers on
    /// a hot path cache [`Permissions::allowed`] per room instead.
    pub fn allows(&self, action: Action, room: &str) -> bool {
        self.patterns(action).iter().any(|p| p.matches(room))
    }

    /// Every action allowed on `room`.
    pub fn allowed(&self, room: &str) -> Allowed {
        let mut allowed = Allowed::NONE;
        for action in Action::ALL {
            if self.allows(action, room) {
                allowed = allowed.with(action);
            }
        }
        allowed
    }

    /// The patterns of one action.
    pub fn patterns(&self, action: Action) -> &[Pattern] {
        &self.lists[action as usize]
    }

    /// These permissions and `other`'s together.
    pub fn union(mut self, other: &Permissions) -> Permissions {
        for (mine, theirs) in self.lists.iter_mut().zip(&other.lists) {
            mine.extend(theirs.iter().cloned());
        }
        self
    }
}

/// The actions allowed on one room: a set of [`Action`]s in a byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Allowed(u8);

impl Allowed {
    /// No action.
    pub const NONE: Allowed = Allowed(0);
    /// Every action.
    pub const ALL: Allowed = Allowed(7);

    /// Whether `action` is in the set.
    pub fn contains(self, action: Action) -> bool {
        self.0 & action.bit() != 0
    }

    /// The set with `action` added.
    pub fn with(self, action: Action) -> Allowed {
        Allowed(self.0 | action.bit())
    }

    /// The set without `action`.
    pub fn without(self, action: Action) -> Allowed {
        Allowed(self.0 & !action.bit())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lists(publish: &[&str], subscribe: &[&str], history: &[&str]) -> PermissionLists {
        let owned = |l: &[&str]| l.iter().map(|s| s.to_string()).collect();
        PermissionLists {
            publish: owned(publish),
            subscribe: owned(subscribe),
            history: owned(history),
        }
    }

    #[test]
    fn each_action_has_its_own_list() {
        let p = Permissions::compile(&lists(&["game.*.input"], &["game.>"], &["game.lobby"]))
            .expect("valid");
        assert_eq!(
            p.allowed("game.lobby"),
            Allowed::NONE.with(Action::Subscribe).with(Action::History)
        );
        assert_eq!(
            p.allowed("game.p1.input"),
            Allowed::NONE.with(Action::Publish).with(Action::Subscribe)
        );
        assert_eq!(p.allowed("chat.lobby"), Allowed::NONE);
        assert!(!p.allowed("chat").contains(Action::Subscribe));
    }

    #[test]
    fn everything_and_nothing() {
        assert_eq!(Permissions::everything().allowed("a.b.c"), Allowed::ALL);
        assert_eq!(Permissions::everything().allowed("x"), Allowed::ALL);
        assert_eq!(Permissions::nothing().allowed("x"), Allowed::NONE);
    }

    #[test]
    fn a_bad_pattern_fails_the_whole_compile() {
        let bad = lists(&["ok"], &["game.>.x"], &[]);
        assert!(matches!(
            Permissions::compile(&bad),
            Err(PatternError::RestNotLast(_))
        ));
    }

    #[test]
    fn union_allows_what_either_allows() {
        let a = Permissions::compile(&lists(&["a"], &[], &[])).expect("valid");
        let b = Permissions::compile(&lists(&[], &["b.>"], &[])).expect("valid");
        let both = a.union(&b);
        assert!(both.allows(Action::Publish, "a"));
        assert!(both.allows(Action::Subscribe, "b.c"));
        assert!(!both.allows(Action::Publish, "b.c"));
    }

    #[test]
    fn permission_lists_refuse_unknown_keys() {
        let parsed: Result<PermissionLists, _> =
            serde_json::from_str(r#"{"publish":["a"],"subscrbe":["b"]}"#);
        assert!(parsed.is_err());
    }
}
