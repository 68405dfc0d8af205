//! Device API handlers: enrollment, identity, assignments, reports, heartbeats, targets.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use wavecast_core::DeviceName;
use wavecast_core::assignment::{
    AssignmentDoc, MAX_REPORTS_PER_BATCH, RefusedReport, ReportAck, ReportBatch, SignedAssignments, assigns_install,
};
use wavecast_core::audit::{Actor, AuditAction, NewAuditEvent};
use wavecast_core::name::validate;
use wavecast_core::progress::{Progress, ProgressAck};
use wavecast_core::secret::{Secret, SecretKind};
use wavecast_core::trust::KeyRole;
use wavecast_os::clock::now_ms;
use wavecast_os::error::chain;

use super::{ApiError, ApiJson, Device, new_id, random};
use crate::state::{AppState, DeviceIdentity};
use crate::store::{DeviceRef, EnrollError, Enrollment, ReportOutcome};

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
    parts: axum::http::request::Parts,
    ApiJson(req): ApiJson<EnrollRequest>,
) -> Result<(StatusCode, Json<EnrollResponse>), ApiError> {
    let name = DeviceName::new(req.name).map_err(|e| ApiError::bad_request(&e))?;
    validate("hardware", &req.hardware).map_err(|e| ApiError::bad_request(&e))?;
    // A wrong token is a failed authentication like a wrong credential: charged to the
    // address, which is refused before the token is looked up once it has failed too often.
    let device = super::auth::under_failure_budget(&parts, &state, async {
        let token = Secret::parse(SecretKind::EnrollmentToken, &req.token).map_err(|e| ApiError::unauthorized(&e))?;
        if state.settings().devices == DeviceIdentity::CredentialAndCertificate {
            super::auth::require_certificate_for(&parts, name.as_str())?;
        }
        let credential = Secret::from_random(SecretKind::DeviceCredential, random()?);
        let enrollment = Enrollment {
            token_sha256: token.hash(),
            device_id: new_id()?,
            name: name.clone(),
            hardware: req.hardware.clone(),
            credential_sha256: credential.hash(),
            now_ms: now_ms(),
        };
        let device = state
            .store()
            .enroll_device(&enrollment, |group, token| NewAuditEvent {
                actor: Actor::Device(name.clone()),
                action: AuditAction::DeviceEnrolled,
                subject: name.to_string(),
                detail: serde_json::json!({
                    "group": group,
                    "hardware": req.hardware,
                    "device_id": enrollment.device_id,
                    "enrollment_token": token,
                }),
            })
            .await
            .map_err(|e| match e {
                EnrollError::Store(s) => s.into(),
                e @ (EnrollError::UnknownToken | EnrollError::Refused(_)) => ApiError::Unauthorized(chain(&e)),
                e @ EnrollError::NameTaken(_) => ApiError::Conflict(chain(&e)),
            })?;
        Ok((device, credential))
    })
    .await;
    let (device, credential) = device?;
    Ok((
        StatusCode::CREATED,
        Json(EnrollResponse {
            device_id: device.id,
            name: device.name.into(),
            group: device.group.into(),
            credential: credential.expose().to_owned(),
        }),
    ))
}

/// The calling device's own record.
pub async fn whoami(Device(device): Device) -> Json<crate::store::DeviceRecord> {
    Json(device)
}

/// How long a signed assignment doc stays actionable.
const ASSIGNMENT_LIFETIME_SECS: i64 = 24 * 3600;

/// The device's signed assignments. Answers 304 when the device already holds the current
/// counter (`If-None-Match`), so an idle fleet's check-ins cost no signing and no body.
pub async fn assignments(
    State(state): State<AppState>,
    Device(device): Device,
    headers: axum::http::HeaderMap,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse as _;
    state.last_seen().touch(&device.id, now_ms());
    let (counter, assignments) = state.store().assignments(&device.id, &device.group).await?;
    // The ETag covers the content, not just the counter, so a device never keeps a stale
    // doc because a counter failed to move.
    let content = serde_json::to_vec(&(counter, &assignments)).unwrap_or_default();
    let etag = format!("\"{}\"", &wavecast_core::Sha256Digest::of(&content).to_hex()[..32]);
    if headers.get(axum::http::header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) == Some(etag.as_str()) {
        return Ok((StatusCode::NOT_MODIFIED, [(axum::http::header::ETAG, etag)]).into_response());
    }
    let doc = AssignmentDoc {
        device_id: device.id.clone(),
        counter: counter as u64,
        expires: wavecast_os::clock::now().as_second() + ASSIGNMENT_LIFETIME_SECS,
        assignments,
    };
    // The director key the newest root names; a replica that lacks it answers 503 rather than
    // sign with a retired one.
    let message = doc.signing_bytes().map_err(|e| ApiError::internal_from("encoding the assignment doc", e))?;
    let signature = hex::encode(state.trust().current().key(KeyRole::Director)?.sign_bytes(&message));
    Ok(([(axum::http::header::ETAG, etag)], Json(SignedAssignments { signed: doc, signature })).into_response())
}

