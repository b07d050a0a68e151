//! A private Redis server per test binary, for `protocol = "tls"`
//! listeners: plaintext on a random loopback port, no persistence, its
//! working directory in a temporary directory that the supervisor removes
//! once the test process is gone. [`RedisServer::start_with_tls`] adds
//! Redis's own TLS port, for tests of an encrypted upstream leg.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::supervisor::Supervisor;
use crate::{free_port, require_tool};

/// How long a starting server gets to answer PING.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Start-up attempts, each on a fresh port, in case a port was taken.
const ATTEMPTS: usize = 5;

/// PEM files for Redis's own TLS port (`--tls-port`). They are read by
/// the server at start-up, from where they are.
#[derive(Debug, Clone)]
pub struct RedisTls {
    /// The server certificate chain.
    pub cert_file: PathBuf,
    /// The server's private key.
    pub key_file: PathBuf,
    /// The CA for client certificates; clients are asked for one but
    /// need not present it.
    pub ca_file: PathBuf,
}

/// A running `redis-server`.
#[derive(Debug)]
pub struct RedisServer {
    dir: PathBuf,
    port: u16,
    tls_port: Option<u16>,
    process: Child,
    supervisor: Supervisor,
}

impl RedisServer {
    /// The server shared by every test in this test binary, started by the
    /// first call; stopped after the test process exits.
    pub fn shared() -> Result<&'static RedisServer> {
        static SHARED: OnceLock<Result<RedisServer, String>> = OnceLock::new();
        SHARED
            .get_or_init(|| RedisServer::start().map_err(|e| format!("{e:#}")))
            .as_ref()
            .map_err(|message| anyhow!("starting the shared test Redis: {message}"))
    }

    /// Starts a fresh server. A missing `redis-server` is an error that
    /// names the package to install.
    pub fn start() -> Result<RedisServer> {
        RedisServer::start_inner(None)
    }

    /// Starts a fresh server that also serves TLS (1.2 and 1.3) on a port
    /// of its own ([`RedisServer::tls_port`]); the plaintext port stays for
    /// the readiness check.
    pub fn start_with_tls(tls: RedisTls) -> Result<RedisServer> {
        RedisServer::start_inner(Some(tls))
    }

    fn start_inner(tls: Option<RedisTls>) -> Result<RedisServer> {
        let binary = require_tool("redis-server", "redis-server")?;
        let dir = tempfile::Builder::new()
            .prefix("intransit-redis-")
            .tempdir()
            .context("creating a temporary directory for Redis")?
            .keep();
        let mut supervisor = Supervisor::spawn(&dir)?;
        let mut last_error = None;
        for _ in 0..ATTEMPTS {
            let port = free_port();
            let tls_port = tls.as_ref().map(|t| (free_port(), t));
            let mut process = spawn(&binary, &dir, port, tls_port)?;
            supervisor.watch(process.id())?;
            match wait_ready(&mut process, port, &dir) {
                Ok(()) => {
                    return Ok(RedisServer {
                        dir,
                        port,
                        tls_port: tls_port.map(|(p, _)| p),
                        process,
                        supervisor,
                    })
                }
                Err(e) => {
                    let _ = process.kill();
                    let _ = process.wait();
                    last_error = Some(e);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow!("redis-server did not start")))
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The TLS port on 127.0.0.1, for a server started with TLS.
    pub fn tls_port(&self) -> Option<u16> {
        self.tls_port
    }

    /// The server's working directory (its log is `redis.log` there).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
        self.supervisor.stop();
    }
}

fn spawn(binary: &Path, dir: &Path, port: u16, tls: Option<(u16, &RedisTls)>) -> Result<Child> {
    let mut command = Command::new(binary);
    command.args(["--port", &port.to_string(), "--bind", "127.0.0.1"]);
    if let Some((tls_port, files)) = tls {
        command
            .args(["--tls-port", &tls_port.to_string()])
            .arg("--tls-cert-file")
            .arg(&files.cert_file)
            .arg("--tls-key-file")
            .arg(&files.key_file)
            .arg("--tls-ca-cert-file")
            .arg(&files.ca_file)
            .args(["--tls-auth-clients", "optional"]);
    }
    command
        .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
        .arg("--dir")
        .arg(dir)
        .arg("--logfile")
        .arg(dir.join("redis.log"))
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))
}

fn wait_ready(process: &mut Child, port: u16, dir: &Path) -> Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(status) = process.try_wait().context("checking redis-server")? {
            let log = std::fs::read_to_string(dir.join("redis.log")).unwrap_or_default();
            bail!("redis-server exited with {status}:\n{log}");
        }
        if ping(port) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("redis-server on port {port} did not answer PING within {READY_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut answer = [0u8; 7];
    s.read_exact(&mut answer).is_ok() && &answer == b"+PONG\r\n"
}
