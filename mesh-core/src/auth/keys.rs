//! The server's Ed25519 signing keys. TODO(helper): implement.

use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{AuthError, TokenVerifier};

/// The server's signing keys: the current one signs, all of them verify.
#[derive(Debug)]
pub struct KeyRing {
    _private: (),
}

impl KeyRing {
    /// A fresh in-memory key ring (tests, embedding without a data folder).
    pub fn generate() -> Result<Self, AuthError> {
        Err(AuthError::Key("unimplemented".into()))
    }

    /// Loads the keys kept in `dir`, generating and saving one (file mode
    /// 0600) if there is none.
    pub fn load_or_generate(dir: &Path) -> Result<Self, AuthError> {
        let _ = dir;
        Err(AuthError::Key("unimplemented".into()))
    }

    /// The `kid` of the key that signs.
    pub fn current_kid(&self) -> &str {
        ""
    }

    /// Signs `claims` as an EdDSA JWT whose header names the current `kid`.
    pub fn sign<C: Serialize>(&self, claims: &C) -> Result<String, AuthError> {
        let _ = claims;
        Err(AuthError::Key("unimplemented".into()))
    }

    /// Checks the signature, algorithm (EdDSA only) and `kid` of `token` and
    /// decodes its claims. Does not look at `exp`: callers check expiry
    /// against the `now` they are given.
    pub fn verify<C: DeserializeOwned>(&self, token: &str) -> Result<C, AuthError> {
        let _ = token;
        Err(AuthError::Key("unimplemented".into()))
    }

    /// The public keys as a JWK Set (RFC 7517), `kid` on each.
    pub fn jwks(&self) -> serde_json::Value {
        serde_json::json!({"keys": []})
    }

    /// An offline verifier holding the public keys.
    pub fn verifier(&self) -> TokenVerifier {
        TokenVerifier::from_jwks(&self.jwks()).unwrap_or_default()
    }
}
