//! A private, real MariaDB server for integration tests.
//!
//! This module owns `mariadb-install-db` into a temporary directory, the
//! server's option file, start-up on a random port with a retry when the
//! port was taken meanwhile, waiting for readiness, and SQL as root through
//! the `mariadb` client over the server's own unix socket. Stopping the
//! server and removing its directory belong to [`crate::supervisor`].
//!
//! It never touches a system server, its option files (every program runs
//! with `--no-defaults` or this module's own `--defaults-file`), a system
//! service or a well-known port.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::isolation::free_port;
use crate::supervisor::Supervisor;
use crate::tools::{find_on_path, is_executable, require_tool};
use intransit_localdb::ServerAccount;

/// The command that installs the server programs on Debian.
const SERVER_INSTALL: &str = "apt-get install -y mariadb-server";

/// The system account MariaDB runs as when the tests run as root. mariadbd
/// refuses to run as root unless told `--user=root`, and a server running
/// as root could write anywhere; running it as `mysql` keeps it in its
/// directory.
const SYSTEM_ACCOUNT: &str = "mysql";

/// The address the server listens on.
const HOST: &str = "127.0.0.1";

/// How long a server may take to accept connections after it was started.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// How often readiness is checked while waiting.
const READY_POLL: Duration = Duration::from_millis(50);

/// How many random ports to try, for the rare case where another process
/// takes the port between [`free_port`] and the bind.
const PORT_ATTEMPTS: u32 = 5;

/// What the server logs when its TCP port is taken.
const PORT_TAKEN: &str = "Address already in use";

/// How many lines of the server log an error message quotes.
const LOG_TAIL_LINES: usize = 40;

/// The longest path a unix socket may have on Linux, less its final NUL.
const MAX_SOCKET_PATH: usize = 107;

/// Where the TLS files given in [`MariaDbSsl`] are copied.
const SSL_CERT: &str = "server-cert.pem";
const SSL_KEY: &str = "server-key.pem";
const SSL_CA: &str = "ca.pem";

/// How a server started with [`MariaDbServer::start`] differs from the
/// default (plaintext, no transport requirement).
#[derive(Debug, Clone, Default)]
pub struct MariaDbOptions {
    /// Native TLS on the server itself (TLS 1.2 and 1.3, as MariaDB
    /// defaults); `None` for plaintext only.
    pub ssl: Option<MariaDbSsl>,
    /// `require_secure_transport`: refuse TCP logins without TLS.
    pub require_secure_transport: bool,
    /// Further option-file lines for the `[mariadbd]` section, such as
    /// `max_connections = 20`, written after everything else so they win.
    pub extra_conf: Vec<String>,
}

/// PEM files for a server with native TLS. They are copied into the
/// server's directory, so the originals may be removed once it started.
#[derive(Debug, Clone)]
pub struct MariaDbSsl {
    /// The server certificate chain.
    pub cert_file: PathBuf,
    /// The server's private key.
    pub key_file: PathBuf,
    /// The CA that signs client certificates (`ssl_ca`).
    pub ca_file: PathBuf,
}

/// An authentication plugin for [`MariaDbServer::create_user`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MariaDbAuth {
    /// `mysql_native_password`: SHA-1 over the scramble.
    NativePassword,
    /// `ed25519` (MariaDB's `auth_ed25519` plugin, installed on first use).
    Ed25519,
}

/// A MariaDB server of the test process's own, in a temporary directory.
///
/// [`MariaDbServer::shared`] gives every test in a test binary the same
/// server; tests keep apart by creating their own users and databases with
/// [`unique_name`](crate::unique_name). [`MariaDbServer::start`] gives a
/// test a server of its own, stopped and removed on drop.
#[derive(Debug)]
pub struct MariaDbServer {
    layout: Layout,
    port: u16,
    server: Child,
    supervisor: Supervisor,
    /// Serialises the check-then-install of the ed25519 plugin.
    ed25519_installed: Mutex<bool>,
}

