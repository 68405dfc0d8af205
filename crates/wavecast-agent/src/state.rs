//! The agent's durable state: identity, per-artifact journals, the report outbox, the record
//! of the highest metadata versions accepted, and the trust roots verified after the pinned one.
//!
//! Journals, the outbox and the accepted-versions record live in one append-only log,
//! `journal.log`. A state transition is one record — the artifact's journal as it now is and
//! the reports the transition queues, written together — appended as one line and flushed
//! with one `fdatasync`, so a step is never journaled without its report or the reverse. Each line
//! carries a checksum of its JSON: a crash can tear only the last line (every line before it
//! was flushed), and a torn last line is dropped as if the crash had come before it. A line
//! that fails its check with whole lines after it is damage, not a crash, and the agent stops
//! (fails closed) rather than guess. The log is compacted into a single record of the whole
//! state, replacing it atomically, once it grows past [`COMPACT_AT`].
//!
//! Nothing is written when nothing changes. Three things are kept without a flush of their
//! own, because losing them in a power cut costs nothing the agent relies on:
//! - reports the server acknowledged are listed in `delivered.log`, never flushed: a lost
//!   line only means the report is sent again, which the server applies once;
//! - the director's counter and the TUF versions accepted are held in memory and written with
//!   the next record, so they are on disk before anything is done on what they accepted (a
//!   swap, a report): a power cut that loses them lets an older doc or older metadata be
//!   accepted again only where nothing was done on the newer one;
//! - tough's own datastore (`tuf/`), which tough writes without flushing and which the
//!   accepted-versions record stands in for when it is lost.
//!
//! Identity and kept roots are small files replaced atomically (temporary, fsync, rename,
//! fsync the directory), each written once. Agents before this log kept journals in
//! `artifacts/NAME.json`, reports in `outbox/` and the record in `trusted.json`; the first
//! start of this agent reads them into a new log, and removes them only once the log is
//! durable. A file that does not parse is an error, never silently reset: the agent fails
//! closed.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use wavecast_core::assignment::{DeviceState, Report};
use wavecast_core::probe::ProbeSpec;
use wavecast_core::{ArtifactName, ArtifactVersion, Sha256Digest};
use wavecast_tuf::golden::Golden;

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
    /// A record of the log fails its checksum with whole records after it: the disk lost
    /// bytes that were flushed. (A crash tears only the last record, which is dropped.)
    #[error(
        "{path} is damaged at record {line}: it fails its checksum and later records do not; refusing to guess — move it \
         aside to reset the journals and the outbox"
    )]
    Damaged {
        /// The log.
        path: PathBuf,
        /// Which record (1 is the first).
        line: usize,
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
        /// What the failed probe printed (a model check's report), for the failure report.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        probe_result: Option<serde_json::Value>,
    },
    /// Going back to the previous version for an aborted rollout.
    Reverting {
        /// The rollout.
        rollout_id: String,
        /// The version being undone.
        version: ArtifactVersion,
    },
}

impl Phase {
    /// The phase's name, as written (`rolling_back`).
    pub fn name(&self) -> &'static str {
        match self {
            Phase::Idle => "idle",
            Phase::Installing { .. } => "installing",
            Phase::Swapping { .. } => "swapping",
            Phase::Probing { .. } => "probing",
            Phase::RollingBack { .. } => "rolling_back",
            Phase::Reverting { .. } => "reverting",
        }
    }
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
    /// The golden set signed into the target, once the signed metadata has been read: its
    /// verified file is what an exec probe gets as `WAVECAST_GOLDEN_PATH`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub golden: Option<Golden>,
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

/// The log's file name in the state directory.
const LOG: &str = "journal.log";
/// The identity's file name.
const IDENTITY: &str = "device.json";
/// The delivered reports' file name.
const DELIVERED: &str = "delivered.log";
/// The size past which the next record compacts the log: about twenty installs' records, read
/// whole at every start.
pub const COMPACT_AT: u64 = 64 * 1024;

