//! `wavecast audit checkpoint|export|verify` against a real server: the background signer,
//! offline export verification, the live log, and growth since a saved checkpoint.

use std::path::Path;
use std::time::Duration;

use wavecast_test_support::wait_until;

use crate::{Server, init, ok, op, run, wavecast};

/// Waits until the server's background signer has covered every event.
async fn wait_for_checkpoint(server: &Server, token: &str) {
    let (url, token) = (server.url.clone(), token.to_owned());
    let covered = wait_until(Duration::from_secs(10), || {
        let (url, token) = (url.clone(), token.clone());
        async move {
            let client = reqwest::Client::new();
            let get = |path: &str| client.get(format!("{url}{path}")).bearer_auth(&token).send();
            let Ok(events) = get("/api/v1/audit?limit=10000").await else { return false };
            let events: serde_json::Value = events.json().await.unwrap_or_default();
            let Ok(note) = get("/api/v1/audit/checkpoint").await else { return false };
            let note = note.text().await.unwrap_or_default();
            note.lines().nth(1).and_then(|l| l.parse::<usize>().ok()) == events.as_array().map(Vec::len)
        }
    })
    .await;
    assert!(covered, "the server did not sign a checkpoint covering every event:\n{}", server.log());
}

fn verify(server: &Server, token: &str, root: &Path, args: &[&str]) -> std::process::Output {
    run(op(server, token).args(["audit", "verify", "--trust-root"]).arg(root).args(args))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_verify_and_growth_with_a_real_server() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("install");
    let report = init(&dir);
    let token = std::fs::read_to_string(report["admin_token_file"].as_str().unwrap()).unwrap().trim().to_owned();
    let root = Path::new(report["root_json"].as_str().unwrap()).to_path_buf();
    let server = Server::start(&dir, None).await;
    for g in ["plant-1", "plant-2"] {
        ok(op(&server, &token).args(["group", "create", g]));
    }
    wait_for_checkpoint(&server, &token).await;
    let old = tmp.path().join("old.note");
    ok(op(&server, &token).args(["audit", "checkpoint", "--out"]).arg(&old));
    assert!(std::fs::read_to_string(&old).unwrap().contains("\n3\n"), "three events so far");

    // An export verifies offline: no server, no token.
    let export = tmp.path().join("audit.json");
    let out = ok(op(&server, &token).args(["audit", "export", "--out"]).arg(&export));
    assert!(out.contains("wrote 3 events"), "{out}");
    let offline = ok(wavecast().args(["audit", "verify"]).arg(&export).arg("--trust-root").arg(&root));
    assert!(offline.starts_with("OK: all 3 events are in log wavecast/"), "{offline}");

    // One byte changed in the file: that event is named, exit 1.
    let mut doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&export).unwrap()).unwrap();
    let body = doc["events"][2]["body"].as_str().unwrap().replacen("plant-2", "plant-3", 1);
    doc["events"][2]["body"] = body.into();
    let flipped = tmp.path().join("flipped.json");
    std::fs::write(&flipped, serde_json::to_vec(&doc).unwrap()).unwrap();
    let bad = run(wavecast().args(["audit", "verify"]).arg(&flipped).arg("--trust-root").arg(&root));
    assert_eq!(bad.status.code(), Some(1));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("event 2 does not verify: changed bytes"), "{err}");
    let json = run(wavecast().args(["audit", "verify", "--json"]).arg(&flipped).arg("--trust-root").arg(&root));
    assert_eq!(json.status.code(), Some(1));
    let verdict: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!((verdict["ok"].as_bool(), verdict["seq"].as_u64()), (Some(false), Some(2)), "{verdict}");
    assert_eq!(verdict["problem"]["kind"], "changed_bytes");

    // The live log, then more events, then proof that the log only grew since the old note.
    let live = String::from_utf8(verify(&server, &token, &root, &[]).stdout).unwrap();
    assert!(live.starts_with("OK: all 3 events of log"), "{live}");
    ok(op(&server, &token).args(["group", "create", "plant-3"]));
    wait_for_checkpoint(&server, &token).await;
    let grown = verify(&server, &token, &root, &["--json", "--since-checkpoint", old.to_str().unwrap()]);
    assert!(grown.status.success(), "{}", String::from_utf8_lossy(&grown.stdout));
    let verdict: serde_json::Value = serde_json::from_slice(&grown.stdout).unwrap();
    assert_eq!(verdict["verified"]["mode"], "live");
    assert_eq!(verdict["verified"]["tree_size"], 4);
    assert_eq!(
        (verdict["verified"]["growth"]["old_size"].as_u64(), verdict["verified"]["growth"]["new_size"].as_u64()),
        (Some(3), Some(4))
    );
    // The old export still verifies, and is consistent with the note saved beside it.
    let both = verify(&server, &token, &root, &[export.to_str().unwrap(), "--since-checkpoint", old.to_str().unwrap()]);
    assert!(both.status.success(), "{}", String::from_utf8_lossy(&both.stderr));

    // A "saved" checkpoint that is not one the log ever had is refused.
    let forged = tmp.path().join("forged.note");
    std::fs::write(&forged, std::fs::read_to_string(&old).unwrap().replacen("\n3\n", "\n2\n", 1)).unwrap();
    let bad = verify(&server, &token, &root, &["--since-checkpoint", forged.to_str().unwrap()]);
    assert_eq!(bad.status.code(), Some(1));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("only grew") && err.contains("does not verify"), "{err}");

    // Another installation's root names another key: nothing verifies against it.
    let other = init(&tmp.path().join("other"));
    let foreign = run(wavecast()
        .args(["audit", "verify"])
        .arg(&export)
        .arg("--trust-root")
        .arg(other["root_json"].as_str().unwrap()));
    assert_eq!(foreign.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&foreign.stderr).contains("event 0 does not verify"));
    server.stop();
}

