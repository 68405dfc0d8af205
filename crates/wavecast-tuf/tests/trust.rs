//! The trust chain over a fleet's lifetime, checked with tough's own client: root rotation
//! (root, targets and director keys replaced), devices that slept through several rotations,
//! and targets re-signed without changing any artifact.

// A panic is how a test reports failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::num::NonZeroU64;
use std::path::Path;

use tough::RepositoryLoader;
use wavecast_core::trust::KeyRole;
use wavecast_tuf::keys::SigningKey;
use wavecast_tuf::publish::{NewTarget, resign_targets, sign_new_targets};
use wavecast_tuf::repo::{AcceptError, OnlineKeys, OnlinePlan, Submission, accept_submission, sign_online};
use wavecast_tuf::root::{
    KeyChanges, RootError, RootKeys, build_root, changed_keys, director_key, names_key, next_root, verify_chain,
};

fn days(n: i64) -> jiff::Timestamp {
    jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24 * n)
}

/// A repository directory as the server serves it: every root version, the newest targets,
/// snapshot and timestamp.
struct Repo {
    dir: tempfile::TempDir,
    roots: Vec<Vec<u8>>,
    targets: Vec<u8>,
    online: OnlineKeys,
    round: u64,
}

impl Repo {
    fn root(&self) -> tough::schema::Signed<tough::schema::Root> {
        serde_json::from_slice(self.roots.last().unwrap()).unwrap()
    }

    fn targets(&self) -> tough::schema::Signed<tough::schema::Targets> {
        serde_json::from_slice(&self.targets).unwrap()
    }

    /// Writes everything, signing snapshot and timestamp anew as the server does.
    async fn publish(&mut self) {
        self.round += 1;
        let root = self.root();
        let targets_version = self.targets().signed.version;
        let v = NonZeroU64::new(self.round).unwrap();
        let plan = OnlinePlan {
            targets_version,
            snapshot_version: v,
            timestamp_version: v,
            snapshot_expires: days(7),
            timestamp_expires: days(1),
        };
        let online = sign_online(&root.signed, &self.online, &self.targets, plan).await.unwrap();
        let d = self.dir.path();
        for (i, r) in self.roots.iter().enumerate() {
            std::fs::write(d.join(format!("{}.root.json", i + 1)), r).unwrap();
        }
        std::fs::write(d.join(format!("{targets_version}.targets.json")), &self.targets).unwrap();
        std::fs::write(d.join(format!("{v}.snapshot.json")), &online.snapshot).unwrap();
        std::fs::write(d.join("timestamp.json"), &online.timestamp).unwrap();
    }
}

async fn load(anchor: &[u8], repo: &Path, datastore: &Path) -> Result<tough::Repository, tough::error::Error> {
    let url = url::Url::from_directory_path(repo).unwrap();
    RepositoryLoader::new(&anchor, url.clone(), url.join("targets/").unwrap())
        .datastore(datastore.to_path_buf())
        .load()
        .await
}

struct Keys {
    root: SigningKey,
    targets: SigningKey,
    director: SigningKey,
}

async fn new_repo() -> (Repo, Keys) {
    let k = |_: u8| SigningKey::generate().unwrap();
    let (root, targets, snapshot, timestamp, director, checkpoint) = (k(0), k(1), k(2), k(3), k(4), k(5));
    let v1 = build_root(
        &RootKeys {
            root: &root,
            targets: &targets,
            snapshot: &snapshot,
            timestamp: &timestamp,
            director: &director,
            checkpoint: &checkpoint,
        },
        days(365),
    )
    .await
    .unwrap();
    let first = wavecast_tuf::repo::initial_targets(&v1.signed().signed, &targets, days(365)).await.unwrap();
    let mut repo = Repo {
        dir: tempfile::tempdir().unwrap(),
        roots: vec![v1.buffer().clone()],
        targets: first,
        online: OnlineKeys { snapshot, timestamp },
        round: 0,
    };
    repo.publish().await;
    (repo, Keys { root, targets, director })
}

async fn add_target(repo: &mut Repo, key: &SigningKey, name: &str) -> Result<(), wavecast_tuf::publish::PublishError> {
    let new = NewTarget {
        target: wavecast_core::TargetName::parse(name).unwrap(),
        length: 3,
        sha256: wavecast_core::Sha256Digest::of(b"abc"),
        hardware: None,
        golden: None,
    };
    let signed = sign_new_targets(&repo.root().signed, &repo.targets(), &new, key, days(365)).await?;
    repo.targets = signed.buffer().clone();
    repo.publish().await;
    Ok(())
}

