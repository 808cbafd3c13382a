//! The INI reader (Python configparser's dialect) on any text.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mailtls_common::ini::Ini;

fuzz_target!(|text: &str| {
    if let Ok(ini) = Ini::parse(text, "fuzz.cfg") {
        for section in ini.sections() {
            let _ = ini.items(section);
        }
    }
});
