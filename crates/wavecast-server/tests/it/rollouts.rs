//! Rollout rules the API enforces beyond the engine: four-eyes approval, one active rollout per
//! group and artifact, the group's version for devices that join later, and an audit trail
//! that says exactly what each device reported after an abort with revert.

use axum::body::Body;
use axum::http::{Method, StatusCode};

use crate::both;
use crate::support::{Db, Env};

async fn assignments(env: &Env, cred: &str) -> serde_json::Value {
    env.request(Method::GET, "/device/v1/assignments", Some(cred), &[], Body::empty()).await.json()["signed"]["assignments"].clone()
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
    creators_cannot_approve_their_own_gates_when_required,
    an_abort_with_revert_is_audited_as_each_device_reported,
);
