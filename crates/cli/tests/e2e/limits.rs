//! Limits that keep verified clients served: unauthenticated connections
//! counted apart from `max_connections` (per source address, a pool that
//! makes room by evicting, a flood of 1,000 sockets), the soft limit on
//! open files, and the admin server's timeouts and connection cap.
//!
//! Flooding sockets come from other loopback addresses (127.0.0.2 and up)
//! than the certificate holder (127.0.0.1), as they would come from other
//! hosts.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::negotiation::{backend_messages, startup, SSL_REQUEST};
use crate::support::*;

/// A plain TCP connection to `port` from the loopback address `source`.
fn tcp_from(source: Ipv4Addr, port: u16) -> TcpStream {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    let stream = runtime.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::from((source, 0))).unwrap();
        socket
            .connect(SocketAddr::from(([127, 0, 0, 1], port)))
            .await
            .expect("connecting to the proxy")
    });
    let stream = stream.into_std().unwrap();
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    stream
}

/// Whether the proxy closed `stream` (end of stream or reset), rather
/// than the read timing out.
fn closed_by_proxy(stream: &mut TcpStream) -> bool {
    let mut rest = Vec::new();
    match stream.read_to_end(&mut rest) {
        Ok(_) => true,
        Err(e) => e.kind() == ErrorKind::ConnectionReset,
    }
}

/// Whether `stream` is still open with nothing to read.
fn still_open(stream: &mut TcpStream) -> bool {
    stream.set_nonblocking(true).unwrap();
    let mut byte = [0u8; 1];
    let open = matches!(stream.read(&mut byte), Err(e) if e.kind() == ErrorKind::WouldBlock);
    stream.set_nonblocking(false).unwrap();
    open
}

fn psql_select_1(proxy: &ProxyProcess, user: &DbUser) -> std::process::Output {
    psql(
        &conninfo(proxy.port(), &user.name, &user.name, &pki().trainer, ""),
        "SELECT 1",
        Some(&user.password),
    )
}

/// A connection that completed TLS with a client certificate and whose
/// StartupMessage reached PostgreSQL: it holds a `max_connections` slot
/// while PostgreSQL waits for its password.
fn verified_session(
    port: u16,
    user: &str,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let mut tcp = tcp(port);
    write(&mut tcp, &SSL_REQUEST);
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).expect("answer to SSLRequest");
    assert_eq!(&answer, b"S");
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn =
        rustls::ClientConnection::new(rustls_client(Some(&pki().trainer), &[]), name).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(&startup(&[("user", user), ("database", user)]))
        .unwrap();
    tls.flush().unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tls.read(&mut buf).expect("PostgreSQL's first answer");
    let msgs = backend_messages(&buf[..n]);
    assert_eq!(msgs[0].0, b'R', "{msgs:?}");
    tls
}

#[test]
fn idle_sockets_do_not_take_the_slots_of_verified_clients() {
    let user = db_user("slots");
    let proxy = ProxyProcess::start(&listener_toml(
        &pg_upstream(),
        "",
        "max_connections = 2\nhandshake_timeout = \"60s\"",
    ));
    // Ten sockets that never send a byte: with one pool they would hold
    // both slots.
    let idle: Vec<_> = (0..10).map(|_| tcp(proxy.port())).collect();
    let out = psql_select_1(&proxy, &user);
    assert!(
        out.status.success(),
        "a certificate holder was refused: {}",
        stderr(&out)
    );
    drop(idle);
}

