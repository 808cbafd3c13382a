//! The report mail of RFC 8460 section 5.3 and the ways to hand it to an MTA.

use std::borrow::Cow;
use std::time::{SystemTime, UNIX_EPOCH};

use mail_builder::headers::address::Address;
use mail_builder::headers::content_type::ContentType;
use mail_builder::headers::date::Date;
use mail_builder::headers::raw::Raw;
use mail_builder::mime::{BodyPart, MimePart};
use mail_builder::MessageBuilder;
use sha2::{Digest, Sha256};

use crate::{Error, Outcome, Sendmail, Smtp};

/// One report as a mail to one `mailto:` destination (RFC 8460 section 5.3).
///
/// The layout follows the upstream reporter's mail (and so the sample in
/// `tests/fixtures/reference/report-email-example.com.eml`), plus a `Date`
/// header, which RFC 5322 requires and receivers such as parsedmarc expect:
///
/// ```text
/// From: <sender>
/// To: <recipient>
/// Subject: Report Domain: D Submitter: S Report-ID: <ID@S>
/// Date, Message-ID
/// TLS-Report-Domain: D
/// TLS-Report-Submitter: S
/// TLS-Required: No                  (RFC 8689: never hold a report back for TLS)
/// MIME-Version: 1.0
/// Content-Type: multipart/report; report-type="tlsrpt"; boundary=...
///   text/plain: "This is an aggregate TLS report from ORG"
///   application/tlsrpt+gzip, base64, attachment; filename=...
/// ```
///
/// Lines end in CRLF and headers are folded at 78 columns where they have
/// white space to fold at. Rendering is deterministic: the same report to
/// the same recipient gives the same bytes, the same Message-ID included, so
/// a receiver can recognise a mail sent again after a lost confirmation.
#[derive(Debug, Clone)]
pub struct ReportMail<'a> {
    /// `From` header and SMTP envelope sender: the upstream's `sender_address`.
    pub sender: &'a str,
    /// `To` header and envelope recipient: the address of the `mailto:` URI.
    pub recipient: &'a str,
    /// The policy domain the report is about (`TLS-Report-Domain`).
    pub report_domain: &'a str,
    /// The reporting organisation's domain (`TLS-Report-Submitter`), the
    /// domain of the upstream's `contact_info`.
    pub submitter: &'a str,
    /// The `report-id` of the report JSON.
    pub report_id: &'a str,
    /// Named in the text part.
    pub organization_name: &'a str,
    /// `S!D!BEGIN!END!N.json.gz` as section 5.3 describes it.
    pub attachment_name: &'a str,
    /// The gzip-compressed report JSON (see [`gzip`](crate::gzip)).
    pub gzip_report: &'a [u8],
    /// The `Date` header.
    pub date: SystemTime,
}

impl ReportMail<'_> {
    /// `Report Domain: D Submitter: S Report-ID: <ID@S>` (section 5.3).
    pub fn subject(&self) -> String {
        format!(
            "Report Domain: {} Submitter: {} Report-ID: <{}@{}>",
            self.report_domain, self.submitter, self.report_id, self.submitter
        )
    }

    /// The Message-ID without angle brackets: `tlsrpt.HASH@SUBMITTER`, the
    /// hash taken over report id and recipient, so that each destination
    /// gets its own id and a report sent again keeps it. (The report id
    /// itself may hold `:`, which a Message-ID may not, and is in the
    /// subject anyway.)
    pub fn message_id(&self) -> String {
        format!("tlsrpt.{}@{}", self.unique_hex(), self.submitter)
    }

    /// The complete message, CRLF line ends, ready for signing.
    ///
    /// Refuses fields that could add headers or recipients: the addresses
    /// come from DNS (`rua=`, percent-decoded), and `sendmail -t` would mail
    /// whatever ends up in a `To`, `Cc` or `Bcc` header.
    pub fn render(&self) -> Result<Vec<u8>, Error> {
        for (field, value) in [("sender", self.sender), ("recipient", self.recipient)] {
            if !is_plain_address(value) {
                return Err(Error::UnsafeMailField {
                    field,
                    value: value.to_owned(),
                });
            }
        }
        for (field, value) in [
            ("report domain", self.report_domain),
            ("submitter", self.submitter),
            ("report id", self.report_id),
            ("organization name", self.organization_name),
            ("attachment name", self.attachment_name),
        ] {
            if value.chars().any(char::is_control) {
                return Err(Error::UnsafeMailField {
                    field,
                    value: value.to_owned(),
                });
            }
        }
        let text = format!(
            "This is an aggregate TLS report from {}\r\n",
            self.organization_name
        );
        let body = MimePart::new(
            ContentType::new("multipart/report")
                .attribute("report-type", "tlsrpt")
                .attribute("boundary", format!("=_tlsrpt_{}", self.unique_hex())),
            BodyPart::Multipart(vec![
                MimePart::new(
                    ContentType::new("text/plain").attribute("charset", "utf-8"),
                    BodyPart::Text(text.into()),
                ),
                MimePart::new(
                    ContentType::new("application/tlsrpt+gzip"),
                    BodyPart::Binary(Cow::Borrowed(self.gzip_report)),
                )
                .attachment(self.attachment_name),
            ]),
        );
        let unix_seconds = self
            .date
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        // Raw: folded at white space but never RFC 2047-encoded, so the
        // subject reads as section 5.3 spells it.
        let message = MessageBuilder::new()
            .from(Address::new_address(None::<&str>, self.sender))
            .to(Address::new_address(None::<&str>, self.recipient))
            .header("Subject", Raw::new(self.subject()))
            .date(Date::new(i64::try_from(unix_seconds).unwrap_or(i64::MAX)))
            .message_id(self.message_id())
            .header("TLS-Report-Domain", Raw::new(self.report_domain))
            .header("TLS-Report-Submitter", Raw::new(self.submitter))
            .header("TLS-Required", Raw::new("No"))
            .body(body)
            .write_to_vec()
            .expect("writing to a Vec cannot fail");
        Ok(message)
    }

    /// 24 hex digits (96 bits) that tell this report-and-recipient apart
    /// from every other; also in the MIME boundary, where `=_` keeps the
    /// boundary out of base64 and quoted-printable text.
    fn unique_hex(&self) -> String {
        let digest = Sha256::new()
            .chain_update(self.report_id)
            .chain_update([0])
            .chain_update(self.recipient)
            .finalize();
        digest[..12]
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect()
    }
}

