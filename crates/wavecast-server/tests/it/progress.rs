//! Heartbeats and device silence: a heartbeat restarts a working device's silence clock and
//! shows its progress; its answer says whether the assignment still stands; a pause or a gate
//! is never a device's silence; the route is bounded. The sweep runs at chosen instants.

use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::both;
use crate::support::{Db, Env, Resp};

/// A group `g` of `names`, a published `m@1.0.0`, and a rollout of it with `plan` (merged
/// into the request). Returns the credentials in `names` order and the rollout id.
async fn rollout_to(env: &Env, names: &[&str], plan: Value) -> (Vec<String>, String) {
    env.post_json("/api/v1/groups", Some(&env.admin), json!({ "name": "g" })).await;
    let mut creds = Vec::new();
    for name in names {
        creds.push(env.enroll("g", name).await.0);
    }
    assert_eq!(env.publish("m@1.0.0", b"model bytes").await.status, StatusCode::CREATED);
    let mut create = json!({ "artifact": "m@1.0.0", "group": "g", "probe": "exec:check" });
    create.as_object_mut().unwrap().extend(plan.as_object().unwrap().clone());
    let r = env.post_json("/api/v1/rollouts", Some(&env.admin), create).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.message());
    (creds, r.json()["id"].as_str().unwrap().to_owned())
}

async fn heartbeat(env: &Env, cred: &str, body: Value) -> Resp {
    env.post_json("/device/v1/progress", Some(cred), body).await
}

fn downloading(rollout: &str, done: u64) -> Value {
    json!({ "rollout_id": rollout, "artifact": "m", "version": "1.0.0", "state": "downloading",
            "bytes_done": done, "bytes_total": 11, "bytes_per_sec": 3 })
}

/// How many assignments the device's signed doc holds.
async fn docs(env: &Env, cred: &str) -> usize {
    let r = env
        .request(axum::http::Method::GET, "/device/v1/assignments", Some(cred), &[], axum::body::Body::empty())
        .await;
    r.json()["signed"]["assignments"].as_array().unwrap().len()
}

/// The device's row in the rollout as `device show` has it.
async fn device_row(env: &Env, name: &str) -> Value {
    env.get(&format!("/api/v1/devices/{name}")).await.json()["rollouts"][0].clone()
}

/// The device as `rollout show` lists it among those at work, if it does.
async fn at_work(env: &Env, rollout: &str, name: &str) -> Option<Value> {
    let r = env.get(&format!("/api/v1/rollouts/{rollout}")).await.json();
    r["in_progress"]["devices"].as_array().unwrap().iter().find(|d| d["device"] == name).cloned()
}

