//! The check-in fast path: an idle check-in answered from memory, long-poll that wakes a
//! device on exactly the changes that concern it, the server's pacing, and caches that every
//! replica keeps true (revocations included).

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt as _;
use tower::ServiceExt as _;

use crate::both;
use crate::support::{Db, Env};

/// A device's check-in through `router`: its status, ETag, pacing headers, and how long it
/// took.
struct CheckIn {
    status: StatusCode,
    etag: Option<String>,
    poll_after_ms: Option<u64>,
    long_poll_secs: Option<u64>,
    took: Duration,
}

async fn check_in(router: &axum::Router, cred: &str, etag: Option<&str>, wait: Option<&str>) -> CheckIn {
    let path = match wait {
        Some(w) => format!("/device/v1/assignments?wait={w}"),
        None => "/device/v1/assignments".to_owned(),
    };
    let mut req = Request::builder().method(Method::GET).uri(path).header("authorization", format!("Bearer {cred}"));
    if let Some(etag) = etag {
        req = req.header("if-none-match", etag);
    }
    let started = Instant::now();
    let resp = router.clone().oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
    let (etag, poll_after, long_poll) = {
        let header = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        (header("etag"), header("wavecast-poll-after"), header("wavecast-long-poll"))
    };
    let status = resp.status();
    let _ = resp.into_body().collect().await.unwrap();
    CheckIn {
        status,
        etag,
        poll_after_ms: poll_after.and_then(|v| v.parse().ok()),
        long_poll_secs: long_poll.and_then(|v| v.parse().ok()),
        took: started.elapsed(),
    }
}

/// Starts a held check-in (long-poll) of `cred`, waiting at most `wait`.
fn hold(env: &Env, cred: &str, etag: &str, wait: &str) -> tokio::task::JoinHandle<CheckIn> {
    let (router, cred, etag, wait) = (env.router.clone(), cred.to_owned(), etag.to_owned(), wait.to_owned());
    tokio::spawn(async move { check_in(&router, &cred, Some(&etag), Some(&wait)).await })
}

/// The device's current ETag, from a check-in that holds nothing.
async fn etag(env: &Env, cred: &str) -> String {
    let c = check_in(&env.router, cred, None, None).await;
    assert_eq!(c.status, StatusCode::OK);
    c.etag.unwrap()
}

async fn an_idle_check_in_reads_nothing_from_the_database(db: Db) {
    let env = Env::new(db).await;
    env.post_json("/api/v1/groups", Some(&env.admin), serde_json::json!({ "name": "g" })).await;
    let (cred, _) = env.enroll("g", "d1").await;
    let tag = etag(&env, &cred).await;
    // The first 304 may fill what the 200 did not (the group's pacing); after it, none reads.
    assert_eq!(check_in(&env.router, &cred, Some(&tag), None).await.status, StatusCode::NOT_MODIFIED);
    let before = env.state.store().connections_taken();
    for _ in 0..20 {
        let c = check_in(&env.router, &cred, Some(&tag), None).await;
        assert_eq!((c.status, c.etag.as_deref()), (StatusCode::NOT_MODIFIED, Some(tag.as_str())));
    }
    assert_eq!(env.state.store().connections_taken(), before, "20 idle check-ins took database connections");

    // A change is in force at once: the next check-in gets the new doc.
    env.publish("m@1.0.0", b"one").await;
    let create = serde_json::json!({ "artifact": "m@1.0.0", "group": "g", "waves": [100], "probe": "exec:check" });
    assert_eq!(env.post_json("/api/v1/rollouts", Some(&env.admin), create).await.status, StatusCode::CREATED);
    let c = check_in(&env.router, &cred, Some(&tag), None).await;
    assert_eq!(c.status, StatusCode::OK, "the rollout's assignment is served at the next check-in");
    assert_ne!(c.etag.as_deref(), Some(tag.as_str()));
}

