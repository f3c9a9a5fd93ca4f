//! Token claims, issuing, and offline verification.
//!
//! Every token mesh signs is an EdDSA (Ed25519) JWT whose header names its
//! key (`kid`). Three rules hold whatever the token:
//!
//! - **EdDSA only, known `kid` only.** The header's `alg` is checked against
//!   EdDSA *before* any key is used, so neither `alg: none` nor algorithm
//!   confusion (an `HS256` token "signed" with the public key as an HMAC
//!   secret) can pass. Asymmetric keys are what let agents verify capability
//!   and P2P session tokens offline from the published JWK Set
//!   ([`TokenVerifier::from_jwks`]) without being able to sign.
//! - **A `typ` claim on every token** ([`TokenKind`]): all kinds are signed by
//!   the same key, so without it a P2P session token handed to an agent could
//!   be replayed as a bearer token, or an access token accepted where a
//!   session token is expected. Every check names the kind it wants.
//! - **Expiry is checked here, against an injected `now`**, not by
//!   `jsonwebtoken` (whose check reads the system clock and allows 60 s of
//!   leeway). A token is accepted while `now < exp` (whole seconds), no
//!   leeway, which keeps expiry exact and testable with a virtual clock.
//!
//! The verification code is shared: [`KeyRing::verify`] delegates to a
//! [`TokenVerifier`] built from the ring's own JWK Set, so the server and
//! agents check tokens the same way.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::VerifyingKey;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{AuthError, Authenticator, Identity, KeyRing};
use crate::protocol::{
    DeviceId, P2pSession, PeerId, RoomId, SessionId, SessionKind, Timestamp, UserId,
};

/// The `iss` of every token a mesh server signs.
pub const ISSUER: &str = "mesh";

/// What a token is for (its `typ` claim).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenKind {
    Access,
    Capability,
    P2pSession,
}

/// What a capability token allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Scope {
    /// List and read rooms and their members.
    #[serde(rename = "rooms:read")]
    RoomsRead,
    /// Read message history.
    #[serde(rename = "messages:read")]
    MessagesRead,
    /// Connect over WebSocket and send messages.
    #[serde(rename = "messages:write")]
    MessagesWrite,
    /// Request and list P2P sessions.
    #[serde(rename = "p2p")]
    P2p,
}

impl Scope {
    /// The wire name (`rooms:read`, `messages:read`, `messages:write`, `p2p`).
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::RoomsRead => "rooms:read",
            Scope::MessagesRead => "messages:read",
            Scope::MessagesWrite => "messages:write",
            Scope::P2p => "p2p",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Claims of an access token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    pub iss: String,
    pub typ: TokenKind,
    pub sub: UserId,
    pub did: DeviceId,
    pub iat: i64,
    pub exp: i64,
}

/// Claims of a capability token: a short-lived token scoped down from an
/// access token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapabilityClaims {
    pub iss: String,
    pub typ: TokenKind,
    pub sub: UserId,
    pub did: DeviceId,
    pub scope: Vec<Scope>,
    pub iat: i64,
    pub exp: i64,
}

/// Claims of a P2P session token: names the session, its kind and both peers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionClaims {
    pub iss: String,
    pub typ: TokenKind,
    pub sid: SessionId,
    pub kind: SessionKind,
    pub room_id: RoomId,
    pub initiator_peer_id: PeerId,
    pub target_peer_id: PeerId,
    pub initiator_user_id: UserId,
    pub target_user_id: UserId,
    pub iat: i64,
    pub exp: i64,
}

/// A signed token and when it expires.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedToken {
    pub token: String,
    pub expires_at: Timestamp,
}

/// The longest a capability token may live.
pub const MAX_CAPABILITY_TTL: Duration = Duration::from_secs(15 * 60);

/// Tokens longer than this are refused before any parsing.
const MAX_TOKEN_LEN: usize = 8 * 1024;

/// The moment a token whose `exp` is `exp` stops being accepted.
fn expiry(exp: i64) -> Timestamp {
    Timestamp::from_unix_millis(exp.saturating_mul(1000))
}

