//! What the director tells a device to run, and what the device reports back.
//!
//! The server signs an [`AssignmentDoc`] with its director key; the agent checks the signature
//! against the key pinned in its root.json, that the doc names this device, that the counter
//! never goes backwards, and that it has not expired. The signature covers the doc's
//! canonical JSON bytes.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The check-in answer's header that suggests when to check in next, in milliseconds
/// (jittered by the server). One name for the server that sends it and the agent that reads it.
pub const POLL_AFTER_HEADER: &str = "wavecast-poll-after";

/// The check-in answer's header that offers long-poll: the longest `wait`, in seconds, this
/// device's check-ins may ask the server to hold them. Absent when long-poll is off.
pub const LONG_POLL_HEADER: &str = "wavecast-long-poll";

use crate::probe::ProbeSpec;
use crate::{ArtifactName, ArtifactVersion, Sha256Digest, TargetName};

/// What to do with an artifact.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Fetch, verify, swap in and probe this version.
    Install,
    /// Go back to the version that was active before this one, from the local copy.
    Revert,
}

/// One artifact's assignment.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Assignment {
    /// The rollout this comes from.
    pub rollout_id: String,
    /// Install or revert.
    pub action: Action,
    /// Artifact name.
    pub artifact: ArtifactName,
    /// The version to install (for a revert: the version to undo).
    pub version: ArtifactVersion,
    /// Its signed length.
    pub length: u64,
    /// Its SHA-256.
    pub sha256: Sha256Digest,
    /// How to check the application once it is in place.
    pub probe: ProbeSpec,
}

impl Assignment {
    /// The TUF target name, `artifact@version`.
    pub fn target(&self) -> TargetName {
        TargetName::new(self.artifact.clone(), self.version.clone())
    }
}

/// Whether `assignments` tell their device to install `target` with these bytes: the only
/// artifact bytes a device may fetch. (A revert fetches nothing: it goes back to the local
/// copy.)
pub fn assigns_install(assignments: &[Assignment], target: &TargetName, sha256: &Sha256Digest) -> bool {
    assignments.iter().any(|a| a.action == Action::Install && a.target() == *target && a.sha256 == *sha256)
}

/// Everything assigned to one device, as signed by the director.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssignmentDoc {
    /// The device this is for.
    pub device_id: String,
    /// Grows whenever the assignments change; a device refuses a smaller one (replay).
    pub counter: u64,
    /// Unix seconds after which the doc must not be acted on.
    pub expires: i64,
    /// One entry per artifact the device should act on.
    pub assignments: Vec<Assignment>,
}

impl AssignmentDoc {
    /// The bytes the director signs: the doc's canonical JSON. Every field is an integer or a
    /// string, so this fails only if a float ever found its way into the type; then nothing
    /// is signed rather than bytes no agent could reproduce.
    pub fn signing_bytes(&self) -> Result<Vec<u8>, crate::canonical::CanonicalError> {
        let value = serde_json::to_value(self).unwrap_or(serde_json::Value::Null);
        crate::canonical::to_vec(&value)
    }
}

/// An assignment doc with the director's Ed25519 signature (hex) over its signing bytes.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedAssignments {
    /// The doc.
    pub signed: AssignmentDoc,
    /// Hex Ed25519 signature.
    #[cfg_attr(feature = "openapi", schema(pattern = "^[0-9a-f]+$"))]
    pub signature: String,
}

/// Where a device is in a rollout.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceState {
    /// In a wave that has not opened.
    Pending,
    /// Its wave opened; it has not picked the assignment up yet.
    Assigned,
    /// Fetching the bytes.
    Downloading,
    /// Checking signatures and digests.
    Verifying,
    /// Swapping the file in.
    Installing,
    /// Checking the application's health.
    Probing,
    /// Running the new version, healthy.
    Succeeded,
    /// The new version was refused or failed its probe; the device is on its previous version.
    Failed,
    /// Started but went silent past the device timeout: counted as a failure.
    TimedOut,
    /// Never picked up its assignment within the device timeout: settled, not a failure.
    Unreachable,
    /// Went back to its previous version because the rollout was aborted with revert.
    Reverted,
    /// The rollout was aborted with revert, but the device had no earlier version to go back
    /// to (its first managed install replaced nothing); it keeps what it runs, and says so.
    RevertSkipped,
    /// An operator revoked or removed the device while the rollout ran: it has left the
    /// rollout. Settled, not a failure.
    Removed,
}

