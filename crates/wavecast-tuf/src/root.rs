//! The trust anchor: a TUF root naming the four role keys, plus wavecast's director and audit
//! checkpoint keys.

use std::collections::HashMap;
use std::num::NonZeroU64;

use aws_lc_rs::rand::SystemRandom;
use tough::editor::signed::SignedRole;
use tough::schema::{KeyHolder, RoleKeys, RoleType, Root, Signed};

use wavecast_core::trust::KeyRole;

use crate::keys::{KeyError, SigningKey};
use crate::{SPEC_VERSION, WAVECAST_ROOT_FIELD};

/// Errors building or reading a root.
#[derive(Debug, thiserror::Error)]
pub enum RootError {
    /// A key could not be turned into its TUF form.
    #[error("preparing root keys")]
    Key(#[from] KeyError),
    /// tough refused to sign.
    #[error("signing root.json")]
    Sign(#[source] Box<tough::error::Error>),
    /// The bytes are not a root.
    #[error("root.json does not parse")]
    Parse(#[source] serde_json::Error),
    /// The root is not signed by its own root keys.
    #[error("root.json is not signed by the root keys it names")]
    Verify(#[source] Box<tough::schema::Error>),
    /// The root does not carry wavecast's director key.
    #[error("root.json has no director key in its {WAVECAST_ROOT_FIELD:?} field")]
    NoDirectorKey,
    /// The root does not carry the audit log's checkpoint key (it predates signed checkpoints).
    #[error("root.json has no audit checkpoint key in its {WAVECAST_ROOT_FIELD:?} field")]
    NoCheckpointKey,
    /// The key given to sign a new root is not a root key of the current one.
    #[error(
        "the key given (key id {key_id}) is not a root key of root.json version {version}; sign with the current root key"
    )]
    NotRootKey {
        /// The key given.
        key_id: String,
        /// The current root's version.
        version: u64,
    },
    /// A root in a chain does not follow the one before it.
    #[error("root.json version {got} does not follow version {current}: each new root must be the next version")]
    ChainVersion {
        /// The version trusted so far.
        current: u64,
        /// The version offered next.
        got: u64,
    },
    /// A root in a chain is not signed by the root keys of the one before it (or of itself).
    #[error("root.json version {version} is not signed by {by}")]
    ChainSignature {
        /// The version offered.
        version: u64,
        /// Whose keys are missing: the previous root's or its own.
        by: &'static str,
        /// The cause.
        #[source]
        source: Box<tough::schema::Error>,
    },
}

/// The keys a new root names.
pub struct RootKeys<'a> {
    /// Signs root (offline).
    pub root: &'a SigningKey,
    /// Signs targets (offline, the publisher's key).
    pub targets: &'a SigningKey,
    /// Signs snapshot (online, server).
    pub snapshot: &'a SigningKey,
    /// Signs timestamp (online, server).
    pub timestamp: &'a SigningKey,
    /// Signs device assignments (online, server).
    pub director: &'a SigningKey,
    /// Signs audit log checkpoints (online, server; never stored in the database).
    pub checkpoint: &'a SigningKey,
}

/// Builds and signs version 1 of a root expiring at `expires`.
pub async fn build_root(keys: &RootKeys<'_>, expires: jiff::Timestamp) -> Result<SignedRole<Root>, RootError> {
    let mut tuf_keys = HashMap::new();
    let mut roles = HashMap::new();
    for (role, key) in [
        (RoleType::Root, keys.root),
        (RoleType::Targets, keys.targets),
        (RoleType::Snapshot, keys.snapshot),
        (RoleType::Timestamp, keys.timestamp),
    ] {
        let id = key.key_id()?;
        tuf_keys.insert(id.clone(), key.tuf_key());
        roles.insert(role, RoleKeys { keyids: vec![id], threshold: NonZeroU64::MIN, _extra: HashMap::new() });
    }
    let mut extra = HashMap::new();
    extra.insert(
        WAVECAST_ROOT_FIELD.to_owned(),
        serde_json::json!({
            "director_key": { "keytype": "ed25519", "public": hex::encode(keys.director.public_bytes()) },
            "checkpoint_key": { "keytype": "ed25519", "public": hex::encode(keys.checkpoint.public_bytes()) },
        }),
    );
    let root = Root {
        spec_version: SPEC_VERSION.to_owned(),
        consistent_snapshot: true,
        version: NonZeroU64::MIN,
        expires: crate::whole_seconds(expires),
        keys: tuf_keys,
        roles,
        _extra: extra,
    };
    let holder = KeyHolder::Root(root.clone());
    SignedRole::new(root, &holder, &[keys.root.source()], &SystemRandom::new())
        .await
        .map_err(|e| RootError::Sign(Box::new(e)))
}

/// The keys a new root version names instead of the current ones; `None` keeps a role's key.
///
/// Only public halves go into root.json, but each is given as the key itself: the new root key
/// must sign, and whoever rotates an online key (snapshot, timestamp, director, checkpoint)
/// hands its private half to the server next.
#[derive(Debug, Default, Clone, Copy)]
pub struct KeyChanges<'a> {
    /// A new root key; it signs the new root together with the current one.
    pub root: Option<&'a SigningKey>,
    /// A new targets (publisher) key.
    pub targets: Option<&'a SigningKey>,
    /// A new snapshot key.
    pub snapshot: Option<&'a SigningKey>,
    /// A new timestamp key.
    pub timestamp: Option<&'a SigningKey>,
    /// A new director key.
    pub director: Option<&'a SigningKey>,
    /// A new audit checkpoint key.
    pub checkpoint: Option<&'a SigningKey>,
}

