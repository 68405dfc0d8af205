//! The wavecast domain: the names, digests, roles and audit events every other crate shares.
//!
//! This crate does no IO — no files, no network, no clock, no randomness. Callers pass time and
//! random bytes in. That keeps the rules of the domain testable as plain functions and lets the
//! agent depend on it without pulling in a runtime.

// The domain's public API is what every other crate builds on: every item says what it is
// for. (Other crates document where it adds something, not by rule.)
#![warn(missing_docs)]

pub mod assignment;
pub mod audit;
pub mod canonical;
pub mod checkpoint;
pub mod digest;
pub mod duration;
pub mod evidence;
pub mod fleet;
pub mod merkle;
pub mod name;
#[cfg(feature = "openapi")]
mod openapi;
pub mod pacing;
pub mod probe;
pub mod progress;
pub mod role;
pub mod rollout;
pub mod secret;
pub mod trust;

pub use digest::{Sha256Digest, Sha256Hasher};
pub use name::{ArtifactName, ArtifactVersion, DeviceName, GroupName, TargetName};
pub use role::{Permission, Role};
