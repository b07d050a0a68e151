//! The binary's life: `intransit up` from nothing, `check-config`, and the
//! drain on SIGTERM.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::support::*;

struct Up {
    child: Child,
    stdout: mpsc::Receiver<String>,
}

impl Up {
    fn start(state_dir: &std::path::Path) -> Up {
        let mut child = Command::new(BIN)
            .arg("up")
            .arg("--state-dir")
            .arg(state_dir)
            .args(["--listen", "127.0.0.1:0", "--upstream"])
            .arg(format!("unix:{}", pg().socket_path().display()))
            .args(["--user", pg().superuser()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("intransit up");
        let out = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Up { child, stdout: rx }
    }

    /// Collects stdout until the "Press Ctrl-C" line.
    fn banner(&self) -> Vec<String> {
        let mut lines = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .stdout
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no banner from intransit up; got {lines:?}"));
            let done = line.contains("Press Ctrl-C");
            lines.push(line);
            if done {
                return lines;
            }
        }
    }

    fn terminate(mut self) -> std::process::ExitStatus {
        signal(self.child.id(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "intransit up did not exit on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn up_creates_state_prints_a_working_psql_command_and_reuses_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("state");
    let up = Up::start(&state);
    let banner = up.banner();
    let text = banner.join("\n");
    assert!(text.contains("(created)"), "{text}");
    let command = banner
        .iter()
        .find(|l| l.trim_start().starts_with("psql "))
        .unwrap_or_else(|| panic!("no psql line in {text}"))
        .trim()
        .to_owned();
    for needle in ["sslmode=verify-full", "sslrootcert=", "sslcert=", "sslkey="] {
        assert!(command.contains(needle), "{command}");
    }
    // Run the printed command exactly as a user would paste it.
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("{command} -X -A -t -c 'SELECT 40 + 2'"))
        .stdin(Stdio::null())
        .output()
        .expect("sh");
    assert!(
        out.status.success(),
        "printed command failed: {}",
        stderr(&out)
    );
    assert_eq!(stdout(&out), "42");

    // Keys are private; the certificates are ECDSA P-256.
    for key in ["ca/key.pem", "certs/server/key.pem", "certs/client/key.pem"] {
        assert_eq!(mode(&state.join(key)), 0o600, "{key}");
    }
    let server = std::fs::read(state.join("certs/server/cert.pem")).expect("server cert");
    let der = intransit_pki::pem_to_der_certs(&String::from_utf8_lossy(&server)).expect("pem");
    let summary = intransit_pki::summarize(&der[0]).expect("summary");
    assert!(
        summary.dns_names.iter().any(|d| d == "localhost"),
        "{summary:?}"
    );
    assert_eq!(summary.ip_addresses.len(), 2, "{summary:?}");
    assert!(summary.key_description.contains("P-256"), "{summary:?}");
    let fingerprint = summary.fingerprint_sha256.clone();

    let status = up.terminate();
    assert!(status.success(), "exit status {status:?}");

    // A second run reuses what the first created.
    let again = Up::start(&state);
    let text = again.banner().join("\n");
    assert!(text.contains("(reused)"), "{text}");
    let server = std::fs::read(state.join("certs/server/cert.pem")).expect("server cert");
    let der = intransit_pki::pem_to_der_certs(&String::from_utf8_lossy(&server)).expect("pem");
    assert_eq!(
        intransit_pki::summarize(&der[0])
            .expect("summary")
            .fingerprint_sha256,
        fingerprint
    );
    // SIGHUP reloads (nothing changed here) instead of ending the process,
    // whose exit status would then say so.
    signal(again.child.id(), "HUP");
    assert!(again.terminate().success());
}

#[test]
fn up_starts_without_a_database_and_clients_are_told_it_is_unavailable() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut child = Command::new(BIN)
        .arg("up")
        .arg("--state-dir")
        .arg(dir.path())
        .args(["--listen", "127.0.0.1:0", "--upstream", DEAD_UPSTREAM])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("intransit up");
    let out = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(out).lines();
    let mut command = None;
    for line in lines.by_ref() {
        let line = line.expect("line");
        if line.trim_start().starts_with("psql ") {
            command = Some(line.trim().to_owned());
            break;
        }
    }
    let command = command.expect("psql line");
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("{command} -X -c 'SELECT 1'"))
        .stdin(Stdio::null())
        .output()
        .expect("sh");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("the database is unavailable"),
        "{}",
        stderr(&out)
    );
    signal(child.id(), "TERM");
    let output = child.wait_with_output().expect("wait");
    assert!(output.status.success());
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(log.contains("not reachable"), "{log}");
}

