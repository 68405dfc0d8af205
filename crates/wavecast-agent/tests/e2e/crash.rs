//! Criterion 4: SIGKILL at every crash point, several times each, with passing and failing
//! probes; after the restart the file holds exactly the old or exactly the new verified bytes,
//! the previous version is kept, and the server hears the true outcome exactly once.

use serde_json::Value;

use crate::support::*;

/// For each entry of `fails` (probe fails or passes) publishes a new version, lets the agent
/// kill itself at `point`, restarts it and checks the outcome. The first update is the
/// device's first install (no previous version).
async fn crash_loop(point: &str, fails: &[bool], size: usize) {
    let env = Env::new().await;
    let ok = script(&env.probes_dir(), "ok", "exit 0");
    let bad = script(&env.probes_dir(), "bad", "echo 'unhealthy on purpose' >&2\nexit 1");
    let mut agent = env.start_agent("dev-1", &[("ok", ok), ("bad", bad)], None).await;
    agent.stop().await;

    let mut old: Option<Vec<u8>> = None;
    for (i, &fail) in fails.iter().enumerate() {
        let ctx = format!("{point}, iteration {i} (probe {})", if fail { "fails" } else { "passes" });
        let old_sha = old.as_deref().map(sha_hex);
        let new = blob(&format!("{point}-{i}"), size);
        let target = format!("model@1.{i}.0");
        env.publish(&target, &new, None).await;
        let id = env.rollout(&target, &Probe::new(if fail { "exec:bad" } else { "exec:ok" })).await;

        agent.start_with(Some(point));
        agent.wait_killed().await;
        let hooks = agent.log_text().matches("test hook: killing the agent with SIGKILL").count();
        assert_eq!(hooks, i + 1, "{ctx}: the agent did not die at the hook\n{}", agent.log_tail());
        let on_disk = agent.sha();
        assert!(
            on_disk == old_sha || on_disk == Some(sha_hex(&new)),
            "{ctx}: right after the crash the file holds neither the old nor the new version"
        );
        if point == "mid-download" {
            let partial = agent.partials();
            assert_eq!(partial.len(), 1, "{ctx}: {partial:?}");
            let len = std::fs::metadata(agent.path.with_file_name(&partial[0])).unwrap().len();
            assert!(len < size as u64, "{ctx}: the crash was not mid-download ({len} of {size} bytes)");
        }

        agent.start();
        let entry = env.wait_final(&agent, &id).await;
        wait!(
            format!("{ctx}: the agent to go idle with an empty outbox"),
            agent,
            agent.journal()["phase"]["phase"] == "idle" && agent.outbox().is_empty()
        );
        // Room for a duplicate report to arrive, if one were going to.
        tokio::time::sleep(POLL * 4).await;

        let (state, expected) = if fail { ("failed", old_sha.clone()) } else { ("succeeded", Some(sha_hex(&new))) };
        assert_eq!(entry["state"], state, "{ctx}: {entry}\n{}", agent.log_tail());
        if fail {
            assert!(entry["reason"].as_str().unwrap_or_default().contains("unhealthy on purpose"), "{ctx}: {entry}");
        }
        assert_eq!(agent.sha(), expected, "{ctx}: the file does not match the outcome reported");
        assert_eq!(agent.previous_sha(), old_sha, "{ctx}: the previous version is not kept");
        let events = env.outcome_events(&agent.name, &id).await;
        assert_eq!(events.len(), 1, "{ctx}: the server heard the outcome {} times: {events:?}", events.len());
        let action = if fail { "device.failed" } else { "device.updated" };
        assert_eq!(events[0]["action"], action, "{ctx}");
        assert_eq!(env.device_rollout(&agent.name, &id).await.unwrap()["state"], state, "{ctx}");
        let st = agent.status();
        assert_eq!(st["active"]["sha256"].as_str().map(str::to_owned), expected, "{ctx}: {st}");
        assert_eq!(st["healthy"], expected.is_some(), "{ctx}: {st}");
        assert!(agent.partials().is_empty(), "{ctx}: left behind {:?}", agent.partials());
        if let Some(sha) = &expected {
            wait!(
                format!("{ctx}: the server to record what the device runs"),
                agent,
                env.device(&agent.name).await.is_some_and(|d| d["artifacts"][0]["sha256"] == sha.as_str())
            );
        }

        env.settle(&id).await;
        agent.stop().await;
        if !fail {
            old = Some(new);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_mid_download() {
    // Large enough that the hook fires with part of the file on disk.
    crash_loop("mid-download", &[false, false, true, false, true], 4 << 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_verify() {
    crash_loop("after-verify", &[false, false, true, false, true], 64 * 1024).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_between_renames() {
    // Starts with a first install that fails: no previous version, so no file afterwards.
    crash_loop("between-renames", &[true, false, true, false, true], 64 * 1024).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_during_probe() {
    crash_loop("during-probe", &[false, true, false, true, false], 64 * 1024).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_before_report() {
    // The hook sits on the healthy path only.
    crash_loop("before-report", &[false, false, false, false], 64 * 1024).await;
}

// The journal log's own write steps: a record torn half-way (the last thing a power cut
// leaves; dropped at the next start, so the step before it is redone), and a compaction killed
// between flushing the compacted log and renaming it in.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_torn_installing_record() {
    crash_loop("torn-installing", &[false, true], 64 * 1024).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_torn_swapping_record() {
    crash_loop("torn-swapping", &[false, true, false], 64 * 1024).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_torn_probing_record() {
    crash_loop("torn-probing", &[false, true, false], 64 * 1024).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_torn_rolling_back_record() {
    // The record is written on the failing path only.
    crash_loop("torn-rolling_back", &[true, true], 64 * 1024).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_torn_outcome_record() {
    crash_loop("torn-idle", &[false, true, false], 64 * 1024).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_during_compaction() {
    crash_loop("during-compaction", &[false, true], 64 * 1024).await;
}

/// An agent upgraded in place finds the journal, the outbox and the rollback record the agent
/// before it kept in separate files, is killed right after its log holds them (before the
/// older files are removed), and goes on from them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_upgraded_in_place_goes_on_from_the_older_files() {
    let env = Env::new().await;
    let ok = script(&env.probes_dir(), "ok", "exit 0");
    let mut agent = env.start_agent("dev-1", &[("ok", ok)], None).await;
    let v1 = blob("v1", 64 * 1024);
    let (r1, e) = update(&env, &agent, "1.0.0", &v1, &Probe::new("exec:ok")).await;
    assert_succeeded(&e, &agent);
    wait!("the outbox to drain", agent, agent.outbox().is_empty());
    agent.stop().await;

    // The state as the agent before the log kept it, with the outcome still queued (as if the
    // server's acknowledgement had been lost).
    let state = agent.state_dir.clone();
    let journal = agent.journal();
    let trusted = agent.trusted();
    let log = std::fs::read_to_string(state.join("journal.log")).unwrap();
    let succeeded = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l.split_once(' ')?.1).ok())
        .flat_map(|r| r["reports"].as_array().cloned().unwrap_or_default())
        .find(|r| r["state"] == "succeeded")
        .unwrap();
    for f in ["journal.log", "delivered.log"] {
        let _ = std::fs::remove_file(state.join(f));
    }
    for d in ["artifacts", "outbox"] {
        std::fs::create_dir_all(state.join(d)).unwrap();
    }
    let pretty = |v: &Value| serde_json::to_vec_pretty(v).unwrap();
    std::fs::write(state.join("artifacts/model.json"), pretty(&journal)).unwrap();
    std::fs::write(state.join("trusted.json"), pretty(&trusted)).unwrap();
    let queued = format!("outbox/00000000000000000001-{}.json", succeeded["id"].as_str().unwrap());
    std::fs::write(state.join(&queued), pretty(&succeeded)).unwrap();
    assert_eq!((agent.journal(), agent.outbox().len()), (journal.clone(), 1), "read from the older files");

    agent.start_with(Some("during-migration"));
    agent.wait_killed().await;
    assert!(state.join("artifacts/model.json").exists(), "killed before the older files were removed");
    agent.start();
    wait!("the queued outcome to be delivered", agent, agent.outbox().is_empty());
    for old in ["artifacts", "outbox", "trusted.json"] {
        assert!(!state.join(old).exists(), "{old} is left");
    }
    assert_eq!(agent.journal(), journal);
    assert_eq!(env.outcome_events(&agent.name, &r1).await.len(), 1, "the outcome sent again was applied once");

    // The next install goes on from what the older journal said: v1 is what is kept.
    let v2 = blob("v2", 64 * 1024);
    let (_, e) = update(&env, &agent, "2.0.0", &v2, &Probe::new("exec:ok")).await;
    assert_succeeded(&e, &agent);
    assert_eq!(agent.sha(), Some(sha_hex(&v2)));
    assert_eq!(agent.previous_sha(), Some(sha_hex(&v1)));
    assert_eq!(agent.journal()["previous"]["version"], "1.0.0", "{}", agent.journal());
    assert!(agent.trusted()["counter"].as_u64() > trusted["counter"].as_u64(), "{}", agent.trusted());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_whose_probe_keeps_killing_the_agent_is_given_up_and_rolled_back() {
    let env = Env::new().await;
    let ok = script(&env.probes_dir(), "ok", "exit 0");
    let mut agent = env.start_agent("dev-1", &[("ok", ok)], None).await;
    let v1 = blob("loop-1", 64 * 1024);
    let (_, e) = update(&env, &agent, "1.0.0", &v1, &Probe::new("exec:ok")).await;
    assert_succeeded(&e, &agent);
    agent.stop().await;

    let v2 = blob("loop-2", 64 * 1024);
    env.publish("model@2.0.0", &v2, None).await;
    let id = env.rollout("model@2.0.0", &Probe::new("exec:ok")).await;
    // Every start dies while probing, as a model that takes the device down would.
    for n in 1..=3 {
        agent.start_with(Some("during-probe"));
        agent.wait_killed().await;
        assert_eq!(agent.log_text().matches("test hook: killing the agent").count(), n);
        assert_eq!(agent.sha(), Some(sha_hex(&v2)), "v2 is in place while probing");
    }
    // The fourth start gives up on v2 without probing it again.
    agent.start_with(Some("during-probe"));
    let entry = env.wait_final(&agent, &id).await;
    assert_failed(&entry, &["the agent restarted 3 times while probing 2.0.0", "giving up"], &agent);
    assert!(agent.running(), "{}", agent.log_tail());
    assert_eq!(agent.sha(), Some(sha_hex(&v1)), "rolled back to v1");
    assert_eq!(agent.previous_sha(), Some(sha_hex(&v1)));
    wait!("the outbox to drain", agent, agent.outbox().is_empty());
    let journal = agent.journal();
    tokio::time::sleep(POLL * 6).await;
    assert_eq!(agent.journal(), journal, "v2 was tried again");
    assert_eq!(agent.log_text().matches("test hook: killing the agent").count(), 3);
    assert_eq!(env.outcome_events(&agent.name, &id).await.len(), 1);
}

/// kill -9 across an abort: the agent dies mid-download, the rollout is aborted (keep) while
/// it is down, and the restarted agent does not install: the journaled work no longer stands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_install_killed_mid_download_and_aborted_while_down_is_dropped() {
    let env = Env::new().await;
    let ok = script(&env.probes_dir(), "ok", "exit 0");
    let mut agent = env.start_agent("dev-1", &[("ok", ok)], None).await;
    let v1 = blob("v1", 64 * 1024);
    let (_, e) = update(&env, &agent, "1.0.0", &v1, &Probe::new("exec:ok")).await;
    assert_succeeded(&e, &agent);
    agent.stop().await;

    let size = 4 << 20;
    env.publish("model@2.0.0", &blob("v2", size), None).await;
    let id = env.rollout("model@2.0.0", &Probe::new("exec:ok")).await;
    agent.start_with(Some("mid-download"));
    agent.wait_killed().await;
    assert_eq!(agent.journal()["phase"]["phase"], "installing");
    assert_eq!(agent.partials().len(), 1, "killed with part of v2 on disk");

    env.abort(&id, "keep").await;
    agent.start();
    wait!(
        "the restarted agent to drop the install",
        agent,
        agent.journal()["phase"]["phase"] == "idle" && agent.log_text().contains("install dropped")
    );
    tokio::time::sleep(POLL * 8).await;
    assert_eq!(agent.sha(), Some(sha_hex(&v1)), "v2 was installed after the abort");
    assert_eq!(agent.journal()["phase"]["phase"], "idle");
    assert_ne!(agent.journal()["last_outcome"]["rollout_id"], id.as_str());
    assert!(env.outcome_events(&agent.name, &id).await.is_empty());
    assert!(agent.log_text().matches("test hook: killing").count() == 1);
    assert!(!agent.log_text().contains("installed and healthy artifact=model version=2.0.0"));
}
