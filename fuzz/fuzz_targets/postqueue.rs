//! The `postqueue -j` reader on any output.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = posttls_queue::parse_queue(data);
});
