//! The demo PostgreSQL: initdb on the first run, its configuration at
//! every start (TLS only over TCP, `hostssl ... cert`, the socket for the
//! proxy), `pg_ctl start`, and `pg_ctl stop` in fast mode.
//!
//! Layout, below `<state>/demo/postgres` (owned by the database's account):
//!
//! ```text
//! data/            the cluster (initdb'd as data.partial, renamed when complete)
//! socket/          unix_socket_directories, mode 0700
//! tls/             the server certificate chain, its key, intransit's CA
//! server.log       pg_ctl's log
//! port             the TCP port of the last run, reused when free
//! ```

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use tracing::warn;

use super::account::DatabaseAccount;
use super::{
    choose_port, dir_with_programs, log_len, log_tail, make_dir, missing_programs, output_text,
    previous_port, read_log_from, record_port, write_private, TlsFiles, DEMO_HOST, PORT_ATTEMPTS,
    PORT_TAKEN,
};

/// The Debian package with initdb, pg_ctl and postgres.
pub(super) const INSTALL: &str = "apt-get install postgresql";

/// The account PostgreSQL runs as when `up` runs as root (the package
/// creates it).
pub(super) const SYSTEM_ACCOUNT: &str = "postgres";

/// The database superuser initdb creates; the printed commands log in as it.
const SUPERUSER: &str = "postgres";

/// The programs the demo runs.
const PROGRAMS: [&str; 3] = ["initdb", "pg_ctl", "postgres"];

/// The settings file written at every start, included from postgresql.conf.
const DEMO_CONF: &str = "intransit-demo.conf";

/// How long pg_ctl waits for start-up and shutdown, in seconds.
const PG_CTL_WAIT_SECONDS: &str = "60";

/// Where the server programs are.
#[derive(Debug)]
pub(super) struct Programs {
    bindir: PathBuf,
}

impl Programs {
    /// The first directory holding initdb, pg_ctl and postgres: `bin_dir`
    /// alone when given, else `pg_config --bindir`,
    /// `/usr/lib/postgresql/<version>/bin` (newest first) and PATH.
    pub(super) fn find(bin_dir: Option<&Path>) -> Result<Programs> {
        let (candidates, searched) = match bin_dir {
            Some(dir) => (vec![dir.to_owned()], dir.display().to_string()),
            None => (
                intransit_localdb::postgres_bindirs(),
                "`pg_config --bindir`, /usr/lib/postgresql/*/bin and PATH".to_owned(),
            ),
        };
        dir_with_programs(&candidates, &PROGRAMS)
            .map(|bindir| Programs { bindir })
            .ok_or_else(|| {
                missing_programs(
                    "PostgreSQL server programs (initdb, pg_ctl, postgres)",
                    &searched,
                    INSTALL,
                )
            })
    }

    fn program(&self, name: &str) -> PathBuf {
        self.bindir.join(name)
    }
}

/// The longest socket path the server may use in `dir`.
pub(super) fn longest_socket_path(dir: &Path) -> PathBuf {
    dir.join("socket").join(".s.PGSQL.65535")
}

/// A demo PostgreSQL that pg_ctl started.
#[derive(Debug)]
pub(super) struct Running {
    pub(super) port: u16,
    /// `<dir>/socket/.s.PGSQL.<port>`.
    pub(super) socket: PathBuf,
    /// The major version, from PG_VERSION.
    pub(super) version: String,
    pg_ctl: PathBuf,
    data: PathBuf,
    dir: PathBuf,
    account: DatabaseAccount,
}

impl Running {
    /// `pg_ctl stop -m fast`: sessions are ended, the data is written out.
    pub(super) fn stop(self) -> Result<()> {
        pg_ctl_stop(&self.pg_ctl, &self.account, &self.dir, &self.data)
    }
}

