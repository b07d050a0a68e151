//! Fuzz target: `intransit_proxy::fuzzing::mysql_negotiation`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    intransit_proxy::fuzzing::mysql_negotiation(data);
});
