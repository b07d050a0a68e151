//! `intransit bench`: argument checking, the loopback rule, Ctrl-C,
//! progress, the in-process server of `--self`, and printing the report.
//! The measuring itself is `intransit_bench`.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use intransit_bench::client::{Configuration, TlsOptions};
use intransit_bench::measure::{Bounds, Watched, MAX_CONCURRENCY, MAX_COUNT, MAX_DURATION};
use intransit_bench::plan::{self, Plan, Workload, MAX_REPEAT, MAX_VALUE_SIZE};
use intransit_bench::report::Report;
use intransit_bench::session::Credentials;
use intransit_config::{ClientAuth, ServerTls, TlsVersion};
use intransit_policy::AllowList;
use intransit_scan::Target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

pub(crate) const BENCH_LONG_ABOUT: &str = "\
Measure what TLS costs against a real endpoint: handshakes per TLS configuration, \
query round trips over TLS, and bulk throughput.

TARGET is postgres://HOST:PORT (SSLRequest), mysql://HOST:PORT (CLIENT_SSL) or \
tls://HOST:PORT (TLS from the first byte; Redis for query and throughput), and TLS is \
started the way that protocol's clients do. Point it at a database's own TLS and at \
intransit in front of it, with --compare, to see what the proxy adds.

Bounded by design: each run lasts --duration (at most 10m) and/or --count operations \
(at most 10,000,000), with at most 256 concurrent connections and 100 rounds. Targets \
must be loopback (127.0.0.0/8, ::1, localhost) unless their host is also named with \
--allow-remote HOST, so a typo never loads someone else's server. Ctrl-C (or SIGTERM) stops the \
run and still prints what was measured (exit status 130). Exit status 1 when a \
configuration ended in error; a refused configuration is not an error.

--pid samples /proc: CPU time of the process and of its exited children (for \
PostgreSQL's postmaster, the backends that ended during the run) and the highest \
resident memory seen every 50 ms.

Not supported: PostgreSQL logins other than trust, password, md5 and SCRAM-SHA-256 \
(no channel binding, no SASLprep); MySQL logins other than mysql_native_password (not \
caching_sha2_password or client_ed25519); throughput for targets other than tls:// \
Redis; PostgreSQL direct TLS (ALPN) as a target kind.";

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Connect, negotiate, TLS handshake and close, repeatedly, for each TLS
    /// configuration: tls1.2, tls1.3, tls1.3-resumed, tls1.3-client-cert
    /// (needs --cert/--key), x25519, x25519mlkem768. A configuration the
    /// server refuses is reported as refused. --self measures an in-process
    /// server with the proxy's TLS settings.
    Handshake(HandshakeArgs),
    /// Round trips of a trivial query over persistent TLS sessions:
    /// PostgreSQL `SELECT 1` (trust, password, md5, SCRAM-SHA-256), MySQL
    /// `SELECT 1` (mysql_native_password only), Redis `PING` for tls://.
    Query(QueryArgs),
    /// Bulk bytes through TLS: Redis `GET` of a value set once (tls://
    /// targets only), in MB/s.
    Throughput(ThroughputArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum BenchFormat {
    /// An aligned table.
    Table,
    /// Versioned JSON.
    Json,
    /// A Markdown table.
    Markdown,
}

#[derive(Debug, Args)]
pub struct CommonArgs {
    /// postgres://HOST:PORT, mysql://HOST:PORT or tls://HOST:PORT, or
    /// NAME=URL to call it NAME in the report (native=postgres://...).
    pub target: Option<String>,
    /// More targets measured in turn with the first (A B A B ...); ratios
    /// are against the first. Takes one or more targets, and may repeat.
    #[arg(long = "compare", value_name = "TARGET", num_args = 1..)]
    pub compare: Vec<String>,
    /// How long each run lasts, e.g. 500ms, 5s (default 2s unless --count).
    #[arg(long)]
    pub duration: Option<String>,
    /// Operations per run (with --duration: whichever comes first).
    #[arg(long)]
    pub count: Option<u64>,
    /// Connections working at once.
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// Rounds per configuration and target, interleaved; reports the
    /// min/median/max of operations per second across rounds.
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
    /// Trust anchors (PEM) for the server's certificate; default: the system bundle.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// Server name to send and verify; default: the target's host.
    #[arg(long)]
    pub sni: Option<String>,
    /// Do not verify the server's certificate (handshake signatures are still checked).
    #[arg(long)]
    pub insecure: bool,
    /// Client certificate chain (PEM), presented in every configuration to
    /// a server that asks for one.
    #[arg(long, requires = "key")]
    pub cert: Option<PathBuf>,
    /// The key for --cert (PEM).
    #[arg(long, requires = "cert")]
    pub key: Option<PathBuf>,
    /// Sample the CPU time and peak RSS of this process during each run:
    /// PID or LABEL=PID. Repeatable.
    #[arg(long = "pid", value_name = "[LABEL=]PID")]
    pub pids: Vec<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = BenchFormat::Table)]
    pub format: BenchFormat,
    /// Allow a target whose host is not loopback; name that host here.
    #[arg(long = "allow-remote", value_name = "HOST")]
    pub allow_remote: Vec<String>,
}

