//! The report daemon: its options, fetchers, DKIM key, the database's
//! report daemons, and that its mail leaves without TLSRPT.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Command;
use tlsrpt_reportd::config::{check_options, ReportdOptions};
use tlsrpt_reportd::fetch::{shown_command, Fetcher};
use tlsrpt_reportd_db::postgres::{report_daemons, ReportDaemon};
use tlsrpt_reportd_db::DbName;

use super::super::reportd;
use super::{config_failure, loaded, options_of, unset, Finding, PostfixFacts};

/// What the report daemon's configuration gives.
#[derive(Debug, Clone, Default)]
pub struct ReportdFacts {
    pub config_file: PathBuf,
    /// `None` when the file does not exist (the report daemon runs
    /// elsewhere, or not yet).
    pub options: Option<Result<ReportdOptions, String>>,
    /// Each fetcher and what its test run found wrong (empty: nothing).
    pub fetchers: Vec<(String, Vec<String>)>,
    /// The DKIM key's TXT record (name, record), or why it is unusable.
    pub dkim: Option<Result<(String, String), String>>,
    /// The transport Postfix chooses for report mail (by its sender), as
    /// `sender_dependent_default_transport_maps` gives it.
    pub report_transport: Option<String>,
    /// `smtp_tlsrpt_enable` of that transport's master.cf service.
    pub report_transport_tlsrpt: Option<String>,
    /// With a postgresql:// `dbname`: the report daemons connected to it,
    /// or why it cannot be read.
    pub report_daemons: Option<Result<Vec<ReportDaemon>, String>>,
}

impl ReportdFacts {
    pub(super) fn gather(config_file: &Path, postfix: &PostfixFacts) -> ReportdFacts {
        let mut facts = ReportdFacts {
            config_file: config_file.to_path_buf(),
            ..ReportdFacts::default()
        };
        if !config_file.is_file() {
            return facts;
        }
        let options = options_of::<ReportdOptions>(
            &reportd::SPEC,
            Command::new("tlsrpt-reportd"),
            config_file,
        );
        if let Ok(o) = &options {
            for configured in o
                .fetchers
                .split(',')
                .map(str::trim)
                .filter(|f| !f.is_empty())
            {
                let problems = match Fetcher::new(configured) {
                    Some(fetcher) => fetcher.probe(
                        &chrono::Utc::now,
                        Duration::from_secs(o.max_collectd_timediff.max(0) as u64),
                    ),
                    None => vec!["names no program".into()],
                };
                facts.fetchers.push((configured.to_string(), problems));
            }
            if !o.dkim_key_file.is_empty() {
                let domain = if o.dkim_domain.is_empty() {
                    o.sender_address
                        .rsplit_once('@')
                        .map(|(_, d)| d.to_string())
                } else {
                    Some(o.dkim_domain.clone())
                };
                facts.dkim = Some(match domain {
                    None => Err("dkim_domain is not set and sender_address has no domain".into()),
                    Some(domain) => tlsrpt_delivery::DkimSigner::from_key_file(
                        Path::new(&o.dkim_key_file),
                        &o.dkim_selector,
                        &domain,
                    )
                    .map(|signer| (signer.dns_name(), signer.dns_record()))
                    .map_err(|e| e.to_string()),
                });
            }
            let password_file = Some(&o.password_file)
                .filter(|f| !f.is_empty())
                .map(Path::new);
            if let Ok(DbName::Postgres(url)) = DbName::parse(&o.dbname, password_file) {
                facts.report_daemons = Some(report_daemons(&url).map_err(|e| e.to_string()));
            }
            if postfix.tlsrpt_enable.as_deref() == Some("yes") && !o.sender_address.is_empty() {
                facts.report_transport = postfix.transport_for_sender(&o.sender_address);
                facts.report_transport_tlsrpt = facts
                    .report_transport
                    .as_deref()
                    .and_then(|transport| postfix.service_tlsrpt(transport));
            }
        }
        facts.options = Some(options);
        facts
    }
}

impl ReportdFacts {
    fn failure(&self, area: &'static str) -> Vec<Finding> {
        config_failure(&self.options, area, &self.config_file)
    }
}

