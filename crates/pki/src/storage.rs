//! How keys and certificates are stored on disk.
//!
//! This module owns the file layout of one certificate directory
//! ([`CertificatePaths`]) and the only way this crate writes files:
//! [`write_file_atomic`]. A reader never observes a half-written file, and a
//! private key is never readable by anyone but its owner, not even briefly,
//! because the temporary file is created with mode 0600 before anything is
//! written to it.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::PkiError;

/// Mode of files holding private keys.
pub(crate) const PRIVATE_FILE_MODE: u32 = 0o600;
/// Mode of files holding certificates.
pub(crate) const PUBLIC_FILE_MODE: u32 = 0o644;
/// Mode of directories this crate creates.
pub(crate) const PRIVATE_DIR_MODE: u32 = 0o700;

/// The files of one issued certificate, as written by
/// [`IssuedCertificate::write_to`](crate::IssuedCertificate::write_to).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificatePaths {
    /// The directory holding the files.
    pub dir: PathBuf,
    /// `cert.pem`: the leaf certificate alone.
    pub cert: PathBuf,
    /// `key.pem`: the leaf's private key (PKCS#8), mode 0600.
    pub key: PathBuf,
    /// `chain.pem`: the leaf followed by the CA certificate.
    pub chain: PathBuf,
    /// `ca.pem`: the CA certificate, to be used as a trust anchor by peers.
    pub ca: PathBuf,
}

impl CertificatePaths {
    /// The standard file names inside `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            chain: dir.join("chain.pem"),
            ca: dir.join("ca.pem"),
        }
    }
}

/// Replaces `path` with `contents`, atomically, with permission bits `mode`
/// (on Unix; ignored elsewhere).
///
/// The data goes to a temporary file in the same directory, which is given
/// `mode`, flushed to disk and renamed over `path`; the directory is then
/// flushed so the rename itself survives a crash. On failure the temporary
/// file is removed and `path` is left as it was. The parent directory must
/// already exist. If `path` is a symbolic link, the link itself is replaced.
pub fn write_file_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), PkiError> {
    let file_name = path.file_name().ok_or_else(|| {
        PkiError::io(
            "writing",
            path,
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the path has no file name",
            ),
        )
    })?;
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };

    // The temporary name starts with a dot so that directory listings and
    // globs such as `*.pem` do not pick it up while it exists.
    let mut prefix = std::ffi::OsString::from(".");
    prefix.push(file_name);
    prefix.push(".");
    // tempfile creates the file with mode 0600 and O_EXCL, so a key is never
    // exposed, and an attacker cannot pre-create the temporary file.
    let mut temp = tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(|e| PkiError::io("creating a temporary file in", dir, e))?;

    set_mode(temp.as_file(), mode).map_err(|e| PkiError::io("setting permissions on", path, e))?;
    temp.write_all(contents)
        .map_err(|e| PkiError::io("writing", path, e))?;
    temp.as_file()
        .sync_all()
        .map_err(|e| PkiError::io("flushing to disk", path, e))?;
    temp.persist(path)
        .map_err(|e| PkiError::io("renaming a temporary file to", path, e.error))?;
    sync_dir(dir)
}

/// Creates `dir` and any missing parents with mode 0700. Existing
/// directories are left as they are: their permissions are the owner's choice.
pub(crate) fn create_private_dir(dir: &Path) -> Result<(), PkiError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(PRIVATE_DIR_MODE);
    }
    builder
        .create(dir)
        .map_err(|e| PkiError::io("creating directory", dir, e))
}

/// Reads a whole text file, naming it in the error.
pub(crate) fn read_text(path: &Path, action: &'static str) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(|e| PkiError::io(action, path, e))
}

#[cfg(unix)]
fn set_mode(file: &fs::File, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    file.set_permissions(fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_mode(_file: &fs::File, _mode: u32) -> std::io::Result<()> {
    Ok(())
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> Result<(), PkiError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| PkiError::io("flushing directory", dir, e))
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> Result<(), PkiError> {
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn mode_of(path: &Path) -> std::io::Result<u32> {
        Ok(fs::metadata(path)?.permissions().mode() & 0o777)
    }

    fn entries(dir: &Path) -> std::io::Result<Vec<String>> {
        let mut names = fs::read_dir(dir)?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<Result<Vec<_>, _>>()?;
        names.sort();
        Ok(names)
    }

    #[test]
    fn writes_with_the_requested_mode_and_leaves_no_temporary_file() -> TestResult {
        let dir = tempfile::tempdir()?;
        let key = dir.path().join("key.pem");
        let cert = dir.path().join("cert.pem");
        write_file_atomic(&key, b"secret", 0o600)?;
        write_file_atomic(&cert, b"public", 0o644)?;
        assert_eq!(mode_of(&key)?, 0o600);
        assert_eq!(mode_of(&cert)?, 0o644);
        assert_eq!(fs::read(&key)?, b"secret");
        assert_eq!(entries(dir.path())?, ["cert.pem", "key.pem"]);
        Ok(())
    }

    #[test]
    fn replaces_an_existing_file_and_its_mode() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("key.pem");
        fs::write(&path, b"old")?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o666))?;
        write_file_atomic(&path, b"new", 0o600)?;
        assert_eq!(fs::read(&path)?, b"new");
        assert_eq!(mode_of(&path)?, 0o600);
        assert_eq!(entries(dir.path())?, ["key.pem"]);
        Ok(())
    }

    #[test]
    fn failed_rename_keeps_the_old_file_and_removes_the_temporary() -> TestResult {
        let dir = tempfile::tempdir()?;
        // A non-empty directory cannot be replaced by rename(2).
        let path = dir.path().join("occupied");
        fs::create_dir(&path)?;
        fs::write(path.join("inside"), b"x")?;
        let err = write_file_atomic(&path, b"data", 0o644);
        assert!(matches!(err, Err(PkiError::Io { .. })), "{err:?}");
        assert_eq!(entries(dir.path())?, ["occupied"]);
        assert_eq!(entries(&path)?, ["inside"]);
        Ok(())
    }

    #[test]
    fn missing_parent_is_an_error_naming_the_directory() -> TestResult {
        let dir = tempfile::tempdir()?;
        let missing = dir.path().join("nope");
        let err = write_file_atomic(&missing.join("f"), b"", 0o644);
        match err {
            Err(PkiError::Io { path, .. }) => assert_eq!(path, missing),
            other => panic!("unexpected {other:?}"),
        }
        Ok(())
    }

    #[test]
    fn creates_private_directories() -> TestResult {
        let dir = tempfile::tempdir()?;
        let nested = dir.path().join("a/b");
        create_private_dir(&nested)?;
        assert_eq!(mode_of(&nested)?, 0o700);
        assert_eq!(mode_of(&dir.path().join("a"))?, 0o700);
        // A second call on an existing directory is fine.
        create_private_dir(&nested)?;
        Ok(())
    }
}
