//! Device API handlers: enrollment, identity, assignments, reports, heartbeats, targets.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use wavecast_core::assignment::{
    AssignmentDoc, LONG_POLL_HEADER as LONG_POLL, MAX_REPORTS_PER_BATCH, POLL_AFTER_HEADER as POLL_AFTER,
    RefusedReport, ReportAck, ReportBatch, SignedAssignments, assigns_install,
};
use wavecast_core::audit::{Actor, AuditAction, NewAuditEvent};
use wavecast_core::name::validate;
use wavecast_core::pacing::Pacing;
use wavecast_core::progress::{Progress, ProgressAck};
use wavecast_core::secret::{Secret, SecretKind};
use wavecast_core::trust::KeyRole;
use wavecast_core::{DeviceName, GroupName};
use wavecast_os::clock::now_ms;
use wavecast_os::error::chain;

use super::openapi::{
    BadRequest, Binary, Conflict, Forbidden, Internal, NotFound, TooLarge, TooManyRequests, Unauthorized, Unavailable,
};
use super::{ApiError, ApiJson, Device, new_id, random};
use crate::checkin::{CachedDoc, GroupPacing, Watch};
use crate::state::{AppState, DeviceIdentity};
use crate::store::{DeviceAssignments, DeviceRef, DeviceReports, EnrollError, Enrollment, ReportOutcome};

/// `POST /device/v1/enroll`: names travel as strings, so the server says what is wrong with one.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "token": "wce_0000000000000000000000000000000000000000000000000000000000000000",
    "name": "cam-001",
    "hardware": "jetson-orin",
}))]
pub struct EnrollRequest {
    /// An enrollment token, from `POST /api/v1/enrollment-tokens`.
    #[schema(pattern = "^wce_[0-9a-fA-F]{64}$")]
    token: String,
    /// The device's name.
    #[schema(value_type = DeviceName)]
    name: String,
    /// Hardware name: 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit.
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]*$", min_length = 1, max_length = 64)]
    hardware: String,
}

/// What enrolling answers: the only time the credential is shown.
#[derive(Serialize, ToSchema)]
pub struct EnrollResponse {
    /// The device's id.
    device_id: String,
    /// Its name.
    #[schema(value_type = DeviceName)]
    name: String,
    /// The group the token enrolled it in.
    #[schema(value_type = GroupName)]
    group: String,
    /// The device credential, shown only here.
    #[schema(pattern = "^wcd_[0-9a-f]{64}$")]
    credential: String,
}

/// Exchanges a group enrollment token for a per-device credential.
#[utoipa::path(
    post,
    path = "/enroll",
    operation_id = "enroll",
    tag = "device",
    summary = "Exchange an enrollment token for a device credential",
    description = "No Authorization header: the enrollment token is in the body. 401: the token is malformed, unknown, expired, revoked or used up (the message says which; or, with device mTLS, the client certificate does not name the device). 409: a device of that name is enrolled (revoked devices keep their name until removed).",
    request_body(content = EnrollRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "Enrolled; the credential is shown only here.", body = EnrollResponse),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 409, response = Conflict),
        (status = 413, response = TooLarge),
        (status = 500, response = Internal),
    )
)]
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
#[utoipa::path(
    get,
    path = "/whoami",
    operation_id = "deviceWhoami",
    tag = "device",
    summary = "The calling device's record",
    security(("deviceCredential" = [])),
    responses(
        (status = 200, description = "The device.", body = crate::store::DeviceRecord),
        (status = 401, response = Unauthorized),
        (status = 429, response = TooManyRequests),
        (status = 500, response = Internal),
    )
)]
pub async fn whoami(
    State(state): State<AppState>,
    Device(device): Device,
) -> Result<Json<crate::store::DeviceRecord>, ApiError> {
    // Read, not cached: the record shows when the device was last seen.
    let fresh = state.store().device_by_name(device.name.as_str()).await?;
    Ok(Json(fresh.unwrap_or(device)))
}

/// How long a signed assignment doc stays actionable.
const ASSIGNMENT_LIFETIME_SECS: i64 = 24 * 3600;

