//! A bounded cache of the public [`User`] records the service reads often.
//!
//! `room.join` answers with the member list, one user record per member,
//! and every connection reads its own user: reading and decoding those from
//! the store was a large part of a session's cost. User records never change
//! once created (the [`Store`](crate::storage::Store) contract has
//! `create_user` and no update or delete), so a record read once stays true
//! and the cache needs no invalidation. It only has to stay small: at most
//! [`UserCache::CAPACITY`] users (a [`BoundedMap`](crate::bounded_map::BoundedMap)).

use crate::bounded_map::BoundedMap;
use crate::protocol::{User, UserId};

/// See the [module docs](self).
#[derive(Debug)]
pub(crate) struct UserCache {
    map: BoundedMap<UserId, User>,
}

impl UserCache {
    /// Users kept at most (a user is ~200 bytes: a few MiB).
    pub(crate) const CAPACITY: usize = 16_384;

    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            map: BoundedMap::new(capacity),
        }
    }

    pub(crate) fn get(&self, id: UserId) -> Option<User> {
        // Never stale: users do not change.
        self.map.get(&id, |_| true)
    }

    pub(crate) fn insert(&self, user: &User) {
        self.map.insert(user.id, user.clone(), |_| true);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Timestamp;

    fn user(i: usize) -> User {
        User {
            id: UserId::new(),
            username: format!("user{i}"),
            display_name: format!("User {i}"),
            created_at: Timestamp::from_unix_millis(0),
        }
    }

    #[test]
    fn keeps_what_it_was_given_within_its_bound() {
        let c = UserCache::new(16);
        let first = user(0);
        c.insert(&first);
        assert_eq!(c.get(first.id), Some(first.clone()));
        assert_eq!(c.get(UserId::new()), None);
        let mut last = first;
        for i in 1..1000 {
            last = user(i);
            c.insert(&last);
            assert!(c.len() <= 16, "{} after {i}", c.len());
        }
        assert_eq!(c.get(last.id), Some(last));
        let off = UserCache::new(0);
        let u = user(0);
        off.insert(&u);
        assert_eq!(off.get(u.id), None);
    }
}
