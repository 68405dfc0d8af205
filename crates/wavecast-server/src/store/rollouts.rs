//! Rollouts in the database: creation, device transitions, operator commands, timeouts, and
//! the per-device assignment query.
//!
//! Every change to a rollout happens in one transaction holding the rollout row's lock
//! (`FOR UPDATE` on PostgreSQL, the write lock on SQLite): read status and counts, ask the
//! pure engine in `wavecast_core::rollout` what follows, apply its effects, write back. Two
//! replicas therefore never open a wave twice or lose a failure. Nothing here scans the fleet:
//! counts live in the rollout row, and a device's assignment is found through its own rows.
//!
//! Heartbeats are the one exception to the lock: they change no state, so each is a single
//! indexed update of the device's own row (when it was heard from, its latest progress). The
//! timeout sweep re-reads that row under the rollout's lock before it settles a device, so a
//! heartbeat or report that lands while the sweep runs always wins.
//!
//! Device reports come in batches ([`Store::apply_reports`]): every report about one rollout
//! that arrived while the previous batch committed, applied in one transaction, one after the
//! other in arrival order, exactly as they would be one transaction each.
//!
//! Lock order (PostgreSQL; SQLite has one writer at a time). Every transaction that changes a
//! rollout takes, in this order and never back: the rollout's row; then the report ids it
//! records (`device_reports`, by device and id); then the rows of the devices it moves
//! (`rollout_devices`, by device id); then the audit head, to append; then the rows of other
//! devices of the rollout a wave opening moves and the `devices` rows whose counters it bumps.
//! A batch takes all of its report ids and all of its devices' rows before its first audit
//! event, so a report late in a batch never waits for a row while the batch holds the audit
//! head. Removing a device (in `devices`) takes its report ids, then its rows, then the audit
//! head, then its `devices` row: the same order; revoking one takes the audit head, then its
//! `devices` row. Two transactions therefore never wait for each other in a circle, across any
//! number of replicas: one rollout per transaction, and a second one on the same rollout waits
//! for the first at the rollout's row, holding nothing.

use std::collections::{BTreeMap, BTreeSet};

use sqlx::{Any, Transaction};
use wavecast_core::assignment::{Action, Assignment, DeviceState};
use wavecast_core::audit::{Actor, AuditAction, NewAuditEvent};
use wavecast_core::probe::{MAX_PROBE_RESULT, ProbeSpec};
use wavecast_core::progress::{Progress, ProgressAck, Waiting};
use wavecast_core::rollout::{
    self, AbortMode, Command, Effect, GateApproval, GroupRollout, Plan, ReportRefused, RolloutState, Served, Standing,
    Status, Verdict, WaveCounts,
};
use wavecast_core::{ArtifactName, ArtifactVersion, DeviceName, GroupName};

use super::audit::append_audit;
use super::changes::RolloutDevices;
use super::row::{Row, read_all};
use super::{DeviceRef, Store, StoreError, changed, conflict_or, corrupt, placeholders, q};
use crate::checkin::Change;

/// A rollout to create.
#[derive(Debug, Clone)]
pub struct NewRollout {
    /// Id (`r-…`).
    pub id: String,
    /// Artifact name.
    pub artifact: ArtifactName,
    /// Artifact version.
    pub version: ArtifactVersion,
    /// Target group.
    pub group: GroupName,
    /// Waves, gates, halt rule, timeout.
    pub plan: Plan,
    /// The probe devices run.
    pub probe: ProbeSpec,
    /// Actor.
    pub created_by: String,
    /// Now (ms).
    pub now_ms: i64,
}

/// A stored rollout.
#[derive(Debug, Clone)]
pub struct RolloutRecord {
    /// Id.
    pub id: String,
    /// Artifact name.
    pub artifact: ArtifactName,
    /// Artifact version.
    pub version: ArtifactVersion,
    /// Group.
    pub group: GroupName,
    /// Plan.
    pub plan: Plan,
    /// Probe.
    pub probe: ProbeSpec,
    /// State, opened waves, counted failures.
    pub status: Status,
    /// Devices per state per wave.
    pub counts: Vec<WaveCounts>,
    /// Devices in the rollout.
    pub device_count: i64,
    /// How it was aborted, once aborted.
    pub abort_mode: Option<AbortMode>,
    /// Creation time (ms).
    pub created_at: i64,
    /// Creator.
    pub created_by: String,
    /// Last change (ms).
    pub updated_at: i64,
    /// When the rollout last (re)started serving devices (ms): see [`rollout::silence`].
    pub active_since: i64,
}

/// A working device's latest heartbeat, since its last state change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeartbeatRecord {
    /// When it arrived (ms).
    pub at: i64,
    /// Where the device said it was.
    pub state: DeviceState,
    /// Bytes it holds so far.
    pub bytes_done: u64,
    /// The artifact's length.
    pub bytes_total: u64,
    /// Its recent download rate.
    pub bytes_per_sec: u64,
    /// What it waits out, if anything.
    pub waiting: Option<Waiting>,
}

/// A device a rollout waits for, with what it last said.
#[derive(Debug, Clone)]
pub struct DeviceAtWorkRecord {
    /// The device.
    pub device: DeviceName,
    /// Wave (1-based).
    pub wave: i64,
    /// State.
    pub state: DeviceState,
    /// When it was last heard from, or its wave opened (ms).
    pub heard_at: i64,
    /// Its latest heartbeat.
    pub heartbeat: Option<HeartbeatRecord>,
}

/// The devices a rollout waits for: the first of them, and how many there are.
#[derive(Debug, Clone)]
pub struct AtWork {
    /// Every device in progress ([`DeviceState::IN_PROGRESS`]), from the rollout's counts.
    pub total: u64,
    /// The first [`AT_WORK_LISTED`] of them, by wave then rollout order.
    pub devices: Vec<DeviceAtWorkRecord>,
}

/// How many devices in progress `rollout show` lists.
pub const AT_WORK_LISTED: usize = 100;

/// A device that ended failed or timed out in a rollout.
#[derive(Debug, Clone)]
pub struct FailedDeviceRecord {
    /// The device.
    pub device: DeviceName,
    /// Wave (1-based).
    pub wave: i64,
    /// Failed or timed out.
    pub state: DeviceState,
    /// Why, as the device (or the device timeout) said: for a failed probe, its output's tail.
    pub reason: Option<String>,
    /// What its probe printed (a model check's report), if anything.
    pub probe_result: Option<serde_json::Value>,
    /// When it got there (ms).
    pub at: i64,
}

/// The devices of a rollout that ended failed or timed out: the first of them, and how many.
#[derive(Debug, Clone)]
pub struct Failures {
    /// Every one of them, from the rollout's counts.
    pub total: u64,
    /// The first [`FAILURES_LISTED`], by wave then rollout order.
    pub devices: Vec<FailedDeviceRecord>,
}

/// How many failed devices `rollout show` lists: a page, never the fleet.
pub const FAILURES_LISTED: usize = 20;

/// A device's row in a rollout.
#[derive(Debug, Clone)]
pub struct RolloutDeviceRecord {
    /// Rollout id.
    pub rollout_id: String,
    /// Artifact name.
    pub artifact: ArtifactName,
    /// Version.
    pub version: ArtifactVersion,
    /// Wave (1-based).
    pub wave: i64,
    /// State.
    pub state: DeviceState,
    /// Reason of the last failure or refusal.
    pub reason: Option<String>,
    /// Last change (ms).
    pub updated_at: i64,
    /// Its latest heartbeat, while it works on the update.
    pub heartbeat: Option<HeartbeatRecord>,
    /// What its probe printed (a model check's report), if anything.
    pub probe_result: Option<serde_json::Value>,
}

/// A device's row on a page of a rollout's devices.
#[derive(Debug, Clone)]
pub struct RolloutDevicePageRecord {
    /// The device.
    pub device: DeviceName,
    /// Wave (1-based).
    pub wave: i64,
    /// State.
    pub state: DeviceState,
    /// Why it failed or was refused, as the device said: for a failed probe, its output's tail.
    pub reason: Option<String>,
    /// Last change (ms).
    pub updated_at: i64,
    /// Its latest heartbeat, while it works on the update.
    pub heartbeat: Option<HeartbeatRecord>,
}

const ROLLOUT_COLUMNS: &str = "id, artifact_name, artifact_version, group_name, plan, probe, state, opened, failures_counted, \
     counts, device_count, abort_mode, created_at, created_by, updated_at, active_since";

/// The heartbeat columns of `rollout_devices` (aliased `rd`), read by [`heartbeat`].
const HEARTBEAT_COLUMNS: &str = "rd.progress_at, rd.progress_state, rd.bytes_done, rd.bytes_total, rd.bytes_per_sec, rd.waiting_class, rd.waiting_reason";

