//! Plain rows going into and coming out of the store, typed as the domain types them: names
//! and digests are validated newtypes (they serialize as the same strings), so what was
//! checked at the edge stays checked where decisions are made.

use serde::Serialize;
use wavecast_core::audit::NewAuditEvent;
use wavecast_core::{ArtifactName, ArtifactVersion, DeviceName, GroupName, Role, Sha256Digest};

/// What the server's first start imports from `wavecast init`'s output.
#[derive(Debug, Clone)]
pub struct Bootstrap {
    /// Now, in Unix milliseconds.
    pub now_ms: i64,
    /// Digest of the trust anchor.
    pub root_sha256: Sha256Digest,
    /// (role, version, bytes) of the initial TUF metadata.
    pub metadata: Vec<(String, i64, String)>,
    /// The admin token.
    pub admin_token: NewToken,
    /// The `installation.initialized` event.
    pub event: NewAuditEvent,
}

/// An API token to store.
#[derive(Debug, Clone)]
pub struct NewToken {
    /// Public id.
    pub id: String,
    /// Name, used as the actor in audit events.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Hash of the secret.
    pub secret_sha256: Sha256Digest,
    /// Who created it.
    pub created_by: String,
}

/// A stored API token.
#[derive(Debug, Clone, Serialize)]
pub struct TokenRecord {
    /// Public id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Creation time (ms).
    pub created_at: i64,
    /// Creator.
    pub created_by: String,
    /// Revocation time (ms), if revoked.
    pub revoked_at: Option<i64>,
}

/// A new snapshot and timestamp.
#[derive(Debug, Clone)]
pub struct OnlineMetadata {
    /// Snapshot version.
    pub snapshot_version: i64,
    /// Snapshot bytes.
    pub snapshot: String,
    /// Timestamp version.
    pub timestamp_version: i64,
    /// Timestamp bytes.
    pub timestamp: String,
}

/// One artifact version a publish adds.
#[derive(Debug, Clone)]
pub struct NewArtifact {
    /// Artifact name.
    pub name: ArtifactName,
    /// Version.
    pub version: ArtifactVersion,
    /// Size in bytes.
    pub length: i64,
    /// SHA-256.
    pub sha256: Sha256Digest,
    /// Hardware, if specific.
    pub hardware: Option<String>,
    /// The golden bundle signed with it, if any.
    pub golden: Option<GoldenRecord>,
    /// Actor.
    pub published_by: String,
}

/// An artifact's golden bundle, as its signed target names it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct GoldenRecord {
    /// SHA-256 of the bundle (a blob like the artifact's).
    pub sha256: Sha256Digest,
    /// Its size in bytes.
    pub length: i64,
    /// `passed` or `skipped`: what the publisher's machine did before signing.
    pub local_check: String,
}

/// Everything one publish writes.
#[derive(Debug, Clone)]
pub struct Publish {
    /// Now (ms).
    pub now_ms: i64,
    /// New targets version.
    pub targets_version: i64,
    /// Targets bytes exactly as the publisher signed them.
    pub targets: String,
    /// Snapshot and timestamp over them.
    pub online: OnlineMetadata,
    /// Artifact rows.
    pub artifacts: Vec<NewArtifact>,
    /// Audit events.
    pub events: Vec<NewAuditEvent>,
}

/// A published artifact version.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ArtifactRecord {
    /// Name.
    pub name: ArtifactName,
    /// Version.
    pub version: ArtifactVersion,
    /// Size in bytes.
    pub length: i64,
    /// SHA-256.
    pub sha256: Sha256Digest,
    /// Hardware, if specific.
    pub hardware: Option<String>,
    /// The golden bundle signed with it, if any.
    pub golden: Option<GoldenRecord>,
    /// Publish time (ms).
    pub published_at: i64,
    /// Publisher.
    pub published_by: String,
}

/// A device group.
#[derive(Debug, Clone, Serialize)]
pub struct GroupRecord {
    /// Name.
    pub name: GroupName,
    /// Creation time (ms).
    pub created_at: i64,
    /// Creator.
    pub created_by: String,
    /// Enrolled devices.
    pub devices: i64,
}

/// An enrollment token to store.
#[derive(Debug, Clone)]
pub struct NewEnrollmentToken {
    /// Public id.
    pub id: String,
    /// Group.
    pub group: GroupName,
    /// Hash of the secret.
    pub secret_sha256: Sha256Digest,
    /// Now (ms).
    pub now_ms: i64,
    /// Expiry (ms).
    pub expires_at: i64,
    /// How many devices it may enroll; `None` for any number until it expires.
    pub max_uses: Option<u64>,
    /// Creator.
    pub created_by: String,
}

/// A stored enrollment token (its secret is only ever kept hashed, and not read back).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrollmentTokenRecord {
    /// Public id.
    pub id: String,
    /// The group its devices join.
    pub group: GroupName,
    /// Creation time (ms).
    pub created_at: i64,
    /// Creator.
    pub created_by: String,
    /// Expiry (ms).
    pub expires_at: i64,
    /// How many devices it may enroll; `None` for any number until it expires.
    pub max_uses: Option<u64>,
    /// How many it enrolled.
    pub uses: u64,
    /// Revocation time (ms), if revoked.
    pub revoked_at: Option<i64>,
}

/// A device enrolling.
#[derive(Debug, Clone)]
pub struct Enrollment {
    /// Hash of the enrollment token presented.
    pub token_sha256: Sha256Digest,
    /// New device id.
    pub device_id: String,
    /// Device name.
    pub name: DeviceName,
    /// Hardware.
    pub hardware: String,
    /// Hash of the new device credential.
    pub credential_sha256: Sha256Digest,
    /// Now (ms).
    pub now_ms: i64,
}

/// An enrolled device. The device API answers `GET /device/v1/whoami` with it as it is.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct DeviceRecord {
    /// Id.
    pub id: String,
    /// Name.
    pub name: DeviceName,
    /// Group.
    pub group: GroupName,
    /// Hardware.
    pub hardware: String,
    /// Enrollment time, Unix ms.
    pub enrolled_at: i64,
    /// Last check-in, Unix ms; `null` if never.
    #[schema(required = true)]
    pub last_seen_at: Option<i64>,
    /// When its credential was revoked (ms), if it was. Not in the device's own view of
    /// itself: a revoked device is refused before it could see it.
    #[serde(skip)]
    pub revoked_at: Option<i64>,
}

/// How a device leaves the fleet (see `wavecast_core::fleet` for what each means).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retire {
    /// Its credential is refused; it stays listed, as revoked.
    Revoke,
    /// Revoked, then deleted: it leaves its group and the device list.
    Decommission,
}

/// What revoking or removing a device did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retired {
    /// The device as it was left: revoked (and, when decommissioned, no longer stored).
    pub device: DeviceRecord,
    /// Whether it was decommissioned.
    pub decommissioned: bool,
    /// The rollouts that had not ended which it left, as `removed`.
    pub left_rollouts: Vec<String>,
}

/// A device as the rollout code needs it.
#[derive(Debug, Clone)]
pub struct DeviceRef {
    /// Id.
    pub id: String,
    /// Name (for audit events).
    pub name: DeviceName,
}
