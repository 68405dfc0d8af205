//! Request budgets: floods of wrong credentials are refused before the database; a fleet
//! behind one address is not.
//!
//! What reaches the database is counted, not assumed: `Store::connections_taken` grows by one
//! for every query or transaction, wherever it comes from.

use std::net::SocketAddr;

use axum::http::{Method, StatusCode};
use futures_util::StreamExt as _;
use wavecast_core::secret::{Secret, SecretKind};

use crate::both;
use crate::support::{Db, Env, Resp};

/// How many wrong attempts each flood makes.
const FLOOD: usize = 10_000;

/// A well-formed secret of `kind` that nobody was ever given.
fn wrong(kind: SecretKind, i: usize) -> String {
    let mut random = [0x5a; 32];
    random[..8].copy_from_slice(&(i as u64).to_be_bytes());
    Secret::from_random(kind, random).expose().to_owned()
}

fn peer(last: u8) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, last], 40_000))
}

/// Sends `n` requests made by `make(i)` one after the other; returns the answers' statuses in
/// order and how many requests reached the database meanwhile.
async fn flood<'a, F, Fut>(env: &'a Env, n: usize, make: F) -> (Vec<StatusCode>, u64)
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Resp> + 'a,
{
    let before = env.state.store().connections_taken();
    let mut statuses = Vec::with_capacity(n);
    for i in 0..n {
        let r = make(i).await;
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            let secs: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
            assert!(secs >= 1, "Retry-After says when to come back");
        }
        statuses.push(r.status);
    }
    (statuses, env.state.store().connections_taken() - before)
}

/// The answers are `burst` refusals of the credential (401) and then 429s: the budget, and
/// nothing after it, reached the database.
fn assert_refused_after(what: &str, statuses: &[StatusCode], burst: usize) {
    let unauthorized = statuses.iter().take_while(|s| **s == StatusCode::UNAUTHORIZED).count();
    assert_eq!(unauthorized, burst, "{what}: the first {burst} are looked up and refused");
    let rest = &statuses[burst..];
    assert!(rest.iter().all(|s| *s == StatusCode::TOO_MANY_REQUESTS), "{what}: then 429 only: {:?}", &rest[..5]);
}

async fn floods_of_wrong_credentials_stop_at_the_budget_before_the_database(db: Db) {
    // A budget that does not refill during the test, so the count is exact.
    let env = Env::with(db, |c| c.limits.failed_auth_per_address = "1/h,20".parse().unwrap()).await;
    env.post_json("/api/v1/groups", Some(&env.admin), serde_json::json!({ "name": "g" })).await;
    let (good, _) = env.enroll("g", "good").await;

    let (statuses, reached) = flood(&env, FLOOD, |i| {
        let body = serde_json::json!({ "token": wrong(SecretKind::EnrollmentToken, i), "name": format!("d{i}"), "hardware": "hw" });
        env.request_from(peer(1), Method::POST, "/device/v1/enroll", None, Some(body))
    })
    .await;
    assert_refused_after("enrollment with wrong tokens", &statuses, 20);
    assert!((1..=20).contains(&reached), "{reached} requests reached the database for 20 allowed enrollment attempts");

    let (statuses, reached) = flood(&env, FLOOD, |i| {
        let cred = wrong(SecretKind::DeviceCredential, i);
        let env = &env;
        async move { env.request_from(peer(2), Method::GET, "/device/v1/assignments", Some(&cred), None).await }
    })
    .await;
    assert_refused_after("wrong device credentials", &statuses, 20);
    assert!((1..=20).contains(&reached), "{reached} requests reached the database for 20 allowed credential lookups");

    let (statuses, reached) = flood(&env, 200, |i| {
        let token = wrong(SecretKind::ApiToken, i);
        let env = &env;
        async move { env.request_from(peer(3), Method::GET, "/api/v1/devices", Some(&token), None).await }
    })
    .await;
    assert_refused_after("wrong API tokens", &statuses, 20);
    assert!((1..=20).contains(&reached), "{reached} requests reached the database for 20 allowed token lookups");
    // No credential at all costs no lookup, but is a failure all the same.
    let (statuses, reached) =
        flood(&env, 50, |_| env.request_from(peer(4), Method::GET, "/api/v1/devices", None, None)).await;
    assert_refused_after("no API token", &statuses, 20);
    assert_eq!(reached, 0);

    // The price of a limit that holds: a good device behind a flooded address waits too,
    // refused before its credential is looked up, and is told why.
    let r = env.request_from(peer(2), Method::GET, "/device/v1/whoami", Some(&good), None).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(r.message().contains("failed authentications from 192.0.2.2"), "{}", r.message());
    // Every other address keeps its budget.
    let r = env.request_from(peer(5), Method::GET, "/device/v1/whoami", Some(&good), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.message());
    let r = env.request_from(peer(5), Method::GET, "/api/v1/devices", Some(&env.admin), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.message());
    // Nothing the floods sent was enrolled.
    assert_eq!(env.get("/api/v1/devices").await.json().as_array().unwrap().len(), 1);
}

