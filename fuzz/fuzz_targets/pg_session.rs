//! Fuzz target: `intransit_wire::fuzzing::pg_session`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    intransit_wire::fuzzing::pg_session(data);
});