/// Hex digits of the checksum that starts each line: the first 8 bytes of the SHA-256 of the
/// JSON that follows.
const SUM_HEX: usize = 16;

/// One line of the log: what one transition changed. Replayed in order from an empty state;
/// a compacted log is one record holding everything.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Record {
    /// Reports queued (first, so a reader of the raw line sees them first).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    reports: Vec<Report>,
    /// Journals as they now are.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    journals: BTreeMap<ArtifactName, Journal>,
    /// The accepted-versions record, when it changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    trusted: Option<Trusted>,
}

impl Record {
    fn line(&self) -> Vec<u8> {
        // A `Record` of typed fields always serializes.
        let json = serde_json::to_vec(self).unwrap_or_default();
        let mut line = checksum(&json).into_bytes();
        line.push(b' ');
        line.extend_from_slice(&json);
        line.push(b'\n');
        line
    }
}

fn checksum(json: &[u8]) -> String {
    hex::encode(&Sha256Digest::of(json).as_bytes()[..SUM_HEX / 2])
}

/// What a line of the log is.
enum Line {
    Whole(Record),
    /// Fails its checksum, or is cut short: torn by a crash if nothing whole follows it.
    Broken,
    /// Passes its checksum but is not a record (written by another version of the agent?).
    Unreadable(serde_json::Error),
}

fn decode(line: &[u8]) -> Line {
    let Some((sum, json)) = line.split_at_checked(SUM_HEX) else { return Line::Broken };
    let Some(json) = json.strip_prefix(b" ") else { return Line::Broken };
    if sum != checksum(json).as_bytes() {
        return Line::Broken;
    }
    match serde_json::from_slice(json) {
        Ok(r) => Line::Whole(r),
        Err(e) => Line::Unreadable(e),
    }
}

/// Everything the log says, replayed.
#[derive(Debug, Default, Clone, PartialEq)]
struct Image {
    journals: BTreeMap<ArtifactName, Journal>,
    /// Queued reports in the order queued, delivered ones included until they are removed.
    outbox: Vec<Report>,
    trusted: Trusted,
}

impl Image {
    fn apply(&mut self, r: Record) {
        for report in r.reports {
            if !self.outbox.iter().any(|q| q.id == report.id) {
                self.outbox.push(report);
            }
        }
        self.journals.extend(r.journals);
        if let Some(t) = r.trusted {
            self.trusted = t;
        }
    }

    /// The whole state as one record: what a compacted log holds.
    fn record(&self) -> Record {
        Record { reports: self.outbox.clone(), journals: self.journals.clone(), trusted: Some(self.trusted) }
    }
}

/// The records of a log's bytes, and how many bytes they take: the rest is a torn last line.
fn replay(bytes: &[u8], path: &Path) -> Result<(Image, u64), StateError> {
    let mut image = Image::default();
    let mut lines = bytes.split_inclusive(|&b| b == b'\n').enumerate();
    let mut whole = 0u64;
    while let Some((n, line)) = lines.next() {
        let Some(body) = line.strip_suffix(b"\n") else { break };
        match decode(body) {
            Line::Whole(r) => {
                image.apply(r);
                whole += line.len() as u64;
            }
            Line::Unreadable(source) => return Err(StateError::Corrupt { path: path.into(), source }),
            Line::Broken => {
                // Only the last record can be torn: each one before it was flushed. A whole
                // record after a broken one means the disk lost flushed bytes.
                if lines.any(|(_, l)| l.strip_suffix(b"\n").is_some_and(|b| matches!(decode(b), Line::Whole(_)))) {
                    return Err(StateError::Damaged { path: path.into(), line: n + 1 });
                }
                break;
            }
        }
    }
    Ok((image, whole))
}

/// The ids in `delivered.log`; a torn last line is a prefix of an id and matches none.
fn read_delivered(path: &Path) -> Result<HashSet<String>, StateError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(String::from_utf8_lossy(&bytes).lines().map(str::to_owned).collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(HashSet::new()),
        Err(e) => Err(io("reading", path)(e)),
    }
}

