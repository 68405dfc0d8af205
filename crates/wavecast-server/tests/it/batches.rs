//! Device reports applied in batches (group commit): a batch ends exactly where the same reports
//! one transaction each end, a refused report in a batch leaves nothing of its own behind,
//! waiting reports share one transaction, and report ids past their retention are forgotten.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::http::StatusCode;
use serde_json::json;
use wavecast_core::assignment::{DeviceState, Report};
use wavecast_core::evidence::concerns_rollout;
use wavecast_core::rollout::{AbortMode, Command, GateApproval, ReportRefused};
use wavecast_core::{DeviceName, GroupName};
use wavecast_server::store::{DeviceRef, DeviceReports, ReportOutcome};

use crate::both;
use crate::support::{Db, Env};

/// SplitMix64: a seed names a stream, so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    /// One of `choices`, each as likely as its weight.
    fn weighted<T: Copy>(&mut self, choices: &[(T, usize)]) -> T {
        let total: usize = choices.iter().map(|(_, w)| w).sum();
        let mut at = self.below(total);
        for (c, w) in choices {
            if at < *w {
                return *c;
            }
            at -= w;
        }
        choices[0].0
    }
}

/// The two artifacts every side rolls out.
async fn publish_both(env: &Env) {
    for (target, blob) in [("m@1.0.0", &b"one"[..]), ("n@1.0.0", b"two")] {
        assert_eq!(env.publish(target, blob).await.status, StatusCode::CREATED);
    }
}

async fn group(env: &Env, name: &str) {
    let r = env.post_json("/api/v1/groups", Some(&env.admin), json!({ "name": name })).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.message());
}

async fn create(env: &Env, body: serde_json::Value) -> String {
    let r = env.post_json("/api/v1/rollouts", Some(&env.admin), body).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.message());
    r.json()["id"].as_str().unwrap().to_owned()
}

fn report(id: &str, rollout: &str, state: DeviceState) -> Report {
    Report {
        id: id.to_owned(),
        rollout_id: rollout.to_owned(),
        artifact: "m".into(),
        version: "1.0.0".into(),
        state,
        reason: state.is_failure().then(|| "probe exec:check exited with 1".to_owned()),
        probe_result: None,
        at_ms: 1,
    }
}

/// What a stream is made of: one device's reports about one rollout (a device slot, a rollout
/// index, (report id, state) pairs), or an operator's command on a rollout.
#[derive(Debug, Clone)]
enum Step {
    Reports { slot: usize, rollout: usize, reports: Vec<(String, DeviceState)> },
    Command { rollout: usize, command: Command },
}

const DEVICES: usize = 5;

/// A random stream over `DEVICES + 1` device slots (the last one joins its group after the
/// rollouts were created) and two rollouts: valid and invalid moves, ids sent again, reports
/// from devices whose wave has not opened, failures that halt, commands between them.
fn stream(rng: &mut Rng) -> Vec<Step> {
    use DeviceState as S;
    let states = [
        (S::Downloading, 14),
        (S::Verifying, 8),
        (S::Installing, 8),
        (S::Probing, 8),
        (S::Succeeded, 24),
        (S::Failed, 10),
        (S::Reverted, 4),
        (S::RevertSkipped, 2),
        (S::Unreachable, 2),
        (S::Pending, 1),
        (S::Assigned, 1),
        (S::TimedOut, 1),
        (S::Removed, 1),
    ];
    let commands = [
        (Command::ResumeAck, 4),
        (Command::Approve, 4),
        (Command::Abort(AbortMode::Revert), 1),
        (Command::Abort(AbortMode::Keep), 1),
    ];
    // Ids sent again are ids the device sent about the same rollout, as an agent's are (they
    // derive from the transition). The same id about two rollouts at once has no order: the
    // two rollouts' batches may commit either way round, as two requests may arrive.
    let mut sent: Vec<Vec<Vec<String>>> = vec![vec![Vec::new(); 2]; DEVICES + 1];
    let mut steps = Vec::new();
    for n in 0..30 + rng.below(50) {
        if rng.chance(6) {
            steps.push(Step::Command { rollout: rng.below(2), command: rng.weighted(&commands) });
        }
        let slot = rng.below(DEVICES + 1);
        let rollout = rng.weighted(&[(0, 7), (1, 3)]);
        let reports = (0..1 + rng.below(3))
            .map(|k| {
                let sent = &mut sent[slot][rollout];
                let id = match sent.len() {
                    len if len > 0 && rng.chance(15) => sent[rng.below(len)].clone(),
                    _ => format!("r{n}-{k}"),
                };
                sent.push(id.clone());
                (id, rng.weighted(&states))
            })
            .collect();
        steps.push(Step::Reports { slot, rollout, reports });
    }
    steps
}

