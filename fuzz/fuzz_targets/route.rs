//! libFuzzer entry for the `route` target; the body and its properties are in `rf_fuzz::route`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rf_fuzz::route(data));
