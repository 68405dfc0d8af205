//! Criterion 1: install, then a failing version rolls back by itself and is never retried.

use crate::support::*;

fn lines(path: &std::path::Path) -> usize {
    std::fs::read_to_string(path).map(|t| t.lines().count()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn installs_then_rolls_back_a_failing_version_by_itself_and_never_retries_it() {
    let env = Env::new().await;
    let runs = env.path("broken-runs");
    let check = script(&env.probes_dir(), "check", "exit 0");
    let broken = script(
        &env.probes_dir(),
        "broken",
        &format!("echo run >> '{}'\necho 'model failed to load: tensor shape mismatch' >&2\nexit 4", runs.display()),
    );
    let mut agent = env.start_agent("cam-001", &[("check", check), ("broken", broken)], None).await;
    // Before any install: nothing is installed, which is not the same as unhealthy.
    let st = agent.status();
    assert_eq!((st["health"].as_str(), st["healthy"].as_bool()), (Some("nothing_installed"), Some(false)), "{st}");
    let text = agent.status_text();
    assert!(text.contains("health    nothing installed yet") && !text.contains("not healthy"), "{text}");

    // v1: installed, healthy, and the server knows.
    let v1 = blob("v1", 1 << 20);
    let (r1, e1) = update(&env, &agent, "1.0.0", &v1, &Probe::new("exec:check")).await;
    assert_succeeded(&e1, &agent);
    assert_eq!(agent.sha(), Some(sha_hex(&v1)), "the application's file holds v1");
    let st = agent.status();
    assert_eq!(st["healthy"], true, "{st}");
    assert_eq!(st["active"]["version"], "1.0.0", "{st}");
    assert_eq!(st["active"]["sha256"], sha_hex(&v1), "{st}");
    assert_eq!(env.rollout_view(&r1).await["state"], "completed");
    wait!(
        "the server to learn that the device runs v1",
        agent,
        env.device(&agent.name).await.is_some_and(|d| d["artifacts"][0]["sha256"] == sha_hex(&v1))
    );

    // v2 fails its probe: the agent rolls back on its own and reports why. Meanwhile the
    // application keeps reading its file: every read is all of v1 or all of v2.
    let v2 = blob("v2", 1 << 20);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (path, stop) = (agent.path.clone(), stop.clone());
        let allowed = [sha_hex(&v1), sha_hex(&v2)];
        std::thread::spawn(move || {
            let (mut reads, mut torn) = (0u64, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                match std::fs::read(&path) {
                    Ok(b) if allowed.contains(&sha_hex(&b)) => reads += 1,
                    Ok(b) => torn.push(b.len()),
                    Err(e) => torn.push(usize::MAX - e.raw_os_error().unwrap_or(0) as usize),
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            (reads, torn)
        })
    };
    let (r2, e2) = update(&env, &agent, "2.0.0", &v2, &Probe::new("exec:broken")).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (reads, torn) = reader.join().unwrap();
    assert!(torn.is_empty(), "the application read a partial or missing file: {torn:?}");
    assert!(reads > 10, "the reader hardly ran ({reads} reads)");
    let reason = assert_failed(&e2, &["probe failed", "exec:broken", "status 4", "tensor shape mismatch"], &agent);
    assert_eq!(agent.sha(), Some(sha_hex(&v1)), "rolled back: the file holds v1's bytes again");
    assert_eq!(agent.previous_sha(), Some(sha_hex(&v1)));
    // The journal says what the previous slot holds, as the disk does.
    assert_eq!(agent.journal()["previous"]["sha256"], sha_hex(&v1));
    let st = agent.status();
    assert_eq!(st["active"]["version"], "1.0.0", "{st}");
    assert_eq!(st["healthy"], true, "v1 runs again and is healthy: {st}");
    // The kept file is v1's own bytes again: no older version to go back to.
    assert_eq!(st["previous"], serde_json::Value::Null, "{st}");
    assert!(agent.status_text().contains("previous  none older than 1.0.0 is kept"), "{}", agent.status_text());
    assert_eq!(st["last_outcome"]["state"], "failed", "{st}");
    assert_eq!(st["last_outcome"]["version"], "2.0.0", "{st}");
    assert_eq!(st["last_outcome"]["reason"], reason.as_str(), "{st}");
    assert_eq!(env.rollout_view(&r2).await["state"], "paused", "the halt rule stopped the rollout");
    let events = env.outcome_events(&agent.name, &r2).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["action"], "device.failed");
    assert_eq!(lines(&runs), 1, "the failing probe ran once");
    wait!(
        "the server to learn that the device runs v1 again",
        agent,
        env.device(&agent.name).await.is_some_and(|d| d["artifacts"][0]["version"] == "1.0.0")
    );

    // Not retried: neither by the running agent (it keeps seeing the assignment)…
    let journal = agent.journal();
    let log_len = agent.log_text().len();
    tokio::time::sleep(POLL * 8).await;
    let watch = |agent: &Agent| {
        assert_eq!(agent.journal(), journal, "the journal changed: a new attempt?\n{}", agent.log_tail());
        assert_eq!(lines(&runs), 1, "the failing probe ran again\n{}", agent.log_tail());
        assert_eq!(agent.sha(), Some(sha_hex(&v1)));
        assert!(agent.partials().is_empty(), "a download started again: {:?}", agent.partials());
    };
    watch(&agent);
    let since = agent.log_text()[log_len..].to_owned();
    assert!(!since.contains("rolled back") && !since.contains("installed"), "new install activity:\n{since}");
    assert_eq!(env.outcome_events(&agent.name, &r2).await.len(), 1);

    // …nor after a restart (the refusal is in the journal, not in memory).
    agent.stop().await;
    agent.start();
    wait!("the restarted agent to check in", agent, agent.log_text().matches("agent running").count() >= 2);
    tokio::time::sleep(POLL * 8).await;
    watch(&agent);
    assert_eq!(env.outcome_events(&agent.name, &r2).await.len(), 1);
    assert_eq!(env.device_rollout(&agent.name, &r2).await.unwrap()["state"], "failed");
}
