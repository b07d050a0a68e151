//! Fuzz target: `intransit_config::fuzzing::config_toml`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    intransit_config::fuzzing::config_toml(data);
});
