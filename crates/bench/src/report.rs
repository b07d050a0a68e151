//! The report of a benchmark: one [`RunReport`] per (configuration,
//! target), ratios against the first target, and renderings as a table,
//! Markdown or JSON.
//!
//! Everything here is computed from the samples the runs collected; this
//! module never measures.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use crate::client::TlsFacts;
use crate::measure::{Bounds, ProcessCost, Sample};
use crate::stats::{LatencySummary, Spread};

/// The version of the JSON layout; it changes when a field changes meaning.
pub const SCHEMA_VERSION: u32 = 1;

/// A whole benchmark's results.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// JSON layout version.
    pub schema_version: u32,
    /// `handshake`, `query` or `throughput`.
    pub command: &'static str,
    /// The targets' names, baseline first.
    pub targets: Vec<String>,
    /// The targets' URLs, in the same order.
    pub urls: Vec<String>,
    /// Workers per run.
    pub concurrency: usize,
    /// Each run's duration limit, in seconds.
    pub duration_s: Option<f64>,
    /// Each run's operation limit.
    pub count: Option<u64>,
    /// How many times each pair ran.
    pub repeat: usize,
    /// Whether a stop signal cut the benchmark short.
    pub interrupted: bool,
    /// One entry per (configuration, target), in run order.
    pub runs: Vec<RunReport>,
    /// Each target against the first, per configuration.
    pub ratios: Vec<Ratio>,
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct LatencyMs {
    /// Fastest.
    pub min: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Slowest.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

/// Operations per second across rounds.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct RateSpread {
    /// Lowest round.
    pub min: f64,
    /// Median round.
    pub median: f64,
    /// Highest round.
    pub max: f64,
}

/// A watched process's cost during one (configuration, target) pair.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ProcessReport {
    /// Its name in reports.
    pub label: String,
    /// Its pid.
    pub pid: u32,
    /// CPU time spent (itself and exited children), ms.
    pub cpu_ms: f64,
    /// CPU ms per 1,000 operations.
    pub cpu_ms_per_1000_ops: Option<f64>,
    /// Highest resident memory seen, KiB.
    pub peak_rss_kib: u64,
}

/// The results of one configuration against one target.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// The configuration (`tls1.3`, `select-1`, `get-1MiB`, ...).
    pub configuration: String,
    /// The target's name in this report (its label, or its URL).
    pub target: String,
    /// The target's URL.
    pub url: String,
    /// `ok`, `refused` (the server declined this configuration),
    /// `skipped` (not applicable) or `error`.
    pub status: &'static str,
    /// Why, when not `ok`.
    pub reason: Option<String>,
    /// What the first connection negotiated.
    pub tls: Option<TlsFacts>,
    /// Successful operations.
    pub operations: u64,
    /// Failed operations.
    pub failures: u64,
    /// The first failure, if any.
    pub first_failure: Option<String>,
    /// Time spent running, all rounds, in seconds.
    pub seconds: f64,
    /// Operations per second over all rounds.
    pub ops_per_s: f64,
    /// Per-round operations per second, with more than one round.
    pub ops_per_s_rounds: Option<RateSpread>,
    /// Latency of the timed part of each operation.
    pub latency_ms: Option<LatencyMs>,
    /// Payload bytes moved (throughput).
    pub bytes: u64,
    /// Payload megabytes (10^6 bytes) per second (throughput).
    pub mb_per_s: Option<f64>,
    /// How many handshakes resumed a session (resumed configuration).
    pub resumed: Option<u64>,
    /// Watched processes.
    pub processes: Vec<ProcessReport>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl RunReport {
    /// Summarises one pair's samples.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn build(
        configuration: String,
        target: String,
        url: String,
        status: &'static str,
        reason: Option<String>,
        tls: Option<TlsFacts>,
        samples: &[Sample],
        failures: u64,
        first_failure: Option<String>,
        elapsed: Duration,
        rates: &[f64],
        resumed: Option<u64>,
        processes: Vec<ProcessCost>,
    ) -> RunReport {
        let ok = status == "ok";
        let operations = if ok { samples.len() as u64 } else { 0 };
        let latencies: Vec<Duration> = samples.iter().map(|s| s.latency).collect();
        let latency_ms = ok
            .then(|| LatencySummary::from_samples(&latencies))
            .flatten()
            .map(|s| LatencyMs {
                min: ms(s.min),
                p50: ms(s.p50),
                p90: ms(s.p90),
                p99: ms(s.p99),
                max: ms(s.max),
                mean: ms(s.mean),
            });
        let seconds = elapsed.as_secs_f64();
        let ops_per_s = if seconds > 0.0 {
            operations as f64 / seconds
        } else {
            0.0
        };
        let bytes: u64 = if ok {
            samples.iter().map(|s| s.bytes).sum()
        } else {
            0
        };
        let mb_per_s = (bytes > 0 && seconds > 0.0).then(|| bytes as f64 / 1e6 / seconds);
        let ops_per_s_rounds = (ok && rates.len() > 1)
            .then(|| Spread::from_values(rates))
            .flatten()
            .map(|s| RateSpread {
                min: s.min,
                median: s.median,
                max: s.max,
            });
        let processes = processes
            .into_iter()
            .map(|p| ProcessReport {
                cpu_ms_per_1000_ops: (operations > 0)
                    .then(|| p.cpu_ms * 1000.0 / operations as f64),
                label: p.label,
                pid: p.pid,
                cpu_ms: p.cpu_ms,
                peak_rss_kib: p.peak_rss_kib,
            })
            .collect();
        RunReport {
            configuration,
            target,
            url,
            status,
            reason,
            tls,
            operations,
            failures,
            first_failure,
            seconds,
            ops_per_s,
            ops_per_s_rounds,
            latency_ms,
            bytes,
            mb_per_s,
            resumed,
            processes,
        }
    }
}

