//! PgServer against the real PostgreSQL and psql installed on the machine.
//!
//! The lifecycle tests re-run this test binary as a child process (the
//! ignored `lifecycle_child` test) that starts its shared server and then
//! ends, and check from outside that the server and its directory are gone.

// A failed expectation is how a test reports failure.
#![allow(clippy::expect_used)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use intransit_testkit::{require_tool, run_psql, unique_name, PgOptions, PgServer, PgSsl};

/// Set in the environment of the child test process.
const CHILD_ENV: &str = "INTRANSIT_TESTKIT_LIFECYCLE_CHILD";

/// Printed by the child before the path of its server's data directory.
const DATA_DIR_MARKER: &str = "intransit-testkit data_dir=";

/// How long the supervisor may take to clean up after its test process.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(30);

fn shared() -> &'static PgServer {
    PgServer::shared().expect("starting the shared PostgreSQL")
}

#[test]
fn shared_server_answers_queries() {
    let pg = shared();
    assert_eq!(pg.psql("postgres", "SELECT 40 + 2").expect("query"), "42");
    assert_eq!(pg.host(), "127.0.0.1");
    assert!(pg.socket_path().starts_with(pg.socket_dir()));
    assert!(pg.socket_path().exists(), "{}", pg.socket_path().display());
    assert!(pg.log_path().exists(), "{}", pg.log_path().display());
    let settings = pg
        .psql(
            "postgres",
            "SELECT current_setting('max_connections'), current_setting('fsync'), \
             current_setting('password_encryption'), current_user",
        )
        .expect("settings");
    assert_eq!(
        settings,
        format!("200|off|scram-sha-256|{}", pg.superuser())
    );
}

#[test]
fn shared_server_is_one_server_across_threads() {
    let servers: Vec<usize> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4)
            .map(|_| scope.spawn(|| std::ptr::from_ref(shared()) as usize))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    assert!(servers.windows(2).all(|w| w[0] == w[1]), "{servers:?}");
    let pids = shared()
        .psql(
            "postgres",
            "SELECT count(DISTINCT pid) FROM pg_stat_activity",
        )
        .expect("query");
    assert!(!pids.is_empty());
}

#[test]
fn failing_sql_is_an_error_with_the_server_message() {
    let err = shared()
        .psql("postgres", "SELECT 1; SELECT no_such_column; SELECT 3")
        .expect_err("a bad column");
    let message = format!("{err:#}");
    assert!(message.contains("no_such_column"), "{message}");
}

#[test]
fn created_user_logs_in_over_tcp_with_scram() {
    let pg = shared();
    let name = unique_name("login");
    let password = format!("pw 'quoted' {name}");
    pg.create_user(&name, &password).expect("create user");
    pg.create_database(&name, &name).expect("create database");

    let conninfo = pg.tcp_conninfo(&name, &password, &name);
    let who = run_psql(
        &conninfo,
        "SELECT current_user, current_database(), \
         (SELECT datdba::regrole::text FROM pg_database WHERE datname = current_database())",
    )
    .expect("login with the right password");
    assert_eq!(who, format!("{name}|{name}|{name}"));

    let verifier = pg
        .psql(
            "postgres",
            &format!("SELECT left(rolpassword, 14) FROM pg_authid WHERE rolname = '{name}'"),
        )
        .expect("password verifier");
    assert_eq!(verifier, "SCRAM-SHA-256$");

    let refused = run_psql(&pg.tcp_conninfo(&name, "wrong", &name), "SELECT 1")
        .expect_err("login with a wrong password");
    let message = format!("{refused:#}");
    assert!(
        message.contains("password authentication failed"),
        "{message}"
    );
}

