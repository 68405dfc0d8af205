//! Revert must be true: `abort --revert` puts back exactly the file that was there before
//! the rollout (its digest checked), or says there was nothing to go back to; it never claims
//! a revert that did not happen.

use serde_json::Value;

use crate::support::*;

/// Waits until the device leaves `succeeded` in rollout `id` for a revert outcome.
async fn reverted(env: &Env, agent: &Agent, id: &str) -> Value {
    let outcome = |r: &Value| matches!(r["state"].as_str(), Some("reverted" | "revert_skipped"));
    wait!(
        format!("{}'s revert outcome", agent.name),
        agent,
        env.device_rollout(&agent.name, id).await.is_some_and(|r| outcome(&r))
    );
    env.device_rollout(&agent.name, id).await.unwrap()
}

fn events(all: &[Value], device: &str, id: &str) -> Vec<String> {
    all.iter()
        .filter(|e| e["subject"] == device && e["detail"]["rollout"] == id)
        .filter_map(|e| e["action"].as_str().map(str::to_owned))
        .filter(|a| a.contains("revert"))
        .collect()
}

/// Three devices whose first install of v1 went over a factory model, over nothing, and over
/// a factory model whose kept copy is then changed behind the agent's back; a fourth that
/// never checks in keeps the rollout running (a completed one cannot be aborted). Returns the
/// env, the three running devices, the offline one, the rollout and the factory and v1 bytes.
async fn first_installs_then_abort_with_revert() -> (Env, Vec<Agent>, Agent, String, Vec<u8>, Vec<u8>) {
    let env = Env::new().await;
    let ok = || vec![("ok", script(&env.probes_dir(), "ok", "exit 0"))];
    let factory = blob("factory model", 32 * 1024);
    let mut devices = Vec::new();
    for (name, preexisting) in [("factory", true), ("empty", false), ("tampered", true)] {
        let mut agent = env.agent(name, &ok(), None).await;
        if preexisting {
            std::fs::write(&agent.path, &factory).unwrap();
        }
        agent.start();
        env.wait_enrolled(&agent).await;
        devices.push(agent);
    }
    let mut offline = env.start_agent("offline", &ok(), None).await;
    offline.kill();
    let v1 = blob("v1", 32 * 1024);
    env.publish("model@1.0.0", &v1, None).await;
    let id = env.rollout("model@1.0.0", &Probe::new("exec:ok")).await;
    for agent in &devices {
        assert_succeeded(&env.wait_final(agent, &id).await, agent);
        assert_eq!(agent.sha(), Some(sha_hex(&v1)));
    }
    // The journal says what the previous slot holds: the factory file, as unmanaged.
    for agent in [&devices[0], &devices[2]] {
        let prev = agent.journal()["previous"].clone();
        assert_eq!(prev["version"], "unmanaged", "{prev}");
        assert_eq!(prev["sha256"], sha_hex(&factory), "{prev}");
        assert_eq!(agent.previous_sha(), Some(sha_hex(&factory)));
    }
    assert_eq!(devices[1].journal()["previous"], Value::Null);
    std::fs::remove_file(devices[2].previous_path()).unwrap();
    std::fs::write(devices[2].previous_path(), b"not the factory model").unwrap();

    env.abort(&id, "revert").await;
    for agent in &devices {
        reverted(&env, agent, &id).await;
    }
    (env, devices, offline, id, factory, v1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_with_revert_restores_what_was_there_or_says_there_was_nothing() {
    let (env, devices, _offline, id, factory, v1) = first_installs_then_abort_with_revert().await;
    let [with_factory, empty, tampered] = &devices[..] else { unreachable!() };

    // Restored: the factory bytes are back at the path, and the device says reverted.
    let r = env.device_rollout(&with_factory.name, &id).await.unwrap();
    assert_eq!(r["state"], "reverted", "{r}");
    assert_eq!(with_factory.sha(), Some(sha_hex(&factory)));
    let st = with_factory.status();
    assert_eq!(st["active"], Value::Null, "wavecast no longer manages what runs: {st}");
    assert_eq!(st["previous"]["version"], "unmanaged", "{st}");
    let text = with_factory.status_text();
    assert!(text.contains("previous  the file there before wavecast's first install"), "{text}");
    assert!(text.contains("a revert put back what was there before") && !text.contains("not healthy"), "{text}");

    // Nothing to go back to: it keeps v1 and says so.
    let r = env.device_rollout(&empty.name, &id).await.unwrap();
    assert_eq!(r["state"], "revert_skipped", "{r}");
    let reason = r["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("first version installed here") && reason.contains("replaced no file"), "{reason}");
    assert_eq!(empty.sha(), Some(sha_hex(&v1)));
    assert_eq!(empty.status()["active"]["version"], "1.0.0");

    // The kept copy changed: wrong bytes are never put back.
    let r = env.device_rollout(&tampered.name, &id).await.unwrap();
    assert_eq!(r["state"], "revert_skipped", "{r}");
    let reason = r["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("wrong bytes are never put back") && reason.contains(&sha_hex(&factory)), "{reason}");
    assert_eq!(tampered.sha(), Some(sha_hex(&v1)));

    // The audit trail never claims a revert that did not happen.
    let audit = env.audit().await;
    assert_eq!(events(&audit, &with_factory.name, &id), ["device.reverted"]);
    for agent in [empty, tampered] {
        assert!(!events(&audit, &agent.name, &id).iter().any(|a| a == "device.reverted"), "{}", agent.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_skipped_revert_is_audited_as_such() {
    let (env, devices, _offline, id, _, _) = first_installs_then_abort_with_revert().await;
    let audit = env.audit().await;
    assert_eq!(events(&audit, &devices[0].name, &id), ["device.reverted"]);
    for agent in &devices[1..] {
        assert_eq!(events(&audit, &agent.name, &id), ["device.revert_skipped"], "{}", agent.name);
    }
}
