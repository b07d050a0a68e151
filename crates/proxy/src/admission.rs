//! Which of a listener's pools a connection counts against, and when it
//! is turned away.
//!
//! A client-mode listener has one pool, `max_connections`, taken at
//! accept: its applications present no certificate, so there is nothing
//! to wait for.
//!
//! A server-mode listener has two. A connection starts *unauthenticated*
//! (accepted, no TLS handshake with a verified client yet) and counts
//! against `max_unauthenticated` and, per source address, against
//! `max_unauthenticated_per_address`. When the handshake has verified the
//! client, [`Ticket::promote`] moves the connection to the
//! `max_connections` pool, so sockets that never authenticate never take
//! the slot of a client that does.
//!
//! Beyond the per-address cap a new connection is closed at accept, before
//! a byte is read. When the unauthenticated pool is full, the busiest
//! source address gives way: a newcomer from that address is closed at
//! accept, and a newcomer from any other address makes room by closing
//! (*evicting*) the oldest unauthenticated connection of the busiest
//! address. So a flood from a few addresses never displaces a client from
//! another one, and sockets merely held open lock nobody out.
//!
//! Refusals a flood can cause come in floods too: [`FloodLog`] lets one
//! log line per reason through per interval, with the count of those
//! left out (the metrics count every one).
//!
//! This module is a leaf: it knows no listener, protocol or stream.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use intransit_config::UnauthenticatedLimits;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::net::PeerAddr;
use crate::refusal::RefusalReason;

/// Over-limit client-mode connections are told why in their protocol's
/// way; those refusals are themselves capped so a flood cannot turn the
/// polite path into a resource leak. (In server mode the unauthenticated
/// pool bounds them.)
const MAX_CONCURRENT_REFUSALS: usize = 64;

/// How often a refusal that a flood can cause is logged, at most, per
/// listener and reason.
const FLOOD_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Whether a connection got one of the `max_connections` slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Within `max_connections`: serve it.
    Admitted,
    /// Beyond it: negotiate only as far as needed to say so.
    OverLimit,
}

/// Where a connection comes from, as the per-address cap counts it: an
/// IPv4 address (also when mapped into IPv6), an IPv6 /64 (what one host
/// is usually given), or this host over a unix socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Source {
    V4(Ipv4Addr),
    V6Prefix(u64),
    Local,
}

impl Source {
    pub(crate) fn of(peer: &PeerAddr) -> Source {
        match peer {
            PeerAddr::Tcp(addr) => match addr.ip().to_canonical() {
                IpAddr::V4(v4) => Source::V4(v4),
                IpAddr::V6(v6) => Source::V6Prefix((v6.to_bits() >> 64) as u64),
            },
            PeerAddr::Unix => Source::Local,
        }
    }
}

/// What the accept loop does with a new connection.
#[derive(Debug)]
pub(crate) enum Entry {
    /// Serve it, holding the ticket for its life.
    Enter(Ticket),
    /// Close it at once: the reason and the detail for the log.
    Refuse(RefusalReason, String),
}

/// A listener's pools.
#[derive(Debug)]
pub(crate) struct Gate {
    verified: Arc<Semaphore>,
    max_connections: usize,
    /// Client mode: the polite over-limit refusals.
    refusals: Arc<Semaphore>,
    /// Server mode: connections before their client is verified.
    unauthenticated: Option<Arc<Pool>>,
    /// Throttles the log lines of refusals a flood can cause.
    pub(crate) flood_log: FloodLog,
}

impl Gate {
    /// The pools of a listener: with `unauthenticated` limits (server
    /// mode), connections enter the unauthenticated pool first.
    pub(crate) fn new(
        max_connections: usize,
        unauthenticated: Option<UnauthenticatedLimits>,
    ) -> Self {
        let verified = Arc::new(Semaphore::new(max_connections));
        Gate {
            unauthenticated: unauthenticated.map(|limits| {
                Arc::new(Pool {
                    limits,
                    verified: verified.clone(),
                    state: Mutex::default(),
                })
            }),
            verified,
            max_connections,
            refusals: Arc::new(Semaphore::new(MAX_CONCURRENT_REFUSALS)),
            flood_log: FloodLog::new(FLOOD_LOG_INTERVAL),
        }
    }