/// `GET /device/v1/assignments` query.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AssignmentsQuery {
    /// Hold the check-in until the doc differs from `If-None-Match` or this long has passed
    /// (`30s`, `2m`, or plain seconds); capped by the group's long-poll setting.
    #[param(example = "30s")]
    wait: Option<String>,
}

/// The device's signed assignments. Answers 304 when the device already holds the current
/// doc (`If-None-Match`), from memory when this replica knows the device's doc (see
/// `crate::checkin`), so an idle fleet's check-ins cost no database work, no signing and no
/// body. With `wait`, a 304 is held until the device's doc changes (a wave opening, a pause,
/// a resume, an abort, its own report) or the wait ends.
#[utoipa::path(
    get,
    path = "/assignments",
    operation_id = "assignments",
    tag = "device",
    summary = "The device's signed assignments",
    description = "Every answer says when to check in next (`Wavecast-Poll-After`, milliseconds, jittered: soon while the device's wave is open, rarely when nothing happens, at once after a held check-in) and, when the device's group allows long-poll, how long a check-in may be held (`Wavecast-Long-Poll`, seconds). 400: `wait` does not parse.",
    security(("deviceCredential" = [])),
    params(
        AssignmentsQuery,
        ("If-None-Match" = Option<String>, Header, description = "The ETag of the doc the device holds."),
    ),
    responses(
        (status = 200, description = "The signed assignment doc.", body = SignedAssignments, headers(("ETag" = String, description = "Of this doc; send it back as If-None-Match."), ("Wavecast-Poll-After" = u64, description = "Milliseconds to wait before the next check-in."), ("Wavecast-Long-Poll" = u64, description = "The longest wait, in seconds, a check-in may ask for; absent when long-poll is off."))),
        (status = 304, description = "Unchanged since the ETag sent in If-None-Match (when the wait ended, if one was asked for); no body.", headers(("ETag" = String, description = "Of the current doc."), ("Wavecast-Poll-After" = u64, description = "Milliseconds to wait before the next check-in."), ("Wavecast-Long-Poll" = u64, description = "The longest wait, in seconds, a check-in may ask for; absent when long-poll is off."))),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 429, response = TooManyRequests),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub async fn assignments(
    State(state): State<AppState>,
    Device(device): Device,
    super::ApiQuery(query): super::ApiQuery<AssignmentsQuery>,
    headers: axum::http::HeaderMap,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse as _;
    state.last_seen().touch(&device.id, now_ms());
    let asked_ms = match query.wait.as_deref() {
        None => 0,
        Some(w) => parse_wait(w).map_err(ApiError::BadRequest)?,
    };
    let pacing = pacing_of(&state, &device.group).await?;
    let hold = std::time::Duration::from_millis(pacing.hold_ms(asked_ms));
    let held_etag = headers.get(axum::http::header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()).map(str::to_owned);
    drop(headers);
    // A device that long-polls (or holds no doc yet, and may now) comes back at once: it waits
    // on the server, not on a timer. One that polls is paced by the group's intervals.
    let long_polls = pacing.long_poll_ms > 0 && (asked_ms > 0 || held_etag.is_none());
    let cache = state.store().checkin().clone();
    // Only a check-in that holds a doc can wait for it to change.
    let watch = (!hold.is_zero() && held_etag.is_some()).then(|| cache.watch(&device.id, &device.group));
    let deadline = tokio::time::Instant::now() + hold;
    loop {
        // Waiting starts before looking, so a change between the look and the wait wakes us.
        let (device_changed, group_changed) = watch.as_ref().map(Watch::notifiers).unwrap_or_default();
        let device_changed = device_changed.notified();
        let group_changed = group_changed.notified();
        tokio::pin!(device_changed, group_changed);
        device_changed.as_mut().enable();
        group_changed.as_mut().enable();
        let (doc, read) = current_doc(&state, &device.id, &device.group).await?;
        let headers = |etag: &str, busy: bool| {
            let mut h = axum::http::HeaderMap::new();
            h.insert(axum::http::header::ETAG, header_value(etag));
            h.insert(POLL_AFTER, pacing.next_poll_ms(busy, long_polls, jitter(&device.id)).into());
            if pacing.long_poll_ms > 0 {
                h.insert(LONG_POLL, (pacing.long_poll_ms / 1000).into());
            }
            h
        };
        if held_etag.as_deref() != Some(doc.etag.as_str()) {
            // The device needs the doc itself: read now if the cache answered.
            let served = match read {
                Some(served) => served,
                None => state.store().assignments(&device.id, &device.group).await?,
            };
            let headers = headers(&etag_of(&served), served.busy);
            let doc = AssignmentDoc {
                device_id: device.id.clone(),
                counter: served.counter as u64,
                expires: wavecast_os::clock::now().as_second() + ASSIGNMENT_LIFETIME_SECS,
                assignments: served.assignments,
            };
            // The director key the newest root names; a replica that lacks it answers 503
            // rather than sign with a retired one.
            let message = doc.signing_bytes().map_err(|e| ApiError::internal_from("encoding the assignment doc", e))?;
            let signature = hex::encode(state.trust().current().key(KeyRole::Director)?.sign_bytes(&message));
            return Ok((headers, Json(SignedAssignments { signed: doc, signature })).into_response());
        }
        if watch.is_none() || cache.closing() || tokio::time::Instant::now() >= deadline {
            return Ok((StatusCode::NOT_MODIFIED, headers(&doc.etag, doc.busy)).into_response());
        }
        tokio::select! {
            () = &mut device_changed => {}
            () = &mut group_changed => {}
            () = tokio::time::sleep_until(deadline) => {}
        }
    }
}

