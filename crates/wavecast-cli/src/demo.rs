//! The demo's script: a gated three-wave rollout with a failing canary, every step printed and checked.
//!
//! It runs the real pieces in one process against a temporary directory — `init`, the server
//! on SQLite, the publisher's offline signing, 20 real agents from the simulator — so a
//! newcomer can watch a rollout halt on a bad canary, be acknowledged and resumed, and
//! complete without waiting for a device that went offline; then watch a regressed model,
//! signed with its golden set, be caught by the model check on the canary's own devices.
//!
//! The models are small real ONNX classifiers (the model check's test fixtures, built in).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use wavecast_api::audit::AuditEvent;
use wavecast_api::{AbortRequest, CreateRollout, DeviceDetail, ResumeRequest, Rollout};
use wavecast_core::audit::AuditAction;
use wavecast_core::rollout::{AbortMode, RolloutState};
use wavecast_core::{ArtifactName, ArtifactVersion, TargetName};

use crate::Client;
use crate::cmd::rollout::render;

fn step(n: u32, text: &str) {
    if wavecast_os::term::stdout_color() {
        println!("\n\x1b[1m{n}. {text}\x1b[0m");
    } else {
        println!("\n{n}. {text}");
    }
}

fn say(text: &str) {
    for line in text.lines() {
        println!("   {line}");
    }
}

const CLASSIFIER: &[u8] = include_bytes!("../../wavecast-model-check/tests/fixtures/classifier/model.onnx");
const RETRAINED: &[u8] = include_bytes!("../../wavecast-model-check/tests/fixtures/perturbed/model.onnx");
const GOLDEN: &[u8] = include_bytes!("../../wavecast-model-check/tests/fixtures/classifier/golden.npz");

/// The classifier with `version` as its ONNX doc string: the same weights in other bytes, as
/// a re-export of the same model would be. (A protobuf field appended to a message is read as
/// that field's value; `doc_string` is ModelProto's field 6.)
fn classifier(version: &str) -> Vec<u8> {
    let doc = format!("yolo-v8n {version} (wavecast demo)");
    let mut out = CLASSIFIER.to_vec();
    out.extend_from_slice(&[(6 << 3) | 2, doc.len() as u8]);
    out.extend_from_slice(doc.as_bytes());
    out
}

