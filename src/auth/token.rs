//! Signed tokens (JSON Web Tokens): verifying and minting.
//!
//! A token says who the client is (`sub`), until when it holds (`exp`, and
//! optionally from when: `nbf`), and what the client may do: the
//! [`PERMISSIONS_CLAIM`], the [`PermissionLists`] of the config file.
//!
//! `jsonwebtoken` (with ring, the crypto rustls uses here) checks the
//! signature; this module checks everything around it, so that every
//! refusal has its own [`TokenError`]:
//! - the header first, by hand: `jsonwebtoken` cannot even parse `alg:
//!   none`, and an algorithm other than the key's is named in the error;
//! - the claims after the signature, with their types: the time checks take
//!   `now` as an input, so they are tested without a clock. `jsonwebtoken`'s
//!   own `exp`/`nbf` checks stay off: in 9.x they treat a claim of the wrong
//!   type (`"nbf": "99999999999"`) as absent (GHSA-h395-gr6q-cpjc); here it
//!   is a [`TokenError::BadClaim`].

use std::fmt;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use jsonwebtoken::{DecodingKey, EncodingKey, Header, Validation};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};

use super::{PatternError, PermissionLists, Permissions};

/// The claim that holds quicbus permissions: `{"quicbus": {"publish": [..],
/// "subscribe": [..], "history": [..]}}`.
pub const PERMISSIONS_CLAIM: &str = "quicbus";

/// A signature algorithm quicbus accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// HMAC-SHA-256 with a shared secret.
    Hs256,
    /// ECDSA on P-256 with SHA-256.
    Es256,
    /// RSASSA-PKCS1-v1_5 with SHA-256, keys of 2048 to 8192 bits.
    Rs256,
}

impl Algorithm {
    /// The name in a token's header.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Hs256 => "HS256",
            Algorithm::Es256 => "ES256",
            Algorithm::Rs256 => "RS256",
        }
    }

    fn jwt(self) -> jsonwebtoken::Algorithm {
        match self {
            Algorithm::Hs256 => jsonwebtoken::Algorithm::HS256,
            Algorithm::Es256 => jsonwebtoken::Algorithm::ES256,
            Algorithm::Rs256 => jsonwebtoken::Algorithm::RS256,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Checks tokens: HS256 with a shared secret, or ES256/RS256 with a public key.
#[derive(Clone)]
pub struct TokenVerifier {
    algorithm: Algorithm,
    key: DecodingKey,
    /// Signature only: the claims are checked by [`Claims::read`].
    validation: Validation,
    leeway: u64,
}

// Not derived: the key (an HMAC secret) must never reach a log.
impl fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenVerifier")
            .field("algorithm", &self.algorithm)
            .field("leeway", &self.leeway)
            .finish_non_exhaustive()
    }
}

/// A key that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// An HS256 secret of no bytes.
    #[error("the secret is empty")]
    EmptySecret,
    /// Not a P-256 or RSA public key in PEM.
    #[error("not a usable public key: {0}")]
    BadPublicKey(String),
    /// Minting failed: a private key that does not fit the algorithm.
    #[error("cannot sign: {0}")]
    CannotSign(String),
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
    /// Not three base64url parts of JSON.
    #[error("invalid token: not a well-formed JWT ({0})")]
    Malformed(String),
    /// `alg: none`, whatever its case.
    #[error("invalid token: unsigned tokens (alg none) are refused")]
    AlgNone,
    /// Signed with another algorithm than the server's key (`found`: the
    /// first 16 characters of the header's `alg`).
    #[error("invalid token: signed with {found}, the server expects {expected}")]
    WrongAlgorithm { expected: String, found: String },
    /// The signature does not match the header and claims.
    #[error("invalid token: bad signature")]
    BadSignature,
    /// `now` is at or past `exp` plus the leeway.
    #[error("token expired at {at} (Unix time)")]
    Expired { at: u64 },
    /// `now` plus the leeway is before `nbf`.
    #[error("token not valid before {from} (Unix time)")]
    NotYetValid { from: u64 },
    /// A claim is missing, empty or of the wrong type.
    #[error("invalid token: claim {claim}: {message}")]
    BadClaim {
        claim: &'static str,
        message: String,
    },
    /// A pattern of the permissions claim does not compile.
    #[error("invalid token: permission pattern: {0}")]
    BadPattern(PatternError),
}

