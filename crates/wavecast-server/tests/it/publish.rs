//! Publishing: refusals leave nothing behind; accepted artifacts are served byte-exact; a
//! failed publish never removes a blob another publish of the same bytes committed.

use axum::body::Body;
use axum::http::{Method, StatusCode};
use tough::schema::decoded::Decoded;
use tough::schema::{Hashes, Signed, Snapshot, Target, Timestamp};
use wavecast_core::Sha256Digest;
use wavecast_tuf::keys::SigningKey;
use wavecast_tuf::publish::{NewTarget, sign_new_targets};
use wavecast_tuf::root::{RootKeys, build_root};

use crate::both;
use crate::support::{Db, Env, next_targets, sign_raw};

fn target(blob: &[u8]) -> Target {
    Target {
        length: blob.len() as u64,
        hashes: Hashes {
            sha256: Decoded::from(Sha256Digest::of(blob).as_bytes().to_vec()),
            _extra: Default::default(),
        },
        custom: Default::default(),
        _extra: Default::default(),
    }
}

fn name(s: &str) -> tough::TargetName {
    tough::TargetName::new(s).unwrap()
}

#[derive(Debug, Clone, Copy)]
enum Bad {
    SignedByUnknownKey,
    Expired,
    HashDoesNotMatchBlob,
    BlobLongerThanSigned,
    SameVersionOtherBytes,
    TraversalName,
    TraversalNameResolvedByTuf,
    ForgedAfterSigning,
    SkipsAVersion,
    NotJson,
}

async fn build(env: &Env, case: Bad) -> (Vec<u8>, Vec<u8>) {
    let blob = b"yolo weights v2 ........".repeat(100);
    let root = env.root().await.signed;
    let current = env.current_targets().await;
    match case {
        Bad::SignedByUnknownKey => {
            let rogue = SigningKey::generate().unwrap();
            let rogue_root = build_root(
                &RootKeys {
                    root: &rogue,
                    targets: &rogue,
                    snapshot: &rogue,
                    timestamp: &rogue,
                    director: &rogue,
                    checkpoint: &rogue,
                },
                jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24),
            )
            .await
            .unwrap();
            let new = NewTarget {
                target: wavecast_core::TargetName::parse("yolo@2.0.0").unwrap(),
                length: blob.len() as u64,
                sha256: Sha256Digest::of(&blob),
                hardware: None,
                golden: None,
            };
            let expires = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24);
            let signed = sign_new_targets(&rogue_root.signed().signed, &current, &new, &rogue, expires).await.unwrap();
            (signed.buffer().clone(), blob)
        }
        Bad::Expired => {
            let t = next_targets(&current, |t| {
                t.expires = jiff::Timestamp::from_second(jiff::Timestamp::now().as_second() - 3600).unwrap();
                t.targets.insert(name("yolo@2.0.0"), target(&blob));
            });
            (sign_raw(&root, t, &env.publisher_key()).await, blob)
        }
        Bad::HashDoesNotMatchBlob => {
            let targets = env.sign_for("yolo@2.0.0", &blob).await;
            let mut other = blob.clone();
            other[7] ^= 0x01;
            (targets, other)
        }
        Bad::BlobLongerThanSigned => {
            let targets = env.sign_for("yolo@2.0.0", &blob).await;
            let mut longer = blob.clone();
            longer.extend_from_slice(b"and some more");
            (targets, longer)
        }
        Bad::SameVersionOtherBytes => {
            let t = next_targets(&current, |t| {
                t.targets.insert(name("yolo@1.0.0"), target(&blob));
            });
            (sign_raw(&root, t, &env.publisher_key()).await, blob)
        }
        Bad::TraversalName => {
            let t = next_targets(&current, |t| {
                t.targets.insert(name("../evil@1.0.0"), target(&blob));
            });
            (sign_raw(&root, t, &env.publisher_key()).await, blob)
        }
        Bad::ForgedAfterSigning => {
            // Signed bytes edited afterwards (here: a name turned into a traversal).
            let t = next_targets(&current, |t| {
                t.targets.insert(name("xx-evil@1.0.0"), target(&blob));
            });
            let signed = sign_raw(&root, t, &env.publisher_key()).await;
            let forged = String::from_utf8(signed).unwrap().replace("xx-evil@1.0.0", "../evil@1.0.0");
            (forged.into_bytes(), blob)
        }
        Bad::TraversalNameResolvedByTuf => {
            let t = next_targets(&current, |t| {
                t.targets.insert(name("models/../evil@1.0.0"), target(&blob));
            });
            (sign_raw(&root, t, &env.publisher_key()).await, blob)
        }
        Bad::SkipsAVersion => {
            let mut t = next_targets(&current, |t| {
                t.targets.insert(name("yolo@2.0.0"), target(&blob));
            });
            t.version = t.version.checked_add(1).unwrap();
            (sign_raw(&root, t, &env.publisher_key()).await, blob)
        }
        Bad::NotJson => (b"this is not metadata".to_vec(), blob),
    }
}