impl MariaDbServer {
    /// The server shared by every test in this test binary, started by the
    /// first call. Concurrent first calls wait for the one start-up; if it
    /// failed, every call returns its error.
    ///
    /// The server is stopped and its directory removed after the test
    /// process exits, by the supervisor rather than by `Drop`.
    pub fn shared() -> Result<&'static MariaDbServer> {
        static SHARED: OnceLock<Result<MariaDbServer, String>> = OnceLock::new();
        SHARED
            .get_or_init(|| {
                MariaDbServer::start(MariaDbOptions::default()).map_err(|e| format!("{e:#}"))
            })
            .as_ref()
            .map_err(|message| anyhow!("starting the shared test MariaDB: {message}"))
    }

    /// Starts a server of its own with `opts`. Dropping it stops the server
    /// and removes its directory; so does the test process ending.
    pub fn start(opts: MariaDbOptions) -> Result<MariaDbServer> {
        MariaDbServer::start_on_ports(opts, &mut free_port)
    }

    /// [`MariaDbServer::start`], taking each port to try from `next_port`.
    fn start_on_ports(
        opts: MariaDbOptions,
        next_port: &mut dyn FnMut() -> u16,
    ) -> Result<MariaDbServer> {
        let mariadbd = server_program("mariadbd")?;
        let install_db = server_program("mariadb-install-db")?;
        require_tool("mariadb", "mariadb-client")?;
        let account = ServerAccount::detect(SYSTEM_ACCOUNT, || {
            format!(
                "the tests run as root and there is no `{SYSTEM_ACCOUNT}` user to run MariaDB \
                 as; install the server, which creates that user, with: {SERVER_INSTALL}"
            )
        })?;

        let tmp = tempfile::Builder::new()
            .prefix("intransit-mariadb-")
            .tempdir()
            .context("creating a temporary directory for MariaDB")?;
        // The supervisor comes first, so that a test process dying during
        // mariadb-install-db leaves no directory behind either.
        let mut supervisor = Supervisor::spawn(tmp.path())?;
        let layout = Layout::create(tmp.keep(), &account)?;

        install_db_files(&install_db, &account, &layout)?;
        if let Some(ssl) = &opts.ssl {
            install_ssl_files(ssl, &account, &layout.root)?;
        }
        account.write_owned(&layout.conf_path, &server_conf(&layout, &opts))?;

        let (port, server) = launch(&mariadbd, &account, &layout, &mut supervisor, next_port)?;
        Ok(MariaDbServer {
            layout,
            port,
            server,
            supervisor,
            ed25519_installed: Mutex::new(false),
        })
    }

    /// The TCP port on [`MariaDbServer::host`].
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The address the server listens on: `127.0.0.1`.
    pub fn host(&self) -> &str {
        HOST
    }

    /// `127.0.0.1:PORT`, for a proxy's `upstream`.
    pub fn addr(&self) -> String {
        format!("{HOST}:{}", self.port)
    }

    /// The server's unix socket.
    pub fn socket_path(&self) -> &Path {
        &self.layout.socket_path
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.layout.data_dir
    }

    /// The file holding the server's process id.
    pub fn pid_file(&self) -> &Path {
        &self.layout.pid_path
    }

    /// The option file the server reads.
    pub fn conf_path(&self) -> &Path {
        &self.layout.conf_path
    }

    /// The file the server logs to.
    pub fn log_path(&self) -> &Path {
        &self.layout.log_path
    }

    /// Runs `sql` as the database root user over the unix socket and
    /// returns the `mariadb` client's batch output (tab-separated, no
    /// column names), trimmed. Several statements run in order and the
    /// first failure stops them.
    pub fn root_sql(&self, sql: &str) -> Result<String> {
        let mut args: Vec<OsString> = vec!["--protocol=socket".into(), "--socket".into()];
        args.push(self.layout.socket_path.clone().into_os_string());
        args.push("--user=root".into());
        run_mariadb(&args, None, sql).context("running SQL as the MariaDB root user")
    }

    /// Runs `sql` as `user` with `password` over TCP (no TLS), in database
    /// `db` when given, and returns the batch output, trimmed.
    pub fn tcp_sql(
        &self,
        user: &str,
        password: &str,
        db: Option<&str>,
        sql: &str,
    ) -> Result<String> {
        let mut args: Vec<OsString> = vec![
            "--protocol=tcp".into(),
            format!("--host={HOST}").into(),
            format!("--port={}", self.port).into(),
            format!("--user={user}").into(),
            "--skip-ssl".into(),
        ];
        if let Some(db) = db {
            args.push(format!("--database={db}").into());
        }
        run_mariadb(&args, Some(password), sql)
            .with_context(|| format!("running SQL as {user} over TCP"))
    }

    /// Creates user `name`@`%`, who logs in with `password` through
    /// `auth`. Take the name from [`unique_name`](crate::unique_name) so
    /// parallel tests cannot collide.
    pub fn create_user(&self, name: &str, password: &str, auth: MariaDbAuth) -> Result<()> {
        let plugin = match auth {
            MariaDbAuth::NativePassword => "mysql_native_password",
            MariaDbAuth::Ed25519 => {
                self.install_ed25519()?;
                "ed25519"
            }
        };
        let sql = format!(
            "CREATE USER {}@'%' IDENTIFIED VIA {plugin} USING PASSWORD({});",
            quote_literal(name),
            quote_literal(password)
        );
        self.root_sql(&sql)
            .map(drop)
            .with_context(|| format!("creating MariaDB user {name} ({plugin})"))
    }

    /// Creates database `name` and gives `owner`@`%` every privilege on it.
    pub fn create_database(&self, name: &str, owner: &str) -> Result<()> {
        let sql = format!(
            "CREATE DATABASE {db}; GRANT ALL PRIVILEGES ON {db}.* TO {}@'%';",
            quote_literal(owner),
            db = quote_identifier(name),
        );
        self.root_sql(&sql)
            .map(drop)
            .with_context(|| format!("creating MariaDB database {name} for {owner}"))
    }

    /// Whether the ed25519 plugin can be installed on this server (Debian
    /// ships `auth_ed25519.so` in mariadb-server).
    pub fn ed25519_available(&self) -> bool {
        self.install_ed25519().is_ok()
    }

    /// Installs the server side of ed25519 unless it is already there.
    fn install_ed25519(&self) -> Result<()> {
        let mut installed = self
            .ed25519_installed
            .lock()
            .map_err(|_| anyhow!("a test panicked while installing the ed25519 plugin"))?;
        if *installed {
            return Ok(());
        }
        let present = self.root_sql(
            "SELECT COUNT(*) FROM information_schema.PLUGINS \
             WHERE PLUGIN_NAME = 'ed25519' AND PLUGIN_STATUS = 'ACTIVE'",
        )?;
        if present != "1" {
            self.root_sql("INSTALL SONAME 'auth_ed25519';")
                .context("installing the MariaDB ed25519 plugin (auth_ed25519.so)")?;
        }
        *installed = true;
        Ok(())
    }
}

