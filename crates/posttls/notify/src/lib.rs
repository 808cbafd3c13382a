//! The notifier stage of PostTLS: the mail that tells a sender of our
//! organisation that some recipients of a message could not be reached over
//! TLS, and offers the two choices (send unencrypted, delete) as links to
//! confirmation pages.
//!
//! Text and HTML come from three templates (minijinja, Jinja syntax):
//! `subject.txt.j2`, `notification.txt.j2` and `notification.html.j2`. The
//! built-in ones are used unless the admin's template directory has a file
//! of the same name. HTML templates escape every value automatically.
//!
//! Pure: rendering takes the facts and returns the mail's bytes; sending is
//! the caller's (through the configured path that does not itself depend on
//! the failing TLS).

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use mail_builder::headers::address::Address;
use mail_builder::headers::raw::Raw;
use mail_builder::MessageBuilder;
use minijinja::{context, Environment};

const TEMPLATE_NAMES: [&str; 3] = [
    "subject.txt.j2",
    "notification.txt.j2",
    "notification.html.j2",
];
const BUILT_IN: [&str; 3] = [
    include_str!("templates/subject.txt.j2"),
    include_str!("templates/notification.txt.j2"),
    include_str!("templates/notification.html.j2"),
];

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("template {name}: {source}")]
    Template {
        name: String,
        #[source]
        source: minijinja::Error,
    },
    #[error("cannot read template {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the address {0:?} cannot be put into a mail header safely")]
    UnsafeAddress(String),
}

/// Why the sender hears from us (stored with each notification).
pub use posttls_store::NotificationKind;

/// A recipient and, in plain words, why it waits.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RecipientLine {
    pub address: String,
    pub reason: String,
}

/// Everything a notification says.
#[derive(Debug, Clone)]
pub struct Notification {
    pub kind: NotificationKind,
    /// The sender asked for REQUIRETLS (RFC 8689): that, not the
    /// recipients' domains, keeps the message from going unencrypted.
    pub requiretls: bool,
    /// The sender of the message: the notification's recipient.
    pub to: String,
    /// The notification's From.
    pub from: String,
    pub organization: String,
    pub queue_id: String,
    /// The message's subject, decoded (RFC 2047).
    pub subject: Option<String>,
    pub sent: DateTime<Utc>,
    /// The TLS-failed recipients the sender may decide about.
    pub failed: Vec<RecipientLine>,
    /// TLS-failed recipients in mandatory domains: never released.
    pub mandatory: Vec<RecipientLine>,
    /// What happens to the mandatory recipients, in words.
    pub mandatory_action: String,
    pub release_url: Option<String>,
    pub delete_url: Option<String>,
    pub links_expire: Option<DateTime<Utc>>,
}

/// The three templates, built in or the admin's.
pub struct Templates {
    env: Environment<'static>,
}

impl Templates {
    /// The built-in templates, each replaced by the file of the same name
    /// in `dir` when there is one. Every template is compiled now, so a
    /// broken one stops the start instead of the first notification.
    pub fn load(dir: Option<&Path>) -> Result<Templates, NotifyError> {
        let mut env = Environment::new();
        for (name, built_in) in TEMPLATE_NAMES.iter().zip(BUILT_IN) {
            let source = match dir.map(|d| d.join(name)).filter(|p| p.exists()) {
                Some(path) => std::fs::read_to_string(&path)
                    .map_err(|source| NotifyError::Read { path, source })?,
                None => built_in.to_string(),
            };
            env.add_template_owned(*name, source)
                .map_err(|source| NotifyError::Template {
                    name: name.to_string(),
                    source,
                })?;
        }
        // `.html` decides escaping; ours end in `.html.j2`.
        env.set_auto_escape_callback(|name| {
            if name.ends_with(".html.j2") {
                minijinja::AutoEscape::Html
            } else {
                minijinja::AutoEscape::None
            }
        });
        Ok(Templates { env })
    }