/// The heartbeat in [`HEARTBEAT_COLUMNS`] starting at column `at`, if there is one.
fn heartbeat(r: &Row<'_>, at: usize) -> Result<Option<HeartbeatRecord>, StoreError> {
    let Some(when) = r.get::<Option<i64>>(at)? else { return Ok(None) };
    let count = |i: usize, what: &str| -> Result<u64, StoreError> {
        u64::try_from(r.get::<Option<i64>>(at + i)?.unwrap_or(0)).map_err(corrupt(format!("heartbeat {what}")))
    };
    let waiting = match r.parse_opt(at + 5, "heartbeat wait class")? {
        Some(class) => Some(Waiting { class, reason: r.get::<Option<String>>(at + 6)?.unwrap_or_default() }),
        None => None,
    };
    Ok(Some(HeartbeatRecord {
        at: when,
        state: r.parse(at + 1, "heartbeat state")?,
        bytes_done: count(2, "bytes done")?,
        bytes_total: count(3, "bytes total")?,
        bytes_per_sec: count(4, "rate")?,
        waiting,
    }))
}

fn rollout(r: &Row<'_>) -> Result<RolloutRecord, StoreError> {
    Ok(RolloutRecord {
        id: r.get(0)?,
        artifact: r.parse(1, "rollout artifact")?,
        version: r.parse(2, "rollout version")?,
        group: r.parse(3, "rollout group")?,
        plan: r.json(4, "rollout plan")?,
        probe: r.json(5, "rollout probe")?,
        status: Status {
            state: r.parse(6, "rollout state")?,
            opened: r.get::<i64>(7)? as usize,
            failures_counted: r.get::<i64>(8)? as u32,
        },
        counts: r.json(9, "rollout counts")?,
        device_count: r.get(10)?,
        abort_mode: r.parse_opt(11, "rollout abort mode")?,
        created_at: r.get(12)?,
        created_by: r.get(13)?,
        updated_at: r.get(14)?,
        active_since: r.get(15)?,
    })
}

/// Where a rollout stands in the newest-first order rollouts are read in (`created_at DESC,
/// id`): a larger value is older.
type Newness = (std::cmp::Reverse<i64>, String);

/// The [`Newness`] of the rollout whose creation time is column `created` and id column `id`.
fn newness(r: &Row<'_>, created: usize, id: usize) -> Result<Newness, StoreError> {
    Ok((std::cmp::Reverse(r.get(created)?), r.get(id)?))
}

/// A rollout's state, abort mode and version, from column `at` on, as the group's version is
/// chosen from them ([`rollout::group_version`]).
fn group_rollout(r: &Row<'_>, at: usize) -> Result<GroupRollout<ArtifactVersion>, StoreError> {
    Ok(GroupRollout {
        state: r.parse(at, "rollout state")?,
        abort: r.parse_opt(at + 1, "rollout abort mode")?,
        version: r.parse(at + 2, "rollout version")?,
    })
}

fn active_key(group: &GroupName, artifact: &ArtifactName) -> String {
    format!("{group}/{artifact}")
}

/// Why a rollout could not be created.
#[derive(Debug, thiserror::Error)]
pub enum CreateRolloutError {
    /// Storage failed, or the artifact or group does not exist.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Another rollout of the same artifact to the same group is still active.
    #[error("rollout {existing} of {artifact} to group {group} is still {state}; finish or abort it first")]
    AlreadyActive {
        /// The active rollout.
        existing: String,
        /// Its state.
        state: RolloutState,
        /// Artifact.
        artifact: ArtifactName,
        /// Group.
        group: GroupName,
    },
    /// The group has no devices.
    #[error("group {0} has no devices to roll out to")]
    EmptyGroup(GroupName),
    /// The artifact is built for hardware no device of the group has.
    #[error(
        "{artifact}@{version} is built for hardware {hw}, and none of the {devices} device(s) of group {group} is: \
         every device would refuse it",
        hw = fit.hardware,
        devices = fit.devices
    )]
    NoHardware {
        /// Artifact.
        artifact: ArtifactName,
        /// Version.
        version: ArtifactVersion,
        /// Group.
        group: GroupName,
        /// How the group's devices fit the artifact's hardware.
        fit: HardwareFit,
    },
}

/// How many of a group's devices have the hardware an artifact is built for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HardwareFit {
    /// The artifact's hardware.
    pub hardware: String,
    /// Devices with that hardware.
    pub matching: u64,
    /// Devices in the rollout.
    pub devices: u64,
}

/// Why a rollout id an operator gave names no single rollout.
#[derive(Debug, thiserror::Error)]
pub enum RolloutIdError {
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Not letters, digits and '-'.
    #[error("{0:?} is not a rollout id (like r-7f3a09c2, or any unique start of one)")]
    NotAnId(String),
    /// No rollout's id starts with it.
    #[error("no rollout has an id starting with {0:?} (`wavecast rollout list` shows them)")]
    Unknown(String),
    /// Several rollouts' ids start with it.
    #[error(
        "{given:?} is the start of more than one rollout id: {}{}; give more of it",
        candidates.iter().take(10).cloned().collect::<Vec<_>>().join(", "),
        if candidates.len() > 10 { ", …" } else { "" }
    )]
    Ambiguous {
        /// What was given.
        given: String,
        /// The ids it starts (at most 11 read).
        candidates: Vec<String>,
    },
}

/// What became of one device report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReportOutcome {
    /// It changed the device's state (and whatever the engine said follows).
    Applied,
    /// Its id was applied before: nothing more happens.
    Repeated,
    /// A move the device may make, but out of date: nothing changes (its id is kept, so it is
    /// not looked at again).
    Stale,
    /// A claim the device may not make: nothing changes, its id is not kept.
    Refused(ReportRefused),
}

/// Reports one device sent about one rollout, in the order it sent them: its part of a batch
/// ([`Store::apply_reports`]).
#[derive(Debug, Clone)]
pub struct DeviceReports {
    /// The device.
    pub device: DeviceRef,
    /// Its group (a device that joined later joins the group's version through a report).
    pub group: GroupName,
    /// Its reports, each about the batch's rollout.
    pub reports: Vec<wavecast_core::assignment::Report>,
    /// When they arrived (ms).
    pub now_ms: i64,
}

/// A report id a batch has seen: whether it is recorded now (in the batch's transaction), and
/// whether the batch inserted it.
#[derive(Debug, Clone, Copy)]
struct SeenId {
    recorded: bool,
    inserted: bool,
}

/// Why an operator command was refused.
#[derive(Debug, thiserror::Error)]
pub enum RolloutCommandError {
    /// Storage failed or no such rollout.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The engine refused it.
    #[error(transparent)]
    Refused(#[from] rollout::CommandError),
    /// The approver created the rollout and policy forbids that.
    #[error("{0} created this rollout and may not approve its gates (the server requires a distinct approver)")]
    SameApprover(String),
}

/// What a device is served now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceAssignments {
    /// The device's assignment counter.
    pub counter: i64,
    /// What it should run, per artifact.
    pub assignments: Vec<Assignment>,
    /// Whether something is happening for it (see [`wavecast_core::pacing::busy`]).
    pub busy: bool,
}

