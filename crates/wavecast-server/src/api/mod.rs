//! HTTP: the operator API (`/api/v1`), the device API (`/device/v1`), health and metrics, and
//! the operator's dashboard (`/ui`, in `dashboard`).
//!
//! [`router`] builds the whole service from an [`AppState`], so tests drive it in-process with
//! `tower::ServiceExt::oneshot` exactly as the network would. Who may call what is decided by
//! the extractors in `auth`, before any handler (or body extractor) runs.

mod audit;
mod auth;
mod bodies;
mod dashboard;
mod device;
pub mod error;
mod openapi;
mod operator;
mod publish;
mod rollouts;
mod status;
mod tokens;
mod tuf;

use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Router};
use serde::de::DeserializeOwned;
use utoipa::OpenApi as _;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt as _};
use utoipa_axum::routes;

pub use auth::{
    CanApproveGates, CanManageFleet, CanManageTokens, CanManageTrust, CanOperateRollouts, CanPublish, CanRead, Device,
    Operator, operator_by_token, under_failure_budget,
};
pub use error::ApiError;

use self::openapi::Internal;
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
    let (router, api) = routes().split_for_parts();
    router
        // The dashboard's HTML pages are not API: they stay out of the OpenAPI document.
        .merge(dashboard::router())
        .fallback(not_found)
        .layer(Extension(openapi::Document(openapi::render(&api).into())))
        .layer(middleware::from_fn_with_state(state.clone(), count_requests))
        .with_state(state)
}

/// The OpenAPI document [`router`] serves at `/api/v1/openapi.json`.
pub fn document() -> String {
    openapi::render(&routes().split_for_parts().1)
}

/// Every route, each registered with its `#[utoipa::path]` description (`routes!`), so the
/// document lists exactly what is served: there is no `.route(` here that could add an
/// undocumented one.
fn routes() -> OpenApiRouter<AppState> {
    let operator = OpenApiRouter::default()
        .routes(routes!(openapi::openapi))
        .routes(routes!(operator::whoami))
        .routes(routes!(status::status))
        .routes(routes!(operator::list_artifacts))
        .routes(routes!(operator::list_groups, operator::create_group))
        .routes(routes!(operator::group_pacing, operator::set_group_pacing))
        .routes(routes!(operator::list_enrollment_tokens, operator::create_enrollment_token))
        .routes(routes!(operator::revoke_enrollment_token))
        .routes(routes!(operator::list_devices))
        .routes(routes!(operator::show_device, operator::remove_device))
        .routes(routes!(operator::revoke_device))
        .routes(routes!(operator::list_audit))
        .routes(routes!(audit::checkpoint))
        .routes(routes!(audit::checkpoint_rows))
        .routes(routes!(audit::leaves))
        .routes(routes!(audit::export))
        .routes(routes!(audit::consistency))
        .routes(routes!(tuf::operator_metadata))
        .routes(routes!(operator::get_blob))
        .routes(routes!(tokens::list, tokens::create))
        .routes(routes!(tokens::revoke))
        .routes(routes!(rollouts::list, rollouts::create))
        .routes(routes!(rollouts::show))
        .routes(routes!(rollouts::approve))
        .routes(routes!(rollouts::resume))
        .routes(routes!(rollouts::abort))
        .layer(DefaultBodyLimit::max(JSON_BODY_LIMIT))
        // Signed metadata can be as large as tough accepts a targets file (10 MiB), escaped into
        // a JSON string.
        .routes(routes!(publish::resign).layer(DefaultBodyLimit::max(METADATA_BODY_LIMIT)))
        .routes(routes!(tuf::rotate_root).layer(DefaultBodyLimit::max(METADATA_BODY_LIMIT)))
        // Artifacts can be gigabytes; the publish handler caps the upload at the signed length.
        .routes(routes!(publish::publish).layer(DefaultBodyLimit::disable()));
    let device = OpenApiRouter::default()
        .routes(routes!(device::enroll))
        .routes(routes!(device::whoami))
        .routes(routes!(tuf::device_metadata))
        .routes(routes!(device::assignments))
        .routes(routes!(device::reports))
        .routes(routes!(device::progress).layer(DefaultBodyLimit::max(PROGRESS_BODY_LIMIT)))
        .routes(routes!(device::target))
        .layer(DefaultBodyLimit::max(JSON_BODY_LIMIT));
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(healthz))
        .routes(routes!(metrics))
        .nest("/api/v1", operator)
        .nest("/device/v1", device)
}

#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "healthz",
    tag = "ops",
    summary = "Liveness and database check",
    responses(
        (status = 200, description = "Healthy.", body = String, content_type = "text/plain"),
        (status = 500, response = Internal),
    )
)]
async fn healthz(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    state.store().installation_root().await?;
    Ok("ok\n")
}

#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "ops",
    summary = "Prometheus metrics",
    description = "Request counters, publishes, and `wavecast_tuf_expires_in_seconds{role}` / `wavecast_tuf_version{role}` for each TUF role.",
    responses(
        (status = 200, description = "Prometheus text format 0.0.4.", body = String, content_type = "text/plain"),
    )
)]
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
