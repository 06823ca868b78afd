//! A cap on how many of something one key may hold at once (connections per client address,
//! requests in flight per user), with a guard that gives the slot back when it drops. Only keys
//! that hold a slot are remembered, so memory follows what is open now.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;

use parking_lot::Mutex;

/// At most `max` slots per key at once (0: no cap).
pub struct KeyedCap<K: Hash + Eq + Clone> {
    max: usize,
    open: Arc<Mutex<HashMap<K, usize>>>,
}

/// One slot of a key; given back on drop.
pub struct KeyedSlot<K: Hash + Eq + Clone> {
    open: Option<Arc<Mutex<HashMap<K, usize>>>>,
    key: K,
}

impl<K: Hash + Eq + Clone> KeyedCap<K> {
    /// A cap of `max` slots per key; 0 means no cap.
    pub fn new(max: usize) -> Self {
        Self {
            max,
            open: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The cap.
    pub fn max(&self) -> usize {
        self.max
    }

    /// A slot for `key`, or `None` when it already holds `max`.
    pub fn enter(&self, key: &K) -> Option<KeyedSlot<K>> {
        if self.max == 0 {
            return Some(KeyedSlot {
                open: None,
                key: key.clone(),
            });
        }
        let mut open = self.open.lock();
        let count = open.entry(key.clone()).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(KeyedSlot {
            open: Some(Arc::clone(&self.open)),
            key: key.clone(),
        })
    }

    /// Keys holding a slot now.
    pub fn keys(&self) -> usize {
        self.open.lock().len()
    }
}

impl<K: Hash + Eq + Clone> Drop for KeyedSlot<K> {
    fn drop(&mut self) {
        let Some(open) = &self.open else { return };
        let mut open = open.lock();
        // One lookup: the key is hashed again only in the rare case that its count stays.
        match open.remove(&self.key) {
            Some(count) if count > 1 => {
                open.insert(self.key.clone(), count - 1);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_key_gets_the_cap_and_slots_come_back() {
        let cap = KeyedCap::new(2);
        let first = cap.enter(&"a").unwrap();
        let second = cap.enter(&"a").unwrap();
        assert!(cap.enter(&"a").is_none(), "a third for the same key");
        assert!(cap.enter(&"b").is_some(), "another key is not affected");
        drop(first);
        let third = cap.enter(&"a");
        assert!(third.is_some(), "a slot given back is free again");
        let other = cap.enter(&"b");
        assert_eq!(cap.keys(), 2);
        drop((second, third, other));
        assert_eq!(cap.keys(), 0, "keys without slots are forgotten");
    }

    #[test]
    fn zero_means_no_cap() {
        let cap = KeyedCap::new(0);
        let held: Vec<_> = (0..100).filter_map(|_| cap.enter(&1u8)).collect();
        assert_eq!(held.len(), 100);
        assert_eq!(cap.keys(), 0);
    }
}