impl DeviceState {
    /// Every state, in lifecycle order.
    /// New states go at the end: stored per-wave counts are arrays in this order.
    pub const ALL: [DeviceState; 13] = [
        DeviceState::Pending,
        DeviceState::Assigned,
        DeviceState::Downloading,
        DeviceState::Verifying,
        DeviceState::Installing,
        DeviceState::Probing,
        DeviceState::Succeeded,
        DeviceState::Failed,
        DeviceState::TimedOut,
        DeviceState::Unreachable,
        DeviceState::Reverted,
        DeviceState::RevertSkipped,
        DeviceState::Removed,
    ];

    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceState::Pending => "pending",
            DeviceState::Assigned => "assigned",
            DeviceState::Downloading => "downloading",
            DeviceState::Verifying => "verifying",
            DeviceState::Installing => "installing",
            DeviceState::Probing => "probing",
            DeviceState::Succeeded => "succeeded",
            DeviceState::Failed => "failed",
            DeviceState::TimedOut => "timed_out",
            DeviceState::Unreachable => "unreachable",
            DeviceState::Reverted => "reverted",
            DeviceState::RevertSkipped => "revert_skipped",
            DeviceState::Removed => "removed",
        }
    }

    /// The states of a device that has picked up its assignment and not yet reported an
    /// outcome: it is working on the update.
    pub const IN_FLIGHT: [DeviceState; 4] =
        [DeviceState::Downloading, DeviceState::Verifying, DeviceState::Installing, DeviceState::Probing];

    /// Whether the device has started working on the update (one of [`DeviceState::IN_FLIGHT`]).
    pub fn started(self) -> bool {
        Self::IN_FLIGHT.contains(&self)
    }

    /// The states of a device whose wave has opened and that has no outcome yet: the rollout
    /// waits for it. (Pending devices are not reached yet; the rest are end states.)
    pub const IN_PROGRESS: [DeviceState; 5] = [
        DeviceState::Assigned,
        DeviceState::Downloading,
        DeviceState::Verifying,
        DeviceState::Installing,
        DeviceState::Probing,
    ];

    /// Whether this is an end state for the device in this rollout.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            DeviceState::Succeeded
                | DeviceState::Failed
                | DeviceState::TimedOut
                | DeviceState::Unreachable
                | DeviceState::Reverted
                | DeviceState::RevertSkipped
                | DeviceState::Removed
        )
    }

    /// Whether a device in this state may move to `to`. Progress only goes forward; a device
    /// the server gave up on (unreachable, timed out) may come back; a healthy device may be
    /// reverted; a device in any state may leave the rollout (`removed`), and nothing follows
    /// that. Anything else (a late duplicate, a regression) is ignored.
    pub fn may_become(self, to: DeviceState) -> bool {
        use DeviceState::*;
        let rank = |s: DeviceState| match s {
            Pending => 0,
            Assigned => 1,
            Downloading => 2,
            Verifying => 3,
            Installing => 4,
            Probing => 5,
            _ => 6,
        };
        match (self, to) {
            (Removed, _) => false,
            (_, Removed) => true,
            (_, Pending | Assigned) => false,
            (Pending, _) => false,
            (Assigned | Unreachable, _) => to != Unreachable || self == Assigned,
            (Downloading | Verifying | Installing | Probing, Reverted | RevertSkipped) => true,
            (Downloading | Verifying | Installing | Probing, _) => rank(to) > rank(self),
            (TimedOut, Succeeded | Failed | Reverted | RevertSkipped) => true,
            (Succeeded, Reverted | RevertSkipped) => true,
            _ => false,
        }
    }

    /// Whether this state counts toward the halt rule.
    pub fn is_failure(self) -> bool {
        matches!(self, DeviceState::Failed | DeviceState::TimedOut)
    }

    /// Who moves a device into this state (see [`Mover`]): only [`Mover::Device`] states are
    /// what a device may report about itself.
    pub fn moved_by(self) -> Mover {
        match self {
            DeviceState::Pending | DeviceState::Assigned => Mover::Rollout,
            DeviceState::Downloading
            | DeviceState::Verifying
            | DeviceState::Installing
            | DeviceState::Probing
            | DeviceState::Succeeded
            | DeviceState::Failed
            | DeviceState::Reverted
            | DeviceState::RevertSkipped => Mover::Device,
            DeviceState::TimedOut | DeviceState::Unreachable => Mover::Timeout,
            DeviceState::Removed => Mover::Operator,
        }
    }
}

