//! Audit events and their canonical bytes — the leaves of the audit log.
//!
//! Each event is serialized to one canonical byte string (JSON, keys sorted, no whitespace)
//! that is stored verbatim. The Merkle leaf hash is SHA-256(0x00 ‖ bytes) as in RFC 6962, so an
//! auditor can recompute the tree from stored bytes alone. The sequence number is part of the
//! bytes: reordering rows changes their hashes.

use std::fmt;

use crate::digest::Sha256Hasher;
use serde::{Deserialize, Serialize};

use crate::{DeviceName, Sha256Digest};

/// What happened.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AuditAction {
    /// `wavecast init` created the installation (recorded at the server's first start).
    #[serde(rename = "installation.initialized")]
    InstallationInitialized,
    /// An artifact version was published.
    #[serde(rename = "artifact.published")]
    ArtifactPublished,
    /// A device group was created.
    #[serde(rename = "group.created")]
    GroupCreated,
    /// How a group's devices check in was changed.
    #[serde(rename = "group.pacing_set")]
    GroupPacingSet,
    /// An enrollment token was minted for a group.
    #[serde(rename = "enrollment_token.created")]
    EnrollmentTokenCreated,
    /// A device enrolled.
    #[serde(rename = "device.enrolled")]
    DeviceEnrolled,
    /// An API token was created.
    #[serde(rename = "token.created")]
    TokenCreated,
    /// An API token was revoked.
    #[serde(rename = "token.revoked")]
    TokenRevoked,
    /// A rollout was created.
    #[serde(rename = "rollout.created")]
    RolloutCreated,
    /// A wave opened: its devices were assigned the new version.
    #[serde(rename = "wave.opened")]
    WaveOpened,
    /// A rollout waits at a manual gate.
    #[serde(rename = "rollout.waiting_approval")]
    RolloutWaitingApproval,
    /// An operator approved a gate.
    #[serde(rename = "rollout.approved")]
    RolloutApproved,
    /// The halt rule paused a rollout.
    #[serde(rename = "rollout.paused")]
    RolloutPaused,
    /// An operator acknowledged failures and resumed.
    #[serde(rename = "rollout.resumed")]
    RolloutResumed,
    /// Every wave settled.
    #[serde(rename = "rollout.completed")]
    RolloutCompleted,
    /// An operator aborted (keep or revert).
    #[serde(rename = "rollout.aborted")]
    RolloutAborted,
    /// A device runs the new version, healthy.
    #[serde(rename = "device.updated")]
    DeviceUpdated,
    /// A device refused or failed the new version and is on its previous one.
    #[serde(rename = "device.failed")]
    DeviceFailed,
    /// A device went back to its previous version after an abort with revert.
    #[serde(rename = "device.reverted")]
    DeviceReverted,
    /// An abort with revert asked a device to go back, but it had no earlier version to go
    /// back to (its first managed install replaced nothing); it kept what it runs.
    #[serde(rename = "device.revert_skipped")]
    DeviceRevertSkipped,
    /// A device started but went silent past the device timeout.
    #[serde(rename = "device.timed_out")]
    DeviceTimedOut,
    /// A device did not pick up its assignment within the device timeout.
    #[serde(rename = "device.unreachable")]
    DeviceUnreachable,
    /// An enrollment token was revoked: no device can enroll with it any more.
    #[serde(rename = "enrollment_token.revoked")]
    EnrollmentTokenRevoked,
    /// A device's credential was revoked: the device is refused from then on.
    #[serde(rename = "device.revoked")]
    DeviceRevoked,
    /// A device left a rollout that had not ended because an operator revoked or removed it.
    #[serde(rename = "device.removed")]
    DeviceRemoved,
    /// A device was decommissioned: it left its group and the device list.
    #[serde(rename = "device.decommissioned")]
    DeviceDecommissioned,
    /// The publisher signed the targets metadata again with a new version and expiry, changing
    /// no artifact.
    #[serde(rename = "targets.resigned")]
    TargetsResigned,
    /// A new root version was installed: renewed, or naming new keys.
    #[serde(rename = "root.rotated")]
    RootRotated,
}

impl AuditAction {
    /// The dotted name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditAction::InstallationInitialized => "installation.initialized",
            AuditAction::ArtifactPublished => "artifact.published",
            AuditAction::GroupCreated => "group.created",
            AuditAction::GroupPacingSet => "group.pacing_set",
            AuditAction::EnrollmentTokenCreated => "enrollment_token.created",
            AuditAction::DeviceEnrolled => "device.enrolled",
            AuditAction::TokenCreated => "token.created",
            AuditAction::TokenRevoked => "token.revoked",
            AuditAction::RolloutCreated => "rollout.created",
            AuditAction::WaveOpened => "wave.opened",
            AuditAction::RolloutWaitingApproval => "rollout.waiting_approval",
            AuditAction::RolloutApproved => "rollout.approved",
            AuditAction::RolloutPaused => "rollout.paused",
            AuditAction::RolloutResumed => "rollout.resumed",
            AuditAction::RolloutCompleted => "rollout.completed",
            AuditAction::RolloutAborted => "rollout.aborted",
            AuditAction::DeviceUpdated => "device.updated",
            AuditAction::DeviceFailed => "device.failed",
            AuditAction::DeviceReverted => "device.reverted",
            AuditAction::DeviceRevertSkipped => "device.revert_skipped",
            AuditAction::DeviceTimedOut => "device.timed_out",
            AuditAction::DeviceUnreachable => "device.unreachable",
            AuditAction::EnrollmentTokenRevoked => "enrollment_token.revoked",
            AuditAction::DeviceRevoked => "device.revoked",
            AuditAction::DeviceRemoved => "device.removed",
            AuditAction::DeviceDecommissioned => "device.decommissioned",
            AuditAction::TargetsResigned => "targets.resigned",
            AuditAction::RootRotated => "root.rotated",
        }
    }
}

