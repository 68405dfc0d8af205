//! The rollout engine: a pure state machine over waves, gates and the halt rule.
//!
//! The server keeps per-wave device counts and a small [`Status`]; after every change (a
//! device's state, an operator command, a timeout) it asks [`advance`] what follows. Nothing
//! here reads a clock or a database, so every rule of the brief is a table-driven test.
//!
//! Rules, as the brief states them:
//! - Waves are cumulative percentages over a stable device order; wave k holds the first
//!   `ceil(p_k × N)` devices ([`wave_bounds`], [`device_order`]).
//! - An automatic wave opens once every opened wave is settled and healthy; a manual one waits
//!   in `waiting_approval` for `approve`. "Healthy" means the failures counted since the last
//!   acknowledgement are below the halt threshold.
//! - When counted failures reach `halt_after`, the rollout pauses, gates included.
//! - `resume --ack` clears the count and continues; `abort` keeps or reverts.
//!
//! The rules that follow from a rollout's state live here too, so the server only stores and
//! applies them: what a device is served ([`served`]) and what a working device's heartbeat
//! is answered ([`heartbeat_ack`]), when a device has been silent too long and what it becomes
//! ([`silence`], [`awaited_states`], [`on_timeout`], [`restarts_clocks`]), which devices an
//! abort sends back ([`REVERTED_BY_ABORT`]), who may approve a gate ([`GateApproval`]), which
//! of a device's reports apply, are out of date, or are refused as claims it may not make
//! ([`judge_report`]), and what the audit log records and attributes to whom
//! ([`transition_audit`], [`effect_actor`], [`transition_actor`]).
//!
//! A device an operator revokes or removes leaves every rollout that has not ended as
//! `removed`: an end state that is no failure, so its wave settles without it.

use std::fmt;
use std::str::FromStr;

use crate::digest::Sha256Hasher;
use serde::{Deserialize, Serialize};

use crate::DeviceName;
use crate::assignment::{Action, DeviceState, Mover};
use crate::audit::{Actor, AuditAction};
use crate::progress::{ProgressAck, heartbeat_ms};

/// How a wave opens.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Gate {
    /// As soon as the earlier waves are settled and healthy.
    Auto,
    /// When an operator approves, after the earlier waves are settled and healthy.
    Manual,
}

/// One wave of a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wave {
    /// Cumulative percentage of the group, 1–100.
    pub percent: u8,
    /// How it opens.
    pub gate: Gate,
}

/// A rollout's plan, fixed at creation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// The waves, cumulative percentages strictly increasing, the last 100.
    pub waves: Vec<Wave>,
    /// Pause when this many failures are counted since the last acknowledgement (≥ 1).
    pub halt_after: u32,
    /// A device that does not pick up (or finish) its assignment within this is settled as
    /// unreachable (or counted as timed out), ms.
    pub device_timeout_ms: u64,
}

/// A plan that does not make sense.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// No waves.
    #[error("a rollout needs at least one wave (like --waves 10,50,100)")]
    NoWaves,
    /// Percentages not strictly increasing within 1..=100.
    #[error("wave percentages must be cumulative and strictly increasing between 1 and 100, got {0:?}")]
    Percents(Vec<u8>),
    /// The last wave is not 100%.
    #[error("the last wave must be 100% so the whole group is covered, got {0}%")]
    LastNotAll(u8),
    /// A gate on a wave that does not exist.
    #[error("--gate {gate} names no wave; waves are numbered 1 to {waves}")]
    Gate {
        /// The gate given.
        gate: usize,
        /// How many waves.
        waves: usize,
    },
    /// halt_after is zero.
    #[error("--halt-after must be at least 1")]
    HaltAfter,
}

