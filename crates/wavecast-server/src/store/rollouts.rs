//! Rollouts in the database: creation, device transitions, operator commands, timeouts, and
//! the per-device assignment query.
//!
//! Every change to a rollout happens in one transaction holding the rollout row's lock
//! (`FOR UPDATE` on PostgreSQL, the write lock on SQLite): read status and counts, ask the
//! pure engine in `wavecast_core::rollout` what follows, apply its effects, write back. Two
//! replicas therefore never open a wave twice or lose a failure. Nothing here scans the fleet:
//! counts live in the rollout row, and a device's assignment is found through its own rows.

use sqlx::any::AnyRow;
use sqlx::{Any, Row as _, Transaction};
use wavecast_core::assignment::{Action, DeviceState};
use wavecast_core::DeviceName;
use wavecast_core::audit::{Actor, AuditAction, NewAuditEvent};
use wavecast_core::probe::ProbeSpec;
use wavecast_core::rollout::{self, Command, Effect, Plan, RolloutState, Status, WaveCounts};

use super::{Store, StoreError, append_audit, q};

/// A rollout to create.
#[derive(Debug, Clone)]
pub struct NewRollout {
    /// Id (`r-…`).
    pub id: String,
    /// Artifact name.
    pub artifact: String,
    /// Artifact version.
    pub version: String,
    /// Target group.
    pub group: String,
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
    pub artifact: String,
    /// Artifact version.
    pub version: String,
    /// Group.
    pub group: String,
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
    /// `keep` or `revert` once aborted.
    pub abort_mode: Option<String>,
    /// Creation time (ms).
    pub created_at: i64,
    /// Creator.
    pub created_by: String,
    /// Last change (ms).
    pub updated_at: i64,
}

/// A device's row in a rollout.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RolloutDeviceRecord {
    /// Rollout id.
    pub rollout_id: String,
    /// Artifact name.
    pub artifact: String,
    /// Version.
    pub version: String,
    /// Wave (1-based).
    pub wave: i64,
    /// State.
    pub state: DeviceState,
    /// Reason of the last failure or refusal.
    pub reason: Option<String>,
    /// Last change (ms).
    pub updated_at: i64,
}

/// One artifact assignment as stored (the API signs these).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAssignment {
    /// Rollout id.
    pub rollout_id: String,
    /// Install or revert.
    pub action: Action,
    /// Artifact name.
    pub artifact: String,
    /// Version.
    pub version: String,
    /// Length.
    pub length: i64,
    /// SHA-256 hex.
    pub sha256: String,
    /// Probe JSON.
    pub probe: ProbeSpec,
}

const ROLLOUT_COLUMNS: &str = "id, artifact_name, artifact_version, group_name, plan, probe, state, opened, failures_counted, \
     counts, device_count, abort_mode, created_at, created_by, updated_at";

fn corrupt(what: &'static str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt { what, detail: e.to_string() }
}

fn rollout_from_row(r: &AnyRow) -> Result<RolloutRecord, StoreError> {
    let e = q("reading a rollout");
    let text = |i: usize| r.try_get::<String, _>(i);
    let plan: Plan =
        serde_json::from_str(&text(4).map_err(q("reading a rollout"))?).map_err(|e| corrupt("rollout plan", e))?;
    let probe: ProbeSpec =
        serde_json::from_str(&text(5).map_err(q("reading a rollout"))?).map_err(|e| corrupt("rollout probe", e))?;
    let state: RolloutState =
        text(6).map_err(q("reading a rollout"))?.parse().map_err(|e| corrupt("rollout state", e))?;
    let counts: Vec<WaveCounts> =
        serde_json::from_str(&text(9).map_err(q("reading a rollout"))?).map_err(|e| corrupt("rollout counts", e))?;
    Ok(RolloutRecord {
        id: text(0).map_err(q("reading a rollout"))?,
        artifact: text(1).map_err(q("reading a rollout"))?,
        version: text(2).map_err(q("reading a rollout"))?,
        group: text(3).map_err(q("reading a rollout"))?,
        plan,
        probe,
        status: Status {
            state,
            opened: r.try_get::<i64, _>(7).map_err(q("reading a rollout"))? as usize,
            failures_counted: r.try_get::<i64, _>(8).map_err(q("reading a rollout"))? as u32,
        },
        counts,
        device_count: r.try_get(10).map_err(q("reading a rollout"))?,
        abort_mode: r.try_get(11).map_err(q("reading a rollout"))?,
        created_at: r.try_get(12).map_err(q("reading a rollout"))?,
        created_by: text(13).map_err(q("reading a rollout"))?,
        updated_at: r.try_get(14).map_err(e)?,
    })
}

