//! HTTP: the operator API (`/api/v1`), the device API (`/device/v1`), health and metrics.
//!
//! [`router`] builds the whole service from an [`AppState`], so tests drive it in-process with
//! `tower::ServiceExt::oneshot` exactly as the network would. Who may call what is decided by
//! the extractors in `auth`, before any handler (or body extractor) runs.

mod audit;
mod auth;
mod bodies;
mod device;
pub mod error;
mod openapi;
mod operator;
mod publish;
mod rollouts;
mod status;
mod tokens;
mod tuf;

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::de::DeserializeOwned;

pub use auth::{
    CanApproveGates, CanManageFleet, CanManageTokens, CanManageTrust, CanOperateRollouts, CanPublish, CanRead, Device,
    Operator,
};
pub use error::ApiError;

use crate::state::AppState;

/// Request bodies other than artifact uploads are small JSON documents.
const JSON_BODY_LIMIT: usize = 1024 * 1024;

/// Signed TUF metadata sent as a JSON string: tough's 10 MiB limit for a targets file, with
/// room for escaping.
const METADATA_BODY_LIMIT: usize = 24 * 1024 * 1024;

/// A heartbeat is a few numbers and a reason of at most `MAX_REASON_LEN` bytes.
const PROGRESS_BODY_LIMIT: usize = 4 * 1024;

/// The whole HTTP service.
pub fn router(state: AppState) -> Router {
    let operator = Router::new()
        .route("/openapi.json", get(openapi::openapi))
        .route("/whoami", get(operator::whoami))
        .route("/status", get(status::status))
        .route("/artifacts", get(operator::list_artifacts))
        .route("/groups", get(operator::list_groups).post(operator::create_group))
        .route("/enrollment-tokens", get(operator::list_enrollment_tokens).post(operator::create_enrollment_token))
        .route("/enrollment-tokens/{id}", axum::routing::delete(operator::revoke_enrollment_token))
        .route("/devices", get(operator::list_devices))
        .route("/devices/{name}", get(operator::show_device).delete(operator::remove_device))
        .route("/devices/{name}/revoke", post(operator::revoke_device))
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
        // Signed metadata can be as large as tough accepts a targets file (10 MiB), escaped into
        // a JSON string.
        .route("/artifacts/resign", post(publish::resign).layer(DefaultBodyLimit::max(METADATA_BODY_LIMIT)))
        .route("/root/rotate", post(tuf::rotate_root).layer(DefaultBodyLimit::max(METADATA_BODY_LIMIT)))
        // Artifacts can be gigabytes; the publish handler caps the upload at the signed length.
        .route("/artifacts", post(publish::publish).layer(DefaultBodyLimit::disable()));
    let device = Router::new()
        .route("/enroll", post(device::enroll))
        .route("/whoami", get(device::whoami))
        .route("/tuf/{file}", get(tuf::device_metadata))
        .route("/assignments", get(device::assignments))
        .route("/reports", post(device::reports))
        .route("/progress", post(device::progress).layer(DefaultBodyLimit::max(PROGRESS_BODY_LIMIT)))
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
    let metadata = crate::metadata_heads(state.store()).await.unwrap_or_else(|e| {
        tracing::warn!(error = %wavecast_os::error::Chain(&e), "reading TUF metadata for /metrics");
        Vec::new()
    });
    let body = state.metrics().render(state.store().backend(), &metadata, wavecast_os::clock::now_ms());
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
                    Err(ApiError::TooLarge(format!(
                        "request body is larger than this route accepts ({JSON_BODY_LIMIT} bytes; heartbeats {PROGRESS_BODY_LIMIT})"
                    )))
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

/// 32 bytes from the OS random source, for secrets and ids.
pub(crate) fn random() -> Result<[u8; 32], ApiError> {
    crate::install::random_bytes().map_err(|e| ApiError::internal_from("reading the system random source", e))
}

/// A random id, 16 hex digits.
pub(crate) fn new_id() -> Result<String, ApiError> {
    Ok(hex::encode(&random()?[..8]))
}