#[test]
fn over_the_connection_limit_verified_clients_get_53300() {
    let user = db_user("limit");
    let proxy = ProxyProcess::start(&listener_toml(
        &pg_upstream(),
        "",
        "max_connections = 2\nhandshake_timeout = \"30s\"",
    ));
    // Two verified clients that hold their slots by not answering
    // PostgreSQL's password request.
    let a = verified_session(proxy.port(), &user.name);
    let b = verified_session(proxy.port(), &user.name);
    let out = psql_select_1(&proxy, &user);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("FATAL:  sorry, too many clients already"),
        "{err}"
    );
    let line = proxy.refusal("too_many_connections");
    assert_eq!(line["identity"], "uri:spiffe://prod/trainer");
    drop(a);
    drop(b);
    // Once the slots are free, clients get in again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = psql_select_1(&proxy, &user);
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "slots were not released: {}",
            stderr(&out)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn beyond_the_per_address_cap_connections_are_closed_at_accept_and_logged_sparingly() {
    let user = db_user("peraddr");
    let proxy = ProxyProcess::start(&format!(
        "{ADMIN_ON}{}",
        listener_toml(
            &pg_upstream(),
            "",
            "max_unauthenticated_per_address = 3\nhandshake_timeout = \"60s\"",
        )
    ));
    let flooder = Ipv4Addr::new(127, 0, 0, 2);
    let mut held: Vec<_> = (0..3).map(|_| tcp_from(flooder, proxy.port())).collect();
    for i in 0..20 {
        let mut extra = tcp_from(flooder, proxy.port());
        assert!(closed_by_proxy(&mut extra), "connection {i} was not closed");
    }
    assert!(held.iter_mut().all(still_open));
    // Another address is not affected.
    let out = psql_select_1(&proxy, &user);
    assert!(out.status.success(), "{}", stderr(&out));

    let reason = "too_many_unauthenticated_from_address";
    let line = proxy.refusal(reason);
    assert!(line["peer"].as_str().unwrap().starts_with("127.0.0.2:"));
    assert!(
        line["detail"]
            .as_str()
            .unwrap()
            .contains("max_unauthenticated_per_address (3)"),
        "{line}"
    );
    let audit = proxy.wait_for_log(Duration::from_secs(10), |v| {
        v["message"] == "connection audit" && v["outcome"] == reason
    });
    assert_eq!(audit["tls_version"], "none");
    let counted = proxy
        .metrics()
        .sum("intransit_handshakes_total", &[("outcome", reason)]);
    assert_eq!(counted, 20.0);
    let lines = proxy
        .logs()
        .iter()
        .filter(|v| v["message"] == "connection refused" && v["reason"] == reason)
        .count();
    assert!(lines < 20, "{lines} log lines for 20 refusals");
}

#[test]
fn a_full_unauthenticated_pool_makes_room_for_another_address() {
    let user = db_user("evict");
    let proxy = ProxyProcess::start(&format!(
        "{ADMIN_ON}{}",
        listener_toml(
            &pg_upstream(),
            "",
            "max_unauthenticated = 4\nhandshake_timeout = \"60s\"",
        )
    ));
    let flooder = Ipv4Addr::new(127, 0, 0, 2);
    let mut held: Vec<_> = (0..4).map(|_| tcp_from(flooder, proxy.port())).collect();
    // The pool is full and this address has all of it: its next
    // connection is closed at accept.
    let mut fifth = tcp_from(flooder, proxy.port());
    assert!(closed_by_proxy(&mut fifth));
    let line = proxy.refusal("too_many_unauthenticated");
    assert!(
        line["detail"]
            .as_str()
            .unwrap()
            .contains("max_unauthenticated (4)"),
        "{line}"
    );
    // A certificate holder from elsewhere gets in, in place of the
    // flooder's oldest connection.
    let out = psql_select_1(&proxy, &user);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(closed_by_proxy(&mut held[0]), "the oldest was not evicted");
    assert!(held[1..].iter_mut().all(still_open));
    let counted = proxy.metrics().sum(
        "intransit_handshakes_total",
        &[("outcome", "too_many_unauthenticated")],
    );
    assert_eq!(counted, 2.0);
}

/// Raises this test process's own soft limit on open files, for the
/// flood's sockets.
fn raise_own_descriptor_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    if let Some(hard) = limit.maximum {
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(hard.min(1 << 16)),
                maximum: limit.maximum,
            },
        )
        .unwrap();
    }
}

/// 1,000 sockets that never send a byte, each opened again (after a short
/// pause) when the proxy closes it, until `stop`: 800 from eight addresses
/// (100 each, beyond the per-address cap of 64, and together enough to
/// fill the unauthenticated pool of 512), and 200 from 200 addresses of
/// their own (which find the pool full).
struct Flood {
    stop: tokio::sync::watch::Sender<bool>,
    opened: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
    thread: std::thread::JoinHandle<()>,
}

const FLOOD_SOCKETS: usize = 1_000;
const FLOOD_HEAVY_SOURCES: usize = 8;
const FLOOD_HEAVY_SOCKETS: usize = 800;

/// The address of the flood's `i`th socket.
fn flood_source(i: usize) -> Ipv4Addr {
    if i < FLOOD_HEAVY_SOCKETS {
        Ipv4Addr::new(127, 0, 0, 2 + (i % FLOOD_HEAVY_SOURCES) as u8)
    } else {
        Ipv4Addr::new(127, 0, 1, 1 + (i - FLOOD_HEAVY_SOCKETS) as u8)
    }
}
/// Each socket is opened at most this often: the loop is bounded even if
/// the stop signal never came.
const FLOOD_MAX_OPENS: usize = 2_000;
const FLOOD_PAUSE: Duration = Duration::from_millis(50);

