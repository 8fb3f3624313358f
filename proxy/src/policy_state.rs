//! The active policy set, and hot reload: the set's directory is re-read on SIGHUP and every
//! `reload_interval_ms`; a new valid version is stored and swapped in atomically (sessions see it
//! at their next statement), an invalid one is logged and the previous version stays active.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use policies::{PolicyBundle, Version, VersionStore};
use tracing::{error, info};

pub struct PolicyState {
    dir: PathBuf,
    store: Option<VersionStore>,
    active: RwLock<Arc<PolicyBundle>>,
    /// Bumped at every activation, so sessions can tell cheaply that the version changed.
    generation: AtomicU64,
    /// The last version that failed to load, so a broken set is reported once, not every poll.
    last_rejected: RwLock<Option<String>>,
}

impl PolicyState {
    /// A fixed set (no directory to reload from): what `audit replay` rewrites under.
    pub fn fixed(bundle: PolicyBundle) -> Self {
        PolicyState {
            dir: PathBuf::new(),
            store: None,
            active: RwLock::new(Arc::new(bundle)),
            generation: AtomicU64::new(0),
            last_rejected: RwLock::new(None),
        }
    }

    /// Loads the set (it must be valid) and stores it. Blocking: call before serving.
    pub fn load(dir: PathBuf, store: Option<PathBuf>) -> anyhow::Result<Self> {
        let bundle = policies::load_dir(&dir)?;
        let store = store.map(VersionStore::open).transpose()?;
        if let Some(s) = &store {
            s.save(&bundle)?;
        }
        info!(version = %bundle.version, "policy version {} active", bundle.version.short());
        Ok(PolicyState {
            dir,
            store,
            active: RwLock::new(Arc::new(bundle)),
            generation: AtomicU64::new(0),
            last_rejected: RwLock::new(None),
        })
    }

    /// The version sessions use now.
    pub fn current(&self) -> Arc<PolicyBundle> {
        self.active.read().expect("policy lock").clone()
    }

    /// Whether the active set's entities hold `User::"<id>"`.
    pub fn knows_user(&self, id: &str) -> bool {
        let Ok(uid) = format!("User::{}", serde_json::Value::String(id.to_string()))
            .parse::<cedar_policy::EntityUid>()
        else {
            return false;
        };
        self.current().entities.get(&uid).is_some()
    }

    /// Changes whenever another version becomes active. Read it before [`Self::current`]: a
    /// statement rewritten under the version then active is never older than the generation.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Re-reads the directory; activates it if it is a new valid version. Blocking.
    pub fn reload(&self) -> Option<Version> {
        let active = self.current().version.clone();
        match policies::load_dir(&self.dir) {
            Ok(bundle) if bundle.version == active => None,
            Ok(bundle) => {
                if let Some(Err(e)) = self.store.as_ref().map(|s| s.save(&bundle)) {
                    error!(
                        "policy version {} not activated: cannot store it: {e}",
                        bundle.version.short()
                    );
                    return None;
                }
                let version = bundle.version.clone();
                *self.active.write().expect("policy lock") = Arc::new(bundle);
                self.generation.fetch_add(1, Ordering::AcqRel);
                *self.last_rejected.write().expect("policy lock") = None;
                info!(version = %version, "policy version {} activated (was {})", version.short(), active.short());
                Some(version)
            }
            Err(e) => {
                let text = e.to_string();
                let mut last = self.last_rejected.write().expect("policy lock");
                if last.as_deref() != Some(text.as_str()) {
                    error!(
                        "policy change rejected, version {} stays active: {text}",
                        active.short()
                    );
                    *last = Some(text);
                }
                None
            }
        }
    }
}

/// Reloads on SIGHUP (`hup`, installed by the caller before serving, so an early signal cannot
/// take the default action and end the process) and every `interval`, forever.
pub async fn watch(
    state: Arc<PolicyState>,
    interval: Duration,
    mut hup: tokio::signal::unix::Signal,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            Some(()) = hup.recv() => info!("SIGHUP: reloading policies"),
        }
        let s = state.clone();
        // File reads and Cedar validation are blocking work: keep them off the async workers.
        let _ = tokio::task::spawn_blocking(move || s.reload()).await;
    }
}
