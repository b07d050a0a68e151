//! `intransit up --demo`: a throwaway database of intransit's own to try
//! the proxy against.
//!
//! This module owns the demo database's directory (`<state>/demo/postgres`
//! or `<state>/demo/mariadb`), its TLS certificate (issued by the state
//! directory's CA under the name `demo-postgres` or `demo-mariadb`), and
//! the database's life: created on the first run, reused on later ones,
//! started before the proxy and stopped after it. The database listens on
//! a loopback port with TLS and client certificates only, so it refuses
//! plaintext itself, and on a unix socket in its directory, which is how
//! the proxy reaches it.
//!
//! It must never touch a system database, its configuration or a
//! well-known port, and a first run that fails leaves no demo directory
//! behind. Everything it needs (the server programs, the account to run
//! them as, paths the account can reach) is checked by [`DemoPlan::check`]
//! before anything is written.

mod account;
mod mariadb;
mod postgres;

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use intransit_config::Endpoint;
use intransit_pki::{
    CertificateKind, IssueRequest, KeyAlgorithm, RenewOptions, RenewalPolicy, StateDir, Validity,
};
use tracing::{info, warn};

use self::account::{detect_account, ensure_can_enter, DatabaseAccount};

/// The longest path a unix socket may have on Linux, less its final NUL.
const MAX_SOCKET_PATH: usize = 107;

/// How many lines of a server log an error message quotes.
const LOG_TAIL_LINES: usize = 30;

/// How many ports to try when another process takes the chosen one
/// between the check and the server's bind.
const PORT_ATTEMPTS: u32 = 3;

/// What a server logs when its TCP port is taken.
const PORT_TAKEN: &str = "Address already in use";

/// The address the demo database listens on.
pub(crate) const DEMO_HOST: &str = "127.0.0.1";

/// Which database `--demo` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DemoKind {
    Postgres,
    MariaDb,
}

impl DemoKind {
    /// The directory below `<state>/demo`, and the certificate's name
    /// after `demo-`.
    fn dir_name(self) -> &'static str {
        match self {
            DemoKind::Postgres => "postgres",
            DemoKind::MariaDb => "mariadb",
        }
    }
}

/// The programs of one database kind, found by [`DemoPlan::check`].
#[derive(Debug)]
enum Programs {
    Postgres(postgres::Programs),
    MariaDb(mariadb::Programs),
}

/// Everything `--demo` needs, checked before anything is written.
#[derive(Debug)]
pub(crate) struct DemoPlan {
    kind: DemoKind,
    programs: Programs,
    account: DatabaseAccount,
    state_root: PathBuf,
    /// `<state>/demo`.
    demo_root: PathBuf,
    /// `<state>/demo/<kind>`.
    dir: PathBuf,
}

impl DemoPlan {
    /// Finds the server programs (in `bin_dir` only, when given) and the
    /// account to run them as, and checks that the demo directory below
    /// `state_root` will work, without writing anything.
    pub(crate) fn check(
        kind: DemoKind,
        state_root: &Path,
        bin_dir: Option<&Path>,
    ) -> Result<DemoPlan> {
        let (programs, account) = match kind {
            DemoKind::Postgres => (
                Programs::Postgres(postgres::Programs::find(bin_dir)?),
                detect_account(postgres::SYSTEM_ACCOUNT, postgres::INSTALL)?,
            ),
            DemoKind::MariaDb => (
                Programs::MariaDb(mariadb::Programs::find(bin_dir)?),
                detect_account(mariadb::SYSTEM_ACCOUNT, mariadb::INSTALL)?,
            ),
        };
        let demo_root = state_root.join("demo");
        let dir = demo_root.join(kind.dir_name());
        let socket = match kind {
            DemoKind::Postgres => postgres::longest_socket_path(&dir),
            DemoKind::MariaDb => mariadb::socket_path(&dir),
        };
        if socket.as_os_str().len() > MAX_SOCKET_PATH {
            bail!(
                "the demo database's unix socket {} would be longer than {MAX_SOCKET_PATH} bytes; \
                 choose a shorter --state-dir",
                socket.display()
            );
        }
        // As root, the database's account must reach its directory: the
        // state directory itself is opened for traversal at start, the
        // directories above it must already allow it.
        let mut above = state_root.parent();
        while let Some(dir) = above {
            if dir.exists() {
                ensure_can_enter(&account, dir)?;
                break;
            }
            above = dir.parent();
        }
        Ok(DemoPlan {
            kind,
            programs,
            account,
            state_root: state_root.to_owned(),
            demo_root,
            dir,
        })
    }

