//! libFuzzer entry point for the PROXY protocol parser; the invariants live in
//! `genro_worker::proxy_protocol_check` so the stable test suite checks them too.
//! `cd worker/fuzz && cargo +nightly fuzz run proxy_protocol`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    genro_worker::proxy_protocol_check::exercise(data);
    genro_worker::proxy_protocol_check::round_trip(data);
});
