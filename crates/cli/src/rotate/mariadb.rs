//! `intransit rotate mariadb`: where MariaDB or MySQL keeps its
//! certificate and key (`@@ssl_cert`, `@@ssl_key`, relative to
//! `@@datadir`), and how to make it reload them: `FLUSH SSL` on MariaDB
//! 10.4 and later, `ALTER INSTANCE RELOAD TLS` on MySQL 8.0.16 and later,
//! chosen from the server's version string.
//!
//! The client is mysql_async (rustls on aws-lc-rs), already used by the
//! test suite: a protocol implementation in Rust on the project's one TLS
//! stack, rather than a dependency on the `mariadb` command-line client
//! being installed and on parsing its output. Over TCP the connection uses
//! TLS without verifying the server's chain, for the reason given in
//! `admin_tls`; over `--socket` it uses none.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use intransit_scan::Target;
use mysql_async::prelude::Queryable;

use super::{Located, Reload};
use crate::cli::RotateMariaDbArgs;

pub fn run(args: RotateMariaDbArgs) -> Result<ExitCode> {
    super::block_on(async move {
        let located = locate(&args).await?;
        super::rotate(located, &args.common).await
    })
}

/// The statement that makes a server re-read its TLS files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadStatement {
    /// MariaDB 10.4 and later.
    FlushSsl,
    /// MySQL 8.0.16 and later.
    AlterInstanceReloadTls,
}

impl ReloadStatement {
    fn sql(self) -> &'static str {
        match self {
            ReloadStatement::FlushSsl => "FLUSH SSL",
            ReloadStatement::AlterInstanceReloadTls => "ALTER INSTANCE RELOAD TLS",
        }
    }

    /// The statement for a server that reports `version` (`SELECT
    /// VERSION()`), or why there is none.
    pub fn for_version(version: &str) -> Result<ReloadStatement, String> {
        let numbers: Vec<u32> = version
            .split(|c: char| !c.is_ascii_digit())
            .take(3)
            .map(|n| n.parse().unwrap_or(0))
            .collect();
        let at_least = |want: &[u32]| numbers.as_slice() >= want;
        if version.to_ascii_lowercase().contains("mariadb") {
            if at_least(&[10, 4]) {
                Ok(ReloadStatement::FlushSsl)
            } else {
                Err(format!(
                    "MariaDB {version} cannot reload its certificate without a restart (FLUSH SSL came in 10.4)"
                ))
            }
        } else if at_least(&[8, 0, 16]) {
            Ok(ReloadStatement::AlterInstanceReloadTls)
        } else {
            Err(format!(
                "MySQL {version} cannot reload its certificate without a restart (ALTER INSTANCE RELOAD TLS came in 8.0.16)"
            ))
        }
    }
}

/// The reload statement over the administrative connection.
pub struct SqlReload {
    conn: mysql_async::Conn,
    statement: ReloadStatement,
}

impl std::fmt::Debug for SqlReload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlReload")
            .field("statement", &self.statement)
            .finish_non_exhaustive()
    }
}

impl Reload for SqlReload {
    fn describe(&self) -> String {
        self.statement.sql().into()
    }

    async fn reload(&mut self) -> Result<()> {
        self.conn
            .query_drop(self.statement.sql())
            .await
            .with_context(|| {
                format!(
                    "{} (it needs the RELOAD privilege on MariaDB, CONNECTION_ADMIN on MySQL)",
                    self.statement.sql()
                )
            })
    }
}

