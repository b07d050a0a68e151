//! The systemd notification protocol as a `Type=notify` unit sees it: the
//! test binds a unix datagram socket, points `NOTIFY_SOCKET` at it as
//! systemd does, and reads what `intransit proxy` and `intransit up` say:
//! `READY=1` once the listener answers, `RELOADING=1` with
//! `MONOTONIC_USEC=` and then `READY=1` around a SIGHUP reload and a
//! file-change reload, `STOPPING=1` on SIGTERM, and `WATCHDOG=1` pings when
//! `WATCHDOG_USEC` asks for them (and `WATCHDOG_PID`, when set, is the
//! proxy's own).
//!
//! Listeners are unix sockets, so the test can connect the moment it reads
//! `READY=1` without first learning a port from the log: a connection that
//! fails then would mean the proxy said ready too early.

use std::io::{Read, Write};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::support::*;

/// Stands in for systemd's end of `NOTIFY_SOCKET`.
struct NotifySocket {
    socket: UnixDatagram,
    path: PathBuf,
    /// Every message read so far, for failure reports.
    seen: Vec<String>,
}

impl NotifySocket {
    fn bind(dir: &Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("binding the notify socket");
        NotifySocket {
            socket,
            path,
            seen: Vec::new(),
        }
    }

    /// The next message, as its `KEY=value` lines, within `timeout`.
    fn next(&mut self, timeout: Duration) -> Option<Vec<String>> {
        self.socket
            .set_read_timeout(Some(timeout))
            .expect("setting a read timeout");
        let mut buf = [0u8; 4096];
        match self.socket.recv(&mut buf) {
            Ok(n) => {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                self.seen.push(text.clone());
                Some(text.lines().map(str::to_owned).collect())
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                None
            }
            Err(e) => panic!("reading the notify socket: {e}"),
        }
    }

    /// The next message other than a watchdog ping, which must come within
    /// 20 seconds.
    fn expect_next(&mut self, what: &str) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left.max(Duration::from_millis(1))) {
                Some(lines) if lines == ["WATCHDOG=1"] => continue,
                Some(lines) => return lines,
                None => panic!(
                    "no {what} message within 20 s; messages so far: {:?}",
                    self.seen
                ),
            }
        }
    }
}

/// An `intransit` child process whose log goes to a file, killed on drop.
struct Service {
    child: Child,
    log: PathBuf,
}

