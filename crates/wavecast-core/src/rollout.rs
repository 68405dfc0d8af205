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

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::assignment::DeviceState;

/// How a wave opens.
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
            let mut h = Sha256::new();
            h.update(rollout_id.as_bytes());
            h.update([0]);
            h.update(d.as_bytes());
            (h.finalize().into(), d)
        })
        .collect();
    keyed.sort();
    keyed.into_iter().map(|(_, d)| d).collect()
}

/// A rollout's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutState {
    /// Waves open as their gates allow.
    Running,
    /// The next wave has a manual gate and everything before it is settled and healthy.
    WaitingApproval,
    /// Halted by the halt rule; waits for `resume --ack` or `abort`.
    Paused,
    /// Every wave opened and settled.
    Completed,
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
            RolloutState::Aborted => "aborted",
        }
    }

    /// Completed or aborted.
    pub fn is_terminal(self) -> bool {
        matches!(self, RolloutState::Completed | RolloutState::Aborted)
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
        [
            RolloutState::Running,
            RolloutState::WaitingApproval,
            RolloutState::Paused,
            RolloutState::Completed,
            RolloutState::Aborted,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
        .ok_or_else(|| RolloutStateError(s.to_owned()))
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
    /// Indexed by the position of the state in [`DeviceState::ALL`].
    pub by_state: [u64; 11],
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
    /// Every wave settled.
    Completed,
    /// Send every device this rollout updated back to its previous version.
    RevertUpdated,
    /// An operator aborted.
    Aborted {
        /// Whether devices revert.
        revert: bool,
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
    /// Stop; devices keep what they have.
    AbortKeep,
    /// Stop; updated devices go back to their previous version.
    AbortRevert,
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
        Command::AbortKeep | Command::AbortRevert => {
            let revert = cmd == Command::AbortRevert;
            status.state = RolloutState::Aborted;
            let mut effects = vec![Effect::Aborted { revert }];
            if revert {
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
            RolloutState::Completed | RolloutState::Aborted | RolloutState::Paused => return effects,
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
            status.state = RolloutState::Completed;
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
