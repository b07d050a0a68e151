//! When certificates are due: the renewal policy, per-certificate renewal
//! plans and expiry checks; and how fresh a CRL is.
//!
//! This module owns the arithmetic of "when should this certificate be
//! replaced" and nothing else: it reads no files and takes the current time
//! as a parameter, so that every decision can be tested with a fake clock.
//! Jitter is derived from the certificate's serial number rather than drawn
//! at random, so that repeated runs (cron, a restarted proxy) agree on when a
//! certificate is due while a fleet of certificates still spreads out.

use std::fmt;

use time::{Duration, OffsetDateTime};

use crate::revocation::normalize_serial;
use crate::{CertificateSummary, CrlSummary};

/// When certificates are renewed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RenewalPolicy {
    /// The fraction of a certificate's lifetime after which it is due,
    /// between 0 (exclusive) and 1 (inclusive). Default: two thirds.
    /// Values outside that range, and NaN, count as the default.
    pub fraction: f64,
    /// The largest amount by which a certificate's due time is brought
    /// forward, to spread renewals of certificates issued together.
    /// `None` (the default) means 1% of the lifetime, at most
    /// [`RenewalPolicy::DEFAULT_MAX_JITTER`]. The jitter never moves the due
    /// time before the start of the validity.
    pub jitter: Option<Duration>,
}

impl RenewalPolicy {
    /// The default [`fraction`](Self::fraction): two thirds of the lifetime.
    pub const DEFAULT_FRACTION: f64 = 2.0 / 3.0;

    /// The cap on the default jitter.
    pub const DEFAULT_MAX_JITTER: Duration = Duration::hours(6);

    /// The fraction actually applied: [`Self::fraction`] if it is in (0, 1],
    /// otherwise the default.
    pub fn effective_fraction(&self) -> f64 {
        if self.fraction > 0.0 && self.fraction <= 1.0 {
            self.fraction
        } else {
            Self::DEFAULT_FRACTION
        }
    }

    /// The largest jitter applied to a certificate valid for `lifetime`.
    pub fn max_jitter(&self, lifetime: Duration) -> Duration {
        let jitter = match self.jitter {
            Some(jitter) => jitter,
            None => (lifetime / 100_i32).min(Self::DEFAULT_MAX_JITTER),
        };
        jitter.max(Duration::ZERO)
    }
}

impl Default for RenewalPolicy {
    fn default() -> Self {
        Self {
            fraction: Self::DEFAULT_FRACTION,
            jitter: None,
        }
    }
}

/// When one certificate becomes due for renewal, and when it expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RenewalPlan {
    /// From this instant on, the certificate should be renewed.
    pub due_at: OffsetDateTime,
    /// The end of its validity (`notAfter`).
    pub expires_at: OffsetDateTime,
}

impl RenewalPlan {
    /// The plan for a certificate valid from `not_before` to `not_after`
    /// with serial number `serial_hex`: due at `not_before` plus the
    /// policy's fraction of the lifetime, brought forward by a jitter between
    /// zero and [`RenewalPolicy::max_jitter`] that is a pure function of the
    /// serial number.
    pub fn new(
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
        serial_hex: &str,
        policy: &RenewalPolicy,
    ) -> Self {
        let lifetime = (not_after - not_before).max(Duration::ZERO);
        let nominal = scale(lifetime, policy.effective_fraction());
        let max_jitter = policy.max_jitter(lifetime).min(nominal);
        let jitter = scale(max_jitter, serial_fraction(serial_hex));
        Self {
            due_at: not_before + nominal - jitter,
            expires_at: not_after,
        }
    }

    /// The plan for a summarised certificate.
    pub fn for_certificate(summary: &CertificateSummary, policy: &RenewalPolicy) -> Self {
        Self::new(
            summary.not_before,
            summary.not_after,
            &summary.serial_hex,
            policy,
        )
    }

    /// Whether the certificate is due (or expired) at `now`.
    pub fn is_due(&self, now: OffsetDateTime) -> bool {
        now >= self.due_at
    }

    /// Whether the certificate has expired at `now`: X.509 validity
    /// includes the `notAfter` second itself.
    pub fn is_expired(&self, now: OffsetDateTime) -> bool {
        now > self.expires_at
    }
}

