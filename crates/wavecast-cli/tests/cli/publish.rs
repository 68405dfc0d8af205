//! Publishing the same bytes at once from two `wavecast` processes never loses the blob.

use std::process::Stdio;

use crate::{Installation, Server, installation, op};

/// Two publishers upload the same bytes under two names at the same moment, round after
/// round: both succeed (the CLI signs again on top of the other's publish) or one is refused
/// saying another publish got in first; either way the content-addressed blob is there and
/// right afterwards, and, watched all along, it never went missing once a publish had served
/// it. A publish that lost the race used to delete the file under the winner's committed
/// artifact (until its own retry, if any, put it back).
async fn same_bytes_under_two_names_at_once(database_url: Option<&str>) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("install");
    let Installation { token, key, .. } = installation(&dir);
    let server = Server::start(&dir, database_url).await;
    let http = reqwest::Client::new();
    let mut refused = 0;
    for round in 0..20 {
        let bytes = format!("shared weights {round} ").repeat(20_000).into_bytes();
        let file = tmp.path().join(format!("model-{round}.bin"));
        std::fs::write(&file, &bytes).unwrap();
        let sha = wavecast_core::Sha256Digest::of(&bytes).to_hex();
        let watcher = watch(http.clone(), format!("{}/api/v1/blobs/{sha}", server.url), token.clone());
        let publishers: Vec<_> = ["alpha", "beta"]
            .into_iter()
            .map(|name| {
                op(&server, &token)
                    .args(["artifact", "publish", "--name", name, "--version", &format!("1.0.{round}"), "--key", &key])
                    .arg("--file")
                    .arg(&file)
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let outputs: Vec<_> = publishers.into_iter().map(|p| p.wait_with_output().unwrap()).collect();
        let seen = watcher.stop().await;
        let first_served = seen.iter().position(|s| s.is_success());
        let lost: Vec<_> =
            first_served.map(|i| seen[i..].iter().filter(|s| !s.is_success()).collect()).unwrap_or_default();
        assert!(lost.is_empty(), "round {round}: the blob went missing after it was served: {lost:?}");
        let ok = outputs.iter().filter(|o| o.status.success()).count();
        assert!(ok >= 1, "round {round}: neither publish succeeded: {outputs:?}");
        for o in outputs.iter().filter(|o| !o.status.success()) {
            refused += 1;
            let err = String::from_utf8_lossy(&o.stderr);
            assert_eq!(o.status.code(), Some(1), "round {round}: {err}");
            assert!(
                err.contains("concurrent publish") || err.contains("another publish landed first"),
                "round {round}: {err}"
            );
        }
        let blob = http.get(format!("{}/api/v1/blobs/{sha}", server.url)).bearer_auth(&token).send().await.unwrap();
        assert_eq!(blob.status(), reqwest::StatusCode::OK, "round {round}: the blob is gone\n{}", server.log());
        assert_eq!(wavecast_core::Sha256Digest::of(&blob.bytes().await.unwrap()).to_hex(), sha, "round {round}");
    }
    eprintln!("{refused} of 40 publishes were refused");
    server.stop();
}

/// Fetches the first byte of a blob over and over until stopped.
struct Watcher {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<Vec<reqwest::StatusCode>>,
}

fn watch(http: reqwest::Client, url: String, token: String) -> Watcher {
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(async move {
        let mut seen = Vec::new();
        while !*stopped.borrow() {
            let probe = http.get(&url).bearer_auth(&token).header("range", "bytes=0-0").send();
            tokio::select! {
                r = probe => seen.push(r.map(|r| r.status()).unwrap_or(reqwest::StatusCode::BAD_GATEWAY)),
                _ = stopped.changed() => {}
            }
        }
        seen
    });
    Watcher { stop, task }
}

impl Watcher {
    async fn stop(self) -> Vec<reqwest::StatusCode> {
        let _ = self.stop.send(true);
        self.task.await.unwrap()
    }
}

crate::both!(same_bytes_under_two_names_at_once);

fn model_fixture(path: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../wavecast-model-check/tests/fixtures").join(path)
}

/// `artifact publish --golden` runs the model check on the publisher's machine first: a model
/// that fails its own golden set is not signed and nothing reaches the server; one that passes
/// is published with its golden set, and the audit says whether the local check passed or was
/// skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_that_fails_its_golden_set_is_not_signed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("install");
    let Installation { token, key, .. } = installation(&dir);
    let server = Server::start(&dir, None).await;
    let golden = model_fixture("classifier/golden.npz");
    let publish = |version: &str, model: &str, extra: &[&str]| {
        op(&server, &token)
            .args(["artifact", "publish", "--name", "clf", "--version", version, "--key", &key, "--golden"])
            .arg(&golden)
            .arg("--file")
            .arg(model_fixture(model))
            .args(extra)
            .output()
            .unwrap()
    };
    let artifacts = || {
        let out = op(&server, &token).args(["artifact", "list", "--json"]).output().unwrap();
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };

    // The perturbed weights are a few hundredths off the golden outputs: refused here.
    let out = publish("1.0.0", "perturbed/model.onnx", &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("refusing to sign clf@1.0.0"), "{err}");
    assert!(err.contains("outside abs=0.0001,rel=0.0001") && err.contains("--skip-local-check"), "{err}");
    assert_eq!(artifacts(), serde_json::json!([]), "nothing was published");

    // Told to skip the check, it signs; the signed metadata and the audit say it was skipped.
    let out = publish("1.0.0", "perturbed/model.onnx", &["--skip-local-check"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("skipped"));

    // The good model passes here and is published with the check's outcome.
    let out = publish("1.1.0", "classifier/model.onnx", &["--latency-budget", "5s"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("model check on this machine passed: 8 golden case(s)"), "{err}");

    // The same again is a retry; the same bytes with another golden set is refused, not
    // reported as already published.
    let out = publish("1.1.0", "classifier/model.onnx", &["--latency-budget", "5s"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("already published clf@1.1.0"));
    let out = publish("1.1.0", "classifier/model.onnx", &["--tolerance", "top-k=1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("already published with these bytes and another golden set"), "{err}");

    let listed = artifacts();
    assert_eq!(listed.as_array().map(Vec::len), Some(2), "{listed}");
    assert_eq!(listed[0]["golden"]["local_check"], "skipped", "{listed}");
    assert_eq!(listed[1]["golden"]["local_check"], "passed", "{listed}");
    let audit = op(&server, &token).args(["audit", "list", "--json"]).output().unwrap();
    let audit: serde_json::Value = serde_json::from_slice(&audit.stdout).unwrap();
    let checks: Vec<_> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "artifact.published")
        .map(|e| (e["subject"].as_str().unwrap().to_owned(), e["detail"]["golden"]["local_check"].clone()))
        .collect();
    assert!(checks.contains(&("clf@1.0.0".into(), "skipped".into())), "{checks:?}");
    assert!(checks.contains(&("clf@1.1.0".into(), "passed".into())), "{checks:?}");

    // `artifact show` prints the model's signature and what the check expects of it.
    let out = op(&server, &token).args(["artifact", "show", "clf@1.1.0"]).output().unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for needle in [
        "local check on the publisher's machine: passed",
        "model       onnx",
        "input   x  float32 [1, 4]",
        "output  probs  float32 [1, 3]",
        "8 golden case(s) within abs=0.0001,rel=0.0001",
        "p95 latency ≤ 5000000 µs; memory: no budget; no drift limit",
    ] {
        assert!(shown.contains(needle), "{needle:?} not in:\n{shown}");
    }
    // A golden set changed in the server's store is refused, not shown.
    let sha = listed[1]["golden"]["sha256"].as_str().unwrap();
    let stored = dir.join("blobs/sha256").join(&sha[..2]).join(sha);
    let mut bytes = std::fs::read(&stored).unwrap();
    bytes[0] ^= 1;
    std::fs::write(&stored, bytes).unwrap();
    let out = op(&server, &token).args(["artifact", "show", "clf@1.1.0"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("is not the signed one"), "{err}");

    // Golden-set options mean nothing without a golden set.
    let out = op(&server, &token)
        .args(["artifact", "publish", "--name", "clf", "--version", "1.2.0", "--key", &key, "--tolerance", "top-k=1"])
        .arg("--file")
        .arg(model_fixture("classifier/model.onnx"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--golden"));
    server.stop();
}
