//! The proxy's counters, gauges and histograms, in prometheus-client
//! families.
//!
//! Every label value comes from a small, fixed set: configured listener and
//! route names, protocol, TLS version, cipher suite, key-exchange group and
//! the closed set of [`RefusalReason`]s. Nothing per connection (addresses,
//! identities, user names) ever becomes a label, so the number of series is
//! bounded by the configuration, not by the traffic.
//!
//! The proxy records; the admin server owns the registry and exposition
//! ([`ProxyMetrics::register`]). Certificate expiry is not recorded here but
//! read from the live TLS material at scrape time, so it is never stale
//! after a reload.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::refusal::RefusalReason;

/// The value of a TLS label before TLS was negotiated.
pub const NOT_NEGOTIATED: &str = "none";

/// Labels of one handshake outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandshakeLabels {
    /// Configured listener name.
    pub listener: String,
    /// Route label (`default` or the route's server-name pattern); empty
    /// when the connection was refused before a route was chosen.
    pub route: String,
    /// `postgres`, `mysql` or `tls`.
    pub protocol: String,
    /// `TLSv1_3`, `TLSv1_2` or `none`.
    pub tls_version: String,
    /// Negotiated cipher suite or `none`.
    pub cipher: String,
    /// Negotiated key-exchange group or `none`.
    pub group: String,
    /// `true` for a resumed session.
    pub resumed: String,
    /// The allow-list entry that admitted the client certificate, `any`
    /// (a certificate, and no allow-list), `unlisted` (a certificate no
    /// entry admits) or `none` (no certificate, or refused before one was
    /// checked). Only configured entries appear, so the set stays bounded.
    pub identity: String,
    /// `ok` or a refusal reason.
    pub outcome: String,
}

/// Labels that name a listener and its protocol.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    /// Configured listener name.
    pub listener: String,
    /// `postgres`, `mysql` or `tls`.
    pub protocol: String,
}

/// Labels of the byte counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BytesLabels {
    /// Configured listener name.
    pub listener: String,
    /// `from_client` or `to_client`.
    pub direction: String,
}

/// What one reload round did.
#[derive(Debug, Clone, Default)]
pub struct ReloadRound {
    /// `sighup` or `file_change`.
    pub trigger: &'static str,
    /// Material swapped in.
    pub swapped: usize,
    /// Material refused (the old stays).
    pub failed: usize,
    /// Why the round could not run at all.
    pub error: Option<String>,
}

/// Labels of a pooled listener's cancel requests.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolCancelLabels {
    /// Configured listener name.
    pub listener: String,
    /// `server`, `idle`, `peer` or `unknown`.
    pub outcome: String,
}

/// Labels of a pooled listener's server logins.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLoginLabels {
    /// Configured listener name.
    pub listener: String,
    /// `ok` or the refusal reason of the failed login.
    pub outcome: String,
}

/// Labels that name a listener alone.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    /// Configured listener name.
    pub listener: String,
}

/// Labels of the reload counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    /// Configured listener name.
    pub listener: String,
    /// Route label.
    pub route: String,
    /// `server` (the TLS clients see) or `upstream` (the leg to the
    /// database).
    pub leg: String,
    /// `ok` or `failed`.
    pub outcome: String,
}

/// Completed reload rounds, for `/status` and `intransit reload`: a
/// round is one SIGHUP or one settled burst of file changes, across every
/// route.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ReloadRounds {
    /// Rounds triggered by SIGHUP.
    pub sighup: u64,
    /// Rounds triggered by a watched file changing.
    pub file_change: u64,
    /// The latest SIGHUP round.
    pub last_sighup: Option<RoundReport>,
    /// The latest file-change round.
    pub last_file_change: Option<RoundReport>,
}

/// What one finished reload round did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RoundReport {
    /// When it finished, Unix seconds.
    pub at: i64,
    /// Material swapped in.
    pub swapped: usize,
    /// Material refused (the old stays in service).
    pub failed: usize,
    /// Why the round could not run at all (an invalid configuration).
    pub error: Option<String>,
}

