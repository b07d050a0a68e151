//! What `intransit bench` runs and in which order: a workload, one or more
//! targets measured in turn (A, B, A, B, ... for `--compare` and
//! `--repeat`), and the report that comes out.
//!
//! Runs are interleaved so that drift in the machine's load hits every
//! target alike. Every run is bounded by [`crate::measure`]'s caps.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use intransit_scan::Target;
use tokio::sync::watch;

use crate::client::{
    Configuration, Connected, Endpoint, OpError, SetupError, TlsFacts, TlsOptions,
};
use crate::measure::{self, Bounds, RunOutcome, Sample, Watched};
use crate::report::{Measured, Report, RunReport};
use crate::session::{Credentials, Session};

/// What each operation does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Workload {
    /// Connect, negotiate, TLS handshake, close, for each configuration.
    Handshake {
        /// The configurations, in report order.
        configurations: Vec<Configuration>,
    },
    /// One trivial query per operation.
    Query {
        /// Connect and log in for every query instead of reusing sessions.
        new_connection_each: bool,
    },
    /// Redis `GET` of a value of this many bytes (set once beforehand).
    Throughput {
        /// The value's size.
        value_size: usize,
    },
}

impl Plan {
    /// What reports call target `index`.
    pub fn name_of(&self, index: usize) -> String {
        match (self.names.get(index), self.targets.get(index)) {
            (Some(name), _) => name.clone(),
            (None, Some(target)) => target.to_string(),
            (None, None) => String::new(),
        }
    }
}

impl Workload {
    /// The subcommand's name.
    pub fn name(&self) -> &'static str {
        match self {
            Workload::Handshake { .. } => "handshake",
            Workload::Query { .. } => "query",
            Workload::Throughput { .. } => "throughput",
        }
    }
}

/// Everything a benchmark needs.
#[derive(Debug, Clone)]
pub struct Plan {
    /// What to do.
    pub workload: Workload,
    /// The targets, the first being the baseline of ratios.
    pub targets: Vec<Target>,
    /// What reports call each target (`native`, `proxy`); a target without
    /// a name here is called by its URL.
    pub names: Vec<String>,
    /// How to do TLS.
    pub tls: TlsOptions,
    /// Who logs in (query and throughput).
    pub credentials: Credentials,
    /// When each run ends.
    pub bounds: Bounds,
    /// How many times each (configuration, target) pair is run, in turn.
    pub repeat: usize,
    /// Processes whose cost is sampled.
    pub watched: Vec<Watched>,
}

/// The largest `--repeat`.
pub const MAX_REPEAT: usize = 100;
/// The largest value for `throughput`.
pub const MAX_VALUE_SIZE: usize = 64 << 20;

/// Runs the plan. `stop` turning `true` ends the current run and skips the
/// rest; the report then says it was interrupted. `progress` counts
/// successful operations, for a display.
pub async fn execute(
    plan: &Plan,
    stop: watch::Receiver<bool>,
    progress: Option<Arc<AtomicU64>>,
) -> Result<Report, SetupError> {
    let configurations: Vec<Option<Configuration>> = match &plan.workload {
        Workload::Handshake { configurations } => {
            configurations.iter().copied().map(Some).collect()
        }
        _ => vec![None],
    };
    // Build every endpoint before the first connection, so a bad file or
    // name stops the command before it measures anything.
    let mut rows: Vec<Row> = Vec::new();
    for configuration in &configurations {
        for (index, target) in plan.targets.iter().enumerate() {
            let endpoint = Endpoint::new(target, *configuration, &plan.tls, Vec::new())?;
            let mut row = Row::new(&plan.workload, *configuration, target, endpoint);
            row.name = plan.name_of(index);
            rows.push(row);
        }
    }
    let repeat = plan.repeat.clamp(1, MAX_REPEAT);
    let mut interrupted = false;
    for configuration in &configurations {
        for _round in 0..repeat {
            for row in rows
                .iter_mut()
                .filter(|r| r.configuration == *configuration)
            {
                if *stop.borrow() {
                    interrupted = true;
                    break;
                }
                if row.done() {
                    continue;
                }
                let outcome = run_one(plan, row, stop.clone(), progress.clone()).await;
                interrupted |= outcome.as_ref().is_some_and(|o| o.interrupted);
                if let Some(outcome) = outcome {
                    row.absorb(outcome);
                }
            }
        }
    }
    let runs: Vec<RunReport> = rows.into_iter().map(Row::finish).collect();
    let measured = Measured {
        command: plan.workload.name(),
        targets: (0..plan.targets.len()).map(|i| plan.name_of(i)).collect(),
        urls: plan.targets.iter().map(ToString::to_string).collect(),
        bounds: plan.bounds,
    };
    Ok(Report::new(measured, repeat, interrupted, runs))
}