impl Plan {
    /// Builds and checks a plan from `--waves`, `--gate`s and `--halt-after`.
    pub fn new(percents: &[u8], gates: &[usize], halt_after: u32, device_timeout_ms: u64) -> Result<Self, PlanError> {
        if percents.is_empty() {
            return Err(PlanError::NoWaves);
        }
        if percents.windows(2).any(|w| w[0] >= w[1]) || percents.iter().any(|p| *p == 0 || *p > 100) {
            return Err(PlanError::Percents(percents.to_vec()));
        }
        let last = percents[percents.len() - 1];
        if last != 100 {
            return Err(PlanError::LastNotAll(last));
        }
        if let Some(&gate) = gates.iter().find(|g| **g == 0 || **g > percents.len()) {
            return Err(PlanError::Gate { gate, waves: percents.len() });
        }
        if halt_after == 0 {
            return Err(PlanError::HaltAfter);
        }
        let waves = percents
            .iter()
            .enumerate()
            .map(|(i, &percent)| Wave {
                percent,
                gate: if gates.contains(&(i + 1)) { Gate::Manual } else { Gate::Auto },
            })
            .collect();
        Ok(Self { waves, halt_after, device_timeout_ms })
    }
}

/// Cumulative device counts per wave: wave k holds the first `ceil(p_k × n / 100)` devices.
pub fn wave_bounds(plan: &Plan, n: usize) -> Vec<usize> {
    plan.waves.iter().map(|w| (n * w.percent as usize).div_ceil(100)).collect()
}

/// Which wave (0-based) holds the device at `position` in the rollout's order.
pub fn wave_of(bounds: &[usize], position: usize) -> usize {
    bounds.iter().position(|&b| position < b).unwrap_or(bounds.len().saturating_sub(1))
}

/// The stable order of devices in a rollout: by SHA-256 of rollout id and device id.
pub fn device_order<'a>(rollout_id: &str, device_ids: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    let mut keyed: Vec<([u8; 32], &str)> = device_ids
        .into_iter()
        .map(|d| {
            let mut h = Sha256Hasher::new();
            h.update(rollout_id.as_bytes());
            h.update([0]);
            h.update(d.as_bytes());
            (*h.finish().as_bytes(), d)
        })
        .collect();
    keyed.sort();
    keyed.into_iter().map(|(_, d)| d).collect()
}

/// A rollout's state.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutState {
    /// Waves open as their gates allow.
    Running,
    /// The next wave has a manual gate and everything before it is settled and healthy.
    WaitingApproval,
    /// Halted by the halt rule; waits for `resume --ack` or `abort`.
    Paused,
    /// Every wave opened and settled, and no device of it ended failed or timed out.
    Completed,
    /// Every wave opened and settled, and some devices ended failed or timed out (the failures
    /// an operator acknowledged to get there): not a clean success, and never the group's
    /// version.
    CompletedWithFailures,
    /// Stopped by an operator.
    Aborted,
}

impl RolloutState {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutState::Running => "running",
            RolloutState::WaitingApproval => "waiting_approval",
            RolloutState::Paused => "paused",
            RolloutState::Completed => "completed",
            RolloutState::CompletedWithFailures => "completed_with_failures",
            RolloutState::Aborted => "aborted",
        }
    }

    /// Every state, in the order a rollout can reach them.
    pub const ALL: [RolloutState; 6] = [
        RolloutState::Running,
        RolloutState::WaitingApproval,
        RolloutState::Paused,
        RolloutState::Completed,
        RolloutState::CompletedWithFailures,
        RolloutState::Aborted,
    ];

    /// Completed (with failures or without) or aborted.
    pub fn is_terminal(self) -> bool {
        matches!(self, RolloutState::Completed | RolloutState::CompletedWithFailures | RolloutState::Aborted)
    }

    /// Completed, with failures or without: every wave opened and settled.
    pub fn is_completed(self) -> bool {
        matches!(self, RolloutState::Completed | RolloutState::CompletedWithFailures)
    }

    /// Whether devices whose wave is open may still receive the new version.
    pub fn serves_new_devices(self) -> bool {
        matches!(self, RolloutState::Running | RolloutState::WaitingApproval)
    }
}

impl fmt::Display for RolloutState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A rollout state name we do not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown rollout state {0:?}")]
pub struct RolloutStateError(pub String);

impl FromStr for RolloutState {
    type Err = RolloutStateError;
    fn from_str(s: &str) -> Result<Self, RolloutStateError> {
        RolloutState::ALL.into_iter().find(|r| r.as_str() == s).ok_or_else(|| RolloutStateError(s.to_owned()))
    }
}

/// How an aborted rollout leaves the devices it reached.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AbortMode {
    /// Devices keep whatever they run now.
    Keep,
    /// Devices that run the new version, or may have started to swap it in, go back to their
    /// previous version.
    Revert,
}

