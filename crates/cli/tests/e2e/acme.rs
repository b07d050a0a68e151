//! Server certificates from an ACME CA: `cert issue server --acme`, `cert
//! renew` and `up --acme` against a real pebble per test (validation on,
//! its validation authority connecting to intransit's own HTTP-01 and
//! TLS-ALPN-01 answers on loopback), checked with `openssl verify` against
//! pebble's root and with psql `sslmode=verify-full` through the proxy.
//! TLS-ALPN-01 is also answered by the proxy's own listeners: `up`'s on
//! pebble's validation port, and an `intransit proxy` holding that port for
//! `cert issue` run beside it (through the state directory).

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use intransit_testkit::{free_port, require_tool, Pebble, PebbleOptions};

use crate::support::*;

fn pebble() -> Pebble {
    Pebble::start().expect("starting pebble")
}

fn cli(state: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .arg("--state-dir")
        .arg(state)
        .stdin(Stdio::null())
        .output()
        .expect("running intransit")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "command failed: {}\n{}",
        stdout(out),
        stderr(out)
    );
    stdout(out)
}

/// The flags that point intransit at `pebble` and answer HTTP-01 where
/// pebble looks.
fn acme_flags(pebble: &Pebble) -> Vec<String> {
    vec![
        "--acme".into(),
        pebble.directory_url(),
        "--acme-ca".into(),
        pebble.https_ca().display().to_string(),
        "--acme-http".into(),
        format!("127.0.0.1:{}", pebble.http_port()),
    ]
}