    /// Decides at accept, before anything is read, for connection `id`.
    pub(crate) fn enter(&self, id: u64, source: Source) -> Entry {
        if let Some(pool) = &self.unauthenticated {
            return pool.enter(id, source);
        }
        if let Ok(permit) = self.verified.clone().try_acquire_owned() {
            return Entry::Enter(Ticket::holding(permit, Admission::Admitted));
        }
        match self.refusals.clone().try_acquire_owned() {
            Ok(permit) => Entry::Enter(Ticket::holding(permit, Admission::OverLimit)),
            Err(_) => Entry::Refuse(
                RefusalReason::TooManyConnections,
                format!(
                    "listener is at max_connections ({}) and its refusal queue is full; connection closed at accept",
                    self.max_connections
                ),
            ),
        }
    }
}

/// A server-mode listener's unauthenticated connections.
#[derive(Debug)]
struct Pool {
    limits: UnauthenticatedLimits,
    verified: Arc<Semaphore>,
    state: Mutex<PoolState>,
}

#[derive(Debug, Default)]
struct PoolState {
    /// By connection id: ids grow, so the first is the oldest.
    pending: BTreeMap<u64, (Source, CancellationToken)>,
    by_source: HashMap<Source, BTreeSet<u64>>,
}

impl PoolState {
    fn count(&self, source: Source) -> usize {
        self.by_source.get(&source).map_or(0, BTreeSet::len)
    }

    fn remove(&mut self, id: u64) -> Option<CancellationToken> {
        let (source, token) = self.pending.remove(&id)?;
        if let Some(ids) = self.by_source.get_mut(&source) {
            ids.remove(&id);
            if ids.is_empty() {
                self.by_source.remove(&source);
            }
        }
        Some(token)
    }

    /// The oldest connection of the source with the most connections (of
    /// those tied, the one holding the oldest), and that count.
    fn busiest(&self) -> Option<(u64, usize)> {
        self.by_source
            .values()
            .filter_map(|ids| ids.first().map(|&oldest| (ids.len(), Reverse(oldest))))
            .max()
            .map(|(count, Reverse(oldest))| (oldest, count))
    }
}

impl Pool {
    fn lock(&self) -> MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn enter(self: &Arc<Self>, id: u64, source: Source) -> Entry {
        let mut state = self.lock();
        let mine = state.count(source);
        // This host's unix-socket clients are one source for eviction, but
        // are not capped together as if they were one remote address.
        if source != Source::Local && mine >= self.limits.per_address {
            return Entry::Refuse(
                RefusalReason::TooManyUnauthenticatedFromAddress,
                format!(
                    "this address already has max_unauthenticated_per_address ({}) connections before the TLS handshake; connection closed at accept",
                    self.limits.per_address
                ),
            );
        }
        if state.pending.len() >= self.limits.max {
            match state.busiest() {
                Some((oldest, busiest)) if mine < busiest => {
                    if let Some(token) = state.remove(oldest) {
                        token.cancel();
                    }
                }
                _ => {
                    return Entry::Refuse(
                        RefusalReason::TooManyUnauthenticated,
                        format!(
                            "listener has max_unauthenticated ({}) connections before the TLS handshake, and this address has the most of them; connection closed at accept",
                            self.limits.max
                        ),
                    )
                }
            }
        }
        let token = CancellationToken::new();
        state.pending.insert(id, (source, token.clone()));
        state.by_source.entry(source).or_default().insert(id);
        Entry::Enter(Ticket {
            held: Mutex::new(Held::Unauthenticated(InPool {
                pool: self.clone(),
                id,
            })),
            admission: Admission::Admitted,
            evicted: Some(token),
        })
    }
}

/// A connection's place in the unauthenticated pool, given back when it
/// is dropped.
#[derive(Debug)]
struct InPool {
    pool: Arc<Pool>,
    id: u64,
}

impl Drop for InPool {
    fn drop(&mut self) {
        self.pool.lock().remove(self.id);
    }
}

#[derive(Debug)]
enum Held {
    Nothing,
    Slot { _permit: OwnedSemaphorePermit },
    Unauthenticated(InPool),
}

/// What one connection holds in its listener's pools, for its whole life.
#[derive(Debug)]
pub(crate) struct Ticket {
    held: Mutex<Held>,
    /// The decision at accept (client mode).
    admission: Admission,
    /// Cancelled when the connection is evicted from the unauthenticated
    /// pool.
    evicted: Option<CancellationToken>,
}

impl Default for Ticket {
    /// A ticket that holds nothing, for a connection closed at accept.
    fn default() -> Self {
        Ticket {
            held: Mutex::new(Held::Nothing),
            admission: Admission::Admitted,
            evicted: None,
        }
    }
}