fn active_key(group: &str, artifact: &str) -> String {
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
        state: String,
        /// Artifact.
        artifact: String,
        /// Group.
        group: String,
    },
    /// The group has no devices.
    #[error("group {0} has no devices to roll out to")]
    EmptyGroup(String),
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

impl Store {
    /// Creates a rollout over the group's current devices and opens what its plan allows.
    pub async fn create_rollout(&self, new: &NewRollout) -> Result<RolloutRecord, CreateRolloutError> {
        let op = "creating a rollout";
        let mut tx = self.begin(op).await?;
        let key = active_key(&new.group, &new.artifact);
        if let Some(row) = sqlx::query("SELECT id, state FROM rollouts WHERE active_key = $1")
            .bind(&key)
            .fetch_optional(&mut *tx)
            .await
            .map_err(q(op))?
        {
            return Err(CreateRolloutError::AlreadyActive {
                existing: row.try_get(0).map_err(q(op))?,
                state: row.try_get(1).map_err(q(op))?,
                artifact: new.artifact.clone(),
                group: new.group.clone(),
            });
        }
        let artifact = sqlx::query("SELECT 1 FROM artifacts WHERE name = $1 AND version = $2")
            .bind(&new.artifact)
            .bind(&new.version)
            .fetch_optional(&mut *tx)
            .await
            .map_err(q(op))?;
        if artifact.is_none() {
            return Err(StoreError::NotFound { what: format!("artifact {}@{}", new.artifact, new.version) }.into());
        }
        let group = sqlx::query("SELECT 1 FROM device_groups WHERE name = $1")
            .bind(&new.group)
            .fetch_optional(&mut *tx)
            .await
            .map_err(q(op))?;
        if group.is_none() {
            return Err(StoreError::NotFound { what: format!("group {}", new.group) }.into());
        }
        let ids: Vec<String> = sqlx::query("SELECT id FROM devices WHERE group_name = $1")
            .bind(&new.group)
            .fetch_all(&mut *tx)
            .await
            .map_err(q(op))?
            .iter()
            .map(|r| r.try_get::<String, _>(0))
            .collect::<Result<_, _>>()
            .map_err(q(op))?;
        if ids.is_empty() {
            return Err(CreateRolloutError::EmptyGroup(new.group.clone()));
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

        let plan_json = serde_json::to_string(&new.plan).map_err(|e| corrupt("rollout plan", e))?;
        let probe_json = serde_json::to_string(&new.probe).map_err(|e| corrupt("rollout probe", e))?;
        sqlx::query(
            "INSERT INTO rollouts (id, artifact_name, artifact_version, group_name, plan, probe, state, opened, failures_counted, \
             counts, device_count, active_key, created_at, created_by, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, 'running', 0, 0, '[]', $7, $8, $9, $10, $9)",
        )
        .bind(&new.id)
        .bind(&new.artifact)
        .bind(&new.version)
        .bind(&new.group)
        .bind(&plan_json)
        .bind(&probe_json)
        .bind(order.len() as i64)
        .bind(&key)
        .bind(new.now_ms)
        .bind(&new.created_by)
        .execute(&mut *tx)
        .await
        .map_err(super::conflict_or(op, || format!("an active rollout of {} to group {}", new.artifact, new.group)))?;
        for chunk in placed.chunks(200) {
            let mut sql = String::from(
                "INSERT INTO rollout_devices (rollout_id, device_id, position, wave, state, updated_at) VALUES ",
            );
            for i in 0..chunk.len() {
                let b = i * 4;
                if i > 0 {
                    sql.push(',');
                }
                sql.push_str(&format!("($1, ${}, ${}, ${}, 'pending', ${})", b + 2, b + 3, b + 4, b + 5));
            }
            let mut query = sqlx::query(&sql).bind(&new.id);
            for (id, pos, wave) in chunk {
                query = query.bind(*id).bind(*pos as i64).bind(*wave as i64).bind(new.now_ms);
            }
            query.execute(&mut *tx).await.map_err(q(op))?;
        }
        append_audit(
            &mut tx,
            new.now_ms,
            NewAuditEvent {
                actor: Actor::Operator(new.created_by.clone()),
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
            status: Status::new(),
            counts,
            device_count: order.len() as i64,
            abort_mode: None,
            created_at: new.now_ms,
            created_by: new.created_by.clone(),
            updated_at: new.now_ms,
        };
        let effects = rollout::advance(&record.plan, &mut record.status, &record.counts);
        self.apply(&mut tx, &mut record, &effects, &Actor::Operator(new.created_by.clone()), new.now_ms).await?;
        tx.commit().await.map_err(q(op))?;
        Ok(record)
    }

    /// Applies engine effects inside `tx` and writes the rollout row back.
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
                    let opened = sqlx::query(
                        "UPDATE rollout_devices SET state = 'assigned', assigned_at = $3, updated_at = $3 \
                         WHERE rollout_id = $1 AND wave = $2 AND state = 'pending'",
                    )
                    .bind(&r.id)
                    .bind(index as i64)
                    .bind(now_ms)
                    .execute(&mut **tx)
                    .await
                    .map_err(q(op))?
                    .rows_affected();
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
                    r.abort_mode = Some(mode.as_str().to_owned());
                    (AuditAction::RolloutAborted, serde_json::json!({ "mode": mode }))
                }
                Effect::RevertUpdated => {
                    sqlx::query(
                        "UPDATE devices SET assignment_counter = assignment_counter + 1 WHERE id IN \
                         (SELECT device_id FROM rollout_devices WHERE rollout_id = $1 \
                          AND state IN ('succeeded', 'installing', 'probing', 'verifying', 'downloading'))",
                    )
                    .bind(&r.id)
                    .execute(&mut **tx)
                    .await
                    .map_err(q(op))?;
                    continue;
                }
            };
            let actor = rollout::effect_actor(effect, cause);
            append_audit(tx, now_ms, NewAuditEvent { actor, action, subject: r.id.clone(), detail }).await?;
        }
        // What a device is served depends on the rollout's state (a paused rollout serves no
        // device that has not started; a completed one serves the group). When that changes,
        // every affected device's counter moves on, so its next check-in gets a new doc
        // instead of a 304 for the old one.
        let serving_changed = effects.iter().any(|e| {
            matches!(e, Effect::Paused { .. } | Effect::Resumed { .. } | Effect::Completed | Effect::Aborted { .. })
        });
        if serving_changed {
            let sql = if effects.contains(&Effect::Completed) {
                "UPDATE devices SET assignment_counter = assignment_counter + 1 WHERE group_name = $2 \
                 OR id IN (SELECT device_id FROM rollout_devices WHERE rollout_id = $1)"
            } else {
                "UPDATE devices SET assignment_counter = assignment_counter + 1 WHERE id IN \
                 (SELECT device_id FROM rollout_devices WHERE rollout_id = $1) AND $2 = $2"
            };
            sqlx::query(sql).bind(&r.id).bind(&r.group).execute(&mut **tx).await.map_err(q(op))?;
        }
        r.updated_at = now_ms;
        let counts = serde_json::to_string(&r.counts).map_err(|e| corrupt("rollout counts", e))?;
        let key = (!r.status.state.is_terminal()).then(|| active_key(&r.group, &r.artifact));
        sqlx::query(
            "UPDATE rollouts SET state = $2, opened = $3, failures_counted = $4, counts = $5, abort_mode = $6, \
             active_key = $7, updated_at = $8 WHERE id = $1",
        )
        .bind(&r.id)
        .bind(r.status.state.as_str())
        .bind(r.status.opened as i64)
        .bind(r.status.failures_counted as i64)
        .bind(counts)
        .bind(r.abort_mode.clone())
        .bind(key)
        .bind(now_ms)
        .execute(&mut **tx)
        .await
        .map_err(q(op))?;
        Ok(())
    }

    async fn lock_rollout(&self, tx: &mut Transaction<'static, Any>, id: &str) -> Result<RolloutRecord, StoreError> {
        let sql = format!("SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE id = $1{}", self.for_update());
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&mut **tx)
            .await
            .map_err(q("locking a rollout"))?
            .ok_or_else(|| StoreError::NotFound { what: format!("rollout {id}") })?;
        rollout_from_row(&row)
    }

    /// Applies an operator command.
    pub async fn rollout_command(
        &self,
        id: &str,
        cmd: Command,
        actor: &str,
        require_distinct_approver: bool,
        now_ms: i64,
    ) -> Result<RolloutRecord, RolloutCommandError> {
        let op = "changing a rollout";
        let mut tx = self.begin(op).await?;
        let mut r = self.lock_rollout(&mut tx, id).await?;
        if cmd == Command::Approve && require_distinct_approver && r.created_by == actor {
            return Err(RolloutCommandError::SameApprover(actor.to_owned()));
        }
        let wave = r.status.opened;
        let effects = rollout::command(&r.plan, &mut r.status, &r.counts, cmd)?;
        if cmd == Command::Approve {
            append_audit(
                &mut tx,
                now_ms,
                NewAuditEvent {
                    actor: Actor::Operator(actor.to_owned()),
                    action: AuditAction::RolloutApproved,
                    subject: r.id.clone(),
                    detail: serde_json::json!({ "wave": wave + 1 }),
                },
            )
            .await?;
        }
        self.apply(&mut tx, &mut r, &effects, &Actor::Operator(actor.to_owned()), now_ms).await?;
        tx.commit().await.map_err(q(op))?;
        Ok(r)
    }

    /// Moves one device in one rollout to `to` if it is still in `expected` (when given) and
    /// the move is allowed; returns whether anything changed.
    pub async fn device_transition(
        &self,
        rollout_id: &str,
        device: &DeviceRef,
        expected: Option<DeviceState>,
        to: DeviceState,
        reason: Option<&str>,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let op = "recording a device's progress";
        let mut tx = self.begin(op).await?;
        let changed = self.transition_in(&mut tx, rollout_id, device, expected, to, reason, now_ms).await?;
        tx.commit().await.map_err(q(op))?;
        Ok(changed)
    }

    #[allow(clippy::too_many_arguments)]
    async fn transition_in(
        &self,
        tx: &mut Transaction<'static, Any>,
        rollout_id: &str,
        device: &DeviceRef,
        expected: Option<DeviceState>,
        to: DeviceState,
        reason: Option<&str>,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let op = "recording a device's progress";
        let mut r = match self.lock_rollout(tx, rollout_id).await {
            Ok(r) => r,
            Err(StoreError::NotFound { .. }) => return Ok(false),
            Err(e) => return Err(e),
        };
        let Some(row) = sqlx::query("SELECT wave, state FROM rollout_devices WHERE rollout_id = $1 AND device_id = $2")
            .bind(rollout_id)
            .bind(&device.id)
            .fetch_optional(&mut **tx)
            .await
            .map_err(q(op))?
        else {
            return Ok(false);
        };
        let wave: i64 = row.try_get(0).map_err(q(op))?;
        let from: DeviceState =
            row.try_get::<String, _>(1).map_err(q(op))?.parse().map_err(|e| corrupt("device state", e))?;
        if expected.is_some_and(|e| e != from) || !from.may_become(to) {
            return Ok(false);
        }
        if to == DeviceState::Reverted && r.abort_mode.as_deref() != Some("revert") {
            return Ok(false);
        }
        let device_name = DeviceName::new(device.name.clone()).map_err(|e| corrupt("device name", e))?;
        sqlx::query("UPDATE rollout_devices SET state = $3, reason = $4, updated_at = $5 WHERE rollout_id = $1 AND device_id = $2")
            .bind(rollout_id)
            .bind(&device.id)
            .bind(to.as_str())
            .bind(reason.map(str::to_owned))
            .bind(now_ms)
            .execute(&mut **tx)
            .await
            .map_err(q(op))?;
        let audit = match to {
            DeviceState::Succeeded => Some(AuditAction::DeviceUpdated),
            DeviceState::Failed => Some(AuditAction::DeviceFailed),
            DeviceState::Reverted => Some(AuditAction::DeviceReverted),
            DeviceState::TimedOut => Some(AuditAction::DeviceTimedOut),
            DeviceState::Unreachable => Some(AuditAction::DeviceUnreachable),
            _ => None,
        };
        if let Some(action) = audit {
            let actor = rollout::transition_actor(&device_name, to);
            append_audit(
                tx,
                now_ms,
                NewAuditEvent {
                    actor,
                    action,
                    subject: device.name.clone(),
                    detail: serde_json::json!({
                        "rollout": rollout_id,
                        "artifact": format!("{}@{}", r.artifact, r.version),
                        "from": from,
                        "reason": reason,
                    }),
                },
            )
            .await?;
        }
        let effects = rollout::device_changed(&r.plan, &mut r.status, &mut r.counts, wave as usize, from, to);
        self.apply(tx, &mut r, &effects, &rollout::transition_actor(&device_name, to), now_ms).await?;
        Ok(true)
    }

    /// Applies one device report exactly once: the report id is recorded in the same
    /// transaction as its effect. Returns false when the id was seen before.
    pub async fn apply_report(
        &self,
        device: &DeviceRef,
        report: &wavecast_core::assignment::Report,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let op = "recording a device report";
        let mut tx = self.begin(op).await?;
        let inserted = sqlx::query(
            "INSERT INTO device_reports (device_id, report_id, received_at) VALUES ($1, $2, $3) \
             ON CONFLICT (device_id, report_id) DO NOTHING",
        )
        .bind(&device.id)
        .bind(&report.id)
        .bind(now_ms)
        .execute(&mut *tx)
        .await
        .map_err(q(op))?
        .rows_affected();
        if inserted == 0 {
            return Ok(false);
        }
        self.transition_in(&mut tx, &report.rollout_id, device, None, report.state, report.reason.as_deref(), now_ms)
            .await?;
        tx.commit().await.map_err(q(op))?;
        Ok(true)
    }

    /// Records what a device runs now.
    pub async fn set_device_artifacts(
        &self,
        device_id: &str,
        active: &[wavecast_core::assignment::ActiveArtifact],
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let op = "recording a device's artifacts";
        let mut tx = self.begin(op).await?;
        for a in active {
            sqlx::query(
                "INSERT INTO device_artifacts (device_id, name, version, sha256, updated_at) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (device_id, name) DO UPDATE SET version = excluded.version, sha256 = excluded.sha256, \
                 updated_at = excluded.updated_at",
            )
            .bind(device_id)
            .bind(a.name.as_str())
            .bind(a.version.to_string())
            .bind(a.sha256.to_hex())
            .bind(now_ms)
            .execute(&mut *tx)
            .await
            .map_err(q(op))?;
        }
        tx.commit().await.map_err(q(op))
    }

    /// What a device last reported running.
    pub async fn device_artifacts(&self, device_id: &str) -> Result<Vec<(String, String, String)>, StoreError> {
        let rows = sqlx::query("SELECT name, version, sha256 FROM device_artifacts WHERE device_id = $1 ORDER BY name")
            .bind(device_id)
            .fetch_all(&self.pool)
            .await
            .map_err(q("reading a device's artifacts"))?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get(0).map_err(q("reading a device's artifacts"))?,
                    r.try_get(1).map_err(q("reading a device's artifacts"))?,
                    r.try_get(2).map_err(q("reading a device's artifacts"))?,
                ))
            })
            .collect()
    }

    /// Settles devices past the device timeout: never started → unreachable (only while the
    /// rollout still serves new devices), started but silent → timed out. Returns how many.
    pub async fn sweep_timeouts(&self, now_ms: i64) -> Result<usize, StoreError> {
        let op = "checking device timeouts";
        let rows = sqlx::query(&format!("SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE active_key IS NOT NULL"))
            .fetch_all(&self.pool)
            .await
            .map_err(q(op))?;
        let mut settled = 0;
        for row in &rows {
            let r = rollout_from_row(row)?;
            // The API takes any u64: a timeout past i64::MAX ms means never, not a wrapped
            // (negative) timeout that expires every device at once or an overflow panic.
            let timeout = i64::try_from(r.plan.device_timeout_ms).unwrap_or(i64::MAX);
            let cutoff = now_ms.saturating_sub(timeout);
            let mut states = vec!["downloading", "verifying", "installing", "probing"];
            if r.status.state.serves_new_devices() {
                states.push("assigned");
            }
            let list = states.iter().map(|s| format!("'{s}'")).collect::<Vec<_>>().join(", ");
            let stale = sqlx::query(&format!(
                "SELECT rd.device_id, d.name, rd.state FROM rollout_devices rd JOIN devices d ON d.id = rd.device_id \
                 WHERE rd.rollout_id = $1 AND rd.state IN ({list}) AND rd.updated_at < $2 LIMIT 1000"
            ))
            .bind(&r.id)
            .bind(cutoff)
            .fetch_all(&self.pool)
            .await
            .map_err(q(op))?;
            for s in &stale {
                let device = DeviceRef { id: s.try_get(0).map_err(q(op))?, name: s.try_get(1).map_err(q(op))? };
                let from: DeviceState =
                    s.try_get::<String, _>(2).map_err(q(op))?.parse().map_err(|e| corrupt("device state", e))?;
                let (to, reason) = if from == DeviceState::Assigned {
                    (
                        DeviceState::Unreachable,
                        format!("did not pick up its assignment within {} s", r.plan.device_timeout_ms / 1000),
                    )
                } else {
                    (
                        DeviceState::TimedOut,
                        format!(
                            "started but sent no outcome within {} s (last: {from})",
                            r.plan.device_timeout_ms / 1000
                        ),
                    )
                };
                if self.device_transition(&r.id, &device, Some(from), to, Some(&reason), now_ms).await? {
                    settled += 1;
                }
            }
        }
        Ok(settled)
    }

    /// One rollout.
    pub async fn rollout(&self, id: &str) -> Result<Option<RolloutRecord>, StoreError> {
        sqlx::query(&format!("SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(q("reading a rollout"))?
            .map(|r| rollout_from_row(&r))
            .transpose()
    }

    /// All rollouts, newest first.
    pub async fn list_rollouts(&self) -> Result<Vec<RolloutRecord>, StoreError> {
        let rows = sqlx::query(&format!("SELECT {ROLLOUT_COLUMNS} FROM rollouts ORDER BY created_at DESC, id"))
            .fetch_all(&self.pool)
            .await
            .map_err(q("listing rollouts"))?;
        rows.iter().map(rollout_from_row).collect()
    }

    /// A device's rows in every rollout, newest first.
    pub async fn device_rollouts(&self, device_id: &str) -> Result<Vec<RolloutDeviceRecord>, StoreError> {
        let op = "reading a device's rollouts";
        let rows = sqlx::query(
            "SELECT rd.rollout_id, r.artifact_name, r.artifact_version, rd.wave, rd.state, rd.reason, rd.updated_at \
             FROM rollout_devices rd JOIN rollouts r ON r.id = rd.rollout_id WHERE rd.device_id = $1 \
             ORDER BY r.created_at DESC, r.id",
        )
        .bind(device_id)
        .fetch_all(&self.pool)
        .await
        .map_err(q(op))?;
        rows.iter()
            .map(|r| {
                Ok(RolloutDeviceRecord {
                    rollout_id: r.try_get(0).map_err(q(op))?,
                    artifact: r.try_get(1).map_err(q(op))?,
                    version: r.try_get(2).map_err(q(op))?,
                    wave: r.try_get::<i64, _>(3).map_err(q(op))? + 1,
                    state: r.try_get::<String, _>(4).map_err(q(op))?.parse().map_err(|e| corrupt("device state", e))?,
                    reason: r.try_get(5).map_err(q(op))?,
                    updated_at: r.try_get(6).map_err(q(op))?,
                })
            })
            .collect()
    }

    /// The device's assignment counter and what it should run, per artifact. Reads only the
    /// device's own rows (indexed), never the fleet.
    pub async fn assignments(&self, device_id: &str, group: &str) -> Result<(i64, Vec<StoredAssignment>), StoreError> {
        let op = "computing a device's assignments";
        let counter: i64 = sqlx::query("SELECT assignment_counter FROM devices WHERE id = $1")
            .bind(device_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(q(op))?
            .map(|r| r.try_get(0))
            .transpose()
            .map_err(q(op))?
            .unwrap_or(0);
        let rows = sqlx::query(
            "SELECT r.id, r.artifact_name, r.artifact_version, r.state, r.probe, r.abort_mode, rd.state, a.length, a.sha256 \
             FROM rollout_devices rd JOIN rollouts r ON r.id = rd.rollout_id \
             JOIN artifacts a ON a.name = r.artifact_name AND a.version = r.artifact_version \
             WHERE rd.device_id = $1 ORDER BY r.created_at DESC, r.id",
        )
        .bind(device_id)
        .fetch_all(&self.pool)
        .await
        .map_err(q(op))?;
        let mut seen = std::collections::BTreeSet::new();
        let mut out = Vec::new();
        for row in &rows {
            let artifact: String = row.try_get(1).map_err(q(op))?;
            if seen.contains(&artifact) {
                continue;
            }
            let rollout_state: RolloutState =
                row.try_get::<String, _>(3).map_err(q(op))?.parse().map_err(|e| corrupt("rollout state", e))?;
            let device_state: DeviceState =
                row.try_get::<String, _>(6).map_err(q(op))?.parse().map_err(|e| corrupt("device state", e))?;
            let abort_mode: Option<String> = row.try_get(5).map_err(q(op))?;
            if device_state == DeviceState::Pending {
                // Its wave has not opened: an older rollout of this artifact may still apply.
                continue;
            }
            seen.insert(artifact.clone());
            let action = match rollout_state {
                RolloutState::Running | RolloutState::WaitingApproval | RolloutState::Completed => {
                    Some(Action::Install)
                }
                // Paused: devices that have started finish; none that has not starts.
                RolloutState::Paused => (device_state != DeviceState::Assigned
                    && device_state != DeviceState::Unreachable)
                    .then_some(Action::Install),
                RolloutState::Aborted => match abort_mode.as_deref() {
                    Some("revert")
                        if matches!(
                            device_state,
                            DeviceState::Succeeded
                                | DeviceState::Reverted
                                | DeviceState::Installing
                                | DeviceState::Probing
                                | DeviceState::Verifying
                                | DeviceState::Downloading
                        ) =>
                    {
                        Some(Action::Revert)
                    }
                    _ => None,
                },
            };
            if let Some(action) = action {
                out.push(StoredAssignment {
                    rollout_id: row.try_get(0).map_err(q(op))?,
                    action,
                    artifact,
                    version: row.try_get(2).map_err(q(op))?,
                    length: row.try_get(7).map_err(q(op))?,
                    sha256: row.try_get(8).map_err(q(op))?,
                    probe: serde_json::from_str(&row.try_get::<String, _>(4).map_err(q(op))?)
                        .map_err(|e| corrupt("rollout probe", e))?,
                });
            }
        }
        // Artifacts this device has no rollout row for: the group's version, i.e. the newest
        // completed rollout of each artifact to its group (devices that joined later).
        let group_rows = sqlx::query(
            "SELECT r.id, r.artifact_name, r.artifact_version, r.probe, a.length, a.sha256 FROM rollouts r \
             JOIN artifacts a ON a.name = r.artifact_name AND a.version = r.artifact_version \
             WHERE r.group_name = $1 AND r.state = 'completed' ORDER BY r.created_at DESC, r.id",
        )
        .bind(group)
        .fetch_all(&self.pool)
        .await
        .map_err(q(op))?;
        let mut has_row: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
        for row in &rows {
            has_row.insert(row.try_get(1).map_err(q(op))?);
        }
        for row in &group_rows {
            let artifact: String = row.try_get(1).map_err(q(op))?;
            if has_row.contains(&artifact) || seen.contains(&artifact) {
                continue;
            }
            seen.insert(artifact.clone());
            out.push(StoredAssignment {
                rollout_id: row.try_get(0).map_err(q(op))?,
                action: Action::Install,
                artifact,
                version: row.try_get(2).map_err(q(op))?,
                length: row.try_get(4).map_err(q(op))?,
                sha256: row.try_get(5).map_err(q(op))?,
                probe: serde_json::from_str(&row.try_get::<String, _>(3).map_err(q(op))?)
                    .map_err(|e| corrupt("rollout probe", e))?,
            });
        }
        Ok((counter, out))
    }
}

/// A device as the rollout code needs it.
#[derive(Debug, Clone)]
pub struct DeviceRef {
    /// Id.
    pub id: String,
    /// Name (for audit events).
    pub name: String,
}
