//! Several pooled instances behind a real load balancer. Three intransit
//! processes, each in its own network namespace with its own address, in
//! front of the same PostgreSQL (its unix socket), behind HAProxy in TCP
//! mode on 127.0.0.1. A cancel request is a new connection, so HAProxy
//! sends it to whichever instance is next: the instances know each other
//! (`[[listener.pool.peers]]`) and forward a cancel carrying another
//! instance's id there over mutual TLS. This is the layout
//! docs/deployment.md describes.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use intransit_pki::{CertificateKind, CertificatePaths, IssueRequest, KeyAlgorithm, Validity};
use intransit_testkit::{HaProxy, Subnet};

use crate::support::*;

const INSTANCES: usize = 3;
const PORT: u16 = 6432;

/// A server certificate for every instance's address, for `localhost`
/// (clients through HAProxy) and for the subnet addresses (peers verify
/// each other's names).
fn server_cert(subnet: &Subnet, dir: &std::path::Path) -> CertificatePaths {
    let mut ips = vec![IpAddr::V4(Ipv4Addr::LOCALHOST)];
    ips.extend((1..=INSTANCES).map(|i| IpAddr::V4(subnet.host(i))));
    pki()
        .authority
        .issue(&IssueRequest {
            kind: CertificateKind::Server,
            common_name: "intransit instances".to_owned(),
            dns_names: vec!["localhost".to_owned()],
            ip_addresses: ips,
            uris: Vec::new(),
            key: KeyAlgorithm::EcdsaP256,
            validity: Validity::days_from_now(2),
        })
        .expect("issuing the instances' certificate")
        .write_to(dir)
        .expect("writing it")
}

fn instance_config(subnet: &Subnet, i: usize, server: &CertificatePaths) -> String {
    let p = pki();
    let mut peers = String::new();
    for j in (1..=INSTANCES).filter(|&j| j != i) {
        peers.push_str(&format!(
            "[[listener.pool.peers]]\nid = {j}\naddress = \"{}:{PORT}\"\n\n",
            subnet.host(j)
        ));
    }
    format!(
        r#"
shutdown_grace = "20s"
[[listener]]
name = "pg"
listen = "{listen}:{PORT}"
upstream = "unix:{socket}"

[listener.pool]
mode = "transaction"
size = 2
server_auth = "trust"
peer_id = {i}

{peers}
[listener.pool.peer_tls]
ca = "{ca}"
cert = "{peer_cert}"
key = "{peer_key}"

[listener.tls]
cert = "{cert}"
key = "{key}"
client_ca = "{ca}"
"#,
        listen = subnet.host(i),
        socket = pg().socket_path().display(),
        ca = p.ca.display(),
        peer_cert = p.trainer.chain.display(),
        peer_key = p.trainer.key.display(),
        cert = server.chain.display(),
        key = server.key.display(),
    )
}

struct Fleet {
    instances: Vec<Option<ProxyProcess>>,
    haproxy: HaProxy,
    // Dropped last: the namespaces go once the processes in them are gone.
    _subnet: Subnet,
    _dir: tempfile::TempDir,
}

impl Fleet {
    fn start() -> Fleet {
        let subnet = Subnet::create(INSTANCES).expect("network namespaces");
        let dir = tempfile::tempdir().expect("temp dir");
        let server = server_cert(&subnet, dir.path());
        let mut instances = Vec::new();
        for i in 1..=INSTANCES {
            let prefix = subnet.exec_prefix(i);
            let prefix: Vec<&str> = prefix.iter().map(String::as_str).collect();
            instances.push(Some(ProxyProcess::start_under(
                &prefix,
                &instance_config(&subnet, i, &server),
            )));
        }
        let servers: Vec<SocketAddr> = (1..=INSTANCES)
            .map(|i| SocketAddr::from((subnet.host(i), PORT)))
            .collect();
        let haproxy = HaProxy::start(&servers).expect("haproxy");
        Fleet {
            instances,
            haproxy,
            _subnet: subnet,
            _dir: dir,
        }
    }

