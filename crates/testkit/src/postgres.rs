//! A private, real PostgreSQL server for integration tests.
//!
//! This module owns finding the server binaries, `initdb` into a temporary
//! directory, the server's configuration, start-up on a random port with a
//! retry when the port was taken meanwhile, waiting for readiness, and
//! superuser SQL through psql. Stopping the server and removing its
//! directory belong to [`crate::supervisor`].
//!
//! It never touches a system cluster, a system service or a well-known port.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::isolation::free_port;
use crate::supervisor::Supervisor;
use crate::tools::{
    conninfo_value, is_executable, require_tool, run_psql, without_libpq_environment,
};
use intransit_localdb::ServerAccount;

/// The command that installs the server binaries on Debian.
const SERVER_INSTALL: &str = "apt-get install -y postgresql postgresql-contrib";

/// The database superuser created by initdb.
const SUPERUSER: &str = "postgres";

/// The system account PostgreSQL runs as when the tests run as root.
const SYSTEM_ACCOUNT: &str = "postgres";

/// The address the server listens on.
const HOST: &str = "127.0.0.1";

/// How long a server may take to accept connections after it was started.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How often readiness is checked while waiting.
const READY_POLL: Duration = Duration::from_millis(50);

/// How many random ports to try before giving up, for the rare case where
/// another process takes the port between [`free_port`] and the bind.
const PORT_ATTEMPTS: u32 = 5;

/// What the server logs when its TCP port is taken.
const PORT_TAKEN: &str = "Address already in use";

/// How many lines of the server log an error message quotes.
const LOG_TAIL_LINES: usize = 40;

/// The configuration file this crate writes, included from postgresql.conf.
const TESTKIT_CONF: &str = "intransit-testkit.conf";

/// Where the TLS files given in [`PgSsl`] are copied, inside the data
/// directory.
const SSL_CERT: &str = "intransit-testkit-server.crt";
const SSL_KEY: &str = "intransit-testkit-server.key";
const SSL_CA: &str = "intransit-testkit-ca.crt";
const SSL_CRL: &str = "intransit-testkit.crl";

/// The longest path a unix socket may have on Linux, less its final NUL.
const MAX_SOCKET_PATH: usize = 107;

/// Authentication rules: the superuser reaches the server through the unix
/// socket without a password, everyone else over TCP with SCRAM. The host
/// lines accept TLS and plaintext alike, so a server with TLS on also serves
/// tests that compare against plaintext.
const PG_HBA: &str = "\
# Written by intransit-testkit.
local all all                trust
host  all all 127.0.0.1/32   scram-sha-256
host  all all ::1/128        scram-sha-256
";

/// How a server started with [`PgServer::start`] differs from the default.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// Native TLS on the server itself, TLS 1.3 only; `None` for plaintext.
    pub ssl: Option<PgSsl>,
    /// The server's `max_connections`.
    pub max_connections: u32,
    /// Further postgresql.conf lines, such as `log_connections = on`,
    /// written after everything else so they win.
    pub extra_conf: Vec<String>,
    /// pg_hba.conf lines placed before the defaults (first match wins), e.g.
    /// `hostssl all all 127.0.0.1/32 cert`.
    pub hba_first: Vec<String>,
    /// A CRL for client certificates (`ssl_crl_file`); needs `ssl`.
    pub ssl_crl: Option<PathBuf>,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            ssl: None,
            max_connections: 200,
            extra_conf: Vec::new(),
            hba_first: Vec::new(),
            ssl_crl: None,
        }
    }
}

/// PEM files for a server with native TLS. They are copied into the data
/// directory, so the originals may be removed once the server has started.
#[derive(Debug, Clone)]
pub struct PgSsl {
    /// The server certificate chain.
    pub cert_file: PathBuf,
    /// The server's private key.
    pub key_file: PathBuf,
    /// The CA that signs client certificates. The server asks clients for a
    /// certificate but accepts clients without one.
    pub ca_file: PathBuf,
}

