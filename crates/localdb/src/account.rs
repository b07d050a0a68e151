//! Which user a database server runs as: the caller's own, or, when the
//! caller runs as root, the server's system account (`postgres`,
//! `mysql`), since PostgreSQL refuses to run as root and MariaDB should
//! not.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// Who the server programs run as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerAccount {
    /// The user of the calling process.
    Current,
    /// A system account, because the caller runs as root.
    System {
        /// The account's name.
        name: String,
        /// Its user id.
        uid: u32,
        /// Its primary group id.
        gid: u32,
    },
}

impl ServerAccount {
    /// The caller's own user, or `system_account` when running as root;
    /// `missing` is the context of the error when that account does not
    /// exist (what creates it).
    pub fn detect(system_account: &str, missing: impl Fn() -> String) -> Result<ServerAccount> {
        if !rustix::process::geteuid().is_root() {
            return Ok(ServerAccount::Current);
        }
        let uid = id(&["-u", system_account]).with_context(&missing)?;
        let gid = id(&["-g", system_account]).with_context(&missing)?;
        Ok(ServerAccount::System {
            name: system_account.to_owned(),
            uid,
            gid,
        })
    }

    /// A command for a server program, run as this account from `cwd`
    /// (the caller's working directory may be closed to the account), with
    /// no standard input and without the client variables that would
    /// change what a database program does (`PG*`, `MYSQL*`, `MARIADB*`).
    pub fn command(&self, program: &Path, cwd: &Path) -> Command {
        let mut command = Command::new(program);
        command.current_dir(cwd).stdin(Stdio::null());
        for (key, _) in std::env::vars_os() {
            let key_text = key.to_string_lossy();
            if key_text.starts_with("PG")
                || key_text.starts_with("MYSQL")
                || key_text.starts_with("MARIADB")
            {
                command.env_remove(key);
            }
        }
        if let ServerAccount::System { uid, gid, .. } = *self {
            // The standard library also drops root's supplementary groups
            // when it changes the user, as runuser would.
            command.uid(uid).gid(gid);
        }
        command
    }

    /// Makes `path` belong to this account.
    pub fn take_ownership(&self, path: &Path) -> Result<()> {
        match self {
            ServerAccount::Current => Ok(()),
            ServerAccount::System { name, uid, gid } => {
                std::os::unix::fs::chown(path, Some(*uid), Some(*gid))
                    .with_context(|| format!("handing {} to user {name}", path.display()))
            }
        }
    }

    /// Writes `contents` to `path`, owned by this account.
    pub fn write_owned(&self, path: &Path, contents: &str) -> Result<()> {
        fs::write(path, contents).with_context(|| format!("writing {}", path.display()))?;
        self.take_ownership(path)
    }

    /// The system account's name, if the server runs as one.
    pub fn system_name(&self) -> Option<&str> {
        match self {
            ServerAccount::Current => None,
            ServerAccount::System { name, .. } => Some(name),
        }
    }

    /// Whether this account can enter directory `dir` (search permission
    /// on it and every directory above it), as the kernel decides: `test
    /// -x` runs as the account.
    pub fn can_enter(&self, dir: &Path) -> Result<bool> {
        if let ServerAccount::Current = self {
            return Ok(true);
        }
        let status = self
            .command(Path::new("test"), Path::new("/"))
            .arg("-x")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("running test -x as the server's account")?;
        Ok(status.success())
    }
}

/// Runs `id` with `args` and parses the number it prints.
fn id(args: &[&str]) -> Result<u32> {
    let output = Command::new("id")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running id")?;
    if !output.status.success() {
        bail!(
            "`id {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&output.stdout);
    text.trim()
        .parse()
        .with_context(|| format!("`id {}` printed {text:?}", args.join(" ")))
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_system_account_is_an_error_with_the_callers_context_or_none_at_all() {
        let detected = ServerAccount::detect("intransit-no-such-account", || {
            "install the server package".to_owned()
        });
        if rustix::process::geteuid().is_root() {
            let error = format!("{:#}", detected.expect_err("no such account"));
            assert!(error.starts_with("install the server package"), "{error}");
        } else {
            assert_eq!(detected.expect("own user"), ServerAccount::Current);
        }
    }

    #[test]
    fn a_command_runs_from_the_directory_given() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = ServerAccount::Current
            .command(Path::new("pwd"), dir.path())
            .arg("-P")
            .output()
            .expect("pwd");
        assert!(out.status.success());
        let real = fs::canonicalize(dir.path()).expect("canonical");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            real.to_string_lossy()
        );
    }
}
