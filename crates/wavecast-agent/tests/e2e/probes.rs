//! Criterion 2: exec, HTTP and file probes, each passing and failing; timeout, attempts,
//! interval, initial delay; and a probe naming what the device does not list (a binary, a
//! readiness file, a host) is refused without running anything, touching any file or making any
//! connection.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use crate::attacker::Proxy;
use crate::support::*;

fn read_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).map(|t| t.lines().map(str::to_owned).collect()).unwrap_or_default()
}

/// A stand-in for the application: once `path` holds `sha256` (the swap happened), run `then`.
fn app_after_swap(
    path: PathBuf,
    sha256: String,
    delay: Duration,
    then: impl FnOnce() + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            if file_sha(&path).as_deref() == Some(sha256.as_str()) {
                tokio::time::sleep(delay).await;
                then();
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_probes_pass_fail_time_out_retry_and_respect_the_allowlist() {
    let env = Env::new().await;
    let dir = env.probes_dir();
    let record = env.path("ok-record");
    let pid_file = env.path("slow-pid");
    let counter = env.path("flaky-count");
    let times = env.path("flaky-times");
    let canary = env.path("evil-ran");
    let ok = script(
        &dir,
        "ok",
        &format!(
            "R='{}'\nprintf '%s\\n' \"$@\" > \"$R.args\"\nprintf '%s\\n' \"$WAVECAST_ARTIFACT_PATH\" > \"$R.env\"\n\
             sha256sum \"$WAVECAST_ARTIFACT_PATH\" | cut -d' ' -f1 > \"$R.sha\"\nexit 0",
            record.display()
        ),
    );
    let fail = script(&dir, "fail", "echo 'model did not load' >&2\nexit 3");
    let slow = script(&dir, "slow", &format!("echo $$ > '{}'\nexec sleep 30", pid_file.display()));
    let flaky = script(
        &dir,
        "flaky",
        &format!(
            "C='{}'\nn=$(( $(cat \"$C\" 2>/dev/null || echo 0) + 1 ))\necho $n > \"$C\"\ndate +%s%N >> '{}'\n\
             [ \"$n\" -ge 3 ] || {{ echo \"warming up ($n)\" >&2; exit 1; }}",
            counter.display(),
            times.display()
        ),
    );
    // On PATH for the agent, but not on its allowlist.
    let unlisted = env.path("unlisted");
    script(&unlisted, "evil", &format!("touch '{}'", canary.display()));
    let missing = dir.join("not-installed");
    let mut agent = env
        .agent("dev-1", &[("ok", ok), ("fail", fail), ("slow", slow), ("flaky", flaky), ("missing", missing)], None)
        .await;
    agent.extra_path = Some(unlisted.clone());
    agent.start();
    env.wait_enrolled(&agent).await;

    // exec pass: the artifact path is the last argument and in WAVECAST_ARTIFACT_PATH, and the
    // probe sees the new bytes.
    let v1 = blob("e1", 8 * 1024);
    let (_, e) = update(&env, &agent, "1.0.0", &v1, &Probe::new("exec:ok --strict")).await;
    assert_succeeded(&e, &agent);
    let path = agent.path.display().to_string();
    assert_eq!(read_lines(&PathBuf::from(format!("{}.args", record.display()))), ["--strict", path.as_str()]);
    assert_eq!(read_lines(&PathBuf::from(format!("{}.env", record.display()))), [path.as_str()]);
    assert_eq!(read_lines(&PathBuf::from(format!("{}.sha", record.display()))), [sha_hex(&v1)]);
    let good = sha_hex(&v1);

    // exec fail: exit status and stderr tail in the reason; rolled back.
    let (id, e) = update(&env, &agent, "2.0.0", &blob("e2", 8 * 1024), &Probe::new("exec:fail")).await;
    let r_fail = assert_failed(&e, &["probe failed", "exec:fail exited with status 3", "model did not load"], &agent);
    assert_eq!(agent.sha().as_deref(), Some(good.as_str()));
    env.settle(&id).await;

    // timeout: a probe that hangs is killed after timeout_ms and counts as unhealthy.
    let started = std::time::Instant::now();
    let (id, e) =
        update(&env, &agent, "3.0.0", &blob("e3", 8 * 1024), &Probe::new("exec:slow").timeout(300).attempts(1)).await;
    let took = started.elapsed();
    let r_timeout =
        assert_failed(&e, &["probe failed", "exec:slow did not finish within 300 ms and was killed"], &agent);
    assert!(took < Duration::from_secs(20), "the hung probe was not cut short: {took:?}");
    let pid = std::fs::read_to_string(&pid_file).unwrap().trim().to_owned();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    assert!(!String::from_utf8_lossy(&cmdline).contains("sleep"), "probe process {pid} still runs");
    assert_eq!(agent.sha().as_deref(), Some(good.as_str()));
    env.settle(&id).await;

    // attempts: fails twice, passes the third time. attempts=3 succeeds (with the interval
    // between attempts honoured)…
    let v4 = blob("e4", 8 * 1024);
    let (_, e) = update(&env, &agent, "4.0.0", &v4, &Probe::new("exec:flaky").attempts(3).interval(150)).await;
    assert_succeeded(&e, &agent);
    assert_eq!(std::fs::read_to_string(&counter).unwrap().trim(), "3");
    let stamps: Vec<u128> = read_lines(&times).iter().map(|l| l.parse().unwrap()).collect();
    assert_eq!(stamps.len(), 3);
    for w in stamps.windows(2) {
        assert!(w[1] - w[0] >= 150_000_000, "attempts {}ms apart, interval is 150ms", (w[1] - w[0]) / 1_000_000);
    }
    let good = sha_hex(&v4);
    // …attempts=2 fails.
    std::fs::remove_file(&counter).unwrap();
    let (id, e) =
        update(&env, &agent, "5.0.0", &blob("e5", 8 * 1024), &Probe::new("exec:flaky").attempts(2).interval(100)).await;
    let r_attempts = assert_failed(&e, &["probe failed", "attempt 2/2", "warming up (2)"], &agent);
    assert_eq!(std::fs::read_to_string(&counter).unwrap().trim(), "2");
    assert_eq!(agent.sha().as_deref(), Some(good.as_str()));
    env.settle(&id).await;

    // Not on the allowlist: refused without running anything (the binary is on PATH).
    let (id, e) = update(&env, &agent, "6.0.0", &blob("e6", 8 * 1024), &Probe::new("exec:evil")).await;
    let r_unlisted =
        assert_failed(&e, &["probe could not run", "not on this device's allowlist", "nothing was run"], &agent);
    assert!(!canary.exists(), "the unlisted probe ran");
    assert_eq!(agent.sha().as_deref(), Some(good.as_str()));
    env.settle(&id).await;

    // Allowlisted but missing: could not run, distinct from unhealthy.
    let (id, e) = update(&env, &agent, "7.0.0", &blob("e7", 8 * 1024), &Probe::new("exec:missing")).await;
    let r_missing = assert_failed(&e, &["probe could not run", "exec:missing", "could not be started"], &agent);
    assert_eq!(agent.sha().as_deref(), Some(good.as_str()));
    env.settle(&id).await;

    let all = [&r_fail, &r_timeout, &r_attempts, &r_unlisted, &r_missing];
    for (i, a) in all.iter().enumerate() {
        for b in &all[i + 1..] {
            assert_ne!(a, b);
        }
    }
    assert!(!canary.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_probes_pass_on_2xx_and_fail_on_503_or_silence() {
    let env = Env::new().await;
    let answer = Arc::new(AtomicU16::new(200));
    let hits = Arc::new(AtomicUsize::new(0));
    let app = {
        let (answer, hits) = (answer.clone(), hits.clone());
        axum::Router::new()
            .route(
                "/health",
                axum::routing::get(move || async move {
                    hits.fetch_add(1, Ordering::SeqCst);
                    axum::http::StatusCode::from_u16(answer.load(Ordering::SeqCst)).unwrap()
                }),
            )
            .route(
                "/hang",
                axum::routing::get(|| async {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    "late"
                }),
            )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let agent = env.start_agent("dev-1", &[], None).await;

    let v1 = blob("h1", 8 * 1024);
    let (_, e) = update(&env, &agent, "1.0.0", &v1, &Probe::new(format!("{base}/health"))).await;
    assert_succeeded(&e, &agent);
    assert!(hits.load(Ordering::SeqCst) >= 1);
    assert_eq!(agent.sha(), Some(sha_hex(&v1)));

    answer.store(503, Ordering::SeqCst);
    let before = hits.load(Ordering::SeqCst);
    let (id, e) =
        update(&env, &agent, "2.0.0", &blob("h2", 8 * 1024), &Probe::new(format!("{base}/health")).attempts(2)).await;
    assert_failed(&e, &["probe failed", "attempt 2/2", "/health answered 503"], &agent);
    assert_eq!(hits.load(Ordering::SeqCst) - before, 2, "two attempts, two requests");
    assert_eq!(agent.sha(), Some(sha_hex(&v1)));
    env.settle(&id).await;

    let (id, e) =
        update(&env, &agent, "3.0.0", &blob("h3", 8 * 1024), &Probe::new(format!("{base}/hang")).timeout(300)).await;
    assert_failed(&e, &["probe failed", "/hang did not answer within 300 ms"], &agent);
    assert_eq!(agent.sha(), Some(sha_hex(&v1)));
    env.settle(&id).await;

    answer.store(204, Ordering::SeqCst);
    let v4 = blob("h4", 8 * 1024);
    let (_, e) = update(&env, &agent, "4.0.0", &v4, &Probe::new(format!("{base}/health"))).await;
    assert_succeeded(&e, &agent);
    assert_eq!(agent.sha(), Some(sha_hex(&v4)));
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_probes_wait_for_the_application_and_ignore_a_stale_readiness_file() {
    let env = Env::new().await;
    let ready = env.path("model.ready");
    let mut agent = env.agent("dev-1", &[], None).await;
    agent.append_config(&format!("[readiness_files]\nmodel-ready = {:?}", ready.display().to_string()));
    agent.start();
    env.wait_enrolled(&agent).await;
    let probe = |timeout| Probe::new("file:model-ready").timeout(timeout);

    // The application loads the new model 300 ms after the swap, then writes its file.
    let v1 = blob("f1", 8 * 1024);
    let app = {
        let ready = ready.clone();
        app_after_swap(agent.path.clone(), sha_hex(&v1), Duration::from_millis(300), move || {
            std::fs::write(&ready, b"loaded").unwrap()
        })
    };
    let (_, e) = update(&env, &agent, "1.0.0", &v1, &probe(5_000)).await;
    assert_succeeded(&e, &agent);
    assert!(app.is_finished(), "the probe passed before the application wrote its file");
    assert_eq!(agent.sha(), Some(sha_hex(&v1)));

    // Nobody writes it for v2; the file left by v1 must not count.
    assert!(ready.exists());
    let (id, e) = update(&env, &agent, "2.0.0", &blob("f2", 8 * 1024), &probe(800)).await;
    assert_failed(&e, &["probe failed", "readiness file", "was not written within 800 ms"], &agent);
    assert!(!ready.exists(), "the agent did not remove the stale readiness file before the swap");
    assert_eq!(agent.sha(), Some(sha_hex(&v1)));
    env.settle(&id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_delay_holds_the_first_attempt_back() {
    let env = Env::new().await;
    let marker = env.path("swapped-at");
    let attempts = env.path("aged-attempts");
    // Healthy only if the model had 1000 ms to load since the swap (the marker's time).
    let aged = script(
        &env.probes_dir(),
        "aged",
        &format!(
            "now=$(date +%s%N)\necho \"$now\" >> '{attempts}'\nm=$(cat '{marker}' 2>/dev/null)\n\
             [ -n \"$m\" ] || {{ echo 'no swap marker yet' >&2; exit 2; }}\n\
             age=$(( (now - m) / 1000000 ))\n\
             [ \"$age\" -ge 1000 ] || {{ echo \"probed ${{age}} ms after the swap; loading takes 1000 ms\" >&2; exit 1; }}",
            attempts = attempts.display(),
            marker = marker.display()
        ),
    );
    let agent = env.start_agent("dev-1", &[("aged", aged)], None).await;
    let mark = |sha: String| {
        let marker = marker.clone();
        app_after_swap(agent.path.clone(), sha, Duration::ZERO, move || {
            std::fs::write(&marker, now_ns().to_string()).unwrap()
        })
    };

    let v1 = blob("d1", 8 * 1024);
    let app = mark(sha_hex(&v1));
    let (_, e) = update(&env, &agent, "1.0.0", &v1, &Probe::new("exec:aged").initial_delay(1500)).await;
    assert_succeeded(&e, &agent);
    app.await.unwrap();
    let swapped: u128 = std::fs::read_to_string(&marker).unwrap().trim().parse().unwrap();
    let first: u128 = read_lines(&attempts)[0].parse().unwrap();
    assert!(
        first >= swapped + 1_000_000_000,
        "first attempt {} ms after the swap; initial delay is 1500 ms",
        (first as i128 - swapped as i128) / 1_000_000
    );

    // Without the delay the same probe runs too early and fails.
    std::fs::remove_file(&marker).unwrap();
    std::fs::remove_file(&attempts).unwrap();
    let v2 = blob("d2", 8 * 1024);
    let app = mark(sha_hex(&v2));
    let (id, e) = update(&env, &agent, "2.0.0", &v2, &Probe::new("exec:aged").initial_delay(0)).await;
    let reason = assert_failed(&e, &["probe failed", "exec:aged exited with status"], &agent);
    assert!(reason.contains("after the swap") || reason.contains("no swap marker"), "{reason}");
    assert_eq!(agent.sha(), Some(sha_hex(&v1)));
    app.abort();
    env.settle(&id).await;
}

/// A plain HTTP listener that answers 200 to everything and counts the connections it accepts.
async fn counting_listener(addr: &str) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let local = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await;
            });
        }
    });
    (local, connections)
}

/// Rewrites the probe of every assignment in a doc (a compromised control plane).
fn set_probe(doc: &mut Value, probe: &Value) -> bool {
    let Some(items) = doc["assignments"].as_array_mut() else { return false };
    for a in items.iter_mut() {
        a["probe"] = probe.clone();
    }
    !items.is_empty()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_touch_nothing_the_device_does_not_list() {
    let env = Env::new().await;
    let proxy = Proxy::start(&env.url, &env.install).await;
    // Another loopback address, not on the device's list (loopback by default is localhost,
    // 127.0.0.1 and ::1): it must never see a connection.
    let (unlisted, connections) = counting_listener("127.0.0.2:0").await;
    // A listed application that redirects there.
    let app = axum::Router::new().route(
        "/moved",
        axum::routing::get(
            move || async move { axum::response::Redirect::temporary(&format!("http://{unlisted}/health")) },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let moved = format!("http://{}/moved", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let ready = env.path("model.ready");
    let canary = env.path("canary");
    std::fs::write(&ready, b"left by the application").unwrap();
    std::fs::write(&canary, b"keep me").unwrap();
    let mut agent = env.agent("dev-1", &[], Some(&proxy.url)).await;
    agent.append_config(&format!("[readiness_files]\nmodel-ready = {:?}", ready.display().to_string()));
    agent.start();
    env.wait_enrolled(&agent).await;

    // The operator API takes no path for a file probe at all.
    let (status, body) = env
        .request(
            "POST",
            "/api/v1/rollouts",
            Some(json!({ "artifact": "model@0.0.1", "group": env.group, "waves": [100], "probe": format!("file:{}", canary.display()) })),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::BAD_REQUEST, "{body}");
    assert!(body.to_string().contains("[readiness_files]"), "{body}");

    let spec = |extra: Value| {
        let mut p = json!({ "timeout_ms": 2000, "attempts": 1, "interval_ms": 100, "initial_delay_ms": 0 });
        for (k, v) in extra.as_object().unwrap() {
            p[k] = v.clone();
        }
        p
    };
    let canary_path = canary.display().to_string();
    // (case, the probe the operator names, what the server sends instead (if anything), words
    // of the refusal)
    let cases: Vec<(&str, String, Option<Value>, &[&str])> = vec![
        (
            "a readiness file the device does not list",
            "file:canary".into(),
            None,
            &["probe could not run", "not on this device's list of readiness files", "no file was touched"],
        ),
        (
            "a server naming a path as the readiness file",
            "file:model-ready".into(),
            Some(spec(json!({ "kind": "file", "name": canary_path }))),
            &["not on this device's list of readiness files", "no file was touched"],
        ),
        (
            "a server naming a path the way rollouts once did",
            "file:model-ready".into(),
            Some(spec(json!({ "kind": "file", "path": canary_path }))),
            &["not on this device's list of readiness files", "no file was touched"],
        ),
        (
            "a host the device does not list",
            format!("http://{unlisted}/health"),
            None,
            &["probe could not run", "asks host 127.0.0.2", "nothing was requested"],
        ),
        ("a listed host redirecting to one that is not", moved.clone(), None, &["probe failed", "not followed"]),
    ];
    for (i, (case, probe, forged, words)) in cases.into_iter().enumerate() {
        if let Some(p) = forged {
            proxy.set_rewrite(move |doc| set_probe(doc, &p));
        }
        let (id, e) = update(&env, &agent, &format!("1.0.{i}"), &blob(case, 4096), &Probe::new(probe)).await;
        proxy.clear_rewrite();
        let reason = assert_failed(&e, words, &agent);
        assert_eq!(std::fs::read(&canary).unwrap(), b"keep me", "{case}: {reason}");
        assert_eq!(std::fs::read(&ready).unwrap(), b"left by the application", "{case}: {reason}");
        assert_eq!(connections.load(Ordering::SeqCst), 0, "{case}: a connection to an unlisted host");
        assert_eq!(agent.sha(), None, "{case}: nothing stays installed");
        env.settle(&id).await;
    }

    // Listed, the same host is asked: the listener would have seen the connections above.
    agent.stop().await;
    agent.append_config("[http_probes]\nhosts = [\"127.0.0.2\"]");
    agent.start();
    let v = blob("listed", 4096);
    let (_, e) = update(&env, &agent, "2.0.0", &v, &Probe::new(format!("http://{unlisted}/health"))).await;
    assert_succeeded(&e, &agent);
    assert!(connections.load(Ordering::SeqCst) >= 1, "the listed host was not asked");
    assert_eq!(agent.sha(), Some(sha_hex(&v)));
    server.abort();
}
