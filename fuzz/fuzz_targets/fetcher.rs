//! The reportd's readers of fetcher answers (protocol v1 domain list and
//! details, and the bulk extension): whatever a fetcher prints.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mailtls_common::day::Day;
use tlsrpt_reportd::fetch::{parse_bulk, parse_details, parse_domain_list};

fuzz_target!(|data: &[u8]| {
    let day = Day::from_ymd(2026, 11, 21);
    let _ = parse_domain_list(data, day);
    let _ = parse_bulk(data, day);
    let _ = parse_details(data, "example.com");
});
