//! The verifiable audit log: signed checkpoints, exports, consistency, and tampering by someone
//! with write access to the database (who first drops the append-only triggers), on both
//! backends. Each tamper must make verification fail naming the first bad event.

use axum::http::StatusCode;
use sqlx::Connection as _;
use wavecast_core::Sha256Digest;
use wavecast_core::checkpoint::{Checkpoint, NoteKey, format_note, origin_for_root, peek_checkpoint};
use wavecast_core::evidence::{
    ConsistencyProof, Export, LeafRow, LogVerified, Problem, StoredCheckpoint, VerifyError, verify_export,
    verify_growth, verify_log,
};
use wavecast_core::merkle::{CompactRange, Tree};
use wavecast_server::checkpoints::{CheckpointError, Signed};
use wavecast_server::store::DatabaseConfig;
use wavecast_tuf::keys::{SigningKey, verify_ed25519};

use crate::both;
use crate::support::{Db, Env};

/// The checkpoint key as an auditor gets it: from the trust anchor's signed `x-wavecast` field.
fn trusted_key(env: &Env) -> NoteKey {
    let bytes = std::fs::read(&env.report.root_json).unwrap();
    let root = wavecast_tuf::root::parse_root(&bytes).unwrap();
    NoteKey {
        name: origin_for_root(&Sha256Digest::of(&bytes)),
        public: wavecast_tuf::root::checkpoint_key(&root.signed).unwrap(),
    }
}

async fn group(env: &Env, name: &str) {
    let r = env.post_json("/api/v1/groups", Some(&env.admin), serde_json::json!({ "name": name })).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.message());
}

async fn sign(env: &Env) -> u64 {
    env.state.checkpoints().checkpoint_now().await.unwrap().size()
}

/// Eight events in four bursts, each followed by a checkpoint: sizes 1, 3, 6 and 8.
/// Event 0 is the installation; events 1..=7 create groups g1..g7.
async fn build_log(env: &Env) {
    assert_eq!(env.state.checkpoints().checkpoint_now().await.unwrap(), Signed::New(1));
    for burst in [&["g1", "g2"][..], &["g3", "g4", "g5"], &["g6", "g7"]] {
        for g in burst {
            group(env, g).await;
        }
        sign(env).await;
    }
    assert_eq!(sign(env).await, 8);
}

async fn checkpoint_rows(env: &Env) -> Vec<StoredCheckpoint> {
    serde_json::from_slice(&env.get("/api/v1/audit/checkpoints").await.body).unwrap()
}

async fn leaves(env: &Env) -> Vec<LeafRow> {
    serde_json::from_slice(&env.get("/api/v1/audit/leaves").await.body).unwrap()
}

/// What `wavecast audit verify` does against the live log, minus the HTTP client.
async fn verify_live(env: &Env) -> Result<LogVerified, VerifyError> {
    let checkpoints = checkpoint_rows(env).await;
    verify_log(&leaves(env).await, &checkpoints, &trusted_key(env).into(), verify_ed25519)
}

fn assert_names(result: Result<LogVerified, VerifyError>, seq: u64, kind: fn(&Problem) -> bool) -> String {
    match result {
        Err(VerifyError::Event { seq: got, problem }) => {
            assert_eq!(got, seq, "named event {got}, expected {seq}: {problem}");
            assert!(kind(&problem), "event {seq}: unexpected problem {problem:?}");
            problem.to_string()
        }
        other => panic!("expected event {seq} to be named, got {other:?}"),
    }
}

/// A direct database connection, as an attacker with the database password has.
struct Attacker {
    conn: sqlx::AnyConnection,
    db: Db,
}

