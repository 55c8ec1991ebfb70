//! libFuzzer entry point of `tally_fuzz::log_record`; the target itself is documented there.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tally_fuzz::log_record::run(data);
});
