//! Rollout rules the API enforces beyond the engine: four-eyes approval, one active rollout per
//! group and artifact, the group's version for devices that join later, and an audit trail
//! that says exactly what each device reported after an abort with revert.

use axum::body::Body;
use axum::http::{Method, StatusCode};

use crate::both;
use crate::support::{Db, Env};

async fn assignments(env: &Env, cred: &str) -> serde_json::Value {
    let resp = env.request(Method::GET, "/device/v1/assignments", Some(cred), &[], Body::empty()).await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.message());
    resp.json()["signed"]["assignments"].clone()
}

async fn late_joiners_get_the_group_version(db: Db) {
    let env = Env::new(db).await;
    env.post_json("/api/v1/groups", Some(&env.admin), serde_json::json!({ "name": "g" })).await;
    let (early, _) = env.enroll("g", "early").await;
    env.publish("m@1.0.0", b"one").await;
    let create = serde_json::json!({ "artifact": "m@1.0.0", "group": "g", "waves": [100], "probe": "exec:check" });
    let r = env.post_json("/api/v1/rollouts", Some(&env.admin), create.clone()).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let id = r.json()["id"].as_str().unwrap().to_owned();
    // One active rollout per (group, artifact).
    let again = env.post_json("/api/v1/rollouts", Some(&env.admin), create).await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    assert!(again.message().contains(&id), "{}", again.message());

    // Before completion a newcomer gets nothing; after, the group's version.
    let (late, _) = env.enroll("g", "late").await;
    assert!(assignments(&env, &late).await.as_array().unwrap().is_empty());
    env.report(&early, &id, "r1", "downloading", None).await;
    env.report(&early, &id, "r2", "succeeded", None).await;
    assert_eq!(env.get(&format!("/api/v1/rollouts/{id}")).await.json()["state"], "completed");
    let got = assignments(&env, &late).await;
    assert_eq!(got[0]["artifact"], "m");
    assert_eq!(got[0]["version"], "1.0.0");
    assert_eq!(got[0]["action"], "install");

    // The late joiner's install is recorded and audited like any device's: it joins the
    // rollout it was served, in the last wave.
    env.report(&late, &id, "l1", "downloading", None).await;
    env.report(&late, &id, "l2", "failed", Some("probe exec:check exited with 1: model missing")).await;
    let shown = env.get("/api/v1/devices/late").await.json();
    let row = &shown["rollouts"][0];
    assert_eq!(
        (row["rollout_id"].as_str(), row["state"].as_str(), row["wave"].as_u64()),
        (Some(id.as_str()), Some("failed"), Some(1)),
        "{shown:#}"
    );
    assert_eq!(row["reason"], "probe exec:check exited with 1: model missing");
    let r = env.get(&format!("/api/v1/rollouts/{id}")).await.json();
    assert_eq!((r["device_count"].as_u64(), r["counts"]["failed"].as_u64()), (Some(2), Some(1)), "{r:#}");
    assert_eq!(r["state"], "completed", "an ended rollout stays as it ended");
    let events = device_events(&env, "late").await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(
        (events[0].0.as_str(), events[0].1.as_str(), events[0].2.as_str()),
        ("device.failed", "device:late", "downloading")
    );
}

async fn start(env: &Env, body: serde_json::Value) -> String {
    let r = env.post_json("/api/v1/rollouts", Some(&env.admin), body).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.message());
    r.json()["id"].as_str().unwrap().to_owned()
}

/// The versions a device enrolled now, as `name`, is assigned. It is removed again, so the
/// next rollout does not wait for it.
async fn served_to_newcomer(env: &Env, name: &str) -> Vec<String> {
    let (cred, _) = env.enroll("g", name).await;
    let got = assignments(env, &cred).await;
    let removed =
        env.request(Method::DELETE, &format!("/api/v1/devices/{name}"), Some(&env.admin), &[], Body::empty()).await;
    assert_eq!(removed.status, StatusCode::OK, "{}", removed.message());
    got.as_array().unwrap().iter().map(|a| a["version"].as_str().unwrap().to_owned()).collect()
}

