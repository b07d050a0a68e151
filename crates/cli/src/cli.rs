//! Command-line arguments, as clap types. No behaviour lives here.

use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Where `up` starts the admin server unless `--admin` says otherwise: a
/// loopback port outside 9090-9999, where Prometheus itself (9090) and its
/// exporters listen.
pub const DEFAULT_ADMIN: &str = "127.0.0.1:8432";

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
    /// client certificates in front of a local PostgreSQL (or, with --demo,
    /// a throwaway one of its own), and print the psql command that
    /// connects through it.
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
    /// Print a shell completion script, e.g. for bash:
    /// `source <(intransit completions bash)`, or save it as
    /// /usr/share/bash-completion/completions/intransit.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff): `intransit man | man -l -`, or save it
    /// as /usr/share/man/man1/intransit.1.
    Man {
        /// A command's own page instead, e.g. proxy (intransit-proxy(1)).
        command: Option<String>,
        /// Write every page (intransit.1, intransit-proxy.1, intransit-ca-init.1,
        /// ...) into this directory instead, as packages install them.
        #[arg(long, conflicts_with = "command")]
        out_dir: Option<std::path::PathBuf>,
    },
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
        /// A certificate issued with --acme is renewed by the same ACME CA,
        /// with the settings it was issued with; these flags change them
        /// (--acme also moves a certificate of the local CA to an ACME CA).
        #[command(flatten)]
        acme: AcmeArgs,
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
    /// or a CRL has less than half of its validity period left (or, with
    /// --crl-warn, goes stale within that window) or is stale.
    Check {
        /// Warning window, e.g. 30d, 12h.
        #[arg(long, default_value = "30d")]
        warn: String,
        /// A fixed warning window for CRLs (the CA's crl.pem, and CRL
        /// files given), e.g. 2d, 12h, instead of the default rule: a CRL
        /// is reported once less than half of its validity period
        /// (thisUpdate to nextUpdate) is left. Past its nextUpdate a CRL
        /// is stale, and listeners refuse the certificates it covers
        /// (crl_expired).
        #[arg(long)]
        crl_warn: Option<String>,
        /// Certificate files to check instead of the inventory.
        files: Vec<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum IssueKind {
    /// A server certificate (serverAuth): needs --dns and/or --ip. From the
    /// local CA, or with --acme from an ACME CA (Let's Encrypt, step-ca,
    /// Vault, ...).
    Server(ServerIssueArgs),
    /// A client certificate (clientAuth): CN and optional URI SANs.
    Client(CertIssueArgs),
}

/// `cert issue server`: the common flags and the ACME ones.
#[derive(Debug, Args, Clone)]
pub struct ServerIssueArgs {
    #[command(flatten)]
    pub common: CertIssueArgs,
    #[command(flatten)]
    pub acme: AcmeArgs,
}

/// Getting the server certificate from an ACME CA (RFC 8555) instead of the
/// local CA.
#[derive(Debug, Args, Clone, Default)]
#[command(next_help_heading = "ACME (certificates from an ACME CA)")]
pub struct AcmeArgs {
    /// The ACME CA's directory URL, e.g.
    /// https://acme-v02.api.letsencrypt.org/directory. The account key is
    /// kept in <state-dir>/acme/ (mode 0600) and reused.
    #[arg(long, value_name = "DIRECTORY_URL")]
    pub acme: Option<String>,
    /// Contact email for the ACME account (optional).
    #[arg(long, value_name = "EMAIL")]
    pub acme_email: Option<String>,
    /// An extra trust root (PEM) for the ACME server's own HTTPS, besides
    /// the system's: for a private ACME CA (step-ca, Vault, pebble).
    #[arg(long, value_name = "FILE")]
    pub acme_ca: Option<PathBuf>,
    /// The challenge intransit answers: http-01 (the CA fetches
    /// http://NAME/.well-known/acme-challenge/TOKEN on port 80) or
    /// tls-alpn-01 (the CA connects to NAME:443 with ALPN acme-tls/1).
    /// [default: http-01]
    #[arg(long, value_name = "CHALLENGE", value_parser = ["http-01", "tls-alpn-01"])]
    pub acme_challenge: Option<String>,
    /// Where intransit serves HTTP-01 answers, only while an order is
    /// pending. [default: 0.0.0.0:80]
    #[arg(long, value_name = "ADDR")]
    pub acme_http: Option<String>,
    /// Where intransit answers TLS-ALPN-01, only while an order is pending.
    /// On an address `up` listens on (PostgreSQL or tls), its listener
    /// answers; on an address an `intransit proxy` listens on, that proxy
    /// answers through the state directory (its state_dir must be this
    /// --state-dir); otherwise a listener of its own, bound for the order.
    /// MySQL listeners cannot answer (no TLS from the first byte).
    /// [default: 0.0.0.0:443]
    #[arg(long, value_name = "ADDR")]
    pub acme_tls_alpn: Option<String>,
    /// External account binding key id, for CAs that require one.
    #[arg(long, value_name = "KID", requires = "acme_eab_hmac_key")]
    pub acme_eab_kid: Option<String>,
    /// External account binding HMAC key (base64url, as the CA gives it).
    #[arg(long, value_name = "KEY", requires = "acme_eab_kid")]
    pub acme_eab_hmac_key: Option<String>,
    /// Attempts while the ACME server cannot be reached, with waits of 2,
    /// 4, 8, ... seconds between them. [default: 4]
    #[arg(long, value_name = "N")]
    pub acme_attempts: Option<u32>,
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
    /// Start a throwaway database to try the proxy against, and put the
    /// proxy in front of it: PostgreSQL (or MariaDB with --protocol mysql)
    /// in <state-dir>/demo, on a free loopback port with TLS and client
    /// certificates from intransit's CA only, so it refuses plaintext
    /// itself. The data is kept for the next run; Ctrl-C stops both. As
    /// root, the database runs as the system user postgres (or mysql).
    #[arg(long, conflicts_with = "upstream")]
    pub demo: bool,
    /// Where --demo finds the database server programs (initdb, pg_ctl and
    /// postgres; or mariadbd and mariadb-install-db), instead of
    /// `pg_config --bindir`, /usr/lib/postgresql/*/bin and PATH (MariaDB:
    /// PATH, /usr/sbin, /usr/bin).
    #[arg(long, value_name = "DIR", requires = "demo")]
    pub demo_bin_dir: Option<PathBuf>,
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
    /// Admin server (status page, metrics, health) on a loopback address,
    /// or `off`. Default 127.0.0.1:8432 (Prometheus and its exporters use
    /// 9090-9999); when that port is taken, up starts without it.
    #[arg(long)]
    pub admin: Option<String>,
    /// Also append audit events (one JSON line per connection) to this file.
    #[arg(long)]
    pub audit_log: Option<PathBuf>,
    /// With --acme: the server certificate's DNS names (repeatable; default
    /// this machine's host name). The ACME CA must reach this machine by
    /// each of them for the challenge.
    #[arg(long, value_name = "NAME", requires = "acme")]
    pub acme_dns: Vec<String>,
    /// The server certificate comes from an ACME CA and is renewed there
    /// at two thirds of its lifetime; the client certificate and the CA
    /// for client certificates stay local.
    #[command(flatten)]
    pub acme: AcmeArgs,
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

/// The configuration file of `proxy` and `check-config`, given the same
/// way to both: as the argument, or after `--config`.
#[derive(Debug, Args)]
pub struct ConfigFile {
    /// The TOML configuration file (reference: docs/configuration.md).
    /// Relative paths in it are resolved from its directory.
    #[arg(
        value_name = "CONFIG",
        required_unless_present = "config",
        conflicts_with = "config"
    )]
    file: Option<PathBuf>,
    /// The configuration file, as an option (the same as CONFIG).
    #[arg(long, short, value_name = "CONFIG")]
    config: Option<PathBuf>,
}

