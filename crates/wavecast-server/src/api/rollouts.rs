//! Operator API for rollouts: create, list, show, approve, resume, abort.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use wavecast_api::{AbortMode, AbortRequest, CreateRollout, ResumeRequest, Rollout};
use wavecast_core::probe::{ProbeKind, ProbeSpec};
use wavecast_core::rollout::{Command, Plan};
use wavecast_core::{Permission, TargetName};

use super::{ApiError, ApiJson, ApiPath, AppState, Operator, bodies, now_ms};
use crate::store::{CreateRolloutError, NewRollout, RolloutCommandError};

/// Ten minutes, as the brief sets it.
pub const DEFAULT_DEVICE_TIMEOUT_MS: u64 = 10 * 60 * 1000;

pub async fn create(
    State(state): State<AppState>,
    op: Operator,
    req: Result<ApiJson<CreateRollout>, ApiError>,
) -> Result<(StatusCode, Json<Rollout>), ApiError> {
    op.require(Permission::OperateRollouts)?;
    let ApiJson(req) = req?;
    let bad = |e: &dyn std::fmt::Display| ApiError::BadRequest(e.to_string());
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
        artifact: target.name().to_string(),
        version: target.version().to_string(),
        group: group.to_string(),
        plan,
        probe,
        created_by: op.name.clone(),
        now_ms: now_ms(),
    };
    let record = state.store().create_rollout(&new).await.map_err(|e| match e {
        CreateRolloutError::Store(s) => s.into(),
        e @ CreateRolloutError::AlreadyActive { .. } => ApiError::Conflict(e.to_string()),
        e @ CreateRolloutError::EmptyGroup(_) => ApiError::Unprocessable(e.to_string()),
    })?;
    tracing::info!(rollout = %record.id, artifact = %target, group = %group, actor = %op.name, "rollout created");
    Ok((StatusCode::CREATED, Json(bodies::rollout(record)?)))
}

pub async fn list(State(state): State<AppState>, op: Operator) -> Result<Json<Vec<Rollout>>, ApiError> {
    op.require(Permission::Read)?;
    Ok(Json(bodies::all(state.store().list_rollouts().await?, bodies::rollout)?))
}

pub async fn show(
    State(state): State<AppState>,
    op: Operator,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Rollout>, ApiError> {
    op.require(Permission::Read)?;
    let r = state.store().rollout(&id).await?.ok_or_else(|| ApiError::NotFound(format!("rollout {id:?} not found")))?;
    Ok(Json(bodies::rollout(r)?))
}

async fn run_command(state: &AppState, op: &Operator, id: &str, cmd: Command) -> Result<Json<Rollout>, ApiError> {
    let permission = if cmd == Command::Approve { Permission::ApproveGates } else { Permission::OperateRollouts };
    op.require(permission)?;
    let record = state
        .store()
        .rollout_command(id, cmd, &op.name, state.settings().require_distinct_approver, now_ms())
        .await
        .map_err(|e| match e {
            RolloutCommandError::Store(s) => s.into(),
            e @ RolloutCommandError::Refused(_) => ApiError::Conflict(e.to_string()),
            e @ RolloutCommandError::SameApprover(_) => ApiError::Forbidden(e.to_string()),
        })?;
    tracing::info!(rollout = %id, command = ?cmd, actor = %op.name, state = %record.status.state, "rollout command");
    Ok(Json(bodies::rollout(record)?))
}

pub async fn approve(
    State(state): State<AppState>,
    op: Operator,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Rollout>, ApiError> {
    run_command(&state, &op, &id, Command::Approve).await
}

pub async fn resume(
    State(state): State<AppState>,
    op: Operator,
    ApiPath(id): ApiPath<String>,
    req: Result<ApiJson<ResumeRequest>, ApiError>,
) -> Result<Json<Rollout>, ApiError> {
    op.require(Permission::OperateRollouts)?;
    let ApiJson(req) = req?;
    if !req.ack {
        return Err(ApiError::BadRequest(
            "resuming requires acknowledging the failures counted so far (ack: true, or --ack on the CLI)".into(),
        ));
    }
    run_command(&state, &op, &id, Command::ResumeAck).await
}

pub async fn abort(
    State(state): State<AppState>,
    op: Operator,
    ApiPath(id): ApiPath<String>,
    req: Result<ApiJson<AbortRequest>, ApiError>,
) -> Result<Json<Rollout>, ApiError> {
    op.require(Permission::OperateRollouts)?;
    let ApiJson(req) = req?;
    let cmd = match req.mode {
        AbortMode::Keep => Command::AbortKeep,
        AbortMode::Revert => Command::AbortRevert,
    };
    run_command(&state, &op, &id, cmd).await
}
