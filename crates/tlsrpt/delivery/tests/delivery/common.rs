//! What several tests share: the sample report, the test CA's trust, and
//! (from `mailtls-test-support`) the oracles and running a command with the
//! checks every test wants.

use std::time::{Duration, UNIX_EPOCH};

pub use mailtls_test_support::tls::TestCa;
use tlsrpt_delivery::{gzip, ReportMail, TrustAnchors};

/// A complete RFC 8460 section 4 report, `policy-domain` present in every
/// policy (parsedmarc refuses reports without it).
pub const REPORT_JSON: &str = r#"{"organization-name": "Example Org", "date-range": {"start-datetime": "2026-11-21T00:00:00Z", "end-datetime": "2026-11-21T23:59:59Z"}, "contact-info": "tlsrpt-noreply@example.net", "report-id": "2026-11-21T00:00:00Z_idx1_example.com", "policies": [{"policy": {"policy-type": "sts", "policy-string": ["version: STSv1", "mode: testing", "mx: *.mail.example.com", "max_age: 86400"], "policy-domain": "example.com", "mx-host": ["*.mail.example.com"]}, "summary": {"total-successful-session-count": 5, "total-failure-session-count": 2}, "failure-details": [{"result-type": "certificate-expired", "sending-mta-ip": "192.0.2.1", "receiving-mx-hostname": "mx1.mail.example.com", "receiving-ip": "198.51.100.7", "failed-session-count": 2}]}, {"policy": {"policy-type": "no-policy-found", "policy-domain": "example.com"}, "summary": {"total-successful-session-count": 1, "total-failure-session-count": 0}}]}"#;

pub const REPORT_ID: &str = "2026-11-21T00:00:00Z_idx1_example.com";
pub const SENDER: &str = "tlsrpt-noreply@example.net";
pub const RECIPIENT: &str = "tlsrpt@example.com";
pub const ATTACHMENT_NAME: &str = "example.net!example.com!1795219200!1795305599!1.json.gz";

pub fn gzip_report() -> Vec<u8> {
    gzip(REPORT_JSON.as_bytes(), -1).unwrap()
}

/// The sample report as a mail to [`RECIPIENT`], unsigned.
pub fn render_mail(gzip_report: &[u8]) -> Vec<u8> {
    ReportMail {
        sender: SENDER,
        recipient: RECIPIENT,
        report_domain: "example.com",
        submitter: "example.net",
        report_id: REPORT_ID,
        organization_name: "Example Org",
        attachment_name: ATTACHMENT_NAME,
        gzip_report,
        date: UNIX_EPOCH + Duration::from_secs(1_795_306_000),
    }
    .render()
    .unwrap()
}

pub use mailtls_test_support::{openssl_key, run_text as run, venv_python};

/// The system's roots plus the test CA.
pub fn trust(ca: &TestCa) -> TrustAnchors {
    TrustAnchors::load(Some(&ca.ca_file)).unwrap()
}
