//! Fuzz target: `intransit_pki::fuzzing::pki_certificate`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    intransit_pki::fuzzing::pki_certificate(data);
});