impl fmt::Display for AuditAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who an audit event is attributed to. Its text is the event's `actor`, byte for byte as
/// it has always been stored: a token's name, `device:NAME`, `wavecast` for the server's own
/// decisions, `wavecast init` for the installation. Token names never contain `:` or spaces,
/// so the forms cannot be mistaken for one another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// An operator, by the name of the API token used.
    Operator(String),
    /// A device, for what it reported about itself.
    Device(DeviceName),
    /// wavecast itself: the rollout engine's own decisions and the device timeout.
    System,
    /// `wavecast init`, which created the installation.
    Init,
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Actor::Operator(name) => f.write_str(name),
            Actor::Device(name) => write!(f, "device:{name}"),
            Actor::System => f.write_str("wavecast"),
            Actor::Init => f.write_str("wavecast init"),
        }
    }
}

/// An event before it has a place in the log.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAuditEvent {
    /// Who did it.
    pub actor: Actor,
    /// What happened.
    pub action: AuditAction,
    /// What it happened to (`yolo-v8n@2.1.0`, `plant-7`, …).
    pub subject: String,
    /// Anything else worth keeping as evidence.
    pub detail: serde_json::Value,
}

/// An event with its place in the log.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// Position in the log, from 0; also the Merkle leaf index.
    pub seq: u64,
    /// When, as RFC 3339 UTC.
    #[cfg_attr(feature = "openapi", schema(format = DateTime))]
    pub at: String,
    /// Who did it.
    pub actor: String,
    /// What happened.
    pub action: AuditAction,
    /// What it happened to.
    pub subject: String,
    /// Details.
    pub detail: serde_json::Value,
}

/// Stored bytes that do not parse back into an event.
#[derive(Debug, thiserror::Error)]
#[error("audit event bytes do not parse: {source}")]
pub struct AuditDecodeError {
    #[source]
    source: serde_json::Error,
}

impl AuditEvent {
    /// Places `new` at `seq`, happening `at`.
    pub fn place(new: NewAuditEvent, seq: u64, at: String) -> Self {
        Self { seq, at, actor: new.actor.to_string(), action: new.action, subject: new.subject, detail: new.detail }
    }

    /// The canonical bytes (see [`crate::canonical`]): the Merkle leaf. Refused when the
    /// detail holds a float, so no event is logged whose bytes a verifier could not rebuild.
    pub fn canonical_bytes(&self) -> Result<Vec<u8>, crate::canonical::CanonicalError> {
        let value = serde_json::json!({
            "seq": self.seq,
            "at": self.at,
            "actor": self.actor,
            "action": self.action.as_str(),
            "subject": self.subject,
            "detail": self.detail,
        });
        crate::canonical::to_vec(&value)
    }

    /// Parses stored canonical bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, AuditDecodeError> {
        serde_json::from_slice(bytes).map_err(|source| AuditDecodeError { source })
    }

    /// The RFC 6962 leaf hash of the canonical bytes.
    pub fn leaf_hash(&self) -> Result<Sha256Digest, crate::canonical::CanonicalError> {
        Ok(leaf_hash(&self.canonical_bytes()?))
    }
}

/// RFC 6962 leaf hash: SHA-256(0x00 ‖ data).
pub fn leaf_hash(data: &[u8]) -> Sha256Digest {
    let mut h = Sha256Hasher::new();
    h.update([0u8]);
    h.update(data);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> AuditEvent {
        AuditEvent::place(
            NewAuditEvent {
                actor: Actor::Operator("admin".into()),
                action: AuditAction::GroupCreated,
                subject: "plant-7".into(),
                detail: serde_json::json!({"z": 1, "a": {"y": [true, null], "b": "x"}}),
            },
            3,
            "2026-11-28T10:00:00Z".into(),
        )
    }

    #[test]
    fn canonical_bytes_sort_keys_and_round_trip() {
        let e = event();
        let bytes = e.canonical_bytes().unwrap();
        assert_eq!(
            String::from_utf8(bytes.clone()).unwrap(),
            r#"{"action":"group.created","actor":"admin","at":"2026-11-28T10:00:00Z","detail":{"a":{"b":"x","y":[true,null]},"z":1},"seq":3,"subject":"plant-7"}"#
        );
        assert_eq!(AuditEvent::from_bytes(&bytes).unwrap(), e);
    }

    #[test]
    fn actors_render_as_they_always_were_stored() {
        let cases = [
            (Actor::Operator("admin".into()), "admin"),
            (Actor::Operator("ci-publisher".into()), "ci-publisher"),
            (Actor::Device(DeviceName::new("cam-001").unwrap()), "device:cam-001"),
            (Actor::System, "wavecast"),
            (Actor::Init, "wavecast init"),
        ];
        for (actor, text) in cases {
            assert_eq!(actor.to_string(), text, "{actor:?}");
        }
    }

    #[test]
    fn leaf_hash_is_rfc6962() {
        // RFC 6962 test vector: the leaf hash of the empty string.
        assert_eq!(leaf_hash(b"").to_hex(), "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d");
        let mut other = event();
        other.seq = 4;
        assert_ne!(event().leaf_hash().unwrap(), other.leaf_hash().unwrap());
    }
}
