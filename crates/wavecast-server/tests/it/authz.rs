//! The authorization matrix: every route × every kind of caller gets exactly the expected
//! allow or deny; devices can touch only their own assignment and reports, and fetch only the
//! artifacts they are assigned.

use axum::body::Body;
use axum::http::{Method, StatusCode};
use wavecast_core::Permission;
use wavecast_core::Role;

use crate::both;
use crate::support::{Db, Env};

/// Who calls.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Caller {
    Nobody,
    Role(Role),
    Revoked,
    /// A device in no rollout.
    Device,
    /// A device a rollout assigned the artifact.
    AssignedDevice,
}

/// What a route needs.
#[derive(Debug, Clone, Copy)]
enum Needs {
    Operator(Option<Permission>),
    Device,
    /// A device whose assignments tell it to install this artifact; other devices get 403.
    AssignedDevice,
}

async fn setup(env: &Env) -> (Vec<(Caller, Option<String>)>, String, String, String) {
    let mut callers = vec![(Caller::Nobody, None)];
    for role in Role::ALL {
        let r = env
            .post_json(
                "/api/v1/tokens",
                Some(&env.admin),
                serde_json::json!({ "role": role, "name": format!("t-{role}") }),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.message());
        callers.push((Caller::Role(role), Some(r.json()["token"].as_str().unwrap().to_owned())));
    }
    let revoked = env
        .post_json("/api/v1/tokens", Some(&env.admin), serde_json::json!({ "role": "admin", "name": "gone" }))
        .await
        .json();
    let r = env
        .request(
            Method::DELETE,
            &format!("/api/v1/tokens/{}", revoked["id"].as_str().unwrap()),
            Some(&env.admin),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.json()["revoked_at"].is_string());
    callers.push((Caller::Revoked, Some(revoked["token"].as_str().unwrap().to_owned())));

    for g in ["g1", "g2"] {
        env.post_json("/api/v1/groups", Some(&env.admin), serde_json::json!({ "name": g })).await;
    }
    let (cred_a, id_a) = env.enroll("g2", "dev-a").await;
    let (cred_b, _id_b) = env.enroll("g1", "dev-b").await;
    callers.push((Caller::Device, Some(cred_a.clone())));
    callers.push((Caller::AssignedDevice, Some(cred_b)));
    assert_eq!(env.publish("m@1.0.0", b"bytes").await.status, StatusCode::CREATED);
    let rollout = env
        .post_json(
            "/api/v1/rollouts",
            Some(&env.admin),
            serde_json::json!({ "artifact": "m@1.0.0", "group": "g1", "waves": [100], "probe": "exec:check" }),
        )
        .await;
    assert_eq!(rollout.status, StatusCode::CREATED, "{}", rollout.message());
    (callers, rollout.json()["id"].as_str().unwrap().to_owned(), cred_a, id_a)
}

