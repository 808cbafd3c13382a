//! `directory:` destinations: the report as a file, written once however
//! often the attempt is repeated.

use tlsrpt_delivery::{Directory, Outcome};

use crate::common::{REPORT_ID, REPORT_JSON};

#[test]
fn the_report_is_stored_once_under_a_name_from_domain_and_id() {
    let dir = tempfile::tempdir().unwrap();
    let destination = Directory::new(dir.path());
    let file = dir
        .path()
        .join(format!("tlsrpt-example.com-{REPORT_ID}.json"));
    for _ in 0..2 {
        let outcome = destination.store("example.com", REPORT_ID, REPORT_JSON.as_bytes());
        assert_eq!(
            outcome,
            Outcome::Delivered(format!("stored as {}", file.display()))
        );
    }
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    assert_eq!(names, [file.file_name().unwrap()], "no temporary file left");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), REPORT_JSON);
}

#[test]
fn a_missing_directory_is_retried() {
    let dir = tempfile::tempdir().unwrap();
    let destination = Directory::new(dir.path().join("not-yet-mounted"));
    let outcome = destination.store("example.com", REPORT_ID, REPORT_JSON.as_bytes());
    assert!(matches!(outcome, Outcome::RetryLater(_)), "{outcome:?}");
}

/// A domain may be 253 bytes long; with the report id, which names it
/// again, the plain name would pass the file-name limit of 255 bytes.
/// Every such report still gets a file of its own.
#[test]
fn reports_of_the_longest_domains_get_files_of_their_own() {
    let dir = tempfile::tempdir().unwrap();
    let destination = Directory::new(dir.path());
    let label = "a".repeat(63);
    let long = |last: &str| format!("{label}.{label}.{label}.{last}");
    // 200 characters, and two of 253 that differ only in their last byte.
    let domains = [
        format!("{label}.{label}.{}.examples", "b".repeat(63)),
        long(&format!("{}a", "c".repeat(60))),
        long(&format!("{}b", "c".repeat(60))),
    ];
    assert_eq!(domains[0].len(), 200);
    assert_eq!(domains[1].len(), 253);
    let mut files = Vec::new();
    for domain in &domains {
        let id = format!("2026-11-21_0123456789abcdef_{domain}");
        let outcome = destination.store(domain, &id, REPORT_JSON.as_bytes());
        assert!(
            matches!(&outcome, Outcome::Delivered(_)),
            "{}: {outcome:?}",
            domain.len()
        );
        let file = destination.file_for(domain, &id);
        let name = file.file_name().unwrap().to_str().unwrap().to_owned();
        assert!(name.len() <= 255, "{name}");
        assert!(
            name.starts_with(&format!("tlsrpt-{}", &domain[..100])),
            "{name}"
        );
        assert!(name.ends_with(".json"), "{name}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), REPORT_JSON);
        // The same report gets the same name again.
        assert_eq!(destination.file_for(domain, &id), file);
        files.push(file);
    }
    files.sort();
    files.dedup();
    assert_eq!(files.len(), 3, "distinct domains, distinct files");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 3);
    // A name that fits is kept as it was.
    assert_eq!(
        destination.file_for("example.com", REPORT_ID),
        dir.path()
            .join(format!("tlsrpt-example.com-{REPORT_ID}.json"))
    );
}
