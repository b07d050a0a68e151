//! File descriptors: the soft limit raised to the hard one at start, and
//! the check that the configured limits fit in it.
//!
//! A proxied connection holds two descriptors (the peer's socket and the
//! upstream's), and so may one that is still negotiating, so the budget
//! counts two for each connection the listeners allow, verified and
//! unauthenticated alike (plus a client-mode listener's queue of polite
//! refusals), one for each admin connection, and some slack for listening
//! sockets, logs, the audit file and the file watcher. When the budget
//! does not fit, the proxy warns and starts anyway: the limits then
//! protect less than they say, as `accept` fails with "too many open
//! files" before they are reached.

use intransit_config::Config;
use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

/// Descriptors for what is not a connection: listening sockets, the log
/// and audit files, the file watcher, the runtime.
const SLACK: u64 = 64;

/// A client-mode listener's polite refusals beyond `max_connections`, each
/// holding the application's socket (`intransit_proxy`'s refusal queue).
const CLIENT_MODE_REFUSALS: u64 = 64;

/// The most the Linux kernel lets a process open when the hard limit says
/// "unlimited" and `/proc/sys/fs/nr_open` cannot be read (its default).
const NR_OPEN_DEFAULT: u64 = 1 << 20;

/// How many descriptors `config` may hold open at once.
pub(crate) fn needed(config: &Config) -> u64 {
    let server: u64 = config
        .listeners
        .iter()
        .map(|l| 2 * (l.max_connections as u64 + l.unauthenticated.max as u64))
        .sum();
    let client: u64 = config
        .client_listeners
        .iter()
        .map(|l| 2 * l.max_connections as u64 + CLIENT_MODE_REFUSALS)
        .sum();
    let admin = if config.admin.is_some() {
        config.admin_limits.max_connections as u64
    } else {
        0
    };
    server + client + admin + SLACK
}

/// The soft limit before and after [`raise_soft_limit`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct SoftLimit {
    pub(crate) before: u64,
    pub(crate) now: u64,
}

/// The hard limit of this process, as a number (an "unlimited" hard limit
/// is what the kernel allows, `fs.nr_open`).
pub(crate) fn hard_limit() -> u64 {
    getrlimit(Resource::Nofile).maximum.unwrap_or_else(nr_open)
}

fn nr_open() -> u64 {
    std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(NR_OPEN_DEFAULT)
}

/// Raises the soft limit on open files to the hard limit.
pub(crate) fn raise_soft_limit() -> std::io::Result<SoftLimit> {
    let current = getrlimit(Resource::Nofile);
    let before = current.current.unwrap_or(u64::MAX);
    let target = hard_limit();
    if before >= target {
        return Ok(SoftLimit {
            before,
            now: before,
        });
    }
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(target),
            maximum: current.maximum,
        },
    )?;
    Ok(SoftLimit {
        before,
        now: target,
    })
}

/// What to do when `needed` does not fit in `limit`, in words for the log
/// and `check-config`.
pub(crate) fn shortfall(needed: u64, limit: u64) -> Option<String> {
    (needed > limit).then(|| {
        format!(
            "the configured limits may need {needed} file descriptors (2 per connection: listeners' max_connections and max_unauthenticated, plus admin_max_connections and {SLACK} spare), but the limit on open files is {limit}; under load, accept will fail with \"too many open files\" before those limits are reached. Raise the hard limit (LimitNOFILE= in a systemd unit, ulimit -Hn, or the container runtime's nofile) or lower max_connections"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_counts_two_per_connection_and_the_admin_cap() {
        let config = Config::from_toml(
            r#"
admin = "127.0.0.1:9090"
admin_max_connections = 10
[[listener]]
listen = "127.0.0.1:6432"
upstream = "127.0.0.1:5432"
max_connections = 100
max_unauthenticated = 20
[listener.tls]
cert = "c.pem"
key = "k.pem"
client_ca = "ca.pem"
[[listener]]
mode = "client"
listen = "127.0.0.1:6433"
upstream = "db.internal:5432"
max_connections = 5
[listener.upstream_tls]
ca = "ca.pem"
"#,
        )
        .map_err(|e| e.to_string());
        let Ok(config) = config else {
            panic!("{config:?}");
        };
        assert_eq!(needed(&config), 2 * 120 + (2 * 5 + 64) + 10 + SLACK);
        assert!(shortfall(needed(&config), 1024).is_none());
        let words = shortfall(needed(&config), 100).unwrap_or_default();
        assert!(words.contains("LimitNOFILE"), "{words}");
    }
}