/// One side of the comparison: a group, its devices by slot, its two rollouts.
struct Side {
    group: GroupName,
    devices: Vec<DeviceRef>,
    rollouts: Vec<String>,
}

impl Side {
    /// A group of `DEVICES` devices, two rollouts to it as `plan` says, and a device that joins
    /// the group after them. Slots follow each device's wave in the first rollout (the second
    /// has one wave), then its name, so two sides' slots stand alike in both rollouts.
    async fn new(env: &Env, name: &str, plan: &serde_json::Value) -> Self {
        group(env, name).await;
        let mut ids = BTreeMap::new();
        for i in 0..DEVICES {
            let device = format!("{name}d{i}");
            ids.insert(device.clone(), env.enroll(name, &device).await.1);
        }
        let mut first = plan.clone();
        first["artifact"] = json!("m@1.0.0");
        first["group"] = json!(name);
        let second = json!({ "artifact": "n@1.0.0", "group": name, "waves": [100], "halt_after": 1,
                             "probe": "exec:check", "device_timeout_ms": 3_600_000u64 });
        let rollouts = vec![create(env, first).await, create(env, second).await];
        let mut by_wave = Vec::new();
        for (device, id) in &ids {
            let wave = env.state.store().device_rollouts(id).await.unwrap();
            let wave = wave.iter().find(|r| r.rollout_id == rollouts[0]).unwrap().wave;
            by_wave.push((wave, device.clone(), id.clone()));
        }
        by_wave.sort();
        let late = format!("{name}late");
        let late_id = env.enroll(name, &late).await.1;
        let devices = by_wave
            .into_iter()
            .map(|(_, name, id)| (name, id))
            .chain([(late, late_id)])
            .map(|(name, id)| DeviceRef { id, name: DeviceName::new(name).unwrap() })
            .collect();
        Self { group: GroupName::new(name).unwrap(), devices, rollouts }
    }

    fn part(&self, slot: usize, rollout: usize, reports: &[(String, DeviceState)], now_ms: i64) -> DeviceReports {
        DeviceReports {
            device: self.devices[slot].clone(),
            group: self.group.clone(),
            reports: reports.iter().map(|(id, state)| report(id, &self.rollouts[rollout], *state)).collect(),
            now_ms,
        }
    }

    /// Where everything stands, in the side's own words replaced by slots: each rollout's
    /// state and counts, each device's row in each rollout, and the audit events about each
    /// rollout in order (actions, actors, subjects and details; not times).
    async fn outcome(&self, env: &Env) -> String {
        let store = env.state.store();
        let mut out = Vec::new();
        for id in &self.rollouts {
            let r = store.rollout(id).await.unwrap().unwrap();
            out.push(json!([
                r.status.state,
                r.status.opened,
                r.status.failures_counted,
                r.counts,
                r.device_count,
                r.abort_mode
            ]));
        }
        for d in &self.devices {
            let rows = store.device_rollouts(&d.id).await.unwrap();
            let mut rows: Vec<_> = rows
                .iter()
                .map(|r| (self.rollouts.iter().position(|id| *id == r.rollout_id), r.wave, r.state, r.reason.clone()))
                .collect();
            rows.sort_by_key(|r| r.0);
            out.push(json!(rows));
        }
        let events = store.audit_events(0, 100_000).await.unwrap();
        for id in &self.rollouts {
            let about: Vec<_> = events
                .iter()
                .filter(|e| concerns_rollout(e, id))
                .map(|e| json!([e.action, e.actor, e.subject, e.detail]))
                .collect();
            out.push(json!(about));
        }
        let mut text = serde_json::to_string(&out).unwrap();
        for (i, id) in self.rollouts.iter().enumerate() {
            text = text.replace(id, &format!("ROLLOUT{i}"));
        }
        for (slot, d) in self.devices.iter().enumerate() {
            text = text.replace(d.name.as_str(), &format!("SLOT{slot}"));
        }
        text.replace(self.group.as_str(), "GROUP")
    }
}

