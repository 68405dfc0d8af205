//! Operator API handlers: artifacts, groups, enrollment tokens, devices (and revoking and
//! removing them), audit, blobs.

use axum::Json;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use utoipa::IntoParams;
use wavecast_api::{
    Artifact, CreateEnrollmentToken, CreateGroup, Device, DeviceDetail, DeviceRemoval, EnrollmentToken,
    EnrollmentTokenCreated, Group, GroupCreated, GroupPacing, SetGroupPacing, Whoami,
};
use wavecast_core::audit::{AuditAction, AuditEvent, NewAuditEvent};
use wavecast_core::fleet::DeviceStatus;
use wavecast_core::secret::{Secret, SecretKind};
use wavecast_core::{DeviceName, GroupName, Sha256Digest};
use wavecast_os::clock::now_ms;

use super::openapi::{
    BadRequest, Binary, Conflict, Forbidden, Internal, NotFound, TooLarge, Unauthorized, Unavailable,
};
use super::{ApiError, ApiJson, ApiPath, ApiQuery, CanManageFleet, CanRead, Operator, bodies, new_id, random};
use crate::state::AppState;
use crate::store::{NewEnrollmentToken, Retire};

/// Who the token belongs to.
#[utoipa::path(
    get,
    path = "/whoami",
    operation_id = "whoami",
    tag = "operator",
    summary = "The calling token",
    security(("apiToken" = [])),
    responses(
        (status = 200, description = "Who the token is.", body = Whoami),
        (status = 401, response = Unauthorized),
        (status = 500, response = Internal),
    )
)]
pub async fn whoami(op: Operator) -> Json<Whoami> {
    Json(Whoami { id: op.token_id, name: op.name, role: op.role })
}

#[utoipa::path(
    get,
    path = "/artifacts",
    operation_id = "listArtifacts",
    tag = "operator",
    summary = "Published artifacts",
    security(("apiToken" = [])),
    responses(
        (status = 200, description = "Every published artifact version.", body = Vec<Artifact>),
        (status = 401, response = Unauthorized),
        (status = 500, response = Internal),
    )
)]
pub async fn list_artifacts(State(state): State<AppState>, _: CanRead) -> Result<Json<Vec<Artifact>>, ApiError> {
    Ok(Json(bodies::all(state.store().list_artifacts().await?, bodies::artifact)?))
}

#[utoipa::path(
    post,
    path = "/groups",
    operation_id = "createGroup",
    tag = "operator",
    summary = "Create a device group",
    description = "Needs the operator or admin role. 409: the group exists.",
    security(("apiToken" = [])),
    request_body(content = CreateGroup, content_type = "application/json"),
    responses(
        (status = 201, description = "Created.", body = GroupCreated),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 409, response = Conflict),
        (status = 413, response = TooLarge),
        (status = 500, response = Internal),
    )
)]
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

/// The group's check-in pacing, defaults filled in.
#[utoipa::path(
    get,
    path = "/groups/{name}/pacing",
    operation_id = "groupPacing",
    tag = "operator",
    summary = "How a group's devices check in",
    description = "404: no such group.",
    security(("apiToken" = [])),
    params(("name" = String, Path, description = "Group name.", min_length = 1, example = "plant-7")),
    responses(
        (status = 200, description = "The group's pacing.", body = GroupPacing),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 500, response = Internal),
    )
)]
pub async fn group_pacing(
    State(state): State<AppState>,
    _: CanRead,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<GroupPacing>, ApiError> {
    let group = GroupName::new(name).map_err(|e| ApiError::bad_request(&e))?;
    let set =
        state.store().group_pacing(&group).await?.ok_or_else(|| ApiError::NotFound(format!("no group {group}")))?;
    let p = super::device::pacing_with_defaults(set);
    Ok(Json(GroupPacing { group, idle_ms: p.idle_ms, active_ms: p.active_ms, long_poll_ms: p.long_poll_ms }))
}

/// Sets how a group's devices check in; in force on every replica within the change feed's
/// delay, and for each device from its next check-in.
#[utoipa::path(
    put,
    path = "/groups/{name}/pacing",
    operation_id = "setGroupPacing",
    tag = "operator",
    summary = "Set how a group's devices check in",
    description = "Needs the operator or admin role. Values left out go back to the server's defaults. 400: a value does not parse or is out of range. 404: no such group.",
    security(("apiToken" = [])),
    params(("name" = String, Path, description = "Group name.", min_length = 1, example = "plant-7")),
    request_body(content = SetGroupPacing, content_type = "application/json"),
    responses(
        (status = 200, description = "The group's pacing now.", body = GroupPacing),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 413, response = TooLarge),
        (status = 500, response = Internal),
    )
)]
pub async fn set_group_pacing(
    State(state): State<AppState>,
    CanManageFleet(op): CanManageFleet,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<SetGroupPacing>,
) -> Result<Json<GroupPacing>, ApiError> {
    let group = GroupName::new(name).map_err(|e| ApiError::bad_request(&e))?;
    let ms = |what: &str, v: &Option<String>| -> Result<Option<i64>, ApiError> {
        let Some(v) = v else { return Ok(None) };
        let d = wavecast_core::duration::parse_duration(v)
            .map_err(|e| ApiError::BadRequest(format!("{what} {v:?}: {e}")))?;
        Ok(Some(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)))
    };
    let set = crate::checkin::GroupPacing {
        idle_ms: ms("idle", &body.idle)?,
        active_ms: ms("active", &body.active)?,
        long_poll_ms: ms("long_poll", &body.long_poll)?,
    };
    let p = super::device::pacing_with_defaults(set);
    p.check().map_err(|e| ApiError::bad_request(&e))?;
    let event = NewAuditEvent {
        actor: op.actor(),
        action: AuditAction::GroupPacingSet,
        subject: group.to_string(),
        detail: serde_json::json!({
            "idle_ms": set.idle_ms, "active_ms": set.active_ms, "long_poll_ms": set.long_poll_ms,
        }),
    };
    state.store().set_group_pacing(&group, set, now_ms(), event).await?;
    Ok(Json(GroupPacing { group, idle_ms: p.idle_ms, active_ms: p.active_ms, long_poll_ms: p.long_poll_ms }))
}

