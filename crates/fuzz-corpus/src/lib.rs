//! Replays the fuzzing corpora on stable Rust.
//!
//! The cargo-fuzz crate in `fuzz/` (outside the workspace: libFuzzer needs
//! nightly) keeps, per target, the inputs captured from real clients and
//! servers in `fuzz/seeds/<target>/` and a minimized corpus in
//! `fuzz/corpus/<target>/`. This crate's test (`tests/corpus.rs`) runs
//! every one of those inputs through the target's entry point
//! (`intransit_wire::fuzzing`, `intransit_proxy::fuzzing`,
//! `intransit_config::fuzzing`, `intransit_pki::fuzzing`), so `cargo test`
//! checks on every commit what the fuzzers once found and explored. The
//! crate has no code of its own.
