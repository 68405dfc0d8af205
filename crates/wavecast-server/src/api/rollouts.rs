//! Operator API for rollouts: create, list, show, approve, resume, abort.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use wavecast_core::TargetName;
use wavecast_core::assignment::DeviceState;
use wavecast_core::probe::{ProbeKind, ProbeSpec};
use wavecast_core::rollout::{AbortMode, Command, Gate, Plan, RolloutState};
use wavecast_os::clock::now_ms;
use wavecast_os::error::chain;

use super::{ApiError, ApiJson, ApiPath, CanApproveGates, CanOperateRollouts, CanRead, Operator};
use crate::state::AppState;
use crate::store::{CreateRolloutError, NewRollout, RolloutCommandError, RolloutRecord};

/// Ten minutes, as the brief sets it.
pub const DEFAULT_DEVICE_TIMEOUT_MS: u64 = 10 * 60 * 1000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRollout {
    artifact: String,
    group: String,
    waves: Vec<u8>,
    #[serde(default)]
    gates: Vec<usize>,
    halt_after: Option<u32>,
    device_timeout_ms: Option<u64>,
    probe: String,
    probe_timeout_ms: Option<u64>,
    probe_attempts: Option<u32>,
    probe_interval_ms: Option<u64>,
    probe_initial_delay_ms: Option<u64>,
}

/// Devices per state, every state present.
fn state_map(get: impl Fn(DeviceState) -> u64) -> BTreeMap<&'static str, u64> {
    DeviceState::ALL.iter().map(|s| (s.as_str(), get(*s))).collect()
}

#[derive(Debug, Serialize)]
pub struct WaveView {
    number: usize,
    percent: u8,
    gate: Gate,
    state: &'static str,
    devices: u64,
    counts: BTreeMap<&'static str, u64>,
}

#[derive(Debug, Serialize)]
pub struct RolloutView {
    id: String,
    state: RolloutState,
    artifact: String,
    artifact_name: String,
    version: String,
    group: String,
    halt_after: u32,
    failures_counted: u32,
    device_timeout_ms: u64,
    probe: String,
    probe_spec: ProbeSpec,
    device_count: i64,
    abort_mode: Option<AbortMode>,
    created_at: i64,
    created_by: String,
    updated_at: i64,
    counts: BTreeMap<&'static str, u64>,
    waves: Vec<WaveView>,
}

impl From<RolloutRecord> for RolloutView {
    fn from(r: RolloutRecord) -> Self {
        let waves = r
            .plan
            .waves
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let c = r.counts.get(i).copied().unwrap_or_default();
                let state = if i < r.status.opened {
                    if c.settled() { "settled" } else { "open" }
                } else if i == r.status.opened && r.status.state == RolloutState::WaitingApproval {
                    "waiting_approval"
                } else {
                    "pending"
                };
                WaveView {
                    number: i + 1,
                    percent: w.percent,
                    gate: w.gate,
                    state,
                    devices: c.total(),
                    counts: state_map(|s| c.get(s)),
                }
            })
            .collect();
        let counts = state_map(|s| r.counts.iter().map(|c| c.get(s)).sum());
        RolloutView {
            artifact: format!("{}@{}", r.artifact, r.version),
            id: r.id,
            state: r.status.state,
            artifact_name: r.artifact.into(),
            version: r.version.into(),
            group: r.group.into(),
            halt_after: r.plan.halt_after,
            failures_counted: r.status.failures_counted,
            device_timeout_ms: r.plan.device_timeout_ms,
            probe: r.probe.kind.to_string(),
            probe_spec: r.probe,
            device_count: r.device_count,
            abort_mode: r.abort_mode,
            created_at: r.created_at,
            created_by: r.created_by,
            updated_at: r.updated_at,
            counts,
            waves,
        }
    }
}

pub async fn create(
    State(state): State<AppState>,
    CanOperateRollouts(op): CanOperateRollouts,
    ApiJson(req): ApiJson<CreateRollout>,
) -> Result<(StatusCode, Json<RolloutView>), ApiError> {
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
    let record = state.store().create_rollout(&new).await.map_err(|e| match e {
        CreateRolloutError::Store(s) => s.into(),
        e @ CreateRolloutError::AlreadyActive { .. } => ApiError::Conflict(chain(&e)),
        e @ CreateRolloutError::EmptyGroup(_) => ApiError::Unprocessable(chain(&e)),
    })?;
    tracing::info!(rollout = %record.id, artifact = %target, group = %group, actor = %op.name, "rollout created");
    Ok((StatusCode::CREATED, Json(record.into())))
}

pub async fn list(State(state): State<AppState>, _: CanRead) -> Result<Json<Vec<RolloutView>>, ApiError> {
    Ok(Json(state.store().list_rollouts().await?.into_iter().map(Into::into).collect()))
}

pub async fn show(
    State(state): State<AppState>,
    _: CanRead,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<RolloutView>, ApiError> {
    let r = state.store().rollout(&id).await?.ok_or_else(|| ApiError::NotFound(format!("rollout {id:?} not found")))?;
    Ok(Json(r.into()))
}

/// Runs `cmd` for `op`, whose permission for it the handler's extractor has checked.
async fn run_command(state: &AppState, op: &Operator, id: &str, cmd: Command) -> Result<Json<RolloutView>, ApiError> {
    let record = state.store().rollout_command(id, cmd, &op.name, state.settings().approval, now_ms()).await.map_err(
        |e| match e {
            RolloutCommandError::Store(s) => s.into(),
            e @ RolloutCommandError::Refused(_) => ApiError::Conflict(chain(&e)),
            e @ RolloutCommandError::SameApprover(_) => ApiError::Forbidden(chain(&e)),
        },
    )?;
    tracing::info!(rollout = %id, command = ?cmd, actor = %op.name, state = %record.status.state, "rollout command");
    Ok(Json(record.into()))
}

pub async fn approve(
    State(state): State<AppState>,
    CanApproveGates(op): CanApproveGates,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<RolloutView>, ApiError> {
    run_command(&state, &op, &id, Command::Approve).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResumeRequest {
    ack: bool,
}

pub async fn resume(
    State(state): State<AppState>,
    CanOperateRollouts(op): CanOperateRollouts,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<ResumeRequest>,
) -> Result<Json<RolloutView>, ApiError> {
    if !req.ack {
        return Err(ApiError::BadRequest(
            "resuming requires acknowledging the failures counted so far (ack: true, or --ack on the CLI)".into(),
        ));
    }
    run_command(&state, &op, &id, Command::ResumeAck).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AbortRequest {
    mode: AbortMode,
}

pub async fn abort(
    State(state): State<AppState>,
    CanOperateRollouts(op): CanOperateRollouts,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<AbortRequest>,
) -> Result<Json<RolloutView>, ApiError> {
    run_command(&state, &op, &id, Command::Abort(req.mode)).await
}
