//! Blobs in S3 (issue 13), against a real S3-compatible server (moto, `scripts/s3-server`):
//! publishing streams into the bucket and nothing shows before it verifies; devices read by
//! Range through the server or by a presigned redirect; the same bytes published twice make one
//! object; a store that cannot be reached fails a publish cleanly and leaves nothing behind, and
//! tells a device to come back rather than that its download is wrong.

use std::sync::OnceLock;

use axum::body::Body;
use axum::http::{Method, StatusCode};
use serde_json::json;
use wavecast_core::Sha256Digest;
use wavecast_server::blobs::{BlobConfig, BlobDelivery, BlobLocation, S3Credentials};
use wavecast_test_support::proxy::ThrottledProxy;
use wavecast_test_support::s3::S3Server;

use crate::both;
use crate::support::{Db, Env};

/// One S3 server for the whole test binary; each test has a bucket of its own.
fn s3() -> &'static S3Server {
    static SERVER: OnceLock<S3Server> = OnceLock::new();
    SERVER.get_or_init(S3Server::start)
}

fn bucket() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let name = format!("wavecast-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
    s3().create_bucket(&name);
    name
}

fn config(bucket: &str, endpoint: &str, delivery: BlobDelivery) -> BlobConfig {
    let [(_, key), (_, secret), (_, region)] = s3().env();
    BlobConfig {
        location: BlobLocation::S3(format!("{bucket}/fleet").parse().unwrap()),
        endpoint: Some(endpoint.parse().unwrap()),
        delivery,
        credentials: Some(S3Credentials {
            access_key_id: key.into(),
            secret_access_key: secret.into(),
            region: region.into(),
        }),
    }
}

async fn env_on(db: Db, blobs: BlobConfig) -> Env {
    Env::with(db, |c| c.blobs = blobs).await
}

