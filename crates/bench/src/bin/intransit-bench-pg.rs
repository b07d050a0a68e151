//! `intransit-bench-pg`: the measuring tool behind
//! `scripts/bench-postgres.sh`. Each subcommand prints `key=value` lines so
//! the script can quote them in its report.
//!
//! This binary only wires `intransit_bench` together (its libpq-like
//! connector, the interleaving runner and the idle-session holder); the
//! user-facing measuring command is `intransit bench`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use intransit_bench::pg::{client_config, ClientTlsFiles, PgTlsConnector, LIBPQ_GROUPS};
use intransit_bench::process::{read_cpu_ticks, read_memory};
use intransit_bench::runner::{
    close_sessions, count_still_idle, hold_until_file, interleaved, open_sessions, HoldEnd,
    HoldStage, Probe, Target,
};
use intransit_bench::stats::{LatencySummary, Spread};

#[derive(Debug, Parser)]
#[command(
    name = "intransit-bench-pg",
    about = "Measure intransit against PostgreSQL's own TLS"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Connect + SSLRequest + TLS 1.3 with a client certificate, sequentially,
    /// interleaved across targets; prints percentiles per target.
    Latency(LatencyArgs),
    /// Open many idle sessions through one endpoint and report the resident
    /// memory of a process (the proxy) before, while they are open, and after;
    /// optionally hold them until a file appears.
    Idle(IdleArgs),
    /// Median, minimum and maximum of numbers (for example tps of repeated runs).
    Spread {
        /// The numbers.
        #[arg(required = true)]
        values: Vec<f64>,
    },
    /// CPU time (utime + stime, and that of waited-for children, in clock
    /// ticks) and memory of a process.
    Proc {
        /// Process id.
        pid: u32,
    },
}

#[derive(Debug, Args)]
struct TlsArgs {
    /// CA that signed the server certificate (sslrootcert).
    #[arg(long)]
    ca: PathBuf,
    /// Client certificate (sslcert).
    #[arg(long)]
    cert: PathBuf,
    /// Client key (sslkey).
    #[arg(long)]
    key: PathBuf,
    /// Name the server certificate must carry (verify-full).
    #[arg(long, default_value = "127.0.0.1")]
    server_name: String,
    /// Key exchange groups to offer, in order; the first gets a key share.
    /// The default is what libpq with OpenSSL 3.0 offers.
    #[arg(long, value_delimiter = ',', default_values_t = LIBPQ_GROUPS.iter().map(|g| g.to_string()))]
    groups: Vec<String>,
}

impl TlsArgs {
    fn connector(&self, address: &str) -> Result<PgTlsConnector> {
        let files = ClientTlsFiles {
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
        };
        let groups: Vec<&str> = self.groups.iter().map(String::as_str).collect();
        let config = Arc::new(client_config(&files, &groups)?);
        Ok(PgTlsConnector::new(address, &self.server_name, config)?)
    }
}

#[derive(Debug, Args)]
struct LatencyArgs {
    #[command(flatten)]
    tls: TlsArgs,
    /// NAME=HOST:PORT, repeated; measured in turn.
    #[arg(long = "target", required = true)]
    targets: Vec<String>,
    /// Timed probes per target.
    #[arg(long, default_value_t = 2000)]
    count: usize,
    /// Untimed probes per target first.
    #[arg(long, default_value_t = 50)]
    warmup: usize,
    /// Time up to ReadyForQuery (StartupMessage included) instead of the
    /// TLS handshake alone.
    #[arg(long)]
    session: bool,
    /// Database user for --session.
    #[arg(long, default_value = "bench")]
    user: String,
    /// Database for --session.
    #[arg(long, default_value = "bench")]
    database: String,
    /// With --session, also send this simple query after the login and
    /// time up to its ReadyForQuery (`SELECT 1`).
    #[arg(long, requires = "session")]
    query: Option<String>,
}

