//! The delivery stage: one stored report to one destination, by the
//! transport its scheme asks for (RFC 8460 section 5: `mailto:` as a
//! signed mail, `https:` as a POST), or into a `directory:`.

use mailtls_common::day::Day;
use std::path::PathBuf;
use std::time::SystemTime;

use chrono::{DateTime, NaiveTime, Utc};
use tlsrpt_delivery::{
    gzip, Directory, DkimSigner, HttpTransport, MailTransport, Outcome, ReportMail,
};

use tlsrpt_reportd_db::Delivery;

/// Everything a delivery needs besides the report.
pub struct Deliverer {
    pub organization_name: String,
    pub submitter: String,
    pub sender_address: String,
    pub compression_level: i32,
    pub mail: MailTransport,
    pub dkim: Option<DkimSigner>,
    pub http: HttpTransport,
    /// Upstream's debugging overrides: every mail to this address, every
    /// upload to this URL, and a copy of each report (and mail) into this
    /// directory.
    pub debug_send_mail_dest: Option<String>,
    pub debug_send_http_dest: Option<String>,
    pub debug_send_file_dest: Option<PathBuf>,
}

/// The parts of a stored report that the transports need.
struct StoredReportInfo {
    report_id: String,
    /// The attachment name's unique-id: the record hash of our report-ids,
    /// or upstream's running number for reports an upstream reportd made.
    unique_id: String,
}

impl StoredReportInfo {
    fn of(delivery: &Delivery) -> StoredReportInfo {
        let report_id = tlsrpt_reportd_db::report_id_of(&delivery.report).unwrap_or_else(|| {
            format!(
                "{}_idx{}_{}",
                delivery.day, delivery.uniqid, delivery.domain
            )
        });
        let ours = report_id
            .strip_prefix(&format!("{}_", delivery.day))
            .and_then(|rest| rest.split_once('_'))
            .map(|(hash, _)| hash)
            .filter(|hash| hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()));
        let unique_id = ours.map_or_else(|| delivery.uniqid.to_string(), str::to_owned);
        StoredReportInfo {
            report_id,
            unique_id,
        }
    }
}

/// A destination's kind, from its scheme.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Mail(String),
    Https(String),
    Directory(PathBuf),
    Unknown,
}

impl Target {
    pub fn of(destination: &str) -> Target {
        if let Some(address) = destination.strip_prefix("mailto:") {
            Target::Mail(address.to_owned())
        } else if destination.starts_with("https:") {
            Target::Https(destination.to_owned())
        } else if let Some(path) = destination.strip_prefix("directory:") {
            Target::Directory(PathBuf::from(path))
        } else {
            Target::Unknown
        }
    }
}

impl Deliverer {
    /// One attempt. `now` is the mail's `Date`.
    pub fn deliver(&self, delivery: &Delivery, now: DateTime<Utc>) -> Outcome {
        self.debug_copy(delivery, None);
        match Target::of(&delivery.destination) {
            Target::Mail(address) => self.send_mail(delivery, &address, now),
            Target::Https(url) => {
                let url = self.debug_send_http_dest.clone().unwrap_or(url);
                match gzip(delivery.report.as_bytes(), self.compression_level) {
                    Ok(body) => self.http.post(&url, &body),
                    Err(err) => Outcome::RetryLater(err.to_string()),
                }
            }
            Target::Directory(path) => {
                let info = StoredReportInfo::of(delivery);
                Directory::new(path).store(&delivery.domain, &info.report_id, delivery.report.as_bytes())
            }
            Target::Unknown => Outcome::Permanent(format!(
                "unknown scheme in destination {:?}: only mailto:, https: and directory: are delivered",
                delivery.destination
            )),
        }
    }

    /// A `directory:` delivery without waiting for the disk; the caller
    /// syncs the directory ([`Directory::sync`]) before recording any of
    /// a batch as delivered.
    pub fn store_unsynced(&self, delivery: &Delivery, directory: &Directory) -> Outcome {
        self.debug_copy(delivery, None);
        let info = StoredReportInfo::of(delivery);
        directory.store_unsynced(
            &delivery.domain,
            &info.report_id,
            delivery.report.as_bytes(),
        )
    }