impl ConfigFile {
    /// The file, however it was given.
    pub fn path(&self) -> anyhow::Result<&Path> {
        match (&self.file, &self.config) {
            (Some(p), _) | (None, Some(p)) => Ok(p),
            (None, None) => anyhow::bail!("give the configuration file: intransit proxy CONFIG"),
        }
    }
}

#[derive(Debug, Args)]
pub struct ProxyArgs {
    #[command(flatten)]
    pub config: ConfigFile,
    /// Write the process id here (removed on exit), for `intransit reload`;
    /// overrides the `pid_file` key.
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CheckConfigArgs {
    #[command(flatten)]
    pub config: ConfigFile,
    /// Warn about a CRL that goes stale (passes its nextUpdate) within
    /// this window, e.g. 2d, 12h, instead of the default rule: a warning
    /// once less than half of a CRL's validity period (thisUpdate to
    /// nextUpdate) is left. A CRL already stale under stale_crl =
    /// "refuse" fails the check.
    #[arg(long)]
    pub crl_warn: Option<String>,
}

const PROXY_LONG_ABOUT: &str = "\
Run the listeners of a configuration file.

The configuration is TOML. Every key, with its default (docs/configuration.md
has the full reference). Relative paths are resolved from the directory of
the configuration file.

  state_dir = \"/var/lib/intransit\"   optional: where the CA and certificates live (and
                                     the TLS-ALPN-01 answers `cert issue --acme` leaves)
  shutdown_grace = \"30s\"             time open connections get after SIGTERM
  worker_threads = 2                 threads serving connections (default: one per CPU;
                                     0: the shared runtime)
  audit_log = \"audit.jsonl\"          also append one JSON line per connection here
  pid_file = \"/run/intransit.pid\"    for `intransit reload` (--pid-file overrides it)
  admin = \"127.0.0.1:8432\"           status page, /metrics, /healthz, /readyz (loopback only
                                     unless [admin_tls] gives it a certificate)
  admin_header_read_timeout = \"10s\"  admin_idle_timeout = \"30s\"  admin_max_connections = 128
  [admin_tls]                        cert, key, client_ca, allow: as [listener.tls]

  [[listener]]
  name = \"orders\"                    used in logs; letters, digits, - _ .
  mode = \"server\"                    server (TLS clients in), or client (below)
  protocol = \"postgres\"              postgres, mysql (MySQL/MariaDB), or tls (TLS from the first byte)
  listen = \"0.0.0.0:6432\"            IP:port or unix:/path
  upstream = \"127.0.0.1:5432\"        host:port or unix:/path/.s.PGSQL.5432
  handshake_timeout = \"10s\"          accept to StartupMessage forwarded
  upstream_connect_timeout = \"5s\"
  max_connections = 10000            beyond this, verified clients are refused politely
  max_unauthenticated = 512          connections still in the TLS handshake
  max_unauthenticated_per_address = 64
  mysql_server_version = \"8.0.0-intransit\"   the version a mysql listener's greeting announces

  [listener.tls]
  cert = \"chain.pem\"                 server certificate chain, leaf first
  key = \"key.pem\"                    its private key
  client_ca = \"ca.pem\"               CA for client certificates (unless client_auth = none)
  crl = \"ca.crl\"                     optional revocation list (PEM or DER)
  stale_crl = \"refuse\"               refuse (default) or allow clients once the CRL is past nextUpdate
  min_version = \"1.3\"                1.3 (default) or 1.2
  client_auth = \"required\"           required (default), optional or none
  allow = [\"uri:spiffe://prod/*\", \"dns:*.ml.internal\", \"cn:reporting\", \"spki:sha256/...\"]
                                     empty = any certificate the CA signed;
                                     * stays within a DNS label or URI path segment, ** crosses

  [listener.upstream_tls]            TLS to the database (default: plaintext)
  mode = \"verify-full\"               disable, require, verify-ca, verify-full or pinned
  ca = \"db-ca.pem\"                   the CA that signs the database's certificate
  cert = \"client.pem\"  key = \"client-key.pem\"   the proxy's own client certificate
  server_name = \"db.internal\"        default: the upstream's host
  pins = [\"sha256/...\"]              SPKI pins (`intransit pin FILE` prints them)
  min_version = \"1.3\"  direct = false   direct: PostgreSQL TLS without SSLRequest

  [[listener.route]]                 SNI routes (docs/configuration.md)
  server_name = \"orders.db.internal\" exact or *.suffix
  upstream = \"10.0.0.5:5432\"        default: the listener's
  tls = { cert = \"...\", key = \"...\" } policy keys not given come from [listener.tls]
  upstream_tls = { ... }             default: the listener's
  require_sni_match = false          (listener key) refuse names that match no route

  [listener.pool]                    PostgreSQL pooling; clients log in by certificate alone
  mode = \"transaction\"               transaction (default) or session
  size = 20                          server connections per (database, user)
  min_idle = 0
  server_auth = \"cert\"               cert (minted per user), password (auth_file) or trust
  auth_file = \"userlist.txt\"         \"user\" \"password\" lines, mode 0600
  cert_authority = \"/var/lib/intransit\"   the CA that mints; default state_dir
  cert_authority_passphrase_file = \"ca.pass\"   mode 0600, for an encrypted CA key
  cert_lifetime = \"1h\"  reset_query = \"DISCARD ALL\"  max_prepared_statements = 200
  wait_timeout = \"120s\"  server_idle_timeout = \"10m\"  server_lifetime = \"1h\"
  server_login_timeout = \"15s\"
  [listener.pool.users.NAME]         server_auth, cert, key, size for one user
  peer_id = 1                        this instance's id among peers behind a load balancer
  [[listener.pool.peers]]            id = 2, address = \"10.0.0.12:6432\": cancels with its keys go there
  [listener.pool.peer_tls]           ca, cert, key (as [listener.upstream_tls]) to reach the peers

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
    #[arg(long, default_value = "mozilla-intermediate", help = POLICY_HELP)]
    pub policy: String,
    /// Report format.
    #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
    pub format: ReportFormat,
    /// The kind of every file: postgresql, pg_hba or mycnf.
    #[arg(long)]
    pub kind: Option<String>,
}

/// The help of every `--policy` that takes a preset or a file; a test
/// checks that it names every preset.
const POLICY_HELP: &str = "The policy: a preset (mozilla-modern, mozilla-intermediate, \
nist-800-52r2, pci-dss-4 or hipaa; `intransit policy show NAME` prints one) \
or a policy TOML file";

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
        /// The policy the template must satisfy: one of the presets
        /// mozilla-modern, mozilla-intermediate, nist-800-52r2, pci-dss-4 or
        /// hipaa.
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
    #[arg(long, default_value = "mozilla-intermediate", help = POLICY_HELP)]
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    fn long_help(path: &[&str]) -> String {
        let mut command = Cli::command();
        let mut at = &mut command;
        for name in path {
            at = at.find_subcommand_mut(name).unwrap();
        }
        at.render_long_help().to_string()
    }

    #[test]
    fn every_policy_option_names_every_preset() {
        for path in [&["lint"][..], &["scan"], &["config", "template"]] {
            let help = long_help(path);
            for (name, _) in intransit_compliance::PRESETS {
                assert!(help.contains(name), "{path:?} --help lacks {name}:\n{help}");
            }
        }
    }

    /// The keys the configuration accepts in the table that `toml` opens,
    /// as its "unknown field" error lists them.
    fn keys_of_table(toml: &str) -> Vec<String> {
        let error = intransit_config::Config::from_toml(&format!("{toml}\nno_such_key = 1\n"))
            .unwrap_err()
            .to_string();
        let expected = error
            .split("expected one of ")
            .nth(1)
            .or_else(|| error.split("expected ").nth(1))
            .unwrap_or_else(|| panic!("no list of keys in {error:?}"));
        let keys: Vec<String> = expected
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect();
        assert!(!keys.is_empty(), "{error}");
        keys
    }

    #[test]
    fn proxy_help_names_every_configuration_key() {
        let help = long_help(&["proxy"]);
        assert!(help.contains("docs/configuration.md"), "{help}");
        for table in [
            "",
            "[[listener]]",
            "[[listener]]\n[listener.tls]",
            "[[listener]]\n[listener.upstream_tls]",
            "[[listener]]\n[[listener.route]]",
            "[[listener]]\n[[listener.db_users]]",
            "[[listener]]\n[listener.pool]",
        ] {
            for key in keys_of_table(table) {
                assert!(
                    [format!("{key} "), format!("[{key}]"), format!(".{key}]")]
                        .iter()
                        .any(|written| help.contains(written.as_str())),
                    "proxy --help does not name {key:?} (of {table:?})"
                );
            }
        }
    }

    #[test]
    fn proxy_and_check_config_take_the_file_as_an_argument_or_after_config() {
        for command in ["proxy", "check-config"] {
            for args in [
                vec!["intransit", command, "a.toml"],
                vec!["intransit", command, "--config", "a.toml"],
                vec!["intransit", command, "-c", "a.toml"],
            ] {
                let cli = Cli::try_parse_from(&args).unwrap();
                let path = match &cli.command {
                    Command::Proxy(a) => a.config.path().unwrap().to_owned(),
                    Command::CheckConfig(a) => a.config.path().unwrap().to_owned(),
                    other => panic!("{other:?}"),
                };
                assert_eq!(path, Path::new("a.toml"), "{args:?}");
            }
            assert!(Cli::try_parse_from(["intransit", command]).is_err());
            assert!(
                Cli::try_parse_from(["intransit", command, "a.toml", "--config", "b.toml"])
                    .is_err()
            );
        }
    }

    #[test]
    fn the_up_admin_default_is_the_one_its_help_names() {
        let help = long_help(&["up"]);
        assert!(help.contains(DEFAULT_ADMIN), "{help}");
        assert!(!DEFAULT_ADMIN.ends_with(":9090"));
    }
}
