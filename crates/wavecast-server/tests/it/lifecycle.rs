//! A device's lifetime: enrollment tokens that run out, expire or are revoked; devices that are
//! revoked (refused, out of their rollouts, still listed) or removed (gone, name free again);
//! reports that claim what a device may not say; artifacts a device may not fetch.

use axum::body::Body;
use axum::http::{Method, StatusCode};
use serde_json::{Value, json};
use wavecast_core::GroupName;
use wavecast_core::secret::{Secret, SecretKind};
use wavecast_server::store::NewEnrollmentToken;

use crate::both;
use crate::support::{Db, Env, Resp};

impl Env {
    pub(crate) async fn group(&self, name: &str) {
        let r = self.post_json("/api/v1/groups", Some(&self.admin), json!({ "name": name })).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.message());
    }

    async fn mint(&self, body: Value) -> Resp {
        self.post_json("/api/v1/enrollment-tokens", Some(&self.admin), body).await
    }

    async fn enroll_with(&self, token: &str, name: &str) -> Resp {
        self.post_json("/device/v1/enroll", None, json!({ "token": token, "name": name, "hardware": "hw" })).await
    }

    async fn delete(&self, path: &str) -> Resp {
        self.request(Method::DELETE, path, Some(&self.admin), &[], Body::empty()).await
    }

    async fn revoke(&self, device: &str) -> Resp {
        self.request(Method::POST, &format!("/api/v1/devices/{device}/revoke"), Some(&self.admin), &[], Body::empty())
            .await
    }

    async fn as_device(&self, cred: &str, path: &str) -> Resp {
        self.request(Method::GET, path, Some(cred), &[], Body::empty()).await
    }

    /// Posts one batch of (id, rollout, state) reports as device `cred`.
    async fn batch(&self, cred: &str, reports: &[(&str, &str, &str)]) -> Resp {
        let reports: Vec<Value> = reports
            .iter()
            .map(|(id, rollout, state)| {
                json!({ "id": id, "rollout_id": rollout, "artifact": "m", "version": "1.0.0", "state": state, "at_ms": 1 })
            })
            .collect();
        self.post_json("/device/v1/reports", Some(cred), json!({ "reports": reports, "active": [] })).await
    }

    pub(crate) async fn rollout(&self, artifact: &str, group: &str, waves: Value) -> String {
        let body = json!({ "artifact": artifact, "group": group, "waves": waves, "probe": "exec:check",
                           "device_timeout_ms": 3_600_000u64 });
        let r = self.post_json("/api/v1/rollouts", Some(&self.admin), body).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.message());
        r.json()["id"].as_str().unwrap().to_owned()
    }

    async fn audit_actions(&self) -> Vec<(String, String, String)> {
        let audit = self.get("/api/v1/audit").await.json();
        let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        audit.as_array().unwrap().iter().map(|e| (s(&e["action"]), s(&e["actor"]), s(&e["subject"]))).collect()
    }
}

fn event(action: &str, actor: &str, subject: &str) -> (String, String, String) {
    (action.into(), actor.into(), subject.into())
}