impl Flood {
    fn start(port: u16) -> Flood {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let opened = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let (o, c) = (opened.clone(), closed.clone());
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let mut tasks = tokio::task::JoinSet::new();
                for i in 0..FLOOD_SOCKETS {
                    let source = flood_source(i);
                    let (opened, closed, mut stopped) = (o.clone(), c.clone(), stopped.clone());
                    tasks.spawn(async move {
                        use tokio::io::AsyncReadExt;
                        for _ in 0..FLOOD_MAX_OPENS {
                            if *stopped.borrow() {
                                return;
                            }
                            let socket = tokio::net::TcpSocket::new_v4().unwrap();
                            socket.bind(SocketAddr::from((source, 0))).unwrap();
                            let connected =
                                socket.connect(SocketAddr::from(([127, 0, 0, 1], port)));
                            if let Ok(mut stream) = connected.await {
                                opened.fetch_add(1, Ordering::Relaxed);
                                let mut byte = [0u8; 1];
                                tokio::select! {
                                    _ = stream.read(&mut byte) => {
                                        closed.fetch_add(1, Ordering::Relaxed);
                                    }
                                    _ = stopped.changed() => return,
                                }
                            }
                            tokio::time::sleep(FLOOD_PAUSE).await;
                        }
                    });
                }
                while tasks.join_next().await.is_some() {}
            });
        });
        Flood {
            stop,
            opened,
            closed,
            thread,
        }
    }

    fn finish(self) -> (usize, usize) {
        let _ = self.stop.send(true);
        self.thread.join().unwrap();
        (
            self.opened.load(Ordering::Relaxed),
            self.closed.load(Ordering::Relaxed),
        )
    }
}