impl AbortMode {
    /// The lowercase name used on the wire and in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            AbortMode::Keep => "keep",
            AbortMode::Revert => "revert",
        }
    }
}

impl fmt::Display for AbortMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An abort mode name we do not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown abort mode {0:?}; expected keep or revert")]
pub struct AbortModeError(pub String);

impl FromStr for AbortMode {
    type Err = AbortModeError;
    fn from_str(s: &str) -> Result<Self, AbortModeError> {
        [AbortMode::Keep, AbortMode::Revert]
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| AbortModeError(s.to_owned()))
    }
}

/// Whether the operator who created a rollout may approve its manual gates. A server policy,
/// chosen explicitly when the server starts (`--require-distinct-approver`): there is no
/// default, so the permissive choice is never made by omission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateApproval {
    /// Any token allowed to approve gates may approve, the creator's included.
    AnyApprover,
    /// Only a token other than the one that created the rollout may approve (four eyes).
    DistinctApprover,
}

impl GateApproval {
    /// Whether `approver` may approve a gate of a rollout `creator` created (both token names).
    pub fn permits(self, creator: &str, approver: &str) -> bool {
        match self {
            GateApproval::AnyApprover => true,
            GateApproval::DistinctApprover => creator != approver,
        }
    }
}

/// What one rollout tells one of its devices about the rollout's artifact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// The device's wave has not opened: this rollout says nothing yet, and an older rollout
    /// of the same artifact still decides what the device runs.
    NotReached,
    /// This rollout decides, and the device has nothing to do.
    Nothing,
    /// This rollout decides: the device is assigned this action.
    Assigned(Action),
}

/// The devices an abort with revert sends back: those in flight (they may have swapped the
/// new version in already) and those that run it.
pub const REVERTED_BY_ABORT: [DeviceState; 5] = [
    DeviceState::Downloading,
    DeviceState::Verifying,
    DeviceState::Installing,
    DeviceState::Probing,
    DeviceState::Succeeded,
];

/// What a rollout in `rollout` state (aborted in `abort` mode, if aborted) serves a device in
/// `device` state.
///
/// A running, waiting or completed rollout serves its version to every device it reached. A
/// paused one lets devices past their download (verifying, installing, probing) finish, and
/// starts none: a download stops, to continue from its partial file once the rollout resumes.
/// An aborted one serves a revert to the devices an abort with revert sends back (and keeps
/// serving it to those that reverted, so their doc does not change under them); after an
/// abort that keeps, nothing. A device removed from the rollout is served nothing by it.
pub fn served(rollout: RolloutState, device: DeviceState, abort: Option<AbortMode>) -> Served {
    match device {
        DeviceState::Pending => return Served::NotReached,
        DeviceState::Removed => return Served::Nothing,
        _ => {}
    }
    let action = match rollout {
        RolloutState::Running
        | RolloutState::WaitingApproval
        | RolloutState::Completed
        | RolloutState::CompletedWithFailures => Some(Action::Install),
        RolloutState::Paused => {
            (!matches!(device, DeviceState::Assigned | DeviceState::Downloading | DeviceState::Unreachable))
                .then_some(Action::Install)
        }
        RolloutState::Aborted => (abort == Some(AbortMode::Revert)
            && (REVERTED_BY_ABORT.contains(&device)
                || matches!(device, DeviceState::Reverted | DeviceState::RevertSkipped)))
        .then_some(Action::Revert),
    };
    action.map_or(Served::Nothing, Served::Assigned)
}

/// The device states whose [`served`] answer differs between a rollout now in `now` state
/// (aborted in `abort` mode, if aborted) and the same rollout in any state it can have left
/// for it: the devices a pause, resume or abort gives a new doc (and a new assignment counter),
/// and no others, so a device whose doc does not change is not woken for nothing.
pub fn served_changed(now: RolloutState, abort: Option<AbortMode>) -> Vec<DeviceState> {
    let before = [RolloutState::Running, RolloutState::WaitingApproval, RolloutState::Paused];
    DeviceState::ALL
        .into_iter()
        .filter(|&d| before.iter().any(|&b| served(b, d, None) != served(now, d, abort)))
        .collect()
}