/// The rollout command of `step`, on `side`; whether it was accepted.
async fn command(env: &Env, side: &Side, rollout: usize, command: Command, now_ms: i64) -> bool {
    let store = env.state.store();
    store.rollout_command(&side.rollouts[rollout], command, "admin", GateApproval::AnyApprover, now_ms).await.is_ok()
}

/// The property: any stream of reports, applied through the batcher (many at once, in batches
/// whose bounds fall where they may, two rollouts' batches side by side) ends exactly where the
/// same stream applied one report per transaction ends: the same outcome for every report, the
/// same rollout states and counts, the same device rows, the same audit events.
async fn batched_reports_end_where_one_at_a_time_ends(db: Db) {
    let env = Env::new(db).await;
    publish_both(&env).await;
    let mut batches_seen = false;
    let mut covered = std::collections::BTreeSet::new();
    for seed in 1..=12u64 {
        let mut rng = Rng(seed);
        let gates: Vec<u64> = if rng.chance(40) { vec![2] } else { vec![] };
        let plan = json!({ "waves": [40, 100], "gates": gates, "halt_after": 1 + rng.below(3),
                           "probe": "exec:check", "device_timeout_ms": 3_600_000u64 });
        let steps = stream(&mut rng);
        let one = Side::new(&env, &format!("s{seed}a"), &plan).await;
        let many = Side::new(&env, &format!("s{seed}b"), &plan).await;

        // One report per transaction, in stream order.
        let mut expected = Vec::new();
        for (n, step) in steps.iter().enumerate() {
            let now = 1_000_000 + n as i64;
            match step {
                Step::Reports { slot, rollout, reports } => {
                    let part = one.part(*slot, *rollout, reports, now);
                    for r in &part.reports {
                        let outcome = env.state.store().apply_report(&part.device, &part.group, r, now).await.unwrap();
                        covered.insert(match (&outcome, *slot == DEVICES) {
                            (ReportOutcome::Applied, true) => "a late device joined".to_owned(),
                            (ReportOutcome::Refused(_), _) => "refused".to_owned(),
                            (o, _) => format!("{o:?}"),
                        });
                        expected.push(format!("{outcome:?}"));
                    }
                }
                Step::Command { rollout, command: c } => {
                    expected.push(format!("{:?}", command(&env, &one, *rollout, *c, now).await))
                }
            }
        }

        // Through the batcher: everything between two commands submitted at once, in stream
        // order, then awaited together.
        let batches_before = env.state.reports().stats().batches;
        let mut got = Vec::new();
        let mut waiting = Vec::new();
        for (n, step) in steps.iter().enumerate() {
            let now = 1_000_000 + n as i64;
            match step {
                Step::Reports { slot, rollout, reports } => {
                    let part = many.part(*slot, *rollout, reports, now);
                    waiting.push(env.state.reports().submit(&many.rollouts[*rollout], part));
                }
                Step::Command { rollout, command: c } => {
                    for outcomes in futures_util::future::join_all(waiting.drain(..)).await {
                        got.extend(outcomes.unwrap().iter().map(|o| format!("{o:?}")));
                    }
                    got.push(format!("{:?}", command(&env, &many, *rollout, *c, now).await));
                }
            }
        }
        for outcomes in futures_util::future::join_all(waiting).await {
            got.extend(outcomes.unwrap().iter().map(|o| format!("{o:?}")));
        }
        let stats = env.state.reports().stats();
        let parts = steps.iter().filter(|s| matches!(s, Step::Reports { .. })).count() as u64;
        batches_seen |= stats.batches - batches_before < parts;

        assert_eq!(got, expected, "seed {seed}: outcomes of {steps:?}");
        assert_eq!(many.outcome(&env).await, one.outcome(&env).await, "seed {seed}: {steps:?}");
        for id in &one.rollouts {
            covered.insert(format!("{}", env.state.store().rollout(id).await.unwrap().unwrap().status.state));
        }
    }
    assert!(batches_seen, "no batch ever held more than one device's reports");
    // The streams reach what they are meant to: every kind of outcome, halts and the ends.
    for case in ["Applied", "Repeated", "Stale", "refused", "a late device joined", "paused", "completed", "aborted"] {
        assert!(covered.contains(case), "no seed covers {case}: {covered:?}");
    }
}