type HistogramFamily = Family<ListenerLabels, Histogram, fn() -> Histogram>;

/// Everything the proxy counts. Cheap to clone behind an [`Arc`]; the
/// families are internally synchronised.
#[derive(Debug)]
pub struct ProxyMetrics {
    handshakes: Family<HandshakeLabels, Counter>,
    handshake_seconds: HistogramFamily,
    connections_active: Family<ListenerLabels, Gauge>,
    connections: Family<ListenerLabels, Counter>,
    bytes: Family<BytesLabels, Counter>,
    reloads: Family<ReloadLabels, Counter>,
    pool_wait_seconds: Family<PoolLabels, Histogram>,
    pool_server_logins: Family<PoolLoginLabels, Counter>,
    pool_cancels: Family<PoolCancelLabels, Counter>,
    reload_rounds: Mutex<ReloadRounds>,
    summary: Mutex<Summary>,
}

/// How many minutes of outcomes the status keeps.
pub const TIMELINE_MINUTES: usize = 30;

/// Handshake outcomes in one minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct MinuteBucket {
    /// Start of the minute, Unix seconds.
    pub minute: i64,
    /// Established sessions.
    pub ok: u64,
    /// Refusals of any reason.
    pub refused: u64,
}

/// Totals for the status page, which cannot read the prometheus families
/// back: outcomes, and the TLS versions and groups of established sessions.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Summary {
    /// Count per outcome (`ok` or a refusal reason).
    pub outcomes: BTreeMap<String, u64>,
    /// Established sessions per TLS version.
    pub tls_versions: BTreeMap<String, u64>,
    /// Established sessions per key-exchange group.
    pub groups: BTreeMap<String, u64>,
    /// The last minutes, oldest first; minutes without traffic are absent.
    pub minutes: VecDeque<MinuteBucket>,
}

impl Summary {
    fn add(&mut self, facts: HandshakeFacts<'_>, refusal: Option<RefusalReason>, now: i64) {
        let outcome = refusal.map_or("ok", RefusalReason::as_str);
        *self.outcomes.entry(outcome.to_owned()).or_default() += 1;
        if refusal.is_none() {
            *self
                .tls_versions
                .entry(facts.tls_version.to_owned())
                .or_default() += 1;
            *self.groups.entry(facts.group.to_owned()).or_default() += 1;
        }
        let minute = now - now.rem_euclid(60);
        if self.minutes.back().is_none_or(|b| b.minute != minute) {
            self.minutes.push_back(MinuteBucket {
                minute,
                ok: 0,
                refused: 0,
            });
        }
        while self
            .minutes
            .front()
            .is_some_and(|b| b.minute <= minute - 60 * TIMELINE_MINUTES as i64)
        {
            self.minutes.pop_front();
        }
        if let Some(bucket) = self.minutes.back_mut() {
            if refusal.is_some() {
                bucket.refused += 1;
            } else {
                bucket.ok += 1;
            }
        }
    }
}

fn pool_wait_histogram() -> Histogram {
    // 10 µs (a free idle connection) to about 80 s (a pool exhausted up
    // to the default two-minute wait_timeout).
    Histogram::new(exponential_buckets(0.000_01, 4.0, 13))
}

fn handshake_histogram() -> Histogram {
    // 100 µs to about 1.6 s: a loopback TLS 1.3 handshake takes a few hundred
    // microseconds, one over a slow network tens of milliseconds.
    Histogram::new(exponential_buckets(0.0001, 2.0, 15))
}

impl Default for ProxyMetrics {
    fn default() -> Self {
        ProxyMetrics {
            handshakes: Family::default(),
            handshake_seconds: Family::new_with_constructor(handshake_histogram),
            connections_active: Family::default(),
            connections: Family::default(),
            bytes: Family::default(),
            reloads: Family::default(),
            pool_wait_seconds: Family::new_with_constructor(pool_wait_histogram),
            pool_server_logins: Family::default(),
            pool_cancels: Family::default(),
            reload_rounds: Mutex::default(),
            summary: Mutex::default(),
        }
    }
}

