//! Differential test of the destination maps and record parsing against the
//! upstream reporter 0.6.0 (`tlsrpt_reporter.mapping` and
//! `utility.parse_tlsrpt_record`, run by the oracle venv's Python): the same
//! map files, report domains and records give the same destinations, and the
//! same map lines are refused. The documented differences are checked
//! against upstream too, so the documentation cannot drift.
//!
//! A missing oracle (`/work/main/.venv`, `scripts/setup-oracle`) fails the
//! test; it never skips.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::{json, Value};
use tlsrpt_report::maps::DestinationMaps;
use tlsrpt_report::record::parse_record;

/// Reads `{"map_sets": [{"maps": [record, mail, http], "cases": [[domain,
/// record], ...]}]}` and prints, per map set, `{"load_error": message}` or
/// `{"results": [{"ok": destinations} | {"error": "Exception: message"}]}`,
/// doing what upstream's `render_report` does with a record.
const ORACLE: &str = r#"
import io, json, logging, sys
from tlsrpt_reporter import mapping, utility
log = logging.getLogger("oracle")
out = []
for map_set in json.load(sys.stdin)["map_sets"]:
    maps = mapping.DestinationMap()
    try:
        maps.read_from_ios(*(io.StringIO(text) for text in map_set["maps"]))
    except Exception as e:
        out.append({"load_error": f"{type(e).__name__}: {e}"})
        continue
    results = []
    for domain, record in map_set["cases"]:
        try:
            ruas = utility.parse_tlsrpt_record(record)
            results.append({"ok": list(maps.map_destination(domain, ruas, log))})
        except Exception as e:
            results.append({"error": f"{type(e).__name__}: {e}"})
    out.append({"results": results})
json.dump(out, sys.stdout)
"#;

use mailtls_test_support::venv_python as python;

