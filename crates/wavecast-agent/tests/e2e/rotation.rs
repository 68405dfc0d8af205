//! Root rotation, the agent's side: agents follow the chain of roots, keep each verified one,
//! take the director key from the newest (also when a doc signed by a new key arrives before
//! any TUF refresh, and after a restart), and refuse a doc signed by a key a rotation retired.
//!
//! The server here still signs with the installation's keys; the attacker proxy plays the
//! rotated control plane: it serves the new `N.root.json` files and re-signs the server's
//! assignment docs with the new director key.

use tough::editor::signed::SignedRole;
use tough::schema::Root;
use wavecast_tuf::keys::SigningKey;
use wavecast_tuf::root::{KeyChanges, next_root};

use crate::attacker::Proxy;
use crate::support::*;

fn kept_root(agent: &Agent, version: u64) -> Option<Vec<u8>> {
    std::fs::read(agent.state_dir.join("roots").join(format!("{version}.root.json"))).ok()
}

async fn rotate(current: &tough::schema::Signed<Root>, by: &SigningKey, changes: KeyChanges<'_>) -> SignedRole<Root> {
    let expires = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24 * 30);
    next_root(current, by, &changes, expires).await.unwrap()
}

/// Publishes `version`, rolls it out and waits for each agent's outcome.
async fn roll_out(env: &Env, agents: &[&Agent], version: &str) -> (String, Vec<u8>) {
    let bytes = blob(version, 16 * 1024);
    let target = format!("model@{version}");
    env.publish(&target, &bytes, None).await;
    let id = env.rollout(&target, &Probe::new("exec:ok")).await;
    for agent in agents {
        assert_succeeded(&env.wait_final(agent, &id).await, agent);
        assert_eq!(agent.sha(), Some(sha_hex(&bytes)), "{}", agent.name);
    }
    (id, bytes)
}

fn position(paths: &[String], path: &str) -> Option<usize> {
    paths.iter().position(|p| p == path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_follow_the_root_chain_and_take_the_newest_director_key() {
    let env = Env::new().await;
    let proxy = Proxy::start(&env.url, &env.install).await;
    let ok = || vec![("ok", script(&env.probes_dir(), "ok", "exit 0"))];
    let mut a = env.start_agent("dev-a", &ok(), Some(&proxy.url)).await;
    // dev-b enrolls with root v1, then stays offline through both rotations.
    let mut b = env.start_agent("dev-b", &ok(), Some(&proxy.url)).await;
    b.stop().await;
    let root_key = SigningKey::load(&env.install.join("offline/root.key")).unwrap();
    let v1 = wavecast_tuf::root::parse_root(&std::fs::read(env.root()).unwrap()).unwrap();

    // Rotation to v2: a new director key. The first doc signed by it arrives before the agent
    // has fetched any new metadata: it looks for a newer root, verifies v2 against v1, keeps
    // it, and accepts the doc.
    let d2 = SigningKey::generate().unwrap();
    let v2 = rotate(&v1, &root_key, KeyChanges { director: Some(&d2), ..Default::default() }).await;
    proxy.set_override("/device/v1/tuf/2.root.json", v2.buffer().clone());
    proxy.set_signer(d2);
    let mark = proxy.seen().len();
    proxy.set_rewrite(|_| true);
    let (id, _) = roll_out(&env, &[&a], "2.0.0").await;
    let seen = proxy.seen()[mark..].to_vec();
    let root_at = position(&seen, "/device/v1/tuf/2.root.json").expect("the agent never asked for root v2");
    let metadata_at = position(&seen, "/device/v1/tuf/timestamp.json").expect("no TUF refresh for the install");
    assert!(root_at < metadata_at, "root v2 was fetched only with the TUF metadata: {seen:?}");
    assert_eq!(kept_root(&a, 2).as_deref(), Some(v2.buffer().as_slice()), "root v2 is kept, byte for byte");
    assert!(a.log_text().contains("followed the trust root to a new version"), "{}", a.log_tail());
    env.settle(&id).await;

    // The server's own doc, signed by the director key v2 retired: refused, with the reason,
    // and nothing is installed or reported.
    proxy.clear_rewrite();
    let log_mark = a.log_text().len();
    let before = a.sha();
    env.publish("model@3.0.0", &blob("3.0.0", 16 * 1024), None).await;
    let id = env.rollout("model@3.0.0", &Probe::new("exec:ok")).await;
    wait!(
        "the agent to refuse a doc signed by the retired director key",
        a,
        a.log_text()[log_mark..]
            .contains("signed by the director key of trust root version 1, which root version 2 retired")
    );
    tokio::time::sleep(POLL * 5).await;
    assert_eq!(a.sha(), before, "a doc signed by a retired key was acted on");
    let entry = env.device_rollout(&a.name, &id).await.unwrap();
    assert_eq!(entry["state"], "assigned", "nothing is reported for a doc the director did not sign: {entry}");
    env.settle(&id).await;

    // A restart takes the director key from the kept root: the server itself serves no root
    // v2, so only the kept copy, verified again from the pinned v1, can give it.
    proxy.clear_overrides();
    a.stop().await;
    a.start();
    proxy.set_rewrite(|_| true);
    let (id, _) = roll_out(&env, &[&a], "4.0.0").await;
    env.settle(&id).await;

    // Rotation to v3: a new root key and another director key. dev-a follows; dev-b, offline
    // through both rotations, catches up through v2 and v3 at once.
    let r3 = SigningKey::generate().unwrap();
    let d3 = SigningKey::generate().unwrap();
    let v3 =
        rotate(v2.signed(), &root_key, KeyChanges { root: Some(&r3), director: Some(&d3), ..Default::default() }).await;
    proxy.set_override("/device/v1/tuf/2.root.json", v2.buffer().clone());
    proxy.set_override("/device/v1/tuf/3.root.json", v3.buffer().clone());
    proxy.set_signer(d3);
    b.start();
    roll_out(&env, &[&a, &b], "5.0.0").await;
    for agent in [&a, &b] {
        assert_eq!(kept_root(agent, 3).as_deref(), Some(v3.buffer().as_slice()), "{}", agent.name);
    }
    assert_eq!(kept_root(&b, 2).as_deref(), Some(v2.buffer().as_slice()), "dev-b walked through v2");
    assert_eq!(b.trusted()["root"], 3, "the rollback record holds root v3: {}", b.trusted());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_root_that_does_not_follow_stops_the_agent_with_its_name() {
    let env = Env::new().await;
    let mut agent = env.start_agent("dev-1", &[], None).await;
    agent.stop().await;
    // Something that is not root v2 where the agent keeps root v2: root v1 again.
    let bytes = std::fs::read(env.root()).unwrap();
    let kept = agent.state_dir.join("roots").join("2.root.json");
    std::fs::write(&kept, &bytes).unwrap();
    agent.start();
    let status = agent.wait_exit(WAIT).await;
    assert!(!status.success());
    let log = agent.log_text();
    assert!(log.contains(&format!("{} does not follow the trust roots before it", kept.display())), "{log}");
    assert!(log.contains("root.json version 1 does not follow version 1"), "{log}");
    assert!(kept.exists(), "the kept file is left for the owner to look at");
}
