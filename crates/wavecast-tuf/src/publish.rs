//! Publisher side: add one target to the targets metadata and sign it with the offline key.
//!
//! This runs on the operator's machine; the targets key never leaves it. The server only ever
//! sees the signed result.

use std::collections::HashMap;
use std::num::NonZeroU64;

use aws_lc_rs::rand::SystemRandom;
use tough::editor::signed::SignedRole;
use tough::schema::decoded::Decoded;
use tough::schema::{Hashes, KeyHolder, Root, Signed, Target, Targets};
use wavecast_core::{Sha256Digest, TargetName};

use crate::HARDWARE_FIELD;
use crate::golden::{GOLDEN_FIELD, Golden};
use crate::keys::{KeyError, SigningKey};

/// Errors preparing a new targets file.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The target is already published with these very bytes.
    #[error("{target} is already published with sha256 {sha256}")]
    AlreadyPublished {
        /// The target.
        target: TargetName,
        /// Its digest.
        sha256: Sha256Digest,
    },
    /// The target is already published with other bytes.
    #[error("{target} is already published with different content (sha256 {existing}); publish a new version instead")]
    Duplicate {
        /// The target.
        target: TargetName,
        /// The digest already published.
        existing: String,
    },
    /// The target is already published with these bytes but another golden set (or none).
    #[error(
        "{target} is already published with these bytes and another golden set; publish a new version to change it"
    )]
    GoldenDiffers {
        /// The target.
        target: TargetName,
    },
    /// The key given could not be read as a TUF key.
    #[error("reading the publisher key")]
    Key(#[source] KeyError),
    /// The key given is not the targets key that root.json names.
    #[error("the key given is not the targets key named by the server's root.json (key id {key_id})")]
    NotTargetsKey {
        /// The id of the key that was given.
        key_id: String,
    },
    /// tough refused to sign.
    #[error("signing targets metadata")]
    Sign(#[source] Box<tough::error::Error>),
    /// The target name is not one tough accepts.
    #[error("target name {0} is not valid TUF")]
    TargetName(TargetName),
}

/// One artifact version to add.
#[derive(Debug, Clone)]
pub struct NewTarget {
    /// `NAME@VERSION`.
    pub target: TargetName,
    /// Size in bytes.
    pub length: u64,
    /// SHA-256 of the bytes.
    pub sha256: Sha256Digest,
    /// Hardware it is built for, if it is specific to one.
    pub hardware: Option<String>,
    /// The golden set signed with it, if any.
    pub golden: Option<Golden>,
}

fn check_targets_key(root: &Root, key: &SigningKey) -> Result<(), PublishError> {
    let key_id = key.key_id().map_err(PublishError::Key)?;
    let is_targets_key = root.roles.get(&tough::schema::RoleType::Targets).is_some_and(|r| r.keyids.contains(&key_id));
    if is_targets_key { Ok(()) } else { Err(PublishError::NotTargetsKey { key_id: hex::encode(&key_id) }) }
}

/// Signs `current`'s targets again, unchanged, as the next version expiring at `expires`:
/// renewal before expiry, or after the targets key was rotated (the new root names the new
/// key, and devices accept targets signed by it only). No artifact changes.
pub async fn resign_targets(
    root: &Root,
    current: &Signed<Targets>,
    key: &SigningKey,
    expires: jiff::Timestamp,
) -> Result<SignedRole<Targets>, PublishError> {
    check_targets_key(root, key)?;
    let mut targets = current.signed.clone();
    targets.version = targets.version.saturating_add(1);
    targets.expires = crate::whole_seconds(expires);
    SignedRole::new(targets, &KeyHolder::Root(root.clone()), &[key.source()], &SystemRandom::new())
        .await
        .map_err(|e| PublishError::Sign(Box::new(e)))
}

/// Adds `new` to `current`, bumps the version, sets `expires`, and signs with `key`.
pub async fn sign_new_targets(
    root: &Root,
    current: &Signed<Targets>,
    new: &NewTarget,
    key: &SigningKey,
    expires: jiff::Timestamp,
) -> Result<SignedRole<Targets>, PublishError> {
    let tough_name =
        tough::TargetName::new(new.target.to_string()).map_err(|_| PublishError::TargetName(new.target.clone()))?;
    if let Some(existing) = current.signed.targets.get(&tough_name) {
        let existing_hex = hex::encode(&existing.hashes.sha256);
        if existing_hex == new.sha256.to_hex() && existing.length == new.length {
            // The same bytes with another golden set (or with one where there was none) is not
            // a retry: saying "already published" would hide that the new set was not signed.
            let signed = Golden::from_custom(&existing.custom).ok().flatten().map(|g| (g.sha256, g.length));
            if signed != new.golden.map(|g| (g.sha256, g.length)) {
                return Err(PublishError::GoldenDiffers { target: new.target.clone() });
            }
            return Err(PublishError::AlreadyPublished { target: new.target.clone(), sha256: new.sha256 });
        }
        return Err(PublishError::Duplicate { target: new.target.clone(), existing: existing_hex });
    }
    check_targets_key(root, key)?;
    let mut targets = current.signed.clone();
    targets.version = targets.version.checked_add(1).unwrap_or(NonZeroU64::MAX);
    targets.expires = crate::whole_seconds(expires);
    let mut custom = HashMap::new();
    if let Some(hw) = &new.hardware {
        custom.insert(HARDWARE_FIELD.to_owned(), serde_json::Value::String(hw.clone()));
    }
    if let Some(golden) = &new.golden {
        custom.insert(GOLDEN_FIELD.to_owned(), golden.to_value());
    }
    targets.targets.insert(
        tough_name,
        Target {
            length: new.length,
            hashes: Hashes { sha256: Decoded::from(new.sha256.as_bytes().to_vec()), _extra: HashMap::new() },
            custom,
            _extra: HashMap::new(),
        },
    );
    SignedRole::new(targets, &KeyHolder::Root(root.clone()), &[key.source()], &SystemRandom::new())
        .await
        .map_err(|e| PublishError::Sign(Box::new(e)))
}