/// A target against the baseline (the first target) for one configuration.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Ratio {
    /// The configuration.
    pub configuration: String,
    /// The target compared.
    pub target: String,
    /// The baseline target.
    pub baseline: String,
    /// Its operations per second divided by the baseline's (higher is faster).
    pub ops_per_s: f64,
    /// Its median latency divided by the baseline's (lower is faster).
    pub p50_latency: Option<f64>,
}

/// What was measured, as a report names it.
pub(crate) struct Measured {
    /// The subcommand (`handshake`, `query`, `throughput`).
    pub(crate) command: &'static str,
    /// What each target is called, the baseline first.
    pub(crate) targets: Vec<String>,
    /// Each target's URL, in the same order.
    pub(crate) urls: Vec<String>,
    /// When each run ended.
    pub(crate) bounds: Bounds,
}

impl Report {
    pub(crate) fn new(
        measured: Measured,
        repeat: usize,
        interrupted: bool,
        runs: Vec<RunReport>,
    ) -> Report {
        let Measured {
            command,
            targets,
            urls,
            bounds,
        } = measured;
        let mut ratios = Vec::new();
        if let Some(baseline) = targets.first() {
            for base in runs
                .iter()
                .filter(|r| &r.target == baseline && r.status == "ok")
            {
                for other in runs.iter().filter(|r| {
                    r.configuration == base.configuration
                        && &r.target != baseline
                        && r.status == "ok"
                }) {
                    if base.ops_per_s <= 0.0 {
                        continue;
                    }
                    ratios.push(Ratio {
                        configuration: base.configuration.clone(),
                        target: other.target.clone(),
                        baseline: baseline.clone(),
                        ops_per_s: other.ops_per_s / base.ops_per_s,
                        p50_latency: match (base.latency_ms, other.latency_ms) {
                            (Some(b), Some(o)) if b.p50 > 0.0 => Some(o.p50 / b.p50),
                            _ => None,
                        },
                    });
                }
            }
        }
        Report {
            schema_version: SCHEMA_VERSION,
            command,
            targets,
            urls,
            concurrency: bounds.concurrency,
            duration_s: bounds.duration.map(|d| d.as_secs_f64()),
            count: bounds.count,
            repeat,
            interrupted,
            runs,
            ratios,
        }
    }

    /// Whether any pair ended in `error`.
    pub fn has_errors(&self) -> bool {
        self.runs.iter().any(|r| r.status == "error")
    }

    /// The report as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }

    fn header(&self) -> String {
        let mut bounds = Vec::new();
        if let Some(d) = self.duration_s {
            bounds.push(format!("{d} s"));
        }
        if let Some(c) = self.count {
            bounds.push(format!("at most {c} operations"));
        }
        format!(
            "intransit bench {}: {} per run, concurrency {}, {} round{}{}",
            self.command,
            if bounds.is_empty() {
                "default bounds".to_owned()
            } else {
                bounds.join(", ")
            },
            self.concurrency,
            self.repeat,
            if self.repeat == 1 { "" } else { "s" },
            if self.interrupted {
                " (interrupted: partial results)"
            } else {
                ""
            },
        )
    }

