//! Fuzz target `mqs1`: see `sealmq_fuzz` (fuzz/src/lib.rs) for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sealmq_fuzz::mqs1_target(data));
