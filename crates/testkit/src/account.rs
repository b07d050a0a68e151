//! Which user a test database server runs as: the test's own, or, when the
//! tests run as root (CI does), the server's system account, since
//! PostgreSQL refuses root and MariaDB should not run as it.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// Who the server programs run as.
#[derive(Debug)]
pub(crate) enum ServerAccount {
    /// The test process's own user.
    Current,
    /// A system user (`postgres`, `mysql`), because the tests run as root.
    System {
        name: &'static str,
        uid: u32,
        gid: u32,
    },
}

impl ServerAccount {
    /// The test's own user, or `system_account` when running as root;
    /// `missing` says how to fix a missing system account.
    pub(crate) fn detect(
        system_account: &'static str,
        missing: impl Fn() -> String,
    ) -> Result<ServerAccount> {
        if id(&["-u"])? != 0 {
            return Ok(ServerAccount::Current);
        }
        let uid = id(&["-u", system_account]).with_context(&missing)?;
        let gid = id(&["-g", system_account]).with_context(&missing)?;
        Ok(ServerAccount::System {
            name: system_account,
            uid,
            gid,
        })
    }

    /// A command for a server program, run as this account from `cwd`
    /// (the test's working directory may be closed to the server account),
    /// with `scrub_environment` removing client variables that would change
    /// what the program does.
    pub(crate) fn command(
        &self,
        program: &Path,
        cwd: &Path,
        scrub_environment: fn(&mut Command),
    ) -> Command {
        let mut command = Command::new(program);
        command.current_dir(cwd);
        scrub_environment(&mut command);
        if let ServerAccount::System { uid, gid, .. } = *self {
            // The standard library also drops root's supplementary groups
            // when it changes the user, as runuser would.
            command.uid(uid).gid(gid);
        }
        command
    }

    /// Makes `path` belong to this account.
    pub(crate) fn take_ownership(&self, path: &Path) -> Result<()> {
        match *self {
            ServerAccount::Current => Ok(()),
            ServerAccount::System { name, uid, gid } => {
                std::os::unix::fs::chown(path, Some(uid), Some(gid))
                    .with_context(|| format!("handing {} to user {name}", path.display()))
            }
        }
    }

    /// Writes `contents` to `path`, owned by this account.
    pub(crate) fn write_owned(&self, path: &Path, contents: &str) -> Result<()> {
        fs::write(path, contents).with_context(|| format!("writing {}", path.display()))?;
        self.take_ownership(path)
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