impl TokenVerifier {
    /// HS256 with a shared secret.
    pub fn hs256(secret: &[u8]) -> Result<TokenVerifier, KeyError> {
        if secret.is_empty() {
            return Err(KeyError::EmptySecret);
        }
        Ok(TokenVerifier::new(
            Algorithm::Hs256,
            DecodingKey::from_secret(secret),
        ))
    }

    /// ES256 (a P-256 key) or RS256 (an RSA key), from a PEM public key:
    /// `BEGIN PUBLIC KEY` (SPKI, either kind) or `BEGIN RSA PUBLIC KEY`
    /// (PKCS#1). The key decides the algorithm.
    pub fn from_public_key_pem(pem: &[u8]) -> Result<TokenVerifier, KeyError> {
        let bad = |message: String| Err(KeyError::BadPublicKey(message));
        let (label, der) = pem_section(pem)?;
        match label {
            "PUBLIC KEY" => {
                if let Some(point) = der.strip_prefix(P256_SPKI_HEADER.as_slice()) {
                    if point.len() == P256_POINT_LEN {
                        let key = DecodingKey::from_ec_der(point);
                        return Ok(TokenVerifier::new(Algorithm::Es256, key));
                    }
                }
                if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
                    return rsa_verifier(key, &der);
                }
                if DecodingKey::from_ec_pem(pem).is_ok() {
                    return bad("an EC key on another curve than P-256 (ES256 needs P-256)".into());
                }
                bad("neither a P-256 key (ES256) nor an RSA key (RS256)".into())
            }
            "RSA PUBLIC KEY" => match DecodingKey::from_rsa_pem(pem) {
                Ok(key) => rsa_verifier(key, &der),
                Err(e) => bad(format!("a bad PKCS#1 RSA public key: {e}")),
            },
            "CERTIFICATE" => bad("a certificate, not a public key; extract its key with \
                 `openssl x509 -in CERT -pubkey -noout`"
                .into()),
            private if private.ends_with("PRIVATE KEY") => bad(format!(
                "a private key ({private}); the server needs only the public key: \
                 `openssl pkey -in KEY -pubout`"
            )),
            other => bad(format!(
                "a PEM '{other}'; expected 'PUBLIC KEY' or 'RSA PUBLIC KEY'"
            )),
        }
    }

    fn new(algorithm: Algorithm, key: DecodingKey) -> TokenVerifier {
        let mut validation = Validation::new(algorithm.jwt());
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        TokenVerifier {
            algorithm,
            key,
            validation,
            leeway: 0,
        }
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

    /// The algorithm tokens must be signed with.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Verifies a token at `now` (seconds since the Unix epoch).
    pub fn verify(&self, token: &str, now: u64) -> Result<VerifiedToken, TokenError> {
        self.check_header(token)?;
        let claims = jsonwebtoken::decode::<Map<String, Value>>(token, &self.key, &self.validation)
            .map_err(refusal)?
            .claims;
        let claims = Claims::read(claims)?;
        claims.check_time(now, self.leeway)?;
        let permissions =
            Permissions::compile(&claims.permissions).map_err(TokenError::BadPattern)?;
        Ok(VerifiedToken {
            user: claims.sub,
            expires: claims.exp,
            permissions,
        })
    }

    /// The shape, `alg` and `crit` of the header, before any signature work.
    fn check_header(&self, token: &str) -> Result<(), TokenError> {
        let parts: Vec<&str> = token.split('.').collect();
        let [header, _, _] = parts[..] else {
            return Err(TokenError::Malformed(format!(
                "{} dot-separated parts, not 3",
                parts.len()
            )));
        };
        let header: Map<String, Value> = decode_part(header, "header")?;
        let found = match header.get("alg") {
            Some(Value::String(alg)) => alg,
            Some(_) => return Err(TokenError::Malformed("alg is not a string".into())),
            None => return Err(TokenError::Malformed("the header has no alg".into())),
        };
        if found.eq_ignore_ascii_case("none") {
            return Err(TokenError::AlgNone);
        }
        if found != self.algorithm.name() {
            return Err(TokenError::WrongAlgorithm {
                expected: self.algorithm.name().into(),
                found: found.chars().take(16).collect(),
            });
        }
        // RFC 7515 4.1.11: extensions listed as critical must be understood.
        if header.contains_key("crit") {
            return Err(TokenError::Malformed(
                "the header lists critical extensions (crit), which quicbus does not know".into(),
            ));
        }
        Ok(())
    }
}

