//! Where a database server's programs are, and whether a server is up.

use std::fs;
use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Where PostgreSQL's server programs may be, most likely first: what
/// `pg_config --bindir` prints, `/usr/lib/postgresql/<version>/bin` for
/// every installed version (Debian's layout, newest first), then each
/// `PATH` directory, preceded by the real directory of a `postgres` linked
/// there (pg_ctl runs the programs next to itself). Callers check which
/// one holds the programs they need.
pub fn postgres_bindirs() -> Vec<PathBuf> {
    let mut candidates = Vec::new();
    candidates.extend(pg_config_bindir());
    candidates.extend(debian_bindirs(Path::new("/usr/lib/postgresql")));
    for dir in std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
    {
        if let Some(real) = fs::canonicalize(dir.join("postgres"))
            .ok()
            .and_then(|p| p.parent().map(Path::to_owned))
        {
            candidates.push(real);
        }
        candidates.push(dir);
    }
    candidates
}

/// What `pg_config --bindir` prints, if pg_config is installed.
pub fn pg_config_bindir() -> Option<PathBuf> {
    let output = Command::new("pg_config")
        .arg("--bindir")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let dir = String::from_utf8(output.stdout).ok()?;
    (output.status.success() && !dir.trim().is_empty()).then(|| PathBuf::from(dir.trim()))
}

/// `<base>/<version>/bin` for every installed version, newest first.
pub fn debian_bindirs(base: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(base) else {
        return Vec::new();
    };
    let mut versions: Vec<(Vec<u32>, PathBuf)> = entries
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let version = name
                .split('.')
                .map(|part| part.parse().ok())
                .collect::<Option<Vec<u32>>>()?;
            Some((version, entry.path().join("bin")))
        })
        .collect();
    versions.sort_by(|a, b| b.0.cmp(&a.0));
    versions.into_iter().map(|(_, dir)| dir).collect()
}

/// Whether a MySQL-protocol server on `host:port` sends a HandshakeV10
/// greeting (within two seconds of connecting).
pub fn mysql_greets(host: &str, port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect((host, port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut start = [0u8; 5];
    // Payload length, sequence id 0, protocol version 10.
    stream.read_exact(&mut start).is_ok() && start[3] == 0 && start[4] == 10
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn installed_versions_are_found_newest_first_and_other_names_ignored() {
        let base = tempfile::tempdir().expect("tempdir");
        for name in ["9.6", "15", "13", "notes", "16.beta"] {
            fs::create_dir(base.path().join(name)).expect("dir");
        }
        let found = debian_bindirs(base.path());
        let expected: Vec<PathBuf> = ["15", "13", "9.6"]
            .iter()
            .map(|v| base.path().join(v).join("bin"))
            .collect();
        assert_eq!(found, expected);
        assert!(debian_bindirs(&base.path().join("absent")).is_empty());
    }

    #[test]
    fn a_port_that_sends_no_greeting_is_not_a_mysql_server() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        drop(listener);
        assert!(!mysql_greets("127.0.0.1", port));
    }
}