#[test]
fn a_thousand_unauthenticated_sockets_never_lock_out_a_certificate_holder() {
    raise_own_descriptor_limit();
    let user = db_user("flood");
    // With one pool, 100 slots would be taken by the flood.
    let proxy = ProxyProcess::start(&format!(
        "{ADMIN_ON}{}",
        listener_toml(&pg_upstream(), "", "max_connections = 100")
    ));
    let flood = Flood::start(proxy.port());
    // Every socket has been opened at least once before the client starts.
    let deadline = Instant::now() + Duration::from_secs(60);
    while flood.opened.load(Ordering::Relaxed) < FLOOD_SOCKETS {
        assert!(Instant::now() < deadline, "the flood did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut failures = Vec::new();
    let started = Instant::now();
    for _ in 0..20 {
        let out = psql_select_1(&proxy, &user);
        if !out.status.success() {
            failures.push(stderr(&out));
        }
    }
    let took = started.elapsed();
    let (opened, closed) = flood.finish();
    eprintln!("flood: {opened} sockets opened, {closed} closed by the proxy; 20 psql sessions in {took:?}");
    assert!(
        failures.is_empty(),
        "refused {} of 20: {failures:?}",
        failures.len()
    );
    // The flood met the limits (which of the two turns a socket away
    // depends on the order sockets arrive in, which a loaded machine
    // changes), and each refusal was counted while the log got a few
    // lines.
    let metrics = proxy.metrics();
    let mut total = 0.0;
    for reason in [
        "too_many_unauthenticated_from_address",
        "too_many_unauthenticated",
    ] {
        let counted = metrics.sum("intransit_handshakes_total", &[("outcome", reason)]);
        total += counted;
        if counted == 0.0 {
            continue;
        }
        proxy.refusal(reason);
        let lines = proxy
            .logs()
            .iter()
            .filter(|v| v["message"] == "connection refused" && v["reason"] == reason)
            .count();
        eprintln!("{reason}: {counted} refusals, {lines} log lines");
        assert!(
            counted < 20.0 || (lines as f64) * 10.0 <= counted,
            "{lines} lines for {counted} refusals"
        );
    }
    // The refusals are the proxy's own count: how many closes the flood
    // saw before it stopped depends on scheduling on a loaded machine.
    assert!(total > 0.0, "the flood met no limit ({closed} closes seen)");
}

#[test]
fn the_soft_limit_on_open_files_is_raised_and_a_budget_that_cannot_fit_warns() {
    let wrapper = ["prlimit", "--nofile=256:4096"];
    // The default max_connections (10,000) needs more than 4,096.
    let proxy = ProxyProcess::start_under(&wrapper, &listener_toml(DEAD_UPSTREAM, "", ""));
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", proxy.pid())).unwrap();
    let open_files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .split_whitespace()
        .collect::<Vec<_>>();
    assert_eq!(open_files[3..5], ["4096", "4096"], "{limits}");
    let raised = proxy.wait_for_log(Duration::from_secs(5), |v| {
        v["message"] == "soft limit on open files"
    });
    assert_eq!(raised["before"], 256);
    assert_eq!(raised["now"], 4096);
    let warning = proxy.wait_for_log(Duration::from_secs(5), |v| {
        v["level"] == "WARN"
            && v["message"]
                .as_str()
                .is_some_and(|m| m.contains("LimitNOFILE"))
    });
    assert_eq!(warning["limit"], 4096);
    assert_eq!(warning["needed"], 2 * (10_000 + 512) + 64);

    // Limits that fit: no warning (it would come before "listening").
    let fits = ProxyProcess::start_under(
        &wrapper,
        &listener_toml(
            DEAD_UPSTREAM,
            "",
            "max_connections = 1000\nmax_unauthenticated = 100",
        ),
    );
    assert!(!fits.logs().iter().any(|v| v["message"]
        .as_str()
        .is_some_and(|m| m.contains("LimitNOFILE"))));

    // check-config says the same ahead of time.
    let check = |config: &str| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("intransit.toml");
        std::fs::write(&path, config).unwrap();
        let out = std::process::Command::new("prlimit")
            .arg("--nofile=256:4096")
            .arg(BIN)
            .arg("check-config")
            .arg(&path)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        stdout(&out)
    };
    let text = check(&listener_toml(DEAD_UPSTREAM, "", ""));
    assert!(
        text.contains("warning:") && text.contains("LimitNOFILE"),
        "{text}"
    );
    let text = check(&listener_toml(DEAD_UPSTREAM, "", "max_connections = 1000"));
    assert!(!text.contains("warning:"), "{text}");
}

fn admin_config(extra: &str) -> String {
    format!(
        "{ADMIN_ON}{extra}\n{}",
        listener_toml(DEAD_UPSTREAM, "", "")
    )
}

#[test]
fn the_admin_server_closes_idle_and_half_sent_connections() {
    let proxy = ProxyProcess::start(&admin_config(
        "admin_header_read_timeout = \"1s\"\nadmin_idle_timeout = \"1s\"",
    ));
    let addr = proxy.admin_addr();
    let connect = || {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        s
    };
    // Nothing sent.
    let mut silent = connect();
    // Half a request.
    let mut half = connect();
    half.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n")
        .unwrap();
    // A request answered, then the connection kept alive and idle.
    let mut kept = connect();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut answer = [0u8; 12];
    kept.read_exact(&mut answer).unwrap();
    assert_eq!(&answer, b"HTTP/1.1 200");
    for (name, stream) in [
        ("silent", &mut silent),
        ("half-sent", &mut half),
        ("kept-alive", &mut kept),
    ] {
        assert!(closed_by_proxy(stream), "the {name} connection stayed open");
    }
}

#[test]
fn the_admin_server_over_tls_closes_idle_connections_too() {
    let p = pki();
    let admin_tls = format!(
        "[admin_tls]\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\n",
        p.server.chain.display(),
        p.server.key.display(),
        p.ca.display()
    );
    let proxy = ProxyProcess::start(&format!(
        "{}{admin_tls}",
        admin_config("admin_header_read_timeout = \"1s\"\nadmin_idle_timeout = \"1s\"")
    ));
    let addr = proxy.admin_addr();
    // A completed handshake, then no request.
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn =
        rustls::ClientConnection::new(rustls_client(Some(&p.reporting), &[b"http/1.1"]), name)
            .unwrap();
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock).unwrap();
    }
    let mut rest = Vec::new();
    let ended = tls.read_to_end(&mut rest);
    assert!(
        !matches!(&ended, Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)),
        "the connection stayed open: {ended:?}"
    );
}

#[test]
fn the_admin_server_closes_connections_beyond_its_cap() {
    let proxy = ProxyProcess::start(&admin_config(
        "admin_max_connections = 4\nadmin_idle_timeout = \"300s\"",
    ));
    let addr = proxy.admin_addr();
    let mut held: Vec<_> = (0..4)
        .map(|_| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
            // A full answer proves the server took this connection.
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
                .unwrap();
            let mut answer = [0u8; 12];
            s.read_exact(&mut answer).unwrap();
            assert_eq!(&answer, b"HTTP/1.1 200");
            s
        })
        .collect();
    let mut fifth = TcpStream::connect(addr).unwrap();
    fifth
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    assert!(
        closed_by_proxy(&mut fifth),
        "the fifth connection was served"
    );
    proxy.wait_for_log(Duration::from_secs(5), |v| {
        v["message"]
            .as_str()
            .is_some_and(|m| m.contains("admin_max_connections reached"))
    });
    // A slot given back is taken again.
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = std::panic::catch_unwind(|| http_get(addr, "/healthz"));
        if matches!(got, Ok((200, _))) {
            break;
        }
        assert!(Instant::now() < deadline, "no slot came free");
        std::thread::sleep(Duration::from_millis(100));
    }
}
