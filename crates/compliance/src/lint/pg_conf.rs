//! postgresql.conf: `ssl`, `ssl_min_protocol_version`, `ssl_ciphers` and
//! the certificate, key and CA files.

use std::collections::BTreeMap;
use std::path::Path;

use crate::finding::{Finding, Requirement, Status};
use crate::lint::{check_material_file, judge_cipher_string, resolve};
use crate::policy::{Policy, Version};

/// One `name = value` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// Lower-case parameter name.
    pub name: String,
    /// The value, unquoted.
    pub value: String,
    /// 1-based line.
    pub line: usize,
}

/// Parses postgresql.conf syntax: `name = value` or `name value`, `#`
/// comments, single-quoted values with `''` or `\'` escapes. Returns the
/// settings (later lines win when read into a map) and the lines it could
/// not read.
pub fn parse(text: &str) -> (Vec<Setting>, Vec<usize>) {
    let mut settings = Vec::new();
    let mut bad = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let trimmed = raw.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let name_end = trimmed
            .find(|c: char| c.is_whitespace() || c == '=')
            .unwrap_or(trimmed.len());
        let name = trimmed[..name_end].to_ascii_lowercase();
        let rest = trimmed[name_end..].trim_start();
        let rest = rest.strip_prefix('=').unwrap_or(rest).trim_start();
        let value = if let Some(quoted) = rest.strip_prefix('\'') {
            let mut out = String::new();
            let mut chars = quoted.chars().peekable();
            let mut closed = false;
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(n) = chars.next() {
                            out.push(n);
                        }
                    }
                    '\'' if chars.peek() == Some(&'\'') => {
                        chars.next();
                        out.push('\'');
                    }
                    '\'' => {
                        closed = true;
                        break;
                    }
                    other => out.push(other),
                }
            }
            if !closed {
                bad.push(line);
                continue;
            }
            out
        } else {
            rest.split('#').next().unwrap_or("").trim().to_owned()
        };
        if name.is_empty() {
            bad.push(line);
            continue;
        }
        settings.push(Setting { name, value, line });
    }
    (settings, bad)
}

fn is_on(value: &str) -> bool {
    matches!(
        value.to_ascii_lowercase().as_str(),
        "on" | "true" | "yes" | "1" | "t" | "y"
    )
}

/// How deep `include` directives may nest (PostgreSQL allows 10).
const MAX_INCLUDE_DEPTH: usize = 10;

/// A setting and the file it was read from.
#[derive(Debug, Clone)]
struct Located {
    setting: Setting,
    file: String,
}

/// Reads a file's settings, following `include`, `include_if_exists` and
/// `include_dir` (relative to the including file, as PostgreSQL does).
fn collect(
    file: &str,
    path: &Path,
    text: &str,
    depth: usize,
    out: &mut Vec<Located>,
    notes: &mut Vec<Finding>,
) {
    let (settings, bad) = parse(text);
    for line in bad {
        notes.push(Finding::at_line(
            Requirement::TlsEnabled,
            Status::Warn,
            file,
            Some(line),
            "line not understood (unterminated quote?); it was skipped",
        ));
    }
    let dir = path.parent().map(Path::to_owned).unwrap_or_default();
    for s in settings {
        let included: Vec<std::path::PathBuf> = match s.name.as_str() {
            "include" | "include_if_exists" => vec![resolve(&dir, &s.value)],
            "include_dir" => {
                let d = resolve(&dir, &s.value);
                let mut files: Vec<_> = std::fs::read_dir(&d)
                    .map(|entries| {
                        entries
                            .flatten()
                            .map(|e| e.path())
                            .filter(|p| p.extension().is_some_and(|x| x == "conf"))
                            .collect()
                    })
                    .unwrap_or_default();
                files.sort();
                files
            }
            _ => {
                out.push(Located {
                    setting: s,
                    file: file.to_owned(),
                });
                continue;
            }
        };
        if depth >= MAX_INCLUDE_DEPTH {
            notes.push(Finding::at_line(
                Requirement::TlsEnabled,
                Status::Warn,
                file,
                Some(s.line),
                "includes nest too deeply; not followed",
            ));
            continue;
        }
        for inc in included {
            match std::fs::read_to_string(&inc) {
                Ok(t) => collect(&inc.display().to_string(), &inc, &t, depth + 1, out, notes),
                Err(_) if s.name == "include_if_exists" => {}
                Err(e) => notes.push(Finding::at_line(
                    Requirement::TlsEnabled,
                    Status::Warn,
                    file,
                    Some(s.line),
                    format!(
                        "{} {}: {e}; its settings were not checked",
                        s.name,
                        inc.display()
                    ),
                )),
            }
        }
    }
}

