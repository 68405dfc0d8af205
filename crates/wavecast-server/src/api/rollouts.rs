//! Operator API for rollouts: create, list, show, approve, resume, abort.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use wavecast_api::{AbortRequest, CreateRollout, ResumeRequest, Rollout};
use wavecast_core::TargetName;
use wavecast_core::probe::{ProbeKind, ProbeSpec};
use wavecast_core::rollout::{Command, Plan};
use wavecast_os::clock::now_ms;
use wavecast_os::error::chain;

use super::openapi::{BadRequest, Conflict, Forbidden, Internal, NotFound, TooLarge, Unauthorized, Unprocessable};
use super::{ApiError, ApiJson, ApiPath, CanApproveGates, CanOperateRollouts, CanRead, Operator, bodies};
use crate::state::AppState;
use crate::store::{CreateRolloutError, NewRollout, RolloutCommandError, RolloutIdError};

/// Ten minutes, as the brief sets it.
pub const DEFAULT_DEVICE_TIMEOUT_MS: u64 = 10 * 60 * 1000;

#[utoipa::path(
    post,
    path = "/rollouts",
    operation_id = "createRollout",
    tag = "operator",
    summary = "Start a rollout",
    description = "Needs the operator or admin role. 404: no such artifact or group. 409: a rollout of this artifact to this group is still active. 422: the group has no devices.",
    security(("apiToken" = [])),
    request_body(content = CreateRollout, content_type = "application/json"),
    responses(
        (status = 201, description = "Created; the first waves open as the plan allows.", body = Rollout),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 413, response = TooLarge),
        (status = 422, response = Unprocessable),
        (status = 500, response = Internal),
    )
)]
pub async fn create(
    State(state): State<AppState>,
    CanOperateRollouts(op): CanOperateRollouts,
    ApiJson(req): ApiJson<CreateRollout>,
) -> Result<(StatusCode, Json<Rollout>), ApiError> {
    Ok((StatusCode::CREATED, Json(create_rollout(&state, &op, req).await?)))
}

/// Creates the rollout `req` asks for on behalf of `op`, whose permission the caller checked:
/// the API's handler and the dashboard's form both come here.
pub(super) async fn create_rollout(state: &AppState, op: &Operator, req: CreateRollout) -> Result<Rollout, ApiError> {
    let bad = |e: &dyn std::error::Error| ApiError::bad_request(e);
    let target = TargetName::parse(&req.artifact).map_err(|e| bad(&e))?;
    let group = wavecast_core::GroupName::new(req.group).map_err(|e| bad(&e))?;
    let plan = Plan::new(
        &req.waves,
        &req.gates,
        req.halt_after.unwrap_or(1),
        req.device_timeout_ms.unwrap_or(DEFAULT_DEVICE_TIMEOUT_MS),
    )
    .map_err(|e| bad(&e))?;
    let kind: ProbeKind = req.probe.parse().map_err(|e: wavecast_core::probe::ProbeError| bad(&e))?;
    let mut probe = ProbeSpec::new(kind);
    if let Some(v) = req.probe_timeout_ms {
        probe.timeout_ms = v;
    }
    if let Some(v) = req.probe_attempts {
        probe.attempts = v;
    }
    if let Some(v) = req.probe_interval_ms {
        probe.interval_ms = v;
    }
    if let Some(v) = req.probe_initial_delay_ms {
        probe.initial_delay_ms = v;
    }
    probe.validate().map_err(|e| bad(&e))?;
    let id = format!("r-{}", &super::new_id()?[..8]);
    let new = NewRollout {
        id,
        artifact: target.name().clone(),
        version: target.version().clone(),
        group: group.clone(),
        plan,
        probe,
        created_by: op.name.clone(),
        now_ms: now_ms(),
    };
    let (record, partial) = state.store().create_rollout(&new).await.map_err(|e| match e {
        CreateRolloutError::Store(s) => s.into(),
        e @ CreateRolloutError::AlreadyActive { .. } => ApiError::Conflict(chain(&e)),
        e @ (CreateRolloutError::EmptyGroup(_) | CreateRolloutError::NoHardware { .. }) => {
            ApiError::Unprocessable(chain(&e))
        }
    })?;
    tracing::info!(rollout = %record.id, artifact = %target, group = %group, actor = %op.name, "rollout created");
    let mut body = bodies::rollout(record)?;
    if let Some(fit) = partial {
        body.warnings.push(format!(
            "only {} of the {} devices of group {group} have hardware {}; the other {} will refuse {target} and count as failed",
            fit.matching,
            fit.devices,
            fit.hardware,
            fit.devices - fit.matching
        ));
    }
    Ok(body)
}

#[utoipa::path(
    get,
    path = "/rollouts",
    operation_id = "listRollouts",
    tag = "operator",
    summary = "Rollouts",
    security(("apiToken" = [])),
    responses(
        (status = 200, description = "Every rollout, newest first.", body = Vec<Rollout>),
        (status = 401, response = Unauthorized),
        (status = 500, response = Internal),
    )
)]
pub async fn list(State(state): State<AppState>, _: CanRead) -> Result<Json<Vec<Rollout>>, ApiError> {
    Ok(Json(bodies::all(state.store().list_rollouts().await?, bodies::rollout)?))
}

/// The id of the one rollout `given` names: the whole id or any unique start of it.
pub(super) async fn rollout_id(state: &AppState, given: &str) -> Result<String, ApiError> {
    state.store().resolve_rollout_id(given).await.map_err(|e| match e {
        RolloutIdError::Store(s) => s.into(),
        e @ RolloutIdError::Unknown(_) => ApiError::NotFound(chain(&e)),
        e @ (RolloutIdError::NotAnId(_) | RolloutIdError::Ambiguous { .. }) => ApiError::BadRequest(chain(&e)),
    })
}