#[derive(Debug, Args)]
struct IdleArgs {
    #[command(flatten)]
    tls: TlsArgs,
    /// HOST:PORT of the proxy.
    #[arg(long)]
    target: String,
    /// Process whose memory is read (the proxy).
    #[arg(long)]
    watch_pid: u32,
    /// Sessions to open and hold.
    #[arg(long, default_value_t = 1000)]
    count: usize,
    /// How far each session goes: `ready` logs in (StartupMessage up to
    /// ReadyForQuery), `tls` stops after the TLS handshake with the client
    /// certificate and sends nothing inside TLS.
    #[arg(long, value_enum, default_value_t = Stage::Ready)]
    stage: Stage,
    /// Once the sessions are open and measured, print that line and hold
    /// them until this file exists (or --hold-max-secs passes), then check
    /// that each is still open and idle, and close them.
    #[arg(long)]
    hold_until_file: Option<PathBuf>,
    /// The longest a hold lasts, in seconds.
    #[arg(long, default_value_t = 1800, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    hold_max_secs: u64,
    /// Sessions being set up at the same time.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Wait this long after the last session opened (and after closing)
    /// before reading memory, so in-flight work settles.
    #[arg(long, default_value_t = 1000)]
    settle_ms: u64,
    /// Database user.
    #[arg(long, default_value = "bench")]
    user: String,
    /// Database.
    #[arg(long, default_value = "bench")]
    database: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Stage {
    /// Logged in, ReadyForQuery read.
    Ready,
    /// TLS established, nothing sent inside it.
    Tls,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    // One thread: the probes are sequential, and the measuring client must
    // not take the second core from the server it measures.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn run(command: Command) -> Result<()> {
    match command {
        Command::Latency(args) => runtime()?.block_on(latency(args)),
        Command::Idle(args) => runtime()?.block_on(idle(args)),
        Command::Spread { values } => {
            let Some(s) = Spread::from_values(&values) else {
                bail!("no usable numbers");
            };
            println!(
                "count={} median={:.1} min={:.1} max={:.1}",
                s.count, s.median, s.min, s.max
            );
            Ok(())
        }
        Command::Proc { pid } => {
            let cpu = read_cpu_ticks(pid).with_context(|| format!("reading CPU time of {pid}"))?;
            let mem = read_memory(pid).with_context(|| format!("reading memory of {pid}"))?;
            println!(
                "cpu_ticks={} user_ticks={} system_ticks={} children_ticks={} rss_kib={} hwm_kib={}",
                cpu.total(),
                cpu.user,
                cpu.system,
                cpu.children,
                mem.rss_kib,
                mem.hwm_kib
            );
            Ok(())
        }
    }
}

async fn latency(args: LatencyArgs) -> Result<()> {
    let targets = args
        .targets
        .iter()
        .map(|spec| {
            let Some((name, address)) = spec.split_once('=') else {
                bail!("--target {spec:?}: expected NAME=HOST:PORT");
            };
            Ok(Target {
                name: name.to_owned(),
                connector: args.tls.connector(address)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let (probe, probe_name) = if args.session {
        let probe = Probe::Session {
            user: args.user.clone(),
            database: args.database.clone(),
            query: args.query.clone(),
        };
        (
            probe,
            if args.query.is_some() {
                "query"
            } else {
                "session"
            },
        )
    } else {
        (Probe::Handshake, "handshake")
    };
    let samples = interleaved(&targets, &probe, args.warmup, args.count)
        .await
        .map_err(|(target, e)| anyhow::anyhow!("target {target}: {e}"))?;
    for s in samples {
        let Some(summary) = LatencySummary::from_samples(&s.durations) else {
            bail!("target {}: no samples", s.target);
        };
        println!(
            "target={} probe={} groups={} count={} p50_us={} p90_us={} p99_us={} min_us={} max_us={} mean_us={}",
            s.target,
            probe_name,
            args.tls.groups.join(","),
            summary.count,
            micros(summary.p50),
            micros(summary.p90),
            micros(summary.p99),
            micros(summary.min),
            micros(summary.max),
            micros(summary.mean),
        );
    }
    Ok(())
}

async fn idle(args: IdleArgs) -> Result<()> {
    let connector = args.tls.connector(&args.target)?;
    let stage = match args.stage {
        Stage::Ready => HoldStage::Ready {
            user: args.user.clone(),
            database: args.database.clone(),
        },
        Stage::Tls => HoldStage::Tls,
    };
    let settle = Duration::from_millis(args.settle_ms);
    let memory = |when: &str| {
        read_memory(args.watch_pid)
            .with_context(|| format!("reading memory of process {} {when}", args.watch_pid))
    };
    let before = memory("before opening sessions")?;
    let started = Instant::now();
    let mut sessions = open_sessions(&connector, &stage, args.count, args.concurrency)
        .await
        .with_context(|| format!("opening {} sessions through {}", args.count, args.target))?;
    let open_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(settle).await;
    let open = memory("with the sessions open")?;
    let opened = sessions.len();
    let per_connection_kib =
        open.rss_kib.saturating_sub(before.rss_kib) as f64 / opened.max(1) as f64;
    let opened_line = format!(
        "sessions={opened} stage={} open_secs={open_secs:.2} \
         baseline_rss_kib={} baseline_hwm_kib={} open_rss_kib={} open_hwm_kib={} \
         per_connection_kib={per_connection_kib:.1}",
        args.stage.name(),
        before.rss_kib,
        before.hwm_kib,
        open.rss_kib,
        open.hwm_kib,
    );
    let mut hold = String::new();
    if let Some(release) = &args.hold_until_file {
        // The caller reads this line while the sessions are held.
        println!("{opened_line}");
        let held = Instant::now();
        let end = hold_until_file(
            release,
            Duration::from_millis(100),
            Duration::from_secs(args.hold_max_secs),
        )
        .await;
        let still_idle = count_still_idle(&mut sessions).await;
        hold = format!(
            "held_secs={:.1} hold_end={} still_idle={still_idle} ",
            held.elapsed().as_secs_f64(),
            match end {
                HoldEnd::Released => "released",
                HoldEnd::TimedOut => "timed_out",
            },
        );
    }
    let closed_cleanly = close_sessions(sessions).await;
    tokio::time::sleep(settle).await;
    let after = memory("after closing the sessions")?;
    let closed_line = format!(
        "{hold}closed_cleanly={closed_cleanly} closed_rss_kib={} closed_hwm_kib={}",
        after.rss_kib, after.hwm_kib,
    );
    if args.hold_until_file.is_some() {
        println!("{closed_line}");
    } else {
        println!("{opened_line} {closed_line}");
    }
    Ok(())
}

impl Stage {
    fn name(self) -> &'static str {
        match self {
            Stage::Ready => "ready",
            Stage::Tls => "tls",
        }
    }
}

fn micros(d: Duration) -> u128 {
    d.as_micros()
}
