//! Table-driven tests and a property test of the rollout engine against brief §5 (Rollouts).
//!
//! A small simulation plays the server's part: it keeps the plan, the status, the per-wave
//! counts and every device's (wave, state), calls the engine the way the server does, and
//! applies the effects the way the server does (on `OpenWave` it moves that wave's pending
//! devices to `assigned`, and nothing else ever moves a device out of `pending` but an
//! operator removing it). Each table row is one step and the state, opened waves, counted
//! failures and effects expected after it.

use proptest::prelude::*;

use super::RolloutState as R;
use super::*;
use crate::assignment::DeviceState as D;

/// The server's side of one rollout.
#[derive(Debug)]
struct Sim {
    plan: Plan,
    status: Status,
    counts: Vec<WaveCounts>,
    /// (wave, state) per device, in rollout order.
    devices: Vec<(usize, DeviceState)>,
    /// Set once the engine asked for every updated device to be reverted.
    reverting: bool,
}

impl Sim {
    /// Creates a rollout over `n` devices and runs the first decision, as the server does.
    fn create(percents: &[u8], gates: &[usize], halt_after: u32, n: usize) -> (Self, Vec<Effect>) {
        let plan = Plan::new(percents, gates, halt_after, 600_000).expect("the test plan is valid");
        let bounds = wave_bounds(&plan, n);
        let devices: Vec<_> = (0..n).map(|p| (wave_of(&bounds, p), D::Pending)).collect();
        let mut counts = vec![WaveCounts::default(); plan.waves.len()];
        for (wave, state) in &devices {
            counts[*wave].add(*state, 1);
        }
        let mut sim = Sim { plan, status: Status::new(), counts, devices, reverting: false };
        let effects = advance(&sim.plan, &mut sim.status, &sim.counts);
        sim.apply(&effects);
        (sim, effects)
    }

    /// Applies effects as the server would. Opening a wave assigns its devices; the engine
    /// must never open a wave twice or one it has not counted as opened.
    fn apply(&mut self, effects: &[Effect]) {
        for effect in effects {
            match *effect {
                Effect::OpenWave { index } => {
                    assert!(
                        index < self.status.opened,
                        "wave {index} opened but status says {} opened",
                        self.status.opened
                    );
                    // Devices removed before their wave opened stay removed.
                    for (wave, state) in self.devices.iter_mut().filter(|(w, s)| *w == index && *s != D::Removed) {
                        assert_eq!(*state, D::Pending, "wave {index} opened twice");
                        *state = D::Assigned;
                        self.counts[*wave].shift(D::Pending, D::Assigned);
                    }
                }
                Effect::RevertUpdated => self.reverting = true,
                _ => {}
            }
        }
        self.check();
    }

    /// One device report, applied through the engine.
    fn report(&mut self, position: usize, to: DeviceState) -> Vec<Effect> {
        let (wave, from) = self.devices[position];
        assert_ne!(from, D::Pending, "the server never lets a device of an unopened wave report");
        self.devices[position].1 = to;
        let effects = device_changed(&self.plan, &mut self.status, &mut self.counts, wave, from, to);
        self.apply(&effects);
        effects
    }

    /// An operator revokes or removes the device at `position`: the server moves it to
    /// `removed` through the engine, from whatever state it is in, pending included.
    fn remove(&mut self, position: usize) -> Vec<Effect> {
        let (wave, from) = self.devices[position];
        assert!(accepts_transition(from, D::Removed, None), "{from} cannot be removed");
        self.devices[position].1 = D::Removed;
        let effects = device_changed(&self.plan, &mut self.status, &mut self.counts, wave, from, D::Removed);
        self.apply(&effects);
        effects
    }

    /// One operator command, applied through the engine.
    fn command(&mut self, cmd: Command) -> Result<Vec<Effect>, CommandError> {
        let before = self.status;
        let result = command(&self.plan, &mut self.status, &self.counts, cmd);
        match &result {
            Ok(effects) => self.apply(effects),
            // A refused command must leave the rollout exactly as it was.
            Err(_) => assert_eq!(self.status, before, "a refused {cmd:?} changed the status"),
        }
        result
    }

    /// The counts the engine keeps match the devices, sum to the fleet, and only devices of
    /// opened waves have left `pending` (every device of an opened wave has), except those
    /// an operator removed.
    fn check(&self) {
        let mut recount = vec![WaveCounts::default(); self.plan.waves.len()];
        for (wave, state) in &self.devices {
            recount[*wave].add(*state, 1);
            if *state != D::Removed {
                assert_eq!(
                    *state == D::Pending,
                    *wave >= self.status.opened,
                    "device in wave {wave} is {state} with {} opened",
                    self.status.opened
                );
            }
        }
        assert_eq!(self.counts, recount, "counts drifted from the devices");
        let total: u64 = self.counts.iter().map(WaveCounts::total).sum();
        assert_eq!(total, self.devices.len() as u64, "counts do not sum to the fleet");
    }

    fn settled(&self, wave: usize) -> bool {
        self.counts[wave].settled()
    }
}

/// What a table row does.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// The device at this position in rollout order reports a new state.
    Report(usize, DeviceState),
    /// An operator revokes or removes the device at this position.
    Remove(usize),
    /// An operator command.
    Cmd(Command),
}

/// One step and what must hold after it.
#[derive(Debug)]
struct Row {
    step: Step,
    outcome: Result<Vec<Effect>, CommandError>,
    state: RolloutState,
    opened: usize,
    failures: u32,
}

impl Step {
    fn then(self, state: RolloutState, opened: usize, failures: u32, effects: &[Effect]) -> Row {
        Row { step: self, outcome: Ok(effects.to_vec()), state, opened, failures }
    }

    fn refused(self, error: CommandError, state: RolloutState, opened: usize, failures: u32) -> Row {
        Row { step: self, outcome: Err(error), state, opened, failures }
    }
}

fn report(position: usize, to: DeviceState) -> Step {
    Step::Report(position, to)
}
fn remove(position: usize) -> Step {
    Step::Remove(position)
}
fn approve() -> Step {
    Step::Cmd(Command::Approve)
}
fn resume() -> Step {
    Step::Cmd(Command::ResumeAck)
}
fn abort_keep() -> Step {
    Step::Cmd(Command::Abort(AbortMode::Keep))
}
fn abort_revert() -> Step {
    Step::Cmd(Command::Abort(AbortMode::Revert))
}
fn open(index: usize) -> Effect {
    Effect::OpenWave { index }
}
fn gate(index: usize) -> Effect {
    Effect::AwaitApproval { index }
}
fn halt(failures: u32) -> Effect {
    Effect::Paused { failures }
}
fn resumed(acknowledged: u32) -> Effect {
    Effect::Resumed { acknowledged }
}
fn aborted(revert: bool) -> Effect {
    Effect::Aborted { mode: if revert { AbortMode::Revert } else { AbortMode::Keep } }
}

const EARLY: &str = "the earlier waves have not all settled healthy yet";
const ALL_OPEN: &str = "every wave is already open";
const RESUME_FIRST: &str = "must be resumed first";

fn not_waiting(state: RolloutState, reason: &'static str) -> CommandError {
    CommandError::NotWaiting { state, reason }
}

/// Every command refused once the rollout has ended, leaving it as it is.
fn all_refused_after_end(state: RolloutState, opened: usize, failures: u32) -> Vec<Row> {
    [approve(), resume(), abort_keep(), abort_revert()]
        .into_iter()
        .map(|step| step.refused(CommandError::Ended(state), state, opened, failures))
        .collect()
}

/// A scenario: a plan, a fleet, what creation decides, then the steps.
struct Case<'a> {
    name: &'static str,
    percents: &'static [u8],
    gates: &'static [usize],
    halt_after: u32,
    devices: usize,
    created: (RolloutState, usize, &'a [Effect]),
    rows: Vec<Row>,
}

fn run(case: Case<'_>) {
    let name = case.name;
    let (mut sim, effects) = Sim::create(case.percents, case.gates, case.halt_after, case.devices);
    let (state, opened, expected) = case.created;
    assert_eq!(effects, expected, "{name}: effects of creation");
    assert_eq!(sim.status, Status { state, opened, failures_counted: 0 }, "{name}: status after creation");
    for (i, row) in case.rows.into_iter().enumerate() {
        let step = row.step;
        let outcome = match step {
            Step::Report(position, to) => Ok(sim.report(position, to)),
            Step::Remove(position) => Ok(sim.remove(position)),
            Step::Cmd(cmd) => sim.command(cmd),
        };
        assert_eq!(outcome, row.outcome, "{name}: row {i} ({step:?}): outcome");
        let expected = Status { state: row.state, opened: row.opened, failures_counted: row.failures };
        assert_eq!(sim.status, expected, "{name}: row {i} ({step:?}): status");
    }
}

// The plan of the brief's example, `--waves 10,50,100`, over 4 devices gives bounds [1, 2, 4]:
// wave 1 is device 0, wave 2 is device 1, wave 3 is devices 2 and 3. `--waves 50,100` over 4
// devices gives [2, 4]: devices 0 and 1, then 2 and 3.
const BRIEF: &[u8] = &[10, 50, 100];
const HALVES: &[u8] = &[50, 100];

#[test]
fn gate_on_wave_one_holds_the_canary_then_later_waves_open_on_their_own() {
    run(Case {
        name: "--gate 1",
        percents: BRIEF,
        gates: &[1],
        halt_after: 1,
        devices: 4,
        // The canary itself waits for an operator right after creation.
        created: (R::WaitingApproval, 0, &[gate(0)]),
        rows: vec![
            resume().refused(CommandError::NotPaused(R::WaitingApproval), R::WaitingApproval, 0, 0),
            approve().then(R::Running, 1, 0, &[open(0)]),
            report(0, D::Downloading).then(R::Running, 1, 0, &[]),
            report(0, D::Probing).then(R::Running, 1, 0, &[]),
            // Wave 2 is automatic: it opens as soon as the canary is settled and healthy.
            report(0, D::Succeeded).then(R::Running, 2, 0, &[open(1)]),
            report(1, D::Succeeded).then(R::Running, 3, 0, &[open(2)]),
            report(2, D::Succeeded).then(R::Running, 3, 0, &[]),
            report(3, D::Succeeded).then(R::Completed, 3, 0, &[Effect::Completed]),
        ],
    });
}

