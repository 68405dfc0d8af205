//! Signed checkpoints of the audit log, and the Merkle tree proofs are cut from.
//!
//! After each write burst the server signs a C2SP checkpoint (origin, size, root) with the
//! checkpoint key the newest root names, from a file in `keys/` the database never sees: whoever
//! can write the database can rewrite events, but cannot sign a checkpoint over them.
//!
//! A new checkpoint extends the newest stored one that verifies: its frontier (the compact
//! range, checked against its signed root) plus the events appended since. Rows already
//! covered are never read again, so a row changed after it was signed can never be signed
//! over; it stays a mismatch for every verifier. Replicas sharing one database race harmlessly:
//! the checkpoint's size is its primary key and the second insert of a size is skipped.
//!
//! Proofs are cut from a tree kept in memory between requests ([`Checkpoints::inclusion_proofs`],
//! [`Checkpoints::consistency_proof`]) rather than rebuilt from every row per request. It starts
//! at the frontier of the newest verified checkpoint at or below the first leaf a request needs
//! (a proof about later leaves needs no earlier row), is only ever extended with the rows after
//! what it holds (other replicas only append), and before any proof its root at the checkpoint's
//! size must be the signed one: a mismatch means rows were changed or removed after they were
//! signed, and is answered as such, never with a proof. It holds 64 bytes a leaf, and forgets
//! all but the newest [`HELD_LEAVES`] leaves' hashes after each request.
//!
//! Across a rotation of the checkpoint key the origin stays the first root's, and only the
//! current key's checkpoints are extended or served. The rotation itself stores the first
//! checkpoint of the new key, extending the old key's newest, in the transaction that stores
//! the new root ([`Checkpoints::transition_base`], [`sign_extension`]), so a retired key's
//! checkpoint is never extended: not even one that whoever holds a leaked retired key wrote
//! into the database.

use std::sync::Arc;
use std::time::Duration;

use wavecast_core::Sha256Digest;
use wavecast_core::audit::{AuditDecodeError, AuditEvent, leaf_hash};
use wavecast_core::checkpoint::{Checkpoint, CheckpointKeys, NoteKey, format_note};
use wavecast_core::merkle::{CompactRange, MerkleError, Tree};
use wavecast_core::trust::KeyRole;
use wavecast_os::error::chain;
use wavecast_tuf::keys::{SigningKey, verify_ed25519};

use crate::store::{CheckpointRecord, NewCheckpoint, Store, StoreError};
use crate::trust::{Trust, TrustError, TrustView};

/// How often the signer looks for new events. A burst ends when a poll finds nothing new.
const POLL: Duration = Duration::from_millis(250);
/// The longest a busy log goes without a checkpoint, when bursts never end.
const MAX_UNSIGNED: Duration = Duration::from_secs(60);
/// Rows read per query when extending or rebuilding the tree.
const PAGE: i64 = 10_000;
/// The leaves whose hashes the proof tree keeps between requests, newest first (64 MiB):
/// proofs about older leaves start from a checkpoint below them again.
pub const HELD_LEAVES: u64 = 1 << 20;

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
    /// The rows no longer hash to a signed checkpoint's root.
    #[error(
        "the audit log no longer hashes to its signed checkpoint of size {size}: events it covers were changed or removed after they were signed; run `wavecast audit verify` to find which"
    )]
    Altered {
        /// The checkpoint's size.
        size: u64,
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
    /// The checkpoint key is not at hand.
    #[error(transparent)]
    Trust(#[from] TrustError),
}

/// Signs audit checkpoints and reads them back: what that takes (the store, and the trust
/// material for the checkpoint keys and the name verifiers know them by), and nothing else of
/// the server's. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Checkpoints {
    store: Store,
    trust: Arc<Trust>,
    /// The tree proofs are cut from, shared by every clone: see the module's doc.
    tree: Arc<tokio::sync::Mutex<Option<HeldTree>>>,
}

/// The audit tree kept between requests: its leaves are the rows read, by position, and the
/// next row to read is the first with `seq >= next_seq`.
#[derive(Debug)]
struct HeldTree {
    tree: Tree,
    next_seq: i64,
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

/// Which keys a stored checkpoint may be signed by to be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signer {
    /// The current checkpoint key only: for extending the log and for the newest evidence.
    Current,
    /// Any checkpoint key of the root chain: for proofs to an older checkpoint a client names.
    AnyOfChain,
}

