//! HTTP: the operator API (`/api/v1`), the device API (`/device/v1`), health and metrics.
//!
//! [`router`] builds the whole service from an [`AppState`], so tests drive it in-process with
//! `tower::ServiceExt::oneshot` exactly as the network would.

mod audit;
mod auth;
mod bodies;
mod device;
pub mod error;
mod openapi;
mod operator;
mod publish;
mod rollouts;
mod tokens;
mod tuf;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::de::DeserializeOwned;
use tough::schema::{Root, Signed};
use wavecast_tuf::keys::SigningKey;
use wavecast_tuf::repo::OnlineKeys;

pub use auth::{Device, Operator};
pub use error::ApiError;

use crate::blobs::BlobStore;
use crate::metrics::Metrics;
use crate::store::Store;

/// Request bodies other than artifact uploads are small JSON documents.
const JSON_BODY_LIMIT: usize = 1024 * 1024;

/// The trust material the server holds.
#[derive(Debug)]
pub struct Trust {
    /// The root, parsed and self-verified.
    pub root: Signed<Root>,
    /// The root exactly as init wrote it.
    pub root_bytes: Vec<u8>,
    /// Snapshot and timestamp keys.
    pub online: OnlineKeys,
    /// Signs device assignments.
    pub director: SigningKey,
    /// Signs audit log checkpoints; loaded from `keys/`, never stored in the database.
    pub checkpoint: SigningKey,
}

/// Server-wide policy settings.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// Forbid the creator of a rollout from approving its gates.
    pub require_distinct_approver: bool,
    /// Devices must present a client certificate naming them (set when TLS has a device CA).
    pub device_mtls: bool,
}

struct Inner {
    store: Store,
    blobs: BlobStore,
    trust: Trust,
    settings: Settings,
    metrics: Metrics,
    last_seen: LastSeen,
    device_rate: DeviceRateLimit,
}

/// Per-device request budget: a token bucket per device, in memory (each replica keeps its
/// own; the point is that one misbehaving device cannot starve the others).
#[derive(Debug, Default)]
pub struct DeviceRateLimit(std::sync::Mutex<std::collections::HashMap<String, (f64, std::time::Instant)>>);

impl DeviceRateLimit {
    /// Sustained requests per second per device.
    pub const RATE: f64 = 50.0;
    /// Burst size.
    pub const BURST: f64 = 100.0;

    /// Takes one request from `device`'s budget; false when it is spent.
    pub fn allow(&self, device: &str) -> bool {
        let Ok(mut m) = self.0.lock() else { return true };
        let now = std::time::Instant::now();
        let entry = m.entry(device.to_owned()).or_insert((Self::BURST, now));
        entry.0 = (entry.0 + now.duration_since(entry.1).as_secs_f64() * Self::RATE).min(Self::BURST);
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

/// Everything handlers share; cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

impl AppState {
    /// Bundles the server's parts.
    pub fn new(store: Store, blobs: BlobStore, trust: Trust, settings: Settings) -> Self {
        Self(Arc::new(Inner {
            store,
            blobs,
            trust,
            settings,
            metrics: Metrics::default(),
            last_seen: LastSeen::default(),
            device_rate: DeviceRateLimit::default(),
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

    /// Keys and root.
    pub fn trust(&self) -> &Trust {
        &self.0.trust
    }

    /// Counters for `/metrics`.
    pub fn metrics(&self) -> &Metrics {
        &self.0.metrics
    }
}

/// The whole HTTP service.
pub fn router(state: AppState) -> Router {
    let operator = Router::new()
        .route("/openapi.json", get(openapi::openapi))
        .route("/whoami", get(operator::whoami))
        .route("/artifacts", get(operator::list_artifacts))
        .route("/groups", get(operator::list_groups).post(operator::create_group))
        .route("/enrollment-tokens", post(operator::create_enrollment_token))
        .route("/devices", get(operator::list_devices))
        .route("/devices/{name}", get(operator::show_device))
        .route("/audit", get(operator::list_audit))
        .route("/audit/checkpoint", get(audit::checkpoint))
        .route("/audit/checkpoints", get(audit::checkpoint_rows))
        .route("/audit/leaves", get(audit::leaves))
        .route("/audit/export", get(audit::export))
        .route("/audit/consistency", get(audit::consistency))
        .route("/tuf/{file}", get(tuf::operator_metadata))
        .route("/blobs/{sha256}", get(operator::get_blob))
        .route("/tokens", get(tokens::list).post(tokens::create))
        .route("/tokens/{id}", axum::routing::delete(tokens::revoke))
        .route("/rollouts", get(rollouts::list).post(rollouts::create))
        .route("/rollouts/{id}", get(rollouts::show))
        .route("/rollouts/{id}/approve", post(rollouts::approve))
        .route("/rollouts/{id}/resume", post(rollouts::resume))
        .route("/rollouts/{id}/abort", post(rollouts::abort))
        .layer(DefaultBodyLimit::max(JSON_BODY_LIMIT))
        // Artifacts can be gigabytes; the publish handler caps the upload at the signed length.
        .route("/artifacts", post(publish::publish).layer(DefaultBodyLimit::disable()));
    let device = Router::new()
        .route("/enroll", post(device::enroll))
        .route("/whoami", get(device::whoami))
        .route("/tuf/{file}", get(tuf::device_metadata))
        .route("/assignments", get(device::assignments))
        .route("/reports", post(device::reports))
        .route("/targets/{file}", get(device::target))
        .layer(DefaultBodyLimit::max(JSON_BODY_LIMIT));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .nest("/api/v1", operator)
        .nest("/device/v1", device)
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), count_requests))
        .with_state(state)
}

async fn healthz(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    state.store().installation_root().await?;
    Ok("ok\n")
}

async fn metrics(State(state): State<AppState>) -> Response {
    let body = state.metrics().render(state.store().backend());
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

async fn not_found(req: Request) -> ApiError {
    ApiError::NotFound(format!("no route for {} {}", req.method(), req.uri().path()))
}

async fn count_requests(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let api = crate::metrics::Api::of(req.uri().path());
    let resp = next.run(req).await;
    state.metrics().record(api, resp.status());
    resp
}

/// `Json<T>` whose rejections are our JSON errors, and which refuses unknown fields when `T`
/// says `deny_unknown_fields`.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(rejection) => {
                let status = rejection.status();
                let msg = rejection.body_text();
                if status == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                    Err(ApiError::TooLarge(format!("request body is larger than {JSON_BODY_LIMIT} bytes")))
                } else {
                    Err(ApiError::BadRequest(msg))
                }
            }
        }
    }
}

/// `Query<T>` whose rejections (a malformed or unknown parameter) are our JSON errors.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(ApiQuery(v)),
            Err(rejection) => Err(ApiError::BadRequest(rejection.body_text())),
        }
    }
}

/// `Path<T>` whose rejections (say, a segment that is not UTF-8 once decoded) are our JSON errors.
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(ApiPath(v)),
            Err(rejection) => Err(ApiError::BadRequest(rejection.body_text())),
        }
    }
}

/// Now, in Unix milliseconds.
pub(crate) fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// A random id, 16 hex digits.
pub(crate) fn new_id() -> Result<String, ApiError> {
    let b = crate::install::random_bytes().map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(hex::encode(&b[..8]))
}
