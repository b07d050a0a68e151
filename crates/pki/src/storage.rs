//! How keys and certificates are stored on disk.
//!
//! This module owns the file layout of one certificate directory
//! ([`CertificatePaths`]) and the only way this crate writes files:
//! [`write_file_atomic`], and its multi-file form (`stage_files`, then
//! `swap_in`, then `commit`), which replaces a certificate's four files
//! together and can undo the change. A reader never observes a half-written
//! file, and a private key is never readable by anyone but its owner, not
//! even briefly, because the temporary file is created with mode 0600 before
//! anything is written to it. Files others read in place (a certificate
//! directory, a CRL) keep the owner, group and mode of the files they
//! replace.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use tempfile::NamedTempFile;

use crate::PkiError;

/// Mode of files holding private keys.
pub(crate) const PRIVATE_FILE_MODE: u32 = 0o600;
/// Mode of files holding certificates.
pub(crate) const PUBLIC_FILE_MODE: u32 = 0o644;
/// File name of a leaf certificate inside its directory.
pub(crate) const CERT_FILE: &str = "cert.pem";
/// File name of a leaf's private key inside its directory.
pub(crate) const KEY_FILE: &str = "key.pem";
/// File name of the leaf-plus-CA chain inside a certificate directory.
pub(crate) const CHAIN_FILE: &str = "chain.pem";
/// File name of the CA certificate inside a certificate directory.
pub(crate) const CA_FILE: &str = "ca.pem";

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
            cert: dir.join(CERT_FILE),
            key: dir.join(KEY_FILE),
            chain: dir.join(CHAIN_FILE),
            ca: dir.join(CA_FILE),
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
    let temp = write_temp(path, contents, mode)?;
    temp.persist(path)
        .map_err(|e| PkiError::io("renaming a temporary file to", path, e.error))?;
    sync_dir(parent_of(path))
}

/// Who a file written by [`write_file_atomic_owned`] belongs to, and its
/// permission bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileOwnership {
    /// Owning user id; `None` leaves the writer's own.
    pub uid: Option<u32>,
    /// Owning group id; `None` leaves the writer's own.
    pub gid: Option<u32>,
    /// Permission bits, e.g. `0o600`.
    pub mode: u32,
}

/// [`write_file_atomic`], with the replacement also given an owner and a
/// group before it becomes visible, so a server that checks who owns its
/// key (PostgreSQL does) never sees a file with the wrong owner.
///
/// Changing the owner needs root (or, for the group alone, membership of
/// that group); the ids are only applied when they differ from the
/// writer's, so an unprivileged owner can replace its own files.
#[cfg(unix)]
pub fn write_file_atomic_owned(
    path: &Path,
    contents: &[u8],
    ownership: FileOwnership,
) -> Result<(), PkiError> {
    use std::os::unix::fs::MetadataExt;
    let temp = write_temp(path, contents, ownership.mode)?;
    let meta = temp
        .as_file()
        .metadata()
        .map_err(|e| PkiError::io("reading the metadata of a temporary file for", path, e))?;
    let uid = ownership.uid.filter(|&u| u != meta.uid());
    let gid = ownership.gid.filter(|&g| g != meta.gid());
    if uid.is_some() || gid.is_some() {
        std::os::unix::fs::fchown(temp.as_file(), uid, gid)
            .map_err(|e| PkiError::io("changing the owner of", path, e))?;
        // chown clears set-id bits only, but be explicit: the mode is what
        // the caller asked for.
        set_mode(temp.as_file(), ownership.mode)
            .map_err(|e| PkiError::io("setting permissions on", path, e))?;
    }
    temp.persist(path)
        .map_err(|e| PkiError::io("renaming a temporary file to", path, e.error))?;
    sync_dir(parent_of(path))
}

/// The directory `path` is in (`.` for a bare file name).
fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

