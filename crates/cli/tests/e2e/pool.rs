//! PostgreSQL pooling: the proxy completes a verified client's login
//! itself and serves it on shared server connections it logs in to
//! without any password from the client. Real PostgreSQL, real psql and
//! pgbench.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::*;

/// A pooled listener in front of the shared PostgreSQL's unix socket,
/// where `local all all trust` lets the proxy log in as any user.
fn pooled(pool_lines: &str) -> ProxyProcess {
    let upstream = format!("unix:{}", pg().socket_path().display());
    ProxyProcess::start(&listener_toml(
        &upstream,
        "",
        &format!("[listener.pool]\nserver_auth = \"trust\"\n{pool_lines}"),
    ))
}

/// How many backends of `user` PostgreSQL has now.
fn backends(user: &str) -> usize {
    pg().psql(
        "postgres",
        &format!("SELECT count(*) FROM pg_stat_activity WHERE usename = '{user}'"),
    )
    .expect("pg_stat_activity")
    .parse()
    .expect("a count")
}

fn pgbench(args: &[&str], ci: &str) -> std::process::Output {
    let pgbench = intransit_testkit::require_tool("pgbench", "postgresql-client").expect("pgbench");
    Command::new(pgbench)
        .args(args)
        .arg(ci)
        .env_remove("PGPASSWORD")
        .stdin(Stdio::null())
        .output()
        .expect("pgbench")
}

#[test]
fn psql_logs_in_with_its_certificate_alone_and_server_connections_are_reused() {
    let user = db_user("pool_psql");
    let proxy = pooled("mode = \"transaction\"\nsize = 2");
    let ci = conninfo(proxy.port(), &user.name, &user.name, &pki().trainer, "");
    for _ in 0..3 {
        // No PGPASSWORD: the proxy asks the client for nothing.
        let out = psql(&ci, "SELECT current_user, current_database()", None);
        assert!(out.status.success(), "psql: {}", stderr(&out));
        assert_eq!(stdout(&out), format!("{0}|{0}", user.name));
    }
    let logins = proxy
        .logs()
        .iter()
        .filter(|v| v["message"] == "server connection logged in")
        .count();
    assert_eq!(logins, 1, "three clients, one server login");
    assert_eq!(backends(&user.name), 1);
}