/// The claims quicbus reads, present and of the right types.
struct Claims {
    sub: String,
    exp: u64,
    nbf: Option<u64>,
    permissions: PermissionLists,
}

impl Claims {
    fn read(mut claims: Map<String, Value>) -> Result<Claims, TokenError> {
        let sub = match claims.remove("sub") {
            Some(Value::String(sub)) if !sub.is_empty() => sub,
            Some(Value::String(_)) => return Err(bad_claim("sub", "empty; it names the user")),
            Some(_) => return Err(bad_claim("sub", "not a string")),
            None => return Err(bad_claim("sub", "missing; it names the user")),
        };
        let exp = seconds(&claims, "exp")?
            .ok_or_else(|| bad_claim("exp", "missing; every token must expire"))?;
        let nbf = seconds(&claims, "nbf")?;
        // Not used, but a malformed one is refused like the others.
        seconds(&claims, "iat")?;
        let permissions = match claims.remove(PERMISSIONS_CLAIM) {
            None => PermissionLists::default(),
            Some(lists) => serde_json::from_value(lists)
                .map_err(|e| bad_claim(PERMISSIONS_CLAIM, &e.to_string()))?,
        };
        Ok(Claims {
            sub,
            exp,
            nbf,
            permissions,
        })
    }

    fn check_time(&self, now: u64, leeway: u64) -> Result<(), TokenError> {
        if now >= self.exp.saturating_add(leeway) {
            return Err(TokenError::Expired { at: self.exp });
        }
        match self.nbf {
            Some(nbf) if now.saturating_add(leeway) < nbf => {
                Err(TokenError::NotYetValid { from: nbf })
            }
            _ => Ok(()),
        }
    }
}

/// A time claim: absent, or whole seconds since the Unix epoch.
fn seconds(claims: &Map<String, Value>, claim: &'static str) -> Result<Option<u64>, TokenError> {
    match claims.get(claim) {
        None => Ok(None),
        Some(value) => value
            .as_u64()
            .map(Some)
            .ok_or_else(|| bad_claim(claim, "not a whole number of seconds since the Unix epoch")),
    }
}

fn bad_claim(claim: &'static str, message: &str) -> TokenError {
    TokenError::BadClaim {
        claim,
        message: message.into(),
    }
}

/// A base64url part of a token, as JSON.
fn decode_part<T: DeserializeOwned>(part: &str, what: &str) -> Result<T, TokenError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|e| TokenError::Malformed(format!("the {what} is not base64url: {e}")))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| TokenError::Malformed(format!("the {what} is not a JSON object: {e}")))
}

/// What `jsonwebtoken` refused, once the header has passed [`TokenVerifier::check_header`].
fn refusal(e: jsonwebtoken::errors::Error) -> TokenError {
    match e.kind() {
        jsonwebtoken::errors::ErrorKind::InvalidSignature => TokenError::BadSignature,
        // Bad base64 or JSON in the signature or claims; nothing else is
        // left to fail with the algorithm and key already matched.
        _ => TokenError::Malformed(e.to_string()),
    }
}

/// The DER header of a P-256 public key's SPKI: SEQUENCE { SEQUENCE {
/// ecPublicKey, prime256v1 }, BIT STRING of 66 bytes }, then the point.
const P256_SPKI_HEADER: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];
/// An uncompressed point: 0x04, x and y.
const P256_POINT_LEN: usize = 65;

