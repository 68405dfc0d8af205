//! Serving TUF metadata by file name, exactly as signed.
//!
//! Names follow the TUF repository layout with consistent snapshots: `root.json`,
//! `N.root.json`, `timestamp.json`, `N.snapshot.json`, `N.targets.json`. Unversioned
//! `snapshot.json` and `targets.json` give the newest, for publishers.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::{ApiError, ApiPath, CanRead, Device};
use crate::state::AppState;

/// Metadata for operators (the publisher reads root and targets here).
pub async fn operator_metadata(
    State(state): State<AppState>,
    _: CanRead,
    ApiPath(file): ApiPath<String>,
) -> Result<Response, ApiError> {
    metadata(&state, &file).await
}

/// Metadata for devices. Root files (`root.json`, `N.root.json`) need no credential: they are
/// the public trust anchor every device image carries, and an agent checks that it pins this
/// server's root before it spends its enrollment token.
pub async fn device_metadata(
    State(state): State<AppState>,
    device: Result<Device, ApiError>,
    ApiPath(file): ApiPath<String>,
) -> Result<Response, ApiError> {
    if !(file == "root.json" || file.strip_suffix(".root.json").is_some_and(|v| v.parse::<u64>().is_ok())) {
        device?;
    }
    metadata(&state, &file).await
}

async fn metadata(state: &AppState, file: &str) -> Result<Response, ApiError> {
    let not_found = || ApiError::NotFound(format!("no TUF metadata file {file:?}"));
    let stem = file.strip_suffix(".json").ok_or_else(not_found)?;
    let (version, role) = match stem.split_once('.') {
        Some((v, role)) => (Some(v.parse::<i64>().map_err(|_| not_found())?), role),
        None => (None, stem),
    };
    if !matches!(role, "root" | "timestamp" | "snapshot" | "targets") || (role == "timestamp" && version.is_some()) {
        return Err(not_found());
    }
    let body = match version {
        Some(v) => state.store().metadata(role, v).await?,
        None => state.store().latest_metadata(role).await?.map(|(_, b)| b),
    }
    .ok_or_else(not_found)?;
    // Versioned files never change; unversioned ones must be fetched fresh every time.
    let cache = if version.is_some() { "public, max-age=31536000, immutable" } else { "no-cache" };
    Ok(([(header::CONTENT_TYPE, "application/json"), (header::CACHE_CONTROL, cache)], body).into_response())
}
