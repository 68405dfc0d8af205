//! Rollouts: the plan an operator sends, and the plan with live counts the server answers.

use serde::{Deserialize, Serialize};

use crate::Timestamp;
use wavecast_core::assignment::DeviceState;
use wavecast_core::probe::ProbeSpec;
use wavecast_core::progress::Waiting;
use wavecast_core::rollout::{AbortMode, Gate, RolloutState};
use wavecast_core::{ArtifactName, ArtifactVersion, DeviceName, GroupName, TargetName};

/// `POST /rollouts`. Values the server validates travel as plain strings and numbers, so a bad
/// one is refused with the server's own message; absent options take the server's defaults.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", schema(example = json!({"artifact": "yolo-v8n@2.1.0", "group": "plant-7", "waves": [10, 50, 100], "gates": [1], "halt_after": 1, "probe": "exec:check-model"})))]
pub struct CreateRollout {
    /// `NAME@VERSION`.
    #[cfg_attr(feature = "openapi", schema(value_type = TargetName))]
    pub artifact: String,
    /// The device group.
    #[cfg_attr(feature = "openapi", schema(value_type = GroupName))]
    pub group: String,
    /// Cumulative wave percentages; the last is 100.
    #[cfg_attr(feature = "openapi", schema(min_items = 1, max_items = 100))]
    pub waves: Vec<u8>,
    /// 1-based waves that wait for approval.
    #[serde(default)]
    pub gates: Vec<usize>,
    /// Pause after this many failed devices since the last acknowledgement.
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub halt_after: Option<u32>,
    /// How long a device may take to pick up and finish its assignment.
    pub device_timeout_ms: Option<u64>,
    /// The probe as an operator writes it (`exec:NAME`, `https://…`, `file:NAME`).
    pub probe: String,
    /// Timeout of one probe attempt.
    pub probe_timeout_ms: Option<u64>,
    /// Probe attempts; healthy if any passes.
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 100))]
    pub probe_attempts: Option<u32>,
    /// Pause between probe attempts.
    pub probe_interval_ms: Option<u64>,
    /// Pause before the first probe attempt.
    pub probe_initial_delay_ms: Option<u64>,
}

/// `POST /rollouts/{id}/resume`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", schema(example = json!({"ack": true})))]
pub struct ResumeRequest {
    /// Acknowledges the failures counted so far; the server refuses `false`.
    pub ack: bool,
}

/// `POST /rollouts/{id}/abort`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", schema(example = json!({"mode": "revert"})))]
pub struct AbortRequest {
    /// What happens to devices the rollout already updated.
    pub mode: AbortMode,
}

/// A rollout's plan and live counts, as every rollout endpoint answers.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    /// Id, like `r-7f3a09c2`.
    pub id: String,
    /// Where the rollout is.
    pub state: RolloutState,
    /// `NAME@VERSION`.
    pub artifact: TargetName,
    /// The artifact's name alone.
    pub artifact_name: ArtifactName,
    /// The version alone.
    pub version: ArtifactVersion,
    /// The device group.
    pub group: GroupName,
    /// Pause after this many failed devices since the last acknowledgement.
    pub halt_after: u32,
    /// Failures counted since the last acknowledgement.
    pub failures_counted: u32,
    /// How long a device may take.
    pub device_timeout_ms: u64,
    /// The probe as the operator wrote it.
    pub probe: String,
    /// The probe with its timing, as devices receive it.
    pub probe_spec: ProbeSpec,
    /// Devices in the rollout.
    pub device_count: u64,
    /// How it was aborted; `null` unless it was.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub abort_mode: Option<AbortMode>,
    /// Creation time.
    pub created_at: Timestamp,
    /// The token name that created it.
    pub created_by: String,
    /// Last change.
    pub updated_at: Timestamp,
    /// Devices per state over every wave.
    pub counts: StateCounts,
    /// The waves, in order.
    pub waves: Vec<Wave>,
    /// The devices the rollout waits for, with their progress: only in `GET /rollouts/{id}`
    /// (absent from lists and from the answers to commands).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub in_progress: Option<InProgress>,
    /// The devices that ended failed or timed out, with why: only in `GET /rollouts/{id}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub failures: Option<Failures>,
    /// What the operator should know about a rollout just created (like devices whose hardware
    /// does not fit the artifact): only in the answer to `POST /rollouts`, when there is any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// The devices of a rollout that ended failed or timed out.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failures {
    /// How many there are.
    pub total: u64,
    /// The first of them (at most 20), by wave then rollout order.
    #[cfg_attr(feature = "openapi", schema(max_items = 20))]
    pub devices: Vec<DeviceFailure>,
}

