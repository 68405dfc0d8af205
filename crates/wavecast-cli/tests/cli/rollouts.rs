//! Rollouts across a simulated fleet, with real `wavecast server` and `wavecast sim` processes.

use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use wavecast_test_support::PgDatabase;

use crate::{Installation, Server, installation, ok, op, op_at, run};

/// A running `wavecast sim`, killed on drop.
pub(crate) struct Sim {
    child: Child,
    dir: PathBuf,
}

impl Sim {
    pub(crate) fn start(server: &Server, token: &str, root: &str, dir: &Path, args: &[&str]) -> Self {
        Self::start_in(server, token, root, dir, "plant-7", args, None)
    }

    /// Devices in `group`, their clocks `clock` ahead (see [`crate::wavecast_at`]).
    pub(crate) fn start_in(
        server: &Server,
        token: &str,
        root: &str,
        dir: &Path,
        group: &str,
        args: &[&str],
        clock: Option<&str>,
    ) -> Self {
        Self::start_url(&server.url, token, root, dir, group, args, clock)
    }

    /// Devices that talk to `url` (a server, or a balancer in front of several).
    pub(crate) fn start_url(
        url: &str,
        token: &str,
        root: &str,
        dir: &Path,
        group: &str,
        args: &[&str],
        clock: Option<&str>,
    ) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let mut cmd = crate::op_url(url, token, clock);
        cmd.args(["sim", "--group", group, "--trust-root", root, "--dir"]).arg(dir).args(args);
        if !args.contains(&"--poll-interval") {
            cmd.args(["--poll-interval", "250ms"]);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.with_extension("log")).unwrap())
            .spawn()
            .unwrap();
        // The sim prints one line once every device is enrolled and running.
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert!(
            line.starts_with("sim:"),
            "sim did not start: {line:?}\n{}",
            std::fs::read_to_string(dir.with_extension("log")).unwrap_or_default()
        );
        Self { child, dir: dir.to_path_buf() }
    }

    pub(crate) fn file(&self, device: &str) -> Vec<u8> {
        std::fs::read(self.dir.join(device).join("app").join("model.bin")).unwrap_or_default()
    }

    pub(crate) fn failing(&self) -> Vec<String> {
        let mut out: Vec<String> = std::fs::read_dir(&self.dir)
            .unwrap()
            .flatten()
            .filter(|e| e.path().join("app").join(".sim-fails").exists())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        out.sort();
        out
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A server with two versions of `yolo` published, for a fleet of sims.
pub(crate) struct Fleet {
    _tmp: tempfile::TempDir,
    pub(crate) server: Server,
    pub(crate) token: String,
    pub(crate) root: String,
    v1: Vec<u8>,
    v2: Vec<u8>,
    pub(crate) dir: PathBuf,
}

pub(crate) async fn fleet(database_url: Option<&str>) -> Fleet {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("install");
    let Installation { report, token, key } = installation(&dir);
    let server = Server::start(&dir, database_url).await;
    let (v1, v2) = (b"model one ".repeat(5000), b"model two ".repeat(6000));
    for (version, bytes) in [("1.0.0", &v1), ("2.0.0", &v2)] {
        let file = tmp.path().join(format!("m{version}"));
        std::fs::write(&file, bytes).unwrap();
        ok(op(&server, &token)
            .args(["artifact", "publish", "--name", "yolo", "--version", version, "--key", &key, "--file"])
            .arg(&file));
    }
    Fleet {
        root: report["root_json"].as_str().unwrap().to_owned(),
        dir: tmp.path().to_path_buf(),
        _tmp: tmp,
        server,
        token,
        v1,
        v2,
    }
}

pub(crate) fn create(f: &Fleet, server: &Server, args: &[&str]) -> serde_json::Value {
    let mut cmd = op(server, &f.token);
    cmd.args([
        "rollout",
        "create",
        "--group",
        "plant-7",
        "--probe",
        "exec:sim-check",
        "--probe-attempts",
        "1",
        "--json",
    ])
    .args(args);
    if !args.contains(&"--device-timeout") {
        // Short, so offline devices settle quickly; tests with a busy fleet pass their own.
        cmd.args(["--device-timeout", "4s"]);
    }
    serde_json::from_str(&ok(&mut cmd)).unwrap()
}

fn show(f: &Fleet, server: &Server, id: &str) -> serde_json::Value {
    show_at(server, &f.token, None, id)
}

/// `rollout show --json`, with the CLI's clock `clock` ahead.
pub(crate) fn show_at(server: &Server, token: &str, clock: Option<&str>, id: &str) -> serde_json::Value {
    serde_json::from_str(&ok(op_at(server, token, clock).args(["rollout", "show", id, "--json"]))).unwrap()
}

pub(crate) async fn wait(
    f: &Fleet,
    server: &Server,
    id: &str,
    what: &str,
    timeout: Duration,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    wait_at(server, &f.token, None, id, what, timeout, done).await
}

/// Polls `rollout show` until `done` holds, failing after `timeout` with the rollout and the
/// server's log.
pub(crate) async fn wait_at(
    server: &Server,
    token: &str,
    clock: Option<&str>,
    id: &str,
    what: &str,
    timeout: Duration,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + timeout;
    loop {
        let r = show_at(server, token, clock, id);
        if done(&r) {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "rollout {id} did not become {what} in {timeout:?}: {r:#}\nserver log:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

pub(crate) fn state_is(s: &'static str) -> impl Fn(&serde_json::Value) -> bool {
    move |r| r["state"] == s
}

/// Every device starts on 1.0.0.
pub(crate) async fn baseline(f: &Fleet) {
    baseline_with(f, "4s").await;
}

async fn baseline_with(f: &Fleet, device_timeout: &str) {
    let r = create(f, &f.server, &["--artifact", "yolo@1.0.0", "--waves", "100", "--device-timeout", device_timeout]);
    wait(f, &f.server, r["id"].as_str().unwrap(), "completed", Duration::from_secs(90), state_is("completed")).await;
}

fn audit(f: &Fleet, server: &Server) -> Vec<serde_json::Value> {
    serde_json::from_str::<Vec<serde_json::Value>>(&ok(
        op(server, &f.token).args(["audit", "list", "--limit", "10000", "--json"])
    ))
    .unwrap()
}

async fn seed_scenario(database_url: Option<&str>) {
    let f = fleet(database_url).await;
    let sim = Sim::start(
        &f.server,
        &f.token,
        &f.root,
        &f.dir.join("fleet"),
        &["--devices", "20", "--fail", "1", "--offline", "2"],
    );
    baseline(&f).await;

    let r = create(
        &f,
        &f.server,
        &["--artifact", "yolo@2.0.0", "--waves", "10,50,100", "--gate", "1", "--halt-after", "1"],
    );
    let id = r["id"].as_str().unwrap().to_owned();
    assert_eq!(r["state"], "waiting_approval", "the gated canary waits: {r:#}");
    assert_eq!(r["waves"][0]["gate"], "manual");
    assert_eq!(r["waves"][1]["gate"], "auto");
    let early = run(op(&f.server, &f.token).args(["rollout", "resume", &id, "--ack"]));
    assert_eq!(early.status.code(), Some(1), "resume of a rollout that is not paused is refused");
    let human = ok(op(&f.server, &f.token).args(["rollout", "show", &id]));
    assert!(
        human.contains("canary, manual gate") && human.contains("halt rule: pause after 1 failed device"),
        "{human}"
    );

    ok(op(&f.server, &f.token).args(["rollout", "approve", &id]));
    let paused = wait(&f, &f.server, &id, "paused", Duration::from_secs(60), state_is("paused")).await;
    assert_eq!(paused["failures_counted"], 1);
    assert_eq!(paused["counts"]["failed"], 1);
    // The halt is fleet-wide: the last wave has not opened, no device there got 2.0.0.
    assert_eq!(paused["waves"][2]["state"], "pending", "{paused:#}");
    let failing = sim.failing();
    assert_eq!(failing.len(), 1, "{failing:?}");
    assert_eq!(sim.file(&failing[0]), f.v1, "the failed device rolled back to 1.0.0 by itself");

    // The halt says why: the failed device, with what its probe said, and what to run next.
    let halted = ok(op(&f.server, &f.token).args(["rollout", "show", &id]));
    assert!(halted.contains("failed or timed out: 1 device"), "{halted}");
    assert!(
        halted.lines().any(|l| l.trim_start().starts_with(&failing[0]) && l.contains("exec:sim-check")),
        "{halted}"
    );
    assert!(halted.contains(&format!("next: wavecast rollout resume {id} --ack")), "{halted}");

    ok(op(&f.server, &f.token).args(["rollout", "resume", &id, "--ack"]));
    let watch = run(op(&f.server, &f.token).args(["rollout", "watch", &id, "--interval", "250ms"]));
    let watched = String::from_utf8_lossy(&watch.stdout);
    // The acknowledged failure marks the end: not a clean success, for people and scripts.
    assert_eq!(watch.status.code(), Some(3), "watch exits 3 for a rollout completed with failures:\n{watched}");
    assert!(
        watched.contains("COMPLETED WITH FAILURES: 1 failed, 0 timed out, 17 of 20 devices succeeded"),
        "{watched}"
    );
    let done = show(&f, &f.server, &id);
    assert_eq!(done["state"], "completed_with_failures");
    assert_eq!(done["counts"]["failed"], 1, "{done:#}");
    assert_eq!(done["counts"]["unreachable"], 2, "offline devices are reported, not waited for: {done:#}");
    assert_eq!(done["counts"]["succeeded"], 17, "{done:#}");
    let total: u64 = done["counts"].as_object().unwrap().values().map(|v| v.as_u64().unwrap()).sum();
    assert_eq!(total, 20);
    for i in 1..=18 {
        let name = format!("sim-{i:04}");
        let want = if failing.contains(&name) { &f.v1 } else { &f.v2 };
        assert!(&sim.file(&name) == want, "{name} holds the wrong bytes");
    }
    let events = audit(&f, &f.server);
    let count = |action: &str| {
        events
            .iter()
            .filter(|e| e["action"] == action && (e["subject"] == id.as_str() || e["detail"]["rollout"] == id.as_str()))
            .count()
    };
    assert_eq!(count("wave.opened"), 3);
    assert_eq!(count("rollout.paused"), 1);
    assert_eq!(count("rollout.resumed"), 1);
    assert_eq!(count("device.failed"), 1);
    assert_eq!(count("device.unreachable"), 2);
    assert_eq!(count("device.updated"), 17);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_scenario_sqlite() {
    seed_scenario(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_scenario_postgres() {
    let db = PgDatabase::create().await;
    seed_scenario(Some(db.url())).await;
}

async fn abort(database_url: Option<&str>, revert: bool) {
    let f = fleet(database_url).await;
    let sim = Sim::start(&f.server, &f.token, &f.root, &f.dir.join("fleet"), &["--devices", "10"]);
    baseline(&f).await;
    let r = create(&f, &f.server, &["--artifact", "yolo@2.0.0", "--waves", "50,100", "--gate", "2"]);
    let id = r["id"].as_str().unwrap().to_owned();
    let waiting =
        wait(&f, &f.server, &id, "waiting at the gate", Duration::from_secs(60), state_is("waiting_approval")).await;
    assert_eq!(waiting["waves"][0]["counts"]["succeeded"], 5, "{waiting:#}");
    let before: Vec<Vec<u8>> = (1..=10).map(|i| sim.file(&format!("sim-{i:04}"))).collect();
    assert_eq!(before.iter().filter(|b| **b == f.v2).count(), 5);

    let mode = if revert { "--revert" } else { "--keep" };
    let out = ok(op(&f.server, &f.token).args(["rollout", "abort", &id, mode]));
    assert!(out.contains("aborted"), "{out}");
    let watch = run(op(&f.server, &f.token).args(["rollout", "watch", &id]));
    assert_ne!(watch.status.code(), Some(0), "watch exits non-zero for an aborted rollout");
    let refused = run(op(&f.server, &f.token).args(["rollout", "approve", &id]));
    assert_eq!(refused.status.code(), Some(1), "an aborted rollout cannot be approved");

    if revert {
        let r = wait(&f, &f.server, &id, "reverted", Duration::from_secs(60), |r| r["counts"]["reverted"] == 5).await;
        assert_eq!(r["abort_mode"], "revert");
        for i in 1..=10 {
            assert!(sim.file(&format!("sim-{i:04}")) == f.v1, "sim-{i:04} is not back on 1.0.0");
        }
        let events = audit(&f, &f.server);
        assert_eq!(events.iter().filter(|e| e["action"] == "device.reverted").count(), 5);
    } else {
        // Give devices several check-ins to (wrongly) change anything.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let after: Vec<Vec<u8>> = (1..=10).map(|i| sim.file(&format!("sim-{i:04}"))).collect();
        assert!(after == before, "abort --keep changed devices");
        assert_eq!(show(&f, &f.server, &id)["counts"]["reverted"], 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_keep_sqlite() {
    abort(None, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_revert_sqlite() {
    abort(None, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_keep_postgres() {
    let db = PgDatabase::create().await;
    abort(Some(db.url()), false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_revert_postgres() {
    let db = PgDatabase::create().await;
    abort(Some(db.url()), true).await;
}

/// `abort --revert` tells the truth about first managed installs. Devices that held a file
/// wavecast did not put there (`--preexisting`) get it back and say `reverted`; devices whose
/// first managed install replaced nothing keep what they run and say `revert_skipped`, with
/// why. The audit log records exactly that, and `rollout show` and `device show` say it too.
///
/// The device's half (restoring the factory file, reporting `revert_skipped`) is the agent's:
/// this test passes once the agent of issue 10 is in.
async fn abort_revert_of_a_first_install(database_url: Option<&str>) {
    let f = fleet(database_url).await;
    let sim = Sim::start(&f.server, &f.token, &f.root, &f.dir.join("fleet"), &["--devices", "4", "--preexisting", "2"]);
    let factory = |device: &str| format!("factory yolo model of {device}\n").into_bytes();
    assert_eq!(sim.file("sim-0001"), factory("sim-0001"));
    assert_eq!(sim.file("sim-0003"), b"");
    // 99% of four devices is all four: every device installs in wave 1, and the rollout waits
    // at the gate of the empty wave 2 rather than completing.
    let r = create(&f, &f.server, &["--artifact", "yolo@2.0.0", "--waves", "99,100", "--gate", "2"]);
    let id = r["id"].as_str().unwrap().to_owned();
    wait(&f, &f.server, &id, "installed everywhere, at the gate", Duration::from_secs(60), |r| {
        r["state"] == "waiting_approval" && r["counts"]["succeeded"] == 4
    })
    .await;
    for i in 1..=4 {
        assert!(sim.file(&format!("sim-{i:04}")) == f.v2, "sim-{i:04} does not run 2.0.0");
    }

    ok(op(&f.server, &f.token).args(["rollout", "abort", &id, "--revert"]));
    let done = wait(&f, &f.server, &id, "answered", Duration::from_secs(60), |r| {
        r["counts"]["reverted"].as_u64().unwrap_or(0) + r["counts"]["revert_skipped"].as_u64().unwrap_or(0) == 4
    })
    .await;
    assert_eq!((done["counts"]["reverted"].as_u64(), done["counts"]["revert_skipped"].as_u64()), (Some(2), Some(2)));
    for device in ["sim-0001", "sim-0002"] {
        assert_eq!(sim.file(device), factory(device), "{device} did not get its factory file back");
    }
    for device in ["sim-0003", "sim-0004"] {
        assert!(sim.file(device) == f.v2, "{device} had nothing to go back to and keeps 2.0.0");
    }
    let events = audit(&f, &f.server);
    let about = |device: &str| -> Vec<&serde_json::Value> {
        events.iter().filter(|e| e["subject"] == device && e["detail"]["rollout"] == id.as_str()).collect()
    };
    for (device, action) in [
        ("sim-0001", "device.reverted"),
        ("sim-0002", "device.reverted"),
        ("sim-0003", "device.revert_skipped"),
        ("sim-0004", "device.revert_skipped"),
    ] {
        let actions: Vec<&str> = about(device).iter().map(|e| e["action"].as_str().unwrap()).collect();
        assert_eq!(actions, ["device.updated", action], "{device}");
        let last = about(device)[1];
        assert_eq!(last["actor"], format!("device:{device}"));
        if action == "device.revert_skipped" {
            let reason = last["detail"]["reason"].as_str().unwrap_or_default();
            assert!(!reason.is_empty(), "{device}: a skipped revert says why: {last}");
        }
    }
    let human = ok(op(&f.server, &f.token).args(["rollout", "show", &id]));
    assert!(human.contains("2 reverted · 2 revert skipped"), "{human}");
    let device = ok(op(&f.server, &f.token).args(["device", "show", "sim-0003"]));
    assert!(device.contains(&format!("rollout   {id} yolo@2.0.0 wave 1 revert_skipped — ")), "{device}");
}

crate::both!(abort_revert_of_a_first_install);

/// `rollout show` lists the devices a rollout waits for, with what the server last heard;
/// `--json` has them under `in_progress`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_show_lists_the_devices_it_waits_for() {
    let f = fleet(None).await;
    let _sim = Sim::start(&f.server, &f.token, &f.root, &f.dir.join("fleet"), &["--devices", "3", "--offline", "1"]);
    // Long enough that the offline device is still waited for when we look.
    let r = create(&f, &f.server, &["--artifact", "yolo@1.0.0", "--waves", "100", "--device-timeout", "1h"]);
    let id = r["id"].as_str().unwrap().to_owned();
    let shown = wait(&f, &f.server, &id, "waiting for the offline device only", Duration::from_secs(60), |r| {
        r["counts"]["succeeded"] == 2
    })
    .await;
    let at_work = &shown["in_progress"];
    assert_eq!(at_work["total"], 1, "{shown:#}");
    let device = &at_work["devices"][0];
    assert_eq!(
        (device["device"].as_str(), device["state"].as_str()),
        (Some("sim-0003"), Some("assigned")),
        "{shown:#}"
    );
    assert_eq!(device["progress"], serde_json::Value::Null);
    let human = ok(op(&f.server, &f.token).args(["rollout", "show", &id]));
    assert!(human.contains("in progress: 1 device"), "{human}");
    assert!(human.lines().any(|l| l.trim_start().starts_with("sim-0003") && l.contains("assigned")), "{human}");
    // The answers to commands carry the plan and counts, not the device list.
    let out = ok(op(&f.server, &f.token).args(["rollout", "abort", &id, "--keep"]));
    assert!(!out.contains("in progress:"), "{out}");
}

/// Two replicas on one PostgreSQL database, half the fleet on each, operator commands sent to
/// either: every wave opens once, every failure counts once, the counts add up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_one_rollout() {
    let db = PgDatabase::create().await;
    let f = fleet(Some(db.url())).await;
    let second = Server::start(&f.dir.join("install"), Some(db.url())).await;
    let a = Sim::start(
        &f.server,
        &f.token,
        &f.root,
        &f.dir.join("fleet-a"),
        &["--devices", "100", "--fail", "1", "--poll-interval", "500ms"],
    );
    let b = Sim::start(
        &second,
        &f.token,
        &f.root,
        &f.dir.join("fleet-b"),
        &["--devices", "100", "--first", "101", "--poll-interval", "500ms"],
    );
    // 200 agents on 2 cores in a debug build: give every device time to pick its
    // assignment up, so none is settled as unreachable.
    baseline_with(&f, "60s").await;

    let r = create(
        &f,
        &f.server,
        &[
            "--artifact",
            "yolo@2.0.0",
            "--waves",
            "10,50,100",
            "--gate",
            "2",
            "--halt-after",
            "1",
            "--device-timeout",
            "60s",
        ],
    );
    let id = r["id"].as_str().unwrap().to_owned();
    let paused = wait(&f, &second, &id, "paused", Duration::from_secs(120), state_is("paused")).await;
    assert_eq!(paused["failures_counted"], 1, "{paused:#}");
    ok(op(&second, &f.token).args(["rollout", "resume", &id, "--ack"]));
    wait(&f, &f.server, &id, "waiting at gate 2", Duration::from_secs(120), state_is("waiting_approval")).await;
    ok(op(&second, &f.token).args(["rollout", "approve", &id]));
    let done =
        wait(&f, &f.server, &id, "completed", Duration::from_secs(180), state_is("completed_with_failures")).await;

    let total: u64 = done["counts"].as_object().unwrap().values().map(|v| v.as_u64().unwrap()).sum();
    assert_eq!(total, 200, "{done:#}");
    if done["counts"]["unreachable"] != 0 {
        // Name the devices that never picked their assignment up, with what the server knows.
        let mut stuck = Vec::new();
        for i in 1..=200 {
            let name = format!("sim-{i:04}");
            let d: serde_json::Value =
                serde_json::from_str(&ok(op(&f.server, &f.token).args(["device", "show", &name, "--json"]))).unwrap();
            if d["rollouts"][0]["state"] == "unreachable" {
                stuck.push(d.to_string());
            }
        }
        panic!("devices settled as unreachable though they kept checking in:\n{}", stuck.join("\n"));
    }
    assert_eq!(done["counts"]["failed"], 1, "{done:#}");
    assert_eq!(done["counts"]["succeeded"], 199, "{done:#}");
    for (i, w) in done["waves"].as_array().unwrap().iter().enumerate() {
        let sum: u64 = w["counts"].as_object().unwrap().values().map(|v| v.as_u64().unwrap()).sum();
        assert_eq!(sum, w["devices"].as_u64().unwrap(), "wave {i}");
    }
    assert_eq!(done["waves"][0]["devices"], 20);
    assert_eq!(done["waves"][1]["devices"], 80);
    assert_eq!(done["waves"][2]["devices"], 100);
    let events = audit(&f, &second);
    let mine = |action: &str| {
        events
            .iter()
            .filter(|e| e["action"] == action && (e["subject"] == id.as_str() || e["detail"]["rollout"] == id.as_str()))
            .count()
    };
    assert_eq!(mine("wave.opened"), 3, "each wave opened exactly once");
    assert_eq!(mine("device.failed"), 1, "the failure was counted once");
    assert_eq!(mine("rollout.paused"), 1);
    assert_eq!(mine("device.updated"), 199);
    assert_eq!(a.failing().len() + b.failing().len(), 1);
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["seq"], i, "the audit log has no gaps or duplicates across replicas");
    }
    second.stop();
}

/// A device's lifetime across two replicas on one PostgreSQL database (issue 11): enrollment
/// tokens used up, expired or revoked through one replica are refused by the other; a device
/// revoked through one replica is refused by the other on its very next request; a silent
/// device that holds a rollout stops holding it once revoked, and counts as removed, not
/// failed; a removed device is gone from the list, and the audit log has it all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_lifecycle_across_two_replicas() {
    let db = PgDatabase::create().await;
    let f = fleet(Some(db.url())).await;
    let a = &f.server;
    let b = Server::start(&f.dir.join("install"), Some(db.url())).await;
    let json = |out: String| -> serde_json::Value { serde_json::from_str(&out).unwrap() };
    let http = reqwest::Client::new();
    let enroll = |server: &Server, token: &str, name: &str| {
        http.post(format!("{}/device/v1/enroll", server.url))
            .json(&serde_json::json!({ "token": token, "name": name, "hardware": "hw" }))
            .send()
    };
    let whoami = |server: &Server, credential: &str| {
        http.get(format!("{}/device/v1/whoami", server.url)).bearer_auth(credential).send()
    };

    // Three devices on replica B; the last never checks in, and with a device timeout of an
    // hour it would hold the rollout that long.
    let _sim = Sim::start(&b, &f.token, &f.root, &f.dir.join("fleet"), &["--devices", "3", "--offline", "1"]);
    let r = create(&f, a, &["--artifact", "yolo@1.0.0", "--waves", "100", "--device-timeout", "1h"]);
    let id = r["id"].as_str().unwrap().to_owned();
    wait(&f, &b, &id, "waiting for the offline device only", Duration::from_secs(60), |r| {
        r["counts"]["succeeded"] == 2
    })
    .await;
    assert_eq!(show(&f, &b, &id)["state"], "running");
    let out = ok(op(a, &f.token).args(["device", "revoke", "sim-0003"]));
    assert!(out.contains("revoked device sim-0003") && out.contains(&format!("as removed: {id}")), "{out}");
    // Revoking it settled the rollout at once, seen through the other replica: no failure.
    let done = show(&f, &b, &id);
    assert_eq!(done["state"], "completed", "{done:#}");
    assert_eq!((done["counts"]["removed"].as_u64(), done["failures_counted"].as_u64()), (Some(1), Some(0)));
    let human = ok(op(&b, &f.token).args(["rollout", "show", &id]));
    assert!(human.contains("2/3 succeeded · 1 removed"), "{human}");

    // A token for one device, minted through A, admits one device through B and none after.
    let once =
        json(ok(op(a, &f.token).args(["device", "enroll-token", "--group", "plant-7", "--uses", "1", "--json"])));
    let once_token = once["token"].as_str().unwrap();
    let first = enroll(&b, once_token, "cam-1").await.unwrap();
    assert_eq!(first.status(), reqwest::StatusCode::CREATED);
    let credential = first.json::<serde_json::Value>().await.unwrap()["credential"].as_str().unwrap().to_owned();
    let second = enroll(a, once_token, "cam-2").await.unwrap();
    assert_eq!(second.status(), reqwest::StatusCode::UNAUTHORIZED);
    assert!(second.text().await.unwrap().contains("all of them have enrolled"));
    // A token revoked through B is refused through A.
    let revocable = json(ok(op(&b, &f.token).args(["device", "enroll-token", "--group", "plant-7", "--json"])));
    let out = ok(op(&b, &f.token).args(["device", "enroll-token", "revoke", revocable["id"].as_str().unwrap()]));
    assert!(out.contains("revoked enrollment token"), "{out}");
    let refused = enroll(a, revocable["token"].as_str().unwrap(), "cam-3").await.unwrap();
    assert_eq!(refused.status(), reqwest::StatusCode::UNAUTHORIZED);
    assert!(refused.text().await.unwrap().contains("was revoked"));
    // A token that expired (a second's lifetime, two seconds ago) is refused by either.
    let brief =
        json(ok(op(a, &f.token).args(["device", "enroll-token", "--group", "plant-7", "--expires", "1s", "--json"])));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let expired = enroll(&b, brief["token"].as_str().unwrap(), "cam-4").await.unwrap();
    assert_eq!(expired.status(), reqwest::StatusCode::UNAUTHORIZED);
    assert!(expired.text().await.unwrap().contains("has expired"));
    let listed = ok(op(a, &f.token).args(["device", "enroll-token", "list"]));
    assert!(listed.lines().any(|l| l.starts_with(once["id"].as_str().unwrap()) && l.contains(" 1/1 ")), "{listed}");
    assert!(
        listed.lines().any(|l| l.starts_with(revocable["id"].as_str().unwrap()) && l.contains("revoked")),
        "{listed}"
    );

    // A device revoked through one replica is refused by the other on its very next request.
    assert_eq!(whoami(a, &credential).await.unwrap().status(), reqwest::StatusCode::OK);
    ok(op(&b, &f.token).args(["device", "revoke", "cam-1"]));
    let refused = whoami(a, &credential).await.unwrap();
    assert_eq!(refused.status(), reqwest::StatusCode::UNAUTHORIZED);
    assert!(refused.text().await.unwrap().contains("credential of device cam-1 was revoked"));

    let revoked = ok(op(a, &f.token).args(["device", "list", "--state", "revoked"]));
    let names: Vec<&str> = revoked.lines().skip(1).filter_map(|l| l.split_whitespace().next()).collect();
    assert_eq!(names, ["cam-1", "sim-0003"], "{revoked}");
    // Removed, it is gone from the list and the group, on both replicas.
    let out = ok(op(a, &f.token).args(["device", "remove", "sim-0003"]));
    assert!(out.contains("removed device sim-0003 (no longer in group plant-7)"), "{out}");
    let gone = run(op(&b, &f.token).args(["device", "show", "sim-0003"]));
    assert_eq!(gone.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&gone.stderr).contains("not found"));
    let devices = json(ok(op(&b, &f.token).args(["device", "list", "--json"])));
    let names: Vec<&str> = devices.as_array().unwrap().iter().map(|d| d["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["cam-1", "sim-0001", "sim-0002"]);

    let events = audit(&f, &b);
    let actions = |subject: &str| -> Vec<&str> {
        events
            .iter()
            .filter(|e| e["subject"] == subject && e["actor"] == "admin")
            .map(|e| e["action"].as_str().unwrap())
            .collect()
    };
    assert_eq!(actions("sim-0003"), ["device.revoked", "device.removed", "device.decommissioned"]);
    assert_eq!(actions("cam-1"), ["device.revoked"]);
    assert_eq!(events.iter().filter(|e| e["action"] == "enrollment_token.revoked").count(), 1);
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["seq"], i, "the audit log has no gaps or duplicates across replicas");
    }
    b.stop();
}

/// A device that joins its group late is given the group's version — the last version a
/// rollout completed cleanly, never one that completed with failures — and its install is
/// recorded and audited like any other device's: `device show` has it, the audit log too.
async fn a_late_joiner_gets_the_known_good_version_and_counts(database_url: Option<&str>) {
    let f = fleet(database_url).await;
    let _early = Sim::start(&f.server, &f.token, &f.root, &f.dir.join("early"), &["--devices", "3", "--fail", "1"]);
    let good = create(&f, &f.server, &["--artifact", "yolo@1.0.0", "--waves", "100"]);
    let good = good["id"].as_str().unwrap().to_owned();
    wait(&f, &f.server, &good, "completed", Duration::from_secs(60), state_is("completed")).await;
    let bad = create(&f, &f.server, &["--artifact", "yolo@2.0.0", "--waves", "100", "--halt-after", "5"]);
    let bad = bad["id"].as_str().unwrap().to_owned();
    wait(&f, &f.server, &bad, "completed with failures", Duration::from_secs(60), state_is("completed_with_failures"))
        .await;

    let late = Sim::start(&f.server, &f.token, &f.root, &f.dir.join("late"), &["--devices", "1", "--first", "4"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let shown = loop {
        let d: serde_json::Value =
            serde_json::from_str(&ok(op(&f.server, &f.token).args(["device", "show", "sim-0004", "--json"]))).unwrap();
        if d["rollouts"][0]["state"] == "succeeded" && d["artifacts"].as_array().is_some_and(|a| !a.is_empty()) {
            break d;
        }
        assert!(Instant::now() < deadline, "the late joiner's install was not recorded: {d:#}\n{}", f.server.log());
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(late.file("sim-0004") == f.v1, "the late joiner runs the known-good 1.0.0, not 2.0.0");
    assert_eq!(shown["rollouts"][0]["rollout_id"], good.as_str(), "{shown:#}");
    assert_eq!(shown["artifacts"][0]["version"], "1.0.0", "{shown:#}");
    let joined = show(&f, &f.server, &good);
    assert_eq!((joined["device_count"].as_u64(), joined["counts"]["succeeded"].as_u64()), (Some(4), Some(4)));
    let events = audit(&f, &f.server);
    let about: Vec<(&str, &str)> = events
        .iter()
        .filter(|e| e["subject"] == "sim-0004" && e["action"] != "device.enrolled")
        .map(|e| (e["action"].as_str().unwrap(), e["detail"]["rollout"].as_str().unwrap_or_default()))
        .collect();
    assert_eq!(about, [("device.updated", good.as_str())]);
}

crate::both!(a_late_joiner_gets_the_known_good_version_and_counts);