/// Signs a capability token for `identity` limited to `scope` (which must
/// be within the identity's own scope), living `ttl` (at most
/// [`MAX_CAPABILITY_TTL`]).
///
/// An empty `scope`, or one reaching beyond a capability identity's own
/// scope, is [`AuthError::OutOfScope`]. Duplicates are dropped. A full
/// access identity (`scope: None`) may ask for any scope.
pub fn issue_capability(
    keys: &KeyRing,
    identity: &Identity,
    scope: Vec<Scope>,
    ttl: Duration,
    now: Timestamp,
) -> Result<IssuedToken, AuthError> {
    if scope.is_empty() {
        return Err(AuthError::OutOfScope("an empty scope".into()));
    }
    let mut narrowed: Vec<Scope> = Vec::with_capacity(scope.len());
    for s in scope {
        if !identity.allows(s) {
            return Err(AuthError::OutOfScope(s.to_string()));
        }
        if !narrowed.contains(&s) {
            narrowed.push(s);
        }
    }
    let exp = now.add(ttl.min(MAX_CAPABILITY_TTL)).unix_seconds();
    let claims = CapabilityClaims {
        iss: ISSUER.to_owned(),
        typ: TokenKind::Capability,
        sub: identity.user_id,
        did: identity.device_id,
        scope: narrowed,
        iat: now.unix_seconds(),
        exp,
    };
    Ok(IssuedToken {
        token: keys.sign(&claims)?,
        expires_at: expiry(exp),
    })
}

/// Signs the token of a P2P session; it expires with the session.
///
/// `exp` is `session.expires_at` in whole seconds (rounded down), and the
/// returned `expires_at` is that same instant.
pub fn issue_session_token(
    keys: &KeyRing,
    session: &P2pSession,
    now: Timestamp,
) -> Result<IssuedToken, AuthError> {
    let exp = session.expires_at.unix_seconds();
    let claims = SessionClaims {
        iss: ISSUER.to_owned(),
        typ: TokenKind::P2pSession,
        sid: session.id,
        kind: session.kind,
        room_id: session.room_id,
        initiator_peer_id: session.initiator_peer_id,
        target_peer_id: session.target_peer_id,
        initiator_user_id: session.initiator_user_id,
        target_user_id: session.target_user_id,
        iat: now.unix_seconds(),
        exp,
    };
    Ok(IssuedToken {
        token: keys.sign(&claims)?,
        expires_at: expiry(exp),
    })
}

/// The claims every mesh token carries, checked the same way for all kinds.
trait StandardClaims {
    fn iss(&self) -> &str;
    fn typ(&self) -> TokenKind;
    fn exp(&self) -> i64;

    /// Checks `typ`, `iss` and `exp` (accepted while `now < exp`).
    fn check(&self, want: TokenKind, now: Timestamp) -> Result<(), AuthError> {
        if self.typ() != want {
            return Err(wrong_kind(want, self.typ()));
        }
        if self.iss() != ISSUER {
            return Err(AuthError::InvalidToken("unknown issuer".into()));
        }
        if self.exp() <= now.unix_seconds() {
            return Err(AuthError::Expired);
        }
        Ok(())
    }
}

fn wrong_kind(want: TokenKind, got: TokenKind) -> AuthError {
    AuthError::InvalidToken(format!(
        "expected a {} token, got a {} token",
        kind_name(want),
        kind_name(got)
    ))
}

/// The `typ` of verified claims, read before they are decoded as one kind.
fn read_typ(raw: &serde_json::Value) -> Result<TokenKind, AuthError> {
    let typ = raw
        .get("typ")
        .ok_or_else(|| AuthError::InvalidToken("no typ claim".into()))?;
    TokenKind::deserialize(typ).map_err(invalid)
}

fn kind_name(kind: TokenKind) -> &'static str {
    match kind {
        TokenKind::Access => "access",
        TokenKind::Capability => "capability",
        TokenKind::P2pSession => "P2P session",
    }
}

macro_rules! standard_claims {
    ($($t:ty),*) => {$(
        impl StandardClaims for $t {
            fn iss(&self) -> &str { &self.iss }
            fn typ(&self) -> TokenKind { self.typ }
            fn exp(&self) -> i64 { self.exp }
        }
    )*};
}
standard_claims!(AccessClaims, CapabilityClaims, SessionClaims);

/// Verifies capability and P2P session tokens offline, from a JWK Set.
///
/// Holds public keys only; cheap to clone. The default verifier knows no
/// key and refuses every token.
#[derive(Clone, Default)]
pub struct TokenVerifier {
    keys: HashMap<String, DecodingKey>,
}