#[test]
fn gate_on_a_later_wave_waits_after_the_earlier_waves_settle() {
    let mut rows = vec![
        report(0, D::Downloading).then(R::Running, 1, 0, &[]),
        // Approving before the earlier waves settle is refused.
        approve().refused(not_waiting(R::Running, EARLY), R::Running, 1, 0),
        resume().refused(CommandError::NotPaused(R::Running), R::Running, 1, 0),
        report(0, D::Succeeded).then(R::WaitingApproval, 1, 0, &[gate(1)]),
        resume().refused(CommandError::NotPaused(R::WaitingApproval), R::WaitingApproval, 1, 0),
        approve().then(R::Running, 2, 0, &[open(1)]),
        // Wave 3 is automatic, so there is nothing to approve while wave 2 runs.
        approve().refused(not_waiting(R::Running, EARLY), R::Running, 2, 0),
        report(1, D::Succeeded).then(R::Running, 3, 0, &[open(2)]),
        approve().refused(not_waiting(R::Running, ALL_OPEN), R::Running, 3, 0),
        report(2, D::Succeeded).then(R::Running, 3, 0, &[]),
        report(3, D::Succeeded).then(R::Completed, 3, 0, &[Effect::Completed]),
    ];
    rows.extend(all_refused_after_end(R::Completed, 3, 0));
    run(Case {
        name: "--gate 2",
        percents: BRIEF,
        gates: &[2],
        halt_after: 1,
        devices: 4,
        created: (R::Running, 1, &[open(0)]),
        rows,
    });
}

#[test]
fn first_failure_pauses_and_resume_ack_continues() {
    run(Case {
        name: "--halt-after 1",
        percents: BRIEF,
        gates: &[],
        halt_after: 1,
        devices: 4,
        created: (R::Running, 1, &[open(0)]),
        rows: vec![
            report(0, D::Downloading).then(R::Running, 1, 0, &[]),
            report(0, D::Failed).then(R::Paused, 1, 1, &[halt(1)]),
            approve().refused(not_waiting(R::Paused, RESUME_FIRST), R::Paused, 1, 1),
            // The acknowledgement clears the count, and the settled canary lets wave 2 open.
            resume().then(R::Running, 2, 0, &[resumed(1), open(1)]),
            resume().refused(CommandError::NotPaused(R::Running), R::Running, 2, 0),
            report(1, D::Succeeded).then(R::Running, 3, 0, &[open(2)]),
            report(2, D::Succeeded).then(R::Running, 3, 0, &[]),
            // A failure that settles the last wave pauses rather than completes.
            report(3, D::Failed).then(R::Paused, 3, 1, &[halt(1)]),
            // Acknowledged failures let it finish, but not as a clean success.
            resume().then(R::CompletedWithFailures, 3, 0, &[resumed(1), Effect::Completed]),
        ],
    });
}

#[test]
fn devices_mid_update_finish_while_paused_but_no_wave_opens() {
    run(Case {
        name: "paused mid-wave",
        percents: HALVES,
        gates: &[],
        halt_after: 1,
        devices: 4,
        created: (R::Running, 1, &[open(0)]),
        rows: vec![
            report(0, D::Downloading).then(R::Running, 1, 0, &[]),
            report(1, D::Downloading).then(R::Running, 1, 0, &[]),
            report(0, D::Failed).then(R::Paused, 1, 1, &[halt(1)]),
            // Wave 1 is now settled, but a paused rollout opens nothing.
            report(1, D::Succeeded).then(R::Paused, 1, 1, &[]),
            resume().then(R::Running, 2, 0, &[resumed(1), open(1)]),
        ],
    });
}

#[test]
fn a_failure_after_the_halt_is_still_counted_and_acknowledged() {
    run(Case {
        name: "failure while paused",
        percents: HALVES,
        gates: &[],
        halt_after: 1,
        devices: 4,
        created: (R::Running, 1, &[open(0)]),
        rows: vec![
            report(0, D::Downloading).then(R::Running, 1, 0, &[]),
            report(1, D::Downloading).then(R::Running, 1, 0, &[]),
            report(0, D::Failed).then(R::Paused, 1, 1, &[halt(1)]),
            // No second pause effect, but the count grows so the ack covers it.
            report(1, D::Failed).then(R::Paused, 1, 2, &[]),
            resume().then(R::Running, 2, 0, &[resumed(2), open(1)]),
        ],
    });
}

#[test]
fn resume_mid_wave_then_a_later_failure_in_the_same_wave_pauses_again() {
    run(Case {
        name: "resume then fail again",
        percents: HALVES,
        gates: &[],
        halt_after: 1,
        devices: 4,
        created: (R::Running, 1, &[open(0)]),
        rows: vec![
            report(0, D::Downloading).then(R::Running, 1, 0, &[]),
            report(1, D::Downloading).then(R::Running, 1, 0, &[]),
            report(0, D::Failed).then(R::Paused, 1, 1, &[halt(1)]),
            // Device 1 is still updating, so resuming opens nothing yet.
            resume().then(R::Running, 1, 0, &[resumed(1)]),
            report(1, D::Probing).then(R::Running, 1, 0, &[]),
            // The count restarted at the ack, so one more failure reaches the threshold again.
            report(1, D::Failed).then(R::Paused, 1, 1, &[halt(1)]),
            resume().then(R::Running, 2, 0, &[resumed(1), open(1)]),
            report(2, D::Succeeded).then(R::Running, 2, 0, &[]),
            report(3, D::Succeeded).then(R::CompletedWithFailures, 2, 0, &[Effect::Completed]),
        ],
    });
}

#[test]
fn failures_are_counted_while_waiting_at_a_gate() {
    run(Case {
        name: "failure at a gate",
        percents: HALVES,
        gates: &[2],
        halt_after: 2,
        devices: 4,
        created: (R::Running, 1, &[open(0)]),
        rows: vec![
            report(0, D::Downloading).then(R::Running, 1, 0, &[]),
            // One failure is below --halt-after 2, so wave 1 counts as healthy.
            report(0, D::TimedOut).then(R::Running, 1, 1, &[]),
            // Unreachable settles the wave without being a failure.
            report(1, D::Unreachable).then(R::WaitingApproval, 1, 1, &[gate(1)]),
            // A late outcome while waiting changes nothing: no second wait, no un-counting.
            report(0, D::Succeeded).then(R::WaitingApproval, 1, 1, &[]),
            // The unreachable device comes back while the rollout waits at the gate.
            report(1, D::Downloading).then(R::WaitingApproval, 1, 1, &[]),
            // Its wave is no longer settled, so approving now would be approving early.
            approve().refused(not_waiting(R::WaitingApproval, EARLY), R::WaitingApproval, 1, 1),
            report(1, D::Failed).then(R::Paused, 1, 2, &[halt(2)]),
            approve().refused(not_waiting(R::Paused, RESUME_FIRST), R::Paused, 1, 2),
            // Resuming lands back at the gate: wave 2 still needs its approval.
            resume().then(R::WaitingApproval, 1, 0, &[resumed(2), gate(1)]),
            approve().then(R::Running, 2, 0, &[open(1)]),
        ],
    });
}

#[test]
fn abort_revert_while_a_wave_is_half_done() {
    let mut rows = vec![
        report(0, D::Succeeded).then(R::Running, 1, 0, &[]),
        report(1, D::Downloading).then(R::Running, 1, 0, &[]),
        abort_revert().then(R::Aborted, 1, 0, &[aborted(true), Effect::RevertUpdated]),
        // The device mid-update finishes on its own; after an abort nothing is counted.
        report(1, D::Failed).then(R::Aborted, 1, 0, &[]),
        report(0, D::Reverted).then(R::Aborted, 1, 0, &[]),
    ];
    rows.extend(all_refused_after_end(R::Aborted, 1, 0));
    run(Case {
        name: "abort --revert",
        percents: HALVES,
        gates: &[],
        halt_after: 1,
        devices: 4,
        created: (R::Running, 1, &[open(0)]),
        rows,
    });
}

#[test]
fn abort_keep_from_waiting_approval_and_from_paused() {
    let mut rows = vec![
        report(0, D::Succeeded).then(R::WaitingApproval, 1, 0, &[gate(1)]),
        // Keep sends nothing back: no revert effect.
        abort_keep().then(R::Aborted, 1, 0, &[aborted(false)]),
    ];
    rows.extend(all_refused_after_end(R::Aborted, 1, 0));
    run(Case {
        name: "abort --keep at a gate",
        percents: BRIEF,
        gates: &[2],
        halt_after: 1,
        devices: 4,
        created: (R::Running, 1, &[open(0)]),
        rows,
    });

    let mut rows = vec![
        report(0, D::Failed).then(R::Paused, 1, 1, &[halt(1)]),
        // Aborting does not acknowledge: the count stays as it was.
        abort_keep().then(R::Aborted, 1, 1, &[aborted(false)]),
    ];
    rows.extend(all_refused_after_end(R::Aborted, 1, 1));
    run(Case {
        name: "abort --keep when paused",
        percents: HALVES,
        gates: &[],
        halt_after: 1,
        devices: 4,
        created: (R::Running, 1, &[open(0)]),
        rows,
    });
}