/// Writes `contents` to a new temporary file next to `path`, with `mode`,
/// flushed to disk. Dropping the result removes the file.
fn write_temp(path: &Path, contents: &[u8], mode: u32) -> Result<NamedTempFile, PkiError> {
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
    let dir = parent_of(path);

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
    Ok(temp)
}

/// One file to be written by [`stage_files`]: name inside the directory,
/// contents and permission bits.
pub(crate) type FileSpec<'a> = (&'a str, &'a [u8], u32);

/// Files written to temporary names in one directory, not yet visible under
/// their real names. Dropping it removes the temporary files and any
/// directories [`stage_files`] created.
#[derive(Debug)]
pub(crate) struct StagedFiles {
    dir: PathBuf,
    created_dirs: Vec<PathBuf>,
    staged: Vec<(NamedTempFile, PathBuf)>,
}

/// Files moved into place by [`StagedFiles::swap_in`]. Until
/// [`SwappedFiles::commit`] is called, the previous versions are kept under
/// temporary names, and dropping this value puts them back (and removes
/// files and directories that did not exist before).
#[derive(Debug)]
pub(crate) struct SwappedFiles {
    created_dirs: Vec<PathBuf>,
    placed: Vec<(PathBuf, Option<NamedTempFile<()>>)>,
    committed: bool,
}

/// Writes every file of `files` to a temporary name in `dir` (created with
/// mode 0700, parents included, if missing). Nothing is visible under the
/// real names yet; on error, nothing is left behind.
pub(crate) fn stage_files(dir: &Path, files: &[FileSpec<'_>]) -> Result<StagedFiles, PkiError> {
    let created_dirs = create_private_dir_tracked(dir)?;
    let mut staged = StagedFiles {
        dir: dir.to_path_buf(),
        created_dirs,
        staged: Vec::with_capacity(files.len()),
    };
    for (name, contents, mode) in files {
        let dest = dir.join(name);
        let temp = write_temp_replacing(&dest, contents, *mode)?;
        staged.staged.push((temp, dest));
    }
    Ok(staged)
}

/// [`write_file_atomic`] for a file that others may read in place (a
/// server's certificate, key or CRL): a replacement keeps the owner,
/// group and mode of the file it replaces, and only a new file gets
/// `default_mode`. See [`write_temp_replacing`].
pub(crate) fn replace_file_atomic(
    path: &Path,
    contents: &[u8],
    default_mode: u32,
) -> Result<(), PkiError> {
    let temp = write_temp_replacing(path, contents, default_mode)?;
    temp.persist(path)
        .map_err(|e| PkiError::io("renaming a temporary file to", path, e.error))?;
    sync_dir(parent_of(path))
}

/// [`write_temp`] for a replacement of `path`: when `path` exists, the
/// temporary file takes its owner, group and mode before any reader can
/// see it, so a renewal run as root leaves a key that PostgreSQL (which
/// reads it as `postgres`) can still read. A private key (`default_mode`
/// 0600) never keeps permissions for others. Keeping another user's
/// ownership needs root; without it the replacement is refused rather
/// than left unreadable to that user.
fn write_temp_replacing(
    path: &Path,
    contents: &[u8],
    default_mode: u32,
) -> Result<NamedTempFile, PkiError> {
    let existing = match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_file() => Some(meta),
        Ok(_) => None,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(PkiError::io("reading the metadata of", path, e)),
    };
    let Some(existing) = existing else {
        return write_temp(path, contents, default_mode);
    };
    keep_ownership(path, contents, default_mode, &existing)
}