async fn matrix(db: Db) {
    // The matrix fails authentication on purpose some 170 times, all from the one address
    // in-process requests share: more than a real client's failure budget, which `limits`
    // tests on its own.
    let env = Env::with(db, |c| c.limits.failed_auth_per_address = "1000/s,1000".parse().unwrap()).await;
    let (callers, rollout, cred_a, id_a) = setup(&env).await;
    let sha = wavecast_core::Sha256Digest::of(b"bytes").to_hex();
    use Needs::*;
    use Permission::*;
    let routes: Vec<(Method, String, serde_json::Value, Needs)> = vec![
        (Method::GET, "/api/v1/whoami".into(), serde_json::Value::Null, Operator(None)),
        (Method::GET, "/api/v1/status".into(), serde_json::Value::Null, Operator(Some(Read))),
        (
            Method::POST,
            "/api/v1/artifacts/resign".into(),
            serde_json::json!({ "targets": "{}" }),
            Operator(Some(Publish)),
        ),
        (Method::POST, "/api/v1/root/rotate".into(), serde_json::json!({ "root": "{}" }), Operator(Some(ManageTrust))),
        (Method::GET, "/api/v1/artifacts".into(), serde_json::Value::Null, Operator(Some(Read))),
        (Method::POST, "/api/v1/artifacts".into(), serde_json::json!({}), Operator(Some(Publish))),
        (Method::GET, "/api/v1/groups".into(), serde_json::Value::Null, Operator(Some(Read))),
        (Method::POST, "/api/v1/groups".into(), serde_json::json!({ "name": "../bad" }), Operator(Some(ManageFleet))),
        (
            Method::POST,
            "/api/v1/enrollment-tokens".into(),
            serde_json::json!({ "group": "nope" }),
            Operator(Some(ManageFleet)),
        ),
        (Method::GET, "/api/v1/enrollment-tokens".into(), serde_json::Value::Null, Operator(Some(Read))),
        (Method::DELETE, "/api/v1/enrollment-tokens/0000".into(), serde_json::Value::Null, Operator(Some(ManageFleet))),
        (Method::GET, "/api/v1/devices".into(), serde_json::Value::Null, Operator(Some(Read))),
        (Method::GET, "/api/v1/devices/dev-a".into(), serde_json::Value::Null, Operator(Some(Read))),
        // A device no one enrolled: whoever may act gets 404, and no caller's device is touched.
        (Method::POST, "/api/v1/devices/nobody/revoke".into(), serde_json::Value::Null, Operator(Some(ManageFleet))),
        (Method::DELETE, "/api/v1/devices/nobody".into(), serde_json::Value::Null, Operator(Some(ManageFleet))),
        (Method::GET, "/api/v1/audit".into(), serde_json::Value::Null, Operator(Some(Read))),
        (Method::GET, "/api/v1/audit/checkpoint".into(), serde_json::Value::Null, Operator(Some(Read))),
        (Method::GET, "/api/v1/audit/checkpoints".into(), serde_json::Value::Null, Operator(Some(Read))),
        (Method::GET, "/api/v1/audit/leaves".into(), serde_json::Value::Null, Operator(Some(Read))),
        (Method::GET, "/api/v1/audit/export".into(), serde_json::Value::Null, Operator(Some(Read))),
        (Method::GET, "/api/v1/audit/consistency?from=0".into(), serde_json::Value::Null, Operator(Some(Read))),
        (Method::GET, "/api/v1/tuf/timestamp.json".into(), serde_json::Value::Null, Operator(Some(Read))),
        (Method::GET, format!("/api/v1/blobs/{sha}"), serde_json::Value::Null, Operator(Some(Read))),
        (Method::GET, "/api/v1/tokens".into(), serde_json::Value::Null, Operator(Some(ManageTokens))),
        (Method::POST, "/api/v1/tokens".into(), serde_json::json!({ "role": "root" }), Operator(Some(ManageTokens))),
        (Method::DELETE, "/api/v1/tokens/0000".into(), serde_json::Value::Null, Operator(Some(ManageTokens))),
        (Method::GET, "/api/v1/rollouts".into(), serde_json::Value::Null, Operator(Some(Read))),
        (Method::GET, format!("/api/v1/rollouts/{rollout}"), serde_json::Value::Null, Operator(Some(Read))),
        (
            Method::POST,
            "/api/v1/rollouts".into(),
            serde_json::json!({ "artifact": "bad" }),
            Operator(Some(OperateRollouts)),
        ),
        (
            Method::POST,
            format!("/api/v1/rollouts/{rollout}/approve"),
            serde_json::json!({}),
            Operator(Some(ApproveGates)),
        ),
        (
            Method::POST,
            format!("/api/v1/rollouts/{rollout}/resume"),
            serde_json::json!({ "ack": false }),
            Operator(Some(OperateRollouts)),
        ),
        (
            Method::POST,
            format!("/api/v1/rollouts/{rollout}/abort"),
            serde_json::json!({ "mode": "never" }),
            Operator(Some(OperateRollouts)),
        ),
        (Method::GET, "/device/v1/whoami".into(), serde_json::Value::Null, Device),
        (Method::GET, "/device/v1/assignments".into(), serde_json::Value::Null, Device),
        (Method::GET, "/device/v1/tuf/timestamp.json".into(), serde_json::Value::Null, Device),
        (Method::GET, format!("/device/v1/targets/{sha}.m@1.0.0"), serde_json::Value::Null, AssignedDevice),
        (Method::POST, "/device/v1/reports".into(), serde_json::json!({ "reports": [], "active": [] }), Device),
    ];
    let mut checked = 0;
    for (method, path, body, needs) in &routes {
        for (caller, token) in &callers {
            let body = if body.is_null() { Body::empty() } else { Body::from(body.to_string()) };
            let r = env
                .request(method.clone(), path, token.as_deref(), &[("content-type", "application/json".into())], body)
                .await;
            let allowed = match (needs, caller) {
                (Operator(None), Caller::Role(_)) => true,
                (Operator(Some(p)), Caller::Role(role)) => role.allows(*p),
                (Device, Caller::Device | Caller::AssignedDevice) => true,
                (AssignedDevice, Caller::AssignedDevice) => true,
                _ => false,
            };
            let denied_as = match caller {
                Caller::Role(_) if matches!(needs, Operator(_)) => StatusCode::FORBIDDEN,
                Caller::Device if matches!(needs, AssignedDevice) => StatusCode::FORBIDDEN,
                _ => StatusCode::UNAUTHORIZED,
            };
            if allowed {
                assert!(
                    r.status != StatusCode::UNAUTHORIZED && r.status != StatusCode::FORBIDDEN,
                    "{method} {path} as {caller:?} must be allowed, got {}: {}",
                    r.status,
                    String::from_utf8_lossy(&r.body)
                );
            } else {
                assert_eq!(r.status, denied_as, "{method} {path} as {caller:?}: {}", String::from_utf8_lossy(&r.body));
                assert!(r.json()["error"]["message"].is_string());
            }
            checked += 1;
        }
    }
    assert_eq!(checked, routes.len() * callers.len());

    // The dashboard: the same permissions, through a browser session. Only a live token signs
    // in; everyone else is sent to sign in. Actions carry the session's CSRF token, so only the
    // role decides; the bodies are refused by the domain (409, 400) when the role allows them,
    // so the matrix changes nothing.
    let mut sessions = Vec::new();
    for (caller, token) in &callers {
        let session = match (caller, token) {
            (Caller::Role(_), Some(token)) => Some(env.sign_in(token).await),
            (_, Some(token)) => {
                let form = format!("token={token}");
                let r = env.page(Method::POST, "/ui/sign-in", None, &form).await;
                assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{caller:?} must not sign in");
                assert!(r.headers.get("set-cookie").is_none());
                None
            }
            (_, None) => None,
        };
        sessions.push((*caller, session));
    }
    let pages: Vec<(Method, String, &str, Option<Permission>)> = vec![
        (Method::GET, "/ui/rollouts".into(), "", Some(Read)),
        (Method::GET, format!("/ui/rollouts/{rollout}"), "", Some(Read)),
        (Method::GET, "/ui/devices".into(), "", Some(Read)),
        (Method::GET, "/ui/devices/dev-a".into(), "", Some(Read)),
        (Method::GET, "/ui/artifacts".into(), "", Some(Read)),
        (Method::GET, "/ui/artifacts/m/1.0.0".into(), "", Some(Read)),
        (Method::GET, "/ui/audit".into(), "", Some(Read)),
        (Method::POST, format!("/ui/rollouts/{rollout}/approve"), "", Some(ApproveGates)),
        (Method::POST, format!("/ui/rollouts/{rollout}/resume"), "ack=yes", Some(OperateRollouts)),
        (Method::POST, format!("/ui/rollouts/{rollout}/abort"), "mode=never", Some(OperateRollouts)),
        (
            Method::POST,
            "/ui/rollouts".into(),
            "artifact=bad&group=g1&waves=100&halt_after=1&probe=exec%3Acheck",
            Some(OperateRollouts),
        ),
    ];
    for (method, path, form, needs) in &pages {
        for (caller, session) in &sessions {
            let form = match session {
                Some(s) if !form.is_empty() => format!("csrf={}&{form}", s.csrf),
                Some(s) => format!("csrf={}", s.csrf),
                None => form.to_string(),
            };
            let r = env.page(method.clone(), path, session.as_ref(), &form).await;
            let body = String::from_utf8_lossy(&r.body);
            match (caller, session) {
                (Caller::Role(role), Some(_)) if needs.is_none_or(|p| role.allows(p)) => assert!(
                    !matches!(r.status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::SEE_OTHER),
                    "{method} {path} as {caller:?} must be allowed (and refused by the domain), got {}: {body}",
                    r.status
                ),
                (Caller::Role(role), Some(_)) => {
                    assert_eq!(r.status, StatusCode::FORBIDDEN, "{method} {path} as {caller:?}: {body}");
                    assert!(body.contains(&format!("has role {role}")), "the page says why: {body}");
                }
                _ => {
                    assert_eq!(r.status, StatusCode::SEE_OTHER, "{method} {path} as {caller:?} must sign in first");
                    let to = r.headers["location"].to_str().unwrap();
                    assert!(to.starts_with("/ui/sign-in?next="), "{to}");
                }
            }
            // An action without the CSRF token is refused whoever sends it, before the role is
            // looked at.
            if *method == Method::POST && session.is_some() {
                let r = env.page(method.clone(), path, session.as_ref(), "ack=yes&mode=keep").await;
                assert_eq!(r.status, StatusCode::FORBIDDEN, "{method} {path} without a CSRF token as {caller:?}");
                assert!(String::from_utf8_lossy(&r.body).contains("CSRF token"));
            }
        }
    }
    let shown = env.get(&format!("/api/v1/rollouts/{rollout}")).await.json();
    assert_eq!(shown["state"], "running", "nothing in the dashboard matrix may change the rollout");

    // A device gets its own assignment doc, never another's.
    let doc = env.request(Method::GET, "/device/v1/assignments", Some(&cred_a), &[], Body::empty()).await.json();
    assert_eq!(doc["signed"]["device_id"], id_a.as_str());
    assert!(doc["signed"]["assignments"].as_array().unwrap().is_empty(), "dev-a is in no rollout");
    // A device posting a report for a rollout it is not in changes nothing (and is not audited).
    let before = env.get("/api/v1/audit").await.json().as_array().unwrap().len();
    let forged = serde_json::json!({ "reports": [{
        "id": "forged-1", "rollout_id": rollout, "artifact": "m", "version": "1.0.0", "state": "failed",
        "reason": "dev-a pretending to be dev-b", "at_ms": 0
    }], "active": [] });
    let r = env
        .request(
            Method::POST,
            "/device/v1/reports",
            Some(&cred_a),
            &[("content-type", "application/json".into())],
            Body::from(forged.to_string()),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let shown = env.get(&format!("/api/v1/rollouts/{rollout}")).await.json();
    assert_eq!(shown["counts"]["failed"], 0, "dev-a must not change dev-b's state");
    assert_eq!(shown["counts"]["assigned"], 1);
    assert_eq!(env.get("/api/v1/audit").await.json().as_array().unwrap().len(), before);
    // The audit actor of a token's writes is the token's name.
    let audit = env.get("/api/v1/audit").await.json();
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "token.revoked" && e["actor"] == "admin" && e["subject"] == "gone")
    );
}

