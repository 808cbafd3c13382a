//! Postfix queue ids, validated once at the edge.
//!
//! A queue id read from `postqueue -j` later becomes an argument of
//! `postsuper -h ID`, `postsuper -d ID hold` and `postcat -q ID`, run as root.
//! Those commands are run with argv arrays (no shell), but argv alone is not
//! enough: `postsuper` reads ids from standard input when an id is `-` and
//! acts on every queued message when it is `ALL` (postsuper(1)), anything
//! starting with `-` can be taken for an option, and a newline in an id would
//! forge lines in logs and in the audit trail. Only the characters Postfix
//! itself uses are accepted, and `ALL` is refused, so none of this can happen
//! downstream.

use std::fmt;
use std::str::FromStr;

/// The longest queue id accepted.
///
/// Short ids are 10 to 12 hexadecimal digits; long ids
/// (`enable_long_queue_ids = yes`, Postfix >= 2.9) are about 15 to 17
/// characters of `[0-9A-Za-z]` (see Postfix `src/global/mail_queue.h`).
/// 32 leaves room without accepting unbounded input.
pub const MAX_QUEUE_ID_LEN: usize = 32;

/// A Postfix queue id: one or more of `[A-Za-z0-9_]`, at most
/// [`MAX_QUEUE_ID_LEN`] bytes, and not `ALL` in any case.
///
/// The character rule is the one `postcat` and `postsuper` apply themselves
/// (`mail_queue_id_ok()` in Postfix `src/global/mail_queue.c`): an id that
/// fails it would be refused by them anyway, so refusing it here loses
/// nothing and keeps hostile text (`-`, `--help`, `$(...)`, newlines) out of
/// every later argv. `ALL` passes that rule but means "every message" to
/// `postsuper -d/-h/-H/-r/-e`; no Postfix id can be `ALL` (short ids are
/// hexadecimal, long ids contain no vowels), so refusing it costs nothing.
///
/// Ids are unique per Postfix instance only, and reused unless
/// `enable_long_queue_ids = yes`: anything stored about a message must be
/// bound to the id together with its arrival time.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueId(String);

impl QueueId {
    /// Validate `text` as a queue id.
    pub fn new(text: &str) -> Result<QueueId, QueueIdError> {
        if text.is_empty() {
            return Err(QueueIdError::Empty);
        }
        if let Some((position, ch)) = text
            .char_indices()
            .find(|&(_, ch)| !(ch.is_ascii_alphanumeric() || ch == '_'))
        {
            return Err(QueueIdError::InvalidChar { ch, position });
        }
        if text.len() > MAX_QUEUE_ID_LEN {
            return Err(QueueIdError::TooLong { len: text.len() });
        }
        if text.eq_ignore_ascii_case("ALL") {
            return Err(QueueIdError::All);
        }
        Ok(QueueId(text.to_owned()))
    }

    /// The id as Postfix prints it; safe to pass as one argv element.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for QueueId {
    type Err = QueueIdError;

    fn from_str(text: &str) -> Result<QueueId, QueueIdError> {
        QueueId::new(text)
    }
}

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "QueueId({})", self.0)
    }
}

