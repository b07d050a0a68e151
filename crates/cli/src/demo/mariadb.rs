//! The demo MariaDB: mariadb-install-db on the first run, an option file
//! of its own at every start (TLS with intransit's CA,
//! `require_secure_transport`, the socket for the proxy), mariadbd as a
//! child process, and SIGTERM (a clean shutdown) to stop it.
//!
//! Layout, below `<state>/demo/mariadb` (owned by the database's account):
//!
//! ```text
//! data/            the data directory (installed as data.partial, renamed when complete)
//! tls/             the server certificate chain, its key, intransit's CA
//! tmp/             the server's temporary files
//! my.cnf           the only option file the server reads (--defaults-file)
//! init.sql         run at every start: root@127.0.0.1 REQUIRE X509
//! mariadbd.sock    the unix socket, the proxy's upstream
//! mariadbd.pid, server.log, port
//! ```

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rustix::process::{kill_process, test_kill_process, Pid, Signal};
use tracing::warn;

use super::account::DatabaseAccount;
use super::{
    choose_port, dir_with_programs, log_len, log_tail, make_dir, missing_programs, output_text,
    path_dirs, previous_port, read_log_from, record_port, write_private, TlsFiles, DEMO_HOST,
    PORT_ATTEMPTS, PORT_TAKEN,
};

/// The Debian package with mariadbd and mariadb-install-db.
pub(super) const INSTALL: &str = "apt-get install mariadb-server";

/// The account MariaDB runs as when `up` runs as root (the package
/// creates it).
pub(super) const SYSTEM_ACCOUNT: &str = "mysql";

/// How long start-up and shutdown may take.
const WAIT: Duration = Duration::from_secs(60);

/// How often readiness and exit are checked.
const POLL: Duration = Duration::from_millis(50);

/// Where the server programs are.
#[derive(Debug)]
pub(super) struct Programs {
    mariadbd: PathBuf,
    install_db: PathBuf,
}

impl Programs {
    /// mariadbd and mariadb-install-db: in `bin_dir` alone when given, else
    /// on PATH, in /usr/sbin or /usr/bin (Debian puts mariadbd in
    /// /usr/sbin, which is not on every user's PATH).
    pub(super) fn find(bin_dir: Option<&Path>) -> Result<Programs> {
        let (candidates, searched) = match bin_dir {
            Some(dir) => (vec![dir.to_owned()], dir.display().to_string()),
            None => {
                let mut dirs = path_dirs();
                dirs.push("/usr/sbin".into());
                dirs.push("/usr/bin".into());
                (dirs, "PATH, /usr/sbin and /usr/bin".to_owned())
            }
        };
        let find = |name: &str| dir_with_programs(&candidates, &[name]).map(|d| d.join(name));
        match (find("mariadbd"), find("mariadb-install-db")) {
            (Some(mariadbd), Some(install_db)) => Ok(Programs {
                mariadbd,
                install_db,
            }),
            _ => Err(missing_programs(
                "MariaDB server programs (mariadbd, mariadb-install-db)",
                &searched,
                INSTALL,
            )),
        }
    }
}

/// The server's unix socket in `dir`.
pub(super) fn socket_path(dir: &Path) -> PathBuf {
    dir.join("mariadbd.sock")
}

/// A demo MariaDB running as a child process.
#[derive(Debug)]
pub(super) struct Running {
    pub(super) port: u16,
    pub(super) socket: PathBuf,
    /// As `mariadbd --version` says, e.g. `10.11.6-MariaDB-0+deb12u1`.
    pub(super) version: String,
    server: Child,
}

impl Running {
    /// SIGTERM, MariaDB's clean shutdown, and a wait for it.
    pub(super) fn stop(mut self) -> Result<()> {
        let pid = Pid::from_child(&self.server);
        let _ = kill_process(pid, Signal::TERM);
        let deadline = Instant::now() + WAIT;
        loop {
            if self
                .server
                .try_wait()
                .context("waiting for mariadbd")?
                .is_some()
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = self.server.kill();
                let _ = self.server.wait();
                bail!("mariadbd did not stop within {WAIT:?} of SIGTERM; it was killed");
            }
            std::thread::sleep(POLL);
        }
    }
}