async fn replayed_report_is_applied_once(db: Db) {
    let env = Env::new(db).await;
    env.post_json("/api/v1/groups", Some(&env.admin), serde_json::json!({ "name": "g" })).await;
    let t =
        env.post_json("/api/v1/enrollment-tokens", Some(&env.admin), serde_json::json!({ "group": "g" })).await.json();
    let dev = env
        .post_json(
            "/device/v1/enroll",
            None,
            serde_json::json!({ "token": t["token"], "name": "d1", "hardware": "hw" }),
        )
        .await
        .json();
    let cred = dev["credential"].as_str().unwrap().to_owned();
    env.publish("m@1.0.0", b"one").await;
    let rollout = env
        .post_json("/api/v1/rollouts", Some(&env.admin), serde_json::json!({ "artifact": "m@1.0.0", "group": "g", "waves": [100], "probe": "exec:check", "halt_after": 5 }))
        .await
        .json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let report = serde_json::json!({ "reports": [{
        "id": "r-failed-1", "rollout_id": rollout, "artifact": "m", "version": "1.0.0", "state": "failed",
        "reason": "probe failed", "at_ms": 1
    }], "active": [] });
    for _ in 0..3 {
        let r = env
            .request(
                Method::POST,
                "/device/v1/reports",
                Some(&cred),
                &[("content-type", "application/json".into())],
                Body::from(report.to_string()),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.json()["acked"][0], "r-failed-1", "a replay is acknowledged so the device stops sending it");
    }
    let audit = env.get("/api/v1/audit").await.json();
    assert_eq!(audit.as_array().unwrap().iter().filter(|e| e["action"] == "device.failed").count(), 1, "audited once");
    assert_eq!(env.get(&format!("/api/v1/rollouts/{rollout}")).await.json()["failures_counted"], 1, "counted once");
}

