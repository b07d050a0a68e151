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
    ProxyProcess::start(&format!(
        "{ADMIN_ON}{}",
        listener_toml(
            &upstream,
            "",
            &format!("[listener.pool]\nserver_auth = \"trust\"\n{pool_lines}"),
        )
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
    // Two clients interleaved on one server connection, each with its own
    // SET TimeZone: each sees only its own, in every transaction.
    let mut tokyo = Interactive::start(&ci);
    let mut lima = Interactive::start(&ci);
    let mut plain = Interactive::start(&ci);
    let default = plain.query("SHOW TimeZone");
    assert_eq!(
        tokyo.query("SET TimeZone = 'Asia/Tokyo'; SHOW TimeZone"),
        "Asia/Tokyo"
    );
    assert_eq!(
        lima.query("SET TimeZone = 'America/Lima'; SHOW TimeZone"),
        "America/Lima"
    );
    for _ in 0..5 {
        assert_eq!(tokyo.query("SHOW TimeZone"), "Asia/Tokyo");
        assert_eq!(plain.query("SHOW TimeZone"), default);
        assert_eq!(lima.query("SHOW TimeZone"), "America/Lima");
        assert_eq!(
            tokyo.query("SELECT to_char(timestamptz '2026-01-01 00:00:00+00', 'HH24')"),
            "09"
        );
        assert_eq!(
            lima.query("SELECT to_char(timestamptz '2026-01-01 00:00:00+00', 'HH24')"),
            "19"
        );
    }
    for client in [tokyo, lima, plain] {
        let out = client.finish();
        assert!(out.status.success(), "psql: {}", stderr(&out));
        assert_eq!(stderr(&out), "");
    }
    assert_eq!(backends(&user.name), 1);
}

#[test]
fn a_large_result_set_arrives_exactly_as_it_does_directly() {
    let user = db_user("pool_large");
    let proxy = pooled("mode = \"transaction\"\nsize = 1");
    let ci = conninfo(proxy.port(), &user.name, &user.name, &pki().trainer, "");
    // About 50 MB of rows, hashed by psql's client.
    let sql = "SELECT i, repeat(md5(i::text), 16) FROM generate_series(1, 100000) AS i";
    let through = psql(&ci, sql, None);
    assert!(through.status.success(), "psql: {}", stderr(&through));
    let direct = psql(
        &pg().tcp_conninfo(&user.name, &user.password, &user.name),
        sql,
        None,
    );
    assert!(direct.status.success(), "psql: {}", stderr(&direct));
    assert_eq!(through.stdout.len(), direct.stdout.len());
    assert!(through.stdout == direct.stdout, "the rows differ");
    assert!(through.stdout.len() > 50_000_000);
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
    // psql has exited; the proxy sees its connection end a moment later
    // (bounded: 5 s).
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        let (code, body) = http_get(proxy.admin_addr(), "/status");
        assert_eq!(code, 200, "{body}");
        let status: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        if status["pools"][0]["pools"][0]["clients"] == 0 || Instant::now() > deadline {
            break status;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
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
    // Every client logged in: one handshake outcome each, `ok`; running
    // out of server connections later ends a session, it is not a
    // second outcome.
    let metrics = proxy.metrics();
    // (pgbench opens one connection of its own before its clients.)
    let ok = metrics.sum("intransit_handshakes_total", &[("outcome", "ok")]);
    assert!((200.0..=201.0).contains(&ok), "{ok}");
    assert_eq!(
        metrics.sum(
            "intransit_handshakes_total",
            &[("outcome", "pool_exhausted")]
        ),
        0.0
    );
    let audit = proxy.wait_for_log(Duration::from_secs(5), |v| {
        v["message"] == "connection audit" && v["outcome"] == "pool_exhausted"
    });
    assert_eq!(audit["pool_mode"], "transaction");
}

/// A pooled client logged in over TLS, driven byte by byte.
fn raw_pooled_client(
    port: u16,
    user: &str,
) -> rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream> {
    use crate::negotiation::{backend_messages, startup, SSL_REQUEST};
    use std::io::Read;
    let mut tcp = tcp(port);
    write(&mut tcp, &SSL_REQUEST);
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).expect("answer to SSLRequest");
    assert_eq!(&answer, b"S");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let conn =
        rustls::ClientConnection::new(rustls_client(Some(&pki().trainer), &[]), name).expect("tls");
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(&startup(&[("user", user), ("database", user)]))
        .expect("startup");
    tls.flush().expect("flush");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !backend_messages(&got).iter().any(|m| m.0 == b'Z') {
        let n = tls.read(&mut buf).expect("login answer");
        assert!(n > 0, "closed during login");
        got.extend_from_slice(&buf[..n]);
    }
    let tags: Vec<u8> = backend_messages(&got).iter().map(|m| m.0).collect();
    assert_eq!(tags.first(), Some(&b'R'), "{tags:?}");
    assert!(tags.contains(&b'K'), "{tags:?}");
    tls
}

/// Reads until the proxy closes, returning what it sent.
fn read_to_end_tls(
    tls: &mut rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>,
) -> Vec<u8> {
    use std::io::Read;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tls.read(&mut buf) {
            Ok(0) | Err(_) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

#[test]
fn bad_input_after_login_closes_the_client_and_never_reuses_a_dirty_server_connection() {
    use crate::negotiation::{backend_messages, error_fields, field};
    let user = db_user("pool_bad");
    let proxy = pooled("mode = \"transaction\"\nsize = 1");
    let logins = |proxy: &ProxyProcess| {
        proxy
            .logs()
            .iter()
            .filter(|v| v["message"] == "server connection logged in")
            .count()
    };
    // An unknown message type, a length word past 1 GB, and a Terminate
    // in the middle of an extended-protocol sequence.
    let parse = message(b'P', b"\0SELECT 1\0\0\0");
    let bind = message(b'B', b"\0\0\0\0\0\0\0\0");
    let cases: [(&str, Vec<u8>, bool); 3] = [
        ("unknown type", message(b'!', b"garbage"), true),
        (
            "oversized",
            {
                let mut m = vec![b'Q'];
                m.extend_from_slice(&0x7fff_fff0u32.to_be_bytes());
                m
            },
            true,
        ),
        (
            "terminate mid-sequence",
            [parse, bind, message(b'X', b"")].concat(),
            false,
        ),
    ];
    for (what, bytes, fatal) in cases {
        let mut tls = raw_pooled_client(proxy.port(), &user.name);
        tls.write_all(&bytes).expect("write");
        tls.flush().expect("flush");
        let reply = read_to_end_tls(&mut tls);
        let messages = backend_messages(&reply);
        if fatal {
            let error = messages
                .iter()
                .find(|m| m.0 == b'E')
                .unwrap_or_else(|| panic!("{what}: no ErrorResponse in {messages:?}"));
            let fields = error_fields(&error.1);
            assert_eq!(field(&fields, 'C'), "08P01", "{what}: {fields:?}");
            assert_eq!(field(&fields, 'V'), "FATAL", "{what}: {fields:?}");
        }
        // The next client is served, on a clean connection.
        let ci = conninfo(proxy.port(), &user.name, &user.name, &pki().trainer, "");
        let out = psql(&ci, "SELECT count(*) FROM pg_prepared_statements", None);
        assert!(out.status.success(), "{what}: psql: {}", stderr(&out));
        assert_eq!(stdout(&out), "0", "{what}");
    }
    // The half-sent sequence closed its server connection: two logins in
    // all (the first, and the one after the Terminate); the refused
    // frames never reached the server, whose connection stayed in use.
    assert_eq!(logins(&proxy), 2);
    assert!(proxy
        .logs()
        .iter()
        .any(|v| v["message"] == "connection refused" && v["reason"] == "malformed"));
}

/// A private PostgreSQL, for tests that restart or stop it, with a
/// pooled listener over its unix socket.
fn private_pooled(pool_lines: &str) -> (intransit_testkit::PgServer, ProxyProcess) {
    let server = intransit_testkit::PgServer::start(intransit_testkit::PgOptions::default())
        .expect("starting a private PostgreSQL");
    let upstream = format!("unix:{}", server.socket_path().display());
    let proxy = ProxyProcess::start(&listener_toml(
        &upstream,
        "",
        &format!("[listener.pool]\nserver_auth = \"trust\"\n{pool_lines}"),
    ));
    (server, proxy)
}

/// An interactive psql whose statements are sent one at a time.
pub struct Interactive {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Interactive {
    pub fn start(ci: &str) -> Interactive {
        let psql_bin = intransit_testkit::require_tool("psql", "postgresql-client").expect("psql");
        let mut child = Command::new(psql_bin)
            .arg(ci)
            .args(["-X", "-A", "-t", "-q"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("psql");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Interactive { child, lines }
    }

    /// Sends one statement and waits for its one-line answer.
    pub fn query(&mut self, sql: &str) -> String {
        let stdin = self.child.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{sql};").expect("writing to psql");
        stdin.flush().expect("flush");
        self.lines
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("no answer to {sql}"))
    }

    pub fn finish(mut self) -> std::process::Output {
        drop(self.child.stdin.take());
        self.child.wait_with_output().expect("psql exit")
    }
}

#[test]
fn a_database_restart_costs_only_what_ran_while_it_was_down() {
    let (mut server, proxy) = private_pooled("mode = \"transaction\"\nsize = 2");
    let user = server.superuser().to_owned();
    let ci = conninfo(proxy.port(), &user, "postgres", &pki().trainer, "");
    // A client that stays connected across the restart, idle between its
    // transactions.
    let mut idle = Interactive::start(&ci);
    assert_eq!(idle.query("SELECT 1"), "1");
    // New clients all through the restart, one at a time.
    let restarted = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let prober = {
        let (ci, restarted, stop) = (ci.clone(), restarted.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut after = (0, 0);
            let mut attempts = 0;
            while !stop.load(Ordering::Relaxed) && attempts < 400 {
                attempts += 1;
                let began_after_restart = restarted.load(Ordering::Relaxed);
                let ok = psql(&ci, "SELECT 1", None).status.success();
                if began_after_restart {
                    after.0 += usize::from(ok);
                    after.1 += usize::from(!ok);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            after
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    server
        .restart(Duration::from_secs(2))
        .expect("restarting PostgreSQL");
    restarted.store(true, Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let (ok_after, failed_after) = prober.join().expect("prober");
    assert!(ok_after > 0, "no client got through after the restart");
    assert_eq!(failed_after, 0, "clients failed after PostgreSQL was back");
    // The idle client's next transaction gets a fresh server connection:
    // the dead ones in the pool were discarded, not lent.
    assert_eq!(idle.query("SELECT 2"), "2");
    let out = idle.finish();
    assert!(out.status.success(), "psql: {}", stderr(&out));
    assert_eq!(stderr(&out), "", "the idle client saw an error");
}

#[test]
fn a_stopped_backend_holds_only_its_own_client() {
    let (server, proxy) = private_pooled("mode = \"transaction\"\nsize = 2");
    let user = server.superuser().to_owned();
    let ci = conninfo(proxy.port(), &user, "postgres", &pki().trainer, "");
    let psql_bin = intransit_testkit::require_tool("psql", "postgresql-client").expect("psql");
    let slow = Command::new(psql_bin)
        .arg(&ci)
        .args(["-X", "-A", "-t", "-c", "SELECT 'slow' FROM pg_sleep(1)"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("psql");
    let deadline = Instant::now() + Duration::from_secs(20);
    let pid = loop {
        let pid = server
            .psql(
                "postgres",
                "SELECT pid FROM pg_stat_activity WHERE query LIKE 'SELECT ''slow''%' AND state = 'active'",
            )
            .expect("pg_stat_activity");
        if !pid.is_empty() {
            break pid;
        }
        assert!(Instant::now() < deadline, "the slow query never started");
        std::thread::sleep(Duration::from_millis(20));
    };
    signal(pid.parse().expect("pid"), "STOP");
    // The other server connection serves everyone else meanwhile.
    for i in 0..5 {
        let out = psql(&ci, &format!("SELECT {i}"), None);
        assert!(out.status.success(), "psql: {}", stderr(&out));
        assert_eq!(stdout(&out), i.to_string());
    }
    std::thread::sleep(Duration::from_secs(10));
    signal(pid.parse().expect("pid"), "CONT");
    let out = slow.wait_with_output().expect("slow psql");
    assert!(out.status.success(), "psql: {}", stderr(&out));
    assert_eq!(stdout(&out), "slow");
}

/// Runs `script` with python3 and psycopg 3, the connection string in
/// argv[1]; returns stdout.
pub(crate) fn psycopg(script: &str, ci: &str) -> String {
    python_client("psycopg", script, ci)
}

const PSYCOPG_SCRIPT: &str = r#"
import sys, psycopg
ci = sys.argv[1]
# Named server-side statements cannot cross transactions in transaction
# mode; psycopg's default would prepare after five executions.
with psycopg.connect(ci, prepare_threshold=None) as conn:
    conn.execute("CREATE TABLE IF NOT EXISTS items (n int, label text)")
    conn.commit()
    for i in range(20):
        with conn.transaction():
            conn.execute("INSERT INTO items VALUES (%s, %s)", (i, f"item {i}"))
    with conn.cursor() as cur:
        with cur.copy("COPY items (n, label) FROM STDIN") as copy:
            for i in range(100, 110):
                copy.write_row((i, f"copied {i}"))
    conn.commit()
    total = conn.execute("SELECT count(*), sum(n) FROM items").fetchone()
    rows = []
    with conn.cursor() as cur:
        with cur.copy("COPY (SELECT n FROM items WHERE n >= 100 ORDER BY n) TO STDOUT") as copy:
            for row in copy.rows():
                rows.append(row[0])
    conn.commit()
    print(total[0], total[1], len(rows))
"#;

#[test]
fn psycopg_runs_transactions_and_copy_both_ways_through_both_modes() {
    for mode in ["transaction", "session"] {
        let user = db_user("pool_psycopg");
        let proxy = pooled(&format!("mode = \"{mode}\"\nsize = 2"));
        let ci = conninfo(proxy.port(), &user.name, &user.name, &pki().trainer, "");
        let out = psycopg(PSYCOPG_SCRIPT, &ci);
        // 20 inserted (0..19, sum 190) and 10 copied (100..109, sum 1045).
        assert_eq!(out, "30 1235 10", "{mode}");
    }
}

#[test]
fn tokio_postgres_queries_through_both_modes() {
    for mode in ["transaction", "session"] {
        let user = db_user("pool_tokio");
        let proxy = pooled(&format!("mode = \"{mode}\"\nsize = 2"));
        let tls_config = rustls_client(Some(&pki().trainer), &[]);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let sum: i64 = rt.block_on(async {
            let connector = tokio_postgres_rustls::MakeRustlsConnect::new((*tls_config).clone());
            // No password: the certificate is the login.
            let (mut client, connection) = tokio_postgres::connect(
                &format!(
                    "host=localhost port={} user={} dbname={} sslmode=require",
                    proxy.port(),
                    user.name,
                    user.name
                ),
                connector,
            )
            .await
            .expect("tokio-postgres connect through the pool");
            tokio::spawn(connection);
            client
                .batch_execute("CREATE TABLE t (n bigint)")
                .await
                .expect("create");
            // Statements prepared and run inside one transaction stay on
            // one server connection in either mode.
            for i in 0..10i64 {
                let tx = client.transaction().await.expect("begin");
                tx.execute("INSERT INTO t VALUES ($1)", &[&i])
                    .await
                    .expect("insert");
                tx.commit().await.expect("commit");
            }
            let tx = client.transaction().await.expect("begin");
            let row = tx
                .query_one("SELECT sum(n)::bigint FROM t", &[])
                .await
                .expect("sum");
            tx.commit().await.expect("commit");
            row.get(0)
        });
        assert_eq!(sum, 45, "{mode}");
    }
}

#[test]
fn pgbench_prepared_and_extended_run_in_transaction_mode_with_fewer_server_connections() {
    let user = db_user("pool_prepared");
    let proxy = pooled("mode = \"transaction\"\nsize = 2");
    let ci = conninfo(proxy.port(), &user.name, &user.name, &pki().trainer, "");
    let init = pgbench(&["-i", "-s", "1", "-q"], &ci);
    assert!(init.status.success(), "pgbench -i: {}", stderr(&init));
    // pgbench prepares a statement synchronously the first time it runs
    // it, holding up every client of its thread, so with more clients
    // than server connections a multi-statement transaction (TPC-B's
    // BEGIN ... END) would wait on its own thread; -M prepared runs the
    // single-statement -S script, -M extended the default one.
    for (protocol, script) in [("prepared", "-S"), ("extended", "-N")] {
        // Eight clients on two server connections: every client's
        // statements land on connections that another client used.
        let run = pgbench(
            &[
                "-M", protocol, script, "-c", "8", "-j", "2", "-t", "50", "-n",
            ],
            &ci,
        );
        assert!(
            run.status.success(),
            "pgbench -M {protocol}: {}",
            stderr(&run)
        );
        let out = stdout(&run);
        assert!(
            out.contains("number of transactions actually processed: 400/400"),
            "-M {protocol}: {out}"
        );
        assert!(
            out.contains("number of failed transactions: 0"),
            "-M {protocol}: {out}"
        );
    }
    assert!(backends(&user.name) <= 2);
}

/// Runs `script` with python3, the connection string in argv[1] and the
/// test CA, client certificate and key in argv[2..5]; returns stdout.
fn python_client(module: &str, script: &str, ci: &str) -> String {
    let python = intransit_testkit::require_tool("python3", "python3").expect("python3");
    let have = Command::new(&python)
        .args(["-c", &format!("import {module}")])
        .output()
        .expect("python3");
    assert!(
        have.status.success(),
        "{module} is missing: run .ci/install-deps.sh"
    );
    let p = pki();
    let out = Command::new(python)
        .args(["-c", script, ci])
        .arg(&p.ca)
        .arg(&p.trainer.cert)
        .arg(&p.trainer.key)
        .env_remove("PGPASSWORD")
        .stdin(Stdio::null())
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{module}: {}\n{}",
        stderr(&out),
        stdout(&out)
    );
    stdout(&out)
}

/// Two psycopg connections preparing every statement (prepare_threshold
/// 0, so both name theirs `_pg3_0`, `_pg3_1`, ... with different SQL),
/// interleaved on one server connection, plus a pipeline.
const PSYCOPG_PREPARED: &str = r#"
import sys, psycopg
ci = sys.argv[1]
a = psycopg.connect(ci, prepare_threshold=0, autocommit=True)
b = psycopg.connect(ci, prepare_threshold=0, autocommit=True)
out = []
for i in range(10):
    out.append(a.execute("SELECT %s::int + 1", (i,)).fetchone()[0])
    out.append(b.execute("SELECT %s::text || 'b'", (str(i),)).fetchone()[0])
    out.append(a.execute("SELECT %s::int * 10", (i,)).fetchone()[0])
with b.pipeline():
    curs = [b.execute("SELECT %s::int - 1", (i,)) for i in range(5)]
piped = [c.fetchone()[0] for c in curs]
# An error inside a pipeline behaves as it does against PostgreSQL.
try:
    with b.pipeline():
        b.execute("SELECT %s::int", (1,))
        b.execute("SELECT 1 / %s::int", (0,))
        b.execute("SELECT %s::int", (3,))
except psycopg.errors.DivisionByZero:
    out.append("division_by_zero")
out.append(b.execute("SELECT %s::int + 100", (1,)).fetchone()[0])
print(out, piped)
"#;

#[test]
fn psycopg_prepared_statements_of_one_name_and_different_sql_on_one_server_connection() {
    let user = db_user("pool_psy_prep");
    let proxy = pooled("mode = \"transaction\"\nsize = 1");
    let ci = conninfo(proxy.port(), &user.name, &user.name, &pki().trainer, "");
    let through_pool = python_client("psycopg", PSYCOPG_PREPARED, &ci);
    let direct = python_client(
        "psycopg",
        PSYCOPG_PREPARED,
        &pg().tcp_conninfo(&user.name, &user.password, &user.name),
    );
    assert_eq!(through_pool, direct);
    assert!(through_pool.contains("division_by_zero"), "{through_pool}");
    assert_eq!(backends(&user.name), 1);
}

/// asyncpg prepares every statement by name (and its type introspection
/// queries), from three concurrent connections.
const ASYNCPG_SCRIPT: &str = r#"
import sys, ssl, asyncio, asyncpg
dsn, ca, cert, key = sys.argv[1:5]
def context():
    if not cert or cert == "-":
        return None
    c = ssl.create_default_context(cafile=ca)
    c.load_cert_chain(cert, key)
    return c
async def worker(n, results):
    conn = await asyncpg.connect(dsn, ssl=context())
    for i in range(10):
        async with conn.transaction():
            await conn.execute("INSERT INTO seen (worker, i) VALUES ($1, $2)", n, i)
        results.append(await conn.fetchval("SELECT $1::int * $2::int", n, i))
        results.append(await conn.fetchval("SELECT $1::text || $2::text", str(n), str(i)))
    stmt = await conn.prepare("SELECT count(*) FROM seen WHERE worker = $1")
    results.append(await stmt.fetchval(n))
    await conn.close()
async def main():
    conn = await asyncpg.connect(dsn, ssl=context())
    await conn.execute("DROP TABLE IF EXISTS seen; CREATE TABLE seen (worker int, i int)")
    await conn.close()
    results = [[], [], []]
    await asyncio.gather(*(worker(n, results[n]) for n in range(3)))
    print(results)
asyncio.run(main())
"#;

#[test]
fn asyncpg_with_its_statement_cache_runs_concurrently_on_fewer_server_connections() {
    let user = db_user("pool_asyncpg");
    // Two server connections for three concurrent clients: statements
    // prepared on one are used on the other.
    let proxy = pooled("mode = \"transaction\"\nsize = 2");
    let dsn = format!(
        "postgresql://{u}@localhost:{port}/{u}",
        u = user.name,
        port = proxy.port()
    );
    let through_pool = python_client("asyncpg", ASYNCPG_SCRIPT, &dsn);
    let direct_dsn = format!(
        "postgresql://{u}:{pw}@127.0.0.1:{port}/{u}?sslmode=disable",
        u = user.name,
        pw = user.password,
        port = pg().port()
    );
    let python = intransit_testkit::require_tool("python3", "python3").expect("python3");
    let direct = Command::new(python)
        .args(["-c", ASYNCPG_SCRIPT, &direct_dsn, "-", "-", "-"])
        .stdin(Stdio::null())
        .output()
        .expect("python3");
    assert!(direct.status.success(), "direct: {}", stderr(&direct));
    assert_eq!(through_pool, stdout(&direct));
    assert!(backends(&user.name) <= 2);
}

#[test]
fn tokio_postgres_statements_prepared_once_run_on_any_server_connection() {
    let user = db_user("pool_tokio_prep");
    let proxy = pooled("mode = \"transaction\"\nsize = 2");
    let tls_config = rustls_client(Some(&pki().trainer), &[]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let sums: Vec<i64> = rt.block_on(async {
        let mut clients = Vec::new();
        for _ in 0..3 {
            let connector = tokio_postgres_rustls::MakeRustlsConnect::new((*tls_config).clone());
            let (client, connection) = tokio_postgres::connect(
                &format!(
                    "host=localhost port={} user={} dbname={} sslmode=require",
                    proxy.port(),
                    user.name,
                    user.name
                ),
                connector,
            )
            .await
            .expect("connect through the pool");
            tokio::spawn(connection);
            clients.push(client);
        }
        // Each client prepares its own statement once, then runs it in
        // many transactions, interleaved with the others on two server
        // connections.
        let mut statements = Vec::new();
        for (n, client) in clients.iter().enumerate() {
            let sql = format!("SELECT $1::bigint * {}", n + 1);
            statements.push(client.prepare(&sql).await.expect("prepare"));
        }
        let mut sums = vec![0i64; clients.len()];
        for i in 0..20i64 {
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&i];
            let runs = clients
                .iter()
                .zip(&statements)
                .map(|(client, statement)| client.query_one(statement, &params));
            for (n, row) in futures_join(runs).await.into_iter().enumerate() {
                let value: i64 = row.expect("run prepared statement").get(0);
                sums[n] += value;
            }
        }
        sums
    });
    // sum(0..20) = 190, times 1, 2 and 3.
    assert_eq!(sums, vec![190, 380, 570]);
    assert!(backends(&user.name) <= 2);
}

/// Awaits every future together (they share one task, like a driver's
/// pipelined requests).
async fn futures_join<F: std::future::Future>(futures: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut handles: Vec<std::pin::Pin<Box<F>>> = futures.map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = handles.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (slot, fut) in out.iter_mut().zip(handles.iter_mut()) {
            if slot.is_none() {
                match fut.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *slot = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

#[test]
fn listen_is_refused_after_other_statements_and_through_the_extended_protocol() {
    let user = db_user("pool_listen_more");
    let proxy = pooled("mode = \"transaction\"");
    let ci = conninfo(proxy.port(), &user.name, &user.name, &pki().trainer, "");
    let out = psql(&ci, "SELECT 1; LISTEN jobs", None);
    assert!(!out.status.success(), "LISTEN after SELECT got through");
    assert!(
        stderr(&out).contains("LISTEN is not available"),
        "{}",
        stderr(&out)
    );
    // A semicolon inside a string is not a statement boundary.
    let out = psql(&ci, "SELECT ';LISTEN x'", None);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), ";LISTEN x");
    // Prepared (psycopg with prepare_threshold 0) and unnamed (the
    // extended protocol) LISTEN both get the refusal at execution.
    let out = psycopg(
        r#"
import sys, psycopg
for threshold in (0, None):
    with psycopg.connect(sys.argv[1], prepare_threshold=threshold, autocommit=True) as c:
        try:
            c.execute("LISTEN jobs", prepare=threshold == 0)
            print("listened")
        except psycopg.errors.FeatureNotSupported as e:
            print("refused")
        print(c.execute("SELECT %s::int", (7,)).fetchone()[0])
"#,
        &ci,
    );
    assert_eq!(out, "refused\n7\nrefused\n7");
}

/// A TCP relay in front of the shared PostgreSQL's unix socket whose
/// connections the test can cut, as a failing network or a database host
/// that goes away would.
struct CuttableRelay {
    port: u16,
    open: Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl CuttableRelay {
    fn start() -> CuttableRelay {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("relay bind");
        let port = listener.local_addr().expect("relay addr").port();
        let open: Arc<std::sync::Mutex<Vec<std::net::TcpStream>>> = Arc::default();
        let kept = open.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { break };
                let Ok(server) = std::os::unix::net::UnixStream::connect(pg().socket_path()) else {
                    continue;
                };
                kept.lock()
                    .expect("relay lock")
                    .push(client.try_clone().expect("clone"));
                let (mut c_read, mut c_write) = (client.try_clone().expect("clone"), client);
                let (mut s_read, mut s_write) = (server.try_clone().expect("clone"), server);
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c_read, &mut s_write);
                    let _ = s_write.shutdown(std::net::Shutdown::Both);
                });
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut s_read, &mut c_write);
                    let _ = c_write.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        CuttableRelay { port, open }
    }

    /// Cuts every connection relayed so far.
    fn cut(&self) -> usize {
        let open = std::mem::take(&mut *self.open.lock().expect("relay lock"));
        for s in &open {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        open.len()
    }
}

#[test]
fn a_server_connection_lost_mid_transaction_is_fatal_08006_for_its_client_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = CuttableRelay::start();
    let user = db_user("pool_lost");
    let proxy = ProxyProcess::start(&format!(
        "{ADMIN_ON}{}",
        listener_toml(
            &format!("127.0.0.1:{}", relay.port),
            "",
            "[listener.pool]\nserver_auth = \"password\"\nmode = \"transaction\"\nsize = 2\nauth_file = \"AUTHFILE\"",
        )
        .replace(
            "AUTHFILE",
            &write_userlist(dir.path(), &user).display().to_string()
        )
    ));
    let ci = conninfo(proxy.port(), &user.name, &user.name, &pki().trainer, "");
    let mut inside = Interactive::start(&ci);
    assert_eq!(inside.query("BEGIN; SELECT 1"), "1");
    assert!(relay.cut() >= 1, "no server connection was relayed");
    // The next statement of the open transaction meets the lost
    // connection: psql reports the proxy's FATAL and exits.
    let stdin = inside.child.stdin.as_mut().expect("stdin");
    let _ = writeln!(stdin, "SELECT 2;");
    let _ = stdin.flush();
    let out = inside.finish();
    let said = stderr(&out);
    assert!(
        said.contains("FATAL:  the server connection was lost"),
        "psql: {said}"
    );
    assert!(said.contains("connect again"), "psql: {said}");
    let line = proxy.refusal("upstream_lost");
    let detail = line["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("the server closed the connection"),
        "{line}"
    );
    // A new client gets a new server connection and works.
    let out = psql(&ci, "SELECT 3", None);
    assert!(out.status.success(), "after the loss: {}", stderr(&out));
    assert_eq!(stdout(&out), "3");
}

#[test]
fn a_server_login_the_proxy_cannot_make_is_server_login_failed_for_psql() {
    // server_auth = "password" with no line for the user in auth_file:
    // the proxy has nothing to log in with, says so to the client, and
    // never opens a connection to PostgreSQL for it.
    let dir = tempfile::tempdir().expect("tempdir");
    let user = db_user("pool_nologin");
    let other = db_user("pool_nologin_other");
    let proxy = ProxyProcess::start(&format!(
        "{ADMIN_ON}{}",
        listener_toml(
            &pg_upstream(),
            "",
            &format!(
                "[listener.pool]\nserver_auth = \"password\"\nauth_file = \"{}\"",
                write_userlist(dir.path(), &other).display()
            ),
        )
    ));
    let ci = conninfo(proxy.port(), &user.name, &user.name, &pki().trainer, "");
    let out = psql(&ci, "SELECT 1", None);
    assert!(!out.status.success(), "logged in without a password line");
    let said = stderr(&out);
    assert!(said.contains("FATAL:"), "psql: {said}");
    let line = proxy.refusal("server_login_failed");
    let detail = line["detail"].as_str().unwrap_or_default();
    assert!(detail.contains(&user.name), "{line}");
    assert_eq!(backends(&user.name), 0, "PostgreSQL saw the user");
    let failed = proxy.metrics().sum(
        "intransit_pool_server_logins_total",
        &[("outcome", "server_login_failed")],
    );
    assert_eq!(failed, 1.0);
}
