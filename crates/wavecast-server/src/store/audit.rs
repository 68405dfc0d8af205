//! The audit log: appending events under a gap-free sequence, reading them back, and the raw
//! rows and signed checkpoints that evidence is built from.
//!
//! Raw rows are returned exactly as stored, unparsed: verification must see damage as it is,
//! and a row that no longer parses must not make the evidence about every other row
//! unreadable.

use sqlx::{Any, Transaction};
use wavecast_core::audit::{AuditEvent, NewAuditEvent};

use super::row::{Row, read_all};
use super::{Store, StoreError, corrupt, q};

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

fn checkpoint(r: &Row<'_>) -> Result<CheckpointRecord, StoreError> {
    Ok(CheckpointRecord {
        size: r.get(0)?,
        root_sha256: r.get(1)?,
        note: r.get(2)?,
        frontier: r.get(3)?,
        created_at: r.get(4)?,
    })
}

/// Appends an event inside `tx`, taking the next sequence number under audit_head's row lock.
pub(super) async fn append_audit(
    tx: &mut Transaction<'static, Any>,
    now_ms: i64,
    event: NewAuditEvent,
) -> Result<AuditEvent, StoreError> {
    let op = "writing the audit log";
    let head = sqlx::query("UPDATE audit_head SET size = size + 1 WHERE id = 1 RETURNING size")
        .fetch_one(&mut **tx)
        .await
        .map_err(q(op))?;
    let size: i64 = Row::new(&head, op).get(0)?;
    let seq = size - 1;
    // RFC 3339 with milliseconds, always three digits, like every other time the API shows.
    // (Events written before kept their own precision; their bytes are what was signed.)
    let at = wavecast_api::Timestamp::from_unix_ms(now_ms);
    let placed = AuditEvent::place(event, seq as u64, at.to_string());
    let bytes = placed
        .canonical_bytes()
        .map_err(|source| StoreError::Canonical { what: format!("audit event {}", placed.action.as_str()), source })?;
    let body = String::from_utf8(bytes).map_err(corrupt("audit event"))?;
    sqlx::query("INSERT INTO audit_log (seq, at, actor, action, subject, body) VALUES ($1, $2, $3, $4, $5, $6)")
        .bind(seq)
        .bind(now_ms)
        .bind(&placed.actor)
        .bind(placed.action.as_str())
        .bind(&placed.subject)
        .bind(body)
        .execute(&mut **tx)
        .await
        .map_err(q(op))?;
    Ok(placed)
}

impl Store {
    /// Appends one event on its own.
    pub async fn audit(&self, now_ms: i64, event: NewAuditEvent) -> Result<AuditEvent, StoreError> {
        let op = "writing the audit log";
        let mut tx = self.begin(op).await?;
        let placed = append_audit(&mut tx, now_ms, event).await?;
        tx.commit().await.map_err(q(op))?;
        Ok(placed)
    }

    /// Events with `seq >= from`, at most `limit`, oldest first.
    pub async fn audit_events(&self, from: i64, limit: i64) -> Result<Vec<AuditEvent>, StoreError> {
        let op = "reading the audit log";
        let rows = sqlx::query("SELECT seq, body FROM audit_log WHERE seq >= $1 ORDER BY seq LIMIT $2")
            .bind(from)
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(q(op))?;
        read_all(&rows, op, event_row)
    }

    /// The newest `limit` events whose subject is `subject`, newest first, through the
    /// subject's index (a rollout's history on the dashboard).
    pub async fn audit_events_about(&self, subject: &str, limit: i64) -> Result<Vec<AuditEvent>, StoreError> {
        let op = "reading the audit log about one subject";
        let rows = sqlx::query("SELECT seq, body FROM audit_log WHERE subject = $1 ORDER BY seq DESC LIMIT $2")
            .bind(subject)
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(q(op))?;
        read_all(&rows, op, event_row)
    }

    /// The number of events appended so far (the next sequence number).
    pub async fn audit_size(&self) -> Result<i64, StoreError> {
        let op = "reading the audit log size";
        let row = sqlx::query("SELECT size FROM audit_head WHERE id = 1").fetch_one(&self.pool).await.map_err(q(op))?;
        Row::new(&row, op).get(0)
    }

    /// Raw rows `(seq, body)` with `from <= seq < until`, at most `limit`, by seq.
    pub async fn audit_leaves(&self, from: i64, until: i64, limit: i64) -> Result<Vec<(i64, String)>, StoreError> {
        leaves(&self.pool, from, until, limit).await
    }