#[utoipa::path(
    get,
    path = "/groups",
    operation_id = "listGroups",
    tag = "operator",
    summary = "Device groups",
    security(("apiToken" = [])),
    responses(
        (status = 200, description = "Every group with its device count.", body = Vec<Group>),
        (status = 401, response = Unauthorized),
        (status = 500, response = Internal),
    )
)]
pub async fn list_groups(State(state): State<AppState>, _: CanRead) -> Result<Json<Vec<Group>>, ApiError> {
    Ok(Json(bodies::all(state.store().list_groups().await?, bodies::group)?))
}

/// The longest an enrollment token may live.
const MAX_ENROLLMENT_SECS: u64 = 365 * 24 * 3600;
/// How long one lives unless asked otherwise.
const DEFAULT_ENROLLMENT_SECS: u64 = 7 * 24 * 3600;

#[utoipa::path(
    post,
    path = "/enrollment-tokens",
    operation_id = "createEnrollmentToken",
    tag = "operator",
    summary = "Mint an enrollment token for a group",
    description = "Needs the operator or admin role. 400: expires_in_secs out of range, or max_uses 0. 404: no such group.",
    security(("apiToken" = [])),
    request_body(content = CreateEnrollmentToken, content_type = "application/json"),
    responses(
        (status = 201, description = "Created; the secret is shown only here.", body = EnrollmentTokenCreated),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 413, response = TooLarge),
        (status = 500, response = Internal),
    )
)]
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

#[utoipa::path(
    get,
    path = "/enrollment-tokens",
    operation_id = "listEnrollmentTokens",
    tag = "operator",
    summary = "Enrollment tokens",
    description = "Every enrollment token, oldest first, with how many devices it enrolled; never a secret.",
    security(("apiToken" = [])),
    responses(
        (status = 200, description = "The tokens.", body = Vec<EnrollmentToken>),
        (status = 401, response = Unauthorized),
        (status = 500, response = Internal),
    )
)]
pub async fn list_enrollment_tokens(
    State(state): State<AppState>,
    _: CanRead,
) -> Result<Json<Vec<EnrollmentToken>>, ApiError> {
    Ok(Json(state.store().list_enrollment_tokens().await?.into_iter().map(bodies::enrollment_token).collect()))
}

/// Revokes an enrollment token: no device enrolls with it any more. Devices it enrolled keep
/// their own credentials (revoke those one by one).
#[utoipa::path(
    delete,
    path = "/enrollment-tokens/{id}",
    operation_id = "revokeEnrollmentToken",
    tag = "operator",
    summary = "Revoke an enrollment token",
    description = "Needs the operator or admin role. No device enrolls with the token afterwards; devices it enrolled keep their own credentials.",
    security(("apiToken" = [])),
    params(
        ("id" = String, Path, description = "Enrollment token id.", min_length = 1, example = "4f1b2b0b822cd15d"),
    ),
    responses(
        (status = 200, description = "Revoked (revoking twice is not an error).", body = EnrollmentToken),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 500, response = Internal),
    )
)]
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

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeviceFilter {
    /// Only this group's devices.
    group: Option<String>,
    /// Only devices in this state: `active`, or `revoked` (credential refused).
    #[param(value_type = Option<wavecast_core::fleet::DeviceStatus>)]
    state: Option<String>,
}

