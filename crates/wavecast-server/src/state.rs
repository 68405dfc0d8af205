//! The server's application state: the store, the blob store, the trust material, the policy
//! settings, and what it keeps in memory between requests.
//!
//! Both the HTTP layer ([`crate::api`]) and the services ([`crate::checkpoints`], the
//! background tasks in `lib.rs`) use this module; it uses neither, so there is no cycle. The
//! services take the parts they need ([`AppState::checkpoints`], the store), not the whole
//! state.

use std::sync::Arc;

use wavecast_core::rollout::GateApproval;

use crate::blobs::BlobStore;
use crate::checkpoints::Checkpoints;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::trust::Trust;

/// How devices prove who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceIdentity {
    /// By their credential alone (no device CA is configured).
    Credential,
    /// By their credential and a client certificate from the device CA naming the same
    /// device (mutual TLS).
    CredentialAndCertificate,
}

/// Server-wide policy. There is no default: whoever starts a server says what it enforces,
/// so the permissive choice is never made by omission.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Whether a rollout's creator may approve its gates.
    pub approval: GateApproval,
    /// What devices must present.
    pub devices: DeviceIdentity,
}

/// Per-device request budget: a token bucket per device, in memory (each replica keeps its
/// own; the point is that one misbehaving device cannot starve the others).
#[derive(Debug)]
pub struct DeviceRateLimit {
    per_second: f64,
    burst: f64,
    buckets: std::sync::Mutex<std::collections::HashMap<String, (f64, std::time::Instant)>>,
}

impl DeviceRateLimit {
    /// Any device request: 50 a second sustained, bursts of 100.
    pub fn requests() -> Self {
        Self::new(50.0, 100.0)
    }

    /// Heartbeats, on top of that: one a second sustained (the most a device is ever asked
    /// for), bursts of five (a few that queued up behind a slow link). Each one is a database
    /// write, so a device that sends more is refused rather than let through.
    pub fn heartbeats() -> Self {
        Self::new(1.0, 5.0)
    }

    fn new(per_second: f64, burst: f64) -> Self {
        Self { per_second, burst, buckets: Default::default() }
    }

    /// The sustained rate allowed.
    pub fn per_second(&self) -> f64 {
        self.per_second
    }

    /// Takes one request from `device`'s budget; false when it is spent.
    pub fn allow(&self, device: &str) -> bool {
        let Ok(mut m) = self.buckets.lock() else { return true };
        let now = std::time::Instant::now();
        let entry = m.entry(device.to_owned()).or_insert((self.burst, now));
        entry.0 = (entry.0 + now.duration_since(entry.1).as_secs_f64() * self.per_second).min(self.burst);
        entry.1 = now;
        if entry.0 >= 1.0 {
            entry.0 -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Device check-in times, kept in memory and written to the database in batches: a write per
/// check-in would cap an idle fleet at the database's commit rate.
#[derive(Debug, Default)]
pub struct LastSeen(std::sync::Mutex<std::collections::HashMap<String, i64>>);

impl LastSeen {
    /// Notes a check-in.
    pub fn touch(&self, device_id: &str, now_ms: i64) {
        if let Ok(mut m) = self.0.lock() {
            m.insert(device_id.to_owned(), now_ms);
        }
    }

    /// Takes everything noted since the last call.
    pub fn drain(&self) -> Vec<(String, i64)> {
        self.0.lock().map(|mut m| m.drain().collect()).unwrap_or_default()
    }
}

struct Inner {
    store: Store,
    blobs: BlobStore,
    trust: Arc<Trust>,
    checkpoints: Checkpoints,
    settings: Settings,
    metrics: Metrics,
    last_seen: LastSeen,
    device_rate: DeviceRateLimit,
    heartbeat_rate: DeviceRateLimit,
}

/// Everything handlers share; cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

impl AppState {
    /// Bundles the server's parts.
    pub fn new(store: Store, blobs: BlobStore, trust: Trust, settings: Settings) -> Self {
        let trust = Arc::new(trust);
        let checkpoints = Checkpoints::new(store.clone(), trust.clone());
        Self(Arc::new(Inner {
            store,
            blobs,
            trust,
            checkpoints,
            settings,
            metrics: Metrics::default(),
            last_seen: LastSeen::default(),
            device_rate: DeviceRateLimit::requests(),
            heartbeat_rate: DeviceRateLimit::heartbeats(),
        }))
    }

    /// Policy settings.
    pub fn settings(&self) -> &Settings {
        &self.0.settings
    }

    /// Per-device request budgets.
    pub fn device_rate(&self) -> &DeviceRateLimit {
        &self.0.device_rate
    }

    /// Per-device heartbeat budgets.
    pub fn heartbeat_rate(&self) -> &DeviceRateLimit {
        &self.0.heartbeat_rate
    }

    /// Check-in times not yet written.
    pub fn last_seen(&self) -> &LastSeen {
        &self.0.last_seen
    }

    /// The database.
    pub fn store(&self) -> &Store {
        &self.0.store
    }

    /// The blob store.
    pub fn blobs(&self) -> &BlobStore {
        &self.0.blobs
    }

    /// The root chain and the online keys.
    pub fn trust(&self) -> &Arc<Trust> {
        &self.0.trust
    }

    /// The audit checkpoint service.
    pub fn checkpoints(&self) -> &Checkpoints {
        &self.0.checkpoints
    }

    /// Counters for `/metrics`.
    pub fn metrics(&self) -> &Metrics {
        &self.0.metrics
    }
}
