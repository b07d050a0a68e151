//! Shared fixtures: certificates, the proxy binary as a child process, raw
//! protocol clients, and a sentinel upstream that records whether anything
//! reached it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use intransit_pki::{
    CertificateAuthority, CertificateKind, CertificatePaths, IssueRequest, KeyAlgorithm, Validity,
};
use intransit_testkit::PgServer;
use serde_json::Value;
use tempfile::TempDir;

pub const BIN: &str = env!("CARGO_BIN_EXE_intransit");

/// The shared PostgreSQL for this test binary.
pub fn pg() -> &'static PgServer {
    PgServer::shared().expect("starting the test PostgreSQL")
}

/// Client certificates with different problems, all under one directory.
pub struct Pki {
    /// Where the files live (removed by the next run once this one is gone).
    pub dir: PathBuf,
    pub ca: PathBuf,
    /// The test CA itself, for tests that issue their own certificates.
    pub authority: CertificateAuthority,
    pub server: CertificatePaths,
    /// Client certificate: CN "trainer", URI spiffe://prod/trainer.
    pub trainer: CertificatePaths,
    /// Client certificate: CN "reporting".
    pub reporting: CertificatePaths,
    /// Client certificate from another CA.
    pub stranger: CertificatePaths,
    /// Client certificate that expired yesterday.
    pub expired: CertificatePaths,
    /// A server certificate (serverAuth only) presented as a client one.
    pub server_as_client: CertificatePaths,
    /// Client certificate listed in `crl`.
    pub revoked: CertificatePaths,
    /// A CRL from the test CA that revokes `revoked`.
    pub crl: PathBuf,
}

pub fn issue(
    ca: &CertificateAuthority,
    dir: &Path,
    name: &str,
    kind: CertificateKind,
    cn: &str,
    uris: &[&str],
    validity: Validity,
) -> CertificatePaths {
    issue_with_serial(ca, dir, name, kind, cn, uris, validity).0
}

fn issue_with_serial(
    ca: &CertificateAuthority,
    dir: &Path,
    name: &str,
    kind: CertificateKind,
    cn: &str,
    uris: &[&str],
    validity: Validity,
) -> (CertificatePaths, String) {
    let (dns, ips) = match kind {
        CertificateKind::Server => (
            vec!["localhost".to_owned()],
            vec![
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(Ipv6Addr::LOCALHOST),
            ],
        ),
        CertificateKind::Client => (vec![], vec![]),
    };
    let issued = ca
        .issue(&IssueRequest {
            kind,
            common_name: cn.to_owned(),
            dns_names: dns,
            ip_addresses: ips,
            uris: uris.iter().map(|s| s.to_string()).collect(),
            key: KeyAlgorithm::EcdsaP256,
            validity,
        })
        .expect("issuing a test certificate");
    let paths = issued
        .write_to(&dir.join(name))
        .expect("writing a test certificate");
    (paths, issued.serial_hex.clone())
}

