//! `intransit lint`: database TLS configuration files checked against a
//! policy, with line numbers.
//!
//! Three kinds of file: `postgresql.conf` ([`pg_conf`]), `pg_hba.conf`
//! ([`pg_hba`]) and MySQL/MariaDB option files ([`my_cnf`]). The parsers
//! are forgiving (a line they do not understand is reported, not fatal)
//! and read only: nothing is ever written.

pub mod my_cnf;
pub mod pg_conf;
pub mod pg_hba;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::finding::{Finding, Requirement, Status};
use crate::policy::Policy;
use crate::ComplianceError;

/// Which configuration language a file is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// postgresql.conf (and files it includes).
    PostgresqlConf,
    /// pg_hba.conf.
    PgHba,
    /// my.cnf and the files of mariadb.conf.d / mysql.conf.d.
    MyCnf,
}

impl FileKind {
    /// Guesses the kind from the file name: `*hba*` is pg_hba.conf, `*.cnf`
    /// or a name with `my`/`maria` is a MySQL option file, anything else
    /// postgresql.conf.
    pub fn guess(path: &Path) -> FileKind {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        if name.contains("hba") {
            FileKind::PgHba
        } else if name.ends_with(".cnf") || name.contains("maria") || name.starts_with("my") {
            FileKind::MyCnf
        } else {
            FileKind::PostgresqlConf
        }
    }

    /// Parses `postgresql`, `pg_hba`, `mycnf`.
    pub fn parse(text: &str) -> Option<FileKind> {
        match text {
            "postgresql" | "postgresql.conf" | "pgconf" => Some(FileKind::PostgresqlConf),
            "pg_hba" | "pg_hba.conf" | "hba" => Some(FileKind::PgHba),
            "mycnf" | "my.cnf" | "mariadb" | "mysql" => Some(FileKind::MyCnf),
            _ => None,
        }
    }
}

/// Lints one file of the given kind.
pub fn lint_file(
    path: &Path,
    kind: FileKind,
    policy: &Policy,
) -> Result<Vec<Finding>, ComplianceError> {
    let text = std::fs::read_to_string(path).map_err(|e| ComplianceError::Read {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    let name = path.display().to_string();
    Ok(match kind {
        FileKind::PostgresqlConf => pg_conf::lint(&name, path, &text, policy),
        FileKind::PgHba => pg_hba::lint(&name, &text, policy),
        FileKind::MyCnf => my_cnf::lint(&name, path, &text, policy),
    })
}

/// Whether a certificate or key file named by a configuration is usable and
/// not exposed: it exists, is readable, and a key is not readable by
/// others (mode 0600, or 0640 owned by root as PostgreSQL also accepts).
pub(crate) fn check_material_file(
    file: &str,
    line: Option<usize>,
    setting: &str,
    path: &Path,
    is_key: bool,
) -> Finding {
    let req = Requirement::KeyMaterialFiles;
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) => {
            return Finding::at_line(
                req,
                Status::Fail,
                file,
                line,
                format!("{setting} = {}: {e}", path.display()),
            )
        }
    };
    if let Err(e) = std::fs::File::open(path) {
        return Finding::at_line(
            req,
            Status::Fail,
            file,
            line,
            format!("{setting} = {}: not readable: {e}", path.display()),
        );
    }
    let mode = meta.mode() & 0o777;
    if is_key {
        let group_ok = mode & 0o070 == 0 || (mode & 0o070 == 0o040 && meta.uid() == 0);
        if mode & 0o007 != 0 || !group_ok {
            return Finding::at_line(
                req,
                Status::Fail,
                file,
                line,
                format!(
                    "{setting} = {}: mode {mode:04o} exposes the private key; use 0600 (owned by the server's user) or 0640 owned by root",
                    path.display()
                ),
            );
        }
    } else if mode & 0o002 != 0 {
        return Finding::at_line(
            req,
            Status::Fail,
            file,
            line,
            format!(
                "{setting} = {}: mode {mode:04o} lets anyone replace it",
                path.display()
            ),
        );
    }
    Finding::at_line(
        req,
        Status::Pass,
        file,
        line,
        format!("{setting} = {} (mode {mode:04o})", path.display()),
    )
}

