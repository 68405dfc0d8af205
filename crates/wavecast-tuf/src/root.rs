//! The trust anchor: a TUF root naming the four role keys, plus wavecast's director and audit
//! checkpoint keys.

use std::collections::HashMap;
use std::num::NonZeroU64;

use aws_lc_rs::rand::SystemRandom;
use tough::editor::signed::SignedRole;
use tough::schema::{KeyHolder, RoleKeys, RoleType, Root, Signed};

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
    Sign(#[source] tough::error::Error),
    /// The bytes are not a root.
    #[error("root.json does not parse")]
    Parse(#[source] serde_json::Error),
    /// The root is not signed by its own root keys.
    #[error("root.json is not signed by the root keys it names")]
    Verify(#[source] tough::schema::Error),
    /// The root does not carry wavecast's director key.
    #[error("root.json has no director key in its {WAVECAST_ROOT_FIELD:?} field")]
    NoDirectorKey,
    /// The root does not carry the audit log's checkpoint key (it predates signed checkpoints).
    #[error("root.json has no audit checkpoint key in its {WAVECAST_ROOT_FIELD:?} field")]
    NoCheckpointKey,
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
    SignedRole::new(root, &holder, &[keys.root.source()], &SystemRandom::new()).await.map_err(RootError::Sign)
}

/// Parses root.json and checks it is signed by its own root keys.
pub fn parse_root(bytes: &[u8]) -> Result<Signed<Root>, RootError> {
    let root: Signed<Root> = serde_json::from_slice(bytes).map_err(RootError::Parse)?;
    root.signed.verify_role(&root).map_err(RootError::Verify)?;
    Ok(root)
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
