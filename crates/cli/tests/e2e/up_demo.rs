//! `intransit up --demo`: a PostgreSQL (and a MariaDB with `--protocol
//! mysql`) of the binary's own behind the proxy, driven with psql and the
//! mariadb client exactly as the printed commands say; the database
//! refusing plaintext and TLS without a client certificate by itself; the
//! data kept from one run to the next; Ctrl-C twice and a run killed
//! outright; the message, exit status and empty state directory when the
//! server programs are missing or, as root, the database's account cannot
//! reach the state directory; a first run failing half-way leaving no demo
//! directory; and the one warning `up` gives when nothing
//! answers at its upstream.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::support::*;

/// A running `intransit up`, its stdout read line by line and its log
/// (stderr) in a file.
struct Up {
    child: Child,
    stdout: mpsc::Receiver<String>,
    log: PathBuf,
}

impl Up {
    fn start(work: &Path, args: &[&str]) -> Up {
        let log = work.join(format!("up-{}.log", unique_suffix()));
        let mut child = Command::new(BIN)
            .arg("up")
            .arg("--state-dir")
            .arg(work.join("state"))
            .args(["--listen", "127.0.0.1:0", "--admin", "off"])
            .args(args)
            .current_dir(work)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("intransit up");
        let out = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Up {
            child,
            stdout: rx,
            log,
        }
    }

