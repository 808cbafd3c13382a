//! The MTA-STS TXT record at `_mta-sts.DOMAIN` (RFC 8461 section 3.1):
//!
//! ```text
//! sts-text-record = sts-version 1*(sts-sep sts-field) [sts-sep]
//! sts-field       = sts-id / sts-extension
//! sts-version     = %s"v=STSv1"
//! sts-id          = %s"id=" 1*32(ALPHA / DIGIT)
//! sts-sep         = *WSP %x3B *WSP
//! sts-extension   = sts-ext-name "=" sts-ext-value
//! sts-ext-name    = (ALPHA / DIGIT) *31(ALPHA / DIGIT / "_" / "-" / ".")
//! sts-ext-value   = 1*(%x21-3A / %x3C / %x3E-7E)
//! ```
//!
//! A TXT record may come as several character-strings: the caller (the DNS
//! layer) concatenates them without separator into one `String` per record
//! before calling [`select`] (RFC 7208 section 3.3 does the same for SPF;
//! RFC 8461 treats the record as one text). A record that is not UTF-8
//! cannot be valid (the grammar is ASCII); the caller may pass it lossily
//! converted or drop it, as it cannot begin with `v=STSv1` either way.

/// The version tag every MTA-STS record starts with.
pub const VERSION: &str = "v=STSv1";

/// Longest policy id (RFC 8461 section 3.1: `1*32(ALPHA / DIGIT)`).
pub const MAX_ID_LEN: usize = 32;

/// A valid MTA-STS TXT record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StsRecord {
    /// The policy instance id: a change tells senders to fetch the policy
    /// again (RFC 8461 section 3.1). Case-sensitive, compared as is.
    pub id: String,
    /// Extension fields in record order (`name`, `value`); none are
    /// defined, so they mean nothing here, but they were valid.
    pub extensions: Vec<(String, String)>,
}

/// Why a domain has no usable MTA-STS record. Each of them means the same
/// to delivery: "senders MUST assume the recipient domain does not have an
/// available MTA-STS Policy" (RFC 8461 section 3.1); the variants say why,
/// for the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TxtError {
    #[error("no TXT record begins with v=STSv1;")]
    NoRecord,
    #[error("{0} TXT records begin with v=STSv1; exactly one is allowed")]
    Multiple(usize),
    #[error("the v=STSv1 record is invalid: {0}")]
    Invalid(&'static str),
}

/// The one usable record among the TXT records at `_mta-sts.DOMAIN` (RFC
/// 8461 section 3.1): records that do not begin with `v=STSv1;` are
/// discarded (optional white space before the `;` is the grammar's
/// `sts-sep`); if not exactly one remains, or it is invalid, there is no
/// policy.
pub fn select(records: &[String]) -> Result<StsRecord, TxtError> {
    let mut candidates = records.iter().filter(|r| is_candidate(r));
    let first = candidates.next().ok_or(TxtError::NoRecord)?;
    let more = candidates.count();
    if more > 0 {
        return Err(TxtError::Multiple(more + 1));
    }
    parse(first)
}

/// True when the record begins with `v=STSv1`, optional WSP and `;`.
fn is_candidate(record: &str) -> bool {
    record
        .strip_prefix(VERSION)
        .is_some_and(|rest| rest.trim_start_matches([' ', '\t']).starts_with(';'))
}

/// Parses one record against the grammar above. An `id` given twice keeps
/// its first value (the grammar allows the repetition and the RFC does not
/// say which wins; postfix-tlspol also keeps the first). Unknown extension
/// fields are ignored but must be well-formed.
pub fn parse(record: &str) -> Result<StsRecord, TxtError> {
    if !is_candidate(record) {
        return Err(TxtError::Invalid("does not begin with v=STSv1;"));
    }
    let mut fields = record.split(';');
    // The first field is "v=STSv1" and WSP (checked by is_candidate).
    fields.next();
    let fields: Vec<&str> = fields.collect();
    let mut id: Option<String> = None;
    let mut extensions = Vec::new();
    for (i, raw) in fields.iter().enumerate() {
        let field = raw.trim_matches([' ', '\t']);
        if field.is_empty() {
            // Only the optional separator at the end may have nothing after it.
            if i + 1 == fields.len() && i > 0 {
                continue;
            }
            return Err(TxtError::Invalid("empty field"));
        }
        let (name, value) = field
            .split_once('=')
            .ok_or(TxtError::Invalid("field without '='"))?;
        if name == "id" {
            if value.is_empty()
                || value.len() > MAX_ID_LEN
                || !value.bytes().all(|b| b.is_ascii_alphanumeric())
            {
                return Err(TxtError::Invalid("id is not 1-32 letters and digits"));
            }
            if id.is_none() {
                id = Some(value.to_string());
            }
        } else {
            if !is_ext_name(name) {
                return Err(TxtError::Invalid("malformed extension name"));
            }
            if value.is_empty()
                || !value
                    .bytes()
                    .all(|b| matches!(b, 0x21..=0x3a | 0x3c | 0x3e..=0x7e))
            {
                return Err(TxtError::Invalid("malformed extension value"));
            }
            extensions.push((name.to_string(), value.to_string()));
        }
    }
    let id = id.ok_or(TxtError::Invalid("no id field"))?;
    Ok(StsRecord { id, extensions })
}

