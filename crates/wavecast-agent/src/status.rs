//! `wavecast-agent status`: what each artifact runs and what happened last, read from the
//! journal without contacting the server.

use std::fmt::Write as _;

use serde::Serialize;
use wavecast_core::assignment::DeviceState;

use crate::config::AgentConfig;
use crate::state::{Installed, Journal, Outcome, Phase, Previous, StateDir, StateError};

/// How an artifact's health reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// The active version passed its probe, and nothing new is in place.
    Healthy,
    /// No version wavecast installed runs here: nothing was installed yet (or every install
    /// failed, or a revert gave the path back to the file from before wavecast).
    NothingInstalled,
    /// A version was just put in place or is being taken out: not known until that ends.
    Unknown,
}

/// One artifact's status.
#[derive(Debug, Clone, Serialize)]
pub struct ArtifactStatus {
    /// Artifact name.
    pub name: String,
    /// The file the application reads.
    pub path: String,
    /// What runs now.
    pub active: Option<Installed>,
    /// The older version kept for rollback (`unmanaged`: the file that was there before
    /// wavecast); none when nothing other than the active version itself is kept (after a
    /// rollback or a revert the kept file is a copy of what runs).
    pub previous: Option<Previous>,
    /// Work in progress, if any.
    pub in_progress: Option<String>,
    /// The last outcome.
    pub last_outcome: Option<Outcome>,
    /// Whether the active version is healthy (`health` is `healthy`).
    pub healthy: bool,
    /// How its health reads.
    pub health: Health,
}

/// Reads every configured artifact's status.
pub fn read(config: &AgentConfig) -> Result<Vec<ArtifactStatus>, StateError> {
    // Read only: the agent may be writing while `status` runs.
    let state = StateDir::read_only(&config.state_dir)?;
    let mut out = Vec::new();
    for a in &config.artifacts {
        out.push(view(a.name.as_str(), &a.path.display().to_string(), state.journal(&a.name)?));
    }
    Ok(out)
}

/// What a journal says about an artifact, in the words `status` shows.
pub fn view(name: &str, path: &str, j: Journal) -> ArtifactStatus {
    let in_progress = match &j.phase {
        Phase::Idle => None,
        Phase::Installing { work } => Some(format!("installing {}", work.version)),
        Phase::Swapping { work } => Some(format!("swapping in {}", work.version)),
        Phase::Probing { work, .. } => Some(format!("probing {}", work.version)),
        Phase::RollingBack { work, .. } => Some(format!("rolling back from {}", work.version)),
        Phase::Reverting { version, .. } => Some(format!("reverting {version}")),
    };
    // The active version is the one that last passed its probe (a failed version is rolled
    // back), so an artifact with an active version is healthy while nothing new is in place:
    // idle, or with a new version still on its way (not swapped in yet).
    let settled = matches!(j.phase, Phase::Idle | Phase::Installing { .. });
    let health = match (&j.active, settled) {
        (_, false) => Health::Unknown,
        (Some(_), true) => Health::Healthy,
        (None, true) => Health::NothingInstalled,
    };
    // The previous slot holds the same bytes as the path after a rollback or a revert: that
    // is no older version to go back to.
    let previous = j.previous.filter(|p| j.active.as_ref().is_none_or(|a| a.sha256 != p.sha256));
    ArtifactStatus {
        name: name.to_owned(),
        path: path.to_owned(),
        active: j.active,
        previous,
        in_progress,
        last_outcome: j.last_outcome,
        healthy: health == Health::Healthy,
        health,
    }
}

/// `status` as text: for each artifact what runs, what is kept, what is going on, what
/// happened last, and its health.
pub fn text(statuses: &[ArtifactStatus]) -> String {
    let mut out = String::new();
    for a in statuses {
        let _ = writeln!(out, "{}  {}", a.name, a.path);
        let _ = match &a.active {
            Some(i) => writeln!(out, "  active    {}  sha256 {}", i.version, i.sha256),
            None => writeln!(out, "  active    none installed by wavecast"),
        };
        let _ = match (&a.previous, &a.active) {
            (Some(p), _) if p.installed().is_none() => {
                writeln!(out, "  previous  the file there before wavecast's first install  sha256 {}", p.sha256)
            }
            (Some(p), _) => writeln!(out, "  previous  {}", p.version),
            (None, Some(active)) => writeln!(out, "  previous  none older than {} is kept", active.version),
            (None, None) => writeln!(out, "  previous  none"),
        };
        if let Some(w) = &a.in_progress {
            let _ = writeln!(out, "  now       {w}");
        }
        if let Some(o) = &a.last_outcome {
            let at = jiff::Timestamp::from_millisecond(o.at_ms).map(|t| t.to_string()).unwrap_or_default();
            let _ = writeln!(out, "  last      {} {} (rollout {}) at {at}", o.state, o.version, o.rollout_id);
            if let Some(r) = &o.reason {
                let _ = writeln!(out, "  reason    {r}");
            }
        }
        let health = match a.health {
            Health::Healthy => "healthy".to_owned(),
            Health::NothingInstalled if a.last_outcome.as_ref().is_some_and(|o| o.state == DeviceState::Reverted) => {
                "nothing wavecast installed runs here: a revert put back what was there before".to_owned()
            }
            Health::NothingInstalled => "nothing installed yet".to_owned(),
            Health::Unknown => {
                format!("not known until {} ends", a.in_progress.as_deref().unwrap_or("the work in progress"))
            }
        };
        let _ = writeln!(out, "  health    {health}");
    }
    out
}

