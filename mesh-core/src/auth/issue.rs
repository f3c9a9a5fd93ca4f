//! Issuing tokens, and the default [`Authenticator`] (server only).
//!
//! Agents only verify tokens ([`super::tokens`]); what signs them, and the
//! access-token authenticator, are compiled with the `server` feature.

use std::sync::Arc;
use std::time::Duration;

use super::cache::TokenCache;
use super::tokens::{
    AccessClaims, CapabilityClaims, ISSUER, IssuedToken, SessionClaims, StandardClaims, TokenKind,
    invalid, read_typ,
};
use super::{AuthError, Authenticator, Identity, KeyRing, Scope};
use crate::protocol::{DeviceId, P2pSession, Timestamp, UserId};

/// The longest a capability token may live.
pub const MAX_CAPABILITY_TTL: Duration = Duration::from_secs(15 * 60);

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
    let exp = now
        .saturating_add(ttl.min(MAX_CAPABILITY_TTL))
        .unix_seconds();
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

/// The default [`Authenticator`]: argon2id passwords, EdDSA access tokens.
#[derive(Debug)]
pub struct JwtAuthenticator {
    keys: Arc<KeyRing>,
    access_ttl: Duration,
    /// Tokens whose signature was checked (see `auth::cache`).
    pub(super) verified: TokenCache,
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
            verified: TokenCache::new(TokenCache::DEFAULT_CAPACITY),
        }
    }

    /// Sets how long access tokens live.
    pub fn with_access_ttl(mut self, ttl: Duration) -> Self {
        self.access_ttl = ttl;
        self
    }

    /// How many accepted tokens to remember so that their signature is not
    /// checked again on the next connection (default 4096; 0 turns it off).
    /// A remembered token is still refused from its `exp` on, and device
    /// revocation is checked by the service on every use either way.
    pub fn with_token_cache(mut self, tokens: usize) -> Self {
        self.verified = TokenCache::new(tokens);
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
        let exp = now.saturating_add(self.access_ttl).unix_seconds();
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
        if let Some(identity) = self.verified.get(token, now) {
            return Ok(identity);
        }
        let raw: serde_json::Value = self.keys.verify(token)?;
        let (identity, exp) = match read_typ(&raw)? {
            TokenKind::Access => {
                let claims: AccessClaims = serde_json::from_value(raw).map_err(invalid)?;
                claims.check(TokenKind::Access, now)?;
                let identity = Identity {
                    user_id: claims.sub,
                    device_id: claims.did,
                    scope: None,
                };
                (identity, claims.exp)
            }
            TokenKind::Capability => {
                let claims: CapabilityClaims = serde_json::from_value(raw).map_err(invalid)?;
                claims.check(TokenKind::Capability, now)?;
                let identity = Identity {
                    user_id: claims.sub,
                    device_id: claims.did,
                    scope: Some(claims.scope),
                };
                (identity, claims.exp)
            }
            TokenKind::P2pSession => {
                return Err(AuthError::InvalidToken(
                    "a P2P session token is not a bearer token".into(),
                ));
            }
        };
        self.verified.insert(token, &identity, exp, now);
        Ok(identity)
    }

    fn keys(&self) -> &Arc<KeyRing> {
        &self.keys
    }
}
