//! The command line as people use it: errors that say once what failed and
//! what to do, `up` that leaves nothing behind when it cannot start,
//! relative paths in a configuration file, the two ways of giving it, and
//! the shell completion scripts and manual pages.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::support::*;

/// A port held by this test for as long as the listener lives.
fn taken_port() -> (TcpListener, u16) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("local addr").port();
    (listener, port)
}

/// Runs `intransit up` with `args` in a fresh directory and returns its
/// stderr, after checking that it failed and left no state directory.
fn failed_up(args: &[&str]) -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("state");
    let out = Command::new(BIN)
        .arg("up")
        .arg("--state-dir")
        .arg(&state)
        .args(["--upstream", DEAD_UPSTREAM])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run intransit up");
    let err = stderr(&out);
    assert!(!out.status.success(), "up {args:?} started:\n{err}");
    assert!(
        !state.exists(),
        "up {args:?} failed but left {} behind:\n{err}",
        state.display()
    );
    err
}

#[test]
fn a_taken_port_is_reported_once_with_who_holds_it_and_what_to_do() {
    let (_held, port) = taken_port();
    let in_use = "Address already in use";

    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("intransit.toml");
    std::fs::write(
        &config,
        listener_toml(DEAD_UPSTREAM, "", "").replace(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"127.0.0.1:{port}\""),
        ),
    )
    .expect("write config");
    let out = Command::new(BIN)
        .arg("proxy")
        .arg(&config)
        .stdin(Stdio::null())
        .output()
        .expect("run intransit proxy");
    assert!(!out.status.success());
    let err = stderr(&out);
    assert_eq!(err.matches(in_use).count(), 1, "{err}");
    assert!(err.contains("listener \"pg\""), "{err}");
    assert!(
        err.contains(&format!("ss -ltnp 'sport = :{port}'")),
        "{err}"
    );
    assert!(
        err.contains(&format!("another listen address in {}", config.display())),
        "{err}"
    );

    let err = failed_up(&["--listen", &format!("127.0.0.1:{port}"), "--admin", "off"]);
    assert_eq!(err.matches(in_use).count(), 1, "{err}");
    assert!(
        err.contains(&format!("ss -ltnp 'sport = :{port}'")),
        "{err}"
    );
    assert!(err.contains("--listen"), "{err}");

    let err = failed_up(&[
        "--listen",
        "127.0.0.1:0",
        "--admin",
        &format!("127.0.0.1:{port}"),
    ]);
    assert_eq!(err.matches(in_use).count(), 1, "{err}");
    assert!(err.contains("admin server"), "{err}");
    assert!(err.contains("--admin off"), "{err}");
}

#[test]
fn up_checks_its_arguments_before_it_writes_the_state_directory() {
    let err = failed_up(&["--listen", "127.0.0.1:0", "--server-cert-lifetime", "1s"]);
    assert!(err.contains("--server-cert-lifetime"), "{err}");

    let err = failed_up(&["--listen", "127.0.0.1:0", "--admin", "0.0.0.0:8432"]);
    assert!(err.contains("not a loopback address"), "{err}");
    // `up` has no configuration file, so [admin_tls] is not a fix it can take.
    assert!(!err.contains("[admin_tls] with"), "{err}");
    assert!(err.contains("ssh -L 8432:127.0.0.1:8432"), "{err}");
    assert!(err.contains("intransit proxy"), "{err}");
}

/// Copies the test PKI's server files into `dir/certs` and writes a
/// configuration in `dir` that names them by relative paths.
fn config_with_relative_paths(dir: &Path) -> std::path::PathBuf {
    let p = pki();
    let certs = dir.join("certs");
    std::fs::create_dir_all(&certs).expect("mkdir");
    for (from, to) in [
        (&p.server.chain, "chain.pem"),
        (&p.server.key, "key.pem"),
        (&p.ca, "ca.pem"),
    ] {
        std::fs::copy(from, certs.join(to)).expect("copy");
    }
    let config = dir.join("intransit.toml");
    std::fs::write(
        &config,
        format!(
            r#"shutdown_grace = "1s"
[[listener]]
name = "pg"
listen = "127.0.0.1:0"
upstream = "{DEAD_UPSTREAM}"
[listener.tls]
cert = "certs/chain.pem"
key = "./certs/key.pem"
client_ca = "certs/ca.pem"
"#
        ),
    )
    .expect("write config");
    config
}