/// What one state transition writes: one artifact's journal as it now is, and the reports the
/// transition queues. Written as one record with one flush.
#[derive(Debug, Clone, Copy)]
pub struct Change<'a> {
    /// The artifact and its journal.
    pub journal: Option<(&'a ArtifactName, &'a Journal)>,
    /// Reports to queue (one already queued or delivered is not queued again).
    pub reports: &'a [Report],
}

/// How a record reaches the disk. All but `Append` are the crash tests' kill points (debug
/// builds of the agent only), each running `then`, which kills the agent.
#[derive(Clone, Copy)]
pub enum Hook<'a> {
    /// Appended and flushed (or, past [`COMPACT_AT`], compacted).
    Append,
    /// Only the first half of the record is written: the torn tail of a power cut.
    Torn(&'a dyn Fn()),
    /// The log is compacted with this record, and `then` runs once the compacted log is
    /// flushed under its temporary name, before it is renamed over the log.
    Compacting(&'a dyn Fn()),
}

/// The log as this process holds it.
#[derive(Debug)]
struct Log {
    path: PathBuf,
    delivered_path: PathBuf,
    /// Whether this process appends (not when the state was opened to read). The file is
    /// opened for each record rather than held open: one process may run thousands of agents
    /// (`wavecast sim`), and an agent appends a handful of records per install, where an open
    /// costs nothing beside the flush that follows it.
    writable: bool,
    /// Bytes of whole records: where the next one goes.
    len: u64,
    /// What the log on disk says.
    image: Image,
    /// The accepted-versions record as accepted: written with the next record when it differs
    /// from the image's.
    trusted: Trusted,
    /// Reports the server acknowledged (taken out of `image.outbox`).
    delivered: HashSet<String>,
}

impl Log {
    /// Writes `record` (image after it: `next`), then takes `next` as what the disk says.
    fn write(&mut self, record: &Record, next: Image, hook: Hook<'_>) -> Result<(), StateError> {
        let line = record.line();
        match hook {
            Hook::Torn(then) => {
                let mut file = self.appender()?;
                file.write_all(&line[..line.len() / 2]).map_err(io("writing", &self.path))?;
                then();
                return Ok(());
            }
            Hook::Compacting(then) => return self.compact(next, then),
            Hook::Append if self.len + line.len() as u64 > COMPACT_AT => return self.compact(next, &|| {}),
            Hook::Append => {}
        }
        let len = self.len;
        let path = self.path.clone();
        let mut file = self.appender()?;
        let written = file.write_all(&line).and_then(|()| file.sync_data());
        if let Err(e) = written {
            // Cut what may have reached the file, so the next record follows a whole one.
            let _ = file.set_len(len);
            return Err(io("appending to", &path)(e));
        }
        self.len += line.len() as u64;
        self.image = next;
        Ok(())
    }

    fn appender(&self) -> Result<File, StateError> {
        let path = &self.path;
        if !self.writable {
            return Err(io("appending to", path)(read_only()));
        }
        let file = open_log(path)?;
        // After a failed write the file may be longer than its whole records.
        if file.metadata().map_err(io("reading", path))?.len() != self.len {
            file.set_len(self.len).map_err(io("truncating", path))?;
        }
        Ok(file)
    }

    /// Replaces the log with one record of `next`, atomically: flushed under a temporary name,
    /// renamed over the log, the directory flushed.
    fn compact(&mut self, next: Image, then: &dyn Fn()) -> Result<(), StateError> {
        let line = next.record().line();
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let tmp = dir.join(format!(".{LOG}.tmp"));
        let written = (|| {
            let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
            f.write_all(&line)?;
            f.sync_data()
        })();
        written.map_err(io("compacting into", &tmp))?;
        then();
        std::fs::rename(&tmp, &self.path).map_err(io("renaming into place", &self.path))?;
        sync_dir(dir)?;
        self.len = line.len() as u64;
        self.image = next;
        // Everything delivered is out of the compacted log. Not flushed: an id left behind
        // names a report the server has.
        if let Err(e) = std::fs::OpenOptions::new().write(true).truncate(true).open(&self.delivered_path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(error = %e, path = %self.delivered_path.display(), "emptying the delivered reports' list");
        }
        Ok(())
    }
}

fn read_only() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::PermissionDenied, "the state was opened to read only")
}