fn issue(state: &Path, extra: &[String]) -> Output {
    let mut args: Vec<&str> = vec![
        "cert",
        "issue",
        "server",
        "--name",
        "web",
        "--dns",
        "localhost",
    ];
    args.extend(extra.iter().map(String::as_str));
    cli(state, &args)
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

fn serial(path: &Path) -> String {
    let pem = std::fs::read_to_string(path).expect("cert.pem");
    let der = intransit_pki::pem_to_der_certs(&pem).expect("pem");
    intransit_pki::summarize(&der[0])
        .expect("summary")
        .serial_hex
}

/// `openssl verify` of `dir`'s cert.pem against pebble's root, with the
/// issuers from ca.pem as the untrusted chain.
fn assert_chains_to(dir: &Path, root: &Path) {
    let openssl = require_tool("openssl", "openssl").expect("openssl");
    let out = Command::new(openssl)
        .args(["verify", "-purpose", "sslserver", "-CAfile"])
        .arg(root)
        .arg("-untrusted")
        .arg(dir.join("ca.pem"))
        .arg(dir.join("cert.pem"))
        .output()
        .expect("openssl verify");
    assert!(
        out.status.success() && stdout(&out).ends_with("OK"),
        "openssl verify: {}\n{}",
        stdout(&out),
        stderr(&out)
    );
}

fn account_files(state: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(state.join("acme"))
        .expect("acme dir")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    files
}

#[test]
fn cert_issue_with_http01_chains_to_the_acme_root_names_the_host_and_keeps_keys_private() {
    let pebble = pebble();
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("state");
    let out = ok(&issue(&state, &acme_flags(&pebble)));
    assert!(
        out.contains("from the ACME CA") && out.contains(&pebble.directory_url()),
        "{out}"
    );

    let certs = state.join("certs/web");
    let root = pebble.issuing_root_file().expect("pebble root");
    assert_chains_to(&certs, &root);
    let pem = std::fs::read_to_string(certs.join("cert.pem")).expect("cert");
    let der = intransit_pki::pem_to_der_certs(&pem).expect("pem");
    let summary = intransit_pki::summarize(&der[0]).expect("summary");
    assert_eq!(summary.dns_names, ["localhost"]);
    assert!(summary.ip_addresses.is_empty());
    assert!(
        summary
            .extended_key_usages
            .iter()
            .any(|u| u == "serverAuth"),
        "{:?}",
        summary.extended_key_usages
    );
    // chain.pem is what a server presents: the leaf, then the issuers.
    let chain = std::fs::read_to_string(certs.join("chain.pem")).expect("chain");
    let chain = intransit_pki::pem_to_der_certs(&chain).expect("chain pem");
    assert!(
        chain.len() >= 2,
        "{} certificate(s) in chain.pem",
        chain.len()
    );
    assert_eq!(chain[0], der[0]);

    assert_eq!(mode(&certs.join("key.pem")), 0o600);
    let accounts = account_files(&state);
    assert_eq!(accounts.len(), 1, "{accounts:?}");
    assert_eq!(mode(&accounts[0]), 0o600);
    assert_eq!(mode(&state.join("acme")), 0o700);

    // The inventory knows where it came from.
    let list = ok(&cli(&state, &["cert", "list", "--json"]));
    let list: serde_json::Value = serde_json::from_str(&list).expect("json");
    let entry = &list["certificates"][0];
    assert_eq!(entry["name"], "web");
    assert_eq!(entry["serial"], summary.serial_hex.as_str());
    assert_eq!(entry["acme"], pebble.directory_url().as_str());

    // A second issue under the same name needs --force, like the local CA's.
    let again = issue(&state, &acme_flags(&pebble));
    assert!(!again.status.success());
    assert!(stderr(&again).contains("--force"), "{}", stderr(&again));
}

#[test]
fn cert_renew_goes_back_to_the_acme_ca_with_tls_alpn01_and_the_same_account() {
    let pebble = pebble();
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("state");
    let mut flags = acme_flags(&pebble);
    flags.extend([
        "--acme-challenge".to_owned(),
        "tls-alpn-01".to_owned(),
        "--acme-tls-alpn".to_owned(),
        format!("127.0.0.1:{}", pebble.tls_port()),
        "--acme-email".to_owned(),
        "ops@example.com".to_owned(),
    ]);
    ok(&issue(&state, &flags));
    let certs = state.join("certs/web");
    let first = serial(&certs.join("cert.pem"));
    let accounts = account_files(&state);
    let account = std::fs::read(&accounts[0]).expect("account");

    // Not due: a fresh certificate stays.
    let out = ok(&cli(&state, &["cert", "renew", "web"]));
    assert!(out.contains("not due until"), "{out}");
    assert_eq!(serial(&certs.join("cert.pem")), first);

    // Forced: no ACME flag is given; the recorded settings are used (the
    // ACME server, its extra root, TLS-ALPN-01 on the recorded address).
    let out = ok(&cli(&state, &["cert", "renew", "web", "--force"]));
    assert!(out.contains("renewed by the ACME CA"), "{out}");
    let second = serial(&certs.join("cert.pem"));
    assert_ne!(first, second);
    assert!(out.contains(&format!("{first} -> {second}")), "{out}");
    assert_chains_to(&certs, &pebble.issuing_root_file().expect("root"));
    assert_eq!(mode(&certs.join("key.pem")), 0o600);
    // The account was reused, not registered again.
    assert_eq!(account_files(&state), accounts);
    assert_eq!(std::fs::read(&accounts[0]).expect("account"), account);
    // Nothing answered HTTP-01 (its server only runs for http-01 orders):
    // pebble validated the TLS-ALPN-01 answer, as recorded.
    let inventory = std::fs::read_to_string(state.join("inventory.json")).expect("inventory");
    let inventory: serde_json::Value = serde_json::from_str(&inventory).expect("json");
    let origin = &inventory["certificates"][0]["acme"];
    assert_eq!(origin["challenge"], "tls-alpn-01", "{inventory}");
    assert_eq!(
        origin["challenge_addr"],
        format!("127.0.0.1:{}", pebble.tls_port()).as_str()
    );
    assert_eq!(origin["contact"][0], "mailto:ops@example.com");
}

#[test]
fn a_refused_challenge_is_named_with_the_cas_detail_and_the_old_certificate_stays() {
    let pebble = pebble();
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("state");
    ok(&issue(&state, &acme_flags(&pebble)));
    let certs = state.join("certs/web");
    let files = ["cert.pem", "key.pem", "chain.pem", "ca.pem"];
    let before: Vec<Vec<u8>> = files
        .iter()
        .map(|f| std::fs::read(certs.join(f)).expect("file"))
        .collect();
    let inventory = std::fs::read(state.join("inventory.json")).expect("inventory");

    // The answer is served where pebble does not look: nothing answers on
    // its HTTP-01 port, and it says so.
    // A port free now may be the very one pebble connects to (it only
    // connects there, so the port is free too): never that one.
    let elsewhere = std::iter::repeat_with(free_port)
        .find(|&p| p != pebble.http_port() && p != pebble.tls_port())
        .map(|p| format!("127.0.0.1:{p}"))
        .expect("a free port");
    let out = cli(
        &state,
        &["cert", "renew", "web", "--force", "--acme-http", &elsewhere],
    );
    assert!(!out.status.success(), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(
        err.contains("refused the http-01 challenge for localhost"),
        "{err}"
    );
    // pebble's problem document: its detail and type.
    assert!(err.contains("urn:ietf:params:acme:error:"), "{err}");
    assert!(
        err.contains(&format!(":{}", pebble.http_port())),
        "the detail names where pebble connected: {err}"
    );
    let after: Vec<Vec<u8>> = files
        .iter()
        .map(|f| std::fs::read(certs.join(f)).expect("file"))
        .collect();
    assert!(before == after, "the certificate files changed");
    assert_eq!(
        std::fs::read(state.join("inventory.json")).expect("inventory"),
        inventory
    );
}

#[test]
fn an_unreachable_acme_server_is_retried_then_reported_and_nothing_is_written() {
    let mut pebble = pebble();
    let flags = acme_flags(&pebble);
    pebble.stop();
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("state");
    let mut flags = flags;
    flags.extend(["--acme-attempts".to_owned(), "2".to_owned()]);
    let out = issue(&state, &flags);
    assert!(!out.status.success(), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "the ACME server {} cannot be reached (2 attempt(s))",
            pebble.directory_url()
        )),
        "{err}"
    );
    assert!(err.to_lowercase().contains("connection refused"), "{err}");
    assert!(err.contains("trying again"), "no retry was logged: {err}");
    assert!(!state.join("certs/web").exists());
    assert!(!state.join("inventory.json").exists());
}

