//! MySQL/MariaDB option files: `require_secure_transport`, `tls_version`,
//! `ssl_cipher` and the certificate, key and CA files of the server
//! sections.

use std::collections::BTreeMap;
use std::path::Path;

use crate::finding::{Finding, Requirement, Status};
use crate::lint::{check_material_file, judge_cipher_string, resolve};
use crate::policy::{Policy, Version};

/// One option in a server section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionLine {
    /// Section name, lower case.
    pub section: String,
    /// Option name, lower case, `-` written as `_`.
    pub name: String,
    /// Value (empty for a bare flag), unquoted.
    pub value: String,
    /// 1-based line.
    pub line: usize,
}

/// The sections the server reads.
fn is_server_section(section: &str) -> bool {
    let base = section.split('-').next().unwrap_or(section);
    matches!(base, "mysqld" | "mariadbd" | "server" | "mariadb")
        && !section.starts_with("mysqld_safe")
}

/// Parses option-file syntax: `[section]`, `name = value`, bare flags,
/// `#`/`;` comments, quoted values. `!include` lines are returned as line
/// numbers to report.
pub fn parse(text: &str) -> (Vec<OptionLine>, Vec<usize>) {
    let mut out = Vec::new();
    let mut includes = Vec::new();
    let mut section = String::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let t = raw.trim();
        if t.is_empty() || t.starts_with('#') || t.starts_with(';') {
            continue;
        }
        if t.starts_with('!') {
            includes.push(line);
            continue;
        }
        if let Some(name) = t.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            section = name.trim().to_ascii_lowercase();
            continue;
        }
        let (name, value) = match t.split_once('=') {
            Some((n, v)) => (n.trim(), v.trim()),
            None => (t, ""),
        };
        let value = value.split(" #").next().unwrap_or(value).trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
            .unwrap_or(value);
        out.push(OptionLine {
            section: section.clone(),
            name: name.to_ascii_lowercase().replace('-', "_"),
            value: value.to_owned(),
            line,
        });
    }
    (out, includes)
}

fn is_on(value: &str) -> bool {
    matches!(
        value.to_ascii_lowercase().as_str(),
        "" | "on" | "1" | "true" | "yes"
    )
}