/// Resolves a path a configuration names, relative to `base`.
pub(crate) fn resolve(base: &Path, value: &str) -> PathBuf {
    let p = Path::new(value);
    if p.is_absolute() {
        p.to_owned()
    } else {
        base.join(p)
    }
}

/// Judges a TLS 1.2 cipher string (OpenSSL syntax, as PostgreSQL's
/// `ssl_ciphers` and MariaDB's `ssl_cipher` take it) against the policy.
/// Without OpenSSL a keyword list cannot be expanded exactly, so only
/// explicit suite names are passed; weak keywords fail and other keywords
/// warn (a scan shows what the server accepts).
pub(crate) fn judge_cipher_string(cipher_string: &str, policy: &Policy) -> (Status, String) {
    const WEAK: &[&str] = &[
        "MEDIUM",
        "LOW",
        "EXPORT",
        "EXP",
        "3DES",
        "DES",
        "RC4",
        "RC2",
        "NULL",
        "eNULL",
        "aNULL",
        "MD5",
        "ALL",
        "COMPLEMENTOFALL",
        "SEED",
        "IDEA",
        "ADH",
        "AECDH",
    ];
    let mut unknown = Vec::new();
    for token in cipher_string
        .split([':', ',', ' '])
        .filter(|t| !t.is_empty())
    {
        if token.starts_with('!') || token.starts_with('-') || token.starts_with('@') {
            continue;
        }
        let bare = token.trim_start_matches('+');
        if bare.split('+').any(|part| WEAK.contains(&part)) {
            return (
                Status::Fail,
                format!("{cipher_string:?} enables weak suites ({bare}); list the policy's AEAD suites explicitly"),
            );
        }
        match openssl_to_iana(bare) {
            Some(iana) if policy.allowed_suites.iter().any(|s| s == iana) => {}
            Some(iana) => {
                return (
                    Status::Fail,
                    format!(
                        "{cipher_string:?} enables {iana}, which policy {} does not allow",
                        policy.name
                    ),
                )
            }
            None => unknown.push(bare.to_owned()),
        }
    }
    if unknown.is_empty() {
        (
            Status::Pass,
            format!("{cipher_string:?}: only allowed suites"),
        )
    } else {
        (
            Status::Warn,
            format!(
                "{cipher_string:?}: keywords {} cannot be expanded without OpenSSL; run intransit scan to see the suites the server accepts",
                unknown.join(", ")
            ),
        )
    }
}

/// OpenSSL names of the TLS 1.2 suites policies talk about, and their IANA
/// names.
fn openssl_to_iana(name: &str) -> Option<&'static str> {
    Some(match name {
        "ECDHE-ECDSA-AES128-GCM-SHA256" => "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256" => "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384" => "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384" => "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305" => "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
        "ECDHE-RSA-CHACHA20-POLY1305" => "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
        "DHE-RSA-AES128-GCM-SHA256" => "TLS_DHE_RSA_WITH_AES_128_GCM_SHA256",
        "DHE-RSA-AES256-GCM-SHA384" => "TLS_DHE_RSA_WITH_AES_256_GCM_SHA384",
        "DHE-RSA-CHACHA20-POLY1305" => "TLS_DHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
        "ECDHE-ECDSA-AES128-SHA256" => "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256",
        "ECDHE-RSA-AES128-SHA256" => "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256",
        "ECDHE-ECDSA-AES128-SHA" => "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
        "ECDHE-RSA-AES128-SHA" => "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
        "AES128-GCM-SHA256" => "TLS_RSA_WITH_AES_128_GCM_SHA256",
        "AES256-GCM-SHA384" => "TLS_RSA_WITH_AES_256_GCM_SHA384",
        "AES128-SHA" => "TLS_RSA_WITH_AES_128_CBC_SHA",
        "AES256-SHA" => "TLS_RSA_WITH_AES_256_CBC_SHA",
        _ => return None,
    })
}

