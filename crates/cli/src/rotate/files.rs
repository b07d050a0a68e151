//! The server's certificate and key files: reading what is there, keeping
//! it as `<file>.prev`, and replacing it atomically with the owner, group
//! and mode the existing file has, because database servers check them
//! (PostgreSQL refuses a key others may read, and must be able to read it).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use intransit_pki::{FileOwnership, PkiError};

/// The suffix of the copy kept of each replaced file.
pub const PREVIOUS_SUFFIX: &str = ".prev";

/// A file the server reads, as it is now.
#[derive(Debug)]
pub struct ServerFile {
    pub path: PathBuf,
    pub contents: Vec<u8>,
    pub ownership: FileOwnership,
}

impl ServerFile {
    /// Reads `path` and who owns it. `what` names it in errors
    /// ("ssl_key_file").
    pub fn read(path: &Path, what: &str) -> Result<ServerFile> {
        let meta = std::fs::metadata(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::PermissionDenied {
                anyhow!(
                    "cannot read {} ({what}): permission denied; run as root or as the user that owns it",
                    path.display()
                )
            } else {
                anyhow::Error::new(e).context(format!("reading {} ({what})", path.display()))
            }
        })?;
        let contents = std::fs::read(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::PermissionDenied {
                anyhow!(
                    "cannot read {} ({what}): permission denied; run as root or as {}",
                    path.display(),
                    user_name(meta.uid())
                )
            } else {
                anyhow::Error::new(e).context(format!("reading {} ({what})", path.display()))
            }
        })?;
        Ok(ServerFile {
            path: path.to_path_buf(),
            contents,
            ownership: FileOwnership {
                uid: Some(meta.uid()),
                gid: Some(meta.gid()),
                mode: meta.mode() & 0o7777,
            },
        })
    }

    /// `<path>.prev`.
    pub fn previous_path(&self) -> PathBuf {
        previous_path(&self.path)
    }

    /// "0600 postgres:postgres", for messages.
    pub fn describe_ownership(&self) -> String {
        describe(&self.ownership)
    }
}

/// `<path>.prev`.
pub fn previous_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(PREVIOUS_SUFFIX);
    PathBuf::from(name)
}

/// "0600 postgres:postgres".
pub fn describe(o: &FileOwnership) -> String {
    format!(
        "{:04o} {}:{}",
        o.mode,
        o.uid.map_or_else(|| "-".into(), user_name),
        o.gid.map_or_else(|| "-".into(), group_name)
    )
}

/// Checks that a file can be created in `path`'s directory, so that a
/// rotation that could not write its files stops before it issues
/// anything. The probe file is removed at once.
pub fn check_writable(path: &Path, owner_uid: Option<u32>) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    match tempfile::Builder::new()
        .prefix(".intransit-probe.")
        .tempfile_in(dir)
    {
        Ok(_) => Ok(()),
        Err(e) => Err(write_error(path, owner_uid, e)),
    }
}

/// Replaces `path` with `contents`, atomically, with `ownership`.
pub fn replace(path: &Path, contents: &[u8], ownership: FileOwnership) -> Result<()> {
    intransit_pki::write_file_atomic_owned(path, contents, ownership).map_err(|e| match e {
        PkiError::Io { source, .. } => write_error(path, ownership.uid, source),
        other => anyhow::Error::new(other).context(format!("writing {}", path.display())),
    })
}

/// An error for a failed write that says what to do about it.
fn write_error(path: &Path, owner_uid: Option<u32>, e: std::io::Error) -> anyhow::Error {
    if e.kind() == std::io::ErrorKind::PermissionDenied {
        let who = owner_uid.map_or_else(|| "the user that owns it".into(), user_name);
        anyhow!(
            "cannot write {}: permission denied; run as root or as {who}",
            path.display()
        )
    } else {
        anyhow::Error::new(e).context(format!("cannot write {}", path.display()))
    }
}

/// The name of user `uid` from /etc/passwd, or `uid N`.
pub fn user_name(uid: u32) -> String {
    name_from_db("/etc/passwd", uid).unwrap_or_else(|| format!("uid {uid}"))
}

/// The name of group `gid` from /etc/group, or `gid N`.
pub fn group_name(gid: u32) -> String {
    name_from_db("/etc/group", gid).unwrap_or_else(|| format!("gid {gid}"))
}

/// `name:x:id:...` lines, as in /etc/passwd and /etc/group.
fn name_from_db(file: &str, id: u32) -> Option<String> {
    let text = std::fs::read_to_string(file).ok()?;
    text.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let id_field = fields.nth(1)?;
        (id_field.parse::<u32>().ok()? == id).then(|| name.to_owned())
    })
}

/// The owner and group of `path`.
pub fn owner_of(path: &Path) -> Result<(u32, u32)> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    Ok((meta.uid(), meta.gid()))
}

/// The effective user id of this process, from /proc (the standard
/// library does not expose it, and this crate has no unsafe code).
pub fn current_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    // Real, effective, saved, filesystem.
    line.split_whitespace().nth(2)?.parse().ok()
}
