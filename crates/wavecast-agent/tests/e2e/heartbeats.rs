//! Long downloads and long probes are progress, not silence: over a slow link (a throttling
//! proxy between agent and server) an install that takes three device timeouts completes,
//! the device is never timed out, the rollout never pauses, and the operator sees progress;
//! a pause stops a download at a chunk boundary and a resume continues from the partial file.
//!
//! The agent's own half of a stop and a resume is also tested against an attacker proxy that
//! plays the server's answers.

use std::net::SocketAddr;

use serde_json::{Value, json};
use wavecast_test_support::proxy::ThrottledProxy;

use crate::attacker::Proxy;
use crate::support::*;

/// Whether `v` holds, anywhere, a device's progress strictly between nothing and all of `total`.
fn shows_progress(v: &Value, total: u64) -> bool {
    match v {
        Value::Object(m) => {
            m.get("bytes_done").and_then(Value::as_u64).is_some_and(|d| d > 0 && d < total)
                || m.values().any(|x| shows_progress(x, total))
        }
        Value::Array(a) => a.iter().any(|x| shows_progress(x, total)),
        _ => false,
    }
}

fn server_addr(env: &Env) -> SocketAddr {
    env.url.trim_start_matches("http://").parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_three_device_timeouts_long_completes_and_shows_progress() {
    let env = Env::new().await;
    let rate = 64 * 1024;
    let link = ThrottledProxy::start(server_addr(&env), rate).await;
    let ok = script(&env.probes_dir(), "ok", "exit 0");
    let agent = env.start_agent("far-away", &[("ok", ok)], Some(&link.url())).await;
    let timeout_ms = 4_000;
    // Twelve seconds of bytes at the link's rate: three device timeouts.
    let size = (3 * timeout_ms / 1000 * rate) as usize;
    let bytes = blob("big", size);
    env.publish("model@1.0.0", &bytes, None).await;
    let started = std::time::Instant::now();
    let id = env.rollout_with("model@1.0.0", &Probe::new("exec:ok"), json!({ "device_timeout_ms": timeout_ms })).await;

    let (mut states, mut rollout_states, mut progress_seen) = (Vec::new(), Vec::new(), false);
    let entry = loop {
        let view = env.rollout_view(&id).await;
        rollout_states.push(view["state"].as_str().unwrap_or_default().to_owned());
        let device = env.device(&agent.name).await.unwrap_or_default();
        progress_seen |= shows_progress(&view, size as u64) || shows_progress(&device, size as u64);
        if let Some(r) = env.device_rollout(&agent.name, &id).await {
            let state = r["state"].as_str().unwrap_or_default().to_owned();
            states.push(state.clone());
            if FINAL.contains(&state.as_str()) {
                break r;
            }
        }
        assert!(started.elapsed() < WAIT * 2, "no outcome yet; states {states:?}\n{}", agent.log_tail());
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    };
    assert_succeeded(&entry, &agent);
    assert_eq!(agent.sha(), Some(sha_hex(&bytes)));
    // The premise: the throttle made the download outlast the device timeout three times.
    assert!(started.elapsed().as_millis() >= 3 * timeout_ms as u128, "took {:?}", started.elapsed());
    assert!(!states.iter().any(|s| s == "timed_out" || s == "unreachable"), "{states:?}");
    assert!(!rollout_states.iter().any(|s| s == "paused"), "{rollout_states:?}");
    assert!(progress_seen, "the rollout never showed the device's progress while it downloaded");
    assert!(link.bytes_delivered() >= size as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_stops_a_download_that_a_resume_continues_from_its_partial_file() {
    let env = Env::new().await;
    // The canary fails after a few seconds (and halts the rollout) while the other device is
    // still downloading over a slow link.
    let failing = script(&env.probes_dir(), "failing", "sleep 3\necho 'canary unhealthy' >&2\nexit 1");
    let ok = script(&env.probes_dir(), "ok", "exit 0");
    let canary = env.start_agent("canary", &[("check", failing)], None).await;
    let link = ThrottledProxy::start(server_addr(&env), 32 * 1024).await;
    let slow = env.start_agent("slow", &[("check", ok)], Some(&link.url())).await;
    let size = 1 << 20;
    let bytes = blob("paused", size);
    env.publish("model@1.0.0", &bytes, None).await;
    let id = env.rollout_with("model@1.0.0", &Probe::new("exec:check"), json!({ "device_timeout_ms": 8_000 })).await;
    assert_failed(&env.wait_final(&canary, &id).await, &["canary unhealthy"], &canary);
    wait!("the halt", slow, env.rollout_view(&id).await["state"] == "paused");

    // The slow device hears at its next heartbeat, stops, keeps what it has.
    wait!(
        "the download to stop",
        slow,
        slow.journal()["phase"]["phase"] == "idle" && slow.log_text().contains("install dropped")
    );
    let partial = slow.path.with_file_name(&slow.partials()[0]);
    let kept = std::fs::metadata(&partial).unwrap().len();
    assert!(kept > 0 && kept < size as u64, "kept {kept} of {size} bytes");
    tokio::time::sleep(POLL * 10).await;
    assert_eq!(std::fs::metadata(&partial).unwrap().len(), kept, "the download went on during the pause");
    let r = env.device_rollout(&slow.name, &id).await.unwrap();
    assert_eq!(r["state"], "downloading", "{r}");
    let delivered_before = link.bytes_delivered();

    env.api("POST", &format!("/api/v1/rollouts/{id}/resume"), Some(json!({ "ack": true }))).await;
    assert_succeeded(&env.wait_final(&slow, &id).await, &slow);
    assert_eq!(slow.sha(), Some(sha_hex(&bytes)));
    // Resumed from the partial file: what crossed the link after the resume is about the rest.
    let after = link.bytes_delivered() - delivered_before;
    assert!(after < size as u64 - kept / 2, "{after} bytes after the resume; {kept} of {size} were kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_probe_warm_up_is_progress_not_silence() {
    let env = Env::new().await;
    let ok = script(&env.probes_dir(), "ok", "exit 0");
    let agent = env.start_agent("warming", &[("ok", ok)], None).await;
    let bytes = blob("warm", 16 * 1024);
    env.publish("model@1.0.0", &bytes, None).await;
    let timeout_ms = 4_000;
    let probe = Probe::new("exec:ok").initial_delay(3 * timeout_ms);
    let id = env.rollout_with("model@1.0.0", &probe, json!({ "device_timeout_ms": timeout_ms })).await;
    let entry = env.wait_final(&agent, &id).await;
    assert_succeeded(&entry, &agent);
    assert_eq!(env.rollout_view(&id).await["failures_counted"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proceed_false_stops_a_download_that_a_newer_doc_resumes_from_its_partial_file() {
    let env = Env::new().await;
    // The newer doc below is the proxy's (it rewrites what passes), not the server's: the server
    // would hold the device's check-in until its own doc changed, so check-ins are held briefly.
    let pacing = format!("/api/v1/groups/{}/pacing", env.group);
    env.api("PUT", &pacing, Some(json!({ "long_poll": "1s" }))).await;
    // agent → slow link → a proxy answering heartbeats itself → the server.
    let proxy = Proxy::start(&env.url, &env.install).await;
    let go_on = |proceed: bool| serde_json::to_vec(&json!({ "proceed": proceed, "heartbeat_ms": 1_000 })).unwrap();
    proxy.set_override("/device/v1/progress", go_on(true));
    let link = ThrottledProxy::start(proxy.addr, 64 * 1024).await;
    let ok = script(&env.probes_dir(), "ok", "exit 0");
    let agent = env.start_agent("dev-1", &[("ok", ok)], Some(&link.url())).await;
    let size = 1 << 20;
    let bytes = blob("stop-and-go", size);
    env.publish("model@1.0.0", &bytes, None).await;
    let id = env.rollout("model@1.0.0", &Probe::new("exec:ok")).await;
    let on_disk = |agent: &Agent| {
        agent
            .partials()
            .first()
            .and_then(|p| std::fs::metadata(agent.path.with_file_name(p)).ok())
            .map_or(0, |m| m.len())
    };
    // (Heartbeats say how far it got; the file lags behind the writer's buffer.)
    let got = |proxy: &Proxy| {
        proxy
            .progress()
            .iter()
            .filter(|p| p["rollout_id"] == id.as_str())
            .filter_map(|p| p["bytes_done"].as_u64())
            .max()
    };
    wait!("a good part of the download", agent, got(&proxy).is_some_and(|n| n >= 128 * 1024));

    // The assignment no longer stands: the download stops at a chunk boundary, keeps what it
    // has, and does not start again while the doc is the same.
    proxy.set_override("/device/v1/progress", go_on(false));
    wait!(
        "the download to stop",
        agent,
        agent.journal()["phase"]["phase"] == "idle" && agent.log_text().contains("install dropped")
    );
    let kept = on_disk(&agent);
    assert!(kept >= 128 * 1024 && kept < size as u64, "kept {kept} of {size} bytes");
    tokio::time::sleep(POLL * 10).await;
    assert_eq!(on_disk(&agent), kept, "the download went on");
    assert_eq!(agent.journal()["phase"]["phase"], "idle", "it started again on the same doc");
    assert_eq!(env.device_rollout(&agent.name, &id).await.unwrap()["state"], "downloading");
    assert!(agent.outbox().is_empty(), "a heartbeat or a drop went to the outbox: {:?}", agent.outbox());

    // A newer doc assigns it again: the download goes on from the partial file.
    proxy.set_override("/device/v1/progress", go_on(true));
    let before = link.bytes_delivered();
    proxy.set_rewrite(|doc| {
        doc["counter"] = json!(doc["counter"].as_u64().unwrap_or(0) + 1);
        true
    });
    assert_succeeded(&env.wait_final(&agent, &id).await, &agent);
    assert_eq!(agent.sha(), Some(sha_hex(&bytes)));
    let after = link.bytes_delivered() - before;
    assert!(after < size as u64 - kept / 2, "{after} bytes after the resume; {kept} of {size} were kept");
}