/// What is known of a handshake when its outcome is recorded.
#[derive(Debug, Clone, Copy)]
pub struct HandshakeFacts<'a> {
    /// Route label, or `""` before a route was chosen.
    pub route: &'a str,
    /// TLS version, or [`NOT_NEGOTIATED`].
    pub tls_version: &'a str,
    /// Cipher suite, or [`NOT_NEGOTIATED`].
    pub cipher: &'a str,
    /// Key-exchange group, or [`NOT_NEGOTIATED`].
    pub group: &'a str,
    /// Whether the session was resumed.
    pub resumed: bool,
    /// The identity label (see [`HandshakeLabels::identity`]).
    pub identity: &'a str,
}

/// The identity label of a connection without a checked certificate.
pub const NO_IDENTITY: &str = "none";

impl HandshakeFacts<'static> {
    /// A refusal before TLS was negotiated or a route chosen.
    pub const BEFORE_TLS: HandshakeFacts<'static> = HandshakeFacts {
        route: "",
        tls_version: NOT_NEGOTIATED,
        cipher: NOT_NEGOTIATED,
        group: NOT_NEGOTIATED,
        resumed: false,
        identity: NO_IDENTITY,
    };
}

impl ProxyMetrics {
    /// A fresh set of metrics, shared by every listener of one proxy.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Adds every family to `registry`, under the `intransit` prefix the
    /// caller gives it.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "handshakes",
            "Client connections by negotiation outcome: ok or the refusal reason",
            self.handshakes.clone(),
        );
        registry.register(
            "handshake_duration_seconds",
            "Time from the ClientHello to an established TLS session",
            self.handshake_seconds.clone(),
        );
        registry.register(
            "connections_active",
            "Client connections open now, negotiating or established",
            self.connections_active.clone(),
        );
        registry.register(
            "connections",
            "Client connections accepted",
            self.connections.clone(),
        );
        registry.register(
            "bytes",
            "Bytes copied between clients and the database, counted when a connection ends",
            self.bytes.clone(),
        );
        registry.register(
            "tls_reloads",
            "Reloads of a route's TLS material, by outcome",
            self.reloads.clone(),
        );
        registry.register(
            "pool_wait_seconds",
            "How long pooled clients waited for a server connection",
            self.pool_wait_seconds.clone(),
        );
        registry.register(
            "pool_server_logins",
            "Logins of pooled server connections to the database, by outcome",
            self.pool_server_logins.clone(),
        );
        registry.register(
            "pool_cancels",
            "Cancel requests on pooled listeners, by where they went: server (the client's server connection), idle (no query running), peer (forwarded to the instance that handed out the key), unknown (no client has the key)",
            self.pool_cancels.clone(),
        );
    }

    /// Counts a cancel request on a pooled listener by where it went.
    pub fn pool_cancel(&self, listener: &str, outcome: &str) {
        self.pool_cancels
            .get_or_create(&PoolCancelLabels {
                listener: listener.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// The histogram of how long a pooled client of `listener` waited
    /// for a server connection: a handle its pools keep, since it is
    /// observed once per transaction (no label lookup there).
    pub fn pool_wait(&self, listener: &str) -> Histogram {
        self.pool_wait_seconds
            .get_or_create(&PoolLabels {
                listener: listener.to_owned(),
            })
            .clone()
    }

    /// Counts a server login of a pool: `None` when it succeeded.
    pub fn pool_server_login(&self, listener: &str, failure: Option<RefusalReason>) {
        self.pool_server_logins
            .get_or_create(&PoolLoginLabels {
                listener: listener.to_owned(),
                outcome: failure.map_or("ok", RefusalReason::as_str).to_owned(),
            })
            .inc();
    }

    /// Counts one negotiation outcome: `None` for an established session,
    /// or the refusal reason.
    pub fn handshake(
        &self,
        listener: &str,
        protocol: &str,
        facts: HandshakeFacts<'_>,
        refusal: Option<RefusalReason>,
    ) {
        self.handshakes
            .get_or_create(&HandshakeLabels {
                listener: listener.to_owned(),
                route: facts.route.to_owned(),
                protocol: protocol.to_owned(),
                tls_version: facts.tls_version.to_owned(),
                cipher: facts.cipher.to_owned(),
                group: facts.group.to_owned(),
                resumed: facts.resumed.to_string(),
                identity: facts.identity.to_owned(),
                outcome: refusal.map_or("ok", RefusalReason::as_str).to_owned(),
            })
            .inc();
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        self.summary
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .add(facts, refusal, now);
    }

    /// Outcome totals and the recent timeline, for the status page.
    pub fn summary(&self) -> Summary {
        self.summary
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Records how long an accepted handshake took.
    pub fn handshake_duration(&self, listener: &str, protocol: &str, seconds: f64) {
        self.handshake_seconds
            .get_or_create(&listener_labels(listener, protocol))
            .observe(seconds);
    }

    /// Counts an accepted socket and returns a guard that keeps it in the
    /// active gauge until dropped.
    pub fn connection_opened(self: &Arc<Self>, listener: &str, protocol: &str) -> ActiveGuard {
        let labels = listener_labels(listener, protocol);
        self.connections.get_or_create(&labels).inc();
        self.connections_active.get_or_create(&labels).inc();
        ActiveGuard {
            metrics: self.clone(),
            labels,
        }
    }

    /// Adds a finished connection's byte counts.
    pub fn bytes(&self, listener: &str, from_client: u64, to_client: u64) {
        for (direction, n) in [("from_client", from_client), ("to_client", to_client)] {
            self.bytes
                .get_or_create(&BytesLabels {
                    listener: listener.to_owned(),
                    direction: direction.to_owned(),
                })
                .inc_by(n);
        }
    }

    /// Counts one reload of a route's TLS material that swapped new
    /// material in (`ok`) or kept the old because the new failed its
    /// checks. A reload that found nothing changed is not counted.
    pub fn reload(&self, listener: &str, route: &str, leg: &str, ok: bool) {
        self.reloads
            .get_or_create(&ReloadLabels {
                listener: listener.to_owned(),
                route: route.to_owned(),
                leg: leg.to_owned(),
                outcome: if ok { "ok" } else { "failed" }.to_owned(),
            })
            .inc();
    }

    /// Records a finished reload round.
    pub fn reload_round(&self, round: &ReloadRound) {
        let mut rounds = match self.reload_rounds.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let report = Some(RoundReport {
            at: unix_now(),
            swapped: round.swapped,
            failed: round.failed,
            error: round.error.clone(),
        });
        match round.trigger {
            "sighup" => {
                rounds.sighup += 1;
                rounds.last_sighup = report;
            }
            _ => {
                rounds.file_change += 1;
                rounds.last_file_change = report;
            }
        }
    }

    /// The reload rounds so far.
    pub fn reload_rounds(&self) -> ReloadRounds {
        match self.reload_rounds.lock() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn listener_labels(listener: &str, protocol: &str) -> ListenerLabels {
    ListenerLabels {
        listener: listener.to_owned(),
        protocol: protocol.to_owned(),
    }
}

/// Keeps one connection in `connections_active` while alive.
#[derive(Debug)]
pub struct ActiveGuard {
    metrics: Arc<ProxyMetrics>,
    labels: ListenerLabels,
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.metrics
            .connections_active
            .get_or_create(&self.labels)
            .dec();
    }
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;

    fn exposition(metrics: &ProxyMetrics) -> String {
        let mut registry = Registry::with_prefix("intransit");
        metrics.register(&mut registry);
        let mut out = String::new();
        encode(&mut out, &registry).expect("encoding to a String cannot fail");
        out
    }

    #[test]
    fn outcomes_are_counted_by_reason() {
        let m = ProxyMetrics::new();
        let ok = HandshakeFacts {
            route: "default",
            tls_version: "TLSv1_3",
            cipher: "TLS13_AES_128_GCM_SHA256",
            group: "X25519MLKEM768",
            resumed: false,
            identity: "any",
        };
        m.handshake("pg", "postgres", ok, None);
        m.handshake("pg", "postgres", ok, None);
        m.handshake(
            "pg",
            "postgres",
            HandshakeFacts::BEFORE_TLS,
            Some(RefusalReason::PlaintextRefused),
        );
        let text = exposition(&m);
        assert!(
            text.contains(
                "intransit_handshakes_total{listener=\"pg\",route=\"default\",protocol=\"postgres\",\
                 tls_version=\"TLSv1_3\",cipher=\"TLS13_AES_128_GCM_SHA256\",group=\"X25519MLKEM768\",\
                 resumed=\"false\",identity=\"any\",outcome=\"ok\"} 2"
            ),
            "{text}"
        );
        assert!(
            text.contains("tls_version=\"none\",cipher=\"none\",group=\"none\",resumed=\"false\",identity=\"none\",outcome=\"plaintext_refused\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn the_active_gauge_follows_guards() {
        let m = ProxyMetrics::new();
        let a = m.connection_opened("pg", "postgres");
        let b = m.connection_opened("pg", "postgres");
        assert!(exposition(&m)
            .contains("intransit_connections_active{listener=\"pg\",protocol=\"postgres\"} 2"));
        drop(a);
        drop(b);
        let text = exposition(&m);
        assert!(
            text.contains("intransit_connections_active{listener=\"pg\",protocol=\"postgres\"} 0")
        );
        assert!(
            text.contains("intransit_connections_total{listener=\"pg\",protocol=\"postgres\"} 2")
        );
    }

    #[test]
    fn bytes_and_reloads_are_counted() {
        let m = ProxyMetrics::new();
        m.bytes("pg", 10, 20);
        m.bytes("pg", 1, 2);
        m.reload("pg", "default", "server", true);
        m.reload("pg", "default", "server", false);
        let text = exposition(&m);
        assert!(
            text.contains("intransit_bytes_total{listener=\"pg\",direction=\"from_client\"} 11")
        );
        assert!(text.contains("intransit_bytes_total{listener=\"pg\",direction=\"to_client\"} 22"));
        assert!(text.contains(
            "intransit_tls_reloads_total{listener=\"pg\",route=\"default\",leg=\"server\",outcome=\"failed\"} 1"
        ));
    }

    #[test]
    fn the_summary_keeps_totals_and_a_bounded_timeline() {
        let mut s = Summary::default();
        let ok = HandshakeFacts {
            route: "default",
            tls_version: "TLSv1_3",
            cipher: "TLS13_AES_128_GCM_SHA256",
            group: "X25519MLKEM768",
            resumed: false,
            identity: "any",
        };
        // A whole minute.
        let start = 1_800_000_000;
        s.add(ok, None, start);
        s.add(ok, None, start + 59);
        s.add(
            HandshakeFacts::BEFORE_TLS,
            Some(RefusalReason::NoClientCert),
            start + 60,
        );
        assert_eq!(s.outcomes["ok"], 2);
        assert_eq!(s.outcomes["no_client_cert"], 1);
        assert_eq!(s.tls_versions["TLSv1_3"], 2);
        assert_eq!(s.groups["X25519MLKEM768"], 2);
        assert!(!s.tls_versions.contains_key("none"));
        assert_eq!(
            s.minutes.iter().copied().collect::<Vec<_>>(),
            vec![
                MinuteBucket {
                    minute: start,
                    ok: 2,
                    refused: 0
                },
                MinuteBucket {
                    minute: start + 60,
                    ok: 0,
                    refused: 1
                },
            ]
        );
        // Much later, old minutes fall out.
        s.add(ok, None, start + 3600);
        assert_eq!(s.minutes.len(), 1);
        assert_eq!(s.outcomes["ok"], 3);
    }
}
