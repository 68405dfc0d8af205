//! `wavecast-agent status`: what each artifact runs and what happened last, read from the
//! journal without contacting the server.

use serde::Serialize;

use crate::config::AgentConfig;
use crate::state::{Installed, Outcome, Phase, Previous, StateDir, StateError};

/// One artifact's status.
#[derive(Debug, Clone, Serialize)]
pub struct ArtifactStatus {
    /// Artifact name.
    pub name: String,
    /// The file the application reads.
    pub path: String,
    /// What runs now.
    pub active: Option<Installed>,
    /// The version kept for rollback (`unmanaged`: the file that was there before wavecast).
    pub previous: Option<Previous>,
    /// Work in progress, if any.
    pub in_progress: Option<String>,
    /// The last outcome.
    pub last_outcome: Option<Outcome>,
    /// Whether the last outcome was a healthy install.
    pub healthy: bool,
}

/// Reads every configured artifact's status.
pub fn read(config: &AgentConfig) -> Result<Vec<ArtifactStatus>, StateError> {
    let state = StateDir::open(&config.state_dir)?;
    let mut out = Vec::new();
    for a in &config.artifacts {
        let j = state.journal(&a.name)?;
        let in_progress = match &j.phase {
            Phase::Idle => None,
            Phase::Installing { work } => Some(format!("installing {}", work.version)),
            Phase::Swapping { work } => Some(format!("swapping in {}", work.version)),
            Phase::Probing { work, .. } => Some(format!("probing {}", work.version)),
            Phase::RollingBack { work, .. } => Some(format!("rolling back from {}", work.version)),
            Phase::Reverting { version, .. } => Some(format!("reverting {version}")),
        };
        // The active version is the one that last passed its probe (a failed version is
        // rolled back), so an artifact with an active version is healthy while nothing new is
        // in place: idle, or with a new version still on its way (not swapped in yet).
        let healthy = j.active.is_some() && matches!(j.phase, Phase::Idle | Phase::Installing { .. });
        out.push(ArtifactStatus {
            name: a.name.to_string(),
            path: a.path.display().to_string(),
            active: j.active,
            previous: j.previous,
            in_progress,
            last_outcome: j.last_outcome,
            healthy,
        });
    }
    Ok(out)
}
