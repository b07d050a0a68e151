//! README.md's first section, "Start in two commands", run as a reader
//! would: every line of its ```sh blocks, in a fresh working directory,
//! then the psql command `intransit up` prints, against the test
//! PostgreSQL. A line this test does not know how to run fails it, so the
//! section cannot change into something untested.
//!
//! The only differences from the README's text are these substitutions:
//!
//! | README says | the test runs | why |
//! |---|---|---|
//! | `cargo run --release --` | the `intransit` binary cargo built for this test run (`CARGO_BIN_EXE_intransit`) | the same program from the same sources; building the workspace again in release mode inside a test would take minutes |
//! | `up` | `up --listen 127.0.0.1:0` | port 6432 may be taken on a machine that runs tests in parallel; `up` prints the port it got |
//! | `up` | `up --upstream unix:<the test PostgreSQL's socket>` | there is no PostgreSQL on 127.0.0.1:5432 here, only the test's private one, which trusts local logins over its socket |
//! | `./scripts/test` | nothing: the file must exist and be executable | it is the command that runs this very test |
//!
//! The printed psql command must match the README's example once the
//! directory (`/home/me` there) and the port are put back.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::support::*;

const SECTION: &str = "## Start in two commands";

/// The directory the README's example prints, standing for the reader's.
const EXAMPLE_HOME: &str = "/home/me";

/// The README's prefix for running the binary, replaced by [`BIN`].
const CARGO_RUN: &str = "cargo run --release -- ";

/// Flags added to the README's `up` line; see the module's table.
fn up_substitutions() -> Vec<String> {
    vec![
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--upstream".into(),
        format!("unix:{}", pg().socket_path().display()),
    ]
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

/// What the first section holds: the lines of its ```sh blocks, and the
/// lines of its other code blocks (the example output).
struct Section {
    commands: Vec<String>,
    examples: Vec<String>,
}

fn first_section() -> Section {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("README.md");
    let start = readme
        .find(SECTION)
        .unwrap_or_else(|| panic!("README.md has no {SECTION:?} section"));
    let body = &readme[start + SECTION.len()..];
    let body = &body[..body.find("\n## ").unwrap_or(body.len())];
    let (mut commands, mut examples) = (Vec::new(), Vec::new());
    let mut block: Option<bool> = None;
    for line in body.lines() {
        let trimmed = line.trim();
        match block {
            None if trimmed.starts_with("```") => block = Some(trimmed == "```sh"),
            None => {}
            Some(_) if trimmed.starts_with("```") => block = None,
            Some(_) if trimmed.is_empty() || trimmed.starts_with('#') => {}
            Some(true) => commands.push(trimmed.to_owned()),
            Some(false) => examples.push(trimmed.to_owned()),
        }
    }
    assert!(block.is_none(), "a code block in {SECTION:?} is not closed");
    Section { commands, examples }
}

/// One line of the section, as this test runs it.
#[derive(Debug)]
enum Step {
    /// `cargo run --release -- up ...`: the words after `up`.
    Up(String),
    /// `./scripts/test`.
    TestScript,
}

fn step(line: &str) -> Step {
    if line == "./scripts/test" {
        return Step::TestScript;
    }
    if let Some(args) = line.strip_prefix(CARGO_RUN) {
        if let Some(rest) = args
            .strip_prefix("up")
            .filter(|r| r.is_empty() || r.starts_with(' '))
        {
            return Step::Up(rest.to_owned());
        }
    }
    panic!(
        "README.md's {SECTION:?} runs `{line}`, which this test does not know how to run: \
         teach crates/cli/tests/e2e/readme.rs (and its substitution table) to run it"
    );
}

/// Quotes `text` for `sh`.
fn sh_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// `intransit up` started as the README says, with the output it prints.
struct Up {
    child: Child,
    stdout: mpsc::Receiver<String>,
}

impl Up {
    fn start(rest: &str, dir: &Path) -> Up {
        let line = format!(
            "exec {} up{rest} {}",
            sh_quote(BIN),
            up_substitutions()
                .iter()
                .map(|a| sh_quote(a))
                .collect::<Vec<_>>()
                .join(" ")
        );
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(&line)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("running {line}: {e}"));
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
        Up { child, stdout: rx }
    }

    /// The lines up to "Press Ctrl-C".
    fn banner(&self) -> Vec<String> {
        let mut lines = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .stdout
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no banner from intransit up; got {lines:?}"));
            let done = line.contains("Press Ctrl-C");
            lines.push(line);
            if done {
                return lines;
            }
        }
    }

    fn terminate(mut self) -> std::process::ExitStatus {
        signal(self.child.id(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting for intransit up") {
                return status;
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
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `intransit up` from the README in `dir`, then the psql command it
/// prints with `SELECT 1`, and checks that command against the README's
/// example.
fn run_up(rest: &str, dir: &Path, example: &str) {
    let up = Up::start(rest, dir);
    let banner = up.banner();
    let text = banner.join("\n");
    let printed = banner
        .iter()
        .map(|l| l.trim())
        .find(|l| l.starts_with("psql "))
        .unwrap_or_else(|| panic!("intransit up printed no psql command:\n{text}"))
        .to_owned();
    // "It creates ./.intransit/": in the directory it was started in.
    assert!(
        dir.join(".intransit/ca/ca.pem").is_file()
            && dir.join(".intransit/certs/client/key.pem").is_file(),
        "no ./.intransit state in {}:\n{text}",
        dir.display()
    );

    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("{printed} -X -A -t -c 'SELECT 1'"))
        .current_dir(dir)
        .env_remove("PGPASSWORD")
        .stdin(Stdio::null())
        .output()
        .expect("sh");
    assert!(
        out.status.success(),
        "the printed command failed: {printed}\n{}",
        stderr(&out)
    );
    assert_eq!(stdout(&out), "1", "{printed}");

    let port = regex::Regex::new(r"port=\d+").expect("regex");
    let as_in_readme = port
        .replace(&printed, "port=6432")
        .replace(&dir.display().to_string(), EXAMPLE_HOME);
    assert_eq!(
        as_in_readme, example,
        "intransit up printed a command unlike README.md's example"
    );

    let status = up.terminate();
    assert!(status.success(), "intransit up exited with {status:?}");
}

#[test]
fn the_readme_first_section_runs_as_written() {
    let section = first_section();
    let example = section
        .examples
        .iter()
        .find(|l| l.starts_with("psql "))
        .unwrap_or_else(|| panic!("{SECTION:?} shows no example psql command"));
    let steps: Vec<Step> = section.commands.iter().map(|l| step(l)).collect();
    assert!(
        steps.iter().any(|s| matches!(s, Step::Up(_))),
        "{SECTION:?} no longer runs intransit up: {:?}",
        section.commands
    );
    for step in &steps {
        match step {
            Step::Up(rest) => {
                // A fresh working directory, so a fresh ./.intransit.
                let dir = tempfile::tempdir().expect("temp dir");
                let dir_path = dir.path().canonicalize().expect("temp dir path");
                run_up(rest, &dir_path, example);
            }
            Step::TestScript => {
                let script = repo_root().join("scripts/test");
                let mode = std::fs::metadata(&script)
                    .unwrap_or_else(|e| panic!("{}: {e}", script.display()))
                    .permissions()
                    .mode();
                assert!(
                    script.is_file() && mode & 0o111 != 0,
                    "{} is not an executable file (mode {mode:o})",
                    script.display()
                );
            }
        }
    }
}
