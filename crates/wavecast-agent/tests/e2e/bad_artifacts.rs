//! Criterion 3: bad artifacts and bad metadata are refused, never applied, and reported with a
//! reason of their own.

use std::collections::HashMap;
use std::num::NonZeroU64;

use serde_json::Value;
use tough::schema::{RoleType, Signed, Targets};
use wavecast_tuf::keys::SigningKey;
use wavecast_tuf::repo::{OnlineKeys, OnlinePlan, sign_online};

use crate::attacker::Proxy;
use crate::support::*;

/// Waits for the refusal of rollout `id`, checks nothing was applied, frees the group for the
/// next rollout; returns the reason.
async fn refused(env: &Env, agent: &Agent, id: &str, needles: &[&str], running: &str) -> String {
    refused_as(env, agent, id, needles, running, true).await
}

/// [`refused`]; `journaled` is false for a doc refused as a whole (another device's, or one
/// whose items do not parse), which names no artifact of this device to record an outcome for.
async fn refused_as(env: &Env, agent: &Agent, id: &str, needles: &[&str], running: &str, journaled: bool) -> String {
    let settled = |agent: &Agent| {
        let mut files = agent.app_files();
        files.retain(|name, _| !name.ends_with(".partial"));
        files
    };
    let before = settled(agent);
    let e = env.wait_final(agent, id).await;
    let reason = assert_failed(&e, needles, agent);
    assert_eq!(agent.sha().as_deref(), Some(running), "the active file changed");
    assert_eq!(settled(agent), before, "files next to the application's changed");
    assert!(agent.partials().is_empty(), "a refused download was left behind: {:?}", agent.partials());
    let st = agent.status();
    assert_eq!(st["active"]["sha256"], running, "{st}");
    assert_eq!(st["healthy"], true, "{st}");
    if journaled {
        assert_eq!(st["last_outcome"]["state"], "failed", "{st}");
        assert_eq!(st["last_outcome"]["rollout_id"], id, "{st}");
    }
    let events = env.outcome_events(&agent.name, id).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["action"], "device.failed");
    env.settle(id).await;
    reason
}

fn assert_distinct(reasons: &[(&str, String)]) {
    for (case, reason) in reasons {
        eprintln!("refused ({case}): {reason}");
    }
    for (i, (a, ra)) in reasons.iter().enumerate() {
        for (b, rb) in &reasons[i + 1..] {
            assert_ne!(ra, rb, "{a} and {b} were refused for the same reason");
        }
    }
}