/// The state of one (configuration, target) pair across rounds.
struct Row {
    configuration: Option<Configuration>,
    label: String,
    name: String,
    target: Target,
    endpoint: Option<Endpoint>,
    /// Set when the pair will not run (again): skipped, refused, error.
    status: Option<(&'static str, String)>,
    primed: bool,
    tls: Option<TlsFacts>,
    samples: Vec<Sample>,
    failures: u64,
    first_failure: Option<String>,
    elapsed: Duration,
    rates: Vec<f64>,
    processes: Vec<measure::ProcessCost>,
}

impl Row {
    fn new(
        workload: &Workload,
        configuration: Option<Configuration>,
        target: &Target,
        endpoint: Option<Endpoint>,
    ) -> Row {
        let label = match (configuration, workload) {
            (Some(c), _) => c.name().to_owned(),
            (
                None,
                Workload::Query {
                    new_connection_each: true,
                },
            ) => {
                format!("{}-new-connection", query_name(target))
            }
            (None, Workload::Query { .. }) => query_name(target).to_owned(),
            (None, Workload::Throughput { value_size }) => {
                format!("get-{}", size_name(*value_size))
            }
            (None, Workload::Handshake { .. }) => "handshake".to_owned(),
        };
        let status = match (&endpoint, workload) {
            (None, _) => Some((
                "skipped",
                "needs a client certificate: pass --cert and --key".to_owned(),
            )),
            (Some(_), Workload::Throughput { .. }) if !matches!(target, Target::Tls { .. }) => {
                Some((
                    "skipped",
                    "throughput is measured for tls:// (Redis) targets only".to_owned(),
                ))
            }
            _ => None,
        };
        Row {
            configuration,
            label,
            name: target.to_string(),
            target: target.clone(),
            endpoint,
            status,
            primed: false,
            tls: None,
            samples: Vec::new(),
            failures: 0,
            first_failure: None,
            elapsed: Duration::ZERO,
            rates: Vec::new(),
            processes: Vec::new(),
        }
    }

    fn done(&self) -> bool {
        self.status.is_some()
    }

    fn absorb(&mut self, outcome: RunOutcome) {
        if let Some(reason) = outcome.refused {
            self.status = Some(("refused", reason));
        }
        let n = outcome.samples.len();
        let secs = outcome.elapsed.as_secs_f64();
        if secs > 0.0 && n > 0 {
            self.rates.push(n as f64 / secs);
        }
        self.samples.extend(outcome.samples);
        self.failures += outcome.failures;
        if self.first_failure.is_none() {
            self.first_failure = outcome.first_failure;
        }
        self.elapsed += outcome.elapsed;
        if self.processes.is_empty() {
            self.processes = outcome.processes;
        } else {
            for (total, this) in self.processes.iter_mut().zip(outcome.processes) {
                total.cpu_ms += this.cpu_ms;
                total.peak_rss_kib = total.peak_rss_kib.max(this.peak_rss_kib);
            }
        }
        if n == 0 && self.status.is_none() && self.failures > 0 {
            let why = self
                .first_failure
                .clone()
                .unwrap_or_else(|| "every operation failed".to_owned());
            self.status = Some(("error", why));
        }
    }

