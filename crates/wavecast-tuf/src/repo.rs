//! Server side: accept a publisher's targets file, and sign snapshot and timestamp over it.
//!
//! The server never holds the targets key. It checks what it is handed — signature against the
//! root, version, expiry, and that no existing target was removed or changed — and then signs
//! snapshot and timestamp over the submitted bytes exactly as received.

use std::collections::HashMap;
use std::num::NonZeroU64;

use aws_lc_rs::rand::SystemRandom;
use tough::editor::signed::SignedRole;
use tough::schema::decoded::Decoded;
use tough::schema::{Hashes, KeyHolder, Metafile, Root, Signed, Snapshot, Target, Targets, Timestamp};
use wavecast_core::name::NameError;
use wavecast_core::{Sha256Digest, TargetName};

use crate::golden::{Golden, GoldenFieldError};
use crate::keys::SigningKey;
use crate::{HARDWARE_FIELD, SPEC_VERSION};

/// Why a submitted targets file was refused.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    /// Not a TUF targets file.
    #[error("targets metadata does not parse: {0}")]
    Parse(#[source] serde_json::Error),
    /// Not signed by the targets key(s) in root.json.
    #[error("targets metadata is not signed by the targets key in root.json: {0}")]
    Signature(#[source] Box<tough::schema::Error>),
    /// Already expired.
    #[error("targets metadata expired at {expires}")]
    Expired {
        /// Its expiry.
        expires: jiff::Timestamp,
    },
    /// Its version is not the current version plus one.
    #[error("targets metadata version {submitted} does not follow the current version {current}")]
    VersionNotNext {
        /// The server's current version.
        current: u64,
        /// The submitted version.
        submitted: u64,
    },
    /// A published target is missing from the new file.
    #[error("{name} is published and cannot be removed")]
    TargetRemoved {
        /// The target.
        name: String,
    },
    /// A published name@version would point at other bytes.
    #[error("{name} is already published with different content (sha256 {existing}); publish a new version instead")]
    TargetChanged {
        /// The target.
        name: String,
        /// The digest already published.
        existing: String,
    },
    /// A new target's name is not `NAME@VERSION` with valid halves (path traversal included).
    #[error("target name {name:?} is refused: {source}")]
    BadTargetName {
        /// The refused name.
        name: String,
        /// Why.
        #[source]
        source: NameError,
    },
    /// A new target's golden field is not one wavecast reads.
    #[error("target {name}'s golden set is refused")]
    BadGolden {
        /// The target.
        name: String,
        /// Why.
        #[source]
        source: GoldenFieldError,
    },
    /// Delegations are not something wavecast publishes.
    #[error("targets metadata with delegated roles is not supported")]
    Delegations,
    /// Nothing was added.
    #[error("targets metadata adds no target")]
    NothingAdded,
    /// A re-signing must not add targets; publishing does that.
    #[error("re-signed targets metadata must not add targets, but it adds {}", names.join(", "))]
    ResignAdds {
        /// The targets it would add.
        names: Vec<String>,
    },
}

/// The version and expiry of a signed metadata file of any role, read without the rest (a
/// targets file can be megabytes; its targets are skipped, not built).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetadataHead {
    /// The version.
    pub version: u64,
    /// When it expires.
    pub expires: jiff::Timestamp,
}

impl MetadataHead {
    /// Reads the version and expiry of signed metadata (`{"signed": {...}, "signatures": [...]}`).
    /// The signatures are not checked: this is for reports, never for trust.
    pub fn parse(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        #[derive(serde::Deserialize)]
        struct Outer {
            signed: Self_,
        }
        #[derive(serde::Deserialize)]
        struct Self_ {
            version: u64,
            expires: jiff::Timestamp,
        }
        let outer: Outer = serde_json::from_slice(bytes)?;
        Ok(Self { version: outer.signed.version, expires: outer.signed.expires })
    }
}

