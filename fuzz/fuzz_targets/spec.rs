//! libFuzzer entry for the `spec` target; the body and its properties are in `rf_fuzz::spec`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rf_fuzz::spec(data));