    fn finish(self) -> RunReport {
        let (status, reason) = match &self.status {
            Some((status, reason)) => (*status, Some(reason.clone())),
            None if !self.primed => (
                "skipped",
                Some("not run: the benchmark was interrupted first".to_owned()),
            ),
            None if self.samples.is_empty() => ("error", Some("nothing was measured".to_owned())),
            None => ("ok", None),
        };
        // The resumed configuration is refused if the server resumed none.
        let resumed = self.samples.iter().filter(|s| s.resumed).count();
        let (status, reason) = if self.configuration == Some(Configuration::Tls13Resumed)
            && status == "ok"
            && resumed == 0
        {
            (
                "refused",
                Some("the server resumed no session (no tickets, or it ignored them)".to_owned()),
            )
        } else {
            (status, reason)
        };
        RunReport::build(
            self.label,
            self.name,
            self.target.to_string(),
            status,
            reason,
            self.tls,
            &self.samples,
            self.failures,
            self.first_failure,
            self.elapsed,
            &self.rates,
            (self.configuration == Some(Configuration::Tls13Resumed)).then_some(resumed as u64),
            self.processes,
        )
    }
}

fn query_name(target: &Target) -> &'static str {
    match target {
        Target::Postgres { .. } | Target::Mysql { .. } => "select-1",
        Target::Tls { .. } => "redis-ping",
    }
}

fn size_name(bytes: usize) -> String {
    if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) {
        format!("{}MiB", bytes >> 20)
    } else if bytes >= 1 << 10 && bytes.is_multiple_of(1 << 10) {
        format!("{}KiB", bytes >> 10)
    } else {
        format!("{bytes}B")
    }
}

/// A key no application uses, removed afterwards.
const THROUGHPUT_KEY: &[u8] = b"intransit-bench:throughput";

async fn connect_and_login(endpoint: &Endpoint, creds: &Credentials) -> Result<Session, OpError> {
    let connected = endpoint.connect(creds.mysql_capabilities()).await?;
    Session::login(endpoint.target(), connected, creds).await
}

