//! The delay-reason classifier on any text.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let _ = posttls_classify::classify(text);
});
