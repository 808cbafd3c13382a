//! The destination maps of upstream's reportd: the operator's rules that
//! rewrite, add or drop the destinations a TLSRPT record asks for. The same
//! files work with upstream and with us.
//!
//! Three maps, read in this order:
//! 1. `tlsrpt_record_map` matches the report domain and acts on the whole
//!    list of destinations of the record;
//! 2. `mail_destination_map` then matches each `mailto:` destination by the
//!    domain of its address,
//! 3. `http_upload_map` each `https:` destination by the host of its URL.
//!
//! `directory:/path` destinations (only a map can make them) skip steps 2 and 3.
//!
//! Each line is `MATCH ACTION [PARAMS]`; empty lines and lines starting with
//! `#` are ignored; the first matching line of a map wins. MATCH is
//! `domain:PATTERN` (the default without a prefix) or `regexp:PATTERN`:
//! - a domain pattern is `.` (everything), `.suffix` (subdomains of suffix,
//!   not suffix itself) or an exact domain;
//! - a regexp matches the whole destination (in the record map: the report
//!   domain) from its start, as Python's `re.match`.
//!
//! Actions: `ACCEPT`, `DISCARD`, `REPLACE dest...`, `APPEND dest...`,
//! `REGEXP pattern replacement` (applied to every destination, all matches
//! replaced, Python `\1` references accepted).
//!
//! Regexps are written for Python's `re`, as upstream reads them, and run
//! on Rust's `regex`. The common syntax is the same; the differences:
//! - Python's end-of-string `\Z` is Rust's `\z`; it is translated.
//! - Rust has no backreferences (`\1`, `(?P=name)`) and no look-around in
//!   patterns, and refuses some forms Python reads as literals (a lone `{`).
//!   Such patterns are refused when the map is loaded, with Rust's message.
//! - In replacements Python writes `\1`, `\g<1>`, `\g<name>`; Rust writes
//!   `${1}`. The Python form is translated, with Python's escapes (`\n`,
//!   `\\`, octal); a `$` is literal as in Python.
//! - `$` in a pattern: Python also matches before a final newline; Rust only
//!   at the end. Destinations never contain newlines.
//! - An empty match right after a non-empty one is replaced by Python but
//!   not by Rust (`x*` -> `-` on `abxd`: `-a-b--d-` against `-a-b-d-`); only
//!   REGEXP patterns that can match nothing are affected.
//!
//! Differences from upstream's `mapping.py`:
//! - Domain patterns and domains compare case-insensitively, and one
//!   trailing dot is ignored on the pattern too (upstream only strips it from
//!   the domain, so `example.com.` never matched anything).
//! - Regexps and REGEXP replacements are checked when the map is loaded;
//!   upstream fails only when a destination matches, in the middle of a run.
//! - A destination that is neither `mailto:`, `https:` nor `directory:` after
//!   the record map (or after the mail/http maps) is dropped on its own and
//!   shown in the trace; upstream drops all destinations of the report in the
//!   first case and fails at delivery in the second.
//! - The mail map matches the part after the address's last `@`; upstream
//!   parses the address as a URL authority, which a `/` in the local part
//!   cuts short.
//! - The result lists each destination once.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use regex::Regex;
use thiserror::Error;

use crate::pyregex;
use crate::record::{percent_decode, url_host, Destination};

/// Which of the three maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapKind {
    Record,
    Mail,
    Http,
}

impl MapKind {
    /// The reportd option that names the map's file.
    pub fn option_name(self) -> &'static str {
        match self {
            MapKind::Record => "tlsrpt_record_map",
            MapKind::Mail => "mail_destination_map",
            MapKind::Http => "http_upload_map",
        }
    }
}

impl fmt::Display for MapKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.option_name())
    }
}

/// A line of a map that cannot be used; the reportd must not start with it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{map} line {line}: {reason}")]
pub struct MapParseError {
    /// The file name, or the option name for maps given as text.
    pub map: String,
    pub line: usize,
    pub reason: String,
}

#[derive(Debug, Error)]
pub enum MapLoadError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Parse(#[from] MapParseError),
}

/// The three maps, ready to apply.
#[derive(Debug, Clone, Default)]
pub struct DestinationMaps {
    record: Vec<MapLine>,
    mail: Vec<MapLine>,
    http: Vec<MapLine>,
}

