//! Rollout rules the API enforces beyond the engine: four-eyes approval, one active rollout per
//! group and artifact, and the group's version for devices that join later.

use axum::body::Body;
use axum::http::{Method, StatusCode};

use crate::both;
use crate::support::{Db, Env};

async fn report(env: &Env, cred: &str, rollout: &str, id: &str, state: &str) {
    let body = serde_json::json!({ "reports": [{
        "id": id, "rollout_id": rollout, "artifact": "m", "version": "1.0.0", "state": state, "at_ms": 1
    }], "active": [] });
    let r = env
        .request(
            Method::POST,
            "/device/v1/reports",
            Some(cred),
            &[("content-type", "application/json".into())],
            Body::from(body.to_string()),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
}

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
    report(&env, &early, &id, "r1", "downloading").await;
    report(&env, &early, &id, "r2", "succeeded").await;
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

both!(late_joiners_get_the_group_version, creators_cannot_approve_their_own_gates_when_required);