/// Creates the cluster on the first run, writes its configuration, and
/// starts it.
pub(super) fn start(
    programs: &Programs,
    account: &DatabaseAccount,
    dir: &Path,
    tls: &TlsFiles,
    client_name: &str,
) -> Result<Running> {
    let data = dir.join("data");
    let socket_dir = dir.join("socket");
    let log = dir.join("server.log");
    make_dir(&socket_dir, 0o700)?;
    account.take_ownership(&socket_dir)?;
    if !data.join("PG_VERSION").is_file() {
        if data.exists() {
            bail!(
                "{} exists but holds no PostgreSQL cluster (no PG_VERSION); remove it and run \
                 again to start a new demo database",
                data.display()
            );
        }
        init_cluster(programs, account, dir, &data)?;
    }
    let version = fs::read_to_string(data.join("PG_VERSION"))
        .with_context(|| format!("reading {}", data.join("PG_VERSION").display()))?
        .trim()
        .to_owned();
    write_private(&data.join("pg_hba.conf"), PG_HBA.as_bytes(), account)?;
    write_private(
        &data.join("pg_ident.conf"),
        pg_ident(client_name).as_bytes(),
        account,
    )?;

    let pg_ctl = programs.program("pg_ctl");
    if is_running(&pg_ctl, account, dir, &data)? {
        // The postmaster outlived an earlier `up` that was killed; it has
        // that run's settings, so it is restarted with this run's.
        warn!(data = %data.display(), "a demo PostgreSQL from an earlier run is still running; restarting it");
        pg_ctl_stop(&pg_ctl, account, dir, &data)?;
    }

    let mut previous = previous_port(dir);
    for attempt in 1..=PORT_ATTEMPTS {
        let port = choose_port(previous.take())?;
        write_private(
            &data.join(DEMO_CONF),
            server_conf(port, &socket_dir, tls).as_bytes(),
            account,
        )?;
        let offset = log_len(&log);
        let output = account
            .command(&pg_ctl, dir)
            .args([
                "start",
                "--wait",
                "--timeout",
                PG_CTL_WAIT_SECONDS,
                "--silent",
            ])
            .arg("--pgdata")
            .arg(&data)
            .arg("--log")
            .arg(&log)
            .output()
            .with_context(|| format!("running {}", pg_ctl.display()))?;
        if output.status.success() {
            record_port(dir, port)?;
            return Ok(Running {
                port,
                socket: socket_dir.join(format!(".s.PGSQL.{port}")),
                version,
                pg_ctl,
                data,
                dir: dir.to_owned(),
                account: account.clone(),
            });
        }
        // A server that did not get ready in time may still be starting.
        let _ = pg_ctl_stop(&pg_ctl, account, dir, &data);
        if read_log_from(&log, offset).contains(PORT_TAKEN) && attempt < PORT_ATTEMPTS {
            continue;
        }
        bail!(
            "the demo PostgreSQL did not start (pg_ctl start: {}): {}; {}",
            output.status,
            output_text(&output),
            log_tail(&log, offset)
        );
    }
    bail!("the demo PostgreSQL found no free port in {PORT_ATTEMPTS} attempts")
}

/// Runs initdb into `data.partial` and renames it to `data` once complete,
/// so an interrupted first run never leaves a cluster that looks whole.
fn init_cluster(
    programs: &Programs,
    account: &DatabaseAccount,
    dir: &Path,
    data: &Path,
) -> Result<()> {
    let partial = dir.join("data.partial");
    if partial.exists() {
        fs::remove_dir_all(&partial)
            .with_context(|| format!("removing {} left by an earlier run", partial.display()))?;
    }
    let initdb = programs.program("initdb");
    let output = account
        .command(&initdb, dir)
        .arg("--pgdata")
        .arg(&partial)
        .args(["--username", SUPERUSER, "--auth", "trust"])
        // The C locale makes the cluster independent of the machine's
        // locales.
        .args(["--encoding", "UTF8", "--locale", "C"])
        .output()
        .with_context(|| format!("running {}", initdb.display()))?;
    if !output.status.success() {
        let _ = fs::remove_dir_all(&partial);
        bail!(
            "{} failed ({}): {}",
            initdb.display(),
            output.status,
            output_text(&output)
        );
    }
    let main_conf = partial.join("postgresql.conf");
    let mut conf = fs::read_to_string(&main_conf)
        .with_context(|| format!("reading {}", main_conf.display()))?;
    conf.push_str(&format!(
        "\n# intransit up --demo rewrites this file at every start.\ninclude '{DEMO_CONF}'\n"
    ));
    fs::write(&main_conf, conf).with_context(|| format!("writing {}", main_conf.display()))?;
    fs::rename(&partial, data)
        .with_context(|| format!("renaming {} to {}", partial.display(), data.display()))
}