impl Attacker {
    async fn connect(env: &Env, db: Db) -> Self {
        sqlx::any::install_default_drivers();
        let url = match &env.config.database {
            DatabaseConfig::Sqlite(path) => format!("sqlite://{}", path.display()),
            DatabaseConfig::Postgres(url) => url.clone(),
        };
        let mut a = Self { conn: sqlx::AnyConnection::connect(&url).await.unwrap(), db };
        // First the triggers that make the tables append-only.
        let drops: &[&str] = match db {
            Db::Sqlite => &[
                "DROP TRIGGER audit_log_no_update",
                "DROP TRIGGER audit_log_no_delete",
                "DROP TRIGGER audit_checkpoints_no_update",
                "DROP TRIGGER audit_checkpoints_no_delete",
            ],
            Db::Postgres => &[
                "DROP TRIGGER audit_log_no_update ON audit_log",
                "DROP TRIGGER audit_log_no_truncate ON audit_log",
                "DROP TRIGGER audit_checkpoints_no_update ON audit_checkpoints",
                "DROP TRIGGER audit_checkpoints_no_truncate ON audit_checkpoints",
            ],
        };
        for sql in drops {
            a.exec(sql).await;
        }
        a
    }

    async fn exec(&mut self, sql: &str) {
        sqlx::query(sql).execute(&mut self.conn).await.unwrap_or_else(|e| panic!("{:?}: {sql}: {e}", self.db));
    }

    async fn set_body(&mut self, seq: i64, body: &str) {
        sqlx::query("UPDATE audit_log SET body = $1 WHERE seq = $2")
            .bind(body)
            .bind(seq)
            .execute(&mut self.conn)
            .await
            .unwrap();
    }
}

fn body_of(rows: &[LeafRow], seq: u64) -> String {
    rows.iter().find(|r| r.seq == seq).unwrap().body.clone()
}

/// One byte of `body` changed (inside the subject, so the JSON still parses).
fn flip_one_byte(body: &str, from: &str, to: &str) -> String {
    assert_eq!(from.len(), to.len());
    assert!(body.contains(from), "{body} lacks {from}");
    body.replacen(from, to, 1)
}

async fn an_untouched_log_verifies(db: Db) {
    let env = Env::new(db).await;
    let none = env.get("/api/v1/audit/checkpoint").await;
    assert_eq!(none.status, StatusCode::NOT_FOUND, "no checkpoint before the first signing");
    build_log(&env).await;
    let ok = verify_live(&env).await.unwrap();
    assert_eq!((ok.tree_size, ok.checkpoints, ok.pending), (8, 4, 0));
    assert_eq!(
        env.state.checkpoints().checkpoint_now().await.unwrap(),
        Signed::UpToDate(8),
        "nothing new, nothing signed"
    );

    // The newest checkpoint is served as the note itself, signed by the key root.json names.
    let r = env.get("/api/v1/audit/checkpoint").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.headers["content-type"].to_str().unwrap().starts_with("text/plain"));
    let note = String::from_utf8(r.body).unwrap();
    let key = trusted_key(&env);
    let cp = wavecast_core::checkpoint::open_checkpoint(&note, &key, verify_ed25519).unwrap();
    assert_eq!((cp.size, cp.root), (8, ok.root));
    assert!(note.starts_with(&format!("{}\n8\n", key.name)), "{note}");

    // Events after the newest checkpoint are pending, not failures, until the next one.
    group(&env, "g8").await;
    assert_eq!(verify_live(&env).await.unwrap().pending, 1);
    assert_eq!(sign(&env).await, 9);
    assert_eq!(verify_live(&env).await.unwrap().tree_size, 9);

    // The key is a 0600 file outside the database, and the checkpoints table is append-only.
    use std::os::unix::fs::PermissionsExt as _;
    let path = env.layout().checkpoint_key();
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(SigningKey::load(&path).unwrap().public_bytes(), key.public);
    let url = match &env.config.database {
        DatabaseConfig::Sqlite(path) => format!("sqlite://{}", path.display()),
        DatabaseConfig::Postgres(url) => url.clone(),
    };
    let mut conn = sqlx::AnyConnection::connect(&url).await.unwrap();
    for sql in
        ["UPDATE audit_checkpoints SET note = 'x' WHERE size = 8", "DELETE FROM audit_checkpoints WHERE size = 1"]
    {
        let err = sqlx::query(sql).execute(&mut conn).await.expect_err(sql).to_string();
        assert!(err.contains("append-only"), "{sql}: {err}");
    }
    // The server restarts onto the same checkpoints and keeps extending them.
    let env = env.restart().await;
    group(&env, "g9").await;
    assert_eq!(sign(&env).await, 10);
    verify_live(&env).await.unwrap();
}