/// `(ALPHA / DIGIT) *31(ALPHA / DIGIT / "_" / "-" / ".")`, shared with the
/// policy file's extension names (RFC 8461 section 3.2).
pub(crate) fn is_ext_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 32
        && bytes[0].is_ascii_alphanumeric()
        && bytes[1..]
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sel(records: &[&str]) -> Result<StsRecord, TxtError> {
        let records: Vec<String> = records.iter().map(|s| s.to_string()).collect();
        select(&records)
    }

    fn id(id: &str) -> Result<StsRecord, TxtError> {
        Ok(StsRecord {
            id: id.into(),
            extensions: vec![],
        })
    }

    #[test]
    fn valid_records() {
        assert_eq!(
            sel(&["v=STSv1; id=20160831085700Z;"]),
            id("20160831085700Z")
        );
        assert_eq!(sel(&["v=STSv1;id=abc"]), id("abc"));
        assert_eq!(sel(&["v=STSv1 ;\tid=abc ; "]), id("abc"));
        assert_eq!(
            sel(&["v=STSv1; id=abc;ext.1=x:y"]).unwrap().extensions,
            [("ext.1".to_string(), "x:y".to_string())]
        );
        assert_eq!(sel(&["v=STSv1; id=first; id=second"]), id("first"));
        let longest = format!("v=STSv1; id={}", "a".repeat(32));
        assert_eq!(sel(&[&longest]).unwrap().id.len(), 32);
    }

    #[test]
    fn other_records_are_discarded() {
        assert_eq!(
            sel(&[
                "v=spf1 -all",
                "v=STSv1; id=1",
                "hello",
                "V=STSv1; id=2",
                "v=STSv10; id=3",
                " v=STSv1; id=4"
            ]),
            id("1")
        );
        assert_eq!(sel(&[]), Err(TxtError::NoRecord));
        assert_eq!(sel(&["v=STSv1", "v=STSv1id=1"]), Err(TxtError::NoRecord));
    }

    #[test]
    fn more_than_one_means_no_policy() {
        assert_eq!(
            sel(&["v=STSv1; id=1", "v=STSv1; id=2", "v=STSv1; id=x"]),
            Err(TxtError::Multiple(3))
        );
        // Even when one of them is invalid (RFC 8461 section 3.1 counts first).
        assert_eq!(
            sel(&["v=STSv1; id=1", "v=STSv1; bad"]),
            Err(TxtError::Multiple(2))
        );
    }

    #[test]
    fn invalid_records() {
        for bad in [
            "v=STSv1;",
            "v=STSv1; ;",
            "v=STSv1; id=abc;;",
            "v=STSv1;; id=abc",
            "v=STSv1; id=",
            "v=STSv1; id=a-b",
            "v=STSv1; id=abc def",
            "v=STSv1; id=abcé",
            &format!("v=STSv1; id={}", "a".repeat(33)),
            "v=STSv1; id=abc; foo",
            "v=STSv1; id=abc; _x=1",
            "v=STSv1; id=abc; x=",
            "v=STSv1; id=abc; x=a=b",
            "v=STSv1; id=abc; x=a b",
            "v=STSv1; id=abc; x=a\u{7f}",
            "v=STSv1; ext=1",
        ] {
            assert!(matches!(sel(&[bad]), Err(TxtError::Invalid(_))), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn never_panics(records in proptest::collection::vec(".{0,80}", 0..4)) {
            let _ = select(&records);
        }

        #[test]
        fn valid_ids_round_trip(id in "[A-Za-z0-9]{1,32}", ws in "[ \t]{0,3}") {
            let record = format!("v=STSv1{ws};{ws}id={id}{ws};");
            prop_assert_eq!(select(&[record]).unwrap().id, id);
        }
    }
}