async fn enrollment_tokens_run_out_expire_and_are_revoked(db: Db) {
    let env = Env::new(db).await;
    env.group("g").await;

    // A token for two devices admits two, and says so to the third.
    let two = env.mint(json!({ "group": "g", "max_uses": 2 })).await;
    assert_eq!(two.status, StatusCode::CREATED, "{}", two.message());
    assert_eq!(two.json()["max_uses"], 2);
    let (two_id, two_secret) =
        (two.json()["id"].as_str().unwrap().to_owned(), two.json()["token"].as_str().unwrap().to_owned());
    for name in ["d1", "d2"] {
        let r = env.enroll_with(&two_secret, name).await;
        assert_eq!(r.status, StatusCode::CREATED, "{name}: {}", r.message());
    }
    let third = env.enroll_with(&two_secret, "d3").await;
    assert_eq!(third.status, StatusCode::UNAUTHORIZED);
    assert!(third.message().contains("made for 2 device(s), and all of them have enrolled"), "{}", third.message());

    // An enrollment that fails spends no use.
    let one = env.mint(json!({ "group": "g", "max_uses": 1 })).await.json();
    let (one_id, one) = (one["id"].as_str().unwrap().to_owned(), one["token"].as_str().unwrap().to_owned());
    let taken = env.enroll_with(&one, "d1").await;
    assert_eq!(taken.status, StatusCode::CONFLICT);
    assert!(taken.message().contains("wavecast device remove d1"), "{}", taken.message());
    assert_eq!(env.enroll_with(&one, "d3").await.status, StatusCode::CREATED);

    // A revoked token admits nobody from then on; revoking it again is no error and no news.
    let minted = env.mint(json!({ "group": "g" })).await.json();
    let (id, secret) = (minted["id"].as_str().unwrap(), minted["token"].as_str().unwrap());
    assert_eq!(minted["max_uses"], Value::Null);
    let revoked = env.delete(&format!("/api/v1/enrollment-tokens/{id}")).await;
    assert_eq!(revoked.status, StatusCode::OK, "{}", revoked.message());
    let at = revoked.json()["revoked_at"].as_str().expect("revoked_at").to_owned();
    let again = env.delete(&format!("/api/v1/enrollment-tokens/{id}")).await;
    assert_eq!((again.status, again.json()["revoked_at"].as_str()), (StatusCode::OK, Some(at.as_str())));
    let refused = env.enroll_with(secret, "d4").await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert!(refused.message().contains("was revoked"), "{}", refused.message());
    assert_eq!(env.delete("/api/v1/enrollment-tokens/0000").await.status, StatusCode::NOT_FOUND);

    // An expired token (stored as the server would have an hour ago) says so.
    let expired = Secret::from_random(SecretKind::EnrollmentToken, [7; 32]);
    let now = jiff::Timestamp::now().as_millisecond();
    let stale = NewEnrollmentToken {
        id: "expired".into(),
        group: GroupName::new("g").unwrap(),
        secret_sha256: expired.hash(),
        now_ms: now - 3_600_000,
        expires_at: now - 1,
        max_uses: None,
        created_by: "admin".into(),
    };
    let minted_event = wavecast_core::audit::NewAuditEvent {
        actor: wavecast_core::audit::Actor::Operator("admin".into()),
        action: wavecast_core::audit::AuditAction::EnrollmentTokenCreated,
        subject: "g".into(),
        detail: json!({ "id": "expired" }),
    };
    env.state.store().create_enrollment_token(&stale, minted_event).await.unwrap();
    let r = env.enroll_with(expired.expose(), "d5").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.message().contains("has expired"), "{}", r.message());
    let unknown = env.enroll_with(&format!("wce_{}", "ab".repeat(32)), "d6").await;
    assert_eq!(unknown.status, StatusCode::UNAUTHORIZED);
    assert!(unknown.message().contains("unknown"), "{}", unknown.message());
    assert_eq!(env.mint(json!({ "group": "g", "max_uses": 0 })).await.status, StatusCode::BAD_REQUEST);

    // The list says how each token was used, and never shows a secret.
    let listed = env.get("/api/v1/enrollment-tokens").await.json();
    let rows: std::collections::BTreeMap<String, (Value, Value, bool)> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            assert!(t.get("token").is_none() && !t.to_string().contains("wce_"), "{t}");
            (
                t["id"].as_str().unwrap().to_owned(),
                (t["max_uses"].clone(), t["uses"].clone(), t["revoked_at"].is_string()),
            )
        })
        .collect();
    let expected: std::collections::BTreeMap<String, (Value, Value, bool)> = [
        (two_id, (json!(2), json!(2), false)),
        (one_id, (json!(1), json!(1), false)),
        (id.to_owned(), (Value::Null, json!(0), true)),
        ("expired".to_owned(), (Value::Null, json!(0), false)),
    ]
    .into_iter()
    .collect();
    assert_eq!(rows, expected);
    assert_eq!(listed[0]["id"], "expired", "oldest first");
    let devices: Vec<String> = env
        .get("/api/v1/devices")
        .await
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(devices, ["d1", "d2", "d3"]);
    let revocations =
        env.audit_actions().await.into_iter().filter(|e| e.0 == "enrollment_token.revoked").collect::<Vec<_>>();
    assert_eq!(revocations, [event("enrollment_token.revoked", "admin", "g")]);
}