    /// Subject, text and HTML of a notification.
    pub fn render(&self, n: &Notification) -> Result<Rendered, NotifyError> {
        let date = |t: DateTime<Utc>| t.format("%Y-%m-%d %H:%M UTC").to_string();
        let subject_line = |subject: &Option<String>| subject.as_ref().map(|s| one_line(s));
        let ctx = context! {
            kind => n.kind.as_str(),
            organization => n.organization,
            queue_id => n.queue_id,
            subject => subject_line(&n.subject),
            sent => date(n.sent),
            failed => n.failed,
            mandatory => n.mandatory,
            requiretls => n.requiretls,
            mandatory_action => n.mandatory_action,
            release_url => n.release_url,
            delete_url => n.delete_url,
            links_expire => n.links_expire.map(date),
        };
        let render = |name: &str, ctx: minijinja::Value| -> Result<String, NotifyError> {
            self.env
                .get_template(name)
                .and_then(|t| t.render(ctx))
                .map_err(|source| NotifyError::Template {
                    name: name.to_string(),
                    source,
                })
        };
        let subject = one_line(render("subject.txt.j2", ctx.clone())?.trim());
        let text = render("notification.txt.j2", ctx.clone())?;
        let html = render(
            "notification.html.j2",
            context! { title => subject.clone(), ..ctx },
        )?;
        Ok(Rendered {
            subject,
            text,
            html,
        })
    }
}

/// A rendered notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// Control characters (a subject may hold encoded line breaks) become
/// spaces: a header value stays one header.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// The complete notification mail (CRLF line ends): multipart/alternative
/// text and HTML, `Auto-Submitted: auto-generated` (RFC 3834, so that
/// vacation responders stay quiet), a Message-ID in `message_id_domain`.
pub fn build_mail(
    n: &Notification,
    rendered: &Rendered,
    message_id: &str,
    now: DateTime<Utc>,
) -> Result<Vec<u8>, NotifyError> {
    for address in [&n.to, &n.from] {
        if address.chars().any(|c| c.is_control()) || !address.contains('@') {
            return Err(NotifyError::UnsafeAddress(address.clone()));
        }
    }
    Ok(MessageBuilder::new()
        .from(Address::new_address(None::<&str>, n.from.as_str()))
        .to(Address::new_address(None::<&str>, n.to.as_str()))
        .subject(rendered.subject.as_str())
        .date(now.timestamp())
        .message_id(message_id)
        .header("Auto-Submitted", Raw::new("auto-generated"))
        .text_body(rendered.text.replace("\r\n", "\n").replace('\n', "\r\n"))
        .html_body(rendered.html.as_str())
        .write_to_vec()
        .expect("writing to a Vec cannot fail"))
}