/// Model-like bytes that do not repeat, so a wrong range cannot match by chance.
fn model(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    while out.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.extend_from_slice(&seed.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A group with one enrolled device assigned `target`: its credential and the URL it fetches.
async fn assigned(env: &Env, target: &str, bytes: &[u8]) -> (String, String) {
    env.group("g").await;
    let (cred, _) = env.enroll("g", "d1").await;
    env.rollout(target, "g", json!([100])).await;
    (cred, format!("/device/v1/targets/{}.{target}", Sha256Digest::of(bytes).to_hex()))
}

async fn publish_50_mib_and_read_it_by_range(db: Db) {
    let bucket = bucket();
    for delivery in [BlobDelivery::Proxied, BlobDelivery::Redirect(std::time::Duration::from_secs(60))] {
        let env = env_on(db, config(&bucket, &s3().endpoint(), delivery)).await;
        let blob = model(50 << 20);
        let r = env.publish("big@1.0.0", &blob).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.message());
        let digest = Sha256Digest::of(&blob).to_hex();
        let keys = s3().keys(&bucket, "fleet/");
        assert_eq!(keys, [format!("fleet/sha256/{}/{digest}", &digest[..2])], "one object, under its digest");

        let (cred, url) = assigned(&env, "big@1.0.0", &blob).await;
        let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        for (range, want_status, want) in [
            (None, StatusCode::OK, &blob[..]),
            (Some("bytes=33554432-"), StatusCode::PARTIAL_CONTENT, &blob[32 << 20..]),
            (Some("bytes=100-199"), StatusCode::PARTIAL_CONTENT, &blob[100..200]),
        ] {
            let headers: Vec<(&str, String)> = range.map(|r| ("range", r.to_owned())).into_iter().collect();
            let r = env.request(Method::GET, &url, Some(&cred), &headers, Body::empty()).await;
            let (status, body) = match delivery {
                BlobDelivery::Proxied => (r.status, r.body),
                BlobDelivery::Redirect(_) => {
                    // The device follows the redirect with its Range and without its credential.
                    assert_eq!(r.status, StatusCode::TEMPORARY_REDIRECT, "{range:?}");
                    assert_eq!(r.headers["cache-control"], "no-store");
                    let location = r.headers["location"].to_str().unwrap().to_owned();
                    assert!(location.starts_with(&s3().endpoint()), "{location}");
                    assert!(!location.contains(&cred), "the device's credential never leaves the server");
                    let mut req = http.get(&location);
                    if let Some(range) = range {
                        req = req.header("range", range);
                    }
                    let resp = req.send().await.unwrap();
                    (StatusCode::from_u16(resp.status().as_u16()).unwrap(), resp.bytes().await.unwrap().to_vec())
                }
            };
            assert_eq!(status, want_status, "{delivery:?} {range:?}");
            assert!(body == want, "{delivery:?} {range:?}: {} bytes, not the {} asked for", body.len(), want.len());
        }
        if delivery == BlobDelivery::Proxied {
            let r =
                env.request(Method::GET, &url, Some(&cred), &[("range", "bytes=100-199".into())], Body::empty()).await;
            assert_eq!(r.headers["content-range"], format!("bytes 100-199/{}", blob.len()));
            let past = env
                .request(Method::GET, &url, Some(&cred), &[("range", "bytes=999999999-".into())], Body::empty())
                .await;
            assert_eq!(past.status, StatusCode::RANGE_NOT_SATISFIABLE);
            assert_eq!(past.headers["content-range"], format!("bytes */{}", blob.len()));
        }
        // The next round publishes the same bytes into the same bucket from a fresh installation.
        drop(env);
    }
}

async fn the_same_bytes_under_two_names_make_one_object(db: Db) {
    let bucket = bucket();
    let env = env_on(db, config(&bucket, &s3().endpoint(), BlobDelivery::Proxied)).await;
    for round in 0..3u32 {
        let blob = model(6 << 20 | round as usize);
        let (a, b) = (format!("alpha@1.0.{round}"), format!("beta@1.0.{round}"));
        let (ta, tb) = (env.sign_for(&a, &blob).await, env.sign_for(&b, &blob).await);
        // Signed on top of the same targets, so one may conflict; it signs again and retries,
        // as the CLI does, while the other's object is already there.
        let (ra, rb) = tokio::join!(env.publish_raw(&ta, &blob), env.publish_raw(&tb, &blob));
        for (r, name) in [(ra, &a), (rb, &b)] {
            match r.status {
                StatusCode::CREATED => {}
                StatusCode::CONFLICT => {
                    let again = env.publish(name, &blob).await;
                    assert_eq!(again.status, StatusCode::CREATED, "{}", again.message());
                }
                other => panic!("round {round}: {other}: {}", r.message()),
            }
        }
        let listed = env.get("/api/v1/artifacts").await.json();
        for name in [&a, &b] {
            let (n, v) = name.split_once('@').unwrap();
            let found = listed.as_array().unwrap().iter().any(|x| x["name"] == n && x["version"] == v);
            assert!(found, "{name} is not listed: {listed:#}");
        }
        let served = env.get(&format!("/api/v1/blobs/{}", Sha256Digest::of(&blob).to_hex())).await;
        assert!(served.status == StatusCode::OK && served.body == blob, "round {round}");
    }
    assert_eq!(s3().keys(&bucket, "fleet/").len(), 3, "one object per distinct content");
}

async fn an_unreachable_store_fails_a_publish_cleanly_and_makes_devices_wait(db: Db) {
    let bucket = bucket();
    let link = ThrottledProxy::start(([127, 0, 0, 1], s3().port()).into(), 1 << 30).await;
    let env = env_on(db, config(&bucket, &link.url(), BlobDelivery::Proxied)).await;
    let blob = model(9 << 20);
    let before = env.snapshot().await;

    link.set_down(true);
    let r = env.publish("m@1.0.0", &blob).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.message());
    assert!(r.headers.contains_key("retry-after"));
    let message = r.message();
    assert!(message.contains("blob store s3://") && message.contains("try again later"), "{message}");
    assert_eq!(env.snapshot().await, before, "a failed publish records nothing");
    link.set_down(false);
    assert!(s3().keys(&bucket, "").is_empty(), "and leaves no object");

    // Back up, the same publish goes through.
    let r = env.publish("m@1.0.0", &blob).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.message());
    let (cred, url) = assigned(&env, "m@1.0.0", &blob).await;

    // Down while devices download: they are told to come back, not that the model is bad.
    link.set_down(true);
    let r = env.request(Method::GET, &url, Some(&cred), &[], Body::empty()).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.message());
    assert!(r.headers.contains_key("retry-after"));
    link.set_down(false);
    let r = env.request(Method::GET, &url, Some(&cred), &[], Body::empty()).await;
    assert!(r.status == StatusCode::OK && r.body == blob);
}

/// A replica that starts while the bucket is unreachable comes up anyway (check-ins need no
/// blobs) and says what is wrong in `GET /status` until the bucket answers.
async fn a_replica_starts_while_the_store_is_down(db: Db) {
    let bucket = bucket();
    let link = ThrottledProxy::start(([127, 0, 0, 1], s3().port()).into(), 1 << 30).await;
    link.set_down(true);
    let env = env_on(db, config(&bucket, &link.url(), BlobDelivery::Proxied)).await;
    let warnings = || async { env.get("/api/v1/status").await.json()["warnings"].to_string() };
    let down = warnings().await;
    assert!(down.contains("publishing and downloads fail until the blob store answers"), "{down}");
    assert!(down.contains(&format!("s3://{bucket}/fleet")), "{down}");
    env.group("g").await;
    env.enroll("g", "d1").await;
    link.set_down(false);
    let up = warnings().await;
    assert!(!up.contains("blob store"), "{up}");
    assert_eq!(env.publish("m@1.0.0", b"weights").await.status, StatusCode::CREATED);
}

both!(
    a_replica_starts_while_the_store_is_down,
    publish_50_mib_and_read_it_by_range,
    the_same_bytes_under_two_names_make_one_object,
    an_unreachable_store_fails_a_publish_cleanly_and_makes_devices_wait,
);
