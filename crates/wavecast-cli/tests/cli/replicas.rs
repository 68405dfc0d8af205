//! Replicas that share nothing but PostgreSQL and an S3 bucket (issue 13), as real processes
//! behind a round-robin balancer, with a real S3-compatible server (moto).

use std::process::Command;
use std::time::{Duration, Instant};

use wavecast_test_support::PgDatabase;
use wavecast_test_support::proxy::{Balancer, ThrottledProxy};
use wavecast_test_support::s3::S3Server;

use crate::rollouts::Sim;
use crate::{Installation, Server, ServerOptions, installation, ok, op_url};

const BUCKET: &str = "wavecast-replicas";

fn json(cmd: &mut Command) -> serde_json::Value {
    serde_json::from_str(&ok(cmd)).unwrap()
}

/// Polls `rollout show` through `url` until `done` holds.
async fn wait(
    url: &str,
    token: &str,
    id: &str,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let r = json(op_url(url, token, None).args(["rollout", "show", id, "--json"]));
        if done(&r) {
            return r;
        }
        assert!(Instant::now() < deadline, "rollout {id} did not become {what}: {r:#}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn model(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len.div_ceil(8))
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .take(len)
        .collect()
}

/// Two replicas, each with its own copy of the installation's files and no blob folder: a
/// publish through one survives the other's restart mid-upload; 30 devices spread over both
/// install it; the bucket going away mid-rollout makes devices wait, not fail; an object
/// corrupted in the bucket is refused by every device that fetches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_one_bucket_and_nothing_else() {
    let s3 = S3Server::start();
    s3.create_bucket(BUCKET);
    // The replicas reach the bucket over a link the test can cut.
    let link = ThrottledProxy::start(([127, 0, 0, 1], s3.port()).into(), u64::MAX).await;
    let db = PgDatabase::create().await;
    let tmp = tempfile::tempdir().unwrap();
    let (dir_a, dir_b) = (tmp.path().join("a"), tmp.path().join("b"));
    let Installation { report, token, key } = installation(&dir_a);
    // Each replica has the installation's files (keys, root.json) as its own copy.
    assert!(Command::new("cp").arg("-a").arg(&dir_a).arg(&dir_b).status().unwrap().success());
    let options = |port: Option<u16>| ServerOptions {
        port,
        args: ["--blob-store", &format!("s3://{BUCKET}/fleet"), "--blob-store-endpoint", &link.url()]
            .map(String::from)
            .to_vec(),
        env: s3.env().map(|(k, v)| (k.to_owned(), v.to_owned())).to_vec(),
        ..ServerOptions::default()
    };
    let a = Server::start_with(&dir_a, Some(db.url()), options(None)).await;
    let mut b = Server::start_with(&dir_b, Some(db.url()), options(None)).await;
    let b_port = b.port();
    let lb = Balancer::start(vec![([127, 0, 0, 1], a.port()).into(), ([127, 0, 0, 1], b_port).into()]).await;
    let publish = |url: &str, version: &str, bytes: &[u8]| {
        let file = tmp.path().join(format!("model-{version}"));
        std::fs::write(&file, bytes).unwrap();
        let mut cmd = op_url(url, &token, None);
        cmd.args(["artifact", "publish", "--name", "yolo", "--version", version, "--key", &key, "--file"]).arg(file);
        cmd
    };

    // A publish through A, slowed down so replica B restarts while it streams.
    let (v1, v2, v3) = (model(200_000, 1), model(12 << 20, 2), model(300_000, 3));
    ok(&mut publish(&a.url, "1.0.0", &v1));
    let slow = ThrottledProxy::start(([127, 0, 0, 1], a.port()).into(), u64::MAX).await;
    slow.set_upload_rate(3 << 20);
    let mut upload = publish(&slow.url(), "2.0.0", &v2);
    let uploading = std::thread::spawn(move || upload.output().unwrap());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    drop(b); // kill -9
    b = Server::start_with(&dir_b, Some(db.url()), options(Some(b_port))).await;
    assert!(!uploading.is_finished(), "the upload should still be streaming when B is back");
    let out = uploading.join().unwrap();
    assert!(out.status.success(), "the publish through A failed: {}", String::from_utf8_lossy(&out.stderr));
    let sha2 = wavecast_core::Sha256Digest::of(&v2).to_hex();
    let via_b =
        reqwest::Client::new().get(format!("{}/api/v1/blobs/{sha2}", b.url)).bearer_auth(&token).send().await.unwrap();
    assert!(via_b.status().is_success() && via_b.bytes().await.unwrap() == v2, "B serves what A published");
    assert_eq!(s3.keys(BUCKET, "fleet/").len(), 2, "one object per artifact, nothing else");

    // 30 devices through the balancer, so spread over both replicas.
    let root = report["root_json"].as_str().unwrap();
    let sim = Sim::start_url(
        &lb.url(),
        &token,
        root,
        &tmp.path().join("fleet"),
        "plant-7",
        &["--devices", "30", "--poll-interval", "500ms"],
        None,
    );
    let create = |artifact: &str, extra: &[&str]| {
        let r = json(
            op_url(&lb.url(), &token, None)
                .args(["rollout", "create", "--group", "plant-7", "--probe", "exec:sim-check", "--json"])
                .args(["--artifact", artifact, "--waves", "100", "--device-timeout", "120s"])
                .args(extra),
        );
        r["id"].as_str().unwrap().to_owned()
    };
    let id = create("yolo@1.0.0", &[]);
    let done = wait(&lb.url(), &token, &id, "completed", |r| r["state"] == "completed").await;
    assert_eq!(done["counts"]["succeeded"], 30, "{done:#}");

    // The bucket goes away while devices download 2.0.0: they wait, then finish.
    link.set_down(true);
    let id = create("yolo@2.0.0", &[]);
    let waiting = wait(&lb.url(), &token, &id, "with a device waiting", |r| {
        r["in_progress"]["devices"].as_array().is_some_and(|d| d.iter().any(|d| !d["progress"]["waiting"].is_null()))
    })
    .await;
    assert_eq!(waiting["counts"]["failed"], 0, "{waiting:#}");
    let reason = waiting["in_progress"]["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|d| d["progress"]["waiting"]["reason"].as_str())
        .unwrap();
    assert!(reason.contains("503"), "{reason}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    link.set_down(false);
    let done = wait(&lb.url(), &token, &id, "completed", |r| r["state"] == "completed").await;
    assert_eq!(done["counts"]["succeeded"], 30, "nobody failed for the store's outage: {done:#}");
    assert_eq!(sim.file("sim-0001"), v2);
    assert_eq!(sim.file("sim-0030"), v2);

    // One byte changed in the bucket: refused by the devices, which keep 2.0.0.
    ok(&mut publish(&b.url, "3.0.0", &v3));
    let sha3 = wavecast_core::Sha256Digest::of(&v3).to_hex();
    let mut corrupt = v3.clone();
    corrupt[v3.len() / 2] ^= 1;
    s3.put(BUCKET, &format!("fleet/sha256/{}/{sha3}", &sha3[..2]), &corrupt);
    let id = create("yolo@3.0.0", &["--halt-after", "1"]);
    let halted = wait(&lb.url(), &token, &id, "paused", |r| r["state"] == "paused").await;
    let reason = halted["failures"]["devices"][0]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("do not match the signed target"), "{halted:#}");
    assert_eq!(halted["counts"]["succeeded"], 0, "{halted:#}");
    for device in ["sim-0001", "sim-0015", "sim-0030"] {
        assert_eq!(sim.file(device), v2, "{device} kept 2.0.0");
    }
    for server in [&a, &b] {
        let status = json(op_url(&server.url, &token, None).args(["status", "--json"]));
        assert_eq!(status["devices"]["enrolled"], 30, "{status:#}");
        assert_eq!(status["blob_store"], format!("s3://{BUCKET}/fleet"), "{status:#}");
    }
    b.stop();
}
