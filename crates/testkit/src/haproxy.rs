//! A real HAProxy in TCP mode in front of several instances, as people
//! run intransit behind a load balancer.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tempfile::TempDir;

use crate::isolation::free_port;
use crate::tools::require_tool;

/// HAProxy in the foreground on 127.0.0.1, `balance roundrobin` over the
/// servers, TCP health checks every 300 ms, and a failed connection
/// redispatched to another server; stopped when dropped.
#[derive(Debug)]
pub struct HaProxy {
    child: Child,
    port: u16,
    dir: TempDir,
}

impl HaProxy {
    /// Starts HAProxy balancing over `servers`.
    pub fn start(servers: &[SocketAddr]) -> Result<HaProxy> {
        // /usr/sbin is not on every user's PATH.
        let sbin = PathBuf::from("/usr/sbin/haproxy");
        let bin = if sbin.exists() {
            sbin
        } else {
            require_tool("haproxy", "haproxy")?
        };
        let dir = tempfile::tempdir().context("temp dir for haproxy")?;
        let port = free_port();
        let mut config = format!(
            "global\n    maxconn 2000\n\
             defaults\n    mode tcp\n    timeout connect 2s\n    timeout client 120s\n    timeout server 120s\n    retries 3\n    option redispatch\n\
             listen postgres\n    bind 127.0.0.1:{port}\n    balance roundrobin\n"
        );
        for (i, s) in servers.iter().enumerate() {
            config.push_str(&format!(
                "    server instance{} {s} check inter 300ms fall 1 rise 2\n",
                i + 1
            ));
        }
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, &config).context("writing haproxy.cfg")?;
        let log = std::fs::File::create(dir.path().join("haproxy.log"))?;
        let child = Command::new(bin)
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting haproxy")?;
        let mut haproxy = HaProxy { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = haproxy.child.try_wait()? {
                bail!(
                    "haproxy exited ({status}): {}",
                    std::fs::read_to_string(haproxy.log_path()).unwrap_or_default()
                );
            }
            if Instant::now() > deadline {
                bail!("haproxy did not listen on 127.0.0.1:{port} within 10 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(haproxy)
    }

    /// The port clients connect to, on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// HAProxy's own output (alerts, servers going down and up).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("haproxy.log")
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
