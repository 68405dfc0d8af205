//! TUF metadata, every version kept: rows are never updated or deleted.

use sqlx::{Any, Transaction};

use super::row::Row;
use super::{OnlineMetadata, Store, StoreError, conflict_or, q};

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
