//! Relay keys: the server gives each party of a session its own key (in
//! `p2p.session.created`'s `relay`), HMAC-SHA256 under a secret only the
//! server holds, over the session id and the party. A `BIND` must carry the
//! key of the party it binds, beside a valid session token: the token alone,
//! which both parties hold, does not let one pose as the other, and a third
//! party holding a leaked token cannot bind at all.

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::protocol::{RelayGrant, RelayParty, SessionId};

/// The server's relay secret (random per server start unless configured).
#[derive(Clone)]
pub struct RelaySecret([u8; 32]);

impl fmt::Debug for RelaySecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RelaySecret(..)")
    }
}

impl RelaySecret {
    /// A fresh random secret.
    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut b = [0u8; 32];
        getrandom::fill(&mut b)?;
        Ok(Self(b))
    }

    pub fn from_bytes(b: [u8; 32]) -> Self {
        Self(b)
    }

    /// `party`'s key for `session`.
    pub fn key(&self, session: SessionId, party: RelayParty) -> [u8; 32] {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("any key length");
        mac.update(b"mesh-relay-v1");
        mac.update(session.as_bytes());
        mac.update(&[party.to_byte()]);
        mac.finalize().into_bytes().into()
    }

    /// Whether `key` is `party`'s key for `session` (in constant time).
    pub fn check(&self, session: SessionId, party: RelayParty, key: &[u8; 32]) -> bool {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("any key length");
        mac.update(b"mesh-relay-v1");
        mac.update(session.as_bytes());
        mac.update(&[party.to_byte()]);
        mac.verify_slice(key).is_ok()
    }

    /// The grant `party` gets in `p2p.session.created`.
    pub fn grant(&self, session: SessionId, party: RelayParty) -> RelayGrant {
        RelayGrant {
            party,
            key: hex(&self.key(session, party)),
            addr: None,
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A grant's key as bytes (`None` if it is not 64 hex characters).
pub fn parse_key(key: &str) -> Option<[u8; 32]> {
    if key.len() != 64 || !key.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&key[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_differ_per_party_session_and_secret() {
        let s = RelaySecret::generate().expect("random");
        let sid = SessionId::new();
        let k = s.key(sid, RelayParty::Initiator);
        assert!(s.check(sid, RelayParty::Initiator, &k));
        assert!(!s.check(sid, RelayParty::Target, &k));
        assert!(!s.check(SessionId::new(), RelayParty::Initiator, &k));
        assert!(
            !RelaySecret::generate()
                .expect("random")
                .check(sid, RelayParty::Initiator, &k)
        );
        let g = s.grant(sid, RelayParty::Target);
        assert_eq!(parse_key(&g.key), Some(s.key(sid, RelayParty::Target)));
        assert_eq!(parse_key("zz"), None);
        assert_eq!(parse_key(&"é".repeat(32)), None);
    }
}