impl Ticket {
    fn holding(permit: OwnedSemaphorePermit, admission: Admission) -> Self {
        Ticket {
            held: Mutex::new(Held::Slot { _permit: permit }),
            admission,
            evicted: None,
        }
    }

    /// What was decided at accept: a client-mode connection's slot. A
    /// server-mode connection learns its slot from [`Ticket::promote`].
    pub(crate) fn at_accept(&self) -> Admission {
        self.admission
    }

    /// Called once the TLS handshake has verified the client: leaves the
    /// unauthenticated pool for a `max_connections` slot. Without a free
    /// slot the connection stays counted as unauthenticated until it has
    /// been told and closes.
    pub(crate) fn promote(&self) -> Admission {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let Held::Unauthenticated(in_pool) = &*held else {
            return self.admission;
        };
        if self
            .evicted
            .as_ref()
            .is_some_and(CancellationToken::is_cancelled)
        {
            // Evicted as the handshake finished: the connection is closing.
            return Admission::OverLimit;
        }
        match in_pool.pool.verified.clone().try_acquire_owned() {
            Ok(permit) => {
                *held = Held::Slot { _permit: permit };
                Admission::Admitted
            }
            Err(_) => Admission::OverLimit,
        }
    }

    /// Completes when the connection has been evicted from the
    /// unauthenticated pool; never for one that left it.
    pub(crate) async fn evicted(&self) {
        match &self.evicted {
            Some(token) => token.cancelled().await,
            None => std::future::pending().await,
        }
    }

    /// The detail of an eviction, for the log and the audit event.
    pub(crate) fn eviction_detail(&self) -> String {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let max = match &*held {
            Held::Unauthenticated(in_pool) => in_pool.pool.limits.max.to_string(),
            _ => "its limit".to_owned(),
        };
        format!(
            "evicted before the TLS handshake finished: the listener reached max_unauthenticated ({max}) and this connection was the oldest of the busiest address"
        )
    }
}

/// Lets one log line per reason through per interval.
#[derive(Debug)]
pub(crate) struct FloodLog {
    interval: Duration,
    last: Mutex<HashMap<RefusalReason, (Instant, u64)>>,
}

impl FloodLog {
    fn new(interval: Duration) -> Self {
        FloodLog {
            interval,
            last: Mutex::default(),
        }
    }

    /// Whether a refusal for `reason` gets its log line now: `Some` with
    /// the number of like refusals left out since the previous line, or
    /// `None` when it is left out.
    pub(crate) fn sample(&self, reason: RefusalReason) -> Option<u64> {
        self.sample_at(reason, Instant::now())
    }

