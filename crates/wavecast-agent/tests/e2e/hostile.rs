//! The agent bounds every network read: a hostile or broken server (endless bodies, headers
//! and then silence, a 206 with the wrong range) costs each attempt its own reason and bounded
//! memory, and the agent keeps checking in and installs once the server behaves.

use crate::attacker::{Hostile, Proxy};
use crate::support::*;

/// The most memory (peak RSS) the agent may ever have used here. Every body it reads is
/// capped at 1 MiB (tough's timestamp limit, the assignment doc's default cap) or streamed to
/// disk; a reader that kept an endless body would pass this within a second on loopback.
const MAX_PEAK_RSS_KIB: u64 = 64 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_server_costs_each_attempt_its_own_reason_and_bounded_memory() {
    let env = Env::new().await;
    let proxy = Proxy::start(&env.url, &env.install).await;
    let ok = script(&env.probes_dir(), "ok", "exit 0");
    let mut agent = env.agent("dev-1", &[("ok", ok)], Some(&proxy.url)).await;
    agent.edit_config("stall_timeout = \"10s\"", "stall_timeout = \"2s\"");
    agent.start();
    env.wait_enrolled(&agent).await;
    let probe = Probe::new("exec:ok");
    let (_, e) = update(&env, &agent, "1.0.0", &blob("v1", 64 * 1024), &probe).await;
    assert_succeeded(&e, &agent);
    let check_ins = |proxy: &Proxy| proxy.seen().iter().filter(|p| *p == "/device/v1/assignments").count();
    let mut reasons: Vec<(&str, String)> = Vec::new();

    // The check-in itself: an endless doc, then a doc that never comes. Each poll gives up on
    // its own, and the next one follows.
    for (case, how, words) in [
        ("an endless assignment doc", Hostile::Endless, "sent more than 1048576 bytes"),
        ("an assignment doc that never comes", Hostile::Silent, "sent nothing for 2 s"),
    ] {
        let log_before = agent.log_text().len();
        proxy.set_hostile("/device/v1/assignments", how);
        let polls = check_ins(&proxy);
        let failed = |agent: &Agent| agent.log_text()[log_before..].matches(words).count();
        wait!(format!("{case}: two check-ins failing"), agent, failed(&agent) >= 2);
        assert!(check_ins(&proxy) >= polls + 2, "{case}: the agent stopped checking in");
        proxy.clear_hostile();
        let line = agent.log_text()[log_before..].lines().find(|l| l.contains(words)).unwrap().to_owned();
        reasons.push((case, line[line.find("reading the assignment").unwrap_or(0)..].to_owned()));
        assert!(agent.running(), "{case}\n{}", agent.log_tail());
        let peak = agent.peak_rss_kib();
        assert!(peak < MAX_PEAK_RSS_KIB, "{case}: peak RSS {peak} KiB");
        eprintln!("{case}: peak RSS {peak} KiB");
    }

    // Updates: each attack makes the install wait with its own reason, then it goes through.
    let cases = [
        ("endless metadata", Hostile::Endless, vec!["Maximum size 1048576"]),
        ("an artifact that never comes", Hostile::Silent, vec!["stalled: no data for 2 s"]),
        (
            "a cut download resumed with the wrong range",
            Hostile::WrongRange(100 * 1024),
            vec!["interrupted", "Content-Range"],
        ),
    ];
    for (i, (case, how, words)) in cases.into_iter().enumerate() {
        let version = format!("2.{i}.0");
        let bytes = blob(&version, 256 * 1024);
        let target = format!("model@{version}");
        env.publish(&target, &bytes, None).await;
        let artifact = format!("/device/v1/targets/{}.{target}", sha_hex(&bytes));
        proxy.set_hostile(if i == 0 { "/device/v1/tuf/timestamp.json" } else { &artifact }, how);
        let id = env.rollout(&target, &probe).await;
        for words in words {
            let said = |proxy: &Proxy| {
                proxy.progress().into_iter().find(|p| {
                    p["rollout_id"] == id.as_str() && p["waiting"]["reason"].as_str().is_some_and(|r| r.contains(words))
                })
            };
            wait!(format!("{case}: a heartbeat saying {words:?}"), agent, said(&proxy).is_some());
            reasons.push((case, said(&proxy).unwrap()["waiting"]["reason"].as_str().unwrap().to_owned()));
        }
        let polls = check_ins(&proxy);
        wait!(format!("{case}: check-ins going on"), agent, check_ins(&proxy) > polls);
        let peak = agent.peak_rss_kib();
        assert!(peak < MAX_PEAK_RSS_KIB, "{case}: peak RSS {peak} KiB");
        eprintln!("{case}: peak RSS {peak} KiB");
        proxy.clear_hostile();
        let entry = env.wait_final(&agent, &id).await;
        assert_succeeded(&entry, &agent);
        assert_eq!(agent.sha(), Some(sha_hex(&bytes)), "{case}");
        assert_eq!(env.rollout_view(&id).await["failures_counted"], 0, "{case}");
    }
    for (case, reason) in &reasons {
        eprintln!("{case}: {reason}");
    }
    for (i, (a, ra)) in reasons.iter().enumerate() {
        for (b, rb) in &reasons[i + 1..] {
            assert_ne!(ra, rb, "{a} and {b} failed for the same reason");
        }
    }
}