async fn a_changed_byte_is_found(db: Db) {
    let env = Env::new(db).await;
    build_log(&env).await;
    let rows = leaves(&env).await;
    let mut attacker = Attacker::connect(&env, db).await;

    // At the start of a burst the changed event is named exactly.
    let original = body_of(&rows, 3);
    attacker.set_body(3, &flip_one_byte(&original, "\"g3\"", "\"h3\"")).await;
    let why = assert_names(verify_live(&env).await, 3, |p| matches!(p, Problem::ChangedBytes { .. }));
    assert!(why.contains("checkpoint signed at size 6"), "{why}");
    attacker.set_body(3, &original).await;
    verify_live(&env).await.expect("restoring the byte restores the proof");

    // Inside a burst, the evidence (one signed root per burst) narrows it to the burst: the
    // first event that no checkpoint vouches for is named, with the range.
    attacker.set_body(4, &flip_one_byte(&body_of(&rows, 4), "\"g4\"", "\"g9\"")).await;
    let why = assert_names(verify_live(&env).await, 3, |p| matches!(p, Problem::ChangedBytes { .. }));
    assert!(why.contains("events 3..=5"), "{why}");

    // The signer never covers a changed old row: the next checkpoint extends the signed
    // frontier with the new event only, so the change stays a mismatch.
    group(&env, "g8").await;
    assert_eq!(sign(&env).await, 9);
    assert_names(verify_live(&env).await, 3, |p| matches!(p, Problem::ChangedBytes { .. }));

    // Bytes that are no longer an event are named exactly, wherever they are.
    attacker.set_body(4, &body_of(&rows, 4)).await;
    attacker.set_body(7, &body_of(&rows, 7)[1..]).await;
    let why = assert_names(verify_live(&env).await, 7, |p| matches!(p, Problem::ChangedBytes { .. }));
    assert!(why.contains("no audit event"), "{why}");
}

async fn a_deleted_last_row_is_found(db: Db) {
    let env = Env::new(db).await;
    build_log(&env).await;
    Attacker::connect(&env, db).await.exec("DELETE FROM audit_log WHERE seq = 7").await;
    let why = assert_names(verify_live(&env).await, 7, |p| matches!(p, Problem::Missing { .. }));
    assert!(why.contains("size 8"), "{why}");
}

async fn a_deleted_middle_row_is_found(db: Db) {
    let env = Env::new(db).await;
    build_log(&env).await;
    Attacker::connect(&env, db).await.exec("DELETE FROM audit_log WHERE seq = 4").await;
    assert_names(verify_live(&env).await, 4, |p| matches!(p, Problem::Missing { .. }));
}

async fn reordered_rows_are_found(db: Db) {
    let env = Env::new(db).await;
    build_log(&env).await;
    let rows = leaves(&env).await;
    let mut attacker = Attacker::connect(&env, db).await;
    attacker.set_body(2, &body_of(&rows, 5)).await;
    attacker.set_body(5, &body_of(&rows, 2)).await;
    assert_names(verify_live(&env).await, 2, |p| matches!(p, Problem::OutOfOrder { holds: 5 }));
}

