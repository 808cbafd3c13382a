//! The destination maps' reader, and mapping with what it read.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tlsrpt_report::maps::DestinationMaps;

fuzz_target!(|text: &str| {
    if let Ok(maps) = DestinationMaps::from_texts(text, text, text) {
        let _ = maps.explain("example.com", &[]);
    }
});