/// A PostgreSQL server of the test process's own, in a temporary directory.
///
/// [`PgServer::shared`] gives every test in a test binary the same server;
/// tests keep apart by creating their own users and databases with
/// [`unique_name`](crate::unique_name). [`PgServer::start`] gives a test a
/// server of its own, stopped and removed on drop.
#[derive(Debug)]
pub struct PgServer {
    layout: Layout,
    port: u16,
    postmaster: Child,
    supervisor: Supervisor,
    /// What [`PgServer::restart`] needs to start the postmaster again.
    postgres: PathBuf,
    isready: PathBuf,
    account: ServerAccount,
    opts: PgOptions,
}

impl PgServer {
    /// The server shared by every test in this test binary, started by the
    /// first call. Concurrent first calls wait for the one start-up; if it
    /// failed, every call returns its error.
    ///
    /// The server is stopped and its directory removed after the test
    /// process exits, by the supervisor rather than by `Drop`.
    pub fn shared() -> Result<&'static PgServer> {
        static SHARED: OnceLock<Result<PgServer, String>> = OnceLock::new();
        SHARED
            .get_or_init(|| PgServer::start(PgOptions::default()).map_err(|e| format!("{e:#}")))
            .as_ref()
            .map_err(|message| anyhow!("starting the shared test PostgreSQL: {message}"))
    }

    /// Starts a server of its own with `opts`. Dropping it stops the server
    /// and removes its directory; so does the test process ending.
    pub fn start(opts: PgOptions) -> Result<PgServer> {
        PgServer::start_on_ports(opts, &mut free_port)
    }

    /// [`PgServer::start`], taking each port to try from `next_port`.
    fn start_on_ports(opts: PgOptions, next_port: &mut dyn FnMut() -> u16) -> Result<PgServer> {
        let bindir = server_bindir()?;
        let account = ServerAccount::detect(SYSTEM_ACCOUNT, || {
            format!(
                "the tests run as root, PostgreSQL refuses to, and there is no `{SYSTEM_ACCOUNT}` \
                 user to run it as; install the server, which creates that user, with: \
                 {SERVER_INSTALL}"
            )
        })?;
        let isready = match bindir.join("pg_isready") {
            path if is_executable(&path) => path,
            _ => require_tool("pg_isready", "postgresql-client")?,
        };

        let tmp = tempfile::Builder::new()
            .prefix("intransit-pg-")
            .tempdir()
            .context("creating a temporary directory for PostgreSQL")?;
        // The supervisor comes first, so that a test process dying during
        // initdb leaves no directory behind either.
        let mut supervisor = Supervisor::spawn(tmp.path())?;
        let layout = Layout::create(tmp.keep(), &account)?;

        init_cluster(&bindir, &account, &layout, &opts.hba_first)?;
        if let Some(ssl) = &opts.ssl {
            install_ssl_files(ssl, opts.ssl_crl.as_deref(), &account, &layout.data_dir)?;
        } else if opts.ssl_crl.is_some() {
            bail!("PgOptions::ssl_crl needs PgOptions::ssl");
        }
        let launcher = Launcher {
            postgres: bindir.join("postgres"),
            isready,
            account: &account,
            layout: &layout,
            opts: &opts,
        };
        let (port, postmaster) = launcher.launch(&mut supervisor, next_port)?;
        let postgres = launcher.postgres.clone();
        let isready = launcher.isready.clone();
        Ok(PgServer {
            layout,
            port,
            postmaster,
            supervisor,
            postgres,
            isready,
            account,
            opts,
        })
    }

    /// Stops the server the way an operator's restart does (a fast
    /// shutdown: SIGINT to the postmaster, which ends every session),
    /// leaves it down for `down_for`, then starts it again on the same
    /// port and waits until it accepts connections.
    pub fn restart(&mut self, down_for: std::time::Duration) -> Result<()> {
        let status = Command::new("kill")
            .args(["-INT", &self.postmaster.id().to_string()])
            .status()
            .context("running kill")?;
        if !status.success() {
            bail!("kill -INT of the postmaster failed: {status}");
        }
        self.postmaster
            .wait()
            .context("waiting for the postmaster to stop")?;
        std::thread::sleep(down_for);
        let launcher = Launcher {
            postgres: self.postgres.clone(),
            isready: self.isready.clone(),
            account: &self.account,
            layout: &self.layout,
            opts: &self.opts,
        };
        let port = self.port;
        let mut ports = std::iter::repeat(port);
        let (_, postmaster) =
            launcher.launch(&mut self.supervisor, &mut || ports.next().unwrap_or(port))?;
        self.postmaster = postmaster;
        Ok(())
    }

    /// The TCP port on [`PgServer::host`].
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The address the server listens on: `127.0.0.1`.
    pub fn host(&self) -> &str {
        HOST
    }

    /// The directory holding the server's unix socket, for libpq's `host=`.
    pub fn socket_dir(&self) -> &Path {
        &self.layout.socket_dir
    }

    /// The server's unix socket itself: `<socket_dir>/.s.PGSQL.<port>`.
    pub fn socket_path(&self) -> PathBuf {
        self.layout
            .socket_dir
            .join(format!(".s.PGSQL.{}", self.port))
    }

    /// The superuser, who may log in without a password over the unix socket
    /// only.
    pub fn superuser(&self) -> &str {
        SUPERUSER
    }

    /// The cluster's data directory.
    pub fn data_dir(&self) -> &Path {
        &self.layout.data_dir
    }

    /// The file the server logs to.
    pub fn log_path(&self) -> PathBuf {
        self.layout.log_path.clone()
    }

    /// A libpq connection string for `user` with `password` to database `db`
    /// over TCP, for [`run_psql`] or any libpq client. Append options such as
    /// `sslmode=require` after a space.
    pub fn tcp_conninfo(&self, user: &str, password: &str, db: &str) -> String {
        format!(
            "host={HOST} port={} user={} password={} dbname={}",
            self.port,
            conninfo_value(user),
            conninfo_value(password),
            conninfo_value(db)
        )
    }

    /// Runs `sql` as the superuser in database `db` over the unix socket and
    /// returns psql's unaligned, tuples-only output, trimmed.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String> {
        let conninfo = format!(
            "host={} port={} user={} dbname={}",
            conninfo_value(&self.layout.socket_dir.to_string_lossy()),
            self.port,
            conninfo_value(SUPERUSER),
            conninfo_value(db)
        );
        run_psql(&conninfo, sql).with_context(|| format!("running SQL as {SUPERUSER} in {db}"))
    }

    /// Creates role `name`, allowed to log in with `password`; the server
    /// stores the password as a SCRAM-SHA-256 verifier. Take the name from
    /// [`unique_name`](crate::unique_name) so parallel tests cannot collide.
    pub fn create_user(&self, name: &str, password: &str) -> Result<()> {
        let sql = format!(
            "CREATE ROLE {} LOGIN PASSWORD {};",
            quote_identifier(name),
            quote_literal(password)
        );
        self.psql("postgres", &sql)
            .map(drop)
            .with_context(|| format!("creating role {name}"))
    }

    /// Creates database `name` owned by role `owner`.
    pub fn create_database(&self, name: &str, owner: &str) -> Result<()> {
        let sql = format!(
            "CREATE DATABASE {} OWNER {};",
            quote_identifier(name),
            quote_identifier(owner)
        );
        self.psql("postgres", &sql)
            .map(drop)
            .with_context(|| format!("creating database {name} owned by {owner}"))
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        shut_down(&mut self.supervisor, &mut self.postmaster);
    }
}

