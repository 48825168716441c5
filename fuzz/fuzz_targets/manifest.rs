//! libFuzzer entry for the `manifest` target; the body and its properties are in `rf_fuzz::manifest`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rf_fuzz::manifest(data));
