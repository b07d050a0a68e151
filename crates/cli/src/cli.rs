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
    /// Reload a running proxy's TLS material (SIGHUP) and show what it serves now.
    Reload(crate::reload_cmd::ReloadArgs),
    /// Validate a configuration file and the files it names, without binding anything.
    CheckConfig(CheckConfigArgs),
    /// Print the SPKI pins (sha256/BASE64) of a certificate file or of the
    /// chain a server presents, ready to paste into `pins = [...]`.
    Pin {
        /// A PEM/DER file, or postgres://HOST:PORT, mysql://HOST:PORT, tls://HOST:PORT.
        target: String,
        /// Server name to send (SNI) when fetching from a server.
        #[arg(long)]
        sni: Option<String>,
    },
    /// Check postgresql.conf, pg_hba.conf and MySQL/MariaDB option files
    /// against a TLS policy, with line numbers and the compliance controls
    /// each finding evidences. Exit 0: the policy holds; 1: it fails; 2: the
    /// lint could not run.
    Lint(LintArgs),
    /// Scan database endpoints the way their clients connect (postgres://,
    /// mysql://, tls://): protocol versions and cipher suites (legacy ones
    /// too), groups, certificate chain, plaintext logins, client
    /// certificates, against a policy. Exit 0: the policy holds; 1: it
    /// fails; 2: the scan could not run.
    Scan(ScanArgs),
    /// TLS policies: list the built-in presets, print one as TOML.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Configuration helpers.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// The certificate authority: create it, publish its CRL.
    Ca {
        /// State directory holding the CA and the inventory.
        #[arg(long, global = true, default_value = ".intransit")]
        state_dir: PathBuf,
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Certificates: issue, list, inspect, renew, revoke, check expiry.
    Cert {
        /// State directory holding the CA and the inventory.
        #[arg(long, global = true, default_value = ".intransit")]
        state_dir: PathBuf,
        #[command(subcommand)]
        command: CertCommand,
    },
    /// Replace a database server's own TLS certificate without a restart:
    /// write the files, reload the server, check what it serves.
    #[command(subcommand)]
    Rotate(RotateCommand),
    /// Measure what TLS costs against any target: handshakes per TLS
    /// configuration, query round trips, throughput, CPU and memory.
    #[command(subcommand, long_about = crate::bench_cmd::BENCH_LONG_ABOUT)]
    Bench(crate::bench_cmd::BenchCommand),
}

#[derive(Debug, Subcommand)]
pub enum RotateCommand {
    /// PostgreSQL: files from SHOW over --dsn or from postgresql.conf in
    /// --data-dir/--conf-dir; reload with SELECT pg_reload_conf() (--dsn) or
    /// pg_ctl reload (run as the data directory's owner).
    Postgres(RotatePostgresArgs),
    /// MariaDB 10.4+ (FLUSH SSL) or MySQL 8.0.16+ (ALTER INSTANCE RELOAD
    /// TLS): files from @@ssl_cert/@@ssl_key over --dsn.
    Mariadb(RotateMariaDbArgs),
}

#[derive(Debug, Args)]
pub struct RotatePostgresArgs {
    /// The data directory (its postgresql.conf is read unless --conf-dir or
    /// --dsn is given).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// The directory holding postgresql.conf when it is not the data
    /// directory (Debian: /etc/postgresql/VERSION/main).
    #[arg(long, conflicts_with = "dsn")]
    pub conf_dir: Option<PathBuf>,
    /// Connection to the local server, e.g. "host=/var/run/postgresql
    /// user=postgres" or "postgres://postgres@127.0.0.1:5432/postgres"; the
    /// server then reports its files and reloads with pg_reload_conf().
    #[arg(long)]
    pub dsn: Option<String>,
    #[command(flatten)]
    pub common: RotateCommonArgs,
}

#[derive(Debug, Args)]
pub struct RotateMariaDbArgs {
    /// Connection to the local server: mysql://user:password@host:port
    /// (a user with the RELOAD privilege, or CONNECTION_ADMIN on MySQL).
    #[arg(long)]
    pub dsn: String,
    /// Connect through this unix socket instead of TCP.
    #[arg(long)]
    pub socket: Option<PathBuf>,
    #[command(flatten)]
    pub common: RotateCommonArgs,
}