/// The group's version is the last version a rollout completed cleanly and no later abort with
/// revert took back: a rollout that completed with failures, or one whose version was reverted,
/// is never given to a device that joins later.
async fn the_group_version_is_known_good(db: Db) {
    let env = Env::new(db).await;
    env.post_json("/api/v1/groups", Some(&env.admin), serde_json::json!({ "name": "g" })).await;
    let (d1, _) = env.enroll("g", "d1").await;
    let (d2, _) = env.enroll("g", "d2").await;
    for (v, bytes) in [("1.0.0", &b"one"[..]), ("2.0.0", b"two"), ("3.0.0", b"three")] {
        env.publish(&format!("m@{v}"), bytes).await;
    }
    let create = |version: &str, gates: &[u64]| {
        let waves: &[u64] = if gates.is_empty() { &[100] } else { &[50, 100] };
        serde_json::json!({ "artifact": format!("m@{version}"), "group": "g", "waves": waves, "gates": gates,
            "halt_after": 5, "probe": "exec:check" })
    };
    // None yet: a newcomer gets nothing.
    assert_eq!(served_to_newcomer(&env, "new-1").await, Vec::<String>::new());
    // A successful one: 1.0.0.
    let r1 = start(&env, create("1.0.0", &[])).await;
    for cred in [&d1, &d2] {
        env.report(cred, &r1, "a", "succeeded", None).await;
    }
    assert_eq!(env.get(&format!("/api/v1/rollouts/{r1}")).await.json()["state"], "completed");
    assert_eq!(served_to_newcomer(&env, "new-2").await, ["1.0.0"]);
    // A failed one (completed with failures): still 1.0.0.
    let r2 = start(&env, create("2.0.0", &[])).await;
    env.report(&d1, &r2, "b", "failed", Some("probe failed")).await;
    env.report(&d2, &r2, "b", "succeeded", None).await;
    let r = env.get(&format!("/api/v1/rollouts/{r2}")).await.json();
    assert_eq!(r["state"], "completed_with_failures", "{r:#}");
    assert_eq!(served_to_newcomer(&env, "new-3").await, ["1.0.0"]);
    // A clean one of 3.0.0: 3.0.0; then a later rollout of 3.0.0 aborted with revert takes it
    // back, and 1.0.0 is the known good version again.
    let r3 = start(&env, create("3.0.0", &[])).await;
    for cred in [&d1, &d2] {
        env.report(cred, &r3, "c", "succeeded", None).await;
    }
    assert_eq!(served_to_newcomer(&env, "new-4").await, ["3.0.0"]);
    let r4 = start(&env, create("3.0.0", &[2])).await;
    let abort = env
        .post_json(&format!("/api/v1/rollouts/{r4}/abort"), Some(&env.admin), serde_json::json!({ "mode": "revert" }))
        .await;
    assert_eq!(abort.status, StatusCode::OK, "{}", abort.message());
    assert_eq!(served_to_newcomer(&env, "new-5").await, ["1.0.0"]);
}

async fn creators_cannot_approve_their_own_gates_when_required(db: Db) {
    let env = Env::with(db, |c| c.approval = wavecast_core::rollout::GateApproval::DistinctApprover).await;
    env.post_json("/api/v1/groups", Some(&env.admin), serde_json::json!({ "name": "g" })).await;
    env.enroll("g", "d1").await;
    env.publish("m@1.0.0", b"one").await;
    let id = env
        .post_json("/api/v1/rollouts", Some(&env.admin), serde_json::json!({ "artifact": "m@1.0.0", "group": "g", "waves": [100], "gates": [1], "probe": "exec:check" }))
        .await
        .json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let own = env.post_json(&format!("/api/v1/rollouts/{id}/approve"), Some(&env.admin), serde_json::json!({})).await;
    assert_eq!(own.status, StatusCode::FORBIDDEN);
    assert!(own.message().contains("may not approve"), "{}", own.message());
    let approver = env
        .post_json("/api/v1/tokens", Some(&env.admin), serde_json::json!({ "role": "approver", "name": "alice" }))
        .await
        .json();
    let ok = env
        .post_json(&format!("/api/v1/rollouts/{id}/approve"), approver["token"].as_str(), serde_json::json!({}))
        .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.message());
    let audit = env.get("/api/v1/audit").await.json();
    assert!(audit.as_array().unwrap().iter().any(|e| e["action"] == "rollout.approved" && e["actor"] == "alice"));
}