async fn a_consistent_forgery_under_another_key_is_found(db: Db) {
    let env = Env::new(db).await;
    build_log(&env).await;
    let mut rows = leaves(&env).await;
    let mut attacker = Attacker::connect(&env, db).await;

    // Rewrite event 5, then everything that depends on it: every checkpoint, recomputed and
    // signed by a key of the attacker's own under the genuine log's name.
    let forged = flip_one_byte(&rows[5].body, "\"admin\"", "\"eve!!\"");
    attacker.set_body(5, &forged).await;
    rows[5].body = forged;
    attacker.exec("DELETE FROM audit_checkpoints").await;
    let rogue = SigningKey::generate().unwrap();
    let rogue_key = NoteKey { name: trusted_key(&env).name, public: rogue.public_bytes().try_into().unwrap() };
    let mut tree = Tree::new();
    let mut frontier = CompactRange::new();
    for row in &rows {
        let leaf = wavecast_core::audit::leaf_hash(row.body.as_bytes());
        tree.push(leaf);
        frontier.push(leaf);
        if [1, 3, 6, 8].contains(&frontier.size()) {
            let body =
                Checkpoint { origin: rogue_key.name.clone(), size: frontier.size(), root: frontier.root() }.body();
            let note = format_note(&body, &rogue_key, &rogue.sign_bytes(body.as_bytes()));
            let hashes: Vec<String> = frontier.hashes().iter().map(Sha256Digest::to_hex).collect();
            sqlx::query(
                "INSERT INTO audit_checkpoints (size, root_sha256, note, frontier, created_at) VALUES ($1, $2, $3, $4, 0)",
            )
            .bind(frontier.size() as i64)
            .bind(frontier.root().to_hex())
            .bind(note)
            .bind(serde_json::to_string(&hashes).unwrap())
            .execute(&mut attacker.conn)
            .await
            .unwrap();
        }
    }
    // Internally consistent: under the rogue key it would verify.
    let checkpoints = checkpoint_rows(&env).await;
    verify_log(&rows, &checkpoints, &rogue_key.clone().into(), verify_ed25519).unwrap();
    // Under the trust anchor's key nothing is vouched for.
    let why = assert_names(verify_live(&env).await, 0, |p| matches!(p, Problem::NotCovered { .. }));
    assert!(why.contains("no signature by key"), "{why}");

    // The server does not adopt the forgery: the forged rows do not verify with its key, and a
    // server that had seen size 8 signed refuses to start over from scratch.
    match env.state.checkpoints().sign_new(8).await {
        Err(CheckpointError::RolledBack { found: 0, seen: 8 }) => {}
        other => panic!("expected a refusal, got {other:?}"),
    }
}

async fn the_signer_refuses_damaged_new_rows(db: Db) {
    let env = Env::new(db).await;
    build_log(&env).await;
    group(&env, "g8").await;
    group(&env, "g9").await;
    Attacker::connect(&env, db).await.exec("DELETE FROM audit_log WHERE seq = 8").await;
    match env.state.checkpoints().checkpoint_now().await {
        Err(CheckpointError::Tampered { seq: 8, .. }) => {}
        other => panic!("expected a refusal to sign over a gap, got {other:?}"),
    }
    assert_eq!(checkpoint_rows(&env).await.len(), 4, "nothing was signed");
}

