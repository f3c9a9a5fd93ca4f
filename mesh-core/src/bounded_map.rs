//! [`BoundedMap`]: a small thread-safe map that never holds more than its
//! capacity, for the caches in front of the signature check and the store.
//!
//! When full, it first drops the entries its owner says are stale, then, if
//! it is still more than seven eighths full, arbitrary ones (the map's
//! iteration order, which the std hasher's random keys make unpredictable
//! from outside) down to seven eighths. So the scan runs once per many
//! insertions, not on every one.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Mutex, MutexGuard, PoisonError};

/// See the [module docs](self).
pub(crate) struct BoundedMap<K, V> {
    capacity: usize,
    map: Mutex<HashMap<K, V>>,
}

impl<K, V> std::fmt::Debug for BoundedMap<K, V> {
    // Never the entries: keys may be credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoundedMap")
            .field("capacity", &self.capacity)
            .field("len", &self.lock().len())
            .finish()
    }
}

impl<K, V> BoundedMap<K, V> {
    fn lock(&self) -> MutexGuard<'_, HashMap<K, V>> {
        // Every step leaves the map consistent.
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<K: Eq + Hash, V: Clone> BoundedMap<K, V> {
    /// An empty map of at most `capacity` entries (0: it keeps nothing).
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity,
            map: Mutex::new(HashMap::new()),
        }
    }

    /// The most entries held at once.
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// The value for `key` if `fresh` holds for it; a stale one is dropped.
    pub(crate) fn get<Q>(&self, key: &Q, fresh: impl Fn(&V) -> bool) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        if self.capacity == 0 {
            return None;
        }
        let mut map = self.lock();
        let value = map.get(key)?;
        if fresh(value) {
            return Some(value.clone());
        }
        map.remove(key);
        None
    }

    /// Keeps `value` under `key`, making room first if full: stale entries
    /// (`fresh` false) go, then arbitrary ones down to seven eighths.
    pub(crate) fn insert(&self, key: K, value: V, fresh: impl Fn(&V) -> bool) {
        if self.capacity == 0 {
            return;
        }
        let mut map = self.lock();
        if map.len() >= self.capacity && !map.contains_key(&key) {
            map.retain(|_, v| fresh(v));
            let keep = self.capacity - (self.capacity / 8).max(1);
            let excess = map.len().saturating_sub(keep);
            if excess > 0 {
                // Two steps: `retain` cannot stop after `excess` removals.
                let mut dropped = 0;
                map.retain(|_, _| {
                    dropped += 1;
                    dropped > excess
                });
            }
        }
        map.insert(key, value);
    }

    /// Entries held now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_holds_more_than_its_capacity_and_keeps_the_newest() {
        let m = BoundedMap::new(16);
        for i in 0..1000 {
            m.insert(i, i, |_| true);
            assert!(m.len() <= 16, "{} after {i}", m.len());
            assert_eq!(m.get(&i, |_| true), Some(i));
        }
    }

    #[test]
    fn room_is_made_seven_eighths_at_a_time() {
        let m = BoundedMap::new(16);
        for i in 0..16 {
            m.insert(i, i, |_| true);
        }
        assert_eq!(m.len(), 16);
        m.insert(100, 100, |_| true);
        // Down to 14, plus the new one: the next insertion needs no scan.
        assert_eq!(m.len(), 15);
        m.insert(101, 101, |_| true);
        assert_eq!(m.len(), 16);
    }

    #[test]
    fn stale_entries_go_first_and_are_never_returned() {
        let m = BoundedMap::new(4);
        for i in 0..3 {
            m.insert(i, -1, |_| true);
        }
        m.insert(10, 10, |_| true);
        m.insert(11, 11, |v: &i32| *v >= 0);
        assert_eq!(m.len(), 2);
        assert_eq!(m.get(&10, |_| true), Some(10));
        assert_eq!(m.get(&11, |_| true), Some(11));
        assert_eq!(m.get(&10, |v| *v > 10), None, "stale: a miss");
        assert_eq!(m.len(), 1, "and dropped");
    }

    #[test]
    fn capacity_zero_keeps_nothing() {
        let m = BoundedMap::new(0);
        m.insert(1, 1, |_| true);
        assert_eq!(m.get(&1, |_| true), None);
        assert_eq!(m.len(), 0);
    }
}