both!(matrix, replayed_report_is_applied_once);

async fn devices_are_rate_limited_one_by_one(db: Db) {
    let env = Env::new(db).await;
    env.post_json("/api/v1/groups", Some(&env.admin), serde_json::json!({ "name": "g" })).await;
    let t =
        env.post_json("/api/v1/enrollment-tokens", Some(&env.admin), serde_json::json!({ "group": "g" })).await.json();
    let mut creds = Vec::new();
    for name in ["noisy", "quiet"] {
        let d = env
            .post_json(
                "/device/v1/enroll",
                None,
                serde_json::json!({ "token": t["token"], "name": name, "hardware": "hw" }),
            )
            .await
            .json();
        creds.push(d["credential"].as_str().unwrap().to_owned());
    }
    let mut limited = None;
    for i in 0..300 {
        let r = env.request(Method::GET, "/device/v1/whoami", Some(&creds[0]), &[], Body::empty()).await;
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(r.headers["retry-after"], "1");
            assert!(r.message().contains("noisy"), "{}", r.message());
            limited = Some(i);
            break;
        }
        assert_eq!(r.status, StatusCode::OK);
    }
    let at = limited.expect("300 requests at once must hit the per-device limit");
    assert!(at >= 50, "the burst allowance lets a normal device through ({at})");
    // Another device, and the operator API, are not affected.
    let r = env.request(Method::GET, "/device/v1/whoami", Some(&creds[1]), &[], Body::empty()).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(env.get("/api/v1/devices").await.status, StatusCode::OK);
}