/// Whether a postmaster is running on `data` (`pg_ctl status`).
fn is_running(pg_ctl: &Path, account: &DatabaseAccount, dir: &Path, data: &Path) -> Result<bool> {
    let output = account
        .command(pg_ctl, dir)
        .arg("status")
        .arg("--pgdata")
        .arg(data)
        .output()
        .with_context(|| format!("running {}", pg_ctl.display()))?;
    Ok(output.status.success())
}

fn pg_ctl_stop(pg_ctl: &Path, account: &DatabaseAccount, dir: &Path, data: &Path) -> Result<()> {
    let output = account
        .command(pg_ctl, dir)
        .args([
            "stop",
            "--mode",
            "fast",
            "--wait",
            "--timeout",
            PG_CTL_WAIT_SECONDS,
        ])
        .arg("--pgdata")
        .arg(data)
        .output()
        .with_context(|| format!("running {}", pg_ctl.display()))?;
    if !output.status.success() {
        bail!(
            "pg_ctl stop failed ({}): {}",
            output.status,
            output_text(&output)
        );
    }
    Ok(())
}

/// Who may log in, and how. The proxy comes through the unix socket, in a
/// directory only the database's account (and root) may enter; over TCP
/// only TLS with a client certificate from intransit's CA is accepted.
/// There is no `host` or `hostnossl` line, so a connection without TLS
/// matches nothing and is refused.
const PG_HBA: &str = "\
# Written by `intransit up --demo` at every start.
# TYPE   DATABASE USER ADDRESS        METHOD
local    all      all                 trust
hostssl  all      all  127.0.0.1/32   cert map=intransit
";

/// The certificate names that may log in over TCP: a certificate whose
/// common name is the database user, and the client certificate `up`
/// made, as the superuser.
fn pg_ident(client_name: &str) -> String {
    format!(
        "# Written by `intransit up --demo` at every start.\n\
         # MAP      CERTIFICATE-CN  DATABASE-USER\n\
         intransit  /^(.*)$         \\1\n\
         intransit  \"{}\"  {SUPERUSER}\n",
        client_name.replace('"', "")
    )
}

/// This run's settings, in postgresql.conf syntax.
fn server_conf(port: u16, socket_dir: &Path, tls: &TlsFiles) -> String {
    format!(
        "# Written by `intransit up --demo` at every start.\n\
         listen_addresses = '{DEMO_HOST}'\n\
         port = {port}\n\
         unix_socket_directories = {socket_dir}\n\
         unix_socket_permissions = 0700\n\
         ssl = on\n\
         ssl_cert_file = {chain}\n\
         ssl_key_file = {key}\n\
         ssl_ca_file = {ca}\n\
         ssl_min_protocol_version = 'TLSv1.3'\n",
        socket_dir = quote(socket_dir),
        chain = quote(&tls.chain),
        key = quote(&tls.key),
        ca = quote(&tls.ca),
    )
}

/// A path as a postgresql.conf string.
fn quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', "''"))
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn no_rule_admits_tcp_without_tls() {
        for line in PG_HBA.lines().filter(|l| !l.starts_with('#')) {
            let kind = line.split_whitespace().next().unwrap_or_default();
            assert!(
                kind == "local" || (kind == "hostssl" && line.contains(" cert")),
                "{line}"
            );
        }
    }

    #[test]
    fn settings_turn_tls_on_for_the_chosen_port() {
        let tls = TlsFiles {
            chain: "/s/tls/chain.pem".into(),
            key: "/s/tls/key.pem".into(),
            ca: "/s/it's/ca.pem".into(),
        };
        let conf = server_conf(5999, Path::new("/s/socket"), &tls);
        assert!(conf.contains("port = 5999\n"), "{conf}");
        assert!(conf.contains("ssl = on\n"), "{conf}");
        assert!(conf.contains("ssl_ca_file = '/s/it''s/ca.pem'\n"), "{conf}");
        assert!(conf.contains("listen_addresses = '127.0.0.1'\n"), "{conf}");
    }

    #[test]
    fn an_empty_bin_dir_is_the_only_place_looked() {
        let empty = tempfile::tempdir().expect("temporary directory");
        let message = Programs::find(Some(empty.path()))
            .expect_err("nothing there")
            .to_string();
        assert!(message.contains(INSTALL), "{message}");
        assert!(
            message.contains(&empty.path().display().to_string()),
            "{message}"
        );
    }
}