/// Where a server's files live, all under one temporary directory.
#[derive(Debug)]
struct Layout {
    /// The temporary directory, removed by the supervisor.
    root: PathBuf,
    data_dir: PathBuf,
    socket_dir: PathBuf,
    log_path: PathBuf,
}

impl Layout {
    /// Prepares `root` for a server running as `account`.
    fn create(root: PathBuf, account: &ServerAccount) -> Result<Layout> {
        let layout = Layout {
            data_dir: root.join("data"),
            socket_dir: root.join("socket"),
            log_path: root.join("server.log"),
            root,
        };
        let longest_socket = layout.socket_dir.join(".s.PGSQL.65535");
        if longest_socket.as_os_str().len() > MAX_SOCKET_PATH {
            bail!(
                "the unix socket path {} would be longer than {MAX_SOCKET_PATH} bytes; \
                 set TMPDIR to a shorter directory such as /tmp",
                longest_socket.display()
            );
        }
        account.take_ownership(&layout.root)?;
        fs::create_dir(&layout.socket_dir).with_context(|| {
            format!("creating socket directory {}", layout.socket_dir.display())
        })?;
        account.take_ownership(&layout.socket_dir)?;
        Ok(layout)
    }
}

/// Starts the postmaster of an initialized cluster.
struct Launcher<'a> {
    postgres: PathBuf,
    isready: PathBuf,
    account: &'a ServerAccount,
    layout: &'a Layout,
    opts: &'a PgOptions,
}