#[test]
fn up_with_acme_serves_the_acme_certificate_to_psql_verify_full() {
    let pebble = pebble();
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("state");
    let args = in_front_of_pg(up_args(&pebble, &["--listen", "127.0.0.1:0"]));
    let mut up = UpProcess::start(&state, &args);
    let command = up.command_line("psql", &pebble);
    // The server is not verified with the local CA: the printed command
    // trusts the system's roots, as for a public ACME CA.
    assert!(command.contains("sslrootcert=system"), "{command}");
    assert!(command.contains("host=localhost"), "{command}");
    let root = pebble.issuing_root_file().expect("root");
    assert_eq!(psql_through(&command, &root), "42");
    up.stop();
    assert_chains_to(&state.join("certs/server"), &root);
    assert_eq!(mode(&state.join("certs/server/key.pem")), 0o600);
}

#[test]
fn external_account_binding_is_sent_when_the_ca_requires_it() {
    // pebble's own example key: base64url, as CAs hand them out.
    let key = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W";
    let pebble = Pebble::start_with(&PebbleOptions {
        external_account: Some(("kid-1".to_owned(), key.to_owned())),
        ..PebbleOptions::default()
    })
    .expect("starting pebble");
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("state");

    let refused = issue(&state, &acme_flags(&pebble));
    assert!(!refused.status.success());
    let err = stderr(&refused);
    assert!(
        err.contains("the ACME server refused the new account") && err.contains("externalAccount"),
        "{err}"
    );

    let mut flags = acme_flags(&pebble);
    flags.extend([
        "--acme-eab-kid".to_owned(),
        "kid-1".to_owned(),
        "--acme-eab-hmac-key".to_owned(),
        key.to_owned(),
    ]);
    ok(&issue(&state, &flags));
    assert_chains_to(
        &state.join("certs/web"),
        &pebble.issuing_root_file().expect("root"),
    );
}