/// Options shared by every `rotate` command.
#[derive(Debug, Args)]
pub struct RotateCommonArgs {
    /// Inventory name of the certificate issued for the server (default:
    /// postgres or mariadb).
    #[arg(long)]
    pub name: Option<String>,
    /// DNS names of the new certificate (repeatable; default: those of the
    /// current certificate).
    #[arg(long)]
    pub dns: Vec<String>,
    /// IP addresses of the new certificate (repeatable; default: those of
    /// the current certificate).
    #[arg(long)]
    pub ip: Vec<String>,
    /// Lifetime of the new certificate in days (default 90).
    #[arg(long, allow_negative_numbers = true)]
    pub days: Option<i64>,
    /// Key type of the new certificate (default: that of the current one).
    #[arg(long)]
    pub key_type: Option<String>,
    /// Install this certificate chain instead of issuing one (with --key).
    #[arg(long, requires = "key", conflicts_with_all = ["name", "dns", "ip", "days", "key_type"])]
    pub cert: Option<PathBuf>,
    /// The private key of --cert.
    #[arg(long, requires = "cert")]
    pub key: Option<PathBuf>,
    /// Put the previous files (<file>.prev) back, reload and check.
    #[arg(long, conflicts_with_all = ["cert", "name", "dns", "ip", "days", "key_type"])]
    pub rollback: bool,
    /// Print each step without changing anything.
    #[arg(long)]
    pub dry_run: bool,
    /// Where to check the served certificate, HOST:PORT (default: the
    /// address from --dsn or the server's configuration).
    #[arg(long)]
    pub verify_addr: Option<String>,
    /// How long to wait for the server to serve the new certificate.
    #[arg(long, default_value = "15s")]
    pub verify_timeout: String,
    /// State directory holding the CA and the inventory.
    #[arg(long, default_value = ".intransit")]
    pub state_dir: PathBuf,
    #[command(flatten)]
    pub passphrase: PassphraseArgs,
}