    fn cells(&self) -> (Vec<&'static str>, Vec<Vec<String>>) {
        let throughput = self.runs.iter().any(|r| r.mb_per_s.is_some());
        let watched = self.runs.iter().any(|r| !r.processes.is_empty());
        let mut head = vec![
            "configuration",
            "target",
            "status",
            "ops",
            "ops/s",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "max ms",
        ];
        if throughput {
            head.push("MB/s");
        }
        if watched {
            head.push("CPU ms/1k ops (peak RSS MiB)");
        }
        let f2 = |v: f64| format!("{v:.2}");
        let f3 = |v: f64| format!("{v:.3}");
        let rows = self
            .runs
            .iter()
            .map(|r| {
                let mut row = vec![r.configuration.clone(), r.target.clone()];
                if r.status == "ok" {
                    row.push(match r.resumed {
                        Some(n) if n < r.operations => format!("ok ({n} resumed)"),
                        _ => "ok".to_owned(),
                    });
                    row.push(r.operations.to_string());
                    row.push(match r.ops_per_s_rounds {
                        Some(s) => format!("{:.0} ({:.0}–{:.0})", r.ops_per_s, s.min, s.max),
                        None => format!("{:.0}", r.ops_per_s),
                    });
                    match r.latency_ms {
                        Some(l) => row.extend([f3(l.p50), f3(l.p90), f3(l.p99), f3(l.max)]),
                        None => row.extend(std::iter::repeat_n("-".to_owned(), 4)),
                    }
                } else {
                    row.push(r.status.to_owned());
                    row.extend(std::iter::repeat_n("-".to_owned(), 6));
                }
                if throughput {
                    row.push(r.mb_per_s.map(f2).unwrap_or_else(|| "-".into()));
                }
                if watched {
                    row.push(
                        r.processes
                            .iter()
                            .map(|p| {
                                format!(
                                    "{}: {} ({:.1})",
                                    p.label,
                                    p.cpu_ms_per_1000_ops.map(f2).unwrap_or_else(|| "-".into()),
                                    p.peak_rss_kib as f64 / 1024.0
                                )
                            })
                            .collect::<Vec<_>>()
                            .join("; "),
                    );
                }
                row
            })
            .collect();
        (head, rows)
    }

    fn notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        for r in &self.runs {
            if let Some(reason) = &r.reason {
                notes.push(format!(
                    "{} against {}: {}: {reason}",
                    r.configuration, r.target, r.status
                ));
            } else if let Some(f) = &r.first_failure {
                notes.push(format!(
                    "{} against {}: {} failed operations, the first: {f}",
                    r.configuration, r.target, r.failures
                ));
            }
        }
        for ratio in &self.ratios {
            notes.push(format!(
                "{}: {} vs {}: {:.2}x the operations per second{}",
                ratio.configuration,
                ratio.target,
                ratio.baseline,
                ratio.ops_per_s,
                ratio
                    .p50_latency
                    .map(|p| format!(", {p:.2}x the median latency"))
                    .unwrap_or_default()
            ));
        }
        notes
    }

    /// The report as an aligned text table with notes below.
    pub fn to_table(&self) -> String {
        let (head, rows) = self.cells();
        let mut widths: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let _ = writeln!(out, "{}", self.header());
        let line = |cells: Vec<String>| {
            cells
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_owned()
        };
        let _ = writeln!(
            out,
            "{}",
            line(head.iter().map(|h| (*h).to_owned()).collect())
        );
        for row in rows {
            let _ = writeln!(out, "{}", line(row));
        }
        for note in self.notes() {
            let _ = writeln!(out, "- {note}");
        }
        out
    }

    /// The report as a Markdown table with notes as a list.
    pub fn to_markdown(&self) -> String {
        let (head, rows) = self.cells();
        let mut out = String::new();
        let _ = writeln!(out, "{}\n", self.header());
        let _ = writeln!(out, "| {} |", head.join(" | "));
        let _ = writeln!(
            out,
            "|{}|",
            head.iter().map(|_| "---").collect::<Vec<_>>().join("|")
        );
        for row in rows {
            let cells: Vec<String> = row.iter().map(|c| c.replace('|', "\\|")).collect();
            let _ = writeln!(out, "| {} |", cells.join(" | "));
        }
        let notes = self.notes();
        if !notes.is_empty() {
            out.push('\n');
            for note in notes {
                let _ = writeln!(out, "- {note}");
            }
        }
        out
    }
}