#[test]
fn an_unreachable_device_that_returns_mid_rollout_updates_and_settles_its_wave_again() {
    run(Case {
        name: "unreachable returns mid-rollout",
        percents: HALVES,
        gates: &[],
        halt_after: 1,
        devices: 4,
        created: (R::Running, 1, &[open(0)]),
        rows: vec![
            report(0, D::Succeeded).then(R::Running, 1, 0, &[]),
            // Unreachable never blocks the fleet and is no failure: wave 2 opens.
            report(1, D::Unreachable).then(R::Running, 2, 0, &[open(1)]),
            report(1, D::Downloading).then(R::Running, 2, 0, &[]),
            report(2, D::Succeeded).then(R::Running, 2, 0, &[]),
            // The returning device has made wave 1 unsettled again, so completion waits for
            // its outcome (which may still be a failure that must halt the rollout).
            report(3, D::Succeeded).then(R::Running, 2, 0, &[]),
            report(1, D::Succeeded).then(R::Completed, 2, 0, &[Effect::Completed]),
        ],
    });
}

#[test]
fn an_unreachable_device_that_returns_after_the_end_changes_nothing() {
    run(Case {
        name: "unreachable returns after completion",
        percents: &[100],
        gates: &[],
        halt_after: 1,
        devices: 2,
        created: (R::Running, 1, &[open(0)]),
        rows: vec![
            report(0, D::Succeeded).then(R::Running, 1, 0, &[]),
            report(1, D::Unreachable).then(R::Completed, 1, 0, &[Effect::Completed]),
            report(1, D::Downloading).then(R::Completed, 1, 0, &[]),
            // A completed rollout counts no failure and does not pause.
            report(1, D::Failed).then(R::Completed, 1, 0, &[]),
        ],
    });
    run(Case {
        name: "unreachable returns after abort",
        percents: HALVES,
        gates: &[],
        halt_after: 1,
        devices: 4,
        created: (R::Running, 1, &[open(0)]),
        rows: vec![
            report(0, D::Succeeded).then(R::Running, 1, 0, &[]),
            report(1, D::Unreachable).then(R::Running, 2, 0, &[open(1)]),
            report(2, D::Downloading).then(R::Running, 2, 0, &[]),
            abort_keep().then(R::Aborted, 2, 0, &[aborted(false)]),
            report(1, D::Downloading).then(R::Aborted, 2, 0, &[]),
            report(1, D::Succeeded).then(R::Aborted, 2, 0, &[]),
            report(2, D::TimedOut).then(R::Aborted, 2, 0, &[]),
        ],
    });
}

#[test]
fn timed_out_devices_count_toward_the_halt() {
    run(Case {
        name: "timed_out",
        percents: HALVES,
        gates: &[],
        halt_after: 2,
        devices: 4,
        created: (R::Running, 1, &[open(0)]),
        rows: vec![
            report(0, D::Downloading).then(R::Running, 1, 0, &[]),
            report(0, D::TimedOut).then(R::Running, 1, 1, &[]),
            report(1, D::Installing).then(R::Running, 1, 1, &[]),
            report(1, D::TimedOut).then(R::Paused, 1, 2, &[halt(2)]),
            // A late outcome from a timed-out device neither counts it twice nor un-counts it.
            report(0, D::Failed).then(R::Paused, 1, 2, &[]),
            report(1, D::Succeeded).then(R::Paused, 1, 2, &[]),
            resume().then(R::Running, 2, 0, &[resumed(2), open(1)]),
        ],
    });
}

#[test]
fn a_removed_device_settles_its_wave_and_is_never_a_failure() {
    run(Case {
        name: "removed mid-wave",
        percents: HALVES,
        gates: &[],
        halt_after: 1,
        devices: 4,
        created: (R::Running, 1, &[open(0)]),
        rows: vec![
            report(0, D::Downloading).then(R::Running, 1, 0, &[]),
            report(1, D::Succeeded).then(R::Running, 1, 0, &[]),
            // The device at work leaves: its wave no longer waits for it, and nothing is counted.
            remove(0).then(R::Running, 2, 0, &[open(1)]),
            // An assigned device that never showed up need not wait for the device timeout.
            remove(2).then(R::Running, 2, 0, &[]),
            report(3, D::Succeeded).then(R::Completed, 2, 0, &[Effect::Completed]),
        ],
    });
    // A device removed before its wave opens stays removed when it does, and the wave settles
    // without it.
    run(Case {
        name: "removed while pending",
        percents: BRIEF,
        gates: &[],
        halt_after: 1,
        devices: 4,
        created: (R::Running, 1, &[open(0)]),
        rows: vec![
            remove(3).then(R::Running, 1, 0, &[]),
            report(0, D::Succeeded).then(R::Running, 2, 0, &[open(1)]),
            report(1, D::Succeeded).then(R::Running, 3, 0, &[open(2)]),
            report(2, D::Succeeded).then(R::Completed, 3, 0, &[Effect::Completed]),
        ],
    });
}

#[test]
fn removing_a_failed_device_neither_uncounts_nor_recounts_it() {
    run(Case {
        name: "removed after failing",
        percents: HALVES,
        gates: &[],
        halt_after: 2,
        devices: 4,
        created: (R::Running, 1, &[open(0)]),
        rows: vec![
            report(0, D::Failed).then(R::Running, 1, 1, &[]),
            remove(0).then(R::Running, 1, 1, &[]),
            report(1, D::TimedOut).then(R::Paused, 1, 2, &[halt(2)]),
            // While paused a removal only moves the counts.
            remove(1).then(R::Paused, 1, 2, &[]),
            resume().then(R::Running, 2, 0, &[resumed(2), open(1)]),
        ],
    });
}

#[test]
fn removing_a_device_that_came_back_at_a_gate_settles_the_wave_again() {
    run(Case {
        name: "removed at a gate",
        percents: BRIEF,
        gates: &[2],
        halt_after: 1,
        devices: 4,
        created: (R::Running, 1, &[open(0)]),
        rows: vec![
            report(0, D::Unreachable).then(R::WaitingApproval, 1, 0, &[gate(1)]),
            report(0, D::Downloading).then(R::WaitingApproval, 1, 0, &[]),
            approve().refused(not_waiting(R::WaitingApproval, EARLY), R::WaitingApproval, 1, 0),
            // Gone, it no longer holds the gate shut; the wait is not announced twice.
            remove(0).then(R::WaitingApproval, 1, 0, &[]),
            approve().then(R::Running, 2, 0, &[open(1)]),
        ],
    });
}

#[test]
fn halt_after_three_tolerates_fewer_failures_and_counts_across_waves() {
    // 10 devices over 50,100: devices 0-4 then 5-9.
    run(Case {
        name: "--halt-after 3",
        percents: HALVES,
        gates: &[],
        halt_after: 3,
        devices: 10,
        created: (R::Running, 1, &[open(0)]),
        rows: vec![
            report(0, D::Failed).then(R::Running, 1, 1, &[]),
            report(1, D::TimedOut).then(R::Running, 1, 2, &[]),
            report(2, D::Succeeded).then(R::Running, 1, 2, &[]),
            report(3, D::Unreachable).then(R::Running, 1, 2, &[]),
            // Two failures are below three, so the settled wave is healthy and wave 2 opens.
            report(4, D::Succeeded).then(R::Running, 2, 2, &[open(1)]),
            // The count is since the last ack, not per wave: one more failure halts.
            report(5, D::Failed).then(R::Paused, 2, 3, &[halt(3)]),
            resume().then(R::Running, 2, 0, &[resumed(3)]),
            report(6, D::Succeeded).then(R::Running, 2, 0, &[]),
            report(7, D::Failed).then(R::Running, 2, 1, &[]),
            report(8, D::Succeeded).then(R::Running, 2, 1, &[]),
            // Settled with failures below the threshold completes, with failures.
            report(9, D::Succeeded).then(R::CompletedWithFailures, 2, 1, &[Effect::Completed]),
        ],
    });
}

#[test]
fn small_fleets_round_up_and_empty_waves_settle_at_once() {
    // One device: every wave holds it, so waves 2 and 3 add nobody and open together.
    run(Case {
        name: "1 device",
        percents: BRIEF,
        gates: &[],
        halt_after: 1,
        devices: 1,
        created: (R::Running, 1, &[open(0)]),
        rows: vec![report(0, D::Succeeded).then(R::Completed, 3, 0, &[open(1), open(2), Effect::Completed])],
    });
    // An empty wave behind a gate still needs its approval, then settles at once.
    run(Case {
        name: "1 device, --gate 2",
        percents: BRIEF,
        gates: &[2],
        halt_after: 1,
        devices: 1,
        created: (R::Running, 1, &[open(0)]),
        rows: vec![
            report(0, D::Succeeded).then(R::WaitingApproval, 1, 0, &[gate(1)]),
            approve().then(R::Completed, 3, 0, &[open(1), open(2), Effect::Completed]),
        ],
    });
    // Three devices over 10,50,100: ceil(0.3)=1, ceil(1.5)=2, 3, one device per wave.
    run(Case {
        name: "3 devices",
        percents: BRIEF,
        gates: &[],
        halt_after: 1,
        devices: 3,
        created: (R::Running, 1, &[open(0)]),
        rows: vec![
            report(0, D::Succeeded).then(R::Running, 2, 0, &[open(1)]),
            report(1, D::Succeeded).then(R::Running, 3, 0, &[open(2)]),
            report(2, D::Succeeded).then(R::Completed, 3, 0, &[Effect::Completed]),
        ],
    });
    // Seven devices over 10,14,100: ceil(0.7)=1 and ceil(0.98)=1, so wave 2 is empty and
    // wave 3 opens in the same decision.
    let mut rows = vec![report(0, D::Succeeded).then(R::Running, 3, 0, &[open(1), open(2)])];
    rows.extend((1..6).map(|p| report(p, D::Succeeded).then(R::Running, 3, 0, &[])));
    rows.push(report(6, D::Succeeded).then(R::Completed, 3, 0, &[Effect::Completed]));
    run(Case {
        name: "7 devices, empty wave 2",
        percents: &[10, 14, 100],
        gates: &[],
        halt_after: 1,
        devices: 7,
        created: (R::Running, 1, &[open(0)]),
        rows,
    });
    // No devices at all: every wave is empty and the rollout completes on creation.
    run(Case {
        name: "0 devices",
        percents: BRIEF,
        gates: &[],
        halt_after: 1,
        devices: 0,
        created: (R::Completed, 3, &[open(0), open(1), open(2), Effect::Completed]),
        rows: vec![],
    });
}