/// Every audit event about `device`, as (action, actor, from, reason).
async fn device_events(env: &Env, device: &str) -> Vec<(String, String, String, serde_json::Value)> {
    let audit = env.get("/api/v1/audit").await.json();
    audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["subject"] == device && e["action"] != "device.enrolled")
        .map(|e| {
            let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
            (s(&e["action"]), s(&e["actor"]), s(&e["detail"]["from"]), e["detail"]["reason"].clone())
        })
        .collect()
}

async fn an_abort_with_revert_is_audited_as_each_device_reported(db: Db) {
    let env = Env::new(db).await;
    env.post_json("/api/v1/groups", Some(&env.admin), serde_json::json!({ "name": "g" })).await;
    let names = ["cam-1", "cam-2", "cam-3", "cam-4"];
    let mut creds = Vec::new();
    for name in names {
        creds.push(env.enroll("g", name).await.0);
    }
    env.publish("m@1.0.0", b"one").await;
    // 99% of four devices is all four, so every device is in wave 1 and the rollout stops at
    // the gate of the (empty) wave 2 instead of completing.
    let create = serde_json::json!({
        "artifact": "m@1.0.0", "group": "g", "waves": [99, 100], "gates": [2], "probe": "exec:check"
    });
    let id =
        env.post_json("/api/v1/rollouts", Some(&env.admin), create).await.json()["id"].as_str().unwrap().to_owned();
    for cred in &creds {
        env.report(cred, &id, "r1", "succeeded", None).await;
    }
    assert_eq!(env.get(&format!("/api/v1/rollouts/{id}")).await.json()["state"], "waiting_approval");
    // Before an abort with revert, a device cannot claim either.
    env.report(&creds[0], &id, "early", "revert_skipped", Some("nothing to go back to")).await;
    assert_eq!(device_events(&env, "cam-1").await.len(), 1, "only its update");

    let r = env
        .post_json(&format!("/api/v1/rollouts/{id}/abort"), Some(&env.admin), serde_json::json!({ "mode": "revert" }))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.message());
    for cred in &creds {
        assert_eq!(assignments(&env, cred).await[0]["action"], "revert");
    }
    let skipped = "the first managed install of m replaced no file: there is no earlier version to go back to";
    env.report(&creds[0], &id, "r2", "reverted", None).await;
    env.report(&creds[1], &id, "r2", "revert_skipped", Some(skipped)).await;
    env.report(&creds[2], &id, "r2", "revert_skipped", Some(skipped)).await;
    // A late, contradicting report changes nothing: the device already said what happened.
    env.report(&creds[2], &id, "r3", "reverted", None).await;
    env.report(&creds[0], &id, "r3", "revert_skipped", Some(skipped)).await;

    let updated =
        ("device.updated".to_owned(), "device:cam-1".to_owned(), "assigned".to_owned(), serde_json::Value::Null);
    let device = |n: &str| format!("device:{n}");
    assert_eq!(
        device_events(&env, "cam-1").await,
        [updated.clone(), ("device.reverted".into(), device("cam-1"), "succeeded".into(), serde_json::Value::Null)]
    );
    for name in ["cam-2", "cam-3"] {
        let events = device_events(&env, name).await;
        assert_eq!(events.len(), 2, "{name}: {events:?}");
        assert_eq!(
            events[1],
            ("device.revert_skipped".into(), device(name), "succeeded".into(), skipped.into()),
            "{name}"
        );
    }
    assert_eq!(device_events(&env, "cam-4").await.len(), 1, "cam-4 has not answered yet");
    let shown = env.get(&format!("/api/v1/rollouts/{id}")).await.json();
    let counts = &shown["counts"];
    assert_eq!(
        [&counts["reverted"], &counts["revert_skipped"], &counts["succeeded"]].map(|v| v.as_u64()),
        [Some(1), Some(2), Some(1)],
        "{shown:#}"
    );
    let row = env.get("/api/v1/devices/cam-2").await.json()["rollouts"][0].clone();
    assert_eq!((row["state"].as_str(), row["reason"].as_str()), (Some("revert_skipped"), Some(skipped)));
    // Their doc does not change under them: the revert is still what this rollout serves.
    assert_eq!(assignments(&env, &creds[1]).await[0]["action"], "revert");
}

both!(
    late_joiners_get_the_group_version,
    the_group_version_is_known_good,
    creators_cannot_approve_their_own_gates_when_required,
    an_abort_with_revert_is_audited_as_each_device_reported,
);
