//! Store records as the operator API's response bodies, the types in `wavecast_api` that the
//! CLI reads too.
//!
//! Each body is built in one place, so the wire format follows the shared types rather than
//! whatever a store record happens to derive. The records already carry the core's newtypes;
//! what is left to check is that the counts the database keeps as signed integers are not
//! negative, which would be damage: it is answered as an internal error, whose log line names
//! it, rather than passed on to a client.

use wavecast_api::{
    Artifact, ArtifactGolden, Device, DeviceArtifact, DeviceAtWork, DeviceFailure, DeviceProgress, DeviceRemoval,
    DeviceRollout, EnrollmentToken, Failures, Group, InProgress, Rollout, StateCounts, Timestamp, Token, Wave,
    WaveState,
};
use wavecast_core::TargetName;
use wavecast_core::assignment::ActiveArtifact;
use wavecast_core::fleet::DeviceStatus;
use wavecast_core::rollout::RolloutState;

use super::ApiError;
use crate::store::{
    ArtifactRecord, AtWork, DeviceRecord, EnrollmentTokenRecord, GoldenRecord, GroupRecord, HeartbeatRecord, Retired,
    RolloutDeviceRecord, RolloutRecord, TokenRecord,
};

/// A count or size the database stores as a signed integer.
fn unsigned(what: &str, n: i64) -> Result<u64, ApiError> {
    u64::try_from(n).map_err(|e| ApiError::internal_from(format!("stored {what} {n} is negative"), e))
}

/// Converts every row, failing on the first that does not convert.
pub(super) fn all<R, B>(rows: Vec<R>, body: impl Fn(R) -> Result<B, ApiError>) -> Result<Vec<B>, ApiError> {
    rows.into_iter().map(body).collect()
}

pub(super) fn artifact(r: ArtifactRecord) -> Result<Artifact, ApiError> {
    Ok(Artifact {
        length: unsigned("artifact length", r.length)?,
        name: r.name,
        version: r.version,
        sha256: r.sha256,
        hardware: r.hardware,
        golden: r.golden.map(golden).transpose()?,
        published_at: Timestamp::from_unix_ms(r.published_at),
        published_by: r.published_by,
    })
}

pub(super) fn golden(r: GoldenRecord) -> Result<ArtifactGolden, ApiError> {
    Ok(ArtifactGolden {
        sha256: r.sha256,
        length: unsigned("golden set length", r.length)?,
        local_check: r.local_check,
    })
}

pub(super) fn group(r: GroupRecord) -> Result<Group, ApiError> {
    Ok(Group {
        devices: unsigned("group device count", r.devices)?,
        name: r.name,
        created_at: Timestamp::from_unix_ms(r.created_at),
        created_by: r.created_by,
    })
}

pub(super) fn device(r: DeviceRecord) -> Device {
    Device {
        id: r.id,
        name: r.name,
        group: r.group,
        hardware: r.hardware,
        enrolled_at: Timestamp::from_unix_ms(r.enrolled_at),
        last_seen_at: r.last_seen_at.map(Timestamp::from_unix_ms),
        state: DeviceStatus::of(r.revoked_at),
        revoked_at: r.revoked_at.map(Timestamp::from_unix_ms),
    }
}

/// What revoking or removing a device did.
pub(super) fn removal(r: Retired) -> DeviceRemoval {
    DeviceRemoval { device: device(r.device), decommissioned: r.decommissioned, left_rollouts: r.left_rollouts }
}

pub(super) fn enrollment_token(r: EnrollmentTokenRecord) -> EnrollmentToken {
    EnrollmentToken {
        id: r.id,
        group: r.group,
        created_at: Timestamp::from_unix_ms(r.created_at),
        created_by: r.created_by,
        expires_at: Timestamp::from_unix_ms(r.expires_at),
        max_uses: r.max_uses,
        uses: r.uses,
        revoked_at: r.revoked_at.map(Timestamp::from_unix_ms),
    }
}

/// What a device last reported running.
pub(super) fn device_artifact(a: ActiveArtifact) -> DeviceArtifact {
    DeviceArtifact { name: a.name, version: a.version, sha256: a.sha256 }
}

pub(super) fn device_rollout(r: RolloutDeviceRecord) -> Result<DeviceRollout, ApiError> {
    Ok(DeviceRollout {
        wave: unsigned("device wave", r.wave)?,
        rollout_id: r.rollout_id,
        artifact: r.artifact,
        version: r.version,
        state: r.state,
        reason: r.reason,
        updated_at: Timestamp::from_unix_ms(r.updated_at),
        progress: r.heartbeat.map(progress),
        probe_result: r.probe_result,
    })
}

/// A working device's latest heartbeat.
fn progress(h: HeartbeatRecord) -> DeviceProgress {
    DeviceProgress {
        at: Timestamp::from_unix_ms(h.at),
        state: h.state,
        bytes_done: h.bytes_done,
        bytes_total: h.bytes_total,
        bytes_per_sec: h.bytes_per_sec,
        waiting: h.waiting,
    }
}

/// The devices a rollout waits for.
pub(super) fn in_progress(w: AtWork) -> Result<InProgress, ApiError> {
    let devices = w
        .devices
        .into_iter()
        .map(|d| {
            Ok(DeviceAtWork {
                wave: unsigned("device wave", d.wave)?,
                device: d.device,
                state: d.state,
                last_heard_at: Timestamp::from_unix_ms(d.heard_at),
                progress: d.heartbeat.map(progress),
            })
        })
        .collect::<Result<_, ApiError>>()?;
    Ok(InProgress { total: w.total, devices })
}

/// The devices of a rollout that ended failed or timed out.
pub(super) fn failures(f: crate::store::Failures) -> Result<Failures, ApiError> {
    let devices = f
        .devices
        .into_iter()
        .map(|d| {
            Ok(DeviceFailure {
                wave: unsigned("device wave", d.wave)?,
                device: d.device,
                state: d.state,
                reason: d.reason,
                at: Timestamp::from_unix_ms(d.at),
                probe_result: d.probe_result,
            })
        })
        .collect::<Result<_, ApiError>>()?;
    Ok(Failures { total: f.total, devices })
}

pub(super) fn token(r: TokenRecord) -> Token {
    Token {
        id: r.id,
        name: r.name,
        role: r.role,
        created_at: Timestamp::from_unix_ms(r.created_at),
        created_by: r.created_by,
        revoked_at: r.revoked_at.map(Timestamp::from_unix_ms),
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
    Ok(Rollout {
        artifact: TargetName::new(r.artifact.clone(), r.version.clone()),
        artifact_name: r.artifact,
        version: r.version,
        id: r.id,
        state: r.status.state,
        group: r.group,
        halt_after: r.plan.halt_after,
        failures_counted: r.status.failures_counted,
        device_timeout_ms: r.plan.device_timeout_ms,
        probe: r.probe.kind.to_string(),
        probe_spec: r.probe,
        device_count: unsigned("rollout device count", r.device_count)?,
        abort_mode: r.abort_mode,
        created_at: Timestamp::from_unix_ms(r.created_at),
        created_by: r.created_by,
        updated_at: Timestamp::from_unix_ms(r.updated_at),
        counts,
        waves,
        in_progress: None,
        failures: None,
        warnings: Vec::new(),
    })
}
