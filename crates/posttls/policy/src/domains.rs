//! Sets of mail domains: our own sender domains, and the mandatory-TLS
//! recipient domains, compared as IDNA A-labels.

use std::collections::HashSet;

use idna::uts46::{AsciiDenyList, DnsLength, Hyphens, Uts46};

/// A set of domains, each entry either exact (`example.com`: that domain
/// only) or a parent (`.example.com`: every subdomain, not the domain
/// itself).
///
/// The two forms are those of Postfix lookup tables such as
/// `smtp_tls_policy_maps` (postconf(5), "parent_domain_matches_subdomains"
/// does not apply there), so an admin can copy entries from the TLS policy
/// table: list both `example.com` and `.example.com` for a domain and all
/// its subdomains.
///
/// Entries and looked-up domains are compared as IDNA A-labels (UTS 46
/// ToASCII, non-transitional like Postfix's default
/// `midna_domain_transitional = no`), ignoring case and one trailing dot:
/// `bücher.example`, `BÜCHER.example.` and `xn--bcher-kva.example` are one
/// domain, so a mandatory-TLS domain cannot be bypassed by writing a
/// recipient's domain in the other form.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DomainSet {
    /// A-labels.
    exact: HashSet<String>,
    /// Parent entries, A-labels stored without their leading dot.
    parents: HashSet<String>,
}

/// Why an entry is not a domain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    #[error("empty domain")]
    Empty,
    #[error("{entry:?} is not a domain: {why}")]
    Invalid { entry: String, why: &'static str },
}

impl DomainSet {
    /// An empty set.
    pub fn new() -> DomainSet {
        DomainSet::default()
    }

