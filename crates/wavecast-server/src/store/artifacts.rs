//! Published artifacts: a publish records its metadata, artifact rows and audit events in one
//! transaction.

use wavecast_core::Sha256Digest;

use super::audit::append_audit;
use super::metadata::{insert_metadata, insert_online};
use super::row::read_all;
use super::{ArtifactRecord, Publish, Store, StoreError, conflict_or, q};

impl Store {
    /// Records a publish: the new targets, snapshot and timestamp, the artifact rows, and the
    /// audit events, all or nothing. Conflicts if another publish took the same targets
    /// version first, or if the name@version exists.
    pub async fn publish(&self, p: &Publish) -> Result<(), StoreError> {
        let op = "publishing";
        let mut tx = self.begin(op).await?;
        insert_metadata(&mut tx, "targets", p.targets_version, &p.targets, p.now_ms).await?;
        insert_online(&mut tx, &p.online, p.now_ms).await?;
        for a in &p.artifacts {
            sqlx::query(
                "INSERT INTO artifacts (name, version, length, sha256, hardware, targets_version, published_at, published_by) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(a.name.as_str())
            .bind(a.version.to_string())
            .bind(a.length)
            .bind(a.sha256.to_hex())
            .bind(a.hardware.clone())
            .bind(p.targets_version)
            .bind(p.now_ms)
            .bind(&a.published_by)
            .execute(&mut *tx)
            .await
            .map_err(conflict_or(op, || format!("artifact {}@{}", a.name, a.version)))?;
        }
        for e in &p.events {
            append_audit(&mut tx, p.now_ms, e.clone()).await?;
        }
        tx.commit().await.map_err(q(op))
    }

    /// All published artifacts, by name then publish time.
    pub async fn list_artifacts(&self) -> Result<Vec<ArtifactRecord>, StoreError> {
        let op = "listing artifacts";
        let rows = sqlx::query(
            "SELECT name, version, length, sha256, hardware, published_at, published_by FROM artifacts ORDER BY name, published_at",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(q(op))?;
        read_all(&rows, op, |r| {
            Ok(ArtifactRecord {
                name: r.parse(0, "artifact name")?,
                version: r.parse(1, "artifact version")?,
                length: r.get(2)?,
                sha256: r.parse(3, "artifact digest")?,
                hardware: r.get(4)?,
                published_at: r.get(5)?,
                published_by: r.get(6)?,
            })
        })
    }

    /// Whether any artifact references the blob with this digest.
    pub async fn blob_referenced(&self, sha256: &Sha256Digest) -> Result<bool, StoreError> {
        Ok(sqlx::query("SELECT 1 FROM artifacts WHERE sha256 = $1 LIMIT 1")
            .bind(sha256.to_hex())
            .fetch_optional(&self.pool)
            .await
            .map_err(q("looking up a blob"))?
            .is_some())
    }
}
