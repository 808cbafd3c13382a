//! The collector's two datagram readers (the fast one and the serde_json
//! reference) agree on every input: the same delivery or the same refusal.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tlsrpt_datagram::parse::{parse, parse_reference};

fuzz_target!(|data: &[u8]| {
    assert_eq!(parse(data), parse_reference(data));
});