/// One run of `row`; `None` when the row cannot run (and its status says why).
async fn run_one(
    plan: &Plan,
    row: &mut Row,
    stop: watch::Receiver<bool>,
    progress: Option<Arc<AtomicU64>>,
) -> Option<RunOutcome> {
    let endpoint = row.endpoint.clone()?;
    let creds = plan.credentials.clone();
    // The first connection is untimed: it finds a refusal before the
    // workers start, records what was negotiated, and gives the resumed
    // configuration a session to resume.
    if !row.primed {
        row.primed = true;
        match prime(&endpoint, &plan.workload, &creds).await {
            Ok(facts) => row.tls = Some(facts),
            Err(OpError::Refused(reason)) => {
                row.status = Some(("refused", reason));
                return None;
            }
            Err(OpError::Failed(reason)) => {
                row.status = Some(("error", reason));
                return None;
            }
        }
    }
    let bounds = plan.bounds;
    let watched = plan.watched.clone();
    let outcome = match &plan.workload {
        Workload::Handshake { .. } => {
            let caps = creds.mysql_capabilities();
            measure::run(
                bounds,
                &watched,
                stop,
                progress,
                || async { Ok(()) },
                move |()| {
                    let endpoint = endpoint.clone();
                    async move { (Some(()), handshake_once(&endpoint, caps).await) }
                },
                |()| async {},
            )
            .await
        }
        Workload::Query {
            new_connection_each: false,
        } => {
            let (e, c) = (endpoint.clone(), creds.clone());
            measure::run(
                bounds,
                &watched,
                stop,
                progress,
                move || {
                    let (e, c) = (e.clone(), c.clone());
                    async move { connect_and_login(&e, &c).await }
                },
                |mut session: Session| async move {
                    let started = Instant::now();
                    match session.query().await {
                        Ok(()) => (
                            Some(session),
                            Ok(Sample {
                                latency: started.elapsed(),
                                bytes: 0,
                                resumed: false,
                            }),
                        ),
                        Err(e) => (None, Err(e)),
                    }
                },
                |session: Session| async move {
                    let _ = session.terminate().await;
                },
            )
            .await
        }
        Workload::Query {
            new_connection_each: true,
        } => {
            measure::run(
                bounds,
                &watched,
                stop,
                progress,
                || async { Ok(()) },
                move |()| {
                    let (e, c) = (endpoint.clone(), creds.clone());
                    async move {
                        let started = Instant::now();
                        let result = async {
                            let mut session = connect_and_login(&e, &c).await?;
                            session.query().await?;
                            let latency = started.elapsed();
                            session.terminate().await?;
                            Ok(Sample {
                                latency,
                                bytes: 0,
                                resumed: false,
                            })
                        }
                        .await;
                        (Some(()), result)
                    }
                },
                |()| async {},
            )
            .await
        }
        Workload::Throughput { value_size } => {
            let max = *value_size;
            let (e, c) = (endpoint.clone(), creds.clone());
            let outcome = measure::run(
                bounds,
                &watched,
                stop,
                progress,
                move || {
                    let (e, c) = (e.clone(), c.clone());
                    async move { connect_and_login(&e, &c).await }
                },
                move |mut session: Session| async move {
                    let started = Instant::now();
                    match session.redis_get(THROUGHPUT_KEY, max).await {
                        Ok(bytes) => (
                            Some(session),
                            Ok(Sample {
                                latency: started.elapsed(),
                                bytes,
                                resumed: false,
                            }),
                        ),
                        Err(e) => (None, Err(e)),
                    }
                },
                |session: Session| async move {
                    let _ = session.terminate().await;
                },
            )
            .await;
            outcome
        }
    };
    Some(outcome)
}

async fn handshake_once(endpoint: &Endpoint, caps: u32) -> Result<Sample, OpError> {
    let connected: Connected = endpoint.connect(caps).await?;
    let latency = connected.handshake;
    let resumed = connected.resumed;
    connected.close().await?;
    Ok(Sample {
        latency,
        bytes: 0,
        resumed,
    })
}

/// The untimed first connection of a row.
async fn prime(
    endpoint: &Endpoint,
    workload: &Workload,
    creds: &Credentials,
) -> Result<TlsFacts, OpError> {
    let connected = endpoint.connect(creds.mysql_capabilities()).await?;
    let facts = connected.facts();
    match workload {
        Workload::Handshake { .. } => connected.close().await?,
        Workload::Query { .. } => {
            let mut session = Session::login(endpoint.target(), connected, creds).await?;
            session.query().await?;
            session.terminate().await?;
        }
        Workload::Throughput { value_size } => {
            let mut session = Session::login(endpoint.target(), connected, creds).await?;
            let value = vec![b'x'; *value_size];
            session.redis_set(THROUGHPUT_KEY, &value).await?;
            session.terminate().await?;
        }
    }
    Ok(facts)
}

/// Removes what `throughput` stored. Best effort: a failure only leaves
/// one key behind, which the report's target still names.
pub async fn clean_up(plan: &Plan) {
    if !matches!(plan.workload, Workload::Throughput { .. }) {
        return;
    }
    for target in &plan.targets {
        if let Ok(Some(endpoint)) = Endpoint::new(target, None, &plan.tls, Vec::new()) {
            if let Ok(mut session) = connect_and_login(&endpoint, &plan.credentials).await {
                let _ = session.redis_del(THROUGHPUT_KEY).await;
                let _ = session.terminate().await;
            }
        }
    }
}
