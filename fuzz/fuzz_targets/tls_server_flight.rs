//! Fuzz target: `intransit_wire::fuzzing::tls_server_flight`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    intransit_wire::fuzzing::tls_server_flight(data);
});
