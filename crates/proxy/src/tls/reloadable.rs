//! Material that is swapped while the proxy serves, for both TLS legs: the
//! listener side ([`super::ListenerTls`]) and the upstream side
//! ([`super::UpstreamTls`]).
//!
//! New handshakes take a snapshot of the material in service; a reload
//! reads every file once, skips the rebuild when settings and contents
//! are what is already in service, and otherwise swaps in new material
//! only after all of it loaded and passed `material`'s checks. A bad file
//! never takes effect and established connections keep the material they
//! started with. A refused reload is remembered for `/status` until a
//! later one succeeds or finds the files back to what is in service.

use std::fmt;
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use crate::error::ProxyError;
use crate::tls::material::SourceFingerprint;

/// Material that knows what it was built from.
pub(crate) trait Fingerprinted {
    /// The fingerprint of the settings and file contents it was built from.
    fn source(&self) -> SourceFingerprint;
}

/// The material in service behind a lock, and the latest refused reload.
pub(crate) struct Reloadable<M> {
    current: RwLock<Arc<M>>,
    /// Why the latest reload failed, while the files still hold what failed.
    last_failure: Mutex<Option<ReloadFailure>>,
}

/// What a reload did.
#[derive(Debug, Clone)]
pub enum Reloaded<T> {
    /// The settings and every file were the same as in service: nothing
    /// was rebuilt.
    Unchanged(Arc<T>),
    /// New material was built, checked and is now in service.
    Swapped(Arc<T>),
}

impl<T> Reloaded<T> {
    /// The material in service after the reload.
    pub fn material(&self) -> &Arc<T> {
        match self {
            Reloaded::Unchanged(m) | Reloaded::Swapped(m) => m,
        }
    }
}

/// A reload that failed: when, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadFailure {
    /// When it was attempted.
    pub at: SystemTime,
    /// The reason, as logged.
    pub error: String,
    source: Option<SourceFingerprint>,
}

/// Why a reload did not take effect, and whether the same files had
/// already failed the same way (a watcher then stays quiet).
#[derive(Debug)]
pub struct ReloadError {
    /// What failed.
    pub error: ProxyError,
    /// The files and error are those of the previous failed attempt.
    pub repeated: bool,
}

impl fmt::Display for ReloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.error.fmt(f)
    }
}

impl std::error::Error for ReloadError {}

impl<M: fmt::Debug> fmt::Debug for Reloadable<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reloadable")
            .field("current", &self.snapshot())
            .finish_non_exhaustive()
    }
}

impl<M> Reloadable<M> {
    /// Puts the first material in service.
    pub(crate) fn new(material: M) -> Self {
        Reloadable {
            current: RwLock::new(Arc::new(material)),
            last_failure: Mutex::new(None),
        }
    }

    /// The material new handshakes use now.
    pub(crate) fn snapshot(&self) -> Arc<M> {
        match self.current.read() {
            Ok(guard) => guard.clone(),
            // A panic while holding the lock cannot leave a half-written
            // Arc behind, so the value is still whole.
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Why the latest reload failed, unless a later one succeeded or found
    /// the files back to what is in service.
    pub(crate) fn last_failure(&self) -> Option<ReloadFailure> {
        self.failure_slot().clone()
    }

    fn failure_slot(&self) -> std::sync::MutexGuard<'_, Option<ReloadFailure>> {
        self.last_failure
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl<M: Fingerprinted> Reloadable<M> {
    /// Reads the files (`read` returns their bytes and the fingerprint of
    /// settings and contents) and, when the fingerprint differs from the
    /// material in service, builds new material from them and puts it in
    /// service. On error the old material stays.
    pub(crate) fn reload<F>(
        &self,
        read: impl FnOnce() -> Result<(SourceFingerprint, F), ProxyError>,
        build: impl FnOnce(F) -> Result<M, ProxyError>,
    ) -> Result<Reloaded<M>, ReloadError> {
        let (source, files) = read().map_err(|e| self.fail(None, e))?;
        let current = self.snapshot();
        if current.source() == source {
            *self.failure_slot() = None;
            return Ok(Reloaded::Unchanged(current));
        }
        let material = Arc::new(build(files).map_err(|e| self.fail(Some(source), e))?);
        match self.current.write() {
            Ok(mut guard) => *guard = material.clone(),
            Err(poisoned) => *poisoned.into_inner() = material.clone(),
        }
        *self.failure_slot() = None;
        Ok(Reloaded::Swapped(material))
    }

    /// Records a failed reload and hands the error back, saying whether
    /// the same files already failed the same way (so a file watcher does
    /// not report one bad file twice).
    fn fail(&self, source: Option<SourceFingerprint>, error: ProxyError) -> ReloadError {
        let mut slot = self.failure_slot();
        let repeated = source.is_some()
            && slot
                .as_ref()
                .is_some_and(|f| f.source == source && f.error == error.to_string());
        *slot = Some(ReloadFailure {
            at: SystemTime::now(),
            error: error.to_string(),
            source,
        });
        ReloadError { error, repeated }
    }
}
