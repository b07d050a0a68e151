//! The `intransit` binary: command-line parsing, logging, configuration
//! loading and signal handling. Everything else lives in the library crates;
//! this file only wires them together.

#![forbid(unsafe_code)]

/// `println!` that treats a closed stdout (`intransit cert list | head`)
/// as the end of the output rather than a panic.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::write_stdout_line(format_args!($($arg)*))
    };
}

mod acme_cmd;
mod admin;
mod bench_cmd;
mod cli;
mod compliance_cmd;
mod demo;
mod descriptors;
mod errors;
mod inspect;
mod manual;
mod pki_cmd;
mod reload;
mod reload_cmd;
mod renewal;
mod rotate;
mod service_manager;
mod up;
mod watch;

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use intransit_config::{Config, StaleCrl};
use intransit_pki::{CrlFreshness, CrlWarning};
use intransit_proxy::Proxy;
use tracing::{info, warn};

use crate::cli::{Cli, Command, LogFormat, RotateCommand};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format, cli.log_level.as_deref());
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", errors::chain(&e));
            ExitCode::FAILURE
        }
    }
}

pub(crate) fn write_stdout_line(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let written = stdout
        .write_fmt(args)
        .and_then(|()| stdout.write_all(b"\n"));
    if let Err(e) = written {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: writing to stdout: {e}");
        std::process::exit(1);
    }
}

