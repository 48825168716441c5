//! libFuzzer entry for the `range_accept` target; the body and its properties are in `rf_fuzz::range_accept`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rf_fuzz::range_accept(data));