    fn instance(&self, i: usize) -> &ProxyProcess {
        self.instances[i - 1].as_ref().expect("a running instance")
    }

    fn count_logs(&self, i: usize, message: &str) -> usize {
        self.instance(i)
            .logs()
            .iter()
            .filter(|v| v["message"] == message)
            .count()
    }
}

const FORWARDED_TO_PEER: &str = "cancel request for a client of a peer: forwarding it";

#[test]
fn a_cancel_reaching_any_instance_behind_haproxy_stops_the_query() {
    let fleet = Fleet::start();
    let user = db_user("peers_cancel");
    let ci = conninfo(
        fleet.haproxy.port(),
        &user.name,
        &user.name,
        &pki().trainer,
        "",
    );
    // psql and pgbench through the load balancer.
    let out = psql(&ci, "SELECT current_user", None);
    assert!(out.status.success(), "psql via haproxy: {}", stderr(&out));
    let pgbench = intransit_testkit::require_tool("pgbench", "postgresql-client").expect("pgbench");
    let run = Command::new(&pgbench)
        .args(["-n", "-c", "6", "-j", "2", "-t", "50", "-f"])
        .arg(write_script("SELECT 1;\n"))
        .arg(&ci)
        .stdin(Stdio::null())
        .output()
        .expect("pgbench");
    assert!(
        run.status.success(),
        "pgbench via haproxy: {}",
        stderr(&run)
    );
    assert!(
        stdout(&run).contains("number of failed transactions: 0"),
        "{}",
        stdout(&run)
    );

    // Round-robin: psql's session goes to one instance and its cancel
    // connection to the next, so over three rounds every instance
    // receives a cancel for a client of another.
    for round in 0..INSTANCES {
        let started = Instant::now();
        cancel_through_balancer(&ci, &user.name);
        assert!(
            started.elapsed() < Duration::from_secs(25),
            "round {round}: the query ran to its end instead of being cancelled"
        );
    }
    let forwarded: Vec<usize> = (1..=INSTANCES)
        .map(|i| fleet.count_logs(i, FORWARDED_TO_PEER))
        .collect();
    assert_eq!(
        forwarded.iter().sum::<usize>(),
        INSTANCES,
        "every cancel reached another instance than its client's and was forwarded: {forwarded:?}"
    );
    assert!(
        forwarded.iter().all(|&n| n == 1),
        "each instance forwarded one: {forwarded:?}"
    );
    // The instance owning each key sent it on to PostgreSQL. Each hop's
    // line is written once its far end has closed, which may be a moment
    // after psql saw the cancel (bounded: 10 s).
    let deadline = Instant::now() + Duration::from_secs(10);
    let to_server = loop {
        let n: usize = (1..=INSTANCES)
            .map(|i| fleet.count_logs(i, "cancel request forwarded"))
            .sum();
        if n >= 2 * INSTANCES || Instant::now() > deadline {
            break n;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        to_server,
        2 * INSTANCES,
        "peer hop and server hop for each cancel"
    );
}

/// `SELECT pg_sleep(30)` with psql through HAProxy, interrupted once it
/// runs; psql must report PostgreSQL's "canceling statement due to user
/// request", which only a CancelRequest that reached PostgreSQL causes.
fn cancel_through_balancer(ci: &str, user: &str) {
    let child = psql_running(ci, "SELECT pg_sleep(30)")
        .spawn()
        .expect("psql");
    wait_for_active_query(pg(), user, "SELECT pg_sleep(30)");
    signal(child.id(), "INT");
    let out = child.wait_with_output().expect("psql output");
    assert!(
        stderr(&out).contains("canceling statement due to user request"),
        "psql did not report a cancel: {}",
        stderr(&out)
    );
}

fn write_script(sql: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(intransit_testkit::unique_name("peers-script"));
    std::fs::write(&path, sql).expect("writing a pgbench script");
    path
}

/// A CancelRequest (plaintext, as libpq sends it) with a made-up key.
fn send_cancel(to: SocketAddr, pid: u32, secret: u32) {
    let mut msg = Vec::with_capacity(16);
    msg.extend_from_slice(&16u32.to_be_bytes());
    msg.extend_from_slice(&80_877_102u32.to_be_bytes());
    msg.extend_from_slice(&pid.to_be_bytes());
    msg.extend_from_slice(&secret.to_be_bytes());
    let mut s = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(5)).expect("connect");
    std::io::Write::write_all(&mut s, &msg).expect("send cancel");
    let mut rest = Vec::new();
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = std::io::Read::read_to_end(&mut s, &mut rest);
}