#[cfg(unix)]
fn keep_ownership(
    path: &Path,
    contents: &[u8],
    default_mode: u32,
    existing: &fs::Metadata,
) -> Result<NamedTempFile, PkiError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mut mode = existing.permissions().mode() & 0o777;
    if default_mode == PRIVATE_FILE_MODE {
        mode &= !0o007;
    }
    // Written with the stricter of the two modes until the owner is right.
    let temp = write_temp(path, contents, mode & default_mode)?;
    let meta = temp
        .as_file()
        .metadata()
        .map_err(|e| PkiError::io("reading the metadata of a temporary file for", path, e))?;
    let uid = Some(existing.uid()).filter(|&u| u != meta.uid());
    let gid = Some(existing.gid()).filter(|&g| g != meta.gid());
    if uid.is_some() || gid.is_some() {
        std::os::unix::fs::fchown(temp.as_file(), uid, gid).map_err(|e| {
            PkiError::io(
                if e.kind() == std::io::ErrorKind::PermissionDenied {
                    "keeping the owner and group (run as root or as the file's owner) of"
                } else {
                    "keeping the owner and group of"
                },
                path,
                e,
            )
        })?;
    }
    set_mode(temp.as_file(), mode).map_err(|e| PkiError::io("setting permissions on", path, e))?;
    Ok(temp)
}

#[cfg(not(unix))]
fn keep_ownership(
    path: &Path,
    contents: &[u8],
    default_mode: u32,
    _existing: &fs::Metadata,
) -> Result<NamedTempFile, PkiError> {
    write_temp(path, contents, default_mode)
}

impl StagedFiles {
    /// Renames every staged file over its real name, in the order they were
    /// given, keeping a hard link to each replaced file so that the change
    /// can be undone. Each rename is atomic; the set as a whole is not, so a
    /// reader may briefly see some new and some old files.
    pub(crate) fn swap_in(mut self) -> Result<SwappedFiles, PkiError> {
        let mut swapped = SwappedFiles {
            created_dirs: std::mem::take(&mut self.created_dirs),
            placed: Vec::with_capacity(self.staged.len()),
            committed: false,
        };
        for (temp, dest) in std::mem::take(&mut self.staged) {
            let backup = if path_exists(&dest)? {
                Some(backup_of(&dest)?)
            } else {
                None
            };
            temp.persist(&dest)
                .map_err(|e| PkiError::io("renaming a temporary file to", &dest, e.error))?;
            swapped.placed.push((dest, backup));
        }
        sync_dir(&self.dir)?;
        Ok(swapped)
    }
}

impl Drop for StagedFiles {
    fn drop(&mut self) {
        self.staged.clear();
        remove_created_dirs(&self.created_dirs);
    }
}

impl SwappedFiles {
    /// Keeps the new files and deletes the backups of the old ones.
    pub(crate) fn commit(mut self) {
        self.committed = true;
    }
}

impl Drop for SwappedFiles {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        // Undo in reverse order; errors cannot be reported from here, and
        // the caller is already returning the error that caused the undo.
        for (dest, backup) in self.placed.drain(..).rev() {
            match backup {
                Some(backup) => {
                    let _ = backup.persist(&dest);
                }
                None => {
                    let _ = fs::remove_file(&dest);
                }
            }
        }
        remove_created_dirs(&self.created_dirs);
    }
}

/// A second name for `path` in the same directory (a hard link, or a copy
/// where links are not possible), removed when the result is dropped.
fn backup_of(path: &Path) -> Result<NamedTempFile<()>, PkiError> {
    let dir = parent_of(path);
    let mut prefix = std::ffi::OsString::from(".");
    prefix.push(path.file_name().unwrap_or_default());
    prefix.push(".");
    tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(".old")
        .make_in(dir, |backup| match fs::hard_link(path, backup) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                fs::copy(path, backup).map(|_| ())
            }
            other => other,
        })
        .map_err(|e| PkiError::io("keeping a copy of", path, e))
}

/// Like [`create_private_dir`], returning the directories it created,
/// outermost first.
fn create_private_dir_tracked(dir: &Path) -> Result<Vec<PathBuf>, PkiError> {
    let mut missing = Vec::new();
    let mut current = Some(dir);
    while let Some(path) = current {
        if path.as_os_str().is_empty() || path_exists(path)? {
            break;
        }
        missing.push(path.to_path_buf());
        current = path.parent();
    }
    missing.reverse();
    if let Err(e) = create_private_dir(dir) {
        remove_created_dirs(&missing);
        return Err(e);
    }
    Ok(missing)
}

