//! `intransit rotate postgres`: where PostgreSQL keeps its certificate and
//! key, and how to make it reload them.
//!
//! With `--dsn`, the server itself says (`SHOW ssl_cert_file`, relative
//! paths being relative to `SHOW data_directory`) and reloads with
//! `SELECT pg_reload_conf()`. Without it, the configuration files in
//! `--data-dir`/`--conf-dir` say, and `pg_ctl reload` signals the
//! postmaster, run as the data directory's owner when intransit runs as
//! root (pg_ctl refuses root, and only the owner may signal the server).
//!
//! The PostgreSQL client is tokio-postgres with a rustls (aws-lc-rs)
//! connector: a protocol implementation in Rust on the one TLS stack the
//! project uses, instead of a dependency on libpq or on a psql binary.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};

use anyhow::{anyhow, bail, Context, Result};
use intransit_scan::Target;
use tokio_postgres::config::{Host, SslMode};

use super::files;
use super::pg_conf::PgSettings;
use super::{Located, Reload};
use crate::cli::RotatePostgresArgs;

/// PostgreSQL's defaults for the file settings, relative to the data
/// directory.
const DEFAULT_CERT_FILE: &str = "server.crt";
const DEFAULT_KEY_FILE: &str = "server.key";
const DEFAULT_PORT: u16 = 5432;

pub fn run(args: RotatePostgresArgs) -> Result<ExitCode> {
    if args.dsn.is_none() && args.data_dir.is_none() && args.conf_dir.is_none() {
        bail!(
            "say where the server is: --dsn \"postgres://...\", --data-dir DIR or --conf-dir DIR"
        );
    }
    super::block_on(async move {
        match &args.dsn {
            Some(dsn) => {
                let located = locate_by_dsn(dsn, &args).await?;
                super::rotate(located, &args.common).await
            }
            None => {
                let located = locate_by_files(&args)?;
                super::rotate(located, &args.common).await
            }
        }
    })
}

/// `SELECT pg_reload_conf()` over the administrative connection.
pub struct SqlReload {
    client: tokio_postgres::Client,
}

impl std::fmt::Debug for SqlReload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SqlReload")
    }
}

impl Reload for SqlReload {
    fn describe(&self) -> String {
        "SELECT pg_reload_conf()".into()
    }

    async fn reload(&mut self) -> Result<()> {
        let row = self
            .client
            .query_one("SELECT pg_reload_conf()", &[])
            .await
            .context(
                "SELECT pg_reload_conf() (it needs a superuser or EXECUTE on pg_reload_conf)",
            )?;
        match row.try_get::<_, bool>(0) {
            Ok(true) => Ok(()),
            Ok(false) => {
                bail!("pg_reload_conf() returned false: the server could not be signalled")
            }
            Err(e) => Err(anyhow!("reading the result of pg_reload_conf(): {e}")),
        }
    }
}

/// `pg_ctl reload -D DATA_DIR`, as the data directory's owner.
#[derive(Debug)]
pub struct PgCtlReload {
    pg_ctl: PathBuf,
    data_dir: PathBuf,
    /// The user and group to run as, when intransit runs as root.
    run_as: Option<(u32, u32)>,
}

impl Reload for PgCtlReload {
    fn describe(&self) -> String {
        format!(
            "{} reload -D {}{}",
            self.pg_ctl.display(),
            self.data_dir.display(),
            self.run_as
                .map(|(uid, _)| format!(" (as {})", files::user_name(uid)))
                .unwrap_or_default()
        )
    }

