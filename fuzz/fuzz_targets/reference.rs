//! libFuzzer entry for the `reference` target; the body and its properties are in `rf_fuzz::reference`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rf_fuzz::reference(data));
