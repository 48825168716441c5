//! libFuzzer entry for the `compose` target; the body and its properties are in `rf_fuzz::compose`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rf_fuzz::compose(data));