impl Store {
    /// Creates a rollout over the group's current devices and opens what its plan allows.
    /// Returns it, and how the devices fit the artifact's hardware when only some of them do.
    pub async fn create_rollout(
        &self,
        new: &NewRollout,
    ) -> Result<(RolloutRecord, Option<HardwareFit>), CreateRolloutError> {
        let op = "creating a rollout";
        let mut tx = self.begin(op).await?;
        let key = active_key(&new.group, &new.artifact);
        if let Some(row) = sqlx::query("SELECT id, state FROM rollouts WHERE active_key = $1")
            .bind(&key)
            .fetch_optional(&mut *tx)
            .await
            .map_err(q(op))?
        {
            let row = Row::new(&row, op);
            return Err(CreateRolloutError::AlreadyActive {
                existing: row.get(0)?,
                state: row.parse(1, "rollout state")?,
                artifact: new.artifact.clone(),
                group: new.group.clone(),
            });
        }
        let Some(artifact) = sqlx::query("SELECT hardware FROM artifacts WHERE name = $1 AND version = $2")
            .bind(new.artifact.as_str())
            .bind(new.version.to_string())
            .fetch_optional(&mut *tx)
            .await
            .map_err(q(op))?
        else {
            return Err(StoreError::NotFound { what: format!("artifact {}@{}", new.artifact, new.version) }.into());
        };
        let hardware: Option<String> = Row::new(&artifact, op).get(0)?;
        // Shared with other creations, exclusive of a device's revocation (see `devices`): the
        // devices read next are the group's active devices until this rollout commits.
        let group = sqlx::query(&format!("SELECT 1 FROM device_groups WHERE name = $1{}", self.for_share()))
            .bind(new.group.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(q(op))?;
        if group.is_none() {
            return Err(StoreError::NotFound { what: format!("group {}", new.group) }.into());
        }
        let rows = sqlx::query("SELECT id FROM devices WHERE group_name = $1 AND revoked_at IS NULL")
            .bind(new.group.as_str())
            .fetch_all(&mut *tx)
            .await
            .map_err(q(op))?;
        let ids: Vec<String> = read_all(&rows, op, |r| r.get(0))?;
        if ids.is_empty() {
            return Err(CreateRolloutError::EmptyGroup(new.group.clone()));
        }
        // Devices refuse an artifact built for other hardware: a rollout none of them can
        // install is refused here, and one only some can install says how many.
        let mut partial = None;
        if let Some(hardware) = hardware {
            let row = sqlx::query(
                "SELECT COUNT(*) FROM devices WHERE group_name = $1 AND revoked_at IS NULL AND hardware = $2",
            )
            .bind(new.group.as_str())
            .bind(&hardware)
            .fetch_one(&mut *tx)
            .await
            .map_err(q(op))?;
            let matching = u64::try_from(Row::new(&row, op).get::<i64>(0)?).map_err(corrupt("device count"))?;
            let fit = HardwareFit { hardware, matching, devices: ids.len() as u64 };
            if matching == 0 {
                return Err(CreateRolloutError::NoHardware {
                    artifact: new.artifact.clone(),
                    version: new.version.clone(),
                    group: new.group.clone(),
                    fit,
                });
            }
            if matching < fit.devices {
                partial = Some(fit);
            }
        }
        let order = rollout::device_order(&new.id, ids.iter().map(String::as_str));
        let bounds = rollout::wave_bounds(&new.plan, order.len());
        let mut counts = vec![WaveCounts::default(); new.plan.waves.len()];
        let placed: Vec<(&str, usize, usize)> = order
            .iter()
            .enumerate()
            .map(|(pos, id)| {
                let wave = rollout::wave_of(&bounds, pos);
                counts[wave].add(DeviceState::Pending, 1);
                (*id, pos, wave)
            })
            .collect();

        let plan_json = serde_json::to_string(&new.plan).map_err(corrupt("rollout plan"))?;
        let probe_json = serde_json::to_string(&new.probe).map_err(corrupt("rollout probe"))?;
        let status = Status::new();
        sqlx::query(
            "INSERT INTO rollouts (id, artifact_name, artifact_version, group_name, plan, probe, state, opened, failures_counted, \
             counts, device_count, active_key, created_at, created_by, updated_at, active_since) \
             VALUES ($1, $2, $3, $4, $5, $6, $11, $12, $13, '[]', $7, $8, $9, $10, $9, $9)",
        )
        .bind(&new.id)
        .bind(new.artifact.as_str())
        .bind(new.version.to_string())
        .bind(new.group.as_str())
        .bind(&plan_json)
        .bind(&probe_json)
        .bind(order.len() as i64)
        .bind(&key)
        .bind(new.now_ms)
        .bind(&new.created_by)
        .bind(status.state.as_str())
        .bind(status.opened as i64)
        .bind(i64::from(status.failures_counted))
        .execute(&mut *tx)
        .await
        .map_err(conflict_or(op, || format!("an active rollout of {} to group {}", new.artifact, new.group)))?;
        for chunk in placed.chunks(200) {
            // $1 the rollout, $2 the state every device starts in, then four per device.
            let mut sql = String::from(
                "INSERT INTO rollout_devices (rollout_id, device_id, position, wave, state, updated_at, heard_at) VALUES ",
            );
            for i in 0..chunk.len() {
                let b = i * 4;
                if i > 0 {
                    sql.push(',');
                }
                sql.push_str(&format!("($1, ${}, ${}, ${}, $2, ${}, ${})", b + 3, b + 4, b + 5, b + 6, b + 6));
            }
            let mut query = sqlx::query(&sql).bind(&new.id).bind(DeviceState::Pending.as_str());
            for (id, pos, wave) in chunk {
                query = query.bind(*id).bind(*pos as i64).bind(*wave as i64).bind(new.now_ms);
            }
            query.execute(&mut *tx).await.map_err(q(op))?;
        }
        let creator = Actor::Operator(new.created_by.clone());
        append_audit(
            &mut tx,
            new.now_ms,
            NewAuditEvent {
                actor: creator.clone(),
                action: AuditAction::RolloutCreated,
                subject: new.id.clone(),
                detail: serde_json::json!({
                    "artifact": format!("{}@{}", new.artifact, new.version),
                    "group": new.group,
                    "devices": order.len(),
                    "waves": new.plan.waves,
                    "halt_after": new.plan.halt_after,
                    "device_timeout_ms": new.plan.device_timeout_ms,
                    "probe": new.probe,
                }),
            },
        )
        .await?;
        let mut record = RolloutRecord {
            id: new.id.clone(),
            artifact: new.artifact.clone(),
            version: new.version.clone(),
            group: new.group.clone(),
            plan: new.plan.clone(),
            probe: new.probe.clone(),
            status,
            counts,
            device_count: order.len() as i64,
            abort_mode: None,
            created_at: new.now_ms,
            created_by: new.created_by.clone(),
            updated_at: new.now_ms,
            active_since: new.now_ms,
        };
        let effects = rollout::advance(&record.plan, &mut record.status, &record.counts);
        self.apply(&mut tx, &mut record, &effects, &creator, new.now_ms).await?;
        // No group-wide change: a new rollout serves nothing to a device until its wave opens
        // (the opening writes an event per device), so creating one wakes no held check-in.
        self.commit(tx, op).await?;
        Ok((record, partial))
    }

    /// Applies engine effects inside `tx` and writes the rollout row back. `cause` is who made
    /// the change the effects follow from.
    async fn apply(
        &self,
        tx: &mut Transaction<'static, Any>,
        r: &mut RolloutRecord,
        effects: &[Effect],
        cause: &Actor,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let op = "updating a rollout";
        for effect in effects {
            let (action, detail) = match *effect {
                Effect::OpenWave { index } => {
                    // The device's silence clock starts now: it cannot have picked up an
                    // assignment that did not exist.
                    let assign = sqlx::query(
                        "UPDATE rollout_devices SET state = $4, assigned_at = $3, updated_at = $3, heard_at = $3 \
                         WHERE rollout_id = $1 AND wave = $2 AND state = $5",
                    )
                    .bind(&r.id)
                    .bind(index as i64)
                    .bind(now_ms)
                    .bind(DeviceState::Assigned.as_str())
                    .bind(DeviceState::Pending.as_str());
                    let opened = changed(tx, assign, op).await?;
                    if let Some(c) = r.counts.get_mut(index) {
                        let pending = c.get(DeviceState::Pending).min(opened);
                        c.by_state[rollout::state_index(DeviceState::Pending)] -= pending;
                        c.add(DeviceState::Assigned, pending);
                    }
                    sqlx::query(
                        "UPDATE devices SET assignment_counter = assignment_counter + 1 WHERE id IN \
                         (SELECT device_id FROM rollout_devices WHERE rollout_id = $1 AND wave = $2)",
                    )
                    .bind(&r.id)
                    .bind(index as i64)
                    .execute(&mut **tx)
                    .await
                    .map_err(q(op))?;
                    // Exactly the wave's devices get a new doc: only they are woken.
                    let wave = RolloutDevices::Wave(index);
                    super::changes::record_rollout_devices(tx, self.backend, &r.id, wave, now_ms).await?;
                    let wave = r.plan.waves.get(index).copied();
                    (
                        AuditAction::WaveOpened,
                        serde_json::json!({ "wave": index + 1, "percent": wave.map(|w| w.percent), "devices": opened }),
                    )
                }
                Effect::AwaitApproval { index } => {
                    (AuditAction::RolloutWaitingApproval, serde_json::json!({ "wave": index + 1 }))
                }
                Effect::Paused { failures } => (
                    AuditAction::RolloutPaused,
                    serde_json::json!({ "failures_counted": failures, "halt_after": r.plan.halt_after }),
                ),
                Effect::Completed => (AuditAction::RolloutCompleted, serde_json::json!({})),
                Effect::Resumed { acknowledged } => {
                    (AuditAction::RolloutResumed, serde_json::json!({ "acknowledged_failures": acknowledged }))
                }
                Effect::Aborted { mode } => {
                    r.abort_mode = Some(mode);
                    (AuditAction::RolloutAborted, serde_json::json!({ "mode": mode }))
                }
                Effect::RevertUpdated => {
                    let states = rollout::REVERTED_BY_ABORT;
                    let sql = format!(
                        "UPDATE devices SET assignment_counter = assignment_counter + 1 WHERE id IN \
                         (SELECT device_id FROM rollout_devices WHERE rollout_id = $1 AND state IN ({}))",
                        placeholders(2, states.len())
                    );
                    let mut query = sqlx::query(&sql).bind(&r.id);
                    for state in states {
                        query = query.bind(state.as_str());
                    }
                    query.execute(&mut **tx).await.map_err(q(op))?;
                    continue;
                }
            };
            let actor = rollout::effect_actor(effect, cause);
            append_audit(tx, now_ms, NewAuditEvent { actor, action, subject: r.id.clone(), detail }).await?;
        }
        // What a device is served depends on the rollout's state (a paused rollout serves no
        // device that has not started; a completed one may become the group's version, and an
        // abort with revert may take the group's version back). When that changes, every
        // affected device's counter moves on, so its next check-in gets a new doc instead of a
        // 304 for the old one.
        let serving_changed = effects.iter().any(|e| {
            matches!(e, Effect::Paused { .. } | Effect::Resumed { .. } | Effect::Completed | Effect::Aborted { .. })
        });
        if serving_changed {
            let group_wide = effects.contains(&Effect::Completed) || effects.contains(&Effect::RevertUpdated);
            // Group-wide when the group's version may change; otherwise only the devices whose
            // doc changes (never a pending one), so the rest are not woken for nothing.
            let states = if group_wide { vec![] } else { rollout::served_changed(r.status.state, r.abort_mode) };
            let sql = if group_wide {
                "UPDATE devices SET assignment_counter = assignment_counter + 1 WHERE group_name = $2 \
                 OR id IN (SELECT device_id FROM rollout_devices WHERE rollout_id = $1)"
                    .to_owned()
            } else {
                format!(
                    "UPDATE devices SET assignment_counter = assignment_counter + 1 WHERE id IN \
                     (SELECT device_id FROM rollout_devices WHERE rollout_id = $1 AND state IN ({}))",
                    placeholders(2, states.len().max(1))
                )
            };
            let mut query = sqlx::query(&sql).bind(&r.id);
            if group_wide {
                query = query.bind(r.group.as_str());
            } else if states.is_empty() {
                query = query.bind("");
            }
            for state in &states {
                query = query.bind(state.as_str());
            }
            query.execute(&mut **tx).await.map_err(q(op))?;
            // The same devices (or the whole group) are told, in the same transaction.
            if group_wide {
                super::changes::record(tx, self.backend, &Change::Group(r.group.clone()), now_ms).await?;
            } else {
                let which = RolloutDevices::InStates(&states);
                super::changes::record_rollout_devices(tx, self.backend, &r.id, which, now_ms).await?;
            }
        }
        r.updated_at = now_ms;
        if effects.iter().any(rollout::restarts_clocks) {
            r.active_since = now_ms;
        }
        let counts = serde_json::to_string(&r.counts).map_err(corrupt("rollout counts"))?;
        let key = (!r.status.state.is_terminal()).then(|| active_key(&r.group, &r.artifact));
        sqlx::query(
            "UPDATE rollouts SET state = $2, opened = $3, failures_counted = $4, counts = $5, abort_mode = $6, \
             active_key = $7, updated_at = $8, active_since = $9 WHERE id = $1",
        )
        .bind(&r.id)
        .bind(r.status.state.as_str())
        .bind(r.status.opened as i64)
        .bind(i64::from(r.status.failures_counted))
        .bind(counts)
        .bind(r.abort_mode.map(|m| m.as_str()))
        .bind(key)
        .bind(now_ms)
        .bind(r.active_since)
        .execute(&mut **tx)
        .await
        .map_err(q(op))?;
        Ok(())
    }

    async fn lock_rollout(&self, tx: &mut Transaction<'static, Any>, id: &str) -> Result<RolloutRecord, StoreError> {
        let op = "locking a rollout";
        let sql = format!("SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE id = $1{}", self.for_update());
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&mut **tx)
            .await
            .map_err(q(op))?
            .ok_or_else(|| StoreError::NotFound { what: format!("rollout {id}") })?;
        rollout(&Row::new(&row, op))
    }

