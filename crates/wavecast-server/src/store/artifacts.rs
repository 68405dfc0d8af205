//! Published artifacts: a publish records its metadata, artifact rows and audit events in one
//! transaction, under the lock of the blob it refers to.

use sqlx::{Any, Transaction};
use wavecast_core::{Sha256Digest, TargetName};

use super::audit::append_audit;
use super::metadata::{insert_metadata, insert_online};
use super::row::{Row, read_all};
use super::{ArtifactRecord, Backend, GoldenRecord, Publish, Store, StoreError, conflict_or, q};

/// A write transaction holding the lock of one content-addressed blob.
///
/// Placing a blob's file, committing a publish that refers to it, and removing the file when
/// that publish failed all happen under this lock, so they never interleave: a publish of the
/// same bytes under another name either committed before the failed one looks (and the file
/// stays), or finds the file gone and places it again before it commits. On SQLite the
/// transaction's write lock is the lock; on PostgreSQL an advisory lock keyed by the digest.
pub struct BlobLock {
    tx: Transaction<'static, Any>,
}

impl BlobLock {
    /// Ends the transaction, releasing the lock.
    pub async fn release(self) -> Result<(), StoreError> {
        self.tx.commit().await.map_err(q("releasing a blob's lock"))
    }
}

/// The advisory lock class of blobs (PostgreSQL's two-key form, which never meets the
/// one-key locks the migrations take).
const BLOB_LOCK_CLASS: i32 = 7_700_002;

impl Store {
    /// Takes the lock of the blobs `digests` (see [`BlobLock`]), waiting for whoever holds
    /// them. On PostgreSQL the locks are taken in digest order, so two publishes that share
    /// blobs never wait on each other in a circle.
    pub async fn lock_blobs(&self, digests: &[Sha256Digest]) -> Result<BlobLock, StoreError> {
        let op = "locking a blob";
        let mut tx = self.begin(op).await?;
        let mut sorted = digests.to_vec();
        sorted.sort();
        sorted.dedup();
        for sha256 in sorted.iter().filter(|_| self.backend == Backend::Postgres) {
            let bytes = sha256.as_bytes();
            let key = i32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
            sqlx::query("SELECT pg_advisory_xact_lock($1, $2)")
                .bind(BLOB_LOCK_CLASS)
                .bind(key)
                .execute(&mut *tx)
                .await
                .map_err(q(op))?;
        }
        Ok(BlobLock { tx })
    }

    /// Whether any committed artifact refers to the blob `lock` holds.
    pub async fn blob_referenced_locked(&self, lock: &mut BlobLock, sha256: &Sha256Digest) -> Result<bool, StoreError> {
        referenced(&mut *lock.tx, sha256).await
    }

    /// Records a publish: the new targets, snapshot and timestamp, the artifact rows, and the
    /// audit events, all or nothing, in the transaction of `lock` (the lock of the blob the
    /// artifacts refer to, whose file the caller has placed), which it commits. Conflicts if
    /// another publish took the same targets version first, or if the name@version exists.
    pub async fn publish(&self, lock: BlobLock, p: &Publish) -> Result<(), StoreError> {
        let op = "publishing";
        let mut tx = lock.tx;
        insert_metadata(&mut tx, "targets", p.targets_version, &p.targets, p.now_ms).await?;
        insert_online(&mut tx, &p.online, p.now_ms).await?;
        for a in &p.artifacts {
            sqlx::query(
                "INSERT INTO artifacts (name, version, length, sha256, hardware, targets_version, published_at, published_by, \
                 golden_sha256, golden_length, golden_local_check) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            )
            .bind(a.name.as_str())
            .bind(a.version.to_string())
            .bind(a.length)
            .bind(a.sha256.to_hex())
            .bind(a.hardware.clone())
            .bind(p.targets_version)
            .bind(p.now_ms)
            .bind(&a.published_by)
            .bind(a.golden.as_ref().map(|g| g.sha256.to_hex()))
            .bind(a.golden.as_ref().map(|g| g.length))
            .bind(a.golden.as_ref().map(|g| g.local_check.clone()))
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
            "SELECT name, version, length, sha256, hardware, published_at, published_by, golden_sha256, golden_length, \
             golden_local_check FROM artifacts ORDER BY name, published_at",
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
                golden: golden_of(r, 7)?,
            })
        })
    }

    /// The golden bundle of `name@version`, if it is published with one.
    pub async fn artifact_golden(&self, target: &TargetName) -> Result<Option<GoldenRecord>, StoreError> {
        let op = "looking up an artifact's golden set";
        let row = sqlx::query(
            "SELECT golden_sha256, golden_length, golden_local_check FROM artifacts WHERE name = $1 AND version = $2",
        )
        .bind(target.name().as_str())
        .bind(target.version().to_string())
        .fetch_optional(&self.pool)
        .await
        .map_err(q(op))?;
        match row {
            None => Ok(None),
            Some(row) => golden_of(&Row::new(&row, op), 0),
        }
    }

    /// Whether any artifact references the blob with this digest.
    pub async fn blob_referenced(&self, sha256: &Sha256Digest) -> Result<bool, StoreError> {
        referenced(&self.pool, sha256).await
    }
}

async fn referenced<'e>(
    db: impl sqlx::Executor<'e, Database = Any>,
    sha256: &Sha256Digest,
) -> Result<bool, StoreError> {
    // A golden bundle is a blob like an artifact's, referred to by the artifact it is signed with.
    Ok(sqlx::query("SELECT 1 FROM artifacts WHERE sha256 = $1 OR golden_sha256 = $1 LIMIT 1")
        .bind(sha256.to_hex())
        .fetch_optional(db)
        .await
        .map_err(q("looking up a blob"))?
        .is_some())
}

/// The golden columns from `first` on (digest, length, local check), all null when there is none.
fn golden_of(r: &Row<'_>, first: usize) -> Result<Option<GoldenRecord>, StoreError> {
    let Some(sha256) = r.parse_opt(first, "golden digest")? else { return Ok(None) };
    Ok(Some(GoldenRecord {
        sha256,
        length: r.get::<Option<i64>>(first + 1)?.unwrap_or_default(),
        local_check: r.get::<Option<String>>(first + 2)?.unwrap_or_default(),
    }))
}
