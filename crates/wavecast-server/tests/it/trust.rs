//! Trust over the installation's lifetime: the status report and the expiry metrics, targets
//! signed again, root rotation (the chain served, keys taken from the newest root, the audit
//! log verifying across it), and a replica that lacks the new keys refusing to sign.

use axum::http::StatusCode;
use tough::schema::{Root, Signed};
use wavecast_core::Sha256Digest;
use wavecast_core::assignment::SignedAssignments;
use wavecast_core::checkpoint::{CheckpointKeys, origin_for_root};
use wavecast_core::evidence::{LeafRow, StoredCheckpoint, verify_log};
use wavecast_tuf::keys::{SigningKey, rotated_key_file_name, verify_ed25519};
use wavecast_tuf::publish::resign_targets;
use wavecast_tuf::root::{KeyChanges, checkpoint_key, director_key, next_root};

use crate::both;
use crate::support::{Db, Env};

fn days(n: i64) -> jiff::Timestamp {
    jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24 * n)
}

async fn server_root(env: &Env) -> Signed<Root> {
    serde_json::from_slice(&env.get("/api/v1/tuf/root.json").await.body).unwrap()
}

fn root_key(env: &Env) -> SigningKey {
    SigningKey::load(&env.report.root_key).unwrap()
}

/// The current targets signed again by `key`, expiring at `expires`, under the server's root.
async fn resigned(env: &Env, root: &Root, key: &SigningKey, expires: jiff::Timestamp) -> String {
    let signed = resign_targets(root, &env.current_targets().await, key, expires).await.unwrap();
    String::from_utf8(signed.buffer().clone()).unwrap()
}

async fn resign(env: &Env, targets: String) -> crate::support::Resp {
    env.post_json("/api/v1/artifacts/resign", Some(&env.admin), serde_json::json!({ "targets": targets })).await
}

async fn rotate(env: &Env, root: &[u8], targets: Option<String>) -> crate::support::Resp {
    let body = serde_json::json!({ "root": String::from_utf8(root.to_vec()).unwrap(), "targets": targets });
    env.post_json("/api/v1/root/rotate", Some(&env.admin), body).await
}

async fn status(env: &Env) -> serde_json::Value {
    let r = env.get("/api/v1/status").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.message());
    r.json()
}

fn role<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    status["metadata"].as_array().unwrap().iter().find(|m| m["role"] == name).unwrap()
}

