//! The demo's script: every step prints what it does and checks that it happened.
//!
//! It runs the real pieces — `init`, the server on SQLite, the publisher's signing, the device
//! enrollment API — in one process against a temporary directory, so a newcomer can watch the
//! product work without setting anything up.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context as _, ensure};
use sha2::Digest as _;
use wavecast_core::audit::{AuditAction, AuditEvent};
use wavecast_core::{ArtifactName, ArtifactVersion, TargetName};

use crate::Client;

fn step(n: u32, text: &str) {
    println!("\n\x1b[1m{n}. {text}\x1b[0m");
}

/// A deterministic stand-in for model weights.
fn fake_model(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut block = sha2::Sha256::digest(b"wavecast demo model").to_vec();
    while out.len() < len {
        block = sha2::Sha256::digest(&block).to_vec();
        out.extend_from_slice(&block);
    }
    out.truncate(len);
    out
}

pub async fn run(devices: u32, keep_running: bool) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let tmp = tempfile::Builder::new().prefix("wavecast-demo-").tempdir().context("creating a temporary directory")?;
    let dir = tmp.path().join("install");

    step(1, "wavecast init — keys, the signed TUF trust anchor, an admin token");
    let report = wavecast_server::install::init(&dir).await?;
    println!("   trust anchor {}", report.root_json.display());
    println!("   publisher key {} (offline: it signs every publish)", report.publisher_key.display());

    step(2, "wavecast server — the control plane on SQLite, on a free loopback port");
    let config = wavecast_server::ServerConfig::new(dir.clone(), "127.0.0.1:0".parse()?, None)?;
    let state = wavecast_server::open(&config).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(wavecast_server::serve(state, listener, async {
        let _ = stop_rx.await;
    }));
    let url = format!("http://{addr}");
    println!("   listening on {url}");
    let token = crate::read_token_file(&report.admin_token_file)?;
    let client = Client::new(&url, Some(token.clone()))?;

    step(3, "wavecast artifact publish yolo-v8n@2.1.0 — signed with the offline key, uploaded, checked by the server");
    let model_path = tmp.path().join("yolo-v8n.onnx");
    let model = fake_model(8 << 20);
    std::fs::write(&model_path, &model)?;
    let key = wavecast_tuf::keys::SigningKey::load(&report.publisher_key)?;
    let target = TargetName::new(ArtifactName::new("yolo-v8n")?, ArtifactVersion::new("2.1.0")?);
    let published =
        crate::cmd::artifact::publish(&client, &target, &model_path, &key, Some("jetson-orin-nano".into()), false)
            .await?;
    println!("   {}@{}  {} bytes  sha256 {}", published.name, published.version, published.length, published.sha256);
    let expected = hex::encode(sha2::Sha256::digest(&model));
    ensure!(
        published.sha256 == expected,
        "the server recorded sha256 {} for a file whose sha256 is {expected}",
        published.sha256
    );

    step(4, "the same name@version with other bytes is refused — versions are immutable");
    let tampered = tmp.path().join("tampered.onnx");
    let mut other = model.clone();
    other[0] ^= 1;
    std::fs::write(&tampered, &other)?;
    match crate::cmd::artifact::publish(&client, &target, &tampered, &key, None, false).await {
        Ok(_) => anyhow::bail!("the server accepted a second yolo-v8n@2.1.0 with other bytes"),
        Err(e) => println!("   refused: {e:#}"),
    }

    step(5, &format!("wavecast group create plant-7, and {devices} devices enroll with a group token"));
    let _: serde_json::Value = client.post("/api/v1/groups", &serde_json::json!({ "name": "plant-7" })).await?;
    let minted: serde_json::Value =
        client.post("/api/v1/enrollment-tokens", &serde_json::json!({ "group": "plant-7" })).await?;
    let enroll_token = minted["token"].as_str().context("the server minted no token")?.to_owned();
    let http = reqwest::Client::new();
    for i in 1..=devices {
        let resp = http
            .post(format!("{url}/device/v1/enroll"))
            .json(&serde_json::json!({ "token": enroll_token, "name": format!("cam-{i:03}"), "hardware": "jetson-orin-nano" }))
            .send()
            .await?;
        ensure!(resp.status().is_success(), "enrolling cam-{i:03}: HTTP {}", resp.status());
    }
    let listed: Vec<serde_json::Value> = client.get("/api/v1/devices?group=plant-7").await?;
    ensure!(
        listed.len() == devices as usize,
        "expected {devices} devices in plant-7, the server lists {}",
        listed.len()
    );
    println!("   {} devices enrolled, each with its own credential (stored hashed)", listed.len());

    step(6, "wavecast audit list — every change, append-only");
    let events: Vec<AuditEvent> = client.get("/api/v1/audit").await?;
    crate::cmd::audit::print_events(&events);
    for action in [
        AuditAction::InstallationInitialized,
        AuditAction::ArtifactPublished,
        AuditAction::GroupCreated,
        AuditAction::DeviceEnrolled,
    ] {
        ensure!(events.iter().any(|e| e.action == action), "the audit trail has no {action} event");
    }

    println!(
        "\nDone in {:.1}s. Rollouts in waves come next; this build stops at enrollment.",
        started.elapsed().as_secs_f64()
    );
    if keep_running {
        println!("Server still running at {url} (WAVECAST_TOKEN={token}); Ctrl-C to stop.");
        let _ = tokio::signal::ctrl_c().await;
    }
    let _ = stop_tx.send(());
    server.await.context("the server task failed")??;
    Ok(ExitCode::SUCCESS)
}
