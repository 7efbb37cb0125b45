//! The signed tokens of a server measured with `--auth on`.
//!
//! The server checks HS256 tokens, as `serve --auth-secret-file` makes it
//! (no anonymous clients, no leeway), with a fresh random secret; each
//! client connects with a token that allows exactly what its part of the
//! scenario needs. Every list holds, before the one pattern that matches,
//! a few that do not, some of them sharing the rooms' first token: were the
//! server to match patterns per event instead of looking up the room's
//! cached grant, it would walk them all on every event.

use quicbus::auth::token::{mint_hs256, unix_now, TokenRequest, TokenVerifier};
use quicbus::auth::PermissionLists;
use quicbus::server::AuthConfig;

use super::pair::{PING, PONG};
use crate::bench::BenchError;

/// Tokens outlive any run.
const TOKEN_TTL_SECS: u64 = 24 * 3600;

/// Patterns a realistic token might also hold, none matching the bench's
/// rooms.
const OTHER_PATTERNS: [&str; 6] = [
    "chat.*.typing",
    "game.*.input",
    "metrics.>",
    "bench.admin.>",
    "bench.*.control",
    "bench.*.ping.replies",
];

/// The shared secret of one server.
pub(super) struct TokenAuth {
    secret: [u8; 32],
}

/// The tokens of a pair's two clients.
pub(super) struct PairTokens {
    /// Client A: publishes to `ping`; in a relay, receives from `pong`.
    pub(super) sender: String,
    /// Client B: receives from `ping`; in a relay, publishes to `pong`.
    pub(super) receiver: String,
}

impl TokenAuth {
    pub(super) fn new() -> Self {
        TokenAuth {
            secret: rand::random(),
        }
    }

    /// What `serve --auth-secret-file` with this secret configures.
    pub(super) fn server_config(&self) -> Result<AuthConfig, BenchError> {
        let verifier = TokenVerifier::hs256(&self.secret)
            .map_err(|e| BenchError::Other(format!("the bench's token secret: {e}")))?;
        Ok(AuthConfig {
            verifier: Some(verifier),
            allow_anonymous: false,
        })
    }

    /// Tokens for the clients of a relay (`relay`) or a one-way pair.
    pub(super) fn pair_tokens(&self, relay: bool) -> Result<PairTokens, BenchError> {
        let (sender, receiver) = pair_permissions(relay);
        Ok(PairTokens {
            sender: self.mint("bench-sender", sender)?,
            receiver: self.mint("bench-receiver", receiver)?,
        })
    }

    fn mint(&self, user: &str, permissions: PermissionLists) -> Result<String, BenchError> {
        let request = TokenRequest {
            user: user.into(),
            permissions,
            ttl: TOKEN_TTL_SECS,
        };
        mint_hs256(&self.secret, &request, unix_now())
            .map_err(|e| BenchError::Other(format!("minting the bench's tokens: {e}")))
    }
}

/// The permissions of A and of B: `bench.*.ping` and `bench.*.pong` after
/// [`OTHER_PATTERNS`], where the scenario needs them; no history.
fn pair_permissions(relay: bool) -> (PermissionLists, PermissionLists) {
    let ping = vec![wildcard(PING)];
    let pong = vec![wildcard(PONG)];
    let none = Vec::new;
    let sender = PermissionLists {
        publish: with_others(ping.clone()),
        subscribe: if relay {
            with_others(pong.clone())
        } else {
            none()
        },
        history: none(),
    };
    let receiver = PermissionLists {
        publish: if relay { with_others(pong) } else { none() },
        subscribe: with_others(ping),
        history: none(),
    };
    (sender, receiver)
}

/// `bench.latency.ping` → `bench.*.ping`.
fn wildcard(room: &str) -> String {
    let mut tokens: Vec<&str> = room.split('.').collect();
    if let Some(middle) = tokens.get_mut(1) {
        *middle = "*";
    }
    tokens.join(".")
}

fn with_others(matching: Vec<String>) -> Vec<String> {
    let mut list: Vec<String> = OTHER_PATTERNS.iter().map(|p| p.to_string()).collect();
    list.extend(matching);
    list
}

#[cfg(test)]
mod tests {
    use super::*;
    use quicbus::auth::{Action, Allowed, Permissions};

    fn compiled(lists: &PermissionLists) -> Permissions {
        Permissions::compile(lists).expect("valid patterns")
    }

    #[test]
    fn relay_tokens_allow_exactly_the_relay() {
        let (a, b) = pair_permissions(true);
        let (a, b) = (compiled(&a), compiled(&b));
        let publish = Allowed::NONE.with(Action::Publish);
        let subscribe = Allowed::NONE.with(Action::Subscribe);
        assert_eq!(a.allowed(PING), publish);
        assert_eq!(a.allowed(PONG), subscribe);
        assert_eq!(b.allowed(PING), subscribe);
        assert_eq!(b.allowed(PONG), publish);
        for other in [
            "bench.latency",
            "bench.latency.ping.x",
            "ping",
            "chat.x.pong",
        ] {
            assert_eq!(a.allowed(other), Allowed::NONE, "{other}");
            assert_eq!(b.allowed(other), Allowed::NONE, "{other}");
        }
    }

    #[test]
    fn oneway_tokens_allow_only_ping() {
        let (a, b) = pair_permissions(false);
        let (a, b) = (compiled(&a), compiled(&b));
        assert_eq!(a.allowed(PING), Allowed::NONE.with(Action::Publish));
        assert_eq!(b.allowed(PING), Allowed::NONE.with(Action::Subscribe));
        assert_eq!(a.allowed(PONG), Allowed::NONE);
        assert_eq!(b.allowed(PONG), Allowed::NONE);
    }

    #[test]
    fn every_list_walks_the_other_patterns_before_the_match() {
        let (a, b) = pair_permissions(true);
        for list in [&a.publish, &a.subscribe, &b.publish, &b.subscribe] {
            assert_eq!(list.len(), OTHER_PATTERNS.len() + 1, "{list:?}");
            let last = list.last().map(String::as_str);
            assert!(matches!(last, Some("bench.*.ping" | "bench.*.pong")));
        }
    }

    #[test]
    fn a_minted_token_verifies_with_the_servers_secret() {
        let auth = TokenAuth::new();
        let tokens = auth.pair_tokens(true).expect("minted");
        let config = auth.server_config().expect("config");
        let verifier = config.verifier.expect("a verifier");
        let verified = verifier.verify(&tokens.sender, unix_now()).expect("valid");
        assert_eq!(verified.user, "bench-sender");
        assert!(verified.permissions.allows(Action::Publish, PING));
        let other = TokenAuth::new().server_config().expect("config");
        let refused = other
            .verifier
            .expect("a verifier")
            .verify(&tokens.receiver, unix_now());
        assert!(refused.is_err());
    }
}
