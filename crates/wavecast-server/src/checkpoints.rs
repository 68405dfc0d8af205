//! Signed checkpoints of the audit log, and the Merkle tree proofs are cut from.
//!
//! After each write burst the server signs a C2SP checkpoint (origin, size, root) with the
//! checkpoint key from `keys/checkpoint.key`, a file the database never sees: whoever can write
//! the database can rewrite events, but cannot sign a checkpoint over them.
//!
//! A new checkpoint extends the newest stored one that verifies: its frontier (the compact
//! range, checked against its signed root) plus the events appended since. Rows already
//! covered are never read again, so a row changed after it was signed can never be signed
//! over; it stays a mismatch for every verifier. Replicas sharing one database race harmlessly:
//! the checkpoint's size is its primary key and the second insert of a size is skipped.

use std::time::Duration;

use wavecast_core::Sha256Digest;
use wavecast_core::audit::{AuditDecodeError, AuditEvent, leaf_hash};
use wavecast_core::checkpoint::{Checkpoint, NoteKey, format_note, open_checkpoint, origin_for_root};
use wavecast_core::merkle::{CompactRange, MerkleError, Tree};
use wavecast_os::error::chain;
use wavecast_tuf::keys::{SigningKey, verify_ed25519};

use crate::state::Trust;
use crate::store::{CheckpointRecord, NewCheckpoint, Store, StoreError};

/// How often the signer looks for new events. A burst ends when a poll finds nothing new.
const POLL: Duration = Duration::from_millis(250);
/// The longest a busy log goes without a checkpoint, when bursts never end.
const MAX_UNSIGNED: Duration = Duration::from_secs(60);
/// Rows read per query when extending or rebuilding the tree.
const PAGE: i64 = 10_000;

/// Errors signing checkpoints or building proofs.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A row the signer was about to cover is damaged: signing it would vouch for tampering.
    #[error("refusing to sign audit event {seq}: {detail}")]
    Tampered {
        /// The first damaged position.
        seq: u64,
        /// What is wrong.
        detail: String,
        /// Why the row does not parse, when that is what is wrong.
        #[source]
        source: Option<AuditDecodeError>,
    },
    /// The newest valid checkpoint is older than one this process saw: checkpoints were
    /// removed from the database, and extending the older one could sign a rewritten history.
    #[error(
        "refusing to sign: the newest valid audit checkpoint in the database has size {found}, but this server saw one of size {seen}; checkpoints were removed"
    )]
    RolledBack {
        /// The newest valid size stored.
        found: u64,
        /// The newest size seen.
        seen: u64,
    },
    /// Fewer rows than a checkpoint covers.
    #[error("reading the audit tree of size {size}: the log holds only {held} events; run `wavecast audit verify`")]
    ShortLog {
        /// Rows found.
        held: u64,
        /// Size asked.
        size: u64,
    },
    /// A proof could not be cut.
    #[error("computing an audit proof")]
    Merkle(#[from] MerkleError),
}

/// The checkpoint key as verifiers see it: named by the installation's origin.
pub fn note_key(trust: &Trust) -> NoteKey {
    let mut public = [0u8; 32];
    public.copy_from_slice(trust.checkpoint.public_bytes());
    NoteKey { name: origin_for_root(&Sha256Digest::of(&trust.root_bytes)), public }
}

/// Signs audit checkpoints and reads them back: what that takes (the store, the checkpoint
/// key and the name verifiers know it by), and nothing else of the server's. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Checkpoints {
    store: Store,
    signer: SigningKey,
    key: NoteKey,
}

/// A stored checkpoint that verified.
#[derive(Debug, Clone)]
pub struct VerifiedCheckpoint {
    /// What it says.
    pub checkpoint: Checkpoint,
    /// The signed note.
    pub note: String,
    /// The tree's right edge at its size, checked against its root.
    pub frontier: CompactRange,
}