/// Builds and signs the root that follows `current`: version + 1, `expires`, and the keys
/// `changes` names. It is signed by `current_root_key` (a root key of `current`) and by the
/// new root key if there is one, as TUF requires of a rotation: devices that trust `current`
/// accept it, and it stands on its own keys afterwards.
pub async fn next_root(
    current: &Signed<Root>,
    current_root_key: &SigningKey,
    changes: &KeyChanges<'_>,
    expires: jiff::Timestamp,
) -> Result<SignedRole<Root>, RootError> {
    let old = &current.signed;
    let signer_id = current_root_key.key_id()?;
    if !old.roles.get(&RoleType::Root).is_some_and(|r| r.keyids.contains(&signer_id)) {
        return Err(RootError::NotRootKey { key_id: hex::encode(&signer_id), version: old.version.get() });
    }
    let mut next = old.clone();
    next.version = old.version.saturating_add(1);
    next.expires = crate::whole_seconds(expires);
    for (role, key) in [
        (RoleType::Root, changes.root),
        (RoleType::Targets, changes.targets),
        (RoleType::Snapshot, changes.snapshot),
        (RoleType::Timestamp, changes.timestamp),
    ] {
        let Some(key) = key else { continue };
        let id = key.key_id()?;
        next.keys.insert(id.clone(), key.tuf_key());
        next.roles.insert(role, RoleKeys { keyids: vec![id], threshold: NonZeroU64::MIN, _extra: HashMap::new() });
    }
    // A key no role names any more leaves the root, so nothing can be signed with it.
    let named: Vec<_> = next.roles.values().flat_map(|r| r.keyids.iter().cloned()).collect();
    next.keys.retain(|id, _| named.contains(id));
    for (field, key) in [("director_key", changes.director), ("checkpoint_key", changes.checkpoint)] {
        let Some(key) = key else { continue };
        let ours = next._extra.entry(WAVECAST_ROOT_FIELD.to_owned()).or_insert_with(|| serde_json::json!({}));
        ours[field] = serde_json::json!({ "keytype": "ed25519", "public": hex::encode(key.public_bytes()) });
    }
    let rng = SystemRandom::new();
    let new_root_key = changes.root.unwrap_or(current_root_key);
    let by_new = SignedRole::new(next.clone(), &KeyHolder::Root(next.clone()), &[new_root_key.source()], &rng)
        .await
        .map_err(|e| RootError::Sign(Box::new(e)))?;
    // tough signs a role only with keys its holder lists for that role; the current root lists
    // the current root key, so this is the current key's signature over the new root.
    let by_old = SignedRole::new(next, &KeyHolder::Root(old.clone()), &[current_root_key.source()], &rng)
        .await
        .map_err(|e| RootError::Sign(Box::new(e)))?;
    by_new.add_old_signatures(by_old.signed().signatures.clone()).map_err(|e| RootError::Sign(Box::new(e)))
}

/// Checks that `next` follows `current` as TUF's root rotation requires: the next version,
/// signed by a threshold of `current`'s root keys and of its own. Expiry is not checked here:
/// a chain is walked through expired roots to reach the newest.
pub fn verify_next(current: &Root, next: &[u8]) -> Result<Signed<Root>, RootError> {
    let root: Signed<Root> = serde_json::from_slice(next).map_err(RootError::Parse)?;
    let (have, got) = (current.version.get(), root.signed.version.get());
    if got != have.saturating_add(1) {
        return Err(RootError::ChainVersion { current: have, got });
    }
    current.verify_role(&root).map_err(|source| RootError::ChainSignature {
        version: got,
        by: "the previous root's keys",
        source: Box::new(source),
    })?;
    root.signed.verify_role(&root).map_err(|source| RootError::ChainSignature {
        version: got,
        by: "its own root keys",
        source: Box::new(source),
    })?;
    Ok(root)
}

