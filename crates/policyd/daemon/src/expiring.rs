//! A bounded map whose values expire: DNS answers for their TTL, answers
//! to Postfix for a short while. When full, the value expiring soonest is
//! dropped, so a flood of new keys cannot grow it.

use std::collections::{BTreeSet, HashMap};
use std::hash::Hash;
use std::time::Instant;

#[derive(Debug)]
pub struct Expiring<K, V> {
    capacity: usize,
    values: HashMap<K, (V, Instant)>,
    by_expiry: BTreeSet<(Instant, K)>,
}

impl<K: Hash + Eq + Ord + Clone, V: Clone> Expiring<K, V> {
    /// At most `capacity` values (at least one).
    pub fn new(capacity: usize) -> Expiring<K, V> {
        Expiring {
            capacity: capacity.max(1),
            values: HashMap::new(),
            by_expiry: BTreeSet::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The value of `key` unless it has expired at `now` (then it goes).
    pub fn get(&mut self, key: &K, now: Instant) -> Option<V> {
        let (value, expires) = self.values.get(key)?;
        if *expires > now {
            return Some(value.clone());
        }
        let expires = *expires;
        self.remove(key, expires);
        None
    }

    /// Keeps `value` for `key` until `expires`, in place of any other.
    pub fn insert(&mut self, key: K, value: V, expires: Instant) {
        if let Some((_, old)) = self.values.get(&key) {
            let old = *old;
            self.remove(&key, old);
        }
        while self.values.len() >= self.capacity {
            let Some((_, soonest)) = self.by_expiry.pop_first() else {
                break;
            };
            self.values.remove(&soonest);
        }
        self.by_expiry.insert((expires, key.clone()));
        self.values.insert(key, (value, expires));
    }

    fn remove(&mut self, key: &K, expires: Instant) {
        self.values.remove(key);
        self.by_expiry.remove(&(expires, key.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn values_expire_and_the_map_stays_bounded() {
        let now = Instant::now();
        let at = |secs| now + Duration::from_secs(secs);
        let mut cache = Expiring::new(3);
        cache.insert("a", 1, at(10));
        assert_eq!(cache.get(&"a", now), Some(1));
        assert_eq!(cache.get(&"a", at(10)), None);
        assert!(cache.is_empty());
        // Full: the one expiring soonest goes.
        cache.insert("late", 2, at(300));
        cache.insert("soon", 3, at(5));
        cache.insert("mid", 4, at(60));
        cache.insert("new", 5, at(60));
        assert_eq!(cache.get(&"soon", now), None);
        assert_eq!(cache.get(&"late", now), Some(2));
        let keys: Vec<String> = (0..1000).map(|i| format!("r{i}")).collect();
        let mut strings = Expiring::new(3);
        for (i, key) in keys.iter().enumerate() {
            strings.insert(key.clone(), i, at(i as u64));
        }
        assert_eq!(strings.len(), 3);
        assert_eq!(strings.by_expiry.len(), 3);
        // Replacing a value keeps one entry.
        strings.insert("r999".to_string(), 0, at(2000));
        assert_eq!(strings.len(), 3);
        assert_eq!(strings.by_expiry.len(), 3);
        assert_eq!(strings.get(&"r999".to_string(), now), Some(0));
    }
}