/// Whether a device's move from `from` to `to` applies in a rollout aborted in `abort` mode
/// (if aborted): the device's own state machine must allow it ([`DeviceState::may_become`]),
/// and a device becomes reverted only after an abort with revert asked it to.
pub fn accepts_transition(from: DeviceState, to: DeviceState, abort: Option<AbortMode>) -> bool {
    from.may_become(to) && (!reverts(to) || abort == Some(AbortMode::Revert))
}

/// Whether `to` is what a device says after an abort with revert asked it to go back.
fn reverts(to: DeviceState) -> bool {
    matches!(to, DeviceState::Reverted | DeviceState::RevertSkipped)
}

/// Where a reporting device stands in the rollout its report names, as the server reads it
/// under the rollout's lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// No rollout has the id the report names.
    NoRollout,
    /// The rollout holds no row for the device. `group_version` says whether the rollout is its
    /// group's version ([`group_version`]), which a device that joined the group later is
    /// served without having a row in it.
    NotIn {
        /// Whether the rollout may have been served to the device as its group's version.
        group_version: bool,
    },
    /// The device's row in the rollout is in `device`; the rollout was aborted in `abort`
    /// mode, if it was.
    In {
        /// The device's state in the rollout.
        device: DeviceState,
        /// How the rollout was aborted, if it was.
        abort: Option<AbortMode>,
    },
}

/// What the server does with a device's report it has not seen before (see [`judge_report`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The move applies: the engine takes it.
    Apply,
    /// A move the device may make, but out of date — a late or repeated step, or an outcome
    /// after the rollout settled the device otherwise: nothing changes, and nothing is wrong.
    Stale,
    /// A device that joined its group after the rollout was created reports about the group's
    /// version, which it was served without a row: it joins the rollout, `assigned` in the last
    /// wave, and the move from there applies, recorded and audited as any device's is.
    Join,
}

/// A report that claims a change its device may not make. It changes nothing; the device is
/// told why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReportRefused {
    /// The state is not the device's to report: the rollout, the device timeout or an operator
    /// puts a device there.
    #[error("a device cannot report itself {0}: {why}", why = decided_by(.0.moved_by()))]
    NotTheDevices(DeviceState),
    /// The rollout does not exist.
    #[error("there is no such rollout")]
    NoRollout,
    /// The device is not in the rollout, which is not its group's version either.
    #[error("the device is not in this rollout: the rollout never assigned it anything")]
    NotInRollout,
    /// The device's wave has not opened.
    #[error("the device's wave has not opened: the rollout has not assigned it anything yet")]
    NotReached,
    /// A revert outcome from a device no abort with revert asked to go back.
    #[error("a device reports {0} only after the rollout was aborted with revert, and this one was not")]
    NoRevert(DeviceState),
}

/// Who decides a state that is not the device's to report, in words.
fn decided_by(mover: Mover) -> &'static str {
    match mover {
        Mover::Rollout => "the rollout puts a device there when it is created and when the device's wave opens",
        Mover::Timeout => "the server decides that when the device stays silent past the device timeout",
        Mover::Operator => "a device leaves a rollout only when an operator revokes or removes it",
        Mover::Device => "a device reports it",
    }
}

/// One of a group's rollouts of one artifact, as [`group_version`] reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupRollout<V> {
    /// Where the rollout is.
    pub state: RolloutState,
    /// How it was aborted, if it was.
    pub abort: Option<AbortMode>,
    /// The version it rolls out.
    pub version: V,
}

/// The group's version of an artifact: what a device that joins the group after its rollouts
/// were created is served. Given the group's rollouts of the artifact, newest first, it is the
/// newest one that completed cleanly ([`RolloutState::Completed`]: every device settled and none
/// failed or timed out) whose version no later rollout's abort with revert sent devices back
/// from. A rollout that completed with failures, or one still running, paused or aborted, is
/// never known good; when none qualifies there is no group's version and a newcomer is served
/// nothing until a rollout reaches it. Returns the index of that rollout.
pub fn group_version<V: PartialEq>(newest_first: &[GroupRollout<V>]) -> Option<usize> {
    let reverted_by_a_later_abort = |i: usize| {
        newest_first[..i].iter().any(|later| {
            later.state == RolloutState::Aborted
                && later.abort == Some(AbortMode::Revert)
                && later.version == newest_first[i].version
        })
    };
    (0..newest_first.len()).find(|&i| newest_first[i].state == RolloutState::Completed && !reverted_by_a_later_abort(i))
}

