//! The fleet: groups, enrollment tokens, devices, their check-in times and what they run.

use wavecast_core::assignment::ActiveArtifact;
use wavecast_core::audit::NewAuditEvent;
use wavecast_core::{GroupName, Sha256Digest};

use super::audit::append_audit;
use super::row::{Row, read_all};
use super::{
    Backend, DeviceRecord, Enrollment, GroupRecord, NewEnrollmentToken, Store, StoreError, conflict_or, placeholders, q,
};

const DEVICE_COLUMNS: &str = "id, name, group_name, hardware, enrolled_at, last_seen_at";

fn device(r: &Row<'_>) -> Result<DeviceRecord, StoreError> {
    Ok(DeviceRecord {
        id: r.get(0)?,
        name: r.parse(1, "device name")?,
        group: r.parse(2, "group name")?,
        hardware: r.get(3)?,
        enrolled_at: r.get(4)?,
        last_seen_at: r.get(5)?,
    })
}

impl Store {
    /// Creates a group.
    pub async fn create_group(
        &self,
        name: &GroupName,
        actor: &str,
        now_ms: i64,
        event: NewAuditEvent,
    ) -> Result<(), StoreError> {
        let op = "creating a group";
        let mut tx = self.begin(op).await?;
        sqlx::query("INSERT INTO device_groups (name, created_at, created_by) VALUES ($1, $2, $3)")
            .bind(name.as_str())
            .bind(now_ms)
            .bind(actor)
            .execute(&mut *tx)
            .await
            .map_err(conflict_or(op, || format!("group {name}")))?;
        append_audit(&mut tx, now_ms, event).await?;
        tx.commit().await.map_err(q(op))
    }

