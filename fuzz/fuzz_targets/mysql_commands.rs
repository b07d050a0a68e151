//! Fuzz target: `intransit_wire::fuzzing::mysql_commands`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    intransit_wire::fuzzing::mysql_commands(data);
});
