//! When to use a cached MTA-STS policy, when to fetch it again (RFC 8461
//! sections 3.3 and 5.1). The store is the daemon's; this decides only,
//! from the time it is given (UTC, as `mailtls_common::clock` provides).
//!
//! The rules:
//!
//! - A cached policy is valid until `fetched_at + max_age`; an expired one
//!   is never applied (section 3.3).
//! - The TXT record's `id` equals the cached one: use the cache, no fetch
//!   (section 3.1: the id changes when the policy does).
//! - The `id` differs: fetch now; if that fails, keep applying the valid
//!   cached policy (section 3.3: "if a valid (non-expired) policy exists in
//!   the sender's cache, the sender MUST apply that cached policy").
//! - No valid cached policy: fetch; if that fails, deliver as though the
//!   domain had no policy (section 3.3).
//! - No TXT record, or the lookup failed: a valid cached policy still
//!   applies (a removed record is not how a domain retires a policy,
//!   section 8.3: it publishes `mode: none`); without one, no policy.
//! - Proactive refresh (see [`refresh_window`]): so that a policy in use
//!   does not lapse, it is fetched again in the background some time before
//!   it expires.
//! - After a failed fetch, no new attempt for [`FETCH_RETRY_SECS`] (section
//!   3.3 suggests "a period of five minutes or longer per version ID").

use chrono::{DateTime, Duration, Utc};

use crate::policy::StsPolicy;

/// Minimum time between fetch attempts for a domain after a failure, in
/// seconds (RFC 8461 section 3.3: five minutes or longer).
pub const FETCH_RETRY_SECS: i64 = 300;

/// The longest proactive-refresh window unless a tenth of the lifetime is
/// longer: one day.
pub const REFRESH_DAY_SECS: i64 = 86_400;

/// A policy as the daemon stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedPolicy {
    /// The TXT record's `id` the policy was fetched under.
    pub id: String,
    pub policy: StsPolicy,
    pub fetched_at: DateTime<Utc>,
    /// `fetched_at + max_age` (capped max_age, see [`StsPolicy::max_age`]).
    pub expires_at: DateTime<Utc>,
}

impl CachedPolicy {
    /// A policy just fetched under `id` at `fetched_at`.
    pub fn new(
        id: impl Into<String>,
        policy: StsPolicy,
        fetched_at: DateTime<Utc>,
    ) -> CachedPolicy {
        let expires_at = fetched_at + Duration::seconds(i64::from(policy.max_age()));
        CachedPolicy {
            id: id.into(),
            policy,
            fetched_at,
            expires_at,
        }
    }

    /// True while the policy may be applied: before `expires_at`.
    pub fn is_valid(&self, now: DateTime<Utc>) -> bool {
        now < self.expires_at
    }
}

/// The outcome of the `_mta-sts.DOMAIN` TXT lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxtLookup {
    /// Exactly one valid record with this `id` ([`crate::txt::select`]).
    Id(String),
    /// No usable record: NXDOMAIN, no data, or [`crate::txt::TxtError`].
    NoRecord,
    /// The lookup failed (timeout, SERVFAIL).
    Failed,
}

/// Why no policy applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NoPolicyReason {
    /// No usable TXT record and no valid cached policy.
    NoRecord,
    /// The TXT lookup failed and there is no valid cached policy. The
    /// daemon may prefer `TEMP` here; the RFC says deliver as without.
    DnsFailure,
    /// A fetch failed less than [`FETCH_RETRY_SECS`] ago and there is no
    /// valid cached policy.
    RecentFetchFailure,
}

/// What the daemon should do for one lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CacheAction {
    /// Apply the cached policy; fetch nothing.
    Use,
    /// Apply the cached policy, and fetch it again in the background; if
    /// that fails, keep the cached one until it expires.
    UseAndRefresh,
    /// The record's id changed: fetch now; if that fails, apply the cached
    /// policy (still valid).
    FetchOrUseCached,
    /// No valid cached policy: fetch now; if that fails, no policy (and a
    /// TLSRPT `sts-policy-fetch-error` is due).
    Fetch,
    /// No policy applies; fetch nothing.
    NoPolicy(NoPolicyReason),
}