/// Who puts a device into a state of a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mover {
    /// The rollout itself: every device starts pending, and is assigned when its wave opens.
    Rollout,
    /// The device, by reporting it: its progress and its outcomes.
    Device,
    /// The server's device timeout, when a device stays silent (unreachable, timed out).
    Timeout,
    /// An operator, by revoking or removing the device (removed).
    Operator,
}

impl fmt::Display for DeviceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A device state name we do not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown device state {0:?}")]
pub struct DeviceStateError(pub String);

impl FromStr for DeviceState {
    type Err = DeviceStateError;
    fn from_str(s: &str) -> Result<Self, DeviceStateError> {
        DeviceState::ALL.into_iter().find(|d| d.as_str() == s).ok_or_else(|| DeviceStateError(s.to_owned()))
    }
}

/// One state transition a device reports. `id` is stable for the same transition, so a
/// report delivered twice is applied once.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    /// Stable id (hex).
    #[cfg_attr(feature = "openapi", schema(pattern = "^[A-Za-z0-9-]+$", min_length = 1, max_length = 64))]
    pub id: String,
    /// The rollout.
    pub rollout_id: String,
    /// Artifact name, as the device read it (informational: the server goes by rollout id).
    pub artifact: String,
    /// The version the rollout is about (informational, like `artifact`).
    pub version: String,
    /// The new state.
    pub state: DeviceState,
    /// Why, for failures and refusals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What the last probe attempt printed, when an exec probe printed one JSON object of at
    /// most [`MAX_PROBE_RESULT`](crate::probe::MAX_PROBE_RESULT) bytes on stdout (as
    /// `wavecast-model-check` does): kept with the device's outcome for operators.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub probe_result: Option<serde_json::Value>,
    /// When, Unix ms on the device's clock.
    pub at_ms: i64,
}

/// What a device runs now.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActiveArtifact {
    /// Artifact name.
    pub name: ArtifactName,
    /// Version.
    pub version: ArtifactVersion,
    /// SHA-256 of the active file.
    pub sha256: Sha256Digest,
}

/// A batch of reports, with the device's current artifacts.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", schema(example = json!({"reports": [{"id": "cam-001-7", "rollout_id": "r-1a2b3c4d", "artifact": "yolo-v8n", "version": "2.1.0", "state": "succeeded", "at_ms": 1767225600000u64}], "active": [{"name": "yolo-v8n", "version": "2.1.0", "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"}]})))]
pub struct ReportBatch {
    /// Transitions, oldest first.
    #[cfg_attr(feature = "openapi", schema(max_items = 100))]
    pub reports: Vec<Report>,
    /// What the device runs now.
    pub active: Vec<ActiveArtifact>,
}

/// The server's answer: the ids the device may forget, and which of them were refused.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportAck {
    /// Ids the server is done with: applied (now or before), found out of date, or refused.
    pub acked: Vec<String>,
    /// The acked reports the server refused, because they claim a change the device may not
    /// make (see `wavecast_core::rollout::judge_report`), with why; they changed nothing.
    /// Absent when none was refused, so the answer is what it always was.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused: Vec<RefusedReport>,
}

/// A report the server refused, and why.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusedReport {
    /// The report's id.
    pub id: String,
    /// Why, in words.
    pub reason: String,
}