async fn a_fleet_behind_one_address_is_never_limited(db: Db) {
    // The default budgets, as a server started without flags has them.
    let env = Env::new(db).await;
    let nat = peer(9);
    env.post_json("/api/v1/groups", Some(&env.admin), serde_json::json!({ "name": "g" })).await;
    let token =
        env.post_json("/api/v1/enrollment-tokens", Some(&env.admin), serde_json::json!({ "group": "g" })).await.json()
            ["token"]
            .as_str()
            .unwrap()
            .to_owned();

    // A thousand devices come up behind one carrier-NAT address and enroll at once, each as an
    // agent does: first the server's root.json (no credential yet: it checks it pins this
    // server's root before spending its token), then the enrollment.
    let enrolled: Vec<Resp> = futures_util::stream::iter(0..1000)
        .map(|i| {
            let body = serde_json::json!({ "token": token, "name": format!("cam-{i:04}"), "hardware": "hw" });
            let env = &env;
            async move {
                let root = env.request_from(nat, Method::GET, "/device/v1/tuf/root.json", None, None).await;
                assert_eq!(root.status, StatusCode::OK, "device {i}'s root.json: {}", root.message());
                env.request_from(nat, Method::POST, "/device/v1/enroll", None, Some(body)).await
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let mut creds = Vec::new();
    for r in &enrolled {
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.message());
        creds.push(r.json()["credential"].as_str().unwrap().to_owned());
    }

    // Two rounds of check-ins, each as fast as the server answers: far denser than a fleet
    // polling every 30 s. Among them, a few devices that lost their credentials (re-imaged)
    // keep failing, as they would in any fleet.
    for round in 0..2 {
        let answers: Vec<(usize, Resp)> = futures_util::stream::iter(0..creds.len() + 20)
            .map(|i| {
                let cred = creds.get(i).cloned().unwrap_or_else(|| wrong(SecretKind::DeviceCredential, i));
                let env = &env;
                async move { (i, env.request_from(nat, Method::GET, "/device/v1/assignments", Some(&cred), None).await) }
            })
            .buffer_unordered(16)
            .collect()
            .await;
        for (i, r) in answers {
            let expected = if i < creds.len() { StatusCode::OK } else { StatusCode::UNAUTHORIZED };
            assert_eq!(r.status, expected, "round {round}, device {i}: {}", r.message());
        }
    }
}

async fn a_trusted_proxy_passes_on_its_clients_addresses(db: Db) {
    let proxy = peer(10);
    let env = Env::with(db, |c| {
        c.limits.failed_auth_per_address = "1/h,2".parse().unwrap();
        c.limits.trusted_proxies = vec![proxy.ip()];
    })
    .await;
    let attempt = |from: SocketAddr, forwarded_for: &'static str| {
        let env = &env;
        async move {
            let headers = [("x-forwarded-for", forwarded_for.to_owned())];
            let token = Some(wrong(SecretKind::ApiToken, 0));
            env.request_via(Some(from), Method::GET, "/api/v1/whoami", token.as_deref(), &headers, Default::default())
                .await
                .status
        }
    };
    // Two clients behind the proxy: each has its own budget, whatever the client claims on its
    // own further left in the header.
    for _ in 0..2 {
        assert_eq!(attempt(proxy, "203.0.113.1").await, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(attempt(proxy, "10.9.9.9, 203.0.113.1").await, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(attempt(proxy, "203.0.113.2").await, StatusCode::UNAUTHORIZED);
    // From anyone else the header is ignored: the budget is the peer's own.
    let other = peer(11);
    assert_eq!(attempt(other, "203.0.113.3").await, StatusCode::UNAUTHORIZED);
    assert_eq!(attempt(other, "203.0.113.4").await, StatusCode::UNAUTHORIZED);
    assert_eq!(attempt(other, "203.0.113.5").await, StatusCode::TOO_MANY_REQUESTS);
}

both!(
    floods_of_wrong_credentials_stop_at_the_budget_before_the_database,
    a_fleet_behind_one_address_is_never_limited,
    a_trusted_proxy_passes_on_its_clients_addresses,
);

/// Over real TCP, the budget is the connection's peer address's: the serve loop attaches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_serve_loop_keys_budgets_by_the_peer_address() {
    let env = Env::with(Db::Sqlite, |c| c.limits.failed_auth_per_address = "1/h,3".parse().unwrap()).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(wavecast_server::serve(env.state.clone(), listener, async {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::new();
    let mut answers = Vec::new();
    for i in 0..5 {
        let r = client
            .get(format!("{base}/device/v1/whoami"))
            .bearer_auth(wrong(SecretKind::DeviceCredential, i))
            .send()
            .await
            .unwrap();
        answers.push((r.status(), r.text().await.unwrap()));
    }
    let statuses: Vec<u16> = answers.iter().map(|(s, _)| s.as_u16()).collect();
    assert_eq!(statuses, [401, 401, 401, 429, 429]);
    assert!(answers[3].1.contains("failed authentications from 127.0.0.1"), "{}", answers[3].1);
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
