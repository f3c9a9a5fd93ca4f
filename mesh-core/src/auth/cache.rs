//! A small, bounded cache of bearer tokens whose signature was verified.
//!
//! Checking an Ed25519 signature is the largest single cost of opening a
//! WebSocket (tens of microseconds), and a client presents the same access
//! token on every reconnect. [`JwtAuthenticator`](super::JwtAuthenticator)
//! therefore remembers, for tokens it accepted, what they said: the
//! [`Identity`] and the `exp`. A token found here is accepted without
//! checking its signature again, because it is byte for byte the token
//! that was checked (the key is the whole token, never a hash of it that
//! could collide), and the key ring that checked it never changes.
//!
//! What the cache does not change:
//!
//! - Expiry: an entry is used only while `now < exp`, the same rule as the
//!   full check, against the caller's clock; an expired entry is dropped and
//!   the token goes through the full check (which refuses it).
//! - Revocation: it is not the authenticator's to check. The service looks
//!   the device up in the store after every successful `authenticate`,
//!   cached or not, exactly as before.
//! - Refusals are never cached: a bad token costs the full check each time.
//!
//! The cache holds at most [`TokenCache::DEFAULT_CAPACITY`] tokens (a
//! [`BoundedMap`]): when it is full, expired entries go first, then
//! arbitrary ones.

use super::Identity;
use crate::bounded_map::BoundedMap;
use crate::protocol::Timestamp;

/// Verified tokens, their identity and expiry. See the [module docs](self).
pub(crate) struct TokenCache {
    map: BoundedMap<Box<str>, Entry>,
}

impl std::fmt::Debug for TokenCache {
    // Never the tokens themselves: they are bearer credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache")
            .field("map", &self.map)
            .finish()
    }
}

#[derive(Clone)]
struct Entry {
    identity: Identity,
    /// The token's `exp`, Unix seconds: valid while `now < exp`.
    exp: i64,
}

impl TokenCache {
    /// Tokens kept by default: a few MiB at most (a token is ~300 bytes).
    pub(crate) const DEFAULT_CAPACITY: usize = 4096;

    /// An empty cache of at most `capacity` tokens (0 disables it).
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            map: BoundedMap::new(capacity),
        }
    }

    /// The most tokens kept at once.
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.map.capacity()
    }

    /// The identity of `token` if it was verified and has not expired at
    /// `now`.
    pub(crate) fn get(&self, token: &str, now: Timestamp) -> Option<Identity> {
        let now = now.unix_seconds();
        self.map.get(token, |e| now < e.exp).map(|e| e.identity)
    }

    /// Remembers a token that was just verified at `now`, valid until `exp`.
    pub(crate) fn insert(&self, token: &str, identity: &Identity, exp: i64, now: Timestamp) {
        let now = now.unix_seconds();
        if now >= exp {
            return;
        }
        let entry = Entry {
            identity: identity.clone(),
            exp,
        };
        self.map.insert(token.into(), entry, |e| now < e.exp);
    }

    /// Tokens held now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{DeviceId, UserId};

    fn id() -> Identity {
        Identity {
            user_id: UserId::new(),
            device_id: DeviceId::new(),
            scope: None,
        }
    }

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_unix_millis(secs * 1000)
    }

    #[test]
    fn hits_until_exp_then_never() {
        let c = TokenCache::new(8);
        let who = id();
        c.insert("t", &who, 100, at(10));
        assert_eq!(c.get("t", at(10)), Some(who.clone()));
        assert_eq!(
            c.get("t", Timestamp::from_unix_millis(99_999)),
            Some(who.clone())
        );
        // Exactly at exp: expired, and dropped.
        assert_eq!(c.get("t", at(100)), None);
        assert_eq!(c.len(), 0);
        // Not resurrected by an earlier clock either.
        assert_eq!(c.get("t", at(10)), None);
        // Unknown or different bytes: a miss.
        c.insert("t", &who, 100, at(10));
        assert_eq!(c.get("t ", at(10)), None);
        assert_eq!(c.get("T", at(10)), None);
    }

    #[test]
    fn expired_tokens_are_not_inserted() {
        let c = TokenCache::new(8);
        c.insert("t", &id(), 100, at(100));
        c.insert("u", &id(), 100, at(101));
        assert_eq!(c.len(), 0);
    }

    #[test]
    fn never_holds_more_than_its_capacity() {
        let c = TokenCache::new(16);
        assert_eq!(c.capacity(), 16);
        for i in 0..1000 {
            c.insert(&format!("tok{i}"), &id(), 1_000, at(0));
            assert!(c.len() <= 16, "{} after {i}", c.len());
        }
        // The newest is always kept.
        assert!(c.get("tok999", at(0)).is_some());
        // Expired entries make room first.
        let c = TokenCache::new(4);
        for i in 0..3 {
            c.insert(&format!("old{i}"), &id(), 10, at(0));
        }
        c.insert("live", &id(), 1_000, at(0));
        c.insert("new", &id(), 1_000, at(20));
        assert_eq!(c.len(), 2);
        assert!(c.get("live", at(20)).is_some());
        assert!(c.get("new", at(20)).is_some());
    }

    #[test]
    fn capacity_zero_disables_it() {
        let c = TokenCache::new(0);
        c.insert("t", &id(), 1_000, at(0));
        assert_eq!(c.get("t", at(0)), None);
        assert_eq!(c.len(), 0);
    }
}
