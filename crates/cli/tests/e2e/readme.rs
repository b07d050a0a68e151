//! README.md's first section, "Start in two commands", run as a reader
//! would: every line of its ```sh blocks, in order, each `up` in a fresh
//! working directory, then the psql commands `intransit up` prints. A line
//! this test does not know how to run fails it, so the section cannot
//! change into something untested.
//!
//! The only differences from the README's text are these substitutions:
//!
//! | README says | the test runs | why |
//! |---|---|---|
//! | `cargo install --locked --path crates/cli` | puts the `intransit` binary cargo built for this test run (`CARGO_BIN_EXE_intransit`) on `PATH` for the lines after it, once `crates/cli` is checked to be the package of that binary | the same program from the same sources; building it again in release mode inside a test would take minutes |
//! | `cargo run --release --` | that binary | the same |
//! | `up` | `up --listen 127.0.0.1:0` | port 6432 may be taken on a machine that runs tests in parallel; `up` prints the port it got |
//! | `up` without `--demo` | `up --upstream unix:<the test PostgreSQL's socket>` | there is no PostgreSQL on 127.0.0.1:5432 here, only the test's private one, which trusts local logins over its socket |
//! | `./scripts/test` | nothing: the file must exist and be executable | it is the command that runs this very test |
//!
//! `up --demo` runs as written otherwise: it starts its own PostgreSQL.
//! When the tests run as root, the fresh working directory is made mode
//! 0755, as a home directory is, so that the database's account can reach
//! the state directory inside it.
//!
//! The first psql command printed must work and match the README's
//! example once the directory (`/home/me` there) and the port are put
//! back; with `--demo`, the second one (plaintext, straight to the demo
//! database) must be refused by the database.

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

/// The README's install line.
const CARGO_INSTALL: &str = "cargo install --locked --path crates/cli";

/// The README's prefix for running the installed binary.
const INSTALLED: &str = "intransit ";

/// Flags added to the README's `up` line; see the module's table.
fn up_substitutions(demo: bool) -> Vec<String> {
    let mut flags = vec!["--listen".into(), "127.0.0.1:0".into()];
    if !demo {
        flags.push("--upstream".into());
        flags.push(format!("unix:{}", pg().socket_path().display()));
    }
    flags
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
    /// `cargo install --locked --path crates/cli`.
    Install,
    /// `intransit up ...` or `cargo run --release -- up ...`: whether the
    /// binary is the installed one, and the words after `up`.
    Up { installed: bool, rest: String },
    /// `./scripts/test`.
    TestScript,
}

fn step(line: &str) -> Step {
    if line == "./scripts/test" {
        return Step::TestScript;
    }
    if line == CARGO_INSTALL {
        return Step::Install;
    }
    for (prefix, installed) in [(CARGO_RUN, false), (INSTALLED, true)] {
        if let Some(args) = line.strip_prefix(prefix) {
            if let Some(rest) = args
                .strip_prefix("up")
                .filter(|r| r.is_empty() || r.starts_with(' '))
            {
                return Step::Up {
                    installed,
                    rest: rest.to_owned(),
                };
            }
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
    /// Runs `up` with `rest`: the installed binary through `path` (the
    /// `PATH` the install line left), or [`BIN`].
    fn start(installed: bool, rest: &str, dir: &Path, path: &std::ffi::OsStr) -> Up {
        let program = if installed {
            "intransit".to_owned()
        } else {
            sh_quote(BIN)
        };
        let demo = rest.split_whitespace().any(|word| word == "--demo");
        let line = format!(
            "exec {program} up{rest} {}",
            up_substitutions(demo)
                .iter()
                .map(|a| sh_quote(a))
                .collect::<Vec<_>>()
                .join(" ")
        );
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(&line)
            .env("PATH", path)
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
/// example; with `--demo`, also the plaintext command, which must fail.
fn run_up(installed: bool, rest: &str, dir: &Path, path: &std::ffi::OsStr, example: &str) {
    let demo = rest.split_whitespace().any(|word| word == "--demo");
    let up = Up::start(installed, rest, dir, path);
    let banner = up.banner();
    let text = banner.join("\n");
    let psql_lines: Vec<String> = banner
        .iter()
        .map(|l| l.trim())
        .filter(|l| l.starts_with("psql "))
        .map(str::to_owned)
        .collect();
    let printed = psql_lines
        .first()
        .unwrap_or_else(|| panic!("intransit up printed no psql command:\n{text}"))
        .clone();
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

    let data = dir.join(".intransit/demo/postgres/data");
    if demo {
        let plaintext = psql_lines
            .get(1)
            .unwrap_or_else(|| panic!("up --demo printed no plaintext psql command:\n{text}"));
        assert!(plaintext.contains("sslmode=disable"), "{plaintext}");
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("{plaintext} -X -A -t -c 'SELECT 1'"))
            .current_dir(dir)
            .stdin(Stdio::null())
            .output()
            .expect("sh");
        assert!(
            !out.status.success() && stderr(&out).contains("no encryption"),
            "the demo database did not refuse plaintext: {plaintext}\n{}",
            stderr(&out)
        );
        assert!(
            data.join("PG_VERSION").is_file(),
            "no demo database in {}",
            data.display()
        );
    }

    let status = up.terminate();
    assert!(status.success(), "intransit up exited with {status:?}");
    if demo {
        assert!(
            !data.join("postmaster.pid").exists(),
            "the demo PostgreSQL still runs after intransit up exited"
        );
    }
}

/// What `cargo install --locked --path crates/cli` would leave: an
/// `intransit` on `PATH`. Returns the new `PATH`, with a directory in
/// `bin_dir` holding a link to [`BIN`] first.
fn install(bin_dir: &Path) -> std::ffi::OsString {
    let manifest = std::fs::read_to_string(repo_root().join("crates/cli/Cargo.toml"))
        .expect("crates/cli/Cargo.toml");
    assert!(
        manifest.contains("[[bin]]\nname = \"intransit\""),
        "crates/cli no longer builds the intransit binary, so `{CARGO_INSTALL}` does not \
         install it"
    );
    std::os::unix::fs::symlink(BIN, bin_dir.join("intransit")).expect("linking intransit");
    let mut dirs = vec![bin_dir.to_owned()];
    dirs.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    std::env::join_paths(dirs).expect("PATH")
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
    for (what, found) in [
        (
            "intransit up --demo",
            steps
                .iter()
                .any(|s| matches!(s, Step::Up { rest, .. } if rest.contains("--demo"))),
        ),
        (
            "intransit up",
            steps
                .iter()
                .any(|s| matches!(s, Step::Up { rest, .. } if !rest.contains("--demo"))),
        ),
    ] {
        assert!(
            found,
            "{SECTION:?} no longer runs {what}: {:?}",
            section.commands
        );
    }
    let bin_dir = tempfile::tempdir().expect("temp dir");
    let mut path = std::env::var_os("PATH").unwrap_or_default();
    for step in &steps {
        match step {
            Step::Install => path = install(bin_dir.path()),
            Step::Up { installed, rest } => {
                // A fresh working directory, so a fresh ./.intransit.
                let dir = tempfile::tempdir().expect("temp dir");
                std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
                    .expect("chmod");
                let dir_path = dir.path().canonicalize().expect("temp dir path");
                run_up(*installed, rest, &dir_path, &path, example);
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
