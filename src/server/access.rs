//! Who a connection is and what it may do.
//!
//! `Hello`'s token is checked once ([`authenticate`]); the result, an
//! [`Access`], answers per room with a [`RoomGrant`]: the actions the token
//! (or, for an anonymous client, the room's namespace) allows, and the
//! namespace's rules. A session computes a room's grant once, when the room
//! is named on the connection, and keeps it with the room's id, so the
//! checks on the hot path (every datagram, every publish) are lookups. A
//! `Refresh` swaps the access and bumps a generation number; whoever holds a
//! grant recomputes it when the number moved.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::namespaces::Namespaces;
use super::stats::Refusal;
use super::AuthConfig;
use crate::auth::token::{TokenError, TokenVerifier};
use crate::auth::{Action, Allowed, Permissions};
use crate::sync::lock;
use crate::wire::{ErrorCode, MAX_NAME_LEN};

/// Who is on a connection.
#[derive(Debug)]
pub(crate) enum Identity {
    /// The server checks no signed tokens: everything is allowed.
    Open,
    /// A verified token.
    User {
        user: String,
        /// `exp`, seconds since the Unix epoch.
        expires: u64,
        permissions: Permissions,
    },
    /// No token, let in by `allow_anonymous`: the namespaces' anonymous
    /// permissions apply.
    Anonymous,
}

/// What a room allows one connection, computed once per room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RoomGrant {
    pub allowed: Allowed,
    /// The room's namespace takes datagrams.
    pub datagrams: bool,
    /// Largest payload of one event in the room's namespace.
    pub max_payload: usize,
    /// The namespace's echo default for joins that do not say.
    pub echo: Option<bool>,
}

impl RoomGrant {
    /// Whether `action` is allowed.
    pub fn allows(&self, action: Action) -> bool {
        self.allowed.contains(action)
    }
}

impl Identity {
    /// The grant of `room`.
    pub fn grant(&self, room: &str, namespaces: &Namespaces) -> RoomGrant {
        let namespace = namespaces.of(room);
        let allowed = match self {
            Identity::Open => Allowed::ALL,
            Identity::User { permissions, .. } => permissions.allowed(room),
            Identity::Anonymous => namespace.anonymous.allowed(room),
        };
        RoomGrant {
            allowed,
            datagrams: namespace.datagrams,
            max_payload: namespace.max_payload.unwrap_or(usize::MAX),
            echo: namespace.echo,
        }
    }

    /// The token's `sub`, if the connection has one.
    pub fn user(&self) -> Option<&str> {
        match self {
            Identity::User { user, .. } => Some(user),
            _ => None,
        }
    }

    /// When the token expires, seconds since the Unix epoch.
    pub fn expires(&self) -> Option<u64> {
        match self {
            Identity::User { expires, .. } => Some(*expires),
            _ => None,
        }
    }
}

/// The identity of one connection, replaced by a `Refresh`.
pub(crate) struct Access {
    identity: Mutex<Arc<Identity>>,
    /// Bumped on every change of `identity`.
    generation: AtomicU64,
}

impl Access {
    pub fn new(identity: Identity) -> Self {
        Access {
            identity: Mutex::new(Arc::new(identity)),
            generation: AtomicU64::new(0),
        }
    }

    /// The current identity.
    pub fn identity(&self) -> Arc<Identity> {
        lock(&self.identity).clone()
    }

    /// Moves when the identity is replaced: a grant computed at an older
    /// generation must be computed again.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The grant of `room` now, with the generation it belongs to.
    pub fn grant(&self, room: &str, namespaces: &Namespaces) -> (RoomGrant, u64) {
        let identity = lock(&self.identity);
        let generation = self.generation();
        (identity.grant(room, namespaces), generation)
    }