/// Whole days from `now` until `at`, rounded down: 0 during the last day,
/// negative once `at` has passed.
pub fn days_until(at: OffsetDateTime, now: OffsetDateTime) -> i64 {
    (at - now).whole_seconds().div_euclid(86_400)
}

/// Whether a certificate found by [`check_expiry`] has expired or is about to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExpiryState {
    /// Past its `notAfter`.
    Expired,
    /// Expires within the warning window.
    Expiring,
}

impl fmt::Display for ExpiryState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ExpiryState::Expired => "expired",
            ExpiryState::Expiring => "expiring",
        })
    }
}

/// A certificate that has expired or expires soon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpiryFinding {
    /// What the certificate is: an inventory name, a file path, `CA`, ...
    /// as the caller named it.
    pub what: String,
    /// Its subject.
    pub subject: String,
    /// Its serial number (hex).
    pub serial_hex: String,
    /// The end of its validity.
    pub not_after: OffsetDateTime,
    /// Whole days left, see [`days_until`]; negative when expired.
    pub days_left: i64,
    /// Expired or expiring.
    pub state: ExpiryState,
}

/// The certificates among `certs` (each named by the caller) that have
/// expired at `now` or expire within `warn_within`, soonest first.
pub fn check_expiry<'a, I>(
    certs: I,
    now: OffsetDateTime,
    warn_within: Duration,
) -> Vec<ExpiryFinding>
where
    I: IntoIterator<Item = (&'a str, &'a CertificateSummary)>,
{
    let mut findings: Vec<ExpiryFinding> = certs
        .into_iter()
        .filter_map(|(what, summary)| {
            let state = if now > summary.not_after {
                ExpiryState::Expired
            } else if summary.not_after - now <= warn_within {
                ExpiryState::Expiring
            } else {
                return None;
            };
            Some(ExpiryFinding {
                what: what.to_owned(),
                subject: summary.subject.clone(),
                serial_hex: summary.serial_hex.clone(),
                not_after: summary.not_after,
                days_left: days_until(summary.not_after, now),
                state,
            })
        })
        .collect();
    findings.sort_by(|a, b| a.not_after.cmp(&b.not_after).then(a.what.cmp(&b.what)));
    findings
}

/// How fresh a CRL is, judged against its own validity period (thisUpdate
/// to nextUpdate) rather than a fixed number of days: a 7-day CRL and a
/// 90-day CRL age at their own pace. The status page, `/status`,
/// `check-config` and `cert check` all use [`crl_freshness`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CrlFreshness {
    /// Half of its period or more left, or no nextUpdate at all (green).
    Fresh,
    /// Less than half of its period left: publish the next CRL (amber).
    Ageing,
    /// Less than a seventh of its period left, one day of a 7-day CRL:
    /// publish the next CRL now (red).
    GoingStale,
    /// Past its nextUpdate: listeners refuse the certificates of its CA
    /// (`crl_expired`) unless `stale_crl = "allow"` (red).
    Stale,
}

impl CrlFreshness {
    /// The stable snake_case name used in `/status` and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            CrlFreshness::Fresh => "fresh",
            CrlFreshness::Ageing => "ageing",
            CrlFreshness::GoingStale => "going_stale",
            CrlFreshness::Stale => "stale",
        }
    }

    /// Whether a person should act: amber or red.
    pub fn needs_attention(self) -> bool {
        self != CrlFreshness::Fresh
    }
}