async fn a_held_check_in_wakes_on_exactly_its_changes(db: Db) {
    let env = Env::new(db).await;
    env.post_json("/api/v1/groups", Some(&env.admin), serde_json::json!({ "name": "g" })).await;
    let mut devices = Vec::new();
    let names = ["d1", "d2", "d3", "d4", "d5"];
    for name in names {
        devices.push(env.enroll("g", name).await.0);
    }
    env.publish("m@1.0.0", b"one").await;
    // Wave 1: one device, open at once; wave 2 (two more) behind a manual gate; wave 3 the rest.
    let create = serde_json::json!({
        "artifact": "m@1.0.0", "group": "g", "waves": [20, 60, 100], "gates": [2], "halt_after": 1,
        "probe": "exec:check",
    });
    let r = env.post_json("/api/v1/rollouts", Some(&env.admin), create).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.message());
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let mut waves = Vec::new();
    for name in names {
        let shown = env.get(&format!("/api/v1/devices/{name}")).await.json();
        waves.push(shown["rollouts"][0]["wave"].as_u64().unwrap());
    }
    let by_wave =
        |w: u64| devices.iter().zip(&waves).filter(|(_, at)| **at == w).map(|(c, _)| c.clone()).collect::<Vec<_>>();
    let (first, second, failer, third) =
        (by_wave(1).remove(0), by_wave(2)[0].clone(), by_wave(2)[1].clone(), by_wave(3));
    let mut tags = std::collections::HashMap::new();
    for cred in &devices {
        tags.insert(cred.clone(), etag(&env, cred).await);
    }

    // Nothing that concerns them: another device's progress leaves held check-ins held.
    let held: Vec<_> = [&second, &third[0]].iter().map(|c| hold(&env, c, &tags[*c], "1500ms")).collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    env.report(&first, &id, "r1", "downloading", None).await;
    for h in held {
        let c = h.await.unwrap();
        assert_eq!(c.status, StatusCode::NOT_MODIFIED, "a held check-in answered for another device's report");
        assert!(c.took >= Duration::from_millis(1200), "held only {:?}", c.took);
        assert!(c.poll_after_ms.unwrap() < 1000, "a long-polling device comes back at once");
    }
    env.report(&first, &id, "r2", "succeeded", None).await;

    // Each command wakes the device whose doc it changes, long before the wait ends; the
    // devices of the last wave, whose doc it does not change, stay held.
    // (what happens, the command's body; a pause is the halt rule's, not a command)
    let steps = [
        ("approve", serde_json::json!({})),
        // Another device of the second wave fails: the halt rule pauses, and the watched
        // device, which has not started, is told to hold off.
        ("pause", serde_json::Value::Null),
        ("resume", serde_json::json!({ "ack": true })),
        ("abort", serde_json::json!({ "mode": "keep" })),
    ];
    for (step, body) in steps {
        let woken = hold(&env, &second, &tags[&second], "30s");
        let bystanders: Vec<_> = third.iter().map(|c| hold(&env, c, &tags[c], "2s")).collect();
        tokio::time::sleep(Duration::from_millis(200)).await;
        if step == "pause" {
            env.report(&failer, &id, "f1", "downloading", None).await;
            env.report(&failer, &id, "f2", "failed", Some("probe exec:check exited with 1")).await;
        } else {
            let r = env.post_json(&format!("/api/v1/rollouts/{id}/{step}"), Some(&env.admin), body).await;
            assert_eq!(r.status, StatusCode::OK, "{step}: {}", r.message());
        }
        let c = tokio::time::timeout(Duration::from_secs(10), woken).await.expect("not woken").unwrap();
        assert_eq!(c.status, StatusCode::OK, "{step} woke the device with its new doc");
        assert_ne!(c.etag.as_ref(), Some(&tags[&second]), "{step}");
        tags.insert(second.clone(), c.etag.unwrap());
        for b in bystanders {
            let c = b.await.unwrap();
            assert_eq!(c.status, StatusCode::NOT_MODIFIED, "{step} answered a device whose doc it did not change");
        }
        if step == "pause" {
            let state = env.get(&format!("/api/v1/rollouts/{id}")).await.json()["state"].clone();
            assert_eq!(state, "paused");
        }
    }
}

async fn pacing_follows_the_group_and_what_the_device_does(db: Db) {
    let env = Env::new(db).await;
    env.post_json("/api/v1/groups", Some(&env.admin), serde_json::json!({ "name": "g" })).await;
    let (cred, _) = env.enroll("g", "d1").await;
    let first = check_in(&env.router, &cred, None, None).await;
    assert_eq!(first.long_poll_secs, Some(55), "long-poll is offered by default");
    assert!(first.poll_after_ms.unwrap() < 1000, "a device with no doc yet comes back at once to long-poll");
    let tag = first.etag.unwrap();
    let polled = check_in(&env.router, &cred, Some(&tag), None).await;
    let idle = polled.poll_after_ms.unwrap();
    assert!((48_000..72_000).contains(&idle), "an idle device that polls is paced by the idle interval: {idle}");

    let path = "/api/v1/groups/g/pacing";
    let env = &env;
    let put = |body: serde_json::Value| async move {
        let json = [("content-type", "application/json".to_owned())];
        env.request(Method::PUT, path, Some(&env.admin), &json, Body::from(body.to_string())).await
    };
    let r = put(serde_json::json!({ "idle": "10m", "active": "20s", "long_poll": "0s" })).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.message());
    assert_eq!(r.json()["long_poll_ms"], 0);
    let off = check_in(&env.router, &cred, Some(&tag), Some("30s")).await;
    assert_eq!(off.status, StatusCode::NOT_MODIFIED);
    assert!(off.took < Duration::from_secs(5), "with long-poll off a check-in is not held");
    assert_eq!(off.long_poll_secs, None);
    let idle = off.poll_after_ms.unwrap();
    assert!((480_000..720_000).contains(&idle), "the group's idle interval: {idle}");

    // While its wave is open a device is paced by the active interval.
    env.publish("m@1.0.0", b"one").await;
    let create = serde_json::json!({ "artifact": "m@1.0.0", "group": "g", "waves": [100], "probe": "exec:check" });
    assert_eq!(env.post_json("/api/v1/rollouts", Some(&env.admin), create).await.status, StatusCode::CREATED);
    let busy = check_in(&env.router, &cred, Some(&tag), None).await.poll_after_ms.unwrap();
    assert!((16_000..24_000).contains(&busy), "the group's active interval: {busy}");

    let refused = [
        serde_json::json!({ "idle": "500ms" }),
        serde_json::json!({ "long_poll": "10m" }),
        serde_json::json!({ "active": "soon" }),
    ];
    for body in refused {
        let r = put(body.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}");
    }
    let audit = env.get("/api/v1/audit").await.json();
    assert!(audit.as_array().unwrap().iter().any(|e| e["action"] == "group.pacing_set" && e["subject"] == "g"));
    let bad = check_in(&env.router, &cred, Some(&tag), Some("forever")).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let r = env.get("/api/v1/groups/nowhere/pacing").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