#[test]
fn ssl_server_speaks_tls13_only() {
    let openssl = require_tool("openssl", "openssl").expect("openssl");
    let dir = tempfile::tempdir().expect("temporary directory");
    let cert = dir.path().join("server.crt");
    let key = dir.path().join("server.key");
    let made = Command::new(openssl)
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:P-256", "-nodes", "-days", "1"])
        .args(["-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("running openssl");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );

    let pg = PgServer::start(PgOptions {
        ssl: Some(PgSsl {
            cert_file: cert.clone(),
            key_file: key,
            ca_file: cert.clone(),
        }),
        ..PgOptions::default()
    })
    .expect("starting PostgreSQL with TLS");
    let name = unique_name("tls");
    pg.create_user(&name, "tls-password").expect("create user");
    pg.create_database(&name, &name).expect("create database");
    let conninfo = pg.tcp_conninfo(&name, "tls-password", &name);

    let version = run_psql(
        &format!(
            "{conninfo} sslmode=verify-full sslrootcert={}",
            cert.display()
        ),
        "SELECT version FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
    )
    .expect("TLS login");
    assert_eq!(version, "TLSv1.3");

    let refused = run_psql(
        &format!("{conninfo} sslmode=require ssl_max_protocol_version=TLSv1.2"),
        "SELECT 1",
    )
    .expect_err("a client limited to TLS 1.2 must be refused");
    let message = format!("{refused:#}");
    // The server's TLS stack rejects the handshake with a protocol_version
    // alert, which libpq reports by its OpenSSL name.
    assert!(message.contains("alert protocol version"), "{message}");
}

#[test]
fn dropping_a_server_stops_it_and_removes_its_directory() {
    let pg = PgServer::start(PgOptions::default()).expect("starting PostgreSQL");
    let root = server_root(pg.data_dir());
    let pids = server_processes(pg.data_dir());
    assert!(pids.len() > 1, "postmaster and its children: {pids:?}");
    drop(pg);
    assert!(!root.exists(), "{} still exists", root.display());
    let left: Vec<u32> = pids.into_iter().filter(|&pid| running(pid)).collect();
    assert!(left.is_empty(), "still running: {left:?}");
}

#[test]
fn shared_server_is_gone_after_the_test_process_exits() {
    let (mut child, data_dir, pids) = spawn_lifecycle_child();
    drop(child.stdin.take());
    let status = child.wait().expect("waiting for the child test process");
    assert!(status.success(), "child test process: {status}");
    assert_cleaned_up(&data_dir, &pids);
}

#[test]
fn shared_server_is_gone_after_the_test_process_is_killed() {
    let (mut child, data_dir, pids) = spawn_lifecycle_child();
    child.kill().expect("killing the child test process");
    child.wait().expect("waiting for the child test process");
    assert_cleaned_up(&data_dir, &pids);
}

/// Run by the lifecycle tests in a child process: starts the shared server,
/// reports where it lives, and returns once stdin closes (or is killed).
#[test]
#[ignore = "a helper the lifecycle tests run in a child process"]
fn lifecycle_child() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let pg = shared();
    println!("{DATA_DIR_MARKER}{}", pg.data_dir().display());
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
}

/// Starts `lifecycle_child` in a new process and returns it, its server's
/// data directory, and the server's processes.
fn spawn_lifecycle_child() -> (Child, PathBuf, Vec<u32>) {
    let exe = std::env::current_exe().expect("path of this test binary");
    let mut child = Command::new(exe)
        .args(["lifecycle_child", "--exact", "--ignored", "--nocapture"])
        .env(CHILD_ENV, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting the child test process");
    let stdout = child.stdout.take().expect("child stdout");
    let mut stdout = BufReader::new(stdout);
    let data_dir = stdout
        .by_ref()
        .lines()
        .map_while(Result::ok)
        .find_map(|line| line.strip_prefix(DATA_DIR_MARKER).map(PathBuf::from))
        .expect("the child test process reports its data directory");
    // The child writes libtest's summary when it ends; reading the rest keeps
    // that from failing on a closed pipe.
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    let pids = server_processes(&data_dir);
    assert!(pids.len() > 1, "postmaster and its children: {pids:?}");
    (child, data_dir, pids)
}

/// Waits until the server's processes and directory are all gone.
fn assert_cleaned_up(data_dir: &Path, pids: &[u32]) {
    let root = server_root(data_dir);
    let deadline = Instant::now() + CLEANUP_TIMEOUT;
    loop {
        let left: Vec<u32> = pids.iter().copied().filter(|&pid| running(pid)).collect();
        if left.is_empty() && !root.exists() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "after {CLEANUP_TIMEOUT:?}: processes still running {left:?}, {} exists: {}",
            root.display(),
            root.exists()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The temporary directory holding a server's data directory.
fn server_root(data_dir: &Path) -> PathBuf {
    data_dir
        .parent()
        .expect("data directory has a parent")
        .to_owned()
}

/// The postmaster (from postmaster.pid) and its child processes.
fn server_processes(data_dir: &Path) -> Vec<u32> {
    let pid_file =
        std::fs::read_to_string(data_dir.join("postmaster.pid")).expect("reading postmaster.pid");
    let postmaster: u32 = pid_file
        .lines()
        .next()
        .and_then(|line| line.trim().parse().ok())
        .expect("postmaster.pid starts with the process id");
    let mut pids = vec![postmaster];
    for entry in std::fs::read_dir("/proc").expect("reading /proc").flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        if process_stat(pid).is_some_and(|(_, ppid)| ppid == postmaster) {
            pids.push(pid);
        }
    }
    pids
}

/// Whether `pid` is a live process; a zombie has released everything and
/// only waits to be reaped.
fn running(pid: u32) -> bool {
    process_stat(pid).is_some_and(|(state, _)| state != 'Z')
}

/// The state and parent of process `pid`, from /proc/<pid>/stat.
fn process_stat(pid: u32) -> Option<(char, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}
