//! Fuzz target: `intransit_proxy::fuzzing::pg_pool_decisions`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    intransit_proxy::fuzzing::pg_pool_decisions(data);
});