/// The decoded Subject of a message from its header block (as `postcat
/// -h` prints it): RFC 2047 encoded words decoded, folding undone.
pub fn subject_of(headers: &[u8]) -> Option<String> {
    let message = mail_parser::MessageParser::default().parse_headers(headers)?;
    message.subject().map(|s| one_line(s).trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn sample() -> Notification {
        Notification {
            kind: NotificationKind::First,
            requiretls: false,
            to: "alice@example.org".into(),
            from: "postmaster@example.org".into(),
            organization: "Example Org".into(),
            queue_id: "4A0AF98C232".into(),
            subject: Some("Quarterly <numbers> & \"plans\"\r\nBcc: evil@x".into()),
            sent: Utc.with_ymd_and_hms(2026, 11, 22, 9, 30, 0).unwrap(),
            failed: vec![RecipientLine {
                address: "bob@notls.example".into(),
                reason: "The recipient's mail server does not support encryption.".into(),
            }],
            mandatory: vec![],
            mandatory_action: String::new(),
            release_url: Some("https://posttls.example.org/confirm?t=abc".into()),
            delete_url: Some("https://posttls.example.org/confirm?t=def".into()),
            links_expire: Some(Utc.with_ymd_and_hms(2026, 11, 27, 9, 30, 0).unwrap()),
        }
    }

    #[test]
    fn the_notification_lists_recipients_reasons_and_both_links() {
        let templates = Templates::load(None).unwrap();
        let rendered = templates.render(&sample()).unwrap();
        assert_eq!(
            rendered.subject,
            "Your message could not be sent securely: Quarterly <numbers> & \"plans\"  Bcc: evil@x"
        );
        assert!(rendered.text.contains(
            "bob@notls.example: The recipient's mail server does not support encryption."
        ));
        assert!(rendered
            .text
            .contains("https://posttls.example.org/confirm?t=abc"));
        assert!(rendered
            .text
            .contains("https://posttls.example.org/confirm?t=def"));
        assert!(rendered.text.contains("2026-11-22 09:30 UTC"));
        // HTML escapes what the sender wrote.
        assert!(
            rendered
                .html
                .contains("Quarterly &lt;numbers&gt; &amp; &quot;plans&quot;"),
            "{}",
            rendered.html
        );
        assert!(rendered.html.contains(">Send unencrypted</a>"));
        assert!(rendered.html.contains(">Delete</a>"));
    }

    #[test]
    fn the_mail_has_both_parts_and_no_injected_header() {
        let n = sample();
        let templates = Templates::load(None).unwrap();
        let rendered = templates.render(&n).unwrap();
        let mail = build_mail(&n, &rendered, "posttls.1@example.org", n.sent).unwrap();
        let text = String::from_utf8_lossy(&mail);
        assert!(text.contains("Auto-Submitted: auto-generated\r\n"));
        assert!(text.contains("multipart/alternative"));
        assert!(!text.contains("\r\nBcc:"), "{text}");
        let parsed = mail_parser::MessageParser::default().parse(&mail).unwrap();
        assert_eq!(parsed.subject().unwrap(), rendered.subject);
        assert!(parsed.body_text(0).unwrap().contains("bob@notls.example"));
        assert!(parsed.body_html(0).unwrap().contains("Send unencrypted"));
    }

    #[test]
    fn an_admins_template_replaces_the_built_in_one() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("subject.txt.j2"),
            "[{{ organization }}] TLS: {{ subject }}",
        )
        .unwrap();
        let templates = Templates::load(Some(dir.path())).unwrap();
        let rendered = templates.render(&sample()).unwrap();
        assert!(rendered.subject.starts_with("[Example Org] TLS: Quarterly"));
        std::fs::write(dir.path().join("notification.txt.j2"), "{% if %}").unwrap();
        assert!(matches!(
            Templates::load(Some(dir.path())),
            Err(NotifyError::Template { .. })
        ));
    }

    #[test]
    fn other_kinds_say_what_happened() {
        let templates = Templates::load(None).unwrap();
        let mut n = sample();
        n.kind = NotificationKind::Expired;
        let expired = templates.render(&n).unwrap();
        assert!(expired.subject.starts_with("Not delivered:"));
        assert!(!expired.text.contains("confirm?t="));
        n.kind = NotificationKind::Mandatory;
        n.mandatory = n.failed.clone();
        n.failed.clear();
        n.mandatory_action = "it was returned to you.".into();
        let mandatory = templates.render(&n).unwrap();
        assert!(mandatory.text.contains("Never sent unencrypted"));
        assert!(mandatory.text.contains("it was returned to you."));
        assert!(mandatory.text.contains("their domain requires encryption"));
        // The sender's own REQUIRETLS, not the domain, is the reason.
        n.requiretls = true;
        let requiretls = templates.render(&n).unwrap();
        for text in [&requiretls.text, &requiretls.html] {
            let words = text.split_whitespace().collect::<Vec<_>>().join(" ");
            assert!(
                words.contains("asked to be sent only over verified encryption (REQUIRETLS)"),
                "{text}"
            );
            assert!(
                text.contains("(the message asked for REQUIRETLS)"),
                "{text}"
            );
            assert!(!text.contains("domain requires encryption"), "{text}");
        }
    }

    #[test]
    fn subjects_are_decoded_from_the_header_block() {
        let headers = b"From: a@example.org\nSubject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe?= aus\n =?UTF-8?B?S8O2bG4=?=\nTo: b@x\n\n";
        assert_eq!(subject_of(headers).as_deref(), Some("Grüße aus Köln"));
        assert_eq!(subject_of(b"From: a@example.org\n\n"), None);
    }
}
