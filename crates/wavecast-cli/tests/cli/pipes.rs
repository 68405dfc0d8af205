//! A closed pipe is not a crash: `wavecast … | head -c 1` ends quietly with success.

use std::process::Stdio;

use crate::{Server, installation, ok, op};

#[tokio::test(flavor = "multi_thread")]
async fn every_list_and_show_ends_quietly_when_its_reader_is_gone() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("install");
    let inst = installation(&dir);
    let server = Server::start(&dir, None).await;
    let model = tmp.path().join("model.bin");
    std::fs::write(&model, b"weights".repeat(100)).unwrap();
    ok(op(&server, &inst.token)
        .args(["artifact", "publish", "--name", "yolo", "--version", "1.0.0", "--key", &inst.key, "--file"])
        .arg(&model));
    ok(op(&server, &inst.token).args(["group", "create", "plant-7"]));
    let enroll: serde_json::Value = serde_json::from_str(&ok(op(&server, &inst.token).args([
        "device",
        "enroll-token",
        "--group",
        "plant-7",
        "--json",
    ])))
    .unwrap();
    let enrolled = reqwest::Client::new()
        .post(format!("{}/device/v1/enroll", server.url))
        .json(&serde_json::json!({ "token": enroll["token"], "name": "cam-001", "hardware": "jetson" }))
        .send()
        .await
        .unwrap();
    assert!(enrolled.status().is_success(), "{:?}", enrolled.text().await);
    let created: serde_json::Value = serde_json::from_str(&ok(op(&server, &inst.token).args([
        "rollout",
        "create",
        "--artifact",
        "yolo@1.0.0",
        "--group",
        "plant-7",
        "--probe",
        "exec:check",
        "--json",
    ])))
    .unwrap();
    let id = created["id"].as_str().unwrap().to_owned();

    let commands: Vec<Vec<&str>> = vec![
        vec!["artifact", "list"],
        vec!["group", "list"],
        vec!["device", "list"],
        vec!["device", "show", "cam-001"],
        vec!["rollout", "list"],
        vec!["rollout", "show", &id],
        vec!["token", "list"],
        vec!["audit", "list"],
    ];
    for command in &commands {
        for json in [true, false] {
            let mut cmd = op(&server, &inst.token);
            cmd.args(command);
            if json {
                cmd.arg("--json");
            }
            let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
            // The reader goes away before the command has written anything: its first write
            // meets a closed pipe, as with `| head -c 1` on output longer than one read.
            drop(child.stdout.take());
            let out = child.wait_with_output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success() && stderr.is_empty(),
                "`wavecast {} {}` with a closed stdout: {}\n{stderr}",
                command.join(" "),
                if json { "--json" } else { "" },
                out.status
            );
        }
    }
    server.stop();
}
