//! `intransit ca` and `intransit cert` driven as a user would, with the
//! results checked by real peers: openssl verify, PostgreSQL's own TLS with
//! `cert` authentication and a CRL, and the proxy.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use intransit_testkit::{PgOptions, PgServer, PgSsl};

use crate::support::*;

fn cli(state: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .arg("--state-dir")
        .arg(state)
        .env_remove("INTRANSIT_CA_PASSPHRASE")
        .stdin(Stdio::null())
        .output()
        .expect("running intransit")
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "command failed: {}\n{}",
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

fn openssl(args: &[&str]) -> Output {
    let openssl = intransit_testkit::require_tool("openssl", "openssl").expect("openssl");
    Command::new(openssl)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("openssl")
}

struct Issued {
    dir: PathBuf,
}

impl Issued {
    fn file(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

fn issue(state: &Path, kind: &str, name: &str, extra: &[&str]) -> Issued {
    let mut args = vec!["cert", "issue", kind, "--name", name];
    args.extend_from_slice(extra);
    ok(cli(state, &args));
    Issued {
        dir: state.join("certs").join(name),
    }
}

/// Files in a directory tree, for "nothing was left behind" checks.
fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out.sort();
    out
}

#[test]
fn issued_certificates_pass_openssl_verify_and_revocation_is_seen() {
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("state");
    ok(cli(&state, &["ca", "init", "--name", "Verify Root"]));
    let server = issue(
        &state,
        "server",
        "db",
        &["--dns", "db.internal", "--ip", "127.0.0.1"],
    );
    let client = issue(
        &state,
        "client",
        "trainer",
        &["--uri", "spiffe://prod/trainer"],
    );
    let gone = issue(&state, "client", "gone", &[]);
    let ca = state.join("ca/ca.pem").display().to_string();

    let verify = |purpose: &str, cert: &str, extra: &[&str]| {
        let mut args = vec![
            "verify",
            "-x509_strict",
            "-CAfile",
            &ca,
            "-purpose",
            purpose,
        ];
        args.extend_from_slice(extra);
        args.push(cert);
        openssl(&args)
    };
    assert!(verify("sslserver", &server.file("cert.pem"), &[])
        .status
        .success());
    assert!(verify("sslclient", &client.file("cert.pem"), &[])
        .status
        .success());
    // The purposes are not interchangeable.
    assert!(!verify("sslserver", &client.file("cert.pem"), &[])
        .status
        .success());

    let revoked = ok(cli(
        &state,
        &["cert", "revoke", "gone", "--reason", "keyCompromise"],
    ));
    assert!(revoked.contains("keyCompromise"), "{revoked}");
    let crl = state.join("ca/crl.pem").display().to_string();
    let out = verify(
        "sslclient",
        &gone.file("cert.pem"),
        &["-crl_check", "-CRLfile", &crl],
    );
    assert!(!out.status.success());
    assert!(
        format!("{}{}", stdout(&out), stderr(&out)).contains("certificate revoked"),
        "{}",
        stderr(&out)
    );
    let out = verify(
        "sslclient",
        &client.file("cert.pem"),
        &["-crl_check", "-CRLfile", &crl],
    );
    assert!(out.status.success(), "{}", stderr(&out));

    let list = ok(cli(&state, &["cert", "list", "--json"]));
    let list: serde_json::Value = serde_json::from_str(&list).expect("json");
    let status = |name: &str| {
        list["certificates"]
            .as_array()
            .expect("array")
            .iter()
            .find(|c| c["name"] == name)
            .map(|c| c["status"].clone())
    };
    assert_eq!(status("db"), Some("valid".into()));
    assert_eq!(status("gone"), Some("revoked".into()));

    // The CRL number grows with every CRL.
    ok(cli(&state, &["ca", "crl"]));
    let text = stdout(&openssl(&["crl", "-in", &crl, "-noout", "-text"]));
    assert!(text.contains("Key Compromise"), "{text}");
    assert!(text.contains("Next Update"), "{text}");
    assert!(
        text.contains("X509v3 CRL Number: \n                2"),
        "{text}"
    );
}

#[test]
fn postgres_accepts_our_certificates_for_cert_auth_and_refuses_revoked_ones() {
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("state");
    ok(cli(&state, &["ca", "init"]));
    let server = issue(
        &state,
        "server",
        "pg",
        &["--dns", "localhost", "--ip", "127.0.0.1"],
    );
    let alice = intransit_testkit::unique_name("alice");
    let bob = intransit_testkit::unique_name("bob");
    let mut clients = vec![(alice.clone(), issue(&state, "client", &alice, &[]))];
    for key in ["ecdsa-p384", "ed25519", "rsa-2048"] {
        let name = format!("{alice}-{key}");
        let issued = issue(&state, "client", &name, &["--cn", &alice, "--key", key]);
        clients.push((name, issued));
    }
    let revoked = issue(&state, "client", &bob, &[]);
    ok(cli(&state, &["cert", "revoke", &bob]));

    let pg = PgServer::start(PgOptions {
        ssl: Some(PgSsl {
            cert_file: PathBuf::from(server.file("chain.pem")),
            key_file: PathBuf::from(server.file("key.pem")),
            ca_file: state.join("ca/ca.pem"),
        }),
        ssl_crl: Some(state.join("ca/crl.pem")),
        hba_first: vec!["hostssl all all 127.0.0.1/32 cert".into()],
        ..PgOptions::default()
    })
    .expect("PostgreSQL with native TLS");
    pg.psql(
        "postgres",
        &format!("CREATE ROLE \"{alice}\" LOGIN; CREATE ROLE \"{bob}\" LOGIN"),
    )
    .expect("roles");

    let ca = state.join("ca/ca.pem");
    let conn = |user: &str, issued: &Issued| {
        format!(
            "host=localhost port={} user={user} dbname=postgres sslmode=verify-full sslrootcert={} sslcert={} sslkey={} connect_timeout=10",
            pg.port(),
            ca.display(),
            issued.file("cert.pem"),
            issued.file("key.pem"),
        )
    };
    for (name, issued) in &clients {
        let out = psql(&conn(&alice, issued), "SELECT current_user", None);
        assert!(out.status.success(), "{name}: {}", stderr(&out));
        assert_eq!(stdout(&out), alice, "{name}");
    }
    let out = psql(&conn(&bob, &revoked), "SELECT current_user", None);
    assert!(!out.status.success(), "a revoked certificate logged in");
    assert!(stderr(&out).contains("revoked"), "{}", stderr(&out));
}

#[test]
fn every_key_type_round_trips_through_the_proxy() {
    let user = db_user("keys");
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("state");
    ok(cli(&state, &["ca", "init"]));
    let ca = state.join("ca/ca.pem");
    for key in ["ecdsa-p256", "ecdsa-p384", "ed25519", "rsa-2048"] {
        let server = issue(
            &state,
            "server",
            &format!("server-{key}"),
            &["--dns", "localhost", "--key", key],
        );
        let client = issue(&state, "client", &format!("client-{key}"), &["--key", key]);
        let config = format!(
            r#"
[[listener]]
name = "pg"
listen = "127.0.0.1:0"
upstream = "{}"
[listener.tls]
cert = "{}"
key = "{}"
client_ca = "{}"
"#,
            pg_upstream(),
            server.file("chain.pem"),
            server.file("key.pem"),
            ca.display()
        );
        let proxy = ProxyProcess::start(&config);
        let ci = format!(
            "host=localhost port={} user={} dbname={} sslmode=verify-full sslrootcert={} sslcert={} sslkey={} connect_timeout=10",
            proxy.port(),
            user.name,
            user.name,
            ca.display(),
            client.file("cert.pem"),
            client.file("key.pem"),
        );
        let out = psql(&ci, "SELECT 1", Some(&user.password));
        assert!(out.status.success(), "{key}: {}", stderr(&out));
        let line = proxy.wait_for_log(std::time::Duration::from_secs(5), |v| {
            v["message"] == "connection established"
        });
        assert_eq!(line["identity"], format!("cn:client-{key}"), "{key}");
    }
}

#[test]
fn encrypted_ca_key_needs_the_passphrase() {
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("state");
    let pass = dir.path().join("pass");
    std::fs::write(&pass, "correct horse battery staple\n").expect("write");
    let pass_arg = pass.display().to_string();
    ok(cli(&state, &["ca", "init", "--passphrase-file", &pass_arg]));
    let key = std::fs::read_to_string(state.join("ca/key.pem")).expect("key");
    assert!(key.contains("BEGIN ENCRYPTED PRIVATE KEY"), "{key}");
    // OpenSSL reads it with the same passphrase.
    let out = openssl(&[
        "pkey",
        "-in",
        &state.join("ca/key.pem").display().to_string(),
        "-passin",
        "pass:correct horse battery staple",
        "-noout",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));

    let missing = cli(&state, &["cert", "issue", "client", "--name", "a"]);
    assert!(!missing.status.success());
    let err = stderr(&missing);
    assert!(
        err.contains("--passphrase-file") && err.contains("INTRANSIT_CA_PASSPHRASE"),
        "{err}"
    );

    let wrong = Command::new(BIN)
        .args(["cert", "issue", "client", "--name", "a", "--state-dir"])
        .arg(&state)
        .env("INTRANSIT_CA_PASSPHRASE", "wrong")
        .output()
        .expect("run");
    assert!(!wrong.status.success());
    assert!(
        stderr(&wrong).contains("does not decrypt"),
        "{}",
        stderr(&wrong)
    );
    assert!(!state.join("certs/a").exists(), "files left behind");

    ok(cli(
        &state,
        &[
            "cert",
            "issue",
            "client",
            "--name",
            "a",
            "--passphrase-file",
            &pass_arg,
        ],
    ));
}

#[test]
fn bad_input_is_refused_clearly_and_leaves_nothing_behind() {
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("state");

    let no_ca = cli(&state, &["cert", "issue", "client", "--name", "a"]);
    assert!(!no_ca.status.success());
    assert!(
        stderr(&no_ca).contains("intransit ca init"),
        "{}",
        stderr(&no_ca)
    );

    ok(cli(&state, &["ca", "init"]));
    let again = cli(&state, &["ca", "init"]);
    assert!(!again.status.success());
    assert!(stderr(&again).contains("--force"), "{}", stderr(&again));

    issue(&state, "client", "a", &[]);
    let before = tree(&state);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["cert", "issue", "client", "--name", "a"],
            "already issued",
        ),
        (
            vec!["cert", "issue", "client", "--name", "b", "--days", "0"],
            "days",
        ),
        (
            vec!["cert", "issue", "client", "--name", "b", "--days", "-5"],
            "days",
        ),
        (vec!["cert", "issue", "server", "--name", "b"], "--dns"),
        (
            vec![
                "cert", "issue", "client", "--name", "b", "--key", "dsa-1024",
            ],
            "dsa-1024",
        ),
        (vec!["cert", "issue", "client", "--name", "../evil"], "name"),
        (
            vec![
                "cert",
                "issue",
                "client",
                "--name",
                "b",
                "--out",
                "/dev/null/b",
            ],
            "/dev/null",
        ),
        (vec!["cert", "revoke", "nosuchcert"], "nosuchcert"),
    ];
    for (args, needle) in cases {
        let out = cli(&state, &args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = stderr(&out);
        assert!(err.contains(needle), "{args:?}: {err}");
        assert_eq!(tree(&state), before, "{args:?} left files behind");
    }

    // A corrupt CA key is named as such.
    std::fs::write(
        state.join("ca/key.pem"),
        "-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n",
    )
    .expect("write");
    let out = cli(&state, &["cert", "issue", "client", "--name", "b"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("key"), "{}", stderr(&out));
    assert!(!state.join("certs/b").exists());
}

#[test]
fn cert_check_exits_non_zero_for_expiring_certificates() {
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("state");
    ok(cli(&state, &["ca", "init"]));
    issue(&state, "client", "short", &["--days", "3"]);
    let fine = cli(&state, &["cert", "check", "--warn", "1d"]);
    assert!(fine.status.success(), "{}", stdout(&fine));
    let warn = cli(&state, &["cert", "check", "--warn", "7d"]);
    assert!(!warn.status.success());
    assert!(
        stdout(&warn).contains("short: expiring"),
        "{}",
        stdout(&warn)
    );
    // Files given on the command line are checked instead of the inventory.
    let out = Command::new(BIN)
        .args(["cert", "check", "--warn", "30d"])
        .arg(&pki().expired.cert)
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(stdout(&out).contains("expired"), "{}", stdout(&out));
}

/// `cert check` looks at the CA's CRL and at CRL files given. By default a
/// CRL is judged against its own validity period: one with less than half
/// of it left (amber) or a seventh (red), or already stale, fails the
/// check, and a fresh one passes however short its period. `--crl-warn`
/// replaces that rule with a fixed window.
#[test]
fn cert_check_warns_about_crls_going_stale_and_stale() {
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("state");
    ok(cli(&state, &["ca", "init"]));
    ok(cli(&state, &["ca", "crl", "--days", "1"]));
    // A CRL just issued has all of its one day left.
    let fresh = cli(&state, &["cert", "check"]);
    assert!(fresh.status.success(), "{}", stdout(&fresh));
    assert!(
        stdout(&fresh).contains("every CRL has half of its validity period left or more"),
        "{}",
        stdout(&fresh)
    );
    let fine = cli(&state, &["cert", "check", "--crl-warn", "12h"]);
    assert!(fine.status.success(), "{}", stdout(&fine));
    let soon = cli(&state, &["cert", "check", "--crl-warn", "2d"]);
    assert!(!soon.status.success());
    assert!(
        stdout(&soon).contains("crl.pem: CRL going stale")
            && stdout(&soon).contains("intransit ca crl"),
        "{}",
        stdout(&soon)
    );

    let ca = RawCa::new("stale file CA");
    let crl = ca.dir.path().join("ca.crl");
    let now = time::OffsetDateTime::now_utc();
    ca.write_crl(
        &crl,
        now - time::Duration::days(30),
        now - time::Duration::days(23),
        &[],
        1,
    );
    let check = |args: &[&str], crl: &Path| {
        Command::new(BIN)
            .args(["cert", "check"])
            .args(args)
            .arg(crl)
            .output()
            .expect("run")
    };
    let out = check(&[], &crl);
    assert!(!out.status.success());
    assert!(
        stdout(&out).contains("CRL stale (CN=stale file CA)")
            && stdout(&out).contains("crl_expired"),
        "{}",
        stdout(&out)
    );

    // A week's CRL with three days left: amber by its period, though
    // further off than a fixed window of a day.
    ca.write_crl(
        &crl,
        now - time::Duration::days(4),
        now + time::Duration::days(3),
        &[],
        2,
    );
    let out = check(&[], &crl);
    assert!(!out.status.success(), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("CRL going stale (CN=stale file CA)")
            && stdout(&out).contains("less than half of its validity period"),
        "{}",
        stdout(&out)
    );
    let out = check(&["--crl-warn", "1d"], &crl);
    assert!(out.status.success(), "{}", stdout(&out));

    // Twelve hours left of a week: red.
    ca.write_crl(
        &crl,
        now - time::Duration::days(6) - time::Duration::hours(12),
        now + time::Duration::hours(12),
        &[],
        3,
    );
    let out = check(&[], &crl);
    assert!(!out.status.success(), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("less than a seventh of its validity period"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn renew_reissues_due_certificates_and_runs_the_hook() {
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("state");
    ok(cli(&state, &["ca", "init"]));
    let issued = issue(&state, "client", "svc", &["--uri", "spiffe://prod/svc"]);
    let serial = |state: &Path| {
        let list: serde_json::Value =
            serde_json::from_str(&ok(cli(state, &["cert", "list", "--json"]))).expect("json");
        list["certificates"][0]["serial"]
            .as_str()
            .expect("serial")
            .to_owned()
    };
    let pin = || {
        let pem = std::fs::read_to_string(issued.dir.join("cert.pem")).expect("cert");
        let der = intransit_pki::pem_to_der_certs(&pem).expect("pem");
        intransit_pki::summarize(&der[0]).expect("summary").spki_pin
    };
    let first = serial(&state);
    let first_pin = pin();

    // Not due: nothing changes.
    let out = ok(cli(&state, &["cert", "renew", "svc"]));
    assert!(out.contains("not due"), "{out}");
    assert_eq!(serial(&state), first);

    // Due at a tiny fraction of the lifetime: renewed, with the hook run.
    let marker = dir.path().join("hook-ran");
    let hook = format!(
        "echo \"$INTRANSIT_CERT_NAME $INTRANSIT_CERT_DIR\" > {}",
        marker.display()
    );
    let out = ok(cli(
        &state,
        &[
            "cert",
            "renew",
            "--all",
            "--renew-at",
            "0.000001",
            "--reuse-key",
            "--exec",
            &hook,
        ],
    ));
    assert!(out.contains("svc: renewed"), "{out}");
    let second = serial(&state);
    assert_ne!(second, first);
    assert_eq!(pin(), first_pin, "--reuse-key changed the key");
    let hook_out = std::fs::read_to_string(&marker).expect("the hook did not run");
    assert!(hook_out.starts_with("svc "), "{hook_out}");

    // Forced renewal makes a new key by default.
    ok(cli(&state, &["cert", "renew", "svc", "--force"]));
    assert_ne!(serial(&state), second);
    assert_ne!(pin(), first_pin);

    // The old serials are still known, so they can be revoked.
    let out = ok(cli(
        &state,
        &["cert", "revoke", &first, "--reason", "superseded"],
    ));
    assert!(out.contains("svc"), "{out}");
}

#[test]
fn inspect_fetches_the_chain_over_postgres_negotiation() {
    let proxy = ProxyProcess::start(&listener_toml(&pg_upstream(), "", ""));
    let out = Command::new(BIN)
        .args(["cert", "inspect"])
        .arg(format!("postgres://127.0.0.1:{}", proxy.port()))
        .args(["--sni", "localhost"])
        .output()
        .expect("run");
    let text = ok(out);
    assert!(text.contains("PostgreSQL SSLRequest"), "{text}");
    assert!(
        text.contains("TLSv1.3") || text.contains("TLSv1_3"),
        "{text}"
    );
    let pem = std::fs::read_to_string(&pki().server.cert).expect("cert");
    let der = intransit_pki::pem_to_der_certs(&pem).expect("pem");
    let fingerprint = intransit_pki::sha256_fingerprint(&der[0]);
    assert!(text.contains(&fingerprint), "{text}");
    assert!(text.contains("spki pin:   sha256/"), "{text}");
    assert!(text.contains("chain order: "), "{text}");

    // A file works the same way, and a missing server is a clear error.
    let text = ok(Command::new(BIN)
        .args(["cert", "inspect"])
        .arg(&pki().server.chain)
        .output()
        .expect("run"));
    assert!(text.contains(&fingerprint), "{text}");
    let out = Command::new(BIN)
        .args(["cert", "inspect"])
        .arg(format!("postgres://{DEAD_UPSTREAM}"))
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(stderr(&out).contains(DEAD_UPSTREAM), "{}", stderr(&out));
}

#[test]
fn a_ca_key_that_does_not_match_its_certificate_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("state");
    let other = dir.path().join("other");
    ok(cli(&state, &["ca", "init"]));
    ok(cli(&other, &["ca", "init"]));
    std::fs::copy(other.join("ca/key.pem"), state.join("ca/key.pem")).expect("copy");
    let out = cli(&state, &["cert", "issue", "client", "--name", "x"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("match"), "{}", stderr(&out));
    assert!(!state.join("certs/x").exists());
}

/// The SPKI pin of a PEM certificate, computed by openssl alone.
fn openssl_pin(cert: &Path) -> String {
    let dir = tempfile::tempdir().unwrap();
    let pubkey = dir.path().join("pub.pem");
    let spki = dir.path().join("spki.der");
    let digest = dir.path().join("digest");
    let cert = cert.display().to_string();
    let steps: [&[&str]; 3] = [
        &[
            "x509",
            "-in",
            &cert,
            "-pubkey",
            "-noout",
            "-out",
            &pubkey.display().to_string(),
        ],
        &[
            "pkey",
            "-pubin",
            "-in",
            &pubkey.display().to_string(),
            "-outform",
            "DER",
            "-out",
            &spki.display().to_string(),
        ],
        &[
            "dgst",
            "-sha256",
            "-binary",
            "-out",
            &digest.display().to_string(),
            &spki.display().to_string(),
        ],
    ];
    for step in steps {
        let out = openssl(step);
        assert!(out.status.success(), "openssl {step:?}: {}", stderr(&out));
    }
    let b64 = openssl(&["base64", "-A", "-in", &digest.display().to_string()]);
    format!("sha256/{}", stdout(&b64))
}

#[test]
fn pin_prints_the_pins_of_a_file_and_of_a_served_chain() {
    let leaf = openssl_pin(&pki().server.cert);
    let ca = openssl_pin(&pki().ca);

    let text = ok(Command::new(BIN)
        .arg("pin")
        .arg(&pki().server.chain)
        .output()
        .expect("run"));
    assert!(text.contains(&format!("{leaf}  leaf: ")), "{text}");
    assert!(text.contains(&format!("{ca}  root CA: ")), "{text}");
    assert!(
        text.lines()
            .any(|l| l == format!("pins = [\"{leaf}\", \"{ca}\"]")),
        "{text}"
    );

    // The chain the proxy serves over SSLRequest: the leaf, and the same pin.
    let proxy = ProxyProcess::start(&listener_toml(&pg_upstream(), "", ""));
    let text = ok(Command::new(BIN)
        .arg("pin")
        .arg(format!("postgres://127.0.0.1:{}", proxy.port()))
        .args(["--sni", "localhost"])
        .output()
        .expect("run"));
    assert!(text.contains(&format!("{leaf}  leaf: ")), "{text}");
    assert!(text.contains("PostgreSQL SSLRequest"), "{text}");

    let out = Command::new(BIN)
        .arg("pin")
        .arg(format!("mysql://{DEAD_UPSTREAM}"))
        .output()
        .expect("run");
    assert!(!out.status.success());
}

/// The SHA-256 fingerprint of the certificate a PostgreSQL server presents
/// after an SSLRequest.
fn served_fingerprint(port: u16) -> String {
    let text = ok(Command::new(BIN)
        .args(["cert", "inspect"])
        .arg(format!("postgres://127.0.0.1:{port}"))
        .output()
        .expect("run"));
    text.lines()
        .find_map(|l| l.trim().strip_prefix("sha256:"))
        .map(|f| f.trim().to_owned())
        .unwrap_or_else(|| panic!("no fingerprint in: {text}"))
}

fn file_fingerprint(path: &Path) -> String {
    let pem = std::fs::read_to_string(path).expect("cert");
    let der = intransit_pki::pem_to_der_certs(&pem).expect("pem");
    intransit_pki::sha256_fingerprint(&der[0])
}

#[test]
fn renewal_as_root_keeps_the_key_postgresql_reads_and_postgresql_serves_the_new_certificate() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let state = dir.path().join("state");
    ok(cli(&state, &["ca", "init"]));
    let tls_dir = dir.path().join("pg-tls");
    ok(cli(
        &state,
        &[
            "cert",
            "issue",
            "server",
            "--name",
            "pgsrv",
            "--dns",
            "localhost",
            "--ip",
            "127.0.0.1",
            "--out",
            &tls_dir.display().to_string(),
        ],
    ));
    let pg = PgServer::start(PgOptions {
        ssl: Some(PgSsl {
            cert_file: tls_dir.join("chain.pem"),
            key_file: tls_dir.join("key.pem"),
            ca_file: tls_dir.join("ca.pem"),
        }),
        ..PgOptions::default()
    })
    .expect("PostgreSQL");
    // Hand the directory to the database's own user, as an operator does
    // (`chown -R postgres DIR`), and point PostgreSQL at the files there.
    let account = std::fs::metadata(pg.data_dir()).expect("data dir");
    for entry in std::iter::once(tls_dir.clone()).chain(
        std::fs::read_dir(&tls_dir)
            .expect("dir")
            .map(|e| e.expect("entry").path()),
    ) {
        std::os::unix::fs::chown(&entry, Some(account.uid()), Some(account.gid())).expect("chown");
    }
    let set = format!(
        "ALTER SYSTEM SET ssl_cert_file = '{}'; ALTER SYSTEM SET ssl_key_file = '{}'; SELECT pg_reload_conf();",
        tls_dir.join("chain.pem").display(),
        tls_dir.join("key.pem").display()
    );
    pg.psql("postgres", &set)
        .expect("pointing PostgreSQL at the files");
    let first = file_fingerprint(&tls_dir.join("cert.pem"));
    assert_eq!(served_fingerprint(pg.port()), first);

    // Renewal as root, as a systemd timer runs it.
    let out = ok(cli(&state, &["cert", "renew", "--all", "--force"]));
    assert!(out.contains("pgsrv: renewed"), "{out}");
    let key = std::fs::metadata(tls_dir.join("key.pem")).expect("key");
    assert_eq!(
        (key.uid(), key.gid(), key.permissions().mode() & 0o777),
        (account.uid(), account.gid(), 0o600),
        "the renewed key changed hands"
    );
    let renewed = file_fingerprint(&tls_dir.join("cert.pem"));
    assert_ne!(renewed, first);
    pg.psql("postgres", "SELECT pg_reload_conf()")
        .expect("reload");
    // The reload is asynchronous: the postmaster rereads the files when
    // it handles SIGHUP.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let served = served_fingerprint(pg.port());
        if served == renewed {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "PostgreSQL still serves {served} after the reload; its log:\n{}",
            std::fs::read_to_string(pg.log_path()).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