impl fmt::Display for CrlFreshness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The freshness at `now` of a CRL issued at `this_update` and due to be
/// replaced at `next_update`: [`CrlFreshness::Stale`] from nextUpdate on,
/// [`CrlFreshness::GoingStale`] with less than a seventh of the period
/// left, [`CrlFreshness::Ageing`] with less than half left, otherwise
/// [`CrlFreshness::Fresh`]. A CRL without nextUpdate never goes stale; one
/// whose nextUpdate is not after its thisUpdate has no period to spend and
/// is going stale until it is stale.
pub fn crl_freshness(
    this_update: OffsetDateTime,
    next_update: Option<OffsetDateTime>,
    now: OffsetDateTime,
) -> CrlFreshness {
    let Some(next_update) = next_update else {
        return CrlFreshness::Fresh;
    };
    if next_update <= now {
        return CrlFreshness::Stale;
    }
    let period = (next_update - this_update).whole_nanoseconds();
    let left = (next_update - now).whole_nanoseconds();
    // Whole nanoseconds fit in an i128 many times over, so the products
    // cannot overflow.
    if period <= 0 || left * 7 < period {
        CrlFreshness::GoingStale
    } else if left * 2 < period {
        CrlFreshness::Ageing
    } else {
        CrlFreshness::Fresh
    }
}

/// A CRL that needs attention: stale (past its nextUpdate), or going
/// stale by [`crl_freshness`] or within a warning window the caller gave.
/// A stale CRL no longer vouches for the certificates of its CA: the proxy
/// refuses them by default (`crl_expired`), as PostgreSQL and OpenSSL do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlFinding {
    /// What the CRL is, as the caller named it (a file path, `CA CRL`).
    pub what: String,
    /// Its issuer.
    pub issuer: String,
    /// Its nextUpdate.
    pub next_update: OffsetDateTime,
    /// Whole days left, see [`days_until`]; negative when stale.
    pub days_left: i64,
    /// Its freshness by [`crl_freshness`]; [`CrlFreshness::Fresh`] only
    /// when a warning window the caller gave found it.
    pub freshness: CrlFreshness,
}

impl CrlFinding {
    /// Past nextUpdate already.
    pub fn is_stale(&self) -> bool {
        self.freshness == CrlFreshness::Stale
    }
}

/// When [`check_crl_freshness`] reports a CRL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrlWarning {
    /// When [`crl_freshness`] says it needs attention (amber or red): less
    /// than half of its validity period left, or stale.
    ByPeriod,
    /// When it is stale or goes stale within this window, whatever its
    /// period (`--crl-warn`).
    Within(Duration),
}

/// The CRLs among `crls` (each named by the caller) that need attention
/// at `now` by `warn`, soonest first. A CRL without nextUpdate never goes
/// stale.
pub fn check_crl_freshness<'a, I>(crls: I, now: OffsetDateTime, warn: CrlWarning) -> Vec<CrlFinding>
where
    I: IntoIterator<Item = (&'a str, &'a CrlSummary)>,
{
    let mut findings: Vec<CrlFinding> = crls
        .into_iter()
        .filter_map(|(what, crl)| {
            let next_update = crl.next_update?;
            let freshness = crl_freshness(crl.this_update, Some(next_update), now);
            let found = match warn {
                CrlWarning::ByPeriod => freshness.needs_attention(),
                CrlWarning::Within(window) => {
                    freshness == CrlFreshness::Stale || next_update - now <= window
                }
            };
            if !found {
                return None;
            }
            Some(CrlFinding {
                what: what.to_owned(),
                issuer: crl.issuer.clone(),
                next_update,
                days_left: days_until(next_update, now),
                freshness,
            })
        })
        .collect();
    findings.sort_by(|a, b| a.next_update.cmp(&b.next_update).then(a.what.cmp(&b.what)));
    findings
}

/// `duration * fraction` for a fraction in [0, 1], in whole nanoseconds.
fn scale(duration: Duration, fraction: f64) -> Duration {
    let nanos = duration.whole_nanoseconds() as f64 * fraction.clamp(0.0, 1.0);
    // The product is at most `duration`, so it fits back into a Duration.
    Duration::nanoseconds_i128(nanos as i128)
}

