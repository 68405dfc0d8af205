//! Operator API handlers: artifacts, groups, enrollment tokens, devices (and revoking and
//! removing them), audit, blobs.

use axum::Json;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tower::ServiceExt as _;
use wavecast_api::{
    Artifact, CreateEnrollmentToken, CreateGroup, Device, DeviceDetail, DeviceRemoval, EnrollmentToken,
    EnrollmentTokenCreated, Group, GroupCreated, Whoami,
};
use wavecast_core::audit::{AuditAction, AuditEvent, NewAuditEvent};
use wavecast_core::fleet::DeviceStatus;
use wavecast_core::secret::{Secret, SecretKind};
use wavecast_core::{DeviceName, GroupName, Sha256Digest};
use wavecast_os::clock::now_ms;

use super::{ApiError, ApiJson, ApiPath, ApiQuery, CanManageFleet, CanRead, Operator, bodies, new_id, random};
use crate::state::AppState;
use crate::store::{NewEnrollmentToken, Retire};

/// Who the token belongs to.
pub async fn whoami(op: Operator) -> Json<Whoami> {
    Json(Whoami { id: op.token_id, name: op.name, role: op.role })
}

pub async fn list_artifacts(State(state): State<AppState>, _: CanRead) -> Result<Json<Vec<Artifact>>, ApiError> {
    Ok(Json(bodies::all(state.store().list_artifacts().await?, bodies::artifact)?))
}

pub async fn create_group(
    State(state): State<AppState>,
    CanManageFleet(op): CanManageFleet,
    ApiJson(body): ApiJson<CreateGroup>,
) -> Result<(StatusCode, Json<GroupCreated>), ApiError> {
    let name = GroupName::new(body.name).map_err(|e| ApiError::bad_request(&e))?;
    let event = NewAuditEvent {
        actor: op.actor(),
        action: AuditAction::GroupCreated,
        subject: name.to_string(),
        detail: serde_json::json!({}),
    };
    state.store().create_group(&name, &op.name, now_ms(), event).await?;
    Ok((StatusCode::CREATED, Json(GroupCreated { name })))
}

pub async fn list_groups(State(state): State<AppState>, _: CanRead) -> Result<Json<Vec<Group>>, ApiError> {
    Ok(Json(bodies::all(state.store().list_groups().await?, bodies::group)?))
}

/// The longest an enrollment token may live.
const MAX_ENROLLMENT_SECS: u64 = 365 * 24 * 3600;
/// How long one lives unless asked otherwise.
const DEFAULT_ENROLLMENT_SECS: u64 = 7 * 24 * 3600;

pub async fn create_enrollment_token(
    State(state): State<AppState>,
    CanManageFleet(op): CanManageFleet,
    ApiJson(body): ApiJson<CreateEnrollmentToken>,
) -> Result<(StatusCode, Json<EnrollmentTokenCreated>), ApiError> {
    let group = GroupName::new(body.group).map_err(|e| ApiError::bad_request(&e))?;
    let secs = body.expires_in_secs.unwrap_or(DEFAULT_ENROLLMENT_SECS);
    if secs == 0 || secs > MAX_ENROLLMENT_SECS {
        return Err(ApiError::BadRequest(format!("expires_in_secs must be between 1 and {MAX_ENROLLMENT_SECS}")));
    }
    if body.max_uses == Some(0) {
        return Err(ApiError::BadRequest("max_uses must be at least 1 (leave it out for any number)".into()));
    }
    let secret = Secret::from_random(SecretKind::EnrollmentToken, random()?);
    let now = now_ms();
    let t = NewEnrollmentToken {
        id: new_id()?,
        group: group.clone(),
        secret_sha256: secret.hash(),
        now_ms: now,
        expires_at: now + (secs as i64) * 1000,
        max_uses: body.max_uses,
        created_by: op.name.clone(),
    };
    let event = NewAuditEvent {
        actor: op.actor(),
        action: AuditAction::EnrollmentTokenCreated,
        subject: group.to_string(),
        detail: serde_json::json!({
            "id": t.id,
            "expires_at": wavecast_api::Timestamp::from_unix_ms(t.expires_at),
            "max_uses": t.max_uses,
        }),
    };
    state.store().create_enrollment_token(&t, event).await?;
    let expires_at = wavecast_api::Timestamp::from_unix_ms(t.expires_at);
    Ok((
        StatusCode::CREATED,
        Json(EnrollmentTokenCreated {
            id: t.id,
            group: t.group,
            token: secret.expose().to_owned(),
            expires_at,
            max_uses: t.max_uses,
        }),
    ))
}

pub async fn list_enrollment_tokens(
    State(state): State<AppState>,
    _: CanRead,
) -> Result<Json<Vec<EnrollmentToken>>, ApiError> {
    Ok(Json(state.store().list_enrollment_tokens().await?.into_iter().map(bodies::enrollment_token).collect()))
}