    /// Applies an operator command; `actor` is the operator's token name, and `approval` the
    /// server's policy on creators approving their own gates.
    pub async fn rollout_command(
        &self,
        id: &str,
        cmd: Command,
        actor: &str,
        approval: GateApproval,
        now_ms: i64,
    ) -> Result<RolloutRecord, RolloutCommandError> {
        let op = "changing a rollout";
        let mut tx = self.begin(op).await?;
        let mut r = self.lock_rollout(&mut tx, id).await?;
        if cmd == Command::Approve && !approval.permits(&r.created_by, actor) {
            return Err(RolloutCommandError::SameApprover(actor.to_owned()));
        }
        let wave = r.status.opened;
        let effects = rollout::command(&r.plan, &mut r.status, &r.counts, cmd)?;
        let operator = Actor::Operator(actor.to_owned());
        if cmd == Command::Approve {
            append_audit(
                &mut tx,
                now_ms,
                NewAuditEvent {
                    actor: operator.clone(),
                    action: AuditAction::RolloutApproved,
                    subject: r.id.clone(),
                    detail: serde_json::json!({ "wave": wave + 1 }),
                },
            )
            .await?;
        }
        self.apply(&mut tx, &mut r, &effects, &operator, now_ms).await?;
        self.commit(tx, op).await?;
        Ok(r)
    }

