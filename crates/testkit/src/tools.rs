//! Finding and running the real client programs the tests drive.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// The script that installs every system package the test suite needs.
const INSTALL_SCRIPT: &str = ".ci/install-deps.sh";

/// The path of client program `name` on `PATH`.
///
/// When it is missing the error says how to install it, for example
/// `require_tool("psql", "postgresql-client")` fails with
/// `apt-get install -y postgresql-client` in its message.
pub fn require_tool(name: &str, apt_package: &str) -> Result<PathBuf> {
    match find_on_path(name) {
        Some(path) => Ok(path),
        None => bail!(
            "`{name}` was not found on PATH; install it with: apt-get install -y {apt_package} \
             (or run {INSTALL_SCRIPT})"
        ),
    }
}

/// Runs `sql` with psql against `conninfo` (a libpq connection string such as
/// `host=127.0.0.1 port=5432 user=app password=secret dbname=app`) and
/// returns its standard output, trimmed.
///
/// psql runs with `-X -q -A -t -v ON_ERROR_STOP=1` and reads the SQL from
/// standard input, so several statements run one after another and the first
/// failure stops them. The error carries psql's standard error, which holds
/// the server's message (for example a failed password authentication).
pub fn run_psql(conninfo: &str, sql: &str) -> Result<String> {
    let psql = require_tool("psql", "postgresql-client")?;
    let mut command = Command::new(&psql);
    command
        .args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-f",
            "-",
            "-d",
        ])
        .arg(conninfo)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    without_libpq_environment(&mut command);
    // A server or proxy that accepts the connection and then stalls would
    // otherwise hang the test forever; a connection string's own
    // connect_timeout still wins over this.
    command.env("PGCONNECT_TIMEOUT", "10");

    let mut child = command
        .spawn()
        .with_context(|| format!("starting {}", psql.display()))?;
    let stdin = child.stdin.take();
    // Writing from another thread keeps a large script from deadlocking
    // against psql filling its output pipe. A write error only means psql
    // exited early, which its exit status reports better.
    let output = std::thread::scope(|scope| {
        scope.spawn(move || {
            if let Some(mut stdin) = stdin {
                let _ = stdin.write_all(sql.as_bytes());
            }
        });
        child.wait_with_output()
    })
    .with_context(|| format!("waiting for {}", psql.display()))?;

    if !output.status.success() {
        bail!(
            "psql failed ({}) for `{conninfo}`: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim(),
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// Removes every `PG*` variable (PGHOST, PGSSLMODE, PGPASSWORD, ...) from a
/// command's environment, so that what a developer exported in their shell
/// cannot change which server a test talks to or how.
pub(crate) fn without_libpq_environment(command: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            command.env_remove(key);
        }
    }
}

/// Quotes a value for a libpq connection string.
pub(crate) fn conninfo_value(value: &str) -> String {
    let escaped = value.replace('\\', r"\\").replace('\'', r"\'");
    format!("'{escaped}'")
}

/// The path of executable `name` in one of the `PATH` directories.
pub(crate) fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

/// Whether `path` is a regular file (after following links) that someone may
/// execute.
pub(crate) fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path)
        .map(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn missing_tool_error_names_the_apt_package() {
        let err = require_tool("intransit-no-such-tool", "intransit-no-such-package")
            .expect_err("a tool that does not exist");
        let message = format!("{err:#}");
        assert!(
            message.contains("apt-get install -y intransit-no-such-package"),
            "{message}"
        );
    }

    #[test]
    fn present_tool_is_found() {
        let sh = require_tool("sh", "dash").expect("sh is on every PATH");
        assert!(is_executable(&sh), "{}", sh.display());
    }

    #[test]
    fn conninfo_values_are_quoted() {
        assert_eq!(conninfo_value("plain"), "'plain'");
        assert_eq!(conninfo_value(r"it's a \ test"), r"'it\'s a \\ test'");
    }
}