#[test]
fn pgbench_with_fifty_clients_never_opens_more_than_the_pool_size() {
    let user = db_user("pool_bench");
    let proxy = pooled("mode = \"transaction\"\nsize = 5");
    let ci = conninfo(proxy.port(), &user.name, &user.name, &pki().trainer, "");
    let init = pgbench(&["-i", "-s", "1", "-q"], &ci);
    assert!(init.status.success(), "pgbench -i: {}", stderr(&init));
    let done = Arc::new(AtomicBool::new(false));
    let most = Arc::new(AtomicUsize::new(0));
    let watcher = {
        let (done, most, name) = (done.clone(), most.clone(), user.name.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                most.fetch_max(backends(&name), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let run = pgbench(&["-c", "50", "-j", "2", "-t", "20", "-n"], &ci);
    done.store(true, Ordering::Relaxed);
    watcher.join().expect("watcher");
    assert!(run.status.success(), "pgbench: {}", stderr(&run));
    let out = stdout(&run);
    assert!(
        out.contains("number of transactions actually processed: 1000/1000"),
        "{out}"
    );
    assert!(out.contains("number of failed transactions: 0"), "{out}");
    let most = most.load(Ordering::Relaxed);
    assert!((1..=5).contains(&most), "{most} backends for a pool of 5");
    // With a new connection per transaction too.
    let run = pgbench(&["-C", "-c", "8", "-t", "10", "-n", "-S"], &ci);
    assert!(run.status.success(), "pgbench -C: {}", stderr(&run));
    assert!(backends(&user.name) <= 5);
}

#[test]
fn a_client_killed_mid_transaction_leaves_nothing_open_for_the_next() {
    for mode in ["transaction", "session"] {
        let user = db_user("pool_kill");
        let proxy = pooled(&format!("mode = \"{mode}\"\nsize = 1"));
        let ci = conninfo(proxy.port(), &user.name, &user.name, &pki().trainer, "");
        let psql_bin = intransit_testkit::require_tool("psql", "postgresql-client").expect("psql");
        let mut child = Command::new(psql_bin)
            .arg(&ci)
            .args(["-X", "-v", "ON_ERROR_STOP=1"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("psql");
        child
            .stdin
            .as_mut()
            .expect("stdin")
            .write_all(b"BEGIN;\nCREATE TABLE left_open (x int);\n")
            .expect("writing to psql");
        let deadline = Instant::now() + Duration::from_secs(20);
        while pg()
            .psql(
                "postgres",
                &format!("SELECT count(*) FROM pg_stat_activity WHERE usename = '{}' AND state = 'idle in transaction'", user.name),
            )
            .expect("pg_stat_activity")
            != "1"
        {
            assert!(Instant::now() < deadline, "{mode}: the transaction never opened");
            std::thread::sleep(Duration::from_millis(50));
        }
        child.kill().expect("kill psql");
        let _ = child.wait();
        // The pool has one server connection: the next client gets it,
        // rolled back (or replaced), never inside the dead client's
        // transaction.
        let out = psql(&ci, "SELECT to_regclass('left_open') IS NULL", None);
        assert!(out.status.success(), "{mode}: psql: {}", stderr(&out));
        assert_eq!(
            stdout(&out),
            "t",
            "{mode}: the next client saw the open transaction"
        );
    }
}

#[test]
fn session_mode_resets_what_a_client_set_before_the_next_one() {
    let user = db_user("pool_session");
    let proxy = pooled("mode = \"session\"\nsize = 1");
    let ci = conninfo(proxy.port(), &user.name, &user.name, &pki().trainer, "");
    let out = psql(&ci, "SET work_mem = '7MB'; SHOW work_mem", None);
    assert!(out.status.success(), "psql: {}", stderr(&out));
    assert!(stdout(&out).ends_with("7MB"), "{}", stdout(&out));
    let out = psql(&ci, "SHOW work_mem", None);
    assert!(out.status.success(), "psql: {}", stderr(&out));
    assert_eq!(stdout(&out), "4MB", "DISCARD ALL ran between the clients");
    let logins = proxy
        .logs()
        .iter()
        .filter(|v| v["message"] == "server connection logged in")
        .count();
    assert_eq!(logins, 1);
}

#[test]
fn transaction_mode_keeps_each_client_s_time_zone_its_own() {
    let user = db_user("pool_tz");
    let proxy = pooled("mode = \"transaction\"\nsize = 1");
    let ci = conninfo(proxy.port(), &user.name, &user.name, &pki().trainer, "");
    // One server connection for both clients: psql's SET is restored for
    // its own later transactions and never seen by the other client.
    let out = psql(
        &ci,
        "SET TimeZone = 'Asia/Tokyo'; SELECT 1; SHOW TimeZone",
        None,
    );
    assert!(out.status.success(), "psql: {}", stderr(&out));
    assert!(stdout(&out).ends_with("Asia/Tokyo"), "{}", stdout(&out));
    let out = psql(&ci, "SHOW TimeZone", None);
    assert!(out.status.success(), "psql: {}", stderr(&out));
    assert_ne!(stdout(&out), "Asia/Tokyo");
}

#[test]
fn a_client_s_parameters_are_restored_alike_whatever_encoding_the_last_client_left() {
    let user = db_user("pool_encoding");
    let proxy = pooled("mode = \"transaction\"\nsize = 1");
    let cert = &pki().trainer;
    let ci = conninfo(
        proxy.port(),
        &user.name,
        &user.name,
        cert,
        "client_encoding=UTF8 application_name=caf\u{e9}",
    );
    let latin1 = conninfo(
        proxy.port(),
        &user.name,
        &user.name,
        cert,
        "client_encoding=LATIN1",
    );
    // What PostgreSQL makes of the name (it keeps application_name in
    // printable ASCII) on a server connection in UTF8.
    let out = psql(&ci, "SHOW application_name", None);
    assert!(out.status.success(), "psql: {}", stderr(&out));
    let expected = stdout(&out);
    // The one server connection is left in LATIN1, where the UTF-8 bytes
    // of the name would read as other characters.
    let out = psql(&latin1, "SHOW client_encoding", None);
    assert_eq!(stdout(&out), "LATIN1", "psql: {}", stderr(&out));
    let out = psql(&ci, "SHOW application_name", None);
    assert!(out.status.success(), "psql: {}", stderr(&out));
    assert_eq!(stdout(&out), expected);
}

#[test]
fn listen_is_refused_in_transaction_mode_with_a_pointer_to_session_mode() {
    let user = db_user("pool_listen");
    let proxy = pooled("mode = \"transaction\"");
    let ci = conninfo(proxy.port(), &user.name, &user.name, &pki().trainer, "");
    for listen in ["LISTEN jobs", "/* a /* nested */ comment */ LISTEN jobs"] {
        let out = psql(&ci, listen, None);
        assert!(!out.status.success());
        let err = stderr(&out);
        assert!(err.contains("LISTEN is not available"), "{err}");
        assert!(err.contains("mode = \"session\""), "{err}");
    }
    // The session goes on after the refusal.
    let out = psql(&ci, "SELECT 41 + 1", None);
    assert_eq!(stdout(&out), "42");
    let proxy_session = pooled("mode = \"session\"");
    let ci = conninfo(
        proxy_session.port(),
        &user.name,
        &user.name,
        &pki().trainer,
        "",
    );
    let out = psql(&ci, "LISTEN jobs", None);
    assert!(out.status.success(), "session mode: {}", stderr(&out));
    drop(proxy);
}

#[test]
fn cancel_reaches_the_running_query_through_the_pool() {
    for mode in ["transaction", "session"] {
        let user = db_user("pool_cancel");
        let proxy = pooled(&format!("mode = \"{mode}\"\nsize = 2"));
        let ci = conninfo(proxy.port(), &user.name, &user.name, &pki().trainer, "");
        cancel_a_running_query(&proxy, pg(), &ci, &user.name, "");
    }
}

#[test]
fn options_in_the_startup_message_are_refused_with_what_is_restored() {
    let user = db_user("pool_options");
    let proxy = pooled("");
    let ci = conninfo(
        proxy.port(),
        &user.name,
        &user.name,
        &pki().trainer,
        "options='-c work_mem=8MB'",
    );
    let out = psql(&ci, "SELECT 1", None);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("unsupported startup parameter"), "{err}");
    assert!(err.contains("options"), "{err}");
    let refusal = proxy.refusal("not_poolable");
    let detail = refusal["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("\"options\""), "{detail}");
}

#[test]
fn status_and_metrics_count_clients_and_server_connections_per_pool() {
    let user = db_user("pool_status");
    let upstream = format!("unix:{}", pg().socket_path().display());
    let config = format!(
        "admin = \"127.0.0.1:0\"\n{}",
        listener_toml(
            &upstream,
            "",
            "[listener.pool]\nserver_auth = \"trust\"\nmode = \"transaction\"\nsize = 3",
        )
    );
    let proxy = ProxyProcess::start(&config);
    let ci = conninfo(proxy.port(), &user.name, &user.name, &pki().trainer, "");
    let out = psql(&ci, "SELECT 1", None);
    assert!(out.status.success(), "psql: {}", stderr(&out));
    let (code, body) = http_get(proxy.admin_addr(), "/status");
    assert_eq!(code, 200, "{body}");
    let status: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let listener = &status["pools"][0];
    assert_eq!(listener["listener"], "pg");
    assert_eq!(listener["mode"], "transaction");
    assert_eq!(listener["server_auth"], "trust");
    assert_eq!(listener["server_logins_ok"], 1);
    let pool = &listener["pools"][0];
    assert_eq!(pool["database"], user.name.as_str());
    assert_eq!(pool["user"], user.name.as_str());
    assert_eq!(pool["size"], 3);
    assert_eq!(pool["idle"], 1, "{pool}");
    assert_eq!(pool["active"], 0, "{pool}");
    let metrics = proxy.metrics();
    let idle = metrics.sum(
        "intransit_pool_server_connections",
        &[("listener", "pg"), ("state", "idle")],
    );
    assert_eq!(idle, 1.0);
    assert_eq!(
        metrics.sum(
            "intransit_pool_server_logins_total",
            &[("listener", "pg"), ("outcome", "ok")]
        ),
        1.0
    );
    assert!(metrics.sum("intransit_pool_wait_seconds_count", &[("listener", "pg")]) >= 1.0);
    // The pooled session's audit event says how it was served.
    let audit = proxy.wait_for_log(Duration::from_secs(5), |v| {
        v["message"] == "connection audit" && v["pool_mode"] == "transaction"
    });
    assert_eq!(audit["server_connections"], 1, "{audit}");
}

#[test]
fn two_hundred_clients_on_an_exhausted_pool_each_get_a_result_or_the_clear_error() {
    let user = db_user("pool_exhaust");
    let proxy = pooled("mode = \"transaction\"\nsize = 2\nwait_timeout = \"2s\"");
    let ci = conninfo(proxy.port(), &user.name, &user.name, &pki().trainer, "");
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("sleep.sql");
    std::fs::write(&script, "SELECT pg_sleep(0.1);\n").expect("script");
    let started = Instant::now();
    let run = pgbench(
        &[
            "-n",
            "-c",
            "200",
            "-j",
            "2",
            "-t",
            "1",
            "-f",
            script.to_str().expect("utf-8 path"),
        ],
        &ci,
    );
    // Liveness, not speed: nothing waits past wait_timeout for a server
    // connection, so the run ends well within this bound.
    assert!(
        started.elapsed() < Duration::from_secs(120),
        "a client hung"
    );
    let out = stdout(&run);
    let err = stderr(&run);
    let processed: usize = out
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|rest| rest.split('/').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("pgbench output: {out}\n{err}"));
    let aborted = err.matches("aborted in command").count();
    assert!(processed >= 2, "{out}");
    assert_eq!(processed + aborted, 200, "{out}\n{err}");
    assert!(
        aborted > 0,
        "200 × 0.1 s on 2 connections cannot all finish within 2 s of waiting"
    );
    assert!(err.contains("the pool is exhausted"), "{err}");
    assert!(err.contains("Raise [listener.pool] size"), "{err}");
    assert!(backends(&user.name) <= 2);
}