fn init_logging(format: LogFormat, level: Option<&str>) {
    use tracing_subscriber::EnvFilter;
    let filter = match level {
        Some(l) => EnvFilter::new(l),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn run(command: Command) -> Result<ExitCode> {
    match command {
        Command::Up(args) => {
            raise_descriptor_limit(None);
            runtime()?.block_on(up::run(args))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Proxy(args) => {
            let path = args.config.path()?.to_owned();
            let config = load_config(&path)?;
            let elsewhere = |listener: &str| {
                format!(
                    "give listener {listener:?} another listen address in {}",
                    path.display()
                )
            };
            let proxy = Proxy::prepare(&config)
                .map_err(|e| errors::explain_listener(e, &elsewhere))
                .with_context(|| format!("checking {}", path.display()))?;
            let admin_tls = admin::prepare_tls(config.admin_tls.as_ref())?;
            raise_descriptor_limit(Some(&config));
            runtime()?.block_on(async {
                let signals = ShutdownSignals::install()?;
                let hup = watch::install_sighup()?;
                let bound = proxy
                    .bind()
                    .await
                    .map_err(|e| errors::explain_listener(e, &elsewhere))?;
                let pid_file = args.pid_file.as_ref().or(config.pid_file.as_ref());
                let _pid_file = pid_file.map(|p| reload::PidFile::create(p)).transpose()?;
                if let Some(addr) = config.admin {
                    let admin_elsewhere =
                        format!("set another admin address in {}", path.display());
                    admin::start(
                        addr,
                        admin_tls,
                        config.admin_limits,
                        &bound,
                        &admin_elsewhere,
                    )
                    .await?;
                }
                watch::spawn(reload::Reloader::new(Some(path.clone()), &bound), hup);
                serve(bound, signals).await;
                Ok::<_, anyhow::Error>(())
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Ca { state_dir, command } => pki_cmd::run_ca(&state_dir, command),
        Command::Cert { state_dir, command } => pki_cmd::run_cert(&state_dir, command),
        Command::Pin { target, sni } => inspect::run_pin(&target, sni.as_deref()),
        Command::Lint(args) => Ok(compliance_cmd::lint(&args)),
        Command::Scan(args) => Ok(compliance_cmd::scan(&args)),
        Command::Policy { command } => compliance_cmd::policy(command),
        Command::Config { command } => compliance_cmd::config(command),
        Command::Rotate(RotateCommand::Postgres(args)) => rotate::postgres::run(args),
        Command::Rotate(RotateCommand::Mariadb(args)) => rotate::mariadb::run(args),
        Command::Bench(command) => bench_cmd::run(command),
        Command::Reload(args) => reload_cmd::run(&args),
        Command::Completions { shell } => {
            manual::completions(shell)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Man {
            out_dir: Some(dir), ..
        } => {
            let pages = manual::write_man_pages(&dir)?;
            out!("wrote {pages} manual pages to {}", dir.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Man {
            command,
            out_dir: None,
        } => {
            manual::man(command.as_deref())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig(args) => {
            let path = args.config.path()?;
            let config = load_config(path)?;
            let proxy = Proxy::prepare(&config)
                .map_err(|e| errors::explain_listener(e, &|_| String::new()))
                .with_context(|| format!("checking {}", path.display()))?;
            admin::prepare_tls(config.admin_tls.as_ref())
                .with_context(|| format!("checking {}", path.display()))?;
            let crl_warning = pki_cmd::crl_warning(args.crl_warn.as_deref())?;
            let crl_notes = crl_notes(&proxy, crl_warning);
            let refusing = crl_notes.iter().any(|n| n.refuses);
            if refusing {
                out!(
                    "{}: loads, but a stale CRL refuses client certificates (below)",
                    path.display()
                );
            } else {
                out!("{}: OK", path.display());
            }
            let needed = descriptors::needed(&config);
            let hard = descriptors::hard_limit();
            out!(
                "  file descriptors: up to {needed} needed; the hard limit here is {hard} (the proxy raises its soft limit to it)"
            );
            if let Some(words) = descriptors::shortfall(needed, hard) {
                out!("  warning: {words}");
            }
            for l in proxy.listeners() {
                out!(
                    "  listener {:?}: {} -> {} ({}, TLS >= {}, client certificates {}, {} allow pattern(s), db_users {})",
                    l.basics.name,
                    l.basics.listen,
                    l.default_route.upstream,
                    l.basics.protocol,
                    config_listener(&config, &l.basics.name).map_or("?".into(), |c| c.tls.min_version.to_string()),
                    config_listener(&config, &l.basics.name).map_or("?".into(), |c| c.tls.client_auth.to_string()),
                    config_listener(&config, &l.basics.name).map_or(0, |c| c.tls.allow.patterns().len()),
                    if l.default_route.db_users.is_empty() { "not enforced" } else { "enforced" },
                );
                for r in &l.routes {
                    out!(
                        "    route {}: -> {} (db_users {})",
                        r.label(),
                        r.upstream,
                        if r.db_users.is_empty() {
                            "not enforced"
                        } else {
                            "enforced"
                        },
                    );
                }
            }
            for l in proxy.client_listeners() {
                let tls = l.upstream_tls.settings();
                out!(
                    "  listener {:?} (client mode): plaintext on {} -> {} ({}, upstream TLS {}, server name {}, {} pin(s), client certificate {})",
                    l.basics.name,
                    l.basics.listen,
                    l.upstream,
                    l.basics.protocol,
                    tls.mode,
                    tls.server_name,
                    tls.pins.len(),
                    if tls.cert.is_some() { "presented" } else { "none" },
                );
            }
            for note in &crl_notes {
                out!(
                    "{}: {}",
                    if note.refuses { "error" } else { "warning" },
                    note.text
                );
            }
            Ok(if refusing {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}

/// Raises the soft limit on open files to the hard limit, before anything
/// binds, and warns when the limits of `config` cannot fit in it.
fn raise_descriptor_limit(config: Option<&Config>) {
    let limit = match descriptors::raise_soft_limit() {
        Ok(raised) => {
            info!(
                before = raised.before,
                now = raised.now,
                "soft limit on open files"
            );
            raised.now
        }
        Err(e) => {
            warn!(error = %e, "cannot raise the soft limit on open files");
            return;
        }
    };
    let Some(config) = config else {
        return;
    };
    if let Some(words) = descriptors::shortfall(descriptors::needed(config), limit) {
        warn!(limit, needed = descriptors::needed(config), "{words}");
    }
}

/// A CRL in a checked configuration that is stale or needs replacing soon.
struct CrlNote {
    /// Stale, under `stale_crl = "refuse"`: clients of that CA are refused.
    refuses: bool,
    text: String,
}

/// The CRLs of every route that are stale now or need attention by
/// `warning` (less than half of their validity period left, or a fixed
/// `--crl-warn` window), and what the listener will do about them.
fn crl_notes(proxy: &Proxy, warning: CrlWarning) -> Vec<CrlNote> {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut notes = Vec::new();
    for l in proxy.listeners() {
        for route in std::iter::once(&l.default_route).chain(&l.routes) {
            let material = route.tls.snapshot();
            for crl in &material.crls {
                let Some(next) = crl.next_update_unix else {
                    continue;
                };
                let at = format!(
                    "listener {:?} route {}: the CRL from {} in {}",
                    l.basics.name,
                    route.label(),
                    crl.issuer,
                    crl.path.display()
                );
                let next_text = time::OffsetDateTime::from_unix_timestamp(next)
                    .ok()
                    .and_then(|t| {
                        t.format(&time::format_description::well_known::Rfc3339)
                            .ok()
                    })
                    .unwrap_or_else(|| next.to_string());
                let freshness = crl.freshness(now);
                if freshness == CrlFreshness::Stale {
                    let refuses = material.policy.stale_crl == StaleCrl::Refuse;
                    let text = if refuses {
                        format!("{at} is stale since {next_text} (its nextUpdate): client certificates of that CA will be refused (crl_expired) until a fresh CRL is installed; stale_crl = \"allow\" would admit them")
                    } else {
                        format!("{at} is stale since {next_text} (its nextUpdate): stale_crl = \"allow\" admits client certificates of that CA, including any revoked since it was issued")
                    };
                    notes.push(CrlNote { refuses, text });
                    continue;
                }
                let warn = match warning {
                    CrlWarning::ByPeriod => freshness.needs_attention(),
                    CrlWarning::Within(window) => next - now <= window.whole_seconds(),
                };
                if warn {
                    let share = match freshness {
                        CrlFreshness::GoingStale => {
                            ", with less than a seventh of its validity period left"
                        }
                        CrlFreshness::Ageing => ", with less than half of its validity period left",
                        CrlFreshness::Fresh | CrlFreshness::Stale => "",
                    };
                    notes.push(CrlNote {
                        refuses: false,
                        text: format!("{at} goes stale at {next_text} (its nextUpdate){share}; install a fresh CRL before then"),
                    });
                }
            }
        }
    }
    notes
}

fn config_listener<'a>(
    config: &'a Config,
    name: &str,
) -> Option<&'a intransit_config::ListenerConfig> {
    config.listeners.iter().find(|l| l.name == name)
}

/// Reads and validates a configuration file; relative paths in it are
/// taken from the file's directory.
pub(crate) fn load_config(path: &Path) -> Result<Config> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading configuration {}", path.display()))?;
    let absolute = std::path::absolute(path)
        .with_context(|| format!("locating configuration {}", path.display()))?;
    let dir = absolute.parent().unwrap_or(Path::new("/"));
    Config::from_toml_in(&text, dir)
        .with_context(|| format!("invalid configuration {}", path.display()))
}

/// SIGINT and SIGTERM handlers, installed before anything is printed or
/// bound so that a signal arriving early is never lost to the default
/// action (which would kill the process without a drain).
pub(crate) struct ShutdownSignals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    pub(crate) fn install() -> Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(ShutdownSignals {
            interrupt: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            terminate: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
        })
    }

    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
        }
    }
}

/// Runs a bound proxy until SIGINT or SIGTERM, then drains. A second signal
/// during the drain exits at once.
pub(crate) async fn serve(bound: intransit_proxy::BoundProxy, signals: ShutdownSignals) {
    serve_then(bound, signals, || {}).await;
}

/// [`serve`], running `before_exit` (on a blocking thread) when a second
/// signal ends the process without waiting for the drain.
///
/// Every listener is bound when this is called, so it is where the service
/// manager hears that the proxy is ready, and where its watchdog starts.
pub(crate) async fn serve_then(
    bound: intransit_proxy::BoundProxy,
    mut signals: ShutdownSignals,
    before_exit: impl FnOnce() + Send + 'static,
) {
    service_manager::ready(bound.listeners().len() + bound.client_listeners().len());
    service_manager::spawn_watchdog();
    let shutdown = async move {
        let signal = signals.next().await;
        info!(
            signal,
            "shutdown requested; no longer accepting connections"
        );
        service_manager::stopping();
        tokio::spawn(async move {
            let signal = signals.next().await;
            warn!(
                signal,
                "second signal: exiting without waiting for connections"
            );
            let _ = tokio::task::spawn_blocking(before_exit).await;
            std::process::exit(130);
        });
    };
    bound.run(shutdown).await;
}
