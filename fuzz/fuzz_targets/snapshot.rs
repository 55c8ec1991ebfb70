//! libFuzzer entry point of `tally_fuzz::snapshot`; the target itself is documented there.
#![no_main]

#[global_allocator]
static ALLOCATOR: tally_fuzz::LimitedAllocator =
    tally_fuzz::LimitedAllocator::new(tally_fuzz::ALLOCATION_BYTES_MAX);

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tally_fuzz::snapshot::run(data);
});