/// A directory for this test binary's certificates. A `static` is never
/// dropped, so instead of a self-deleting temp dir each run removes the
/// directories of earlier runs whose process is gone.
fn pki_dir() -> PathBuf {
    let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
    if let Ok(entries) = std::fs::read_dir(base) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name.strip_prefix("e2e-pki-") {
                if !Path::new("/proc").join(pid).exists() {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
    }
    let dir = base.join(format!("e2e-pki-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("creating the PKI directory");
    dir
}

/// One PKI per test binary: issuing is cheap, but there is no need to redo it.
pub fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        let dir = pki_dir();
        let ca = CertificateAuthority::generate(
            "intransit test CA",
            KeyAlgorithm::EcdsaP256,
            Validity::days_from_now(30),
        )
        .expect("CA");
        ca.save(&dir.join("ca")).expect("saving CA");
        let other = CertificateAuthority::generate(
            "some other CA",
            KeyAlgorithm::EcdsaP256,
            Validity::days_from_now(30),
        )
        .expect("other CA");
        let d = dir.as_path();
        let now = time::OffsetDateTime::now_utc();
        let expired = Validity {
            not_before: now - time::Duration::days(10),
            not_after: now - time::Duration::days(1),
        };
        let v = || Validity::days_from_now(30);
        let c = CertificateKind::Client;
        let (revoked, revoked_serial) =
            issue_with_serial(&ca, d, "revoked", c, "revoked", &[], v());
        let crl = d.join("ca.crl");
        std::fs::write(
            &crl,
            ca.crl_pem(&[&revoked_serial], time::Duration::days(7), 1)
                .expect("CRL"),
        )
        .expect("writing CRL");
        Pki {
            revoked,
            crl,
            ca: d.join("ca").join("ca.pem"),
            server: issue(
                &ca,
                d,
                "server",
                CertificateKind::Server,
                "localhost",
                &[],
                v(),
            ),
            trainer: issue(
                &ca,
                d,
                "trainer",
                c,
                "trainer",
                &["spiffe://prod/trainer"],
                v(),
            ),
            reporting: issue(&ca, d, "reporting", c, "reporting", &[], v()),
            stranger: issue(
                &other,
                d,
                "stranger",
                c,
                "trainer",
                &["spiffe://prod/trainer"],
                v(),
            ),
            expired: issue(
                &ca,
                d,
                "expired",
                c,
                "trainer",
                &["spiffe://prod/trainer"],
                expired,
            ),
            server_as_client: issue(
                &ca,
                d,
                "server-as-client",
                CertificateKind::Server,
                "trainer",
                &[],
                v(),
            ),
            authority: ca,
            dir,
        }
    })
}

/// A listener section with the test PKI, for `extra` policy lines to extend.
pub fn listener_toml(upstream: &str, tls_extra: &str, listener_extra: &str) -> String {
    let p = pki();
    format!(
        r#"
shutdown_grace = "5s"
[[listener]]
name = "pg"
listen = "127.0.0.1:0"
upstream = "{upstream}"
{listener_extra}
[listener.tls]
cert = "{cert}"
key = "{key}"
client_ca = "{ca}"
{tls_extra}
"#,
        cert = p.server.chain.display(),
        key = p.server.key.display(),
        ca = p.ca.display(),
    )
}

/// An upstream where nothing listens. A privileged port that no test
/// binds, rather than a port that was free a moment ago: another test may
/// bind that one in the meantime.
pub const DEAD_UPSTREAM: &str = "127.0.0.1:613";

/// The upstream address of the shared PostgreSQL, over TCP.
pub fn pg_upstream() -> String {
    format!("127.0.0.1:{}", pg().port())
}

/// A running `intransit proxy` child process with its JSON log captured.
pub struct ProxyProcess {
    child: Child,
    pub addr: SocketAddr,
    logs: Arc<(Mutex<Vec<Value>>, Condvar)>,
    /// The configuration file it runs with.
    pub config_path: PathBuf,
    _dir: TempDir,
}

impl ProxyProcess {
    /// Writes `config` to a file and starts the binary on it.
    pub fn start(config: &str) -> ProxyProcess {
        ProxyProcess::start_under(&[], config)
    }