/// A target as wavecast reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetInfo {
    /// `NAME@VERSION`.
    pub target: TargetName,
    /// Size in bytes.
    pub length: u64,
    /// SHA-256 of the bytes.
    pub sha256: Sha256Digest,
    /// Hardware it is built for, if any.
    pub hardware: Option<String>,
    /// The golden set signed with it, if any.
    pub golden: Option<Golden>,
}

impl TargetInfo {
    /// Reads wavecast's view of a TUF target.
    pub fn from_target(name: &str, target: &Target) -> Result<Self, AcceptError> {
        let bad = |source| AcceptError::BadTargetName { name: name.to_owned(), source };
        let target_name = TargetName::parse(name).map_err(bad)?;
        let sha256 = Sha256Digest::from_slice(&target.hashes.sha256).map_err(|_| AcceptError::BadTargetName {
            name: name.to_owned(),
            source: NameError::BadTarget { target: "sha256 is not 32 bytes".into() },
        })?;
        let hardware = target.custom.get(HARDWARE_FIELD).and_then(|v| v.as_str()).map(str::to_owned);
        let golden = Golden::from_custom(&target.custom)
            .map_err(|source| AcceptError::BadGolden { name: name.to_owned(), source })?;
        Ok(Self { target: target_name, length: target.length, sha256, hardware, golden })
    }
}

/// A targets file the server accepted.
#[derive(Debug)]
pub struct Accepted {
    /// The parsed metadata.
    pub targets: Signed<Targets>,
    /// The targets it adds.
    pub added: Vec<TargetInfo>,
}

/// What a submitted targets file is meant to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Submission {
    /// Add at least one new target (a publish).
    Publish,
    /// Change nothing but the version and expiry (a renewal, or re-signing with a rotated key).
    Resign,
}

/// Checks a submitted targets file against `root` and the current targets.
pub fn accept_targets(
    root: &Root,
    current: &Targets,
    bytes: &[u8],
    now: jiff::Timestamp,
) -> Result<Accepted, AcceptError> {
    accept_submission(root, current, bytes, now, Submission::Publish)
}

/// Checks a submitted targets file against `root` and the current targets, for `kind`: every
/// rule of a publish holds for a re-signing too (signature by the root's targets key, next
/// version, not expired, nothing removed or changed), and a re-signing adds nothing.
pub fn accept_submission(
    root: &Root,
    current: &Targets,
    bytes: &[u8],
    now: jiff::Timestamp,
    kind: Submission,
) -> Result<Accepted, AcceptError> {
    let submitted: Signed<Targets> = serde_json::from_slice(bytes).map_err(AcceptError::Parse)?;
    root.verify_role(&submitted).map_err(|e| AcceptError::Signature(Box::new(e)))?;
    let new = &submitted.signed;
    if new.expires <= now {
        return Err(AcceptError::Expired { expires: new.expires });
    }
    if new.version.get() != current.version.get().saturating_add(1) {
        return Err(AcceptError::VersionNotNext { current: current.version.get(), submitted: new.version.get() });
    }
    if new.delegations.as_ref().is_some_and(|d| !d.roles.is_empty()) {
        return Err(AcceptError::Delegations);
    }
    for (name, old) in &current.targets {
        match new.targets.get(name) {
            None => {
                return Err(AcceptError::TargetRemoved { name: name.raw().to_owned() });
            }
            Some(t) if t != old => {
                return Err(AcceptError::TargetChanged {
                    name: name.raw().to_owned(),
                    existing: hex::encode(&old.hashes.sha256),
                });
            }
            Some(_) => {}
        }
    }
    let mut added = Vec::new();
    for (name, target) in &new.targets {
        if !current.targets.contains_key(name) {
            added.push(TargetInfo::from_target(name.raw(), target)?);
        }
    }
    match kind {
        Submission::Publish if added.is_empty() => return Err(AcceptError::NothingAdded),
        Submission::Resign if !added.is_empty() => {
            return Err(AcceptError::ResignAdds { names: added.iter().map(|a| a.target.to_string()).collect() });
        }
        _ => {}
    }
    added.sort_by(|a, b| a.target.cmp(&b.target));
    Ok(Accepted { targets: submitted, added })
}

