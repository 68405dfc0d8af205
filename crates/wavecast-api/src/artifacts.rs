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
    /// The golden set signed with it for the model check; `null` when it has none.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub golden: Option<ArtifactGolden>,
    /// Publish time.
    pub published_at: Timestamp,
    /// The token name that published it.
    pub published_by: String,
}

/// The golden bundle (expectations and golden inputs and outputs) signed into an artifact's
/// target: devices fetch it by this digest and check it as they check the artifact.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactGolden {
    /// SHA-256 of the bundle.
    pub sha256: Sha256Digest,
    /// Its size in bytes.
    pub length: u64,
    /// `passed`: the publisher's machine ran the model against it before signing;
    /// `skipped`: the publisher said `--skip-local-check`.
    pub local_check: String,
}