/// Revokes an enrollment token: no device enrolls with it any more. Devices it enrolled keep
/// their own credentials (revoke those one by one).
pub async fn revoke_enrollment_token(
    State(state): State<AppState>,
    CanManageFleet(op): CanManageFleet,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<EnrollmentToken>, ApiError> {
    let actor = op.actor();
    let revoked = state
        .store()
        .revoke_enrollment_token(&id, now_ms(), |t| NewAuditEvent {
            actor,
            action: AuditAction::EnrollmentTokenRevoked,
            subject: t.group.to_string(),
            detail: serde_json::json!({ "id": t.id, "uses": t.uses }),
        })
        .await?;
    Ok(Json(bodies::enrollment_token(revoked)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceFilter {
    group: Option<String>,
    state: Option<String>,
}

pub async fn list_devices(
    State(state): State<AppState>,
    _: CanRead,
    ApiQuery(filter): ApiQuery<DeviceFilter>,
) -> Result<Json<Vec<Device>>, ApiError> {
    let status =
        filter.state.as_deref().map(str::parse::<DeviceStatus>).transpose().map_err(|e| ApiError::bad_request(&e))?;
    let devices = state.store().list_devices(filter.group.as_deref(), status).await?;
    Ok(Json(devices.into_iter().map(bodies::device).collect()))
}

/// Revokes a device's credential: it is refused from its next request on, on every replica,
/// and leaves every rollout that has not ended as `removed`. It stays listed, as revoked.
pub async fn revoke_device(
    State(state): State<AppState>,
    CanManageFleet(op): CanManageFleet,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<DeviceRemoval>, ApiError> {
    retire(&state, &op, &name, Retire::Revoke).await
}

/// Removes (decommissions) a device: revoked as by [`revoke_device`], then deleted, so it
/// leaves its group and the device list and its name is free again; the audit log keeps it.
pub async fn remove_device(
    State(state): State<AppState>,
    CanManageFleet(op): CanManageFleet,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<DeviceRemoval>, ApiError> {
    retire(&state, &op, &name, Retire::Decommission).await
}

async fn retire(state: &AppState, op: &Operator, name: &str, how: Retire) -> Result<Json<DeviceRemoval>, ApiError> {
    let name = DeviceName::new(name).map_err(|e| ApiError::bad_request(&e))?;
    let retired = state.store().retire_device(&name, how, &op.name, now_ms()).await?;
    tracing::info!(device = %name, how = ?how, actor = %op.name, left = ?retired.left_rollouts, "device taken out");
    Ok(Json(bodies::removal(retired)))
}

pub async fn show_device(
    State(state): State<AppState>,
    _: CanRead,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<DeviceDetail>, ApiError> {
    let device = state
        .store()
        .device_by_name(&name)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("device {name:?} not found")))?;
    // What it runs, filled in by the device loop's reports.
    let artifacts =
        state.store().device_artifacts(&device.id).await?.into_iter().map(bodies::device_artifact).collect();
    let rollouts = bodies::all(state.store().device_rollouts(&device.id).await?, bodies::device_rollout)?;
    Ok(Json(DeviceDetail { device: bodies::device(device), artifacts, rollouts }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditRange {
    from: Option<i64>,
    limit: Option<i64>,
}

pub async fn list_audit(
    State(state): State<AppState>,
    _: CanRead,
    ApiQuery(range): ApiQuery<AuditRange>,
) -> Result<Json<Vec<AuditEvent>>, ApiError> {
    let limit = range.limit.unwrap_or(1000).clamp(1, 10_000);
    Ok(Json(state.store().audit_events(range.from.unwrap_or(0).max(0), limit).await?))
}

/// Serves a published blob, honouring `Range` requests.
pub async fn get_blob(
    State(state): State<AppState>,
    _: CanRead,
    ApiPath(sha256): ApiPath<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let digest: Sha256Digest =
        sha256.parse().map_err(|e: wavecast_core::digest::DigestError| ApiError::bad_request(&e))?;
    serve_blob(&state, &digest, req).await
}

/// Serves a blob file that a published artifact references.
pub(super) async fn serve_blob(state: &AppState, digest: &Sha256Digest, req: Request) -> Result<Response, ApiError> {
    if !state.store().blob_referenced(digest).await? {
        return Err(ApiError::NotFound(format!("no published artifact has sha256 {digest}")));
    }
    let path = state.blobs().path(digest);
    let resp = tower_http::services::ServeFile::new(&path)
        .oneshot(req)
        .await
        .map_err(|e| ApiError::internal_from(format!("serving blob {digest}"), e))?;
    if resp.status() == StatusCode::NOT_FOUND {
        return Err(ApiError::internal(format!("blob {digest} is referenced but missing from the blob store")));
    }
    Ok(resp.map(axum::body::Body::new).into_response())
}