async fn metric(env: &Env, line_start: &str) -> i64 {
    let body = String::from_utf8(
        env.request(axum::http::Method::GET, "/metrics", None, &[], axum::body::Body::empty()).await.body,
    )
    .unwrap();
    let line = body.lines().find(|l| l.starts_with(line_start)).unwrap_or_else(|| panic!("no {line_start} in\n{body}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

async fn audit_actions(env: &Env) -> Vec<serde_json::Value> {
    env.get("/api/v1/audit").await.json().as_array().unwrap().clone()
}

/// Expiries as the operator sees them: a fresh installation warns about nothing; targets
/// re-signed to expire in ten days are warned about in the status report, and the metric
/// says the same; the report counts devices from the rollouts' own counts.
async fn status_and_metrics_show_what_expires(db: Db) {
    let env = Env::new(db).await;
    assert_eq!(env.publish("m@1.0.0", b"one").await.status, StatusCode::CREATED);
    env.post_json("/api/v1/groups", Some(&env.admin), serde_json::json!({ "name": "g" })).await;
    env.enroll("g", "dev-1").await;
    env.enroll("g", "dev-2").await;
    let r = env
        .post_json(
            "/api/v1/rollouts",
            Some(&env.admin),
            serde_json::json!({ "artifact": "m@1.0.0", "group": "g", "waves": [100], "probe": "exec:check" }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.message());
    env.state.checkpoints().checkpoint_now().await.unwrap();

    let s = status(&env).await;
    let roles: Vec<&str> = s["metadata"].as_array().unwrap().iter().map(|m| m["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["root", "targets", "snapshot", "timestamp"]);
    assert_eq!((role(&s, "root")["version"].as_u64(), role(&s, "targets")["version"].as_u64()), (Some(1), Some(2)));
    assert_eq!(role(&s, "targets")["signed_offline"], true);
    assert_eq!(role(&s, "timestamp")["signed_offline"], false);
    assert!(role(&s, "root")["expires_in_secs"].as_i64().unwrap() > 360 * 86_400, "{s}");
    assert_eq!(s["devices"]["enrolled"], 2);
    assert_eq!(s["devices"]["in_running_rollouts"]["assigned"], 2, "{s}");
    assert_eq!(s["rollouts_running"], 1);
    let events = s["audit"]["events"].as_u64().unwrap();
    assert_eq!(s["audit"]["checkpoint"]["size"].as_u64(), Some(events), "{s}");
    // The test publisher signs targets for a day: warned about.
    let warnings = s["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 1, "{s}");
    assert!(warnings[0].as_str().unwrap().contains("targets metadata version 2 expires in less than a day"), "{s}");

    // Renewed for 400 days: nothing to warn about; the metric follows.
    let root = server_root(&env).await;
    let r = resign(&env, resigned(&env, &root.signed, &env.publisher_key(), days(400)).await).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.message());
    let s = status(&env).await;
    assert!(s["warnings"].as_array().unwrap().is_empty(), "nothing to warn about: {s}");
    let left = role(&s, "targets")["expires_in_secs"].as_i64().unwrap();
    assert!((399 * 86_400..400 * 86_400).contains(&left), "{s}");
    assert_eq!(metric(&env, "wavecast_tuf_expires_in_seconds{role=\"targets\"}").await / 86_400, left / 86_400);
    assert_eq!(metric(&env, "wavecast_tuf_version{role=\"targets\"}").await, 3);

    // Targets that expire in ten days: warned about, with the command that renews them.
    let r = resign(&env, resigned(&env, &root.signed, &env.publisher_key(), days(10)).await).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.message());
    let s = status(&env).await;
    let warnings: Vec<&str> = s["warnings"].as_array().unwrap().iter().map(|w| w.as_str().unwrap()).collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("targets metadata version 4 expires in 9 days"), "{warnings:?}");
    assert!(warnings[0].contains("wavecast artifact resign"), "{warnings:?}");
    let left = metric(&env, "wavecast_tuf_expires_in_seconds{role=\"targets\"}").await;
    assert!((9 * 86_400..10 * 86_400).contains(&left), "{left}");
    let logged = wavecast_server::warn_about_expiry(env.state.store()).await.unwrap();
    assert_eq!(logged, warnings, "the daily log warns about what status shows");
}

/// Re-signing moves only the version and expiry, is audited, and is refused (with nothing
/// stored) when it adds a target, is signed by another key, or is not the next version.
async fn targets_are_signed_again_and_audited(db: Db) {
    let env = Env::new(db).await;
    assert_eq!(env.publish("m@1.0.0", b"one").await.status, StatusCode::CREATED);
    let root = server_root(&env).await;
    let before = env.snapshot().await;

    // Refusals first: each leaves everything as it was.
    let rogue = SigningKey::generate().unwrap();
    let adds = env.sign_for("m@2.0.0", b"two").await;
    let not_next = {
        let mut t = env.current_targets().await;
        t.signed.version = t.signed.version.saturating_add(1);
        let signed = resign_targets(&root.signed, &t, &env.publisher_key(), days(30)).await.unwrap();
        String::from_utf8(signed.buffer().clone()).unwrap()
    };
    let by_rogue = {
        let mut wide = root.signed.clone();
        let id = rogue.key_id().unwrap();
        wide.keys.insert(id.clone(), rogue.tuf_key());
        wide.roles.get_mut(&tough::schema::RoleType::Targets).unwrap().keyids = vec![id];
        resigned(&env, &wide, &rogue, days(30)).await
    };
    for (targets, status, says) in [
        (String::from_utf8(adds).unwrap(), StatusCode::UNPROCESSABLE_ENTITY, "must not add targets"),
        (by_rogue, StatusCode::UNPROCESSABLE_ENTITY, "not signed by the targets key"),
        (not_next, StatusCode::CONFLICT, "does not follow"),
    ] {
        let r = resign(&env, targets).await;
        assert_eq!(r.status, status, "{}", r.message());
        assert!(r.message().contains(says), "{}", r.message());
        assert_eq!(env.snapshot().await, before, "a refused re-signing stores nothing");
    }

    let renewed = resigned(&env, &root.signed, &env.publisher_key(), days(400)).await;
    let r = resign(&env, renewed).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.message());
    assert_eq!(r.json()["version"], 3);
    let (artifacts, version, _, blobs) = env.snapshot().await;
    assert_eq!((artifacts, version, blobs), (before.0, 3, before.3), "no artifact changed");
    let audit = audit_actions(&env).await;
    let e = audit.iter().find(|e| e["action"] == "targets.resigned").expect("audited");
    assert_eq!((e["detail"]["from_version"].as_u64(), e["detail"]["to_version"].as_u64()), (Some(2), Some(3)));
    assert_eq!(e["detail"]["expires"], env.current_targets().await.signed.expires.to_string(), "{e}");
    assert_eq!(e["actor"], "admin");
    // Devices get a snapshot that names the new targets.
    let snapshot = env.get("/api/v1/tuf/snapshot.json").await.json();
    assert_eq!(snapshot["signed"]["meta"]["targets.json"]["version"], 3);
}

/// The chain's roots from the first, as a verifier fetches them.
async fn chain(env: &Env) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for v in 1.. {
        let r = env.get(&format!("/api/v1/tuf/{v}.root.json")).await;
        if r.status == StatusCode::NOT_FOUND {
            return out;
        }
        out.push(r.body);
    }
    out
}

/// The checkpoint keys of the chain, as `wavecast audit verify` builds them.
fn chain_keys(chain: &[Vec<u8>]) -> CheckpointKeys {
    let keys = chain.iter().map(|r| checkpoint_key(&wavecast_tuf::root::parse_root(r).unwrap().signed).unwrap());
    CheckpointKeys::new(origin_for_root(&Sha256Digest::of(&chain[0])), keys).unwrap()
}

/// Rotates the root, targets, director and audit checkpoint keys at once (v2), then renews
/// the root (v3): the chain is served, the new keys sign, the old ones are refused, the
/// audit log verifies across it, and the server restarts on the advanced chain.
async fn a_root_rotation_replaces_keys_and_keeps_the_log_verifying(db: Db) {
    let env = Env::new(db).await;
    assert_eq!(env.publish("m@1.0.0", b"one").await.status, StatusCode::CREATED);
    env.post_json("/api/v1/groups", Some(&env.admin), serde_json::json!({ "name": "g" })).await;
    let (cred, _) = env.enroll("g", "dev-1").await;
    env.state.checkpoints().checkpoint_now().await.unwrap();
    let kept_note = String::from_utf8(env.get("/api/v1/audit/checkpoint").await.body).unwrap();
    let v1 = server_root(&env).await;

    let (new_root, new_targets, new_director, new_checkpoint) = (
        SigningKey::generate().unwrap(),
        SigningKey::generate().unwrap(),
        SigningKey::generate().unwrap(),
        SigningKey::generate().unwrap(),
    );
    let changes = KeyChanges {
        root: Some(&new_root),
        targets: Some(&new_targets),
        director: Some(&new_director),
        checkpoint: Some(&new_checkpoint),
        ..KeyChanges::default()
    };
    let v2 = next_root(&v1, &root_key(&env), &changes, days(365)).await.unwrap();
    let v2_root = &v2.signed().signed;
    let targets = resigned(&env, v2_root, &new_targets, days(365)).await;
    let before = env.snapshot().await;

    // Refused, storing nothing: the server lacks the new online keys; the targets key changes
    // but no targets come with it; a root that skips a version; one the old key never signed.
    let r = rotate(&env, v2.buffer(), Some(targets.clone())).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.message());
    assert!(r.message().contains("does not hold the director key root.json version 2 names"), "{}", r.message());
    for (role, key) in [
        (wavecast_core::trust::KeyRole::Director, &new_director),
        (wavecast_core::trust::KeyRole::Checkpoint, &new_checkpoint),
    ] {
        key.save(&env.layout().keys_dir().join(rotated_key_file_name(role, key))).unwrap();
    }
    let r = rotate(&env, v2.buffer(), None).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.message());
    assert!(r.message().contains("did not sign the current targets"), "{}", r.message());
    let v3_early = next_root(v2.signed(), &new_root, &KeyChanges::default(), days(365)).await.unwrap();
    let r = rotate(&env, v3_early.buffer(), None).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.message());
    let mut unsigned_by_old = v2.signed().clone();
    let new_root_id = new_root.key_id().unwrap();
    unsigned_by_old.signatures.retain(|s| s.keyid == new_root_id);
    let r = rotate(&env, &serde_json::to_vec(&unsigned_by_old).unwrap(), Some(targets.clone())).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.message());
    assert!(r.message().contains("previous root"), "{}", r.message());
    assert_eq!(env.snapshot().await, before, "refused rotations store nothing");
    assert_eq!(chain(&env).await.len(), 1);

    let r = rotate(&env, v2.buffer(), Some(targets)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.message());
    let rotated = r.json();
    assert_eq!(rotated["version"], 2);
    assert_eq!(rotated["changed"], serde_json::json!(["root", "targets", "director", "checkpoint"]));
    assert_eq!(rotated["targets_version"], 3);
    // Installing it twice: it is not the next version any more.
    assert_eq!(rotate(&env, v2.buffer(), None).await.status, StatusCode::CONFLICT);

    // Served to devices as a chain; the unversioned root is the newest.
    let device_v2 = env
        .request(axum::http::Method::GET, "/device/v1/tuf/2.root.json", Some(&cred), &[], axum::body::Body::empty())
        .await;
    assert_eq!((device_v2.status, device_v2.body.as_slice()), (StatusCode::OK, v2.buffer().as_slice()));
    assert_eq!(server_root(&env).await.signed.version.get(), 2);
    // Assignments are signed by the new director key.
    let doc = env
        .request(axum::http::Method::GET, "/device/v1/assignments", Some(&cred), &[], axum::body::Body::empty())
        .await;
    let doc: SignedAssignments = serde_json::from_slice(&doc.body).unwrap();
    let sig = hex::decode(&doc.signature).unwrap();
    assert!(verify_ed25519(&director_key(v2_root).unwrap(), &doc.signed.signing_bytes().unwrap(), &sig));
    assert!(!verify_ed25519(&director_key(&v1.signed).unwrap(), &doc.signed.signing_bytes().unwrap(), &sig));
    // The old publisher key is refused; the new one publishes.
    let r = env.publish("m@2.0.0", b"two").await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.message());
    let audit = audit_actions(&env).await;
    let e = audit.iter().find(|e| e["action"] == "root.rotated").expect("audited");
    assert_eq!((e["detail"]["from_version"].as_u64(), e["detail"]["to_version"].as_u64()), (Some(1), Some(2)));
    assert_eq!(e["detail"]["changed"], rotated["changed"]);
    assert!(audit.iter().any(|e| e["action"] == "targets.resigned" && e["detail"]["root_version"] == 2));

    // The audit log verifies across the rotation with the chain's keys; the newest checkpoint
    // is the new key's (the rotation stored it), so the old root alone no longer vouches.
    env.post_json("/api/v1/groups", Some(&env.admin), serde_json::json!({ "name": "after" })).await;
    env.state.checkpoints().checkpoint_now().await.unwrap();
    let leaves: Vec<LeafRow> = serde_json::from_slice(&env.get("/api/v1/audit/leaves").await.body).unwrap();
    let checkpoints: Vec<StoredCheckpoint> =
        serde_json::from_slice(&env.get("/api/v1/audit/checkpoints").await.body).unwrap();
    let keys = chain_keys(&chain(&env).await);
    let ok = verify_log(&leaves, &checkpoints, &keys, verify_ed25519).unwrap();
    assert_eq!((ok.tree_size, ok.pending), (leaves.len() as u64, 0));
    let first_only = chain_keys(&chain(&env).await[..1]);
    assert!(verify_log(&leaves, &checkpoints, &first_only, verify_ed25519).is_err());
    let newest = String::from_utf8(env.get("/api/v1/audit/checkpoint").await.body).unwrap();
    keys.open_current(&newest, verify_ed25519).unwrap();
    // Growth from a note kept before the rotation.
    let old_size = wavecast_core::checkpoint::peek_checkpoint(&kept_note).unwrap().size;
    let proof = env.get(&format!("/api/v1/audit/consistency?from={old_size}")).await.json();
    let proof = serde_json::from_value(proof).unwrap();
    wavecast_core::evidence::verify_growth(&kept_note, &proof, &keys, verify_ed25519).unwrap();
    // An export carries the chain.
    let export: wavecast_core::evidence::Export =
        serde_json::from_slice(&env.get("/api/v1/audit/export").await.body).unwrap();
    assert_eq!(export.roots.len(), 2);
    let carried: Vec<Vec<u8>> = export.roots.iter().map(|r| r.clone().into_bytes()).collect();
    wavecast_core::evidence::verify_export(&export, &chain_keys(&carried), verify_ed25519).unwrap();

    // A renewal (v3) signed by the new root key alone; the old one can sign no root now.
    assert!(next_root(v2.signed(), &root_key(&env), &KeyChanges::default(), days(365)).await.is_err());
    let r = rotate(&env, v3_early.buffer(), None).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.message());
    assert_eq!(r.json()["changed"], serde_json::json!([]));

    // The server starts on the advanced chain, with the data dir's root.json as it was or
    // replaced by a later version; an unrelated root is still refused.
    let root_json = env.report.root_json.clone();
    let env = env.restart().await;
    std::fs::write(&root_json, v2.buffer()).unwrap();
    let env = env.restart().await;
    assert_eq!(env.state.trust().current().version(), 3);
    let (other, _) = {
        let dir = tempfile::tempdir().unwrap();
        let report = wavecast_server::install::init(&dir.path().join("i")).await.unwrap();
        (std::fs::read(report.root_json).unwrap(), dir)
    };
    std::fs::write(&root_json, other).unwrap();
    env.state.store().close().await;
    let err = wavecast_server::open(&env.config).await.err().expect("an unrelated root.json is refused");
    assert!(err.to_string().contains("belongs to another installation"), "{err}");
}