#[test]
fn relative_paths_in_a_configuration_resolve_from_its_directory() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = config_with_relative_paths(dir.path());
    // Started from elsewhere, the files are still found next to the configuration.
    let elsewhere = tempfile::tempdir().expect("temp dir");

    for form in [&[][..], &["--config"][..]] {
        let out = Command::new(BIN)
            .arg("check-config")
            .args(form)
            .arg(&config)
            .current_dir(elsewhere.path())
            .output()
            .expect("run check-config");
        assert!(out.status.success(), "{form:?}: {}", stderr(&out));
        assert!(stdout(&out).contains(": OK"), "{}", stdout(&out));
    }

    let mut child = Command::new(BIN)
        .args(["--log-format", "json", "proxy"])
        .arg(&config)
        .current_dir(elsewhere.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start intransit proxy");
    let (tx, rx) = mpsc::channel();
    let err = child.stderr.take().expect("stderr");
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let listening = loop {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) if line.contains("\"listening\"") => break true,
            Ok(line) => seen.push(line),
            Err(_) => break false,
        }
    };
    signal(child.id(), "TERM");
    let _ = child.wait();
    assert!(listening, "the proxy did not start:\n{}", seen.join("\n"));
}

#[test]
fn a_missing_configuration_file_is_named_in_either_form() {
    for form in [&[][..], &["--config"][..]] {
        for command in ["proxy", "check-config"] {
            let out = Command::new(BIN)
                .arg(command)
                .args(form)
                .arg("/nonexistent/intransit.toml")
                .output()
                .expect("run");
            assert!(!out.status.success());
            let err = stderr(&out);
            assert!(
                err.contains("reading configuration /nonexistent/intransit.toml"),
                "{command} {form:?}: {err}"
            );
            assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
        }
    }
}

#[test]
fn the_bash_completion_script_loads() {
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source <('{BIN}' completions bash) && complete -p intransit"
        ))
        .output()
        .expect("bash");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("intransit"), "{}", stdout(&out));

    for (shell, marker) in [
        ("zsh", "#compdef intransit"),
        ("fish", "complete -c intransit"),
    ] {
        let out = Command::new(BIN)
            .args(["completions", shell])
            .output()
            .expect("run");
        assert!(out.status.success(), "{}", stderr(&out));
        let script = stdout(&out);
        assert!(script.contains(marker), "{shell}: {script}");
        assert!(script.contains("check-config"), "{shell}: {script}");
    }
}

#[test]
fn the_manual_page_renders_and_names_every_command() {
    let out = Command::new(BIN).arg("man").output().expect("run");
    assert!(out.status.success(), "{}", stderr(&out));
    let roff = stdout(&out);
    assert!(roff.contains(".TH intransit 1"), "{roff}");
    // roff writes a hyphen as "\-".
    let words = roff.replace("\\-", "-");
    let help = Command::new(BIN).arg("help").output().expect("run");
    let commands: Vec<String> = stdout(&help)
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect();
    assert!(commands.len() > 10, "{commands:?}");
    for command in &commands {
        assert!(words.contains(command.as_str()), "man page lacks {command}");
    }

    let groff = Command::new("groff")
        .args(["-man", "-Tutf8"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    match groff {
        Ok(mut groff) => {
            groff
                .stdin
                .take()
                .expect("stdin")
                .write_all(roff.as_bytes())
                .expect("write to groff");
            let out = groff.wait_with_output().expect("groff");
            assert!(out.status.success(), "{}", stderr(&out));
            let text = stdout(&out);
            assert!(text.contains("check-config"), "{text}");
            assert!(stderr(&out).is_empty(), "groff warns: {}", stderr(&out));
        }
        Err(e) => eprintln!("groff not found ({e}); checked the roff text only"),
    }

    let out = Command::new(BIN)
        .args(["man", "proxy"])
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains(".TH intransit-proxy 1"));
}
