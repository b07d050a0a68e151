//! Fuzz target: `intransit_wire::fuzzing::tls_record_header`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    intransit_wire::fuzzing::tls_record_header(data);
});