/// A replica that has not got the new online keys follows the new root but refuses to sign
/// with the retired ones: devices get 503 saying which key is missing, and a restart without
/// them fails. Copying the key in is all it takes.
async fn a_replica_without_the_new_keys_refuses_to_sign(db: Db) {
    let env = Env::new(db).await;
    env.post_json("/api/v1/groups", Some(&env.admin), serde_json::json!({ "name": "g" })).await;
    let (cred, _) = env.enroll("g", "dev-1").await;
    // Replica B: the same database, its own copy of the installation (and of keys/).
    let copy = tempfile::tempdir().unwrap();
    let b_dir = copy.path().join("install");
    copy_dir(&env.report.data_dir, &b_dir);
    let mut b_config = env.config.clone();
    b_config.data_dir = b_dir.clone();
    let b = wavecast_server::open(&b_config).await.unwrap();
    let b_router = wavecast_server::api::router(b.clone());

    let new_director = SigningKey::generate().unwrap();
    let file = rotated_key_file_name(wavecast_core::trust::KeyRole::Director, &new_director);
    new_director.save(&env.layout().keys_dir().join(&file)).unwrap();
    let v1 = server_root(&env).await;
    let changes = KeyChanges { director: Some(&new_director), ..KeyChanges::default() };
    let v2 = next_root(&v1, &root_key(&env), &changes, days(365)).await.unwrap();
    let r = rotate(&env, v2.buffer(), None).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.message());

    let assignments = |router: axum::Router| {
        let cred = cred.clone();
        async move {
            use tower::ServiceExt as _;
            let req = axum::http::Request::get("/device/v1/assignments")
                .header("authorization", format!("Bearer {cred}"))
                .body(axum::body::Body::empty())
                .unwrap();
            let resp = router.oneshot(req).await.unwrap();
            let status = resp.status();
            let body = http_body_util::BodyExt::collect(resp.into_body()).await.unwrap().to_bytes();
            (status, serde_json::from_slice::<serde_json::Value>(&body).unwrap())
        }
    };
    b.trust().refresh(b.store()).await.unwrap();
    assert_eq!(b.trust().current().version(), 2, "B follows the chain");
    let (status, body) = assignments(b_router.clone()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("does not hold the director key root.json version 2 names"), "{message}");
    assert!(message.contains(&hex::encode(new_director.public_bytes())), "{message}");
    assert!(wavecast_server::open(&b_config).await.is_err(), "B does not start without the key either");

    // The key copied in: B signs with it at its next refresh.
    new_director.save(&b_dir.join("keys").join(&file)).unwrap();
    b.trust().refresh(b.store()).await.unwrap();
    let (status, body) = assignments(b_router).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let doc: SignedAssignments = serde_json::from_value(body).unwrap();
    let sig = hex::decode(&doc.signature).unwrap();
    assert!(verify_ed25519(&director_key(&v2.signed().signed).unwrap(), &doc.signed.signing_bytes().unwrap(), &sig));
}