/// Why a stored checkpoint row is not used.
#[derive(Debug, thiserror::Error)]
enum Unusable {
    #[error("the note does not verify")]
    Note(#[source] wavecast_core::checkpoint::CheckpointError),
    #[error("the row says size {row} but its note says {note}")]
    Size { row: i64, note: u64 },
    #[error("the frontier does not parse")]
    FrontierJson(#[source] serde_json::Error),
    #[error("the frontier does not fit the size")]
    Frontier(#[source] MerkleError),
    #[error("the frontier does not hash to the signed root")]
    Root,
}

fn verify_row(row: &CheckpointRecord, key: &NoteKey) -> Result<VerifiedCheckpoint, Unusable> {
    let checkpoint = open_checkpoint(&row.note, key, verify_ed25519).map_err(Unusable::Note)?;
    if checkpoint.size as i64 != row.size {
        return Err(Unusable::Size { row: row.size, note: checkpoint.size });
    }
    let hashes: Vec<Sha256Digest> = serde_json::from_str(&row.frontier).map_err(Unusable::FrontierJson)?;
    let frontier = CompactRange::from_parts(checkpoint.size, hashes).map_err(Unusable::Frontier)?;
    if frontier.root() != checkpoint.root {
        return Err(Unusable::Root);
    }
    Ok(VerifiedCheckpoint { checkpoint, note: row.note.clone(), frontier })
}

/// What [`sign_new`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signed {
    /// No events since the newest checkpoint, of this size.
    UpToDate(u64),
    /// Signed and stored a checkpoint of this size.
    New(u64),
    /// Another replica stored this size first.
    Skipped(u64),
}

impl Signed {
    /// The size the log is covered to.
    pub fn size(self) -> u64 {
        match self {
            Signed::UpToDate(s) | Signed::New(s) | Signed::Skipped(s) => s,
        }
    }
}

impl Checkpoints {
    /// The checkpoint service over `store`, signing with the trust material's checkpoint key.
    pub fn new(store: Store, trust: &Trust) -> Self {
        Self { store, signer: trust.checkpoint.clone(), key: note_key(trust) }
    }

    /// The newest stored checkpoint that verifies; rows that do not are skipped with a warning.
    pub async fn latest(&self) -> Result<Option<VerifiedCheckpoint>, CheckpointError> {
        let mut below = i64::MAX;
        loop {
            let rows = self.store.audit_checkpoints_before(below, 64).await?;
            let Some(last) = rows.last() else { return Ok(None) };
            below = last.size;
            for row in &rows {
                match verify_row(row, &self.key) {
                    Ok(v) => return Ok(Some(v)),
                    Err(why) => {
                        tracing::warn!(size = row.size, why = %chain(&why), "skipping an audit checkpoint that does not verify")
                    }
                }
            }
        }
    }

    /// The stored checkpoint of exactly `size`, if it verifies.
    pub async fn at_size(&self, size: u64) -> Result<Option<VerifiedCheckpoint>, CheckpointError> {
        Ok(self.store.audit_checkpoint(size as i64).await?.and_then(|row| verify_row(&row, &self.key).ok()))
    }

    /// Signs a checkpoint covering every event appended since the newest valid checkpoint.
    ///
    /// `seen` is the largest size this process has seen covered (0 if none); a newest valid
    /// checkpoint below it means checkpoints were deleted, and nothing is signed.
    pub async fn sign_new(&self, seen: u64) -> Result<Signed, CheckpointError> {
        let store = &self.store;
        let head = store.audit_size().await?.max(0) as u64;
        let base = self.latest().await?;
        let (mut frontier, from) = match base {
            Some(v) => (v.frontier, v.checkpoint.size),
            None => (CompactRange::new(), 0),
        };
        if from < seen {
            return Err(CheckpointError::RolledBack { found: from, seen });
        }
        if head <= from {
            return Ok(Signed::UpToDate(from));
        }
        let mut next = from;
        while next < head {
            let rows = store.audit_leaves(next as i64, head as i64, PAGE).await?;
            if rows.is_empty() {
                break;
            }
            for (seq, body) in rows {
                let tampered = |detail: String| CheckpointError::Tampered { seq: next, detail, source: None };
                if seq as u64 != next {
                    return Err(tampered(format!("the row is missing (the next row is {seq})")));
                }
                match AuditEvent::from_bytes(body.as_bytes()) {
                    Ok(e) if e.seq == next => {}
                    Ok(e) => return Err(tampered(format!("the row holds event {}", e.seq))),
                    Err(e) => {
                        let detail = "the row is no audit event".to_owned();
                        return Err(CheckpointError::Tampered { seq: next, detail, source: Some(e) });
                    }
                }
                frontier.push(leaf_hash(body.as_bytes()));
                next += 1;
            }
        }
        if next < head {
            return Err(CheckpointError::Tampered { seq: next, detail: "the row is missing".into(), source: None });
        }
        let checkpoint = Checkpoint { origin: self.key.name.clone(), size: head, root: frontier.root() };
        let body = checkpoint.body();
        let note = format_note(&body, &self.key, &self.signer.sign_bytes(body.as_bytes()));
        let hashes: Vec<String> = frontier.hashes().iter().map(Sha256Digest::to_hex).collect();
        let inserted = store
            .insert_audit_checkpoint(&NewCheckpoint {
                size: head as i64,
                root_sha256: checkpoint.root.to_hex(),
                note,
                frontier: serde_json::to_string(&hashes).unwrap_or_default(),
                now_ms: wavecast_os::clock::now_ms(),
            })
            .await?;
        Ok(if inserted { Signed::New(head) } else { Signed::Skipped(head) })
    }

    /// Signs whatever is pending, for tests and shutdown.
    pub async fn checkpoint_now(&self) -> Result<Signed, CheckpointError> {
        self.sign_new(0).await
    }

    /// The tree of the first `size` stored events, plus the `(seq, body)` of those `keep` selects.
    /// The tree is built from the rows as stored: if they were changed, the proofs cut from it
    /// fail against the signed root, which is how verifiers find out.
    pub async fn read_tree(
        &self,
        size: u64,
        mut keep: impl FnMut(&str) -> bool,
    ) -> Result<(Tree, Vec<(u64, String)>), CheckpointError> {
        let mut tree = Tree::new();
        let mut kept = Vec::new();
        let mut from = 0i64;
        while tree.size() < size {
            let rows = self.store.audit_leaves(from, i64::MAX, PAGE).await?;
            let Some(last) = rows.last() else { break };
            from = last.0 + 1;
            for (_, body) in rows {
                if tree.size() == size {
                    break;
                }
                // The leaf index is the position, whatever the row claims.
                if keep(&body) {
                    kept.push((tree.size(), body.clone()));
                }
                tree.push(leaf_hash(body.as_bytes()));
            }
        }
        if tree.size() < size {
            return Err(CheckpointError::ShortLog { held: tree.size(), size });
        }
        Ok((tree, kept))
    }

    /// Signs checkpoints until the task is aborted: after each burst of writes (a poll that finds
    /// the log no longer growing), and at least every minute while it keeps growing.
    pub(crate) async fn run(self) {
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut previous_head: Option<i64> = None;
        let mut covered: Option<u64> = None;
        let mut seen = 0u64;
        let mut last_attempt = tokio::time::Instant::now();
        let mut last_error = String::new();
        let mut failed_at: Option<i64> = None;
        loop {
            tick.tick().await;
            let head = match self.store.audit_size().await {
                Ok(h) => h,
                Err(e) => {
                    tracing::error!(error = %chain(&e), "reading the audit log size failed");
                    continue;
                }
            };
            let growing = previous_head.is_some_and(|p| p != head);
            previous_head = Some(head);
            if covered.is_some_and(|c| head.max(0) as u64 <= c) {
                continue;
            }
            if growing && last_attempt.elapsed() < MAX_UNSIGNED {
                continue;
            }
            // A damaged log fails the same way until something changes; retry on growth or once a
            // minute rather than four times a second.
            if failed_at == Some(head) && last_attempt.elapsed() < MAX_UNSIGNED {
                continue;
            }
            last_attempt = tokio::time::Instant::now();
            match self.sign_new(seen).await {
                Ok(signed) => {
                    if let Signed::New(size) = signed {
                        tracing::debug!(size, "signed an audit checkpoint");
                    }
                    covered = Some(signed.size());
                    seen = seen.max(signed.size());
                    last_error.clear();
                    failed_at = None;
                }
                Err(e) => {
                    failed_at = Some(head);
                    let message = chain(&e);
                    if message != last_error {
                        tracing::error!(error = %message, "signing an audit checkpoint failed");
                        last_error = message;
                    }
                }
            }
        }
    }
}