#[test]
fn wave_bounds_take_the_ceiling_of_each_cumulative_percentage() {
    let table: &[(&[u8], usize, &[usize])] = &[
        (&[10, 50, 100], 7, &[1, 4, 7]),
        (&[10, 50, 100], 10, &[1, 5, 10]),
        (&[10, 50, 100], 3, &[1, 2, 3]),
        (&[10, 50, 100], 1, &[1, 1, 1]),
        (&[10, 50, 100], 0, &[0, 0, 0]),
        (&[10, 14, 100], 7, &[1, 1, 7]),
        (&[1, 100], 200, &[2, 200]),
        (&[1, 99, 100], 101, &[2, 100, 101]),
        (&[33, 66, 100], 100, &[33, 66, 100]),
        (&[100], 5, &[5]),
    ];
    for (percents, n, expected) in table {
        let plan = Plan::new(percents, &[], 1, 1).expect("valid plan");
        assert_eq!(wave_bounds(&plan, *n), *expected, "{percents:?} of {n}");
    }
    // Positions map to the wave whose bound they fall under; an empty wave holds nobody.
    let of = |bounds: &[usize], n: usize| (0..n).map(|p| wave_of(bounds, p)).collect::<Vec<_>>();
    assert_eq!(of(&[1, 4, 7], 7), [0, 1, 1, 1, 2, 2, 2]);
    assert_eq!(of(&[1, 1, 7], 7), [0, 2, 2, 2, 2, 2, 2]);
    assert_eq!(of(&[2, 4], 4), [0, 0, 1, 1]);
}

#[test]
fn device_order_is_a_stable_hash_of_rollout_and_device() {
    let ids = ["d1", "d2", "d3", "d4", "d5", "d6"];
    // Expected orders computed independently as sorted SHA-256(rollout id, 0x00, device id).
    assert_eq!(device_order("r-1", ids), ["d3", "d6", "d1", "d4", "d2", "d5"]);
    assert_eq!(device_order("r-2", ids), ["d4", "d1", "d6", "d3", "d2", "d5"]);
    // The order the group lists its devices in does not matter.
    let reversed: Vec<&str> = ids.iter().rev().copied().collect();
    assert_eq!(device_order("r-1", reversed), device_order("r-1", ids));
}

#[test]
fn plan_new_validates_its_input() {
    // (percents, gates, halt_after, what Plan::new says)
    type PlanRow<'a> = (&'a [u8], &'a [usize], u32, Result<(), PlanError>);
    let table: &[PlanRow<'_>] = &[
        (&[10, 50, 100], &[1, 3], 1, Ok(())),
        (&[100], &[1], 5, Ok(())),
        (&[], &[], 1, Err(PlanError::NoWaves)),
        (&[50, 50, 100], &[], 1, Err(PlanError::Percents(vec![50, 50, 100]))),
        (&[60, 40, 100], &[], 1, Err(PlanError::Percents(vec![60, 40, 100]))),
        (&[0, 100], &[], 1, Err(PlanError::Percents(vec![0, 100]))),
        (&[50, 101], &[], 1, Err(PlanError::Percents(vec![50, 101]))),
        (&[10, 50], &[], 1, Err(PlanError::LastNotAll(50))),
        (&[10, 50, 100], &[0], 1, Err(PlanError::Gate { gate: 0, waves: 3 })),
        (&[10, 50, 100], &[2, 4], 1, Err(PlanError::Gate { gate: 4, waves: 3 })),
        (&[10, 50, 100], &[], 0, Err(PlanError::HaltAfter)),
    ];
    for (percents, gates, halt_after, expected) in table {
        let got = Plan::new(percents, gates, *halt_after, 600_000);
        assert_eq!(
            got.as_ref().map(|_| ()).map_err(Clone::clone),
            *expected,
            "{percents:?} gates {gates:?} halt {halt_after}"
        );
    }
    // Gates are 1-based wave numbers and every other wave is automatic.
    let plan = Plan::new(&[10, 50, 100], &[1, 3], 2, 600_000).expect("valid");
    let gates: Vec<Gate> = plan.waves.iter().map(|w| w.gate).collect();
    assert_eq!(gates, [Gate::Manual, Gate::Auto, Gate::Manual]);
    assert_eq!((plan.halt_after, plan.device_timeout_ms), (2, 600_000));
}

#[test]
fn rollout_states_round_trip_and_classify() {
    for state in RolloutState::ALL {
        assert_eq!(state.as_str().parse::<RolloutState>(), Ok(state));
        assert_eq!(serde_json::to_value(state).expect("serializes"), state.as_str());
        let ended = matches!(state, R::Completed | R::CompletedWithFailures | R::Aborted);
        assert_eq!(state.is_terminal(), ended, "{state}");
        // Only a running rollout or one waiting at a gate hands the new version out.
        assert_eq!(state.serves_new_devices(), matches!(state, R::Running | R::WaitingApproval), "{state}");
    }
    assert!("halted".parse::<RolloutState>().is_err());
}

// ---- Property test ----

/// Whether the server would let a device move from `from` to `to`: progress goes forward, a
/// device that has not started only starts while the rollout hands out the new version, one
/// never picked up may time out as unreachable and come back, a started one may time out
/// and still report late, and updated devices revert only after an abort with revert.
fn legal(from: DeviceState, to: DeviceState, serving: bool, reverting: bool) -> bool {
    let started_or_outcome =
        matches!(to, D::Downloading | D::Verifying | D::Installing | D::Probing | D::Succeeded | D::Failed);
    match from {
        // Removals are the operator's (`Event::Remove`), never a device's report.
        D::Pending | D::Failed | D::Reverted | D::RevertSkipped | D::Removed => false,
        D::Assigned => to == D::Unreachable || (serving && started_or_outcome),
        D::Unreachable => serving && started_or_outcome,
        D::Downloading | D::Verifying | D::Installing | D::Probing => match to {
            D::Verifying | D::Installing | D::Probing => state_index(to) > state_index(from),
            D::Succeeded | D::Failed | D::TimedOut => true,
            D::Reverted | D::RevertSkipped => reverting,
            _ => false,
        },
        D::TimedOut => matches!(to, D::Succeeded | D::Failed),
        D::Succeeded => reverting && matches!(to, D::Reverted | D::RevertSkipped),
    }
}

#[derive(Debug, Clone)]
enum Event {
    /// A device of an opened wave (picked modulo those) reports `to`, if the server allows it.
    Report {
        pick: usize,
        to: DeviceState,
    },
    /// Every device of the opened waves reaches an outcome (as far as the server allows).
    Settle,
    /// An operator revokes or removes a device (picked modulo the fleet) while the rollout has
    /// not ended, if it has not left already.
    Remove {
        pick: usize,
    },
    Cmd(Command),
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        // Aborts are rare so most sequences get far enough to pause, wait and complete.
        80 => (any::<usize>(), proptest::sample::select(DeviceState::ALL.to_vec())).prop_map(|(pick, to)| Event::Report { pick, to }),
        8 => Just(Event::Settle),
        2 => any::<usize>().prop_map(|pick| Event::Remove { pick }),
        8 => Just(Event::Cmd(Command::Approve)),
        8 => Just(Event::Cmd(Command::ResumeAck)),
        1 => Just(Event::Cmd(Command::Abort(AbortMode::Keep))),
        1 => Just(Event::Cmd(Command::Abort(AbortMode::Revert))),
    ]
}

/// Percentages (1 to 4 waves, the last 100), 1-based gates, and halt_after.
fn plan_args() -> impl Strategy<Value = (Vec<u8>, Vec<usize>, u32)> {
    (proptest::collection::btree_set(1u8..100, 0..4), proptest::collection::vec(any::<bool>(), 4), 1u32..=5).prop_map(
        |(set, gated, halt)| {
            let mut percents: Vec<u8> = set.into_iter().collect();
            percents.push(100);
            let gates = (1..=percents.len()).filter(|k| gated[k - 1]).collect();
            (percents, gates, halt)
        },
    )
}

impl Sim {
    /// Moves the device at `position` if the server would allow it.
    fn try_report(&mut self, position: usize, to: DeviceState) -> Option<Vec<Effect>> {
        let from = self.devices[position].1;
        legal(from, to, self.status.state.serves_new_devices(), self.reverting).then(|| self.report(position, to))
    }

    fn step(&mut self, event: &Event) -> Vec<Vec<Effect>> {
        match event {
            Event::Report { pick, to } => {
                let live: Vec<usize> = (0..self.devices.len()).filter(|&p| self.devices[p].1 != D::Pending).collect();
                if live.is_empty() {
                    return vec![];
                }
                self.try_report(live[pick % live.len()], *to).into_iter().collect()
            }
            Event::Settle => {
                let mut all = Vec::new();
                for p in 0..self.devices.len() {
                    if !self.devices[p].1.is_final() && self.devices[p].1 != D::Pending {
                        // Assigned devices of a paused rollout cannot start, so they time out.
                        all.extend(self.try_report(p, D::Succeeded).or_else(|| self.try_report(p, D::Unreachable)));
                    }
                }
                all
            }
            Event::Remove { pick } => {
                let position = pick % self.devices.len();
                if self.status.state.is_terminal() || self.devices[position].1 == D::Removed {
                    return vec![];
                }
                vec![self.remove(position)]
            }
            Event::Cmd(cmd) => self.command(*cmd).into_iter().collect(),
        }
    }