async fn a_revoked_device_is_refused_leaves_its_rollouts_and_stays_listed(db: Db) {
    let env = Env::new(db).await;
    env.group("g").await;
    let mut creds = Vec::new();
    for name in ["d1", "d2", "d3"] {
        creds.push(env.enroll("g", name).await.0);
    }
    assert_eq!(env.publish("m@1.0.0", b"one").await.status, StatusCode::CREATED);
    let id = env.rollout("m@1.0.0", "g", json!([100])).await;
    // d1 is at work, d2 is done, d3 has not shown up (and would hold the rollout for an hour).
    env.report(&creds[0], &id, "a", "downloading", None).await;
    env.report(&creds[1], &id, "b", "succeeded", None).await;
    assert_eq!(env.as_device(&creds[0], "/device/v1/whoami").await.status, StatusCode::OK);

    let r = env.revoke("d1").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.message());
    let body = r.json();
    assert_eq!((body["name"].as_str(), body["state"].as_str()), (Some("d1"), Some("revoked")));
    assert_eq!((body["decommissioned"].as_bool(), body["left_rollouts"].clone()), (Some(false), json!([id])));
    // Refused from its next request on, whatever it asks.
    for path in ["/device/v1/whoami", "/device/v1/assignments", "/device/v1/tuf/timestamp.json"] {
        let refused = env.as_device(&creds[0], path).await;
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{path}");
        assert!(refused.message().contains("credential of device d1 was revoked"), "{path}: {}", refused.message());
    }
    let late = env.batch(&creds[0], &[("c", &id, "failed")]).await;
    assert_eq!(late.status, StatusCode::UNAUTHORIZED);

    let shown = env.get(&format!("/api/v1/rollouts/{id}")).await.json();
    let counts = &shown["counts"];
    assert_eq!(
        (counts["removed"].as_u64(), counts["downloading"].as_u64(), counts["assigned"].as_u64()),
        (Some(1), Some(0), Some(1)),
        "{shown:#}"
    );
    assert_eq!((shown["state"].as_str(), shown["failures_counted"].as_u64()), (Some("running"), Some(0)));
    // The silent device no longer holds the rollout once revoked: it completes, with no failure.
    let r = env.revoke("d3").await;
    assert_eq!(r.json()["left_rollouts"], json!([id]));
    let shown = env.get(&format!("/api/v1/rollouts/{id}")).await.json();
    assert_eq!(
        (shown["state"].as_str(), shown["failures_counted"].as_u64()),
        (Some("completed"), Some(0)),
        "{shown:#}"
    );
    assert_eq!((shown["counts"]["removed"].as_u64(), shown["counts"]["succeeded"].as_u64()), (Some(2), Some(1)));
    assert_eq!(shown["waves"][0]["state"], "settled");

    // Revoked devices stay listed, as such, and count in their group no more.
    let names = |v: Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|d| format!("{} {}", d["name"].as_str().unwrap(), d["state"].as_str().unwrap()))
            .collect()
    };
    assert_eq!(names(env.get("/api/v1/devices").await.json()), ["d1 revoked", "d2 active", "d3 revoked"]);
    assert_eq!(names(env.get("/api/v1/devices?state=revoked").await.json()), ["d1 revoked", "d3 revoked"]);
    assert_eq!(names(env.get("/api/v1/devices?state=active&group=g").await.json()), ["d2 active"]);
    let bogus = env.get("/api/v1/devices?state=lost").await;
    assert_eq!(bogus.status, StatusCode::BAD_REQUEST);
    assert!(bogus.message().contains("expected active or revoked"), "{}", bogus.message());
    assert_eq!(env.get("/api/v1/groups").await.json()[0]["devices"], 1);
    let d1 = env.get("/api/v1/devices/d1").await.json();
    assert_eq!((d1["state"].as_str(), d1["rollouts"][0]["state"].as_str()), (Some("revoked"), Some("removed")));
    assert!(d1["rollouts"][0]["reason"].as_str().unwrap().contains("credential was revoked by admin"), "{d1:#}");
    // Its name stays taken until it is removed.
    let t = env.mint(json!({ "group": "g" })).await.json()["token"].as_str().unwrap().to_owned();
    assert_eq!(env.enroll_with(&t, "d1").await.status, StatusCode::CONFLICT);

    // A new rollout leaves revoked devices out.
    assert_eq!(env.publish("m@2.0.0", b"two").await.status, StatusCode::CREATED);
    let next = env.rollout("m@2.0.0", "g", json!([100])).await;
    assert_eq!(env.get(&format!("/api/v1/rollouts/{next}")).await.json()["device_count"], 1);

    // The audit log says who revoked whom, and what that did to the rollout.
    let events = env.audit_actions().await;
    let about = |who: &str| -> Vec<(String, String, String)> {
        events.iter().filter(|e| e.2 == who && e.0 != "device.enrolled").cloned().collect()
    };
    assert_eq!(
        about("d1"),
        [event("device.revoked", "admin", "d1"), event("device.removed", "admin", "d1")],
        "{events:?}"
    );
    assert!(events.contains(&event("rollout.completed", "admin", &id)), "the revocation completed it: {events:?}");
    // Revoking again changes nothing and records nothing.
    let before = events.len();
    let again = env.revoke("d1").await;
    assert_eq!((again.status, again.json()["left_rollouts"].clone()), (StatusCode::OK, json!([])));
    assert_eq!(env.audit_actions().await.len(), before);
    assert_eq!(env.revoke("nobody").await.status, StatusCode::NOT_FOUND);
}