/// Errors signing with the online keys.
#[derive(Debug, thiserror::Error)]
pub enum OnlineSignError {
    /// tough refused to sign a role.
    #[error("signing {role} metadata")]
    Sign {
        /// The role.
        role: &'static str,
        /// The cause.
        #[source]
        source: Box<tough::error::Error>,
    },
}

/// The server's online TUF keys.
#[derive(Debug, Clone)]
pub struct OnlineKeys {
    /// Signs snapshot.json.
    pub snapshot: SigningKey,
    /// Signs timestamp.json.
    pub timestamp: SigningKey,
}

/// Versions and expiries for one round of online signing.
#[derive(Debug, Clone, Copy)]
pub struct OnlinePlan {
    /// Version of the targets file the snapshot names.
    pub targets_version: NonZeroU64,
    /// Version of the new snapshot.
    pub snapshot_version: NonZeroU64,
    /// Version of the new timestamp.
    pub timestamp_version: NonZeroU64,
    /// Snapshot expiry.
    pub snapshot_expires: jiff::Timestamp,
    /// Timestamp expiry.
    pub timestamp_expires: jiff::Timestamp,
}

/// Signed snapshot and timestamp bytes.
#[derive(Debug, Clone)]
pub struct OnlineSigned {
    /// `N.snapshot.json`.
    pub snapshot: Vec<u8>,
    /// `timestamp.json`.
    pub timestamp: Vec<u8>,
}

fn metafile(bytes: &[u8], version: NonZeroU64) -> Metafile {
    Metafile {
        length: Some(bytes.len() as u64),
        hashes: Some(Hashes {
            sha256: Decoded::from(Sha256Digest::of(bytes).as_bytes().to_vec()),
            _extra: HashMap::new(),
        }),
        version,
        _extra: HashMap::new(),
    }
}

/// Signs a snapshot over `targets_bytes` and a timestamp over that snapshot.
pub async fn sign_online(
    root: &Root,
    keys: &OnlineKeys,
    targets_bytes: &[u8],
    plan: OnlinePlan,
) -> Result<OnlineSigned, OnlineSignError> {
    let holder = KeyHolder::Root(root.clone());
    let rng = SystemRandom::new();
    let mut snapshot =
        Snapshot::new(SPEC_VERSION.to_owned(), plan.snapshot_version, crate::whole_seconds(plan.snapshot_expires));
    snapshot.meta.insert("targets.json".to_owned(), metafile(targets_bytes, plan.targets_version));
    let snapshot = SignedRole::new(snapshot, &holder, &[keys.snapshot.source()], &rng)
        .await
        .map_err(|e| OnlineSignError::Sign { role: "snapshot", source: Box::new(e) })?;
    let mut timestamp =
        Timestamp::new(SPEC_VERSION.to_owned(), plan.timestamp_version, crate::whole_seconds(plan.timestamp_expires));
    timestamp.meta.insert("snapshot.json".to_owned(), metafile(snapshot.buffer(), plan.snapshot_version));
    let timestamp = SignedRole::new(timestamp, &holder, &[keys.timestamp.source()], &rng)
        .await
        .map_err(|e| OnlineSignError::Sign { role: "timestamp", source: Box::new(e) })?;
    Ok(OnlineSigned { snapshot: snapshot.buffer().clone(), timestamp: timestamp.buffer().clone() })
}

/// Signs the first, empty targets file (at `init`, with the offline targets key).
pub async fn initial_targets(
    root: &Root,
    key: &SigningKey,
    expires: jiff::Timestamp,
) -> Result<Vec<u8>, OnlineSignError> {
    let targets = Targets::new(SPEC_VERSION.to_owned(), NonZeroU64::MIN, crate::whole_seconds(expires));
    let signed = SignedRole::new(targets, &KeyHolder::Root(root.clone()), &[key.source()], &SystemRandom::new())
        .await
        .map_err(|e| OnlineSignError::Sign { role: "targets", source: Box::new(e) })?;
    Ok(signed.buffer().clone())
}