    /// All groups with their device counts.
    pub async fn list_groups(&self) -> Result<Vec<GroupRecord>, StoreError> {
        let op = "listing groups";
        let rows = sqlx::query(
            "SELECT g.name, g.created_at, g.created_by, \
             (SELECT COUNT(*) FROM devices d WHERE d.group_name = g.name) \
             FROM device_groups g ORDER BY g.name",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(q(op))?;
        read_all(&rows, op, |r| {
            Ok(GroupRecord {
                name: r.parse(0, "group name")?,
                created_at: r.get(1)?,
                created_by: r.get(2)?,
                devices: r.get(3)?,
            })
        })
    }

    /// Mints an enrollment token for an existing group.
    pub async fn create_enrollment_token(
        &self,
        t: &NewEnrollmentToken,
        event: NewAuditEvent,
    ) -> Result<(), StoreError> {
        let op = "creating an enrollment token";
        let mut tx = self.begin(op).await?;
        let exists = sqlx::query("SELECT 1 FROM device_groups WHERE name = $1")
            .bind(t.group.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(q(op))?;
        if exists.is_none() {
            return Err(StoreError::NotFound { what: format!("group {}", t.group) });
        }
        sqlx::query(
            "INSERT INTO enrollment_tokens (id, group_name, secret_sha256, created_at, expires_at, created_by) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&t.id)
        .bind(t.group.as_str())
        .bind(t.secret_sha256.to_hex())
        .bind(t.now_ms)
        .bind(t.expires_at)
        .bind(&t.created_by)
        .execute(&mut *tx)
        .await
        .map_err(q(op))?;
        append_audit(&mut tx, t.now_ms, event).await?;
        tx.commit().await.map_err(q(op))
    }

    /// Exchanges a valid enrollment token for a device row. The caller checked the secret's
    /// shape; this checks it exists, is unrevoked and unexpired, and that the name is free.
    pub async fn enroll_device(
        &self,
        e: &Enrollment,
        event: impl FnOnce(&GroupName) -> NewAuditEvent,
    ) -> Result<DeviceRecord, StoreError> {
        let op = "enrolling a device";
        let mut tx = self.begin(op).await?;
        let row =
            sqlx::query("SELECT group_name, expires_at, revoked_at FROM enrollment_tokens WHERE secret_sha256 = $1")
                .bind(e.token_sha256.to_hex())
                .fetch_optional(&mut *tx)
                .await
                .map_err(q(op))?
                .ok_or_else(|| StoreError::NotFound { what: "enrollment token".into() })?;
        let row = Row::new(&row, op);
        let group: GroupName = row.parse(0, "group name")?;
        let expires_at: i64 = row.get(1)?;
        let revoked_at: Option<i64> = row.get(2)?;
        if revoked_at.is_some() || expires_at <= e.now_ms {
            return Err(StoreError::NotFound { what: "enrollment token (expired or revoked)".into() });
        }
        sqlx::query(
            "INSERT INTO devices (id, name, group_name, hardware, credential_sha256, enrolled_at) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&e.device_id)
        .bind(e.name.as_str())
        .bind(group.as_str())
        .bind(&e.hardware)
        .bind(e.credential_sha256.to_hex())
        .bind(e.now_ms)
        .execute(&mut *tx)
        .await
        .map_err(conflict_or(op, || format!("device {}", e.name)))?;
        append_audit(&mut tx, e.now_ms, event(&group)).await?;
        tx.commit().await.map_err(q(op))?;
        Ok(DeviceRecord {
            id: e.device_id.clone(),
            name: e.name.clone(),
            group,
            hardware: e.hardware.clone(),
            enrolled_at: e.now_ms,
            last_seen_at: None,
        })
    }

    /// All devices, optionally of one group, by name.
    pub async fn list_devices(&self, group: Option<&str>) -> Result<Vec<DeviceRecord>, StoreError> {
        let op = "listing devices";
        let rows = sqlx::query(&format!(
            "SELECT {DEVICE_COLUMNS} FROM devices WHERE ($1 = '' OR group_name = $1) ORDER BY name"
        ))
        .bind(group.unwrap_or(""))
        .fetch_all(&self.pool)
        .await
        .map_err(q(op))?;
        read_all(&rows, op, device)
    }

    /// One device by name.
    pub async fn device_by_name(&self, name: &str) -> Result<Option<DeviceRecord>, StoreError> {
        let op = "reading a device";
        sqlx::query(&format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE name = $1"))
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(q(op))?
            .map(|r| device(&Row::new(&r, op)))
            .transpose()
    }

    /// The device holding this credential.
    pub async fn device_by_credential(&self, hash: &Sha256Digest) -> Result<Option<DeviceRecord>, StoreError> {
        let op = "authenticating a device";
        sqlx::query(&format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE credential_sha256 = $1"))
            .bind(hash.to_hex())
            .fetch_optional(&self.pool)
            .await
            .map_err(q(op))?
            .map(|r| device(&Row::new(&r, op)))
            .transpose()
    }

    /// Writes check-in times noted in memory.
    pub async fn record_last_seen(&self, seen: &[(String, i64)]) -> Result<Vec<(String, i64)>, StoreError> {
        let op = "recording check-ins";
        let mut seen = seen.to_vec();
        // One order for every writer, and on PostgreSQL rows another transaction holds are
        // skipped (and handed back for the next flush) rather than waited for: a flush must
        // never deadlock with a rollout bumping the same devices' counters.
        seen.sort();
        let mut skipped = Vec::new();
        for chunk in seen.chunks(500) {
            let mut tx = self.begin(op).await?;
            let locked: std::collections::BTreeSet<String> = match self.backend {
                Backend::Sqlite => chunk.iter().map(|(id, _)| id.clone()).collect(),
                Backend::Postgres => {
                    let sql = format!(
                        "SELECT id FROM devices WHERE id IN ({}) ORDER BY id FOR UPDATE SKIP LOCKED",
                        placeholders(1, chunk.len())
                    );
                    let mut query = sqlx::query(&sql);
                    for (id, _) in chunk {
                        query = query.bind(id);
                    }
                    let rows = query.fetch_all(&mut *tx).await.map_err(q(op))?;
                    read_all(&rows, op, |r| r.get(0))?.into_iter().collect()
                }
            };
            for (id, at) in chunk {
                if !locked.contains(id) {
                    skipped.push((id.clone(), *at));
                    continue;
                }
                sqlx::query("UPDATE devices SET last_seen_at = $2 WHERE id = $1 AND (last_seen_at IS NULL OR last_seen_at < $2)")
                    .bind(id)
                    .bind(*at)
                    .execute(&mut *tx)
                    .await
                    .map_err(q(op))?;
            }
            tx.commit().await.map_err(q(op))?;
        }
        Ok(skipped)
    }

    /// Records what a device runs now.
    pub async fn set_device_artifacts(
        &self,
        device_id: &str,
        active: &[ActiveArtifact],
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let op = "recording a device's artifacts";
        let mut tx = self.begin(op).await?;
        for a in active {
            sqlx::query(
                "INSERT INTO device_artifacts (device_id, name, version, sha256, updated_at) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (device_id, name) DO UPDATE SET version = excluded.version, sha256 = excluded.sha256, \
                 updated_at = excluded.updated_at",
            )
            .bind(device_id)
            .bind(a.name.as_str())
            .bind(a.version.to_string())
            .bind(a.sha256.to_hex())
            .bind(now_ms)
            .execute(&mut *tx)
            .await
            .map_err(q(op))?;
        }
        tx.commit().await.map_err(q(op))
    }

    /// What a device last reported running, by artifact name.
    pub async fn device_artifacts(&self, device_id: &str) -> Result<Vec<ActiveArtifact>, StoreError> {
        let op = "reading a device's artifacts";
        let rows = sqlx::query("SELECT name, version, sha256 FROM device_artifacts WHERE device_id = $1 ORDER BY name")
            .bind(device_id)
            .fetch_all(&self.pool)
            .await
            .map_err(q(op))?;
        read_all(&rows, op, |r| {
            Ok(ActiveArtifact {
                name: r.parse(0, "artifact name")?,
                version: r.parse(1, "artifact version")?,
                sha256: r.parse(2, "artifact digest")?,
            })
        })
    }
}