    /// A set from a list as written in a configuration file: entries
    /// separated by commas and/or white space, like Postfix parameter lists.
    pub fn parse_list(list: &str) -> Result<DomainSet, DomainError> {
        let mut set = DomainSet::new();
        for entry in list
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|e| !e.is_empty())
        {
            set.insert(entry)?;
        }
        Ok(set)
    }

    /// Add one entry, `example.com` or `.example.com`, in Unicode or
    /// A-label form. Returns whether it was new.
    pub fn insert(&mut self, entry: &str) -> Result<bool, DomainError> {
        let trimmed = entry.trim();
        let (is_parent, name) = match trimmed.strip_prefix('.') {
            Some(rest) => (true, rest),
            None => (false, trimmed),
        };
        let invalid = |why| DomainError::Invalid {
            entry: entry.to_owned(),
            why,
        };
        let name = a_label(name).ok_or_else(|| {
            invalid("it has no IDNA A-label (bad Punycode, or characters IDNA does not allow)")
        })?;
        if name.is_empty() {
            return Err(DomainError::Empty);
        }
        if let Some(why) = invalid_reason(&name) {
            return Err(invalid(why));
        }
        Ok(if is_parent {
            self.parents.insert(name)
        } else {
            self.exact.insert(name)
        })
    }

    /// Whether `domain` is in the set: listed exactly, or below a listed
    /// parent. A domain without an A-label form is never in it: Postfix
    /// cannot look it up in DNS either, so no mail goes there.
    pub fn contains_domain(&self, domain: &str) -> bool {
        let Some(domain) = a_label(domain).filter(|d| !d.is_empty()) else {
            return false;
        };
        if self.exact.contains(&domain) {
            return true;
        }
        domain
            .match_indices('.')
            .any(|(dot, _)| self.parents.contains(&domain[dot + 1..]))
    }

    /// Whether the domain of `address` (the part after its last `@`) is in
    /// the set. An address without a domain is never in it.
    pub fn contains_address(&self, address: &str) -> bool {
        address_domain(address).is_some_and(|d| self.contains_domain(d))
    }

    /// The entries as A-labels (`xn--bcher-kva.example` for
    /// `bücher.example`), sorted, parents with their leading dot: for
    /// display and for writing the set back.
    pub fn entries(&self) -> Vec<String> {
        let mut entries: Vec<String> = self
            .exact
            .iter()
            .cloned()
            .chain(self.parents.iter().map(|p| format!(".{p}")))
            .collect();
        entries.sort();
        entries
    }

    pub fn len(&self) -> usize {
        self.exact.len() + self.parents.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The domain of an address: what follows the last `@` (a quoted local
/// part may itself contain `@`, RFC 5321 section 4.1.2).
pub fn address_domain(address: &str) -> Option<&str> {
    address
        .rsplit_once('@')
        .map(|(_, domain)| domain)
        .filter(|d| !d.is_empty())
}

/// The A-label form of `domain` (UTS 46 ToASCII: mapped to lower case,
/// Unicode labels Punycode-encoded, `xn--` labels checked), without one
/// trailing dot; `None` when the conversion fails. The dot is stripped
/// after the conversion, so that a trailing `。` (mapped to `.`) counts too.
///
/// Hyphen positions and lengths are not checked (real host names such as
/// `r1---sn-abc.example` break the hyphen rules), nor are ASCII characters:
/// [`invalid_reason`] judges entries, and a looked-up name with odd
/// characters just matches no entry.
fn a_label(domain: &str) -> Option<String> {
    let ascii = Uts46::new()
        .to_ascii(
            domain.as_bytes(),
            AsciiDenyList::EMPTY,
            Hyphens::Allow,
            DnsLength::Ignore,
        )
        .ok()?;
    Some(ascii.strip_suffix('.').unwrap_or(&ascii).to_owned())
}

/// Labels of ASCII letters, digits, `-` and `_`, none empty (of an A-label
/// form, where any other letter is Punycode).
fn invalid_reason(name: &str) -> Option<&'static str> {
    if name.split('.').any(str::is_empty) {
        return Some("empty label");
    }
    if !name
        .bytes()
        .all(|b| b == b'.' || b == b'-' || b == b'_' || b.is_ascii_alphanumeric())
    {
        return Some("only letters, digits, '-', '_' and '.' are allowed");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn exact_and_parent_entries() {
        let set = DomainSet::parse_list("example.com, .corp.example  Mixed.Case.\n").unwrap();
        assert_eq!(set.len(), 3);
        assert!(set.contains_domain("example.com"));
        assert!(set.contains_domain("EXAMPLE.com."));
        assert!(!set.contains_domain("sub.example.com"), "exact only");
        assert!(
            !set.contains_domain("corp.example"),
            "parent: subdomains only"
        );
        assert!(set.contains_domain("a.corp.example"));
        assert!(set.contains_domain("b.a.CORP.example."));
        assert!(!set.contains_domain("xcorp.example"));
        assert!(set.contains_domain("mixed.case"));
        assert!(!set.contains_domain(""));
        assert!(!set.contains_domain("."));
        assert_eq!(
            set.entries(),
            [".corp.example", "example.com", "mixed.case"]
        );
    }

    #[test]
    fn addresses() {
        let set = DomainSet::parse_list("example.com .example.org").unwrap();
        assert!(set.contains_address("alice@example.com"));
        assert!(set.contains_address("Alice@Example.Com"));
        assert!(set.contains_address("\"a@b\"@x.example.org"));
        assert!(!set.contains_address("alice@example.com.evil"));
        assert!(!set.contains_address("example.com"), "no domain");
        assert!(!set.contains_address("alice@"));
        assert!(!set.contains_address("MAILER-DAEMON"));
        assert_eq!(address_domain("a@b@c"), Some("c"));
        assert_eq!(address_domain("a@"), None);
    }

    #[test]
    fn bad_entries_are_refused() {
        let mut set = DomainSet::new();
        assert_eq!(set.insert(""), Err(DomainError::Empty));
        assert_eq!(set.insert("."), Err(DomainError::Empty));
        assert_eq!(set.insert(" . "), Err(DomainError::Empty));
        for bad in [
            "a..b",
            "..a",
            "user@example.com",
            "ex ample.com",
            "[1.2.3.4]",
            "*.example.com",
            "a.b..",
        ] {
            assert!(
                matches!(set.insert(bad), Err(DomainError::Invalid { .. })),
                "{bad}"
            );
        }
        assert!(DomainSet::parse_list("good.example, bad@example").is_err());
        assert!(set.is_empty());
        assert_eq!(set.insert("example.com"), Ok(true));
        assert_eq!(set.insert("EXAMPLE.COM."), Ok(false));
        assert_eq!(set.insert("bücher.example"), Ok(true));
        assert!(set.contains_address("kunde@bücher.example"));
    }

    #[test]
    fn internationalised_names_compare_as_a_labels() {
        let unicode = DomainSet::parse_list("bücher.example").unwrap();
        let ascii = DomainSet::parse_list("XN--BCHER-KVA.example.").unwrap();
        assert_eq!(unicode, ascii);
        assert_eq!(unicode.entries(), ["xn--bcher-kva.example"]);
        for set in [&unicode, &ascii] {
            for probe in [
                "bücher.example",
                "xn--bcher-kva.example",
                "BÜCHER.example",
                "Bücher.EXAMPLE.",
                "bu\u{308}cher.example", // decomposed: u + combining diaeresis
                "ｂüｃｈｅｒ.example",   // full-width letters
                "bücher\u{3002}example", // ideographic full stop
                "bücher.example\u{3002}", // ... as the root dot
            ] {
                assert!(set.contains_domain(probe), "{probe}");
                assert!(set.contains_address(&format!("kunde@{probe}")), "{probe}");
            }
            assert!(!set.contains_domain("bucher.example"));
            assert!(!set.contains_domain("laden.bücher.example"), "exact only");
        }

        let mut set = DomainSet::new();
        assert_eq!(set.insert("bücher.example"), Ok(true));
        assert_eq!(set.insert("BÜCHER.EXAMPLE."), Ok(false));
        assert_eq!(set.insert("xn--bcher-kva.example"), Ok(false));
        assert_eq!(set.len(), 1);

        // Non-transitional: ß is its own letter, not "ss".
        let strasse = DomainSet::parse_list("straße.example").unwrap();
        assert_eq!(strasse.entries(), ["xn--strae-oqa.example"]);
        assert!(!strasse.contains_address("a@STRASSE.example"));
        assert!(strasse.contains_address("a@xn--strae-oqa.example"));
    }

    #[test]
    fn internationalised_parent_entries() {
        for entry in [
            ".bücher.example",
            ".BÜCHER.example",
            ".xn--bcher-kva.example",
        ] {
            let set = DomainSet::parse_list(entry).unwrap();
            assert_eq!(set.entries(), [".xn--bcher-kva.example"], "{entry}");
            for probe in [
                "laden.bücher.example",
                "Laden.BÜCHER.example.",
                "laden.xn--bcher-kva.example",
                "straße.bücher.example",
                "xn--strae-oqa.xn--bcher-kva.example",
            ] {
                assert!(set.contains_domain(probe), "{entry}: {probe}");
            }
            assert!(!set.contains_domain("bücher.example"), "{entry}");
            assert!(!set.contains_domain("xn--bcher-kva.example"), "{entry}");
            assert!(!set.contains_domain("laden-bücher.example"), "{entry}");
        }
    }

    #[test]
    fn names_without_an_a_label_are_refused_and_never_match() {
        let set = DomainSet::parse_list(".example, example").unwrap();
        for bad in [
            "xn--abc-.example",       // Punycode of plain ASCII
            "xn--bcher-kva-.example", // broken Punycode
            "\u{308}a.example",       // starts with a combining mark
            "a\u{200D}b.example",     // joiner out of context
            "\u{5D0}a.example",       // mixes right-to-left and left-to-right
            "bücher\u{FFFD}.example", // disallowed code point
        ] {
            let Err(DomainError::Invalid { why, .. }) = DomainSet::new().insert(bad) else {
                panic!("{bad:?} accepted");
            };
            assert!(why.contains("IDNA"), "{bad:?}: {why}");
            assert!(DomainSet::parse_list(&format!("ok.example {bad}")).is_err());
            assert!(!set.contains_domain(bad), "{bad:?}");
            assert!(!set.contains_address(&format!("kunde@{bad}")), "{bad:?}");
        }
        // Mapped to a character that is not allowed: refused by the
        // character rule, after the conversion.
        assert!(matches!(
            DomainSet::new().insert("a\u{FF20}b.example"), // full-width @
            Err(DomainError::Invalid { .. })
        ));
        assert_eq!(DomainSet::new().insert("\u{3002}"), Err(DomainError::Empty));
    }

    proptest! {
        #[test]
        fn exact_entries_match_themselves_only(
            labels in proptest::collection::vec("[a-z0-9-]{1,10}", 1..4),
            sub in "[a-z0-9]{1,10}",
            upper in any::<bool>(),
            dot in any::<bool>(),
        ) {
            // An "xn--" label must be valid Punycode.
            prop_assume!(!labels.iter().any(|l| l.starts_with("xn--")));
            let domain = labels.join(".");
            let set = DomainSet::parse_list(&domain).unwrap();
            let mut probe = if upper { domain.to_ascii_uppercase() } else { domain.clone() };
            if dot { probe.push('.'); }
            prop_assert!(set.contains_domain(&probe));
            let subdomain = format!("{sub}.{domain}");
            prop_assert!(!set.contains_domain(&subdomain));
        }

        #[test]
        fn parent_entries_match_every_subdomain(
            labels in proptest::collection::vec("[a-z0-9-]{1,10}", 1..4),
            subs in proptest::collection::vec("[a-zA-Z0-9]{1,10}", 1..4),
        ) {
            prop_assume!(!labels.iter().any(|l| l.starts_with("xn--")));
            let domain = labels.join(".");
            let set = DomainSet::parse_list(&format!(".{domain}")).unwrap();
            prop_assert!(!set.contains_domain(&domain));
            let subdomain = format!("{}.{domain}", subs.join("."));
            prop_assert!(set.contains_domain(&subdomain));
            let lookalike = format!("{}{domain}", subs.join("."));
            prop_assert!(!set.contains_domain(&lookalike));
        }

        #[test]
        fn lookups_never_panic(entries in ".{0,40}", probe in ".{0,40}") {
            if let Ok(set) = DomainSet::parse_list(&entries) {
                let _ = set.contains_domain(&probe);
                let _ = set.contains_address(&probe);
            }
        }
    }
}
