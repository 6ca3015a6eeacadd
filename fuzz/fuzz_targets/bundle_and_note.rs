//! Fuzz target `bundle_and_note`: see `sealmq_fuzz` (fuzz/src/lib.rs) for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sealmq_fuzz::bundle_and_note(data));
