//! Trust over the installation's lifetime: what `GET /status` reports, and the bodies of
//! re-signing targets (`POST /artifacts/resign`) and installing a new root (`POST
//! /root/rotate`).
//!
//! Signed metadata travels as the exact text the offline key signed, inside a JSON string, so
//! the server stores the bytes that were signed.

use serde::{Deserialize, Serialize};
use wavecast_core::Sha256Digest;
pub use wavecast_core::trust::{KeyRole, MetadataRole};

use crate::{StateCounts, Timestamp};

/// `GET /status`: the server, its TUF metadata and when each expires, the audit log, and the
/// fleet in counts.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// The server's version.
    pub version: String,
    /// `sqlite` or `postgres`.
    pub database: String,
    /// Where artifact blobs are kept: a folder on the server, or `s3://BUCKET/PREFIX`. Every
    /// replica of one installation should name the same bucket.
    #[serde(default)]
    pub blob_store: String,
    /// The server's clock when it answered: expiries are counted from it.
    pub server_time: Timestamp,
    /// The newest version of each TUF role, root first.
    pub metadata: Vec<RoleStatus>,
    /// What the operator should act on: offline-signed roles expiring within 30 days, and
    /// anything expired. Empty when all is well.
    pub warnings: Vec<String>,
    /// The audit log.
    pub audit: AuditStatus,
    /// The fleet.
    pub devices: DeviceCounts,
    /// Rollouts not finished yet.
    pub rollouts_running: u64,
}

/// One TUF role's newest version.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleStatus {
    /// The role.
    pub role: MetadataRole,
    /// Its newest version.
    pub version: u64,
    /// When it expires.
    pub expires_at: Timestamp,
    /// Seconds from the server's clock to its expiry; negative once expired.
    pub expires_in_secs: i64,
    /// Whether people sign it offline (root, targets) rather than the server.
    pub signed_offline: bool,
}

/// The audit log's size and its newest signed checkpoint.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditStatus {
    /// Events in the log.
    pub events: u64,
    /// The newest valid checkpoint; `null` before the first.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub checkpoint: Option<CheckpointStatus>,
}

/// A signed checkpoint in brief.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointStatus {
    /// Events it covers.
    pub size: u64,
    /// Its Merkle root.
    pub root: Sha256Digest,
}

/// Devices in counts.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceCounts {
    /// Devices enrolled.
    pub enrolled: u64,
    /// Devices in rollouts not finished yet, per state (a device in two counts twice).
    pub in_running_rollouts: StateCounts,
}

/// `POST /artifacts/resign`: the current targets signed again with a new version and expiry.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResignTargets {
    /// The signed targets.json, exactly as signed.
    pub targets: String,
}

/// The answer to [`ResignTargets`].
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetsResigned {
    /// The new targets version.
    pub version: u64,
    /// Its expiry.
    pub expires_at: Timestamp,
}

/// `POST /root/rotate`: the next root version, and the targets signed again when the new root
/// names a new targets key.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateRoot {
    /// `N+1.root.json`, signed by the current root key and the new one, exactly as signed.
    pub root: String,
    /// The current targets signed again by the new root's targets key; required when that
    /// key changes, since devices refuse targets the newest root's key did not sign.
    #[serde(default)]
    pub targets: Option<String>,
}

/// The answer to [`RotateRoot`].
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootRotated {
    /// The new root version.
    pub version: u64,
    /// Its expiry.
    pub expires_at: Timestamp,
    /// The keys it names that the previous version did not; empty for a renewal.
    pub changed: Vec<KeyRole>,
    /// The targets version signed again with it, if any.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub targets_version: Option<u64>,
}