/// Where the CA key passphrase comes from, for commands that sign.
#[derive(Debug, Args, Clone, Default)]
pub struct PassphraseArgs {
    /// File holding the CA key passphrase (default: $INTRANSIT_CA_PASSPHRASE).
    #[arg(long)]
    pub passphrase_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create the CA (refuses to replace an existing one without --force).
    Init {
        /// Key type: ecdsa-p256, ecdsa-p384, ed25519, rsa-2048, rsa-3072 or rsa-4096.
        #[arg(long, default_value = "ecdsa-p256")]
        key: String,
        /// Common name of the CA.
        #[arg(long, default_value = "intransit CA")]
        name: String,
        /// Lifetime in days.
        #[arg(long, default_value_t = 3650, allow_negative_numbers = true)]
        days: i64,
        /// Replace an existing CA.
        #[arg(long)]
        force: bool,
        /// Store the key encrypted with this passphrase (PKCS#8, AES-256-CBC,
        /// PBKDF2-HMAC-SHA256); also read from $INTRANSIT_CA_PASSPHRASE.
        #[command(flatten)]
        passphrase: PassphraseArgs,
    },
    /// Write a fresh CRL listing every revoked certificate.
    Crl {
        /// Where to write it (default: <state-dir>/ca/crl.pem).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Days until nextUpdate.
        #[arg(long, default_value_t = 7, allow_negative_numbers = true)]
        days: i64,
        #[command(flatten)]
        passphrase: PassphraseArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// Issue a server or client certificate.
    Issue {
        #[command(subcommand)]
        kind: IssueKind,
    },
    /// The inventory: every certificate with its status.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show a certificate file, or the chain a server presents
    /// (postgres://host:port, mysql://host:port, tls://host:port).
    Inspect {
        /// A PEM/DER file, or a URL.
        target: String,
        /// Server name to send (SNI) when fetching from a server.
        #[arg(long)]
        sni: Option<String>,
    },
    /// Re-issue certificates that are due (past --renew-at of their lifetime).
    Renew {
        /// The certificate to renew.
        name: Option<String>,
        /// Consider every certificate in the inventory.
        #[arg(long, conflicts_with = "name")]
        all: bool,
        /// Renew even if not due.
        #[arg(long)]
        force: bool,
        /// Keep the existing private key.
        #[arg(long)]
        reuse_key: bool,
        /// Command to run after each renewal (sh -c; INTRANSIT_CERT_NAME and
        /// INTRANSIT_CERT_DIR are set), e.g. a reload.
        #[arg(long)]
        exec: Option<String>,
        /// Fraction of the lifetime after which a certificate is due.
        #[arg(long, default_value_t = 2.0 / 3.0)]
        renew_at: f64,
        #[command(flatten)]
        passphrase: PassphraseArgs,
    },
    /// Revoke a certificate by serial or name and regenerate the CRL.
    Revoke {
        /// Serial number (hex) or inventory name.
        target: String,
        /// unspecified, keyCompromise, caCompromise, affiliationChanged,
        /// superseded, cessationOfOperation or privilegeWithdrawn.
        #[arg(long, default_value = "unspecified")]
        reason: String,
        /// Days until the regenerated CRL's nextUpdate.
        #[arg(long, default_value_t = 7)]
        crl_days: i64,
        #[command(flatten)]
        passphrase: PassphraseArgs,
    },
    /// Exit non-zero if a certificate is expired or expires within --warn,
    /// or a CRL is stale or goes stale within --crl-warn.
    Check {
        /// Warning window, e.g. 30d, 12h.
        #[arg(long, default_value = "30d")]
        warn: String,
        /// Warning window for CRLs (the CA's crl.pem, and CRL files given),
        /// e.g. 2d, 12h: a CRL past its nextUpdate is stale, and
        /// listeners refuse the certificates it covers (crl_expired).
        #[arg(long, default_value = "2d")]
        crl_warn: String,
        /// Certificate files to check instead of the inventory.
        files: Vec<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum IssueKind {
    /// A server certificate (serverAuth): needs --dns and/or --ip.
    Server(CertIssueArgs),
    /// A client certificate (clientAuth): CN and optional URI SANs.
    Client(CertIssueArgs),
}

#[derive(Debug, Args, Clone)]
pub struct CertIssueArgs {
    /// Inventory name (also the CN unless --cn is given).
    #[arg(long)]
    pub name: String,
    /// Subject common name.
    #[arg(long)]
    pub cn: Option<String>,
    /// DNS subject alternative name (repeatable).
    #[arg(long)]
    pub dns: Vec<String>,
    /// IP subject alternative name (repeatable).
    #[arg(long)]
    pub ip: Vec<String>,
    /// URI subject alternative name, e.g. spiffe://prod/trainer (repeatable).
    #[arg(long)]
    pub uri: Vec<String>,
    /// Lifetime in days (default 90 for servers, 30 for clients).
    #[arg(long, allow_negative_numbers = true)]
    pub days: Option<i64>,
    /// Key type: ecdsa-p256, ecdsa-p384, ed25519, rsa-2048, rsa-3072 or rsa-4096.
    #[arg(long, default_value = "ecdsa-p256")]
    pub key: String,
    /// Write the files here instead of <state-dir>/certs/<name>/.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Replace a certificate already issued under this name.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub passphrase: PassphraseArgs,
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Where the CA and certificates are kept (created on first run, reused after).
    #[arg(long, default_value = ".intransit")]
    pub state_dir: PathBuf,
    /// Address to listen on for TLS clients.
    #[arg(long, default_value = "127.0.0.1:6432")]
    pub listen: String,
    /// The database: host:port or unix:/path (default 127.0.0.1:5432 for
    /// postgres, 127.0.0.1:3306 for mysql; required with --protocol tls,
    /// e.g. 127.0.0.1:6379 for Redis).
    #[arg(long)]
    pub upstream: Option<String>,
    /// Protocol: postgres, mysql (MySQL/MariaDB, default upstream
    /// 127.0.0.1:3306), or tls (TLS from the first byte: Redis, Kafka, NATS, ...).
    #[arg(long, value_enum, default_value_t = UpProtocol::Postgres)]
    pub protocol: UpProtocol,
    /// Database user shown in the printed psql (or, if left at postgres,
    /// root for the mariadb) command.
    #[arg(long, default_value = "postgres")]
    pub user: String,
    /// Database name shown in the printed psql command.
    #[arg(long, default_value = "postgres")]
    pub database: String,
    /// Common name of the client certificate created on first run.
    #[arg(long, default_value = "intransit-client")]
    pub client_name: String,
    /// Lifetime of server certificates up issues (renewed at two thirds).
    #[arg(long, default_value = "90d")]
    pub server_cert_lifetime: String,
    /// Lifetime of client certificates up issues (renewed at two thirds).
    #[arg(long, default_value = "30d")]
    pub client_cert_lifetime: String,
    /// Admin server (metrics, health) on a loopback address, or `off`.
    /// Default 127.0.0.1:9090; when that port is taken, up starts without it.
    #[arg(long)]
    pub admin: Option<String>,
    /// Also append audit events (one JSON line per connection) to this file.
    #[arg(long)]
    pub audit_log: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum UpProtocol {
    /// PostgreSQL (SSLRequest and direct TLS).
    Postgres,
    /// TLS from the first byte.
    Tls,
    /// MySQL and MariaDB (CLIENT_SSL in the handshake).
    Mysql,
}

#[derive(Debug, Args)]
pub struct ProxyArgs {
    /// The TOML configuration file.
    #[arg(long, short)]
    pub config: PathBuf,
    /// Write the process id here (removed on exit), for `intransit reload`;
    /// overrides the `pid_file` key.
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CheckConfigArgs {
    /// The TOML configuration file.
    pub file: PathBuf,
    /// Warn about a CRL that goes stale (passes its nextUpdate) within
    /// this window, e.g. 2d, 12h. A CRL already stale under
    /// stale_crl = "refuse" fails the check.
    #[arg(long, default_value = "2d")]
    pub crl_warn: String,
}

const PROXY_LONG_ABOUT: &str = "\
Run the listeners of a configuration file.

The configuration is TOML. Every key (docs/configuration.md has the full reference):

  state_dir = \"/var/lib/intransit\"   optional: where the CA and certificates live
  shutdown_grace = \"30s\"             time open connections get after SIGTERM

  [[listener]]
  name = \"orders\"                    used in logs; letters, digits, - _ .
  mode = \"server\"                    server (TLS clients in), or client (below)
  protocol = \"postgres\"              postgres, mysql (MySQL/MariaDB), or tls (TLS from the first byte)
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

  [[listener.route]]                 SNI routes (docs/configuration.md)
  server_name = \"orders.db.internal\" exact or *.suffix
  upstream = \"10.0.0.5:5432\"        default: the listener's
  tls = { cert = \"...\", key = \"...\" } policy keys not given come from [listener.tls]
  require_sni_match = false          (listener key) refuse names that match no route

  [[listener.db_users]]              once any rule exists, logins must match one
  identity = \"uri:spiffe://prod/trainer\"
  users = [\"trainer\", \"readonly\"]    \"*\" = any user
  [[listener.db_users]]
  identity_regex = \"^cn:(.+)$\"       matched against kind:value names, like pg_ident.conf
  user = \"\\\\1\"                        captures \\\\1..\\\\9 substituted

  mode = \"client\": plaintext from local applications in, TLS to the database out.
  It listens on loopback or unix:/path (allow_remote_plaintext = true to accept other
  hosts) and has no [listener.tls], db_users or routes; [listener.upstream_tls] is
  required: ca, cert and key (the proxy's client certificate), server_name, pins, direct.

Reloading: certificates, keys, client CAs, CRLs and the upstream legs' CA,
client certificate and pins reload when their files change (the parent
directories are watched) and on SIGHUP, which also re-reads allow-lists and
other TLS settings; new material is checked as a whole first, and material
that fails is refused while the old stays. `intransit reload` sends SIGHUP
and shows what is loaded.

Signals: SIGHUP reloads (see above);
SIGINT/SIGTERM stop accepting and drain for shutdown_grace; a second signal
exits at once.";

#[derive(Debug, Args)]
pub struct LintArgs {
    /// Files to check: postgresql.conf, pg_hba.conf, my.cnf (kind guessed
    /// from the name unless --kind is given).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// A preset (mozilla-modern, mozilla-intermediate, nist-800-52r2,
    /// pci-dss-4, hipaa) or a policy TOML file.
    #[arg(long, default_value = "mozilla-intermediate")]
    pub policy: String,
    /// Report format.
    #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
    pub format: ReportFormat,
    /// The kind of every file: postgresql, pg_hba or mycnf.
    #[arg(long)]
    pub kind: Option<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ReportFormat {
    /// For people: findings by file, then pass/fail per control.
    Text,
    /// A stable JSON schema (docs/compliance.md).
    Json,
    /// SARIF 2.1.0, for code-scanning interfaces.
    Sarif,
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// The built-in presets.
    List,
    /// Print a preset as TOML, to start a policy file from.
    Show {
        /// Preset name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print a compliant starting configuration that uses the CA's files:
    /// postgres (postgresql.conf lines), pg_hba, or mariadb (an option file).
    Template {
        /// postgres, pg_hba or mariadb.
        kind: String,
        /// The policy the template must satisfy.
        #[arg(long, default_value = "mozilla-intermediate")]
        policy: String,
        /// State directory with the CA.
        #[arg(long, default_value = ".intransit")]
        state_dir: PathBuf,
        /// The server certificate's name in the state directory (see
        /// `intransit cert issue server --name`).
        #[arg(long, default_value = "db")]
        name: String,
    },
}

#[derive(Debug, Args)]
pub struct ScanArgs {
    /// postgres://HOST:PORT, mysql://HOST:PORT or tls://HOST:PORT.
    #[arg(required = true)]
    pub targets: Vec<String>,
    /// A preset or a policy TOML file.
    #[arg(long, default_value = "mozilla-intermediate")]
    pub policy: String,
    /// Report format.
    #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
    pub format: ReportFormat,
    /// SPKI pins (sha256/BASE64) the chain must match; adds to the policy's.
    #[arg(long = "pin")]
    pub pins: Vec<String>,
    /// Server name to send and to check the certificate against.
    #[arg(long)]
    pub sni: Option<String>,
    /// Trust anchors (PEM) for the chain; default: the system CA bundle.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// A client certificate chain (PEM) to test whether it is accepted.
    #[arg(long, requires = "key")]
    pub cert: Option<PathBuf>,
    /// The key for --cert (PEM).
    #[arg(long, requires = "cert")]
    pub key: Option<PathBuf>,
    /// Connections open at once per target.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Time allowed per probe, e.g. 5s.
    #[arg(long, default_value = "5s")]
    pub timeout: String,
}