fn open_log(path: &Path) -> Result<File, StateError> {
    std::fs::OpenOptions::new().read(true).append(true).open(path).map_err(io("opening", path))
}

/// The state directory.
#[derive(Debug)]
pub struct StateDir {
    root: PathBuf,
    log: Mutex<Log>,
}

impl StateDir {
    /// Opens (creating, mode 0700) the state directory for the agent: the one writer. Reads the
    /// log, dropping a torn last record; the first time, makes it from the files of an agent
    /// before it (see the module's documentation).
    pub fn open(root: &Path) -> Result<Self, StateError> {
        Self::open_with(root, &|| {})
    }

    /// [`StateDir::open`], running `migrated` after a log made from an older agent's files is
    /// durable and before those files are removed (a kill point of the crash tests).
    pub fn open_with(root: &Path, migrated: &dyn Fn()) -> Result<Self, StateError> {
        use std::os::unix::fs::DirBuilderExt as _;
        for d in [root.to_path_buf(), root.join("tuf"), root.join("roots")] {
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&d).map_err(io("creating", &d))?;
        }
        let dir = Self::read_only(root)?;
        {
            let mut log = dir.lock();
            let exists = std::fs::symlink_metadata(&log.path).is_ok();
            let fresh = log.image == Image::default() && std::fs::symlink_metadata(root.join(IDENTITY)).is_err();
            if !exists && fresh {
                // A device not enrolled yet: nothing to keep, and nothing is appended before
                // enrollment saves the identity, whose flush of this directory makes the log's
                // creation durable too.
                std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&log.path)
                    .map_err(io("creating", &log.path))?;
            } else if !exists {
                // Made whole and durable (the directory flushed, so the log's creation
                // survives) before anything is appended to it or anything older is removed.
                wavecast_os::fs::write_atomic(&log.path, &log.image.record().line(), 0o600)
                    .map_err(io("writing", &log.path))?;
                migrated();
            }
            let file = open_log(&log.path)?;
            if !exists {
                log.len = file.metadata().map_err(io("reading", &log.path))?.len();
            } else if file.metadata().map_err(io("reading", &log.path))?.len() > log.len {
                tracing::warn!(path = %log.path.display(), "the last record was torn by a crash; dropped");
            }
            log.writable = true;
        }
        dir.remove_legacy();
        Ok(dir)
    }

    /// Reads the state without writing anything (for `status`, and to look at a running
    /// agent's state): a torn last record, or one being written, is not read.
    pub fn read_only(root: &Path) -> Result<Self, StateError> {
        let path = root.join(LOG);
        let delivered_path = root.join(DELIVERED);
        let (mut image, len) = match std::fs::read(&path) {
            Ok(bytes) => replay(&bytes, &path)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (legacy(root)?, 0),
            Err(e) => return Err(io("reading", &path)(e)),
        };
        let delivered = read_delivered(&delivered_path)?;
        image.outbox.retain(|r| !delivered.contains(&r.id));
        let trusted = image.trusted;
        let log = Log { path, delivered_path, writable: false, len, image, trusted, delivered };
        Ok(Self { root: root.to_path_buf(), log: Mutex::new(log) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Log> {
        // A panic while holding the lock leaves the image as the disk says (it is replaced
        // only after a write succeeds), so a poisoned lock is still usable.
        self.log.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Removes what an agent before the log kept, once the log holds it. Not flushed: a file
    /// that comes back after a power cut is removed again at the next start.
    fn remove_legacy(&self) {
        let _ = std::fs::remove_file(self.root.join("trusted.json"));
        let _ = std::fs::remove_file(self.root.join(".trusted.json.tmp"));
        for d in ["artifacts", "outbox"] {
            let d = self.root.join(d);
            if let Ok(entries) = std::fs::read_dir(&d) {
                for e in entries.flatten() {
                    if e.file_name().to_string_lossy().ends_with(".json")
                        || e.file_name().to_string_lossy().ends_with(".json.tmp")
                    {
                        let _ = std::fs::remove_file(e.path());
                    }
                }
            }
            let _ = std::fs::remove_dir(&d);
        }
    }

    /// tough's metadata store.
    pub fn tuf_dir(&self) -> PathBuf {
        self.root.join("tuf")
    }

    fn identity_path(&self) -> PathBuf {
        self.root.join(IDENTITY)
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

    /// The accepted-versions record, as accepted (written or not yet).
    pub fn trusted(&self) -> Result<Trusted, StateError> {
        Ok(self.lock().trusted)
    }

    /// Takes `t` as the accepted-versions record. Held in memory and written with the next
    /// record, which comes before anything is done on what it accepted.
    pub fn accept_trusted(&self, t: &Trusted) {
        self.lock().trusted = *t;
    }

    /// An artifact's journal (empty if new).
    pub fn journal(&self, artifact: &ArtifactName) -> Result<Journal, StateError> {
        Ok(self.lock().image.journals.get(artifact).cloned().unwrap_or_default())
    }

    /// The artifacts that have a journal.
    pub fn journaled(&self) -> Vec<ArtifactName> {
        self.lock().image.journals.keys().cloned().collect()
    }

    /// Saves an artifact's journal (one record, one flush; nothing when it did not change).
    pub fn save_journal(&self, artifact: &ArtifactName, j: &Journal) -> Result<(), StateError> {
        self.commit(Change { journal: Some((artifact, j)), reports: &[] }, Hook::Append)
    }

    /// Queues a report for delivery unless one with the same id is queued or was delivered.
    pub fn push_report(&self, report: &Report) -> Result<(), StateError> {
        self.commit(Change { journal: None, reports: std::slice::from_ref(report) }, Hook::Append)
    }

    /// Writes a transition as one record with one flush: the journal (when it changed), the
    /// reports not queued or delivered before, and the accepted-versions record when it
    /// changed. Writes nothing when nothing changed.
    pub fn commit(&self, change: Change<'_>, hook: Hook<'_>) -> Result<(), StateError> {
        let mut log = self.lock();
        let mut record = Record::default();
        for r in change.reports {
            let queued = log.image.outbox.iter().chain(&record.reports).any(|q| q.id == r.id);
            if !queued && !log.delivered.contains(&r.id) {
                record.reports.push(r.clone());
            }
        }
        if let Some((name, j)) = change.journal
            && log.image.journals.get(name) != Some(j)
        {
            record.journals.insert(name.clone(), j.clone());
        }
        if record.reports.is_empty() && record.journals.is_empty() {
            return Ok(());
        }
        if log.trusted != log.image.trusted {
            record.trusted = Some(log.trusted);
        }
        let mut next = log.image.clone();
        next.apply(Record {
            reports: record.reports.clone(),
            journals: record.journals.clone(),
            trusted: record.trusted,
        });
        log.write(&record, next, hook)
    }

    /// Queued reports, oldest first.
    pub fn pending_reports(&self) -> Result<Vec<Report>, StateError> {
        Ok(self.lock().image.outbox.clone())
    }

    /// Drops delivered reports: listed in `delivered.log`, not flushed (a report whose line a
    /// power cut loses is sent again, and applied once).
    pub fn remove_reports(&self, ids: &[String]) -> Result<(), StateError> {
        let mut log = self.lock();
        let gone: Vec<String> =
            ids.iter().filter(|id| log.image.outbox.iter().any(|r| &r.id == *id)).cloned().collect();
        if gone.is_empty() {
            return Ok(());
        }
        log.image.outbox.retain(|r| !gone.contains(&r.id));
        let mut lines = String::new();
        for id in gone {
            lines.push_str(&id);
            lines.push('\n');
            log.delivered.insert(id);
        }
        let path = log.delivered_path.clone();
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(io("opening", &path))?;
        f.write_all(lines.as_bytes()).map_err(io("writing", &path))
    }
}

/// The state an agent before the log kept in separate files (none: empty).
fn legacy(root: &Path) -> Result<Image, StateError> {
    let mut image = Image::default();
    if let Some(t) = read_json(&root.join("trusted.json"))? {
        image.trusted = t;
    }
    let artifacts = root.join("artifacts");
    if let Ok(entries) = std::fs::read_dir(&artifacts) {
        for e in entries {
            let path = e.map_err(io("listing", &artifacts))?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            // Temporary files are hidden; every journal was named after a valid artifact.
            let Ok(name) = ArtifactName::new(name) else { continue };
            if let Some(j) = read_json(&path)? {
                image.journals.insert(name, j);
            }
        }
    }
    let outbox = root.join("outbox");
    let mut queued = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&outbox) {
        for e in entries {
            let path = e.map_err(io("listing", &outbox))?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
            if name.starts_with('.') || !name.ends_with(".json") {
                continue;
            }
            if let Some(seq) = name.split('-').next().and_then(|s| s.parse::<u64>().ok()) {
                queued.push((seq, path));
            }
        }
    }
    queued.sort();
    for (_, path) in queued {
        if let Some(r) = read_json::<Report>(&path)? {
            image.apply(Record { reports: vec![r], ..Record::default() });
        }
    }
    Ok(image)
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

    fn name() -> ArtifactName {
        ArtifactName::new("model").unwrap()
    }

    fn report(id: &str, state: DeviceState) -> Report {
        Report {
            id: id.to_owned(),
            rollout_id: "r-1".into(),
            artifact: "model".into(),
            version: "1.0.0".into(),
            state,
            reason: None,
            probe_result: None,
            at_ms: 1,
        }
    }

    fn idle_with(outcome_state: DeviceState) -> Journal {
        Journal {
            last_outcome: Some(Outcome {
                state: outcome_state,
                reason: None,
                rollout_id: "r-1".into(),
                version: ArtifactVersion::new("1.0.0").unwrap(),
                at_ms: 1,
            }),
            ..Journal::default()
        }
    }

    fn log_bytes(dir: &Path) -> Vec<u8> {
        std::fs::read(dir.join(LOG)).unwrap()
    }

    /// The files an agent before the log left (a journal with every field, a queued report,
    /// the record) are read into the log at the first start, with the journal's format kept,
    /// and removed once the log holds them.
    #[test]
    fn an_older_agents_files_are_read_into_the_log() {
        let dir = tempfile::tempdir().unwrap();
        for d in ["artifacts", "outbox"] {
            std::fs::create_dir(dir.path().join(d)).unwrap();
        }
        std::fs::write(dir.path().join("artifacts/model.json"), JOURNAL).unwrap();
        std::fs::write(dir.path().join("artifacts/.model.json.tmp"), "{ torn").unwrap();
        let queued = report("aa", DeviceState::Probing);
        std::fs::write(
            dir.path().join("outbox/00000000000000000001-aa.json"),
            serde_json::to_vec_pretty(&queued).unwrap(),
        )
        .unwrap();
        let trusted = Trusted { root: 1, timestamp: 7, snapshot: 6, targets: 5, counter: 9 };
        std::fs::write(dir.path().join("trusted.json"), serde_json::to_vec(&trusted).unwrap()).unwrap();

        // Read before the first start (`status`), and after it, the same.
        for open in [StateDir::read_only, StateDir::open] {
            let state = open(dir.path()).unwrap();
            let j = state.journal(&name()).unwrap();
            assert_eq!(serde_json::to_string_pretty(&j).unwrap(), JOURNAL, "the journal reads back whole");
            assert!(j.refused("r-1", &"33".repeat(32).parse().unwrap()));
            assert_eq!(state.pending_reports().unwrap(), std::slice::from_ref(&queued));
            assert_eq!(state.trusted().unwrap(), trusted);
        }
        let mut left: Vec<String> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
        left.sort();
        assert_eq!(left, [LOG, "roots", "tuf"], "the older files are gone once the log holds them");
        let state = StateDir::open(dir.path()).unwrap();
        assert_eq!(state.journal(&name()).unwrap().reverted, ["r-0"]);
    }

    #[test]
    fn a_journal_with_a_bad_digest_is_corrupt_not_reset() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("artifacts")).unwrap();
        let bad = JOURNAL.replace(&"11".repeat(32), "not-a-digest");
        std::fs::write(dir.path().join("artifacts/model.json"), bad).unwrap();
        let err = wavecast_os::error::chain(&StateDir::open(dir.path()).unwrap_err());
        assert!(err.contains("is corrupt") && err.contains("not-a-digest"), "{err}");
        assert!(dir.path().join("artifacts/model.json").exists(), "left for the owner to look at");
        assert!(!dir.path().join(LOG).exists());

        // In the log too: a record whose checksum holds but whose journal does not parse.
        let dir = tempfile::tempdir().unwrap();
        let json = format!(r#"{{"journals":{{"model":{}}}}}"#, JOURNAL.replace(&"11".repeat(32), "not-a-digest"));
        let json = json.replace('\n', "");
        std::fs::write(dir.path().join(LOG), format!("{} {json}\n", checksum(json.as_bytes()))).unwrap();
        let err = wavecast_os::error::chain(&StateDir::open(dir.path()).unwrap_err());
        assert!(err.contains("is corrupt") && err.contains("not-a-digest"), "{err}");
    }

    /// Journal and reports of a transition are one line, flushed once; what did not change
    /// is not written again, and the accepted versions wait for the next record.
    #[test]
    fn a_transition_is_one_record_and_nothing_unchanged_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let start = log_bytes(dir.path());
        let j = idle_with(DeviceState::Succeeded);
        let done = report("aa", DeviceState::Succeeded);
        let change = Change { journal: Some((&name(), &j)), reports: std::slice::from_ref(&done) };
        state.commit(change, Hook::Append).unwrap();
        let one = log_bytes(dir.path());
        assert!(one.len() > start.len());
        assert_eq!(one[start.len()..].iter().filter(|&&b| b == b'\n').count(), 1, "one record");

        let trusted = Trusted { counter: 4, ..Trusted::default() };
        state.accept_trusted(&trusted);
        state.commit(change, Hook::Append).unwrap();
        state.save_journal(&name(), &j).unwrap();
        state.push_report(&done).unwrap();
        assert_eq!(log_bytes(dir.path()), one, "nothing changed, nothing written");
        assert_eq!(state.trusted().unwrap(), trusted, "accepted, in memory");
        assert_eq!(StateDir::read_only(dir.path()).unwrap().trusted().unwrap(), Trusted::default());

        state.push_report(&report("bb", DeviceState::Downloading)).unwrap();
        let again = StateDir::open(dir.path()).unwrap();
        assert_eq!(again.trusted().unwrap(), trusted, "written with the next record");
        assert_eq!(again.journal(&name()).unwrap(), j);
        assert_eq!(again.pending_reports().unwrap().iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["aa", "bb"]);
    }

    /// A crash tears only the last record: dropped, and the next one follows the whole ones.
    /// A broken record with whole ones after it is damage, and refused.
    #[test]
    fn a_torn_last_record_is_dropped_and_damage_is_refused() {
        let whole = |dir: &Path| {
            let state = StateDir::open(dir).unwrap();
            state.save_journal(&name(), &idle_with(DeviceState::Failed)).unwrap();
            state.push_report(&report("aa", DeviceState::Failed)).unwrap();
            log_bytes(dir)
        };
        let last = Record { reports: vec![report("cc", DeviceState::Succeeded)], ..Record::default() }.line();
        let mut bad_sum = last.clone();
        bad_sum[SUM_HEX + 10] ^= 1;
        // (case, tail after the whole records)
        let tails: Vec<(&str, Vec<u8>)> = vec![
            ("half a record", last[..last.len() / 2].to_vec()),
            ("all but the newline", last[..last.len() - 1].to_vec()),
            ("a checksum that does not match", bad_sum),
            ("zeros", vec![0; 300]),
            ("garbage with newlines", b"\n\x07junk\n\nmore junk".to_vec()),
        ];
        for (case, tail) in tails {
            let dir = tempfile::tempdir().unwrap();
            let before = whole(dir.path());
            let mut bytes = before.clone();
            bytes.extend_from_slice(&tail);
            std::fs::write(dir.path().join(LOG), &bytes).unwrap();
            let seen = StateDir::read_only(dir.path()).unwrap();
            assert_eq!(seen.pending_reports().unwrap().len(), 1, "{case}");
            assert_eq!(log_bytes(dir.path()), bytes, "{case}: reading writes nothing");
            let state = StateDir::open(dir.path()).unwrap();
            assert_eq!(state.journal(&name()).unwrap(), idle_with(DeviceState::Failed), "{case}");
            state.push_report(&report("dd", DeviceState::Succeeded)).unwrap();
            let ids: Vec<String> =
                StateDir::open(dir.path()).unwrap().pending_reports().unwrap().into_iter().map(|r| r.id).collect();
            assert_eq!(ids, ["aa", "dd"], "{case}: the next record follows the whole ones");
        }

        let dir = tempfile::tempdir().unwrap();
        let mut bytes = whole(dir.path());
        bytes[SUM_HEX + 5] ^= 1;
        std::fs::write(dir.path().join(LOG), &bytes).unwrap();
        let err = wavecast_os::error::chain(&StateDir::open(dir.path()).unwrap_err());
        assert!(err.contains("damaged at record 1"), "{err}");
    }

    /// Delivered reports are listed without a flush; a list lost to a power cut only means
    /// they are sent again.
    #[test]
    fn delivered_reports_are_not_queued_again() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        for id in ["aa", "bb"] {
            state.push_report(&report(id, DeviceState::Downloading)).unwrap();
        }
        let log = log_bytes(dir.path());
        state.remove_reports(&["aa".into(), "zz".into()]).unwrap();
        assert_eq!(log_bytes(dir.path()), log, "a delivery writes no record");
        state.push_report(&report("aa", DeviceState::Downloading)).unwrap();
        let pending = |s: &StateDir| s.pending_reports().unwrap().into_iter().map(|r| r.id).collect::<Vec<_>>();
        assert_eq!(pending(&state), ["bb"], "a delivered report is not queued again");
        assert_eq!(pending(&StateDir::open(dir.path()).unwrap()), ["bb"]);
        std::fs::remove_file(dir.path().join(DELIVERED)).unwrap();
        assert_eq!(pending(&StateDir::open(dir.path()).unwrap()), ["aa", "bb"], "sent again");
    }

    /// Past its limit the log becomes one record of the whole state, delivered reports out.
    #[test]
    fn the_log_is_compacted_past_its_limit() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let mut n = 0u32;
        while std::fs::metadata(dir.path().join(LOG)).unwrap().len() < COMPACT_AT - 1024 {
            state.push_report(&report(&format!("{n:032x}"), DeviceState::Downloading)).unwrap();
            n += 1;
        }
        let ids: Vec<String> = (0..n - 1).map(|i| format!("{i:032x}")).collect();
        state.remove_reports(&ids).unwrap();
        let j = idle_with(DeviceState::Succeeded);
        for k in 0..8 {
            state.save_journal(&name(), &Journal { reverted: vec![format!("r-{k}")], ..j.clone() }).unwrap();
        }
        let bytes = log_bytes(dir.path());
        assert!((bytes.len() as u64) < 4096, "compacted: {} bytes", bytes.len());
        assert_eq!(std::fs::metadata(dir.path().join(DELIVERED)).unwrap().len(), 0);
        let again = StateDir::open(dir.path()).unwrap();
        assert_eq!(again.pending_reports().unwrap().len(), 1);
        assert_eq!(again.journal(&name()).unwrap().reverted, ["r-7"]);
        assert!(!dir.path().join(format!(".{LOG}.tmp")).exists());
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
}