#[derive(Debug, Args)]
pub struct HandshakeArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Configurations to measure, comma-separated (default: all).
    #[arg(long, value_delimiter = ',')]
    pub configurations: Vec<String>,
    /// Measure an in-process TLS server with the proxy's TLS settings
    /// (TLS 1.3 only, its groups, session tickets; client certificates
    /// requested but optional so every configuration can be measured) and
    /// certificates from a temporary CA. Needs no database.
    #[arg(long = "self", conflicts_with = "target")]
    pub self_server: bool,
}

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// Database user (PostgreSQL, MySQL) or Redis ACL user.
    #[arg(long)]
    pub user: Option<String>,
    /// Database name (default: PostgreSQL the user's; MySQL none).
    #[arg(long)]
    pub database: Option<String>,
    /// Environment variable holding the password (default: PGPASSWORD,
    /// MYSQL_PWD or REDISCLI_AUTH by target).
    #[arg(long)]
    pub password_env: Option<String>,
}

#[derive(Debug, Args)]
pub struct QueryArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub login: LoginArgs,
    /// Connect, log in, query and disconnect for every operation.
    #[arg(long)]
    pub new_connection_each: bool,
}

#[derive(Debug, Args)]
pub struct ThroughputArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub login: LoginArgs,
    /// Value size in bytes, or with KiB/MiB (default 1MiB, at most 64MiB).
    #[arg(long, default_value = "1MiB")]
    pub size: String,
}

/// Runs `intransit bench`.
pub fn run(command: BenchCommand) -> Result<ExitCode> {
    let runtime = crate::runtime()?;
    runtime.block_on(async move {
        let (plan, format, self_server) = match command {
            BenchCommand::Handshake(args) => {
                let configurations = if args.configurations.is_empty() {
                    Configuration::ALL.to_vec()
                } else {
                    args.configurations
                        .iter()
                        .map(|name| {
                            Configuration::from_name(name.trim()).with_context(|| {
                                format!(
                                    "unknown configuration {name:?}; use {}",
                                    Configuration::ALL.map(Configuration::name).join(", ")
                                )
                            })
                        })
                        .collect::<Result<Vec<_>>>()?
                };
                let workload = Workload::Handshake { configurations };
                if args.self_server {
                    let server = SelfServer::start().await?;
                    let mut plan = plan_from(&args.common, workload, None, Some(&server))?;
                    plan.watched.clear();
                    (plan, args.common.format, Some(server))
                } else {
                    (
                        plan_from(&args.common, workload, None, None)?,
                        args.common.format,
                        None,
                    )
                }
            }
            BenchCommand::Query(args) => {
                let workload = Workload::Query {
                    new_connection_each: args.new_connection_each,
                };
                (
                    plan_from(&args.common, workload, Some(&args.login), None)?,
                    args.common.format,
                    None,
                )
            }
            BenchCommand::Throughput(args) => {
                let value_size = parse_size(&args.size)?;
                let workload = Workload::Throughput { value_size };
                (
                    plan_from(&args.common, workload, Some(&args.login), None)?,
                    args.common.format,
                    None,
                )
            }
        };

        // Installed before the first connection, so an early Ctrl-C or
        // SIGTERM still ends in a report.
        let mut signals = crate::ShutdownSignals::install()?;
        let (stop_tx, stop_rx) = watch::channel(false);
        tokio::spawn(async move {
            let name = signals.next().await;
            eprintln!("\n{name}: finishing the report with what was measured (interrupted)");
            let _ = stop_tx.send(true);
        });
        let progress = progress_display();
        let report = plan::execute(&plan, stop_rx, progress.as_ref().map(|(c, _)| c.clone()))
            .await
            .context("setting up the benchmark")?;
        if let Some((_, task)) = progress {
            task.abort();
            eprint!("\r\x1b[2K");
        }
        plan::clean_up(&plan).await;
        drop(self_server);
        print_report(&report, format);
        // 130, as a shell reports a command ended by SIGINT, so scripts
        // can tell partial results from complete ones.
        Ok(if report.interrupted {
            ExitCode::from(130)
        } else if report.has_errors() {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        })
    })
}

