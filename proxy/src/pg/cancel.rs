//! Cancel keys: each session gets a random (process id, secret) pair of its own; a CancelRequest
//! carrying it is mapped to the upstream backend's real key. Upstream keys never reach clients.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// Where to send a cancel for one session.
#[derive(Debug, Clone, Copy)]
pub struct CancelTarget {
    pub addr: SocketAddr,
    pub process_id: i32,
    pub secret_key: i32,
}

#[derive(Default)]
pub struct CancelRegistry {
    keys: Mutex<HashMap<(i32, i32), CancelTarget>>,
}

/// Removes its key from the registry when the session ends.
pub struct Registration {
    registry: Arc<CancelRegistry>,
    pub key: (i32, i32),
}

impl CancelRegistry {
    /// Registers `target` under a fresh random key.
    pub fn register(self: &Arc<Self>, target: CancelTarget) -> Registration {
        let mut keys = self.keys.lock().expect("cancel registry lock");
        let key = loop {
            let k = (rand::random::<i32>() & i32::MAX, rand::random::<i32>());
            if k.0 != 0 && !keys.contains_key(&k) {
                break k;
            }
        };
        keys.insert(key, target);
        Registration {
            registry: self.clone(),
            key,
        }
    }

    pub fn lookup(&self, process_id: i32, secret_key: i32) -> Option<CancelTarget> {
        self.keys
            .lock()
            .expect("cancel registry lock")
            .get(&(process_id, secret_key))
            .copied()
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Ok(mut keys) = self.registry.keys.lock() {
            keys.remove(&self.key);
        }
    }
}