    /// Stdout up to the "Press Ctrl-C" line.
    fn banner(&self) -> Vec<String> {
        let mut lines = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = self.stdout.recv_timeout(left) else {
                panic!(
                    "no banner from intransit up; got {lines:?}; log:\n{}",
                    self.log_text()
                );
            };
            let done = line.contains("Press Ctrl-C");
            lines.push(line.trim().to_owned());
            if done {
                return lines;
            }
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log has `count` lines holding `needle`.
    fn wait_for_log(&self, needle: &str, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.log_text().matches(needle).count() < count {
            assert!(
                Instant::now() < deadline,
                "no {count} x {needle:?} in the log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the process to exit by itself.
    fn wait_exit(mut self) -> (std::process::ExitStatus, String) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting for intransit up") {
                return (status, self.log_text());
            }
            assert!(Instant::now() < deadline, "intransit up did not exit");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then the exit status and the whole log.
    fn terminate(mut self) -> (std::process::ExitStatus, String) {
        signal(self.child.id(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting for intransit up") {
                return (status, self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "intransit up did not exit on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        // A test that failed half-way still stops the demo database: the
        // binary does that on SIGTERM.
        if matches!(self.child.try_wait(), Ok(None)) {
            signal(self.child.id(), "TERM");
            let deadline = Instant::now() + Duration::from_secs(60);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

fn unique_suffix() -> String {
    intransit_testkit::unique_name("run")
}

/// A working directory the database's account can reach when the tests
/// run as root (a temporary directory is mode 0700).
fn work_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    dir
}

/// The banner line after `heading`.
fn line_after(banner: &[String], heading: &str) -> String {
    let at = banner
        .iter()
        .position(|l| l.starts_with(heading))
        .unwrap_or_else(|| panic!("no {heading:?} in the banner:\n{}", banner.join("\n")));
    banner
        .get(at + 1)
        .unwrap_or_else(|| panic!("nothing after {heading:?}"))
        .clone()
}

/// Runs a printed command line with `extra` appended, through sh, as a
/// person pastes it.
fn run_printed(command: &str, extra: &str) -> Output {
    let mut sh = Command::new("sh");
    sh.arg("-c")
        .arg(format!("{command} {extra}"))
        .stdin(Stdio::null());
    for (key, _) in std::env::vars_os() {
        let text = key.to_string_lossy();
        if text.starts_with("PG") || text.starts_with("MYSQL") || text.starts_with("MARIADB") {
            sh.env_remove(key);
        }
    }
    sh.output().expect("sh")
}

/// The demo database's port, from the banner's plaintext command.
fn demo_port(plaintext: &str) -> u16 {
    let re = regex::Regex::new(r"(?:port=|-P )(\d+)").expect("regex");
    re.captures(plaintext)
        .and_then(|c| c[1].parse().ok())
        .unwrap_or_else(|| panic!("no port in {plaintext}"))
}

#[test]
fn up_demo_puts_the_proxy_in_front_of_its_own_postgresql_which_refuses_plaintext() {
    intransit_testkit::require_tool("psql", "postgresql-client").expect("psql");
    let work = work_dir();
    let state = work.path().join("state");
    let data = state.join("demo/postgres/data");

    let up = Up::start(work.path(), &["--demo"]);
    let banner = up.banner();
    let text = banner.join("\n");
    assert!(
        text.contains("demo database: PostgreSQL") && text.contains("(created)"),
        "{text}"
    );
    let through = line_after(&banner, "Connect through it with:");
    let plaintext = line_after(&banner, "The demo database itself refuses plaintext:");
    for needle in ["sslmode=verify-full", "sslcert=", "sslkey=", "sslrootcert="] {
        assert!(through.contains(needle), "{through}");
    }

    // Through the proxy: verify-full, the client certificate, SELECT 1.
    let out = run_printed(&through, "-X -A -t -c 'SELECT 1'");
    assert!(out.status.success(), "{through}\n{}", stderr(&out));
    assert_eq!(stdout(&out), "1");
    let out = run_printed(
        &through,
        "-X -A -t -c 'CREATE TABLE kept (v int); INSERT INTO kept VALUES (42)'",
    );
    assert!(out.status.success(), "{}", stderr(&out));

    // Straight to the database: plaintext is refused by its pg_hba.conf.
    assert!(plaintext.contains("sslmode=disable"), "{plaintext}");
    let out = run_printed(&plaintext, "-X -A -t -c 'SELECT 1'");
    assert!(!out.status.success(), "plaintext was accepted: {plaintext}");
    assert!(
        stderr(&out).contains("no pg_hba.conf entry") && stderr(&out).contains("no encryption"),
        "{}",
        stderr(&out)
    );
    // TLS without a client certificate is refused too...
    let port = demo_port(&plaintext);
    let base = format!("host=127.0.0.1 port={port} user=postgres dbname=postgres");
    let out = run_printed(
        &format!("psql \"{base} sslmode=require\""),
        "-X -c 'SELECT 1'",
    );
    assert!(
        !out.status.success(),
        "TLS without a certificate was accepted"
    );
    assert!(
        stderr(&out).contains("connection requires a valid client certificate"),
        "{}",
        stderr(&out)
    );
    // ... and TLS with the client certificate from intransit's CA, checking
    // the database's own certificate from that CA, logs in.
    let ca = state.join("ca/ca.pem");
    let client = state.join("certs/client");
    let direct = format!(
        "psql \"{base} sslmode=verify-full sslrootcert={} sslcert={} sslkey={}\"",
        ca.display(),
        client.join("cert.pem").display(),
        client.join("key.pem").display()
    );
    let out = run_printed(&direct, "-X -A -t -c 'SHOW ssl'");
    assert!(out.status.success(), "{direct}\n{}", stderr(&out));
    assert_eq!(stdout(&out), "on");

    let (status, log) = up.terminate();
    assert!(status.success(), "exit {status:?}\n{log}");
    assert!(log.contains("demo database stopped"), "{log}");
    assert!(
        !data.join("postmaster.pid").exists(),
        "PostgreSQL still runs after up exited"
    );
    let server_log =
        std::fs::read_to_string(state.join("demo/postgres/server.log")).expect("server log");
    assert!(
        server_log.contains("database system is shut down"),
        "{server_log}"
    );
    let ident = std::fs::read_to_string(data.join("PG_VERSION")).expect("PG_VERSION");
    let created = std::fs::metadata(data.join("PG_VERSION"))
        .expect("PG_VERSION")
        .modified()
        .expect("mtime");

    // The second run reuses the cluster, its data, and its port when free.
    let again = Up::start(work.path(), &["--demo"]);
    let banner = again.banner();
    let text = banner.join("\n");
    assert!(text.contains("(reused)"), "{text}");
    let through = line_after(&banner, "Connect through it with:");
    let out = run_printed(&through, "-X -A -t -c 'SELECT v FROM kept'");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "42");
    assert_eq!(
        std::fs::metadata(data.join("PG_VERSION"))
            .expect("PG_VERSION")
            .modified()
            .expect("mtime"),
        created,
        "initdb ran again"
    );
    assert_eq!(
        ident,
        std::fs::read_to_string(data.join("PG_VERSION")).expect("PG_VERSION")
    );
    assert!(
        !again.log_text().contains("not reachable"),
        "up --demo warned about its own upstream:\n{}",
        again.log_text()
    );

    // Ctrl-C with a session open: the proxy waits for it; a second Ctrl-C
    // exits at once, and stops the database before it does.
    let mut session = Command::new("sh")
        .arg("-c")
        .arg(format!("{through} -X -c 'SELECT pg_sleep(60)'"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("psql session");
    again.wait_for_log("connection established", 2);
    signal(again.child.id(), "INT");
    again.wait_for_log("shutdown requested", 1);
    assert!(
        data.join("postmaster.pid").exists(),
        "the database stopped before the proxy's drain"
    );
    signal(again.child.id(), "INT");
    let (status, log) = again.wait_exit();
    let _ = session.kill();
    let _ = session.wait();
    // 130 when the second signal's exit came first; 0 when the database,
    // stopping, ended the session and so the drain.
    assert!(matches!(status.code(), Some(0 | 130)), "{status:?}\n{log}");
    assert!(log.contains("second signal"), "{log}");
    assert!(log.contains("demo database stopped"), "{log}");
    assert!(
        !data.join("postmaster.pid").exists(),
        "PostgreSQL still runs after a second Ctrl-C"
    );

    // A run killed outright leaves the database running; the next run
    // stops it and starts it again with its own settings.
    let killed = Up::start(work.path(), &["--demo"]);
    killed.banner();
    signal(killed.child.id(), "KILL");
    let (_, _) = killed.wait_exit();
    assert!(
        data.join("postmaster.pid").exists(),
        "no database left over"
    );
    let next = Up::start(work.path(), &["--demo"]);
    let banner = next.banner();
    assert!(
        next.log_text().contains("still running; restarting it"),
        "{}",
        next.log_text()
    );
    let through = line_after(&banner, "Connect through it with:");
    let out = run_printed(&through, "-X -A -t -c 'SELECT v FROM kept'");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "42");
    let (status, log) = next.terminate();
    assert!(status.success(), "exit {status:?}\n{log}");
    assert!(!data.join("postmaster.pid").exists(), "{log}");
}

#[test]
fn up_demo_mysql_puts_the_proxy_in_front_of_its_own_mariadb() {
    intransit_testkit::require_tool("mariadb", "mariadb-client").expect("mariadb");
    let work = work_dir();
    let state = work.path().join("state");
    let up = Up::start(work.path(), &["--demo", "--protocol", "mysql"]);
    let banner = up.banner();
    let text = banner.join("\n");
    assert!(text.contains("demo database: MariaDB"), "{text}");
    let through = line_after(&banner, "Connect through it with:");
    let plaintext = line_after(&banner, "The demo database itself refuses plaintext:");
    assert!(through.contains("--ssl-verify-server-cert"), "{through}");

    let out = run_printed(&through, "--batch --skip-column-names -e 'SELECT 1'");
    assert!(out.status.success(), "{through}\n{}", stderr(&out));
    assert_eq!(stdout(&out), "1");

    let out = run_printed(&plaintext, "--batch -e 'SELECT 1'");
    assert!(!out.status.success(), "plaintext was accepted: {plaintext}");
    assert!(stderr(&out).contains("ERROR"), "{}", stderr(&out));

    // TLS without a client certificate is refused; with one, root logs in.
    let port = demo_port(&plaintext);
    let out = run_printed(
        &format!("mariadb -h 127.0.0.1 -P {port} -u root --ssl"),
        "--batch -e 'SELECT 1'",
    );
    assert!(
        !out.status.success(),
        "TLS without a certificate was accepted"
    );
    assert!(stderr(&out).contains("ERROR 1045"), "{}", stderr(&out));
    let client = state.join("certs/client");
    let out = run_printed(
        &format!(
            "mariadb -h 127.0.0.1 -P {port} -u root --ssl --ssl-verify-server-cert --ssl-ca={} --ssl-cert={} --ssl-key={}",
            state.join("ca/ca.pem").display(),
            client.join("cert.pem").display(),
            client.join("key.pem").display()
        ),
        "--batch --skip-column-names -e 'SELECT CURRENT_USER()'",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "root@127.0.0.1");

    let (status, log) = up.terminate();
    assert!(status.success(), "exit {status:?}\n{log}");
    assert!(log.contains("demo database stopped"), "{log}");
    assert!(
        !state.join("demo/mariadb/mariadbd.pid").exists(),
        "MariaDB still runs after up exited"
    );
}

#[test]
fn up_demo_without_the_server_programs_says_what_to_install_and_writes_nothing() {
    let work = work_dir();
    let empty = work.path().join("empty-bin");
    std::fs::create_dir(&empty).expect("empty dir");
    for (protocol, package) in [
        ("postgres", "apt-get install postgresql"),
        ("mysql", "apt-get install mariadb-server"),
    ] {
        let state = work.path().join(format!("state-{protocol}"));
        let out = Command::new(BIN)
            .arg("up")
            .arg("--state-dir")
            .arg(&state)
            .args(["--listen", "127.0.0.1:0", "--admin", "off", "--demo"])
            .args(["--protocol", protocol])
            .arg("--demo-bin-dir")
            .arg(&empty)
            .env("PATH", &empty)
            .stdin(Stdio::null())
            .output()
            .expect("intransit up");
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains(package), "{err}");
        assert!(err.contains("./scripts/test"), "{err}");
        assert_eq!(
            err.lines().filter(|l| l.starts_with("error:")).count(),
            1,
            "{err}"
        );
        assert!(
            !state.exists(),
            "{} was created by a start that failed",
            state.display()
        );
        assert!(stdout(&out).is_empty(), "{}", stdout(&out));
    }
}

#[test]
fn up_demo_refuses_flags_it_cannot_honour() {
    let work = work_dir();
    for (args, needle) in [
        (
            &["--demo", "--upstream", "127.0.0.1:5432"][..],
            "--upstream",
        ),
        (&["--demo", "--protocol", "tls"][..], "--protocol tls"),
        (&["--demo-bin-dir", "/nonexistent"][..], "--demo"),
    ] {
        let state = work.path().join("state");
        let out = Command::new(BIN)
            .arg("up")
            .arg("--state-dir")
            .arg(&state)
            .args(["--listen", "127.0.0.1:0", "--admin", "off"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("intransit up");
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(stderr(&out).contains(needle), "{args:?}: {}", stderr(&out));
        assert!(!state.exists(), "{args:?} wrote {}", state.display());
    }
}

#[test]
fn up_warns_once_at_start_when_nothing_answers_upstream() {
    let work = work_dir();
    let up = Up::start(work.path(), &["--upstream", DEAD_UPSTREAM]);
    up.banner();
    let (status, log) = up.terminate();
    assert!(status.success(), "exit {status:?}\n{log}");
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("not reachable"))
        .collect();
    assert_eq!(warnings.len(), 1, "{log}");
    let warning = warnings[0];
    assert!(warning.contains("WARN"), "{warning}");
    assert!(warning.contains(DEAD_UPSTREAM), "{warning}");
    assert!(
        warning.contains("--upstream") && warning.contains("intransit up --demo"),
        "{warning}"
    );
}

#[test]
fn up_demo_as_root_says_when_the_database_account_cannot_reach_the_state_directory() {
    let work = work_dir();
    // A directory only its owner may enter, as /root is.
    let private = work.path().join("private");
    std::fs::create_dir(&private).expect("private dir");
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let state = private.join("state");
    let as_root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| stdout(&o) == "0")
        .expect("id -u");
    if as_root {
        let out = Command::new(BIN)
            .arg("up")
            .arg("--state-dir")
            .arg(&state)
            .args(["--listen", "127.0.0.1:0", "--admin", "off", "--demo"])
            .stdin(Stdio::null())
            .output()
            .expect("intransit up");
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains("`postgres`")
                && err.contains("cannot enter")
                && err.contains("--state-dir"),
            "{err}"
        );
        assert!(!state.exists(), "{} was created", state.display());
    } else {
        // Not as root the database runs as this user, who owns the
        // directory: the same start works.
        let up = Up::start(&private, &["--demo"]);
        let text = up.banner().join("\n");
        assert!(text.contains("demo database: PostgreSQL"), "{text}");
        let (status, log) = up.terminate();
        assert!(status.success(), "{log}");
    }
}

#[test]
fn up_demo_removes_a_first_run_that_failed_half_way() {
    let work = work_dir();
    // Server programs that exist but fail, as a broken installation would.
    let bin = work.path().join("broken-bin");
    std::fs::create_dir(&bin).expect("bin dir");
    for name in ["initdb", "pg_ctl", "postgres"] {
        let path = bin.join(name);
        std::fs::write(
            &path,
            format!("#!/bin/sh\necho \"{name}: simulated failure\" >&2\nexit 1\n"),
        )
        .expect("script");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let state = work.path().join("state");
    let out = Command::new(BIN)
        .arg("up")
        .arg("--state-dir")
        .arg(&state)
        .args(["--listen", "127.0.0.1:0", "--admin", "off", "--demo"])
        .arg("--demo-bin-dir")
        .arg(&bin)
        .stdin(Stdio::null())
        .output()
        .expect("intransit up");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("initdb: simulated failure"), "{err}");
    // The CA is complete and stays; nothing of the demo database does.
    assert!(state.join("ca/ca.pem").is_file(), "{err}");
    assert!(
        !state.join("demo").exists(),
        "a half-made demo directory was left behind"
    );
}