#[utoipa::path(
    get,
    path = "/devices",
    operation_id = "listDevices",
    tag = "operator",
    summary = "Enrolled devices",
    security(("apiToken" = [])),
    params(DeviceFilter),
    responses(
        (status = 200, description = "Devices, optionally of one group.", body = Vec<Device>),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 500, response = Internal),
    )
)]
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
#[utoipa::path(
    post,
    path = "/devices/{name}/revoke",
    operation_id = "revokeDevice",
    tag = "operator",
    summary = "Revoke a device's credential",
    description = "Needs the operator or admin role. The credential is refused from the device's next request on, by every replica; the device leaves every rollout that has not ended as `removed` (settled, never a failure), and no new rollout includes it. It stays listed, as revoked. Revoking twice is not an error.",
    security(("apiToken" = [])),
    params(
        ("name" = String, Path, description = "Device name.", min_length = 1, example = "cam-001"),
    ),
    responses(
        (status = 200, description = "Revoked.", body = DeviceRemoval),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 500, response = Internal),
    )
)]
pub async fn revoke_device(
    State(state): State<AppState>,
    CanManageFleet(op): CanManageFleet,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<DeviceRemoval>, ApiError> {
    retire(&state, &op, &name, Retire::Revoke).await
}

/// Removes (decommissions) a device: revoked as by [`revoke_device`], then deleted, so it
/// leaves its group and the device list and its name is free again; the audit log keeps it.
#[utoipa::path(
    delete,
    path = "/devices/{name}",
    operation_id = "removeDevice",
    tag = "operator",
    summary = "Remove (decommission) a device",
    description = "Needs the operator or admin role. Revokes the device as `POST /devices/{name}/revoke` does, then deletes it: it leaves its group and the device list, and its name can be enrolled again. The audit log keeps it.",
    security(("apiToken" = [])),
    params(
        ("name" = String, Path, description = "Device name.", min_length = 1, example = "cam-001"),
    ),
    responses(
        (status = 200, description = "Removed.", body = DeviceRemoval),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 500, response = Internal),
    )
)]
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

#[utoipa::path(
    get,
    path = "/devices/{name}",
    operation_id = "showDevice",
    tag = "operator",
    summary = "One device and what it runs",
    security(("apiToken" = [])),
    params(
        ("name" = String, Path, description = "Device name.", min_length = 1, example = "cam-001"),
    ),
    responses(
        (status = 200, description = "The device.", body = DeviceDetail),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 500, response = Internal),
    )
)]
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

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditRange {
    /// First sequence number (default 0; negative counts as 0).
    from: Option<i64>,
    /// At most this many (default 1000, clamped to 1-10000).
    limit: Option<i64>,
}

#[utoipa::path(
    get,
    path = "/audit",
    operation_id = "listAudit",
    tag = "operator",
    summary = "Audit events",
    security(("apiToken" = [])),
    params(AuditRange),
    responses(
        (status = 200, description = "Events with `seq >= from`, oldest first.", body = Vec<AuditEvent>),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 500, response = Internal),
    )
)]
pub async fn list_audit(
    State(state): State<AppState>,
    _: CanRead,
    ApiQuery(range): ApiQuery<AuditRange>,
) -> Result<Json<Vec<AuditEvent>>, ApiError> {
    let limit = range.limit.unwrap_or(1000).clamp(1, 10_000);
    Ok(Json(state.store().audit_events(range.from.unwrap_or(0).max(0), limit).await?))
}

/// Serves a published blob, honouring `Range` requests.
#[utoipa::path(
    get,
    path = "/blobs/{sha256}",
    operation_id = "getBlob",
    tag = "operator",
    summary = "A published artifact's bytes",
    description = "400: not a SHA-256. 404: no published artifact has it.",
    security(("apiToken" = [])),
    params(
        ("sha256" = Sha256Digest, Path, description = "The artifact's SHA-256.", example = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"),
        ("Range" = Option<String>, Header, description = "An RFC 9110 byte range, like `bytes=START-` to resume a download. One that is malformed or past the end gets 416."),
    ),
    responses(
        (status = 200, description = "The bytes.", body = inline(Binary), content_type = "application/octet-stream", headers(("ETag" = String, description = "Of the file; for If-None-Match."), ("Last-Modified" = String, description = "Of the file; for If-Modified-Since."), ("Accept-Ranges" = String, description = "`bytes`."))),
        (status = 206, description = "The requested range of the bytes.", body = inline(Binary), content_type = "application/octet-stream", headers(("ETag" = String, description = "Of the file; for If-None-Match."), ("Last-Modified" = String, description = "Of the file; for If-Modified-Since."), ("Accept-Ranges" = String, description = "`bytes`."), ("Content-Range" = String, description = "`bytes START-END/LENGTH`."))),
        (status = 304, description = "Unchanged since the If-None-Match or If-Modified-Since the client sent; no body."),
        (status = 307, description = "With `--blob-redirect`: fetch the bytes from the presigned URL in `Location` (valid a few minutes; send the same `Range`, not the credential).", headers(("Location" = String, description = "A presigned URL for the object in the blob store."))),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 412, description = "An If-Match or If-Unmodified-Since precondition failed; no body."),
        (status = 416, description = "The Range is malformed or past the end; no body.", headers(("Content-Range" = String, description = "`bytes */LENGTH`."))),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
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
    Ok(state.blobs().serve(digest, req).await?)
}