/// Lints one option file. Relative paths are resolved against `datadir`
/// when the file sets it, else the file's directory.
pub fn lint(file: &str, path: &Path, text: &str, policy: &Policy) -> Vec<Finding> {
    let (options, includes) = parse(text);
    let mut out = Vec::new();
    for line in includes {
        out.push(Finding::at_line(
            Requirement::TlsEnabled,
            Status::Info,
            file,
            Some(line),
            "include directive: lint the included files too",
        ));
    }
    let server: BTreeMap<&str, &OptionLine> = options
        .iter()
        .filter(|o| is_server_section(&o.section))
        .map(|o| (o.name.as_str(), o))
        .collect();
    let at = |name: &str| server.get(name).map(|o| o.line);

    let has_material = server.contains_key("ssl_cert") && server.contains_key("ssl_key");
    let ssl_off =
        server.get("ssl").is_some_and(|o| !is_on(&o.value)) || server.contains_key("skip_ssl");
    if ssl_off || !has_material {
        out.push(Finding::at_line(
            Requirement::TlsEnabled,
            Status::Fail,
            file,
            at("skip_ssl").or(at("ssl")),
            if ssl_off {
                "TLS is turned off (skip-ssl / ssl=0)".to_owned()
            } else {
                "no ssl_cert and ssl_key in a server section: MariaDB before 11.4 offers no TLS without them".to_owned()
            },
        ));
    } else {
        out.push(Finding::at_line(
            Requirement::TlsEnabled,
            Status::Pass,
            file,
            at("ssl_cert"),
            "ssl_cert and ssl_key are set",
        ));
    }

    match server.get("require_secure_transport") {
        Some(o) if is_on(&o.value) => out.push(Finding::at_line(
            Requirement::NoPlaintext,
            Status::Pass,
            file,
            Some(o.line),
            "require_secure_transport = ON",
        )),
        found if policy.no_plaintext => out.push(Finding::at_line(
            Requirement::NoPlaintext,
            Status::Fail,
            file,
            found.map(|o| o.line),
            "require_secure_transport is off (the default): TCP logins without TLS are accepted; set require_secure_transport = ON",
        )),
        _ => {}
    }

    let (versions, line, note) = match server.get("tls_version") {
        Some(o) => (
            o.value
                .split(',')
                .filter_map(Version::parse)
                .collect::<Vec<_>>(),
            Some(o.line),
            format!("tls_version = {}", o.value),
        ),
        None => (
            vec![Version::Tls11, Version::Tls12, Version::Tls13],
            None,
            "tls_version not set: MariaDB 10.x accepts TLSv1.1, TLSv1.2 and TLSv1.3".to_owned(),
        ),
    };
    match versions.iter().min() {
        Some(min) if *min >= policy.min_version => out.push(Finding::at_line(
            Requirement::MinVersion,
            Status::Pass,
            file,
            line,
            note,
        )),
        _ => out.push(Finding::at_line(
            Requirement::MinVersion,
            Status::Fail,
            file,
            line,
            format!(
                "{note}; policy {} needs {} or later: set tls_version = {}",
                policy.name,
                policy.min_version,
                if policy.min_version >= Version::Tls13 {
                    "TLSv1.3"
                } else {
                    "TLSv1.2,TLSv1.3"
                }
            ),
        )),
    }
    if versions.iter().any(|v| *v < Version::Tls13) {
        if let Some(o) = server.get("ssl_cipher") {
            let (status, message) = judge_cipher_string(&o.value, policy);
            out.push(Finding::at_line(
                Requirement::CipherSuites,
                status,
                file,
                Some(o.line),
                format!("ssl_cipher = {message}"),
            ));
        } else {
            out.push(Finding::at_line(
                Requirement::CipherSuites,
                Status::Warn,
                file,
                None,
                "ssl_cipher not set: the TLS 1.2 suites are the library's defaults; list the policy's AEAD suites, or run intransit scan",
            ));
        }
    }

    let base = server
        .get("datadir")
        .map(|o| Path::new(&o.value).to_owned())
        .or_else(|| path.parent().map(Path::to_owned))
        .unwrap_or_default();
    for (name, is_key) in [("ssl_cert", false), ("ssl_key", true), ("ssl_ca", false)] {
        if let Some(o) = server.get(name) {
            out.push(check_material_file(
                file,
                Some(o.line),
                name,
                &resolve(&base, &o.value),
                is_key,
            ));
        }
    }
    if policy.require_client_cert {
        out.push(Finding::at_line(
            Requirement::ClientCertificate,
            if server.contains_key("ssl_ca") {
                Status::Warn
            } else {
                Status::Fail
            },
            file,
            at("ssl_ca"),
            if server.contains_key("ssl_ca") {
                "MariaDB demands client certificates per account (REQUIRE X509 or REQUIRE SUBJECT), which an option file cannot show; intransit scan checks it"
            } else {
                "ssl_ca is not set, so MariaDB cannot verify client certificates"
            },
        ));
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn server_sections_are_read_and_others_ignored() {
        let (o, inc) = parse(
            "[client]\nssl-ca = /x\n[mariadbd]\nssl-cert = \"/etc/c.pem\"\nskip-name-resolve\n!includedir /etc/mysql/conf.d/\n",
        );
        assert_eq!(inc, vec![6]);
        let server: Vec<_> = o.iter().filter(|x| is_server_section(&x.section)).collect();
        assert_eq!(server.len(), 2);
        assert_eq!(server[0].name, "ssl_cert");
        assert_eq!(server[0].value, "/etc/c.pem");
        assert_eq!(server[1].value, "");
    }

    #[test]
    fn defaults_fail_a_strict_policy() {
        let p = Policy::preset("mozilla-modern").unwrap();
        let f = lint(
            "my.cnf",
            Path::new("/nonexistent/my.cnf"),
            "[mysqld]\nport = 3306\n",
            &p,
        );
        for req in [
            Requirement::TlsEnabled,
            Requirement::NoPlaintext,
            Requirement::MinVersion,
        ] {
            assert!(
                f.iter()
                    .any(|x| x.requirement == req && x.status == Status::Fail),
                "{req:?}: {f:#?}"
            );
        }
    }
}