/// A batch where one device's report is refused: the others apply, and of the refused one
/// nothing is recorded, not even its id (sent again, it is refused again, not a repeat).
async fn a_refused_report_in_a_batch_leaves_nothing_behind(db: Db) {
    let env = Env::new(db).await;
    publish_both(&env).await;
    let plan = json!({ "waves": [100], "halt_after": 5, "probe": "exec:check", "device_timeout_ms": 3_600_000u64 });
    let side = Side::new(&env, "g", &plan).await;
    let id = &side.rollouts[0];
    let store = env.state.store();
    let audit_before = store.audit_size().await.unwrap();
    let parts = vec![
        side.part(0, 0, &[("a".into(), DeviceState::Downloading), ("b".into(), DeviceState::Succeeded)], 10),
        side.part(1, 0, &[("c".into(), DeviceState::Unreachable)], 11),
        side.part(2, 0, &[("d".into(), DeviceState::Failed)], 12),
    ];
    let got = store.apply_reports(id, &parts).await.unwrap();
    assert_eq!(
        got,
        [
            vec![ReportOutcome::Applied, ReportOutcome::Applied],
            vec![ReportOutcome::Refused(ReportRefused::NotTheDevices(DeviceState::Unreachable))],
            vec![ReportOutcome::Applied],
        ]
    );
    let r = store.rollout(id).await.unwrap().unwrap();
    let count = |s: DeviceState| r.counts.iter().map(|c| c.get(s)).sum::<u64>();
    assert_eq!(
        (count(DeviceState::Succeeded), count(DeviceState::Failed), count(DeviceState::Assigned)),
        (1, 1, 3),
        "{r:?}"
    );
    let refused_row = store.device_rollouts(&side.devices[1].id).await.unwrap();
    assert_eq!(refused_row[0].state, DeviceState::Assigned);
    // Two device outcomes audited, nothing about the refused report.
    let events = store.audit_events(audit_before, 100).await.unwrap();
    let actions: Vec<String> = events.iter().map(|e| format!("{} {}", e.action, e.subject)).collect();
    assert_eq!(
        actions,
        [format!("device.updated {}", side.devices[0].name), format!("device.failed {}", side.devices[2].name)]
    );
    // Its id was not kept: sent again it is judged again; the others' are repeats.
    let again =
        vec![side.part(1, 0, &[("c".into(), DeviceState::Unreachable), ("c".into(), DeviceState::Downloading)], 20)];
    let got = store.apply_reports(id, &again).await.unwrap();
    assert_eq!(
        got,
        [vec![ReportOutcome::Refused(ReportRefused::NotTheDevices(DeviceState::Unreachable)), ReportOutcome::Applied]]
    );
    let repeats = vec![
        side.part(0, 0, &[("b".into(), DeviceState::Succeeded)], 21),
        side.part(1, 0, &[("c".into(), DeviceState::Failed)], 21),
    ];
    assert_eq!(
        store.apply_reports(id, &repeats).await.unwrap(),
        [vec![ReportOutcome::Repeated], vec![ReportOutcome::Repeated]]
    );
}