impl fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut kids: Vec<&String> = self.keys.keys().collect();
        kids.sort();
        f.debug_struct("TokenVerifier")
            .field("kids", &kids)
            .finish()
    }
}

fn invalid(e: impl fmt::Display) -> AuthError {
    AuthError::InvalidToken(e.to_string())
}

impl TokenVerifier {
    /// Builds a verifier from `GET /api/auth/keys`' answer.
    ///
    /// Keys other than `"kty": "OKP", "crv": "Ed25519"`, keys whose `alg`
    /// is set to something else than `EdDSA` or whose `use` is not `sig`,
    /// and keys without a `kid` are ignored. A malformed Ed25519 key, or two
    /// different keys under one `kid`, is an error.
    pub fn from_jwks(jwks: &serde_json::Value) -> Result<Self, AuthError> {
        let not_a_set = || AuthError::Key("not a JWK Set: no \"keys\" array".into());
        let list = jwks
            .get("keys")
            .and_then(serde_json::Value::as_array)
            .ok_or_else(not_a_set)?;
        let mut keys: HashMap<String, DecodingKey> = HashMap::new();
        for jwk in list {
            let field = |name: &str| jwk.get(name).and_then(serde_json::Value::as_str);
            if field("kty") != Some("OKP") || field("crv") != Some("Ed25519") {
                continue;
            }
            if field("alg").is_some_and(|a| a != "EdDSA")
                || field("use").is_some_and(|u| u != "sig")
            {
                continue;
            }
            let Some(kid) = field("kid") else { continue };
            let x =
                field("x").ok_or_else(|| AuthError::Key(format!("JWK {kid:?} has no \"x\"")))?;
            let key = ed25519_key(x).map_err(|e| AuthError::Key(format!("JWK {kid:?}: {e}")))?;
            match keys.get(kid) {
                Some(known) if known.try_get_as_bytes().ok() != key.try_get_as_bytes().ok() => {
                    return Err(AuthError::Key(format!(
                        "two different keys with kid {kid:?}"
                    )));
                }
                Some(_) => {}
                None => {
                    keys.insert(kid.to_owned(), key);
                }
            }
        }
        Ok(Self { keys })
    }

    /// Checks signature, algorithm, `kid`, `typ` and expiry of a P2P session token.
    pub fn verify_session(&self, token: &str, now: Timestamp) -> Result<SessionClaims, AuthError> {
        self.verify_kind(token, TokenKind::P2pSession, now)
    }

    /// Checks signature, algorithm, `kid`, `typ` and expiry of a capability token.
    pub fn verify_capability(
        &self,
        token: &str,
        now: Timestamp,
    ) -> Result<CapabilityClaims, AuthError> {
        self.verify_kind(token, TokenKind::Capability, now)
    }

    /// The `kid`s this verifier knows.
    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    fn verify_kind<C: DeserializeOwned + StandardClaims>(
        &self,
        token: &str,
        want: TokenKind,
        now: Timestamp,
    ) -> Result<C, AuthError> {
        // The kind first, from claims whose signature is already checked, so
        // a token of another kind gets a clear "wrong kind" error instead of
        // a missing-field one.
        let raw: serde_json::Value = self.decode(token)?;
        let typ = read_typ(&raw)?;
        if typ != want {
            return Err(wrong_kind(want, typ));
        }
        let claims: C = serde_json::from_value(raw).map_err(invalid)?;
        claims.check(want, now)?;
        Ok(claims)
    }

    /// Checks the header (`alg` EdDSA, a known `kid`) and the signature, and
    /// decodes the claims. Does not look at any claim.
    pub(crate) fn decode<C: DeserializeOwned>(&self, token: &str) -> Result<C, AuthError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::InvalidToken("token too long".into()));
        }
        let header = jsonwebtoken::decode_header(token).map_err(invalid)?;
        if header.alg != Algorithm::EdDSA {
            return Err(AuthError::InvalidToken(format!(
                "algorithm {:?} is not accepted",
                header.alg
            )));
        }
        let kid = header
            .kid
            .ok_or_else(|| AuthError::InvalidToken("no kid in header".into()))?;
        let key = self
            .keys
            .get(&kid)
            .ok_or_else(|| AuthError::InvalidToken("unknown kid".into()))?;
        jsonwebtoken::decode::<C>(token, key, &signature_only())
            .map(|data| data.claims)
            .map_err(invalid)
    }
}