async fn publish_refusals(db: Db) {
    let env = Env::new(db).await;
    let v1 = b"yolo weights v1".repeat(1000);
    let r = env.publish("yolo@1.0.0", &v1).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.message());

    let table: &[(Bad, StatusCode, &str)] = &[
        (Bad::SignedByUnknownKey, StatusCode::UNPROCESSABLE_ENTITY, "not signed by the targets key"),
        (Bad::Expired, StatusCode::UNPROCESSABLE_ENTITY, "expired"),
        (Bad::HashDoesNotMatchBlob, StatusCode::UNPROCESSABLE_ENTITY, "do not match the signed target yolo@2.0.0"),
        (Bad::BlobLongerThanSigned, StatusCode::UNPROCESSABLE_ENTITY, "more than the signed"),
        (
            Bad::SameVersionOtherBytes,
            StatusCode::UNPROCESSABLE_ENTITY,
            "yolo@1.0.0 is already published with different content",
        ),
        (Bad::TraversalName, StatusCode::UNPROCESSABLE_ENTITY, "\"../evil@1.0.0\" is refused"),
        (Bad::ForgedAfterSigning, StatusCode::UNPROCESSABLE_ENTITY, "not signed by the targets key"),
        (Bad::TraversalNameResolvedByTuf, StatusCode::UNPROCESSABLE_ENTITY, "\"models/../evil@1.0.0\" is refused"),
        (Bad::SkipsAVersion, StatusCode::CONFLICT, "does not follow the current version"),
        (Bad::NotJson, StatusCode::UNPROCESSABLE_ENTITY, "does not parse"),
    ];
    for &(case, status, needle) in table {
        let before = env.snapshot().await;
        let (targets, blob) = build(&env, case).await;
        let r = env.publish_raw(&targets, &blob).await;
        assert_eq!(r.status, status, "{case:?}: {}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.json()["error"]["code"].as_str().map(str::is_empty), Some(false), "{case:?}");
        assert!(r.message().contains(needle), "{case:?}: message {:?} lacks {needle:?}", r.message());
        assert_eq!(env.snapshot().await, before, "{case:?} left something behind");
    }
    // After all that, the next honest publish still works.
    let r = env.publish("yolo@2.0.0", b"v2").await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.message());
}