/// Installs the data directory on the first run, writes the option file
/// and the start-up SQL, and starts the server.
pub(super) fn start(
    programs: &Programs,
    account: &DatabaseAccount,
    dir: &Path,
    tls: &TlsFiles,
) -> Result<Running> {
    let layout = Layout::in_dir(dir);
    make_dir(&layout.tmp, 0o700)?;
    account.take_ownership(&layout.tmp)?;
    if !layout.data.join("mysql").is_dir() {
        if layout.data.exists() {
            bail!(
                "{} exists but holds no MariaDB data directory (no mysql/); remove it and run \
                 again to start a new demo database",
                layout.data.display()
            );
        }
        install_data(programs, account, &layout)?;
    }
    write_private(&layout.init_sql, INIT_SQL.as_bytes(), account)?;
    stop_leftover(&layout)?;
    let version = server_version(&programs.mariadbd)?;

    let mut previous = previous_port(dir);
    for attempt in 1..=PORT_ATTEMPTS {
        let port = choose_port(previous.take())?;
        write_private(
            &layout.conf,
            option_file(&layout, port, tls).as_bytes(),
            account,
        )?;
        let offset = log_len(&layout.log);
        let mut server = account
            .command(&programs.mariadbd, dir)
            // --defaults-file must come first; it keeps every other option
            // file (/etc/mysql/...) out.
            .arg(format!("--defaults-file={}", layout.conf.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Out of the terminal's process group: Ctrl-C reaches
            // intransit, which stops the server after the proxy.
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {}", programs.mariadbd.display()))?;
        match wait_until_ready(&mut server, port) {
            Ok(()) => {
                record_port(dir, port)?;
                return Ok(Running {
                    port,
                    socket: layout.socket,
                    version,
                    server,
                });
            }
            Err(e) => {
                let exited = matches!(server.try_wait(), Ok(Some(_)));
                if !exited {
                    let _ = server.kill();
                }
                let _ = server.wait();
                if exited
                    && read_log_from(&layout.log, offset).contains(PORT_TAKEN)
                    && attempt < PORT_ATTEMPTS
                {
                    continue;
                }
                bail!(
                    "the demo MariaDB did not start: {e}; {}",
                    log_tail(&layout.log, offset)
                );
            }
        }
    }
    bail!("the demo MariaDB found no free port in {PORT_ATTEMPTS} attempts")
}

/// The files below the demo directory.
struct Layout {
    dir: PathBuf,
    data: PathBuf,
    tmp: PathBuf,
    conf: PathBuf,
    init_sql: PathBuf,
    socket: PathBuf,
    pid: PathBuf,
    log: PathBuf,
}

impl Layout {
    fn in_dir(dir: &Path) -> Layout {
        Layout {
            dir: dir.to_owned(),
            data: dir.join("data"),
            tmp: dir.join("tmp"),
            conf: dir.join("my.cnf"),
            init_sql: dir.join("init.sql"),
            socket: socket_path(dir),
            pid: dir.join("mariadbd.pid"),
            log: dir.join("server.log"),
        }
    }
}

/// Runs mariadb-install-db into `data.partial` and renames it once
/// complete: system tables, and root@localhost without a password, which
/// exists for unix-socket logins only.
fn install_data(programs: &Programs, account: &DatabaseAccount, layout: &Layout) -> Result<()> {
    let partial = layout.dir.join("data.partial");
    if partial.exists() {
        fs::remove_dir_all(&partial)
            .with_context(|| format!("removing {} left by an earlier run", partial.display()))?;
    }
    let output = account
        .command(&programs.install_db, &layout.dir)
        .arg("--no-defaults")
        .arg(format!("--datadir={}", partial.display()))
        .arg(format!("--tmpdir={}", layout.tmp.display()))
        .args(["--auth-root-authentication-method=normal", "--skip-test-db"])
        .arg("--skip-name-resolve")
        .output()
        .with_context(|| format!("running {}", programs.install_db.display()))?;
    if !output.status.success() {
        let _ = fs::remove_dir_all(&partial);
        bail!(
            "{} failed ({}): {}",
            programs.install_db.display(),
            output.status,
            output_text(&output)
        );
    }
    fs::rename(&partial, &layout.data).with_context(|| {
        format!(
            "renaming {} to {}",
            partial.display(),
            layout.data.display()
        )
    })
}

/// Stops a mariadbd that outlived an earlier `up` (killed before it could
/// stop it), which would hold the data directory's locks. Only a process
/// started with this directory's option file counts: the pid in a stale
/// pid file may belong to anyone by now.
fn stop_leftover(layout: &Layout) -> Result<()> {
    let Some(pid) = fs::read_to_string(&layout.pid)
        .ok()
        .and_then(|text| text.trim().parse::<i32>().ok())
        .and_then(Pid::from_raw)
    else {
        return Ok(());
    };
    let ours = format!("--defaults-file={}", layout.conf.display());
    let cmdline = fs::read(format!("/proc/{}/cmdline", pid.as_raw_nonzero())).unwrap_or_default();
    if !cmdline
        .split(|byte| *byte == 0)
        .any(|arg| arg == ours.as_bytes())
    {
        return Ok(());
    }
    warn!(
        pid = pid.as_raw_nonzero().get(),
        "a demo MariaDB from an earlier run is still running; stopping it"
    );
    let _ = kill_process(pid, Signal::TERM);
    let deadline = Instant::now() + WAIT;
    while test_kill_process(pid).is_ok() {
        if Instant::now() >= deadline {
            bail!(
                "the demo MariaDB of an earlier run (pid {}) did not stop on SIGTERM; stop it \
                 and run again",
                pid.as_raw_nonzero()
            );
        }
        std::thread::sleep(POLL);
    }
    Ok(())
}

/// The version `mariadbd --version` prints (`... Ver 10.11.6-MariaDB ...`).
fn server_version(mariadbd: &Path) -> Result<String> {
    let output = std::process::Command::new(mariadbd)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {} --version", mariadbd.display()))?;
    let text = String::from_utf8_lossy(&output.stdout);
    let version = text
        .split_whitespace()
        .skip_while(|word| *word != "Ver")
        .nth(1)
        .unwrap_or("(unknown version)");
    Ok(version
        .split_once("-MariaDB")
        .map_or(version, |(number, _)| number)
        .to_owned())
}

/// Waits until the server sends a protocol 10 greeting on its TCP port,
/// which it does once start-up (the init file included) is complete.
fn wait_until_ready(server: &mut Child, port: u16) -> Result<()> {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = server.try_wait().context("checking on mariadbd")? {
            bail!("mariadbd exited during start-up ({status})");
        }
        if intransit_localdb::mysql_greets(DEMO_HOST, port) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("mariadbd did not accept connections within {WAIT:?}");
        }
        std::thread::sleep(POLL);
    }
}