    /// Creates (first run) or reuses the demo database, gives it a
    /// certificate from `state`'s CA (`server_lifetime`), and starts it.
    /// A first run that fails removes the directories it created.
    pub(crate) fn start(
        self,
        state: &StateDir,
        client_name: &str,
        server_lifetime: time::Duration,
    ) -> Result<RunningDemo> {
        let made_demo_root = !self.demo_root.exists();
        let made_dir = !self.dir.exists();
        let started = self.start_inner(state, client_name, server_lifetime, made_dir);
        if started.is_err() {
            // Only what this run created goes: a database from an earlier
            // run holds someone's data.
            let created = if made_demo_root {
                Some(&self.demo_root)
            } else if made_dir {
                Some(&self.dir)
            } else {
                None
            };
            if let Some(dir) = created {
                if let Err(e) = fs::remove_dir_all(dir) {
                    warn!(dir = %dir.display(), error = %e, "could not remove the demo directory");
                }
            }
        }
        started
    }

    fn start_inner(
        &self,
        state: &StateDir,
        client_name: &str,
        server_lifetime: time::Duration,
        created: bool,
    ) -> Result<RunningDemo> {
        let passable = match self.account {
            DatabaseAccount::Current => 0o700,
            DatabaseAccount::System { .. } => {
                // The state directory is private (0700); its owner keeps
                // every right, and the database's account may pass through
                // it to its own directory, not list it. The CA and the
                // certificates stay in directories of mode 0700.
                set_mode(&self.state_root, 0o711)?;
                0o711
            }
        };
        make_dir(&self.demo_root, passable)?;
        make_dir(&self.dir, 0o700)?;
        self.account.take_ownership(&self.dir)?;
        // Directories that did not exist at the check were created private
        // on the way; this says so before the database fails to start.
        ensure_can_enter(&self.account, &self.dir)?;

        let certificate = format!("demo-{}", self.kind.dir_name());
        let tls = TlsFiles::install(
            state,
            &certificate,
            server_lifetime,
            &self.dir,
            &self.account,
        )?;
        let engine = match &self.programs {
            Programs::Postgres(programs) => Engine::Postgres(postgres::start(
                programs,
                &self.account,
                &self.dir,
                &tls,
                client_name,
            )?),
            Programs::MariaDb(programs) => {
                Engine::MariaDb(mariadb::start(programs, &self.account, &self.dir, &tls)?)
            }
        };
        let port = engine.port();
        let upstream = engine.upstream();
        let version = engine.version();
        info!(
            dir = %self.dir.display(),
            port,
            account = self.account.system_name().unwrap_or("(this user)"),
            "demo database started"
        );
        Ok(RunningDemo {
            kind: self.kind,
            dir: self.dir.clone(),
            created,
            port,
            upstream,
            version,
            stopper: DemoStopper {
                engine: Arc::new(Mutex::new(Some(engine))),
            },
        })
    }
}

/// A demo database that is running.
#[derive(Debug)]
pub(crate) struct RunningDemo {
    pub(crate) kind: DemoKind,
    /// Its directory, `<state>/demo/<kind>`.
    pub(crate) dir: PathBuf,
    /// True when this run created it (initdb, mariadb-install-db).
    pub(crate) created: bool,
    /// Its TCP port on [`DEMO_HOST`] (TLS with client certificates only).
    pub(crate) port: u16,
    /// Its unix socket, the proxy's upstream.
    pub(crate) upstream: Endpoint,
    /// The server's version as it reports it (PostgreSQL's major version,
    /// MariaDB's `mariadbd --version`).
    pub(crate) version: String,
    stopper: DemoStopper,
}

impl RunningDemo {
    /// A handle that stops the database from anywhere, once.
    pub(crate) fn stopper(&self) -> DemoStopper {
        self.stopper.clone()
    }

    /// Stops the database cleanly and waits for it.
    pub(crate) fn stop(self) {
        self.stopper.stop();
    }
}

/// Stops the demo database; every call after the first does nothing.
#[derive(Debug, Clone)]
pub(crate) struct DemoStopper {
    engine: Arc<Mutex<Option<Engine>>>,
}

impl DemoStopper {
    /// Stops the database and returns once it is down; a call while
    /// another is stopping it waits for that one.
    pub(crate) fn stop(&self) {
        // The lock is held for the whole stop, so that no caller returns
        // (and lets the process exit) while the database is going down.
        let mut guard = match self.engine.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(engine) = guard.take() {
            match engine.stop() {
                Ok(()) => info!("demo database stopped"),
                Err(e) => warn!(
                    error = crate::errors::chain(&e),
                    "the demo database did not stop cleanly"
                ),
            }
        }
    }
}

/// A running server of either kind.
#[derive(Debug)]
enum Engine {
    Postgres(postgres::Running),
    MariaDb(mariadb::Running),
}

