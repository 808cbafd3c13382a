//! The in-memory policy cache: per domain, the last fetched policy and the
//! time of the last failed fetch, which [`policyd_policy::plan`] reads; in
//! front of the persistent one ([`policyd_store`]) when `database` is set.
//!
//! Bounded: at most `capacity` domains, the least recently used one
//! evicted first, so that queries for random domains (each with a TXT
//! record whose policy host fails, say) cannot grow memory without bound.
//! Domains without an MTA-STS record never get an entry. A failed fetch is
//! the one negative answer kept, for [`policyd_policy::cache::FETCH_RETRY_SECS`]
//! in effect (the plan ignores it after that).

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use policyd_policy::CachedPolicy;
pub use policyd_store::Entry;

/// The least-recently-used map of domains to [`Entry`].
#[derive(Debug)]
pub struct PolicyStore {
    capacity: usize,
    entries: HashMap<String, (Entry, u64)>,
    /// Use stamp -> domain, oldest first.
    order: BTreeMap<u64, String>,
    next_stamp: u64,
}

impl PolicyStore {
    /// A store of at most `capacity` domains (at least one).
    pub fn new(capacity: usize) -> PolicyStore {
        PolicyStore {
            capacity: capacity.max(1),
            entries: HashMap::new(),
            order: BTreeMap::new(),
            next_stamp: 0,
        }
    }

    /// How many domains are kept.
    pub fn domains(&self) -> usize {
        self.entries.len()
    }

    /// The entry of `domain`, marked as just used.
    pub fn get(&mut self, domain: &str) -> Option<Entry> {
        let stamp = self.stamp();
        let (entry, used) = self.entries.get_mut(domain)?;
        self.order.remove(used);
        *used = stamp;
        self.order.insert(stamp, domain.to_string());
        Some(entry.clone())
    }

    /// A policy just fetched: replaces the cached one and forgets a
    /// failure. Returns the entry now kept.
    pub fn store_policy(&mut self, domain: &str, policy: CachedPolicy) -> Entry {
        self.update(domain, |e| {
            e.policy = Some(policy);
            e.last_failed_fetch = None;
            e.last_error = None;
        })
    }

    /// A failed fetch at `at`, and why; the cached policy, if any, stays.
    /// Returns the entry now kept.
    pub fn record_failure(&mut self, domain: &str, at: DateTime<Utc>, error: String) -> Entry {
        self.update(domain, |e| {
            e.last_failed_fetch = Some(at);
            e.last_error = Some(error);
        })
    }

    /// What the persistent cache holds for `domain` (read at a miss, or
    /// loaded at start), kept as is.
    pub fn insert(&mut self, domain: &str, entry: Entry) {
        self.update(domain, |e| *e = entry);
    }

    fn update(&mut self, domain: &str, change: impl FnOnce(&mut Entry)) -> Entry {
        let stamp = self.stamp();
        if let Some((entry, used)) = self.entries.get_mut(domain) {
            change(entry);
            let kept = entry.clone();
            self.order.remove(used);
            *used = stamp;
            self.order.insert(stamp, domain.to_string());
            kept
        } else {
            while self.entries.len() >= self.capacity {
                let Some((_, oldest)) = self.order.pop_first() else {
                    break;
                };
                self.entries.remove(&oldest);
            }
            let mut entry = Entry::default();
            change(&mut entry);
            self.entries
                .insert(domain.to_string(), (entry.clone(), stamp));
            self.order.insert(stamp, domain.to_string());
            entry
        }
    }

    fn stamp(&mut self) -> u64 {
        self.next_stamp += 1;
        self.next_stamp
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use policyd_policy::StsPolicy;

    fn policy() -> CachedPolicy {
        let body = b"version: STSv1\nmode: enforce\nmx: mx.example\nmax_age: 86400\n";
        CachedPolicy::new(
            "id1",
            StsPolicy::parse(body).unwrap(),
            Utc.timestamp_opt(1_700_000_000, 0).unwrap(),
        )
    }

    #[test]
    fn keeps_at_most_capacity_evicting_the_least_recently_used() {
        let mut store = PolicyStore::new(2);
        let now = Utc.timestamp_opt(1_700_000_000, 0).unwrap();
        store.store_policy("a.example", policy());
        store.record_failure("b.example", now, "refused".into());
        // a is used, so b is the least recently used.
        assert!(store.get("a.example").is_some());
        store.record_failure("c.example", now, "refused".into());
        assert_eq!(store.domains(), 2);
        assert!(store.get("b.example").is_none());
        assert_eq!(store.get("a.example").unwrap().policy, Some(policy()));
        assert_eq!(store.get("c.example").unwrap().last_failed_fetch, Some(now));
        for i in 0..1000 {
            store.record_failure(&format!("random{i}.example"), now, "refused".into());
        }
        assert_eq!(store.domains(), 2);
        assert_eq!(store.order.len(), 2);
    }

    #[test]
    fn a_failure_keeps_the_policy_and_a_fetch_clears_the_failure() {
        let mut store = PolicyStore::new(10);
        let now = Utc.timestamp_opt(1_700_000_000, 0).unwrap();
        store.store_policy("a.example", policy());
        store.record_failure("a.example", now, "refused".into());
        let entry = store.get("a.example").unwrap();
        assert_eq!(entry.policy, Some(policy()));
        assert_eq!(entry.last_failed_fetch, Some(now));
        store.store_policy("a.example", policy());
        assert_eq!(store.get("a.example").unwrap().last_failed_fetch, None);
    }
}
