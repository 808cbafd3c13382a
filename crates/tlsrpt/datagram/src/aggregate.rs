//! The collector's counters, keyed as the upstream collectd keys its database
//! rows (`shared/spec/tlsrpt-interfaces.md` section 2):
//! per (day, domain, TLSRPT record, policy JSON) a total and a failure counter,
//! and per failure-detail JSON a counter.
//!
//! An [`Aggregate`] holds what has not been written yet. Its size grows with
//! the number of distinct keys, never with the number of datagrams, which is
//! what keeps the collector's memory bounded while the database is slow or
//! unavailable.

use hashbrown::{Equivalent, HashMap};
use mailtls_common::day::Day;

use crate::delivery::Delivery;

/// The primary key of an upstream `finalresults` row.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyKey {
    /// UTC day of receipt.
    pub day: Day,
    pub domain: String,
    pub record: String,
    pub policy: String,
}

/// A [`PolicyKey`] made of borrowed parts, to look a key up without
/// allocating; it hashes exactly like the owned key.
#[derive(Hash)]
struct PolicyKeyRef<'a> {
    day: Day,
    domain: &'a str,
    record: &'a str,
    policy: &'a str,
}

impl Equivalent<PolicyKey> for PolicyKeyRef<'_> {
    fn equivalent(&self, key: &PolicyKey) -> bool {
        self.policy == key.policy
            && self.domain == key.domain
            && self.record == key.record
            && self.day == key.day
    }
}

/// The counters of one [`PolicyKey`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyCounts {
    /// Sessions evaluated under this policy (`cntrtotal`).
    pub total: u64,
    /// Sessions whose final result was a failure (`cntrfailure`).
    pub failed: u64,
    /// Failure-detail JSON text to its count (`failures.cntr`).
    pub failures: HashMap<String, u64>,
}

impl PolicyCounts {
    fn merge(&mut self, other: PolicyCounts) {
        self.total += other.total;
        self.failed += other.failed;
        for (detail, n) in other.failures {
            *self.failures.entry(detail).or_insert(0) += n;
        }
    }
}

/// Counters not yet written to a store.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Aggregate {
    counts: HashMap<PolicyKey, PolicyCounts>,
    datagrams: u64,
}

impl Aggregate {
    pub fn new() -> Aggregate {
        Aggregate::default()
    }

    /// Count one delivery attempt received on `day`.
    pub fn add(&mut self, day: Day, delivery: &Delivery) {
        self.add_n(day, delivery, 1);
    }

    /// Count `n` identical delivery attempts received on `day`.
    pub fn add_n(&mut self, day: Day, delivery: &Delivery, n: u64) {
        self.datagrams += n;
        for policy in &delivery.policies {
            let lookup = PolicyKeyRef {
                day,
                domain: &delivery.domain,
                record: &delivery.record,
                policy: &policy.policy_json,
            };
            let counts = match self.counts.get_mut(&lookup) {
                Some(counts) => counts,
                None => {
                    let key = PolicyKey {
                        day,
                        domain: delivery.domain.clone(),
                        record: delivery.record.clone(),
                        policy: policy.policy_json.clone(),
                    };
                    self.counts.entry(key).or_default()
                }
            };
            counts.total += n;
            counts.failed += n * u64::from(policy.failed);
            for detail in &policy.failures {
                match counts.failures.get_mut(detail.as_str()) {
                    Some(c) => *c += n,
                    None => {
                        counts.failures.insert(detail.clone(), n);
                    }
                }
            }
        }
    }

    /// Add all counters of `other` to ours.
    pub fn merge(&mut self, other: Aggregate) {
        self.datagrams += other.datagrams;
        if self.counts.is_empty() {
            self.counts = other.counts;
            return;
        }
        for (key, counts) in other.counts {
            self.counts.entry(key).or_default().merge(counts);
        }
    }

    /// Take out the counters of days before `day`, leaving the rest. Used at
    /// rollover: those rows belong in the database being closed.
    pub fn split_off_before(&mut self, day: Day) -> Aggregate {
        let (old, keep): (HashMap<_, _>, HashMap<_, _>) = std::mem::take(&mut self.counts)
            .into_iter()
            .partition(|(k, _)| k.day < day);
        self.counts = keep;
        // Datagram counts are informational; attribute them to the part that
        // still has keys so that neither part looks empty when it is not.
        let datagrams = if self.counts.is_empty() {
            std::mem::take(&mut self.datagrams)
        } else {
            0
        };
        Aggregate {
            counts: old,
            datagrams,
        }
    }

    /// Change the day of every key (development rollover: today's counters
    /// become yesterday's).
    pub fn relabel_day(&mut self, from: Day, to: Day) {
        let counts = std::mem::take(&mut self.counts);
        for (mut key, c) in counts {
            if key.day == from {
                key.day = to;
            }
            self.counts.entry(key).or_default().merge(c);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    /// Number of distinct policy keys.
    pub fn len(&self) -> usize {
        self.counts.len()
    }

    /// Number of datagrams counted in here.
    pub fn datagrams(&self) -> u64 {
        self.datagrams
    }

    pub fn iter(&self) -> impl Iterator<Item = (&PolicyKey, &PolicyCounts)> {
        self.counts.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(text: &str) -> Day {
        Day::parse(text).unwrap()
    }
    use crate::parse::parse;

    fn delivery(text: &str) -> Delivery {
        parse(text.as_bytes()).unwrap()
    }

    #[test]
    fn counts_per_policy_and_failure_detail() {
        let mut agg = Aggregate::new();
        let d = delivery(
            r#"{"d":"A.example.","pr":"r","policies":[{"policy-type":9,"failure-details":[{"c":201}],"t":1,"f":1},{"policy-type":2,"t":0,"f":0}]}"#,
        );
        agg.add(day("2026-11-21"), &d);
        agg.add(day("2026-11-21"), &d);
        assert_eq!(agg.len(), 2);
        assert_eq!(agg.datagrams(), 2);
        let (key, c) = agg
            .iter()
            .find(|(k, _)| k.policy == r#"{"policy-type": 9}"#)
            .unwrap();
        assert_eq!(key.domain, "a.example");
        assert_eq!((c.total, c.failed), (2, 2));
        assert_eq!(c.failures[r#"{"c": 201}"#], 2);
    }

    #[test]
    fn merge_adds_and_split_moves_old_days() {
        let d = delivery(r#"{"d":"a","pr":"r","policies":[{"policy-type":9,"t":0,"f":0}]}"#);
        let mut a = Aggregate::new();
        a.add(day("2026-11-21"), &d);
        let mut b = Aggregate::new();
        b.add(day("2026-11-21"), &d);
        b.add(day("2026-11-22"), &d);
        a.merge(b);
        assert_eq!(a.len(), 2);
        let old = a.split_off_before(day("2026-11-22"));
        assert_eq!(old.len(), 1);
        assert_eq!(old.iter().next().unwrap().1.total, 2);
        assert_eq!(a.len(), 1);
        assert_eq!(a.iter().next().unwrap().0.day, day("2026-11-22"));
    }

    #[test]
    fn relabel_moves_counters_to_another_day() {
        let d = delivery(r#"{"d":"a","pr":"r","policies":[{"policy-type":9,"t":0,"f":0}]}"#);
        let mut a = Aggregate::new();
        a.add(day("2026-11-21"), &d);
        a.add(day("2026-11-22"), &d);
        a.relabel_day(day("2026-11-22"), day("2026-11-21"));
        assert_eq!(a.len(), 1);
        assert_eq!(a.iter().next().unwrap().1.total, 2);
    }
}
