//! What the fetcher and the dashboard read of the collectors' counters,
//! the same whether one collector's SQLite file holds them or a fleet's
//! PostgreSQL database (summed over every collector): [`DayReader`].

use std::ops::ControlFlow;
use std::time::Duration;

use chrono::{DateTime, Utc};
use mailtls_common::day::Day;

use crate::postgres::PgDayReader;
use crate::{yesterday_path, FailureRow, FetcherDb, PolicyRow, Result, Storage, StoreError};

/// A failure of a walk over a day's domains (`for_each_domain`): the
/// store's, or the visitor's own.
#[derive(Debug, thiserror::Error)]
pub enum VisitError<E> {
    #[error(transparent)]
    Store(StoreError),
    #[error(transparent)]
    Visitor(E),
}

/// A visitor of [`DayReader::visit_domains`]: a domain, its policy rows
/// and its failure rows; it breaks to end the walk.
pub type DomainVisitor<'a> = dyn FnMut(&str, &[PolicyRow], &[FailureRow]) -> ControlFlow<()> + 'a;

/// The counters of completed days, as the fetcher protocol answers them:
/// rows in key order (byte order, as upstream's SQLite lists them), the
/// same rows from every store.
pub trait DayReader {
    /// The newest completed day. SQLite: the day the collector closed at
    /// its rollover (`now` and `grace` play no part). PostgreSQL: the
    /// newest day before `now`'s that every collector that counted on it
    /// has ended, or whose end is `grace` ago (the collectors given up on
    /// are logged).
    fn completed_day(&mut self, now: DateTime<Utc>, grace: Duration) -> Result<Option<Day>>;

    /// The days with counters, newest first.
    fn days(&mut self) -> Result<Vec<Day>>;

    /// The domains with counters on `day`, sorted.
    fn domains(&mut self, day: Day) -> Result<Vec<String>>;

    /// The policy and failure rows of `domain` on `day`, in key order.
    fn details(&mut self, day: Day, domain: &str) -> Result<(Vec<PolicyRow>, Vec<FailureRow>)>;

    /// Calls `visit` with each domain of `day` and the same rows
    /// [`details`](Self::details) gives, in domain order, until it breaks.
    /// Callers use `for_each_domain` (on `dyn DayReader`), which carries
    /// the visitor's error out.
    fn visit_domains(&mut self, day: Day, visit: &mut DomainVisitor<'_>) -> Result<()>;
}

impl dyn DayReader + '_ {
    /// Calls `visit` with each domain of `day` and its rows, in domain
    /// order, reading each table once, so that a bulk answer for many
    /// thousand domains costs two queries, not two per domain. The first
    /// error of `visit` ends the walk and is returned.
    pub fn for_each_domain<E>(
        &mut self,
        day: Day,
        mut visit: impl FnMut(&str, &[PolicyRow], &[FailureRow]) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), VisitError<E>> {
        let mut refused = None;
        let mut walk = |domain: &str, policies: &[PolicyRow], failures: &[FailureRow]| {
            visit(domain, policies, failures).map_or_else(
                |e| {
                    refused = Some(e);
                    ControlFlow::Break(())
                },
                |()| ControlFlow::Continue(()),
            )
        };
        self.visit_domains(day, &mut walk)
            .map_err(VisitError::Store)?;
        refused.map_or(Ok(()), |e| Err(VisitError::Visitor(e)))
    }
}

impl Storage {
    /// Opens what a fetcher reads of this store: the completed-day file
    /// (`FILE.yesterday`) of a SQLite store, or the fleet's database.
    pub fn open_day_reader(&self) -> Result<Box<dyn DayReader>> {
        Ok(match self {
            Storage::Sqlite(url) => Box::new(FetcherDb::open(&yesterday_path(&url.path))?),
            Storage::Postgres(url) => Box::new(PgDayReader::connect(url)?),
        })
    }
}

/// Groups two streams of rows of one day, each ordered by domain (byte
/// order) and key, into each domain's policy and failure rows, and calls
/// `visit` with them: the one merge behind every store's bulk read.
///
/// Failures of a domain without policy rows cannot come from a collector
/// (only a damaged database has them); they are passed over, as the
/// per-domain query is never asked for such a domain.
pub(crate) fn merge_by_domain<E>(
    policies: impl Iterator<Item = Result<(String, PolicyRow)>>,
    failures: impl Iterator<Item = Result<(String, FailureRow)>>,
    mut visit: impl FnMut(&str, &[PolicyRow], &[FailureRow]) -> std::result::Result<(), E>,
) -> std::result::Result<(), VisitError<E>> {
    let mut policies = policies.peekable();
    let mut failures = failures.peekable();
    let (mut these_policies, mut these_failures) = (Vec::new(), Vec::new());
    while let Some(first) = policies.next() {
        let (domain, row) = first.map_err(VisitError::Store)?;
        these_policies.clear();
        these_policies.push(row);
        while let Some(Ok((next, _))) = policies.peek() {
            if *next != domain {
                break;
            }
            let (_, row) = policies
                .next()
                .expect("peeked")
                .map_err(VisitError::Store)?;
            these_policies.push(row);
        }
        these_failures.clear();
        while let Some(Ok((next, _))) = failures.peek() {
            if *next > domain {
                break;
            }
            let (next, row) = failures
                .next()
                .expect("peeked")
                .map_err(VisitError::Store)?;
            if next == domain {
                these_failures.push(row);
            }
        }
        if let Some(Err(_)) = failures.peek() {
            let e = failures.next().expect("peeked").expect_err("an error");
            return Err(VisitError::Store(e));
        }
        visit(&domain, &these_policies, &these_failures).map_err(VisitError::Visitor)?;
    }
    Ok(())
}

/// A [`DayReader::visit_domains`] visitor as a store's `for_each_domain`
/// takes it: a break is an error that carries nothing.
pub(crate) fn until_break<'a>(
    visit: &'a mut DomainVisitor<'a>,
) -> impl FnMut(&str, &[PolicyRow], &[FailureRow]) -> std::result::Result<(), ()> + 'a {
    move |domain, policies, failures| match visit(domain, policies, failures) {
        ControlFlow::Continue(()) => Ok(()),
        ControlFlow::Break(()) => Err(()),
    }
}

/// The end of a walk with [`until_break`]: a break is no failure.
pub(crate) fn walked(result: std::result::Result<(), VisitError<()>>) -> Result<()> {
    match result {
        Ok(()) | Err(VisitError::Visitor(())) => Ok(()),
        Err(VisitError::Store(e)) => Err(e),
    }
}
