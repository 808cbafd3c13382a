//! The outbound-TLS pages: `GET /admin/tls` (one UTC day, every recipient
//! domain), `GET /admin/tls/DOMAIN` (one domain over the days kept),
//! `GET /admin/reports` (the reports of a day and their deliveries) and
//! `POST /admin/reports/ID/resend`; `/admin/tls.json` and
//! `/admin/tls/DOMAIN.json` give the same data to scripts.
//!
//! The numbers come from [`tlsrpt_stats`], which reads the collector's and
//! the report daemon's databases; a day's summary is kept for a while
//! ([`crate::AppState::day_summary`]) so that paging through 100 000
//! domains reads the database once.

pub mod chart;
pub mod policies;

use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{Form, Path, Query, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use mailtls_common::day::Day;
use minijinja::context;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use posttls_store::AuditEvent;
use serde::{Deserialize, Serialize};
use tlsrpt_reportd_db::{ReportdDb, StoredReport};
use tlsrpt_stats::summary::{failure_rate, DaySummary, DomainDay, DomainHistory, Sort};
use tlsrpt_stats::{Sources, StatsError};

use crate::admin::{admin_post, current_admin, require_admin, Admin, CsrfForm, FORM_LOGOUT};
use crate::pages::internal;
use crate::{now, AppState, ClientIp, WebError};
use chart::Chart;

/// The CSRF form name of the resend buttons.
const FORM_REPORT: &str = "admin-report";

/// Domains per page of the day's list.
pub const DOMAINS_PER_PAGE: usize = 100;

/// The query of `/admin/tls`: every field optional, each checked.
#[derive(Debug, Deserialize)]
pub struct DayQuery {
    day: Option<String>,
    sort: Option<String>,
    page: Option<String>,
}

/// What the query asks for, typed.
struct DayRequest {
    /// `None`: the page's default (today; yesterday for the reports).
    day: Option<Day>,
    sort: Sort,
    page: usize,
}

impl DayQuery {
    fn parse(self) -> Result<DayRequest, String> {
        let day = match self.day.as_deref() {
            None | Some("") => None,
            Some(text) => {
                Some(Day::parse(text).map_err(|_| format!("{text:?} is not a day (YYYY-MM-DD)."))?)
            }
        };
        let sort = match self.sort.as_deref() {
            None | Some("") => Sort::default(),
            Some(text) => text
                .parse()
                .map_err(|e: tlsrpt_stats::summary::UnknownSort| format!("{e}."))?,
        };
        let page = match self.page.as_deref() {
            None | Some("") => 1,
            Some(text) => text
                .parse::<usize>()
                .ok()
                .filter(|page| *page >= 1)
                .ok_or_else(|| format!("page {text:?} is not a page number."))?,
        };
        Ok(DayRequest { day, sort, page })
    }
}

/// One row of the day's domain list, as shown.
#[derive(Debug, Serialize)]
struct DomainRow {
    domain: String,
    href: String,
    successful: u64,
    failed: u64,
    rate: String,
    policy_types: Vec<&'static str>,
    result_types: Vec<String>,
    skipped: usize,
}

impl DomainRow {
    fn new(prefix: &str, d: &DomainDay) -> DomainRow {
        DomainRow {
            domain: d.domain.clone(),
            href: domain_href(prefix, &d.domain),
            successful: d.successful,
            failed: d.failed,
            rate: percent(d.failure_rate()),
            policy_types: d
                .policy_types
                .iter()
                .map(|t| policy_type_words(t.name()))
                .collect(),
            result_types: d
                .result_types
                .iter()
                .map(|r| format!("{} ({})", r.result_type.name(), r.sessions))
                .collect(),
            skipped: d.skipped,
        }
    }
}

/// The link to a domain's page; the name is percent-encoded, as it comes
/// from a database another process writes.
/// The header of the Outbound TLS pages names the suite: they show all
/// outgoing mail (the collector's and report daemon's numbers), not only
/// what PostTLS holds.
const SUITE: &str = "mailtls · Outbound TLS";

fn domain_href(prefix: &str, domain: &str) -> String {
    format!(
        "{prefix}/admin/tls/{}",
        utf8_percent_encode(domain, NON_ALPHANUMERIC)
    )
}

fn percent(rate: f64) -> String {
    let percent = rate * 100.0;
    if percent > 0.0 && percent < 0.1 {
        "<0.1 %".into()
    } else {
        format!("{percent:.1} %")
    }
}

/// RFC 8460 section 4.3 policy types in an admin's words.
fn policy_type_words(name: &str) -> &'static str {
    match name {
        "tlsa" => "DANE (TLSA)",
        "sts" => "MTA-STS",
        _ => "no policy",
    }
}