    fn sample_at(&self, reason: RefusalReason, now: Instant) -> Option<u64> {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        match last.get_mut(&reason) {
            Some((at, left_out)) if now.duration_since(*at) < self.interval => {
                *left_out += 1;
                None
            }
            Some((at, left_out)) => {
                *at = now;
                Some(std::mem::take(left_out))
            }
            None => {
                last.insert(reason, (now, 0));
                Some(0)
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn v4(last: u8) -> Source {
        Source::V4(Ipv4Addr::new(192, 0, 2, last))
    }

    fn pool(max: usize, per_address: usize, max_connections: usize) -> Gate {
        Gate::new(
            max_connections,
            Some(UnauthenticatedLimits { max, per_address }),
        )
    }

    fn ticket(entry: Entry) -> Ticket {
        match entry {
            Entry::Enter(t) => t,
            Entry::Refuse(reason, detail) => panic!("refused: {reason} {detail}"),
        }
    }

    fn refusal(entry: Entry) -> RefusalReason {
        match entry {
            Entry::Enter(_) => panic!("entered"),
            Entry::Refuse(reason, _) => reason,
        }
    }

    #[test]
    fn sources_group_ipv6_by_64_and_unmap_ipv4() {
        let tcp = |s: &str| PeerAddr::Tcp(s.parse().unwrap());
        assert_eq!(
            Source::of(&tcp("[2001:db8:1:2::1]:5")),
            Source::of(&tcp("[2001:db8:1:2:ffff::9]:6"))
        );
        assert_ne!(
            Source::of(&tcp("[2001:db8:1:2::1]:5")),
            Source::of(&tcp("[2001:db8:1:3::1]:5"))
        );
        assert_eq!(
            Source::of(&tcp("[::ffff:192.0.2.7]:5")),
            Source::of(&tcp("192.0.2.7:9"))
        );
        assert_eq!(Source::of(&PeerAddr::Unix), Source::Local);
    }

    #[test]
    fn unauthenticated_connections_never_take_verified_slots() {
        let gate = pool(10, 10, 1);
        // Unauthenticated connections beyond max_connections enter.
        let waiting: Vec<_> = (1..=5).map(|id| ticket(gate.enter(id, v4(1)))).collect();
        assert_eq!(waiting[0].promote(), Admission::Admitted);
        // The one verified slot is taken; the next verified client is over
        // the limit, and keeps its unauthenticated place until it closes.
        assert_eq!(waiting[1].promote(), Admission::OverLimit);
        drop(waiting);
        let again = ticket(gate.enter(6, v4(1)));
        assert_eq!(again.promote(), Admission::Admitted);
    }

    #[test]
    fn per_address_cap_closes_the_newcomer_and_frees_on_drop() {
        let gate = pool(100, 2, 100);
        let a = ticket(gate.enter(1, v4(1)));
        let _b = ticket(gate.enter(2, v4(1)));
        assert_eq!(
            refusal(gate.enter(3, v4(1))),
            RefusalReason::TooManyUnauthenticatedFromAddress
        );
        // Another address is not affected; unix sockets are not capped.
        let _c = ticket(gate.enter(4, v4(2)));
        let _local: Vec<_> = (5..10)
            .map(|id| ticket(gate.enter(id, Source::Local)))
            .collect();
        // A promoted connection no longer counts.
        assert_eq!(a.promote(), Admission::Admitted);
        let _d = ticket(gate.enter(11, v4(1)));
    }

    #[test]
    fn a_full_pool_evicts_the_oldest_of_the_busiest_address() {
        let gate = pool(4, 10, 100);
        let flood: Vec<_> = (1..=3).map(|id| ticket(gate.enter(id, v4(1)))).collect();
        let other = ticket(gate.enter(4, v4(2)));
        // The busiest address's next connection is closed at accept...
        assert_eq!(
            refusal(gate.enter(5, v4(1))),
            RefusalReason::TooManyUnauthenticated
        );
        // ...and a newcomer from elsewhere takes the place of its oldest.
        let newcomer = ticket(gate.enter(6, v4(3)));
        assert!(flood[0]
            .evicted
            .as_ref()
            .is_some_and(CancellationToken::is_cancelled));
        assert!(flood[1..].iter().chain([&other, &newcomer]).all(|t| !t
            .evicted
            .as_ref()
            .unwrap()
            .is_cancelled()));
        // Evicted, it cannot be promoted any more.
        assert_eq!(flood[0].promote(), Admission::OverLimit);
        assert_eq!(newcomer.promote(), Admission::Admitted);
    }

    #[test]
    fn addresses_with_one_connection_each_give_way_oldest_first() {
        let gate = pool(2, 10, 100);
        let first = ticket(gate.enter(1, v4(1)));
        let second = ticket(gate.enter(2, v4(2)));
        let _third = ticket(gate.enter(3, v4(3)));
        assert!(first.evicted.as_ref().unwrap().is_cancelled());
        assert!(!second.evicted.as_ref().unwrap().is_cancelled());
    }

    #[test]
    fn client_mode_has_one_limit_and_a_bounded_refusal_queue() {
        let gate = Gate::new(1, None);
        let admitted = ticket(gate.enter(1, v4(1)));
        assert_eq!(admitted.at_accept(), Admission::Admitted);
        let over: Vec<_> = (0..MAX_CONCURRENT_REFUSALS as u64)
            .map(|id| ticket(gate.enter(id + 2, v4(1))))
            .collect();
        assert!(over.iter().all(|t| t.at_accept() == Admission::OverLimit));
        assert_eq!(
            refusal(gate.enter(1000, v4(1))),
            RefusalReason::TooManyConnections
        );
    }

    #[test]
    fn flood_log_lets_one_line_through_per_interval_with_the_count_left_out() {
        let log = FloodLog::new(Duration::from_secs(10));
        let start = Instant::now();
        let reason = RefusalReason::TooManyUnauthenticated;
        assert_eq!(log.sample_at(reason, start), Some(0));
        for _ in 0..5 {
            assert_eq!(log.sample_at(reason, start + Duration::from_secs(1)), None);
        }
        // Another reason has its own line.
        assert_eq!(
            log.sample_at(RefusalReason::TooManyConnections, start),
            Some(0)
        );
        assert_eq!(
            log.sample_at(reason, start + Duration::from_secs(11)),
            Some(5)
        );
        assert_eq!(log.sample_at(reason, start + Duration::from_secs(12)), None);
    }
}
