//! The agent's durable state: identity, per-artifact journals, the report outbox, the record
//! of the highest metadata versions accepted, and the trust roots verified after the pinned one.
//!
//! Every file is replaced atomically (write a temporary, fsync it, rename, fsync the
//! directory), so after a crash or power loss each holds its old or its new content, never a
//! mix. A file that does not parse is an error, never silently reset: the agent fails closed.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use wavecast_core::assignment::{DeviceState, Report};
use wavecast_core::probe::ProbeSpec;
use wavecast_core::{ArtifactName, ArtifactVersion, Sha256Digest};

/// Errors reading or writing state.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Filesystem trouble.
    #[error("{op} {path}")]
    Io {
        /// What we were doing.
        op: &'static str,
        /// Where.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A state file does not parse.
    #[error("{path} is corrupt; refusing to guess — move it aside to reset that piece of state")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        #[source]
        source: serde_json::Error,
    },
}

/// Maps an IO error to [`StateError::Io`] naming the operation and the path.
pub(crate) fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StateError + use<> {
    let path = path.to_path_buf();
    move |source| StateError::Io { op, path, source }
}

/// fsyncs a directory so renames and creations in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StateError> {
    wavecast_os::fs::sync_dir(dir).map_err(io("syncing directory", dir))
}

/// Replaces `path` with `bytes` atomically and durably; the file gets `mode`.
fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), StateError> {
    wavecast_os::fs::write_atomic(path, bytes, mode).map_err(io("writing", path))
}

fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, StateError> {
    match std::fs::read(path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes).map(Some).map_err(|source| StateError::Corrupt { path: path.into(), source })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io("reading", path)(e)),
    }
}

fn write_json<T: Serialize>(path: &Path, value: &T, mode: u32) -> Result<(), StateError> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|source| StateError::Corrupt { path: path.into(), source })?;
    write_atomic(path, &bytes, mode)
}

/// This device's identity after enrollment.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Identity {
    /// The server's id for this device.
    pub device_id: String,
    /// The name it enrolled with.
    pub name: String,
    /// The device credential (secret).
    pub credential: String,
}

/// The highest TUF metadata versions and director counter ever accepted. Kept apart from
/// tough's own store, which skips its rollback check when its files are missing or corrupt.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trusted {
    /// root.json version.
    pub root: u64,
    /// timestamp.json version.
    pub timestamp: u64,
    /// snapshot.json version.
    pub snapshot: u64,
    /// targets.json version.
    pub targets: u64,
    /// Director assignment counter.
    pub counter: u64,
}

/// An installed artifact version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Installed {
    /// Version.
    pub version: ArtifactVersion,
    /// SHA-256 of the file.
    pub sha256: Sha256Digest,
}

/// What the previous-version file next to an artifact's path holds: a version wavecast
/// installed, or the file that was at the path before wavecast's first install there (a
/// factory model, say), which a revert puts back like any other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Previous {
    /// Which version; [`Kept::Unmanaged`] for a file wavecast did not install.
    pub version: Kept,
    /// SHA-256 of the file, checked again before it is put back.
    pub sha256: Sha256Digest,
}

impl From<Installed> for Previous {
    fn from(i: Installed) -> Self {
        Self { version: Kept::Managed(i.version), sha256: i.sha256 }
    }
}

impl Previous {
    /// The installed version, when wavecast installed it.
    pub fn installed(&self) -> Option<Installed> {
        match &self.version {
            Kept::Managed(v) => Some(Installed { version: v.clone(), sha256: self.sha256 }),
            Kept::Unmanaged => None,
        }
    }
}

/// The version of a kept file. Written as the version string, or `"unmanaged"` (which is not a
/// semantic version, so it can never be mistaken for one), so journals written before this
/// variant existed read unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Kept {
    /// A version wavecast installed.
    Managed(ArtifactVersion),
    /// The file at the path before wavecast's first install.
    Unmanaged,
}

const UNMANAGED: &str = "unmanaged";

impl TryFrom<String> for Kept {
    type Error = wavecast_core::name::NameError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        if s == UNMANAGED { Ok(Kept::Unmanaged) } else { ArtifactVersion::new(&s).map(Kept::Managed) }
    }
}

impl From<Kept> for String {
    fn from(k: Kept) -> String {
        k.to_string()
    }
}

impl std::fmt::Display for Kept {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Kept::Managed(v) => v.fmt(f),
            Kept::Unmanaged => f.write_str(UNMANAGED),
        }
    }
}

/// What the agent is in the middle of for one artifact. Written before each step starts, so
/// a restarted agent knows where it was.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum Phase {
    /// Nothing in progress.
    #[default]
    Idle,
    /// Installing `target` (downloading, verifying, swapping).
    Installing {
        /// The work.
        work: Work,
    },
    /// The swap may have happened; `path` holds the old or the new bytes.
    Swapping {
        /// The work.
        work: Work,
    },
    /// The new version is in place and being probed.
    Probing {
        /// The work.
        work: Work,
        /// How many times the agent restarted during this probe.
        restarts: u32,
    },
    /// Putting the previous version back after a failed probe.
    RollingBack {
        /// The work.
        work: Work,
        /// Why.
        reason: String,
    },
    /// Going back to the previous version for an aborted rollout.
    Reverting {
        /// The rollout.
        rollout_id: String,
        /// The version being undone.
        version: ArtifactVersion,
    },
}

