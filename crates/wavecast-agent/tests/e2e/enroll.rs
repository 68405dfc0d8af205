//! An agent checks that it pins the server's trust root before it presents its enrollment
//! token: a device pinning another root would enroll, refuse every assignment, and count in
//! every rollout.

use wavecast_tuf::keys::SigningKey;
use wavecast_tuf::root::{KeyChanges, next_root};

use crate::attacker::Proxy;
use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_pinning_another_root_refuses_to_enroll() {
    let env = Env::new().await;
    let proxy = Proxy::start(&env.url, &env.install).await;

    // Root files are public (every device image carries one); the rest of a device's
    // metadata still needs its credential.
    let get = |path: &str| env.http.get(format!("{}{path}", env.url)).send();
    let root = get("/device/v1/tuf/1.root.json").await.unwrap();
    assert_eq!(root.status(), reqwest::StatusCode::OK);
    assert_eq!(root.bytes().await.unwrap().to_vec(), std::fs::read(env.root()).unwrap());
    assert_eq!(get("/device/v1/tuf/timestamp.json").await.unwrap().status(), reqwest::StatusCode::UNAUTHORIZED);

    // Another installation's root, and a later version of this installation's root that the
    // server does not have.
    let other = env.path("other-install");
    wavecast_server::install::init(&other).await.unwrap();
    let v1 = wavecast_tuf::root::parse_root(&std::fs::read(env.root()).unwrap()).unwrap();
    let root_key = SigningKey::load(&env.install.join("offline/root.key")).unwrap();
    let expires = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24);
    let v2 = next_root(&v1, &root_key, &KeyChanges::default(), expires).await.unwrap();
    let ahead = env.path("v2.root.json");
    std::fs::write(&ahead, v2.buffer()).unwrap();

    let pinned = env.root().display().to_string();
    // (case, the root the device pins, words of the refusal)
    let cases = [
        (
            "another installation's root",
            other.join("root.json"),
            &["refusing to enroll", "is not this server's trust root", "root.json version 1 is different"][..],
        ),
        ("a root version the server does not have", ahead, &["refusing to enroll", "has no root.json version 2"][..]),
    ];
    for (i, (case, root, words)) in cases.into_iter().enumerate() {
        let mut agent = env.agent(&format!("dev-{i}"), &[], Some(&proxy.url)).await;
        let root = root.display().to_string();
        agent.edit_config(&pinned, &root);
        agent.start();
        let status = agent.wait_exit(WAIT).await;
        assert!(!status.success(), "{case}: the agent kept running\n{}", agent.log_tail());
        let log = agent.log_text();
        for w in words.iter().chain([&root.as_str()]) {
            assert!(log.contains(w), "{case}: {w:?} not in\n{log}");
        }
        assert!(env.device(&agent.name).await.is_none(), "{case}: the device enrolled");
        assert!(!proxy.seen().iter().any(|p| p == "/device/v1/enroll"), "{case}: the token was presented");

        // With the server's root, the same config enrolls.
        agent.edit_config(&root, &pinned);
        agent.start();
        env.wait_enrolled(&agent).await;
        assert!(proxy.seen().iter().any(|p| p == "/device/v1/enroll"));
        agent.kill();
        // The next case starts with no enrollment seen.
        proxy.forget_seen();
    }
}
