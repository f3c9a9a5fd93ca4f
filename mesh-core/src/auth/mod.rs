//! Authentication: passwords, access tokens, signing keys, capability and
//! P2P session tokens.
//!
//! - [`password`]: argon2id at OWASP parameters (m = 19 MiB, t = 2, p = 1).
//! - [`keys::KeyRing`]: the server's Ed25519 signing keys, generated on first
//!   start and kept in the data folder, published as a JWK Set.
//! - [`tokens`]: the claims of every token mesh signs, and
//!   [`tokens::TokenVerifier`], which checks P2P session and capability tokens
//!   offline from the published key set (what agents use).
//! - [`turn`]: time-limited TURN credentials (the TURN REST scheme) for
//!   the ICE servers handed to calls.
//! - [`Authenticator`]: the pluggable part. [`JwtAuthenticator`] is the
//!   default; an embedding app may bring its own (see `examples/`).
//!
//! Every token is a JWT signed with EdDSA and carries a `typ` claim, so a
//! token of one kind is never accepted as another, and a `kid` header naming
//! its key. Only EdDSA is accepted (no `alg: none`, no HMAC), and expiry is
//! checked against the `now` the caller passes, never the system clock, so
//! tests and the sans-IO engine drive it with a virtual clock. See
//! [`tokens`] for the reasoning.
//!
//! Agents (feature `p2p`) compile only [`tokens`]: claims and offline
//! verification. Hashing passwords, signing, the key ring and the
//! [`Authenticator`] are the server's (feature `server`).

#[cfg(feature = "server")]
use std::fmt;
#[cfg(feature = "server")]
use std::sync::Arc;

#[cfg(feature = "server")]
use crate::protocol::{DeviceId, Timestamp, UserId};

#[cfg(feature = "server")]
mod cache;
#[cfg(feature = "server")]
mod issue;
#[cfg(feature = "server")]
pub mod keys;
#[cfg(feature = "server")]
pub mod password;
pub mod tokens;
#[cfg(feature = "server")]
pub mod turn;

#[cfg(feature = "server")]
pub use issue::JwtAuthenticator;
#[cfg(feature = "server")]
pub use keys::KeyRing;
pub use tokens::{
    AccessClaims, CapabilityClaims, IssuedToken, Scope, SessionClaims, TokenKind, TokenVerifier,
};

/// What can go wrong while authenticating or signing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The token is malformed, tampered with, signed by a key or algorithm
    /// we did not issue with, or of the wrong kind.
    #[error("invalid token: {0}")]
    InvalidToken(String),
    /// The token's `exp` has passed.
    #[error("token expired")]
    Expired,
    /// The device behind the token was revoked.
    #[error("device revoked")]
    Revoked,
    /// The token is fine but does not allow this.
    #[error("token does not allow {0}")]
    OutOfScope(String),
    /// Key generation, loading or signing failed.
    #[error("key: {0}")]
    Key(crate::Failure),
    /// Password hashing failed (not a wrong password: that is `Ok(false)`).
    #[error("password hash: {0}")]
    Hash(crate::Failure),
}

impl AuthError {
    /// Whether this is the caller's fault (a 401), not ours (a 500).
    pub fn is_credential_error(&self) -> bool {
        matches!(
            self,
            AuthError::InvalidToken(_)
                | AuthError::Expired
                | AuthError::Revoked
                | AuthError::OutOfScope(_)
        )
    }
}

/// Who presents a token.
#[cfg(feature = "server")]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The user the token was issued to.
    pub user_id: UserId,
    /// The device the token was issued to (checked against revocation by
    /// the service).
    pub device_id: DeviceId,
    /// `None`: a full access token. `Some`: a capability token limited to
    /// these scopes.
    pub scope: Option<Vec<Scope>>,
}

#[cfg(feature = "server")]
impl Identity {
    /// Whether the token allows `scope`.
    pub fn allows(&self, scope: Scope) -> bool {
        self.scope.as_ref().is_none_or(|s| s.contains(&scope))
    }
}

/// The pluggable authentication backend.
///
/// The service calls it to hash and check passwords, to issue an access
/// token when a device logs in, and to turn a bearer token into an
/// [`Identity`]. Device revocation is checked by the service against the
/// store, whatever the authenticator.
///
/// Methods are synchronous; the service runs the password methods on a
/// blocking thread, so they may take tens of milliseconds.
#[cfg(feature = "server")]
pub trait Authenticator: fmt::Debug + Send + Sync + 'static {
    /// Hashes a new password into a string to keep (a PHC string).
    fn hash_password(&self, password: &str) -> Result<String, AuthError>;

    /// Checks a password against a kept hash. `Ok(false)` for a wrong one.
    fn verify_password(&self, password: &str, hash: &str) -> Result<bool, AuthError>;

    /// Issues an access token for a device that just logged in or registered.
    fn issue_access_token(
        &self,
        user: UserId,
        device: DeviceId,
        now: Timestamp,
    ) -> Result<IssuedToken, AuthError>;

    /// Turns a bearer token (access or capability) into who presents it.
    fn authenticate(&self, token: &str, now: Timestamp) -> Result<Identity, AuthError>;

    /// The key ring that signs capability and P2P session tokens. These must
    /// be verifiable offline by agents, so they are always Ed25519.
    fn keys(&self) -> &Arc<KeyRing>;
}