/// One install being carried out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Work {
    /// The rollout.
    pub rollout_id: String,
    /// Version.
    pub version: ArtifactVersion,
    /// Signed SHA-256.
    pub sha256: Sha256Digest,
    /// Signed length.
    pub length: u64,
    /// The probe to run.
    pub probe: ProbeSpec,
}

/// The last thing that happened to an artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// The state reported.
    pub state: DeviceState,
    /// Why, when it failed.
    pub reason: Option<String>,
    /// The rollout.
    pub rollout_id: String,
    /// The version concerned.
    pub version: ArtifactVersion,
    /// When (Unix ms).
    pub at_ms: i64,
}

/// A version a rollout must not try again on this device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refused {
    /// The rollout.
    pub rollout_id: String,
    /// SHA-256 of the version.
    pub sha256: Sha256Digest,
}

/// Everything the agent knows about one artifact.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    /// What `path` holds and the application runs.
    pub active: Option<Installed>,
    /// What the previous-version file next to `path` holds (none: nothing is kept).
    pub previous: Option<Previous>,
    /// Work in progress.
    #[serde(default)]
    pub phase: Phase,
    /// (rollout, version) pairs that failed or were refused: never retried.
    #[serde(default)]
    pub refused: Vec<Refused>,
    /// Rollouts already reverted here.
    #[serde(default)]
    pub reverted: Vec<String>,
    /// The last outcome.
    pub last_outcome: Option<Outcome>,
}

impl Journal {
    /// Whether `rollout_id` already refused or failed `sha256` here.
    pub fn refused(&self, rollout_id: &str, sha256: &Sha256Digest) -> bool {
        self.refused.iter().any(|r| r.rollout_id == rollout_id && r.sha256 == *sha256)
    }
}