impl Drop for MariaDbServer {
    fn drop(&mut self) {
        shut_down(&mut self.supervisor, &mut self.server);
    }
}

/// Runs the `mariadb` client with `args` (connection options), `password`
/// in its environment when given, and `sql` on standard input. Returns the
/// batch output (tab-separated, no column names), trimmed; the error
/// carries the client's standard error, which holds the server's message
/// such as `ERROR 1045 (28000): Access denied ...`.
///
/// The client runs with `--no-defaults`, so no option file of the machine
/// or the user changes what it does.
pub fn run_mariadb(args: &[OsString], password: Option<&str>, sql: &str) -> Result<String> {
    let client = require_tool("mariadb", "mariadb-client")?;
    let mut command = Command::new(&client);
    command
        .arg("--no-defaults")
        .args(["--batch", "--skip-column-names", "--connect-timeout=10"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    without_mysql_environment(&mut command);
    if let Some(password) = password {
        // The environment keeps the password off the command line, which
        // other users could read, and out of the client's warning.
        command.env("MYSQL_PWD", password);
    }
    let mut child = command
        .spawn()
        .with_context(|| format!("starting {}", client.display()))?;
    let stdin = child.stdin.take();
    // Writing from another thread keeps a large script from deadlocking
    // against the client filling its output pipe.
    let output = std::thread::scope(|scope| {
        scope.spawn(move || {
            if let Some(mut stdin) = stdin {
                let _ = stdin.write_all(sql.as_bytes());
            }
        });
        child.wait_with_output()
    })
    .with_context(|| format!("waiting for {}", client.display()))?;
    if !output.status.success() {
        bail!(
            "mariadb failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// Removes the variables the MariaDB client and server read (MYSQL_HOST,
/// MYSQL_TCP_PORT, MYSQL_PWD, MARIADB_HOME, ...), so that a developer's
/// shell cannot change which server a test talks to or how.
fn without_mysql_environment(command: &mut Command) {
    for (key, _) in std::env::vars_os() {
        let key_text = key.to_string_lossy();
        if key_text.starts_with("MYSQL") || key_text.starts_with("MARIADB") {
            command.env_remove(key);
        }
    }
}

/// Where a server's files live, all under one temporary directory.
#[derive(Debug)]
struct Layout {
    /// The temporary directory, removed by the supervisor.
    root: PathBuf,
    data_dir: PathBuf,
    socket_path: PathBuf,
    pid_path: PathBuf,
    log_path: PathBuf,
    conf_path: PathBuf,
    tmp_dir: PathBuf,
}

impl Layout {
    fn create(root: PathBuf, account: &ServerAccount) -> Result<Layout> {
        let layout = Layout {
            data_dir: root.join("data"),
            socket_path: root.join("mysql.sock"),
            pid_path: root.join("mariadbd.pid"),
            log_path: root.join("server.log"),
            conf_path: root.join("my.cnf"),
            tmp_dir: root.join("tmp"),
            root,
        };
        if layout.socket_path.as_os_str().len() > MAX_SOCKET_PATH {
            bail!(
                "the unix socket path {} would be longer than {MAX_SOCKET_PATH} bytes; \
                 set TMPDIR to a shorter directory such as /tmp",
                layout.socket_path.display()
            );
        }
        account.take_ownership(&layout.root)?;
        fs::create_dir(&layout.tmp_dir)
            .with_context(|| format!("creating {}", layout.tmp_dir.display()))?;
        account.take_ownership(&layout.tmp_dir)?;
        Ok(layout)
    }
}

/// The option file: everything but the port, which each start-up attempt
/// passes on the command line.
fn server_conf(layout: &Layout, opts: &MariaDbOptions) -> String {
    let mut conf = format!(
        "# Written by intransit-testkit; later lines win.\n\
         [mariadbd]\n\
         datadir = {data}\n\
         socket = {socket}\n\
         pid-file = {pid}\n\
         log-error = {log}\n\
         tmpdir = {tmp}\n\
         bind-address = {HOST}\n\
         skip-name-resolve\n\
         max_connections = 200\n\
         # Durability buys nothing in a throwaway test server.\n\
         innodb_flush_log_at_trx_commit = 0\n\
         innodb_buffer_pool_size = 32M\n",
        data = layout.data_dir.display(),
        socket = layout.socket_path.display(),
        pid = layout.pid_path.display(),
        log = layout.log_path.display(),
        tmp = layout.tmp_dir.display(),
    );
    if opts.ssl.is_some() {
        let file = |name: &str| layout.root.join(name).display().to_string();
        conf.push_str(&format!(
            "ssl-cert = {}\nssl-key = {}\nssl-ca = {}\n",
            file(SSL_CERT),
            file(SSL_KEY),
            file(SSL_CA)
        ));
    }
    if opts.require_secure_transport {
        conf.push_str("require-secure-transport = ON\n");
    }
    for line in &opts.extra_conf {
        conf.push_str(line);
        conf.push('\n');
    }
    conf
}

/// Runs mariadb-install-db: system tables, and a root user that logs in
/// without a password (only over the unix socket in practice, since root
/// exists only @localhost).
fn install_db_files(install_db: &Path, account: &ServerAccount, layout: &Layout) -> Result<()> {
    let output = account
        .command(install_db, &layout.root)
        .arg("--no-defaults")
        .arg(format!("--datadir={}", layout.data_dir.display()))
        // The bootstrap server's temporary tables go in a directory of this
        // server's own: concurrent installs sharing /tmp have been seen to
        // remove each other's `#sql-temptable-*` files.
        .arg(format!("--tmpdir={}", layout.tmp_dir.display()))
        .args(["--auth-root-authentication-method=normal", "--skip-test-db"])
        .arg("--skip-name-resolve")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", install_db.display()))?;
    if !output.status.success() {
        bail!(
            "{} failed ({}):\n{}{}",
            install_db.display(),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// Copies the TLS files next to the data directory, readable by the
/// server only.
fn install_ssl_files(ssl: &MariaDbSsl, account: &ServerAccount, root: &Path) -> Result<()> {
    for (from, name) in [
        (&ssl.cert_file, SSL_CERT),
        (&ssl.key_file, SSL_KEY),
        (&ssl.ca_file, SSL_CA),
    ] {
        let to = root.join(name);
        fs::copy(from, &to)
            .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
        fs::set_permissions(&to, fs::Permissions::from_mode(0o600))
            .with_context(|| format!("restricting permissions of {}", to.display()))?;
        account.take_ownership(&to)?;
    }
    Ok(())
}

/// Starts mariadbd on a port from `next_port`, trying the next one when
/// that port was taken meanwhile, and waits until it is ready. Returns the
/// port and the running server, which `supervisor` now watches.
fn launch(
    mariadbd: &Path,
    account: &ServerAccount,
    layout: &Layout,
    supervisor: &mut Supervisor,
    next_port: &mut dyn FnMut() -> u16,
) -> Result<(u16, Child)> {
    let log_path = &layout.log_path;
    let mut port = 0;
    for _ in 0..PORT_ATTEMPTS {
        port = next_port();
        let log_start = fs::metadata(log_path).map(|m| m.len()).unwrap_or(0);
        let mut server = account
            .command(mariadbd, &layout.root)
            // --defaults-file must come first; it also keeps every other
            // option file (/etc/mysql/...) out.
            .arg(format!("--defaults-file={}", layout.conf_path.display()))
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Kept out of the test's process group so that Ctrl-C in a
            // terminal reaches only the test process; the supervisor then
            // shuts the server down.
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {}", mariadbd.display()))?;
        supervisor.watch(server.id())?;

        match wait_until_ready(&mut server, port) {
            Ok(()) => return Ok((port, server)),
            Err(NotReady::Exited(_)) if read_from(log_path, log_start).contains(PORT_TAKEN) => {
                continue
            }
            Err(NotReady::Exited(status)) => bail!(
                "mariadbd exited during start-up ({status}); end of {}:\n{}",
                log_path.display(),
                log_tail(log_path)
            ),
            Err(NotReady::TimedOut) => {
                let tail = log_tail(log_path);
                shut_down(supervisor, &mut server);
                bail!(
                    "mariadbd did not accept connections within {READY_TIMEOUT:?}; \
                     end of {}:\n{tail}",
                    log_path.display()
                );
            }
            Err(NotReady::Broken(err)) => {
                shut_down(supervisor, &mut server);
                return Err(err);
            }
        }
    }
    bail!(
        "mariadbd could not bind a free port in {PORT_ATTEMPTS} attempts \
         (last {HOST}:{port}); end of {}:\n{}",
        log_path.display(),
        log_tail(log_path)
    )
}

/// Stops a server through its supervisor and reaps it.
fn shut_down(supervisor: &mut Supervisor, server: &mut Child) {
    supervisor.stop();
    // Only a supervisor killed from outside leaves the server running;
    // killing it then beats hanging in wait.
    if matches!(server.try_wait(), Ok(None)) {
        let _ = server.kill();
    }
    let _ = server.wait();
}

/// Why a started server is not serving.
enum NotReady {
    /// It exited; the log says why.
    Exited(std::process::ExitStatus),
    /// It is still running but did not become ready in time.
    TimedOut,
    /// Readiness could not be checked at all.
    Broken(anyhow::Error),
}

/// Waits until the server sends a protocol 10 greeting on its TCP port,
/// which it does only once start-up is complete.
fn wait_until_ready(server: &mut Child, port: u16) -> Result<(), NotReady> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        match server.try_wait() {
            Ok(Some(status)) => return Err(NotReady::Exited(status)),
            Ok(None) => {}
            Err(err) => {
                return Err(NotReady::Broken(
                    anyhow::Error::new(err).context("checking whether mariadbd is running"),
                ))
            }
        }
        if intransit_localdb::mysql_greets(HOST, port) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(NotReady::TimedOut);
        }
        std::thread::sleep(READY_POLL);
    }
}

/// A server program: on PATH, or in /usr/sbin and /usr/bin where Debian
/// puts them (root's PATH has /usr/sbin, other users' often does not).
fn server_program(name: &str) -> Result<PathBuf> {
    if let Some(path) = find_on_path(name) {
        return Ok(path);
    }
    first_executable(name, &[Path::new("/usr/sbin"), Path::new("/usr/bin")])
}

fn first_executable(name: &str, dirs: &[&Path]) -> Result<PathBuf> {
    dirs.iter()
        .map(|dir| dir.join(name))
        .find(|path| is_executable(path))
        .ok_or_else(|| {
            anyhow!(
                "the MariaDB server program `{name}` was not found on PATH, in /usr/sbin or \
                 /usr/bin; install it with: {SERVER_INSTALL} (or run .ci/install-deps.sh)"
            )
        })
}

/// `name` as a quoted MariaDB identifier.
fn quote_identifier(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// `value` as a quoted MariaDB string literal (backslash escapes on, as by
/// default).
fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
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
    if lines.is_empty() {
        return "(the log is empty)".to_owned();
    }
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn missing_server_error_names_the_apt_package() {
        let err = first_executable("mariadbd", &[Path::new("/nonexistent/intransit")])
            .expect_err("no server there");
        let message = format!("{err:#}");
        assert!(
            message.contains("apt-get install -y mariadb-server"),
            "{message}"
        );
    }

    #[test]
    fn sql_quoting() {
        assert_eq!(quote_identifier("a`b"), "`a``b`");
        assert_eq!(quote_literal(r"it's \ x"), r"'it''s \\ x'");
    }

    #[test]
    fn a_taken_port_is_retried_with_another() {
        let taken = std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
            .expect("binding a port to occupy");
        let taken_port = taken.local_addr().expect("occupied address").port();
        let mut ports = std::iter::once(taken_port).chain(std::iter::repeat_with(free_port));
        let mut next_port = || ports.next().unwrap_or_else(free_port);

        let server = MariaDbServer::start_on_ports(MariaDbOptions::default(), &mut next_port)
            .expect("starting MariaDB after a taken port");
        assert_ne!(server.port(), taken_port);
        assert_eq!(server.root_sql("SELECT 1").expect("query"), "1");
        let log = fs::read_to_string(server.log_path()).expect("server log");
        assert!(log.contains(PORT_TAKEN), "{log}");
    }

    #[test]
    fn options_reach_the_option_file() {
        let root = PathBuf::from("/tmp/x");
        let layout = Layout {
            data_dir: root.join("data"),
            socket_path: root.join("mysql.sock"),
            pid_path: root.join("mariadbd.pid"),
            log_path: root.join("server.log"),
            conf_path: root.join("my.cnf"),
            tmp_dir: root.join("tmp"),
            root,
        };
        let opts = MariaDbOptions {
            ssl: Some(MariaDbSsl {
                cert_file: "c".into(),
                key_file: "k".into(),
                ca_file: "a".into(),
            }),
            require_secure_transport: true,
            extra_conf: vec!["max_connections = 7".to_owned()],
        };
        let conf = server_conf(&layout, &opts);
        assert!(
            conf.contains("ssl-cert = /tmp/x/server-cert.pem\n"),
            "{conf}"
        );
        assert!(conf.contains("require-secure-transport = ON\n"), "{conf}");
        assert!(conf.ends_with("max_connections = 7\n"), "{conf}");
        let plain = server_conf(&layout, &MariaDbOptions::default());
        assert!(
            !plain.contains("ssl") && !plain.contains("secure"),
            "{plain}"
        );
    }
}
