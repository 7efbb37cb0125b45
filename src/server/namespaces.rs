//! Per-namespace settings.
//!
//! The first token of a room name is its namespace (`game` for
//! `game.lobby.1`). A namespace may have its own history limits, allow or
//! refuse datagrams, cap payloads, choose the echo default and give
//! anonymous clients permissions; a room of a namespace with no settings
//! uses the server's defaults.

use std::collections::HashMap;

use serde::Deserialize;

use crate::auth::{namespace_of, PatternError, PermissionLists, Permissions};

use super::history::HistoryLimits;

/// One namespace's settings as written in the config file; `None` means
/// "the server's default".
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceSettings {
    /// Reliable events each room keeps for recovery (0: no history).
    pub history_events: Option<usize>,
    /// Seconds an event stays in a room's history.
    pub history_seconds: Option<u64>,
    /// Bytes of history per room.
    pub history_bytes: Option<usize>,
    /// Whether datagrams may be published to the namespace's rooms.
    pub datagrams: Option<bool>,
    /// Largest payload of one event (reliable or datagram), in bytes.
    pub max_payload: Option<usize>,
    /// Whether a join that does not say gets its own events back.
    pub echo: Option<bool>,
    /// What clients without a token may do in this namespace (with
    /// `--allow-anonymous`), besides the server-wide anonymous permissions.
    pub anonymous: Option<PermissionLists>,
}

/// One namespace, ready for lookups.
#[derive(Debug, Clone)]
pub struct Namespace {
    pub history: HistoryLimits,
    pub datagrams: bool,
    pub max_payload: Option<usize>,
    pub echo: Option<bool>,
    pub anonymous: Permissions,
}

/// Every configured namespace, and the defaults for the others.
#[derive(Debug, Clone)]
pub struct Namespaces {
    default: Namespace,
    by_name: HashMap<String, Namespace>,
}

/// A namespace setting that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NamespaceError {
    /// A namespace name is empty or has a `.`, `*` or `>`.
    #[error("namespace '{0}': a namespace is one token of a room name, without '.', '*' or '>'")]
    BadName(String),
    /// A pattern of its anonymous permissions does not compile.
    #[error("namespace '{namespace}': anonymous: {source}")]
    Pattern {
        namespace: String,
        #[source]
        source: PatternError,
    },
}

impl Namespaces {
    /// Namespaces from their settings; `history` is the server's default,
    /// `anonymous` the server-wide anonymous permissions.
    pub fn new(
        history: HistoryLimits,
        anonymous: Permissions,
        settings: &HashMap<String, NamespaceSettings>,
    ) -> Result<Namespaces, NamespaceError> {
        let default = Namespace {
            history,
            datagrams: true,
            max_payload: None,
            echo: None,
            anonymous: anonymous.clone(),
        };
        let mut by_name = HashMap::new();
        for (name, s) in settings {
            if name.is_empty() || name.contains(['.', '*', '>']) {
                return Err(NamespaceError::BadName(name.clone()));
            }
            let own = match &s.anonymous {
                Some(lists) => {
                    Permissions::compile(lists).map_err(|source| NamespaceError::Pattern {
                        namespace: name.clone(),
                        source,
                    })?
                }
                None => Permissions::nothing(),
            };
            let namespace = Namespace {
                history: HistoryLimits {
                    max_events: s.history_events.unwrap_or(history.max_events),
                    max_age: s
                        .history_seconds
                        .map_or(history.max_age, std::time::Duration::from_secs),
                    max_bytes: s.history_bytes.unwrap_or(history.max_bytes),
                },
                datagrams: s.datagrams.unwrap_or(true),
                max_payload: s.max_payload,
                echo: s.echo,
                anonymous: anonymous.clone().union(&own),
            };
            by_name.insert(name.clone(), namespace);
        }
        Ok(Namespaces { default, by_name })
    }

    /// The settings of `room`'s namespace.
    pub fn of(&self, room: &str) -> &Namespace {
        self.by_name
            .get(namespace_of(room))
            .unwrap_or(&self.default)
    }

    /// Whether some namespace keeps other history than the default.
    pub fn has_own_history(&self) -> bool {
        self.by_name
            .values()
            .any(|ns| ns.history != self.default.history)
    }

    /// Each configured namespace's history limits, by name.
    pub fn history_limits(&self) -> HashMap<String, HistoryLimits> {
        self.by_name
            .iter()
            .map(|(name, ns)| (name.clone(), ns.history))
            .collect()
    }
}

impl Default for Namespaces {
    fn default() -> Self {
        Namespaces {
            default: Namespace {
                history: HistoryLimits::default(),
                datagrams: true,
                max_payload: None,
                echo: None,
                anonymous: Permissions::nothing(),
            },
            by_name: HashMap::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Action;

    #[test]
    fn a_room_uses_its_namespace_or_the_defaults() {
        let defaults = HistoryLimits::default();
        let anonymous = Permissions::compile(&PermissionLists {
            subscribe: vec!["public.>".into()],
            ..PermissionLists::default()
        })
        .expect("valid");
        let settings = HashMap::from([(
            "game".to_string(),
            NamespaceSettings {
                history_events: Some(0),
                datagrams: Some(false),
                max_payload: Some(100),
                echo: Some(true),
                anonymous: Some(PermissionLists {
                    subscribe: vec!["game.lobby".into()],
                    ..PermissionLists::default()
                }),
                ..NamespaceSettings::default()
            },
        )]);
        let ns = Namespaces::new(defaults, anonymous, &settings).expect("valid");
        let game = ns.of("game.lobby");
        assert_eq!(game.history.max_events, 0);
        assert_eq!(game.history.max_age, defaults.max_age);
        assert!(!game.datagrams);
        assert_eq!(game.max_payload, Some(100));
        assert_eq!(game.echo, Some(true));
        assert!(game.anonymous.allows(Action::Subscribe, "game.lobby"));
        assert!(game.anonymous.allows(Action::Subscribe, "public.news"));
        let chat = ns.of("chat.room");
        assert_eq!(chat.history, defaults);
        assert!(chat.datagrams);
        assert!(!chat.anonymous.allows(Action::Subscribe, "game.lobby"));
        assert!(chat.anonymous.allows(Action::Subscribe, "public.news"));
        // "gamex" is another namespace.
        assert!(ns.of("gamex.1").datagrams);
    }

    #[test]
    fn bad_names_and_patterns_are_refused() {
        let bad = |name: &str, s: NamespaceSettings| {
            Namespaces::new(
                HistoryLimits::default(),
                Permissions::nothing(),
                &HashMap::from([(name.to_string(), s)]),
            )
        };
        assert!(matches!(
            bad("a.b", NamespaceSettings::default()),
            Err(NamespaceError::BadName(_))
        ));
        let lists = PermissionLists {
            publish: vec!["a.>.b".into()],
            ..PermissionLists::default()
        };
        assert!(matches!(
            bad(
                "a",
                NamespaceSettings {
                    anonymous: Some(lists),
                    ..NamespaceSettings::default()
                }
            ),
            Err(NamespaceError::Pattern { .. })
        ));
    }
}
