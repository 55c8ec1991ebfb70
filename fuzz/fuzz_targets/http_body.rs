//! libFuzzer entry point of `tally_fuzz::http_body`; the target itself is documented there.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tally_fuzz::http_body::run(data);
});
