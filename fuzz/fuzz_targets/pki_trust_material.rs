//! Fuzz target: `intransit_proxy::fuzzing::pki_trust_material`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    intransit_proxy::fuzzing::pki_trust_material(data);
});