fn verify_row(row: &CheckpointRecord, keys: &CheckpointKeys, signer: Signer) -> Result<VerifiedCheckpoint, Unusable> {
    let checkpoint = match signer {
        Signer::Current => keys.open_current(&row.note, verify_ed25519),
        Signer::AnyOfChain => keys.open(&row.note, verify_ed25519).map(|(c, _)| c),
    }
    .map_err(Unusable::Note)?;
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

/// Extends `frontier`, which covers the events before `*next`, with `rows` (raw `(seq, body)`
/// rows from `*next` on), refusing any row that is not the next event.
fn extend(frontier: &mut CompactRange, next: &mut u64, rows: Vec<(i64, String)>) -> Result<(), CheckpointError> {
    for (seq, body) in rows {
        let at = *next;
        let tampered = |detail: String| CheckpointError::Tampered { seq: at, detail, source: None };
        if seq as u64 != at {
            return Err(tampered(format!("the row is missing (the next row is {seq})")));
        }
        match AuditEvent::from_bytes(body.as_bytes()) {
            Ok(e) if e.seq == at => {}
            Ok(e) => return Err(tampered(format!("the row holds event {}", e.seq))),
            Err(e) => {
                let detail = "the row is no audit event".to_owned();
                return Err(CheckpointError::Tampered { seq: at, detail, source: Some(e) });
            }
        }
        frontier.push(leaf_hash(body.as_bytes()));
        *next += 1;
    }
    Ok(())
}

/// The stored form of a checkpoint over `frontier`, signed by `signer` as `key`.
fn checkpoint_row(frontier: &CompactRange, key: &NoteKey, signer: &SigningKey) -> NewCheckpoint {
    let checkpoint = Checkpoint { origin: key.name.clone(), size: frontier.size(), root: frontier.root() };
    let body = checkpoint.body();
    let note = format_note(&body, key, &signer.sign_bytes(body.as_bytes()));
    let hashes: Vec<String> = frontier.hashes().iter().map(Sha256Digest::to_hex).collect();
    NewCheckpoint {
        size: checkpoint.size as i64,
        root_sha256: checkpoint.root.to_hex(),
        note,
        frontier: serde_json::to_string(&hashes).unwrap_or_default(),
        now_ms: wavecast_os::clock::now_ms(),
    }
}

/// For a rotation: the checkpoint over `base` (the old key's newest, from
/// [`Checkpoints::transition_base`]) extended with `rows` (every row from its size on, read in
/// the rotation's transaction), signed by the checkpoint key of `next`, the new root's view.
pub fn sign_extension(
    base: &VerifiedCheckpointBase,
    rows: Vec<(i64, String)>,
    next: &TrustView,
) -> Result<NewCheckpoint, CheckpointError> {
    let signer = next.key(KeyRole::Checkpoint)?;
    let mut frontier = base.frontier.clone();
    let mut at = base.size;
    extend(&mut frontier, &mut at, rows)?;
    Ok(checkpoint_row(&frontier, &next.checkpoint_keys().current(), signer))
}

/// Where a rotation's first checkpoint starts: the old key's newest checkpoint (its size and
/// frontier), or the empty tree when there is none yet.
#[derive(Debug, Clone)]
pub struct VerifiedCheckpointBase {
    /// The size it covers.
    pub size: u64,
    /// Its frontier, checked against its signed root.
    pub frontier: CompactRange,
}

impl Checkpoints {
    /// The checkpoint service over `store`, signing with the checkpoint key the newest root
    /// names.
    pub fn new(store: Store, trust: Arc<Trust>) -> Self {
        Self { store, trust, tree: Arc::default() }
    }

    /// The newest stored checkpoint signed by the current checkpoint key; rows that do not
    /// verify are skipped with a warning.
    pub async fn latest(&self) -> Result<Option<VerifiedCheckpoint>, CheckpointError> {
        self.latest_of(self.trust.current().checkpoint_keys()).await
    }

    async fn latest_of(&self, keys: &CheckpointKeys) -> Result<Option<VerifiedCheckpoint>, CheckpointError> {
        self.newest_below(keys, i64::MAX).await
    }

    /// The newest stored checkpoint smaller than `below` signed by the current key of `keys`.
    async fn newest_below(
        &self,
        keys: &CheckpointKeys,
        mut below: i64,
    ) -> Result<Option<VerifiedCheckpoint>, CheckpointError> {
        loop {
            let rows = self.store.audit_checkpoints_before(below, 64).await?;
            let Some(last) = rows.last() else { return Ok(None) };
            below = last.size;
            for row in &rows {
                match verify_row(row, keys, Signer::Current) {
                    Ok(v) => return Ok(Some(v)),
                    Err(why) => {
                        tracing::warn!(size = row.size, why = %chain(&why), "skipping an audit checkpoint that does not verify")
                    }
                }
            }
        }
    }

    /// The stored checkpoint of exactly `size`, if any checkpoint key of the root chain signed
    /// it (a client proving growth from a checkpoint it kept may name one from before a
    /// rotation).
    pub async fn at_size(&self, size: u64) -> Result<Option<VerifiedCheckpoint>, CheckpointError> {
        let view = self.trust.current();
        Ok(self
            .store
            .audit_checkpoint(size as i64)
            .await?
            .and_then(|row| verify_row(&row, view.checkpoint_keys(), Signer::AnyOfChain).ok()))
    }

    /// For a rotation away from `current`: the newest checkpoint of its key, which the new
    /// key's first checkpoint extends.
    pub async fn transition_base(&self, current: &TrustView) -> Result<VerifiedCheckpointBase, CheckpointError> {
        Ok(match self.latest_of(current.checkpoint_keys()).await? {
            Some(v) => VerifiedCheckpointBase { size: v.checkpoint.size, frontier: v.frontier },
            None => VerifiedCheckpointBase { size: 0, frontier: CompactRange::new() },
        })
    }

    /// Signs a checkpoint covering every event appended since the newest valid checkpoint.
    ///
    /// `seen` is the largest size this process has seen covered (0 if none); a newest valid
    /// checkpoint below it means checkpoints were deleted, and nothing is signed.
    pub async fn sign_new(&self, seen: u64) -> Result<Signed, CheckpointError> {
        loop {
            if let Some(signed) = self.try_sign(seen).await? {
                return Ok(signed);
            }
        }
    }

    /// One attempt of [`Checkpoints::sign_new`]; `None` when a new root arrived meanwhile.
    async fn try_sign(&self, seen: u64) -> Result<Option<Signed>, CheckpointError> {
        let store = &self.store;
        let view = self.trust.refresh(store).await?;
        let signer = view.key(KeyRole::Checkpoint)?;
        let head = store.audit_size().await?.max(0) as u64;
        let base = self.latest_of(view.checkpoint_keys()).await?;
        let (mut frontier, from) = match base {
            Some(v) => (v.frontier, v.checkpoint.size),
            None => (CompactRange::new(), 0),
        };
        if from < seen {
            return Err(CheckpointError::RolledBack { found: from, seen });
        }
        if head <= from {
            return Ok(Some(Signed::UpToDate(from)));
        }
        let mut next = from;
        while next < head {
            let rows = store.audit_leaves(next as i64, head as i64, PAGE).await?;
            if rows.is_empty() {
                break;
            }
            extend(&mut frontier, &mut next, rows)?;
        }
        if next < head {
            return Err(CheckpointError::Tampered { seq: next, detail: "the row is missing".into(), source: None });
        }
        // A root that arrived while the rows were read may have retired this key; its own
        // first checkpoint already covers what was read, so start over from that one.
        if self.trust.refresh(store).await?.version() != view.version() {
            return Ok(None);
        }
        let inserted = store
            .insert_audit_checkpoint(&checkpoint_row(&frontier, &view.checkpoint_keys().current(), signer))
            .await?;
        Ok(Some(if inserted { Signed::New(head) } else { Signed::Skipped(head) }))
    }

    /// Signs whatever is pending, for tests and shutdown.
    pub async fn checkpoint_now(&self) -> Result<Signed, CheckpointError> {
        self.sign_new(0).await
    }

    /// The inclusion proof of each leaf of `leaves` in the tree of checkpoint `target`
    /// (verified), in order. Reads no row before the newest checkpoint at or below the first of
    /// them, and none that an earlier request read (see the module's doc).
    pub async fn inclusion_proofs(
        &self,
        target: &VerifiedCheckpoint,
        leaves: &[u64],
    ) -> Result<Vec<Vec<Sha256Digest>>, CheckpointError> {
        let size = target.checkpoint.size;
        let first = leaves.iter().min().copied().unwrap_or(size);
        self.with_tree(target, first, |tree| leaves.iter().map(|i| tree.inclusion_proof(*i, size)).collect()).await
    }

    /// The proof that the tree of size `from` is a prefix of checkpoint `target`'s (verified;
    /// `from` at most its size). Reads no row before the newest checkpoint at or below `from`,
    /// and none that an earlier request read.
    pub async fn consistency_proof(
        &self,
        target: &VerifiedCheckpoint,
        from: u64,
    ) -> Result<Vec<Sha256Digest>, CheckpointError> {
        let size = target.checkpoint.size;
        // Proofs from 0 and to itself are empty: they need no leaf at all.
        let first = if from == 0 { size } else { from };
        self.with_tree(target, first, |tree| tree.consistency_proof(from, size)).await
    }

    /// Runs `prove` on the tree of the rows, extended to cover `target` and holding every hash a
    /// proof about leaves from `first` on needs, once its root at `target`'s size is the signed
    /// one.
    async fn with_tree<T>(
        &self,
        target: &VerifiedCheckpoint,
        first: u64,
        prove: impl FnOnce(&Tree) -> Result<T, MerkleError>,
    ) -> Result<T, CheckpointError> {
        let size = target.checkpoint.size;
        let first = first.min(size);
        let mut slot = self.tree.lock().await;
        // A damaged log leaves no tree behind: the next request starts again from a checkpoint,
        // reading the rows as they are then. (A database that fails leaves it as it is: leaves
        // past a checkpoint are checked when a checkpoint covering them is.)
        let mut held = match slot.take() {
            Some(held) if held.tree.kept_from() <= first => held,
            _ => self.start_tree(first).await?,
        };
        match self.extend(&mut held, size).await {
            Ok(()) => {}
            Err(e @ CheckpointError::Store(_)) => {
                *slot = Some(held);
                return Err(e);
            }
            Err(e) => return Err(e),
        }
        if held.tree.root(size)? != target.checkpoint.root {
            return Err(CheckpointError::Altered { size });
        }
        let proved = prove(&held.tree)?;
        held.tree.forget_before(held.tree.size().saturating_sub(HELD_LEAVES));
        *slot = Some(held);
        Ok(proved)
    }

    /// Extends `held` with the rows after it until it covers `size` leaves.
    async fn extend(&self, held: &mut HeldTree, size: u64) -> Result<(), CheckpointError> {
        while held.tree.size() < size {
            let wanted = (size - held.tree.size()).min(PAGE as u64) as i64;
            let rows = self.store.audit_leaves(held.next_seq, i64::MAX, wanted).await?;
            if rows.is_empty() {
                return Err(CheckpointError::ShortLog { held: held.tree.size(), size });
            }
            // The leaf index is the position, whatever the row claims: a row removed or moved
            // shows as a root that is not the signed one.
            for (seq, body) in rows {
                held.tree.push(leaf_hash(body.as_bytes()));
                held.next_seq = seq + 1;
            }
        }
        Ok(())
    }

    /// A tree from the frontier of the newest checkpoint of the current key at or below
    /// `first`, or from the first row.
    async fn start_tree(&self, first: u64) -> Result<HeldTree, CheckpointError> {
        let below = i64::try_from(first).unwrap_or(i64::MAX).saturating_add(1);
        Ok(match self.newest_below(self.trust.current().checkpoint_keys(), below).await? {
            Some(v) => HeldTree { next_seq: v.checkpoint.size as i64, tree: Tree::from_range(&v.frontier) },
            None => HeldTree { tree: Tree::new(), next_seq: 0 },
        })
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