#[derive(Debug, Clone)]
struct MapLine {
    line: usize,
    matcher: Matcher,
    action: Action,
}

#[derive(Debug, Clone)]
enum Matcher {
    Domain(DomainPattern),
    Regexp(Regex),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum DomainPattern {
    Any,
    /// With its leading dot.
    Suffix(String),
    Exact(String),
}

#[derive(Debug, Clone)]
enum Action {
    Accept,
    Discard,
    Replace(Vec<String>),
    Append(Vec<String>),
    /// The replacement in Rust's `$` syntax.
    Rewrite {
        regex: Regex,
        replacement: String,
    },
}

/// How the maps turned a record's destinations into the final ones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MappingTrace {
    /// Where the report goes, each once.
    pub destinations: Vec<String>,
    /// Every map line that matched, in order.
    pub steps: Vec<MapStep>,
    /// Destinations a map produced that cannot be delivered, or repeated.
    pub dropped: Vec<DroppedDestination>,
}

/// One matching map line and what it did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapStep {
    pub map: MapKind,
    pub line: usize,
    /// The report domain (record map) or the destination (mail, http map).
    pub matched: String,
    pub before: Vec<String>,
    pub after: Vec<String>,
}

impl fmt::Display for MapStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} line {} matched {}: {:?} -> {:?}",
            self.map, self.line, self.matched, self.before, self.after
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DroppedDestination {
    pub destination: String,
    pub reason: &'static str,
}

impl DestinationMaps {
    /// Maps from their texts; an empty text is an empty map. Errors name the
    /// map by its option name.
    pub fn from_texts(
        record_map: &str,
        mail_map: &str,
        http_map: &str,
    ) -> Result<DestinationMaps, MapParseError> {
        Ok(DestinationMaps {
            record: parse_map(record_map, MapKind::Record.option_name())?,
            mail: parse_map(mail_map, MapKind::Mail.option_name())?,
            http: parse_map(http_map, MapKind::Http.option_name())?,
        })
    }

    /// Maps from files; `None` (upstream: the option unset or empty) is an
    /// empty map. Errors name the file.
    pub fn from_files(
        record_map: Option<&Path>,
        mail_map: Option<&Path>,
        http_map: Option<&Path>,
    ) -> Result<DestinationMaps, MapLoadError> {
        let read = |path: Option<&Path>| -> Result<Vec<MapLine>, MapLoadError> {
            let Some(path) = path else {
                return Ok(Vec::new());
            };
            let text = std::fs::read_to_string(path).map_err(|source| MapLoadError::Read {
                path: path.to_path_buf(),
                source,
            })?;
            Ok(parse_map(&text, &path.display().to_string())?)
        };
        Ok(DestinationMaps {
            record: read(record_map)?,
            mail: read(mail_map)?,
            http: read(http_map)?,
        })
    }

    /// The final destinations of a report for `report_domain`.
    pub fn map_destinations(
        &self,
        report_domain: &str,
        destinations: &[Destination],
    ) -> Vec<String> {
        self.explain(report_domain, destinations).destinations
    }

    /// [`map_destinations`](Self::map_destinations) with the lines that
    /// matched and what was dropped (for the log and `tlsrptctl maptest`).
    pub fn explain(&self, report_domain: &str, destinations: &[Destination]) -> MappingTrace {
        let mut trace = MappingTrace::default();
        let mut current: Vec<String> = destinations
            .iter()
            .map(|d| d.as_str().to_string())
            .collect();
        if let Some(line) = first_match(&self.record, report_domain, Some(report_domain)) {
            let after = line.action.apply(&current);
            trace.steps.push(MapStep {
                map: MapKind::Record,
                line: line.line,
                matched: report_domain.to_string(),
                before: current,
                after: after.clone(),
            });
            current = after;
        }
        let mut seen: Vec<String> = Vec::with_capacity(current.len());
        for destination in current {
            if seen.contains(&destination) {
                trace.drop(destination, "listed before");
                continue;
            }
            seen.push(destination.clone());
            let (kind, lines, domain) = if destination.starts_with("directory:") {
                trace.keep(destination);
                continue;
            } else if let Some(rest) = destination.strip_prefix("https:") {
                (MapKind::Http, &self.http, url_host(rest))
            } else if let Some(rest) = destination.strip_prefix("mailto:") {
                (MapKind::Mail, &self.mail, Some(mail_domain(rest)))
            } else {
                trace.drop(
                    destination,
                    "not a mailto:, https: or directory: destination",
                );
                continue;
            };
            let Some(line) = first_match(lines, &destination, domain.as_deref()) else {
                trace.keep(destination);
                continue;
            };
            let after = line.action.apply(std::slice::from_ref(&destination));
            trace.steps.push(MapStep {
                map: kind,
                line: line.line,
                matched: destination.clone(),
                before: vec![destination],
                after: after.clone(),
            });
            for mapped in after {
                if ["mailto:", "https:", "directory:"]
                    .iter()
                    .any(|scheme| mapped.starts_with(scheme))
                {
                    trace.keep(mapped);
                } else {
                    trace.drop(mapped, "not a mailto:, https: or directory: destination");
                }
            }
        }
        trace
    }
}