    async fn reload(&mut self) -> Result<()> {
        let mut command = std::process::Command::new(&self.pg_ctl);
        command
            .arg("reload")
            .arg("-D")
            .arg(&self.data_dir)
            .arg("-s")
            // The caller's directory may be closed to the server's account.
            .current_dir(&self.data_dir)
            .stdin(Stdio::null());
        if let Some((uid, gid)) = self.run_as {
            // The standard library drops root's supplementary groups when it
            // changes the user, as runuser would.
            command.uid(uid).gid(gid);
        }
        let output = command
            .output()
            .with_context(|| format!("running {}", self.pg_ctl.display()))?;
        if !output.status.success() {
            bail!(
                "{} failed ({}): {}",
                self.describe(),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(())
    }
}

/// The paths the running server reports, and a SQL reload.
async fn locate_by_dsn(dsn: &str, args: &RotatePostgresArgs) -> Result<Located<SqlReload>> {
    let mut config: tokio_postgres::Config = dsn
        .parse()
        .map_err(|e| anyhow!("--dsn is not a PostgreSQL connection string: {e}"))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(std::time::Duration::from_secs(10));
    }
    let over_socket = config
        .get_hosts()
        .iter()
        .all(|h| matches!(h, Host::Unix(_)));
    let client =
        if over_socket || config.get_ssl_mode() == SslMode::Disable {
            let (client, connection) = config.connect(tokio_postgres::NoTls).await.context(
                "connecting with --dsn (is the server running, and does --dsn name it?)",
            )?;
            tokio::spawn(connection);
            client
        } else {
            let tls = tokio_postgres_rustls::MakeRustlsConnect::new(
                super::admin_tls::unverified_client_config()?,
            );
            let (client, connection) = config.connect(tls).await.context(
                "connecting with --dsn (is the server running, and does --dsn name it?)",
            )?;
            tokio::spawn(connection);
            client
        };
    let show = |name: &'static str| {
        let client = &client;
        async move {
            let row = client
                .query_one(&format!("SHOW {name}"), &[])
                .await
                .with_context(|| {
                    format!("SHOW {name} (it needs a superuser or the pg_read_all_settings role)")
                })?;
            row.try_get::<_, String>(0)
                .map_err(|e| anyhow!("reading SHOW {name}: {e}"))
        }
    };
    if !is_on(&show("ssl").await?) {
        bail!("the server has ssl = off: there is no certificate to rotate; set ssl = on with a certificate first");
    }
    let data_dir = PathBuf::from(show("data_directory").await?);
    if let Some(given) = &args.data_dir {
        if !same_dir(given, &data_dir) {
            bail!(
                "the server at --dsn uses the data directory {}, not --data-dir {}; is --dsn the right server?",
                data_dir.display(),
                given.display()
            );
        }
    }
    let cert = data_dir.join(show("ssl_cert_file").await?);
    let key = data_dir.join(show("ssl_key_file").await?);
    let ca = Some(show("ssl_ca_file").await?)
        .filter(|s| !s.is_empty())
        .map(|s| data_dir.join(s));
    let verify = match &args.common.verify_addr {
        Some(addr) => super::verify_target("postgres", addr)?,
        None => {
            let tcp = config.get_hosts().iter().find_map(|h| match h {
                Host::Tcp(host) => Some(host.clone()),
                Host::Unix(_) => None,
            });
            let port: u16 = show("port")
                .await?
                .parse()
                .map_err(|e| anyhow!("SHOW port: {e}"))?;
            Target::Postgres {
                host: tcp.unwrap_or_else(|| "127.0.0.1".into()),
                port,
            }
        }
    };
    Ok(Located {
        kind: "postgres",
        cert,
        key,
        ca,
        source: "SHOW over the --dsn connection".into(),
        verify,
        reloader: SqlReload { client },
    })
}

/// The paths the configuration files set, and `pg_ctl reload`.
fn locate_by_files(args: &RotatePostgresArgs) -> Result<Located<PgCtlReload>> {
    let conf_dir = match (&args.conf_dir, &args.data_dir) {
        (Some(c), _) => c.clone(),
        (None, Some(d)) => d.clone(),
        (None, None) => bail!("give --data-dir DIR or --conf-dir DIR"),
    };
    let settings = PgSettings::load(&conf_dir)?;
    let data_dir = match &args.data_dir {
        Some(d) => d.clone(),
        None => settings.data_dir(&conf_dir),
    };
    let value = |name: &str| settings.get(name).map(|s| s.value.clone());
    if !value("ssl").is_some_and(|v| is_on(&v)) {
        bail!(
            "ssl is not on in {}: there is no certificate to rotate; set ssl = on with a certificate first",
            conf_dir.join("postgresql.conf").display()
        );
    }
    let cert = data_dir.join(value("ssl_cert_file").unwrap_or_else(|| DEFAULT_CERT_FILE.into()));
    let key = data_dir.join(value("ssl_key_file").unwrap_or_else(|| DEFAULT_KEY_FILE.into()));
    let ca = value("ssl_ca_file")
        .filter(|s| !s.is_empty())
        .map(|s| data_dir.join(s));
    // A running server says where it listens, wherever its port was set
    // (the command line wins over postgresql.conf).
    let running = match &args.common.verify_addr {
        Some(_) => None,
        None => RunningServer::read(&data_dir)?,
    };
    let verify = match (&args.common.verify_addr, running) {
        (Some(addr), _) => super::verify_target("postgres", addr)?,
        (None, Some(running)) => {
            let host = running.listen_address.ok_or_else(|| {
                anyhow!("the server listens on no TCP address (postmaster.pid in {} names none); give --verify-addr HOST:PORT", data_dir.display())
            })?;
            Target::Postgres {
                host,
                port: running.port,
            }
        }
        (None, None) => {
            let port = match value("port") {
                Some(p) => p
                    .parse()
                    .map_err(|e| anyhow!("port = {p:?} in the configuration: {e}"))?,
                None => DEFAULT_PORT,
            };
            let host = first_listen_address(&value("listen_addresses").unwrap_or_else(|| "localhost".into()))
                .ok_or_else(|| anyhow!("the server listens on no TCP address (listen_addresses = ''); give --verify-addr HOST:PORT"))?;
            Target::Postgres { host, port }
        }
    };
    let (uid, gid) = files::owner_of(&data_dir)?;
    let run_as = (files::current_uid() == Some(0) && uid != 0).then_some((uid, gid));
    Ok(Located {
        kind: "postgres",
        cert,
        key,
        ca,
        source: format!(
            "the configuration in {}",
            conf_dir.join("postgresql.conf").display()
        ),
        verify,
        reloader: PgCtlReload {
            pg_ctl: find_pg_ctl(&data_dir)?,
            data_dir,
            run_as,
        },
    })
}