    /// Like [`ProxyProcess::start`], with the binary run by the command
    /// `wrapper` (say `prlimit --nofile=256:4096`), which must exec it.
    pub fn start_under(wrapper: &[&str], config: &str) -> ProxyProcess {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("intransit.toml");
        std::fs::write(&path, config).expect("writing config");
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        let mut child = command
            .args([
                "--log-format",
                "json",
                "--log-level",
                "debug",
                "proxy",
                "--config",
            ])
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting intransit");
        let stderr = child.stderr.take().expect("stderr");
        let logs: Arc<(Mutex<Vec<Value>>, Condvar)> = Arc::default();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let value = serde_json::from_str(&line)
                    .unwrap_or_else(|_| serde_json::json!({ "message": line }));
                let (lock, cv) = &*sink;
                lock.lock().expect("log lock").push(value);
                cv.notify_all();
            }
        });
        let mut proxy = ProxyProcess {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            logs,
            config_path: path,
            _dir: dir,
        };
        let listening =
            proxy.wait_for_log(Duration::from_secs(20), |v| v["message"] == "listening");
        let listen = listening["listen"]
            .as_str()
            .expect("listen field in the listening log line");
        proxy.addr = listen.parse().expect("listen address");
        proxy
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Waits for a log line matching `pred`, panicking with all lines on timeout.
    pub fn wait_for_log(&self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let (lock, cv) = &*self.logs;
        let deadline = Instant::now() + timeout;
        let mut logs = lock.lock().expect("log lock");
        loop {
            if let Some(v) = logs.iter().find(|v| pred(v)) {
                return v.clone();
            }
            let now = Instant::now();
            if now >= deadline {
                panic!(
                    "no matching log line within {timeout:?}; log so far:\n{}",
                    logs.iter()
                        .map(|v| v.to_string())
                        .collect::<Vec<_>>()
                        .join("\n")
                );
            }
            logs = cv.wait_timeout(logs, deadline - now).expect("log lock").0;
        }
    }

    /// Waits for the refusal log line with `reason` and returns it.
    pub fn refusal(&self, reason: &str) -> Value {
        self.wait_for_log(Duration::from_secs(15), |v| {
            v["message"] == "connection refused" && v["reason"] == reason
        })
    }

    /// All log lines so far.
    pub fn logs(&self) -> Vec<Value> {
        self.logs.0.lock().expect("log lock").clone()
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting for intransit") {
                return status;
            }
            assert!(Instant::now() < deadline, "intransit did not exit");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends a signal by name with kill(1), to avoid unsafe libc calls.
pub fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .expect("running kill");
    assert!(status.success(), "kill -{name} {pid} failed");
}

/// libpq connection string through the proxy with a client certificate.
pub fn conninfo(port: u16, user: &str, db: &str, cert: &CertificatePaths, extra: &str) -> String {
    format!(
        "host=localhost port={port} user={user} dbname={db} sslmode=verify-full sslrootcert={ca} sslcert={cert} sslkey={key} connect_timeout=10 {extra}",
        ca = pki().ca.display(),
        cert = cert.cert.display(),
        key = cert.key.display(),
    )
}

/// Runs psql with a connection string and one command.
pub fn psql(conninfo: &str, sql: &str, password: Option<&str>) -> Output {
    let psql = intransit_testkit::require_tool("psql", "postgresql-client").expect("psql");
    let mut cmd = Command::new(psql);
    cmd.arg(conninfo)
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .env_remove("PGPASSWORD")
        .stdin(Stdio::null());
    if let Some(p) = password {
        cmd.env("PGPASSWORD", p);
    }
    cmd.output().expect("running psql")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).trim().to_owned()
}

/// A user and database of its own in the shared PostgreSQL.
pub struct DbUser {
    pub name: String,
    pub password: String,
}

pub fn db_user(prefix: &str) -> DbUser {
    let name = intransit_testkit::unique_name(prefix);
    let password = format!("pw-{name}");
    pg().create_user(&name, &password).expect("creating user");
    pg().create_database(&name, &name)
        .expect("creating database");
    DbUser { name, password }
}

/// A pool's `auth_file` in `dir` with `user`'s password (PgBouncer's
/// userlist format), mode 0600.
pub fn write_userlist(dir: &Path, user: &DbUser) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("userlist.txt");
    std::fs::write(&path, format!("\"{}\" \"{}\"\n", user.name, user.password)).expect("userlist");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("mode");
    path
}

/// An upstream that accepts connections and counts them, to prove that a
/// refused client caused no traffic to the database.
pub struct Sentinel {
    pub addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    bytes: Arc<AtomicUsize>,
}