#[tokio::test]
async fn devices_follow_a_root_rotation_and_refuse_the_retired_keys() {
    let (mut repo, old) = new_repo().await;
    let anchor = repo.roots[0].clone();
    let device = tempfile::tempdir().unwrap();
    add_target(&mut repo, &old.targets, "yolo@1.0.0").await.unwrap();
    let before = load(&anchor, repo.dir.path(), device.path()).await.unwrap();
    assert_eq!(before.root().signed.version.get(), 1);
    assert_eq!(director_key(&before.root().signed).unwrap(), old.director.public_bytes());

    // Rotate the root, targets and director keys at once: root v2.
    let new_root = SigningKey::generate().unwrap();
    let new_targets = SigningKey::generate().unwrap();
    let new_director = SigningKey::generate().unwrap();
    let changes = KeyChanges {
        root: Some(&new_root),
        targets: Some(&new_targets),
        director: Some(&new_director),
        ..KeyChanges::default()
    };
    let v2 = next_root(&repo.root(), &old.root, &changes, days(365)).await.unwrap();
    assert_eq!(
        changed_keys(&repo.root().signed, &v2.signed().signed),
        [KeyRole::Root, KeyRole::Targets, KeyRole::Director],
        "the keys the rotation replaced, and only those"
    );
    assert!(names_key(&v2.signed().signed, KeyRole::Director, &new_director));
    assert!(!names_key(&v2.signed().signed, KeyRole::Director, &old.director));
    assert!(names_key(&v2.signed().signed, KeyRole::Targets, &new_targets));
    assert!(!names_key(&v2.signed().signed, KeyRole::Targets, &old.targets));
    repo.roots.push(v2.buffer().clone());
    // The current targets must be signed again by the new targets key, changing nothing.
    let resigned = resign_targets(&v2.signed().signed, &repo.targets(), &new_targets, days(365)).await.unwrap();
    let accepted = accept_submission(
        &v2.signed().signed,
        &repo.targets().signed,
        resigned.buffer(),
        jiff::Timestamp::now(),
        Submission::Resign,
    )
    .unwrap();
    assert!(accepted.added.is_empty());
    repo.targets = resigned.buffer().clone();
    repo.publish().await;

    let loaded = load(&anchor, repo.dir.path(), device.path()).await.unwrap();
    assert_eq!(loaded.root().signed.version.get(), 2, "a device pinned to v1 follows the chain to v2");
    assert_eq!(
        director_key(&loaded.root().signed).unwrap(),
        new_director.public_bytes(),
        "the director key comes from the newest root"
    );
    assert!(loaded.targets().signed.targets.keys().any(|t| t.raw() == "yolo@1.0.0"), "no artifact changed");

    // The retired targets key can no longer publish: the publisher side refuses to sign with
    // it, and targets signed with it anyway are refused by the server's check and by devices.
    assert!(matches!(
        add_target(&mut repo, &old.targets, "yolo@2.0.0").await,
        Err(wavecast_tuf::publish::PublishError::NotTargetsKey { .. })
    ));
    let forged = {
        let mut t = repo.targets().signed;
        t.version = t.version.saturating_add(1);
        let holder = tough::schema::KeyHolder::Root(
            repo.roots
                .first()
                .map(|r| serde_json::from_slice::<tough::schema::Signed<tough::schema::Root>>(r).unwrap().signed)
                .unwrap(),
        );
        tough::editor::signed::SignedRole::new(
            t,
            &holder,
            &[old.targets.source()],
            &aws_lc_rs::rand::SystemRandom::new(),
        )
        .await
        .unwrap()
    };
    let refused = accept_submission(
        &repo.root().signed,
        &repo.targets().signed,
        forged.buffer(),
        jiff::Timestamp::now(),
        Submission::Resign,
    );
    assert!(matches!(refused, Err(AcceptError::Signature(_))), "{refused:?}");
    repo.targets = forged.buffer().clone();
    repo.publish().await;
    let fresh = tempfile::tempdir().unwrap();
    let Err(err) = load(&anchor, repo.dir.path(), fresh.path()).await else {
        panic!("a device refuses targets signed by the retired key");
    };
    assert!(
        matches!(err, tough::error::Error::VerifyMetadata { role: tough::schema::RoleType::Targets, .. }),
        "refused for its signature, not something else: {err:?}"
    );
}

