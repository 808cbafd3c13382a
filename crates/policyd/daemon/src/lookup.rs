//! One lookup, from Postfix's request to the answer: which map, which
//! domain, DANE or MTA-STS, and the cache.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use mailtls_common::clock::Clock;
use policyd_policy::cache::{CacheAction, NoPolicyReason};
use policyd_policy::{
    plan, postfix_answer, Answer, AnswerError, AnswerOptions, CachedPolicy, DaneLevel, Decision,
    Request, TestingAnswer, TxtLookup,
};

use crate::dns::{Dns, DnsError, MxHosts};
use crate::expiring::Expiring;
use crate::fetch::Fetcher;
use crate::metrics::Metrics;
use crate::store::{Entry, PolicyStore};
use policyd_store::PolicyDb;

/// The socketmap names served, which differ only in the TLSRPT attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapName {
    /// `postfix`: answers with the TLSRPT attributes (Postfix 3.10+).
    Postfix,
    /// `postfix-notlsrpt`: the same answers without them, for Postfix 3.9
    /// and older, which refuse an answer with unknown attributes.
    PostfixNoTlsrpt,
}

impl MapName {
    pub fn parse(name: &str) -> Option<MapName> {
        match name {
            "postfix" => Some(MapName::Postfix),
            "postfix-notlsrpt" => Some(MapName::PostfixNoTlsrpt),
            _ => None,
        }
    }

    fn tlsrpt(self) -> bool {
        self == MapName::Postfix
    }
}

/// The recipient domain a key names, as an A-label host name in lowercase
/// without the trailing dot; `None` for keys that get `NOTFOUND`:
///
/// - `.example.com`, Postfix's parent-domain lookup (with
///   `parent_domain_matches_subdomains`): an MTA-STS policy is for its
///   domain only (RFC 8461 section 4.1 matches MX hosts, not recipient
///   subdomains), so a subdomain is looked up under its own name.
/// - `[host]:port` and `[address]` next hops, IP addresses: no MX lookup,
///   so neither MTA-STS (RFC 8461 section 4) nor DANE MX-based policy.
/// - anything else that is not a host name, including a U-label name that
///   has no valid A-label form (UTS #46).
pub fn domain_of_key(key: &str) -> Option<String> {
    let key = key.strip_suffix('.').unwrap_or(key);
    if key.starts_with('.') || key.starts_with('[') || key.parse::<IpAddr>().is_ok() {
        return None;
    }
    let ascii = if key.is_ascii() {
        key.to_ascii_lowercase()
    } else {
        idna::domain_to_ascii(key).ok()?
    };
    is_host_name(&ascii).then_some(ascii)
}

/// Dot-separated labels of 1-63 letters, digits, `-` or `_`, 253
/// characters at most (RFC 1035 section 2.3.4).
fn is_host_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// How long an answer is given again without working it out: Postfix asks
/// for a domain at every delivery, and within this time DNS (whose answers
/// are kept for their TTL anyway) and the cached policy rarely change; a
/// policy expiring meanwhile is enforced this much longer at most.
pub const ANSWER_TTL: Duration = Duration::from_secs(30);

/// The most answers kept for [`ANSWER_TTL`]: the domains mail goes to
/// within that time on a busy site.
const RECENT_ANSWERS: usize = 10_000;

/// Everything a lookup needs; shared by all connections.
pub struct Engine {
    dns: Arc<Dns>,
    fetcher: Fetcher,
    store: Mutex<PolicyStore>,
    /// The persistent cache (`database`), written through.
    db: Option<Mutex<PolicyDb>>,
    /// Recent answers by (map, key) as requested, for [`ANSWER_TTL`].
    answers: Mutex<Expiring<(String, String), Answer>>,
    /// Domains whose policy is being refreshed in the background.
    refreshing: Mutex<HashSet<String>>,
    testing: TestingAnswer,
    clock: Box<dyn Clock>,
    metrics: Metrics,
}