async fn a_removed_device_leaves_its_group_and_its_name_is_free(db: Db) {
    let env = Env::new(db).await;
    env.group("g").await;
    let (old, old_id) = env.enroll("g", "d1").await;
    let (_, _) = env.enroll("g", "d2").await;
    assert_eq!(env.publish("m@1.0.0", b"one").await.status, StatusCode::CREATED);
    let id = env.rollout("m@1.0.0", "g", json!([100])).await;
    env.report(&old, &id, "a", "probing", None).await;

    let r = env.delete("/api/v1/devices/d1").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.message());
    assert_eq!((r.json()["decommissioned"].as_bool(), r.json()["left_rollouts"].clone()), (Some(true), json!([id])));
    assert_eq!(env.get("/api/v1/devices/d1").await.status, StatusCode::NOT_FOUND);
    let listed: Vec<Value> =
        env.get("/api/v1/devices").await.json().as_array().unwrap().iter().map(|d| d["name"].clone()).collect();
    assert_eq!(listed, ["d2"]);
    assert_eq!(env.get("/api/v1/groups").await.json()[0]["devices"], 1);
    let gone = env.as_device(&old, "/device/v1/whoami").await;
    assert_eq!(gone.status, StatusCode::UNAUTHORIZED);
    let shown = env.get(&format!("/api/v1/rollouts/{id}")).await.json();
    assert_eq!(
        (shown["counts"]["removed"].as_u64(), shown["counts"]["probing"].as_u64(), shown["failures_counted"].as_u64()),
        (Some(1), Some(0), Some(0)),
        "{shown:#}"
    );
    assert_eq!(env.delete("/api/v1/devices/d1").await.status, StatusCode::NOT_FOUND);

    // A replacement enrolls under the name, as a new device with no history.
    let t = env.mint(json!({ "group": "g" })).await.json()["token"].as_str().unwrap().to_owned();
    let r = env.enroll_with(&t, "d1").await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.message());
    assert_ne!(r.json()["device_id"].as_str(), Some(old_id.as_str()));
    let d1 = env.get("/api/v1/devices/d1").await.json();
    assert_eq!((d1["state"].as_str(), d1["rollouts"].as_array().map(Vec::len)), (Some("active"), Some(0)));

    // The audit log remembers the old one, in order.
    let about: Vec<String> =
        env.audit_actions().await.into_iter().filter(|e| e.2 == "d1" && e.1 == "admin").map(|e| e.0).collect();
    assert_eq!(about, ["device.revoked", "device.removed", "device.decommissioned"]);
}