/// Sets every assignment of `version` in a doc via `f`; true when one was found.
fn edit_assignment(doc: &mut Value, version: &str, f: impl Fn(&mut Value)) -> bool {
    let mut hit = false;
    if let Some(items) = doc["assignments"].as_array_mut() {
        for item in items {
            if item["version"] == version {
                f(item);
                hit = true;
            }
        }
    }
    hit
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_tampered_blobs_foreign_hardware_and_forged_assignments() {
    let env = Env::new().await;
    let proxy = Proxy::start(&env.url, &env.install).await;
    let check = script(&env.probes_dir(), "check", "exit 0");
    let agent = env.start_agent("dev-1", &[("check", check)], Some(&proxy.url)).await;
    let probe = Probe::new("exec:check");
    let v1 = blob("good-1", 32 * 1024);
    let (_, e) = update(&env, &agent, "1.0.0", &v1, &probe).await;
    assert_succeeded(&e, &agent);
    let running = sha_hex(&v1);
    let mut reasons = Vec::new();

    // (a) One flipped byte in the stored blob.
    let bytes = blob("flip", 32 * 1024);
    env.publish("model@2.0.0", &bytes, None).await;
    let stored = env.blob_path(&sha_hex(&bytes));
    let mut tampered = std::fs::read(&stored).unwrap();
    tampered[16 * 1024] ^= 0x01;
    std::fs::write(&stored, &tampered).unwrap();
    let id = env.rollout("model@2.0.0", &probe).await;
    let r = refused(
        &env,
        &agent,
        &id,
        &["the downloaded bytes do not match the signed target model@2.0.0", &sha_hex(&tampered)],
        &running,
    )
    .await;
    reasons.push(("flipped byte", r));

    // (b) A blob longer than signed.
    let bytes = blob("long", 32 * 1024);
    env.publish("model@3.0.0", &bytes, None).await;
    let stored = env.blob_path(&sha_hex(&bytes));
    let mut f = std::fs::OpenOptions::new().append(true).open(&stored).unwrap();
    std::io::Write::write_all(&mut f, b"one more byte").unwrap();
    drop(f);
    let id = env.rollout("model@3.0.0", &probe).await;
    let r = refused(&env, &agent, &id, &["more than the signed 32768 bytes", "download refused"], &running).await;
    reasons.push(("longer blob", r));

    // (h) Built for other hardware. The server refuses a rollout no device of the group can
    // install; with one stand-in of that hardware in the group it only warns, so this agent is
    // still assigned the artifact and must refuse it itself. The stand-in leaves after.
    env.publish("model@4.0.0", &blob("hw", 32 * 1024), Some("other-hw")).await;
    let token = env.enrollment_token().await;
    let stand_in = serde_json::json!({ "token": token, "name": "other-hw-1", "hardware": "other-hw" });
    assert!(env.request("POST", "/device/v1/enroll", Some(stand_in)).await.0.is_success());
    let id = env.rollout("model@4.0.0", &probe).await;
    let r =
        refused(&env, &agent, &id, &["model@4.0.0 is built for hardware other-hw", "this device is hw-a"], &running)
            .await;
    reasons.push(("other hardware", r));
    env.api("DELETE", "/api/v1/devices/other-hw-1", None).await;

    // (f) The director's digest differs from the TUF target's.
    let bytes = blob("director-digest", 32 * 1024);
    env.publish("model@5.0.0", &bytes, None).await;
    let forged = sha_hex(b"something else entirely");
    {
        let forged = forged.clone();
        proxy.set_rewrite(move |doc| edit_assignment(doc, "5.0.0", |a| a["sha256"] = Value::String(forged.clone())));
    }
    let id = env.rollout("model@5.0.0", &probe).await;
    let r = refused(&env, &agent, &id, &["director and TUF disagree on model@5.0.0", &forged], &running).await;
    proxy.clear_rewrite();
    reasons.push(("director digest", r));

    // (g) An assignment for another device.
    env.publish("model@6.0.0", &blob("other-device", 32 * 1024), None).await;
    proxy.set_rewrite(|doc| {
        let hit = edit_assignment(doc, "6.0.0", |_| {});
        if hit {
            doc["device_id"] = Value::String("d-someone-else".into());
        }
        hit
    });
    let id = env.rollout("model@6.0.0", &probe).await;
    let needles = ["assignment refused", "for device d-someone-else, not this device"];
    let r = refused_as(&env, &agent, &id, &needles, &running, false).await;
    proxy.clear_rewrite();
    reasons.push(("other device", r));

    // (i) A target name with `../`.
    env.publish("model@7.0.0", &blob("traversal", 32 * 1024), None).await;
    proxy.set_rewrite(|doc| edit_assignment(doc, "7.0.0", |a| a["artifact"] = Value::String("../../escape".into())));
    let id = env.rollout("model@7.0.0", &probe).await;
    let needles = ["assignment refused", "../../escape", "no path separators"];
    let r = refused_as(&env, &agent, &id, &needles, &running, false).await;
    proxy.clear_rewrite();
    reasons.push(("path traversal", r));
    for p in [env.dir.path().join("escape"), agent.dir.join("escape"), agent.state_dir.join("escape")] {
        assert!(!p.exists(), "{} was written", p.display());
    }
    assert_eq!(agent.journaled(), ["model"]);

    assert_distinct(&reasons);

    // Control: with nobody tampering, the next version installs through the same proxy.
    let v8 = blob("good-8", 32 * 1024);
    let (_, e) = update(&env, &agent, "8.0.0", &v8, &probe).await;
    assert_succeeded(&e, &agent);
    assert_eq!(agent.sha(), Some(sha_hex(&v8)));
    assert_eq!(agent.previous_sha(), Some(running));
}

/// The latest row of `role` in the server's database.
async fn latest(conn: &mut sqlx::SqliteConnection, role: &str) -> (i64, String) {
    use sqlx::Row as _;
    let row = sqlx::query("SELECT version, body FROM tuf_metadata WHERE role = ? ORDER BY version DESC LIMIT 1")
        .bind(role)
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

fn nz(v: i64) -> NonZeroU64 {
    NonZeroU64::new(v as u64).unwrap()
}

fn days(d: i64) -> jiff::Timestamp {
    jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24 * d)
}

fn online_keys(env: &Env) -> OnlineKeys {
    OnlineKeys {
        snapshot: SigningKey::load(&env.install.join("keys/snapshot.key")).unwrap(),
        timestamp: SigningKey::load(&env.install.join("keys/timestamp.key")).unwrap(),
    }
}

/// (c) A compromised control plane (database and online keys, not the offline targets key)
/// publishes a target signed by a key of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_a_target_signed_by_an_unknown_key() {
    use sqlx::Connection as _;
    let mut env = Env::new().await;
    let check = script(&env.probes_dir(), "check", "exit 0");
    let agent = env.start_agent("dev-1", &[("check", check)], None).await;
    let probe = Probe::new("exec:check");
    let v1 = blob("good-1", 16 * 1024);
    let (_, e) = update(&env, &agent, "1.0.0", &v1, &probe).await;
    assert_succeeded(&e, &agent);
    let running = sha_hex(&v1);
    let trusted_targets = agent.trusted()["targets"].clone();

    env.stop_server().await;
    let evil = blob("evil", 16 * 1024);
    let evil_sha = sha_hex(&evil);
    let root = wavecast_tuf::root::parse_root(&std::fs::read(env.root()).unwrap()).unwrap();
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", env.install.join("wavecast.db").display()))
        .await
        .unwrap();
    let (tv, tbody) = latest(&mut conn, "targets").await;
    let (sv, _) = latest(&mut conn, "snapshot").await;
    let (ts, _) = latest(&mut conn, "timestamp").await;
    let current: Signed<Targets> = serde_json::from_str(&tbody).unwrap();
    let mut targets = current.signed.clone();
    targets.version = nz(tv + 1);
    targets.expires = wavecast_tuf::whole_seconds(days(1));
    targets.targets.insert(
        tough::TargetName::new("model@6.6.6").unwrap(),
        tough::schema::Target {
            length: evil.len() as u64,
            hashes: tough::schema::Hashes { sha256: hex::decode(&evil_sha).unwrap().into(), _extra: HashMap::new() },
            custom: HashMap::new(),
            _extra: HashMap::new(),
        },
    );
    // Sign with a key of the attacker's own (tough signs only with keys the root names, so
    // hand it a root that names the rogue key; devices still hold the real root).
    let rogue = SigningKey::generate().unwrap();
    let mut rogue_root = root.signed.clone();
    rogue_root.keys.insert(rogue.key_id().unwrap(), rogue.tuf_key());
    rogue_root.roles.get_mut(&RoleType::Targets).unwrap().keyids = vec![rogue.key_id().unwrap()];
    let rogue_targets = tough::editor::signed::SignedRole::new(
        targets,
        &tough::schema::KeyHolder::Root(rogue_root),
        &[rogue.source()],
        &aws_lc_rs::rand::SystemRandom::new(),
    )
    .await
    .unwrap()
    .buffer()
    .clone();
    let online = sign_online(
        &root.signed,
        &online_keys(&env),
        &rogue_targets,
        OnlinePlan {
            targets_version: nz(tv + 1),
            snapshot_version: nz(sv + 1),
            timestamp_version: nz(ts + 1),
            snapshot_expires: days(30),
            timestamp_expires: days(7),
        },
    )
    .await
    .unwrap();
    let now = jiff::Timestamp::now().as_millisecond();
    for (role, version, body) in [
        ("targets", tv + 1, &rogue_targets),
        ("snapshot", sv + 1, &online.snapshot),
        ("timestamp", ts + 1, &online.timestamp),
    ] {
        sqlx::query("INSERT INTO tuf_metadata (role, version, body, created_at) VALUES (?, ?, ?, ?)")
            .bind(role)
            .bind(version)
            .bind(String::from_utf8(body.clone()).unwrap())
            .bind(now)
            .execute(&mut conn)
            .await
            .unwrap();
    }
    sqlx::query(
        "INSERT INTO artifacts (name, version, length, sha256, hardware, targets_version, published_at, published_by) \
         VALUES ('model', '6.6.6', ?, ?, NULL, ?, ?, 'attacker')",
    )
    .bind(evil.len() as i64)
    .bind(&evil_sha)
    .bind(tv + 1)
    .bind(now)
    .execute(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
    let stored = env.blob_path(&evil_sha);
    std::fs::create_dir_all(stored.parent().unwrap()).unwrap();
    std::fs::write(&stored, &evil).unwrap();
    env.start_server().await;
    let served: Signed<Targets> = env.current_targets().await;
    assert_eq!(served.signed.version.get() as i64, tv + 1, "the server serves the rogue targets");

    let id = env.rollout("model@6.6.6", &probe).await;
    let reason = refused(&env, &agent, &id, &["TUF verification failed", "targets"], &running).await;
    assert!(reason.to_lowercase().contains("signature"), "{reason}");
    eprintln!("refused (unknown key): {reason}");
    assert_eq!(agent.trusted()["targets"], trusted_targets, "the rogue targets version was recorded as accepted");
}

/// (d) Replayed metadata, with tough's own store intact, deleted and corrupt, through an
/// attacker proxy. ((e), expired metadata, is waited out, not refused: `transient`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_replayed_metadata_but_keeps_running_the_current_model() {
    let env = Env::new().await;
    let proxy = Proxy::start(&env.url, &env.install).await;
    let check = script(&env.probes_dir(), "check", "exit 0");
    let mut agent = env.start_agent("dev-1", &[("check", check)], Some(&proxy.url)).await;
    let probe = Probe::new("exec:check");
    let version_of =
        |bytes: &[u8]| serde_json::from_slice::<Value>(bytes).unwrap()["signed"]["version"].as_i64().unwrap();

    let v1 = blob("good-1", 16 * 1024);
    let (_, e) = update(&env, &agent, "1.0.0", &v1, &probe).await;
    assert_succeeded(&e, &agent);
    let old_timestamp = env.metadata("timestamp.json").await;
    let old = version_of(&old_timestamp);
    let v2 = blob("good-2", 16 * 1024);
    let (_, e) = update(&env, &agent, "2.0.0", &v2, &probe).await;
    assert_succeeded(&e, &agent);
    let accepted = agent.trusted()["timestamp"].as_i64().unwrap();
    assert!(accepted > old, "the agent accepted timestamp {accepted}, the replay is {old}");
    let running = sha_hex(&v2);

    // Replay the older timestamp (and with it the older snapshot and targets).
    let v3 = blob("good-3", 16 * 1024);
    env.publish("model@3.0.0", &v3, None).await;
    proxy.set_override("/device/v1/tuf/timestamp.json", old_timestamp.clone());
    let rollback = ["TUF metadata rollback refused", "timestamp"];
    let id = env.rollout("model@3.0.0", &probe).await;
    let r_replay = refused(&env, &agent, &id, &rollback, &running).await;
    assert!(proxy.seen().iter().any(|p| p == "/device/v1/tuf/timestamp.json"), "the agent bypassed the proxy");
    assert!(r_replay.contains(&format!("version {old} is older than version {accepted}")), "{r_replay}");

    // tough's store deleted: only our own record knows what was accepted.
    std::fs::remove_dir_all(agent.state_dir.join("tuf")).unwrap();
    let id = env.rollout("model@3.0.0", &probe).await;
    let r = refused(&env, &agent, &id, &rollback, &running).await;
    assert!(r.contains(&format!("version {old} is older than version {accepted} already accepted")), "{r}");

    // tough's store corrupt (tough then skips its own rollback check).
    let tuf = agent.state_dir.join("tuf");
    std::fs::create_dir_all(&tuf).unwrap();
    std::fs::write(tuf.join("timestamp.json"), b"{ not json").unwrap();
    let id = env.rollout("model@3.0.0", &probe).await;
    let r = refused(&env, &agent, &id, &rollback, &running).await;
    assert!(r.contains(&format!("version {old} is older than version {accepted}")), "{r}");
    assert_eq!(agent.trusted()["timestamp"].as_i64(), Some(accepted));

    // Control: without the replay the same version installs.
    proxy.clear_overrides();
    let id = env.rollout("model@3.0.0", &probe).await;
    assert_succeeded(&env.wait_final(&agent, &id).await, &agent);
    assert_eq!(agent.sha(), Some(sha_hex(&v3)));
    let running = sha_hex(&v3);

    // The model already running keeps running, also across a restart with the server away.
    let st = agent.status();
    assert_eq!(st["active"]["version"], "3.0.0", "{st}");
    assert_eq!(agent.sha().as_deref(), Some(running.as_str()));
    drop(proxy);
    agent.stop().await;
    agent.start();
    wait!(
        "the restarted agent to find nobody",
        agent,
        agent.log_text().matches("cannot reach the server").count() >= 2
    );
    let st = agent.status();
    assert_eq!((st["active"]["version"].as_str(), st["healthy"].as_bool()), (Some("3.0.0"), Some(true)), "{st}");
    assert_eq!(agent.sha(), Some(running));
}
