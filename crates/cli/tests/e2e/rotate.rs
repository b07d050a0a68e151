//! `intransit rotate` against real servers with native TLS: PostgreSQL
//! (by data directory and by DSN, under pgbench load, rollback) and
//! MariaDB (FLUSH SSL under a client loop). What a server serves is
//! fetched independently with `openssl s_client -starttls`.

use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

use intransit_pki::{CertificateAuthority, CertificateKind, IssueRequest, KeyAlgorithm, Validity};
use intransit_testkit::{
    require_tool, run_mariadb, unique_name, MariaDbAuth, MariaDbOptions, MariaDbServer, MariaDbSsl,
    PgOptions, PgServer, PgSsl,
};

use crate::support::{stderr, stdout, BIN};

/// Where the testkit puts the server's certificate and key (inside the
/// data directory, named by the configuration it writes).
const PG_CERT: &str = "intransit-testkit-server.crt";
const PG_KEY: &str = "intransit-testkit-server.key";

fn intransit(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("INTRANSIT_CA_PASSPHRASE")
        .stdin(Stdio::null())
        .output()
        .expect("running intransit")
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "command failed ({}):\n{}\n{}",
        out.status,
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// A state directory with a CA and a server certificate for localhost.
struct State {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl State {
    fn new() -> State {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().join("state");
        ok(intransit(&["ca", "init", "--state-dir", s(&root)]));
        State { _dir: dir, root }
    }

    /// Issues a server certificate and returns its directory.
    fn issue(&self, name: &str) -> PathBuf {
        ok(intransit(&[
            "cert",
            "issue",
            "server",
            "--name",
            name,
            "--dns",
            "localhost",
            "--ip",
            "127.0.0.1",
            "--state-dir",
            s(&self.root),
        ]));
        self.root.join("certs").join(name)
    }

    fn dir(&self) -> &str {
        s(&self.root)
    }
}

/// The SHA-256 fingerprint of the first certificate in a PEM file, in
/// lower-case hex without separators.
fn file_fingerprint(path: &Path) -> String {
    let pem = std::fs::read_to_string(path).expect("reading a certificate");
    let ders = intransit_pki::pem_to_der_certs(&pem).expect("PEM certificates");
    normalize(&intransit_pki::sha256_fingerprint(&ders[0]))
}

fn normalize(fingerprint: &str) -> String {
    fingerprint.replace(':', "").to_ascii_lowercase()
}

/// The fingerprint of the leaf certificate the server on `port` serves,
/// as openssl s_client sees it after `-starttls postgres|mysql`.
fn served_fingerprint(starttls: &str, port: u16) -> String {
    let openssl = require_tool("openssl", "openssl").expect("openssl");
    let out = Command::new(openssl)
        .args(["s_client", "-starttls", starttls, "-connect"])
        .arg(format!("127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .output()
        .expect("running openssl s_client");
    let text = stdout(&out);
    let ders = intransit_pki::pem_to_der_certs(&text).unwrap_or_else(|e| {
        panic!(
            "no certificate from s_client ({e}):\n{text}\n{}",
            stderr(&out)
        )
    });
    assert!(!ders.is_empty(), "no certificate from s_client:\n{text}");
    normalize(&intransit_pki::sha256_fingerprint(&ders[0]))
}

/// Waits until the served fingerprint is `want` (reloads are asynchronous).
fn wait_served(starttls: &str, port: u16, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let seen = served_fingerprint(starttls, port);
        if seen == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the server serves {seen}, expected {want}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Contents, owner, group, mode and modification time of a file.
#[derive(Debug, PartialEq, Eq)]
struct FileState {
    contents: Vec<u8>,
    uid: u32,
    gid: u32,
    mode: u32,
    modified: SystemTime,
}

fn file_state(path: &Path) -> FileState {
    let meta = std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    FileState {
        contents: std::fs::read(path).expect("reading a file"),
        uid: meta.uid(),
        gid: meta.gid(),
        mode: meta.mode() & 0o7777,
        modified: meta.modified().expect("mtime"),
    }
}

fn prev(path: &Path) -> PathBuf {
    PathBuf::from(format!("{}.prev", path.display()))
}

/// A PostgreSQL with native TLS (TLS 1.3 only) serving a certificate from
/// `state`'s CA.
fn pg_with_tls(state: &State) -> PgServer {
    let initial = state.issue(&unique_name("pg-initial"));
    PgServer::start(PgOptions {
        ssl: Some(PgSsl {
            cert_file: initial.join("chain.pem"),
            key_file: initial.join("key.pem"),
            ca_file: state.root.join("ca/ca.pem"),
        }),
        ..PgOptions::default()
    })
    .expect("PostgreSQL with native TLS")
}

#[test]
fn postgres_rotation_by_data_dir_and_by_dsn_then_rollback() {
    let state = State::new();
    let pg = pg_with_tls(&state);
    let data = pg.data_dir().to_path_buf();
    let (cert, key) = (data.join(PG_CERT), data.join(PG_KEY));
    let before_cert = file_state(&cert);
    let before_key = file_state(&key);
    let initial = served_fingerprint("postgres", pg.port());
    assert_eq!(initial, file_fingerprint(&cert));

    // By data directory: postgresql.conf (and its include) name the
    // files, pg_ctl reloads.
    let out = ok(intransit(&[
        "rotate",
        "postgres",
        "--data-dir",
        s(&data),
        "--state-dir",
        state.dir(),
    ]));
    assert!(out.contains("reload: ") && out.contains("pg_ctl"), "{out}");
    assert!(out.contains("verify: "), "{out}");
    let first = file_fingerprint(&cert);
    assert_ne!(first, initial);
    assert_eq!(served_fingerprint("postgres", pg.port()), first);
    // The previous files are kept, and owner, group and mode are preserved.
    assert_eq!(std::fs::read(prev(&cert)).unwrap(), before_cert.contents);
    assert_eq!(std::fs::read(prev(&key)).unwrap(), before_key.contents);
    for (path, before) in [(&cert, &before_cert), (&key, &before_key)] {
        let after = file_state(path);
        assert_eq!(
            (after.uid, after.gid, after.mode),
            (before.uid, before.gid, before.mode),
            "{}",
            path.display()
        );
        let kept = file_state(&prev(path));
        assert_eq!(
            (kept.uid, kept.gid, kept.mode),
            (before.uid, before.gid, before.mode)
        );
    }
    assert_eq!(before_key.mode, 0o600);
    // The new certificate keeps the names and is in the inventory.
    let names = ok(Command::new(require_tool("openssl", "openssl").unwrap())
        .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
        .arg(&cert)
        .output()
        .unwrap());
    assert!(
        names.contains("DNS:localhost") && names.contains("IP Address:127.0.0.1"),
        "{names}"
    );
    let list = ok(intransit(&["cert", "list", "--state-dir", state.dir()]));
    assert!(list.lines().any(|l| l.starts_with("postgres ")), "{list}");

    // A key owned by root and readable by the server's group (0640), the
    // other layout PostgreSQL accepts, stays that way.
    let root_owned = before_key.uid != 0 && std::fs::metadata(&data).unwrap().uid() != 0;
    if root_owned {
        std::os::unix::fs::chown(&key, Some(0), Some(before_key.gid)).unwrap();
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o640))
            .unwrap();
    }

    // By DSN over the unix socket: SHOW finds the files, pg_reload_conf()
    // reloads.
    let socket_dsn = format!(
        "host={} port={} user=postgres dbname=postgres",
        pg.socket_dir().display(),
        pg.port()
    );
    let out = ok(intransit(&[
        "rotate",
        "postgres",
        "--dsn",
        &socket_dsn,
        "--state-dir",
        state.dir(),
    ]));
    assert!(out.contains("reload: SELECT pg_reload_conf()"), "{out}");
    let second = file_fingerprint(&cert);
    assert_ne!(second, first);
    assert_eq!(served_fingerprint("postgres", pg.port()), second);
    if root_owned {
        let k = file_state(&key);
        assert_eq!((k.uid, k.gid, k.mode), (0, before_key.gid, 0o640));
        std::os::unix::fs::chown(&key, Some(before_key.uid), Some(before_key.gid)).unwrap();
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
    }

    // By DSN over TCP with TLS, as a superuser with a password.
    let admin = unique_name("rotator");
    pg.psql(
        "postgres",
        &format!("CREATE ROLE {admin} LOGIN SUPERUSER PASSWORD 'rotate-secret';"),
    )
    .expect("creating a superuser");
    let tcp_dsn = format!(
        "postgres://{admin}:rotate-secret@127.0.0.1:{}/postgres?sslmode=require",
        pg.port()
    );
    ok(intransit(&[
        "rotate",
        "postgres",
        "--dsn",
        &tcp_dsn,
        "--state-dir",
        state.dir(),
    ]));
    let third = file_fingerprint(&cert);
    assert_ne!(third, second);
    assert_eq!(served_fingerprint("postgres", pg.port()), third);

    // Rollback puts the previous certificate back and the server serves it.
    let out = ok(intransit(&[
        "rotate",
        "postgres",
        "--data-dir",
        s(&data),
        "--rollback",
        "--state-dir",
        state.dir(),
    ]));
    assert!(out.contains("restored"), "{out}");
    assert_eq!(file_fingerprint(&cert), second);
    assert_eq!(served_fingerprint("postgres", pg.port()), second);
    let after_key = file_state(&key);
    assert_eq!(
        (after_key.uid, after_key.gid, after_key.mode),
        (before_key.uid, before_key.gid, before_key.mode)
    );

    // The scheduled recipe of docs/rotation.md: renew the inventory entry
    // and install the renewed files with --exec.
    let recipe = format!(
        "{BIN} rotate postgres --data-dir {} --cert \"$INTRANSIT_CERT_DIR/chain.pem\" --key \"$INTRANSIT_CERT_DIR/key.pem\"",
        data.display()
    );
    ok(intransit(&[
        "cert",
        "renew",
        "postgres",
        "--force",
        "--exec",
        &recipe,
        "--state-dir",
        state.dir(),
    ]));
    let renewed = file_fingerprint(&state.root.join("certs/postgres/chain.pem"));
    assert_ne!(renewed, third);
    assert_eq!(file_fingerprint(&cert), renewed);
    assert_eq!(served_fingerprint("postgres", pg.port()), renewed);
}

#[test]
fn dry_runs_and_refused_material_change_nothing() {
    let state = State::new();
    let pg = pg_with_tls(&state);
    let data = pg.data_dir().to_path_buf();
    let (cert, key) = (data.join(PG_CERT), data.join(PG_KEY));
    let before = (file_state(&cert), file_state(&key));
    let inventory_before = std::fs::read(state.root.join("inventory.json")).unwrap();
    let served = served_fingerprint("postgres", pg.port());
    let unchanged = |what: &str| {
        assert_eq!((file_state(&cert), file_state(&key)), before, "{what}");
        assert!(!prev(&cert).exists() && !prev(&key).exists(), "{what}");
        assert_eq!(
            std::fs::read(state.root.join("inventory.json")).unwrap(),
            inventory_before,
            "{what}"
        );
        assert_eq!(served_fingerprint("postgres", pg.port()), served, "{what}");
    };

    let out = ok(intransit(&[
        "rotate",
        "postgres",
        "--data-dir",
        s(&data),
        "--dry-run",
        "--state-dir",
        state.dir(),
    ]));
    for step in [
        "locate:",
        "issue: would issue",
        "write: would",
        "reload: would run",
        "verify: would",
    ] {
        assert!(out.contains(step), "{step} missing from:\n{out}");
    }
    unchanged("--dry-run");

    // A configuration directory apart from the data directory, as Debian
    // lays them out: data_directory names the data, includes are followed.
    let conf_dir = tempfile::tempdir().expect("conf dir");
    std::fs::write(
        conf_dir.path().join("postgresql.conf"),
        format!(
            "data_directory = '{data}'\ninclude '{data}/postgresql.conf'\n",
            data = data.display()
        ),
    )
    .unwrap();
    let out = ok(intransit(&[
        "rotate",
        "postgres",
        "--conf-dir",
        s(conf_dir.path()),
        "--dry-run",
        "--state-dir",
        state.dir(),
    ]));
    assert!(
        out.contains(&format!(
            "locate: certificate {}, key {}",
            cert.display(),
            key.display()
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!("reload -D {}", data.display())),
        "{out}"
    );
    assert!(out.contains(&format!("127.0.0.1:{}", pg.port())), "{out}");
    unchanged("--conf-dir --dry-run");

    // A certificate with another certificate's key is refused.
    let a = state.issue(&unique_name("a"));
    let b = state.issue(&unique_name("b"));
    let inventory_before = std::fs::read(state.root.join("inventory.json")).unwrap();
    let out = intransit(&[
        "rotate",
        "postgres",
        "--data-dir",
        s(&data),
        "--cert",
        s(&a.join("chain.pem")),
        "--key",
        s(&b.join("key.pem")),
        "--state-dir",
        state.dir(),
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("does not belong"), "{}", stderr(&out));
    let unchanged = |what: &str| {
        assert_eq!((file_state(&cert), file_state(&key)), before, "{what}");
        assert!(!prev(&cert).exists() && !prev(&key).exists(), "{what}");
        assert_eq!(
            std::fs::read(state.root.join("inventory.json")).unwrap(),
            inventory_before,
            "{what}"
        );
        assert_eq!(served_fingerprint("postgres", pg.port()), served, "{what}");
    };
    unchanged("mismatched key");

    // An expired certificate from the same CA is refused.
    let ca = CertificateAuthority::load(&state.root.join("ca")).expect("the CA");
    let now = time::OffsetDateTime::now_utc();
    let expired = ca
        .issue(&IssueRequest {
            kind: CertificateKind::Server,
            common_name: "localhost".into(),
            dns_names: vec!["localhost".into()],
            ip_addresses: vec![],
            uris: vec![],
            key: KeyAlgorithm::EcdsaP256,
            validity: Validity {
                not_before: now - time::Duration::days(10),
                not_after: now - time::Duration::days(1),
            },
        })
        .expect("issuing an expired certificate");
    let expired_dir = state.root.join("expired");
    let paths = expired.write_to(&expired_dir).expect("writing it");
    let out = intransit(&[
        "rotate",
        "postgres",
        "--data-dir",
        s(&data),
        "--cert",
        s(&paths.chain),
        "--key",
        s(&paths.key),
        "--state-dir",
        state.dir(),
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("expired"), "{}", stderr(&out));
    unchanged("expired certificate");

    // A matching pair given with --cert/--key is installed as is.
    let given = file_fingerprint(&a.join("chain.pem"));
    ok(intransit(&[
        "rotate",
        "postgres",
        "--data-dir",
        s(&data),
        "--cert",
        s(&a.join("chain.pem")),
        "--key",
        s(&a.join("key.pem")),
        "--state-dir",
        state.dir(),
    ]));
    assert_eq!(served_fingerprint("postgres", pg.port()), given);

    // When the server is not seen serving the new certificate, the command
    // says so, fails, and leaves the previous files for --rollback.
    let unused = intransit_testkit::free_port();
    let out = intransit(&[
        "rotate",
        "postgres",
        "--data-dir",
        s(&data),
        "--verify-addr",
        &format!("127.0.0.1:{unused}"),
        "--verify-timeout",
        "1s",
        "--state-dir",
        state.dir(),
    ]);
    assert!(!out.status.success());
    let message = stderr(&out);
    assert!(
        message.contains("verify:") && message.contains(".prev") && message.contains("--rollback"),
        "{message}"
    );
    assert_eq!(file_fingerprint(&prev(&cert)), given);
    assert_ne!(file_fingerprint(&cert), given);
    ok(intransit(&[
        "rotate",
        "postgres",
        "--data-dir",
        s(&data),
        "--rollback",
        "--state-dir",
        state.dir(),
    ]));
    assert_eq!(file_fingerprint(&cert), given);
    assert_eq!(served_fingerprint("postgres", pg.port()), given);

    // A rollback dry run changes nothing either.
    let now_cert = file_state(&cert);
    let out = ok(intransit(&[
        "rotate",
        "postgres",
        "--data-dir",
        s(&data),
        "--rollback",
        "--dry-run",
        "--state-dir",
        state.dir(),
    ]));
    assert!(out.contains("nothing was changed"), "{out}");
    assert_eq!(file_state(&cert), now_cert);
    assert_eq!(served_fingerprint("postgres", pg.port()), given);
}

/// pgbench's summary: transactions processed and failed.
fn pgbench_figures(out: &str) -> (u64, u64) {
    let number_after = |label: &str| -> Option<u64> {
        let line = out.lines().find(|l| l.starts_with(label))?;
        line[label.len()..]
            .split_whitespace()
            .next()?
            .split('/')
            .next()?
            .parse()
            .ok()
    };
    let processed = number_after("number of transactions actually processed:")
        .unwrap_or_else(|| panic!("no transaction count in pgbench output:\n{out}"));
    let failed = number_after("number of failed transactions:").unwrap_or(0);
    (processed, failed)
}

#[test]
fn postgres_rotation_under_pgbench_load_fails_no_transaction() {
    let pgbench = require_tool("pgbench", "postgresql-client").expect("pgbench");
    let state = State::new();
    let pg = pg_with_tls(&state);
    let user = unique_name("bench");
    pg.create_user(&user, "bench-secret").expect("user");
    pg.create_database(&user, &user).expect("database");
    let conninfo = format!(
        "{} sslmode=require",
        pg.tcp_conninfo(&user, "bench-secret", &user)
    );
    let init = Command::new(&pgbench)
        .args(["-i", "-q", "-s", "1", &conninfo])
        .output()
        .expect("pgbench -i");
    ok(init);

    const SECONDS: u64 = 12;
    const ROTATIONS: usize = 5;
    let run = |extra: &[&str]| {
        let mut command = Command::new(&pgbench);
        command
            .args(["-n", "-T", &SECONDS.to_string(), "-c", "4", "-j", "2"])
            .args(extra)
            .arg(&conninfo)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command.spawn().expect("starting pgbench")
    };
    let started = Instant::now();
    let persistent = run(&[]);
    let reconnecting = run(&["-C"]);

    let data = pg.data_dir().to_path_buf();
    let mut newest = String::new();
    for i in 0..ROTATIONS {
        std::thread::sleep(Duration::from_millis(1500));
        ok(intransit(&[
            "rotate",
            "postgres",
            "--data-dir",
            s(&data),
            "--state-dir",
            state.dir(),
        ]));
        newest = file_fingerprint(&data.join(PG_CERT));
        eprintln!(
            "rotation {} done after {:.1} s",
            i + 1,
            started.elapsed().as_secs_f64()
        );
    }
    for (label, child) in [("persistent", persistent), ("-C", reconnecting)] {
        let out = child.wait_with_output().expect("pgbench");
        let text = stdout(&out);
        assert!(
            out.status.success(),
            "pgbench {label} failed ({}):\n{text}\n{}",
            out.status,
            stderr(&out)
        );
        let (processed, failed) = pgbench_figures(&text);
        eprintln!(
            "pgbench {label}: {processed} transactions, {failed} failed, {SECONDS} s, {ROTATIONS} rotations"
        );
        assert!(processed > 0, "{text}");
        assert_eq!(failed, 0, "{text}");
    }
    assert_eq!(served_fingerprint("postgres", pg.port()), newest);
}

#[test]
fn mariadb_rotation_with_flush_ssl_under_a_client_loop() {
    let state = State::new();
    let initial = state.issue(&unique_name("mariadb-initial"));
    let db = MariaDbServer::start(MariaDbOptions {
        ssl: Some(MariaDbSsl {
            cert_file: initial.join("chain.pem"),
            key_file: initial.join("key.pem"),
            ca_file: state.root.join("ca/ca.pem"),
        }),
        ..MariaDbOptions::default()
    })
    .expect("MariaDB with native TLS");
    let user = unique_name("client");
    db.create_user(&user, "client-secret", MariaDbAuth::NativePassword)
        .expect("user");
    let before = served_fingerprint("mysql", db.port());
    assert_eq!(before, file_fingerprint(&initial.join("chain.pem")));

    // A client that connects with TLS again and again during the rotations.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let client = {
        let stop = stop.clone();
        let port = db.port();
        let user = user.clone();
        std::thread::spawn(move || {
            let args: Vec<OsString> = vec![
                "--protocol=tcp".into(),
                "--host=127.0.0.1".into(),
                format!("--port={port}").into(),
                format!("--user={user}").into(),
                "--ssl".into(),
            ];
            let mut connections = 0u32;
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
                let out = run_mariadb(
                    &args,
                    Some("client-secret"),
                    "SHOW STATUS LIKE 'Ssl_version'",
                )
                .unwrap_or_else(|e| panic!("connection {connections} failed: {e:#}"));
                assert!(out.contains("TLSv1"), "not TLS: {out}");
                connections += 1;
            }
            connections
        })
    };

    // The first rotations connect as root over the unix socket, the last
    // over TCP (with TLS) as a user that holds only RELOAD.
    let admin = unique_name("rotator");
    db.create_user(&admin, "rotate-secret", MariaDbAuth::NativePassword)
        .expect("admin user");
    db.root_sql(&format!("GRANT RELOAD ON *.* TO '{admin}'@'%';"))
        .expect("granting RELOAD");
    let socket = db.socket_path().to_path_buf();
    let tcp_dsn = format!("mysql://{admin}:rotate-secret@127.0.0.1:{}", db.port());
    let mut fingerprints = vec![before];
    for i in 0..3 {
        std::thread::sleep(Duration::from_millis(700));
        let mut args = vec!["rotate", "mariadb", "--state-dir", state.dir()];
        if i < 2 {
            args.extend(["--dsn", "mysql://root@localhost", "--socket", s(&socket)]);
        } else {
            args.extend(["--dsn", &tcp_dsn]);
        }
        let out = ok(intransit(&args));
        assert!(out.contains("reload: FLUSH SSL"), "{out}");
        let cert = out
            .lines()
            .find_map(|l| l.strip_prefix("locate: certificate "))
            .and_then(|rest| rest.split(',').next())
            .map(PathBuf::from)
            .expect("the certificate path in the output");
        let now = file_fingerprint(&cert);
        wait_served("mysql", db.port(), &now);
        assert!(!fingerprints.contains(&now));
        fingerprints.push(now);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let connections = client.join().expect("the client loop");
    assert!(connections > 0);
    eprintln!("mariadb: {connections} TLS connections, 0 failed, 3 rotations");
    assert_eq!(
        served_fingerprint("mysql", db.port()),
        *fingerprints.last().unwrap()
    );
}

#[test]
fn rotation_by_data_dir_verifies_where_the_running_server_listens() {
    let state = State::new();
    let pg = pg_with_tls(&state);
    let data = pg.data_dir().to_path_buf();
    // The port given on the command line only, as a service manager may:
    // postgresql.conf no longer names it, postmaster.pid still does.
    let conf = data.join("intransit-testkit.conf");
    let text = std::fs::read_to_string(&conf).expect("the test kit's configuration");
    let without_port: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("port"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(without_port.len() < text.len(), "no port line to remove");
    std::fs::write(&conf, without_port).expect("rewriting the configuration");

    let out = ok(intransit(&[
        "rotate",
        "postgres",
        "--data-dir",
        s(&data),
        "--state-dir",
        state.dir(),
    ]));
    assert!(
        out.contains(&format!("verify: postgres://127.0.0.1:{}", pg.port())),
        "{out}"
    );
    assert_eq!(
        served_fingerprint("postgres", pg.port()),
        file_fingerprint(&data.join(PG_CERT))
    );

    // An address where nothing listens fails at once and says what to give.
    let dead = intransit_testkit::free_port();
    let out = intransit(&[
        "rotate",
        "postgres",
        "--data-dir",
        s(&data),
        "--state-dir",
        state.dir(),
        "--verify-addr",
        &format!("127.0.0.1:{dead}"),
    ]);
    assert!(!out.status.success());
    let text = stderr(&out);
    assert!(text.contains("connection refused"), "{text}");
    assert!(text.contains("--verify-addr"), "{text}");
}
