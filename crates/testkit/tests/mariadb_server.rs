//! MariaDbServer against the real MariaDB server and `mariadb` client
//! installed on the machine.
//!
//! The lifecycle test re-runs this test binary as a child process (the
//! ignored `lifecycle_child` test) that starts its shared server and then
//! ends, and checks from outside that the server and its directory are gone.

// A failed expectation is how a test reports failure.
#![allow(clippy::expect_used)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use intransit_testkit::{unique_name, MariaDbAuth, MariaDbOptions, MariaDbServer};

/// Set in the environment of the child test process.
const CHILD_ENV: &str = "INTRANSIT_TESTKIT_MARIADB_LIFECYCLE_CHILD";

/// Printed by the child before the path of its server's pid file.
const PID_FILE_MARKER: &str = "intransit-testkit pid_file=";

/// How long the supervisor may take to clean up after its test process.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(40);

fn shared() -> &'static MariaDbServer {
    MariaDbServer::shared().expect("starting the shared MariaDB")
}

#[test]
fn shared_server_answers_queries() {
    let db = shared();
    assert_eq!(db.root_sql("SELECT 40 + 2").expect("query"), "42");
    assert_eq!(db.host(), "127.0.0.1");
    assert!(db.socket_path().exists(), "{}", db.socket_path().display());
    let settings = db
        .root_sql("SELECT @@port, @@bind_address, @@skip_name_resolve, @@version LIKE '%MariaDB%'")
        .expect("settings");
    assert_eq!(settings, format!("{}\t127.0.0.1\t1\t1", db.port()));
}

#[test]
fn failing_sql_is_an_error_with_the_server_message() {
    let err = shared()
        .root_sql("SELECT 1; SELECT no_such_column; SELECT 3")
        .expect_err("a bad column");
    let message = format!("{err:#}");
    assert!(message.contains("no_such_column"), "{message}");
}

#[test]
fn native_password_user_logs_in_over_tcp() {
    let db = shared();
    let name = unique_name("native");
    let password = format!("pw 'quoted' \\ {name}");
    db.create_user(&name, &password, MariaDbAuth::NativePassword)
        .expect("create user");
    db.create_database(&name, &name).expect("create database");
    let who = db
        .tcp_sql(
            &name,
            &password,
            Some(&name),
            "SELECT CURRENT_USER(), DATABASE()",
        )
        .expect("login with the right password");
    assert_eq!(who, format!("{name}@%\t{name}"));
    let plugin = db
        .root_sql(&format!(
            "SELECT JSON_VALUE(Priv, '$.plugin') FROM mysql.global_priv WHERE User = '{name}'"
        ))
        .expect("the user's plugin");
    assert_eq!(plugin, "mysql_native_password");

    let refused = db
        .tcp_sql(&name, "wrong", Some(&name), "SELECT 1")
        .expect_err("login with a wrong password");
    let message = format!("{refused:#}");
    assert!(
        message.contains("1045") && message.contains("Access denied"),
        "{message}"
    );
}

#[test]
fn ed25519_user_logs_in_over_tcp() {
    let db = shared();
    // Debian's mariadb-server ships auth_ed25519.so and libmariadb3 the
    // client side, so the plugin must be available here.
    assert!(
        db.ed25519_available(),
        "INSTALL SONAME 'auth_ed25519' failed"
    );
    let name = unique_name("ed");
    db.create_user(&name, "ed-secret", MariaDbAuth::Ed25519)
        .expect("create ed25519 user");
    let who = db
        .tcp_sql(&name, "ed-secret", None, "SELECT CURRENT_USER()")
        .expect("ed25519 login");
    assert_eq!(who, format!("{name}@%"));
    let plugin = db
        .root_sql(&format!(
            "SELECT JSON_VALUE(Priv, '$.plugin') FROM mysql.global_priv WHERE User = '{name}'"
        ))
        .expect("the user's plugin");
    assert_eq!(plugin, "ed25519");
    assert!(db.tcp_sql(&name, "wrong", None, "SELECT 1").is_err());
}

#[test]
fn require_secure_transport_refuses_plaintext_tcp() {
    let db = MariaDbServer::start(MariaDbOptions {
        require_secure_transport: true,
        extra_conf: vec!["max_connections = 20".to_owned()],
        ..MariaDbOptions::default()
    })
    .expect("starting a MariaDB of its own");
    assert_eq!(
        db.root_sql("SELECT @@require_secure_transport, @@max_connections")
            .expect("settings"),
        "1\t20"
    );
    let name = unique_name("secure");
    db.create_user(&name, "pw", MariaDbAuth::NativePassword)
        .expect("create user");
    let refused = db
        .tcp_sql(&name, "pw", None, "SELECT 1")
        .expect_err("plaintext TCP must be refused");
    let message = format!("{refused:#}");
    assert!(message.contains("ERROR"), "{message}");
    let pid_file = db.pid_file().to_owned();
    drop(db);
    assert!(!pid_file.exists(), "{} still exists", pid_file.display());
}

#[test]
fn shared_server_is_gone_after_the_test_process_exits() {
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
    let pid_file = stdout
        .by_ref()
        .lines()
        .map_while(Result::ok)
        .find_map(|line| line.strip_prefix(PID_FILE_MARKER).map(PathBuf::from))
        .expect("the child test process reports its pid file");
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    let pid = read_pid(&pid_file);
    assert!(running(pid), "mariadbd {pid} is not running");

    drop(child.stdin.take());
    let status = child.wait().expect("waiting for the child test process");
    assert!(status.success(), "child test process: {status}");

    let root = pid_file.parent().expect("pid file directory").to_owned();
    let deadline = Instant::now() + CLEANUP_TIMEOUT;
    while running(pid) || root.exists() {
        assert!(
            Instant::now() < deadline,
            "after {CLEANUP_TIMEOUT:?}: mariadbd {pid} running: {}, {} exists: {}",
            running(pid),
            root.display(),
            root.exists()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Run by the lifecycle test in a child process: starts the shared server,
/// reports where it lives, and returns once stdin closes.
#[test]
#[ignore = "a helper the lifecycle test runs in a child process"]
fn lifecycle_child() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let db = shared();
    println!("{PID_FILE_MARKER}{}", db.pid_file().display());
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
}

fn read_pid(pid_file: &Path) -> u32 {
    std::fs::read_to_string(pid_file)
        .expect("reading the pid file")
        .trim()
        .parse()
        .expect("the pid file holds a process id")
}

/// Whether `pid` is a live process (a zombie has released everything).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let after_name = stat.get(stat.rfind(')')? + 1..)?.to_owned();
            after_name.split_whitespace().next().map(str::to_owned)
        })
        .is_some_and(|state| state != "Z")
}
