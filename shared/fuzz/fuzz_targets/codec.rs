//! Arbitrary bytes through the control codec's invariant checks
//! ([`genro_shared::codec_check::exercise`]).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| genro_shared::codec_check::exercise(data));
