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
