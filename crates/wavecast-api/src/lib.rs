//! The operator API's request and response bodies (`/api/v1`), shared by the server, which
//! builds them, and the `wavecast` CLI, which reads them.
//!
//! One definition on both sides means a renamed or retyped field is a compile error rather than
//! a `null` the CLI prints months later. The types are plain serde structs whose JSON is the
//! wire format; with the `openapi` feature, which only the server turns on, each also derives
//! its schema, so the OpenAPI document the server serves is made from these same fields in
//! the same order. Validated values travel as the core's newtypes (`ArtifactName`,
//! `Sha256Digest`, …), which serialize as the same strings. Request bodies refuse unknown fields, as the server
//! always has; response bodies accept them, so an older CLI keeps working against a newer
//! server. The device API's bodies live in `wavecast_core::assignment`, next to the rules
//! that check them.

mod artifacts;
mod error;
mod fleet;
mod rollouts;
mod time;
mod tokens;
mod trust;

pub use artifacts::{Artifact, ArtifactGolden};
pub use error::{ErrorBody, ErrorCode, ErrorDetail};
pub use fleet::{
    CreateEnrollmentToken, CreateGroup, Device, DeviceArtifact, DeviceDetail, DeviceRemoval, DeviceRollout,
    EnrollmentToken, EnrollmentTokenCreated, Group, GroupCreated, GroupPacing, SetGroupPacing,
};
pub use rollouts::{
    AbortRequest, CreateRollout, DeviceAtWork, DeviceFailure, DeviceProgress, Failures, InProgress, ResumeRequest,
    Rollout, StateCounts, Wave, WaveState,
};
pub use time::Timestamp;
pub use tokens::{CreateToken, Token, TokenCreated, Whoami};
pub use trust::{
    AuditStatus, CheckpointStatus, DeviceCounts, KeyRole, MetadataRole, ResignTargets, RoleStatus, RootRotated,
    RotateRoot, Status, TargetsResigned,
};
/// Whether a device is still trusted: the core's type, whose rules say what each means.
pub use wavecast_core::fleet::DeviceStatus;
/// What a working device waits out, as its heartbeat says: the core's type, which the device
/// API carries.
pub use wavecast_core::progress::{WaitClass, Waiting};
/// How an aborted rollout leaves its devices: the core's type, which the engine decides by.
pub use wavecast_core::rollout::AbortMode;

/// The audit endpoints' bodies, which the core defines because verifying them is domain logic:
/// events (`/audit`), raw rows and checkpoints (`/audit/leaves`, `/audit/checkpoints`), exports
/// and consistency proofs.
pub mod audit {
    pub use wavecast_core::audit::AuditEvent;
    pub use wavecast_core::evidence::{ConsistencyProof, Export, ExportedEvent, LeafRow, StoredCheckpoint};
}
