//! Every input of every fuzz target's seeds and minimized corpus, replayed
//! through the target's entry point: one test per target, named after it.
//!
//! The list below and the `[[bin]]` targets of `fuzz/Cargo.toml` must name
//! the same targets, and each target must have a non-empty
//! `fuzz/seeds/<target>/` and `fuzz/corpus/<target>/`: a new target is a
//! line here, a `[[bin]]` there and its two directories, and until all of
//! them exist these tests fail.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

/// Runs `entry` over every file in `fuzz/seeds/<target>` and
/// `fuzz/corpus/<target>`, and fails naming each input it panics on.
fn replay(target: &str, entry: fn(&[u8])) {
    let mut failed = Vec::new();
    for kind in ["seeds", "corpus"] {
        let dir = fuzz_dir().join(kind).join(target);
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) => panic!("{}: {e}", dir.display()),
        };
        let mut count = 0;
        for entry_result in entries {
            let path = match entry_result {
                Ok(e) => e.path(),
                Err(e) => panic!("{}: {e}", dir.display()),
            };
            let data = match std::fs::read(&path) {
                Ok(data) => data,
                Err(e) => panic!("{}: {e}", path.display()),
            };
            count += 1;
            if catch_unwind(AssertUnwindSafe(|| entry(&data))).is_err() {
                failed.push(path.display().to_string());
            }
        }
        assert!(count > 0, "{} holds no inputs", dir.display());
    }
    assert!(failed.is_empty(), "{target} fails on: {failed:#?}");
}

macro_rules! targets {
    ($($name:ident => $entry:path,)*) => {
        /// Every target, as named in `fuzz/Cargo.toml`.
        const TARGETS: &[&str] = &[$(stringify!($name)),*];

        $(
            #[test]
            fn $name() {
                replay(stringify!($name), $entry);
            }
        )*
    };
}

targets! {
    pg_initial_message => intransit_wire::fuzzing::pg_initial_message,
    pg_backend_frame => intransit_wire::fuzzing::pg_backend_frame,
    pg_frontend_frame => intransit_wire::fuzzing::pg_frontend_frame,
    tls_record_header => intransit_wire::fuzzing::tls_record_header,
    tls_server_flight => intransit_wire::fuzzing::tls_server_flight,
    mysql_packet => intransit_wire::fuzzing::mysql_packet,
    mysql_commands => intransit_wire::fuzzing::mysql_commands,
    mysql_greeting => intransit_wire::fuzzing::mysql_greeting,
    mysql_handshake_response => intransit_wire::fuzzing::mysql_handshake_response,
    pg_session => intransit_wire::fuzzing::pg_session,
    pg_negotiation => intransit_proxy::fuzzing::pg_negotiation,
    pg_pool_decisions => intransit_proxy::fuzzing::pg_pool_decisions,
    mysql_negotiation => intransit_proxy::fuzzing::mysql_negotiation,
    config_toml => intransit_config::fuzzing::config_toml,
    pki_certificate => intransit_pki::fuzzing::pki_certificate,
    pki_trust_material => intransit_proxy::fuzzing::pki_trust_material,
}

#[test]
fn the_list_names_the_fuzz_crate_targets() {
    let manifest = fuzz_dir().join("Cargo.toml");
    let text = match std::fs::read_to_string(&manifest) {
        Ok(text) => text,
        Err(e) => panic!("{}: {e}", manifest.display()),
    };
    let parsed: toml::Table = match text.parse() {
        Ok(parsed) => parsed,
        Err(e) => panic!("{}: {e}", manifest.display()),
    };
    let mut declared: Vec<&str> = parsed
        .get("bin")
        .and_then(toml::Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|bin| bin.get("name").and_then(toml::Value::as_str))
        .collect();
    let mut listed = TARGETS.to_vec();
    declared.sort_unstable();
    listed.sort_unstable();
    assert_eq!(declared, listed);
}