/// What the server does with a device's report of `to` about a rollout where it stands as
/// `standing`: apply it, let it be as out of date, or refuse it as a claim the device may not
/// make. A device reports only its own progress and outcomes (never `pending`, `assigned`,
/// `unreachable`, `timed_out` or `removed`: see [`DeviceState::moved_by`]), only about a
/// rollout that assigned it something (its wave opened, or the rollout is its group's version,
/// which it then joins), and a revert outcome only after an abort with revert. What is left is
/// decided by [`accepts_transition`]: it applies, or it is out of date.
pub fn judge_report(standing: Standing, to: DeviceState) -> Result<Verdict, ReportRefused> {
    if to.moved_by() != Mover::Device {
        return Err(ReportRefused::NotTheDevices(to));
    }
    match standing {
        Standing::NoRollout => Err(ReportRefused::NoRollout),
        Standing::NotIn { group_version: false } => Err(ReportRefused::NotInRollout),
        // A group's version is only ever served as an install.
        Standing::NotIn { group_version: true } if reverts(to) => Err(ReportRefused::NoRevert(to)),
        Standing::NotIn { group_version: true } => Ok(Verdict::Join),
        Standing::In { device: DeviceState::Pending, .. } => Err(ReportRefused::NotReached),
        Standing::In { abort, .. } if reverts(to) && abort != Some(AbortMode::Revert) => {
            Err(ReportRefused::NoRevert(to))
        }
        Standing::In { device, abort } => {
            Ok(if accepts_transition(device, to, abort) { Verdict::Apply } else { Verdict::Stale })
        }
    }
}

/// Whether a device in `device` state of a rollout in `rollout` state has been silent too
/// long, and if so what it becomes and why (see [`on_timeout`]).
///
/// `last_heard_ms` is when the server last heard from the device (a report or a heartbeat) or
/// opened its wave; `active_since_ms` when the rollout last (re)started serving devices (see
/// [`restarts_clocks`]). A device that has not got past its download (`assigned`,
/// `downloading`) can only act while the rollout serves it, so it is silent only then, and
/// its clock counts from the later of the two: a pause or a gate is never the device's
/// silence. A device past its download finishes on its own even while the rollout is paused,
/// so its clock always runs from `last_heard_ms`. Nothing is silent in an ended rollout.
pub fn silence(
    rollout: RolloutState,
    device: DeviceState,
    last_heard_ms: i64,
    active_since_ms: i64,
    now_ms: i64,
    timeout_ms: u64,
) -> Option<(DeviceState, String)> {
    if rollout.is_terminal() || device == DeviceState::Pending || device.is_final() {
        return None;
    }
    let before_download_ends = matches!(device, DeviceState::Assigned | DeviceState::Downloading);
    if before_download_ends && !rollout.serves_new_devices() {
        return None;
    }
    let since = if before_download_ends { last_heard_ms.max(active_since_ms) } else { last_heard_ms };
    // The API takes any u64: a timeout past i64::MAX ms means never, not a wrapped (negative)
    // timeout that expires every device at once or an overflow panic.
    let timeout = i64::try_from(timeout_ms).unwrap_or(i64::MAX);
    (now_ms.saturating_sub(since) > timeout).then(|| on_timeout(device, timeout_ms))
}

/// The device states in which a device last heard from long enough ago is [`silence`]d, for a
/// rollout in `state` that became active at `active_since_ms`, at `now_ms`: what the server's
/// sweep looks for (rows of those states last heard before `now_ms - timeout_ms`), so it never
/// reads rows that `silence` would let be.
pub fn awaited_states(state: RolloutState, active_since_ms: i64, now_ms: i64, timeout_ms: u64) -> Vec<DeviceState> {
    DeviceState::ALL
        .into_iter()
        .filter(|d| silence(state, *d, i64::MIN, active_since_ms, now_ms, timeout_ms).is_some())
        .collect()
}

