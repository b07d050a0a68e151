//! Names and ports that keep tests running in parallel out of each other's way.

use std::net::{Ipv4Addr, TcpListener};
use std::sync::atomic::{AtomicU32, Ordering};

/// PostgreSQL truncates identifiers longer than this many bytes.
const MAX_IDENTIFIER_LEN: usize = 63;

/// Room left for `_<pid>_<counter>`, both at most ten digits.
const SUFFIX_LEN: usize = 22;

/// A name no other test in any running test binary will use, valid unquoted
/// as a PostgreSQL (or MariaDB) identifier: lowercase ASCII letters, digits
/// and underscores, starting with a letter or underscore.
///
/// Other characters in `prefix` become underscores, and a prefix that does
/// not start with a letter gets a leading `t`.
pub fn unique_name(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);

    let mut name: String = prefix
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_alphanumeric() {
                c
            } else {
                '_'
            }
        })
        .take(MAX_IDENTIFIER_LEN - SUFFIX_LEN - 1)
        .collect();
    if !name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_') {
        name.insert(0, 't');
    }
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{name}_{}_{n}", std::process::id())
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
///
/// The port is released before this returns, so another process may take it
/// before the caller binds it; callers that start servers should retry with
/// a new port when binding fails, as [`crate::PgServer::start`] does.
///
/// # Panics
///
/// If the operating system cannot bind an ephemeral port on the loopback
/// interface, which leaves no test that needs a port able to run.
#[expect(
    clippy::expect_used,
    reason = "a machine without a loopback interface cannot run any network test"
)]
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("binding an ephemeral port on 127.0.0.1")
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::*;

    fn is_identifier(name: &str) -> bool {
        name.len() <= MAX_IDENTIFIER_LEN
            && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    }

    #[test]
    fn unique_names_are_identifiers_and_distinct() {
        let long = "X".repeat(200);
        let prefixes = ["tls_user", "Mixed-Case name", "9lives", "", "é", &long];
        let names: Vec<String> = prefixes.iter().map(|p| unique_name(p)).collect();
        for name in &names {
            assert!(is_identifier(name), "{name:?} is not a plain identifier");
        }
        assert!(names[0].starts_with("tls_user_"), "{}", names[0]);
        assert!(names[1].starts_with("mixed_case_name_"), "{}", names[1]);
        assert!(names[2].starts_with("t9lives_"), "{}", names[2]);
        let again = unique_name("tls_user");
        assert_ne!(names[0], again);
    }

    #[test]
    fn free_port_can_be_bound() {
        let port = free_port();
        assert_ne!(port, 0);
        TcpListener::bind((Ipv4Addr::LOCALHOST, port)).expect("binding the port just returned");
    }
}