/// Lints a postgresql.conf and the files it includes. `path` locates
/// relative file names: relative to `data_directory` when the files set
/// it, otherwise to the main file's directory (where the data directory
/// usually is when the file lives in it).
pub fn lint(file: &str, path: &Path, text: &str, policy: &Policy) -> Vec<Finding> {
    let mut located = Vec::new();
    let mut out = Vec::new();
    collect(file, path, text, 0, &mut located, &mut out);
    // Later settings win, across included files too.
    let map: BTreeMap<&str, &Located> = located
        .iter()
        .map(|l| (l.setting.name.as_str(), l))
        .collect();
    let where_ = |name: &str| -> (String, Option<usize>) {
        map.get(name).map_or_else(
            || (file.to_owned(), None),
            |l| (l.file.clone(), Some(l.setting.line)),
        )
    };
    let map: BTreeMap<&str, &Setting> = map.iter().map(|(k, l)| (*k, &l.setting)).collect();

    let ssl = map.get("ssl").is_some_and(|s| is_on(&s.value));
    if !ssl {
        out.push(Finding::at_line(
            Requirement::TlsEnabled,
            Status::Fail,
            &where_("ssl").0,
            where_("ssl").1,
            "ssl is off (the default): PostgreSQL offers no TLS; set ssl = on",
        ));
        return out;
    }
    out.push(Finding::at_line(
        Requirement::TlsEnabled,
        Status::Pass,
        &where_("ssl").0,
        where_("ssl").1,
        "ssl = on",
    ));

    let (min, min_line, min_note) = match map.get("ssl_min_protocol_version") {
        Some(s) => (Version::parse(&s.value), Some(s.line), s.value.clone()),
        None => (
            Some(Version::Tls12),
            None,
            "TLSv1.2 (the default of PostgreSQL 14 and later)".to_owned(),
        ),
    };
    match min {
        Some(v) if v >= policy.min_version => out.push(Finding::at_line(
            Requirement::MinVersion,
            Status::Pass,
            &where_("ssl_min_protocol_version").0,
            min_line,
            format!("ssl_min_protocol_version = {min_note}"),
        )),
        Some(_) => out.push(Finding::at_line(
            Requirement::MinVersion,
            Status::Fail,
            &where_("ssl_min_protocol_version").0,
            min_line,
            format!(
                "ssl_min_protocol_version = {min_note}; policy {} needs {} or later: set ssl_min_protocol_version = '{}'",
                policy.name,
                policy.min_version,
                policy.min_version.openssl_name()
            ),
        )),
        None => out.push(Finding::at_line(
            Requirement::MinVersion,
            Status::Fail,
            &where_("ssl_min_protocol_version").0,
            min_line,
            format!("ssl_min_protocol_version = {min_note:?} is not a TLS version"),
        )),
    }

    // ssl_ciphers governs TLS 1.2 and older only.
    if min.is_some_and(|v| v >= Version::Tls13) {
        out.push(Finding::at_line(
            Requirement::CipherSuites,
            Status::Pass,
            &where_("ssl_ciphers").0,
            where_("ssl_ciphers").1,
            "TLS 1.2 is off, so ssl_ciphers does not apply; TLS 1.3 suites are all AEAD",
        ));
    } else {
        let ciphers = map
            .get("ssl_ciphers")
            .map_or("HIGH:MEDIUM:+3DES:!aNULL", |s| s.value.as_str());
        let (status, message) = judge_cipher_string(ciphers, policy);
        let message = if map.contains_key("ssl_ciphers") {
            format!("ssl_ciphers = {message}")
        } else {
            format!("ssl_ciphers not set, default {message}")
        };
        out.push(Finding::at_line(
            Requirement::CipherSuites,
            status,
            &where_("ssl_ciphers").0,
            where_("ssl_ciphers").1,
            message,
        ));
    }

    let base = map
        .get("data_directory")
        .map(|s| Path::new(&s.value).to_owned())
        .or_else(|| path.parent().map(Path::to_owned))
        .unwrap_or_default();
    for (name, default, is_key) in [
        ("ssl_cert_file", "server.crt", false),
        ("ssl_key_file", "server.key", true),
    ] {
        let value = map.get(name).map_or(default, |s| s.value.as_str());
        out.push(check_material_file(
            &where_(name).0,
            where_(name).1,
            name,
            &resolve(&base, value),
            is_key,
        ));
    }
    match map.get("ssl_ca_file").filter(|s| !s.value.is_empty()) {
        Some(s) => out.push(check_material_file(
            &where_("ssl_ca_file").0,
            Some(s.line),
            "ssl_ca_file",
            &resolve(&base, &s.value),
            false,
        )),
        None if policy.require_client_cert => out.push(Finding::at_line(
            Requirement::ClientCertificate,
            Status::Fail,
            file,
            None,
            "ssl_ca_file is not set, so PostgreSQL cannot verify client certificates; set it to the CA that signs them",
        )),
        None => {}
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_parser_reads_quotes_comments_and_both_syntaxes() {
        let (s, bad) = parse(
            "# comment\nssl = on\nssl_ciphers 'HIGH:!aNULL' # trailing\nlisten_addresses='it''s'\nbroken = 'open\n",
        );
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].value, "on");
        assert_eq!(s[1].name, "ssl_ciphers");
        assert_eq!(s[1].value, "HIGH:!aNULL");
        assert_eq!(s[1].line, 3);
        assert_eq!(s[2].value, "it's");
        assert_eq!(bad, vec![5]);
    }

    #[test]
    fn ssl_off_and_old_versions_fail() {
        let p = Policy::preset("mozilla-modern").unwrap();
        let off = lint(
            "pg.conf",
            Path::new("/nonexistent/pg.conf"),
            "port = 5432\n",
            &p,
        );
        assert!(off
            .iter()
            .any(|f| f.requirement == Requirement::TlsEnabled && f.status == Status::Fail));
        let old = lint(
            "pg.conf",
            Path::new("/nonexistent/pg.conf"),
            "ssl = on\nssl_min_protocol_version = 'TLSv1.2'\n",
            &p,
        );
        let f = old
            .iter()
            .find(|f| f.requirement == Requirement::MinVersion)
            .unwrap();
        assert_eq!(f.status, Status::Fail);
        assert_eq!(f.location.line, Some(2));
        // The default cipher string includes MEDIUM and 3DES.
        assert!(old
            .iter()
            .any(|f| f.requirement == Requirement::CipherSuites && f.status == Status::Fail));
        // Missing files fail.
        assert!(old
            .iter()
            .any(|f| f.requirement == Requirement::KeyMaterialFiles && f.status == Status::Fail));
    }
}