impl Engine {
    /// With `db`, the most recently used `cache_size` domains of the
    /// persistent cache are loaded into memory at once.
    pub fn new(
        dns: Arc<Dns>,
        fetcher: Fetcher,
        cache_size: usize,
        db: Option<PolicyDb>,
        testing: TestingAnswer,
        clock: Box<dyn Clock>,
    ) -> Engine {
        let mut store = PolicyStore::new(cache_size);
        let db = db.map(|mut db| {
            match db.recent(cache_size, clock.now()) {
                Ok(entries) => {
                    log::info!("loaded {} cached policies from the database", entries.len());
                    // Oldest first, so that the most recent are the last evicted.
                    for (domain, entry) in entries.into_iter().rev() {
                        store.insert(&domain, entry);
                    }
                }
                Err(e) => log::warn!("cannot load the cached policies: {e}"),
            }
            Mutex::new(db)
        });
        Engine {
            dns,
            fetcher,
            store: Mutex::new(store),
            db,
            answers: Mutex::new(Expiring::new(cache_size.min(RECENT_ANSWERS))),
            refreshing: Mutex::new(HashSet::new()),
            testing,
            clock,
            metrics: Metrics::new(),
        }
    }

    /// Counts an answer sent (bad requests included).
    pub fn count_answer(&self, answer: &Answer) {
        self.metrics.answered(answer);
    }

    /// Its counters, with the cache's size as of now.
    pub fn metrics(&self) -> &Metrics {
        self.metrics.set_cached(self.store().domains());
        &self.metrics
    }

    /// The answer given to the same request less than [`ANSWER_TTL`] ago;
    /// never blocks, so the server asks it on its event loop.
    pub fn recent_answer(&self, request: &Request) -> Option<Answer> {
        self.answers()
            .get(&(request.map.clone(), request.key.clone()), Instant::now())
    }

    /// The answer to one request, kept for [`ANSWER_TTL`] (at most until
    /// the domain's cached policy expires) unless `TEMP`. Blocks on DNS and
    /// HTTPS: run it off the server's event loop.
    pub fn answer(self: &Arc<Self>, request: &Request) -> Answer {
        let answer = self.work_out(request);
        let policy_left = domain_of_key(&request.key)
            .and_then(|domain| self.store().get(&domain))
            .and_then(|entry| entry.policy)
            .map(|p| {
                (p.expires_at - self.clock.now())
                    .to_std()
                    .unwrap_or_default()
            });
        let keep = policy_left.map_or(ANSWER_TTL, |left| left.min(ANSWER_TTL));
        if !matches!(answer, Answer::Temp(_)) && !keep.is_zero() {
            self.answers().insert(
                (request.map.clone(), request.key.clone()),
                answer.clone(),
                Instant::now() + keep,
            );
        }
        answer
    }

    fn work_out(self: &Arc<Self>, request: &Request) -> Answer {
        let Some(map) = MapName::parse(&request.map) else {
            return Answer::Perm(format!("unknown map {}", request.map));
        };
        let Some(domain) = domain_of_key(&request.key) else {
            return Answer::NotFound;
        };
        let decision = self.decide(&domain);
        log::debug!("{domain}: {decision:?}");
        let options = AnswerOptions {
            tlsrpt: map.tlsrpt(),
            testing: self.testing,
        };
        match postfix_answer(&decision, &options) {
            Ok(answer) => answer,
            // A policy line Postfix cannot carry: the policy still applies,
            // only without the TLSRPT attributes.
            Err(AnswerError::UnsafeForPostfix { line }) if options.tlsrpt => {
                log::warn!("{domain}: policy line {line} cannot be sent to Postfix; answering without the TLSRPT attributes");
                let options = AnswerOptions {
                    tlsrpt: false,
                    ..options
                };
                postfix_answer(&decision, &options)
                    .unwrap_or_else(|e| Answer::Temp(format!("policy of {domain}: {e}")))
            }
            Err(e) => Answer::Temp(format!("policy of {domain}: {e}")),
        }
    }

    /// DANE first (RFC 8461 section 2), then MTA-STS; both need the MX
    /// hosts (DANE their TLSA records, MTA-STS their match, section 4.1).
    pub fn decide(self: &Arc<Self>, domain: &str) -> Decision {
        let temp = |e: DnsError| Decision::TempFail {
            reason: format!("DNS lookup for the policy of {domain} failed: {e}"),
        };
        let mx = match self.dns.mx(domain) {
            Ok(mx) => mx,
            Err(e) => return temp(e),
        };
        match self.dane(domain, &mx) {
            Ok(Some(level)) => Decision::Dane(level),
            Ok(None) => {
                let decision = self.sts(domain, &mx.hosts);
                if let Decision::Failure { kind, .. } = &decision {
                    log::warn!(
                        "{domain}: no MX host ({}) matches its enforce policy; deferring, reported as {kind} (RFC 8461 section 5)",
                        mx.hosts.join(", ")
                    );
                }
                decision
            }
            Err(e) => temp(e),
        }
    }

