//! A bounded cache of the public [`User`] records the service reads often.
//!
//! `room.join` answers with the member list, one user record per member,
//! and every connection reads its own user: reading and decoding those from
//! the store was a large part of a session's cost. User records never change
//! once created (the [`Store`](crate::storage::Store) contract has
//! `create_user` and no update or delete), so a record read once stays true
//! and the cache needs no invalidation. It only has to stay small: at most
//! [`UserCache::CAPACITY`] users, dropping an arbitrary eighth when full.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::protocol::{User, UserId};

/// See the [module docs](self).
#[derive(Debug)]
pub(crate) struct UserCache {
    capacity: usize,
    map: Mutex<HashMap<UserId, User>>,
}

impl UserCache {
    /// Users kept at most (a user is ~200 bytes: a few MiB).
    pub(crate) const CAPACITY: usize = 16_384;

    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity,
            map: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<UserId, User>> {
        // Every step leaves the map consistent.
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn get(&self, id: UserId) -> Option<User> {
        self.lock().get(&id).cloned()
    }

    pub(crate) fn insert(&self, user: &User) {
        if self.capacity == 0 {
            return;
        }
        let mut map = self.lock();
        if map.len() >= self.capacity && !map.contains_key(&user.id) {
            let drop: Vec<UserId> = map
                .keys()
                .take((self.capacity / 8).max(1))
                .copied()
                .collect();
            for k in drop {
                map.remove(&k);
            }
        }
        map.insert(user.id, user.clone());
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
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