/// The audit checkpoint key rotated through a new root: the live log, a new export and growth
/// from a note kept before the rotation all verify with the first root.json or the new one,
/// under the same log origin; an export made before verifies with the root of its time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verifies_across_a_checkpoint_key_rotation() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("install");
    let report = init(&dir);
    let token = std::fs::read_to_string(report["admin_token_file"].as_str().unwrap()).unwrap().trim().to_owned();
    let (v1, root_key) = (Path::new(report["root_json"].as_str().unwrap()), report["root_key"].as_str().unwrap());
    let server = Server::start(&dir, None).await;
    ok(op(&server, &token).args(["group", "create", "plant-1"]));
    wait_for_checkpoint(&server, &token).await;
    let (old, old_export) = (tmp.path().join("old.note"), tmp.path().join("old.json"));
    ok(op(&server, &token).args(["audit", "checkpoint", "--out"]).arg(&old));
    ok(op(&server, &token).args(["audit", "export", "--out"]).arg(&old_export));
    let before = ok(wavecast().args(["audit", "verify"]).arg(&old_export).arg("--trust-root").arg(v1));
    let origin = before.split_whitespace().find(|w| w.starts_with("wavecast/")).unwrap().to_owned();

    let keys = tmp.path().join("new-keys");
    let rotate = || {
        let mut c = op(&server, &token);
        c.args(["root", "rotate", "--root-key", root_key, "--new-online-keys"])
            .arg(&keys)
            .args(["--online-roles", "checkpoint", "--out"])
            .arg(tmp.path());
        c
    };
    let generated = ok(&mut rotate());
    assert!(generated.contains("checkpoint-") && generated.contains("run this command again"), "{generated}");
    for entry in std::fs::read_dir(&keys).unwrap().flatten() {
        std::fs::copy(entry.path(), dir.join("keys").join(entry.file_name())).unwrap();
    }
    let installed = ok(&mut rotate());
    assert!(installed.contains("new keys: checkpoint"), "{installed}");
    let v2 = tmp.path().join("2.root.json");
    ok(op(&server, &token).args(["group", "create", "plant-2"]));
    wait_for_checkpoint(&server, &token).await;

    let export = tmp.path().join("new.json");
    ok(op(&server, &token).args(["audit", "export", "--out"]).arg(&export));
    for root in [v1, v2.as_path()] {
        let live = verify(&server, &token, root, &["--since-checkpoint", old.to_str().unwrap()]);
        let stdout = String::from_utf8_lossy(&live.stdout);
        assert!(live.status.success(), "{stdout}{}", String::from_utf8_lossy(&live.stderr));
        assert!(stdout.contains(&format!("of log {origin}")) && stdout.contains("only grew"), "{stdout}");
        let offline = ok(wavecast().args(["audit", "verify"]).arg(&export).arg("--trust-root").arg(root));
        assert!(offline.contains(&format!("are in log {origin}")), "{offline}");
    }
    assert!(
        wavecast().args(["audit", "verify"]).arg(&old_export).arg("--trust-root").arg(v1).status().unwrap().success()
    );
    let newer = run(wavecast().args(["audit", "verify"]).arg(&old_export).arg("--trust-root").arg(&v2));
    assert_eq!(newer.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&newer.stderr).contains("predates the installation's first rotation"));
    server.stop();
}