/// The root and publisher keys never sit with the server: one found among its keys stops it.
async fn an_offline_key_in_the_key_directory_is_refused(db: Db) {
    let env = Env::new(db).await;
    for (file, role) in [(&env.report.publisher_key, "targets"), (&env.report.root_key, "root")] {
        let misplaced = env.layout().keys_dir().join("misplaced.key");
        std::fs::copy(file, &misplaced).unwrap();
        env.state.store().close().await;
        let err = wavecast_server::open(&env.config).await.err().expect("an offline key in keys/ is refused");
        let message = wavecast_os::error::chain(&err);
        assert!(
            message.contains(&format!("is the {role} key of root.json version 1: it belongs offline")),
            "{message}"
        );
        std::fs::remove_file(&misplaced).unwrap();
    }
    wavecast_server::open(&env.config).await.unwrap();
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        if src.is_dir() {
            copy_dir(&src, &dst);
        } else if src.extension().is_none_or(|e| e != "db" && e != "db-wal" && e != "db-shm") {
            std::fs::copy(&src, &dst).unwrap();
            let mode = std::fs::metadata(&src).unwrap().permissions().mode();
            std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(mode)).unwrap();
        }
    }
}

both!(
    status_and_metrics_show_what_expires,
    targets_are_signed_again_and_audited,
    a_root_rotation_replaces_keys_and_keeps_the_log_verifying,
    a_replica_without_the_new_keys_refuses_to_sign,
    an_offline_key_in_the_key_directory_is_refused,
);