impl Sentinel {
    pub fn start() -> Sentinel {
        let listener = TcpListener::bind("127.0.0.1:0").expect("sentinel bind");
        let addr = listener.local_addr().expect("sentinel addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let bytes = Arc::new(AtomicUsize::new(0));
        let (c, b) = (connections.clone(), bytes.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { break };
                c.fetch_add(1, Ordering::SeqCst);
                let b = b.clone();
                std::thread::spawn(move || {
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = stream.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        b.fetch_add(n, Ordering::SeqCst);
                    }
                });
            }
        });
        Sentinel {
            addr,
            connections,
            bytes,
        }
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::SeqCst)
    }
}

/// Opens a plain TCP connection to the proxy.
pub fn tcp(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connecting to the proxy");
    s.set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    s
}

/// Reads until EOF (or timeout) and returns everything.
pub fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    out
}

pub fn write(stream: &mut TcpStream, bytes: &[u8]) {
    stream.write_all(bytes).expect("writing to the proxy");
}

/// A rustls client configuration for raw protocol tests.
pub fn rustls_client(cert: Option<&CertificatePaths>, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&pki().ca).expect("ca") {
        roots.add(c.expect("ca cert")).expect("adding root");
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let mut config = match cert {
        Some(c) => {
            let chain = CertificateDer::pem_file_iter(&c.cert)
                .expect("cert")
                .collect::<Result<Vec<_>, _>>()
                .expect("cert");
            let key = PrivateKeyDer::from_pem_file(&c.key).expect("key");
            builder
                .with_client_auth_cert(chain, key)
                .expect("client auth")
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Arc::new(config)
}

/// The top-level line that turns the admin server on, on a free port.
pub const ADMIN_ON: &str = "admin = \"127.0.0.1:0\"\n";

impl ProxyProcess {
    /// The admin server's address, from its start-up log line.
    pub fn admin_addr(&self) -> SocketAddr {
        let line = self.wait_for_log(Duration::from_secs(10), |v| {
            v["message"] == "admin server listening"
        });
        line["admin"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("admin address in {line}"))
    }

    /// Scrapes `/metrics`.
    pub fn metrics(&self) -> Metrics {
        let (status, body) = http_get(self.admin_addr(), "/metrics");
        assert_eq!(status, 200, "{body}");
        Metrics::parse(&body)
    }
}

/// A minimal HTTP/1.1 GET: status code and body.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http_request(addr, "GET", path, None)
}

/// A minimal HTTP request with an optional JSON body: status code and body.
/// The servers asked (axum, chromedriver) answer with a Content-Length,
/// never chunked, so the body is what follows the header.
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    json: Option<&str>,
) -> (u16, String) {
    let mut stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("HTTP connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("read timeout");
    let body = json.unwrap_or("");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("sending the request");
    // Read the header, then exactly Content-Length bytes: some servers
    // (chromedriver) keep the connection open despite `Connection: close`.
    let mut reader = BufReader::new(stream);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        let n = reader.read_line(&mut line).expect("reading the response");
        assert!(n > 0, "connection closed inside the header: {head:?}");
        if line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    let length = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse::<usize>().ok())
            .flatten()
    });
    let mut body = Vec::new();
    match length {
        Some(n) => {
            body.resize(n, 0);
            reader.read_exact(&mut body).expect("reading the body");
        }
        None => {
            reader.read_to_end(&mut body).expect("reading the body");
        }
    }
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// One scraped sample: metric name, labels, value.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// A parsed OpenMetrics text exposition (as much of it as the tests need:
/// label values without escaped quotes).
#[derive(Debug)]
pub struct Metrics {
    pub samples: Vec<Sample>,
    pub text: String,
}