/// A number in [0, 1) that is a pure function of the serial number: the
/// first eight bytes of SHA-256 over its normalised hex form.
fn serial_fraction(serial_hex: &str) -> f64 {
    let normal = normalize_serial(serial_hex).unwrap_or_else(|| serial_hex.to_owned());
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, normal.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_ref()[..8]);
    // 53 bits, the precision of an f64 mantissa, so the result stays below 1.
    (u64::from_be_bytes(first) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> OffsetDateTime {
        OffsetDateTime::UNIX_EPOCH + Duration::days(20_000)
    }

    #[test]
    fn due_at_two_thirds_minus_a_bounded_deterministic_jitter() {
        let policy = RenewalPolicy::default();
        let (nb, na) = (t0(), t0() + Duration::days(90));
        let nominal = nb + Duration::days(60);
        // 1% of 90 days is 21.6 hours, more than the cap.
        let max = Duration::hours(6);
        assert_eq!(policy.max_jitter(Duration::days(90)), max);
        assert_eq!(
            policy.max_jitter(Duration::days(10)),
            Duration::hours(2) + Duration::minutes(24)
        );
        let mut seen = std::collections::HashSet::new();
        for serial in ["01", "5F0A", "7FFFFFFF", "00:5F:0A", "1234567890ABCDEF"] {
            let plan = RenewalPlan::new(nb, na, serial, &policy);
            assert_eq!(plan.expires_at, na);
            assert!(plan.due_at <= nominal, "{serial}");
            assert!(plan.due_at >= nominal - max, "{serial}");
            // Same serial, same plan.
            assert_eq!(plan, RenewalPlan::new(nb, na, serial, &policy));
            seen.insert(plan.due_at);
        }
        // "5F0A" and "00:5F:0A" are the same serial.
        assert_eq!(seen.len(), 4);
    }

    #[test]
    fn default_jitter_is_capped_at_six_hours() {
        let policy = RenewalPolicy::default();
        assert_eq!(policy.max_jitter(Duration::days(3650)), Duration::hours(6));
        assert_eq!(
            policy.max_jitter(Duration::minutes(10)),
            Duration::seconds(6)
        );
        let fixed = RenewalPolicy {
            jitter: Some(Duration::days(2)),
            ..policy
        };
        assert_eq!(fixed.max_jitter(Duration::days(10)), Duration::days(2));
        let negative = RenewalPolicy {
            jitter: Some(Duration::days(-2)),
            ..policy
        };
        assert_eq!(negative.max_jitter(Duration::days(10)), Duration::ZERO);
    }

    #[test]
    fn jitter_never_moves_due_before_the_start() {
        let policy = RenewalPolicy {
            fraction: 0.01,
            jitter: Some(Duration::days(365)),
        };
        let plan = RenewalPlan::new(t0(), t0() + Duration::days(10), "AB", &policy);
        assert!(plan.due_at >= t0());
    }

    #[test]
    fn bad_fractions_fall_back_to_the_default() {
        for bad in [0.0, -1.0, 1.5, f64::NAN] {
            let policy = RenewalPolicy {
                fraction: bad,
                jitter: Some(Duration::ZERO),
            };
            let plan = RenewalPlan::new(t0(), t0() + Duration::days(90), "01", &policy);
            assert_eq!(plan.due_at, t0() + Duration::days(60), "{bad}");
        }
        let whole = RenewalPolicy {
            fraction: 1.0,
            jitter: Some(Duration::ZERO),
        };
        let plan = RenewalPlan::new(t0(), t0() + Duration::days(90), "01", &whole);
        assert_eq!(plan.due_at, plan.expires_at);
    }

    #[test]
    fn due_and_expired() {
        let policy = RenewalPolicy {
            jitter: Some(Duration::ZERO),
            ..RenewalPolicy::default()
        };
        let plan = RenewalPlan::new(t0(), t0() + Duration::days(30), "01", &policy);
        assert!(!plan.is_due(t0() + Duration::days(19)));
        assert!(plan.is_due(t0() + Duration::days(20)));
        assert!(!plan.is_expired(t0() + Duration::days(30)));
        assert!(plan.is_expired(t0() + Duration::days(30) + Duration::seconds(1)));
    }

    #[test]
    fn days_until_rounds_down() {
        let now = t0();
        assert_eq!(days_until(now + Duration::hours(36), now), 1);
        assert_eq!(days_until(now + Duration::hours(12), now), 0);
        assert_eq!(days_until(now - Duration::hours(12), now), -1);
        assert_eq!(days_until(now - Duration::hours(24), now), -1);
        assert_eq!(days_until(now - Duration::hours(25), now), -2);
    }

    #[test]
    fn a_crl_is_judged_against_its_own_period() {
        let issued = t0();
        let week = Some(issued + Duration::days(7));
        let at = |d: Duration| crl_freshness(issued, week, issued + d);
        // A fresh default 7-day CRL is green, whatever the certificate
        // thresholds (30 and 7 days) would say.
        assert_eq!(at(Duration::ZERO), CrlFreshness::Fresh);
        assert_eq!(at(Duration::hours(84)), CrlFreshness::Fresh);
        // Less than half of the week left: amber.
        assert_eq!(
            at(Duration::hours(84) + Duration::seconds(1)),
            CrlFreshness::Ageing
        );
        assert_eq!(at(Duration::days(6)), CrlFreshness::Ageing);
        // Less than a day (a seventh) left: red, not yet stale.
        assert_eq!(
            at(Duration::days(6) + Duration::seconds(1)),
            CrlFreshness::GoingStale
        );
        // From nextUpdate on: stale.
        assert_eq!(at(Duration::days(7)), CrlFreshness::Stale);
        assert_eq!(at(Duration::days(30)), CrlFreshness::Stale);
        // A 90-day CRL with 20 days left is amber; one with 12 days left red.
        let quarter = Some(issued + Duration::days(90));
        assert_eq!(
            crl_freshness(issued, quarter, issued + Duration::days(70)),
            CrlFreshness::Ageing
        );
        assert_eq!(
            crl_freshness(issued, quarter, issued + Duration::days(78)),
            CrlFreshness::GoingStale
        );
        // No nextUpdate: never stale. No period: going stale until stale.
        assert_eq!(
            crl_freshness(issued, None, issued + Duration::days(9_999)),
            CrlFreshness::Fresh
        );
        assert_eq!(
            crl_freshness(issued, Some(issued), issued - Duration::days(1)),
            CrlFreshness::GoingStale
        );
        // A CRL dated in the future (a clock ahead) has its whole period.
        assert_eq!(
            crl_freshness(issued, week, issued - Duration::days(1)),
            CrlFreshness::Fresh
        );
    }

    #[test]
    fn crls_are_found_stale_or_going_stale_soonest_first() {
        let now = t0();
        let crl = |this: OffsetDateTime, next: Option<OffsetDateTime>| CrlSummary {
            issuer: "CN=test CA".into(),
            this_update: this,
            next_update: next,
            revoked: 0,
        };
        let month_ago = now - Duration::days(30);
        let stale = crl(month_ago, Some(now - Duration::days(23)));
        let soon = crl(now - Duration::days(6), Some(now + Duration::hours(30)));
        let fresh = crl(now - Duration::days(1), Some(now + Duration::days(6)));
        let endless = crl(month_ago, None);
        let at_the_second = crl(month_ago, Some(now));
        let ageing = crl(now - Duration::days(5), Some(now + Duration::days(4)));
        let crls = [
            ("soon", &soon),
            ("fresh", &fresh),
            ("endless", &endless),
            ("stale", &stale),
            ("now", &at_the_second),
            ("ageing", &ageing),
        ];
        let seen = |findings: Vec<CrlFinding>| -> Vec<_> {
            findings
                .into_iter()
                .map(|f| (f.what, f.freshness, f.days_left))
                .collect()
        };
        let by_window = check_crl_freshness(crls, now, CrlWarning::Within(Duration::days(2)));
        assert_eq!(
            seen(by_window),
            [
                ("stale".to_owned(), CrlFreshness::Stale, -23),
                ("now".to_owned(), CrlFreshness::Stale, 0),
                ("soon".to_owned(), CrlFreshness::Ageing, 1),
            ]
        );
        // By their periods: the ageing 9-day CRL too, with four days left,
        // and not the fresh one, whose six days are most of its seven.
        let by_period = check_crl_freshness(crls, now, CrlWarning::ByPeriod);
        assert_eq!(
            seen(by_period),
            [
                ("stale".to_owned(), CrlFreshness::Stale, -23),
                ("now".to_owned(), CrlFreshness::Stale, 0),
                ("soon".to_owned(), CrlFreshness::Ageing, 1),
                ("ageing".to_owned(), CrlFreshness::Ageing, 4),
            ]
        );
    }
}