    /// The DANE level of `domain`: `dane-only` when every MX host has a
    /// usable TLSA record under DNSSEC, `dane` when some have, none when no
    /// host has or the MX answer is not DNSSEC-validated (RFC 7672 section
    /// 2.2.1: DANE needs a secure MX RRset). Without MX records the domain
    /// is its own MX (RFC 5321 section 5.1).
    fn dane(&self, domain: &str, mx: &MxHosts) -> Result<Option<DaneLevel>, DnsError> {
        if !mx.authentic {
            return Ok(None);
        }
        let own = [domain.to_string()];
        let hosts = if mx.hosts.is_empty() {
            &own[..]
        } else {
            &mx.hosts[..]
        };
        let mut with_tlsa = 0;
        for host in hosts {
            if self.dns.has_usable_tlsa(host)? {
                with_tlsa += 1;
            }
        }
        Ok(match with_tlsa {
            0 => None,
            n if n == hosts.len() => Some(DaneLevel::DaneOnly),
            _ => Some(DaneLevel::Dane),
        })
    }

    /// MTA-STS by [`plan`]: a failed TXT lookup without a valid cached
    /// policy is `TEMP` (a DNS failure is not "no policy"); a failed fetch
    /// without one is "no policy" (RFC 8461 section 3.3), logged.
    fn sts(self: &Arc<Self>, domain: &str, mx_hosts: &[String]) -> Decision {
        let now = self.clock.now();
        let txt = match self.dns.sts_txt(domain) {
            Ok(records) => match policyd_policy::select(&records) {
                Ok(record) => TxtLookup::Id(record.id),
                Err(e) => {
                    log::debug!("{domain}: no MTA-STS record: {e}");
                    TxtLookup::NoRecord
                }
            },
            Err(e) => {
                log::warn!("{domain}: _mta-sts TXT lookup failed: {e}");
                TxtLookup::Failed
            }
        };
        let mut entry = self.cached(domain);
        // A fleet: another server may have fetched the policy of this id.
        let stale = |e: &Entry| match (&txt, &e.policy) {
            (TxtLookup::Id(id), Some(p)) => p.id != *id || !p.is_valid(now),
            (TxtLookup::Id(_), None) => true,
            _ => false,
        };
        if stale(&entry) {
            if let Some(shared) = self.db_get(domain).filter(|e| !stale(e)) {
                self.store().insert(domain, shared.clone());
                entry = shared;
            }
        }
        let cached = entry.policy.as_ref();
        let apply = |c: &CachedPolicy| Decision::with_mx_hosts(domain, c.policy.clone(), mx_hosts);
        let id = match &txt {
            TxtLookup::Id(id) => id.as_str(),
            _ => "",
        };
        match plan(now, &txt, cached, entry.last_failed_fetch) {
            CacheAction::Use => cached.map_or(Decision::NoPolicy, apply),
            CacheAction::UseAndRefresh => {
                self.refresh_in_background(domain, id);
                cached.map_or(Decision::NoPolicy, apply)
            }
            CacheAction::FetchOrUseCached => match self.fetch(domain, id) {
                Some(fresh) => apply(&fresh),
                None => {
                    log::warn!("{domain}: applying the cached policy until it expires (RFC 8461 section 3.3)");
                    cached.map_or(Decision::NoPolicy, apply)
                }
            },
            CacheAction::Fetch => {
                match self.fetch(domain, id) {
                    Some(fresh) => apply(&fresh),
                    None => {
                        log::warn!("{domain}: delivering as without an MTA-STS policy (RFC 8461 section 3.3)");
                        Decision::NoPolicy
                    }
                }
            }
            CacheAction::NoPolicy(NoPolicyReason::DnsFailure) => Decision::TempFail {
                reason: format!("DNS lookup of _mta-sts.{domain} failed"),
            },
            CacheAction::NoPolicy(NoPolicyReason::RecentFetchFailure) => {
                log::debug!("{domain}: policy fetch failed recently; no policy");
                Decision::NoPolicy
            }
            CacheAction::NoPolicy(NoPolicyReason::NoRecord) => Decision::NoPolicy,
        }
    }