/// The state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// Opens (creating, mode 0700) the state directory.
    pub fn open(root: &Path) -> Result<Self, StateError> {
        use std::os::unix::fs::DirBuilderExt as _;
        for d in [root.to_path_buf(), root.join("tuf"), root.join("artifacts"), root.join("outbox"), root.join("roots")]
        {
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&d).map_err(io("creating", &d))?;
        }
        Ok(Self { root: root.to_path_buf() })
    }

    /// tough's metadata store.
    pub fn tuf_dir(&self) -> PathBuf {
        self.root.join("tuf")
    }

    fn identity_path(&self) -> PathBuf {
        self.root.join("device.json")
    }

    fn trusted_path(&self) -> PathBuf {
        self.root.join("trusted.json")
    }

    fn journal_path(&self, artifact: &ArtifactName) -> PathBuf {
        self.root.join("artifacts").join(format!("{artifact}.json"))
    }

    fn outbox_dir(&self) -> PathBuf {
        self.root.join("outbox")
    }

    /// Where root `version` is kept once verified: `roots/N.root.json`, as TUF names it.
    pub fn root_path(&self, version: u64) -> PathBuf {
        self.root.join("roots").join(format!("{version}.root.json"))
    }

    /// Root `version` as kept, if it is.
    pub fn kept_root(&self, version: u64) -> Result<Option<Vec<u8>>, StateError> {
        let path = self.root_path(version);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io("reading", &path)(e)),
        }
    }

    /// Keeps a verified root, durably, exactly as the server signed it.
    pub fn keep_root(&self, version: u64, bytes: &[u8]) -> Result<(), StateError> {
        write_atomic(&self.root_path(version), bytes, 0o644)
    }

    /// The identity, if enrolled.
    pub fn identity(&self) -> Result<Option<Identity>, StateError> {
        read_json(&self.identity_path())
    }

    /// Saves the identity (0600: it holds the credential).
    pub fn save_identity(&self, id: &Identity) -> Result<(), StateError> {
        write_json(&self.identity_path(), id, 0o600)
    }

    /// The accepted-versions record.
    pub fn trusted(&self) -> Result<Trusted, StateError> {
        Ok(read_json(&self.trusted_path())?.unwrap_or_default())
    }

    /// Saves the accepted-versions record.
    pub fn save_trusted(&self, t: &Trusted) -> Result<(), StateError> {
        write_json(&self.trusted_path(), t, 0o600)
    }

    /// An artifact's journal (empty if new).
    pub fn journal(&self, artifact: &ArtifactName) -> Result<Journal, StateError> {
        Ok(read_json(&self.journal_path(artifact))?.unwrap_or_default())
    }

    /// Saves an artifact's journal.
    pub fn save_journal(&self, artifact: &ArtifactName, j: &Journal) -> Result<(), StateError> {
        write_json(&self.journal_path(artifact), j, 0o600)
    }

    /// Queues a report for delivery unless one with the same id is queued already.
    pub fn push_report(&self, report: &Report) -> Result<(), StateError> {
        let dir = self.outbox_dir();
        let mut max = 0u64;
        for (seq, path) in self.outbox_files()? {
            if path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.ends_with(&format!("-{}.json", report.id))) {
                return Ok(());
            }
            max = max.max(seq);
        }
        write_json(&dir.join(format!("{:020}-{}.json", max + 1, report.id)), report, 0o600)
    }

    fn outbox_files(&self) -> Result<Vec<(u64, PathBuf)>, StateError> {
        let dir = self.outbox_dir();
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(io("listing", &dir))? {
            let path = entry.map_err(io("listing", &dir))?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
            if name.starts_with('.') || !name.ends_with(".json") {
                continue;
            }
            if let Some(seq) = name.split('-').next().and_then(|s| s.parse::<u64>().ok()) {
                out.push((seq, path));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Queued reports, oldest first.
    pub fn pending_reports(&self) -> Result<Vec<Report>, StateError> {
        let mut out = Vec::new();
        for (_, path) in self.outbox_files()? {
            if let Some(r) = read_json::<Report>(&path)? {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// Drops delivered reports.
    pub fn remove_reports(&self, ids: &[String]) -> Result<(), StateError> {
        for (_, path) in self.outbox_files()? {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
            if ids.iter().any(|id| name.ends_with(&format!("-{id}.json"))) {
                std::fs::remove_file(&path).map_err(io("removing", &path))?;
            }
        }
        sync_dir(&self.outbox_dir())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A journal as the agent wrote it before its versions and digests were typed (plain
    /// strings then): it must read back and be written again byte for byte, so an upgraded
    /// agent resumes from the files an older one left.
    const JOURNAL: &str = r#"{
  "active": {
    "version": "1.0.0",
    "sha256": "1111111111111111111111111111111111111111111111111111111111111111"
  },
  "previous": null,
  "phase": {
    "phase": "probing",
    "work": {
      "rollout_id": "r-2",
      "version": "2.0.0-rc.1+build.5",
      "sha256": "2222222222222222222222222222222222222222222222222222222222222222",
      "length": 42,
      "probe": {
        "kind": "exec",
        "name": "check",
        "args": [
          "--quick"
        ],
        "timeout_ms": 5000,
        "attempts": 1,
        "interval_ms": 100,
        "initial_delay_ms": 0
      }
    },
    "restarts": 1
  },
  "refused": [
    {
      "rollout_id": "r-1",
      "sha256": "3333333333333333333333333333333333333333333333333333333333333333"
    }
  ],
  "reverted": [
    "r-0"
  ],
  "last_outcome": {
    "state": "failed",
    "reason": "probe failed: attempt 1/1: exec:check exited with status 1",
    "rollout_id": "r-1",
    "version": "1.5.0",
    "at_ms": 1800000000000
  }
}"#;

    #[test]
    fn journal_files_keep_their_format() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let name = ArtifactName::new("model").unwrap();
        std::fs::write(dir.path().join("artifacts/model.json"), JOURNAL).unwrap();
        let j = state.journal(&name).unwrap();
        assert_eq!(j.active.as_ref().map(|a| a.version.to_string()).as_deref(), Some("1.0.0"));
        assert!(j.refused("r-1", &"33".repeat(32).parse().unwrap()));
        state.save_journal(&name, &j).unwrap();
        assert_eq!(std::fs::read_to_string(dir.path().join("artifacts/model.json")).unwrap(), JOURNAL);
    }

    #[test]
    fn a_kept_file_reads_as_a_version_or_as_unmanaged() {
        let sha = "44".repeat(32);
        let old = format!(r#"{{"version":"1.0.0","sha256":"{sha}"}}"#);
        let p: Previous = serde_json::from_str(&old).unwrap();
        assert_eq!(p.version, Kept::Managed(ArtifactVersion::new("1.0.0").unwrap()));
        assert_eq!(serde_json::to_string(&p).unwrap(), old, "written as before");
        let unmanaged = format!(r#"{{"version":"unmanaged","sha256":"{sha}"}}"#);
        let p: Previous = serde_json::from_str(&unmanaged).unwrap();
        assert_eq!((p.version.clone(), p.installed()), (Kept::Unmanaged, None));
        assert_eq!(serde_json::to_string(&p).unwrap(), unmanaged);
        assert!(serde_json::from_str::<Previous>(&old.replace("1.0.0", "managed")).is_err());
    }

    #[test]
    fn a_journal_with_a_bad_digest_is_corrupt_not_reset() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let name = ArtifactName::new("model").unwrap();
        let bad = JOURNAL.replace(&"11".repeat(32), "not-a-digest");
        std::fs::write(dir.path().join("artifacts/model.json"), bad).unwrap();
        let err = wavecast_os::error::chain(&state.journal(&name).unwrap_err());
        assert!(err.contains("is corrupt") && err.contains("not-a-digest"), "{err}");
    }
}
