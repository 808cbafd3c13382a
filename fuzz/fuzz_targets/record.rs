//! The TLSRPT TXT record parser (RFC 8460 section 3) on any text.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let _ = tlsrpt_report::record::parse_record(text);
});