async fn locate(args: &RotateMariaDbArgs) -> Result<Located<SqlReload>> {
    let opts = mysql_async::Opts::from_url(&args.dsn)
        .map_err(|e| anyhow!("--dsn is not a mysql://user:password@host:port URL: {e}"))?;
    let tcp_host = opts.ip_or_hostname().to_owned();
    let tcp_port = opts.tcp_port();
    // Without this, mysql_async would switch a loopback TCP connection to
    // the socket the server reports, which is not what the user asked for.
    let mut builder = mysql_async::OptsBuilder::from_opts(opts).prefer_socket(false);
    builder = match &args.socket {
        Some(socket) => builder.socket(Some(socket.to_string_lossy())),
        None => builder.ssl_opts(
            mysql_async::SslOpts::default()
                .with_danger_accept_invalid_certs(true)
                .with_danger_skip_domain_validation(true),
        ),
    };
    let mut conn = mysql_async::Conn::new(builder)
        .await
        .context("connecting with --dsn (is the server running, and does --dsn name it?)")?;
    // A Row, not a tuple: converting a tuple panics on a value that does
    // not convert, and a path need not be UTF-8.
    let row: Option<mysql_async::Row> = conn
        .query_first(
            "SELECT @@ssl_cert, @@ssl_key, @@ssl_ca, @@datadir, CAST(@@port AS CHAR), VERSION()",
        )
        .await
        .context("reading @@ssl_cert, @@ssl_key, @@ssl_ca, @@datadir")?;
    let Some(row) = row else {
        bail!("the server returned no row for SELECT @@ssl_cert, ...");
    };
    let column = |i: usize| -> Result<Option<String>> {
        match row.get_opt::<Option<String>, _>(i) {
            None => Ok(None),
            Some(Ok(value)) => Ok(value),
            Some(Err(e)) => Err(anyhow!("column {i} of SELECT @@ssl_cert, ...: {e}")),
        }
    };
    let (cert, key, ca, datadir, port, version) = (
        column(0)?,
        column(1)?,
        column(2)?,
        column(3)?,
        column(4)?,
        column(5)?,
    );
    let nonempty = |v: Option<String>| v.filter(|s| !s.is_empty());
    let (Some(cert), Some(key)) = (nonempty(cert), nonempty(key)) else {
        bail!("the server has no ssl_cert/ssl_key configured: there is no certificate to rotate; configure TLS first");
    };
    let datadir = PathBuf::from(nonempty(datadir).unwrap_or_else(|| ".".into()));
    let version = version.unwrap_or_default();
    let statement = ReloadStatement::for_version(&version).map_err(|m| anyhow!(m))?;
    let verify = match &args.common.verify_addr {
        Some(addr) => super::verify_target("mysql", addr)?,
        None if args.socket.is_some() => Target::Mysql {
            host: "127.0.0.1".into(),
            port: port
                .as_deref()
                .unwrap_or_default()
                .parse()
                .map_err(|e| anyhow!("@@port {port:?}: {e}; give --verify-addr HOST:PORT"))?,
        },
        None => Target::Mysql {
            host: tcp_host,
            port: tcp_port,
        },
    };
    Ok(Located {
        kind: "mariadb",
        cert: datadir.join(cert),
        key: datadir.join(key),
        ca: nonempty(ca).map(|c| datadir.join(c)),
        source: format!("@@ssl_cert and @@ssl_key of {version}"),
        verify,
        reloader: SqlReload { conn, statement },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_statement_follows_the_version() {
        assert_eq!(
            ReloadStatement::for_version("10.11.6-MariaDB-0+deb12u1"),
            Ok(ReloadStatement::FlushSsl)
        );
        assert_eq!(
            ReloadStatement::for_version("11.4.2-MariaDB"),
            Ok(ReloadStatement::FlushSsl)
        );
        assert!(ReloadStatement::for_version("10.3.39-MariaDB").is_err());
        assert_eq!(
            ReloadStatement::for_version("8.0.36"),
            Ok(ReloadStatement::AlterInstanceReloadTls)
        );
        assert_eq!(
            ReloadStatement::for_version("8.4.0-commercial"),
            Ok(ReloadStatement::AlterInstanceReloadTls)
        );
        assert!(ReloadStatement::for_version("8.0.15").is_err());
        assert!(ReloadStatement::for_version("5.7.44-log").is_err());
        assert!(ReloadStatement::for_version("").is_err());
    }
}
