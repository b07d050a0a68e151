//! Cancel requests for pooled clients. Each client gets a BackendKeyData
//! of the proxy's own (a random process id and secret); a CancelRequest
//! carrying it reaches the server connection the client is using at that
//! moment, with that connection's own key, and does nothing when the
//! client has no server connection (no query is running).
//!
//! Several instances behind one TCP load balancer: a cancel request is a
//! new connection, so it may reach another instance than the client's.
//! With `peer_id` set, the process id of every key carries it in bits 23
//! to 30 (the rest random, as is the whole secret), and an instance that
//! does not know a key whose id names one of its peers forwards the
//! request to that peer over mutual TLS (see `server_mode::cancel_pooled`).
//! A key of its own id that it does not know, or of no peer, does
//! nothing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::login::BackendKey;

/// The server connection a client is using, if any.
type Serving = Arc<Mutex<Option<BackendKey>>>;

/// Each client's secret and what it is using, by the proxy's process id.
type Clients = HashMap<u32, (u32, Serving)>;

/// The keys of a listener's pooled clients.
#[derive(Debug, Default)]
pub(crate) struct CancelKeys {
    clients: Mutex<Clients>,
}

/// One client's entry: its key, and the server connection it is using.
/// Dropping it forgets the key.
pub(crate) struct CancelSlot {
    keys: Arc<super::Pools>,
    pub(crate) key: BackendKey,
    serving: Serving,
}

impl CancelKeys {
    fn lock(&self) -> std::sync::MutexGuard<'_, Clients> {
        self.clients.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new key, unique among the listener's clients.
    pub(crate) fn register(pools: &Arc<super::Pools>) -> CancelSlot {
        let serving = Arc::new(Mutex::new(None));
        let mut clients = pools.cancels.lock();
        let key = loop {
            let mut bytes = [0u8; 8];
            if aws_lc_rs::rand::fill(&mut bytes).is_err() {
                // Without the system's random source a key could be
                // guessed; try again rather than make a weak one.
                continue;
            }
            let random = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
            let pid = with_instance(random, pools.config.peer_id);
            let secret = u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
            if pid != 0 && !clients.contains_key(&pid) {
                break BackendKey { pid, secret };
            }
        };
        clients.insert(key.pid, (key.secret, serving.clone()));
        CancelSlot {
            keys: pools.clone(),
            key,
            serving,
        }
    }

    /// The server key a cancel with this proxy key should reach: `None`
    /// when the key is not a client's of this listener (it may be a pass-
    /// through backend's), `Some(None)` when that client holds no server
    /// connection now.
    pub(crate) fn target(&self, pid: u32, secret: &[u8]) -> Option<Option<BackendKey>> {
        let clients = self.lock();
        let (expected, serving) = clients.get(&pid)?;
        // In constant time: the secret is the only thing a cancel proves.
        if aws_lc_rs::constant_time::verify_slices_are_equal(secret, &expected.to_be_bytes())
            .is_err()
        {
            return None;
        }
        let serving = *serving.lock().unwrap_or_else(|p| p.into_inner());
        Some(serving)
    }
}

/// Bits of a process id below the instance id.
const INSTANCE_SHIFT: u32 = 23;

/// A positive process id from random bits, carrying `instance` in bits 23
/// to 30 when set.
fn with_instance(random: u32, instance: Option<u8>) -> u32 {
    match instance {
        None => random & 0x7fff_ffff,
        Some(id) => (u32::from(id) << INSTANCE_SHIFT) | (random & ((1 << INSTANCE_SHIFT) - 1)),
    }
}

/// The instance a process id names, when it is not `own` (with `own`
/// unset, keys carry no instance).
pub(crate) fn instance_of(pid: u32, own: Option<u8>) -> Option<u8> {
    own?;
    let id = u8::try_from(pid >> INSTANCE_SHIFT).ok()?;
    (Some(id) != own && id != 0).then_some(id)
}

impl CancelSlot {
    /// The client is now using the server connection with `key`, or none.
    pub(crate) fn serving(&self, key: Option<BackendKey>) {
        *self.serving.lock().unwrap_or_else(|p| p.into_inner()) = key;
    }
}

impl Drop for CancelSlot {
    fn drop(&mut self) {
        self.keys.cancels.lock().remove(&self.key.pid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_carries_its_instance_and_only_other_instances_are_named() {
        for random in [0, 1, 0x7f_ffff, 0xffff_ffff, 0x1234_5678] {
            let pid = with_instance(random, Some(3));
            assert!(pid > 0 && pid <= 0x7fff_ffff, "{pid:#x}");
            assert_eq!(instance_of(pid, Some(3)), None, "its own");
            assert_eq!(instance_of(pid, Some(1)), Some(3));
            assert_eq!(instance_of(pid, None), None, "alone, keys name no one");
            let top = with_instance(random, Some(255));
            assert!(top <= 0x7fff_ffff);
            assert_eq!(instance_of(top, Some(1)), Some(255));
            assert!(with_instance(random, None) <= 0x7fff_ffff);
        }
    }
}
