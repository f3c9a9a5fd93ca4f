//! Token claims, issuing, and offline verification. TODO(helper): implement.

use std::sync::Arc;
use std::time::Duration;

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

/// Signs a capability token for `identity` limited to `scope` (which must
/// be within the identity's own scope), living `ttl` (at most
/// [`MAX_CAPABILITY_TTL`]).
pub fn issue_capability(
    keys: &KeyRing,
    identity: &Identity,
    scope: Vec<Scope>,
    ttl: Duration,
    now: Timestamp,
) -> Result<IssuedToken, AuthError> {
    let _ = (keys, identity, scope, ttl, now);
    Err(AuthError::Key("unimplemented".into()))
}

/// Signs the token of a P2P session; it expires with the session.
pub fn issue_session_token(
    keys: &KeyRing,
    session: &P2pSession,
    now: Timestamp,
) -> Result<IssuedToken, AuthError> {
    let _ = (keys, session, now);
    Err(AuthError::Key("unimplemented".into()))
}

/// Verifies capability and P2P session tokens offline, from a JWK Set.
#[derive(Clone, Debug, Default)]
pub struct TokenVerifier {
    _private: (),
}

impl TokenVerifier {
    /// Builds a verifier from `GET /api/auth/keys`' answer.
    pub fn from_jwks(jwks: &serde_json::Value) -> Result<Self, AuthError> {
        let _ = jwks;
        Err(AuthError::Key("unimplemented".into()))
    }

    /// Checks signature, algorithm, `kid`, `typ` and expiry of a P2P session token.
    pub fn verify_session(&self, token: &str, now: Timestamp) -> Result<SessionClaims, AuthError> {
        let _ = (token, now);
        Err(AuthError::InvalidToken("unimplemented".into()))
    }

    /// Checks signature, algorithm, `kid`, `typ` and expiry of a capability token.
    pub fn verify_capability(
        &self,
        token: &str,
        now: Timestamp,
    ) -> Result<CapabilityClaims, AuthError> {
        let _ = (token, now);
        Err(AuthError::InvalidToken("unimplemented".into()))
    }
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
        let _ = (user, device, now, self.access_ttl);
        Err(AuthError::Key("unimplemented".into()))
    }

    fn authenticate(&self, token: &str, now: Timestamp) -> Result<Identity, AuthError> {
        let _ = (token, now);
        Err(AuthError::InvalidToken("unimplemented".into()))
    }

    fn keys(&self) -> &Arc<KeyRing> {
        &self.keys
    }
}
