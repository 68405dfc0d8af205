//! The audit log's raw rows and its signed checkpoints.
//!
//! Rows are returned exactly as stored, unparsed: verification must see damage as it is, and
//! a row that no longer parses must not make the evidence about every other row unreadable.

use sqlx::Row as _;
use sqlx::any::AnyRow;

use super::{Store, StoreError, q};

/// A stored checkpoint row. Only its note is evidence; the other columns are for queries and
/// for extending the tree, and are checked against the note before use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointRecord {
    /// The size the row claims.
    pub size: i64,
    /// The root the row claims, hex.
    pub root_sha256: String,
    /// The signed checkpoint note.
    pub note: String,
    /// JSON list of hex subtree roots covering `[0, size)` (a compact range).
    pub frontier: String,
    /// When it was signed, Unix milliseconds.
    pub created_at: i64,
}

/// A checkpoint to store.
#[derive(Debug, Clone)]
pub struct NewCheckpoint {
    /// Tree size.
    pub size: i64,
    /// Root hash, hex.
    pub root_sha256: String,
    /// The signed note.
    pub note: String,
    /// The compact range as a JSON list of hex hashes.
    pub frontier: String,
    /// Now, Unix milliseconds.
    pub now_ms: i64,
}

const CHECKPOINT_COLUMNS: &str = "size, root_sha256, note, frontier, created_at";

fn checkpoint_from_row(r: &AnyRow) -> Result<CheckpointRecord, StoreError> {
    let e = || q("reading audit checkpoints");
    Ok(CheckpointRecord {
        size: r.try_get(0).map_err(e())?,
        root_sha256: r.try_get(1).map_err(e())?,
        note: r.try_get(2).map_err(e())?,
        frontier: r.try_get(3).map_err(e())?,
        created_at: r.try_get(4).map_err(e())?,
    })
}

impl Store {
    /// The number of events appended so far (the next sequence number).
    pub async fn audit_size(&self) -> Result<i64, StoreError> {
        sqlx::query("SELECT size FROM audit_head WHERE id = 1")
            .fetch_one(&self.pool)
            .await
            .map_err(q("reading the audit log size"))?
            .try_get(0)
            .map_err(q("reading the audit log size"))
    }

    /// Raw rows `(seq, body)` with `from <= seq < until`, at most `limit`, by seq.
    pub async fn audit_leaves(&self, from: i64, until: i64, limit: i64) -> Result<Vec<(i64, String)>, StoreError> {
        let op = "reading audit log rows";
        let rows = sqlx::query("SELECT seq, body FROM audit_log WHERE seq >= $1 AND seq < $2 ORDER BY seq LIMIT $3")
            .bind(from)
            .bind(until)
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(q(op))?;
        rows.iter().map(|r| Ok((r.try_get(0).map_err(q(op))?, r.try_get(1).map_err(q(op))?))).collect()
    }

    /// Checkpoint rows with `size >= from`, at most `limit`, smallest first.
    pub async fn audit_checkpoints(&self, from: i64, limit: i64) -> Result<Vec<CheckpointRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoints WHERE size >= $1 ORDER BY size LIMIT $2"
        ))
        .bind(from)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(q("reading audit checkpoints"))?;
        rows.iter().map(checkpoint_from_row).collect()
    }

    /// Checkpoint rows with `size < below`, at most `limit`, largest first: for finding the
    /// newest one that verifies.
    pub async fn audit_checkpoints_before(&self, below: i64, limit: i64) -> Result<Vec<CheckpointRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoints WHERE size < $1 ORDER BY size DESC LIMIT $2"
        ))
        .bind(below)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(q("reading audit checkpoints"))?;
        rows.iter().map(checkpoint_from_row).collect()
    }

    /// The checkpoint row of exactly `size`.
    pub async fn audit_checkpoint(&self, size: i64) -> Result<Option<CheckpointRecord>, StoreError> {
        sqlx::query(&format!("SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoints WHERE size = $1"))
            .bind(size)
            .fetch_optional(&self.pool)
            .await
            .map_err(q("reading audit checkpoints"))?
            .map(|r| checkpoint_from_row(&r))
            .transpose()
    }

    /// Stores a checkpoint. Returns false when one of that size exists already (another replica
    /// signed the same size first; an honest one signed the same bytes).
    pub async fn insert_audit_checkpoint(&self, c: &NewCheckpoint) -> Result<bool, StoreError> {
        let inserted = sqlx::query(
            "INSERT INTO audit_checkpoints (size, root_sha256, note, frontier, created_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (size) DO NOTHING",
        )
        .bind(c.size)
        .bind(&c.root_sha256)
        .bind(&c.note)
        .bind(&c.frontier)
        .bind(c.now_ms)
        .execute(&self.pool)
        .await
        .map_err(q("storing an audit checkpoint"))?
        .rows_affected();
        Ok(inserted == 1)
    }
}
