//! Which user the demo database runs as: ours, or, when `up` runs as root,
//! the database's system account (`postgres`, `mysql`), since PostgreSQL
//! refuses to run as root and MariaDB should not.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// Who the database programs run as.
#[derive(Debug, Clone)]
pub(crate) enum DatabaseAccount {
    /// The user running `intransit up`.
    Current,
    /// A system account, because `intransit up` runs as root.
    System { name: String, uid: u32, gid: u32 },
}

impl DatabaseAccount {
    /// Our own user, or `system_account` when running as root; `install`
    /// is the command that creates that account (the server package).
    pub(crate) fn detect(system_account: &str, install: &str) -> Result<DatabaseAccount> {
        if !rustix::process::geteuid().is_root() {
            return Ok(DatabaseAccount::Current);
        }
        let missing = || {
            format!(
                "running as root, the demo database runs as the system user `{system_account}`, \
                 which does not exist; `{install}` creates it (or run intransit as a regular user)"
            )
        };
        let uid = id(&["-u", system_account]).with_context(missing)?;
        let gid = id(&["-g", system_account]).with_context(missing)?;
        Ok(DatabaseAccount::System {
            name: system_account.to_owned(),
            uid,
            gid,
        })
    }

    /// A command for a database program, run as this account from `cwd`,
    /// with the variables that would redirect it (`PG*`, `MYSQL*`,
    /// `MARIADB*`) removed.
    pub(crate) fn command(&self, program: &Path, cwd: &Path) -> Command {
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
        if let DatabaseAccount::System { uid, gid, .. } = *self {
            // The standard library also drops root's supplementary groups
            // when it changes the user.
            command.uid(uid).gid(gid);
        }
        command
    }

    /// Makes `path` belong to this account.
    pub(crate) fn take_ownership(&self, path: &Path) -> Result<()> {
        match self {
            DatabaseAccount::Current => Ok(()),
            DatabaseAccount::System { name, uid, gid } => {
                std::os::unix::fs::chown(path, Some(*uid), Some(*gid))
                    .with_context(|| format!("handing {} to user {name}", path.display()))
            }
        }
    }

    /// The system account's name, if the database runs as one.
    pub(crate) fn system_name(&self) -> Option<&str> {
        match self {
            DatabaseAccount::Current => None,
            DatabaseAccount::System { name, .. } => Some(name),
        }
    }

    /// Fails unless this account can enter directory `dir` (search
    /// permission on it and every directory above it), which the kernel
    /// decides: `test -x` runs as the account.
    pub(crate) fn check_can_enter(&self, dir: &Path) -> Result<()> {
        let DatabaseAccount::System { name, .. } = self else {
            return Ok(());
        };
        let status = self
            .command(Path::new("test"), Path::new("/"))
            .arg("-x")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("running test -x as the database's account")?;
        if !status.success() {
            bail!(
                "running as root, the demo database runs as the system user `{name}`, which cannot \
                 enter {dir} (a directory on the way has no search permission for it); run \
                 intransit as a regular user, or choose a --state-dir that `{name}` can reach, \
                 for example --state-dir /var/tmp/intransit",
                dir = dir.display()
            );
        }
        Ok(())
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