async fn refused_reports_are_answered_and_change_nothing(db: Db) {
    let env = Env::new(db).await;
    env.group("g").await;
    env.group("h").await;
    let mut creds = std::collections::BTreeMap::new();
    for name in ["d1", "d2", "d3", "d4"] {
        creds.insert(name, env.enroll("g", name).await.0);
    }
    let (stranger, _) = env.enroll("h", "x1").await;
    assert_eq!(env.publish("m@1.0.0", b"one").await.status, StatusCode::CREATED);
    // Two waves of two: two devices are assigned, two pending.
    let id = env.rollout("m@1.0.0", "g", json!([50, 100])).await;
    let mut by_state = std::collections::BTreeMap::<String, Vec<&str>>::new();
    for name in creds.keys() {
        let d = env.get(&format!("/api/v1/devices/{name}")).await.json();
        by_state.entry(d["rollouts"][0]["state"].as_str().unwrap().to_owned()).or_default().push(name);
    }
    let (assigned, pending) = (&creds[by_state["assigned"][0]], &creds[by_state["pending"][0]]);

    let rollout_before = env.get(&format!("/api/v1/rollouts/{id}")).await.body;
    let audit_before = env.audit_actions().await;
    let claims: &[(&str, &str, &str, &str)] = &[
        ("u", "unreachable", "a device cannot report itself unreachable: the server decides that", "assigned"),
        ("t", "timed_out", "a device cannot report itself timed_out", "assigned"),
        ("p", "pending", "a device cannot report itself pending", "assigned"),
        (
            "x",
            "removed",
            "a device cannot report itself removed: a device leaves a rollout only when an operator",
            "assigned",
        ),
        ("r", "reverted", "reports reverted only after the rollout was aborted with revert", "assigned"),
        ("s", "revert_skipped", "reports revert_skipped only after the rollout was aborted with revert", "assigned"),
        ("w", "succeeded", "the device's wave has not opened", "pending"),
    ];
    for (key, state, why, who) in claims {
        let cred = if *who == "assigned" { assigned } else { pending };
        for attempt in 0..2 {
            // The same report twice: a refused id is not kept, so it is refused again, not
            // taken for a repeat.
            let r = env.batch(cred, &[(key, &id, state)]).await;
            assert_eq!(r.status, StatusCode::OK, "{state}: {}", r.message());
            let ack = r.json();
            assert_eq!(ack["acked"], json!([key]), "{state} ({attempt}): acked so the device stops sending it");
            let reason = ack["refused"][0]["reason"].as_str().unwrap_or_default();
            assert_eq!(ack["refused"][0]["id"], *key, "{ack}");
            assert!(reason.starts_with(&format!("{state} about rollout {id}: ")) && reason.contains(why), "{reason}");
        }
    }
    // A device of another group, and a rollout that does not exist.
    let r = env.batch(&stranger, &[("n", &id, "succeeded"), ("o", "r-00000000", "succeeded")]).await.json();
    assert!(r["refused"][0]["reason"].as_str().unwrap().contains("not in this rollout"), "{r}");
    assert!(r["refused"][1]["reason"].as_str().unwrap().contains("no such rollout"), "{r}");

    // Nothing changed: not the rollout (not even its last change), not the audit log.
    assert_eq!(env.get(&format!("/api/v1/rollouts/{id}")).await.body, rollout_before);
    assert_eq!(env.audit_actions().await, audit_before);

    // Beside a refused report, a good one applies; an out-of-date one is let be, unrefused.
    let r =
        env.batch(assigned, &[("u2", &id, "unreachable"), ("ok", &id, "downloading"), ("ok2", &id, "succeeded")]).await;
    let ack = r.json();
    assert_eq!(ack["acked"], json!(["u2", "ok", "ok2"]));
    assert_eq!(ack["refused"].as_array().map(Vec::len), Some(1), "{ack}");
    let late = env.batch(assigned, &[("late", &id, "downloading")]).await.json();
    assert_eq!(late, json!({ "acked": ["late"] }), "a late step is no refusal");
    let shown = env.get(&format!("/api/v1/rollouts/{id}")).await.json();
    assert_eq!(shown["counts"]["succeeded"], 1, "{shown:#}");
}

