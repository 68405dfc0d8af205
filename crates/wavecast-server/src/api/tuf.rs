//! Serving TUF metadata by file name, exactly as signed, and installing a new root version.
//!
//! Names follow the TUF repository layout with consistent snapshots: `root.json`,
//! `N.root.json` (every version, so a device that pins an old root follows the chain),
//! `timestamp.json`, `N.snapshot.json`, `N.targets.json`. Unversioned `root.json`,
//! `snapshot.json` and `targets.json` give the newest, for publishers.

use axum::Json;
use axum::extract::{FromRequestParts as _, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use tough::schema::{Signed, Targets};
use wavecast_api::{RootRotated, RotateRoot};
use wavecast_core::audit::{AuditAction, NewAuditEvent};
use wavecast_os::error::chain;
use wavecast_tuf::repo::{Submission, accept_submission};
use wavecast_tuf::root::{RootError, changed_keys, checkpoint_key, director_key, verify_next};

use super::openapi::{
    BadRequest, Conflict, Forbidden, Internal, NotFound, TooLarge, TooManyRequests, TufMetadata, Unauthorized,
    Unavailable, Unprocessable,
};
use super::{ApiError, ApiJson, ApiPath, CanManageTrust, CanRead, Device};
use crate::checkpoints::{CheckpointError, sign_extension};
use crate::state::AppState;
use crate::store::{MetadataWrite, StoreError};
use crate::trust::{ChainRoot, TrustError};

/// Metadata for operators (the publisher reads root and targets here).
#[utoipa::path(
    get,
    path = "/tuf/{file}",
    operation_id = "operatorTufMetadata",
    tag = "operator",
    summary = "TUF metadata, for publishers",
    security(("apiToken" = [])),
    params(
        ("file" = String, Path, description = "`root.json`, `N.root.json`, `timestamp.json`, `N.snapshot.json`, `N.targets.json`; unversioned `snapshot.json` and `targets.json` give the newest.", pattern = "^(([0-9]+\\.)?(root|snapshot|targets)|timestamp)\\.json$", min_length = 1, example = "timestamp.json"),
    ),
    responses(
        (status = 200, description = "The metadata file, byte for byte as signed.", body = TufMetadata),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 500, response = Internal),
    )
)]
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
#[utoipa::path(
    get,
    path = "/tuf/{file}",
    operation_id = "deviceTufMetadata",
    tag = "device",
    summary = "TUF metadata, for devices",
    security(("deviceCredential" = [])),
    params(
        ("file" = String, Path, description = "`root.json`, `N.root.json`, `timestamp.json`, `N.snapshot.json`, `N.targets.json`; unversioned `snapshot.json` and `targets.json` give the newest.", pattern = "^(([0-9]+\\.)?(root|snapshot|targets)|timestamp)\\.json$", min_length = 1, example = "timestamp.json"),
    ),
    responses(
        (status = 200, description = "The metadata file, byte for byte as signed.", body = TufMetadata),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 429, response = TooManyRequests),
        (status = 500, response = Internal),
    )
)]
pub async fn device_metadata(
    State(state): State<AppState>,
    ApiPath(file): ApiPath<String>,
    request: axum::extract::Request,
) -> Result<Response, ApiError> {
    // Authenticate only for what needs it: a request without a credential for a root file is
    // what every agent sends before it enrolls, not a failed authentication, so it must not
    // spend its address's budget (a fleet coming up behind one NAT address would spend it).
    let root_file = file == "root.json" || file.strip_suffix(".root.json").is_some_and(|v| v.parse::<u64>().is_ok());
    if !root_file {
        let (mut parts, _) = request.into_parts();
        Device::from_request_parts(&mut parts, &state).await?;
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

/// `POST /api/v1/root/rotate` (admin): installs the next root version.
///
/// The new root must follow the newest one (the next version, signed by a threshold of the
/// current root keys and of its own), must not be expired, and this server must hold every
/// online key it names, since it re-signs snapshot and timestamp with them at once. When the
/// targets key changes, the current targets signed again by the new key come with it (devices
/// refuse targets the newest root's key did not sign). One transaction stores the root, the
/// targets, snapshot and timestamp, the audit events, and the first audit checkpoint of the
/// new checkpoint key.
#[utoipa::path(
    post,
    path = "/root/rotate",
    operation_id = "rotateRoot",
    tag = "operator",
    summary = "Install the next root.json version",
    description = "Needs the admin role. The root must be the next version, signed by the current root key and by its own, not expired, and this server must hold every online key it names (422 says which is missing). When it names a new targets key, `targets` must hold the current targets signed again by it. Stores the root, snapshot and timestamp signed with its keys, and the first audit checkpoint of its checkpoint key, at once. Audited as `root.rotated`. 409: another rotation or publish landed first.",
    security(("apiToken" = [])),
    request_body(content = RotateRoot, content_type = "application/json"),
    responses(
        (status = 201, description = "Installed.", body = RootRotated),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 409, response = Conflict),
        (status = 413, response = TooLarge),
        (status = 422, response = Unprocessable),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub async fn rotate_root(
    State(state): State<AppState>,
    CanManageTrust(op): CanManageTrust,
    ApiJson(req): ApiJson<RotateRoot>,
) -> Result<(StatusCode, Json<RootRotated>), ApiError> {
    let refused = |what: String| ApiError::Unprocessable(format!("{what}; nothing was stored"));
    let now = wavecast_os::clock::now();
    let current = state.trust().refresh(state.store()).await?;
    let from = current.version();
    let next = verify_next(&current.root().signed, req.root.as_bytes()).map_err(|e| match e {
        RootError::ChainVersion { got, .. } if got <= from => ApiError::Conflict(format!(
            "{}: root.json is at version {from} already; fetch it and sign the next one",
            chain(&e)
        )),
        other => refused(chain(&other)),
    })?;
    let to = next.signed.version.get();
    if next.signed.expires <= now {
        return Err(refused(format!("root.json version {to} expired at {}", next.signed.expires)));
    }
    for named in [director_key(&next.signed), checkpoint_key(&next.signed)] {
        named.map_err(|e| refused(chain(&e)))?;
    }
    let changed = changed_keys(&current.root().signed, &next.signed);
    let next_view =
        current.followed_by(ChainRoot { root: next.clone(), text: req.root.clone() }).map_err(|e| match e {
            // The new root names a key the server holds for an offline role.
            e @ TrustError::OfflineKey { .. } => refused(chain(&e)),
            other => other.into(),
        })?;
    if let Some(missing) = next_view.missing().into_iter().next() {
        return Err(refused(chain(&missing)));
    }

    let (targets_from, targets_text) = state
        .store()
        .latest_metadata("targets")
        .await?
        .ok_or_else(|| ApiError::internal("the repository has no targets metadata"))?;
    let targets_now: Signed<Targets> = serde_json::from_str(&targets_text)
        .map_err(|e| ApiError::internal_from(format!("stored targets version {targets_from} does not parse"), e))?;
    let resigned = match &req.targets {
        Some(text) => {
            let accepted =
                accept_submission(&next.signed, &targets_now.signed, text.as_bytes(), now, Submission::Resign)
                    .map_err(|e| refused(format!("the targets sent with root.json version {to}: {}", chain(&e))))?;
            Some((accepted.targets.signed.version.get(), accepted.targets.signed.expires, text.clone()))
        }
        None => {
            if let Err(e) = next.signed.verify_role(&targets_now) {
                return Err(refused(format!(
                    "root.json version {to} names a targets key that did not sign the current targets (version {targets_from}: {}); send them signed again by the new key (`wavecast root rotate --new-targets-key` does)",
                    chain(&e)
                )));
            }
            None
        }
    };
    let (targets_version, signed_targets) = match &resigned {
        Some((version, _, text)) => (*version as i64, text.as_str()),
        None => (targets_from, targets_text.as_str()),
    };

    let snapshot_version = state.store().latest_metadata("snapshot").await?.map_or(0, |(v, _)| v) + 1;
    let timestamp_version = state.store().latest_metadata("timestamp").await?.map_or(0, |(v, _)| v) + 1;
    let online = crate::sign_snapshot_and_timestamp(
        &next.signed,
        &next_view.online()?,
        signed_targets,
        (snapshot_version, timestamp_version, targets_version),
        now,
    )
    .await
    .map_err(|e| ApiError::internal_from("signing snapshot and timestamp", e))?;
    let mut events = vec![NewAuditEvent {
        actor: op.actor(),
        action: AuditAction::RootRotated,
        subject: "root.json".into(),
        detail: serde_json::json!({
            "from_version": from,
            "to_version": to,
            "expires": next.signed.expires.to_string(),
            "changed": changed,
        }),
    }];
    if let Some((version, expires, _)) = &resigned {
        events.push(NewAuditEvent {
            actor: op.actor(),
            action: AuditAction::TargetsResigned,
            subject: "targets.json".into(),
            detail: serde_json::json!({
                "from_version": targets_from,
                "to_version": version,
                "expires": expires.to_string(),
                "root_version": to,
            }),
        });
    }
    let write = MetadataWrite {
        now_ms: now.as_millisecond(),
        root: Some((to as i64, req.root.clone())),
        targets: resigned.as_ref().map(|(version, _, text)| (*version as i64, text.clone())),
        online,
        events,
    };
    // The new checkpoint key's first checkpoint extends the old key's newest, in the same
    // transaction, so the newest checkpoint is always the current key's.
    let base = state.checkpoints().transition_base(&current).await.map_err(ApiError::Evidence)?;
    state
        .store()
        .rotate_root(&write, base.size as i64, |rows| sign_extension(&base, rows, &next_view))
        .await
        .map_err(|e| match e {
            CheckpointError::Store(StoreError::Conflict { what }) => ApiError::Conflict(format!(
                "{what} was written meanwhile (another rotation, publish or checkpoint); fetch the current root and try again"
            )),
            CheckpointError::Store(other) => other.into(),
            other => ApiError::Evidence(other),
        })?;
    state.trust().install(next_view);
    tracing::info!(from, to, changed = ?changed, actor = %op.name, "installed a new root.json");
    Ok((
        StatusCode::CREATED,
        Json(RootRotated {
            version: to,
            expires_at: wavecast_api::Timestamp::from_unix_ms(next.signed.expires.as_millisecond()),
            changed,
            targets_version: resigned.map(|(version, _, _)| version),
        }),
    ))
}