/// `local@domain` with nothing that a header parser would read as a second
/// address, a display name, a comment or a line end. Quoted local parts are
/// legal but never needed for a report address, so they are refused too.
fn is_plain_address(address: &str) -> bool {
    let Some((local, domain)) = address.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && !domain.is_empty()
        && !address
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || "<>()[]\\,;:\"".contains(c))
        && !domain.contains('@')
}

/// How report mail leaves this host: the upstream's `sendmail_script`, or
/// SMTP submission to a relay.
#[derive(Debug, Clone)]
pub enum MailTransport {
    Sendmail(Sendmail),
    Smtp(Smtp),
}

impl MailTransport {
    /// Hands one rendered (and signed) mail to the MTA. `sender` and
    /// `recipient` are the SMTP envelope; `sendmail -t` takes the recipient
    /// from the `To` header instead and the sender from the calling user, as
    /// upstream.
    pub fn send(&self, sender: &str, recipient: &str, message: &[u8]) -> Outcome {
        match self {
            MailTransport::Sendmail(sendmail) => sendmail.send(message),
            MailTransport::Smtp(smtp) => smtp.send(sender, recipient, message),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn sample(recipient: &str) -> ReportMail<'_> {
        ReportMail {
            sender: "tlsrpt-noreply@example.net",
            recipient,
            report_domain: "example.com",
            submitter: "example.net",
            report_id: "2026-11-21T00:00:00Z_idx1_example.com",
            organization_name: "Example Org",
            attachment_name: "example.net!example.com!1795219200!1795305599!1.json.gz",
            gzip_report: &[0x1f, 0x8b, 0, 1, 2, 3],
            date: UNIX_EPOCH + Duration::from_secs(1_795_305_600),
        }
    }

    #[test]
    fn subject_is_spelled_as_rfc8460_section_5_3_shows() {
        assert_eq!(
            sample("a@example.com").subject(),
            "Report Domain: example.com Submitter: example.net \
             Report-ID: <2026-11-21T00:00:00Z_idx1_example.com@example.net>"
        );
    }

    #[test]
    fn message_id_is_stable_per_recipient_and_a_valid_msg_id() {
        let first = sample("a@example.com").message_id();
        assert_eq!(first, sample("a@example.com").message_id());
        assert_ne!(first, sample("b@example.com").message_id());
        let (left, right) = first.split_once('@').unwrap();
        assert_eq!(right, "example.net");
        let hex = left.strip_prefix("tlsrpt.").unwrap();
        assert!(
            hex.len() == 24 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
            "{hex}"
        );
    }

    #[test]
    fn rendering_is_deterministic_crlf_and_folded() {
        let mail = sample("tlsrpt@example.com").render().unwrap();
        assert_eq!(mail, sample("tlsrpt@example.com").render().unwrap());
        let text = String::from_utf8(mail).unwrap();
        assert!(text.contains("\r\nDate: Sun, 22 Nov 2026 00:00:00 +0000\r\n"));
        assert!(text.contains("\r\nTLS-Required: No\r\n"));
        for line in text.split("\r\n") {
            assert!(
                !line.contains('\n') && !line.contains('\r'),
                "bare line end"
            );
            assert!(line.len() <= 78, "line longer than 78: {line:?}");
        }
    }

    #[test]
    fn refuses_fields_that_would_inject_headers_or_recipients() {
        for recipient in [
            "a@example.com\r\nBcc: victim@example.org",
            "a@example.com, victim@example.org",
            "a@example.com>, <victim@example.org",
            "Name <a@example.com>",
            "no-at-sign",
            "@example.com",
            "a@",
            "a@b@c",
        ] {
            let err = sample(recipient).render().unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::UnsafeMailField {
                        field: "recipient",
                        ..
                    }
                ),
                "{recipient:?}: {err}"
            );
        }
        let mut mail = sample("a@example.com");
        mail.report_id = "id\r\nBcc: victim@example.org";
        assert!(matches!(
            mail.render(),
            Err(Error::UnsafeMailField {
                field: "report id",
                ..
            })
        ));
    }
}