/// A device that ended failed or timed out.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceFailure {
    /// The device.
    pub device: DeviceName,
    /// Its wave, 1-based.
    pub wave: u64,
    /// `failed` or `timed_out`.
    pub state: DeviceState,
    /// Why, as the device said (a failed probe's reason ends with the tail of its output) or,
    /// for a timeout, what the server waited for; `null` if nothing was said.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub reason: Option<String>,
    /// When it got there.
    pub at: Timestamp,
    /// What its probe printed about this version when it was one JSON object (a model
    /// check's report: outcome, deviation from the golden outputs, latency and memory against
    /// budget); `null` otherwise.
    #[cfg_attr(feature = "openapi", schema(required = true, value_type = Option<Object>))]
    pub probe_result: Option<serde_json::Value>,
}

/// The devices a rollout waits for (picked up their assignment, no outcome yet).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InProgress {
    /// How many there are.
    pub total: u64,
    /// The first of them (at most 100), by wave then rollout order.
    #[cfg_attr(feature = "openapi", schema(max_items = 100))]
    pub devices: Vec<DeviceAtWork>,
}

/// A device a rollout waits for.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceAtWork {
    /// The device.
    pub device: DeviceName,
    /// Its wave, 1-based.
    pub wave: u64,
    /// Where it is, as its reports say.
    pub state: DeviceState,
    /// When the server last heard from it (a report or a heartbeat) or opened its wave: its
    /// silence counts from here while the rollout runs.
    pub last_heard_at: Timestamp,
    /// Its latest heartbeat since its last state change; `null` if none.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub progress: Option<DeviceProgress>,
}

/// A working device's latest heartbeat: how far it got, or what it waits out.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceProgress {
    /// When the server received it.
    pub at: Timestamp,
    /// Where the device said it was (the report of getting there may still be on its way).
    pub state: DeviceState,
    /// Bytes of the artifact it holds so far.
    pub bytes_done: u64,
    /// The artifact's signed length.
    pub bytes_total: u64,
    /// Its recent download rate, bytes per second.
    pub bytes_per_sec: u64,
    /// The transient problem it waits out; `null` while it makes progress.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub waiting: Option<Waiting>,
}

/// One wave of a rollout, with its devices' states.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wave {
    /// 1-based.
    pub number: usize,
    /// Cumulative percentage of the group.
    pub percent: u8,
    /// How it opens.
    pub gate: Gate,
    /// Where it is.
    pub state: WaveState,
    /// Devices the wave added.
    pub devices: u64,
    /// Those devices per state.
    pub counts: StateCounts,
}

/// Where a wave is.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WaveState {
    /// Not opened yet.
    Pending,
    /// Next to open, at a manual gate.
    WaitingApproval,
    /// Opened; some of its devices are not in an end state yet.
    Open,
    /// Opened, and every device is in an end state.
    Settled,
}

/// Devices per state; every state is present.
///
/// The fields are in alphabetical order because that is the order the server has always sent
/// them in (it used to build this object as a sorted map).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)] // each field is the count of devices in the `DeviceState` of its name
pub struct StateCounts {
    pub assigned: u64,
    pub downloading: u64,
    pub failed: u64,
    pub installing: u64,
    pub pending: u64,
    pub probing: u64,
    pub removed: u64,
    pub revert_skipped: u64,
    pub reverted: u64,
    pub succeeded: u64,
    pub timed_out: u64,
    pub unreachable: u64,
    pub verifying: u64,
}

impl StateCounts {
    /// Counts built from a function of the state.
    pub fn from_fn(count: impl Fn(DeviceState) -> u64) -> Self {
        let mut c = Self::default();
        for s in DeviceState::ALL {
            *c.get_mut(s) = count(s);
        }
        c
    }

    /// Devices in `state`.
    pub fn get(&self, state: DeviceState) -> u64 {
        let mut c = *self;
        *c.get_mut(state)
    }

    /// The devices in end states: those a wave no longer waits for.
    pub fn settled(&self) -> u64 {
        DeviceState::ALL.into_iter().filter(|s| s.is_final()).map(|s| self.get(s)).sum()
    }

    /// The devices between picking up their assignment and an end state.
    pub fn in_progress(&self) -> u64 {
        DeviceState::IN_PROGRESS.into_iter().map(|s| self.get(s)).sum()
    }

    // One exhaustive match, so a new device state cannot be forgotten here.
    fn get_mut(&mut self, state: DeviceState) -> &mut u64 {
        match state {
            DeviceState::Pending => &mut self.pending,
            DeviceState::Assigned => &mut self.assigned,
            DeviceState::Downloading => &mut self.downloading,
            DeviceState::Verifying => &mut self.verifying,
            DeviceState::Installing => &mut self.installing,
            DeviceState::Probing => &mut self.probing,
            DeviceState::Succeeded => &mut self.succeeded,
            DeviceState::Failed => &mut self.failed,
            DeviceState::TimedOut => &mut self.timed_out,
            DeviceState::Unreachable => &mut self.unreachable,
            DeviceState::Reverted => &mut self.reverted,
            DeviceState::RevertSkipped => &mut self.revert_skipped,
            DeviceState::Removed => &mut self.removed,
        }
    }
}