#[test]
fn up_with_acme_renews_its_server_certificate_there_while_it_runs() {
    let pebble = short_lived_pebble();
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("state");
    let args = in_front_of_pg(up_args(&pebble, &["--listen", "127.0.0.1:0"]));
    let mut up = UpProcess::start(&state, &args);
    let command = up.command_line("psql", &pebble);
    let port: u16 = command
        .split_whitespace()
        .find_map(|w| w.strip_prefix("port="))
        .and_then(|p| p.parse().ok())
        .expect("port in the psql command");
    let issued: Vec<String> = up
        .wait_for_logs(2, issued, &pebble)
        .iter()
        .map(|v| v["serial"].as_str().expect("serial").to_owned())
        .collect();
    assert_ne!(issued[0], issued[1]);

    // The listener serves the renewed certificate, which chains to
    // pebble's root for the name asked.
    let root = std::fs::read_to_string(pebble.issuing_root_file().expect("root")).expect("root");
    let mut roots = rustls::RootCertStore::empty();
    for der in intransit_pki::pem_to_der_certs(&root).expect("root pem") {
        roots.add(der.into()).expect("root");
    }
    let config = std::sync::Arc::new(
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let leaf = crate::lifecycle::served_leaf(port, config.clone());
        let serial = intransit_pki::summarize(leaf.as_ref())
            .expect("summary")
            .serial_hex;
        if serial.eq_ignore_ascii_case(&issued[1]) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still serving {serial}, not the renewed {}",
            issued[1]
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    up.stop();
}

#[test]
fn acme_flags_are_checked_before_anything_is_written() {
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("state");

    let out = issue(
        &state,
        &["--acme-http".to_owned(), "127.0.0.1:80".to_owned()],
    );
    assert!(
        stderr(&out).contains("--acme-http needs --acme DIRECTORY_URL"),
        "{}",
        stderr(&out)
    );
    let out = issue(
        &state,
        &["--acme".to_owned(), "http://ca.example/dir".to_owned()],
    );
    assert!(
        stderr(&out).contains("is not an https:// URL"),
        "{}",
        stderr(&out)
    );
    let out = issue(
        &state,
        &[
            "--acme".to_owned(),
            "https://ca.example/dir".to_owned(),
            "--days".to_owned(),
            "30".to_owned(),
        ],
    );
    assert!(
        stderr(&out).contains("the ACME CA chooses the lifetime"),
        "{}",
        stderr(&out)
    );

    // `up` binds the challenge address among its checks: one in use stops
    // it before the state directory exists.
    let held = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = held.local_addr().expect("addr").to_string();
    let out = Command::new(BIN)
        .args(["up", "--state-dir"])
        .arg(&state)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "off",
            "--acme-dns",
            "localhost",
        ])
        .args(["--acme", "https://127.0.0.1:1/dir", "--acme-http", &addr])
        .stdin(Stdio::null())
        .output()
        .expect("intransit up");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(&format!("cannot answer the http-01 challenge on {addr}")),
        "{}",
        stderr(&out)
    );
    assert!(!state.exists());
}

/// A running `intransit up --log-format json`: the lines it prints and its
/// log, as they come.
struct UpProcess {
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
    logs: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
}

impl UpProcess {
    fn start(state: &Path, args: &[String]) -> UpProcess {
        let mut child = Command::new(BIN)
            .args([
                "--log-format",
                "json",
                "--log-level",
                "debug",
                "up",
                "--state-dir",
            ])
            .arg(state)
            .args(["--admin", "off"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("intransit up");
        let logs: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>> =
            std::sync::Arc::default();
        let sink = std::sync::Arc::clone(&logs);
        let err = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    sink.lock().expect("logs").push(v);
                }
            }
        });
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        UpProcess { child, lines, logs }
    }

    /// The first printed line starting with `program`, trimmed.
    fn command_line(&mut self, program: &str, pebble: &Pebble) -> String {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = self.lines.recv_timeout(left) else {
                let _ = self.child.kill();
                panic!(
                    "no {program} line from up; log:\n{:#?}\npebble:\n{}",
                    self.logs(),
                    pebble.log()
                );
            };
            if line.trim_start().starts_with(&format!("{program} ")) {
                return line.trim().to_owned();
            }
        }
    }

    fn logs(&self) -> Vec<serde_json::Value> {
        self.logs.lock().expect("logs").clone()
    }

    /// Waits until `count` log lines match `pred`; returns them.
    fn wait_for_logs(
        &mut self,
        count: usize,
        pred: impl Fn(&serde_json::Value) -> bool,
        pebble: &Pebble,
    ) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let logs = self.logs();
            assert!(
                logs.iter().all(|v| v["level"] != "ERROR"),
                "an error was logged: {logs:#?}"
            );
            let found: Vec<_> = logs.into_iter().filter(|v| pred(v)).collect();
            if found.len() >= count {
                return found;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "{} of {count} lines; log:\n{:#?}\npebble:\n{}",
                    found.len(),
                    self.logs(),
                    pebble.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stop(mut self) {
        signal(self.child.id(), "TERM");
        assert!(self.child.wait().expect("wait").success());
    }
}

