//! Fuzz target `client_packets_v5`: see `sealmq_fuzz` (fuzz/src/lib.rs) for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sealmq_fuzz::client_packets(sealmq_fuzz::codec::Version::V5, data));
