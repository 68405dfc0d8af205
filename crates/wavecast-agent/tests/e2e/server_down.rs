//! Criterion 5: the server goes away in the middle of an update (and before a check-in); the
//! agent finishes or waits without damage, and its reports arrive once the server is back.

use std::time::Duration;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_reached_while_the_server_is_down_are_delivered_when_it_returns() {
    let mut env = Env::new().await;
    let gate = env.path("gate");
    // The probe holds until the test says how it ends (0 healthy, anything else not).
    let gated = script(
        &env.probes_dir(),
        "gated",
        &format!(
            "G='{}'\ni=0\nwhile [ ! -s \"$G\" ]; do i=$((i + 1)); [ $i -lt 1200 ] || exit 9; sleep 0.05; done\n\
             code=$(cat \"$G\")\n\
             [ \"$code\" = 0 ] || echo 'gate says unhealthy' >&2\nexit \"$code\"",
            gate.display()
        ),
    );
    let ok = script(&env.probes_dir(), "ok", "exit 0");
    let mut agent = env.start_agent("dev-1", &[("gated", gated), ("ok", ok)], None).await;
    let v1 = blob("v1", 256 * 1024);
    let (_, e) = update(&env, &agent, "1.0.0", &v1, &Probe::new("exec:ok")).await;
    assert_succeeded(&e, &agent);

    let mut current = v1;
    for (version, code) in [("2.0.0", "0"), ("3.0.0", "1")] {
        let ctx = format!("{version}, probe exits {code}");
        let _ = std::fs::remove_file(&gate);
        let new = blob(version, 256 * 1024);
        let target = format!("model@{version}");
        env.publish(&target, &new, None).await;
        let id = env.rollout(&target, &Probe::new("exec:gated").timeout(60_000)).await;
        // Downloaded, verified, swapped in, probing, and the server heard so much.
        wait!(
            format!("{ctx}: the swap and the probing report"),
            agent,
            agent.sha() == Some(sha_hex(&new))
                && env.device_rollout(&agent.name, &id).await.is_some_and(|r| r["state"] == "probing")
        );

        env.stop_server().await;
        std::fs::write(&gate, code).unwrap();
        wait!(
            format!("{ctx}: the agent to settle locally"),
            agent,
            agent.journal()["last_outcome"]["rollout_id"] == id.as_str() && agent.journal()["phase"]["phase"] == "idle"
        );
        let (state, expected) = if code == "0" { ("succeeded", &new) } else { ("failed", &current) };
        let journal = agent.journal();
        assert_eq!(journal["last_outcome"]["state"], state, "{ctx}: {journal}");
        assert_eq!(agent.sha(), Some(sha_hex(expected)), "{ctx}");
        // The outcome waits in the outbox while the server is away; the agent keeps going.
        let queued =
            |agent: &Agent| agent.outbox().iter().any(|r| r["rollout_id"] == id.as_str() && r["state"] == state);
        assert!(queued(&agent), "{ctx}: outbox {:?}", agent.outbox());
        tokio::time::sleep(POLL * 8).await;
        assert!(agent.running(), "{ctx}: the agent died while the server was down\n{}", agent.log_tail());
        assert!(queued(&agent), "{ctx}: the report was dropped: {:?}", agent.outbox());
        assert_eq!(agent.journal(), journal, "{ctx}: the journal changed while the server was down");
        assert_eq!(agent.sha(), Some(sha_hex(expected)), "{ctx}");

        env.start_server().await;
        let entry = env.wait_final(&agent, &id).await;
        assert_eq!(entry["state"], state, "{ctx}: {entry}");
        if code != "0" {
            assert!(entry["reason"].as_str().unwrap_or_default().contains("gate says unhealthy"), "{entry}");
        }
        wait!(format!("{ctx}: the outbox to drain"), agent, agent.outbox().is_empty());
        let events = env.outcome_events(&agent.name, &id).await;
        assert_eq!(events.len(), 1, "{ctx}: {events:?}");
        wait!(
            format!("{ctx}: the server to record what the device runs"),
            agent,
            env.device(&agent.name).await.is_some_and(|d| d["artifacts"][0]["sha256"] == sha_hex(expected))
        );
        env.settle(&id).await;
        if code == "0" {
            current = new;
        }
    }

    // Down before the agent checks in: it waits, harmlessly, and updates once the server is back.
    agent.stop().await;
    let v4 = blob("4.0.0", 256 * 1024);
    env.publish("model@4.0.0", &v4, None).await;
    let id = env.rollout("model@4.0.0", &Probe::new("exec:ok")).await;
    env.stop_server().await;
    agent.start();
    wait!(
        "the agent to find the server unreachable",
        agent,
        agent.log_text().matches("cannot reach the server").count() >= 3
    );
    assert!(agent.running(), "{}", agent.log_tail());
    assert_eq!(agent.sha(), Some(sha_hex(&current)));
    assert_eq!(agent.journal()["phase"]["phase"], "idle");
    tokio::time::sleep(Duration::from_millis(300)).await;
    env.start_server().await;
    let entry = env.wait_final(&agent, &id).await;
    assert_succeeded(&entry, &agent);
    assert_eq!(agent.sha(), Some(sha_hex(&v4)));
    assert_eq!(agent.previous_sha(), Some(sha_hex(&current)));
    assert_eq!(env.outcome_events(&agent.name, &id).await.len(), 1);
}