/// How long before expiry a policy in use is refreshed: the longer of a
/// tenth of its lifetime and [`REFRESH_DAY_SECS`], but never more than half
/// its lifetime (else a short-lived policy would be fetched on every
/// lookup). A week-long policy is refreshed in its last day, a year-long
/// one in its last 36.5 days, a one-hour one after 30 minutes.
pub fn refresh_window(entry: &CachedPolicy) -> Duration {
    let lifetime = (entry.expires_at - entry.fetched_at).num_seconds().max(0);
    let window = (lifetime / 10).max(REFRESH_DAY_SECS.min(lifetime / 2));
    Duration::seconds(window)
}

/// Decides, at `now`, from the TXT lookup, the cached entry (if any, valid
/// or not) and the time of the last failed fetch for the domain (if any).
pub fn plan(
    now: DateTime<Utc>,
    txt: &TxtLookup,
    cached: Option<&CachedPolicy>,
    last_failed_fetch: Option<DateTime<Utc>>,
) -> CacheAction {
    let valid = cached.filter(|c| c.is_valid(now));
    let backing_off =
        last_failed_fetch.is_some_and(|t| now - t < Duration::seconds(FETCH_RETRY_SECS));
    match txt {
        TxtLookup::Id(id) => match valid {
            Some(c) if c.id == *id => {
                if !backing_off && now >= c.expires_at - refresh_window(c) {
                    CacheAction::UseAndRefresh
                } else {
                    CacheAction::Use
                }
            }
            Some(_) if backing_off => CacheAction::Use,
            Some(_) => CacheAction::FetchOrUseCached,
            None if backing_off => CacheAction::NoPolicy(NoPolicyReason::RecentFetchFailure),
            None => CacheAction::Fetch,
        },
        TxtLookup::NoRecord | TxtLookup::Failed if valid.is_some() => CacheAction::Use,
        TxtLookup::NoRecord => CacheAction::NoPolicy(NoPolicyReason::NoRecord),
        TxtLookup::Failed => CacheAction::NoPolicy(NoPolicyReason::DnsFailure),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use proptest::prelude::*;

    fn t(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + secs, 0).unwrap()
    }

    fn entry(id: &str, max_age: u32, fetched: i64) -> CachedPolicy {
        let body = format!("version: STSv1\nmode: enforce\nmx: mx.example\nmax_age: {max_age}\n");
        CachedPolicy::new(id, StsPolicy::parse(body.as_bytes()).unwrap(), t(fetched))
    }

    const WEEK: u32 = 7 * 86_400;

    fn id(s: &str) -> TxtLookup {
        TxtLookup::Id(s.into())
    }

    #[test]
    fn expiry() {
        let e = entry("a", WEEK, 0);
        assert_eq!(e.expires_at, t(i64::from(WEEK)));
        assert!(e.is_valid(t(i64::from(WEEK) - 1)));
        assert!(!e.is_valid(t(i64::from(WEEK))));
        assert!(!entry("a", 0, 0).is_valid(t(0)));
    }

    #[test]
    fn same_id_uses_the_cache() {
        let e = entry("a", WEEK, 0);
        assert_eq!(plan(t(10), &id("a"), Some(&e), None), CacheAction::Use);
        // In the last day: refresh in the background.
        let last_day = i64::from(WEEK) - 86_400;
        assert_eq!(
            plan(t(last_day - 1), &id("a"), Some(&e), None),
            CacheAction::Use
        );
        assert_eq!(
            plan(t(last_day), &id("a"), Some(&e), None),
            CacheAction::UseAndRefresh
        );
        // ... unless a fetch failed a moment ago.
        assert_eq!(
            plan(t(last_day + 100), &id("a"), Some(&e), Some(t(last_day))),
            CacheAction::Use
        );
        assert_eq!(
            plan(t(last_day + 300), &id("a"), Some(&e), Some(t(last_day))),
            CacheAction::UseAndRefresh
        );
    }

    #[test]
    fn expired_is_fetched() {
        let e = entry("a", WEEK, 0);
        let after = t(i64::from(WEEK));
        assert_eq!(plan(after, &id("a"), Some(&e), None), CacheAction::Fetch);
        assert_eq!(
            plan(after, &TxtLookup::NoRecord, Some(&e), None),
            CacheAction::NoPolicy(NoPolicyReason::NoRecord)
        );
        assert_eq!(
            plan(after, &TxtLookup::Failed, Some(&e), None),
            CacheAction::NoPolicy(NoPolicyReason::DnsFailure)
        );
    }

    #[test]
    fn new_id_fetches_with_fallback() {
        let e = entry("a", WEEK, 0);
        assert_eq!(
            plan(t(10), &id("b"), Some(&e), None),
            CacheAction::FetchOrUseCached
        );
        assert_eq!(
            plan(t(10), &id("b"), Some(&e), Some(t(5))),
            CacheAction::Use
        );
    }

    #[test]
    fn no_cache() {
        assert_eq!(plan(t(0), &id("a"), None, None), CacheAction::Fetch);
        assert_eq!(
            plan(t(0), &id("a"), None, Some(t(-299))),
            CacheAction::NoPolicy(NoPolicyReason::RecentFetchFailure)
        );
        assert_eq!(
            plan(t(0), &id("a"), None, Some(t(-300))),
            CacheAction::Fetch
        );
        assert_eq!(
            plan(t(0), &TxtLookup::NoRecord, None, None),
            CacheAction::NoPolicy(NoPolicyReason::NoRecord)
        );
        assert_eq!(
            plan(t(0), &TxtLookup::Failed, None, None),
            CacheAction::NoPolicy(NoPolicyReason::DnsFailure)
        );
    }

    #[test]
    fn record_gone_keeps_a_valid_policy() {
        let e = entry("a", WEEK, 0);
        assert_eq!(
            plan(t(10), &TxtLookup::NoRecord, Some(&e), None),
            CacheAction::Use
        );
        assert_eq!(
            plan(t(10), &TxtLookup::Failed, Some(&e), None),
            CacheAction::Use
        );
    }

    #[test]
    fn refresh_windows() {
        assert_eq!(refresh_window(&entry("a", WEEK, 0)).num_seconds(), 86_400);
        assert_eq!(
            refresh_window(&entry("a", 31_557_600, 0)).num_seconds(),
            3_155_760
        );
        assert_eq!(refresh_window(&entry("a", 86_400, 0)).num_seconds(), 43_200);
        assert_eq!(refresh_window(&entry("a", 3_600, 0)).num_seconds(), 1_800);
        assert_eq!(refresh_window(&entry("a", 0, 0)).num_seconds(), 0);
        // A capped max_age expires at the cap.
        let capped = CachedPolicy::new(
            "a",
            StsPolicy::parse(b"version: STSv1\nmode: none\nmax_age: 99999999\n").unwrap(),
            t(0),
        );
        assert_eq!(capped.expires_at, t(31_557_600));
    }

    proptest! {
        #[test]
        fn never_applies_an_expired_policy(max_age in 0u32..1_000_000, at in -10i64..2_000_000, txt in 0u8..4, failed in proptest::option::of(-1000i64..2_000_000)) {
            let e = entry("a", max_age, 0);
            let txt = match txt { 0 => id("a"), 1 => id("b"), 2 => TxtLookup::NoRecord, _ => TxtLookup::Failed };
            let action = plan(t(at), &txt, Some(&e), failed.map(t));
            if !e.is_valid(t(at)) {
                prop_assert!(!matches!(action, CacheAction::Use | CacheAction::UseAndRefresh | CacheAction::FetchOrUseCached));
            }
        }

        #[test]
        fn a_fresh_refresh_leaves_the_window(max_age in 1u32..=31_557_600) {
            // A policy fetched now is not due for refresh at once.
            let e = entry("a", max_age, 0);
            prop_assert_eq!(plan(t(0), &id("a"), Some(&e), None), CacheAction::Use);
        }
    }
}
