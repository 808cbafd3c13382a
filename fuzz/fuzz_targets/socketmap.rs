//! The socketmap request decoder on any byte stream, fed in the chunks the
//! fuzzer chooses: never panics, never holds more than its cap, consumes
//! only what it was given, and stops for good after a framing error.
#![no_main]
use libfuzzer_sys::fuzz_target;
use policyd_policy::netstring::{Answer, Decoder};

fuzz_target!(|data: &[u8]| {
    // The first byte picks a small cap, so oversize paths are reached; the
    // second the chunk size.
    let (cap, chunk) = match data {
        [a, b, ..] => (usize::from(*a) * 4, usize::from(*b).max(1)),
        _ => return,
    };
    let mut decoder = Decoder::with_max_len(cap);
    let mut failed = false;
    for piece in data[2..].chunks(chunk) {
        let mut input = piece;
        loop {
            let step = decoder.push(input);
            assert!(step.consumed <= input.len());
            assert!(decoder.buffered() <= cap);
            input = &input[step.consumed..];
            match step.item {
                Some(Err(e)) if e.is_fatal() => {
                    failed = true;
                    break;
                }
                Some(Err(_)) => {
                    assert!(!failed);
                    let _ = Answer::Perm("bad request".into()).encode().unwrap();
                }
                Some(Ok(request)) => {
                    assert!(!failed);
                    assert!(request.map.len() + request.key.len() < cap);
                    let _ = Answer::Temp(request.key).encode().unwrap();
                }
                None => {
                    assert!(input.is_empty());
                    break;
                }
            }
        }
        if failed {
            // A failed decoder stays failed.
            assert!(matches!(decoder.push(b"5:a b c,").item, Some(Err(e)) if e.is_fatal()));
            break;
        }
    }
});