/// Applies a batch of reports, each exactly once, and records what the device runs. A report
/// that claims a change the device may not make (see [`wavecast_core::rollout::judge_report`])
/// changes nothing and is answered in `refused` with why; it is acknowledged all the same, so
/// the device does not send it forever.
pub async fn reports(
    State(state): State<AppState>,
    Device(device): Device,
    ApiJson(batch): ApiJson<ReportBatch>,
) -> Result<Json<ReportAck>, ApiError> {
    if batch.reports.len() > MAX_REPORTS_PER_BATCH {
        return Err(ApiError::TooLarge(format!("at most {MAX_REPORTS_PER_BATCH} reports per batch")));
    }
    let now = now_ms();
    state.last_seen().touch(&device.id, now);
    let who = DeviceRef { id: device.id.clone(), name: device.name.clone() };
    let mut acked = Vec::with_capacity(batch.reports.len());
    let mut refused = Vec::new();
    for report in &batch.reports {
        if report.id.is_empty()
            || report.id.len() > 64
            || !report.id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(ApiError::BadRequest(format!("report id {:?} must be 1-64 letters, digits or '-'", report.id)));
        }
        match state.store().apply_report(&who, &device.group, report, now).await? {
            ReportOutcome::Applied => {
                tracing::info!(device = %device.name, rollout = %report.rollout_id, state = %report.state, reason = report.reason.as_deref().unwrap_or(""), "device report");
            }
            ReportOutcome::Repeated | ReportOutcome::Stale => {}
            ReportOutcome::Refused(why) => {
                tracing::warn!(device = %device.name, rollout = %report.rollout_id, state = %report.state, refused = %why, "device report refused");
                refused.push(RefusedReport {
                    id: report.id.clone(),
                    reason: format!("{} about rollout {}: {why}", report.state, report.rollout_id),
                });
            }
        }
        acked.push(report.id.clone());
    }
    if !batch.active.is_empty() {
        state.store().set_device_artifacts(&device.id, &batch.active, now).await?;
    }
    Ok(Json(ReportAck { acked, refused }))
}

/// Records a working device's heartbeat and answers whether its assignment still stands and
/// how often to send the next (see [`wavecast_core::progress`]). Cheap by design: one update
/// of the device's own rollout row, no rollout lock, no audit event; and bounded by a small
/// body limit and a per-device heartbeat budget.
pub async fn progress(
    State(state): State<AppState>,
    Device(device): Device,
    ApiJson(heartbeat): ApiJson<Progress>,
) -> Result<Json<ProgressAck>, ApiError> {
    heartbeat.check().map_err(|e| ApiError::bad_request(&e))?;
    let budget = state.limits().heartbeats();
    budget.take(&device.id).map_err(|exceeded| {
        ApiError::too_many(
            format!(
                "device {} is over its heartbeat budget ({}); wait for the interval the server answers",
                device.name,
                budget.rate().in_words()
            ),
            exceeded,
        )
    })?;
    let now = now_ms();
    state.last_seen().touch(&device.id, now);
    Ok(Json(state.store().record_heartbeat(&device.id, &heartbeat, now).await?))
}

/// Serves an artifact by its consistent-snapshot target path, `<sha256>.<name@version>`,
/// honouring `Range` so interrupted downloads resume: only to a device whose assignments
/// tell it to install exactly that target with exactly those bytes
/// ([`assigns_install`], over what the device would be served now).
pub async fn target(
    State(state): State<AppState>,
    Device(device): Device,
    super::ApiPath(file): super::ApiPath<String>,
    req: axum::extract::Request,
) -> Result<axum::response::Response, ApiError> {
    let (hex, name) = file.split_once('.').ok_or_else(|| ApiError::NotFound(format!("no target {file:?}")))?;
    let target =
        wavecast_core::TargetName::parse(name).map_err(|_| ApiError::NotFound(format!("no target {file:?}")))?;
    let digest: wavecast_core::Sha256Digest =
        hex.parse().map_err(|_| ApiError::NotFound(format!("no target {file:?}")))?;
    let (_, assignments) = state.store().assignments(&device.id, &device.group).await?;
    if !assigns_install(&assignments, &target, &digest) {
        return Err(ApiError::Forbidden(format!(
            "device {} is not assigned {target} with sha256 {digest}: a device may fetch only the artifacts its \
             assignments tell it to install",
            device.name
        )));
    }
    super::operator::serve_blob(&state, &digest, req).await
}