fn print_report(report: &Report, format: BenchFormat) {
    match format {
        BenchFormat::Json => out!("{}", report.to_json()),
        BenchFormat::Table => out!("{}", report.to_table().trim_end()),
        BenchFormat::Markdown => out!("{}", report.to_markdown().trim_end()),
    }
}

/// A counter of finished operations shown on stderr, only when stderr is
/// a terminal.
fn progress_display() -> Option<(Arc<AtomicU64>, tokio::task::JoinHandle<()>)> {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let count = Arc::new(AtomicU64::new(0));
    let shown = count.clone();
    let task = tokio::spawn(async move {
        // Short runs finish before the first line is drawn.
        tokio::time::sleep(Duration::from_secs(1)).await;
        loop {
            eprint!("\r\x1b[2K{} operations", shown.load(Ordering::Relaxed));
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    Some((count, task))
}

fn plan_from(
    common: &CommonArgs,
    workload: Workload,
    login: Option<&LoginArgs>,
    self_server: Option<&SelfServer>,
) -> Result<Plan> {
    let mut targets = Vec::new();
    let mut names = Vec::new();
    match (self_server, &common.target) {
        (Some(server), _) => {
            targets.push(server.target.clone());
            names.push("self".to_owned());
        }
        (None, Some(t)) => {
            let (name, target) = parse_named_target(t, &common.allow_remote)?;
            targets.push(target);
            names.push(name);
        }
        (None, None) => bail!("name a TARGET (postgres://, mysql:// or tls://HOST:PORT)"),
    }
    for t in &common.compare {
        let (name, target) = parse_named_target(t, &common.allow_remote)?;
        targets.push(target);
        names.push(name);
    }
    if let Some(dup) = names
        .iter()
        .enumerate()
        .find_map(|(i, n)| names[..i].contains(n).then_some(n))
    {
        bail!("two targets are called {dup:?}; give each its own NAME=URL");
    }
    let duration = common
        .duration
        .as_deref()
        .map(intransit_config::parse_duration)
        .transpose()
        .map_err(anyhow::Error::msg)
        .context("--duration")?;
    if duration.is_some_and(|d| d > MAX_DURATION) {
        bail!("--duration is at most {}s", MAX_DURATION.as_secs());
    }
    if duration.is_some_and(|d| d.is_zero()) {
        bail!("--duration must be more than 0");
    }
    if common.count.is_some_and(|c| c == 0 || c > MAX_COUNT) {
        bail!("--count is from 1 to {MAX_COUNT}");
    }
    if common.concurrency == 0 || common.concurrency > MAX_CONCURRENCY {
        bail!("--concurrency is from 1 to {MAX_CONCURRENCY}");
    }
    if common.repeat == 0 || common.repeat > MAX_REPEAT {
        bail!("--repeat is from 1 to {MAX_REPEAT}");
    }
    let bounds = Bounds {
        duration: match (duration, common.count) {
            (None, None) => Some(Duration::from_secs(2)),
            (d, _) => d,
        },
        count: common.count,
        concurrency: common.concurrency,
    };
    let watched = common
        .pids
        .iter()
        .map(|p| parse_pid(p))
        .collect::<Result<Vec<_>>>()?;
    let mut tls = TlsOptions {
        ca: common.ca.clone(),
        insecure: common.insecure,
        client_cert: common.cert.clone().zip(common.key.clone()),
        server_name: common.sni.clone(),
    };
    if let Some(server) = self_server {
        tls.ca = Some(server.ca.clone());
        tls.server_name = Some("localhost".into());
        if tls.client_cert.is_none() {
            tls.client_cert = Some(server.client.clone());
        }
    }
    let credentials = match login {
        Some(login) => {
            let first = targets.first().context("no target")?;
            let env = login.password_env.clone().unwrap_or_else(|| {
                match first {
                    Target::Postgres { .. } => "PGPASSWORD",
                    Target::Mysql { .. } => "MYSQL_PWD",
                    Target::Tls { .. } => "REDISCLI_AUTH",
                }
                .to_owned()
            });
            let password = std::env::var(&env).ok();
            if login.password_env.is_some() && password.is_none() {
                bail!("--password-env {env}: that environment variable is not set");
            }
            Credentials {
                user: login.user.clone(),
                password,
                database: login.database.clone(),
            }
        }
        None => Credentials::default(),
    };
    Ok(Plan {
        workload,
        targets,
        names,
        tls,
        credentials,
        bounds,
        repeat: common.repeat,
        watched,
    })
}

/// Parses `NAME=URL` or `URL`; the name defaults to the URL as written
/// back by [`Target`]'s `Display`.
fn parse_named_target(text: &str, allow_remote: &[String]) -> Result<(String, Target)> {
    let (name, url) = match text.split_once('=') {
        Some((name, url)) if !name.contains("://") => (Some(name.trim()), url),
        _ => (None, text),
    };
    if name.is_some_and(str::is_empty) {
        bail!("{text:?}: the name before '=' is empty; write NAME=URL or just the URL");
    }
    let target = parse_target(url, allow_remote)?;
    Ok((
        name.map_or_else(|| target.to_string(), str::to_owned),
        target,
    ))
}

/// Parses a target and applies the loopback rule.
fn parse_target(text: &str, allow_remote: &[String]) -> Result<Target> {
    let target: Target = text.parse().with_context(|| format!("target {text:?}"))?;
    let host = target.host();
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if !loopback && !allow_remote.iter().any(|h| h.eq_ignore_ascii_case(host)) {
        bail!(
            "{target} is not a loopback address; bench loads the server it measures, so name a remote host explicitly with --allow-remote {host}"
        );
    }
    Ok(target)
}

fn parse_pid(text: &str) -> Result<Watched> {
    let (label, pid) = match text.split_once('=') {
        Some((label, pid)) => (label.to_owned(), pid),
        None => (text.to_owned(), text),
    };
    let pid: u32 = pid
        .trim()
        .parse()
        .with_context(|| format!("--pid {text:?}: write PID or LABEL=PID"))?;
    intransit_bench::process::read_cpu_ticks(pid)
        .with_context(|| format!("--pid {pid}: reading /proc/{pid}/stat"))?;
    Ok(Watched { label, pid })
}

fn parse_size(text: &str) -> Result<usize> {
    let t = text.trim();
    let (number, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: usize = number
        .parse()
        .with_context(|| format!("--size {text:?}: write e.g. 1MiB, 64KiB or 1000"))?;
    let size = match unit {
        "" | "B" => n,
        "KiB" | "k" | "K" => n.saturating_mul(1 << 10),
        "MiB" | "M" => n.saturating_mul(1 << 20),
        _ => bail!("--size {text:?}: unknown unit {unit:?}; use B, KiB or MiB"),
    };
    if size == 0 || size > MAX_VALUE_SIZE {
        bail!("--size is from 1 byte to 64MiB");
    }
    Ok(size)
}

/// The in-process server of `--self`: the proxy's rustls server
/// configuration over certificates from a temporary CA, completing
/// handshakes and closing when the client closes.
struct SelfServer {
    target: Target,
    ca: PathBuf,
    client: (PathBuf, PathBuf),
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Drop for SelfServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Connections the `--self` server serves at once.
const SELF_MAX_CONNECTIONS: usize = 1024;

impl SelfServer {
    async fn start() -> Result<SelfServer> {
        let dir = tempfile::tempdir().context("creating a temporary directory for --self")?;
        let quick = intransit_pki::StateDir::new(dir.path().join("state"))
            .ensure_quickstart(
                &["localhost".to_owned()],
                &[IpAddr::V4(Ipv4Addr::LOCALHOST)],
                "intransit-bench",
            )
            .context("creating certificates for --self")?;
        let server_tls = ServerTls {
            cert: quick.server.chain.clone(),
            key: quick.server.key.clone(),
            client_ca: Some(quick.ca_cert.clone()),
            crl: None,
            stale_crl: intransit_config::StaleCrl::Refuse,
            min_version: TlsVersion::V1_3,
            client_auth: ClientAuth::Optional,
            allow: AllowList::default(),
        };
        let listener_tls = intransit_proxy::tls::ListenerTls::build(&server_tls, Vec::new())
            .context("building the --self server's TLS configuration")?;
        let acceptor = tokio_rustls::TlsAcceptor::from(listener_tls.snapshot().config());
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .context("binding the --self server on 127.0.0.1")?;
        let port = listener
            .local_addr()
            .context("reading the --self port")?
            .port();
        let limit = Arc::new(tokio::sync::Semaphore::new(SELF_MAX_CONNECTIONS));
        let task = tokio::spawn(async move {
            loop {
                let Ok(permit) = limit.clone().acquire_owned().await else {
                    return;
                };
                let Ok((tcp, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    let serve = async {
                        let mut tls = acceptor.accept(tcp).await?;
                        let mut buf = [0u8; 1024];
                        while tls.read(&mut buf).await? > 0 {}
                        tls.shutdown().await
                    };
                    let _ = tokio::time::timeout(Duration::from_secs(30), serve).await;
                });
            }
        });
        Ok(SelfServer {
            target: Target::Tls {
                host: "127.0.0.1".into(),
                port,
            },
            ca: quick.ca_cert,
            client: (quick.client.chain, quick.client.key),
            task,
            _dir: dir,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_targets_unless_named() {
        assert!(parse_target("postgres://127.0.0.1:5432", &[]).is_ok());
        assert!(parse_target("tls://[::1]:6379", &[]).is_ok());
        assert!(parse_target("mysql://localhost:3306", &[]).is_ok());
        let err = parse_target("postgres://db.example:5432", &[]).unwrap_err();
        assert!(
            format!("{err:#}").contains("--allow-remote db.example"),
            "{err:#}"
        );
        assert!(parse_target("postgres://db.example:5432", &["db.example".into()]).is_ok());
        assert!(parse_target("postgres://10.0.0.1:5432", &["db.example".into()]).is_err());
    }

    #[test]
    fn compare_takes_several_targets() {
        use clap::Parser;
        #[derive(Debug, Parser)]
        struct Wrapper {
            #[command(subcommand)]
            bench: BenchCommand,
        }
        let parsed = Wrapper::try_parse_from([
            "bench",
            "query",
            "tls://127.0.0.1:1",
            "--compare",
            "tls://127.0.0.1:2",
            "tls://127.0.0.1:3",
            "--compare",
            "tls://127.0.0.1:4",
            "--count",
            "1",
        ])
        .unwrap();
        let BenchCommand::Query(args) = parsed.bench else {
            panic!("not query");
        };
        assert_eq!(args.common.target.as_deref(), Some("tls://127.0.0.1:1"));
        assert_eq!(args.common.compare.len(), 3);
    }

    #[test]
    fn targets_may_be_named() {
        let (name, target) = parse_named_target("native=postgres://127.0.0.1:5432", &[]).unwrap();
        assert_eq!(name, "native");
        assert_eq!(target.port(), 5432);
        let (name, _) = parse_named_target("tls://127.0.0.1:6379", &[]).unwrap();
        assert_eq!(name, "tls://127.0.0.1:6379");
        assert!(parse_named_target("=tls://127.0.0.1:6379", &[]).is_err());
    }

    #[test]
    fn sizes_with_units_and_bounds() {
        assert_eq!(parse_size("1MiB").unwrap(), 1 << 20);
        assert_eq!(parse_size("64KiB").unwrap(), 64 << 10);
        assert_eq!(parse_size("1000").unwrap(), 1000);
        assert!(parse_size("0").is_err());
        assert!(parse_size("65MiB").is_err());
        assert!(parse_size("1GB").is_err());
    }
}
