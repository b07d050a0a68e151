//! `intransit config template`: compliant starting configurations that use
//! the CA's files. Each template passes `intransit lint` against the policy
//! it was made for.

use std::path::Path;

use crate::lint::policy_cipher_string;
use crate::policy::{Policy, Version};

/// The files a template points at.
#[derive(Debug, Clone)]
pub struct TemplateFiles<'a> {
    /// The CA certificate (trust anchor for client certificates).
    pub ca: &'a Path,
    /// The server certificate chain.
    pub cert: &'a Path,
    /// The server key.
    pub key: &'a Path,
}

/// postgresql.conf lines.
pub fn postgresql(policy: &Policy, files: &TemplateFiles<'_>) -> String {
    let mut out = format!(
        "# TLS settings for postgresql.conf, policy {policy}.\n\
         # Made by `intransit config template postgres`; passes `intransit lint --policy {policy}`.\n\
         ssl = on\n\
         ssl_cert_file = '{cert}'\n\
         ssl_key_file = '{key}'\n\
         ssl_ca_file = '{ca}'\n\
         ssl_min_protocol_version = '{min}'\n",
        policy = policy.name,
        cert = files.cert.display(),
        key = files.key.display(),
        ca = files.ca.display(),
        min = policy.min_version.openssl_name(),
    );
    if policy.min_version < Version::Tls13 {
        out.push_str(&format!(
            "ssl_ciphers = '{}'\nssl_prefer_server_ciphers = on\n",
            policy_cipher_string(policy)
        ));
    }
    out.push_str("password_encryption = 'scram-sha-256'\n");
    out
}

/// pg_hba.conf rules.
pub fn pg_hba(policy: &Policy) -> String {
    let remote_method = if policy.require_client_cert {
        "scram-sha-256 clientcert=verify-full"
    } else {
        "scram-sha-256"
    };
    format!(
        "# pg_hba.conf, policy {policy}. Made by `intransit config template pg_hba`.\n\
         # TYPE   DATABASE USER ADDRESS       METHOD\n\
         local    all      all                peer\n\
         # Loopback stays on this host (an intransit sidecar connects here).\n\
         host     all      all  127.0.0.1/32  scram-sha-256\n\
         host     all      all  ::1/128       scram-sha-256\n\
         # Everyone else: TLS{cert}.\n\
         hostssl  all      all  0.0.0.0/0     {remote_method}\n\
         hostssl  all      all  ::/0          {remote_method}\n\
         # Anything else without TLS is refused.\n\
         host     all      all  0.0.0.0/0     reject\n\
         host     all      all  ::/0          reject\n",
        policy = policy.name,
        cert = if policy.require_client_cert {
            " and a client certificate that names the user"
        } else {
            ""
        },
    )
}

/// A MariaDB option file.
pub fn mariadb(policy: &Policy, files: &TemplateFiles<'_>) -> String {
    let versions = if policy.min_version >= Version::Tls13 {
        "TLSv1.3"
    } else {
        "TLSv1.2,TLSv1.3"
    };
    let mut out = format!(
        "# TLS settings for MariaDB, policy {policy}.\n\
         # Made by `intransit config template mariadb`; passes `intransit lint --policy {policy}`.\n\
         [mariadbd]\n\
         ssl_cert = {cert}\n\
         ssl_key = {key}\n\
         ssl_ca = {ca}\n\
         require_secure_transport = ON\n\
         tls_version = {versions}\n",
        policy = policy.name,
        cert = files.cert.display(),
        key = files.key.display(),
        ca = files.ca.display(),
    );
    if policy.min_version < Version::Tls13 {
        out.push_str(&format!("ssl_cipher = {}\n", policy_cipher_string(policy)));
    }
    if policy.require_client_cert {
        out.push_str(
            "# Client certificates are demanded per account:\n\
             #   ALTER USER 'app'@'%' REQUIRE SUBJECT '/CN=app';\n",
        );
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::finding::Status;
    use crate::lint::{lint_file, FileKind};
    use crate::policy::PRESETS;

    /// Every template, for every preset, passes lint of that preset.
    #[test]
    fn templates_pass_their_own_policy() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        let cert = dir.path().join("chain.pem");
        let key = dir.path().join("key.pem");
        for p in [&ca, &cert, &key] {
            std::fs::write(p, "placeholder").unwrap();
        }
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let files = TemplateFiles {
            ca: &ca,
            cert: &cert,
            key: &key,
        };
        for (name, _) in PRESETS {
            let policy = Policy::preset(name).unwrap();
            for (file, kind, text) in [
                (
                    "postgresql.conf",
                    FileKind::PostgresqlConf,
                    postgresql(&policy, &files),
                ),
                ("pg_hba.conf", FileKind::PgHba, pg_hba(&policy)),
                ("my.cnf", FileKind::MyCnf, mariadb(&policy, &files)),
            ] {
                let path = dir.path().join(file);
                std::fs::write(&path, &text).unwrap();
                let findings = lint_file(&path, kind, &policy).unwrap();
                let failed: Vec<_> = findings
                    .iter()
                    .filter(|f| f.status == Status::Fail)
                    .collect();
                assert!(failed.is_empty(), "{name} {file}:\n{text}\n{failed:#?}");
            }
        }
    }
}