both!(devices_are_rate_limited_one_by_one);

/// A JSON body that notes whether anyone read it.
fn watched_body(bytes: &'static [u8]) -> (Body, std::sync::Arc<std::sync::atomic::AtomicBool>) {
    let read = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = read.clone();
    let stream = futures_util::stream::once(async move {
        flag.store(true, std::sync::atomic::Ordering::SeqCst);
        Ok::<_, std::io::Error>(bytes::Bytes::from_static(bytes))
    });
    (Body::from_stream(stream), read)
}

/// Authorization is decided from the request's head: a caller without the permission is
/// refused before the body is read, let alone parsed, so a malformed body earns a 403 and is
/// never looked at; a caller with the permission gets the body read and refused as malformed.
async fn permission_is_checked_before_the_body_is_read(db: Db) {
    let env = Env::new(db).await;
    let viewer = env
        .post_json("/api/v1/tokens", Some(&env.admin), serde_json::json!({ "role": "viewer", "name": "v" }))
        .await
        .json()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let json_routes = [
        "/api/v1/groups",
        "/api/v1/enrollment-tokens",
        "/api/v1/tokens",
        "/api/v1/rollouts",
        "/api/v1/rollouts/r-0000/resume",
        "/api/v1/rollouts/r-0000/abort",
    ];
    for path in json_routes {
        for (token, status, read) in [
            (None, StatusCode::UNAUTHORIZED, false),
            (Some(viewer.as_str()), StatusCode::FORBIDDEN, false),
            (Some(env.admin.as_str()), StatusCode::BAD_REQUEST, true),
        ] {
            let (body, was_read) = watched_body(b"{not json");
            let r = env.request(Method::POST, path, token, &[("content-type", "application/json".into())], body).await;
            assert_eq!(r.status, status, "POST {path} with {token:?}: {}", String::from_utf8_lossy(&r.body));
            assert_eq!(
                was_read.load(std::sync::atomic::Ordering::SeqCst),
                read,
                "POST {path} with {token:?}: the body must be read only once the caller may act"
            );
        }
    }
}

both!(permission_is_checked_before_the_body_is_read);