/// A request for JSON without a session: refused, not redirected.
fn json_refused() -> Response {
    json(
        StatusCode::UNAUTHORIZED,
        &serde_json::json!({"error": "sign in at /admin/login first; send the session cookie"}),
    )
}

/// `value` as a JSON response.
fn json(status: StatusCode, value: &impl Serialize) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => (status, [(CONTENT_TYPE, "application/json")], body).into_response(),
        Err(err) => {
            log::error!("JSON answer: {err}");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

fn bad_query(app: &AppState, text: &str) -> Response {
    app.pages()
        .error(StatusCode::BAD_REQUEST, "Not understood", text)
}

/// The admin of a page request and its query, or the page to answer
/// instead (the login, or a refusal of the query).
async fn admin_and_query(
    app: &AppState,
    headers: &HeaderMap,
    query: Result<Query<DayQuery>, QueryRejection>,
) -> Result<(Admin, DayRequest), Response> {
    let admin = require_admin(app, headers).await?;
    match query
        .map_err(|e| e.body_text())
        .and_then(|Query(q)| q.parse())
    {
        Ok(request) => Ok((admin, request)),
        Err(text) => Err(bad_query(app, &text)),
    }
}

/// `GET /admin/tls`.
pub async fn tls_day(
    State(app): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<DayQuery>, QueryRejection>,
) -> Response {
    let (admin, request) = match admin_and_query(&app, &headers, query).await {
        Ok(found) => found,
        Err(page) => return page,
    };
    let today = Day::of(chrono::Utc::now());
    let day = request.day.unwrap_or(today);
    let days = match app.tls_days().await {
        Ok(days) => days,
        Err(err) => return internal(&app, &err),
    };
    let summary = match app.day_summary(day).await {
        Ok(s) => s,
        Err(err) => return internal(&app, &err),
    };
    let trend = match app.site_trend(&days, summary.as_deref()).await {
        Ok(trend) => trend,
        Err(err) => return internal(&app, &err),
    };
    let prefix = app.prefix().to_owned();
    let (rows, pages) = match &summary {
        Some(summary) => page_of(summary, &request, &prefix),
        None => (Vec::new(), 0),
    };
    let page_link = |page: usize| {
        format!(
            "{prefix}/admin/tls?day={day}&sort={}&page={page}",
            request.sort.as_str()
        )
    };
    let sorts: Vec<(String, &str, bool)> = Sort::ALL
        .iter()
        .map(|sort| {
            (
                format!("{prefix}/admin/tls?day={day}&sort={}", sort.as_str()),
                sort.as_str(),
                *sort == request.sort,
            )
        })
        .collect();
    app.pages().page(
        StatusCode::OK,
        "tls.html",
        context! {
            title => format!("Outbound TLS on {day}"),
            brand => SUITE,
            site_chart => (!trend.is_empty()).then(|| Chart::of_days(&trend)),
            site_points => trend.iter().rev().map(|p| {
                let rate = failure_rate(p.failed, p.successful.saturating_add(p.failed));
                (p.day.to_string(), p.successful.saturating_add(p.failed), p.failed, percent(rate))
            }).collect::<Vec<_>>(),
            admin => admin.name.clone(),
            csrf_logout => admin.csrf(&app, FORM_LOGOUT),
            day => day.to_string(),
            today => today.to_string(),
            days => days.iter().take(31).map(|(d, _)| d.to_string()).collect::<Vec<_>>(),
            summary => summary.as_deref().map(SummaryView::new),
            configured => app.config().tlsrpt.collector.is_some() || app.config().tlsrpt.reportd.is_some(),
            rows,
            page => request.page,
            pages,
            previous => (request.page > 1).then(|| page_link(request.page - 1)),
            next => (request.page < pages).then(|| page_link(request.page + 1)),
            sorts,
            per_page => DOMAINS_PER_PAGE,
        },
    )
}

/// The rows of the requested page in the requested order, and the number
/// of pages.
fn page_of(summary: &DaySummary, request: &DayRequest, prefix: &str) -> (Vec<DomainRow>, usize) {
    let pages = summary.domains.len().div_ceil(DOMAINS_PER_PAGE).max(1);
    let start = (request.page - 1) * DOMAINS_PER_PAGE;
    let rows = if request.sort == Sort::Failed {
        // The summary's own order: no copy of 100 000 domains to sort.
        summary
            .domains
            .iter()
            .skip(start)
            .take(DOMAINS_PER_PAGE)
            .map(|d| DomainRow::new(prefix, d))
            .collect()
    } else {
        let mut order: Vec<&DomainDay> = summary.domains.iter().collect();
        order.sort_by(|a, b| request.sort.compare(a, b));
        order
            .into_iter()
            .skip(start)
            .take(DOMAINS_PER_PAGE)
            .map(|d| DomainRow::new(prefix, d))
            .collect()
    };
    (rows, pages)
}

/// The day's totals as shown.
#[derive(Debug, Serialize)]
struct SummaryView {
    source: &'static str,
    sessions: u64,
    successful: u64,
    failed: u64,
    rate: String,
    domains: usize,
    skipped: usize,
    policy_types: Vec<(&'static str, u64, u64, String)>,
}

impl SummaryView {
    fn new(s: &DaySummary) -> SummaryView {
        SummaryView {
            source: s.source.words(),
            sessions: s.sessions(),
            successful: s.successful,
            failed: s.failed,
            rate: percent(s.failure_rate()),
            domains: s.domains.len(),
            skipped: s.skipped,
            policy_types: s
                .policy_types
                .iter()
                .map(|t| {
                    (
                        policy_type_words(t.policy_type.name()),
                        t.successful,
                        t.failed,
                        percent(failure_rate(
                            t.failed,
                            t.successful.saturating_add(t.failed),
                        )),
                    )
                })
                .collect(),
        }
    }
}

/// `GET /admin/tls.json?day=DAY`: the day and every domain, worst first.
pub async fn tls_day_json(
    State(app): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<DayQuery>, QueryRejection>,
) -> Response {
    match current_admin(&app, &headers).await {
        Ok(Some(_)) => {}
        Ok(None) => return json_refused(),
        Err(err) => return internal(&app, &err),
    }
    let request = match query
        .map_err(|e| e.body_text())
        .and_then(|Query(q)| q.parse())
    {
        Ok(r) => r,
        Err(text) => {
            return json(
                StatusCode::BAD_REQUEST,
                &serde_json::json!({ "error": text }),
            )
        }
    };
    let day = request.day.unwrap_or_else(|| Day::of(chrono::Utc::now()));
    match app.day_summary(day).await {
        Ok(Some(summary)) => json(StatusCode::OK, summary.as_ref()),
        Ok(None) => json(
            StatusCode::OK,
            &serde_json::json!({"day": day, "domains": []}),
        ),
        Err(err) => internal(&app, &err),
    }
}

/// `GET /admin/tls/DOMAIN` and `/admin/tls/DOMAIN.json`.
pub async fn tls_domain(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    query: Result<Query<DayQuery>, QueryRejection>,
) -> Response {
    let (domain, as_json) = match name.strip_suffix(".json") {
        Some(domain) => (domain.to_owned(), true),
        None => (name, false),
    };
    let admin = if as_json {
        match current_admin(&app, &headers).await {
            Ok(Some(admin)) => admin,
            Ok(None) => return json_refused(),
            Err(err) => return internal(&app, &err),
        }
    } else {
        match require_admin(&app, &headers).await {
            Ok(a) => a,
            Err(r) => return r,
        }
    };
    let day = match query.map(|Query(q)| q.day) {
        Ok(None) => None,
        Ok(Some(text)) if text.is_empty() => None,
        Ok(Some(text)) => match Day::parse(&text) {
            Ok(day) => Some(day),
            Err(_) => return bad_query(&app, &format!("{text:?} is not a day (YYYY-MM-DD).")),
        },
        Err(e) => return bad_query(&app, &e.body_text()),
    };
    let sources = app.config().tlsrpt.clone();
    let lookup = domain.clone();
    let found = tokio::task::spawn_blocking(
        move || -> Result<(DomainHistory, Vec<StoredReport>), tlsrpt_stats::StatsError> {
            Ok((
                sources.domain(&lookup, day)?,
                sources.reports(None, Some(&lookup))?,
            ))
        },
    )
    .await;
    let (history, reports) = match found {
        Ok(Ok(found)) => found,
        Ok(Err(err)) => return internal(&app, &crate::WebError::Stats(err)),
        Err(err) => return internal(&app, &crate::WebError::Task(err.to_string())),
    };
    let sts = match policies::cached(&app, Some(domain.clone())).await {
        Ok(sts) => sts,
        Err(err) => return internal(&app, &err),
    };
    let now = chrono::Utc::now();
    let sts_policy = match &sts {
        Some(Ok(entries)) => entries
            .first()
            .map(|(d, e)| policies::PolicyRow::new(d, e, now, app.prefix())),
        _ => None,
    };
    let sts_error = match &sts {
        Some(Err(e)) => Some(e.clone()),
        _ => None,
    };
    if as_json {
        return json(
            StatusCode::OK,
            &serde_json::json!({
                "domain": history.domain,
                "days": history.days,
                "day": history.day,
                "policies": history.policies,
                "skipped": history.skipped,
                "sts_policy": sts_policy,
                "reports": reports.iter().map(|r| ReportView::new(r, app.prefix())).collect::<Vec<_>>(),
            }),
        );
    }
    let prefix = app.prefix().to_owned();
    let day_links: Vec<(String, String, bool)> = history
        .days
        .iter()
        .rev()
        .map(|p| {
            (
                format!("{}?day={}", domain_href(&prefix, &domain), p.day),
                p.day.to_string(),
                Some(p.day) == history.day,
            )
        })
        .collect();
    app.pages().page(
        StatusCode::OK,
        "tls_domain.html",
        context! {
            title => format!("Outbound TLS to {domain}"),
            brand => SUITE,
            admin => admin.name.clone(),
            csrf_logout => admin.csrf(&app, FORM_LOGOUT),
            csrf_report => admin.csrf(&app, FORM_REPORT),
            domain,
            chart => Chart::of_days(&history.days),
            points => history.days.iter().rev().map(|p| {
                let rate = failure_rate(p.failed, p.successful.saturating_add(p.failed));
                (p.day.to_string(), p.successful, p.failed, percent(rate))
            }).collect::<Vec<_>>(),
            day => history.day.map(|d| d.to_string()),
            day_links,
            policies => history.policies.iter().map(PolicyView::new).collect::<Vec<_>>(),
            skipped => history.skipped,
            reports => reports.iter().map(|r| ReportView::new(r, &prefix)).collect::<Vec<_>>(),
            can_resend => app.config().tlsrpt.can_resend(),
            sts_configured => sts.is_some(),
            sts_policy,
            sts_error,
        },
    )
}

/// One policy of the domain page.
#[derive(Debug, Serialize)]
struct PolicyView {
    policy_type: &'static str,
    policy_domain: String,
    policy_string: Vec<String>,
    mx_host: Vec<String>,
    successful: u64,
    failed: u64,
    failures: Vec<FailureView>,
}

/// One failure detail (RFC 8460 section 4.4), every field present for the
/// template.
#[derive(Debug, Serialize)]
struct FailureView {
    result_type: &'static str,
    receiving_mx_hostname: Option<String>,
    receiving_mx_helo: Option<String>,
    receiving_ip: Option<String>,
    sending_mta_ip: Option<String>,
    sessions: u64,
    reason: Option<String>,
    additional_information: Option<String>,
}

impl FailureView {
    fn new(f: &tlsrpt_report::report::FailureDetail) -> FailureView {
        FailureView {
            result_type: f.result_type.name(),
            receiving_mx_hostname: f.receiving_mx_hostname.clone(),
            receiving_mx_helo: f.receiving_mx_helo.clone(),
            receiving_ip: f.receiving_ip.clone(),
            sending_mta_ip: f.sending_mta_ip.clone(),
            sessions: f.failed_session_count,
            reason: f.failure_reason_code.clone(),
            additional_information: f.additional_information.clone(),
        }
    }
}

impl PolicyView {
    fn new(p: &tlsrpt_report::report::PolicyReport) -> PolicyView {
        PolicyView {
            policy_type: policy_type_words(p.policy.policy_type.name()),
            policy_domain: p.policy.policy_domain.clone(),
            policy_string: p.policy.policy_string.clone(),
            mx_host: p.policy.mx_host.clone(),
            successful: p.summary.total_successful_session_count,
            failed: p.summary.total_failure_session_count,
            failures: p.failure_details.iter().map(FailureView::new).collect(),
        }
    }
}

/// A stored report and its deliveries, as `tlsrptctl list` shows them.
#[derive(Debug, Serialize)]
struct ReportView {
    r_id: i64,
    day: String,
    domain: String,
    /// The domain's page.
    href: String,
    report_id: Option<String>,
    record: Option<String>,
    destinations: Vec<DestinationView>,
    resendable: bool,
}

#[derive(Debug, Serialize)]
struct DestinationView {
    destination: String,
    state: String,
    retries: i64,
    next_try: Option<String>,
}

impl ReportView {
    fn new(r: &StoredReport, prefix: &str) -> ReportView {
        let destinations: Vec<DestinationView> = r
            .destinations
            .iter()
            .map(|d| DestinationView {
                destination: d.destination.clone(),
                state: match d.status.as_deref() {
                    None => "waiting to be sent".into(),
                    Some(status) => match status.strip_prefix("withheld:") {
                        Some(limit) => format!("withheld ({limit})"),
                        None => status.to_owned(),
                    },
                },
                retries: d.retries,
                next_try: d.nexttry.clone(),
            })
            .collect();
        ReportView {
            r_id: r.r_id,
            day: r.day.clone(),
            domain: r.domain.clone(),
            href: domain_href(prefix, &r.domain),
            report_id: r.report_id(),
            record: r.tlsrptrecord.clone(),
            resendable: r.destinations.iter().any(|d| {
                !d.status
                    .as_deref()
                    .is_some_and(|s| s.starts_with("withheld:") || s == "sending")
            }),
            destinations,
        }
    }
}

/// `GET /admin/reports?day=DAY`: the reports made for a day.
pub async fn reports_page(
    State(app): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<DayQuery>, QueryRejection>,
) -> Response {
    let (admin, request) = match admin_and_query(&app, &headers, query).await {
        Ok(found) => found,
        Err(page) => return page,
    };
    // Reports are made the day after: the default is yesterday's.
    let day = request
        .day
        .unwrap_or_else(|| Day::of(chrono::Utc::now()).pred());
    let sources = app.config().tlsrpt.clone();
    let found = tokio::task::spawn_blocking(move || sources.reports(Some(day), None)).await;
    let reports = match found {
        Ok(Ok(reports)) => reports,
        Ok(Err(err)) => return internal(&app, &crate::WebError::Stats(err)),
        Err(err) => return internal(&app, &crate::WebError::Task(err.to_string())),
    };
    let prefix = app.prefix().to_owned();
    app.pages().page(
        StatusCode::OK,
        "reports.html",
        context! {
            title => format!("TLSRPT reports for {day}"),
            brand => SUITE,
            admin => admin.name.clone(),
            csrf_logout => admin.csrf(&app, FORM_LOGOUT),
            csrf_report => admin.csrf(&app, FORM_REPORT),
            day => day.to_string(),
            previous => day.pred().to_string(),
            next => day.succ().to_string(),
            reports => reports.iter().map(|r| ReportView::new(r, &prefix)).collect::<Vec<_>>(),
            can_resend => app.config().tlsrpt.can_resend(),
        },
    )
}

/// Queues report `r_id` again for each destination not withheld, as
/// `tlsrptctl resend ID` does, and returns the destinations queued: the one
/// write to the report daemon's state, made here since tlsrpt-stats only
/// reads.
fn resend(sources: &Sources, r_id: i64) -> Result<Vec<String>, WebError> {
    let name = sources.reportd.as_ref().ok_or(StatsError::NoReportd)?;
    ReportdDb::open_existing(name, true)
        .and_then(|mut db| db.resend(r_id, None, chrono::Utc::now()))
        .map_err(|source| WebError::Resend {
            name: name.shown(),
            source,
        })
}

/// `POST /admin/reports/{r_id}/resend`: queued again for each destination
/// not withheld, as `tlsrptctl resend ID`; audited.
pub async fn report_resend(
    State(app): State<AppState>,
    ip: ClientIp,
    headers: HeaderMap,
    path: Result<Path<i64>, axum::extract::rejection::PathRejection>,
    form: Result<Form<CsrfForm>, FormRejection>,
) -> Response {
    let admin = match admin_post(&app, &headers, form, FORM_REPORT).await {
        Ok((admin, _)) => admin,
        Err(page) => return page,
    };
    let Ok(Path(r_id)) = path else {
        return crate::pages::not_found(State(app)).await;
    };
    let sources = app.config().tlsrpt.clone();
    let found = tokio::task::spawn_blocking(
        move || -> Result<Option<(StoredReport, Vec<String>)>, WebError> {
            let Some(report) = sources
                .reports(None, None)?
                .into_iter()
                .find(|r| r.r_id == r_id)
            else {
                return Ok(None);
            };
            let queued = resend(&sources, r_id)?;
            Ok(Some((report, queued)))
        },
    )
    .await;
    let (report, queued) = match found {
        Ok(Ok(Some(found))) => found,
        Ok(Ok(None)) => {
            return app.pages().error(
                StatusCode::NOT_FOUND,
                "No such report",
                "There is no report with this number.",
            )
        }
        Ok(Err(err)) => return internal(&app, &err),
        Err(err) => return internal(&app, &crate::WebError::Task(err.to_string())),
    };
    let actor = admin.actor();
    let detail = format!(
        "report {r_id} ({}, {} of {}): queued again for {}",
        report.report_id().unwrap_or_default(),
        report.domain,
        report.day,
        if queued.is_empty() {
            "nobody".to_owned()
        } else {
            queued.join(", ")
        }
    );
    let ip = ip.text();
    let audited = app
        .with_store(move |store| {
            store.audit(
                &actor,
                ip.as_deref(),
                None,
                AuditEvent::ReportResent,
                &detail,
                now(),
            )
        })
        .await;
    if let Err(err) = audited {
        return internal(&app, &err);
    }
    log::info!(
        "report {r_id} queued again for {} destination(s) by admin {}",
        queued.len(),
        admin.name
    );
    Redirect::to(&format!(
        "{}/admin/reports?day={}#report-{r_id}",
        app.prefix(),
        report.day
    ))
    .into_response()
}