async fn devices_fetch_only_the_artifacts_they_are_assigned(db: Db) {
    let env = Env::new(db).await;
    env.group("g").await;
    env.group("h").await;
    let (d1, _) = env.enroll("g", "d1").await;
    let (other, _) = env.enroll("h", "x1").await;
    let (one, two) = (b"model one".to_vec(), b"model two".to_vec());
    for (target, bytes) in [("m@1.0.0", &one), ("m@2.0.0", &two)] {
        assert_eq!(env.publish(target, bytes).await.status, StatusCode::CREATED);
    }
    let sha = |b: &[u8]| wavecast_core::Sha256Digest::of(b).to_hex();
    let url = |bytes: &[u8], target: &str| format!("/device/v1/targets/{}.{target}", sha(bytes));
    // Nothing is assigned yet: nothing may be fetched, though it is published.
    let r = env.as_device(&d1, &url(&one, "m@1.0.0")).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(r.message().contains("device d1 is not assigned m@1.0.0"), "{}", r.message());

    let id = env.rollout("m@1.0.0", "g", json!([100])).await;
    let r = env.as_device(&d1, &url(&one, "m@1.0.0")).await;
    assert_eq!((r.status, r.body.as_slice()), (StatusCode::OK, one.as_slice()));
    let ranged = env
        .request(Method::GET, &url(&one, "m@1.0.0"), Some(&d1), &[("range", "bytes=6-".into())], Body::empty())
        .await;
    assert_eq!((ranged.status, ranged.body.as_slice()), (StatusCode::PARTIAL_CONTENT, &one[6..]));
    // Not another version, not other bytes under the assigned name, not to another group.
    for (cred, path) in [(&d1, url(&two, "m@2.0.0")), (&d1, url(&two, "m@1.0.0")), (&other, url(&one, "m@1.0.0"))] {
        let r = env.as_device(cred, &path).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{path}");
        assert_eq!(r.json()["error"]["code"], "forbidden");
    }
    // Once the rollout is aborted (keeping what devices run), nothing is assigned to fetch.
    let r = env.post_json(&format!("/api/v1/rollouts/{id}/abort"), Some(&env.admin), json!({ "mode": "keep" })).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.message());
    assert_eq!(env.as_device(&d1, &url(&one, "m@1.0.0")).await.status, StatusCode::FORBIDDEN);
    // A group's version is what a device that joins later is assigned, so it may fetch it.
    let id = env.rollout("m@2.0.0", "g", json!([100])).await;
    env.report(&d1, &id, "done", "succeeded", None).await;
    let (late, _) = env.enroll("g", "d2").await;
    assert_eq!(env.as_device(&late, &url(&two, "m@2.0.0")).await.status, StatusCode::OK);
}

both!(
    enrollment_tokens_run_out_expire_and_are_revoked,
    a_revoked_device_is_refused_leaves_its_rollouts_and_stays_listed,
    a_removed_device_leaves_its_group_and_its_name_is_free,
    refused_reports_are_answered_and_change_nothing,
    devices_fetch_only_the_artifacts_they_are_assigned,
);
