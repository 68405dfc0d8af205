//! Groups, enrollment tokens and devices.

use serde::{Deserialize, Serialize};

use crate::Timestamp;
use wavecast_core::assignment::DeviceState;
use wavecast_core::fleet::DeviceStatus;
use wavecast_core::{ArtifactName, ArtifactVersion, DeviceName, GroupName, Sha256Digest};

use crate::DeviceProgress;

/// `POST /groups`. Names travel as strings in requests so the server, not the JSON decoder,
/// says what is wrong with one.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", schema(example = json!({"name": "plant-7"})))]
pub struct CreateGroup {
    /// Group name.
    #[cfg_attr(feature = "openapi", schema(value_type = GroupName))]
    pub name: String,
}

/// What `POST /groups` answers.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupCreated {
    /// The new group.
    pub name: GroupName,
}

/// A device group as listed.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    /// Name.
    pub name: GroupName,
    /// Creation time.
    pub created_at: Timestamp,
    /// The token name that created it.
    pub created_by: String,
    /// Enrolled devices that are not revoked.
    pub devices: u64,
}

/// `PUT /groups/{name}/pacing`: how the group's devices check in. Each value is a duration
/// (`90s`, `5m`); left out or `null`, the server's default.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", schema(example = json!({"idle": "5m", "active": "10s", "long_poll": "55s"})))]
pub struct SetGroupPacing {
    /// Between check-ins of a device with nothing to do (1s to 24h; default 60s).
    #[serde(default)]
    pub idle: Option<String>,
    /// Between check-ins of a device whose wave is open (1s to 24h; default 5s).
    #[serde(default)]
    pub active: Option<String>,
    /// The longest a check-in is held waiting for a change (at most 5m; `0s` turns long-poll
    /// off; default 55s).
    #[serde(default)]
    pub long_poll: Option<String>,
}

/// How a group's devices check in, defaults filled in.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupPacing {
    /// The group.
    pub group: GroupName,
    /// Between check-ins of a device with nothing to do, ms.
    pub idle_ms: u64,
    /// Between check-ins of a device whose wave is open, ms.
    pub active_ms: u64,
    /// The longest a check-in is held, ms (0: long-poll off).
    pub long_poll_ms: u64,
}

/// `POST /enrollment-tokens`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", schema(example = json!({"group": "plant-7", "expires_in_secs": 86400, "max_uses": 20})))]
pub struct CreateEnrollmentToken {
    /// The group the devices join.
    #[cfg_attr(feature = "openapi", schema(value_type = GroupName))]
    pub group: String,
    /// Lifetime in seconds (the server's default when `null`).
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 31536000))]
    pub expires_in_secs: Option<u64>,
    /// How many devices it may enroll; any number until it expires when absent. Left out
    /// when absent, so a CLI that does not limit uses can talk to a server that cannot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub max_uses: Option<u64>,
}

/// What `POST /enrollment-tokens` answers: the only time the secret is shown.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollmentTokenCreated {
    /// Public id.
    pub id: String,
    /// The group.
    pub group: GroupName,
    /// The secret.
    pub token: String,
    /// When it stops admitting devices.
    pub expires_at: Timestamp,
    /// How many devices it may enroll; `null` for any number until it expires.
    #[cfg_attr(feature = "openapi", schema(required = true, minimum = 1))]
    pub max_uses: Option<u64>,
}

/// An enrollment token as listed (`GET /enrollment-tokens`), without its secret.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollmentToken {
    /// Public id.
    pub id: String,
    /// The group its devices join.
    pub group: GroupName,
    /// Creation time.
    pub created_at: Timestamp,
    /// The token name that created it.
    pub created_by: String,
    /// When it stops admitting devices.
    pub expires_at: Timestamp,
    /// How many devices it may enroll; `null` for any number until it expires.
    #[cfg_attr(feature = "openapi", schema(required = true, minimum = 1))]
    pub max_uses: Option<u64>,
    /// How many devices it enrolled.
    pub uses: u64,
    /// Revocation time; `null` unless revoked.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub revoked_at: Option<Timestamp>,
}

/// An enrolled device.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    /// Id.
    pub id: String,
    /// Name.
    pub name: DeviceName,
    /// Group.
    pub group: GroupName,
    /// Hardware it reported when enrolling.
    pub hardware: String,
    /// Enrollment time.
    pub enrolled_at: Timestamp,
    /// Last check-in; `null` if never.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub last_seen_at: Option<Timestamp>,
    /// Whether its credential still works.
    pub state: DeviceStatus,
    /// When its credential was revoked; `null` unless revoked.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub revoked_at: Option<Timestamp>,
}

/// What revoking a device (`POST /devices/{name}/revoke`) or removing it (`DELETE
/// /devices/{name}`) answers.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRemoval {
    /// The device as it was left: revoked. A removed device is no longer listed.
    #[serde(flatten)]
    pub device: Device,
    /// Whether it was also removed from its group and the device list.
    pub decommissioned: bool,
    /// The rollouts that had not ended which it left, as `removed`, by id.
    pub left_rollouts: Vec<String>,
}

/// `GET /devices/{name}`: one device, with what it runs.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceDetail {
    /// The device's own fields, inline.
    #[serde(flatten)]
    pub device: Device,
    /// What the device last reported running.
    pub artifacts: Vec<DeviceArtifact>,
    /// Its place in each rollout that included it.
    pub rollouts: Vec<DeviceRollout>,
}

/// An artifact a device reported running.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceArtifact {
    /// Artifact name.
    pub name: ArtifactName,
    /// Version.
    pub version: ArtifactVersion,
    /// SHA-256 of the active file.
    pub sha256: Sha256Digest,
}

/// A device's place in one rollout.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRollout {
    /// Rollout id.
    pub rollout_id: String,
    /// Artifact name.
    pub artifact: ArtifactName,
    /// Version.
    pub version: ArtifactVersion,
    /// Wave number, 1-based.
    pub wave: u64,
    /// Where the device is.
    pub state: DeviceState,
    /// Why it failed, when it did.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub reason: Option<String>,
    /// Last change.
    pub updated_at: Timestamp,
    /// Its latest heartbeat while it works on the update; `null` otherwise.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub progress: Option<DeviceProgress>,
    /// What its probe printed about this version when it was one JSON object (a model
    /// check's report: outcome, deviation from the golden outputs, latency and memory against
    /// budget); `null` otherwise.
    #[cfg_attr(feature = "openapi", schema(required = true, value_type = Option<Object>))]
    pub probe_result: Option<serde_json::Value>,
}