impl Engine {
    fn port(&self) -> u16 {
        match self {
            Engine::Postgres(r) => r.port,
            Engine::MariaDb(r) => r.port,
        }
    }

    fn upstream(&self) -> Endpoint {
        match self {
            Engine::Postgres(r) => Endpoint::Unix(r.socket.clone()),
            Engine::MariaDb(r) => Endpoint::Unix(r.socket.clone()),
        }
    }

    fn version(&self) -> String {
        match self {
            Engine::Postgres(r) => r.version.clone(),
            Engine::MariaDb(r) => r.version.clone(),
        }
    }

    fn stop(self) -> Result<()> {
        match self {
            Engine::Postgres(r) => r.stop(),
            Engine::MariaDb(r) => r.stop(),
        }
    }
}

/// The demo database's own TLS files, copied into `<dir>/tls` where its
/// account may read them (the originals in the state directory are not
/// readable by it when `up` runs as root).
#[derive(Debug)]
pub(crate) struct TlsFiles {
    /// The certificate and the CA certificate after it.
    pub(crate) chain: PathBuf,
    pub(crate) key: PathBuf,
    /// intransit's CA certificate: the database trusts client
    /// certificates it issued.
    pub(crate) ca: PathBuf,
}

impl TlsFiles {
    /// Issues certificate `name` (server, `localhost`, 127.0.0.1, ::1) from
    /// `state`'s CA on the first run, renews it when it is due, and copies
    /// it into `<dir>/tls`.
    fn install(
        state: &StateDir,
        name: &str,
        lifetime: time::Duration,
        dir: &Path,
        account: &DatabaseAccount,
    ) -> Result<TlsFiles> {
        let ca = state
            .load_ca(None)
            .with_context(|| format!("loading the CA in {}", state.root().display()))?;
        let inventory = state.inventory().context("reading the inventory")?;
        let paths = match inventory.get(name) {
            Some(entry) => {
                let options = RenewOptions {
                    reuse_key: false,
                    force: false,
                    policy: RenewalPolicy::default(),
                };
                state
                    .renew(&ca, name, &options, time::OffsetDateTime::now_utc())
                    .with_context(|| format!("renewing the certificate {name}"))?;
                entry.paths.clone()
            }
            None => {
                let request = IssueRequest {
                    kind: CertificateKind::Server,
                    common_name: "localhost".to_owned(),
                    dns_names: vec!["localhost".to_owned()],
                    ip_addresses: vec![
                        IpAddr::V4(Ipv4Addr::LOCALHOST),
                        IpAddr::V6(Ipv6Addr::LOCALHOST),
                    ],
                    uris: Vec::new(),
                    key: KeyAlgorithm::default(),
                    validity: Validity::lifetime_from_now(lifetime),
                };
                state
                    .issue(&ca, name, &request, None, false)
                    .with_context(|| format!("issuing the certificate {name}"))?
                    .paths
            }
        };
        let tls_dir = dir.join("tls");
        make_dir(&tls_dir, 0o700)?;
        account.take_ownership(&tls_dir)?;
        let files = TlsFiles {
            chain: tls_dir.join("server-chain.pem"),
            key: tls_dir.join("server-key.pem"),
            ca: tls_dir.join("ca.pem"),
        };
        for (from, to) in [
            (&paths.chain, &files.chain),
            (&paths.key, &files.key),
            (&paths.ca, &files.ca),
        ] {
            copy_private(from, to, account)?;
        }
        Ok(files)
    }
}

/// Copies `from` to `to`, mode 0600, owned by `account`: both servers
/// refuse a private key that others may read.
fn copy_private(from: &Path, to: &Path, account: &DatabaseAccount) -> Result<()> {
    let bytes = fs::read(from).with_context(|| format!("reading {}", from.display()))?;
    write_private(to, &bytes, account)
}

/// Writes `bytes` to `to`, mode 0600, owned by `account`.
fn write_private(to: &Path, bytes: &[u8], account: &DatabaseAccount) -> Result<()> {
    // Removing first means a file left by an earlier run with other
    // permissions never holds the new contents, even for a moment.
    match fs::remove_file(to) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("replacing {}", to.display())),
    }
    let mut options = fs::OpenOptions::new();
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .write(true)
        .create_new(true)
        .open(to)
        .with_context(|| format!("creating {}", to.display()))?;
    std::io::Write::write_all(&mut file, bytes)
        .with_context(|| format!("writing {}", to.display()))?;
    account.take_ownership(to)
}

/// Creates `dir` with `mode` if it is missing, and sets `mode` if not.
fn make_dir(dir: &Path, mode: u32) -> Result<()> {
    match fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
    }
    set_mode(dir, mode)
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {} to {mode:o}", path.display()))
}