/// The device's current doc ETag: from this replica's memory, or read (and then kept) along
/// with what the device is served.
async fn current_doc(
    state: &AppState,
    device_id: &str,
    group: &GroupName,
) -> Result<(CachedDoc, Option<DeviceAssignments>), ApiError> {
    let cache = state.store().checkin();
    let now = std::time::Instant::now();
    if let Some(doc) = cache.doc(device_id, group, now) {
        return Ok((doc, None));
    }
    let stamp = cache.stamp();
    let served = state.store().assignments(device_id, group).await?;
    let doc = CachedDoc { etag: etag_of(&served), busy: served.busy };
    cache.keep_doc(stamp, device_id, group, doc.clone(), now);
    Ok((doc, Some(served)))
}

/// The group's check-in pacing, defaults filled in: from memory when known.
async fn pacing_of(state: &AppState, group: &GroupName) -> Result<Pacing, ApiError> {
    let cache = state.store().checkin();
    let now = std::time::Instant::now();
    let set = match cache.pacing(group, now) {
        Some(p) => p,
        None => {
            let stamp = cache.stamp();
            // A device's group exists while the device does.
            let p = state.store().group_pacing(group).await?.unwrap_or_default();
            cache.keep_pacing(stamp, group, p, now);
            p
        }
    };
    Ok(pacing_with_defaults(set))
}

/// A group's stored pacing with the server's defaults where it sets none.
pub fn pacing_with_defaults(set: GroupPacing) -> Pacing {
    let d = Pacing::default();
    let ms = |v: Option<i64>, default: u64| v.and_then(|v| u64::try_from(v).ok()).unwrap_or(default);
    Pacing {
        idle_ms: ms(set.idle_ms, d.idle_ms),
        active_ms: ms(set.active_ms, d.active_ms),
        long_poll_ms: ms(set.long_poll_ms, d.long_poll_ms),
    }
}

/// The ETag of what a device is served. It covers the content, not just the counter, so a
/// device never keeps a stale doc because a counter failed to move.
fn etag_of(served: &DeviceAssignments) -> String {
    let content = serde_json::to_vec(&(served.counter, &served.assignments)).unwrap_or_default();
    format!("\"{}\"", &wavecast_core::Sha256Digest::of(&content).to_hex()[..32])
}