/// The largest report batch a device sends at once.
pub const MAX_REPORTS_PER_BATCH: usize = 100;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::{ProbeKind, ProbeSpec};

    #[test]
    fn signing_bytes_are_canonical_and_cover_everything() {
        let doc = AssignmentDoc {
            device_id: "d1".into(),
            counter: 7,
            expires: 1_800_000_000,
            assignments: vec![Assignment {
                rollout_id: "r-1".into(),
                action: Action::Install,
                artifact: ArtifactName::new("yolo").unwrap(),
                version: ArtifactVersion::new("2.1.0").unwrap(),
                length: 3,
                sha256: Sha256Digest::of(b"abc"),
                probe: ProbeSpec::new(ProbeKind::Exec { name: "check".into(), args: vec![] }),
            }],
        };
        let bytes = doc.signing_bytes().unwrap();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.starts_with(r#"{"assignments":[{"action":"install","artifact":"yolo""#), "{text}");
        let parsed: AssignmentDoc = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(parsed, doc);
        let mut other = doc.clone();
        other.counter = 8;
        assert_ne!(other.signing_bytes().unwrap(), bytes);
    }

    #[test]
    fn a_device_may_fetch_only_what_it_is_told_to_install() {
        let install = |target: &str, bytes: &[u8]| {
            let t = TargetName::parse(target).unwrap();
            Assignment {
                rollout_id: "r-1".into(),
                action: Action::Install,
                artifact: t.name().clone(),
                version: t.version().clone(),
                length: bytes.len() as u64,
                sha256: Sha256Digest::of(bytes),
                probe: ProbeSpec::new(ProbeKind::Exec { name: "check".into(), args: vec![] }),
            }
        };
        let revert = Assignment { action: Action::Revert, ..install("b@1.0.0", b"b") };
        let assignments = [install("a@2.0.0", b"two"), revert];
        let target = |t: &str| TargetName::parse(t).unwrap();
        // (target, bytes, may fetch)
        let table: [(&str, &[u8], bool); 5] = [
            ("a@2.0.0", b"two", true),
            // Another version of the artifact, or the right name with other bytes.
            ("a@1.0.0", b"two", false),
            ("a@2.0.0", b"one", false),
            // What a revert names is gone back to from the local copy, never fetched.
            ("b@1.0.0", b"b", false),
            ("c@1.0.0", b"c", false),
        ];
        for (t, bytes, allowed) in table {
            assert_eq!(assigns_install(&assignments, &target(t), &Sha256Digest::of(bytes)), allowed, "{t}");
        }
        assert!(!assigns_install(&[], &target("a@2.0.0"), &Sha256Digest::of(b"two")));
    }

    #[test]
    fn states_round_trip_and_classify() {
        for s in DeviceState::ALL {
            assert_eq!(s.as_str().parse::<DeviceState>().unwrap(), s);
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        let waited_for: Vec<_> =
            DeviceState::ALL.into_iter().filter(|s| *s != DeviceState::Pending && !s.is_final()).collect();
        assert_eq!(waited_for, DeviceState::IN_PROGRESS);
        let failures: Vec<_> = DeviceState::ALL.into_iter().filter(|s| s.is_failure()).collect();
        assert_eq!(failures, [DeviceState::Failed, DeviceState::TimedOut]);
        assert!(!DeviceState::Unreachable.is_failure() && DeviceState::Unreachable.is_final());
        assert!(!DeviceState::Removed.is_failure() && DeviceState::Removed.is_final());
        // A state added later goes at the end (stored counts are arrays in this order).
        assert_eq!(DeviceState::ALL.last(), Some(&DeviceState::Removed));
    }

    #[test]
    fn each_state_has_one_mover() {
        use DeviceState::*;
        let table = [
            (Mover::Rollout, &[Pending, Assigned][..]),
            (
                Mover::Device,
                &[Downloading, Verifying, Installing, Probing, Succeeded, Failed, Reverted, RevertSkipped][..],
            ),
            (Mover::Timeout, &[TimedOut, Unreachable][..]),
            (Mover::Operator, &[Removed][..]),
        ];
        for state in DeviceState::ALL {
            let movers: Vec<Mover> = table.iter().filter(|(_, s)| s.contains(&state)).map(|(m, _)| *m).collect();
            assert_eq!(movers, [state.moved_by()], "{state}");
        }
    }

    #[test]
    fn any_device_may_leave_a_rollout_once_and_nothing_follows() {
        for from in DeviceState::ALL {
            assert_eq!(from.may_become(DeviceState::Removed), from != DeviceState::Removed, "{from}");
            assert!(!DeviceState::Removed.may_become(from), "removed → {from}");
        }
    }

    #[test]
    fn an_ack_without_refusals_is_what_it_always_was() {
        let ack = ReportAck { acked: vec!["a".into()], refused: vec![] };
        assert_eq!(serde_json::to_string(&ack).unwrap(), r#"{"acked":["a"]}"#);
        assert_eq!(serde_json::from_str::<ReportAck>(r#"{"acked":["a"]}"#).unwrap(), ack);
        let refused = ReportAck {
            acked: vec!["a".into()],
            refused: vec![RefusedReport { id: "a".into(), reason: "why".into() }],
        };
        assert_eq!(
            serde_json::to_string(&refused).unwrap(),
            r#"{"acked":["a"],"refused":[{"id":"a","reason":"why"}]}"#
        );
    }
}