/// A port on [`DEMO_HOST`] for the database: `previous` (the port of the
/// last run, so the printed commands stay the same) if it is free, else
/// one the kernel picks.
fn choose_port(previous: Option<u16>) -> Result<u16> {
    if let Some(port) = previous {
        if std::net::TcpListener::bind((DEMO_HOST, port)).is_ok() {
            return Ok(port);
        }
    }
    let socket = std::net::TcpListener::bind((DEMO_HOST, 0))
        .with_context(|| format!("finding a free port on {DEMO_HOST}"))?;
    Ok(socket.local_addr().context("reading a free port")?.port())
}

/// The port recorded in `<dir>/port` by an earlier run.
fn previous_port(dir: &Path) -> Option<u16> {
    fs::read_to_string(dir.join("port"))
        .ok()
        .and_then(|text| text.trim().parse().ok())
}

/// Records the port for the next run.
fn record_port(dir: &Path, port: u16) -> Result<()> {
    let path = dir.join("port");
    fs::write(&path, format!("{port}\n")).with_context(|| format!("writing {}", path.display()))
}

/// The size of a log, to read what a start-up attempt adds to it.
fn log_len(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// The log from byte `offset` on, or nothing if it cannot be read.
fn read_log_from(path: &Path, offset: u64) -> String {
    let mut text = Vec::new();
    let read = fs::File::open(path).and_then(|mut file| {
        file.seek(SeekFrom::Start(offset))?;
        file.read_to_end(&mut text)
    });
    match read {
        Ok(_) => String::from_utf8_lossy(&text).into_owned(),
        Err(_) => String::new(),
    }
}

/// The last lines of what a log gained from `offset` on, for errors.
fn log_tail(path: &Path, offset: u64) -> String {
    let text = read_log_from(path, offset);
    let lines: Vec<&str> = text.lines().collect();
    if lines.is_empty() {
        return format!("({} has nothing to say)", path.display());
    }
    format!(
        "end of {}:\n{}",
        path.display(),
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    )
}

/// What a failed program printed, for errors.
fn output_text(output: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
    .trim()
    .to_owned()
}

/// The first of `candidates` holding every one of `names` as an executable.
fn dir_with_programs(candidates: &[PathBuf], names: &[&str]) -> Option<PathBuf> {
    candidates
        .iter()
        .find(|dir| names.iter().all(|name| is_executable(&dir.join(name))))
        .cloned()
}

/// Whether `path` is a regular file (after links) someone may execute.
fn is_executable(path: &Path) -> bool {
    fs::metadata(path)
        .map(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// The directories on `PATH`.
fn path_dirs() -> Vec<PathBuf> {
    std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect())
        .unwrap_or_default()
}

/// The message for missing server programs: what was looked for, where,
/// and the package that has them.
fn missing_programs(what: &str, searched: &str, install: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "--demo needs the {what}, which were not found in {searched}; install them with \
         `{install}` (Debian and Ubuntu; ./scripts/test installs it too), or point \
         --demo-bin-dir at the directory that holds them. Nothing was created."
    )
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn programs_are_found_only_where_all_are() {
        let base = tempfile::tempdir().expect("temporary directory");
        let half = base.path().join("half");
        let full = base.path().join("full");
        for (dir, names) in [(&half, &["initdb"][..]), (&full, &["initdb", "pg_ctl"][..])] {
            fs::create_dir(dir).expect("dir");
            for name in names {
                let path = dir.join(name);
                fs::write(&path, "#!/bin/sh\n").expect("program");
                set_mode(&path, 0o755).expect("mode");
            }
        }
        let candidates = vec![half.clone(), full.clone()];
        assert_eq!(
            dir_with_programs(&candidates, &["initdb", "pg_ctl"]),
            Some(full)
        );
        assert_eq!(dir_with_programs(&[half], &["initdb", "pg_ctl"]), None);
    }

    #[test]
    fn the_missing_programs_message_names_the_package_and_the_script() {
        let message = missing_programs("x", "y", "apt-get install postgresql").to_string();
        assert!(
            message.contains("`apt-get install postgresql`"),
            "{message}"
        );
        assert!(message.contains("./scripts/test"), "{message}");
    }

    #[test]
    fn a_free_previous_port_is_kept() {
        let port = choose_port(None).expect("a port");
        assert_eq!(choose_port(Some(port)).expect("the same port"), port);
        let taken = std::net::TcpListener::bind((DEMO_HOST, 0)).expect("bind");
        let taken_port = taken.local_addr().expect("addr").port();
        assert_ne!(choose_port(Some(taken_port)).expect("another"), taken_port);
    }
}