impl Metrics {
    pub fn parse(text: &str) -> Metrics {
        let mut samples = Vec::new();
        for line in text.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let (series, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("sample line {line:?}"));
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => {
                    let inner = rest.trim_end_matches('}');
                    let labels = inner
                        .split("\",")
                        .filter(|p| !p.is_empty())
                        .map(|pair| {
                            let (k, v) = pair
                                .split_once('=')
                                .unwrap_or_else(|| panic!("label {pair:?} in {line:?}"));
                            (k.to_owned(), v.trim_matches('"').to_owned())
                        })
                        .collect();
                    (name.to_owned(), labels)
                }
                None => (series.to_owned(), Vec::new()),
            };
            samples.push(Sample {
                name,
                labels,
                value: value
                    .parse()
                    .unwrap_or_else(|_| panic!("value in {line:?}")),
            });
        }
        Metrics {
            samples,
            text: text.to_owned(),
        }
    }

    /// The samples named `name` whose labels include every pair in `with`.
    pub fn matching<'a>(
        &'a self,
        name: &'a str,
        with: &'a [(&str, &str)],
    ) -> impl Iterator<Item = &'a Sample> {
        self.samples
            .iter()
            .filter(move |s| s.name == name && with.iter().all(|(k, v)| s.label(k) == Some(*v)))
    }

    /// The sum of the matching samples.
    pub fn sum(&self, name: &str, with: &[(&str, &str)]) -> f64 {
        self.matching(name, with).map(|s| s.value).sum()
    }
}

/// Runs `SELECT pg_sleep(30)` with psql (`conninfo`, `password`) through
/// `proxy`, waits until `server` shows the query running for `user`,
/// interrupts psql with SIGINT and waits for the cancel to land. The
/// event that proves it is psql reporting the server's "canceling
/// statement due to user request", which the server sends only when the
/// CancelRequest reached it (a query that ran to completion reports
/// nothing); then the proxy's "cancel request forwarded" line, which is
/// returned.
pub fn cancel_a_running_query(
    proxy: &ProxyProcess,
    server: &PgServer,
    conninfo: &str,
    user: &str,
    password: &str,
) -> Value {
    let mut command = psql_running(conninfo, "SELECT pg_sleep(30)");
    let child = command.env("PGPASSWORD", password).spawn().expect("psql");
    // Wait until the query is running upstream before interrupting.
    wait_for_active_query(server, user, "SELECT pg_sleep");
    signal(child.id(), "INT");
    let out = child.wait_with_output().expect("psql output");
    let err = stderr(&out);
    assert!(
        err.contains("canceling statement due to user request"),
        "psql did not report a cancel: {err}"
    );
    proxy.wait_for_log(Duration::from_secs(5), |v| {
        v["message"] == "cancel request forwarded"
    })
}