/// Reports about one rollout that wait while nothing else runs are applied as one batch: one
/// transaction, however many devices sent them. (A runtime of one thread: the batch starts
/// only once every report is queued.)
async fn waiting_reports_share_one_transaction(db: Db) {
    let env = Env::new(db).await;
    publish_both(&env).await;
    let plan = json!({ "waves": [100], "halt_after": 5, "probe": "exec:check", "device_timeout_ms": 3_600_000u64 });
    let side = Side::new(&env, "g", &plan).await;
    let before = env.state.reports().stats();
    let waiting: Vec<_> = (0..DEVICES)
        .map(|slot| {
            let part =
                side.part(slot, 0, &[("a".into(), DeviceState::Downloading), ("b".into(), DeviceState::Succeeded)], 5);
            env.state.reports().submit(&side.rollouts[0], part)
        })
        .collect();
    for outcomes in futures_util::future::join_all(waiting).await {
        assert_eq!(outcomes.unwrap(), [ReportOutcome::Applied, ReportOutcome::Applied]);
    }
    let after = env.state.reports().stats();
    assert_eq!((after.batches - before.batches, after.reports - before.reports), (1, 2 * DEVICES as u64));
    let r = env.state.store().rollout(&side.rollouts[0]).await.unwrap().unwrap();
    assert_eq!(r.status.state, wavecast_core::rollout::RolloutState::Completed, "{r:?}");
}

mod one_thread {
    //! [`super::waiting_reports_share_one_transaction`] on a runtime of one thread.
    #[tokio::test(flavor = "current_thread")]
    async fn sqlite() {
        super::waiting_reports_share_one_transaction(crate::support::Db::Sqlite).await
    }
    #[tokio::test(flavor = "current_thread")]
    async fn postgres() {
        super::waiting_reports_share_one_transaction(crate::support::Db::Postgres).await
    }
}

/// Report ids older than the retention are forgotten (a report sent again after that is judged
/// afresh); younger ones are kept (sent again, a repeat). Deleted in chunks until none is due.
async fn report_ids_past_their_retention_are_forgotten(db: Db) {
    let env = Env::new(db).await;
    publish_both(&env).await;
    let plan = json!({ "waves": [100], "halt_after": 5, "probe": "exec:check", "device_timeout_ms": 3_600_000u64 });
    let side = Side::new(&env, "g", &plan).await;
    let (store, id) = (env.state.store(), &side.rollouts[0]);
    let day: i64 = 24 * 3600 * 1000;
    let now = 100 * day;
    // Three old ids (40 days) and two young ones (10 days) per device.
    for slot in 0..DEVICES {
        let old = [
            ("o1".into(), DeviceState::Downloading),
            ("o2".into(), DeviceState::Verifying),
            ("o3".into(), DeviceState::Installing),
        ];
        store.apply_reports(id, &[side.part(slot, 0, &old, now - 40 * day)]).await.unwrap();
        let young = [("y1".into(), DeviceState::Probing), ("y2".into(), DeviceState::Succeeded)];
        store.apply_reports(id, &[side.part(slot, 0, &young, now - 10 * day)]).await.unwrap();
    }
    let retention = Duration::from_secs(30 * 24 * 3600);
    let forgotten = wavecast_server::forget_old_reports(store, retention, now, 4).await.unwrap();
    assert_eq!(forgotten, 3 * DEVICES as u64, "in chunks of 4, every old id and no young one");
    assert_eq!(wavecast_server::forget_old_reports(store, retention, now, 4).await.unwrap(), 0);
    // Sent again: the old report is judged again (out of date now), the young one a repeat.
    let again = [("o1".into(), DeviceState::Downloading), ("y1".into(), DeviceState::Probing)];
    let got = store.apply_reports(id, &[side.part(0, 0, &again, now)]).await.unwrap();
    assert_eq!(got, [vec![ReportOutcome::Stale, ReportOutcome::Repeated]]);
    // The server refuses a retention that would forget ids agents still send.
    let config = env.config.clone();
    assert!(config.clone().with_report_retention(Duration::from_secs(600)).is_err());
    assert_eq!(config.with_report_retention(Duration::from_secs(3600)).unwrap().report_retention.as_secs(), 3600);
}

both!(
    batched_reports_end_where_one_at_a_time_ends,
    a_refused_report_in_a_batch_leaves_nothing_behind,
    report_ids_past_their_retention_are_forgotten,
);
