//! Hot reload of TLS material under load: certificates replaced by atomic
//! rename while pgbench runs through the proxy (persistent connections and
//! a new connection per transaction), a grown client-CA bundle, refused
//! material (corrupt, foreign key, expired, truncated) that leaves the old
//! certificate serving, the Kubernetes Secret `..data` symlink swap,
//! SIGHUP and `intransit reload`, and an upstream leg whose pin changes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use intransit_pki::{CertificateAuthority, CertificateKind, CertificatePaths, Validity};
use serde_json::Value;

use crate::lifecycle::served_fingerprint;
use crate::support::*;

/// How long a reload may take to show in the log before a test gives up:
/// a bound on waiting, not a latency assertion (that is a benchmark).
const WAIT: Duration = Duration::from_secs(15);

/// Writes `bytes` to `path` the way careful tools do: a temporary file in
/// the same directory, then a rename over the old one.
fn write_atomic(path: &Path, bytes: &[u8]) {
    let tmp = path.with_file_name(format!(
        ".{}.tmp",
        path.file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The SHA-256 fingerprint and serial of a certificate file's leaf.
fn facts(cert: &Path) -> (String, String) {
    let pem = std::fs::read_to_string(cert).unwrap();
    let der = intransit_pki::pem_to_der_certs(&pem).unwrap();
    let summary = intransit_pki::summarize(&der[0]).unwrap();
    (summary.fingerprint_sha256, summary.serial_hex)
}

fn server_cert(ca: &CertificateAuthority, dir: &Path, name: &str, v: Validity) -> CertificatePaths {
    issue(ca, dir, name, CertificateKind::Server, "localhost", &[], v)
}

/// A directory of live files the proxy is configured with: `chain.pem`,
/// `key.pem` and `ca.pem` (the client-CA bundle).
struct Live {
    dir: tempfile::TempDir,
}

impl Live {
    fn new(first: &CertificatePaths) -> Live {
        let live = Live {
            dir: tempfile::tempdir().unwrap(),
        };
        std::fs::copy(&pki().ca, live.ca()).unwrap();
        live.install(first);
        live
    }

    fn chain(&self) -> PathBuf {
        self.dir.path().join("chain.pem")
    }

    fn key(&self) -> PathBuf {
        self.dir.path().join("key.pem")
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// Replaces chain and key, each by rename.
    fn install(&self, paths: &CertificatePaths) {
        write_atomic(&self.chain(), &std::fs::read(&paths.chain).unwrap());
        write_atomic(&self.key(), &std::fs::read(&paths.key).unwrap());
    }

    fn config(&self, top: &str) -> String {
        let p = pki();
        let listener = listener_toml(&pg_upstream(), "", "")
            .replace(
                &p.server.chain.display().to_string(),
                &self.chain().display().to_string(),
            )
            .replace(
                &p.server.key.display().to_string(),
                &self.key().display().to_string(),
            )
            .replace(
                &p.ca.display().to_string(),
                &self.ca().display().to_string(),
            );
        format!("{ADMIN_ON}{top}{listener}")
    }
}

/// Waits for a log line matching `pred` beyond the first `seen` such lines.
fn wait_for_new(proxy: &ProxyProcess, seen: usize, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let matching: Vec<Value> = proxy.logs().into_iter().filter(|v| pred(v)).collect();
        if matching.len() > seen {
            return matching[seen].clone();
        }
        assert!(
            Instant::now() < deadline,
            "no new matching log line within {WAIT:?}; log:\n{}",
            proxy
                .logs()
                .iter()
                .map(|v| v.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn count(proxy: &ProxyProcess, pred: impl Fn(&Value) -> bool) -> usize {
    proxy.logs().iter().filter(|v| pred(v)).count()
}

/// Waits until the proxy logs that it swapped in the certificate with
/// `fingerprint`.
fn wait_reloaded(proxy: &ProxyProcess, fingerprint: &str) -> Value {
    wait_for_new(proxy, 0, |v| {
        v["message"] == "TLS material reloaded" && v["fingerprint"] == fingerprint
    })
}

fn is_failure(v: &Value) -> bool {
    v["message"]
        .as_str()
        .is_some_and(|m| m.starts_with("TLS reload failed"))
}

fn status(proxy: &ProxyProcess) -> Value {
    let (code, body) = http_get(proxy.admin_addr(), "/status");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn default_route(status: &Value) -> Value {
    status["listeners"][0]["routes"][0].clone()
}

/// pgbench through the proxy, bounded by `-T`.
struct Load {
    child: Child,
    what: &'static str,
}

impl Load {
    fn start(port: u16, user: &DbUser, what: &'static str, args: &[&str]) -> Load {
        let pgbench =
            intransit_testkit::require_tool("pgbench", "postgresql-client").expect("pgbench");
        let ci = conninfo(port, &user.name, &user.name, &pki().trainer, "");
        let child = Command::new(pgbench)
            .args(args)
            .args(["-n", &ci])
            .env("PGPASSWORD", &user.password)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("pgbench");
        Load { child, what }
    }

    /// Waits for pgbench and asserts that every transaction and every
    /// connection succeeded.
    fn finish(self) -> Output {
        let what = self.what;
        let out = self.child.wait_with_output().expect("pgbench");
        let (o, e) = (stdout(&out), stderr(&out));
        assert!(out.status.success(), "{what}: pgbench failed:\n{o}\n{e}");
        assert!(
            o.contains("number of failed transactions: 0"),
            "{what}: {o}"
        );
        assert!(!o.contains("aborted"), "{what}: {o}\n{e}");
        for bad in ["error", "could not", "SSL", "aborted"] {
            assert!(!e.contains(bad), "{what}: pgbench reported {bad:?}:\n{e}");
        }
        let processed = o
            .lines()
            .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
            .unwrap_or_else(|| panic!("{what}: {o}"));
        assert!(!processed.starts_with("0"), "{what}: nothing ran: {o}");
        out
    }
}

fn pgbench_init(port: u16, user: &DbUser) {
    let pgbench = intransit_testkit::require_tool("pgbench", "postgresql-client").expect("pgbench");
    let ci = conninfo(port, &user.name, &user.name, &pki().trainer, "");
    let init = Command::new(pgbench)
        .args(["-i", "-s", "1", "-q", &ci])
        .env("PGPASSWORD", &user.password)
        .stdin(Stdio::null())
        .output()
        .expect("pgbench -i");
    assert!(init.status.success(), "pgbench -i: {}", stderr(&init));
}

/// The fingerprint `openssl s_client -starttls postgres` sees.
fn openssl_fingerprint(port: u16) -> String {
    let openssl = intransit_testkit::require_tool("openssl", "openssl").expect("openssl");
    let p = pki();
    let hello = Command::new(&openssl)
        .args(["s_client", "-starttls", "postgres", "-connect"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["-servername", "localhost", "-CAfile"])
        .arg(&p.ca)
        .arg("-cert")
        .arg(&p.trainer.cert)
        .arg("-key")
        .arg(&p.trainer.key)
        .stdin(Stdio::null())
        .output()
        .expect("openssl s_client");
    let mut x509 = Command::new(&openssl)
        .args(["x509", "-noout", "-fingerprint", "-sha256"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("openssl x509");
    use std::io::Write;
    x509.stdin.take().unwrap().write_all(&hello.stdout).unwrap();
    let out = x509.wait_with_output().unwrap();
    let text = stdout(&out);
    text.split_once('=')
        .map(|(_, fp)| fp.trim().to_owned())
        .unwrap_or_else(|| panic!("no fingerprint from openssl: {text} {}", stderr(&hello)))
}

#[test]
fn pgbench_sees_no_error_while_the_certificate_is_replaced_twenty_times() {
    let user = db_user("hotreload");
    let p = pki();
    let certs = tempfile::tempdir().unwrap();
    let first = server_cert(
        &p.authority,
        certs.path(),
        "first",
        Validity::days_from_now(5),
    );
    let live = Live::new(&first);
    let proxy = ProxyProcess::start(&live.config(""));
    pgbench_init(proxy.port(), &user);

    let persistent = Load::start(proxy.port(), &user, "persistent", &["-c", "4", "-T", "12"]);
    let per_transaction = Load::start(
        proxy.port(),
        &user,
        "new connection per transaction",
        &["-C", "-c", "2", "-T", "12"],
    );

    let second_ca = CertificateAuthority::generate(
        "second test CA",
        intransit_pki::KeyAlgorithm::EcdsaP256,
        Validity::days_from_now(30),
    )
    .unwrap();
    let mut newest = facts(&first.cert);
    for i in 0..20 {
        let next = server_cert(
            &p.authority,
            certs.path(),
            &format!("n{i}"),
            Validity::days_from_now(5),
        );
        live.install(&next);
        newest = facts(&next.cert);
        wait_reloaded(&proxy, &newest.0);
        if i == 9 {
            // The client-CA bundle grows to include a second CA.
            let mut bundle = std::fs::read_to_string(&p.ca).unwrap();
            bundle.push_str(second_ca.cert_pem());
            let before = count(&proxy, |v| v["message"] == "TLS material reloaded");
            write_atomic(&live.ca(), bundle.as_bytes());
            wait_for_new(&proxy, before, |v| v["message"] == "TLS material reloaded");
        }
    }

    persistent.finish();
    per_transaction.finish();
    assert_eq!(served_fingerprint(proxy.port()), newest.0);
    assert_eq!(openssl_fingerprint(proxy.port()), newest.0);

    // The grown bundle is in service: a client certificate from the second
    // CA is accepted.
    let newcomer = issue(
        &second_ca,
        certs.path(),
        "newcomer",
        CertificateKind::Client,
        "trainer",
        &["spiffe://prod/trainer"],
        Validity::days_from_now(5),
    );
    let out = psql(
        &conninfo(proxy.port(), &user.name, &user.name, &newcomer, ""),
        "SELECT 'second CA'",
        Some(&user.password),
    );
    assert!(out.status.success(), "{}", stderr(&out));

    let route = default_route(&status(&proxy));
    assert_eq!(
        route["certificates"][0]["fingerprint_sha256"],
        newest.0.as_str()
    );
    assert_eq!(route["certificates"][0]["serial"], newest.1.as_str());
    assert_eq!(
        route["certificates"].as_array().unwrap().len(),
        3,
        "server and two client CAs: {route}"
    );
    let m = proxy.metrics();
    assert!(
        m.sum(
            "intransit_tls_reloads_total",
            &[("listener", "pg"), ("leg", "server"), ("outcome", "ok")]
        ) >= 21.0,
        "{}",
        m.text
    );
}

#[test]
fn refused_material_keeps_the_old_certificate_serving() {
    let user = db_user("hotrefuse");
    let p = pki();
    let certs = tempfile::tempdir().unwrap();
    let good = server_cert(
        &p.authority,
        certs.path(),
        "good",
        Validity::days_from_now(5),
    );
    let other = server_cert(
        &p.authority,
        certs.path(),
        "other",
        Validity::days_from_now(5),
    );
    let now = time::OffsetDateTime::now_utc();
    let expired = server_cert(
        &p.authority,
        certs.path(),
        "expired",
        Validity {
            not_before: now - time::Duration::days(3),
            not_after: now - time::Duration::days(1),
        },
    );
    let live = Live::new(&good);
    let proxy = ProxyProcess::start(&live.config(""));
    let (good_fp, _) = facts(&good.cert);
    pgbench_init(proxy.port(), &user);
    let load = Load::start(
        proxy.port(),
        &user,
        "new connection per transaction",
        &["-C", "-c", "2", "-T", "8"],
    );

    let chain = std::fs::read(&good.chain).unwrap();
    type DropIn<'a> = Box<dyn Fn() + 'a>;
    let cases: Vec<(&str, DropIn, &str)> = vec![
        (
            "corrupt certificate",
            Box::new(|| {
                write_atomic(
                    &live.chain(),
                    b"-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n",
                )
            }),
            "server certificate",
        ),
        (
            "key of another certificate",
            Box::new(|| write_atomic(&live.key(), &std::fs::read(&other.key).unwrap())),
            "does not belong to the certificate",
        ),
        (
            "expired certificate",
            Box::new(|| {
                write_atomic(&live.chain(), &std::fs::read(&expired.chain).unwrap());
                write_atomic(&live.key(), &std::fs::read(&expired.key).unwrap());
            }),
            "expired at",
        ),
        (
            // Written in place, not renamed: the reader may see it cut short.
            "truncated certificate",
            Box::new(|| std::fs::write(live.chain(), &chain[..chain.len() / 2]).unwrap()),
            "is the file complete?",
        ),
    ];
    for (case, drop_in, reason) in cases {
        let failed_before = proxy.metrics().sum(
            "intransit_tls_reloads_total",
            &[("listener", "pg"), ("outcome", "failed")],
        );
        let this_failure =
            |v: &Value| is_failure(v) && v["error"].as_str().is_some_and(|e| e.contains(reason));
        let seen = count(&proxy, this_failure);
        drop_in();
        let failure = wait_for_new(&proxy, seen, this_failure);
        assert_eq!(failure["listener"], "pg", "{case}: {failure}");
        assert_eq!(failure["leg"], "server", "{case}: {failure}");
        assert_eq!(served_fingerprint(proxy.port()), good_fp, "{case}");
        let failed_after = proxy.metrics().sum(
            "intransit_tls_reloads_total",
            &[("listener", "pg"), ("outcome", "failed")],
        );
        assert!(
            failed_after > failed_before,
            "{case}: {failed_before} -> {failed_after}"
        );
        let route = default_route(&status(&proxy));
        assert!(
            route["reload_error"]["error"]
                .as_str()
                .is_some_and(|e| e.contains(reason)),
            "{case}: {route}"
        );
        assert_eq!(
            route["certificates"][0]["fingerprint_sha256"],
            good_fp.as_str()
        );

        // The good files back: the watcher finds them equal to what is in
        // service, and the error clears.
        live.install(&good);
        let deadline = Instant::now() + WAIT;
        while !default_route(&status(&proxy))["reload_error"].is_null() {
            assert!(
                Instant::now() < deadline,
                "{case}: reload_error did not clear"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    load.finish();
    assert_eq!(served_fingerprint(proxy.port()), good_fp);
    assert_eq!(
        count(&proxy, |v| v["message"] == "TLS material reloaded"),
        0,
        "nothing was ever swapped in"
    );
}

#[test]
fn a_kubernetes_secret_volume_swap_is_picked_up() {
    use std::os::unix::fs::symlink;
    let p = pki();
    let certs = tempfile::tempdir().unwrap();
    let secret = tempfile::tempdir().unwrap();
    let s = secret.path();
    // What the kubelet's atomic writer lays out.
    let version = |name: &str, paths: &CertificatePaths| {
        let dir = s.join(name);
        std::fs::create_dir(&dir).unwrap();
        std::fs::copy(&paths.chain, dir.join("tls.crt")).unwrap();
        std::fs::copy(&paths.key, dir.join("tls.key")).unwrap();
        std::fs::copy(&p.ca, dir.join("ca.crt")).unwrap();
    };
    let swap_to = |name: &str| {
        symlink(name, s.join("..data_tmp")).unwrap();
        std::fs::rename(s.join("..data_tmp"), s.join("..data")).unwrap();
    };
    let first = server_cert(
        &p.authority,
        certs.path(),
        "first",
        Validity::days_from_now(5),
    );
    version("..2026_12_01_10_00_00.1", &first);
    symlink("..2026_12_01_10_00_00.1", s.join("..data")).unwrap();
    for file in ["tls.crt", "tls.key", "ca.crt"] {
        symlink(format!("..data/{file}"), s.join(file)).unwrap();
    }
    let config = listener_toml(&pg_upstream(), "", "")
        .replace(
            &p.server.chain.display().to_string(),
            &s.join("tls.crt").display().to_string(),
        )
        .replace(
            &p.server.key.display().to_string(),
            &s.join("tls.key").display().to_string(),
        )
        .replace(
            &p.ca.display().to_string(),
            &s.join("ca.crt").display().to_string(),
        );
    let proxy = ProxyProcess::start(&config);
    assert_eq!(served_fingerprint(proxy.port()), facts(&first.cert).0);

    let mut previous = "..2026_12_01_10_00_00.1".to_owned();
    for (i, name) in ["..2026_12_02_10_00_00.2", "..2026_12_03_10_00_00.3"]
        .into_iter()
        .enumerate()
    {
        let next = server_cert(
            &p.authority,
            certs.path(),
            &format!("next{i}"),
            Validity::days_from_now(5),
        );
        version(name, &next);
        swap_to(name);
        std::fs::remove_dir_all(s.join(&previous)).unwrap();
        previous = name.to_owned();
        let (fp, _) = facts(&next.cert);
        let reloaded = wait_reloaded(&proxy, &fp);
        assert_eq!(reloaded["trigger"], "file_change", "{reloaded}");
        assert_eq!(served_fingerprint(proxy.port()), fp);
    }
}

#[test]
fn sighup_and_intransit_reload_show_the_new_serial_and_loaded_at() {
    let p = pki();
    let certs = tempfile::tempdir().unwrap();
    let pid_file = certs.path().join("intransit.pid");
    let issue_in = |name: &str| {
        let dir = certs.path().join(name);
        std::fs::create_dir(&dir).unwrap();
        server_cert(&p.authority, &dir, "server", Validity::days_from_now(5))
    };
    let (a, b, c) = (issue_in("a"), issue_in("b"), issue_in("c"));
    let config_for = |paths: &CertificatePaths| {
        format!(
            "pid_file = \"{}\"\n{ADMIN_ON}{}",
            pid_file.display(),
            listener_toml(DEAD_UPSTREAM, "", "")
                .replace(
                    &p.server.chain.display().to_string(),
                    &paths.chain.display().to_string()
                )
                .replace(
                    &p.server.key.display().to_string(),
                    &paths.key.display().to_string()
                )
        )
    };
    let proxy = ProxyProcess::start(&config_for(&a));
    // A SIGHUP as soon as the proxy says it listens reloads, and does not
    // end the process.
    signal(proxy.pid(), "HUP");
    wait_for_new(&proxy, 0, |v| {
        v["message"] == "reload round finished" && v["trigger"] == "sighup"
    });
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(pid, proxy.pid());
    let loaded_at = |status: &Value| {
        default_route(status)["certificates"][0]["loaded_at"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let at_start = loaded_at(&status(&proxy));

    // SIGHUP re-reads the configuration, which now names other files.
    std::thread::sleep(Duration::from_millis(1100));
    std::fs::write(&proxy.config_path, config_for(&b)).unwrap();
    signal(proxy.pid(), "HUP");
    let (b_fp, b_serial) = facts(&b.cert);
    let reloaded = wait_reloaded(&proxy, &b_fp);
    assert_eq!(reloaded["trigger"], "sighup");
    assert_eq!(reloaded["serial"], b_serial.as_str());
    let after_sighup = status(&proxy);
    assert_eq!(
        default_route(&after_sighup)["certificates"][0]["serial"],
        b_serial.as_str()
    );
    assert_ne!(loaded_at(&after_sighup), at_start, "loaded_at did not move");
    assert_eq!(served_fingerprint(proxy.port()), b_fp);

    // intransit reload, by pid file, and by the configuration's keys.
    std::fs::write(&proxy.config_path, config_for(&c)).unwrap();
    let admin = proxy.admin_addr().to_string();
    let out = Command::new(BIN)
        .args(["reload", "--pid-file"])
        .arg(&pid_file)
        .args(["--admin", &admin])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let (c_fp, c_serial) = facts(&c.cert);
    let shown = stdout(&out);
    assert!(
        shown.contains(&format!("sent SIGHUP to process {}", proxy.pid())),
        "{shown}"
    );
    assert!(
        shown.contains("reload finished: 1 swapped, 0 failed"),
        "{shown}"
    );
    assert!(shown.contains(&format!("serial {c_serial}")), "{shown}");
    assert!(shown.contains(&format!("sha256 {c_fp}")), "{shown}");
    let status_now = status(&proxy);
    assert!(
        shown.contains(&format!("loaded at {}", loaded_at(&status_now))),
        "{shown}"
    );
    assert_eq!(served_fingerprint(proxy.port()), c_fp);

    // Nothing changed: unchanged, exit 0.
    let again = Command::new(BIN)
        .args(["reload", "--config"])
        .arg(&proxy.config_path)
        .args(["--admin", &admin])
        .output()
        .unwrap();
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(
        stdout(&again).contains("reload finished: 0 swapped, 0 failed"),
        "{}",
        stdout(&again)
    );

    // A key that is not the certificate's: refused, exit 1, and the
    // previous certificate still shown and served.
    std::fs::write(
        &proxy.config_path,
        config_for(&CertificatePaths {
            key: a.key.clone(),
            ..c.clone()
        }),
    )
    .unwrap();
    let refused = Command::new(BIN)
        .args(["reload", "--pid-file"])
        .arg(&pid_file)
        .args(["--admin", &admin])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(1), "{}", stdout(&refused));
    let shown = stdout(&refused);
    assert!(
        shown.contains("reload finished: 0 swapped, 1 failed"),
        "{shown}"
    );
    assert!(shown.contains("reload refused"), "{shown}");
    assert!(
        shown.contains("does not belong to the certificate"),
        "{shown}"
    );
    assert!(shown.contains(&format!("serial {c_serial}")), "{shown}");
    assert_eq!(served_fingerprint(proxy.port()), c_fp);

    let missing = Command::new(BIN).args(["reload"]).output().unwrap();
    assert!(!missing.status.success());
    assert!(
        stderr(&missing).contains("--pid-file"),
        "{}",
        stderr(&missing)
    );
}

/// A client-mode proxy in front of a server-mode one (the mutual-TLS
/// tunnel): new pins applied by SIGHUP refuse the server-mode proxy's
/// current key until its certificate is replaced on disk; then the
/// client-mode proxy's own client certificate is replaced on disk and the
/// server-mode proxy sees the new one.
#[test]
fn an_upstream_leg_reloads_its_pins_and_client_certificate() {
    let user = db_user("hotupstream");
    let p = pki();
    let certs = tempfile::tempdir().unwrap();
    let first = server_cert(
        &p.authority,
        certs.path(),
        "first",
        Validity::days_from_now(5),
    );
    let live = Live::new(&first);
    let server = ProxyProcess::start(&live.config(""));

    let client_live = tempfile::tempdir().unwrap();
    let (client_chain, client_key) = (
        client_live.path().join("chain.pem"),
        client_live.path().join("key.pem"),
    );
    let install_client = |paths: &CertificatePaths| {
        write_atomic(&client_chain, &std::fs::read(&paths.chain).unwrap());
        write_atomic(&client_key, &std::fs::read(&paths.key).unwrap());
    };
    install_client(&p.trainer);
    let client_config = |pin: &str| {
        format!(
            r#"{ADMIN_ON}
[[listener]]
name = "app"
mode = "client"
protocol = "postgres"
listen = "127.0.0.1:0"
upstream = "127.0.0.1:{port}"
[listener.upstream_tls]
ca = "{ca}"
cert = "{chain}"
key = "{key}"
server_name = "localhost"
pins = ["{pin}"]
"#,
            port = server.port(),
            ca = p.ca.display(),
            chain = client_chain.display(),
            key = client_key.display(),
        )
    };
    let first_pin = crate::upstream_tls::pin_of(&first.cert);
    let client = ProxyProcess::start(&client_config(&first_pin));
    let query = || {
        psql(
            &format!(
                "host=127.0.0.1 port={} user={} dbname={} sslmode=disable connect_timeout=10",
                client.port(),
                user.name,
                user.name
            ),
            "SELECT 'through'",
            Some(&user.password),
        )
    };
    let out = query();
    assert!(out.status.success(), "{}", stderr(&out));

    // The pin of the server-mode proxy's next key, applied by SIGHUP,
    // takes effect at once: the certificate served now no longer matches.
    // (A reload starts a fresh upstream session cache, so nothing resumes
    // a session verified under the old pins.)
    let second = server_cert(
        &p.authority,
        certs.path(),
        "second",
        Validity::days_from_now(5),
    );
    std::fs::write(
        &client.config_path,
        client_config(&crate::upstream_tls::pin_of(&second.cert)),
    )
    .unwrap();
    signal(client.pid(), "HUP");
    let reloaded = wait_for_new(&client, 0, |v| {
        v["message"] == "TLS material reloaded" && v["leg"] == "upstream"
    });
    assert_eq!(reloaded["listener"], "app", "{reloaded}");
    assert_eq!(reloaded["trigger"], "sighup", "{reloaded}");
    assert!(!query().status.success(), "the old key passed the new pin");
    client.refusal("pin_mismatch");

    // The server-mode proxy's certificate with the new key, replaced on
    // disk: the tunnel works again.
    live.install(&second);
    wait_reloaded(&server, &facts(&second.cert).0);
    let out = query();
    assert!(out.status.success(), "{}", stderr(&out));

    // The client-mode proxy's own certificate, replaced on disk.
    let renewed = issue(
        &p.authority,
        certs.path(),
        "renewed-trainer",
        CertificateKind::Client,
        "trainer",
        &["spiffe://prod/trainer"],
        Validity::days_from_now(5),
    );
    install_client(&renewed);
    let (renewed_fp, renewed_serial) = facts(&renewed.cert);
    wait_reloaded(&client, &renewed_fp);
    let out = query();
    assert!(out.status.success(), "{}", stderr(&out));
    let audit = wait_for_new(&server, 0, |v| {
        v["message"] == "connection audit" && v["client_cert_sha256"] == renewed_fp.as_str()
    });
    assert_eq!(audit["outcome"], "ok", "{audit}");
    let status = status(&client);
    let leg = &status["client_listeners"][0]["upstream_tls"];
    assert_eq!(leg["certificates"][0]["role"], "upstream_client", "{leg}");
    assert_eq!(
        leg["certificates"][0]["fingerprint_sha256"],
        renewed_fp.as_str(),
        "{leg}"
    );
    assert!(leg["reload_error"].is_null(), "{leg}");
    let m = client.metrics();
    assert!(
        m.sum(
            "intransit_tls_reloads_total",
            &[("listener", "app"), ("leg", "upstream"), ("outcome", "ok")]
        ) >= 2.0,
        "{}",
        m.text
    );
    // The expiry gauge follows the leg's live material.
    let upstream_client = |serial: &str| {
        m.matching(
            "intransit_certificate_not_after_seconds",
            &[
                ("listener", "app"),
                ("role", "upstream_client"),
                ("serial", serial),
            ],
        )
        .count()
    };
    assert_eq!(upstream_client(&renewed_serial), 1, "{}", m.text);
    assert_eq!(upstream_client(&facts(&p.trainer.cert).1), 0, "{}", m.text);
}
