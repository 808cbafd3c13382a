//! Datagrams counted by their exact bytes, before any parsing.
//!
//! Almost every datagram repeats another byte for byte (same domain, same
//! policy, same outcome), so the receiver only looks each one up in a hash
//! map: a fraction of a microsecond, no system call, no other thread woken.
//! The aggregator later parses each distinct datagram once and counts it as
//! often as it came. This keeps the work beside the receiver rare and short,
//! which is what lets the receiver run the moment a datagram arrives on a
//! busy host.

use std::time::{Duration, Instant};

use hashbrown::HashMap;

/// Distinct datagrams at which a tally is handed over, so that the
/// aggregator parses them while memory stays small (and the map stays in
/// the CPU cache).
pub const DISTINCT_LIMIT: usize = 4096;

/// Bytes of distinct datagrams at which a tally is handed over: a bound on
/// memory when the datagrams are unusually large.
pub const BYTES_LIMIT: usize = 4 * 1024 * 1024;

/// Counts of raw datagrams.
#[derive(Debug)]
pub struct Tally {
    counts: HashMap<Box<[u8]>, u64>,
    /// Bytes of the distinct datagrams in `counts`.
    bytes: usize,
    datagrams: u64,
    /// Datagrams longer than [`MAX_DATAGRAM`](crate::socket::MAX_DATAGRAM): how many, and the first of
    /// them (truncated) with its real length, for the log and the dump.
    too_long: u64,
    first_too_long: Option<(Box<[u8]>, usize)>,
}

impl Default for Tally {
    /// An empty tally with room for [`DISTINCT_LIMIT`] datagrams.
    fn default() -> Tally {
        Tally {
            counts: HashMap::with_capacity(DISTINCT_LIMIT),
            bytes: 0,
            datagrams: 0,
            too_long: 0,
            first_too_long: None,
        }
    }
}

