//! Host name syntax shared by MX patterns, MX hosts and policy domains.

/// Longest name in text form without the trailing dot: 255 octets on the
/// wire (RFC 1035 section 2.3.4) leave 253 characters.
pub(crate) const MAX_NAME_LEN: usize = 253;

/// Longest label (RFC 1035 section 2.3.4).
const MAX_LABEL_LEN: usize = 63;

/// The name in canonical form (ASCII lowercase, one trailing dot removed)
/// when it is a host name: dot-separated labels of 1-63 letters, digits,
/// `-` or `_` (RFC 8461's mx-value characters), 253 characters at most.
/// `None` for anything else, including U-labels: callers pass A-labels.
pub(crate) fn normalize_host(name: &str) -> Option<String> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return None;
    }
    for label in name.split('.') {
        if label.is_empty()
            || label.len() > MAX_LABEL_LEN
            || !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return None;
        }
    }
    Some(name.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_form() {
        assert_eq!(
            normalize_host("MX.Example.COM."),
            Some("mx.example.com".into())
        );
        assert_eq!(normalize_host("localhost"), Some("localhost".into()));
        assert_eq!(normalize_host("_x-1.example"), Some("_x-1.example".into()));
    }

    #[test]
    fn refused() {
        for bad in [
            "",
            ".",
            "..",
            "a..b",
            ".a",
            "a.b..",
            "*.a",
            "a b",
            "a,b",
            "a:b",
            "ä.example",
            "a{b",
        ] {
            assert_eq!(normalize_host(bad), None, "{bad:?}");
        }
        assert!(normalize_host(&"a".repeat(63)).is_some());
        assert!(normalize_host(&"a".repeat(64)).is_none());
        let long = [
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(61),
        ]
        .join(".");
        assert_eq!(long.len(), 253);
        assert!(normalize_host(&long).is_some());
        assert!(normalize_host(&format!("{long}.")).is_some());
        assert!(normalize_host(&format!("x{long}")).is_none());
    }
}