/// Whether `effect` restarts the silence clocks of devices that wait for the rollout (the
/// rollout's `active_since`): it serves devices again after a pause (resume) or starts serving
/// a wave (creation, approval, or an automatic wave). Time spent paused or at a gate is the
/// operator's, not the devices'.
pub fn restarts_clocks(effect: &Effect) -> bool {
    matches!(effect, Effect::Resumed { .. } | Effect::OpenWave { .. })
}

/// What a device in `from` becomes when the device timeout (`timeout_ms`) passes, and why: a
/// device that never picked up its assignment is unreachable (settled, not a failure); one
/// that started and went silent timed out (a failure).
pub fn on_timeout(from: DeviceState, timeout_ms: u64) -> (DeviceState, String) {
    let secs = timeout_ms / 1000;
    if from == DeviceState::Assigned {
        (DeviceState::Unreachable, format!("did not pick up its assignment within {secs} s"))
    } else {
        (DeviceState::TimedOut, format!("started but sent no outcome within {secs} s (last: {from})"))
    }
}

/// The audit event a device's move to `to` records: outcomes and what the device timeout
/// decides, each as what it is (a device that had nothing to revert to is never recorded as
/// reverted); steps on the way (downloading, verifying, …) are not audited.
pub fn transition_audit(to: DeviceState) -> Option<AuditAction> {
    match to {
        DeviceState::Succeeded => Some(AuditAction::DeviceUpdated),
        DeviceState::Failed => Some(AuditAction::DeviceFailed),
        DeviceState::Reverted => Some(AuditAction::DeviceReverted),
        DeviceState::RevertSkipped => Some(AuditAction::DeviceRevertSkipped),
        DeviceState::TimedOut => Some(AuditAction::DeviceTimedOut),
        DeviceState::Unreachable => Some(AuditAction::DeviceUnreachable),
        DeviceState::Removed => Some(AuditAction::DeviceRemoved),
        DeviceState::Pending
        | DeviceState::Assigned
        | DeviceState::Downloading
        | DeviceState::Verifying
        | DeviceState::Installing
        | DeviceState::Probing => None,
    }
}

/// What the server answers a working device's heartbeat about a rollout in `rollout` state
/// (aborted in `abort` mode, if aborted) whose device timeout is `device_timeout_ms`, where
/// the device's row says `recorded` and the device says it is `reported` (one of
/// [`DeviceState::IN_FLIGHT`]; its reports of getting there may still be on their way).
///
/// The device goes on while the rollout still serves it the install for what it is doing now
/// ([`served`] for `reported`): not after an abort, and not while paused if it is still
/// downloading. A device the rollout has not reached is told to stop. (A device not in the
/// rollout at all gets [`ProgressAck::NOT_ASSIGNED`].)
pub fn heartbeat_ack(
    rollout: RolloutState,
    abort: Option<AbortMode>,
    recorded: DeviceState,
    reported: DeviceState,
    device_timeout_ms: u64,
) -> ProgressAck {
    let reached = recorded != DeviceState::Pending;
    let proceed = reached && served(rollout, reported, abort) == Served::Assigned(Action::Install);
    ProgressAck { proceed, heartbeat_ms: heartbeat_ms(device_timeout_ms) }
}

/// Who a device's move to `to` is attributed to, given who caused the change (`cause`: the
/// device for its reports, wavecast for the device timeout, the operator who revoked or
/// removed it): wavecast for what the device timeout decides (timed out, unreachable), the
/// operator for a removal, the device for everything it reports.
pub fn transition_actor(device: &DeviceName, to: DeviceState, cause: &Actor) -> Actor {
    match to.moved_by() {
        Mover::Timeout => Actor::System,
        Mover::Operator => cause.clone(),
        Mover::Device | Mover::Rollout => Actor::Device(device.clone()),
    }
}

/// Who an engine effect is attributed to, given who caused the change that produced it. An
/// operator's abort and resume are theirs; waves opening, pauses and completion that follow
/// from an operator's command (create, approve) are the operator's too, while those that
/// follow from device reports or timeouts are the rollout's own (wavecast's).
pub fn effect_actor(effect: &Effect, cause: &Actor) -> Actor {
    match (effect, cause) {
        (Effect::Aborted { .. } | Effect::Resumed { .. }, _) => cause.clone(),
        (_, Actor::Device(_) | Actor::System) => Actor::System,
        _ => cause.clone(),
    }
}

