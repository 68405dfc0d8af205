//! Artifacts: what `GET /artifacts` lists and `POST /artifacts` answers.

use serde::{Deserialize, Serialize};

use crate::Timestamp;
use wavecast_core::{ArtifactName, ArtifactVersion, Sha256Digest};

/// A published artifact version.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    /// Artifact name.
    pub name: ArtifactName,
    /// Version.
    pub version: ArtifactVersion,
    /// Size in bytes.
    pub length: u64,
    /// SHA-256 of the bytes.
    pub sha256: Sha256Digest,
    /// Only devices with this hardware may install it; `null` for any.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub hardware: Option<String>,
    /// Publish time.
    pub published_at: Timestamp,
    /// The token name that published it.
    pub published_by: String,
}
