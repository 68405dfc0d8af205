//! The server's application state: the store, the blob store, the trust material, the policy
//! settings, and what it keeps in memory between requests (check-in times, request budgets,
//! device reports waiting for their batch).
//!
//! Both the HTTP layer ([`crate::api`]) and the services ([`crate::checkpoints`], the
//! background tasks in `lib.rs`) use this module; it uses neither, so there is no cycle. The
//! services take the parts they need ([`AppState::checkpoints`], the store), not the whole
//! state.

use std::sync::Arc;

use wavecast_core::rollout::GateApproval;

use crate::batcher::ReportBatcher;
use crate::blobs::BlobStore;
use crate::checkpoints::Checkpoints;
use crate::limits::{Limits, RateLimits};
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
#[derive(Debug, Clone)]
pub struct Settings {
    /// Whether a rollout's creator may approve its gates.
    pub approval: GateApproval,
    /// What devices must present.
    pub devices: DeviceIdentity,
    /// Request budgets per client address and per device.
    pub limits: RateLimits,
    /// How long a device report's id is kept to recognise the report sent again.
    pub report_retention: std::time::Duration,
    /// How browsers reach the server: the dashboard's session cookie is `Secure` under TLS.
    pub transport: Transport,
}

/// How clients reach this server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Over TLS that this server terminates.
    Tls,
    /// Over plain HTTP (loopback, or behind a proxy that terminates TLS).
    PlainHttp,
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
    reports: ReportBatcher,
    settings: Settings,
    metrics: Metrics,
    last_seen: LastSeen,
    limits: Limits,
}

/// Everything handlers share; cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

impl AppState {
    /// Bundles the server's parts.
    pub fn new(store: Store, blobs: BlobStore, trust: Trust, settings: Settings) -> Self {
        let trust = Arc::new(trust);
        let checkpoints = Checkpoints::new(store.clone(), trust.clone());
        let limits = Limits::new(&settings.limits);
        let reports = ReportBatcher::new(store.clone());
        Self(Arc::new(Inner {
            store,
            blobs,
            trust,
            checkpoints,
            reports,
            settings,
            metrics: Metrics::default(),
            last_seen: LastSeen::default(),
            limits,
        }))
    }

    /// Policy settings.
    pub fn settings(&self) -> &Settings {
        &self.0.settings
    }

    /// Request budgets: failed authentications per address, requests and heartbeats per
    /// device.
    pub fn limits(&self) -> &Limits {
        &self.0.limits
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

    /// Device reports, applied in batches per rollout.
    pub fn reports(&self) -> &ReportBatcher {
        &self.0.reports
    }

    /// Counters for `/metrics`.
    pub fn metrics(&self) -> &Metrics {
        &self.0.metrics
    }
}