/// A time the API answered (RFC 3339), as Unix ms.
fn ms(time: &Value) -> i64 {
    serde_json::from_value::<wavecast_api::Timestamp>(time.clone()).expect("an RFC 3339 time").unix_ms()
}

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// Waits until the wall clock has passed `ms`, so the next write gets a later time.
async fn after(ms: i64) {
    while now_ms() <= ms {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
}

async fn a_heartbeat_restarts_the_silence_clock_and_shows_progress(db: Db) {
    let env = Env::new(db).await;
    let (creds, id) = rollout_to(&env, &["cam-1"], json!({ "waves": [100], "device_timeout_ms": 10_000 })).await;
    env.report(&creds[0], &id, "r1", "downloading", None).await;
    let reported = at_work(&env, &id, "cam-1").await.expect("a downloading device is at work");
    assert_eq!((reported["state"].as_str(), &reported["progress"]), (Some("downloading"), &Value::Null));
    let reported_at = ms(&reported["last_heard_at"]);

    after(reported_at).await;
    let r = heartbeat(&env, &creds[0], downloading(&id, 4)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.message());
    // A quarter of the 10 s timeout.
    assert_eq!(r.json(), json!({ "proceed": true, "heartbeat_ms": 2500 }));
    let shown = at_work(&env, &id, "cam-1").await.unwrap();
    let heard_at = ms(&shown["last_heard_at"]);
    assert!(heard_at > reported_at, "{shown}");
    let progress = json!({ "at": shown["last_heard_at"], "state": "downloading", "bytes_done": 4, "bytes_total": 11,
                           "bytes_per_sec": 3, "waiting": null });
    assert_eq!(shown["progress"], progress);
    assert_eq!(device_row(&env, "cam-1").await["progress"], progress, "device show has it too");
    let shown = env.get(&format!("/api/v1/rollouts/{id}")).await.json();
    assert_eq!(shown["in_progress"]["total"], 1);
    assert_eq!(shown["counts"]["downloading"], 1, "a heartbeat changes no state");

    // Silent for the timeout since the report, but not since the heartbeat: still at work.
    let store = env.state.store();
    assert_eq!(store.sweep_timeouts(reported_at + 10_001).await.unwrap(), 0);
    assert_eq!(store.sweep_timeouts(heard_at + 10_000).await.unwrap(), 0);
    // Waiting out a full disk is still being heard from.
    let mut waiting = downloading(&id, 4);
    waiting["waiting"] = json!({ "class": "disk", "reason": "needs 7 B more, 0 B free in /opt/models" });
    after(heard_at).await;
    assert_eq!(heartbeat(&env, &creds[0], waiting).await.status, StatusCode::OK);
    let shown = at_work(&env, &id, "cam-1").await.unwrap();
    assert_eq!(shown["progress"]["waiting"]["class"], "disk");
    assert_eq!(shown["progress"]["waiting"]["reason"], "needs 7 B more, 0 B free in /opt/models");
    let heard_at = ms(&shown["last_heard_at"]);
    assert_eq!(store.sweep_timeouts(heard_at + 10_000).await.unwrap(), 0);
    // One that stops is timed out, by wavecast, once the timeout has passed since it was heard.
    assert_eq!(store.sweep_timeouts(heard_at + 10_001).await.unwrap(), 1);
    let row = device_row(&env, "cam-1").await;
    assert_eq!(row["state"], "timed_out");
    assert_eq!(row["progress"], Value::Null, "the heartbeat described the state before");
    let audit = env.get("/api/v1/audit").await.json();
    let timed_out: Vec<&Value> =
        audit.as_array().unwrap().iter().filter(|e| e["action"] == "device.timed_out").collect();
    assert_eq!(timed_out.len(), 1);
    assert_eq!((timed_out[0]["actor"].as_str(), timed_out[0]["subject"].as_str()), (Some("wavecast"), Some("cam-1")));
    assert!(at_work(&env, &id, "cam-1").await.is_none());
    // Heartbeats are never audited.
    assert!(!audit.as_array().unwrap().iter().any(|e| e["action"].as_str().unwrap().contains("progress")));
}

async fn a_state_change_replaces_the_heartbeat(db: Db) {
    let env = Env::new(db).await;
    let (creds, id) = rollout_to(&env, &["cam-1"], json!({ "waves": [100] })).await;
    env.report(&creds[0], &id, "r1", "downloading", None).await;
    assert_eq!(heartbeat(&env, &creds[0], downloading(&id, 11)).await.status, StatusCode::OK);
    assert_eq!(at_work(&env, &id, "cam-1").await.unwrap()["progress"]["bytes_done"], 11);
    env.report(&creds[0], &id, "r2", "probing", None).await;
    let shown = at_work(&env, &id, "cam-1").await.unwrap();
    assert_eq!((shown["state"].as_str(), &shown["progress"]), (Some("probing"), &Value::Null));
    // A heartbeat from the device ahead of its reports says where it is now.
    let mut probing = downloading(&id, 11);
    probing["state"] = json!("probing");
    assert_eq!(heartbeat(&env, &creds[0], probing).await.json()["proceed"], true);
    assert_eq!(at_work(&env, &id, "cam-1").await.unwrap()["progress"]["state"], "probing");
}

async fn the_answer_says_whether_the_assignment_still_stands(db: Db) {
    let env = Env::new(db).await;
    let names = ["cam-1", "cam-2", "cam-3", "cam-4"];
    let (creds, id) = rollout_to(&env, &names, json!({ "waves": [100], "halt_after": 1 })).await;
    let cred = |name: &str| creds[names.iter().position(|n| *n == name).unwrap()].clone();
    let go = json!({ "proceed": true, "heartbeat_ms": 30_000 });
    let stop = json!({ "proceed": false, "heartbeat_ms": 30_000 });
    assert_eq!(heartbeat(&env, &cred("cam-1"), downloading(&id, 0)).await.json(), go, "before its report arrived");
    env.report(&cred("cam-1"), &id, "r1", "downloading", None).await;
    env.report(&cred("cam-2"), &id, "r1", "verifying", None).await;
    // Unknown rollouts, and rollouts the device is not in, do not stand.
    assert_eq!(heartbeat(&env, &cred("cam-4"), downloading("r-none", 0)).await.json(), stop);

    // A failure halts the rollout: the download stops (and leaves the device's doc); what is
    // past its download finishes.
    env.report(&cred("cam-3"), &id, "r1", "failed", Some("probe failed")).await;
    assert_eq!(env.get(&format!("/api/v1/rollouts/{id}")).await.json()["state"], "paused");
    assert_eq!(heartbeat(&env, &cred("cam-1"), downloading(&id, 5)).await.json(), stop);
    assert_eq!(docs(&env, &cred("cam-1")).await, 0, "a paused rollout serves no download");
    let mut verifying = downloading(&id, 11);
    verifying["state"] = json!("verifying");
    assert_eq!(heartbeat(&env, &cred("cam-2"), verifying.clone()).await.json(), go);
    assert_eq!(docs(&env, &cred("cam-2")).await, 1);
    // A device ahead of its reports: past its download, it finishes.
    assert_eq!(heartbeat(&env, &cred("cam-4"), verifying).await.json(), go);

    let resumed =
        env.post_json(&format!("/api/v1/rollouts/{id}/resume"), Some(&env.admin), json!({ "ack": true })).await;
    assert_eq!(resumed.status, StatusCode::OK);
    assert_eq!(heartbeat(&env, &cred("cam-1"), downloading(&id, 5)).await.json(), go, "resume serves it again");
    assert_eq!(docs(&env, &cred("cam-1")).await, 1);

    let aborted =
        env.post_json(&format!("/api/v1/rollouts/{id}/abort"), Some(&env.admin), json!({ "mode": "keep" })).await;
    assert_eq!(aborted.status, StatusCode::OK);
    assert_eq!(heartbeat(&env, &cred("cam-1"), downloading(&id, 6)).await.json(), stop);
}

async fn heartbeats_are_checked_and_bounded(db: Db) {
    let env = Env::new(db).await;
    let (creds, id) = rollout_to(&env, &["cam-1"], json!({ "waves": [100] })).await;
    let mut finished = downloading(&id, 0);
    finished["state"] = json!("succeeded");
    let r = heartbeat(&env, &creds[0], finished).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.message().contains("device at work"), "{}", r.message());
    let mut unknown = downloading(&id, 0);
    unknown["eta"] = json!(5);
    assert_eq!(heartbeat(&env, &creds[0], unknown).await.status, StatusCode::BAD_REQUEST);
    let mut huge = downloading(&id, 0);
    huge["waiting"] = json!({ "class": "network", "reason": "x".repeat(8 * 1024) });
    assert_eq!(heartbeat(&env, &creds[0], huge).await.status, StatusCode::PAYLOAD_TOO_LARGE);
    let no_credential = env.post_json("/device/v1/progress", None, downloading(&id, 0)).await;
    assert_eq!(no_credential.status, StatusCode::UNAUTHORIZED);
    // A long reason is kept cut, not refused.
    let mut long = downloading(&id, 0);
    long["waiting"] = json!({ "class": "server", "reason": "é".repeat(1500) });
    let r = heartbeat(&env, &creds[0], long).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.message());
    let kept = at_work(&env, &id, "cam-1").await.unwrap()["progress"]["waiting"]["reason"].as_str().unwrap().to_owned();
    assert_eq!(kept, "é".repeat(512));
    // A device that heart-beats faster than the budget is refused, and told why.
    let statuses: Vec<StatusCode> = {
        let mut out = Vec::new();
        for _ in 0..20 {
            out.push(heartbeat(&env, &creds[0], downloading(&id, 1)).await.status);
        }
        out
    };
    assert!(statuses.contains(&StatusCode::TOO_MANY_REQUESTS), "{statuses:?}");
}