async fn published_blobs_are_served_exactly(db: Db) {
    let env = Env::new(db).await;
    let blob: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let targets = env.sign_for("detector@1.2.3", &blob).await;
    let r = env.publish_raw(&targets, &blob).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.message());
    let sha = Sha256Digest::of(&blob).to_hex();
    assert_eq!(r.json()["sha256"], sha);

    let list = env.get("/api/v1/artifacts").await.json();
    assert_eq!(list[0]["name"], "detector");
    assert_eq!(list[0]["version"], "1.2.3");
    assert_eq!(list[0]["sha256"], sha);
    assert_eq!(list[0]["length"], blob.len());
    assert_eq!(list[0]["published_by"], "admin");

    let path = format!("/api/v1/blobs/{sha}");
    let whole = env.get(&path).await;
    assert_eq!(whole.status, StatusCode::OK);
    assert_eq!(whole.body, blob);
    for (range, lo, hi) in
        [("bytes=1000-1999", 1000, 2000), ("bytes=3145000-", 3145000, blob.len()), ("bytes=0-0", 0, 1)]
    {
        let r = env.request(Method::GET, &path, Some(&env.admin), &[("range", range.into())], Body::empty()).await;
        assert_eq!(r.status, StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(r.body, &blob[lo..hi], "{range}");
    }
    let unknown = env.get(&format!("/api/v1/blobs/{}", Sha256Digest::of(b"nope").to_hex())).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(env.get("/api/v1/blobs/..%2F..%2Fetc%2Fpasswd").await.status, StatusCode::BAD_REQUEST);

    // The metadata chain: timestamp names the snapshot, which names the targets the
    // publisher signed, byte for byte; each is signed by its role's key in root.
    let root = env.root().await.signed;
    let ts_bytes = env.get("/api/v1/tuf/timestamp.json").await.body;
    let ts: Signed<Timestamp> = serde_json::from_slice(&ts_bytes).unwrap();
    root.verify_role(&ts).unwrap();
    let snap_meta = &ts.signed.meta["snapshot.json"];
    let snap_bytes = env.get(&format!("/api/v1/tuf/{}.snapshot.json", snap_meta.version)).await.body;
    assert_eq!(snap_meta.hashes.as_ref().unwrap().sha256.to_vec(), Sha256Digest::of(&snap_bytes).as_bytes().to_vec());
    let snap: Signed<Snapshot> = serde_json::from_slice(&snap_bytes).unwrap();
    root.verify_role(&snap).unwrap();
    let targets_meta = &snap.signed.meta["targets.json"];
    let served = env.get(&format!("/api/v1/tuf/{}.targets.json", targets_meta.version)).await.body;
    assert_eq!(served, targets);
    assert_eq!(env.get("/api/v1/tuf/1.root.json").await.body, std::fs::read(&env.report.root_json).unwrap());
    for missing in ["99.targets.json", "3.timestamp.json", "secret.json", "root"] {
        assert_eq!(env.get(&format!("/api/v1/tuf/{missing}")).await.status, StatusCode::NOT_FOUND, "{missing}");
    }
}

/// Two publishes of the same bytes under two names, signed on top of the same targets, race:
/// one commits, the other conflicts (another publish landed first). The loser used to remove
/// the content-addressed file it had placed, under the winner's committed row.
async fn a_failed_publish_of_the_same_bytes_keeps_the_blob(db: Db) {
    let env = Env::new(db).await;
    for round in 0..5u32 {
        let blob = format!("shared weights, round {round} ").repeat(2000).into_bytes();
        let (a, b) = (format!("alpha@1.0.{round}"), format!("beta@1.0.{round}"));
        let (ta, tb) = (env.sign_for(&a, &blob).await, env.sign_for(&b, &blob).await);
        let (ra, rb) = tokio::join!(env.publish_raw(&ta, &blob), env.publish_raw(&tb, &blob));
        let mut statuses = [ra.status, rb.status];
        statuses.sort();
        assert!(
            statuses == [StatusCode::CREATED, StatusCode::CONFLICT]
                || statuses == [StatusCode::CREATED, StatusCode::CREATED],
            "round {round}: {statuses:?}: {} / {}",
            ra.message(),
            rb.message()
        );
        let sha = Sha256Digest::of(&blob);
        let served = env.get(&format!("/api/v1/blobs/{}", sha.to_hex())).await;
        assert_eq!(served.status, StatusCode::OK, "round {round}: the committed artifact lost its blob");
        assert!(served.body == blob, "round {round}: the blob changed");
        assert_eq!(std::fs::read(env.state.blobs().local_path(&sha).unwrap()).unwrap(), blob, "round {round}");
    }
}