/// Removes directories created by [`create_private_dir_tracked`], innermost
/// first, as long as they are empty.
fn remove_created_dirs(created: &[PathBuf]) {
    for dir in created.iter().rev() {
        let _ = fs::remove_dir(dir);
    }
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

/// Whether a file system entry exists, counting a dangling symlink as
/// existing so that it is reported rather than silently replaced.
pub(crate) fn path_exists(path: &Path) -> Result<bool, PkiError> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(PkiError::io("checking", path, e)),
    }
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
    fn owned_writes_keep_the_given_owner_group_and_mode() -> TestResult {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir()?;
        let key = dir.path().join("server.key");
        fs::write(&key, b"old")?;
        let meta = fs::metadata(&key)?;
        let ownership = FileOwnership {
            uid: Some(meta.uid()),
            gid: Some(meta.gid()),
            mode: 0o640,
        };
        write_file_atomic_owned(&key, b"new", ownership)?;
        assert_eq!(fs::read(&key)?, b"new");
        assert_eq!(mode_of(&key)?, 0o640);
        assert_eq!(entries(dir.path())?, vec!["server.key".to_owned()]);
        // Only root may give a file away; then the owner must be applied.
        if meta.uid() == 0 {
            let nobody = FileOwnership {
                uid: Some(65534),
                gid: Some(65534),
                mode: 0o600,
            };
            write_file_atomic_owned(&key, b"newer", nobody)?;
            let after = fs::metadata(&key)?;
            assert_eq!((after.uid(), after.gid()), (65534, 65534));
            assert_eq!(mode_of(&key)?, 0o600);
        }
        Ok(())
    }

    #[test]
    fn staged_replacements_keep_the_owner_group_and_mode_of_what_they_replace() -> TestResult {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir()?;
        let files: [FileSpec<'_>; 2] = [
            ("key.pem", b"key 1", PRIVATE_FILE_MODE),
            ("cert.pem", b"cert 1", PUBLIC_FILE_MODE),
        ];
        stage_files(dir.path(), &files)?.swap_in()?.commit();
        assert_eq!(mode_of(&dir.path().join("key.pem"))?, 0o600);
        // An operator hands the files to the database's user: group-readable
        // key, and (as root) another owner.
        let key = dir.path().join("key.pem");
        let cert = dir.path().join("cert.pem");
        fs::set_permissions(&key, fs::Permissions::from_mode(0o640))?;
        fs::set_permissions(&cert, fs::Permissions::from_mode(0o604))?;
        let root = fs::metadata(&key)?.uid() == 0;
        if root {
            std::os::unix::fs::chown(&key, Some(65534), Some(65534))?;
            std::os::unix::fs::chown(&cert, Some(65534), Some(65534))?;
        }
        let files: [FileSpec<'_>; 2] = [
            ("key.pem", b"key 2", PRIVATE_FILE_MODE),
            ("cert.pem", b"cert 2", PUBLIC_FILE_MODE),
        ];
        stage_files(dir.path(), &files)?.swap_in()?.commit();
        assert_eq!(fs::read(&key)?, b"key 2");
        assert_eq!(mode_of(&key)?, 0o640);
        assert_eq!(mode_of(&cert)?, 0o604);
        if root {
            let meta = fs::metadata(&key)?;
            assert_eq!((meta.uid(), meta.gid()), (65534, 65534));
        }
        // A key never keeps permissions for others.
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644))?;
        replace_file_atomic(&key, b"key 3", PRIVATE_FILE_MODE)?;
        assert_eq!(mode_of(&key)?, 0o640);
        assert_eq!(entries(dir.path())?, ["cert.pem", "key.pem"]);
        Ok(())
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

    fn files<'a>(key: &'a [u8], cert: &'a [u8]) -> [FileSpec<'a>; 2] {
        [("key.pem", key, 0o600), ("cert.pem", cert, 0o644)]
    }

    #[test]
    fn staged_files_are_invisible_and_vanish_with_their_new_directories() -> TestResult {
        let dir = tempfile::tempdir()?;
        let target = dir.path().join("a/b/c");
        let staged = stage_files(&target, &files(b"k", b"c"))?;
        assert_eq!(entries(&target)?.len(), 2);
        assert!(entries(&target)?.iter().all(|n| n.starts_with('.')));
        drop(staged);
        assert!(entries(dir.path())?.is_empty());
        Ok(())
    }

    #[test]
    fn swapped_files_are_undone_unless_committed() -> TestResult {
        let dir = tempfile::tempdir()?;
        // A fresh directory: undo removes everything.
        let fresh = dir.path().join("fresh");
        drop(stage_files(&fresh, &files(b"k", b"c"))?.swap_in()?);
        assert!(!fresh.exists());

        // An existing directory: undo restores the old files and modes.
        let target = dir.path().join("existing");
        fs::create_dir(&target)?;
        fs::write(target.join("key.pem"), b"old key")?;
        fs::write(target.join("other"), b"untouched")?;
        let swapped = stage_files(&target, &files(b"new key", b"new cert"))?.swap_in()?;
        assert_eq!(fs::read(target.join("key.pem"))?, b"new key");
        drop(swapped);
        assert_eq!(entries(&target)?, ["key.pem", "other"]);
        assert_eq!(fs::read(target.join("key.pem"))?, b"old key");

        // Committed: the new files stay, the backups go.
        stage_files(&target, &files(b"new key", b"new cert"))?
            .swap_in()?
            .commit();
        assert_eq!(entries(&target)?, ["cert.pem", "key.pem", "other"]);
        assert_eq!(fs::read(target.join("cert.pem"))?, b"new cert");
        // The key replaced one written 0644 by hand: it keeps that mode
        // without the bits for others; the new certificate gets 0644.
        assert_eq!(mode_of(&target.join("key.pem"))?, 0o640);
        assert_eq!(mode_of(&target.join("cert.pem"))?, 0o644);
        Ok(())
    }

    #[test]
    fn a_failed_swap_restores_what_it_already_replaced() -> TestResult {
        let dir = tempfile::tempdir()?;
        fs::write(dir.path().join("key.pem"), b"old key")?;
        // rename(2) cannot replace a non-empty directory.
        fs::create_dir(dir.path().join("cert.pem"))?;
        fs::write(dir.path().join("cert.pem/inside"), b"x")?;
        let err = stage_files(dir.path(), &files(b"new key", b"new cert"))?.swap_in();
        assert!(matches!(err, Err(PkiError::Io { .. })), "{err:?}");
        assert_eq!(entries(dir.path())?, ["cert.pem", "key.pem"]);
        assert_eq!(fs::read(dir.path().join("key.pem"))?, b"old key");
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

/// Name of the lock file below the state root.
const LOCK_FILE: &str = ".lock";

/// An exclusive lock on a state directory, held until dropped.
///
/// Every operation that reads the inventory, changes files and writes the
/// inventory back takes it, so that two processes (a running proxy renewing
/// its certificates, and `intransit cert issue` from a shell) never lose
/// each other's records. The lock is advisory (`flock`): it orders intransit
/// processes, not other programs.
#[derive(Debug)]
pub(crate) struct StateLock {
    _file: fs::File,
}

/// Waits for and takes the lock of the state directory `root`, creating the
/// directory (mode 0700) and the lock file (mode 0600) if missing.
pub(crate) fn lock_state_dir(root: &Path) -> Result<StateLock, PkiError> {
    create_private_dir(root)?;
    let path = root.join(LOCK_FILE);
    let mut options = fs::OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(PRIVATE_FILE_MODE);
    }
    let file = options
        .open(&path)
        .map_err(|e| PkiError::io("opening the state lock", &path, e))?;
    file.lock()
        .map_err(|e| PkiError::io("locking the state directory", &path, e))?;
    Ok(StateLock { _file: file })
}