impl MappingTrace {
    fn keep(&mut self, destination: String) {
        if self.destinations.contains(&destination) {
            self.drop(destination, "listed before");
        } else {
            self.destinations.push(destination);
        }
    }

    fn drop(&mut self, destination: String, reason: &'static str) {
        self.dropped.push(DroppedDestination {
            destination,
            reason,
        });
    }
}

/// The domain a mail map matches: after the last `@` of the address (the
/// whole address without one, as upstream's URL parsing gives). The address
/// ends where a URI's path does, at `?` (header fields) or `#`.
fn mail_domain(address: &str) -> String {
    let address = address.split(['?', '#']).next().unwrap_or_default();
    let domain = address
        .rsplit_once('@')
        .map_or(address, |(_, domain)| domain);
    percent_decode(domain).unwrap_or_else(|_| domain.to_string())
}

fn first_match<'a>(
    lines: &'a [MapLine],
    subject: &str,
    domain: Option<&str>,
) -> Option<&'a MapLine> {
    lines.iter().find(|line| match &line.matcher {
        Matcher::Domain(pattern) => domain.is_some_and(|d| pattern.matches(d)),
        Matcher::Regexp(regex) => pyregex::matches_at_start(regex, subject),
    })
}

impl DomainPattern {
    fn parse(pattern: &str) -> DomainPattern {
        let pattern = pattern.to_lowercase();
        if pattern == "." {
            return DomainPattern::Any;
        }
        let pattern = pattern.strip_suffix('.').unwrap_or(&pattern);
        if pattern.starts_with('.') {
            DomainPattern::Suffix(pattern.to_string())
        } else {
            DomainPattern::Exact(pattern.to_string())
        }
    }

    fn matches(&self, domain: &str) -> bool {
        let domain = domain.to_lowercase();
        let domain = domain.strip_suffix('.').unwrap_or(&domain);
        match self {
            DomainPattern::Any => true,
            DomainPattern::Suffix(suffix) => domain.ends_with(suffix.as_str()),
            DomainPattern::Exact(exact) => domain == exact,
        }
    }
}

impl Action {
    fn apply(&self, destinations: &[String]) -> Vec<String> {
        match self {
            Action::Accept => destinations.to_vec(),
            Action::Discard => Vec::new(),
            Action::Replace(replacements) => replacements.clone(),
            Action::Append(additions) => destinations.iter().chain(additions).cloned().collect(),
            Action::Rewrite { regex, replacement } => destinations
                .iter()
                .map(|d| regex.replace_all(d, replacement.as_str()).into_owned())
                .collect(),
        }
    }
}

/// Python's `str.split()`/`strip()` whitespace: Rust's plus the four ASCII
/// separators U+001C..U+001F.
fn is_python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// The first whitespace-separated token and the rest, trimmed.
fn split_token(text: &str) -> Option<(&str, &str)> {
    let text = text.trim_start_matches(is_python_space);
    if text.is_empty() {
        return None;
    }
    let end = text.find(is_python_space).unwrap_or(text.len());
    Some((
        &text[..end],
        text[end..].trim_start_matches(is_python_space),
    ))
}

fn parse_map(text: &str, name: &str) -> Result<Vec<MapLine>, MapParseError> {
    let mut lines = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let error = |reason: String| MapParseError {
            map: name.to_string(),
            line: index + 1,
            reason,
        };
        let line = line.trim_matches(is_python_space);
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (matcher, action) = parse_line(line).map_err(error)?;
        lines.push(MapLine {
            line: index + 1,
            matcher,
            action,
        });
    }
    Ok(lines)
}

