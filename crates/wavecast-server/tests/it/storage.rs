//! Durability: restarts keep everything; the audit log refuses edits; databases stay bound to
//! their installation.

use axum::http::StatusCode;
use sqlx::Connection as _;
use wavecast_server::store::DatabaseConfig;

use crate::both;
use crate::support::{Db, Env};

async fn restart_keeps_everything(db: Db) {
    let env = Env::new(db).await;
    assert_eq!(env.publish("yolo@1.0.0", b"one").await.status, StatusCode::CREATED);
    env.post_json("/api/v1/groups", Some(&env.admin), serde_json::json!({ "name": "plant-7" })).await;
    let token = env
        .post_json("/api/v1/enrollment-tokens", Some(&env.admin), serde_json::json!({ "group": "plant-7" }))
        .await
        .json()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = env
        .post_json("/device/v1/enroll", None, serde_json::json!({ "token": token, "name": "cam-1", "hardware": "x86" }))
        .await;
    let cred = r.json()["credential"].as_str().unwrap().to_owned();
    let before = env.snapshot().await;
    let groups = env.get("/api/v1/groups").await.json();

    let env = env.restart().await;
    assert_eq!(env.snapshot().await, before);
    assert_eq!(env.get("/api/v1/groups").await.json(), groups);
    let me =
        env.request(axum::http::Method::GET, "/device/v1/whoami", Some(&cred), &[], axum::body::Body::empty()).await;
    assert_eq!(me.status, StatusCode::OK, "device credentials survive a restart");
    // The next publish continues the version sequence.
    assert_eq!(env.publish("yolo@1.0.1", b"two").await.status, StatusCode::CREATED);
    assert_eq!(env.current_targets().await.signed.version.get(), 3);
}

/// Runs one statement on the test's database, outside the server.
async fn execute(env: &Env, sql: &str) -> Result<(), sqlx::Error> {
    match &env.config.database {
        DatabaseConfig::Sqlite(path) => {
            let mut c = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display())).await.unwrap();
            sqlx::query(sql).execute(&mut c).await.map(|_| ())
        }
        DatabaseConfig::Postgres(url) => {
            let mut c = sqlx::PgConnection::connect(url).await.unwrap();
            sqlx::query(sql).execute(&mut c).await.map(|_| ())
        }
    }
}

async fn audit_log_refuses_edits(db: Db) {
    let env = Env::new(db).await;
    env.post_json("/api/v1/groups", Some(&env.admin), serde_json::json!({ "name": "g" })).await;
    let statements = [
        "UPDATE audit_log SET actor = 'mallory' WHERE seq = 0",
        "DELETE FROM audit_log WHERE seq = 1",
        "UPDATE tuf_metadata SET body = '{}' WHERE role = 'root'",
    ];
    for sql in statements {
        let err = execute(&env, sql).await.expect_err(sql).to_string();
        assert!(err.contains("append-only"), "{sql}: {err}");
    }
    assert_eq!(env.get("/api/v1/audit").await.json()[0]["actor"], "wavecast init");
}

/// A rollout whose per-wave counts were stored before `revert_skipped` existed (eleven states)
/// still shows, and goes on counting.
async fn counts_stored_before_revert_skipped_still_load(db: Db) {
    let env = Env::new(db).await;
    env.post_json("/api/v1/groups", Some(&env.admin), serde_json::json!({ "name": "g" })).await;
    env.enroll("g", "cam-1").await;
    env.publish("m@1.0.0", b"one").await;
    let create = serde_json::json!({ "artifact": "m@1.0.0", "group": "g", "waves": [100], "probe": "exec:check" });
    let id =
        env.post_json("/api/v1/rollouts", Some(&env.admin), create).await.json()["id"].as_str().unwrap().to_owned();
    // The one device assigned, as an older server wrote it.
    let old_counts = r#"[{"by_state":[0,1,0,0,0,0,0,0,0,0,0]}]"#;
    execute(&env, &format!("UPDATE rollouts SET counts = '{old_counts}' WHERE id = '{id}'")).await.unwrap();
    let env = env.restart().await;
    let shown = env.get(&format!("/api/v1/rollouts/{id}")).await;
    assert_eq!(shown.status, StatusCode::OK, "{}", shown.message());
    let counts = &shown.json()["counts"];
    assert_eq!((counts["assigned"].as_u64(), counts["revert_skipped"].as_u64()), (Some(1), Some(0)), "{counts}");
    let aborted = env
        .post_json(&format!("/api/v1/rollouts/{id}/abort"), Some(&env.admin), serde_json::json!({ "mode": "keep" }))
        .await;
    assert_eq!(aborted.status, StatusCode::OK, "{}", aborted.message());
}

both!(restart_keeps_everything, audit_log_refuses_edits, counts_stored_before_revert_skipped_still_load);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_serves_one_installation_only() {
    let env = Env::new(Db::Postgres).await;
    let DatabaseConfig::Postgres(url) = env.config.database.clone() else { unreachable!() };
    let other = tempfile::tempdir().unwrap();
    wavecast_server::install::init(&other.path().join("i")).await.unwrap();
    let any = wavecast_core::rollout::GateApproval::AnyApprover;
    let config =
        wavecast_server::ServerConfig::new(other.path().join("i"), "127.0.0.1:0".parse().unwrap(), Some(url), any)
            .unwrap();
    let err = wavecast_server::open(&config).await.err().expect("a foreign installation must be refused");
    assert!(err.to_string().contains("belongs to another installation"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_together_import_once() {
    let env = Env::new(Db::Postgres).await;
    let config = env.config.clone();
    // The first open already imported; several more racing must neither fail nor duplicate.
    let opens = (0..4).map(|_| wavecast_server::open(&config));
    for result in futures_util::future::join_all(opens).await {
        result.unwrap();
    }
    let audit = env.get("/api/v1/audit").await.json();
    assert_eq!(audit.as_array().unwrap().len(), 1);
}