#[test]
fn check_config_accepts_a_good_file_and_names_the_bad_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let good = dir.path().join("good.toml");
    std::fs::write(&good, listener_toml("127.0.0.1:5432", "", "")).expect("write");
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(&good)
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("OK"), "{}", stdout(&out));

    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        listener_toml("127.0.0.1:5432", "min_version = \"1.0\"", ""),
    )
    .expect("write");
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(&bad)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("listener[0].tls.min_version"), "{err}");
    assert!(err.contains("\"1.3\""), "{err}");

    let missing = dir.path().join("missing.toml");
    let text = listener_toml("127.0.0.1:5432", "", "").replace(
        &pki().server.key.display().to_string(),
        "/nonexistent/key.pem",
    );
    std::fs::write(&missing, text).expect("write");
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(&missing)
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("/nonexistent/key.pem"),
        "{}",
        stderr(&out)
    );

    // The proxy command refuses the same file before binding anything.
    let out = Command::new(BIN)
        .args(["proxy", "--config"])
        .arg(&bad)
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("listener[0].tls.min_version"));
}

#[test]
fn sigterm_drains_open_connections_before_exiting() {
    let user = db_user("drain");
    let proxy = ProxyProcess::start(&listener_toml(&pg_upstream(), "", ""));
    let psql_bin = intransit_testkit::require_tool("psql", "postgresql-client").expect("psql");
    let child = Command::new(psql_bin)
        .arg(conninfo(
            proxy.port(),
            &user.name,
            &user.name,
            &pki().trainer,
            "",
        ))
        .args(["-X", "-A", "-t", "-c", "SELECT pg_sleep(2), 'finished'"])
        .env("PGPASSWORD", &user.password)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("psql");
    proxy.wait_for_log(Duration::from_secs(10), |v| {
        v["message"] == "connection established"
    });
    let port = proxy.port();
    signal(proxy.pid(), "TERM");
    std::thread::sleep(Duration::from_millis(300));
    // New connections are no longer accepted...
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "still accepting after SIGTERM"
    );
    // ...but the running query finishes.
    let out = child.wait_with_output().expect("psql");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("finished"));
    let status = proxy.wait_exit();
    assert!(status.success(), "{status:?}");
}

/// The SHA-256 fingerprint of the certificate the proxy serves now, as seen
/// by a client that does SSLRequest and a TLS handshake.
pub(crate) fn served_fingerprint(port: u16) -> String {
    let leaf = served_leaf(port, rustls_client(Some(&pki().trainer), &[]));
    intransit_pki::sha256_fingerprint(leaf.as_ref())
}

/// The certificate the proxy presents to a client that does SSLRequest and
/// a TLS handshake with `config`. The client's own certificate (or its
/// absence) does not matter: the server's arrives before it is judged.
pub(crate) fn served_leaf(
    port: u16,
    config: std::sync::Arc<rustls::ClientConfig>,
) -> rustls::pki_types::CertificateDer<'static> {
    use std::io::{Read, Write};
    let mut tcp = tcp(port);
    write(&mut tcp, &crate::negotiation::SSL_REQUEST);
    let mut s = [0u8; 1];
    tcp.read_exact(&mut s).expect("S");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let conn = rustls::ClientConnection::new(config, name).expect("conn");
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let _ = tls.flush();
    while tls.conn.is_handshaking() {
        if tls.conn.complete_io(&mut tls.sock).is_err() {
            break;
        }
    }
    tls.conn.peer_certificates().expect("peer certs")[0]
        .clone()
        .into_owned()
}

