//! Signed tokens (JSON Web Tokens): verifying and minting.
//!
//! PLACEHOLDER SHAPE ONLY: the implementation with `jsonwebtoken` replaces
//! the bodies below; the API (names and signatures) is fixed.

use super::{PatternError, PermissionLists, Permissions};

/// The claim that holds quicbus permissions: `{"quicbus": {"publish": [..],
/// "subscribe": [..], "history": [..]}}`.
pub const PERMISSIONS_CLAIM: &str = "quicbus";

/// Checks tokens: HS256 with a shared secret, or ES256/RS256 with a public key.
#[derive(Clone)]
pub struct TokenVerifier {
    leeway: u64,
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenVerifier")
            .field("leeway", &self.leeway)
            .finish_non_exhaustive()
    }
}

/// A key that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("the secret is empty")]
    EmptySecret,
    #[error("not a usable public key: {0}")]
    BadPublicKey(String),
}

/// What a valid token says.
#[derive(Debug, Clone)]
pub struct VerifiedToken {
    /// `sub`: the user.
    pub user: String,
    /// `exp`, in seconds since the Unix epoch.
    pub expires: u64,
    /// The compiled permissions of the claim.
    pub permissions: Permissions,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("invalid token: not a well-formed JWT ({0})")]
    Malformed(String),
    #[error("invalid token: unsigned tokens (alg none) are refused")]
    AlgNone,
    #[error("invalid token: signed with {found}, the server expects {expected}")]
    WrongAlgorithm { expected: String, found: String },
    #[error("invalid token: bad signature")]
    BadSignature,
    #[error("token expired at {at} (Unix time)")]
    Expired { at: u64 },
    #[error("token not valid before {from} (Unix time)")]
    NotYetValid { from: u64 },
    #[error("invalid token: claim {claim}: {message}")]
    BadClaim {
        claim: &'static str,
        message: String,
    },
    #[error("invalid token: permission pattern: {0}")]
    BadPattern(PatternError),
}

impl TokenVerifier {
    /// HS256 with a shared secret.
    pub fn hs256(secret: &[u8]) -> Result<TokenVerifier, KeyError> {
        if secret.is_empty() {
            return Err(KeyError::EmptySecret);
        }
        Ok(TokenVerifier { leeway: 0 })
    }

    /// ES256 (a P-256 key) or RS256 (an RSA key), from a PEM public key.
    pub fn from_public_key_pem(_pem: &[u8]) -> Result<TokenVerifier, KeyError> {
        Err(KeyError::BadPublicKey("not implemented yet".into()))
    }

    /// Seconds of clock difference tolerated on `exp` and `nbf`.
    pub fn with_leeway(mut self, seconds: u64) -> TokenVerifier {
        self.leeway = seconds;
        self
    }

    /// Seconds of clock difference tolerated on `exp` and `nbf`.
    pub fn leeway(&self) -> u64 {
        self.leeway
    }

    /// Verifies a token at `now` (seconds since the Unix epoch).
    pub fn verify(&self, _token: &str, _now: u64) -> Result<VerifiedToken, TokenError> {
        Err(TokenError::Malformed("not implemented yet".into()))
    }
}

/// What `quicbus token` mints.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    pub user: String,
    pub permissions: PermissionLists,
    /// Seconds from now until `exp`.
    pub ttl: u64,
}

/// Mints an HS256 token at `now` (seconds since the Unix epoch).
pub fn mint_hs256(_secret: &[u8], _request: &TokenRequest, _now: u64) -> Result<String, KeyError> {
    Err(KeyError::EmptySecret)
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
