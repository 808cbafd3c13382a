//! Sets of mail domains: our own sender domains, and the mandatory-TLS
//! recipient domains.

use std::collections::HashSet;

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
/// Comparison ignores ASCII case and one trailing dot (`Example.COM.` is
/// `example.com`). Internationalised names are compared as written: Postfix
/// shows addresses as they were submitted, and IDNA conversion is not needed
/// for the configured domains of one organisation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DomainSet {
    exact: HashSet<String>,
    /// Parent entries, stored without their leading dot.
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

    /// Add one entry, `example.com` or `.example.com`. Returns whether it
    /// was new.
    pub fn insert(&mut self, entry: &str) -> Result<bool, DomainError> {
        let trimmed = entry.trim();
        let (is_parent, name) = match trimmed.strip_prefix('.') {
            Some(rest) => (true, rest),
            None => (false, trimmed),
        };
        let name = normalize(name).ok_or(DomainError::Empty)?;
        if let Some(why) = invalid_reason(&name) {
            return Err(DomainError::Invalid {
                entry: entry.to_owned(),
                why,
            });
        }
        Ok(if is_parent {
            self.parents.insert(name)
        } else {
            self.exact.insert(name)
        })
    }

    /// Whether `domain` is in the set: listed exactly, or below a listed
    /// parent.
    pub fn contains_domain(&self, domain: &str) -> bool {
        let Some(domain) = normalize(domain) else {
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

    /// The entries, sorted, parents with their leading dot: for display
    /// and for writing the set back.
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

/// Lower case, without one trailing dot; `None` when nothing is left.
fn normalize(domain: &str) -> Option<String> {
    let domain = domain.strip_suffix('.').unwrap_or(domain);
    (!domain.is_empty()).then(|| domain.to_ascii_lowercase())
}

/// Labels of letters (any script), digits, `-` and `_`, none empty.
fn invalid_reason(name: &str) -> Option<&'static str> {
    if name.split('.').any(str::is_empty) {
        return Some("empty label");
    }
    if !name
        .chars()
        .all(|c| c == '.' || c == '-' || c == '_' || c.is_alphanumeric())
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

    proptest! {
        #[test]
        fn exact_entries_match_themselves_only(
            labels in proptest::collection::vec("[a-z0-9-]{1,10}", 1..4),
            sub in "[a-z0-9]{1,10}",
            upper in any::<bool>(),
            dot in any::<bool>(),
        ) {
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