async fn a_pause_or_a_gate_longer_than_the_timeout_is_not_device_silence(db: Db) {
    let env = Env::new(db).await;
    const TIMEOUT: i64 = 10_000;
    // Four devices over 50,100 with a gate on wave 2: two in each wave.
    let names = ["cam-1", "cam-2", "cam-3", "cam-4"];
    let plan = json!({ "waves": [50, 100], "gates": [2], "halt_after": 1, "device_timeout_ms": TIMEOUT });
    let (creds, id) = rollout_to(&env, &names, plan).await;
    let mut by_wave: [Vec<usize>; 2] = [vec![], vec![]];
    for (i, name) in names.iter().enumerate() {
        by_wave[device_row(&env, name).await["wave"].as_u64().unwrap() as usize - 1].push(i);
    }
    let ([failing, waiting], [late_a, late_b]) =
        (<[usize; 2]>::try_from(by_wave[0].clone()).unwrap(), <[usize; 2]>::try_from(by_wave[1].clone()).unwrap());
    let store = env.state.store();
    let show = || async { env.get(&format!("/api/v1/rollouts/{id}")).await.json() };

    // One device of wave 1 fails and halts the rollout; the other has not started.
    env.report(&creds[failing], &id, "r1", "failed", Some("probe failed")).await;
    let paused = show().await;
    assert_eq!(paused["state"], "paused");
    // Ten timeouts later, the device that never got to start is still waited for.
    let later = now_ms() + 10 * TIMEOUT;
    assert_eq!(store.sweep_timeouts(later).await.unwrap(), 0);
    assert_eq!(show().await["counts"]["assigned"], 1);

    let resumed =
        env.post_json(&format!("/api/v1/rollouts/{id}/resume"), Some(&env.admin), json!({ "ack": true })).await;
    let resumed_at = ms(&resumed.json()["updated_at"]);
    // Its clock restarted with the resume: a whole timeout from there, not from its wave.
    assert_eq!(store.sweep_timeouts(resumed_at + TIMEOUT).await.unwrap(), 0);
    assert_eq!(show().await["state"], "running");
    env.report(&creds[waiting], &id, "r1", "succeeded", None).await;
    let at_gate = show().await;
    assert_eq!(
        (at_gate["state"].as_str(), at_gate["waves"][1]["state"].as_str()),
        (Some("waiting_approval"), Some("waiting_approval"))
    );

    // The gate is held ten timeouts; then its wave opens with fresh clocks.
    assert_eq!(store.sweep_timeouts(now_ms() + 10 * TIMEOUT).await.unwrap(), 0);
    let approved = env.post_json(&format!("/api/v1/rollouts/{id}/approve"), Some(&env.admin), json!({})).await;
    assert_eq!(approved.status, StatusCode::OK, "{}", approved.message());
    let opened_at = ms(&approved.json()["updated_at"]);
    env.report(&creds[late_a], &id, "r1", "succeeded", None).await;
    assert_eq!(store.sweep_timeouts(opened_at + TIMEOUT).await.unwrap(), 0);
    // Once the rollout runs, silence counts: the device that never shows up is unreachable.
    assert_eq!(store.sweep_timeouts(opened_at + TIMEOUT + 1).await.unwrap(), 1);
    let done = show().await;
    // The failure that paused it, acknowledged, marks its end.
    assert_eq!(done["state"], "completed_with_failures", "{done:#}");
    assert_eq!(device_row(&env, names[late_b]).await["state"], "unreachable");
    assert_eq!((done["counts"]["unreachable"].as_u64(), done["counts"]["succeeded"].as_u64()), (Some(1), Some(2)));
}

both!(
    a_heartbeat_restarts_the_silence_clock_and_shows_progress,
    a_state_change_replaces_the_heartbeat,
    the_answer_says_whether_the_assignment_still_stands,
    heartbeats_are_checked_and_bounded,
    a_pause_or_a_gate_longer_than_the_timeout_is_not_device_silence,
);