#[test]
fn sighup_reloads_the_server_certificate_without_dropping_connections() {
    use intransit_pki::{CertificateKind, Validity};
    let user = db_user("reload");
    let dir = tempfile::tempdir().expect("temp dir");
    let p = pki();
    let first = crate::support::issue(
        &p.authority,
        dir.path(),
        "one",
        CertificateKind::Server,
        "localhost",
        &[],
        Validity::days_from_now(5),
    );
    let second = crate::support::issue(
        &p.authority,
        dir.path(),
        "two",
        CertificateKind::Server,
        "localhost",
        &[],
        Validity::days_from_now(5),
    );
    let live = dir.path().join("live");
    std::fs::create_dir_all(&live).expect("dir");
    let install = |from: &intransit_pki::CertificatePaths| {
        std::fs::copy(&from.chain, live.join("chain.pem")).expect("copy chain");
        std::fs::copy(&from.key, live.join("key.pem")).expect("copy key");
    };
    install(&first);
    let config = listener_toml(&pg_upstream(), "", "")
        .replace(
            &p.server.chain.display().to_string(),
            &live.join("chain.pem").display().to_string(),
        )
        .replace(
            &p.server.key.display().to_string(),
            &live.join("key.pem").display().to_string(),
        );
    let proxy = ProxyProcess::start(&config);
    let fp = |paths: &intransit_pki::CertificatePaths| {
        let pem = std::fs::read_to_string(&paths.cert).expect("cert");
        intransit_pki::sha256_fingerprint(&intransit_pki::pem_to_der_certs(&pem).expect("pem")[0])
    };
    assert_eq!(served_fingerprint(proxy.port()), fp(&first));

    // A session that stays open across the reload.
    let psql_bin = intransit_testkit::require_tool("psql", "postgresql-client").expect("psql");
    let held = Command::new(psql_bin)
        .arg(conninfo(
            proxy.port(),
            &user.name,
            &user.name,
            &p.trainer,
            "",
        ))
        .args(["-X", "-A", "-t", "-c", "SELECT pg_sleep(2), 'survived'"])
        .env("PGPASSWORD", &user.password)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("psql");
    proxy.wait_for_log(Duration::from_secs(10), |v| {
        v["message"] == "connection established"
    });

    install(&second);
    signal(proxy.pid(), "HUP");
    proxy.wait_for_log(Duration::from_secs(10), |v| {
        v["message"] == "TLS material reloaded"
    });
    assert_eq!(served_fingerprint(proxy.port()), fp(&second));

    // A key that does not match the certificate is refused; the old material stays.
    std::fs::copy(&first.key, live.join("key.pem")).expect("copy key");
    signal(proxy.pid(), "HUP");
    let failed = proxy.wait_for_log(Duration::from_secs(10), |v| {
        v["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("TLS reload failed"))
    });
    assert!(
        failed["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{failed}"
    );
    assert_eq!(served_fingerprint(proxy.port()), fp(&second));

    let out = held.wait_with_output().expect("psql");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("survived"));
}

#[test]
fn up_renews_its_server_certificate_without_dropping_connections() {
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("state");
    // A 15 s lifetime is due for renewal after about 10 s.
    let mut child = Command::new(BIN)
        .args(["--log-format", "json", "up", "--state-dir"])
        .arg(&state)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--server-cert-lifetime",
            "15s",
            "--upstream",
        ])
        .arg(format!("unix:{}", pg().socket_path().display()))
        .args(["--user", pg().superuser()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("intransit up");
    let out = child.stdout.take().expect("stdout");
    let mut command = None;
    for line in BufReader::new(out).lines() {
        let line = line.expect("line");
        if line.trim_start().starts_with("psql ") {
            command = Some(line.trim().to_owned());
            break;
        }
    }
    let command = command.expect("psql line");
    let port: u16 = command
        .split_whitespace()
        .find_map(|w| w.strip_prefix("port="))
        .and_then(|p| p.parse().ok())
        .expect("port in the psql command");
    let err = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel::<serde_json::Value>();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines() {
            let Ok(line) = line else { break };
            if let Ok(v) = serde_json::from_str(&line) {
                if tx.send(v).is_err() {
                    break;
                }
            }
        }
    });
    let served = |port: u16| {
        // Trust the up CA, present no certificate: only the server's matters here.
        let mut roots = rustls::RootCertStore::empty();
        let ca = std::fs::read_to_string(state.join("ca/ca.pem")).expect("ca");
        for der in intransit_pki::pem_to_der_certs(&ca).expect("ca pem") {
            roots.add(der.into()).expect("root");
        }
        let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        let leaf = served_leaf(port, std::sync::Arc::new(config));
        intransit_pki::summarize(leaf.as_ref())
            .expect("summary")
            .serial_hex
    };
    let first_serial = served(port);

    // A session held open across the renewal.
    intransit_testkit::require_tool("psql", "postgresql-client").expect("psql");
    let held = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{command} -X -A -t -c \"SELECT pg_sleep(14), 'survived'\""
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("psql");

    let wait_for = |pred: &dyn Fn(&serde_json::Value) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = rx
                .recv_timeout(left)
                .expect("the expected log line did not come in time");
            if pred(&v) {
                return v;
            }
        }
    };
    let renewed =
        wait_for(&|v| v["message"] == "certificate renewed" && v["certificate"] == "server");
    assert_eq!(renewed["old_serial"], first_serial.as_str());
    wait_for(&|v| v["message"] == "TLS material reloaded");
    let second_serial = served(port);
    assert_ne!(second_serial, first_serial);
    assert_eq!(renewed["new_serial"], second_serial.as_str());

    let out = held.wait_with_output().expect("psql");
    assert!(
        out.status.success(),
        "held session failed: {}",
        stderr(&out)
    );
    assert!(stdout(&out).contains("survived"));
    signal(child.id(), "TERM");
    assert!(child.wait().expect("wait").success());
}