/// A `jsonwebtoken` validation that checks the algorithm and signature and
/// nothing else: claims are checked by [`StandardClaims::check`].
fn signature_only() -> Validation {
    let mut v = Validation::new(Algorithm::EdDSA);
    v.required_spec_claims.clear();
    v.validate_exp = false;
    v.validate_nbf = false;
    v.validate_aud = false;
    v.leeway = 0;
    v
}

/// A verifying key from a JWK's `x`, checked to be a valid Ed25519 point.
fn ed25519_key(x: &str) -> Result<DecodingKey, AuthError> {
    let key = DecodingKey::from_ed_components(x).map_err(|e| AuthError::Key(e.to_string()))?;
    let bytes = key
        .try_get_as_bytes()
        .map_err(|e| AuthError::Key(e.to_string()))?;
    // `jsonwebtoken` slices the first 32 bytes without a length check.
    let bytes: &[u8; 32] = bytes
        .try_into()
        .map_err(|_| AuthError::Key("an Ed25519 key is 32 bytes".into()))?;
    let point =
        VerifyingKey::from_bytes(bytes).map_err(|_| AuthError::Key("not an Ed25519 key".into()))?;
    if point.is_weak() {
        return Err(AuthError::Key("weak Ed25519 key".into()));
    }
    Ok(key)
}

/// The default [`Authenticator`]: argon2id passwords, EdDSA access tokens.
#[derive(Debug)]
pub struct JwtAuthenticator {
    keys: Arc<KeyRing>,
    access_ttl: Duration,
}

impl JwtAuthenticator {
    /// Access tokens live 7 days by default.
    pub const DEFAULT_ACCESS_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

    /// An authenticator signing with `keys`, access tokens living
    /// [`Self::DEFAULT_ACCESS_TTL`].
    pub fn new(keys: Arc<KeyRing>) -> Self {
        Self {
            keys,
            access_ttl: Self::DEFAULT_ACCESS_TTL,
        }
    }

    /// Sets how long access tokens live.
    pub fn with_access_ttl(mut self, ttl: Duration) -> Self {
        self.access_ttl = ttl;
        self
    }
}

impl Authenticator for JwtAuthenticator {
    fn hash_password(&self, password: &str) -> Result<String, AuthError> {
        super::password::hash(password)
    }

    fn verify_password(&self, password: &str, hash: &str) -> Result<bool, AuthError> {
        super::password::verify(password, hash)
    }

    fn issue_access_token(
        &self,
        user: UserId,
        device: DeviceId,
        now: Timestamp,
    ) -> Result<IssuedToken, AuthError> {
        let exp = now.add(self.access_ttl).unix_seconds();
        let claims = AccessClaims {
            iss: ISSUER.to_owned(),
            typ: TokenKind::Access,
            sub: user,
            did: device,
            iat: now.unix_seconds(),
            exp,
        };
        Ok(IssuedToken {
            token: self.keys.sign(&claims)?,
            expires_at: expiry(exp),
        })
    }

    /// Accepts access tokens (full access) and capability tokens (their
    /// scope); refuses P2P session tokens. [`AuthError::Expired`] once
    /// `exp` has passed, [`AuthError::InvalidToken`] for anything else wrong.
    fn authenticate(&self, token: &str, now: Timestamp) -> Result<Identity, AuthError> {
        let raw: serde_json::Value = self.keys.verify(token)?;
        match read_typ(&raw)? {
            TokenKind::Access => {
                let claims: AccessClaims = serde_json::from_value(raw).map_err(invalid)?;
                claims.check(TokenKind::Access, now)?;
                Ok(Identity {
                    user_id: claims.sub,
                    device_id: claims.did,
                    scope: None,
                })
            }
            TokenKind::Capability => {
                let claims: CapabilityClaims = serde_json::from_value(raw).map_err(invalid)?;
                claims.check(TokenKind::Capability, now)?;
                Ok(Identity {
                    user_id: claims.sub,
                    device_id: claims.did,
                    scope: Some(claims.scope),
                })
            }
            TokenKind::P2pSession => Err(AuthError::InvalidToken(
                "a P2P session token is not a bearer token".into(),
            )),
        }
    }

    fn keys(&self) -> &Arc<KeyRing> {
        &self.keys
    }
}