#[utoipa::path(
    get,
    path = "/rollouts/{id}",
    operation_id = "showRollout",
    tag = "operator",
    summary = "One rollout",
    security(("apiToken" = [])),
    params(
        ("id" = String, Path, description = "Rollout id, or any unique start of it (`r-` may be left out). An ambiguous start is a 400 naming the candidates; one that names no rollout, a 404.", min_length = 1, example = "r-1a2b3c4d"),
    ),
    responses(
        (status = 200, description = "The rollout, with the devices it waits for (`in_progress`).", body = Rollout),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 500, response = Internal),
    )
)]
pub async fn show(
    State(state): State<AppState>,
    _: CanRead,
    ApiPath(given): ApiPath<String>,
) -> Result<Json<Rollout>, ApiError> {
    let id = rollout_id(&state, &given).await?;
    let r = state.store().rollout(&id).await?.ok_or_else(|| ApiError::NotFound(format!("rollout {id:?} not found")))?;
    let at_work = state.store().devices_at_work(&r).await?;
    let failed = state.store().failed_devices(&r).await?;
    let mut body = bodies::rollout(r)?;
    body.in_progress = Some(bodies::in_progress(at_work)?);
    body.failures = Some(bodies::failures(failed)?);
    Ok(Json(body))
}

/// Runs `cmd` for `op`, whose permission for it the handler's extractor has checked.
pub(super) async fn run_command(
    state: &AppState,
    op: &Operator,
    given: &str,
    cmd: Command,
) -> Result<Json<Rollout>, ApiError> {
    let id = &rollout_id(state, given).await?;
    let record = state.store().rollout_command(id, cmd, &op.name, state.settings().approval, now_ms()).await.map_err(
        |e| match e {
            RolloutCommandError::Store(s) => s.into(),
            e @ RolloutCommandError::Refused(_) => ApiError::Conflict(chain(&e)),
            e @ RolloutCommandError::SameApprover(_) => ApiError::Forbidden(chain(&e)),
        },
    )?;
    tracing::info!(rollout = %id, command = ?cmd, actor = %op.name, state = %record.status.state, "rollout command");
    Ok(Json(bodies::rollout(record)?))
}

#[utoipa::path(
    post,
    path = "/rollouts/{id}/approve",
    operation_id = "approveRollout",
    tag = "operator",
    summary = "Open the wave waiting at a manual gate",
    description = "Needs the approver or admin role; 403 also when the server requires a distinct approver and the caller created the rollout. 409: the rollout is not waiting for approval.",
    security(("apiToken" = [])),
    params(
        ("id" = String, Path, description = "Rollout id, or any unique start of it (`r-` may be left out). An ambiguous start is a 400 naming the candidates; one that names no rollout, a 404.", min_length = 1, example = "r-1a2b3c4d"),
    ),
    responses(
        (status = 200, description = "The rollout after the command.", body = Rollout),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 500, response = Internal),
    )
)]
pub async fn approve(
    State(state): State<AppState>,
    CanApproveGates(op): CanApproveGates,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Rollout>, ApiError> {
    run_command(&state, &op, &id, Command::Approve).await
}

#[utoipa::path(
    post,
    path = "/rollouts/{id}/resume",
    operation_id = "resumeRollout",
    tag = "operator",
    summary = "Acknowledge failures and continue a paused rollout",
    description = "Needs the operator or admin role. 400: `ack` is not true. 409: the rollout is not paused.",
    security(("apiToken" = [])),
    params(
        ("id" = String, Path, description = "Rollout id, or any unique start of it (`r-` may be left out). An ambiguous start is a 400 naming the candidates; one that names no rollout, a 404.", min_length = 1, example = "r-1a2b3c4d"),
    ),
    request_body(content = ResumeRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The rollout after the command.", body = Rollout),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 413, response = TooLarge),
        (status = 500, response = Internal),
    )
)]
pub async fn resume(
    State(state): State<AppState>,
    CanOperateRollouts(op): CanOperateRollouts,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<ResumeRequest>,
) -> Result<Json<Rollout>, ApiError> {
    if !req.ack {
        return Err(ApiError::BadRequest(
            "resuming requires acknowledging the failures counted so far (ack: true, or --ack on the CLI)".into(),
        ));
    }
    run_command(&state, &op, &id, Command::ResumeAck).await
}

#[utoipa::path(
    post,
    path = "/rollouts/{id}/abort",
    operation_id = "abortRollout",
    tag = "operator",
    summary = "Stop a rollout, keeping or reverting devices",
    description = "Needs the operator or admin role. 409: the rollout already ended.",
    security(("apiToken" = [])),
    params(
        ("id" = String, Path, description = "Rollout id, or any unique start of it (`r-` may be left out). An ambiguous start is a 400 naming the candidates; one that names no rollout, a 404.", min_length = 1, example = "r-1a2b3c4d"),
    ),
    request_body(content = AbortRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The rollout after the command.", body = Rollout),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 413, response = TooLarge),
        (status = 500, response = Internal),
    )
)]
pub async fn abort(
    State(state): State<AppState>,
    CanOperateRollouts(op): CanOperateRollouts,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<AbortRequest>,
) -> Result<Json<Rollout>, ApiError> {
    run_command(&state, &op, &id, Command::Abort(req.mode)).await
}