/// A model published with a golden set: the bundle travels as the upload's third part, must be
/// the one signed into the target's custom metadata, and is stored, listed and audited with
/// what the publisher's machine did; anything else is refused and leaves nothing behind.
async fn golden_sets_travel_signed_with_their_model(db: Db) {
    let env = Env::new(db).await;
    let model = b"classifier weights".repeat(500);
    let bundle = b"expectations and golden cases".repeat(40);
    let signed_golden = |bundle: &[u8]| serde_json::json!({ "sha256": Sha256Digest::of(bundle), "length": bundle.len(), "local_check": "skipped" });
    let root = env.root().await.signed;
    let with_golden = |value: serde_json::Value| {
        let mut t = target(&model);
        t.custom.insert("golden".into(), value);
        t
    };
    let sign = async |t: Target| {
        let current = env.current_targets().await;
        let next = next_targets(&current, |n| {
            n.targets.insert(name("clf@1.0.0"), t);
        });
        sign_raw(&root, next, &env.publisher_key()).await
    };
    let upload = async |targets: &[u8], parts: &[(&str, &[u8])]| {
        let mut all: Vec<(&str, &str, &[u8])> = vec![("targets", "application/json", targets)];
        all.extend(parts.iter().map(|(n, b)| (*n, "application/octet-stream", *b)));
        let form = wavecast_test_support::MultipartForm::new(&all);
        env.request(
            Method::POST,
            "/api/v1/artifacts",
            Some(&env.admin),
            &[("content-type", form.content_type)],
            Body::from(form.body),
        )
        .await
    };
    let other = b"another golden set".to_vec();
    type Case<'a> = (&'a str, Target, Vec<(&'a str, &'a [u8])>, StatusCode, &'a str);
    let cases: Vec<Case<'_>> = vec![
        (
            "no golden part",
            with_golden(signed_golden(&bundle)),
            vec![("blob", &model)],
            StatusCode::BAD_REQUEST,
            "names a golden set, but the upload has no `golden` part",
        ),
        (
            "other bytes",
            with_golden(signed_golden(&bundle)),
            vec![("blob", &model), ("golden", &other)],
            StatusCode::UNPROCESSABLE_ENTITY,
            "does not match the one signed into clf@1.0.0",
        ),
        (
            "unsigned golden part",
            target(&model),
            vec![("blob", &model), ("golden", &bundle)],
            StatusCode::BAD_REQUEST,
            "names no golden set",
        ),
        (
            "malformed field",
            with_golden(serde_json::json!({ "url": "http://elsewhere/golden.zip" })),
            vec![("blob", &model), ("golden", &bundle)],
            StatusCode::UNPROCESSABLE_ENTITY,
            "golden set is refused",
        ),
    ];
    for (case, t, parts, status, needle) in cases {
        let before = env.snapshot().await;
        let r = upload(&sign(t).await, &parts).await;
        assert_eq!(r.status, status, "{case}: {}", r.message());
        assert!(r.message().contains(needle), "{case}: {:?} lacks {needle:?}", r.message());
        assert_eq!(env.snapshot().await, before, "{case} left something behind");
    }

    let r = upload(&sign(with_golden(signed_golden(&bundle))).await, &[("blob", &model), ("golden", &bundle)]).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.message());
    let golden_sha = Sha256Digest::of(&bundle).to_hex();
    let listed = &env.get("/api/v1/artifacts").await.json()[0];
    assert_eq!(listed["golden"]["sha256"], golden_sha, "{listed}");
    assert_eq!(listed["golden"]["length"], bundle.len());
    assert_eq!(listed["golden"]["local_check"], "skipped");
    assert_eq!(env.get(&format!("/api/v1/blobs/{golden_sha}")).await.body, bundle);
    let audit = env.get("/api/v1/audit").await.json();
    let published = audit.as_array().unwrap().iter().find(|e| e["action"] == "artifact.published").unwrap();
    assert_eq!(published["detail"]["golden"]["local_check"], "skipped", "{published}");
    assert_eq!(published["detail"]["golden"]["sha256"], golden_sha);
    let session = env.sign_in(&env.admin).await;
    let page = env.page(Method::GET, "/ui/artifacts/clf/1.0.0", Some(&session), "").await;
    let page = String::from_utf8_lossy(&page.body);
    assert!(page.contains(&golden_sha) && page.contains("on the publisher's machine: skipped"), "{page}");
}

both!(
    publish_refusals,
    published_blobs_are_served_exactly,
    a_failed_publish_of_the_same_bytes_keeps_the_blob,
    golden_sets_travel_signed_with_their_model
);