impl Launcher<'_> {
    /// Starts the postmaster on a port from `next_port`, trying the next one
    /// when that port was taken meanwhile, and waits until it is ready.
    /// Returns the port and the running postmaster, which `supervisor` now
    /// watches.
    fn launch(
        &self,
        supervisor: &mut Supervisor,
        next_port: &mut dyn FnMut() -> u16,
    ) -> Result<(u16, Child)> {
        let log_path = &self.layout.log_path;
        let mut port = 0;
        for _ in 0..PORT_ATTEMPTS {
            port = next_port();
            let log_start = fs::metadata(log_path).map(|m| m.len()).unwrap_or(0);
            let mut postmaster = self.spawn(port)?;
            supervisor.watch(postmaster.id())?;

            match wait_until_ready(
                &mut postmaster,
                &self.isready,
                &self.layout.socket_dir,
                port,
            ) {
                Ok(()) => return Ok((port, postmaster)),
                Err(NotReady::Exited(_)) if read_from(log_path, log_start).contains(PORT_TAKEN) => {
                    continue
                }
                Err(NotReady::Exited(status)) => bail!(
                    "PostgreSQL exited during start-up ({status}); end of {}:\n{}",
                    log_path.display(),
                    log_tail(log_path)
                ),
                Err(NotReady::TimedOut) => {
                    let tail = log_tail(log_path);
                    shut_down(supervisor, &mut postmaster);
                    bail!(
                        "PostgreSQL did not accept connections within {READY_TIMEOUT:?}; \
                         end of {}:\n{tail}",
                        log_path.display()
                    );
                }
                Err(NotReady::Broken(err)) => {
                    shut_down(supervisor, &mut postmaster);
                    return Err(err);
                }
            }
        }
        bail!(
            "PostgreSQL could not bind a free port in {PORT_ATTEMPTS} attempts \
             (last {HOST}:{port}); end of {}:\n{}",
            log_path.display(),
            log_tail(log_path)
        )
    }

    /// Writes the configuration for `port` and starts the postmaster, its
    /// output appended to the server log.
    fn spawn(&self, port: u16) -> Result<Child> {
        let conf = server_conf(port, &self.layout.socket_dir, self.opts);
        self.account
            .write_owned(&self.layout.data_dir.join(TESTKIT_CONF), &conf)?;

        let log_path = &self.layout.log_path;
        let open_log = || {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(log_path)
                .with_context(|| format!("opening server log {}", log_path.display()))
        };
        self.account
            .command(&self.postgres, &self.layout.root)
            .arg("-D")
            .arg(&self.layout.data_dir)
            .stdin(Stdio::null())
            .stdout(open_log()?)
            .stderr(open_log()?)
            // Kept out of the test's process group so that Ctrl-C in a
            // terminal reaches only the test process; the supervisor then
            // shuts the server down.
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {}", self.postgres.display()))
    }
}

/// Stops a server through its supervisor and reaps the postmaster.
fn shut_down(supervisor: &mut Supervisor, postmaster: &mut Child) {
    supervisor.stop();
    // Only a supervisor killed from outside leaves the postmaster running;
    // killing it then beats hanging in wait.
    if matches!(postmaster.try_wait(), Ok(None)) {
        let _ = postmaster.kill();
    }
    let _ = postmaster.wait();
}

/// Why a started postmaster is not serving.
enum NotReady {
    /// It exited; the log says why.
    Exited(std::process::ExitStatus),
    /// It is still running but did not become ready in time.
    TimedOut,
    /// Readiness could not be checked at all.
    Broken(anyhow::Error),
}