    fn send_mail(&self, delivery: &Delivery, address: &str, now: DateTime<Utc>) -> Outcome {
        let recipient = match &self.debug_send_mail_dest {
            Some(debug) => {
                log::warn!("overriding destination {address} with debug_send_mail_dest {debug}");
                debug.as_str()
            }
            None => address,
        };
        let info = StoredReportInfo::of(delivery);
        let gzip_report = match gzip(delivery.report.as_bytes(), self.compression_level) {
            Ok(body) => body,
            Err(err) => return Outcome::RetryLater(err.to_string()),
        };
        let attachment_name = attachment_name(
            &self.submitter,
            &delivery.domain,
            delivery.day,
            &info.unique_id,
        );
        let mail = ReportMail {
            sender: &self.sender_address,
            recipient,
            report_domain: &delivery.domain,
            submitter: &self.submitter,
            report_id: &info.report_id,
            organization_name: &self.organization_name,
            attachment_name: &attachment_name,
            gzip_report: &gzip_report,
            date: SystemTime::from(now),
        };
        let message = match mail.render() {
            Ok(message) => message,
            // Fields from DNS that would add headers or recipients: no
            // retry can make them safe.
            Err(err) => return Outcome::Permanent(err.to_string()),
        };
        let message = match &self.dkim {
            Some(signer) => match signer.sign(&message) {
                Ok(signed) => signed,
                Err(err) => return Outcome::RetryLater(err.to_string()),
            },
            None => message,
        };
        self.debug_copy(delivery, Some(&message));
        self.mail.send(&self.sender_address, recipient, &message)
    }

    /// Upstream's `debug_send_file_dest`: a copy of the report, and of the
    /// mail made from it, for inspection.
    fn debug_copy(&self, delivery: &Delivery, mail: Option<&[u8]>) {
        let Some(dir) = &self.debug_send_file_dest else {
            return;
        };
        let destination = delivery.destination.replace('/', "_");
        let (name, contents) = match mail {
            None => (
                format!(
                    "testreport-{}-{}-{destination}.json",
                    delivery.domain, delivery.r_id
                ),
                delivery.report.as_bytes(),
            ),
            Some(mail) => (
                format!(
                    "testreport-{}-{}-THE_EMAIL_TO_{destination}.eml",
                    delivery.domain, delivery.r_id
                ),
                mail,
            ),
        };
        let path = dir.join(name);
        if let Err(err) = std::fs::write(&path, contents) {
            log::warn!(
                "debug_send_file_dest: cannot write {}: {err}",
                path.display()
            );
        }
    }
}

/// `submitter!domain!begin!end!unique-id.json.gz` (RFC 8460 section 5.3).
fn attachment_name(submitter: &str, domain: &str, day: Day, unique_id: &str) -> String {
    let begin = day.date().and_time(NaiveTime::MIN).and_utc().timestamp();
    format!(
        "{submitter}!{domain}!{begin}!{}!{unique_id}.json.gz",
        begin + 24 * 3600 - 1
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(report: &str) -> Delivery {
        Delivery {
            destination: "mailto:r@a.example".into(),
            r_id: 7,
            uniqid: 2,
            report: report.into(),
            domain: "a.example".into(),
            day: Day::from_ymd(2026, 11, 21),
            retries: 0,
            created: None,
        }
    }

    #[test]
    fn report_ids_and_unique_ids_come_from_the_stored_report() {
        let ours = StoredReportInfo::of(&delivery(
            r#"{"report-id": "2026-11-21_0123456789abcdef_a.example"}"#,
        ));
        assert_eq!(ours.report_id, "2026-11-21_0123456789abcdef_a.example");
        assert_eq!(ours.unique_id, "0123456789abcdef");
        // A report an upstream reportd made: its running number.
        let theirs = StoredReportInfo::of(&delivery(
            r#"{"report-id": "2026-11-21T00:00:00Z_idx2_a.example"}"#,
        ));
        assert_eq!(theirs.report_id, "2026-11-21T00:00:00Z_idx2_a.example");
        assert_eq!(theirs.unique_id, "2");
    }

    #[test]
    fn attachment_names_follow_section_5_3() {
        assert_eq!(
            attachment_name("example.net", "a.example", Day::from_ymd(2026, 11, 21), "1"),
            "example.net!a.example!1795219200!1795305599!1.json.gz"
        );
    }

    #[test]
    fn destinations_are_told_apart_by_scheme() {
        assert_eq!(Target::of("mailto:a@b"), Target::Mail("a@b".into()));
        assert_eq!(
            Target::of("https://x/y"),
            Target::Https("https://x/y".into())
        );
        assert_eq!(
            Target::of("directory:/srv/r"),
            Target::Directory("/srv/r".into())
        );
        assert_eq!(Target::of("http://x/y"), Target::Unknown);
    }
}