#[cfg(test)]
mod tests {
    use wavecast_core::probe::{ProbeKind, ProbeSpec};
    use wavecast_core::{ArtifactVersion, Sha256Digest};

    use super::*;
    use crate::state::{Kept, Work};

    fn installed(v: &str) -> Installed {
        Installed { version: ArtifactVersion::new(v).unwrap(), sha256: Sha256Digest::of(v.as_bytes()) }
    }

    fn outcome(state: DeviceState, v: &str) -> Outcome {
        Outcome { state, reason: None, rollout_id: "r-1".into(), version: ArtifactVersion::new(v).unwrap(), at_ms: 0 }
    }

    fn work(v: &str) -> Work {
        let i = installed(v);
        Work {
            rollout_id: "r-2".into(),
            version: i.version,
            sha256: i.sha256,
            length: 1,
            probe: ProbeSpec::new(ProbeKind::Exec { name: "check".into(), args: Vec::new() }),
            golden: None,
        }
    }

    #[test]
    fn status_says_what_runs_what_is_kept_and_how_healthy_it_is() {
        let factory = Previous { version: Kept::Unmanaged, sha256: Sha256Digest::of(b"factory") };
        // (case, journal, health, words of the text)
        let cases: Vec<(&str, Journal, Health, &[&str])> = vec![
            (
                "a new device",
                Journal::default(),
                Health::NothingInstalled,
                &["active    none installed by wavecast", "previous  none\n", "health    nothing installed yet"],
            ),
            (
                "downloading its first version",
                Journal { phase: Phase::Installing { work: work("1.0.0") }, ..Default::default() },
                Health::NothingInstalled,
                &["now       installing 1.0.0", "health    nothing installed yet"],
            ),
            (
                "probing its first version",
                Journal { phase: Phase::Probing { work: work("1.0.0"), restarts: 0 }, ..Default::default() },
                Health::Unknown,
                &["health    not known until probing 1.0.0 ends"],
            ),
            (
                "running v2 over v1",
                Journal {
                    active: Some(installed("2.0.0")),
                    previous: Some(installed("1.0.0").into()),
                    ..Default::default()
                },
                Health::Healthy,
                &["active    2.0.0", "previous  1.0.0\n", "health    healthy"],
            ),
            (
                "v1 again after a revert of v2 (the kept file is v1 itself)",
                Journal {
                    active: Some(installed("1.0.0")),
                    previous: Some(installed("1.0.0").into()),
                    last_outcome: Some(outcome(DeviceState::Reverted, "2.0.0")),
                    ..Default::default()
                },
                Health::Healthy,
                &["previous  none older than 1.0.0 is kept", "health    healthy"],
            ),
            (
                "the factory file back after a revert",
                Journal {
                    previous: Some(factory.clone()),
                    last_outcome: Some(outcome(DeviceState::Reverted, "1.0.0")),
                    ..Default::default()
                },
                Health::NothingInstalled,
                &[
                    "previous  the file there before wavecast's first install",
                    "a revert put back what was there before",
                ],
            ),
            (
                "a first install that failed its probe",
                Journal {
                    previous: Some(factory),
                    last_outcome: Some(outcome(DeviceState::Failed, "1.0.0")),
                    ..Default::default()
                },
                Health::NothingInstalled,
                &["last      failed 1.0.0", "health    nothing installed yet"],
            ),
        ];
        for (case, journal, health, words) in cases {
            let st = view("model", "/opt/m", journal);
            assert_eq!((st.health, st.healthy), (health, health == Health::Healthy), "{case}");
            let text = text(std::slice::from_ref(&st));
            for w in words {
                assert!(text.contains(w), "{case}: {w:?} not in\n{text}");
            }
            assert!(!text.contains("not healthy"), "{case}:\n{text}");
        }
    }
}