/// Walks from the trust anchor through each later root in order and returns the newest.
pub fn verify_chain<B: AsRef<[u8]>>(anchor: &[u8], later: &[B]) -> Result<Signed<Root>, RootError> {
    let mut newest = parse_root(anchor)?;
    for next in later {
        newest = verify_next(&newest.signed, next.as_ref())?;
    }
    Ok(newest)
}

/// Parses root.json and checks it is signed by its own root keys.
pub fn parse_root(bytes: &[u8]) -> Result<Signed<Root>, RootError> {
    let root: Signed<Root> = serde_json::from_slice(bytes).map_err(RootError::Parse)?;
    root.signed.verify_role(&root).map_err(|e| RootError::Verify(Box::new(e)))?;
    Ok(root)
}

/// The keys `next` names that `current` did not (each role whose key ids, or whose wavecast key,
/// differ), in [`KeyRole::ALL`] order; empty for a renewal that only moves the expiry.
pub fn changed_keys(current: &Root, next: &Root) -> Vec<KeyRole> {
    let ids = |root: &Root, role: RoleType| root.roles.get(&role).map(|r| r.keyids.clone()).unwrap_or_default();
    KeyRole::ALL
        .into_iter()
        .filter(|k| match k {
            KeyRole::Root => ids(current, RoleType::Root) != ids(next, RoleType::Root),
            KeyRole::Targets => ids(current, RoleType::Targets) != ids(next, RoleType::Targets),
            KeyRole::Snapshot => ids(current, RoleType::Snapshot) != ids(next, RoleType::Snapshot),
            KeyRole::Timestamp => ids(current, RoleType::Timestamp) != ids(next, RoleType::Timestamp),
            KeyRole::Director => wavecast_key(current, "director_key") != wavecast_key(next, "director_key"),
            KeyRole::Checkpoint => wavecast_key(current, "checkpoint_key") != wavecast_key(next, "checkpoint_key"),
        })
        .collect()
}

/// Whether `root` names `key` for `role`: among the role's key ids for the TUF roles, as its
/// public key in the `x-wavecast` field for the director and checkpoint keys.
pub fn names_key(root: &Root, role: KeyRole, key: &SigningKey) -> bool {
    let tuf =
        |r: RoleType| key.key_id().is_ok_and(|id| root.roles.get(&r).is_some_and(|keys| keys.keyids.contains(&id)));
    match role {
        KeyRole::Root => tuf(RoleType::Root),
        KeyRole::Targets => tuf(RoleType::Targets),
        KeyRole::Snapshot => tuf(RoleType::Snapshot),
        KeyRole::Timestamp => tuf(RoleType::Timestamp),
        KeyRole::Director => wavecast_key(root, "director_key").is_some_and(|k| k == key.public_bytes()),
        KeyRole::Checkpoint => wavecast_key(root, "checkpoint_key").is_some_and(|k| k == key.public_bytes()),
    }
}

/// What `root` names for `role`, for messages: the TUF key ids, or the wavecast key in hex.
pub fn named_key(root: &Root, role: KeyRole) -> String {
    let tuf =
        |r: RoleType| root.roles.get(&r).map(|keys| keys.keyids.iter().map(hex::encode).collect::<Vec<_>>().join(", "));
    match role {
        KeyRole::Root => tuf(RoleType::Root),
        KeyRole::Targets => tuf(RoleType::Targets),
        KeyRole::Snapshot => tuf(RoleType::Snapshot),
        KeyRole::Timestamp => tuf(RoleType::Timestamp),
        KeyRole::Director => wavecast_key(root, "director_key").map(hex::encode),
        KeyRole::Checkpoint => wavecast_key(root, "checkpoint_key").map(hex::encode),
    }
    .unwrap_or_else(|| "none".to_owned())
}

/// The director's Ed25519 public key named in a root.
pub fn director_key(root: &Root) -> Result<[u8; 32], RootError> {
    wavecast_key(root, "director_key").ok_or(RootError::NoDirectorKey)
}

/// The audit checkpoint key's Ed25519 public key named in a root: auditors take it from the
/// signed trust anchor, so no one who can write the database can swap it.
pub fn checkpoint_key(root: &Root) -> Result<[u8; 32], RootError> {
    wavecast_key(root, "checkpoint_key").ok_or(RootError::NoCheckpointKey)
}

fn wavecast_key(root: &Root, field: &str) -> Option<[u8; 32]> {
    let public = root._extra.get(WAVECAST_ROOT_FIELD)?.get(field)?.get("public")?.as_str()?;
    let mut out = [0u8; 32];
    hex::decode_to_slice(public, &mut out).ok()?;
    Some(out)
}
