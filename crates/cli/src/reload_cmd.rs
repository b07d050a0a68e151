//! `intransit reload`: sends SIGHUP to a running proxy, waits for the
//! reload round to finish (as the admin server's `/status` reports it),
//! and prints what each route serves now.
//!
//! The process is named by `--pid`, `--pid-file`, or the `pid_file` key of
//! `--config`; the admin address by `--admin` or the `admin` key. Without
//! an admin address the signal is sent and nothing more can be shown.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use serde_json::Value;

/// How long to wait for the proxy to finish the reload round.
const WAIT: Duration = Duration::from_secs(15);

#[derive(Debug, Args)]
pub struct ReloadArgs {
    /// The proxy's process id.
    #[arg(long, conflicts_with = "pid_file")]
    pub pid: Option<i32>,
    /// A file holding the proxy's process id (`intransit proxy --pid-file`).
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    /// The proxy's configuration: its `pid_file` and `admin` keys are used
    /// when --pid/--pid-file and --admin are not given.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// The admin server (plain HTTP on loopback) to read `/status` from.
    #[arg(long)]
    pub admin: Option<SocketAddr>,
}

pub fn run(args: &ReloadArgs) -> Result<ExitCode> {
    let config = args.config.as_deref().map(crate::load_config).transpose()?;
    let pid = match (args.pid, &args.pid_file, config.as_ref().and_then(|c| c.pid_file.as_ref())) {
        (Some(pid), _, _) => pid,
        (None, Some(file), _) | (None, None, Some(file)) => read_pid(file)?,
        (None, None, None) => bail!(
            "which proxy? give --pid, --pid-file, or --config with a pid_file key (start the proxy with --pid-file FILE)"
        ),
    };
    let admin = args.admin.or(config.as_ref().and_then(|c| c.admin));
    if config.as_ref().is_some_and(|c| c.admin_tls.is_some()) && args.admin.is_none() {
        bail!("the admin server of this configuration uses TLS, which `intransit reload` does not speak; send SIGHUP with kill -HUP {pid}");
    }
    let before = match admin {
        Some(addr) => Some(sighup_rounds(&status(addr)?)),
        None => None,
    };
    let target =
        rustix::process::Pid::from_raw(pid).ok_or_else(|| anyhow!("{pid} is not a process id"))?;
    rustix::process::kill_process(target, rustix::process::Signal::HUP)
        .with_context(|| format!("sending SIGHUP to process {pid}"))?;
    out!("sent SIGHUP to process {pid}");
    let (Some(addr), Some(before)) = (admin, before) else {
        out!("no admin address (--admin or the admin key): cannot show what is loaded; see the proxy's log");
        return Ok(ExitCode::SUCCESS);
    };
    let deadline = Instant::now() + WAIT;
    let status = loop {
        let status = status(addr)?;
        if sighup_rounds(&status) > before {
            break status;
        }
        if Instant::now() >= deadline {
            bail!(
                "the proxy at {addr} did not report a finished reload within {WAIT:?}; see its log"
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Ok(print_status(&status))
}

fn read_pid(file: &std::path::Path) -> Result<i32> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("reading the pid file {}", file.display()))?;
    text.trim()
        .parse()
        .with_context(|| format!("the pid file {} does not hold a process id", file.display()))
}

fn sighup_rounds(status: &Value) -> u64 {
    status["reloads"]["sighup"].as_u64().unwrap_or(0)
}

/// GET /status over plain HTTP/1.1.
fn status(addr: SocketAddr) -> Result<Value> {
    let fetch = || -> std::io::Result<Vec<u8>> {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            stream,
            "GET /status HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response)?;
        Ok(response)
    };
    let response = fetch().with_context(|| format!("reading http://{addr}/status"))?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("http://{addr}/status: not an HTTP response"))?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!(
            "http://{addr}/status answered {}",
            head.lines().next().unwrap_or("")
        );
    }
    serde_json::from_str(body).with_context(|| format!("http://{addr}/status: not JSON"))
}

/// Prints the round's result and each route's material; the exit code
/// says whether everything reloaded.
fn print_status(status: &Value) -> ExitCode {
    let round = &status["reloads"]["last_sighup"];
    let mut ok = true;
    if let Some(e) = round["error"].as_str() {
        out!("reload failed: {e}");
        ok = false;
    } else {
        let failed = round["failed"].as_u64().unwrap_or(0);
        ok &= failed == 0;
        out!(
            "reload finished: {} swapped, {failed} failed",
            round["swapped"].as_u64().unwrap_or(0),
        );
    }
    let empty = Vec::new();
    for listener in status["listeners"].as_array().unwrap_or(&empty) {
        for route in listener["routes"].as_array().unwrap_or(&empty) {
            out!(
                "listener {} route {}:",
                text(&listener["name"]),
                text(&route["route"])
            );
            ok &= print_leg(route);
            if !route["upstream_tls"].is_null() {
                ok &= print_leg(&route["upstream_tls"]);
            }
        }
    }
    for listener in status["client_listeners"].as_array().unwrap_or(&empty) {
        out!("client-mode listener {}:", text(&listener["name"]));
        ok &= print_leg(&listener["upstream_tls"]);
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Prints one leg's certificates and reload error; false if it has one.
fn print_leg(leg: &Value) -> bool {
    let empty = Vec::new();
    for cert in leg["certificates"].as_array().unwrap_or(&empty) {
        out!(
            "  {:<18} {}  serial {}  sha256 {}  not after {}  loaded at {}",
            text(&cert["role"]),
            text(&cert["subject"]),
            text(&cert["serial"]),
            text(&cert["fingerprint_sha256"]),
            text(&cert["not_after"]),
            text(&cert["loaded_at"]),
        );
    }
    match leg["reload_error"]["error"].as_str() {
        Some(e) => {
            out!("  reload refused, the material above stays in service: {e}");
            false
        }
        None => true,
    }
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or("?")
}
