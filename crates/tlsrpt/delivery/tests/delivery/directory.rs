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