impl Tally {
    /// Count one datagram: `bytes` as received (at most [`MAX_DATAGRAM`](crate::socket::MAX_DATAGRAM))
    /// and the length it had when sent.
    pub fn add(&mut self, bytes: &[u8], sent_len: usize) {
        self.datagrams += 1;
        if sent_len > bytes.len() {
            self.too_long += 1;
            if self.first_too_long.is_none() {
                self.first_too_long = Some((bytes.into(), sent_len));
            }
            return;
        }
        match self.counts.get_mut(bytes) {
            Some(n) => *n += 1,
            None => {
                self.bytes += bytes.len();
                self.counts.insert(bytes.into(), 1);
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.datagrams == 0
    }

    /// Big enough to be handed over for the sake of memory.
    pub fn is_full(&self) -> bool {
        self.counts.len() >= DISTINCT_LIMIT || self.bytes >= BYTES_LIMIT
    }

    /// Take everything out: each distinct datagram with its count, and the
    /// too-long ones. The tally is empty afterwards and keeps its memory for
    /// reuse.
    pub fn drain(&mut self) -> (impl Iterator<Item = (Box<[u8]>, u64)> + '_, TooLong) {
        let too_long = TooLong {
            count: std::mem::take(&mut self.too_long),
            first: self.first_too_long.take(),
        };
        self.bytes = 0;
        self.datagrams = 0;
        (self.counts.drain(), too_long)
    }
}

/// Datagrams longer than [`MAX_DATAGRAM`](crate::socket::MAX_DATAGRAM) in a tally.
pub struct TooLong {
    pub count: u64,
    /// The first one, truncated, and its real length.
    pub first: Option<(Box<[u8]>, usize)>,
}

/// When counts are due at the database: after `max_uncommited_datagrams`
/// datagrams, but not more often than [`MIN_INTERVAL`]; and at the latest
/// `sockettimeout` after the first uncommitted datagram.
#[derive(Debug)]
pub struct CommitSchedule {
    max_uncommitted: u64,
    commit_after: Duration,
    uncommitted: u64,
    first_uncommitted: Option<Instant>,
    last_commit: Instant,
}

/// Least time between two commits. Under load `max_uncommited_datagrams` is
/// reached many times a second; counting on in memory and committing once a
/// second spares the database most of the work (repeated keys are counted in
/// memory), which on a busy host is CPU the receiver needs. Upstream commits
/// every `max_uncommited_datagrams` datagrams however fast they come.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);

impl CommitSchedule {
    pub fn new(max_uncommitted: u64, commit_after: Duration, now: Instant) -> CommitSchedule {
        CommitSchedule {
            max_uncommitted: max_uncommitted.max(1),
            commit_after,
            uncommitted: 0,
            first_uncommitted: None,
            last_commit: now,
        }
    }

    /// `n` datagrams arrived at `now`.
    pub fn arrived(&mut self, n: u64, now: Instant) {
        if n > 0 && self.first_uncommitted.is_none() {
            self.first_uncommitted = Some(now);
        }
        self.uncommitted += n;
    }

    pub fn is_due(&self, now: Instant) -> bool {
        let Some(first) = self.first_uncommitted else {
            return false;
        };
        now.duration_since(first) >= self.commit_after
            || (self.uncommitted >= self.max_uncommitted
                && now.duration_since(self.last_commit) >= MIN_INTERVAL)
    }

    /// Everything so far has been passed on for commit.
    pub fn committed(&mut self, now: Instant) {
        self.uncommitted = 0;
        self.first_uncommitted = None;
        self.last_commit = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_are_counted_without_storing_them_again() {
        let mut t = Tally::default();
        for _ in 0..3 {
            t.add(b"a", 1);
        }
        t.add(b"bb", 2);
        assert_eq!(t.datagrams, 4);
        assert_eq!(t.bytes, 3);
        let (items, too_long) = t.drain();
        let mut items: Vec<_> = items.collect();
        items.sort();
        assert_eq!(items, vec![(b"a"[..].into(), 3), (b"bb"[..].into(), 1)]);
        assert_eq!(too_long.count, 0);
        assert!(t.is_empty());
        assert_eq!(t.bytes, 0);
    }

    #[test]
    fn too_long_datagrams_keep_only_the_first() {
        let mut t = Tally::default();
        t.add(b"xxxx", 10);
        t.add(b"yyyy", 20);
        t.add(b"ok", 2);
        assert_eq!(t.datagrams, 3);
        let (items, too_long) = t.drain();
        assert_eq!(items.count(), 1);
        assert_eq!(too_long.count, 2);
        assert_eq!(too_long.first, Some((b"xxxx"[..].into(), 10)));
    }

    #[test]
    fn full_at_the_distinct_or_byte_limit() {
        let mut t = Tally::default();
        for i in 0..DISTINCT_LIMIT - 1 {
            t.add(i.to_string().as_bytes(), i.to_string().len());
        }
        assert!(!t.is_full());
        t.add(b"0", 1);
        assert!(!t.is_full(), "a repeat adds nothing");
        t.add(b"new", 3);
        assert!(t.is_full());

        let mut t = Tally::default();
        let big = vec![b'x'; BYTES_LIMIT / 2];
        t.add(&big, big.len());
        assert!(!t.is_full());
        let mut other = big.clone();
        other[0] = b'y';
        t.add(&other, other.len());
        assert!(t.is_full());
    }

    #[test]
    fn commits_at_the_count_once_a_second_or_at_the_timeout() {
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        let mut s = CommitSchedule::new(100, Duration::from_secs(5), start);
        assert!(!s.is_due(at(10_000)), "nothing to commit");

        s.arrived(100, at(200));
        assert!(!s.is_due(at(999)), "count reached, but within a second");
        assert!(s.is_due(at(1000)));
        s.committed(at(1000));

        s.arrived(99, at(1100));
        assert!(!s.is_due(at(6099)));
        assert!(s.is_due(at(6100)), "timeout after the first datagram");
        s.committed(at(6100));

        s.arrived(0, at(6200));
        assert!(!s.is_due(at(20_000)), "no datagram, no commit");
    }
}