    /// Locks the rollout and reads the device's row in it: the rollout, the device's wave
    /// (0-based), state, and when it was last heard from. `None` when either does not exist.
    async fn lock_device(
        &self,
        tx: &mut Transaction<'static, Any>,
        rollout_id: &str,
        device: &DeviceRef,
    ) -> Result<Option<(RolloutRecord, usize, DeviceState, i64)>, StoreError> {
        let r = match self.lock_rollout(tx, rollout_id).await {
            Ok(r) => r,
            Err(StoreError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(self.device_row(tx, rollout_id, device).await?.map(|(wave, state, heard_at)| (r, wave, state, heard_at)))
    }

    /// The device's row in a rollout whose lock `tx` holds, locked too on PostgreSQL: its
    /// wave (0-based), state, and when it was last heard from.
    async fn device_row(
        &self,
        tx: &mut Transaction<'static, Any>,
        rollout_id: &str,
        device: &DeviceRef,
    ) -> Result<Option<(usize, DeviceState, i64)>, StoreError> {
        let op = "reading a device's place in a rollout";
        let sql = format!(
            "SELECT wave, state, heard_at FROM rollout_devices WHERE rollout_id = $1 AND device_id = $2{}",
            self.for_update()
        );
        let Some(row) =
            sqlx::query(&sql).bind(rollout_id).bind(&device.id).fetch_optional(&mut **tx).await.map_err(q(op))?
        else {
            return Ok(None);
        };
        let row = Row::new(&row, op);
        let wave = usize::try_from(row.get::<i64>(0)?).map_err(corrupt("device wave"))?;
        Ok(Some((wave, row.parse(1, "device state")?, row.get(2)?)))
    }

    /// Where `device` (of `group`) stands in rollout `r` (`None`: no such rollout), whose lock
    /// `tx` holds, with the device's wave and state when it has a row there (read under its
    /// row's lock too, on PostgreSQL).
    async fn standing_in(
        &self,
        tx: &mut Transaction<'static, Any>,
        r: Option<&RolloutRecord>,
        device: &DeviceRef,
        group: &GroupName,
    ) -> Result<(Standing, Option<(usize, DeviceState)>), StoreError> {
        let Some(r) = r else { return Ok((Standing::NoRollout, None)) };
        let Some((wave, from, _)) = self.device_row(tx, &r.id, device).await? else {
            // A device that joined its group later is served the group's version without a row
            // in it (see `assignments`); reporting about it, it joins.
            let group_version = r.group == *group && {
                let op = "finding a group's version";
                let rows = sqlx::query(
                    "SELECT id, state, abort_mode, artifact_version FROM rollouts \
                     WHERE group_name = $1 AND artifact_name = $2 ORDER BY created_at DESC, id",
                )
                .bind(group.as_str())
                .bind(r.artifact.as_str())
                .fetch_all(&mut **tx)
                .await
                .map_err(q(op))?;
                let history = read_all(&rows, op, |row| Ok((row.get::<String>(0)?, group_rollout(row, 1)?)))?;
                let rollouts: Vec<_> = history.iter().map(|(_, g)| g.clone()).collect();
                rollout::group_version(&rollouts).is_some_and(|i| history[i].0 == r.id)
            };
            return Ok((Standing::NotIn { group_version }, None));
        };
        Ok((Standing::In { device: from, abort: r.abort_mode }, Some((wave, from))))
    }

    /// Writes a device's move from `from` to `to` (checked by the caller, under the rollout's
    /// lock), audits it as what it is, and applies what the engine says follows. `cause` is
    /// who made the change (see [`rollout::transition_actor`]).
    #[allow(clippy::too_many_arguments)]
    async fn write_transition(
        &self,
        tx: &mut Transaction<'static, Any>,
        r: &mut RolloutRecord,
        device: &DeviceRef,
        wave: usize,
        from: DeviceState,
        to: DeviceState,
        reason: Option<&str>,
        cause: &Actor,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let op = "recording a device's progress";
        // A new state is news from the device (or the sweep's verdict); the heartbeat before it
        // described the old state, so it goes.
        sqlx::query(
            "UPDATE rollout_devices SET state = $3, reason = $4, updated_at = $5, heard_at = $5, progress_at = NULL, \
             progress_state = NULL, bytes_done = NULL, bytes_total = NULL, bytes_per_sec = NULL, waiting_class = NULL, \
             waiting_reason = NULL WHERE rollout_id = $1 AND device_id = $2",
        )
        .bind(&r.id)
        .bind(&device.id)
        .bind(to.as_str())
        .bind(reason.map(str::to_owned))
        .bind(now_ms)
        .execute(&mut **tx)
        .await
        .map_err(q(op))?;
        // The device's own doc follows its state.
        super::changes::record(tx, self.backend, &Change::Device(device.id.clone()), now_ms).await?;
        let actor = rollout::transition_actor(&device.name, to, cause);
        if let Some(action) = rollout::transition_audit(to) {
            append_audit(
                tx,
                now_ms,
                NewAuditEvent {
                    actor: actor.clone(),
                    action,
                    subject: device.name.to_string(),
                    detail: serde_json::json!({
                        "rollout": r.id,
                        "artifact": format!("{}@{}", r.artifact, r.version),
                        "from": from,
                        "reason": reason,
                    }),
                },
            )
            .await?;
        }
        let effects = rollout::device_changed(&r.plan, &mut r.status, &mut r.counts, wave, from, to);
        self.apply(tx, r, &effects, &actor, now_ms).await
    }

    /// Settles one device the sweep found silent, if it still is: the rollout and the
    /// device's row are read again under the rollout's lock (and the row's, on PostgreSQL), so
    /// a report, heartbeat, pause or resume that landed since the sweep looked wins.
    async fn settle_if_silent(&self, rollout_id: &str, device: &DeviceRef, now_ms: i64) -> Result<bool, StoreError> {
        let op = "settling a silent device";
        let mut tx = self.begin(op).await?;
        let Some((mut r, wave, from, heard_at)) = self.lock_device(&mut tx, rollout_id, device).await? else {
            return Ok(false);
        };
        let timeout = r.plan.device_timeout_ms;
        let Some((to, reason)) = rollout::silence(r.status.state, from, heard_at, r.active_since, now_ms, timeout)
        else {
            return Ok(false);
        };
        if !rollout::accepts_transition(from, to, r.abort_mode) {
            return Ok(false);
        }
        self.write_transition(&mut tx, &mut r, device, wave, from, to, Some(&reason), &Actor::System, now_ms).await?;
        self.commit(tx, op).await?;
        Ok(true)
    }

    /// Takes `device` out of every rollout that has not ended: its row moves to `removed`
    /// through the engine, attributed to `operator`, one rollout per transaction (each under
    /// that rollout's lock, as a report is). Returns the rollouts it left, by id. Rows already
    /// removed, and rollouts that ended meanwhile, are left as they are.
    pub(super) async fn remove_from_rollouts(
        &self,
        device: &DeviceRef,
        operator: &Actor,
        reason: &str,
        now_ms: i64,
    ) -> Result<Vec<String>, StoreError> {
        let op = "taking a device out of its rollouts";
        let rows = sqlx::query(
            "SELECT rd.rollout_id FROM rollout_devices rd JOIN rollouts r ON r.id = rd.rollout_id \
             WHERE rd.device_id = $1 AND r.active_key IS NOT NULL ORDER BY rd.rollout_id",
        )
        .bind(&device.id)
        .fetch_all(&self.pool)
        .await
        .map_err(q(op))?;
        let mut left = Vec::new();
        for id in read_all(&rows, op, |r| r.get::<String>(0))? {
            let mut tx = self.begin(op).await?;
            let Some((mut r, wave, from, _)) = self.lock_device(&mut tx, &id, device).await? else {
                continue;
            };
            let to = DeviceState::Removed;
            if r.status.state.is_terminal() || !rollout::accepts_transition(from, to, r.abort_mode) {
                continue;
            }
            self.write_transition(&mut tx, &mut r, device, wave, from, to, Some(reason), operator, now_ms).await?;
            self.commit(tx, op).await?;
            left.push(id);
        }
        Ok(left)
    }

    /// Applies one report of `device` (of `group`) exactly once: a batch of one (see
    /// [`Store::apply_reports`]).
    pub async fn apply_report(
        &self,
        device: &DeviceRef,
        group: &GroupName,
        report: &wavecast_core::assignment::Report,
        now_ms: i64,
    ) -> Result<ReportOutcome, StoreError> {
        let part =
            DeviceReports { device: device.clone(), group: group.clone(), reports: vec![report.clone()], now_ms };
        let mut outcomes = self.apply_reports(&report.rollout_id, std::slice::from_ref(&part)).await?;
        outcomes.pop().and_then(|mut o| o.pop()).ok_or_else(|| StoreError::Corrupt {
            what: "the outcome of a device report".into(),
            source: "a batch of one report answered nothing".into(),
        })
    }

    /// Applies a batch of reports about rollout `rollout_id` (every report in `parts` is about
    /// it) in one transaction: each part's reports in order, the parts in the order given, each
    /// report exactly once and as [`rollout::judge_report`] says, exactly as if each were its
    /// own transaction in that order. A report id is recorded in the transaction of its effect;
    /// a refused report changes nothing, not even the record of its id (nor, so, whether a
    /// later copy of it in the batch is a repeat). Returns each part's outcomes. When anything
    /// fails, nothing of the batch is applied.
    pub async fn apply_reports(
        &self,
        rollout_id: &str,
        parts: &[DeviceReports],
    ) -> Result<Vec<Vec<ReportOutcome>>, StoreError> {
        let op = "recording device reports";
        let mut tx = self.begin(op).await?;
        // The lock order of the module's doc: the rollout, the report ids, the devices' rows,
        // and only then (in `write_transition`) the audit head.
        let mut r = match self.lock_rollout(&mut tx, rollout_id).await {
            Ok(r) => Some(r),
            Err(StoreError::NotFound { .. }) => None,
            Err(e) => return Err(e),
        };
        let mut seen = self.record_report_ids(&mut tx, parts).await?;
        if r.is_some() && self.backend == super::Backend::Postgres {
            self.lock_device_rows(&mut tx, rollout_id, parts).await?;
        }
        let mut outcomes = Vec::with_capacity(parts.len());
        for part in parts {
            let mut mine = Vec::with_capacity(part.reports.len());
            for report in &part.reports {
                debug_assert_eq!(report.rollout_id, rollout_id);
                let key = (part.device.id.clone(), report.id.clone());
                let Some(id) = seen.get_mut(&key) else {
                    return Err(StoreError::Corrupt {
                        what: format!("report id {}", report.id),
                        source: "not recorded".into(),
                    });
                };
                if id.recorded {
                    mine.push(ReportOutcome::Repeated);
                    continue;
                }
                let outcome = self.apply_one(&mut tx, r.as_mut(), part, report).await?;
                id.recorded = !matches!(outcome, ReportOutcome::Refused(_));
                mine.push(outcome);
            }
            outcomes.push(mine);
        }
        // The ids of refused reports this batch inserted: not kept.
        for ((device_id, report_id), _) in seen.iter().filter(|(_, id)| id.inserted && !id.recorded) {
            sqlx::query("DELETE FROM device_reports WHERE device_id = $1 AND report_id = $2")
                .bind(device_id)
                .bind(report_id)
                .execute(&mut *tx)
                .await
                .map_err(q(op))?;
        }
        self.commit(tx, op).await?;
        Ok(outcomes)
    }

    /// Inserts every report id of `parts` not recorded yet, in one order (by device, then id)
    /// whoever inserts them. Returns, per id, whether it was recorded before (so its report is
    /// a repeat) or inserted now (and is judged).
    async fn record_report_ids(
        &self,
        tx: &mut Transaction<'static, Any>,
        parts: &[DeviceReports],
    ) -> Result<BTreeMap<(String, String), SeenId>, StoreError> {
        let op = "recording report ids";
        // Each id once, with when its first copy arrived.
        let mut ids: BTreeMap<(String, String), i64> = BTreeMap::new();
        for part in parts {
            for report in &part.reports {
                ids.entry((part.device.id.clone(), report.id.clone())).or_insert(part.now_ms);
            }
        }
        let mut inserted = BTreeSet::new();
        let all: Vec<_> = ids.iter().collect();
        for chunk in all.chunks(200) {
            let values: Vec<String> =
                (0..chunk.len()).map(|i| format!("(${}, ${}, ${})", 3 * i + 1, 3 * i + 2, 3 * i + 3)).collect();
            let sql = format!(
                "INSERT INTO device_reports (device_id, report_id, received_at) VALUES {} \
                 ON CONFLICT (device_id, report_id) DO NOTHING RETURNING device_id, report_id",
                values.join(", ")
            );
            let mut query = sqlx::query(&sql);
            for ((device_id, report_id), at) in chunk {
                query = query.bind(device_id.as_str()).bind(report_id.as_str()).bind(**at);
            }
            let rows = query.fetch_all(&mut **tx).await.map_err(q(op))?;
            inserted.extend(read_all(&rows, op, |row| Ok((row.get::<String>(0)?, row.get::<String>(1)?)))?);
        }
        Ok(ids
            .into_keys()
            .map(|key| {
                let fresh = inserted.contains(&key);
                (key, SeenId { recorded: !fresh, inserted: fresh })
            })
            .collect())
    }

    /// Locks the rows in rollout `rollout_id` of every device of `parts`, by device id, before
    /// the batch appends its first audit event (see the module's doc).
    async fn lock_device_rows(
        &self,
        tx: &mut Transaction<'static, Any>,
        rollout_id: &str,
        parts: &[DeviceReports],
    ) -> Result<(), StoreError> {
        let op = "locking devices' rows in a rollout";
        let devices: BTreeSet<&str> = parts.iter().map(|p| p.device.id.as_str()).collect();
        let devices: Vec<&str> = devices.into_iter().collect();
        for chunk in devices.chunks(500) {
            let sql = format!(
                "SELECT device_id FROM rollout_devices WHERE rollout_id = $1 AND device_id IN ({}) \
                 ORDER BY device_id{}",
                placeholders(2, chunk.len()),
                self.for_update()
            );
            let mut query = sqlx::query(&sql).bind(rollout_id);
            for id in chunk {
                query = query.bind(*id);
            }
            query.fetch_all(&mut **tx).await.map_err(q(op))?;
        }
        Ok(())
    }

    /// Judges and applies one report whose id is not recorded (it is, in `tx`) about rollout
    /// `r` (`None`: there is none), whose lock `tx` holds.
    async fn apply_one(
        &self,
        tx: &mut Transaction<'static, Any>,
        r: Option<&mut RolloutRecord>,
        part: &DeviceReports,
        report: &wavecast_core::assignment::Report,
    ) -> Result<ReportOutcome, StoreError> {
        let (device, now_ms) = (&part.device, part.now_ms);
        let (standing, row) = self.standing_in(tx, r.as_deref(), device, &part.group).await?;
        let verdict = match rollout::judge_report(standing, report.state) {
            Ok(verdict) => verdict,
            Err(refused) => return Ok(ReportOutcome::Refused(refused)),
        };
        let reason = report.reason.as_deref();
        let cause = Actor::Device(device.name.clone());
        let rollout_id = match (verdict, r, row) {
            (Verdict::Apply, Some(r), Some((wave, from))) => {
                self.write_transition(tx, r, device, wave, from, report.state, reason, &cause, now_ms).await?;
                r.id.clone()
            }
            // Every move a joiner may report is one from `assigned` (core's tests say so).
            (Verdict::Join, Some(r), None)
                if rollout::accepts_transition(DeviceState::Assigned, report.state, r.abort_mode) =>
            {
                let wave = self.join(tx, r, device, now_ms).await?;
                let from = DeviceState::Assigned;
                self.write_transition(tx, r, device, wave, from, report.state, reason, &cause, now_ms).await?;
                r.id.clone()
            }
            _ => return Ok(ReportOutcome::Stale),
        };
        // What the probe printed goes with the outcome; a result larger than an agent sends is
        // not kept (the outcome and its reason are).
        let result = report.probe_result.as_ref().map(serde_json::Value::to_string);
        if let Some(text) = result.filter(|t| t.len() <= 2 * MAX_PROBE_RESULT) {
            sqlx::query("UPDATE rollout_devices SET probe_result = $3 WHERE rollout_id = $1 AND device_id = $2")
                .bind(&rollout_id)
                .bind(&device.id)
                .bind(text)
                .execute(&mut **tx)
                .await
                .map_err(q("recording a device's probe result"))?;
        }
        Ok(ReportOutcome::Applied)
    }

    /// Forgets the ids of at most `limit` device reports received before `before_ms`, oldest
    /// first. Returns how many. Rows another transaction holds (a removal deleting them) are
    /// left for the next call rather than waited for, so this never waits in a circle.
    pub async fn forget_reports_before(&self, before_ms: i64, limit: u32) -> Result<u64, StoreError> {
        let op = "forgetting old report ids";
        let skip_locked = match self.backend {
            super::Backend::Sqlite => "",
            super::Backend::Postgres => " FOR UPDATE SKIP LOCKED",
        };
        let sql = format!(
            "DELETE FROM device_reports WHERE (device_id, report_id) IN (SELECT device_id, report_id \
             FROM device_reports WHERE received_at < $1 ORDER BY received_at LIMIT $2{skip_locked})"
        );
        let done = sqlx::query(&sql).bind(before_ms).bind(i64::from(limit)).execute(&self.pool).await.map_err(q(op))?;
        Ok(done.rows_affected())
    }

    /// Records a device that joined its group after rollout `r` was created, and reports about
    /// it as its group's version, in `r`: `assigned`, after the rollout's last device, in its
    /// last wave, counted there. Returns that wave (0-based).
    async fn join(
        &self,
        tx: &mut Transaction<'static, Any>,
        r: &mut RolloutRecord,
        device: &DeviceRef,
        now_ms: i64,
    ) -> Result<usize, StoreError> {
        let op = "recording a late joiner in its group's version";
        let wave = r.plan.waves.len().saturating_sub(1);
        sqlx::query(
            "INSERT INTO rollout_devices (rollout_id, device_id, position, wave, state, assigned_at, updated_at, heard_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $6, $6)",
        )
        .bind(&r.id)
        .bind(&device.id)
        .bind(r.device_count)
        .bind(wave as i64)
        .bind(DeviceState::Assigned.as_str())
        .bind(now_ms)
        .execute(&mut **tx)
        .await
        .map_err(q(op))?;
        r.device_count += 1;
        if let Some(c) = r.counts.get_mut(wave) {
            c.add(DeviceState::Assigned, 1);
        }
        sqlx::query("UPDATE rollouts SET device_count = $2 WHERE id = $1")
            .bind(&r.id)
            .bind(r.device_count)
            .execute(&mut **tx)
            .await
            .map_err(q(op))?;
        Ok(wave)
    }

    /// Records a working device's heartbeat (see [`wavecast_core::progress`]) and answers it.
    ///
    /// One indexed update of the device's own row, taking no rollout lock and writing no audit
    /// event: it restarts the device's silence clock and keeps its latest progress, and never
    /// changes its state. Rows of devices the rollout no longer waits for are left alone.
    pub async fn record_heartbeat(
        &self,
        device_id: &str,
        p: &Progress,
        now_ms: i64,
    ) -> Result<ProgressAck, StoreError> {
        let op = "recording a heartbeat";
        let waiting = p.waiting.as_ref();
        let stored = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        let states = DeviceState::IN_PROGRESS;
        let sql = format!(
            "UPDATE rollout_devices SET heard_at = $3, progress_at = $3, progress_state = $4, bytes_done = $5, \
             bytes_total = $6, bytes_per_sec = $7, waiting_class = $8, waiting_reason = $9 \
             WHERE rollout_id = $1 AND device_id = $2 AND state IN ({})",
            placeholders(10, states.len())
        );
        let mut query = sqlx::query(&sql)
            .bind(&p.rollout_id)
            .bind(device_id)
            .bind(now_ms)
            .bind(p.state.as_str())
            .bind(stored(p.bytes_done))
            .bind(stored(p.bytes_total))
            .bind(stored(p.bytes_per_sec))
            .bind(waiting.map(|w| w.class.as_str()))
            .bind(waiting.map(|w| w.kept_reason().to_owned()));
        for state in states {
            query = query.bind(state.as_str());
        }
        query.execute(&self.pool).await.map_err(q(op))?;
        let Some(row) = sqlx::query(
            "SELECT r.state, r.abort_mode, r.plan, rd.state FROM rollout_devices rd JOIN rollouts r ON r.id = rd.rollout_id \
             WHERE rd.rollout_id = $1 AND rd.device_id = $2",
        )
        .bind(&p.rollout_id)
        .bind(device_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(q(op))?
        else {
            return Ok(ProgressAck::NOT_ASSIGNED);
        };
        let r = Row::new(&row, op);
        let plan: Plan = r.json(2, "rollout plan")?;
        Ok(rollout::heartbeat_ack(
            r.parse(0, "rollout state")?,
            r.parse_opt(1, "rollout abort mode")?,
            r.parse(3, "device state")?,
            p.state,
            plan.device_timeout_ms,
        ))
    }

    /// Settles devices silent past the device timeout (see [`rollout::silence`]). Returns how
    /// many.
    pub async fn sweep_timeouts(&self, now_ms: i64) -> Result<usize, StoreError> {
        let op = "checking device timeouts";
        let rows = sqlx::query(&format!("SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE active_key IS NOT NULL"))
            .fetch_all(&self.pool)
            .await
            .map_err(q(op))?;
        let mut settled = 0;
        for r in read_all(&rows, op, rollout)? {
            let timeout = r.plan.device_timeout_ms;
            let states = rollout::awaited_states(r.status.state, r.active_since, now_ms, timeout);
            if states.is_empty() {
                continue;
            }
            // Heard from before the cutoff is necessary for silence in every state; `silence`
            // decides the rest, again, under the rollout's lock.
            let cutoff = now_ms.saturating_sub(i64::try_from(timeout).unwrap_or(i64::MAX));
            let sql = format!(
                "SELECT rd.device_id, d.name FROM rollout_devices rd JOIN devices d ON d.id = rd.device_id \
                 WHERE rd.rollout_id = $1 AND rd.heard_at < $2 AND rd.state IN ({}) LIMIT 1000",
                placeholders(3, states.len())
            );
            let mut query = sqlx::query(&sql).bind(&r.id).bind(cutoff);
            for state in &states {
                query = query.bind(state.as_str());
            }
            let stale = query.fetch_all(&self.pool).await.map_err(q(op))?;
            let stale = read_all(&stale, op, |s| Ok(DeviceRef { id: s.get(0)?, name: s.parse(1, "device name")? }))?;
            for device in stale {
                if self.settle_if_silent(&r.id, &device, now_ms).await? {
                    settled += 1;
                }
            }
        }
        Ok(settled)
    }

    /// How many devices of rollout `r` are in `states` (from the counts in its row), and the
    /// `columns` (of `rollout_devices rd` joined to `devices d`) of the first `limit` of them by
    /// wave then rollout order: this rollout's rows in those states only, through their index.
    async fn devices_in(
        &self,
        r: &RolloutRecord,
        states: &[DeviceState],
        columns: &str,
        limit: usize,
        op: &'static str,
    ) -> Result<(u64, Vec<sqlx::any::AnyRow>), StoreError> {
        let total = r.counts.iter().map(|c| states.iter().map(|s| c.get(*s)).sum::<u64>()).sum();
        if total == 0 {
            return Ok((0, Vec::new()));
        }
        let sql = format!(
            "SELECT {columns} FROM rollout_devices rd JOIN devices d ON d.id = rd.device_id \
             WHERE rd.rollout_id = $1 AND rd.state IN ({}) ORDER BY rd.wave, rd.position LIMIT {limit}",
            placeholders(2, states.len())
        );
        let mut query = sqlx::query(&sql).bind(&r.id);
        for state in states {
            query = query.bind(state.as_str());
        }
        Ok((total, query.fetch_all(&self.pool).await.map_err(q(op))?))
    }

    /// The devices rollout `r` waits for: how many, and the first [`AT_WORK_LISTED`] by wave and
    /// rollout order with what they last said. Reads only this rollout's rows in those states,
    /// through their index; the total comes from the counts in the rollout's row.
    pub async fn devices_at_work(&self, r: &RolloutRecord) -> Result<AtWork, StoreError> {
        let op = "listing a rollout's devices at work";
        let columns = format!("d.name, rd.wave, rd.state, rd.heard_at, {HEARTBEAT_COLUMNS}");
        let (total, rows) = self.devices_in(r, &DeviceState::IN_PROGRESS, &columns, AT_WORK_LISTED, op).await?;
        let devices = read_all(&rows, op, |row| {
            Ok(DeviceAtWorkRecord {
                device: row.parse(0, "device name")?,
                wave: row.get::<i64>(1)? + 1,
                state: row.parse(2, "device state")?,
                heard_at: row.get(3)?,
                heartbeat: heartbeat(row, 4)?,
            })
        })?;
        Ok(AtWork { total, devices })
    }

    /// The devices of rollout `r` that ended failed or timed out: how many, and the first
    /// [`FAILURES_LISTED`] by wave then rollout order, with why. Reads only this rollout's rows
    /// in those states, through their index; the total comes from the counts in its row.
    pub async fn failed_devices(&self, r: &RolloutRecord) -> Result<Failures, StoreError> {
        let op = "listing a rollout's failed devices";
        let states: Vec<DeviceState> = DeviceState::ALL.into_iter().filter(|s| s.is_failure()).collect();
        let columns = "d.name, rd.wave, rd.state, rd.reason, rd.updated_at, rd.probe_result";
        let (total, rows) = self.devices_in(r, &states, columns, FAILURES_LISTED, op).await?;
        let devices = read_all(&rows, op, |row| {
            Ok(FailedDeviceRecord {
                device: row.parse(0, "device name")?,
                wave: row.get::<i64>(1)? + 1,
                state: row.parse(2, "device state")?,
                reason: row.get(3)?,
                at: row.get(4)?,
                probe_result: probe_result(row, 5)?,
            })
        })?;
        Ok(Failures { total, devices })
    }

    /// One page of rollout `r`'s devices, in wave then rollout order, optionally only those in
    /// state `only`: how many there are (from the counts in the rollout's row), and the `limit`
    /// after the first `offset`, with their latest heartbeat and the reason of a failure. Reads
    /// that page's rows through an index, never the rollout's whole fleet (the dashboard's
    /// rollout page).
    pub async fn rollout_devices_page(
        &self,
        r: &RolloutRecord,
        only: Option<DeviceState>,
        offset: u64,
        limit: usize,
    ) -> Result<(u64, Vec<RolloutDevicePageRecord>), StoreError> {
        let op = "listing a page of a rollout's devices";
        let total = match only {
            Some(state) => r.counts.iter().map(|c| c.get(state)).sum(),
            None => r.device_count.max(0) as u64,
        };
        if total <= offset {
            return Ok((total, Vec::new()));
        }
        let state_filter = if only.is_some() { " AND state = $2" } else { "" };
        // The page is cut from this rollout's rows alone, in index order, before the join: joined
        // first, PostgreSQL hashes the whole devices table to sort the rollout's every row.
        let sql = format!(
            "SELECT d.name, rd.wave, rd.state, rd.reason, rd.updated_at, {HEARTBEAT_COLUMNS} \
             FROM (SELECT device_id, wave, position, state, reason, updated_at, progress_at, progress_state, \
                          bytes_done, bytes_total, bytes_per_sec, waiting_class, waiting_reason \
                   FROM rollout_devices WHERE rollout_id = $1{state_filter} \
                   ORDER BY wave, position LIMIT {limit} OFFSET {offset}) rd \
             JOIN devices d ON d.id = rd.device_id ORDER BY rd.wave, rd.position"
        );
        let mut query = sqlx::query(&sql).bind(&r.id);
        if let Some(state) = only {
            query = query.bind(state.as_str());
        }
        let rows = query.fetch_all(&self.pool).await.map_err(q(op))?;
        let devices = read_all(&rows, op, |row| {
            Ok(RolloutDevicePageRecord {
                device: row.parse(0, "device name")?,
                wave: row.get::<i64>(1)? + 1,
                state: row.parse(2, "device state")?,
                reason: row.get(3)?,
                updated_at: row.get(4)?,
                heartbeat: heartbeat(row, 5)?,
            })
        })?;
        Ok((total, devices))
    }

    /// The id of the one rollout whose id starts with `given` (`r-` may be left out, and the
    /// whole id is a prefix of itself): what an operator may type wherever an id is taken.
    pub async fn resolve_rollout_id(&self, given: &str) -> Result<String, RolloutIdError> {
        let op = "finding a rollout by id";
        let lower = given.to_ascii_lowercase();
        let prefix = if lower.starts_with("r-") { lower } else { format!("r-{lower}") };
        // Ids are letters, digits and '-', so the pattern holds no LIKE wildcard but the last.
        if given.is_empty() || prefix.len() > 64 || !prefix.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(RolloutIdError::NotAnId(given.to_owned()));
        }
        let rows = sqlx::query("SELECT id FROM rollouts WHERE id LIKE $1 ORDER BY id LIMIT 11")
            .bind(format!("{prefix}%"))
            .fetch_all(&self.pool)
            .await
            .map_err(q(op))?;
        let ids: Vec<String> = read_all(&rows, op, |r| r.get(0))?;
        match ids.as_slice() {
            [] => Err(RolloutIdError::Unknown(given.to_owned())),
            [one] => Ok(one.clone()),
            many if many.contains(&prefix) => Ok(prefix),
            many => Err(RolloutIdError::Ambiguous { given: given.to_owned(), candidates: many.to_vec() }),
        }
    }

    /// One rollout.
    pub async fn rollout(&self, id: &str) -> Result<Option<RolloutRecord>, StoreError> {
        let op = "reading a rollout";
        sqlx::query(&format!("SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(q(op))?
            .map(|r| rollout(&Row::new(&r, op)))
            .transpose()
    }

    /// All rollouts, newest first.
    pub async fn list_rollouts(&self) -> Result<Vec<RolloutRecord>, StoreError> {
        let op = "listing rollouts";
        let rows = sqlx::query(&format!("SELECT {ROLLOUT_COLUMNS} FROM rollouts ORDER BY created_at DESC, id"))
            .fetch_all(&self.pool)
            .await
            .map_err(q(op))?;
        read_all(&rows, op, rollout)
    }

    /// The newest `limit` rollouts, newest first.
    pub async fn recent_rollouts(&self, limit: i64) -> Result<Vec<RolloutRecord>, StoreError> {
        let op = "listing recent rollouts";
        let rows =
            sqlx::query(&format!("SELECT {ROLLOUT_COLUMNS} FROM rollouts ORDER BY created_at DESC, id LIMIT $1"))
                .bind(limit)
                .fetch_all(&self.pool)
                .await
                .map_err(q(op))?;
        read_all(&rows, op, rollout)
    }

    /// A device's rows in every rollout, newest first.
    pub async fn device_rollouts(&self, device_id: &str) -> Result<Vec<RolloutDeviceRecord>, StoreError> {
        let op = "reading a device's rollouts";
        let rows = sqlx::query(&format!(
            "SELECT rd.rollout_id, r.artifact_name, r.artifact_version, rd.wave, rd.state, rd.reason, rd.updated_at, \
                 {HEARTBEAT_COLUMNS}, rd.probe_result FROM rollout_devices rd JOIN rollouts r ON r.id = rd.rollout_id \
                 WHERE rd.device_id = $1 ORDER BY r.created_at DESC, r.id"
        ))
        .bind(device_id)
        .fetch_all(&self.pool)
        .await
        .map_err(q(op))?;
        read_all(&rows, op, |r| {
            Ok(RolloutDeviceRecord {
                rollout_id: r.get(0)?,
                artifact: r.parse(1, "rollout artifact")?,
                version: r.parse(2, "rollout version")?,
                wave: r.get::<i64>(3)? + 1,
                state: r.parse(4, "device state")?,
                reason: r.get(5)?,
                updated_at: r.get(6)?,
                heartbeat: heartbeat(r, 7)?,
                probe_result: probe_result(r, 14)?,
            })
        })
    }

    /// The device's assignment counter and what it should run, per artifact (see
    /// [`rollout::served`]). Reads only the device's own rows (indexed), never the fleet.
    pub async fn assignments(&self, device_id: &str, group: &GroupName) -> Result<DeviceAssignments, StoreError> {
        let op = "computing a device's assignments";
        // The device's counter comes with its rows (a round trip fewer for each device a wave
        // wakes), and on its own only when no rollout has included the device. It is read
        // before anything the doc holds: a change committed between these reads then moves a
        // counter the device has not seen yet, so it gets the change with a newer counter
        // rather than a doc that keeps an old content under a counter already spent.
        let rows = sqlx::query(
            "SELECT r.id, r.artifact_name, r.artifact_version, r.state, r.probe, r.abort_mode, rd.state, a.length, a.sha256, \
             r.created_at, (SELECT assignment_counter FROM devices WHERE id = $1) \
             FROM rollout_devices rd JOIN rollouts r ON r.id = rd.rollout_id \
             JOIN artifacts a ON a.name = r.artifact_name AND a.version = r.artifact_version \
             WHERE rd.device_id = $1 ORDER BY r.created_at DESC, r.id",
        )
        .bind(device_id)
        .fetch_all(&self.pool)
        .await
        .map_err(q(op))?;
        let counter: i64 = match rows.first() {
            Some(row) => Row::new(row, op).get::<Option<i64>>(10)?.unwrap_or(0),
            None => match sqlx::query("SELECT assignment_counter FROM devices WHERE id = $1")
                .bind(device_id)
                .fetch_optional(&self.pool)
                .await
                .map_err(q(op))?
            {
                Some(row) => Row::new(&row, op).get(0)?,
                None => 0,
            },
        };
        // The group's version of each artifact (see [`rollout::group_version`]): what a device
        // is served when no rollout of that artifact at least as new has reached it.
        let group_rows = sqlx::query(
            "SELECT r.id, r.artifact_name, r.artifact_version, r.probe, a.length, a.sha256, r.state, r.abort_mode, \
             r.artifact_version, r.created_at FROM rollouts r JOIN artifacts a ON a.name = r.artifact_name AND a.version = r.artifact_version \
             WHERE r.group_name = $1 ORDER BY r.created_at DESC, r.id",
        )
        .bind(group.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(q(op))?;
        let mut history: BTreeMap<ArtifactName, Vec<(usize, GroupRollout<ArtifactVersion>)>> = BTreeMap::new();
        for (i, row) in group_rows.iter().enumerate() {
            let r = Row::new(row, op);
            history.entry(r.parse(1, "rollout artifact")?).or_default().push((i, group_rollout(&r, 6)?));
        }
        // Per artifact: the group's version's row, and its place in the newest-first order.
        let mut group_version: BTreeMap<ArtifactName, (usize, Newness)> = BTreeMap::new();
        for (artifact, rollouts) in history {
            let versions: Vec<_> = rollouts.iter().map(|(_, g)| g.clone()).collect();
            if let Some(i) = rollout::group_version(&versions) {
                let at = rollouts[i].0;
                let r = Row::new(&group_rows[at], op);
                group_version.insert(artifact, (at, newness(&r, 9, 0)?));
            }
        }

        // (rollout, artifact, version, probe, length, sha256) → an assignment of `action`.
        let assignment = |r: &Row<'_>, action: Action, [id, version, probe, length, sha256]: [usize; 5]| {
            Ok::<_, StoreError>(Assignment {
                rollout_id: r.get(id)?,
                action,
                artifact: r.parse(1, "rollout artifact")?,
                version: r.parse(version, "rollout version")?,
                length: u64::try_from(r.get::<i64>(length)?).map_err(corrupt("artifact length"))?,
                sha256: r.parse(sha256, "artifact digest")?,
                probe: r.json(probe, "rollout probe")?,
            })
        };
        let group_assignment = |at: usize| assignment(&Row::new(&group_rows[at], op), Action::Install, [0, 2, 3, 4, 5]);
        // Newest rollout first: the first one that reached the device decides for its artifact,
        // unless the group's version is newer than it.
        let mut decided = BTreeSet::new();
        let mut out = Vec::new();
        let mut busy = false;
        for row in &rows {
            let r = Row::new(row, op);
            busy |= wavecast_core::pacing::busy(r.parse(3, "rollout state")?, r.parse(6, "device state")?);
            let artifact: ArtifactName = r.parse(1, "rollout artifact")?;
            if decided.contains(&artifact) {
                continue;
            }
            if let Some((at, newest)) = group_version.get(&artifact)
                && newness(&r, 9, 0)? > *newest
            {
                decided.insert(artifact);
                out.push(group_assignment(*at)?);
                continue;
            }
            let served = rollout::served(
                r.parse(3, "rollout state")?,
                r.parse(6, "device state")?,
                r.parse_opt(5, "rollout abort mode")?,
            );
            match served {
                Served::NotReached => {}
                Served::Nothing => {
                    decided.insert(artifact);
                }
                Served::Assigned(action) => {
                    decided.insert(artifact);
                    out.push(assignment(&r, action, [0, 2, 4, 7, 8])?);
                }
            }
        }
        // Artifacts no rollout has decided for this device yet: the group's version (a device
        // that joined later, or whose wave of a newer rollout has not opened).
        for (artifact, (at, _)) in &group_version {
            if !decided.contains(artifact) {
                out.push(group_assignment(*at)?);
            }
        }
        Ok(DeviceAssignments { counter, assignments: out, busy })
    }
}

/// A stored probe result: JSON text, or null. Text that no longer parses is left out rather
/// than failing the whole read: it is what a device said, shown for people.
fn probe_result(r: &Row<'_>, i: usize) -> Result<Option<serde_json::Value>, StoreError> {
    Ok(r.get::<Option<String>>(i)?.and_then(|t| serde_json::from_str(&t).ok()))
}