/// What the server persists about a rollout besides its plan and device rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// The state.
    pub state: RolloutState,
    /// How many waves have opened (0 to the number of waves).
    pub opened: usize,
    /// Failures counted since the last acknowledgement.
    pub failures_counted: u32,
}

impl Status {
    /// A rollout before its first decision.
    pub fn new() -> Self {
        Self { state: RolloutState::Running, opened: 0, failures_counted: 0 }
    }
}

impl Default for Status {
    fn default() -> Self {
        Self::new()
    }
}

/// Devices per state among those one wave added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct WaveCounts {
    /// Indexed by the position of the state in [`DeviceState::ALL`]. Counts stored before a
    /// state was added are shorter; they read with zeros for the newer states.
    #[serde(deserialize_with = "counts_padded")]
    pub by_state: [u64; DeviceState::ALL.len()],
}

fn counts_padded<'de, D: serde::Deserializer<'de>>(d: D) -> Result<[u64; DeviceState::ALL.len()], D::Error> {
    let stored = Vec::<u64>::deserialize(d)?;
    let mut out = [0u64; DeviceState::ALL.len()];
    if stored.len() > out.len() {
        return Err(serde::de::Error::invalid_length(stored.len(), &"at most one count per device state"));
    }
    out[..stored.len()].copy_from_slice(&stored);
    Ok(out)
}

impl WaveCounts {
    /// Devices in `state`.
    pub fn get(&self, state: DeviceState) -> u64 {
        self.by_state[state_index(state)]
    }

    /// Adds `n` devices in `state`.
    pub fn add(&mut self, state: DeviceState, n: u64) {
        self.by_state[state_index(state)] += n;
    }

    /// Moves one device from `from` to `to`.
    pub fn shift(&mut self, from: DeviceState, to: DeviceState) {
        let f = &mut self.by_state[state_index(from)];
        *f = f.saturating_sub(1);
        self.by_state[state_index(to)] += 1;
    }

    /// Devices in the wave.
    pub fn total(&self) -> u64 {
        self.by_state.iter().sum()
    }

    /// Whether every device of the wave is in an end state.
    pub fn settled(&self) -> bool {
        DeviceState::ALL.iter().all(|s| s.is_final() || self.get(*s) == 0)
    }
}

/// The index of `state` in [`DeviceState::ALL`].
pub fn state_index(state: DeviceState) -> usize {
    DeviceState::ALL.iter().position(|s| *s == state).unwrap_or(0)
}

/// Something the server must do because of a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Assign the new version to the devices of wave `index` (0-based).
    OpenWave {
        /// The wave.
        index: usize,
    },
    /// The next wave waits for approval.
    AwaitApproval {
        /// The wave (0-based).
        index: usize,
    },
    /// The halt rule paused the rollout.
    Paused {
        /// Failures counted.
        failures: u32,
    },
    /// Every wave settled: the rollout is completed, with failures or without.
    Completed,
    /// Send every device this rollout updated back to its previous version.
    RevertUpdated,
    /// An operator aborted.
    Aborted {
        /// Whether devices keep what they run or revert.
        mode: AbortMode,
    },
    /// An operator resumed after acknowledging failures.
    Resumed {
        /// How many failures were acknowledged.
        acknowledged: u32,
    },
}

/// An operator command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Open the next (manual) wave.
    Approve,
    /// Acknowledge counted failures and continue.
    ResumeAck,
    /// Stop; devices keep what they have, or updated devices go back to their previous version.
    Abort(AbortMode),
}

/// A command refused in the current state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// The rollout has ended.
    #[error("the rollout is {0}; nothing more can change it")]
    Ended(RolloutState),
    /// Approve while not waiting for approval.
    #[error("nothing to approve: the rollout is {state} and {reason}")]
    NotWaiting {
        /// The state.
        state: RolloutState,
        /// Why there is nothing to approve.
        reason: &'static str,
    },
    /// Resume while not paused.
    #[error("the rollout is {0}, not paused; there is nothing to resume")]
    NotPaused(RolloutState),
}