fn parse_line(line: &str) -> Result<(Matcher, Action), String> {
    let (match_part, rest) = split_token(line).expect("the line is not empty");
    let Some((action, params)) = split_token(rest) else {
        return Err("missing action".into());
    };
    let (match_type, pattern) = match_part.split_once(':').unwrap_or(("domain", match_part));
    let matcher = match match_type {
        "domain" => Matcher::Domain(DomainPattern::parse(pattern)),
        "regexp" => Matcher::Regexp(pyregex::compile(pattern)?),
        other => {
            return Err(format!(
                "unsupported match type {other:?} (domain or regexp)"
            ))
        }
    };
    let params: Vec<String> = params
        .split(is_python_space)
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect();
    let action = match action {
        "ACCEPT" | "DISCARD" if !params.is_empty() => {
            return Err(format!("action {action} takes no parameters"));
        }
        "ACCEPT" => Action::Accept,
        "DISCARD" => Action::Discard,
        "REPLACE" | "APPEND" if params.is_empty() => {
            return Err(format!("action {action} needs at least one destination"));
        }
        "REPLACE" => Action::Replace(params),
        "APPEND" => Action::Append(params),
        "REGEXP" => {
            let [pattern, template] = params.as_slice() else {
                return Err(format!(
                    "action REGEXP needs 2 parameters (pattern, replacement) but got {}",
                    params.len()
                ));
            };
            let regex = pyregex::compile(pattern)?;
            let replacement = pyregex::replacement(template, &regex)?;
            Action::Rewrite { regex, replacement }
        }
        other => return Err(format!("unknown action {other:?}")),
    };
    Ok((matcher, action))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::parse_record;

    fn destinations(record: &str) -> Vec<Destination> {
        parse_record(record).unwrap().destinations
    }

    fn mapped(maps: &DestinationMaps, domain: &str, record: &str) -> Vec<String> {
        maps.map_destinations(domain, &destinations(record))
    }

    #[test]
    fn domain_patterns_exact_suffix_catch_all_case_and_trailing_dots() {
        let maps = DestinationMaps::from_texts(
            "Example.COM. REPLACE mailto:exact@r.example\n\
             .sub.example REPLACE mailto:suffix@r.example\n\
             . DISCARD\n",
            "",
            "",
        )
        .unwrap();
        let record = "v=TLSRPTv1;rua=mailto:a@x.example";
        assert_eq!(
            mapped(&maps, "example.com", record),
            ["mailto:exact@r.example"]
        );
        assert_eq!(
            mapped(&maps, "example.com.", record),
            ["mailto:exact@r.example"]
        );
        assert_eq!(
            mapped(&maps, "a.sub.example", record),
            ["mailto:suffix@r.example"]
        );
        assert!(
            mapped(&maps, "sub.example", record).is_empty(),
            ".suffix is not suffix itself"
        );
        assert!(mapped(&maps, "other.example", record).is_empty());
    }

    #[test]
    fn mail_and_http_maps_match_address_domain_and_url_host() {
        let maps = DestinationMaps::from_texts(
            "",
            "# comment\n\n.x.example REPLACE mailto:relay@y.example directory:/var/tlsrpt\nregexp:mailto:keep@ ACCEPT\n",
            "r.example APPEND mailto:copy@y.example\nregexp:https://drop\\. DISCARD\n",
        )
        .unwrap();
        let trace = maps.explain(
            "d.example",
            &destinations(
                "v=TLSRPTv1;rua=mailto:a@m.X.example,https://R.example:443/p,https://drop.example/,mailto:keep@z.example",
            ),
        );
        assert_eq!(
            trace.destinations,
            [
                "mailto:relay@y.example",
                "directory:/var/tlsrpt",
                "https://R.example:443/p",
                "mailto:copy@y.example",
                "mailto:keep@z.example"
            ]
        );
        let lines: Vec<(MapKind, usize)> = trace.steps.iter().map(|s| (s.map, s.line)).collect();
        assert_eq!(
            lines,
            [
                (MapKind::Mail, 3),
                (MapKind::Http, 1),
                (MapKind::Http, 2),
                (MapKind::Mail, 4)
            ]
        );
        assert_eq!(
            trace.steps[0].to_string(),
            "mail_destination_map line 3 matched mailto:a@m.X.example: [\"mailto:a@m.X.example\"] -> [\"mailto:relay@y.example\", \"directory:/var/tlsrpt\"]"
        );
    }

    #[test]
    fn record_map_actions_act_on_the_whole_list() {
        let maps = DestinationMaps::from_texts(
            "a.example APPEND https://extra.example/up\n\
             b.example REGEXP @(\\w+)\\.example @\\1.test\n\
             regexp:c\\. REPLACE mailto:c@r.example\n\
             d.example ACCEPT\n",
            "",
            "",
        )
        .unwrap();
        let record = "v=TLSRPTv1;rua=mailto:u@one.example,mailto:v@two.example";
        assert_eq!(
            mapped(&maps, "a.example", record),
            [
                "mailto:u@one.example",
                "mailto:v@two.example",
                "https://extra.example/up"
            ]
        );
        assert_eq!(
            mapped(&maps, "b.example", record),
            ["mailto:u@one.test", "mailto:v@two.test"]
        );
        assert_eq!(mapped(&maps, "c.example", record), ["mailto:c@r.example"]);
        assert_eq!(
            mapped(&maps, "d.example", record),
            ["mailto:u@one.example", "mailto:v@two.example"]
        );
    }

    #[test]
    fn undeliverable_and_repeated_results_are_dropped_one_by_one() {
        let maps = DestinationMaps::from_texts(
            ". APPEND ftp://x.example/ mailto:u@one.example",
            "one.example REPLACE http://plain.example/ mailto:w@w.example mailto:w@w.example",
            "",
        )
        .unwrap();
        let trace = maps.explain(
            "d.example",
            &destinations("v=TLSRPTv1;rua=mailto:u@one.example"),
        );
        assert_eq!(trace.destinations, ["mailto:w@w.example"]);
        let dropped: Vec<&str> = trace
            .dropped
            .iter()
            .map(|d| d.destination.as_str())
            .collect();
        assert_eq!(
            dropped,
            [
                "http://plain.example/",
                "mailto:w@w.example",
                "ftp://x.example/",
                "mailto:u@one.example"
            ]
        );
    }

    #[test]
    fn parse_errors_name_the_map_and_line() {
        for (text, line, reason) in [
            ("\n\nexample.com", 3, "missing action"),
            ("x ACCEPT now", 1, "takes no parameters"),
            ("# c\nx DISCARD y", 2, "takes no parameters"),
            ("x REPLACE", 1, "at least one"),
            ("x APPEND", 1, "at least one"),
            ("x REGEXP a", 1, "2 parameters"),
            ("x REGEXP a b c", 1, "2 parameters"),
            ("x REGEXP (a \\1", 1, "invalid regular expression"),
            ("x REGEXP (a) \\2", 1, "invalid group reference 2"),
            ("x FORWARD", 1, "unknown action"),
            ("x accept", 1, "unknown action"),
            ("ip:1.2.3.4 ACCEPT", 1, "unsupported match type"),
            ("regexp:(x ACCEPT", 1, "invalid regular expression"),
        ] {
            let err = DestinationMaps::from_texts("", text, "").unwrap_err();
            assert_eq!(
                (err.map.as_str(), err.line),
                ("mail_destination_map", line),
                "{text}"
            );
            assert!(err.reason.contains(reason), "{text}: {err}");
        }
    }

    #[test]
    fn files_are_read_and_errors_name_the_file() {
        let dir = std::env::temp_dir().join(format!("tlsrpt-report-maps-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("record.map");
        let bad = dir.join("http.map");
        std::fs::write(&good, ". REPLACE directory:/srv/reports\n").unwrap();
        std::fs::write(&bad, "ok ACCEPT\nbad\n").unwrap();
        let maps = DestinationMaps::from_files(Some(&good), None, None).unwrap();
        assert_eq!(
            mapped(&maps, "x.example", "v=TLSRPTv1;rua=mailto:a@b.example"),
            ["directory:/srv/reports"]
        );
        let err = DestinationMaps::from_files(None, None, Some(&bad)).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("{} line 2: missing action", bad.display())
        );
        let err = DestinationMaps::from_files(Some(&dir.join("missing")), None, None).unwrap_err();
        assert!(matches!(err, MapLoadError::Read { .. }), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
