//! Command-line arguments, as clap types. No behaviour lives here.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// TLS 1.3 and mutual TLS for every database connection.
#[derive(Debug, Parser)]
#[command(name = "intransit", version, propagate_version = true)]
pub struct Cli {
    /// Log line format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log filter, e.g. "info" or "intransit_proxy=debug" (default: $RUST_LOG, else info).
    #[arg(long, global = true)]
    pub log_level: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Zero-configuration start: create a CA and certificates, put TLS 1.3 +
    /// client certificates in front of a local PostgreSQL, and print the psql
    /// command that connects through it.
    Up(UpArgs),
    /// Run the listeners of a configuration file.
    #[command(long_about = PROXY_LONG_ABOUT)]
    Proxy(ProxyArgs),
    /// Validate a configuration file and the files it names, without binding anything.
    CheckConfig(CheckConfigArgs),
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Where the CA and certificates are kept (created on first run, reused after).
    #[arg(long, default_value = ".intransit")]
    pub state_dir: PathBuf,
    /// Address to listen on for TLS clients.
    #[arg(long, default_value = "127.0.0.1:6432")]
    pub listen: String,
    /// The database: host:port, or unix:/path/to/.s.PGSQL.5432.
    #[arg(long, default_value = "127.0.0.1:5432")]
    pub upstream: String,
    /// Database protocol. Only postgres is available in this version.
    #[arg(long, value_enum, default_value_t = UpProtocol::Postgres)]
    pub protocol: UpProtocol,
    /// Database user shown in the printed psql command.
    #[arg(long, default_value = "postgres")]
    pub user: String,
    /// Database name shown in the printed psql command.
    #[arg(long, default_value = "postgres")]
    pub database: String,
    /// Common name of the client certificate created on first run.
    #[arg(long, default_value = "intransit-client")]
    pub client_name: String,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum UpProtocol {
    /// PostgreSQL (SSLRequest and direct TLS).
    Postgres,
}

#[derive(Debug, Args)]
pub struct ProxyArgs {
    /// The TOML configuration file.
    #[arg(long, short)]
    pub config: PathBuf,
}

#[derive(Debug, Args)]
pub struct CheckConfigArgs {
    /// The TOML configuration file.
    pub file: PathBuf,
}

const PROXY_LONG_ABOUT: &str = "\
Run the listeners of a configuration file.

The configuration is TOML. Every key (docs/configuration.md has the full reference):

  state_dir = \"/var/lib/intransit\"   optional: where the CA and certificates live
  shutdown_grace = \"30s\"             time open connections get after SIGTERM

  [[listener]]
  name = \"orders\"                    used in logs; letters, digits, - _ .
  mode = \"server\"                    server (only mode in this version)
  protocol = \"postgres\"              postgres (mysql and tls: not in this version)
  listen = \"0.0.0.0:6432\"            IP:port or unix:/path
  upstream = \"127.0.0.1:5432\"        host:port or unix:/path/.s.PGSQL.5432
  handshake_timeout = \"10s\"          accept to StartupMessage forwarded
  upstream_connect_timeout = \"5s\"
  max_connections = 10000            beyond this, clients get SQLSTATE 53300

  [listener.tls]
  cert = \"chain.pem\"                 server certificate chain, leaf first
  key = \"key.pem\"                    its private key
  client_ca = \"ca.pem\"               CA for client certificates (unless client_auth = none)
  crl = \"ca.crl\"                     optional revocation list (PEM or DER)
  min_version = \"1.3\"                1.3 (default) or 1.2
  client_auth = \"required\"           required (default), optional or none
  allow = [\"uri:spiffe://prod/*\", \"dns:*.ml.internal\", \"cn:reporting\", \"spki:sha256/...\"]
                                     empty = any certificate the CA signed;
                                     * stays within a DNS label or URI path segment, ** crosses

  [[listener.db_users]]              once any rule exists, logins must match one
  identity = \"uri:spiffe://prod/trainer\"
  users = [\"trainer\", \"readonly\"]    \"*\" = any user
  [[listener.db_users]]
  identity_regex = \"^cn:(.+)$\"       matched against kind:value names, like pg_ident.conf
  user = \"\\\\1\"                        captures \\\\1..\\\\9 substituted

Signals: SIGHUP reloads certificates, keys, client CAs, CRLs and allow-lists
from the files (material that fails to load is refused and the old stays);
SIGINT/SIGTERM stop accepting and drain for shutdown_grace; a second signal
exits at once.";
