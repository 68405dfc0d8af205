//! Device API handlers: enrollment, identity.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use wavecast_core::DeviceName;
use wavecast_core::audit::{AuditAction, NewAuditEvent};
use wavecast_core::name::validate;
use wavecast_core::secret::{Secret, SecretKind};

use super::{ApiError, ApiJson, AppState, Device, new_id, now_ms};
use crate::store::{Enrollment, StoreError};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    token: String,
    name: String,
    hardware: String,
}

#[derive(Serialize)]
pub struct EnrollResponse {
    device_id: String,
    name: String,
    group: String,
    credential: String,
}

/// Exchanges a group enrollment token for a per-device credential.
pub async fn enroll(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<EnrollRequest>,
) -> Result<(StatusCode, Json<EnrollResponse>), ApiError> {
    let token = Secret::parse(SecretKind::EnrollmentToken, &req.token)
        .map_err(|e| ApiError::Unauthorized(e.to_string()))?;
    let name = DeviceName::new(req.name).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    validate("hardware", &req.hardware).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let credential = Secret::from_random(
        SecretKind::DeviceCredential,
        crate::install::random_bytes().map_err(|e| ApiError::Internal(e.to_string()))?,
    );
    let enrollment = Enrollment {
        token_sha256: token.hash(),
        device_id: new_id()?,
        name: name.to_string(),
        hardware: req.hardware.clone(),
        credential_sha256: credential.hash(),
        now_ms: now_ms(),
    };
    let device = state
        .store()
        .enroll_device(&enrollment, |group| NewAuditEvent {
            actor: format!("device:{name}"),
            action: AuditAction::DeviceEnrolled,
            subject: name.to_string(),
            detail: serde_json::json!({ "group": group, "hardware": req.hardware, "device_id": enrollment.device_id }),
        })
        .await
        .map_err(|e| match e {
            StoreError::NotFound { .. } => ApiError::Unauthorized("enrollment token is unknown, expired or revoked".into()),
            StoreError::Conflict { .. } => ApiError::Conflict(format!("a device named {name} is already enrolled")),
            other => other.into(),
        })?;
    Ok((
        StatusCode::CREATED,
        Json(EnrollResponse {
            device_id: device.id,
            name: device.name,
            group: device.group,
            credential: credential.expose().to_owned(),
        }),
    ))
}

/// The calling device's own record.
pub async fn whoami(Device(device): Device) -> Json<crate::store::DeviceRecord> {
    Json(device)
}