/// Upstream's answer for each map set.
fn upstream(map_sets: &Value) -> Vec<Value> {
    let mut child = Command::new(python())
        .args(["-c", ORACLE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the oracle");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(json!({ "map_sets": map_sets }).to_string().as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "oracle failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("oracle output is JSON")
}

/// Ours for one case: the destinations, or the error's text.
fn ours(maps: &DestinationMaps, domain: &str, record: &str) -> Result<Vec<String>, String> {
    let record = parse_record(record).map_err(|e| e.to_string())?;
    Ok(maps.map_destinations(domain, &record.destinations))
}

fn maps_of(map_set: &Value) -> Result<DestinationMaps, String> {
    let text = |i: usize| map_set["maps"][i].as_str().unwrap().to_string();
    DestinationMaps::from_texts(&text(0), &text(1), &text(2)).map_err(|e| e.to_string())
}

/// Upstream may list a destination twice; we list it once.
fn first_occurrences(list: &Value) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for item in list.as_array().unwrap() {
        let item = item.as_str().unwrap().to_string();
        if !out.contains(&item) {
            out.push(item);
        }
    }
    out
}

const RECORD_MAP: &str = "\
# tlsrpt_record_map: matches the report domain
example.com REPLACE mailto:reports@collector.example
.sub.example APPEND https://collector.example/upload
regexp:disc DISCARD
domain:rw.example REGEXP @([a-z]+)\\.example @\\1.rewritten.example
acc.example ACCEPT
dir.example REPLACE directory:/var/lib/tlsrpt/reports mailto:keep@keep.example
  both.example   APPEND   mailto:extra@y.example   https://y.example/p  
named.example REGEXP ^(?P<scheme>[a-z]+):(?P<rest>.*)$ \\g<scheme>:\\g<rest>#named
dup.example APPEND mailto:a@m.x.example
";

const MAIL_MAP: &str = "\
.x.example REPLACE mailto:relay@relay.example
keep.example ACCEPT
regexp:mailto:drop DISCARD
y.example REGEXP ^mailto:(.*)@y\\.example$ mailto:\\1+tlsrpt@y.example
\t
# collector.example is left alone
";

const HTTP_MAP: &str = "\
collector.example REPLACE https://collector.example/v2
.cdn.example DISCARD
regexp:https://[^/]+/old REGEXP /old/ /new/
. ACCEPT
";

const DOMAINS: &[&str] = &[
    "example.com",
    "example.com.",
    "a.sub.example",
    "sub.example",
    "discard.example",
    "rw.example",
    "acc.example",
    "dir.example",
    "both.example",
    "named.example",
    "dup.example",
    "other.example",
];

const RECORDS: &[&str] = &[
    "v=TLSRPTv1;rua=mailto:a@m.x.example",
    "v=TLSRPTv1; rua=mailto:tls@keep.example,https://collector.example/up",
    "v=TLSRPTv1;rua=https://a.cdn.example/r,https://h.example/old/x",
    "v=TLSRPTv1;rua=mailto:drop@z.example,mailto:u@y.example",
    "v=TLSRPTv1;rua=mailto:u@rw.example,https://rw.example/x",
    "v=TLSRPTv1;rua=mailto:tlsrpt@example.com;ext=1",
    "v=TLSRPTv1;rua=https://User@Cdn.Example:8443/p,https://s.cdn.example./x",
];

fn cases() -> Vec<Value> {
    let mut cases = Vec::new();
    for domain in DOMAINS {
        for record in RECORDS {
            cases.push(json!([domain, record]));
        }
    }
    cases
}

#[test]
fn same_destinations_as_upstream_for_the_corpus() {
    let map_sets = json!([
        {"maps": [RECORD_MAP, MAIL_MAP, HTTP_MAP], "cases": cases()},
        {"maps": ["", "", ""], "cases": cases()},
        {"maps": [". DISCARD", MAIL_MAP, HTTP_MAP], "cases": cases()},
        {"maps": ["", ". REPLACE mailto:all@one.example", "regexp:. REPLACE https://one.example/"], "cases": cases()},
    ]);
    let answers = upstream(&map_sets);
    let mut compared = 0;
    for (map_set, answer) in map_sets.as_array().unwrap().iter().zip(&answers) {
        let maps = maps_of(map_set).unwrap();
        let results = answer["results"]
            .as_array()
            .unwrap_or_else(|| panic!("{answer}"));
        for (case, result) in map_set["cases"].as_array().unwrap().iter().zip(results) {
            let (domain, record) = (case[0].as_str().unwrap(), case[1].as_str().unwrap());
            let expected = result.get("ok").map(first_occurrences).unwrap_or_else(|| {
                panic!("upstream failed on {case} (choose another case): {result}")
            });
            assert_eq!(
                ours(&maps, domain, record).as_ref(),
                Ok(&expected),
                "maps {}, domain {domain:?}, record {record:?}",
                map_set["maps"]
            );
            compared += 1;
        }
    }
    assert_eq!(compared, 4 * DOMAINS.len() * RECORDS.len());
}

#[test]
fn same_map_lines_refused_as_upstream() {
    let bad_maps = [
        "x ACCEPT extra",
        "x DISCARD y",
        "x REPLACE",
        "x APPEND",
        "x REGEXP a",
        "x REGEXP a b c",
        "# comment\n\n  onlymatch  ",
        "ok ACCEPT\nx FORWARD y",
        "x accept",
        "ip:1.2.3.4 ACCEPT",
        "regexp:(x ACCEPT",
    ];
    let good_maps = ["", "# only a comment", "x ACCEPT\n\n#\nregexp:.* DISCARD"];
    let map_sets: Vec<Value> = bad_maps
        .iter()
        .chain(&good_maps)
        .map(|text| json!({"maps": ["", text, ""], "cases": []}))
        .collect();
    let answers = upstream(&Value::from(map_sets.clone()));
    for (map_set, answer) in map_sets.iter().zip(&answers) {
        let text = &map_set["maps"][1];
        match (maps_of(map_set), answer.get("load_error")) {
            (Ok(_), None) => {}
            (Err(ours), Some(theirs)) => {
                // Upstream names the line except for regexps that fail to compile.
                let theirs = theirs.as_str().unwrap();
                if let Some(at) = theirs.find(" line ") {
                    let line: String = theirs[at + 6..]
                        .chars()
                        .take_while(char::is_ascii_digit)
                        .collect();
                    assert!(
                        ours.contains(&format!(" line {line}: ")),
                        "{text}: ours {ours:?}, upstream {theirs:?}"
                    );
                }
            }
            (ours, theirs) => panic!("{text}: ours {ours:?}, upstream {theirs:?}"),
        }
    }
    assert!(answers[..bad_maps.len()]
        .iter()
        .all(|a| a.get("load_error").is_some()));
}

/// Each deliberate difference: what upstream does (checked) and what we do.
#[test]
fn documented_differences_from_upstream() {
    struct Difference {
        what: &'static str,
        maps: [&'static str; 3],
        domain: &'static str,
        record: &'static str,
        upstream: Value,
        ours: Result<Vec<&'static str>, ()>,
    }
    let differences = [
        Difference {
            what: "space after a comma in rua (RFC 8460 grammar allows it)",
            maps: ["", "", ""],
            domain: "d.example",
            record: "v=TLSRPTv1;rua=mailto:a@x.example, mailto:b@x.example",
            upstream: json!({"error": "InvalidDestinationScheme:  mailto:b@x.example"}),
            ours: Ok(vec!["mailto:a@x.example", "mailto:b@x.example"]),
        },
        Difference {
            what: "one unsupported URI costs only that URI",
            maps: ["", "", ""],
            domain: "d.example",
            record: "v=TLSRPTv1;rua=mailto:a@x.example,http://x.example/",
            upstream: json!({"error": "InvalidDestinationScheme: http://x.example/"}),
            ours: Ok(vec!["mailto:a@x.example"]),
        },
        Difference {
            what: "rua need not be the first field",
            maps: ["", "", ""],
            domain: "d.example",
            record: "v=TLSRPTv1;ext=1;rua=mailto:a@x.example",
            upstream: json!({"error": "MalformedTlsrptRecordException: Malformed TLSRPT record: No rua found"}),
            ours: Ok(vec!["mailto:a@x.example"]),
        },
        Difference {
            what: "mailto addresses are percent-decoded",
            maps: ["", "", ""],
            domain: "d.example",
            record: "v=TLSRPTv1;rua=mailto:a%2Bb@x.example",
            upstream: json!({"ok": ["mailto:a%2Bb@x.example"]}),
            ours: Ok(vec!["mailto:a+b@x.example"]),
        },
        Difference {
            what: "mailto header fields are dropped",
            maps: ["", "", ""],
            domain: "d.example",
            record: "v=TLSRPTv1;rua=mailto:a@x.example?subject=hi",
            upstream: json!({"ok": ["mailto:a@x.example?subject=hi"]}),
            ours: Ok(vec!["mailto:a@x.example"]),
        },
        Difference {
            what: "domain patterns are case-insensitive",
            maps: ["Example.COM DISCARD", "", ""],
            domain: "example.com",
            record: "v=TLSRPTv1;rua=mailto:a@x.example",
            upstream: json!({"ok": ["mailto:a@x.example"]}),
            ours: Ok(vec![]),
        },
        Difference {
            what: "a trailing dot on a domain pattern is ignored",
            maps: ["", "x.example. DISCARD", ""],
            domain: "d.example",
            record: "v=TLSRPTv1;rua=mailto:a@x.example",
            upstream: json!({"ok": ["mailto:a@x.example"]}),
            ours: Ok(vec![]),
        },
        Difference {
            what: "an undeliverable map result is dropped alone",
            maps: [". APPEND ftp://f.example/", "", ""],
            domain: "d.example",
            record: "v=TLSRPTv1;rua=mailto:a@x.example",
            upstream: json!({"error": "UnsupportedDestinationScheme: ftp://f.example/"}),
            ours: Ok(vec!["mailto:a@x.example"]),
        },
        Difference {
            what: "a record without a usable rua is an error value",
            maps: ["", "", ""],
            domain: "d.example",
            record: "v=TLSRPTv1;rua=",
            upstream: json!({"error": "InvalidDestinationScheme: "}),
            ours: Err(()),
        },
    ];
    let map_sets: Vec<Value> = differences
        .iter()
        .map(|d| json!({"maps": d.maps, "cases": [[d.domain, d.record]]}))
        .collect();
    let answers = upstream(&Value::from(map_sets));
    for (difference, answer) in differences.iter().zip(&answers) {
        assert_eq!(
            answer["results"][0], difference.upstream,
            "upstream: {}",
            difference.what
        );
        let maps =
            DestinationMaps::from_texts(difference.maps[0], difference.maps[1], difference.maps[2])
                .unwrap();
        let ours = ours(&maps, difference.domain, difference.record).map_err(|_| ());
        let expected = difference
            .ours
            .clone()
            .map(|list| list.into_iter().map(str::to_string).collect::<Vec<_>>());
        assert_eq!(ours, expected, "ours: {}", difference.what);
    }

    // A REGEXP replacement naming a group that does not exist: upstream loads
    // the map and fails when a destination matches; we refuse the map.
    let answers = upstream(&json!([
        {"maps": ["", "x.example REGEXP (a) \\2", ""], "cases": [["d.example", "v=TLSRPTv1;rua=mailto:a@x.example"]]}
    ]));
    assert!(answers[0]["results"][0]["error"]
        .as_str()
        .unwrap()
        .starts_with("error: invalid group reference 2"));
    assert!(DestinationMaps::from_texts("", "x.example REGEXP (a) \\2", "").is_err());
}