/// psql running one statement (`-X -A -t -c`), its output captured, ready
/// to spawn.
pub fn psql_running(conninfo: &str, sql: &str) -> Command {
    let psql_bin = intransit_testkit::require_tool("psql", "postgresql-client").expect("psql");
    let mut command = Command::new(psql_bin);
    command
        .arg(conninfo)
        .args(["-X", "-A", "-t", "-c", sql])
        .env_remove("PGPASSWORD")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Waits (up to 20 s) until `server` shows one active query of `user`
/// starting with `prefix`.
pub fn wait_for_active_query(server: &PgServer, user: &str, prefix: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let running = server
            .psql(
                "postgres",
                &format!(
                    "SELECT count(*) FROM pg_stat_activity WHERE usename = '{user}' AND query LIKE '{prefix}%' AND state = 'active'"
                ),
            )
            .expect("pg_stat_activity");
        if running == "1" {
            return;
        }
        assert!(Instant::now() < deadline, "{prefix}... never started");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A client CA made with rcgen directly, for what `intransit ca` never
/// issues: CRLs dated in the past, post-dated certificates, CA:TRUE
/// leaves and RSA-1024 keys.
pub struct RawCa {
    pub dir: TempDir,
    /// The CA certificate, PEM: the listener's `client_ca`.
    pub ca: PathBuf,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl RawCa {
    pub fn new(name: &str) -> RawCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let key = rcgen::KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        let dir = tempfile::tempdir().expect("temp dir");
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, cert.pem()).expect("writing the CA");
        RawCa {
            dir,
            ca,
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// The parameters of a client certificate with CN `cn`, valid from
    /// yesterday for 30 days; `edit` changes them.
    fn client_params(cn: &str) -> rcgen::CertificateParams {
        let now = time::OffsetDateTime::now_utc();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::days(30);
        params
    }

    /// Issues a client certificate with a fresh P-256 key, with `edit`
    /// applied to its parameters. Returns its files and serial (hex).
    pub fn client(
        &self,
        cn: &str,
        edit: impl FnOnce(&mut rcgen::CertificateParams),
    ) -> (CertificatePaths, rcgen::SerialNumber) {
        let key = rcgen::KeyPair::generate().expect("client key");
        let mut params = Self::client_params(cn);
        let serial = rcgen::SerialNumber::from_slice(&rand_serial(cn));
        params.serial_number = Some(serial.clone());
        edit(&mut params);
        let cert = params.signed_by(&key, &self.issuer).expect("signing");
        (self.write(cn, &cert.pem(), &key.serialize_pem()), serial)
    }

    /// Issues a client certificate for an RSA-1024 key from `openssl
    /// genrsa`, which aws-lc-rs does not generate.
    pub fn weak_rsa_client(&self, cn: &str) -> CertificatePaths {
        let openssl = intransit_testkit::require_tool("openssl", "openssl").expect("openssl");
        let key_path = self.dir.path().join(format!("{cn}-rsa1024.key"));
        let made = Command::new(&openssl)
            .args(["genrsa", "-out"])
            .arg(&key_path)
            .arg("1024")
            .output()
            .expect("running openssl genrsa");
        assert!(made.status.success(), "{}", stderr(&made));
        let public = Command::new(&openssl)
            .args(["rsa", "-pubout", "-in"])
            .arg(&key_path)
            .output()
            .expect("running openssl rsa -pubout");
        assert!(public.status.success(), "{}", stderr(&public));
        let spki = rcgen::SubjectPublicKeyInfo::from_pem(&String::from_utf8_lossy(&public.stdout))
            .expect("the RSA-1024 public key");
        let cert = Self::client_params(cn)
            .signed_by(&spki, &self.issuer)
            .expect("signing");
        let key = std::fs::read_to_string(&key_path).expect("reading the RSA key");
        self.write(cn, &cert.pem(), &key)
    }

    fn write(&self, name: &str, cert: &str, key: &str) -> CertificatePaths {
        let paths = CertificatePaths::in_dir(&self.dir.path().join(name));
        std::fs::create_dir_all(&paths.dir).expect("certificate directory");
        std::fs::write(&paths.cert, cert).expect("writing the certificate");
        std::fs::write(&paths.key, key).expect("writing the key");
        // libpq refuses a key file that others may read.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&paths.key, std::fs::Permissions::from_mode(0o600))
            .expect("key mode");
        paths
    }

    /// A CRL issued at `this_update`, due again at `next_update`,
    /// revoking `revoked`, written to `path` by rename (as a CRL is
    /// published), so a watcher sees one complete file.
    pub fn write_crl(
        &self,
        path: &Path,
        this_update: time::OffsetDateTime,
        next_update: time::OffsetDateTime,
        revoked: &[&rcgen::SerialNumber],
        number: u64,
    ) {
        let crl = rcgen::CertificateRevocationListParams {
            this_update,
            next_update,
            crl_number: rcgen::SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|serial| rcgen::RevokedCertParams {
                    serial_number: (*serial).clone(),
                    revocation_time: this_update,
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        }
        .signed_by(&self.issuer)
        .expect("signing the CRL");
        let staged = path.with_extension("new");
        std::fs::write(&staged, crl.pem().expect("CRL PEM")).expect("writing the CRL");
        std::fs::rename(&staged, path).expect("publishing the CRL");
    }
}

/// A serial number that differs per certificate name and run.
fn rand_serial(name: &str) -> [u8; 16] {
    use std::hash::{BuildHasher, Hasher};
    let mut out = [0u8; 16];
    for (i, chunk) in out.chunks_mut(8).enumerate() {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write(name.as_bytes());
        h.write_usize(i);
        // A positive INTEGER: the top bit clear.
        chunk.copy_from_slice(&(h.finish() & 0x7fff_ffff_ffff_ffff).to_be_bytes());
    }
    out
}