    /// Raw rows `(seq, body)` with `seq < below` whose subject is `rollout`, or whose bytes
    /// name it as their detail's `rollout`, at most `limit` from `seq >= from`, by seq: a
    /// superset of the events about one rollout (the caller parses and keeps those that are),
    /// found without sending every row to the server.
    pub async fn audit_leaves_naming(
        &self,
        rollout: &str,
        from: i64,
        below: i64,
        limit: i64,
    ) -> Result<Vec<(i64, String)>, StoreError> {
        let op = "reading a rollout's audit log rows";
        // Bodies are canonical JSON (no whitespace), and ids only letters, digits and '-', so
        // the pattern holds no wildcard but its ends.
        let named = format!("%\"rollout\":\"{rollout}\"%");
        let rows = sqlx::query(
            "SELECT seq, body FROM audit_log WHERE seq >= $1 AND seq < $2 AND (subject = $3 OR body LIKE $4) \
             ORDER BY seq LIMIT $5",
        )
        .bind(from)
        .bind(below)
        .bind(rollout)
        .bind(named)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(q(op))?;
        read_all(&rows, op, |r| Ok((r.get(0)?, r.get(1)?)))
    }

    /// Checkpoint rows with `size >= from`, at most `limit`, smallest first.
    pub async fn audit_checkpoints(&self, from: i64, limit: i64) -> Result<Vec<CheckpointRecord>, StoreError> {
        let op = "reading audit checkpoints";
        let rows = sqlx::query(&format!(
            "SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoints WHERE size >= $1 ORDER BY size LIMIT $2"
        ))
        .bind(from)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(q(op))?;
        read_all(&rows, op, checkpoint)
    }

    /// Checkpoint rows with `size < below`, at most `limit`, largest first: for finding the
    /// newest one that verifies.
    pub async fn audit_checkpoints_before(&self, below: i64, limit: i64) -> Result<Vec<CheckpointRecord>, StoreError> {
        let op = "reading audit checkpoints";
        let rows = sqlx::query(&format!(
            "SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoints WHERE size < $1 ORDER BY size DESC LIMIT $2"
        ))
        .bind(below)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(q(op))?;
        read_all(&rows, op, checkpoint)
    }

    /// The checkpoint row of exactly `size`.
    pub async fn audit_checkpoint(&self, size: i64) -> Result<Option<CheckpointRecord>, StoreError> {
        let op = "reading audit checkpoints";
        sqlx::query(&format!("SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoints WHERE size = $1"))
            .bind(size)
            .fetch_optional(&self.pool)
            .await
            .map_err(q(op))?
            .map(|r| checkpoint(&Row::new(&r, op)))
            .transpose()
    }

    /// Stores a checkpoint. Returns false when one of that size exists already (another replica
    /// signed the same size first; an honest one signed the same bytes).
    pub async fn insert_audit_checkpoint(&self, c: &NewCheckpoint) -> Result<bool, StoreError> {
        insert_checkpoint(&self.pool, c).await
    }
}

/// Raw rows `(seq, body)` with `from <= seq < until`, at most `limit`, by seq, read through `db`
/// (the pool, or a transaction that sees its own appends).
pub(super) async fn leaves<'e>(
    db: impl sqlx::Executor<'e, Database = Any>,
    from: i64,
    until: i64,
    limit: i64,
) -> Result<Vec<(i64, String)>, StoreError> {
    let op = "reading audit log rows";
    let rows = sqlx::query("SELECT seq, body FROM audit_log WHERE seq >= $1 AND seq < $2 ORDER BY seq LIMIT $3")
        .bind(from)
        .bind(until)
        .bind(limit)
        .fetch_all(db)
        .await
        .map_err(q(op))?;
    read_all(&rows, op, |r| Ok((r.get(0)?, r.get(1)?)))
}

/// Stores a checkpoint through `db`; false when one of that size exists already.
pub(super) async fn insert_checkpoint<'e>(
    db: impl sqlx::Executor<'e, Database = Any>,
    c: &NewCheckpoint,
) -> Result<bool, StoreError> {
    let inserted = sqlx::query(
        "INSERT INTO audit_checkpoints (size, root_sha256, note, frontier, created_at) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (size) DO NOTHING",
    )
    .bind(c.size)
    .bind(&c.root_sha256)
    .bind(&c.note)
    .bind(&c.frontier)
    .bind(c.now_ms)
    .execute(db)
    .await
    .map_err(q("storing an audit checkpoint"))?
    .rows_affected();
    Ok(inserted == 1)
}

/// The event in a `(seq, body)` row, which must be the event of that sequence number.
fn event_row(r: &Row<'_>) -> Result<AuditEvent, StoreError> {
    let seq: i64 = r.get(0)?;
    let body: String = r.get(1)?;
    let e = AuditEvent::from_bytes(body.as_bytes()).map_err(corrupt(format!("audit event {seq}")))?;
    if e.seq != seq as u64 {
        return Err(corrupt(format!("audit event {seq}"))(format!("row {seq} holds event {}", e.seq)));
    }
    Ok(e)
}