async fn exports_verify_offline_and_name_a_flipped_byte(db: Db) {
    let env = Env::new(db).await;
    build_log(&env).await;
    let key = trusted_key(&env);
    let export: Export = serde_json::from_slice(&env.get("/api/v1/audit/export").await.body).unwrap();
    let ok = verify_export(&export, &key.clone().into(), verify_ed25519).unwrap();
    assert_eq!((ok.events, ok.tree_size, ok.rollout), (8, 8, None));

    let mut flipped = export.clone();
    flipped.events[6].body = flip_one_byte(&flipped.events[6].body, "\"g6\"", "\"g7\"");
    match verify_export(&flipped, &key.clone().into(), verify_ed25519) {
        Err(VerifyError::Event { seq: 6, problem: Problem::ChangedBytes { .. } }) => {}
        other => panic!("expected event 6 to be named, got {other:?}"),
    }
    let mut truncated = export.clone();
    truncated.events.pop();
    assert_eq!(verify_export(&truncated, &key.clone().into(), verify_ed25519).unwrap_err().seq(), Some(7));
    let r = env.get("/api/v1/audit/export?rollout=").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);

    // One rollout's events, named by any unique start of its id; an id that names no rollout
    // is an error, never an empty export that verifies.
    env.enroll("g1", "cam-1").await;
    env.publish("m@1.0.0", b"one").await;
    let body = serde_json::json!({ "artifact": "m@1.0.0", "group": "g1", "waves": [100], "probe": "exec:check" });
    let id = env.post_json("/api/v1/rollouts", Some(&env.admin), body).await.json()["id"].as_str().unwrap().to_owned();
    sign(&env).await;
    let short = &id[..5];
    let one: Export =
        serde_json::from_slice(&env.get(&format!("/api/v1/audit/export?rollout={short}")).await.body).unwrap();
    let actions: Vec<String> = one
        .events
        .iter()
        .map(|e| wavecast_core::audit::AuditEvent::from_bytes(e.body.as_bytes()).unwrap().action.to_string())
        .collect();
    assert_eq!(actions, ["rollout.created", "wave.opened"], "its events only");
    assert_eq!(verify_export(&one, &key.clone().into(), verify_ed25519).unwrap().rollout.as_deref(), Some(id.as_str()));
    let unknown = env.get("/api/v1/audit/export?rollout=r-unknown").await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert!(unknown.message().contains("no rollout has an id starting with \"r-unknown\""), "{}", unknown.message());
}

async fn consistency_proves_the_log_only_grew(db: Db) {
    let env = Env::new(db).await;
    build_log(&env).await;
    let key = trusted_key(&env);
    let old = checkpoint_rows(&env).await.into_iter().find(|c| c.size == 3).unwrap().note;
    group(&env, "g8").await;
    group(&env, "g9").await;
    assert_eq!(sign(&env).await, 10);

    let proof: ConsistencyProof =
        serde_json::from_slice(&env.get("/api/v1/audit/consistency?from=3").await.body).unwrap();
    assert_eq!((proof.from, proof.to), (3, 10));
    let grown = verify_growth(&old, &proof, &key.clone().into(), verify_ed25519).unwrap();
    assert_eq!((grown.old_size, grown.new_size), (3, 10));
    let to_six: ConsistencyProof =
        serde_json::from_slice(&env.get("/api/v1/audit/consistency?from=3&to=6").await.body).unwrap();
    verify_growth(&old, &to_six, &key.clone().into(), verify_ed25519).unwrap();
    assert_eq!(env.get("/api/v1/audit/consistency?from=11").await.status, StatusCode::BAD_REQUEST);
    assert_eq!(env.get("/api/v1/audit/consistency?from=3&to=4").await.status, StatusCode::NOT_FOUND);

    // History rewritten before the old checkpoint. The checkpoints still vouch for the history
    // they signed, and a proof between them is cut from the old one's signed frontier, never
    // from the rewritten row: it verifies. The rewrite is found wherever the row is read: an
    // export refuses to prove anything over it, and verification names the event.
    let rows = leaves(&env).await;
    let mut attacker = Attacker::connect(&env, db).await;
    attacker.set_body(1, &flip_one_byte(&body_of(&rows, 1), "\"g1\"", "\"x1\"")).await;
    let proof: ConsistencyProof =
        serde_json::from_slice(&env.get("/api/v1/audit/consistency?from=3").await.body).unwrap();
    verify_growth(&old, &proof, &key.clone().into(), verify_ed25519).unwrap();
    assert_eq!(peek_checkpoint(&old).unwrap().size, 3);
    let export = env.get("/api/v1/audit/export").await;
    assert_eq!(export.status, StatusCode::CONFLICT, "{}", export.message());
    assert!(export.message().contains("no longer hashes to its signed checkpoint of size 10"), "{}", export.message());
    assert_names(verify_live(&env).await, 1, |p| matches!(p, Problem::ChangedBytes { .. }));

    // A row rewritten after the old checkpoint, read by a server that just started: no proof
    // over it is answered, but a conflict that says the log was altered.
    attacker.set_body(1, &body_of(&rows, 1)).await;
    attacker.set_body(5, &flip_one_byte(&body_of(&rows, 5), "\"g5\"", "\"x5\"")).await;
    let env = env.restart().await;
    let r = env.get("/api/v1/audit/consistency?from=3").await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.message());
    assert!(r.message().contains("run `wavecast audit verify`"), "{}", r.message());
    // Growth from past the rewritten row needs none of it, and still proves.
    let six = checkpoint_rows(&env).await.into_iter().find(|c| c.size == 6).unwrap().note;
    let proof: ConsistencyProof =
        serde_json::from_slice(&env.get("/api/v1/audit/consistency?from=6").await.body).unwrap();
    assert_eq!(verify_growth(&six, &proof, &key.clone().into(), verify_ed25519).unwrap().new_size, 10);
    match verify_growth(&old, &proof, &key.into(), verify_ed25519) {
        Err(VerifyError::Growth { .. }) => {}
        other => panic!("a proof from 6 must not pass for the checkpoint of 3, got {other:?}"),
    }
}

