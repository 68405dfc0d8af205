//! The dashboard's actions: approve a gate, resume with acknowledgement, abort keeping or
//! reverting, start a rollout.
//!
//! Each checks, in this order: a live session (else sign in), the form's CSRF token (else 403
//! before anything is read), the permission the API route requires (else 403), then calls what
//! the API handler calls. Success answers 303 to the rollout's page.

use axum::Form;
use axum::extract::{Path, State};
use axum::response::Redirect;
use serde::Deserialize;
use wavecast_api::CreateRollout;
use wavecast_core::Permission;
use wavecast_core::rollout::{AbortMode, Command, RolloutState};

use super::DashboardError;
use super::session::Viewer;
use crate::api::ApiError;
use crate::api::rollouts::{DEFAULT_DEVICE_TIMEOUT_MS, create_rollout as create, rollout_id, run_command};
use crate::state::AppState;

/// The permission the API requires for `cmd` (`api::rollouts`: approve needs
/// `CanApproveGates`, resume and abort `CanOperateRollouts`).
fn required(cmd: Command) -> Permission {
    match cmd {
        Command::Approve => Permission::ApproveGates,
        Command::ResumeAck | Command::Abort(_) => Permission::OperateRollouts,
    }
}

/// Checks the form's CSRF token, then the viewer's permission: before any of the form's other
/// fields is looked at, as the API checks the role before it reads a body.
fn authorize(viewer: &Viewer, csrf: Option<&str>, permission: Permission) -> Result<(), DashboardError> {
    viewer.check_csrf(csrf)?;
    viewer.op.require(permission)?;
    Ok(())
}

/// Runs `cmd`, which [`authorize`] allowed, and sends the browser to the rollout's page.
async fn command(state: &AppState, viewer: &Viewer, id: &str, cmd: Command) -> Result<Redirect, DashboardError> {
    let rollout = run_command(state, &viewer.op, id, cmd).await?;
    Ok(Redirect::to(&format!("/ui/rollouts/{}", rollout.0.id)))
}

/// The rollout `given` names as it is now, for checking a form against what its page showed.
async fn current(state: &AppState, given: &str) -> Result<crate::store::RolloutRecord, DashboardError> {
    let id = rollout_id(state, given).await?;
    Ok(state.store().rollout(&id).await?.ok_or_else(|| ApiError::NotFound(format!("rollout {id:?} not found")))?)
}

#[derive(Debug, Deserialize)]
pub struct ApproveForm {
    csrf: Option<String>,
    /// The wave (1-based) the page showed waiting.
    wave: Option<usize>,
}

/// Opens the wave waiting at a manual gate: the one the page showed, or none. (A tab left open
/// while another operator approved must not open the next wave with the first one's words.)
pub async fn approve(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(id): Path<String>,
    Form(form): Form<ApproveForm>,
) -> Result<Redirect, DashboardError> {
    authorize(&viewer, form.csrf.as_deref(), required(Command::Approve))?;
    let r = current(&state, &id).await?;
    let waiting = (r.status.state == RolloutState::WaitingApproval).then_some(r.status.opened + 1);
    if form.wave.is_none() || form.wave != waiting {
        let now = waiting.map_or_else(|| format!("it is {}", r.status.state), |w| format!("wave {w} waits now"));
        return Err(ApiError::Conflict(format!(
            "this page asked to open wave {}, but {now}; reload the page and decide again",
            form.wave.unwrap_or(0)
        ))
        .into());
    }
    command(&state, &viewer, &id, Command::Approve).await
}

#[derive(Debug, Deserialize)]
pub struct ResumeForm {
    csrf: Option<String>,
    /// "yes" when the operator ticked the acknowledgement.
    ack: Option<String>,
    /// The failures counted since the last acknowledgement that the page showed.
    failures: Option<u32>,
}

/// Acknowledges the failures counted so far and resumes a paused rollout.
pub async fn resume(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(id): Path<String>,
    Form(form): Form<ResumeForm>,
) -> Result<Redirect, DashboardError> {
    authorize(&viewer, form.csrf.as_deref(), required(Command::ResumeAck))?;
    if form.ack.as_deref() != Some("yes") {
        return Err(ApiError::BadRequest(
            "resuming acknowledges the failures counted so far: tick the box that says so".into(),
        )
        .into());
    }
    // Acknowledging is only for the failures the operator was shown.
    let r = current(&state, &id).await?;
    if form.failures != Some(r.status.failures_counted) {
        return Err(ApiError::Conflict(format!(
            "{} failures are counted since the last acknowledgement, but this page showed {}; reload the page and review them",
            r.status.failures_counted,
            form.failures.map_or_else(|| "none".to_owned(), |n| n.to_string())
        ))
        .into());
    }
    command(&state, &viewer, &id, Command::ResumeAck).await
}

#[derive(Debug, Deserialize)]
pub struct AbortForm {
    csrf: Option<String>,
    /// "keep" or "revert": there is no default, the operator picks one.
    mode: Option<String>,
}

/// Stops a rollout, keeping or reverting its devices.
pub async fn abort(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(id): Path<String>,
    Form(form): Form<AbortForm>,
) -> Result<Redirect, DashboardError> {
    authorize(&viewer, form.csrf.as_deref(), required(Command::Abort(AbortMode::Keep)))?;
    let mode: AbortMode = form
        .mode
        .as_deref()
        .ok_or_else(|| ApiError::BadRequest("say whether the devices keep the new version or revert".into()))?
        .parse()
        .map_err(|e| ApiError::bad_request(&e))?;
    command(&state, &viewer, &id, Command::Abort(mode)).await
}

/// Every field may be missing, so a form without its CSRF token is refused as such rather than
/// as incomplete.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct CreateForm {
    csrf: Option<String>,
    artifact: String,
    group: String,
    waves: String,
    gates: String,
    halt_after: String,
    probe: String,
}

/// Splits a comma-separated list of numbers, naming the field in the error.
fn numbers<T: std::str::FromStr>(field: &str, given: &str) -> Result<Vec<T>, ApiError> {
    given
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|_| ApiError::BadRequest(format!("{field}: {s:?} is not a number"))))
        .collect()
}

/// Starts a rollout from the artifact page's form.
pub async fn create_rollout(
    State(state): State<AppState>,
    viewer: Viewer,
    Form(form): Form<CreateForm>,
) -> Result<Redirect, DashboardError> {
    authorize(&viewer, form.csrf.as_deref(), Permission::OperateRollouts)?;
    let halt_after = form
        .halt_after
        .trim()
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("pause after: {:?} is not a number", form.halt_after)))?;
    let req = CreateRollout {
        artifact: form.artifact,
        group: form.group,
        waves: numbers("waves", &form.waves)?,
        gates: numbers("gates", &form.gates)?,
        halt_after: Some(halt_after),
        device_timeout_ms: Some(DEFAULT_DEVICE_TIMEOUT_MS),
        probe: form.probe,
        probe_timeout_ms: None,
        probe_attempts: None,
        probe_interval_ms: None,
        probe_initial_delay_ms: None,
    };
    let rollout = create(&state, &viewer.op, req).await?;
    Ok(Redirect::to(&format!("/ui/rollouts/{}", rollout.id)))
}
