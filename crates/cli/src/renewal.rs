//! Automatic renewal of the certificates `intransit up` created, while it
//! runs: each is re-issued from the local CA when it becomes due (two thirds
//! of its lifetime, with a little jitter), and a renewed server certificate
//! is swapped into the listener. Established connections keep the
//! certificate they started with; new handshakes get the new one. With
//! `up --acme`, the server certificate is renewed by the ACME CA instead,
//! at the same point of its lifetime; a failed renewal (the CA down, a
//! refused challenge) keeps the current certificate and is tried again
//! after a wait that doubles with each failure, up to an hour.

use std::sync::Arc;
use std::time::Duration;

use intransit_config::ServerTls;
use intransit_pki::{RenewOptions, RenewOutcome, RenewalPolicy, StateDir};
use intransit_proxy::PreparedListener;
use time::OffsetDateTime;
use tracing::{error, info, warn};

use crate::acme_cmd::UpAcme;

/// The certificates `up` renews, by inventory name.
const SERVER: &str = "server";
const CLIENT: &str = "client";

/// Longest sleep between checks, so that files replaced by hand or a clock
/// that jumped are noticed within the hour.
const MAX_SLEEP: Duration = Duration::from_secs(3600);
/// Shortest sleep, so a failing renewal cannot spin.
const MIN_SLEEP: Duration = Duration::from_secs(1);
/// How long to wait before retrying after a failed renewal (doubled after
/// each further failure, up to [`MAX_SLEEP`]).
const RETRY_AFTER: Duration = Duration::from_secs(30);

/// Starts the renewal task for `up`'s server and client certificates.
pub fn spawn(
    state: StateDir,
    listener: Arc<PreparedListener>,
    server_tls: ServerTls,
    acme: Option<UpAcme>,
) {
    tokio::spawn(async move {
        let policy = RenewalPolicy::default();
        let mut retry_after = RETRY_AFTER;
        loop {
            let sleep = match next_check(&state, &policy).await {
                Ok(at) => at,
                Err(e) => {
                    warn!(error = %e, "cannot read the certificate inventory; retrying");
                    RETRY_AFTER
                }
            };
            tokio::time::sleep(sleep).await;
            let mut failed = false;
            for name in [SERVER, CLIENT] {
                let renewed = match (&acme, name) {
                    (Some(acme), SERVER) => acme.renew_if_due(&state).await,
                    _ => renew(&state, name, &policy).await,
                };
                match renewed {
                    Ok(true) if name == SERVER => {
                        failed |= !crate::reload::reload_listener(&listener, &server_tls);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        failed = true;
                        error!(
                            certificate = name,
                            error = %crate::errors::chain(&e),
                            "automatic renewal failed; the current certificate stays in use"
                        );
                    }
                }
            }
            // A failure must not turn into a renewal every second.
            if failed {
                tokio::time::sleep(retry_after).await;
                retry_after = (retry_after * 2).min(MAX_SLEEP);
            } else {
                retry_after = RETRY_AFTER;
            }
        }
    });
}

/// Time until the earliest of the two certificates is due.
async fn next_check(state: &StateDir, policy: &RenewalPolicy) -> anyhow::Result<Duration> {
    let state = state.clone();
    let policy = *policy;
    tokio::task::spawn_blocking(move || {
        let inventory = state.inventory()?;
        let now = OffsetDateTime::now_utc();
        let due = [SERVER, CLIENT]
            .iter()
            .filter_map(|name| inventory.get(name))
            .filter_map(|entry| entry.renewal_plan(&policy))
            .map(|plan| plan.due_at)
            .min();
        let wait = match due {
            Some(at) if at > now => Duration::try_from(at - now).unwrap_or(MAX_SLEEP),
            Some(_) => MIN_SLEEP,
            None => MAX_SLEEP,
        };
        Ok(wait.clamp(MIN_SLEEP, MAX_SLEEP))
    })
    .await?
}

/// Renews `name` if it is due. Returns whether it was renewed.
async fn renew(
    state: &StateDir,
    name: &'static str,
    policy: &RenewalPolicy,
) -> anyhow::Result<bool> {
    let state = state.clone();
    let policy = *policy;
    tokio::task::spawn_blocking(move || {
        let ca = state.load_ca(None)?;
        let options = RenewOptions {
            policy,
            ..RenewOptions::default()
        };
        match state.renew(&ca, name, &options, OffsetDateTime::now_utc())? {
            RenewOutcome::NotDue { .. } => Ok(false),
            RenewOutcome::Renewed {
                old_serial,
                new_serial,
                entry,
            } => {
                info!(
                    certificate = name,
                    old_serial = %old_serial,
                    new_serial = %new_serial,
                    not_after = ?entry.not_after(),
                    "certificate renewed"
                );
                Ok(true)
            }
        }
    })
    .await?
}