both!(
    an_idle_check_in_reads_nothing_from_the_database,
    a_held_check_in_wakes_on_exactly_its_changes,
    pacing_follows_the_group_and_what_the_device_does,
);

/// Two replicas on one PostgreSQL database: a revocation through one is in force on the
/// other within a second (it is notified); and when a notification is missed, the other
/// converges at its next read of the change feed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_reach_every_replica() {
    let env = Env::new(Db::Postgres).await;
    let other = wavecast_server::open(&env.config).await.unwrap();
    let feed = wavecast_server::spawn_change_feed(other.store());
    let other_router = wavecast_server::api::router(other.clone());
    env.post_json("/api/v1/groups", Some(&env.admin), serde_json::json!({ "name": "g" })).await;
    let refused_within = |cred: String, limit: Duration| {
        let router = other_router.clone();
        async move {
            let started = Instant::now();
            while started.elapsed() < limit {
                if check_in(&router, &cred, None, None).await.status == StatusCode::UNAUTHORIZED {
                    return Some(started.elapsed());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            None
        }
    };

    // Notified: within a second.
    let (cred, _) = env.enroll("g", "d1").await;
    for _ in 0..2 {
        assert_eq!(check_in(&other_router, &cred, None, None).await.status, StatusCode::OK, "known to the other");
    }
    let r = env.post_json("/api/v1/devices/d1/revoke", Some(&env.admin), serde_json::json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.message());
    let took = refused_within(cred, Duration::from_secs(1)).await;
    assert!(took.is_some(), "the other replica still accepts a credential revoked a second ago");

    // The other replica's listening connection is cut: it listens again.
    sqlx::any::install_default_drivers();
    let mut admin = <sqlx::AnyConnection as sqlx::Connection>::connect(env._pg.as_ref().unwrap().url()).await.unwrap();
    let cut = sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND query ILIKE 'LISTEN%'",
    )
    .execute(&mut admin)
    .await
    .unwrap();
    assert_eq!(cut.rows_affected(), 1, "one listening connection");
    let (cred, id) = env.enroll("g", "d2").await;
    assert_eq!(check_in(&other_router, &cred, None, None).await.status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = env.post_json("/api/v1/devices/d2/revoke", Some(&env.admin), serde_json::json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.message());
    assert!(refused_within(cred, Duration::from_secs(1)).await.is_some(), "not notified after reconnecting");
    let _ = id;

    // A notification that never comes (the change is written without one): the other replica
    // converges at its next read of the feed, within its period (5 s).
    let (cred, id) = env.enroll("g", "d3").await;
    assert_eq!(check_in(&other_router, &cred, None, None).await.status, StatusCode::OK);
    sqlx::query("UPDATE devices SET revoked_at = 1 WHERE id = $1").bind(&id).execute(&mut admin).await.unwrap();
    sqlx::query("INSERT INTO change_events (at, kind, subject) VALUES ($1, 'device', $2)")
        .bind(wavecast_os::clock::now_ms())
        .bind(&id)
        .execute(&mut admin)
        .await
        .unwrap();
    assert_eq!(check_in(&other_router, &cred, None, None).await.status, StatusCode::OK, "cached, not yet told");
    let took = refused_within(cred, Duration::from_secs(8)).await;
    assert!(took.is_some(), "a replica that missed a notification never converged");
    for t in feed {
        t.abort();
    }
}