impl Service {
    fn spawn(mut command: Command, dir: &Path) -> Service {
        let log = dir.join("intransit.log");
        let file = std::fs::File::create(&log).expect("creating the log file");
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("starting intransit");
        Service { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the process to exit after a signal, and checks it exited
    /// cleanly.
    fn wait_clean_exit(mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting for intransit") {
                assert!(status.success(), "{status}; log:\n{}", self.log());
                return;
            }
            assert!(
                Instant::now() < deadline,
                "intransit did not exit; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Connects to a PostgreSQL listener on a unix socket and checks that it
/// answers an SSLRequest with `S`: the proxy is serving, not just bound.
fn assert_serving(socket: &Path, seen: &[String]) {
    let mut stream = UnixStream::connect(socket).unwrap_or_else(|e| {
        panic!(
            "READY=1 came but {} refuses connections ({e}); messages: {seen:?}",
            socket.display()
        )
    });
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    stream
        .write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
        .expect("sending SSLRequest");
    let mut answer = [0u8; 1];
    stream.read_exact(&mut answer).expect("reading the answer");
    assert_eq!(&answer, b"S", "the listener did not offer TLS");
}

/// A server-mode configuration listening on `dir/pg.sock`, with copies of
/// the test server certificate in `dir` (so the test can replace them).
fn unix_listener_config(dir: &Path) -> (PathBuf, PathBuf) {
    let p = pki();
    let chain = dir.join("chain.pem");
    let key = dir.join("key.pem");
    std::fs::copy(&p.server.chain, &chain).expect("copying the chain");
    std::fs::copy(&p.server.key, &key).expect("copying the key");
    let socket = dir.join("pg.sock");
    let config = dir.join("intransit.toml");
    std::fs::write(
        &config,
        format!(
            r#"
shutdown_grace = "5s"
[[listener]]
name = "pg"
listen = "unix:{socket}"
upstream = "{DEAD_UPSTREAM}"
[listener.tls]
cert = "{chain}"
key = "{key}"
client_ca = "{ca}"
"#,
            socket = socket.display(),
            chain = chain.display(),
            key = key.display(),
            ca = p.ca.display(),
        ),
    )
    .expect("writing the configuration");
    (config, socket)
}

fn monotonic_usec(lines: &[String]) -> u64 {
    let value = lines
        .iter()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .unwrap_or_else(|| panic!("no MONOTONIC_USEC in {lines:?}"));
    let usec: u64 = value.parse().expect("MONOTONIC_USEC is a number");
    assert!(usec > 0, "{lines:?}");
    usec
}

fn proxy_command(config: &Path, notify: &NotifySocket) -> Command {
    let mut command = Command::new(BIN);
    command
        .args(["--log-format", "json", "proxy"])
        .arg(config)
        .env("NOTIFY_SOCKET", &notify.path)
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID");
    command
}

#[test]
fn proxy_says_ready_when_serving_reloading_around_reloads_and_stopping_on_sigterm() {
    let dir = TempDir::new().expect("temp dir");
    let mut notify = NotifySocket::bind(dir.path());
    let (config, socket) = unix_listener_config(dir.path());
    let service = Service::spawn(proxy_command(&config, &notify), dir.path());
    let pid = service.child.id();

    let ready = notify.expect_next("READY=1");
    assert_eq!(ready[0], "READY=1", "{ready:?}");
    assert!(
        ready.contains(&"STATUS=serving 1 listener(s)".to_owned()),
        "{ready:?}"
    );
    assert_serving(&socket, &notify.seen);

    signal(pid, "HUP");
    let reloading = notify.expect_next("RELOADING=1 after SIGHUP");
    assert_eq!(reloading[0], "RELOADING=1", "{reloading:?}");
    let first = monotonic_usec(&reloading);
    assert_eq!(notify.expect_next("READY=1 after the reload"), ["READY=1"]);
    assert!(
        service.log().contains("reload round finished"),
        "{}",
        service.log()
    );

    // The way certificate tools replace a file: a new file renamed over it.
    let chain = dir.path().join("chain.pem");
    let fresh = dir.path().join("chain.pem.new");
    std::fs::copy(&chain, &fresh).expect("copying the chain");
    std::fs::rename(&fresh, &chain).expect("renaming over the chain");
    let reloading = notify.expect_next("RELOADING=1 after a file change");
    assert_eq!(reloading[0], "RELOADING=1", "{reloading:?}");
    assert!(monotonic_usec(&reloading) > first, "{:?}", notify.seen);
    assert_eq!(notify.expect_next("READY=1 after the reload"), ["READY=1"]);
    assert_serving(&socket, &notify.seen);

    signal(pid, "TERM");
    assert_eq!(notify.expect_next("STOPPING=1"), ["STOPPING=1"]);
    service.wait_clean_exit();
    assert!(
        !notify.seen.iter().any(|m| m.contains("WATCHDOG")),
        "pings without WATCHDOG_USEC: {:?}",
        notify.seen
    );
}

#[test]
fn the_watchdog_is_pinged_when_asked_and_only_by_the_process_named() {
    let dir = TempDir::new().expect("temp dir");
    let mut notify = NotifySocket::bind(dir.path());
    let (config, socket) = unix_listener_config(dir.path());

    // WATCHDOG_PID names the process itself: sh sets it to its own pid and
    // execs intransit, which keeps that pid.
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(r#"export WATCHDOG_PID=$$; exec "$0" --log-format json proxy "$1""#)
        .arg(BIN)
        .arg(&config)
        .env("NOTIFY_SOCKET", &notify.path)
        .env("WATCHDOG_USEC", "400000");
    let service = Service::spawn(command, dir.path());
    assert_eq!(notify.expect_next("READY=1")[0], "READY=1");
    assert_serving(&socket, &notify.seen);
    let mut pings = 0;
    while pings < 3 {
        match notify.next(Duration::from_secs(10)) {
            Some(lines) if lines == ["WATCHDOG=1"] => pings += 1,
            other => panic!(
                "expected WATCHDOG=1, got {other:?}; messages: {:?}",
                notify.seen
            ),
        }
    }
    signal(service.child.id(), "TERM");
    assert_eq!(notify.expect_next("STOPPING=1"), ["STOPPING=1"]);
    service.wait_clean_exit();
    std::fs::remove_file(&socket).ok();

    // WATCHDOG_PID names another process (the watchdog is for it): no pings.
    let other = dir.path().join("other");
    std::fs::create_dir(&other).expect("mkdir");
    let mut notify = NotifySocket::bind(&other);
    let mut command = proxy_command(&config, &notify);
    command
        .env("WATCHDOG_USEC", "400000")
        .env("WATCHDOG_PID", std::process::id().to_string());
    let service = Service::spawn(command, dir.path());
    assert_eq!(notify.expect_next("READY=1")[0], "READY=1");
    // Five ping periods with nothing: a proxy that pinged would have.
    assert!(
        notify.next(Duration::from_secs(1)).is_none(),
        "{:?}",
        notify.seen
    );
    signal(service.child.id(), "TERM");
    assert_eq!(notify.expect_next("STOPPING=1"), ["STOPPING=1"]);
    service.wait_clean_exit();
}

#[test]
fn up_says_ready_when_serving_and_stopping_on_sigterm() {
    let dir = TempDir::new().expect("temp dir");
    let mut notify = NotifySocket::bind(dir.path());
    let socket = dir.path().join("up.sock");
    let mut command = Command::new(BIN);
    command
        .args(["--log-format", "json", "up", "--admin", "off"])
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--listen")
        .arg(format!("unix:{}", socket.display()))
        .args(["--upstream", DEAD_UPSTREAM])
        .env("NOTIFY_SOCKET", &notify.path)
        .env_remove("WATCHDOG_USEC");
    let service = Service::spawn(command, dir.path());
    let ready = notify.expect_next("READY=1");
    assert_eq!(ready[0], "READY=1", "{ready:?}");
    assert_serving(&socket, &notify.seen);
    signal(service.child.id(), "TERM");
    assert_eq!(notify.expect_next("STOPPING=1"), ["STOPPING=1"]);
    service.wait_clean_exit();
}