/// Run at every start. mariadb-install-db makes root without a password
/// for the socket and for 127.0.0.1, ::1 and the host's name; over TCP,
/// root must instead present a client certificate from intransit's CA,
/// and the other TCP accounts go. root@localhost (the unix socket, the
/// proxy's way in) stays as it is.
const INIT_SQL: &str = "\
CREATE USER IF NOT EXISTS 'root'@'127.0.0.1';
ALTER USER 'root'@'127.0.0.1' REQUIRE X509;
GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION;
DELETE FROM mysql.global_priv WHERE User = 'root' AND Host NOT IN ('localhost', '127.0.0.1');
FLUSH PRIVILEGES;
";

/// The option file: TCP on loopback with TLS required
/// (`require_secure_transport`; the unix socket counts as secure).
fn option_file(layout: &Layout, port: u16, tls: &TlsFiles) -> String {
    format!(
        "# Written by `intransit up --demo` at every start.\n\
         [mariadbd]\n\
         datadir = {data}\n\
         socket = {socket}\n\
         pid-file = {pid}\n\
         log-error = {log}\n\
         tmpdir = {tmp}\n\
         init-file = {init}\n\
         port = {port}\n\
         bind-address = {DEMO_HOST}\n\
         skip-name-resolve\n\
         ssl-cert = {chain}\n\
         ssl-key = {key}\n\
         ssl-ca = {ca}\n\
         require-secure-transport = ON\n\
         innodb_buffer_pool_size = 64M\n",
        data = layout.data.display(),
        socket = layout.socket.display(),
        pid = layout.pid.display(),
        log = layout.log.display(),
        tmp = layout.tmp.display(),
        init = layout.init_sql.display(),
        chain = tls.chain.display(),
        key = tls.key.display(),
        ca = tls.ca.display(),
    )
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn the_option_file_requires_tls_over_tcp() {
        let layout = Layout::in_dir(Path::new("/s/demo/mariadb"));
        let tls = TlsFiles {
            chain: "/s/tls/chain.pem".into(),
            key: "/s/tls/key.pem".into(),
            ca: "/s/tls/ca.pem".into(),
        };
        let conf = option_file(&layout, 3999, &tls);
        assert!(conf.contains("require-secure-transport = ON\n"), "{conf}");
        assert!(conf.contains("port = 3999\n"), "{conf}");
        assert!(conf.contains("ssl-ca = /s/tls/ca.pem\n"), "{conf}");
        assert!(
            conf.contains("socket = /s/demo/mariadb/mariadbd.sock\n"),
            "{conf}"
        );
    }

    #[test]
    fn an_empty_bin_dir_is_the_only_place_looked() {
        let empty = tempfile::tempdir().expect("temporary directory");
        let message = Programs::find(Some(empty.path()))
            .expect_err("nothing there")
            .to_string();
        assert!(message.contains(INSTALL), "{message}");
    }
}
