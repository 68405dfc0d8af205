//! Store records as the operator API's response bodies, the types in `wavecast_api` that the
//! CLI reads too.
//!
//! Each body is built in one place, so the wire format follows the shared types rather than
//! whatever a store record happens to derive. A stored value that no longer validates as the
//! type the body promises (a name, a version, a digest, a count) is damage: it is answered as
//! an internal error, whose log line names it, rather than passed on to a client.

use std::fmt::Display;
use std::str::FromStr;

use wavecast_api::{
    Artifact, Device, DeviceArtifact, DeviceRollout, Group, Rollout, StateCounts, Token, Wave, WaveState,
};
use wavecast_core::rollout::RolloutState;
use wavecast_core::{ArtifactName, ArtifactVersion, TargetName};

use super::ApiError;
use crate::store::{ArtifactRecord, DeviceRecord, GroupRecord, RolloutDeviceRecord, RolloutRecord, TokenRecord};

/// Checks a stored value again on its way out, as the type the body carries.
fn stored<T>(what: &str, value: impl Display) -> Result<T, ApiError>
where
    T: FromStr,
    T::Err: Display,
{
    let text = value.to_string();
    text.parse().map_err(|e| ApiError::Internal(format!("stored {what} {text:?} does not validate: {e}")))
}

/// Converts every row, failing on the first that does not validate.
pub(super) fn all<R, B>(rows: Vec<R>, body: impl Fn(R) -> Result<B, ApiError>) -> Result<Vec<B>, ApiError> {
    rows.into_iter().map(body).collect()
}

pub(super) fn artifact(r: ArtifactRecord) -> Result<Artifact, ApiError> {
    Ok(Artifact {
        name: stored("artifact name", &r.name)?,
        version: stored("artifact version", &r.version)?,
        length: stored("artifact length", r.length)?,
        sha256: stored("artifact sha256", &r.sha256)?,
        hardware: r.hardware,
        published_at: r.published_at,
        published_by: r.published_by,
    })
}

pub(super) fn group(r: GroupRecord) -> Result<Group, ApiError> {
    Ok(Group {
        name: stored("group name", &r.name)?,
        created_at: r.created_at,
        created_by: r.created_by,
        devices: stored("group device count", r.devices)?,
    })
}

pub(super) fn device(r: DeviceRecord) -> Result<Device, ApiError> {
    Ok(Device {
        id: r.id,
        name: stored("device name", &r.name)?,
        group: stored("device group", &r.group)?,
        hardware: r.hardware,
        enrolled_at: r.enrolled_at,
        last_seen_at: r.last_seen_at,
    })
}

/// One row of what a device reported running: (name, version, sha256).
pub(super) fn device_artifact((name, version, sha256): (String, String, String)) -> Result<DeviceArtifact, ApiError> {
    Ok(DeviceArtifact {
        name: stored("reported artifact name", &name)?,
        version: stored("reported artifact version", &version)?,
        sha256: stored("reported artifact sha256", &sha256)?,
    })
}

pub(super) fn device_rollout(r: RolloutDeviceRecord) -> Result<DeviceRollout, ApiError> {
    Ok(DeviceRollout {
        artifact: stored("rollout artifact name", &r.artifact)?,
        version: stored("rollout artifact version", &r.version)?,
        wave: stored("device wave", r.wave)?,
        rollout_id: r.rollout_id,
        state: r.state,
        reason: r.reason,
        updated_at: r.updated_at,
    })
}

pub(super) fn token(r: TokenRecord) -> Token {
    Token {
        id: r.id,
        name: r.name,
        role: r.role,
        created_at: r.created_at,
        created_by: r.created_by,
        revoked_at: r.revoked_at,
    }
}

pub(super) fn rollout(r: RolloutRecord) -> Result<Rollout, ApiError> {
    let waves = r
        .plan
        .waves
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let c = r.counts.get(i).copied().unwrap_or_default();
            let state = if i < r.status.opened {
                if c.settled() { WaveState::Settled } else { WaveState::Open }
            } else if i == r.status.opened && r.status.state == RolloutState::WaitingApproval {
                WaveState::WaitingApproval
            } else {
                WaveState::Pending
            };
            Wave {
                number: i + 1,
                percent: w.percent,
                gate: w.gate,
                state,
                devices: c.total(),
                counts: StateCounts::from_fn(|s| c.get(s)),
            }
        })
        .collect();
    let counts = StateCounts::from_fn(|s| r.counts.iter().map(|c| c.get(s)).sum());
    let artifact_name: ArtifactName = stored("rollout artifact name", &r.artifact)?;
    let version: ArtifactVersion = stored("rollout artifact version", &r.version)?;
    Ok(Rollout {
        artifact: TargetName::new(artifact_name.clone(), version.clone()),
        artifact_name,
        version,
        id: r.id,
        state: r.status.state,
        group: stored("rollout group", &r.group)?,
        halt_after: r.plan.halt_after,
        failures_counted: r.status.failures_counted,
        device_timeout_ms: r.plan.device_timeout_ms,
        probe: r.probe.kind.to_string(),
        probe_spec: r.probe,
        device_count: stored("rollout device count", r.device_count)?,
        abort_mode: r.abort_mode.map(|m| stored("rollout abort mode", m)).transpose()?,
        created_at: r.created_at,
        created_by: r.created_by,
        updated_at: r.updated_at,
        counts,
        waves,
    })
}
