//! libFuzzer entry point for the worker's header handling; the invariants live in
//! `genro_worker::header_check` so the stable test suite checks them too.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    genro_worker::header_check::exercise(data);
});