/// `up`'s flags for a certificate for localhost from `pebble`, and `extra`.
fn up_args(pebble: &Pebble, extra: &[&str]) -> Vec<String> {
    let mut args = acme_flags(pebble);
    args.extend(["--acme-dns", "localhost"].map(str::to_owned));
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

/// `args`, with the shared PostgreSQL as the upstream.
fn in_front_of_pg(mut args: Vec<String>) -> Vec<String> {
    let upstream = format!("unix:{}", pg().socket_path().display());
    args.extend(["--upstream", &upstream, "--user", pg().superuser()].map(str::to_owned));
    args
}

/// `up`'s flags for TLS-ALPN-01 answered on its own listener: it listens
/// where pebble validates.
fn tls_alpn_on_listener(pebble: &Pebble) -> Vec<String> {
    let addr = format!("127.0.0.1:{}", pebble.tls_port());
    up_args(
        pebble,
        &[
            "--listen",
            &addr,
            "--acme-challenge",
            "tls-alpn-01",
            "--acme-tls-alpn",
            &addr,
        ],
    )
}

/// A pebble issuing 12-second certificates, due after about 8 seconds.
fn short_lived_pebble() -> Pebble {
    Pebble::start_with(&PebbleOptions {
        validity_seconds: Some(12),
        ..PebbleOptions::default()
    })
    .expect("starting pebble")
}

/// What `openssl s_client` offering only ALPN `acme-tls/1` for `name`
/// gets from 127.0.0.1:`port`: the certificate served (DER) when the
/// handshake negotiated `acme-tls/1`, `None` when it was refused.
fn acme_tls_hello(port: u16, name: &str) -> Option<Vec<u8>> {
    let openssl = require_tool("openssl", "openssl").expect("openssl");
    let out = Command::new(openssl)
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .args(["-servername", name, "-alpn", "acme-tls/1"])
        .stdin(Stdio::null())
        .output()
        .expect("openssl s_client");
    let text = format!("{}\n{}", stdout(&out), stderr(&out));
    if !text.contains("ALPN protocol: acme-tls/1") {
        assert!(
            text.contains("handshake failure") && !text.contains("BEGIN CERTIFICATE"),
            "neither negotiated nor refused with handshake_failure: {text}"
        );
        return None;
    }
    let certs = intransit_pki::pem_to_der_certs(&stdout(&out)).expect("served certificate");
    Some(certs[0].clone())
}

/// Leaves a pending TLS-ALPN-01 answer for `name` in `state`, as `cert
/// issue --acme` does while a proxy holds the challenge's address.
fn pending_challenge(state: &Path, name: &str) -> (PathBuf, intransit_pki::ChallengeCertificate) {
    let certificate = intransit_pki::ChallengeCertificate::new(name, &[0x42; 32]).expect("cert");
    let path = intransit_pki::tls_alpn::write_challenge_file(
        &intransit_pki::StateDir::new(state),
        name,
        &certificate,
    )
    .expect("challenge file");
    (path, certificate)
}

fn answered_validation(v: &serde_json::Value) -> bool {
    v["message"] == "answered an ACME TLS-ALPN-01 validation"
}

fn issued(v: &serde_json::Value) -> bool {
    v["message"] == "certificate issued by the ACME server"
}

fn psql_through(command: &str, root: &Path) -> String {
    let command = command.replace(
        "sslrootcert=system",
        &format!("sslrootcert={}", root.display()),
    );
    let run = Command::new("sh")
        .arg("-c")
        .arg(format!("{command} -X -A -t -c 'SELECT 40 + 2'"))
        .stdin(Stdio::null())
        .output()
        .expect("sh");
    assert!(
        run.status.success(),
        "psql verify-full against pebble's root failed: {}",
        stderr(&run)
    );
    stdout(&run)
}

#[test]
fn up_answers_tls_alpn01_on_its_own_postgres_listener_and_renews_through_it() {
    // Renewed while the listener serves.
    let pebble = short_lived_pebble();
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("state");
    let mut up = UpProcess::start(&state, &in_front_of_pg(tls_alpn_on_listener(&pebble)));
    let command = up.command_line("psql", &pebble);
    assert!(
        command.contains(&format!("port={}", pebble.tls_port())),
        "{command}"
    );
    let root = pebble.issuing_root_file().expect("root");
    assert_eq!(psql_through(&command, &root), "42");

    // The renewal goes through the running listener: no listener of its
    // own, the answer given by the proxy's PostgreSQL listener.
    let renewed = up.wait_for_logs(2, issued, &pebble);
    assert_ne!(renewed[0]["serial"], renewed[1]["serial"]);
    let logs = up.logs();
    assert!(
        logs.iter()
            .any(|v| v["message"] == "answering ACME challenges on the proxy's own listener"),
        "{logs:#?}"
    );
    let answers: Vec<_> = logs.iter().filter(|v| answered_validation(v)).collect();
    assert!(
        !answers.is_empty(),
        "the listener answered nothing: {logs:#?}"
    );
    assert!(answers
        .iter()
        .all(|v| v["listener"] == "postgres" && v["server_name"] == "localhost"));
    // An answered validation is audited as such, not as a client.
    assert!(
        logs.iter().any(|v| v["message"] == "connection audit"
            && v["outcome"] == "acme_validation"
            && v["alpn"] == "acme-tls/1"),
        "{logs:#?}"
    );

    // While a challenge is pending, clients are served as before...
    let (file, pending) = pending_challenge(&state, "pending.example");
    assert_eq!(psql_through(&command, &root), "42");
    // ...and only acme-tls/1 for that name gets the challenge certificate.
    assert_eq!(
        acme_tls_hello(pebble.tls_port(), "pending.example").as_deref(),
        Some(pending.cert_der())
    );
    std::fs::remove_file(&file).expect("remove");
    assert_eq!(acme_tls_hello(pebble.tls_port(), "pending.example"), None);
    assert_eq!(acme_tls_hello(pebble.tls_port(), "unknown.example"), None);
    up.wait_for_logs(
        1,
        |v| {
            v["message"] == "connection refused"
                && v["reason"] == "alpn"
                && v["detail"]
                    .as_str()
                    .is_some_and(|d| d.contains("unknown.example"))
        },
        &pebble,
    );
    assert_eq!(psql_through(&command, &root), "42");
    up.stop();
    assert_chains_to(&state.join("certs/server"), &root);
}

#[test]
fn up_with_acme_over_a_tls_listener_prints_client_lines_that_trust_the_acme_root() {
    let pebble = pebble();
    let redis = intransit_testkit::RedisServer::shared().expect("redis");
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("state");
    let mut args = tls_alpn_on_listener(&pebble);
    args.extend([
        "--protocol".to_owned(),
        "tls".to_owned(),
        "--upstream".to_owned(),
        redis.addr(),
    ]);
    let mut up = UpProcess::start(&state, &args);
    let openssl_line = up.command_line("openssl", &pebble);
    let redis_line = up.command_line("redis-cli", &pebble);
    // No line names the local CA's file for the server: it is not the
    // ACME certificate's issuer.
    let local_ca = state.join("ca/ca.pem").display().to_string();
    for line in [&openssl_line, &redis_line] {
        assert!(!line.contains(&local_ca), "{line}");
        assert!(line.contains("localhost"), "{line}");
    }
    // The lines as printed, with pebble's root standing in for the
    // system's roots (which a public ACME CA is in).
    let root = pebble.issuing_root_file().expect("root");
    let redis_cli = redis_line.replacen("--tls", &format!("--tls --cacert {}", root.display()), 1);
    let run = Command::new("sh")
        .arg("-c")
        .arg(&redis_cli)
        .stdin(Stdio::null())
        .output()
        .expect("sh");
    assert_eq!(stdout(&run), "PONG", "{redis_cli}: {}", stderr(&run));
    let openssl = openssl_line.replacen(
        "-verify_return_error",
        &format!("-verify_return_error -CAfile {}", root.display()),
        1,
    );
    let run = Command::new("sh")
        .arg("-c")
        .arg(format!("{openssl} </dev/null"))
        .output()
        .expect("sh");
    assert!(
        stdout(&run).contains("Verify return code: 0 (ok)"),
        "{openssl}: {}\n{}",
        stdout(&run),
        stderr(&run)
    );
    up.stop();
}

#[test]
fn up_with_acme_in_front_of_mariadb_prints_a_mariadb_line_that_trusts_the_acme_root() {
    let pebble = pebble();
    let mariadb = intransit_testkit::MariaDbServer::shared().expect("mariadb");
    mariadb
        .create_user(
            "acme_up",
            "acme-up-pw",
            intransit_testkit::MariaDbAuth::NativePassword,
        )
        .expect("user");
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("state");
    let upstream = mariadb.addr();
    let args = up_args(
        &pebble,
        &[
            "--listen",
            "127.0.0.1:0",
            "--protocol",
            "mysql",
            "--upstream",
            &upstream,
            "--user",
            "acme_up",
        ],
    );
    let mut up = UpProcess::start(&state, &args);
    let line = up.command_line("mariadb", &pebble);
    let local_ca = state.join("ca/ca.pem").display().to_string();
    assert!(!line.contains(&local_ca), "{line}");
    assert!(line.contains("-h localhost"), "{line}");
    assert!(line.contains("--ssl-verify-server-cert"), "{line}");
    // The line as printed, with pebble's root standing in for the
    // system's roots and the password given instead of prompted for.
    let root = pebble.issuing_root_file().expect("root");
    let command = line.replacen(" -p ", " -pacme-up-pw ", 1).replacen(
        "--ssl-verify-server-cert",
        &format!("--ssl-verify-server-cert --ssl-ca={}", root.display()),
        1,
    );
    assert_ne!(command, line, "{line}");
    let run = Command::new("sh")
        .arg("-c")
        .arg(format!("{command} -N -B -e 'SELECT 40 + 2'"))
        .stdin(Stdio::null())
        .output()
        .expect("sh");
    assert_eq!(stdout(&run), "42", "{command}: {}", stderr(&run));
    up.stop();
}

#[test]
fn a_running_proxy_answers_tls_alpn01_for_cert_issue_in_another_process() {
    let pebble = pebble();
    let redis = intransit_testkit::RedisServer::shared().expect("redis");
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("state");
    let addr = format!("127.0.0.1:{}", pebble.tls_port());
    let config = format!(
        "state_dir = \"{}\"\n{}",
        state.display(),
        listener_toml(&redis.addr(), "", "")
            .replace("name = \"pg\"", "name = \"redis\"\nprotocol = \"tls\"")
            .replace("listen = \"127.0.0.1:0\"", &format!("listen = \"{addr}\""))
    );
    let proxy = ProxyProcess::start(&config);

    // Nothing pending: acme-tls/1 is refused at the handshake.
    assert_eq!(acme_tls_hello(proxy.port(), "localhost"), None);
    let refused = proxy.refusal("alpn");
    assert!(
        refused["detail"].as_str().is_some_and(
            |d| d.contains("acme-tls/1") && d.contains("no TLS-ALPN-01 challenge pending")
        ),
        "{refused}"
    );

    // The address is the proxy's: cert issue leaves its answer in the
    // state directory, and the proxy gives it.
    let mut flags = acme_flags(&pebble);
    flags.extend([
        "--acme-challenge".to_owned(),
        "tls-alpn-01".to_owned(),
        "--acme-tls-alpn".to_owned(),
        addr,
    ]);
    let out = issue(&state, &flags);
    assert!(
        out.status.success(),
        "{}\nproxy: {:#?}\npebble: {}",
        stderr(&out),
        proxy.logs(),
        pebble.log()
    );
    assert_chains_to(
        &state.join("certs/web"),
        &pebble.issuing_root_file().expect("root"),
    );
    let answered = proxy.wait_for_log(Duration::from_secs(5), answered_validation);
    assert_eq!(answered["listener"], "redis");
    assert_eq!(answered["server_name"], "localhost");
    // The answers are gone with the order.
    let left: Vec<_> = std::fs::read_dir(state.join("acme/tls-alpn"))
        .expect("challenge dir")
        .collect();
    assert!(left.is_empty(), "{left:?}");

    // A normal client is served as before while a challenge is pending,
    // and never gets acme-tls/1.
    let (_file, pending) = pending_challenge(&state, "localhost");
    let run = crate::tls_protocol::redis_cli(proxy.port(), Some(&pki().trainer), true, &["PING"]);
    assert_eq!(stdout(&run), "PONG", "{}", stderr(&run));
    let established = proxy.wait_for_log(Duration::from_secs(5), |v| {
        v["message"] == "connection audit" && v["outcome"] == "ok"
    });
    assert_ne!(established["alpn"], "acme-tls/1", "{established}");
    assert_eq!(
        acme_tls_hello(proxy.port(), "localhost").as_deref(),
        Some(pending.cert_der())
    );
}