async fn wait_for(
    client: &Client,
    id: &str,
    what: &str,
    timeout: Duration,
    done: impl Fn(&Rollout) -> bool,
) -> anyhow::Result<Rollout> {
    let deadline = Instant::now() + timeout;
    loop {
        let r: Rollout = client.get(&format!("/api/v1/rollouts/{id}")).await?;
        if done(&r) {
            return Ok(r);
        }
        if Instant::now() > deadline {
            bail!("the rollout did not become {what} within {} s:\n{}", timeout.as_secs(), render(&r));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

const DEVICE_TIMEOUT: &str = "8s";

/// Plays the story; `devices` simulated devices (at least 10).
pub async fn run(devices: u32, keep_running: bool) -> anyhow::Result<ExitCode> {
    ensure!(devices >= 10, "the demo needs at least 10 devices to make waves of 10%, 50% and 100% worth watching");
    let started = Instant::now();
    let tmp = tempfile::Builder::new().prefix("wavecast-demo-").tempdir().context("creating a temporary directory")?;
    let dir = tmp.path().join("install");

    step(1, "wavecast init — keys, the signed TUF trust anchor, an admin token");
    let report = wavecast_server::install::init(&dir).await?;
    say(&format!("trust anchor  {}  (every device pins it)", report.root_json.display()));
    say(&format!("publisher key {}  (offline: it signs every publish)", report.publisher_key.display()));

    step(2, "wavecast server — the control plane on SQLite, on a free loopback port");
    let approval = wavecast_core::rollout::GateApproval::AnyApprover;
    let config = wavecast_server::ServerConfig::new(dir.clone(), "127.0.0.1:0".parse()?, None, approval)?;
    let state = wavecast_server::open(&config).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(wavecast_server::serve(state, listener, async {
        let _ = stop_rx.await;
    }));
    say(&format!("listening on {url}"));
    let token = crate::read_token_file(&report.admin_token_file)?;
    let client = Client::new(&url, Some(token.clone()))?;

    step(3, "wavecast artifact publish — yolo-v8n 2.0.0 and 2.1.0, signed on the publisher's side");
    let key = wavecast_tuf::keys::SigningKey::load(&report.publisher_key)?;
    let mut models = Vec::new();
    for version in ["2.0.0", "2.1.0"] {
        let bytes = classifier(version);
        let path = tmp.path().join(format!("yolo-v8n-{version}.onnx"));
        std::fs::write(&path, &bytes)?;
        let target = TargetName::new(ArtifactName::new("yolo-v8n")?, ArtifactVersion::new(version)?);
        let p = crate::cmd::artifact::publish(&client, &target, &path, &key, None, None, false).await?;
        say(&format!("{}@{}  sha256 {}", p.name, p.version, p.sha256));
        models.push(bytes);
    }

    step(
        4,
        &format!(
            "wavecast sim — {devices} real agents in group plant-7; one will reject the new model, one goes offline"
        ),
    );
    let sim = crate::sim::start(
        &client,
        &crate::sim::SimOptions {
            devices,
            group: "plant-7".into(),
            trust_root: report.root_json.clone(),
            fail: 1,
            offline: 1,
            preexisting: 0,
            dir: tmp.path().join("fleet"),
            poll_interval: Duration::from_millis(300),
            hardware: "jetson-orin-nano".into(),
            artifacts: vec!["yolo-v8n".into()],
            first: 1,
        },
    )
    .await?;
    say(&format!("{} devices enrolled; {} enrolled and then went silent", sim.names.len(), sim.offline.join(", ")));

    step(5, "every device starts on yolo-v8n@2.0.0 (one wave, all at once)");
    let base = create(&client, "yolo-v8n@2.0.0", &[100], &[]).await?;
    let done =
        wait_for(&client, &base.id, "completed", Duration::from_secs(60), |r| r.state == RolloutState::Completed)
            .await?;
    say(&render(&done));
    say(&format!("the silent device became unreachable after {DEVICE_TIMEOUT} and did not hold the rollout up"));

    step(
        6,
        "the rollout: wavecast rollout create --artifact yolo-v8n@2.1.0 --group plant-7 --waves 10,50,100 --gate 1 --halt-after 1 --probe exec:sim-check",
    );
    let created = create(&client, "yolo-v8n@2.1.0", &[10, 50, 100], &[1]).await?;
    let id = created.id.clone();
    say(&render(&created));
    ensure!(
        created.state == RolloutState::WaitingApproval,
        "the canary should wait for approval, the rollout is {}",
        created.state
    );

    step(
        7,
        "wavecast rollout approve — the canary goes out; a device rejects 2.1.0, rolls back by itself, and the halt rule pauses the fleet",
    );
    let _: Rollout = client.post(&format!("/api/v1/rollouts/{id}/approve"), &serde_json::json!({})).await?;
    let paused = wait_for(&client, &id, "paused", Duration::from_secs(60), |r| r.state == RolloutState::Paused).await?;
    say(&render(&paused));
    let failing = sim.failing();
    ensure!(failing.len() == 1, "expected one device to reject 2.1.0, saw {failing:?}");
    let bad = &failing[0];
    let shown: DeviceDetail = client.get(&format!("/api/v1/devices/{bad}")).await?;
    let reason = shown.rollouts.first().and_then(|r| r.reason.as_deref()).unwrap_or("?");
    say(&format!("{bad}: failed — {reason}"));
    let on_disk = std::fs::read(sim.artifact_path(bad, "yolo-v8n"))?;
    ensure!(on_disk == models[0], "{bad} should be back on 2.0.0's bytes");
    say(&format!("{bad} is back on 2.0.0 from its local copy; no device outside the canary received 2.1.0"));
    let wave2 = paused.waves.get(1).context("the rollout has no second wave")?;
    ensure!(wave2.counts.pending == wave2.devices, "wave 2 must not have opened");

    step(8, "wavecast rollout resume --ack — the operator acknowledges the failure; waves 2 and 3 open by themselves");
    let _: Rollout = client.post(&format!("/api/v1/rollouts/{id}/resume"), &ResumeRequest { ack: true }).await?;
    let finished = wait_for(&client, &id, "completed with failures", Duration::from_secs(90), |r| {
        r.state == RolloutState::CompletedWithFailures
    })
    .await?;
    say(&render(&finished));
    say("completed_with_failures, not completed: every wave settled, and one device is still on 2.0.0");
    let counts = &finished.counts;
    ensure!(counts.failed == 1, "expected exactly one failed device: {counts:?}");
    ensure!(counts.unreachable == 1, "expected the offline device to be unreachable: {counts:?}");
    ensure!(counts.succeeded == u64::from(devices) - 2, "expected every other device to succeed: {counts:?}");
    for name in &sim.names {
        if name == bad || sim.offline.contains(name) {
            continue;
        }
        let bytes = std::fs::read(sim.artifact_path(name, "yolo-v8n"))?;
        ensure!(bytes == models[1], "{name} does not hold 2.1.0's bytes");
    }
    say(&format!("{} devices run 2.1.0; {bad} stays on 2.0.0; the offline device did not block anyone", devices - 2));

    step(
        9,
        "wavecast artifact publish --golden golden.npz --tolerance top-k=1 --max-drift abs=0.01 — a retrained 2.2.0",
    );
    let npz = tmp.path().join("golden.npz");
    std::fs::write(&npz, GOLDEN)?;
    let retrained = tmp.path().join("yolo-v8n-2.2.0.onnx");
    std::fs::write(&retrained, RETRAINED)?;
    let golden = crate::golden::GoldenArgs {
        golden: Some(npz),
        tolerance: "top-k=1".parse()?,
        latency_budget: Some("50ms".parse()?),
        memory_budget: None,
        max_drift: Some("abs=0.01".parse()?),
        skip_local_check: false,
    };
    let target = TargetName::new(ArtifactName::new("yolo-v8n")?, ArtifactVersion::new("2.2.0")?);
    let prepared = golden.prepare(&target, &retrained).await?.context("a golden set was given")?;
    let local = prepared.report.as_ref().map_or_else(String::new, crate::golden::describe);
    let p = crate::cmd::artifact::publish(&client, &target, &retrained, &key, None, Some(&prepared), false).await?;
    say(&format!("{}@{}  sha256 {}", p.name, p.version, p.sha256));
    say(&format!("model check on the publisher's machine passed: {local}"));
    say(
        "its golden set and expectations are signed with it; drift needs the version a device runs, so it is checked there",
    );

    step(
        10,
        "wavecast rollout create --artifact yolo-v8n@2.2.0 --waves 10,100 --halt-after 1 — the model check runs on the canary",
    );
    let drift = create(&client, "yolo-v8n@2.2.0", &[10, 100], &[]).await?;
    let drift_id = drift.id.clone();
    let caught =
        wait_for(&client, &drift_id, "paused", Duration::from_secs(60), |r| r.state == RolloutState::Paused).await?;
    say(&render(&caught));
    let first = caught
        .failures
        .as_ref()
        .and_then(|f| f.devices.first())
        .context("the paused rollout lists no failed device")?;
    let check = first.probe_result.as_ref().and_then(wavecast_core::probe::describe_result);
    ensure!(
        check.as_deref().is_some_and(|c| c.contains("unhealthy") && c.contains("drift")),
        "the canary should fail the model check on drift: {check:?} ({:?})",
        first.reason
    );
    say(&format!("{}: {}", first.device, check.unwrap_or_default()));
    let _: Rollout =
        client.post(&format!("/api/v1/rollouts/{drift_id}/abort"), &AbortRequest { mode: AbortMode::Keep }).await?;
    for name in &sim.names {
        if sim.offline.contains(name) {
            continue;
        }
        let bytes = std::fs::read(sim.artifact_path(name, "yolo-v8n"))?;
        ensure!(bytes != RETRAINED, "{name} kept the retrained model");
    }
    say("wavecast rollout abort --keep: the canary rolled itself back; the rest of the fleet never received 2.2.0");

    step(11, "wavecast audit list — every step, append-only");
    let events: Vec<AuditEvent> = client.get("/api/v1/audit?limit=10000").await?;
    let relevant: Vec<AuditEvent> = events
        .into_iter()
        .filter(|e| e.subject == id || e.detail["rollout"] == id.as_str() || e.action == AuditAction::ArtifactPublished)
        .filter(|e| e.action != AuditAction::DeviceUpdated || e.subject == sim.names[0])
        .collect();
    crate::cmd::audit::print_events(&relevant);
    say("(device.updated events shown for one device only; `wavecast audit list` has them all)");

    step(12, "wavecast audit export + verify — the rollout's evidence, checked against the trust anchor");
    let export = tmp.path().join(format!("audit-{id}.json"));
    for line in crate::cmd::audit::demo_evidence(&client, &id, &export, &report.root_json).await? {
        say(&line);
    }

    sim.stop().await;
    println!(
        "\nDone in {:.1}s: halt on a bad canary, acknowledge and resume, completion without waiting for the offline device, \
         and a regressed model caught by the model check before the fleet saw it.",
        started.elapsed().as_secs_f64()
    );
    if keep_running {
        println!(
            "The server is still running at {url} (WAVECAST_SERVER={url} WAVECAST_TOKEN={token}); Ctrl-C to stop."
        );
        println!("Dashboard: open {url}/ in a browser and sign in with the admin token {token}");
        wavecast_os::signal::shutdown().await;
    }
    let _ = stop_tx.send(());
    server.await.context("the server task failed")??;
    Ok(ExitCode::SUCCESS)
}

async fn create(client: &Client, artifact: &str, waves: &[u8], gates: &[usize]) -> anyhow::Result<Rollout> {
    let timeout = wavecast_core::duration::parse_duration(DEVICE_TIMEOUT)?;
    let body = CreateRollout {
        artifact: artifact.to_owned(),
        group: "plant-7".to_owned(),
        waves: waves.to_vec(),
        gates: gates.to_vec(),
        halt_after: Some(1),
        device_timeout_ms: Some(timeout.as_millis() as u64),
        probe: "exec:sim-check".to_owned(),
        probe_timeout_ms: Some(10_000),
        probe_attempts: Some(1),
        probe_interval_ms: Some(100),
        probe_initial_delay_ms: None,
    };
    Ok(client.post("/api/v1/rollouts", &body).await?)
}