/// Where a running server listens, from the `postmaster.pid` in its data
/// directory: line 4 is the port and line 6 the first listen address
/// (empty when it listens on no TCP address), as the server itself writes
/// them, whether they came from postgresql.conf or the command line.
#[derive(Debug, PartialEq, Eq)]
struct RunningServer {
    port: u16,
    listen_address: Option<String>,
}

impl RunningServer {
    /// `None` when no server runs on `data_dir` (no `postmaster.pid`).
    fn read(data_dir: &Path) -> Result<Option<RunningServer>> {
        let path = data_dir.join("postmaster.pid");
        match std::fs::read_to_string(&path) {
            Ok(text) => RunningServer::parse(&text)
                .map(Some)
                .with_context(|| format!("reading {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(anyhow!("reading {}: {e}", path.display())),
        }
    }

    fn parse(text: &str) -> Result<RunningServer> {
        let lines: Vec<&str> = text.lines().collect();
        let port = lines
            .get(3)
            .and_then(|l| l.trim().parse().ok())
            .ok_or_else(|| anyhow!("line 4 is not a port number"))?;
        let listen_address = lines.get(5).and_then(|l| first_listen_address(l.trim()));
        Ok(RunningServer {
            port,
            listen_address,
        })
    }
}

/// The address to check the served certificate on: the first of
/// `listen_addresses`, with wildcards and `localhost` meaning loopback.
fn first_listen_address(listen: &str) -> Option<String> {
    let first = listen.split(',').map(str::trim).find(|s| !s.is_empty())?;
    Some(match first {
        "*" | "0.0.0.0" | "localhost" => "127.0.0.1".into(),
        "::" => "::1".into(),
        other => other.into(),
    })
}

/// pg_ctl of the data directory's major version where Debian puts it,
/// else the one on PATH.
fn find_pg_ctl(data_dir: &Path) -> Result<PathBuf> {
    if let Ok(version) = std::fs::read_to_string(data_dir.join("PG_VERSION")) {
        let candidate = Path::new("/usr/lib/postgresql")
            .join(version.trim())
            .join("bin/pg_ctl");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("pg_ctl"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            anyhow!("pg_ctl is not installed or not on PATH; install the PostgreSQL server package, or give --dsn to reload with SELECT pg_reload_conf()")
        })
}

/// PostgreSQL's spellings of a true boolean.
fn is_on(value: &str) -> bool {
    matches!(
        value.trim().to_ascii_lowercase().as_str(),
        "on" | "true" | "yes" | "1" | "t" | "y"
    )
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {

    #[test]
    #[allow(clippy::unwrap_used)]
    fn a_running_servers_address_comes_from_postmaster_pid() {
        let pid = "4242\n/var/lib/postgresql/15/main\n1765069200\n5433\n/var/run/postgresql\n*\n  5433001   1\nready   \n";
        assert_eq!(
            RunningServer::parse(pid).unwrap(),
            RunningServer {
                port: 5433,
                listen_address: Some("127.0.0.1".into())
            }
        );
        let unix_only = pid.replace("\n*\n", "\n\n");
        assert_eq!(
            RunningServer::parse(&unix_only).unwrap().listen_address,
            None
        );
        let specific = pid.replace("\n*\n", "\n10.0.0.5\n");
        assert_eq!(
            RunningServer::parse(&specific)
                .unwrap()
                .listen_address
                .as_deref(),
            Some("10.0.0.5")
        );
        assert!(RunningServer::parse("4242\n/data\n").is_err());
    }

    use super::*;

    #[test]
    fn listen_addresses_map_to_a_dialable_address() {
        assert_eq!(first_listen_address("*"), Some("127.0.0.1".into()));
        assert_eq!(first_listen_address("localhost"), Some("127.0.0.1".into()));
        assert_eq!(
            first_listen_address(" 10.0.0.5 , 127.0.0.1"),
            Some("10.0.0.5".into())
        );
        assert_eq!(first_listen_address("::"), Some("::1".into()));
        assert_eq!(first_listen_address(""), None);
    }

    #[test]
    fn booleans_as_postgresql_spells_them() {
        assert!(is_on("on"));
        assert!(is_on("TRUE"));
        assert!(!is_on("off"));
        assert!(!is_on(""));
    }
}