/// Why a text is not a queue id. The offending character is shown escaped
/// (`{:?}`), so printing the error never writes a raw newline into a log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueIdError {
    #[error("empty queue id")]
    Empty,
    #[error("queue id of {len} bytes, at most {MAX_QUEUE_ID_LEN} allowed")]
    TooLong { len: usize },
    #[error("queue id contains {ch:?} at byte {position}: only A-Z, a-z, 0-9 and _ are allowed")]
    InvalidChar { ch: char, position: usize },
    #[error("\"ALL\" is not a queue id: postsuper reads it as every queued message")]
    All,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_short_and_long_postfix_ids() {
        for id in ["4A0AF98C232", "C800B104BA4", "4hxKf66gyVz187c", "a_b", "0"] {
            assert_eq!(QueueId::new(id).unwrap().as_str(), id);
        }
        let longest = "A".repeat(MAX_QUEUE_ID_LEN);
        assert!(QueueId::new(&longest).is_ok());
    }

    /// The security boundary: texts that would change the meaning of a
    /// `postsuper`/`postcat` command line, or of a log line, never become ids.
    #[test]
    fn refuses_hostile_ids() {
        let hostile = [
            "",
            "-",
            "--help",
            "-d",
            "ALL",
            "$(reboot)",
            "`id`",
            "4A0AF98C232\n",
            "4A0AF98C232\nALL",
            "4A0AF98C232\r",
            "4A0AF98C232 ALL",
            "4A0AF98C232;rm -rf /",
            "../../etc/passwd",
            "4A0AF98C232\0",
            "4A0AF98C232*",
            "4A0AF98C232!",
            "ÄÖÜ",
            "4A0AF98C232\u{202e}",
        ];
        for text in hostile {
            assert!(QueueId::new(text).is_err(), "accepted {text:?}");
        }
        assert!(matches!(
            QueueId::new("-"),
            Err(QueueIdError::InvalidChar {
                ch: '-',
                position: 0
            })
        ));
        assert!(matches!(
            QueueId::new("ABC\nDEF"),
            Err(QueueIdError::InvalidChar {
                ch: '\n',
                position: 3
            })
        ));
        assert_eq!(QueueId::new(""), Err(QueueIdError::Empty));
        for all in ["ALL", "all", "All"] {
            assert_eq!(QueueId::new(all), Err(QueueIdError::All));
        }
        assert_eq!(
            QueueId::new(&"A".repeat(MAX_QUEUE_ID_LEN + 1)),
            Err(QueueIdError::TooLong {
                len: MAX_QUEUE_ID_LEN + 1
            })
        );
    }

    #[test]
    fn error_text_never_contains_a_raw_newline() {
        let err = QueueId::new("AB\nCD").unwrap_err().to_string();
        assert!(!err.contains('\n'), "{err}");
        assert!(err.contains("'\\n'"), "{err}");
    }

    #[test]
    fn parses_with_from_str_and_displays_verbatim() {
        let id: QueueId = "4A0AF98C232".parse().unwrap();
        assert_eq!(id.to_string(), "4A0AF98C232");
        assert_eq!(format!("{id:?}"), "QueueId(4A0AF98C232)");
        assert!("--help".parse::<QueueId>().is_err());
    }

    proptest! {
        /// Whatever is accepted is safe as an argv element: never empty,
        /// never starting with '-', no whitespace, no shell or control
        /// characters, bounded length.
        #[test]
        fn accepted_ids_are_safe(text in any::<String>()) {
            if let Ok(id) = QueueId::new(&text) {
                let s = id.as_str();
                prop_assert_eq!(s, text.as_str());
                prop_assert!(!s.is_empty() && s.len() <= MAX_QUEUE_ID_LEN);
                prop_assert!(s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
                prop_assert!(!s.eq_ignore_ascii_case("ALL"));
            }
        }

        /// And everything of the Postfix form is accepted.
        #[test]
        fn postfix_form_is_accepted(text in "[A-Za-z0-9_]{1,32}") {
            prop_assume!(!text.eq_ignore_ascii_case("ALL"));
            let id = QueueId::new(&text).unwrap();
            prop_assert_eq!(id.as_str(), text.as_str());
        }

        #[test]
        fn ids_with_a_foreign_char_are_refused(
            head in "[A-Za-z0-9_]{0,10}",
            bad in any::<char>().prop_filter("not an id char", |c| !(c.is_ascii_alphanumeric() || *c == '_')),
            tail in "[A-Za-z0-9_]{0,10}",
        ) {
            let text = format!("{head}{bad}{tail}");
            let refused = matches!(
                QueueId::new(&text),
                Err(QueueIdError::InvalidChar { ch, position }) if ch == bad && position == head.len()
            );
            prop_assert!(refused);
        }
    }
}