/// Applies a device moving from `from` to `to` in wave `wave` to the counts and status.
/// Returns the effects that follow.
pub fn device_changed(
    plan: &Plan,
    status: &mut Status,
    counts: &mut [WaveCounts],
    wave: usize,
    from: DeviceState,
    to: DeviceState,
) -> Vec<Effect> {
    if from == to {
        return Vec::new();
    }
    if let Some(c) = counts.get_mut(wave) {
        c.shift(from, to);
    }
    if to.is_failure() && !from.is_failure() && !status.state.is_terminal() {
        status.failures_counted += 1;
    }
    advance(plan, status, counts)
}

/// Applies an operator command.
pub fn command(
    plan: &Plan,
    status: &mut Status,
    counts: &[WaveCounts],
    cmd: Command,
) -> Result<Vec<Effect>, CommandError> {
    if status.state.is_terminal() {
        return Err(CommandError::Ended(status.state));
    }
    match cmd {
        Command::Approve => {
            if status.state != RolloutState::WaitingApproval {
                let reason = match status.state {
                    RolloutState::Paused => "must be resumed first",
                    _ if status.opened < plan.waves.len() => "the earlier waves have not all settled healthy yet",
                    _ => "every wave is already open",
                };
                return Err(CommandError::NotWaiting { state: status.state, reason });
            }
            // An unreachable device that came back while we wait at the gate makes its wave
            // unsettled again; approving now would be approving early.
            if !counts.iter().take(status.opened).all(WaveCounts::settled) {
                let reason = "the earlier waves have not all settled healthy yet";
                return Err(CommandError::NotWaiting { state: status.state, reason });
            }
            let index = status.opened;
            status.opened += 1;
            status.state = RolloutState::Running;
            let mut effects = vec![Effect::OpenWave { index }];
            effects.extend(advance(plan, status, counts));
            Ok(effects)
        }
        Command::ResumeAck => {
            if status.state != RolloutState::Paused {
                return Err(CommandError::NotPaused(status.state));
            }
            let acknowledged = status.failures_counted;
            status.failures_counted = 0;
            status.state = RolloutState::Running;
            let mut effects = vec![Effect::Resumed { acknowledged }];
            effects.extend(advance(plan, status, counts));
            Ok(effects)
        }
        Command::Abort(mode) => {
            status.state = RolloutState::Aborted;
            let mut effects = vec![Effect::Aborted { mode }];
            if mode == AbortMode::Revert {
                effects.push(Effect::RevertUpdated);
            }
            Ok(effects)
        }
    }
}

/// Decides what follows from the current counts: pause, open waves, wait, or complete.
/// Call it after creating a rollout (with `opened == 0`) and after every change.
pub fn advance(plan: &Plan, status: &mut Status, counts: &[WaveCounts]) -> Vec<Effect> {
    let mut effects = Vec::new();
    loop {
        match status.state {
            RolloutState::Completed
            | RolloutState::CompletedWithFailures
            | RolloutState::Aborted
            | RolloutState::Paused => return effects,
            RolloutState::Running | RolloutState::WaitingApproval => {}
        }
        if status.failures_counted >= plan.halt_after {
            status.state = RolloutState::Paused;
            effects.push(Effect::Paused { failures: status.failures_counted });
            return effects;
        }
        let opened_settled = counts.iter().take(status.opened).all(WaveCounts::settled);
        if !opened_settled {
            return effects;
        }
        if status.opened >= plan.waves.len() {
            // Failures an operator acknowledged let the rollout go on, but it did not succeed
            // everywhere, and says so.
            let failed = counts.iter().any(|c| DeviceState::ALL.iter().any(|s| s.is_failure() && c.get(*s) > 0));
            status.state = if failed { RolloutState::CompletedWithFailures } else { RolloutState::Completed };
            effects.push(Effect::Completed);
            return effects;
        }
        let index = status.opened;
        match plan.waves[index].gate {
            Gate::Manual => {
                if status.state != RolloutState::WaitingApproval {
                    status.state = RolloutState::WaitingApproval;
                    effects.push(Effect::AwaitApproval { index });
                }
                return effects;
            }
            Gate::Auto => {
                status.opened += 1;
                status.state = RolloutState::Running;
                effects.push(Effect::OpenWave { index });
                // An empty wave (e.g. 10% of very few devices rounds to what wave 1 had) is
                // settled at once; the loop moves on to the next.
            }
        }
    }
}

#[cfg(test)]
#[path = "rollout_tests.rs"]
mod tests;