/// Proofs are cut from a tree the server keeps between requests, started at a checkpoint's
/// frontier and extended as the log grows: they are exactly those of the whole tree rebuilt from
/// every row (what the server answered before), whatever order they are asked in, for every
/// checkpoint, for one rollout's events, and again after a restart.
async fn proofs_are_those_of_the_whole_tree(db: Db) {
    let mut env = Env::new(db).await;
    build_log(&env).await;
    env.enroll("g1", "cam-1").await;
    env.publish("m@1.0.0", b"one").await;
    let body = serde_json::json!({ "artifact": "m@1.0.0", "group": "g1", "waves": [100], "probe": "exec:check" });
    let id = env.post_json("/api/v1/rollouts", Some(&env.admin), body).await.json()["id"].as_str().unwrap().to_owned();
    sign(&env).await;
    for g in ["g8", "g9", "g10"] {
        group(&env, g).await;
    }
    let size = sign(&env).await;
    let mut whole = Tree::new();
    for row in leaves(&env).await {
        whole.push(wavecast_core::audit::leaf_hash(row.body.as_bytes()));
    }
    let sizes: Vec<u64> = checkpoint_rows(&env).await.iter().map(|c| c.size).collect();
    assert_eq!(sizes.len(), 6, "{sizes:?}");
    for round in ["newest first", "oldest first, after a restart"] {
        let mut asked: Vec<(u64, u64)> = sizes.iter().flat_map(|to| (0..=*to).map(|from| (from, *to))).collect();
        if round == "newest first" {
            asked.reverse();
        }
        for (from, to) in asked {
            let r = env.get(&format!("/api/v1/audit/consistency?from={from}&to={to}")).await;
            assert_eq!(r.status, StatusCode::OK, "{from} → {to} ({round}): {}", r.message());
            let proof: ConsistencyProof = serde_json::from_slice(&r.body).unwrap();
            assert_eq!(proof.proof, whole.consistency_proof(from, to).unwrap(), "{from} → {to} ({round})");
        }
        for query in [format!("?rollout={id}"), String::new()] {
            let export: Export =
                serde_json::from_slice(&env.get(&format!("/api/v1/audit/export{query}")).await.body).unwrap();
            assert!(!export.events.is_empty());
            for e in &export.events {
                assert_eq!(e.inclusion_proof, whole.inclusion_proof(e.seq, size).unwrap(), "event {} ({round})", e.seq);
            }
            let all = query.is_empty();
            assert_eq!(export.events.len() as u64 == size, all, "{query}: {} events", export.events.len());
        }
        env = env.restart().await;
    }
}

both!(
    proofs_are_those_of_the_whole_tree,
    an_untouched_log_verifies,
    a_changed_byte_is_found,
    a_deleted_last_row_is_found,
    a_deleted_middle_row_is_found,
    reordered_rows_are_found,
    a_consistent_forgery_under_another_key_is_found,
    the_signer_refuses_damaged_new_rows,
    exports_verify_offline_and_name_a_flipped_byte,
    consistency_proves_the_log_only_grew,
);