/// ring verifies RS256 with 2048 to 8192 bits; a smaller key would refuse
/// every token as a bad signature, so it is refused here. A 2048-bit
/// modulus alone takes 256 bytes, so a shorter DER holds a smaller key.
fn rsa_verifier(key: DecodingKey, der: &[u8]) -> Result<TokenVerifier, KeyError> {
    if der.len() < 256 {
        return Err(KeyError::BadPublicKey(
            "an RSA key under 2048 bits (RS256 needs 2048 to 8192)".into(),
        ));
    }
    Ok(TokenVerifier::new(Algorithm::Rs256, key))
}

/// The first PEM section of `pem`: its label and its decoded body.
fn pem_section(pem: &[u8]) -> Result<(&str, Vec<u8>), KeyError> {
    let bad = |message: String| KeyError::BadPublicKey(message);
    let text = std::str::from_utf8(pem).map_err(|_| bad("not PEM text".into()))?;
    let (_, begin) = text
        .split_once("-----BEGIN ")
        .ok_or_else(|| bad("not PEM: no '-----BEGIN' line".into()))?;
    let (label, rest) = begin
        .split_once("-----")
        .ok_or_else(|| bad("not PEM: an unfinished '-----BEGIN' line".into()))?;
    let end = format!("-----END {label}-----");
    let (body, _) = rest
        .split_once(&end)
        .ok_or_else(|| bad(format!("not PEM: no '{end}' line")))?;
    let body: String = body.split_whitespace().collect();
    let der = STANDARD
        .decode(body)
        .map_err(|e| bad(format!("the PEM body is not base64: {e}")))?;
    Ok((label, der))
}

/// What `quicbus token` mints.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    pub user: String,
    pub permissions: PermissionLists,
    /// Seconds from now until `exp`.
    pub ttl: u64,
}

/// The claims a minted token carries.
#[derive(Serialize)]
struct MintedClaims<'a> {
    sub: &'a str,
    iat: u64,
    exp: u64,
    /// [`PERMISSIONS_CLAIM`].
    quicbus: &'a PermissionLists,
}

/// Mints an HS256 token at `now` (seconds since the Unix epoch). The
/// request is not checked: a bad pattern or an empty user makes a token
/// that every verifier refuses (`quicbus token` checks them first).
pub fn mint_hs256(secret: &[u8], request: &TokenRequest, now: u64) -> Result<String, KeyError> {
    if secret.is_empty() {
        return Err(KeyError::EmptySecret);
    }
    mint(
        &EncodingKey::from_secret(secret),
        Algorithm::Hs256,
        request,
        now,
    )
}

/// Mints an ES256 or RS256 token at `now` with a PEM private key (PKCS#8,
/// or PKCS#1 for RSA), as an identity provider would.
pub fn mint_with_pem(
    private_key_pem: &[u8],
    algorithm: Algorithm,
    request: &TokenRequest,
    now: u64,
) -> Result<String, KeyError> {
    let key = match algorithm {
        Algorithm::Es256 => EncodingKey::from_ec_pem(private_key_pem),
        Algorithm::Rs256 => EncodingKey::from_rsa_pem(private_key_pem),
        Algorithm::Hs256 => {
            return Err(KeyError::CannotSign(
                "HS256 signs with a shared secret, not a PEM key".into(),
            ))
        }
    }
    .map_err(|e| KeyError::CannotSign(format!("not a {algorithm} private key: {e}")))?;
    mint(&key, algorithm, request, now)
}

