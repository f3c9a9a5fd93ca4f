//! Time-limited TURN credentials: the TURN REST scheme that coturn checks
//! with `use-auth-secret` / `static-auth-secret`.
//!
//! The server and the TURN server share one secret. For a user, the
//! username is `<expiry unix seconds>:<user id>` and the password is
//! base64(HMAC-SHA1(secret, username)). The TURN server recomputes the HMAC
//! and refuses a username whose expiry has passed, so nothing is stored and
//! a leaked credential stops working at its expiry. Pure code: the caller
//! passes `now`.

use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha1::Sha1;

use crate::protocol::http::{IceServer, IceServersResponse};
use crate::protocol::{Timestamp, UserId};

/// The ICE servers a server hands to its users, and the TURN secret.
#[derive(Clone, Default)]
pub struct IceConfig {
    /// `stun:` URLs, handed out as they are.
    pub stun_urls: Vec<String>,
    /// `turn:` / `turns:` URLs; empty: no TURN entry is handed out.
    pub turn_urls: Vec<String>,
    /// The secret shared with the TURN server (coturn's
    /// `static-auth-secret`): the HMAC key is these bytes as written.
    pub turn_secret: String,
    /// How long a minted credential is valid.
    pub turn_ttl: Duration,
}

impl fmt::Debug for IceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IceConfig")
            .field("stun_urls", &self.stun_urls)
            .field("turn_urls", &self.turn_urls)
            .field("turn_secret", &"<redacted>")
            .field("turn_ttl", &self.turn_ttl)
            .finish()
    }
}

/// A TURN username and password.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TurnCredential {
    /// `<expiry unix seconds>:<user id>`.
    pub username: String,
    /// base64(HMAC-SHA1(secret, username)).
    pub credential: String,
}

/// Mints the credential of `user` that expires at `expires_unix_secs`.
pub fn mint(secret: &[u8], user: &str, expires_unix_secs: i64) -> TurnCredential {
    let username = format!("{expires_unix_secs}:{user}");
    // HMAC takes a key of any length; `new_from_slice` cannot fail for it.
    let mut mac = match Hmac::<Sha1>::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC accepts keys of any length"),
    };
    mac.update(username.as_bytes());
    let credential = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    TurnCredential {
        username,
        credential,
    }
}

impl IceConfig {
    /// The answer to `GET /api/rtc/ice-servers` for `user` at `now`: the
    /// STUN URLs, then (if TURN URLs are set) one TURN entry whose
    /// credential expires `turn_ttl` after `now`.
    pub fn ice_servers(&self, user: UserId, now: Timestamp) -> IceServersResponse {
        let expires_at = now.saturating_add(self.turn_ttl);
        let mut ice_servers = Vec::new();
        if !self.stun_urls.is_empty() {
            ice_servers.push(IceServer {
                urls: self.stun_urls.clone(),
                username: None,
                credential: None,
            });
        }
        if !self.turn_urls.is_empty() {
            let cred = mint(
                self.turn_secret.as_bytes(),
                &user.to_string(),
                expires_at.unix_seconds(),
            );
            ice_servers.push(IceServer {
                urls: self.turn_urls.clone(),
                username: Some(cred.username),
                credential: Some(cred.credential),
            });
        }
        IceServersResponse {
            ice_servers,
            expires_at: Timestamp::from_unix_millis(expires_at.unix_seconds() * 1000),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Known answer computed independently with Python:
    /// `base64(hmac.new(key, msg, hashlib.sha1).digest())`.
    #[test]
    fn known_answer() {
        let cred = mint(
            b"0123456789abcdef0123456789abcdef",
            "6f1c2a4e-0000-4000-8000-000000000001",
            1_700_003_600,
        );
        assert_eq!(
            cred.username,
            "1700003600:6f1c2a4e-0000-4000-8000-000000000001"
        );
        assert_eq!(cred.credential, "iUCvUB1HxIkhgQo9GtvD7fP88YQ=");
    }

    /// RFC 2202 test case 2 (HMAC-SHA1, key "Jefe").
    #[test]
    fn rfc2202_vector() {
        let mut mac = match Hmac::<Sha1>::new_from_slice(b"Jefe") {
            Ok(m) => m,
            Err(_) => unreachable!(),
        };
        mac.update(b"what do ya want for nothing?");
        let hex: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(hex, "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79");
    }

    #[test]
    fn answer_shape() {
        let user = UserId::new();
        let now = Timestamp::from_unix_millis(1_700_000_000_500);
        let mut config = IceConfig {
            stun_urls: vec!["stun:turn.example:3478".into()],
            turn_urls: vec![],
            turn_secret: "s3cret".into(),
            turn_ttl: Duration::from_secs(3600),
        };
        let only_stun = config.ice_servers(user, now);
        assert_eq!(only_stun.ice_servers.len(), 1);
        assert_eq!(only_stun.ice_servers[0].username, None);

        config.turn_urls = vec!["turn:turn.example:3478?transport=udp".into()];
        let both = config.ice_servers(user, now);
        assert_eq!(both.ice_servers.len(), 2);
        let turn = &both.ice_servers[1];
        let expected = mint(b"s3cret", &user.to_string(), 1_700_003_600);
        assert_eq!(turn.username.as_deref(), Some(expected.username.as_str()));
        assert_eq!(
            turn.credential.as_deref(),
            Some(expected.credential.as_str())
        );
        assert_eq!(both.expires_at.unix_millis(), 1_700_003_600_000);
        assert!(!format!("{config:?}").contains("s3cret"));

        config.stun_urls.clear();
        config.turn_urls.clear();
        assert!(config.ice_servers(user, now).ice_servers.is_empty());
    }
}
