//! TUF metadata, every version kept: rows are never updated or deleted.
//!
//! Besides publishing (in `artifacts`), metadata changes in three ways: the periodic renewal of
//! snapshot and timestamp, targets signed again by the publisher, and a new root version. Each
//! writes its rows and its audit events in one transaction; a new root also writes the first
//! audit checkpoint signed by the key it names, so that no moment exists in which the root is
//! new and the newest checkpoint is not the new key's.

use sqlx::{Any, Transaction};
use wavecast_core::audit::NewAuditEvent;

use super::audit::{append_audit, insert_checkpoint, leaves};
use super::row::{Row, read_all};
use super::{NewCheckpoint, OnlineMetadata, Store, StoreError, conflict_or, q};

/// New metadata the publisher or the root key holder signed, with the snapshot and timestamp
/// the server signed over it, and what the audit log records about it.
#[derive(Debug, Clone)]
pub struct MetadataWrite {
    /// Now (ms).
    pub now_ms: i64,
    /// A new root version and its bytes, exactly as signed.
    pub root: Option<(i64, String)>,
    /// A new targets version and its bytes, exactly as signed.
    pub targets: Option<(i64, String)>,
    /// Snapshot and timestamp over the targets.
    pub online: OnlineMetadata,
    /// The audit events.
    pub events: Vec<NewAuditEvent>,
}

impl Store {
    /// The newest version of `role`, with its bytes.
    pub async fn latest_metadata(&self, role: &str) -> Result<Option<(i64, String)>, StoreError> {
        let op = "reading TUF metadata";
        sqlx::query("SELECT version, body FROM tuf_metadata WHERE role = $1 ORDER BY version DESC LIMIT 1")
            .bind(role)
            .fetch_optional(&self.pool)
            .await
            .map_err(q(op))?
            .map(|r| {
                let r = Row::new(&r, op);
                Ok((r.get(0)?, r.get(1)?))
            })
            .transpose()
    }

    /// One version of `role`.
    pub async fn metadata(&self, role: &str, version: i64) -> Result<Option<String>, StoreError> {
        let op = "reading TUF metadata";
        sqlx::query("SELECT body FROM tuf_metadata WHERE role = $1 AND version = $2")
            .bind(role)
            .bind(version)
            .fetch_optional(&self.pool)
            .await
            .map_err(q(op))?
            .map(|r| Row::new(&r, op).get(0))
            .transpose()
    }

    /// The newest root version stored (1 once the installation is imported, 0 before).
    pub async fn newest_root_version(&self) -> Result<i64, StoreError> {
        let op = "reading the newest root version";
        let row = sqlx::query("SELECT COALESCE(MAX(version), 0) FROM tuf_metadata WHERE role = $1")
            .bind("root")
            .fetch_one(&self.pool)
            .await
            .map_err(q(op))?;
        Row::new(&row, op).get(0)
    }

    /// Every root version after `version`, oldest first, with its bytes.
    pub async fn roots_after(&self, version: i64) -> Result<Vec<(i64, String)>, StoreError> {
        let op = "reading root versions";
        let rows =
            sqlx::query("SELECT version, body FROM tuf_metadata WHERE role = $1 AND version > $2 ORDER BY version")
                .bind("root")
                .bind(version)
                .fetch_all(&self.pool)
                .await
                .map_err(q(op))?;
        read_all(&rows, op, |r| Ok((r.get(0)?, r.get(1)?)))
    }

    /// Records signed metadata (targets signed again, say) with the online metadata over it and
    /// its audit events, all or nothing. A version that exists already is a conflict: someone
    /// else wrote first.
    pub async fn write_metadata(&self, w: &MetadataWrite) -> Result<(), StoreError> {
        let op = "writing TUF metadata";
        let mut tx = self.begin(op).await?;
        insert_write(&mut tx, w).await?;
        tx.commit().await.map_err(q(op))
    }

    /// Records a new root (`w.root`) like [`Store::write_metadata`], and in the same transaction
    /// the first audit checkpoint of the key it names: `sign` gets the raw rows from `from` (the
    /// size of the checkpoint it extends) to the log's head, this write's events included, and
    /// returns the checkpoint to store. Any failure, a conflicting checkpoint size included,
    /// stores nothing.
    pub async fn rotate_root<E: From<StoreError>>(
        &self,
        w: &MetadataWrite,
        from: i64,
        sign: impl FnOnce(Vec<(i64, String)>) -> Result<NewCheckpoint, E>,
    ) -> Result<(), E> {
        let op = "installing a new root";
        let mut tx = self.begin(op).await?;
        insert_write(&mut tx, w).await?;
        // The events appended above are the last rows: audit_head's row lock is held until
        // commit, so nothing else is appended in between.
        let rows = leaves(&mut *tx, from, i64::MAX, i64::MAX).await?;
        let checkpoint = sign(rows)?;
        if !insert_checkpoint(&mut *tx, &checkpoint).await? {
            return Err(StoreError::Conflict { what: format!("audit checkpoint of size {}", checkpoint.size) }.into());
        }
        tx.commit().await.map_err(q(op))?;
        Ok(())
    }

    /// Stores a new snapshot and timestamp (the periodic refresh before they expire).
    pub async fn refresh_online_metadata(&self, m: &OnlineMetadata, now_ms: i64) -> Result<(), StoreError> {
        let op = "refreshing TUF metadata";
        let mut tx = self.begin(op).await?;
        insert_online(&mut tx, m, now_ms).await?;
        tx.commit().await.map_err(q(op))
    }
}

/// Inserts one version of `role`; a version that exists already is a conflict.
pub(super) async fn insert_metadata(
    tx: &mut Transaction<'static, Any>,
    role: &str,
    version: i64,
    body: &str,
    now_ms: i64,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO tuf_metadata (role, version, body, created_at) VALUES ($1, $2, $3, $4)")
        .bind(role)
        .bind(version)
        .bind(body)
        .bind(now_ms)
        .execute(&mut **tx)
        .await
        .map_err(conflict_or("writing TUF metadata", || format!("{role} metadata version {version}")))?;
    Ok(())
}

/// Inserts a new snapshot and timestamp.
pub(super) async fn insert_online(
    tx: &mut Transaction<'static, Any>,
    m: &OnlineMetadata,
    now_ms: i64,
) -> Result<(), StoreError> {
    insert_metadata(tx, "snapshot", m.snapshot_version, &m.snapshot, now_ms).await?;
    insert_metadata(tx, "timestamp", m.timestamp_version, &m.timestamp, now_ms).await
}

async fn insert_write(tx: &mut Transaction<'static, Any>, w: &MetadataWrite) -> Result<(), StoreError> {
    if let Some((version, body)) = &w.root {
        insert_metadata(tx, "root", *version, body, w.now_ms).await?;
    }
    if let Some((version, body)) = &w.targets {
        insert_metadata(tx, "targets", *version, body, w.now_ms).await?;
    }
    insert_online(tx, &w.online, w.now_ms).await?;
    for e in &w.events {
        append_audit(tx, w.now_ms, e.clone()).await?;
    }
    Ok(())
}