/// Waits until the postmaster accepts connections on its unix socket.
fn wait_until_ready(
    postmaster: &mut Child,
    isready: &Path,
    socket_dir: &Path,
    port: u16,
) -> Result<(), NotReady> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        match postmaster.try_wait() {
            Ok(Some(status)) => return Err(NotReady::Exited(status)),
            Ok(None) => {}
            Err(err) => {
                return Err(NotReady::Broken(
                    anyhow::Error::new(err).context("checking whether PostgreSQL is running"),
                ))
            }
        }
        let mut command = Command::new(isready);
        command
            .arg("-q")
            .arg("-h")
            .arg(socket_dir)
            .arg("-p")
            .arg(port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        without_libpq_environment(&mut command);
        match command.status() {
            Ok(status) if status.success() => return Ok(()),
            Ok(_) => {}
            Err(err) => {
                return Err(NotReady::Broken(
                    anyhow::Error::new(err).context(format!("running {}", isready.display())),
                ))
            }
        }
        if Instant::now() >= deadline {
            return Err(NotReady::TimedOut);
        }
        std::thread::sleep(READY_POLL);
    }
}

/// Runs initdb and replaces the authentication rules.
fn init_cluster(
    bindir: &Path,
    account: &ServerAccount,
    layout: &Layout,
    hba_first: &[String],
) -> Result<()> {
    let data_dir = &layout.data_dir;
    let initdb = bindir.join("initdb");
    let output = account
        .command(&initdb, &layout.root)
        .arg("--pgdata")
        .arg(data_dir)
        .args(["--username", SUPERUSER, "--auth", "trust"])
        // The C locale makes the cluster independent of the machine's
        // locales, and skipping fsync saves seconds on every test binary.
        .args(["--encoding", "UTF8", "--locale", "C", "--no-sync"])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", initdb.display()))?;
    if !output.status.success() {
        bail!(
            "{} failed ({}):\n{}{}",
            initdb.display(),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let mut hba = String::new();
    for line in hba_first {
        hba.push_str(line);
        hba.push('\n');
    }
    hba.push_str(PG_HBA);
    account.write_owned(&data_dir.join("pg_hba.conf"), &hba)?;

    let main_conf = data_dir.join("postgresql.conf");
    let mut file = OpenOptions::new()
        .append(true)
        .open(&main_conf)
        .with_context(|| format!("opening {}", main_conf.display()))?;
    writeln!(file, "\ninclude '{TESTKIT_CONF}'")
        .with_context(|| format!("writing {}", main_conf.display()))
}

/// Copies the TLS files into the data directory, readable by the server
/// only, since PostgreSQL refuses a private key that others may read.
fn install_ssl_files(
    ssl: &PgSsl,
    crl: Option<&Path>,
    account: &ServerAccount,
    data_dir: &Path,
) -> Result<()> {
    let mut files = vec![
        (ssl.cert_file.as_path(), SSL_CERT),
        (ssl.key_file.as_path(), SSL_KEY),
        (ssl.ca_file.as_path(), SSL_CA),
    ];
    if let Some(crl) = crl {
        files.push((crl, SSL_CRL));
    }
    for (from, name) in files {
        let to = data_dir.join(name);
        fs::copy(from, &to)
            .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
        fs::set_permissions(&to, fs::Permissions::from_mode(0o600))
            .with_context(|| format!("restricting permissions of {}", to.display()))?;
        account.take_ownership(&to)?;
    }
    Ok(())
}

/// The settings this crate controls, in postgresql.conf syntax.
fn server_conf(port: u16, socket_dir: &Path, opts: &PgOptions) -> String {
    let mut conf = format!(
        "# Written by intransit-testkit; later lines win.\n\
         listen_addresses = '{HOST}'\n\
         port = {port}\n\
         unix_socket_directories = {socket_dir}\n\
         max_connections = {max_connections}\n\
         password_encryption = 'scram-sha-256'\n\
         # Durability buys nothing in a throwaway test cluster.\n\
         fsync = off\n\
         synchronous_commit = off\n\
         full_page_writes = off\n",
        socket_dir = quote_literal(&socket_dir.to_string_lossy()),
        max_connections = opts.max_connections,
    );
    if opts.ssl.is_some() {
        conf.push_str(&format!(
            "ssl = on\n\
             ssl_cert_file = '{SSL_CERT}'\n\
             ssl_key_file = '{SSL_KEY}'\n\
             ssl_ca_file = '{SSL_CA}'\n\
             ssl_min_protocol_version = 'TLSv1.3'\n"
        ));
        if opts.ssl_crl.is_some() {
            conf.push_str(&format!("ssl_crl_file = '{SSL_CRL}'\n"));
        }
    }
    for line in &opts.extra_conf {
        conf.push_str(line);
        conf.push('\n');
    }
    conf
}

/// The directory holding `postgres` and `initdb`, looked for where Debian
/// and upstream builds put it.
fn server_bindir() -> Result<PathBuf> {
    first_server_bindir(&intransit_localdb::postgres_bindirs())
}

/// The first of `candidates` holding both `postgres` and `initdb`.
fn first_server_bindir(candidates: &[PathBuf]) -> Result<PathBuf> {
    candidates
        .iter()
        .find(|dir| is_executable(&dir.join("postgres")) && is_executable(&dir.join("initdb")))
        .cloned()
        .ok_or_else(|| {
            anyhow!(
                "the PostgreSQL server programs (postgres, initdb) were not found in \
                 `pg_config --bindir`, /usr/lib/postgresql/<version>/bin or PATH; \
                 install them with: {SERVER_INSTALL} (or run .ci/install-deps.sh)"
            )
        })
}

/// `name` as a quoted SQL identifier.
fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `value` as a quoted SQL string literal, which is also the quoting of a
/// postgresql.conf string.
fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// The log from byte `offset` on, or nothing if it cannot be read.
fn read_from(path: &Path, offset: u64) -> String {
    let mut text = Vec::new();
    let read = File::open(path).and_then(|mut file| {
        file.seek(SeekFrom::Start(offset))?;
        file.read_to_end(&mut text)
    });
    match read {
        Ok(_) => String::from_utf8_lossy(&text).into_owned(),
        Err(_) => String::new(),
    }
}

/// The last lines of the server log, for error messages.
fn log_tail(path: &Path) -> String {
    let text = read_from(path, 0);
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(LOG_TAIL_LINES);
    if lines.is_empty() {
        return "(the log is empty)".to_owned();
    }
    lines[start..].join("\n")
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn missing_server_error_names_the_apt_packages() {
        let err = first_server_bindir(&[PathBuf::from("/nonexistent/intransit/bin")])
            .expect_err("no server there");
        let message = format!("{err:#}");
        assert!(message.contains(SERVER_INSTALL), "{message}");
        assert!(
            message.contains("apt-get install -y postgresql postgresql-contrib"),
            "{message}"
        );
    }

    #[test]
    fn a_taken_port_is_retried_with_another() {
        let taken = std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
            .expect("binding a port to occupy");
        let taken_port = taken.local_addr().expect("occupied address").port();
        let mut ports = std::iter::once(taken_port).chain(std::iter::repeat_with(free_port));
        let mut next_port = || ports.next().unwrap_or_else(free_port);

        let pg = PgServer::start_on_ports(PgOptions::default(), &mut next_port)
            .expect("starting PostgreSQL after a taken port");
        assert_ne!(pg.port(), taken_port);
        assert_eq!(pg.psql("postgres", "SELECT 1").expect("query"), "1");
        let log = fs::read_to_string(pg.log_path()).expect("server log");
        assert!(log.contains(PORT_TAKEN), "{log}");
    }

    #[test]
    fn sql_quoting_doubles_quotes() {
        assert_eq!(quote_identifier(r#"a"b"#), r#""a""b""#);
        assert_eq!(quote_literal("it's"), "'it''s'");
    }

    #[test]
    fn ssl_settings_require_tls13() {
        let opts = PgOptions {
            ssl: Some(PgSsl {
                cert_file: PathBuf::from("server.crt"),
                key_file: PathBuf::from("server.key"),
                ca_file: PathBuf::from("ca.crt"),
            }),
            extra_conf: vec!["log_connections = on".to_owned()],
            ..PgOptions::default()
        };
        let conf = server_conf(5999, Path::new("/tmp/s"), &opts);
        assert!(conf.contains("ssl = on\n"), "{conf}");
        assert!(
            conf.contains("ssl_min_protocol_version = 'TLSv1.3'\n"),
            "{conf}"
        );
        assert!(conf.ends_with("log_connections = on\n"), "{conf}");
        let plain = server_conf(5999, Path::new("/tmp/s"), &PgOptions::default());
        assert!(!plain.contains("ssl"), "{plain}");
        assert!(plain.contains("max_connections = 200\n"), "{plain}");
    }
}