/// The OpenSSL cipher string for the policy's TLS 1.2 suites, for
/// templates.
pub fn policy_cipher_string(policy: &Policy) -> String {
    const PAIRS: &[&str] = &[
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    ];
    PAIRS
        .iter()
        .filter(|n| {
            openssl_to_iana(n).is_some_and(|iana| policy.allowed_suites.iter().any(|s| s == iana))
        })
        .copied()
        .collect::<Vec<_>>()
        .join(":")
}

/// Whether a pg_hba address (or MySQL bind address) stays on this host.
pub(crate) fn is_loopback_address(address: &str) -> bool {
    let a = address.trim();
    if matches!(a, "localhost" | "samehost") {
        return true;
    }
    let (ip, prefix) = match a.split_once('/') {
        Some((ip, p)) => (ip, p.parse::<u8>().ok()),
        None => (a, None),
    };
    match ip.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(v4)) => v4.is_loopback() && prefix.is_none_or(|p| p >= 8),
        Ok(std::net::IpAddr::V6(v6)) => v6.is_loopback() && prefix.is_none_or(|p| p == 128),
        Err(_) => false,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn cipher_strings_are_judged() {
        let p = Policy::preset("mozilla-intermediate").unwrap();
        assert_eq!(
            judge_cipher_string("HIGH:MEDIUM:+3DES:!aNULL", &p).0,
            Status::Fail
        );
        assert_eq!(
            judge_cipher_string(
                "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384",
                &p
            )
            .0,
            Status::Pass
        );
        assert_eq!(
            judge_cipher_string("ECDHE-RSA-AES128-SHA", &p).0,
            Status::Fail
        );
        assert_eq!(judge_cipher_string("HIGH:!aNULL:!MD5", &p).0, Status::Warn);
        assert_eq!(
            judge_cipher_string(&policy_cipher_string(&p), &p).0,
            Status::Pass
        );
    }

    #[test]
    fn loopback_addresses_are_recognised() {
        for a in [
            "127.0.0.1/32",
            "::1/128",
            "localhost",
            "samehost",
            "127.0.0.1",
        ] {
            assert!(is_loopback_address(a), "{a}");
        }
        for a in [
            "0.0.0.0/0",
            "10.0.0.0/8",
            "all",
            "::/0",
            "samenet",
            "127.0.0.0/1",
        ] {
            assert!(!is_loopback_address(a), "{a}");
        }
    }

    #[test]
    fn key_files_with_loose_modes_fail() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("server.key");
        std::fs::write(&key, "x").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(
            check_material_file("f", Some(1), "ssl_key_file", &key, true).status,
            Status::Fail
        );
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            check_material_file("f", Some(1), "ssl_key_file", &key, true).status,
            Status::Pass
        );
        let missing = dir.path().join("nope.crt");
        assert_eq!(
            check_material_file("f", None, "ssl_cert_file", &missing, false).status,
            Status::Fail
        );
    }

    #[test]
    fn kinds_are_guessed_from_names() {
        assert_eq!(
            FileKind::guess(Path::new("/etc/postgresql/15/main/pg_hba.conf")),
            FileKind::PgHba
        );
        assert_eq!(
            FileKind::guess(Path::new("/etc/mysql/my.cnf")),
            FileKind::MyCnf
        );
        assert_eq!(FileKind::guess(Path::new("50-server.cnf")), FileKind::MyCnf);
        assert_eq!(
            FileKind::guess(Path::new("postgresql.conf")),
            FileKind::PostgresqlConf
        );
    }
}
