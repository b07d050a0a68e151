//! Watching the TLS files for changes, and the one task that runs every
//! reload (SIGHUP and file changes) one after the other.
//!
//! The watcher watches the parent directory of each file, not the file:
//! tools that replace a certificate atomically write a new file and rename
//! it over the old one, and a Kubernetes Secret volume swaps a `..data`
//! symlink to a new directory; a watch on the old file's inode sees
//! neither. It also watches the directory of the file a symlink points to
//! (certbot's `live/` → `archive/`). Events for other names in those
//! directories are ignored, and a burst of events is reloaded once, after
//! it has been quiet for [`QUIET`]. The reload compares fingerprints of
//! the files' contents, so an event that changed nothing changes nothing.
//! Each round is announced to systemd (`service_manager`): `RELOADING=1`
//! before it starts and `READY=1` when it ends.

use std::collections::{BTreeSet, HashSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::signal::unix::Signal;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::reload::{Reloader, Trigger};

/// How long the files must be quiet before a reload: long enough for a
/// writer that truncates and then writes, short enough that new handshakes
/// get the new material well within two seconds.
const QUIET: Duration = Duration::from_millis(300);
/// Longest wait for quiet, so a file rewritten without pause still
/// reloads.
const MAX_SETTLE: Duration = Duration::from_millis(1200);

/// The SIGHUP stream, created before the proxy binds or says it is
/// listening, so that a SIGHUP sent as soon as it is up is neither lost
/// nor fatal (the default action of SIGHUP ends the process).
pub fn install_sighup() -> Result<Signal> {
    use tokio::signal::unix::{signal, SignalKind};
    signal(SignalKind::hangup()).context("installing the SIGHUP handler")
}

/// Runs reloads on SIGHUP and on file changes until the process exits.
pub fn spawn(reloader: Reloader, mut hup: Signal) {
    let reloader = Arc::new(reloader);
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let mut files = match FileWatcher::new(tx.clone()) {
        Ok(w) => Some(w),
        Err(e) => {
            warn!(
                error = format!("{e:#}"),
                "cannot watch the TLS files; they reload on SIGHUP only"
            );
            None
        }
    };
    if let Some(w) = &mut files {
        w.update(&reloader.watched_files());
    }
    tokio::spawn(async move {
        // Kept so that the channel stays open even without a watcher.
        let _tx = tx;
        loop {
            let trigger = tokio::select! {
                signal = hup.recv() => match signal {
                    Some(()) => Trigger::Signal,
                    None => break,
                },
                Some(()) = rx.recv() => {
                    settle(&mut rx).await;
                    Trigger::FileChange
                }
            };
            let worker = reloader.clone();
            crate::service_manager::reloading();
            // Reading files and building rustls configurations blocks.
            if let Err(e) = tokio::task::spawn_blocking(move || worker.reload(trigger)).await {
                warn!(error = %e, "the reload task failed");
            }
            crate::service_manager::reloaded();
            if let Some(w) = &mut files {
                w.update(&reloader.watched_files());
            }
        }
    });
}

/// Waits until no event came for [`QUIET`] (or [`MAX_SETTLE`] passed),
/// then drops the events that queued up: one reload covers them.
async fn settle(rx: &mut mpsc::UnboundedReceiver<()>) {
    let deadline = tokio::time::Instant::now() + MAX_SETTLE;
    loop {
        match tokio::time::timeout(QUIET, rx.recv()).await {
            Ok(Some(())) if tokio::time::Instant::now() < deadline => continue,
            _ => break,
        }
    }
    while rx.try_recv().is_ok() {}
}

/// The notify watcher and what it watches.
struct FileWatcher {
    watcher: notify::RecommendedWatcher,
    directories: BTreeSet<PathBuf>,
    /// File names that matter in the watched directories.
    names: Arc<Mutex<HashSet<OsString>>>,
}

impl FileWatcher {
    fn new(tx: mpsc::UnboundedSender<()>) -> Result<Self> {
        let names: Arc<Mutex<HashSet<OsString>>> = Arc::default();
        let relevant = names.clone();
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let event = match event {
                Ok(e) => e,
                Err(e) => {
                    warn!(error = %e, "file watcher error; SIGHUP still reloads");
                    return;
                }
            };
            // Reading a file (the proxy's own reload does) is no change.
            if let EventKind::Access(kind) = event.kind {
                if kind != AccessKind::Close(AccessMode::Write) {
                    return;
                }
            }
            let names = match relevant.lock() {
                Ok(g) => g,
                Err(poisoned) => poisoned.into_inner(),
            };
            let matters = event.paths.iter().any(|p| {
                p.file_name().is_some_and(|n| {
                    // `..data` and the timestamped directories of a
                    // Kubernetes Secret volume.
                    names.contains(n) || n.to_string_lossy().starts_with("..")
                })
            });
            if matters {
                debug!(paths = ?event.paths, kind = ?event.kind, "watched file changed");
                let _ = tx.send(());
            }
        })
        .context("starting the file watcher")?;
        Ok(FileWatcher {
            watcher,
            directories: BTreeSet::new(),
            names,
        })
    }

    /// Watches the directories of `files` (and of what symlinks among them
    /// point to), and stops watching directories no longer needed.
    fn update(&mut self, files: &[PathBuf]) {
        let mut directories = BTreeSet::new();
        let mut names = HashSet::new();
        for file in files {
            let absolute = std::path::absolute(file).unwrap_or_else(|_| file.clone());
            let resolved = std::fs::canonicalize(&absolute).ok();
            for path in std::iter::once(&absolute).chain(resolved.as_ref()) {
                if let (Some(dir), Some(name)) = (path.parent(), path.file_name()) {
                    directories.insert(dir.to_owned());
                    names.insert(name.to_owned());
                }
            }
            // The link itself may sit one level down, as in a Secret
            // volume (`tls.crt` → `..data/tls.crt`).
            if let Ok(target) = std::fs::read_link(&absolute) {
                if let Some(first) = first_component(&target) {
                    names.insert(first);
                }
            }
        }
        match self.names.lock() {
            Ok(mut g) => *g = names,
            Err(poisoned) => *poisoned.into_inner() = names,
        }
        for gone in self.directories.difference(&directories) {
            let _ = self.watcher.unwatch(gone);
        }
        let mut watching = BTreeSet::new();
        for dir in &directories {
            if self.directories.contains(dir) && dir.exists() {
                watching.insert(dir.clone());
                continue;
            }
            match self.watcher.watch(dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    info!(directory = %dir.display(), "watching for TLS file changes");
                    watching.insert(dir.clone());
                }
                Err(e) => warn!(
                    directory = %dir.display(),
                    error = %e,
                    "cannot watch this directory; its files reload on SIGHUP only"
                ),
            }
        }
        self.directories = watching;
    }
}

fn first_component(path: &Path) -> Option<OsString> {
    match path.components().next()? {
        std::path::Component::Normal(name) => Some(name.to_owned()),
        _ => None,
    }
}