#[test]
fn forged_keys_cancel_nothing_and_a_draining_instance_lets_its_clients_finish() {
    let fleet = Fleet::start();
    let user = db_user("peers_drain");
    let ci = conninfo(
        fleet.haproxy.port(),
        &user.name,
        &user.name,
        &pki().trainer,
        "",
    );

    // A query runs; cancels with keys nobody handed out change nothing:
    // one naming peer 2 with a made-up secret (forwarded, unknown there),
    // one naming an instance that is no peer (9), one with no instance.
    let sleeper = psql_running(&ci, "SELECT pg_sleep(2), 4242")
        .spawn()
        .expect("psql");
    wait_for_active_query(pg(), &user.name, "SELECT pg_sleep(2), 4242");
    let first = fleet.instance(1).addr;
    for (pid, secret) in [(2u32 << 23 | 77, 12345u32), (9 << 23 | 5, 1), (12, 34)] {
        send_cancel(first, pid, secret);
    }
    let out = sleeper.wait_with_output().expect("psql");
    assert!(
        out.status.success(),
        "forged cancels stopped a query: {}",
        stderr(&out)
    );
    assert!(stdout(&out).ends_with("4242"), "{}", stdout(&out));
    assert_eq!(
        fleet.count_logs(1, FORWARDED_TO_PEER),
        1,
        "only the key naming a peer is forwarded"
    );
    let metrics_logged = fleet
        .instance(2)
        .wait_for_log(Duration::from_secs(10), |v| {
            v["message"] == "cancel request with a key of no pooled client"
        });
    assert!(metrics_logged.is_object());

    // Six persistent pgbench clients through HAProxy, two per instance;
    // instance 2 is told to stop while they run: its clients finish their
    // run within its grace period, and no transaction fails anywhere.
    let pgbench = intransit_testkit::require_tool("pgbench", "postgresql-client").expect("pgbench");
    let script = write_script("SELECT 1;\n");
    let bench = Command::new(&pgbench)
        .args(["-n", "-c", "6", "-j", "2", "-T", "6", "-f"])
        .arg(&script)
        .arg(&ci)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("pgbench");
    std::thread::sleep(Duration::from_secs(2));
    let drained = fleet.instance(2).pid();
    signal(drained, "TERM");
    fleet
        .instance(2)
        .wait_for_log(Duration::from_secs(10), |v| {
            v["message"] == "draining open connections"
        });
    // New clients meanwhile go to the other instances.
    for _ in 0..6 {
        let out = psql(&ci, "SELECT 1", None);
        assert!(
            out.status.success(),
            "a new client during the drain: {}",
            stderr(&out)
        );
    }
    let out = bench.wait_with_output().expect("pgbench");
    assert!(
        out.status.success(),
        "pgbench during the drain: {}",
        stderr(&out)
    );
    assert!(
        stdout(&out).contains("number of failed transactions: 0"),
        "{}",
        stdout(&out)
    );
    fleet
        .instance(2)
        .wait_for_log(Duration::from_secs(20), |v| {
            v["message"] == "shut down: all connections finished"
        });
}