fn header_value(etag: &str) -> axum::http::HeaderValue {
    axum::http::HeaderValue::from_str(etag).unwrap_or_else(|_| axum::http::HeaderValue::from_static("\"\""))
}

/// A `wait` value: `30s`, `2m`, `500ms`, or plain seconds.
fn parse_wait(w: &str) -> Result<u64, String> {
    let refused = || format!("wait {w:?} is not a duration like 30s, 2m or 30 (seconds)");
    if let Ok(secs) = w.parse::<u64>() {
        return secs.checked_mul(1000).ok_or_else(refused);
    }
    let d = wavecast_core::duration::parse_duration(w).map_err(|_| refused())?;
    u64::try_from(d.as_millis()).map_err(|_| refused())
}

/// A uniformly random number for this check-in's pacing jitter: no two devices, and no two
/// check-ins of one device, come back in step.
fn jitter(device_id: &str) -> u16 {
    use std::hash::BuildHasher as _;
    let h = std::collections::hash_map::RandomState::new().hash_one((device_id, std::time::Instant::now()));
    (h >> 48) as u16
}

/// Applies a batch of reports, each exactly once, and records what the device runs. A report
/// that claims a change the device may not make (see [`wavecast_core::rollout::judge_report`])
/// changes nothing and is answered in `refused` with why; it is acknowledged all the same, so
/// the device does not send it forever.
#[utoipa::path(
    post,
    path = "/reports",
    operation_id = "reports",
    tag = "device",
    summary = "Report progress and what the device runs",
    description = "413: more than 100 reports in one batch, or a body over 1 MiB. A report that claims a change the device may not make (a state the server or an operator decides, a rollout that never assigned it anything, a revert no abort asked for) changes nothing and is listed in `refused` with why.",
    security(("deviceCredential" = [])),
    request_body(content = ReportBatch, content_type = "application/json"),
    responses(
        (status = 200, description = "Applied (each report id exactly once).", body = ReportAck),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 413, response = TooLarge),
        (status = 429, response = TooManyRequests),
        (status = 500, response = Internal),
    )
)]
pub async fn reports(
    State(state): State<AppState>,
    Device(device): Device,
    ApiJson(batch): ApiJson<ReportBatch>,
) -> Result<Json<ReportAck>, ApiError> {
    if batch.reports.len() > MAX_REPORTS_PER_BATCH {
        return Err(ApiError::TooLarge(format!("at most {MAX_REPORTS_PER_BATCH} reports per batch")));
    }
    // Every id is checked before any report is applied: a malformed batch changes nothing.
    if let Some(report) = batch
        .reports
        .iter()
        .find(|r| r.id.is_empty() || r.id.len() > 64 || !r.id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
    {
        return Err(ApiError::BadRequest(format!("report id {:?} must be 1-64 letters, digits or '-'", report.id)));
    }
    let now = now_ms();
    state.last_seen().touch(&device.id, now);
    let who = DeviceRef { id: device.id.clone(), name: device.name.clone() };
    // Each run of reports about one rollout joins that rollout's next batch, with other
    // devices' reports about it (see `batcher`); the runs go one after the other, so the
    // device's reports are applied in the order it sent them.
    let mut outcomes = Vec::with_capacity(batch.reports.len());
    for run in batch.reports.chunk_by(|a, b| a.rollout_id == b.rollout_id) {
        let part =
            DeviceReports { device: who.clone(), group: device.group.clone(), reports: run.to_vec(), now_ms: now };
        let applied = state.reports().submit(&run[0].rollout_id, part).await;
        outcomes.extend(applied.map_err(|e| ApiError::internal_from("recording device reports", e))?);
    }
    let mut acked = Vec::with_capacity(batch.reports.len());
    let mut refused = Vec::new();
    for (report, outcome) in batch.reports.iter().zip(outcomes) {
        match outcome {
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
#[utoipa::path(
    post,
    path = "/progress",
    operation_id = "progress",
    tag = "device",
    summary = "Heartbeat of a device at work",
    description = "Sent while the device downloads, waits out a transient problem, or probes, every `heartbeat_ms` of the last answer (30 s before it has one). It restarts the device's silence clock and shows its progress in `rollout show` and `device show`; it never changes the device's state (reports do) and is not audited. The answer says whether the assignment still stands: `proceed: false` when the rollout paused before the device got past its download, was aborted, or does not include the device. 413: a body over 4 KiB. 429: more than one heartbeat a second sustained (bursts of 5), or the device's general budget.",
    security(("deviceCredential" = [])),
    request_body(content = Progress, content_type = "application/json"),
    responses(
        (status = 200, description = "Recorded (when the rollout waits for the device); whether to go on, and when to send the next.", body = ProgressAck),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 413, response = TooLarge),
        (status = 429, response = TooManyRequests),
        (status = 500, response = Internal),
    )
)]
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
/// ([`assigns_install`], over what the device would be served now). The same path with the
/// digest of the golden set signed into that target serves the golden set.
#[utoipa::path(
    get,
    path = "/targets/{file}",
    operation_id = "target",
    tag = "device",
    summary = "An artifact by its consistent-snapshot target path",
    description = "With the digest of the golden set signed into the target, serves that golden set. 403: the device's assignments do not tell it to install this target with these bytes; a device fetches only what it is assigned.",
    security(("deviceCredential" = [])),
    params(
        ("file" = String, Path, description = "`<sha256>.<name>@<version>`.", pattern = "^[0-9a-f]{64}\\.[A-Za-z0-9][A-Za-z0-9._-]*@[0-9A-Za-z.+-]+$", min_length = 1, example = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08.yolo-v8n@2.1.0"),
        ("Range" = Option<String>, Header, description = "An RFC 9110 byte range, like `bytes=START-` to resume a download. One that is malformed or past the end gets 416."),
    ),
    responses(
        (status = 200, description = "The bytes.", body = inline(Binary), content_type = "application/octet-stream", headers(("ETag" = String, description = "Of the file; for If-None-Match."), ("Last-Modified" = String, description = "Of the file; for If-Modified-Since."), ("Accept-Ranges" = String, description = "`bytes`."))),
        (status = 206, description = "The requested range of the bytes.", body = inline(Binary), content_type = "application/octet-stream", headers(("ETag" = String, description = "Of the file; for If-None-Match."), ("Last-Modified" = String, description = "Of the file; for If-Modified-Since."), ("Accept-Ranges" = String, description = "`bytes`."), ("Content-Range" = String, description = "`bytes START-END/LENGTH`."))),
        (status = 304, description = "Unchanged since the If-None-Match or If-Modified-Since the client sent; no body."),
        (status = 307, description = "With `--blob-redirect`: fetch the bytes from the presigned URL in `Location` (valid a few minutes; send the same `Range`, not the credential).", headers(("Location" = String, description = "A presigned URL for the object in the blob store."))),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 412, description = "An If-Match or If-Unmodified-Since precondition failed; no body."),
        (status = 416, description = "The Range is malformed or past the end; no body.", headers(("Content-Range" = String, description = "`bytes */LENGTH`."))),
        (status = 429, response = TooManyRequests),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
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
    let assignments = state.store().assignments(&device.id, &device.group).await?.assignments;
    // The golden set signed into an assigned target is served by the same rule: the device
    // checks it against the digest in the target's signed metadata before anything uses it.
    let assigned =
        assignments.iter().any(|a| a.action == wavecast_core::assignment::Action::Install && a.target() == target);
    if assigned
        && !assigns_install(&assignments, &target, &digest)
        && state.store().artifact_golden(&target).await?.is_some_and(|g| g.sha256 == digest)
    {
        return super::operator::serve_blob(&state, &digest, req).await;
    }
    if !assigns_install(&assignments, &target, &digest) {
        return Err(ApiError::Forbidden(format!(
            "device {} is not assigned {target} with sha256 {digest}: a device may fetch only the artifacts its \
             assignments tell it to install",
            device.name
        )));
    }
    super::operator::serve_blob(&state, &digest, req).await
}