    /// What memory holds of `domain`, or else the persistent cache.
    fn cached(&self, domain: &str) -> Entry {
        if let Some(entry) = self.store().get(domain) {
            return entry;
        }
        let Some(entry) = self.db_get(domain) else {
            return Entry::default();
        };
        self.store().insert(domain, entry.clone());
        entry
    }

    fn db_get(&self, domain: &str) -> Option<Entry> {
        let mut db = self.db.as_ref()?.lock().unwrap_or_else(|e| e.into_inner());
        db.get(domain, self.clock.now()).unwrap_or_else(|e| {
            log::warn!("{domain}: cannot read the cached policy: {e}");
            None
        })
    }

    /// Writes through to the persistent cache; a failure there is logged
    /// and the answer goes on from memory.
    fn db_put(&self, domain: &str, entry: &Entry) {
        if let Some(db) = &self.db {
            let mut db = db.lock().unwrap_or_else(|e| e.into_inner());
            if let Err(e) = db.put(domain, entry, self.clock.now()) {
                log::warn!("{domain}: cannot store the policy in the database: {e}");
            }
        }
    }

    /// Removes stale rows from the persistent cache (hourly, from the
    /// daemon).
    pub fn prune(&self) {
        if let Some(db) = &self.db {
            let mut db = db.lock().unwrap_or_else(|e| e.into_inner());
            match db.prune(self.clock.now()) {
                Ok(0) => {}
                Ok(n) => log::info!("pruned {n} stale domains from the policy database"),
                Err(e) => log::warn!("cannot prune the policy database: {e}"),
            }
        }
    }

    /// Fetches and stores the policy of `domain` under `id`; on failure
    /// records it (so that the next attempt waits, RFC 8461 section 3.3).
    fn fetch(&self, domain: &str, id: &str) -> Option<CachedPolicy> {
        match self.fetcher.fetch(domain) {
            Ok(policy) => {
                let fresh = CachedPolicy::new(id, policy, self.clock.now());
                log::info!(
                    "{domain}: fetched MTA-STS policy id {id}, mode {}, until {}",
                    fresh.policy.mode().as_str(),
                    fresh.expires_at
                );
                let kept = self.store().store_policy(domain, fresh.clone());
                self.db_put(domain, &kept);
                self.metrics.fetched(true);
                Some(fresh)
            }
            Err(e) => {
                log::warn!("{domain}: MTA-STS policy fetch failed: {e}");
                let kept = self
                    .store()
                    .record_failure(domain, self.clock.now(), e.to_string());
                self.db_put(domain, &kept);
                self.metrics.fetched(false);
                None
            }
        }
    }

    /// One background refresh per domain at a time.
    fn refresh_in_background(self: &Arc<Self>, domain: &str, id: &str) {
        if !self.refreshing().insert(domain.to_string()) {
            return;
        }
        let engine = Arc::clone(self);
        let (domain, id) = (domain.to_string(), id.to_string());
        std::thread::spawn(move || {
            engine.fetch(&domain, &id);
            engine.refreshing().remove(&domain);
        });
    }

    fn store(&self) -> MutexGuard<'_, PolicyStore> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn answers(&self) -> MutexGuard<'_, Expiring<(String, String), Answer>> {
        self.answers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn refreshing(&self) -> MutexGuard<'_, HashSet<String>> {
        self.refreshing.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert_eq!(domain_of_key("Example.COM."), Some("example.com".into()));
        assert_eq!(domain_of_key("localhost"), Some("localhost".into()));
        assert_eq!(
            domain_of_key("bücher.example"),
            Some("xn--bcher-kva.example".into())
        );
        for refused in [
            ".example.com",
            "[mx.example.com]:25",
            "[192.0.2.1]",
            "192.0.2.1",
            "2001:db8::1",
            "example.com:587",
            "a..b",
            "",
            ".",
            "a b",
        ] {
            assert_eq!(domain_of_key(refused), None, "{refused:?}");
        }
    }

    #[test]
    fn map_names() {
        assert_eq!(MapName::parse("postfix"), Some(MapName::Postfix));
        assert_eq!(
            MapName::parse("postfix-notlsrpt"),
            Some(MapName::PostfixNoTlsrpt)
        );
        assert_eq!(MapName::parse("Postfix"), None);
    }
}