    /// The invariants of brief §5 that hold after any step, given the status before it and
    /// the effects each engine call in the step returned.
    fn check_step(&self, event: &Event, before: Status, effects: &[Vec<Effect>]) {
        let after = self.status;
        let halt_after = self.plan.halt_after;
        let opens: Vec<usize> = effects
            .iter()
            .flatten()
            .filter_map(|e| if let Effect::OpenWave { index } = e { Some(*index) } else { None })
            .collect();
        // Waves open once each, in order, and `opened` counts exactly those.
        assert!(after.opened >= before.opened, "opened went back");
        assert_eq!(opens, (before.opened..after.opened).collect::<Vec<_>>(), "opened waves vs OpenWave effects");
        // A paused, aborted or completed rollout opens nothing, except a paused one on resume.
        let resumed = matches!(event, Event::Cmd(Command::ResumeAck)) && before.state == R::Paused;
        if (before.state == R::Paused || before.state.is_terminal()) && !resumed {
            assert_eq!(after.opened, before.opened, "a wave opened while {}", before.state);
        }
        // Ended is for good.
        if before.state.is_terminal() {
            assert_eq!(after.state, before.state, "left {}", before.state);
        }
        // A wave opens only when every earlier wave is settled and the rollout is healthy.
        for &index in &opens {
            for wave in 0..index {
                assert!(self.settled(wave), "wave {index} opened while wave {wave} was unsettled");
            }
            assert!(
                after.failures_counted < halt_after,
                "wave {index} opened with {} failures counted",
                after.failures_counted
            );
        }
        match after.state {
            R::Running | R::WaitingApproval => {
                assert!(after.failures_counted < halt_after, "{} with {} failures", after.state, after.failures_counted)
            }
            R::Paused => {
                assert!(after.failures_counted >= halt_after, "paused with {} failures", after.failures_counted)
            }
            R::Completed | R::CompletedWithFailures => {
                assert!(
                    after.opened == self.plan.waves.len() && (0..after.opened).all(|w| self.settled(w)),
                    "completed early"
                );
                // The end state says whether any device had ended failed or timed out when the
                // rollout completed. (A device that timed out may still report success later;
                // the ended rollout keeps how it ended.)
                if !before.state.is_completed() {
                    let failed = self.devices.iter().any(|(_, s)| s.is_failure());
                    assert_eq!(after.state == R::CompletedWithFailures, failed, "completed with {:?}", self.devices);
                }
            }
            R::Aborted => {}
        }
        // Each announcing effect marks an entry into its state, once, and says what it should.
        let count = |pred: fn(&Effect) -> bool| effects.iter().flatten().filter(|e| pred(e)).count();
        let awaits: Vec<usize> = effects
            .iter()
            .flatten()
            .filter_map(|e| if let Effect::AwaitApproval { index } = e { Some(*index) } else { None })
            .collect();
        if !awaits.is_empty() {
            // Approving may open empty waves straight into the next manual gate: a new wait.
            let entered = before.state != R::WaitingApproval || after.opened > before.opened;
            assert!(
                entered && after.state == R::WaitingApproval && awaits == [after.opened],
                "awaits {awaits:?} from {before:?} to {after:?}"
            );
        }
        let pauses: Vec<u32> = effects
            .iter()
            .flatten()
            .filter_map(|e| if let Effect::Paused { failures } = e { Some(*failures) } else { None })
            .collect();
        let entered_pause = before.state != R::Paused && after.state == R::Paused;
        assert_eq!(
            pauses,
            if entered_pause { vec![after.failures_counted] } else { vec![] },
            "pause effects from {before:?} to {after:?}"
        );
        let entered_completion = !before.state.is_completed() && after.state.is_completed();
        assert_eq!(count(|e| *e == Effect::Completed), usize::from(entered_completion), "completion effects");
        let expected_resume =
            if resumed { vec![Effect::Resumed { acknowledged: before.failures_counted }] } else { vec![] };
        assert_eq!(
            effects.iter().flatten().filter(|e| matches!(e, Effect::Resumed { .. })).copied().collect::<Vec<_>>(),
            expected_resume
        );
        let reverts = count(|e| *e == Effect::RevertUpdated);
        let revert_cmd = matches!(event, Event::Cmd(Command::Abort(AbortMode::Revert))) && !before.state.is_terminal();
        assert_eq!(reverts, usize::from(revert_cmd), "revert effects");
        if after.state == R::WaitingApproval {
            assert!(
                after.opened < self.plan.waves.len() && self.plan.waves[after.opened].gate == Gate::Manual,
                "waiting at no gate"
            );
        }
        // Commands are accepted exactly in the states the brief allows them in.
        if let Event::Cmd(cmd) = event {
            let accepted = effects.len() == 1;
            let expected = match cmd {
                Command::Approve => before.state == R::WaitingApproval && (0..before.opened).all(|w| self.settled(w)),
                Command::ResumeAck => before.state == R::Paused,
                Command::Abort(AbortMode::Keep) | Command::Abort(AbortMode::Revert) => !before.state.is_terminal(),
            };
            assert_eq!(accepted, expected, "{cmd:?} from {before:?}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn no_wave_opens_out_of_turn(
        n in 1usize..200,
        (percents, gates, halt_after) in plan_args(),
        events in proptest::collection::vec(event(), 0..120),
    ) {
        let (mut sim, effects) = Sim::create(&percents, &gates, halt_after, n);
        sim.check_step(&Event::Settle, Status::new(), &[effects]);
        for event in &events {
            let before = sim.status;
            let effects = sim.step(event);
            sim.check_step(event, before, &effects);
        }
        // Whatever happened, an operator who keeps resuming and approving while the devices
        // finish brings a rollout that was not aborted to completion, with every device assigned.
        for _ in 0..3 * sim.plan.waves.len() + 3 {
            let event = match sim.status.state {
                R::Completed | R::CompletedWithFailures | R::Aborted => break,
                R::Paused => Event::Cmd(Command::ResumeAck),
                R::WaitingApproval if (0..sim.status.opened).all(|w| sim.settled(w)) => Event::Cmd(Command::Approve),
                R::WaitingApproval | R::Running => Event::Settle,
            };
            let before = sim.status;
            let effects = sim.step(&event);
            sim.check_step(&event, before, &effects);
        }
        prop_assert!(sim.status.state.is_terminal(), "stuck in {:?}", sim.status);
        if sim.status.state.is_completed() {
            prop_assert!(sim.devices.iter().all(|(_, s)| s.is_final()));
        }
    }
}

// ----- the rules the server applies around the engine ----------------------------------------

#[test]
fn what_a_rollout_serves_each_device() {
    use AbortMode::{Keep, Revert};
    let install = Served::Assigned(Action::Install);
    let revert = Served::Assigned(Action::Revert);
    let started = [D::Downloading, D::Verifying, D::Installing, D::Probing];
    // A removed device has left the rollout: it is served nothing, whatever the rollout does.
    let every_reached: Vec<D> =
        DeviceState::ALL.into_iter().filter(|s| !matches!(s, D::Pending | D::Removed)).collect();
    // (rollout state, abort mode, the reached devices served something, and what). Every other
    // reached device is served nothing; a pending device is never reached.
    let table: &[(R, Option<AbortMode>, Vec<D>, Served)] = &[
        (R::Running, None, every_reached.clone(), install),
        (R::WaitingApproval, None, every_reached.clone(), install),
        (R::Completed, None, every_reached.clone(), install),
        // Paused: those past their download finish (and those that finished keep their doc);
        // none starts, and a download stops until the rollout resumes.
        (
            R::Paused,
            None,
            [&started[1..], &[D::Succeeded, D::Failed, D::TimedOut, D::Reverted, D::RevertSkipped]].concat(),
            install,
        ),
        (R::Aborted, Some(Keep), vec![], install),
        // Those that went back (or had nothing to go back to) keep their doc, so it does not
        // change under them.
        (R::Aborted, Some(Revert), [&started[..], &[D::Succeeded, D::Reverted, D::RevertSkipped]].concat(), revert),
    ];
    for (rollout, abort, served_to, what) in table {
        for device in DeviceState::ALL {
            let expected = if device == D::Pending {
                Served::NotReached
            } else if served_to.contains(&device) {
                *what
            } else {
                Served::Nothing
            };
            assert_eq!(served(*rollout, device, *abort), expected, "{rollout} ({abort:?}) to a device {device}");
        }
    }
}

#[test]
fn an_abort_with_revert_sends_back_what_may_run_the_new_version() {
    assert_eq!(REVERTED_BY_ABORT.to_vec(), [&DeviceState::IN_FLIGHT[..], &[D::Succeeded]].concat());
    for device in REVERTED_BY_ABORT {
        assert_eq!(served(R::Aborted, device, Some(AbortMode::Revert)), Served::Assigned(Action::Revert), "{device}");
    }
}

#[test]
fn a_device_reverts_only_after_an_abort_with_revert() {
    use AbortMode::{Keep, Revert};
    let table = [
        (D::Succeeded, D::Reverted, Some(Revert), true),
        (D::Probing, D::Reverted, Some(Revert), true),
        (D::TimedOut, D::Reverted, Some(Revert), true),
        (D::Succeeded, D::Reverted, Some(Keep), false),
        (D::Succeeded, D::Reverted, None, false),
        (D::Probing, D::Reverted, None, false),
        // Having had nothing to revert to is said the same way, and only then.
        (D::Succeeded, D::RevertSkipped, Some(Revert), true),
        (D::Downloading, D::RevertSkipped, Some(Revert), true),
        (D::TimedOut, D::RevertSkipped, Some(Revert), true),
        (D::Succeeded, D::RevertSkipped, Some(Keep), false),
        (D::Succeeded, D::RevertSkipped, None, false),
        (D::Failed, D::RevertSkipped, Some(Revert), false),
        (D::Reverted, D::RevertSkipped, Some(Revert), false),
        (D::RevertSkipped, D::Reverted, Some(Revert), false),
        // What the device state machine refuses stays refused.
        (D::Failed, D::Reverted, Some(Revert), false),
        (D::Succeeded, D::Failed, None, false),
        // Everything else applies as before, aborted or not.
        (D::Assigned, D::Downloading, None, true),
        (D::Probing, D::Failed, None, true),
        (D::Probing, D::Succeeded, Some(Revert), true),
        (D::Unreachable, D::Succeeded, Some(Keep), true),
    ];
    for (from, to, abort, applies) in table {
        assert_eq!(accepts_transition(from, to, abort), applies, "{from} → {to} ({abort:?})");
    }
}

/// Every report from every state, in every kind of rollout: applied, let be as out of date, or
/// refused as a claim the device may not make.
#[test]
fn every_report_from_every_state_is_applied_let_be_or_refused() {
    use AbortMode::{Keep, Revert};
    use D::*;
    // What a device may report at all: its own progress and outcomes. The rollout puts it in
    // pending and assigned, the device timeout in timed_out and unreachable, an operator in
    // removed.
    let own = [Downloading, Verifying, Installing, Probing, Succeeded, Failed, Reverted, RevertSkipped];
    const REVERT: &[D] = &[Reverted, RevertSkipped];
    // (the device's state, the reports that apply in any rollout, those that apply only after
    // an abort with revert). Every other report of its own is out of date.
    let applies: &[(D, &[D], &[D])] = &[
        (Pending, &[], &[]),
        (Assigned, &[Downloading, Verifying, Installing, Probing, Succeeded, Failed], REVERT),
        (Downloading, &[Verifying, Installing, Probing, Succeeded, Failed], REVERT),
        (Verifying, &[Installing, Probing, Succeeded, Failed], REVERT),
        (Installing, &[Probing, Succeeded, Failed], REVERT),
        (Probing, &[Succeeded, Failed], REVERT),
        (Succeeded, &[], REVERT),
        (Failed, &[], &[]),
        // Given up on, it may still say how it ended.
        (TimedOut, &[Succeeded, Failed], REVERT),
        // Given up on before it started, it may come back and start.
        (Unreachable, &[Downloading, Verifying, Installing, Probing, Succeeded, Failed], REVERT),
        (Reverted, &[], &[]),
        (RevertSkipped, &[], &[]),
        (Removed, &[], &[]),
    ];
    assert_eq!(applies.iter().map(|row| row.0).collect::<Vec<_>>(), DeviceState::ALL, "one row per state");
    for &(from, always, after_revert) in applies {
        for to in DeviceState::ALL {
            for abort in [None, Some(Keep), Some(Revert)] {
                let expected = if !own.contains(&to) {
                    Err(ReportRefused::NotTheDevices(to))
                } else if from == Pending {
                    Err(ReportRefused::NotReached)
                } else if REVERT.contains(&to) && abort != Some(Revert) {
                    Err(ReportRefused::NoRevert(to))
                } else if always.contains(&to) || (abort == Some(Revert) && after_revert.contains(&to)) {
                    Ok(Verdict::Apply)
                } else {
                    Ok(Verdict::Stale)
                };
                let got = judge_report(Standing::In { device: from, abort }, to);
                assert_eq!(got, expected, "{from} reports {to} ({abort:?})");
                // What applies is exactly what the engine accepts.
                assert_eq!(
                    got == Ok(Verdict::Apply),
                    own.contains(&to)
                        && from != Pending
                        && accepts_transition(from, to, abort)
                        && (!REVERT.contains(&to) || abort == Some(Revert))
                );
            }
        }
    }
    // A device with no row in the rollout: refused, unless the rollout is its group's version,
    // which it may have been served as a late joiner (an install, never a revert): then it
    // joins the rollout, so what it reports is recorded like any device's.
    for to in DeviceState::ALL {
        let theirs = |verdict| if own.contains(&to) { verdict } else { Err(ReportRefused::NotTheDevices(to)) };
        assert_eq!(judge_report(Standing::NoRollout, to), theirs(Err(ReportRefused::NoRollout)), "{to}");
        assert_eq!(
            judge_report(Standing::NotIn { group_version: false }, to),
            theirs(Err(ReportRefused::NotInRollout)),
            "{to}"
        );
        let late = if REVERT.contains(&to) { Err(ReportRefused::NoRevert(to)) } else { Ok(Verdict::Join) };
        assert_eq!(judge_report(Standing::NotIn { group_version: true }, to), theirs(late), "{to}");
    }
    // The refusals say why, in words an operator (and the device's log) can act on.
    let said = [
        (
            ReportRefused::NotTheDevices(Unreachable),
            "a device cannot report itself unreachable: the server decides that when the device stays silent past the device timeout",
        ),
        (
            ReportRefused::NotTheDevices(Removed),
            "a device cannot report itself removed: a device leaves a rollout only when an operator revokes or removes it",
        ),
        (
            ReportRefused::NotTheDevices(Assigned),
            "a device cannot report itself assigned: the rollout puts a device there when it is created and when the device's wave opens",
        ),
        (
            ReportRefused::NoRevert(Reverted),
            "a device reports reverted only after the rollout was aborted with revert, and this one was not",
        ),
        (ReportRefused::NotReached, "the device's wave has not opened: the rollout has not assigned it anything yet"),
        (ReportRefused::NotInRollout, "the device is not in this rollout: the rollout never assigned it anything"),
    ];
    for (refusal, text) in said {
        assert_eq!(refusal.to_string(), text);
    }
}

#[test]
fn the_device_timeout_settles_in_flight_devices_and_waits_for_new_ones_only_while_serving() {
    // Long active, so only the states matter here (the clocks are the next test's).
    let awaited = |rollout| awaited_states(rollout, 0, 10_000_000, 90_500);
    let in_flight = DeviceState::IN_FLIGHT.to_vec();
    let with_assigned = [&[D::Assigned][..], &in_flight[..]].concat();
    let table = [
        (R::Running, with_assigned.clone()),
        (R::WaitingApproval, with_assigned),
        // Paused: a download waits for the resume; what is past its download finishes.
        (R::Paused, in_flight[1..].to_vec()),
        // Ended: nothing is waited for.
        (R::Completed, vec![]),
        (R::Aborted, vec![]),
    ];
    for (rollout, states) in table {
        assert_eq!(awaited(rollout), states, "{rollout}");
    }
    let table = [
        (D::Assigned, D::Unreachable, "did not pick up its assignment within 90 s"),
        (D::Downloading, D::TimedOut, "started but sent no outcome within 90 s (last: downloading)"),
        (D::Verifying, D::TimedOut, "started but sent no outcome within 90 s (last: verifying)"),
        (D::Installing, D::TimedOut, "started but sent no outcome within 90 s (last: installing)"),
        (D::Probing, D::TimedOut, "started but sent no outcome within 90 s (last: probing)"),
    ];
    for (from, to, reason) in table {
        assert_eq!(on_timeout(from, 90_500), (to, reason.to_owned()), "{from}");
        assert_eq!(silence(R::Running, from, 0, 0, 90_501, 90_500), Some((to, reason.to_owned())), "{from}");
    }
}

#[test]
fn silence_counts_only_time_in_which_the_device_could_act() {
    const T: u64 = 1_000;
    // (rollout, device, last heard, rollout active since, now, silent?)
    let table: &[(R, D, i64, i64, i64, bool)] = &[
        // Running: silent once heard from longer ago than the timeout, and not at the timeout.
        (R::Running, D::Assigned, 0, 0, 1_000, false),
        (R::Running, D::Assigned, 0, 0, 1_001, true),
        (R::Running, D::Downloading, 0, 0, 1_001, true),
        (R::Running, D::Probing, 0, 0, 1_001, true),
        // A heartbeat or report restarts the clock.
        (R::Running, D::Downloading, 900, 0, 1_500, false),
        // A resume (or approval) restarts the clock of devices that have not got past their
        // download: the pause was not their silence.
        (R::Running, D::Assigned, 0, 5_000, 5_500, false),
        (R::Running, D::Downloading, 0, 5_000, 5_500, false),
        (R::Running, D::Assigned, 0, 5_000, 6_001, true),
        // Past the download, the device went on through the pause: its own clock counts.
        (R::Running, D::Verifying, 0, 5_000, 5_500, true),
        (R::Running, D::Installing, 0, 5_000, 5_500, true),
        // At a gate the rollout still serves the opened waves.
        (R::WaitingApproval, D::Downloading, 0, 0, 1_001, true),
        // Paused: nothing that waits for its download to be allowed is silent, however long.
        (R::Paused, D::Assigned, 0, 0, 1_000_000, false),
        (R::Paused, D::Downloading, 0, 0, 1_000_000, false),
        (R::Paused, D::Verifying, 0, 0, 1_001, true),
        (R::Paused, D::Probing, 0, 0, 1_001, true),
        // Ended rollouts wait for nobody; end states and unopened waves are never silent.
        (R::Completed, D::Probing, 0, 0, 1_000_000, false),
        (R::Aborted, D::Downloading, 0, 0, 1_000_000, false),
        (R::Running, D::Pending, 0, 0, 1_000_000, false),
        (R::Running, D::Succeeded, 0, 0, 1_000_000, false),
        (R::Running, D::Unreachable, 0, 0, 1_000_000, false),
        (R::Running, D::TimedOut, 0, 0, 1_000_000, false),
        (R::Running, D::RevertSkipped, 0, 0, 1_000_000, false),
    ];
    for &(rollout, device, heard, active, now, silent) in table {
        let expected = silent.then(|| on_timeout(device, T));
        let got = silence(rollout, device, heard, active, now, T);
        assert_eq!(got, expected, "{rollout}, {device} heard at {heard}, active since {active}, at {now}");
    }
    // A timeout past i64::MAX ms never expires, and nothing overflows.
    assert_eq!(silence(R::Running, D::Assigned, i64::MIN, i64::MIN, i64::MAX, u64::MAX), None);
    // The sweep's states agree with the rule, whatever the clocks.
    for rollout in [R::Running, R::WaitingApproval, R::Paused, R::Completed, R::Aborted] {
        for (active, now) in [(0, 0), (0, 5_000), (5_000, 5_500), (5_000, 6_001)] {
            let states = awaited_states(rollout, active, now, T);
            for device in DeviceState::ALL {
                let ever = silence(rollout, device, i64::MIN, active, now, T).is_some();
                assert_eq!(states.contains(&device), ever, "{rollout} {device} active {active} now {now}");
            }
        }
    }
}

#[test]
fn clocks_restart_when_the_rollout_serves_devices_again() {
    let effects = [
        (Effect::OpenWave { index: 0 }, true),
        (Effect::Resumed { acknowledged: 1 }, true),
        (Effect::AwaitApproval { index: 1 }, false),
        (Effect::Paused { failures: 1 }, false),
        (Effect::Completed, false),
        (Effect::RevertUpdated, false),
        (Effect::Aborted { mode: AbortMode::Keep }, false),
    ];
    for (effect, restarts) in effects {
        assert_eq!(restarts_clocks(&effect), restarts, "{effect:?}");
    }
}

#[test]
fn heartbeats_are_told_whether_the_assignment_still_stands() {
    use AbortMode::{Keep, Revert};
    const TIMEOUT: u64 = 600_000;
    let go = ProgressAck { proceed: true, heartbeat_ms: 30_000 };
    let stop = ProgressAck { proceed: false, heartbeat_ms: 30_000 };
    // (rollout, abort, recorded, reported, answer)
    let table: &[(R, Option<AbortMode>, D, D, ProgressAck)] = &[
        (R::Running, None, D::Downloading, D::Downloading, go),
        // Its report of starting may still be on its way.
        (R::Running, None, D::Assigned, D::Downloading, go),
        // It came back after it was given up on.
        (R::Running, None, D::Unreachable, D::Downloading, go),
        (R::Running, None, D::TimedOut, D::Probing, go),
        (R::WaitingApproval, None, D::Downloading, D::Downloading, go),
        (R::Completed, None, D::Downloading, D::Downloading, go),
        // A pause stops downloads and lets what is past its download finish.
        (R::Paused, None, D::Downloading, D::Downloading, stop),
        (R::Paused, None, D::Assigned, D::Downloading, stop),
        (R::Paused, None, D::Downloading, D::Verifying, go),
        (R::Paused, None, D::Probing, D::Probing, go),
        // An abort stops everything: nothing more, or a revert, is in the next doc.
        (R::Aborted, Some(Keep), D::Downloading, D::Downloading, stop),
        (R::Aborted, Some(Revert), D::Probing, D::Probing, stop),
        // A device whose wave has not opened has nothing to work on.
        (R::Running, None, D::Pending, D::Downloading, stop),
    ];
    for &(rollout, abort, recorded, reported, answer) in table {
        assert_eq!(
            heartbeat_ack(rollout, abort, recorded, reported, TIMEOUT),
            answer,
            "{rollout} ({abort:?}), recorded {recorded}, reported {reported}"
        );
    }
    // The interval follows the rollout's device timeout.
    assert_eq!(heartbeat_ack(R::Running, None, D::Downloading, D::Downloading, 4_000).heartbeat_ms, 1_000);
}

#[test]
fn the_audit_log_records_each_outcome_as_what_it_is() {
    use AuditAction as A;
    let table = [
        (D::Succeeded, Some(A::DeviceUpdated)),
        (D::Failed, Some(A::DeviceFailed)),
        (D::Reverted, Some(A::DeviceReverted)),
        (D::RevertSkipped, Some(A::DeviceRevertSkipped)),
        (D::TimedOut, Some(A::DeviceTimedOut)),
        (D::Unreachable, Some(A::DeviceUnreachable)),
        (D::Removed, Some(A::DeviceRemoved)),
    ];
    for to in DeviceState::ALL {
        let expected = table.iter().find(|(s, _)| *s == to).and_then(|(_, a)| *a);
        assert_eq!(transition_audit(to), expected, "{to}");
    }
    assert_eq!(A::DeviceRevertSkipped.as_str(), "device.revert_skipped");
    assert_eq!(serde_json::to_value(A::DeviceRevertSkipped).expect("serializes"), "device.revert_skipped");
}

#[test]
fn the_audit_log_attributes_each_decision() {
    let op = || Actor::Operator("alice".into());
    let dev = || Actor::Device(DeviceName::new("cam-1").unwrap());
    let effects = [
        Effect::OpenWave { index: 0 },
        Effect::AwaitApproval { index: 1 },
        Effect::Paused { failures: 1 },
        Effect::Completed,
        Effect::RevertUpdated,
    ];
    // Decisions that follow from a change are the operator's when an operator made the change,
    // and wavecast's when a device report or a timeout did.
    for effect in &effects {
        assert_eq!(effect_actor(effect, &op()), op(), "{effect:?}");
        assert_eq!(effect_actor(effect, &dev()), Actor::System, "{effect:?}");
        assert_eq!(effect_actor(effect, &Actor::System), Actor::System, "{effect:?}");
    }
    // An operator's own commands are always theirs.
    for effect in [Effect::Aborted { mode: AbortMode::Keep }, Effect::Resumed { acknowledged: 2 }] {
        assert_eq!(effect_actor(&effect, &op()), op(), "{effect:?}");
    }
    // A device's move is the timeout's (wavecast's) when it settles a silent device, the
    // operator's who revoked or removed the device when it leaves the rollout, and the
    // device's for what it reports.
    let name = DeviceName::new("cam-1").unwrap();
    for to in DeviceState::ALL {
        for cause in [dev(), Actor::System, op()] {
            let expected = match to {
                D::TimedOut | D::Unreachable => Actor::System,
                D::Removed => cause.clone(),
                _ => dev(),
            };
            assert_eq!(transition_actor(&name, to, &cause), expected, "{to} caused by {cause}");
        }
    }
}

#[test]
fn gate_approval_policies() {
    let table = [
        (GateApproval::AnyApprover, "alice", "alice", true),
        (GateApproval::AnyApprover, "alice", "bob", true),
        (GateApproval::DistinctApprover, "alice", "alice", false),
        (GateApproval::DistinctApprover, "alice", "bob", true),
    ];
    for (policy, creator, approver, permitted) in table {
        assert_eq!(policy.permits(creator, approver), permitted, "{policy:?}: {creator} → {approver}");
    }
}

#[test]
fn abort_modes_round_trip() {
    for mode in [AbortMode::Keep, AbortMode::Revert] {
        assert_eq!(mode.as_str().parse::<AbortMode>().unwrap(), mode);
        assert_eq!(serde_json::to_value(mode).unwrap(), mode.as_str());
    }
    assert!("never".parse::<AbortMode>().is_err());
}

#[test]
fn counts_stored_before_revert_skipped_still_load() {
    // A wave's counts as stored before `revert_skipped` existed: eleven states.
    let old = r#"{"by_state":[0,1,2,3,4,5,6,7,8,9,10]}"#;
    let c: WaveCounts = serde_json::from_str(old).unwrap();
    assert_eq!(c.get(DeviceState::Assigned), 1);
    assert_eq!(c.get(DeviceState::Reverted), 10);
    assert_eq!(c.get(DeviceState::RevertSkipped), 0);
    let round: WaveCounts = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
    assert_eq!(round, c);
    // As stored before `removed` existed: twelve states.
    let old = r#"{"by_state":[0,1,2,3,4,5,6,7,8,9,10,11]}"#;
    let c: WaveCounts = serde_json::from_str(old).unwrap();
    assert_eq!((c.get(DeviceState::RevertSkipped), c.get(DeviceState::Removed)), (11, 0));
    let too_long = format!("{{\"by_state\":{:?}}}", vec![1u64; DeviceState::ALL.len() + 1]);
    assert!(serde_json::from_str::<WaveCounts>(&too_long).is_err(), "counts for unknown states are refused");
}

// ----- the engine with a clock: pauses, gates and heartbeats ---------------------------------

/// [`Sim`] with time, as the server keeps it: when each device was last heard from (a report,
/// a heartbeat, or its wave opening), when the rollout last restarted the clocks, and the
/// sweep as [`silence`] over every device at a chosen instant.
struct Clocked {
    sim: Sim,
    now: i64,
    active_since: i64,
    heard: Vec<i64>,
}

/// The device timeout of [`Sim`]'s plans.
const TIMEOUT: i64 = 600_000;

impl Clocked {
    fn create(percents: &[u8], gates: &[usize], n: usize) -> Self {
        let (sim, _) = Sim::create(percents, gates, 1, n);
        assert_eq!(sim.plan.device_timeout_ms, TIMEOUT as u64);
        Self { heard: vec![0; n], sim, now: 0, active_since: 0 }
    }

    /// What the server does after every engine decision: opened waves' devices start their
    /// clocks, and the rollout's clock restarts when it serves devices again.
    fn clocks(&mut self, effects: &[Effect]) {
        for effect in effects {
            if restarts_clocks(effect) {
                self.active_since = self.now;
            }
            if let Effect::OpenWave { index } = *effect {
                for (p, (wave, _)) in self.sim.devices.iter().enumerate() {
                    if *wave == index {
                        self.heard[p] = self.now;
                    }
                }
            }
        }
    }

    fn wait(&mut self, ms: i64) {
        self.now += ms;
    }

    fn report(&mut self, position: usize, to: DeviceState) {
        self.heard[position] = self.now;
        let effects = self.sim.report(position, to);
        self.clocks(&effects);
    }

    /// A heartbeat: the device is heard from; its state does not change.
    fn heartbeat(&mut self, position: usize) {
        self.heard[position] = self.now;
    }

    fn command(&mut self, cmd: Command) {
        let effects = self.sim.command(cmd).unwrap_or_else(|e| panic!("{cmd:?} refused: {e}"));
        self.clocks(&effects);
    }

    /// One sweep of the device timeout; returns the devices it settled, and how.
    fn sweep(&mut self) -> Vec<(usize, DeviceState)> {
        let mut settled = Vec::new();
        for p in 0..self.sim.devices.len() {
            let state = self.sim.devices[p].1;
            let timeout = self.sim.plan.device_timeout_ms;
            if let Some((to, _)) =
                silence(self.sim.status.state, state, self.heard[p], self.active_since, self.now, timeout)
            {
                let effects = self.sim.report(p, to);
                self.clocks(&effects);
                settled.push((p, to));
            }
        }
        settled
    }

    /// Sweeps every `step` ms for `total` ms; nothing may be settled.
    fn sweep_quietly_for(&mut self, total: i64, step: i64) {
        let until = self.now + total;
        while self.now < until {
            self.wait(step);
            assert_eq!(self.sweep(), [], "settled at {} ms while {}", self.now, self.sim.status.state);
        }
    }

    fn status(&self) -> (RolloutState, usize) {
        (self.sim.status.state, self.sim.status.opened)
    }
}

#[test]
fn a_long_halt_does_not_turn_waiting_devices_unreachable_or_open_waves_at_once() {
    // 10 devices over 10,50,100: device 0, then 1-4, then 5-9.
    let mut c = Clocked::create(BRIEF, &[], 10);
    c.wait(1_000);
    c.report(0, D::Succeeded);
    assert_eq!(c.status(), (R::Running, 2));
    // Wave 2: device 1 fails and halts the rollout while 2 downloads, 3 verifies, and 4 has
    // not picked its assignment up yet.
    c.wait(1_000);
    c.report(2, D::Downloading);
    c.report(3, D::Verifying);
    c.report(1, D::Failed);
    assert_eq!(c.status(), (R::Paused, 2));

    // The device past its download finishes on its own, so its clock runs through the pause.
    c.wait(TIMEOUT);
    assert_eq!(c.sweep(), []);
    c.wait(1);
    assert_eq!(c.sweep(), [(3, D::TimedOut)]);
    // The operator answers ten device timeouts later; a sweep every half timeout settles
    // nobody: the pause is not the waiting devices' silence.
    c.sweep_quietly_for(10 * TIMEOUT, TIMEOUT / 2);
    assert_eq!(c.status(), (R::Paused, 2));

    c.command(Command::ResumeAck);
    assert_eq!(c.status(), (R::Running, 2), "wave 2 is not settled, so wave 3 waits");
    assert_eq!(c.sweep(), []);
    // The waiting devices get a whole timeout from the resume, not from their last word.
    c.wait(TIMEOUT);
    assert_eq!(c.sweep(), []);
    c.report(2, D::Succeeded);
    assert_eq!(c.status(), (R::Running, 2));
    c.report(4, D::Succeeded);
    assert_eq!(c.status(), (R::Running, 3), "the last wave opens once wave 2 settled, not before");

    // Once the rollout runs, silence counts again: one device of wave 3 never shows up.
    for p in 5..9 {
        c.report(p, D::Succeeded);
    }
    c.wait(TIMEOUT);
    assert_eq!(c.sweep(), []);
    c.wait(1);
    assert_eq!(c.sweep(), [(9, D::Unreachable)]);
    // The failures acknowledged on the way mark the end.
    assert_eq!(c.status(), (R::CompletedWithFailures, 3));
}

#[test]
fn a_gate_held_for_long_is_not_device_silence() {
    let mut c = Clocked::create(BRIEF, &[2], 10);
    c.report(0, D::Succeeded);
    assert_eq!(c.status(), (R::WaitingApproval, 1));
    c.sweep_quietly_for(10 * TIMEOUT, TIMEOUT / 2);
    c.command(Command::Approve);
    assert_eq!(c.status(), (R::Running, 2));
    assert_eq!(c.sweep(), []);
    c.wait(TIMEOUT / 2);
    for p in 1..5 {
        c.report(p, D::Downloading);
    }
    assert_eq!(c.sweep(), []);
    for p in 1..5 {
        c.report(p, D::Succeeded);
    }
    assert_eq!(c.status(), (R::Running, 3), "the waves open one by one, as before");
    for p in 5..10 {
        c.report(p, D::Succeeded);
    }
    assert_eq!(c.status(), (R::Completed, 3));
}

#[test]
fn a_device_that_keeps_heart_beating_is_never_timed_out_and_one_that_stops_is() {
    let mut c = Clocked::create(&[100], &[], 2);
    c.report(0, D::Downloading);
    c.report(1, D::Downloading);
    // A heartbeat every quarter timeout for three timeouts; device 1 stops after the first.
    let quarter = TIMEOUT / 4;
    c.wait(quarter);
    c.heartbeat(0);
    c.heartbeat(1);
    let last_heard_from_1 = c.now;
    while c.now < 3 * TIMEOUT {
        c.wait(quarter);
        c.heartbeat(0);
        let settled = c.sweep();
        assert!(!settled.iter().any(|(p, _)| *p == 0), "device 0 timed out at {} ms though it kept going", c.now);
        let expected: &[(usize, DeviceState)] =
            if c.now == last_heard_from_1 + TIMEOUT + quarter { &[(1, D::TimedOut)] } else { &[] };
        assert_eq!(settled, expected, "at {} ms", c.now);
    }
    assert_eq!(c.sim.devices[1].1, D::TimedOut);
    c.report(0, D::Verifying);
    c.report(0, D::Succeeded);
    // The timed-out device counted as a failure, which pauses rather than completes.
    assert_eq!(c.status(), (R::Paused, 1));
}

#[test]
fn the_group_version_is_the_newest_clean_completion_no_later_abort_reverted() {
    use AbortMode::{Keep, Revert};
    let r = |state, abort, version| GroupRollout { state, abort, version };
    // (case, the group's rollouts of one artifact newest first, the index of the group's version)
    type Case = (&'static str, Vec<GroupRollout<&'static str>>, Option<usize>);
    let table: &[Case] = &[
        ("no rollout at all", vec![], None),
        ("a successful one", vec![r(R::Completed, None, "1.0.0")], Some(0)),
        ("one still running is not known good", vec![r(R::Running, None, "2.0.0")], None),
        (
            "the newest successful one wins over an older one",
            vec![r(R::Completed, None, "2.0.0"), r(R::Completed, None, "1.0.0")],
            Some(0),
        ),
        (
            "a rollout that failed (completed with failures) is never the group's version",
            vec![r(R::CompletedWithFailures, None, "2.0.0"), r(R::Completed, None, "1.0.0")],
            Some(1),
        ),
        ("failures everywhere and nothing before: nothing", vec![r(R::CompletedWithFailures, None, "2.0.0")], None),
        (
            "a later abort with revert of the same version takes it back",
            vec![r(R::Aborted, Some(Revert), "2.0.0"), r(R::Completed, None, "2.0.0"), r(R::Completed, None, "1.0.0")],
            Some(2),
        ),
        (
            "an abort that keeps takes nothing back",
            vec![r(R::Aborted, Some(Keep), "2.0.0"), r(R::Completed, None, "2.0.0")],
            Some(1),
        ),
        (
            "an abort with revert of another version leaves the group's version alone",
            vec![r(R::Aborted, Some(Revert), "3.0.0"), r(R::Completed, None, "2.0.0")],
            Some(1),
        ),
        (
            "an abort with revert older than the completion does not count",
            vec![r(R::Completed, None, "2.0.0"), r(R::Aborted, Some(Revert), "2.0.0")],
            Some(0),
        ),
        (
            "paused and waiting rollouts are passed over",
            vec![r(R::Paused, None, "3.0.0"), r(R::WaitingApproval, None, "2.5.0"), r(R::Completed, None, "2.0.0")],
            Some(2),
        ),
    ];
    for (case, rollouts, expected) in table {
        assert_eq!(group_version(rollouts), *expected, "{case}");
    }
}

#[test]
fn a_late_joiner_joins_as_assigned_and_every_report_it_may_make_applies() {
    // The server records a joining device as `assigned` in the rollout, then applies its
    // report through the engine: every install step and outcome must be a move from there.
    let own: Vec<D> = DeviceState::ALL.into_iter().filter(|s| s.moved_by() == Mover::Device).collect();
    for to in own {
        let verdict = judge_report(Standing::NotIn { group_version: true }, to);
        if matches!(to, D::Reverted | D::RevertSkipped) {
            assert_eq!(verdict, Err(ReportRefused::NoRevert(to)));
        } else {
            assert_eq!(verdict, Ok(Verdict::Join), "{to}");
            assert!(accepts_transition(D::Assigned, to, None), "{to}");
        }
    }
    // A joiner's outcome in a completed rollout moves its counts and nothing else.
    let plan = Plan::new(&[100], &[], 1, 600_000).expect("valid");
    let mut status = Status { state: R::Completed, opened: 1, failures_counted: 0 };
    let mut counts = vec![WaveCounts::default()];
    counts[0].add(D::Succeeded, 2);
    counts[0].add(D::Assigned, 1);
    let effects = device_changed(&plan, &mut status, &mut counts, 0, D::Assigned, D::Failed);
    assert_eq!(effects, []);
    assert_eq!((status.state, status.failures_counted, counts[0].get(D::Failed)), (R::Completed, 0, 1));
}

#[test]
fn a_pause_resume_or_abort_changes_the_doc_of_exactly_these_devices() {
    use AbortMode::{Keep, Revert};
    let every_reached: Vec<D> =
        DeviceState::ALL.into_iter().filter(|s| !matches!(s, D::Pending | D::Removed)).collect();
    let table: &[(R, Option<AbortMode>, Vec<D>)] = &[
        // The devices a pause stops, and that a resume sets going again. Never a pending one.
        (R::Paused, None, vec![D::Assigned, D::Downloading, D::Unreachable]),
        (R::Running, None, vec![D::Assigned, D::Downloading, D::Unreachable]),
        (R::Aborted, Some(Keep), every_reached.clone()),
        (R::Aborted, Some(Revert), every_reached),
    ];
    for (now, abort, changed) in table {
        assert_eq!(&served_changed(*now, *abort), changed, "{now} ({abort:?})");
    }
}
