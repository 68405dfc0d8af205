//! Authentication, groups, enrollment and the device inventory.

use axum::body::Body;
use axum::http::{Method, StatusCode};

use crate::both;
use crate::support::{Db, Env};

async fn operator_auth_is_required_and_explained(db: Db) {
    let env = Env::new(db).await;
    let cases: &[(Option<&str>, &str)] = &[
        (None, "missing bearer token"),
        (Some("nonsense"), "not an API token"),
        (Some("wct_0000000000000000000000000000000000000000000000000000000000000000"), "unknown API token"),
        (Some("wcd_0000000000000000000000000000000000000000000000000000000000000000"), "this is a device credential"),
        (Some("wce_0000000000000000000000000000000000000000000000000000000000000000"), "this is an enrollment token"),
    ];
    for &(token, needle) in cases {
        for path in ["/api/v1/artifacts", "/api/v1/groups", "/api/v1/audit", "/api/v1/tuf/root.json"] {
            let r = env.request(Method::GET, path, token, &[], Body::empty()).await;
            assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{path} with {token:?}");
            assert_eq!(r.json()["error"]["code"], "unauthorized");
            assert!(r.message().contains(needle), "{path}: {:?} lacks {needle:?}", r.message());
            assert_eq!(r.headers["www-authenticate"], "Bearer");
        }
        let r = env.post_json("/api/v1/groups", token, serde_json::json!({ "name": "x" })).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(env.get("/api/v1/whoami").await.json()["role"], "admin");

    let health = env.request(Method::GET, "/healthz", None, &[], Body::empty()).await;
    assert_eq!(health.status, StatusCode::OK);
    let metrics = env.request(Method::GET, "/metrics", None, &[], Body::empty()).await;
    let text = String::from_utf8(metrics.body).unwrap();
    assert!(text.contains("wavecast_http_requests_total{api=\"operator\",status=\"4xx\"}"), "{text}");
    let r = env.get("/api/v1/nothing-here").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.message().contains("no route"), "{}", r.message());
}

async fn groups_enrollment_and_inventory(db: Db) {
    let env = Env::new(db).await;
    assert_eq!(
        env.post_json("/api/v1/groups", Some(&env.admin), serde_json::json!({ "name": "plant-7" })).await.status,
        StatusCode::CREATED
    );
    let dup = env.post_json("/api/v1/groups", Some(&env.admin), serde_json::json!({ "name": "plant-7" })).await;
    assert_eq!(dup.status, StatusCode::CONFLICT);
    assert!(dup.message().contains("group plant-7 already exists"), "{}", dup.message());
    for bad in ["../x", "a/b", "", ".hidden"] {
        let r = env.post_json("/api/v1/groups", Some(&env.admin), serde_json::json!({ "name": bad })).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad:?}");
    }
    let unknown_field =
        env.post_json("/api/v1/groups", Some(&env.admin), serde_json::json!({ "name": "g", "colour": "red" })).await;
    assert_eq!(unknown_field.status, StatusCode::BAD_REQUEST);
    assert!(unknown_field.message().contains("colour"), "{}", unknown_field.message());
    let not_json = env
        .request(
            Method::POST,
            "/api/v1/groups",
            Some(&env.admin),
            &[("content-type", "application/json".into())],
            Body::from("{"),
        )
        .await;
    assert_eq!(not_json.status, StatusCode::BAD_REQUEST);
    assert_eq!(not_json.json()["error"]["code"], "bad_request");

    let r = env.post_json("/api/v1/enrollment-tokens", Some(&env.admin), serde_json::json!({ "group": "nope" })).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let minted =
        env.post_json("/api/v1/enrollment-tokens", Some(&env.admin), serde_json::json!({ "group": "plant-7" })).await;
    assert_eq!(minted.status, StatusCode::CREATED);
    let token = minted.json()["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("wce_"));

    let enroll =
        |name: &str, token: &str| serde_json::json!({ "token": token, "name": name, "hardware": "jetson-orin-nano" });
    let r = env.post_json("/device/v1/enroll", None, enroll("cam-001", &token)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.message());
    let cred = r.json()["credential"].as_str().unwrap().to_owned();
    assert_eq!(r.json()["group"], "plant-7");
    let dup = env.post_json("/device/v1/enroll", None, enroll("cam-001", &token)).await;
    assert_eq!(dup.status, StatusCode::CONFLICT);
    let wrong = env
        .post_json("/device/v1/enroll", None, enroll("cam-002", token.replace("wce_", "wce_f").split_at(68).0))
        .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    let api_token = env.post_json("/device/v1/enroll", None, enroll("cam-002", &env.admin)).await;
    assert_eq!(api_token.status, StatusCode::UNAUTHORIZED);
    assert!(api_token.message().contains("this is an API token"), "{}", api_token.message());
    let bad_name = env.post_json("/device/v1/enroll", None, enroll("../cam", &token)).await;
    assert_eq!(bad_name.status, StatusCode::BAD_REQUEST);

    // The device's credential works on the device API, and only there.
    let me = env.request(Method::GET, "/device/v1/whoami", Some(&cred), &[], Body::empty()).await;
    assert_eq!(me.status, StatusCode::OK);
    assert_eq!(me.json()["name"], "cam-001");
    let on_operator_api = env.request(Method::GET, "/api/v1/devices", Some(&cred), &[], Body::empty()).await;
    assert_eq!(on_operator_api.status, StatusCode::UNAUTHORIZED);
    let operator_on_device_api =
        env.request(Method::GET, "/device/v1/whoami", Some(&env.admin), &[], Body::empty()).await;
    assert_eq!(operator_on_device_api.status, StatusCode::UNAUTHORIZED);
    let tuf = env.request(Method::GET, "/device/v1/tuf/timestamp.json", Some(&cred), &[], Body::empty()).await;
    assert_eq!(tuf.status, StatusCode::OK);

    let devices = env.get("/api/v1/devices").await.json();
    assert_eq!(devices.as_array().unwrap().len(), 1);
    assert_eq!(devices[0]["hardware"], "jetson-orin-nano");
    assert_eq!(env.get("/api/v1/devices?group=other").await.json().as_array().unwrap().len(), 0);
    let show = env.get("/api/v1/devices/cam-001").await.json();
    assert_eq!(show["group"], "plant-7");
    assert!(show["artifacts"].as_array().unwrap().is_empty());
    assert_eq!(env.get("/api/v1/devices/cam-404").await.status, StatusCode::NOT_FOUND);
    assert_eq!(env.get("/api/v1/groups").await.json()[0]["devices"], 1);

    let audit = env.get("/api/v1/audit").await.json();
    let actions: Vec<(&str, &str, &str)> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["action"].as_str().unwrap(), e["actor"].as_str().unwrap(), e["subject"].as_str().unwrap()))
        .collect();
    assert_eq!(
        actions,
        [
            ("installation.initialized", "wavecast init", "installation"),
            ("group.created", "admin", "plant-7"),
            ("enrollment_token.created", "admin", "plant-7"),
            ("device.enrolled", "device:cam-001", "cam-001"),
        ]
    );
    for (i, e) in audit.as_array().unwrap().iter().enumerate() {
        assert_eq!(e["seq"], i, "audit sequence numbers have no gaps");
    }
}

both!(operator_auth_is_required_and_explained, groups_enrollment_and_inventory);