/// The report daemon: its options, fetchers, DKIM key, and that its mail
/// leaves through a transport without TLSRPT.
pub fn judge_reportd(facts: &ReportdFacts, postfix: &PostfixFacts) -> Vec<Finding> {
    const AREA: &str = "reportd";
    let file = facts.config_file.display();
    let Some(options) = loaded(&facts.options) else {
        return facts.failure(AREA);
    };
    let mut findings = Vec::new();
    if let Err(e) = check_options(options) {
        findings.push(Finding::error(AREA, e, format!("correct {file}")));
    }
    findings.extend(unset(
        AREA,
        "the report daemon does not start",
        &format!("[tlsrpt_reportd] of {file}"),
        &[
            ("contact_info", &options.contact_info, "tlsrpt@example.com"),
            (
                "sender_address",
                &options.sender_address,
                "tlsrpt-noreply@example.com",
            ),
        ],
    ));
    for (fetcher, problems) in &facts.fetchers {
        if problems.is_empty() {
            findings.push(Finding::ok(
                AREA,
                format!("fetcher `{}` answers", shown_command(fetcher)),
            ));
        } else {
            findings.push(Finding::error(
                AREA,
                format!(
                    "fetcher `{}`: {}",
                    shown_command(fetcher),
                    problems.join("; ")
                ),
                if problems.iter().any(|p| p.contains("does not exist")) {
                    "start tlsrpt-collectd first: it creates the databases the fetcher reads"
                } else {
                    "run the fetcher by hand with the day 1999-01-01 and correct what it says"
                },
            ));
        }
    }
    match &facts.dkim {
        None => findings.push(Finding::warning(
            AREA,
            "report mail is not DKIM-signed (no dkim_key_file): receivers ignore unsigned reports unless your MTA signs them (RFC 8460 section 3)",
            format!("dkim_key_file = /etc/tlsrpt/dkim.key   (in {file}), or sign with the MTA"),
        )),
        Some(Ok((name, record))) => findings.push(Finding::ok(
            AREA,
            format!("report mail is DKIM-signed; publish: {name} TXT \"{record}\""),
        )),
        Some(Err(e)) => findings.push(Finding::error(
            AREA,
            format!("the DKIM key cannot be used: {e}"),
            "point dkim_key_file at a PEM RSA or Ed25519 private key the report daemon's user may read",
        )),
    }
    findings.extend(judge_report_daemons(facts));
    if postfix.tlsrpt_enable.as_deref() == Some("yes") && !options.sender_address.is_empty() {
        match (&facts.report_transport, facts.report_transport_tlsrpt.as_deref()) {
            (Some(transport), Some("no")) => findings.push(Finding::ok(
                AREA,
                format!("report mail leaves through {transport}, without TLSRPT"),
            )),
            _ => findings.push(Finding::warning(
                AREA,
                format!(
                    "report mail from {} goes through a transport with TLSRPT: the next reports count it, and two sites exchange reports forever",
                    options.sender_address
                ),
                format!(
                    "master.cf: smtp-notlsrpt unix - - n - - smtp -o smtp_tlsrpt_enable=no; main.cf: sender_dependent_default_transport_maps = inline:{{{}=smtp-notlsrpt:}}",
                    options.sender_address
                ),
            )),
        }
    }
    findings
}

/// A postgresql:// `dbname`: reachable, and one report daemon active.
fn judge_report_daemons(facts: &ReportdFacts) -> Vec<Finding> {
    const AREA: &str = "reportd";
    let Some(daemons) = &facts.report_daemons else {
        return Vec::new();
    };
    let daemons = match daemons {
        Ok(daemons) => daemons,
        Err(why) => {
            return vec![Finding::error(
                AREA,
                format!("the report daemons' PostgreSQL state cannot be read: {why}"),
                "check dbname and password_file in the report daemon's configuration, and that the server admits this host (pg_hba.conf)",
            )]
        }
    };
    let shown: Vec<String> = daemons
        .iter()
        .map(|d| {
            format!(
                "{} from {} ({})",
                d.name,
                d.from,
                if d.active { "active" } else { "standing by" }
            )
        })
        .collect();
    if daemons.iter().any(|d| d.active) {
        vec![Finding::ok(
            AREA,
            format!(
                "report daemons on the PostgreSQL state: {}",
                shown.join(", ")
            ),
        )]
    } else {
        vec![Finding::warning(
            AREA,
            format!(
                "no report daemon is active on the PostgreSQL state{}: no report is made or delivered",
                if shown.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", shown.join(", "))
                }
            ),
            "start tlsrpt-reportd on a report host (the first to start takes the lead); a daemon that cannot reach the database says why in its log",
        )]
    }
}

#[cfg(test)]
mod tests {
    use mailtls_common::config::ProgramOptions;

    use super::super::tests::postfix;
    use super::super::Level;
    use super::*;

    #[test]
    fn report_mail_must_leave_without_tlsrpt() {
        let mut postfix = postfix("3.10.1");
        postfix.tlsrpt_enable = Some("yes".into());
        let mut options = ReportdOptions::defaults();
        options.sender_address = "tlsrpt-noreply@example.com".into();
        options.contact_info = "tlsrpt@example.com".into();
        options.fetchers = "tlsrpt-fetcher".into();
        let mut facts = ReportdFacts {
            options: Some(Ok(options)),
            ..ReportdFacts::default()
        };
        let pingpong = |facts: &ReportdFacts| {
            judge_reportd(facts, &postfix)
                .into_iter()
                .find(|f| f.message.contains("report mail") && f.message.contains("TLSRPT"))
                .unwrap()
        };
        let found = pingpong(&facts);
        assert_eq!(found.level, Level::Warning);
        assert!(found
            .fix
            .unwrap()
            .contains("inline:{tlsrpt-noreply@example.com=smtp-notlsrpt:}"));
        facts.report_transport = Some("smtp-notlsrpt".into());
        facts.report_transport_tlsrpt = Some("no".into());
        assert_eq!(pingpong(&facts).level, Level::Ok);
    }
}