    /// Replaces the identity (a `Refresh`).
    pub fn replace(&self, identity: Identity) {
        let mut current = lock(&self.identity);
        *current = Arc::new(identity);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

/// A token refused: the code and reason for the client, the counter.
#[derive(Debug)]
pub(crate) struct Refused {
    pub code: ErrorCode,
    pub refusal: Refusal,
    pub reason: String,
    /// It counts against the address's failed `Hello`s: a bad signature
    /// may be a guess; an expired or not yet valid token (a clock off, at
    /// worst) is not, so clients behind one address with skewed clocks do
    /// not lock each other out.
    pub guess: bool,
}

/// Checks `Hello`'s token on a server with signed tokens.
pub(crate) fn authenticate(
    auth: &AuthConfig,
    verifier: &TokenVerifier,
    token: Option<&str>,
    now: u64,
) -> Result<Identity, Refused> {
    match token {
        None | Some("") if auth.allow_anonymous => Ok(Identity::Anonymous),
        None | Some("") => Err(Refused {
            code: ErrorCode::TokenRequired,
            refusal: Refusal::TokenRequired,
            reason: "this server accepts only clients with a signed token".into(),
            guess: false,
        }),
        Some(token) => verify(verifier, token, now),
    }
}

/// Verifies a token (in `Hello` or `Refresh`).
pub(crate) fn verify(verifier: &TokenVerifier, token: &str, now: u64) -> Result<Identity, Refused> {
    match verifier.verify(token, now) {
        Ok(verified) if verified.user.len() > MAX_NAME_LEN => Err(Refused {
            code: ErrorCode::InvalidToken,
            refusal: Refusal::TokenInvalid,
            reason: format!(
                "invalid token: sub is {} bytes, over the limit of {MAX_NAME_LEN}",
                verified.user.len()
            ),
            guess: false,
        }),
        Ok(verified) => Ok(Identity::User {
            user: verified.user,
            expires: verified.expires,
            permissions: verified.permissions,
        }),
        Err(e @ TokenError::Expired { .. }) => Err(Refused {
            code: ErrorCode::TokenExpired,
            refusal: Refusal::TokenExpired,
            reason: e.to_string(),
            guess: false,
        }),
        Err(e) => Err(Refused {
            code: ErrorCode::InvalidToken,
            refusal: Refusal::TokenInvalid,
            guess: !matches!(e, TokenError::NotYetValid { .. }),
            reason: e.to_string(),
        }),
    }
}

/// How long from now until `expires` (seconds since the Unix epoch) plus
/// `leeway` seconds.
pub(crate) fn until(expires: u64, leeway: u64) -> Duration {
    let at = UNIX_EPOCH + Duration::from_secs(expires.saturating_add(leeway));
    at.duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::PermissionLists;
    use crate::server::history::HistoryLimits;
    use crate::server::namespaces::NamespaceSettings;
    use std::collections::HashMap;

    fn namespaces() -> Namespaces {
        let anonymous = Permissions::compile(&PermissionLists {
            subscribe: vec!["public.>".into()],
            ..PermissionLists::default()
        })
        .expect("valid");
        let settings = HashMap::from([(
            "game".to_string(),
            NamespaceSettings {
                datagrams: Some(false),
                max_payload: Some(64),
                anonymous: Some(PermissionLists {
                    subscribe: vec!["game.lobby".into()],
                    ..PermissionLists::default()
                }),
                ..NamespaceSettings::default()
            },
        )]);
        Namespaces::new(HistoryLimits::default(), anonymous, &settings).expect("valid")
    }

    #[test]
    fn a_grant_combines_the_identity_and_the_namespace() {
        let ns = namespaces();
        let open = Identity::Open.grant("game.x", &ns);
        assert_eq!(open.allowed, Allowed::ALL);
        assert!(!open.datagrams);
        assert_eq!(open.max_payload, 64);

        let user = Identity::User {
            user: "ann".into(),
            expires: 0,
            permissions: Permissions::compile(&PermissionLists {
                publish: vec!["chat.*".into()],
                ..PermissionLists::default()
            })
            .expect("valid"),
        };
        assert!(user.grant("chat.a", &ns).allows(Action::Publish));
        assert!(!user.grant("chat.a", &ns).allows(Action::Subscribe));
        assert!(user.grant("chat.a", &ns).datagrams);
        assert_eq!(user.grant("chat.a", &ns).max_payload, usize::MAX);

        let anonymous = Identity::Anonymous;
        assert!(anonymous.grant("game.lobby", &ns).allows(Action::Subscribe));
        assert!(!anonymous.grant("game.hall", &ns).allows(Action::Subscribe));
        assert!(anonymous
            .grant("public.news", &ns)
            .allows(Action::Subscribe));
        assert!(!anonymous.grant("public.news", &ns).allows(Action::Publish));
    }

    #[test]
    fn replacing_the_identity_moves_the_generation() {
        let ns = namespaces();
        let access = Access::new(Identity::Anonymous);
        let (before, generation) = access.grant("chat.a", &ns);
        assert_eq!(before.allowed, Allowed::NONE);
        access.replace(Identity::Open);
        assert_ne!(access.generation(), generation);
        assert_eq!(access.grant("chat.a", &ns).0.allowed, Allowed::ALL);
    }
}