fn mint(
    key: &EncodingKey,
    algorithm: Algorithm,
    request: &TokenRequest,
    now: u64,
) -> Result<String, KeyError> {
    let claims = MintedClaims {
        sub: &request.user,
        iat: now,
        exp: now.saturating_add(request.ttl),
        quicbus: &request.permissions,
    };
    jsonwebtoken::encode(&Header::new(algorithm.jwt()), &claims, key)
        .map_err(|e| KeyError::CannotSign(format!("{algorithm}: {e}")))
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Action;
    use serde_json::json;

    const NOW: u64 = 1_700_000_000;
    const SECRET: &[u8] = b"a test secret, long enough";
    const RSA_PRIVATE: &[u8] = include_bytes!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/jwt-rsa-private.pem"
    ));
    const RSA_PUBLIC: &[u8] = include_bytes!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/jwt-rsa-public.pem"
    ));
    const RSA_PUBLIC_PKCS1: &[u8] = include_bytes!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/jwt-rsa-public-pkcs1.pem"
    ));
    const RSA_1024_PUBLIC: &[u8] = include_bytes!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/jwt-rsa1024-public.pem"
    ));

    fn request() -> TokenRequest {
        TokenRequest {
            user: "alice".into(),
            permissions: PermissionLists {
                publish: vec!["game.*.input".into()],
                subscribe: vec!["game.>".into(), "chat.lobby".into()],
                history: vec!["chat.lobby".into()],
            },
            ttl: 3600,
        }
    }

    fn hs256() -> TokenVerifier {
        TokenVerifier::hs256(SECRET).expect("a secret")
    }

    /// A P-256 key pair: the PKCS#8 private key and the SPKI public key, in PEM.
    fn p256() -> (String, String) {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("keygen");
        (pair.serialize_pem(), pair.public_key_pem())
    }

    /// An HS256 token with exactly these claims.
    fn hs256_claims(claims: Value) -> String {
        let header = Header::new(jsonwebtoken::Algorithm::HS256);
        jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(SECRET)).expect("encode")
    }

    fn b64(json: &Value) -> String {
        URL_SAFE_NO_PAD.encode(json.to_string())
    }

    /// The parts of a token, changed by `change`, joined again.
    fn with_parts(token: &str, change: impl FnOnce(&mut Vec<String>)) -> String {
        let mut parts: Vec<String> = token.split('.').map(String::from).collect();
        change(&mut parts);
        parts.join(".")
    }

    fn flip_signature_byte(token: &str) -> String {
        with_parts(token, |parts| {
            let mut signature = URL_SAFE_NO_PAD.decode(&parts[2]).expect("base64");
            signature[5] ^= 0x01;
            parts[2] = URL_SAFE_NO_PAD.encode(signature);
        })
    }

    /// Checks the user, expiry and every action on a few rooms.
    fn assert_is_alices(verified: &VerifiedToken) {
        assert_eq!(verified.user, "alice");
        assert_eq!(verified.expires, NOW + 3600);
        let p = &verified.permissions;
        assert!(p.allows(Action::Publish, "game.p1.input"));
        assert!(!p.allows(Action::Publish, "game.p1.state"));
        assert!(!p.allows(Action::Publish, "chat.lobby"));
        assert!(p.allows(Action::Subscribe, "game.p1.state"));
        assert!(p.allows(Action::Subscribe, "chat.lobby"));
        assert!(!p.allows(Action::Subscribe, "chat.other"));
        assert!(p.allows(Action::History, "chat.lobby"));
        assert!(!p.allows(Action::History, "game.p1.state"));
    }

    #[test]
    fn hs256_round_trip() {
        let token = mint_hs256(SECRET, &request(), NOW).expect("mint");
        let verified = hs256().verify(&token, NOW).expect("valid");
        assert_is_alices(&verified);
        // Valid until the last second before exp.
        hs256().verify(&token, NOW + 3599).expect("still valid");
    }

    #[test]
    fn es256_round_trip() {
        let (private, public) = p256();
        let verifier = TokenVerifier::from_public_key_pem(public.as_bytes()).expect("P-256 key");
        assert_eq!(verifier.algorithm(), Algorithm::Es256);
        let token =
            mint_with_pem(private.as_bytes(), Algorithm::Es256, &request(), NOW).expect("mint");
        assert_is_alices(&verifier.verify(&token, NOW).expect("valid"));
    }

    #[test]
    fn rs256_round_trip_with_spki_and_pkcs1_public_keys() {
        let token = mint_with_pem(RSA_PRIVATE, Algorithm::Rs256, &request(), NOW).expect("mint");
        for public in [RSA_PUBLIC, RSA_PUBLIC_PKCS1] {
            let verifier = TokenVerifier::from_public_key_pem(public).expect("RSA key");
            assert_eq!(verifier.algorithm(), Algorithm::Rs256);
            assert_is_alices(&verifier.verify(&token, NOW).expect("valid"));
        }
    }

    #[test]
    fn alg_none_is_refused_in_any_case() {
        let claims = json!({"sub": "alice", "exp": NOW + 60});
        for alg in ["none", "None", "NONE"] {
            let token = format!(
                "{}.{}.",
                b64(&json!({"alg": alg, "typ": "JWT"})),
                b64(&claims)
            );
            assert_eq!(
                hs256().verify(&token, NOW).unwrap_err(),
                TokenError::AlgNone
            );
        }
    }

    #[test]
    fn a_token_of_another_algorithm_is_refused_by_name() {
        let (private, public) = p256();
        let es256 = TokenVerifier::from_public_key_pem(public.as_bytes()).expect("key");
        let hs_token = mint_hs256(SECRET, &request(), NOW).expect("mint");
        assert_eq!(
            es256.verify(&hs_token, NOW).unwrap_err(),
            TokenError::WrongAlgorithm {
                expected: "ES256".into(),
                found: "HS256".into()
            }
        );
        let es_token =
            mint_with_pem(private.as_bytes(), Algorithm::Es256, &request(), NOW).expect("mint");
        assert_eq!(
            hs256().verify(&es_token, NOW).unwrap_err(),
            TokenError::WrongAlgorithm {
                expected: "HS256".into(),
                found: "ES256".into()
            }
        );
        let rs_token = mint_with_pem(RSA_PRIVATE, Algorithm::Rs256, &request(), NOW).expect("mint");
        assert!(matches!(
            es256.verify(&rs_token, NOW),
            Err(TokenError::WrongAlgorithm { found, .. }) if found == "RS256"
        ));
    }

    #[test]
    fn a_flipped_signature_byte_is_a_bad_signature() {
        let (private, public) = p256();
        let es256 = TokenVerifier::from_public_key_pem(public.as_bytes()).expect("key");
        let rs256 = TokenVerifier::from_public_key_pem(RSA_PUBLIC).expect("key");
        let signed = [
            (hs256(), mint_hs256(SECRET, &request(), NOW)),
            (
                es256,
                mint_with_pem(private.as_bytes(), Algorithm::Es256, &request(), NOW),
            ),
            (
                rs256,
                mint_with_pem(RSA_PRIVATE, Algorithm::Rs256, &request(), NOW),
            ),
        ];
        for (verifier, token) in signed {
            let token = flip_signature_byte(&token.expect("mint"));
            assert_eq!(
                verifier.verify(&token, NOW).unwrap_err(),
                TokenError::BadSignature,
                "{verifier:?}"
            );
        }
    }

    #[test]
    fn another_secret_is_a_bad_signature() {
        let token = mint_hs256(b"another secret", &request(), NOW).expect("mint");
        assert_eq!(
            hs256().verify(&token, NOW).unwrap_err(),
            TokenError::BadSignature
        );
    }

    #[test]
    fn a_changed_payload_is_a_bad_signature() {
        let token = mint_hs256(SECRET, &request(), NOW).expect("mint");
        let forged = with_parts(&token, |parts| {
            let mut claims: Value =
                serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&parts[1]).expect("b64"))
                    .expect("json");
            claims["sub"] = json!("mallory");
            parts[1] = b64(&claims);
        });
        assert_ne!(forged, token);
        assert_eq!(
            hs256().verify(&forged, NOW).unwrap_err(),
            TokenError::BadSignature
        );
    }

    #[test]
    fn expiry_is_checked_against_now_with_the_leeway() {
        let token = hs256_claims(json!({"sub": "alice", "exp": NOW - 1}));
        assert_eq!(
            hs256().verify(&token, NOW).unwrap_err(),
            TokenError::Expired { at: NOW - 1 }
        );
        let at_exp = hs256_claims(json!({"sub": "alice", "exp": NOW}));
        assert_eq!(
            hs256().verify(&at_exp, NOW).unwrap_err(),
            TokenError::Expired { at: NOW }
        );
        // Expired when now >= exp + leeway.
        assert!(hs256().with_leeway(1).verify(&token, NOW).is_err());
        let verified = hs256().with_leeway(2).verify(&token, NOW).expect("leeway");
        assert_eq!(verified.expires, NOW - 1);
    }

    #[test]
    fn not_before_is_checked_against_now_with_the_leeway() {
        let token = hs256_claims(json!({"sub": "alice", "exp": NOW + 60, "nbf": NOW + 10}));
        assert_eq!(
            hs256().verify(&token, NOW).unwrap_err(),
            TokenError::NotYetValid { from: NOW + 10 }
        );
        assert!(hs256().with_leeway(9).verify(&token, NOW).is_err());
        hs256().with_leeway(10).verify(&token, NOW).expect("leeway");
        hs256().verify(&token, NOW + 10).expect("valid from nbf on");
    }

    #[test]
    fn malformed_tokens_are_malformed() {
        let valid = mint_hs256(SECRET, &request(), NOW).expect("mint");
        let header = valid.split('.').next().expect("header").to_string();
        let cases = [
            String::new(),
            "a.b".into(),
            "a.b.c.d".into(),
            "!!!.!!!.!!!".into(),
            format!("{}.e30.", URL_SAFE_NO_PAD.encode("not json")),
            format!("{}.e30.", b64(&json!({"typ": "JWT"}))),
            // A valid signature over claims that are not base64url.
            {
                let message = format!("{header}.***");
                let signature = jsonwebtoken::crypto::sign(
                    message.as_bytes(),
                    &EncodingKey::from_secret(SECRET),
                    jsonwebtoken::Algorithm::HS256,
                )
                .expect("sign");
                format!("{message}.{signature}")
            },
        ];
        for token in cases {
            let refused = hs256().verify(&token, NOW).unwrap_err();
            assert!(
                matches!(refused, TokenError::Malformed(_)),
                "{token:?}: {refused:?}"
            );
        }
    }

    #[test]
    fn critical_header_extensions_are_refused() {
        let claims = b64(&json!({"sub": "alice", "exp": NOW + 60}));
        let header = b64(&json!({"alg": "HS256", "crit": ["exp-ext"], "exp-ext": 1}));
        let token = format!("{header}.{claims}.c2ln");
        assert!(matches!(
            hs256().verify(&token, NOW),
            Err(TokenError::Malformed(m)) if m.contains("crit")
        ));
    }

    #[test]
    fn missing_empty_or_mistyped_claims_are_bad_claims() {
        let cases = [
            (json!({"exp": NOW + 60}), "sub"),
            (json!({"sub": "", "exp": NOW + 60}), "sub"),
            (json!({"sub": 7, "exp": NOW + 60}), "sub"),
            (json!({"sub": "alice"}), "exp"),
            (json!({"sub": "alice", "exp": "never"}), "exp"),
            (json!({"sub": "alice", "exp": -1}), "exp"),
            // The GHSA-h395-gr6q-cpjc token: a string nbf must not count as absent.
            (
                json!({"sub": "alice", "exp": NOW + 60, "nbf": "99999999999"}),
                "nbf",
            ),
            (
                json!({"sub": "alice", "exp": NOW + 60, "iat": "now"}),
                "iat",
            ),
            (
                json!({"sub": "alice", "exp": NOW + 60, "quicbus": null}),
                "quicbus",
            ),
        ];
        for (claims, bad) in cases {
            let refused = hs256().verify(&hs256_claims(claims.clone()), NOW);
            assert!(
                matches!(&refused, Err(TokenError::BadClaim { claim, .. }) if *claim == bad),
                "{claims}: {refused:?}"
            );
        }
    }

    #[test]
    fn a_bad_pattern_in_the_claim_is_refused() {
        let token = hs256_claims(json!({
            "sub": "alice", "exp": NOW + 60,
            "quicbus": {"publish": ["ok"], "subscribe": ["game.>.x"]}
        }));
        assert_eq!(
            hs256().verify(&token, NOW).unwrap_err(),
            TokenError::BadPattern(PatternError::RestNotLast("game.>.x".into()))
        );
    }

    #[test]
    fn an_unknown_key_in_the_permissions_claim_is_refused() {
        let token = hs256_claims(json!({
            "sub": "alice", "exp": NOW + 60,
            "quicbus": {"publish": ["a"], "subscrbe": ["b"]}
        }));
        assert!(matches!(
            hs256().verify(&token, NOW),
            Err(TokenError::BadClaim { claim: "quicbus", message }) if message.contains("subscrbe")
        ));
    }

    #[test]
    fn without_the_permissions_claim_nothing_is_allowed() {
        let token = hs256_claims(json!({"sub": "bob", "exp": NOW + 60, "iat": NOW}));
        let verified = hs256().verify(&token, NOW).expect("valid");
        assert_eq!(verified.user, "bob");
        assert_eq!(verified.permissions, Permissions::nothing());
    }

    #[test]
    fn a_minted_token_omits_empty_lists() {
        let mut only_publish = request();
        only_publish.permissions.subscribe.clear();
        only_publish.permissions.history.clear();
        let token = mint_hs256(SECRET, &only_publish, NOW).expect("mint");
        let payload = token.split('.').nth(1).expect("payload");
        let claims: Value = decode_part(payload, "claims").expect("json");
        assert_eq!(
            claims,
            json!({"sub": "alice", "iat": NOW, "exp": NOW + 3600,
                   PERMISSIONS_CLAIM: {"publish": ["game.*.input"]}})
        );
    }

    #[test]
    fn unusable_keys_are_refused_with_a_reason() {
        assert!(matches!(
            TokenVerifier::hs256(b""),
            Err(KeyError::EmptySecret)
        ));
        assert!(matches!(
            mint_hs256(b"", &request(), NOW),
            Err(KeyError::EmptySecret)
        ));
        let public_pem = |alg| {
            let pair = rcgen::KeyPair::generate_for(alg).expect("keygen");
            pair.public_key_pem()
        };
        let p384 = public_pem(&rcgen::PKCS_ECDSA_P384_SHA384);
        let ed25519 = public_pem(&rcgen::PKCS_ED25519);
        let (p256_private, _) = p256();
        let cases: [(&[u8], &str); 7] = [
            (p384.as_bytes(), "P-256"),
            (ed25519.as_bytes(), "neither"),
            (RSA_1024_PUBLIC, "2048"),
            (RSA_PRIVATE, "private key"),
            (p256_private.as_bytes(), "private key"),
            (b"not a key", "no '-----BEGIN' line"),
            (
                b"-----BEGIN PUBLIC KEY-----\n%%%\n-----END PUBLIC KEY-----\n",
                "base64",
            ),
        ];
        for (pem, reason) in cases {
            match TokenVerifier::from_public_key_pem(pem) {
                Err(KeyError::BadPublicKey(message)) => {
                    assert!(message.contains(reason), "{message:?} lacks {reason:?}")
                }
                other => panic!("{reason}: {other:?}"),
            }
        }
    }

    #[test]
    fn minting_with_a_key_of_another_kind_fails() {
        let (p256_private, _) = p256();
        for (pem, algorithm) in [
            (p256_private.as_bytes(), Algorithm::Rs256),
            (RSA_PRIVATE, Algorithm::Es256),
            (RSA_PRIVATE, Algorithm::Hs256),
        ] {
            assert!(matches!(
                mint_with_pem(pem, algorithm, &request(), NOW),
                Err(KeyError::CannotSign(_))
            ));
        }
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let verifier = TokenVerifier::hs256(b"hunter2hunter2").expect("secret");
        let shown = format!("{verifier:?}");
        assert!(
            shown.contains("HS256") || shown.contains("Hs256"),
            "{shown}"
        );
        assert!(!shown.contains("hunter2"), "{shown}");
        // Nor as a list of byte values: 'h', 'u' are 104, 117.
        assert!(!shown.contains("104, 117"), "{shown}");
    }

    #[test]
    fn messages_say_invalid_token_or_token_expired() {
        let invalid = [
            TokenError::Malformed("x".into()),
            TokenError::AlgNone,
            TokenError::WrongAlgorithm {
                expected: "HS256".into(),
                found: "RS256".into(),
            },
            TokenError::BadSignature,
            bad_claim("sub", "missing"),
            TokenError::BadPattern(PatternError::Empty),
        ];
        for e in invalid {
            assert!(e.to_string().starts_with("invalid token"), "{e}");
        }
        let expired = TokenError::Expired { at: 5 }.to_string();
        assert!(expired.starts_with("token expired"), "{expired}");
        let early = TokenError::NotYetValid { from: 5 }.to_string();
        assert!(early.starts_with("token not valid before"), "{early}");
    }
}
