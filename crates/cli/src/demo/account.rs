//! Which user the demo database runs as: ours, or, when `up` runs as root,
//! the database's system account (`postgres`, `mysql`), since PostgreSQL
//! refuses to run as root and MariaDB should not. The account itself is
//! `intransit_localdb::ServerAccount`, shared with the test kit; here is
//! what `up` tells a user when the account cannot do its part.

use std::path::Path;

use anyhow::{bail, Result};

pub(crate) use intransit_localdb::ServerAccount as DatabaseAccount;

/// Our own user, or `system_account` when running as root; `install` is
/// the command that creates that account (the server package).
pub(crate) fn detect_account(system_account: &str, install: &str) -> Result<DatabaseAccount> {
    DatabaseAccount::detect(system_account, || {
        format!(
            "running as root, the demo database runs as the system user `{system_account}`, \
             which does not exist; `{install}` creates it (or run intransit as a regular user)"
        )
    })
}

/// Fails unless `account` can enter directory `dir` (search permission on
/// it and every directory above it).
pub(crate) fn ensure_can_enter(account: &DatabaseAccount, dir: &Path) -> Result<()> {
    if account.can_enter(dir)? {
        return Ok(());
    }
    let name = account.system_name().unwrap_or("(this user)");
    bail!(
        "running as root, the demo database runs as the system user `{name}`, which cannot \
         enter {dir} (a directory on the way has no search permission for it); run \
         intransit as a regular user, or choose a --state-dir that `{name}` can reach, \
         for example --state-dir /var/tmp/intransit",
        dir = dir.display()
    )
}