#[tokio::test]
async fn a_device_asleep_through_two_rotations_catches_up() {
    let (mut repo, keys) = new_repo().await;
    let anchor = repo.roots[0].clone();
    let r2 = SigningKey::generate().unwrap();
    let r3 = SigningKey::generate().unwrap();
    let v2 = next_root(&repo.root(), &keys.root, &KeyChanges { root: Some(&r2), ..KeyChanges::default() }, days(365))
        .await
        .unwrap();
    repo.roots.push(v2.buffer().clone());
    let v3 = next_root(&repo.root(), &r2, &KeyChanges { root: Some(&r3), ..KeyChanges::default() }, days(365))
        .await
        .unwrap();
    repo.roots.push(v3.buffer().clone());
    repo.publish().await;

    let device = tempfile::tempdir().unwrap();
    let loaded = load(&anchor, repo.dir.path(), device.path()).await.unwrap();
    assert_eq!(loaded.root().signed.version.get(), 3);
    assert_eq!(verify_chain(&anchor, &repo.roots[1..]).unwrap().signed.version.get(), 3);
    // The key of v1 can no longer sign a root.
    let stale = next_root(&repo.root(), &keys.root, &KeyChanges::default(), days(365)).await;
    assert!(matches!(stale, Err(RootError::NotRootKey { version: 3, .. })), "{stale:?}");
}

#[tokio::test]
async fn a_chain_is_refused_where_it_breaks() {
    let (repo, keys) = new_repo().await;
    let anchor = repo.roots[0].clone();
    let other = SigningKey::generate().unwrap();

    // Signed by the new root key only: the current root never agreed to it.
    let mut only_new =
        next_root(&repo.root(), &keys.root, &KeyChanges { root: Some(&other), ..KeyChanges::default() }, days(365))
            .await
            .unwrap()
            .signed()
            .clone();
    let new_id = other.key_id().unwrap();
    only_new.signatures.retain(|s| s.keyid == new_id);
    let bytes = serde_json::to_vec(&only_new).unwrap();
    assert!(matches!(
        verify_chain(&anchor, &[bytes]),
        Err(RootError::ChainSignature { version: 2, by: "the previous root's keys", .. })
    ));

    // A version that skips one.
    let v2 = next_root(&repo.root(), &keys.root, &KeyChanges::default(), days(365)).await.unwrap();
    assert!(changed_keys(&repo.root().signed, &v2.signed().signed).is_empty(), "a renewal changes no key");
    let v3 = next_root(&v2.signed().clone(), &keys.root, &KeyChanges::default(), days(365)).await.unwrap();
    assert!(matches!(verify_chain(&anchor, &[v3.buffer()]), Err(RootError::ChainVersion { current: 1, got: 3 })));

    // An unrelated installation's root, even at the right version.
    let (stranger, stranger_keys) = new_repo().await;
    let theirs = next_root(&stranger.root(), &stranger_keys.root, &KeyChanges::default(), days(365)).await.unwrap();
    assert!(matches!(verify_chain(&anchor, &[theirs.buffer()]), Err(RootError::ChainSignature { version: 2, .. })));
    assert_eq!(verify_chain(&anchor, &[v2.buffer(), v3.buffer()]).unwrap().signed.version.get(), 3);
}

#[tokio::test]
async fn resigning_renews_expiry_and_adds_nothing() {
    let (mut repo, keys) = new_repo().await;
    add_target(&mut repo, &keys.targets, "yolo@1.0.0").await.unwrap();
    let before = repo.targets();
    let renewed = resign_targets(&repo.root().signed, &before, &keys.targets, days(400)).await.unwrap();
    let after = &renewed.signed().signed;
    assert_eq!(after.version.get(), before.signed.version.get() + 1);
    assert!(after.expires > before.signed.expires);
    assert_eq!(after.targets, before.signed.targets, "no artifact changes");
    accept_submission(
        &repo.root().signed,
        &before.signed,
        renewed.buffer(),
        jiff::Timestamp::now(),
        Submission::Resign,
    )
    .unwrap();
    // A publish is not a re-signing: one that adds a target is refused as a re-signing, and a
    // re-signing is refused as a publish.
    let plus = NewTarget {
        target: wavecast_core::TargetName::parse("yolo@2.0.0").unwrap(),
        length: 1,
        sha256: wavecast_core::Sha256Digest::of(b"x"),
        hardware: None,
        golden: None,
    };
    let published = sign_new_targets(&repo.root().signed, &before, &plus, &keys.targets, days(365)).await.unwrap();
    assert!(matches!(
        accept_submission(
            &repo.root().signed,
            &before.signed,
            published.buffer(),
            jiff::Timestamp::now(),
            Submission::Resign
        ),
        Err(AcceptError::ResignAdds { .. })
    ));
    assert!(matches!(
        accept_submission(
            &repo.root().signed,
            &before.signed,
            renewed.buffer(),
            jiff::Timestamp::now(),
            Submission::Publish
        ),
        Err(AcceptError::NothingAdded)
    ));
}
