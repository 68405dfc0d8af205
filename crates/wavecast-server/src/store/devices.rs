//! The fleet: groups, enrollment tokens, devices, their check-in times and what they run, and
//! how devices leave it (revoked, or removed altogether).
//!
//! A device leaves in steps, each its own transaction, so none ever holds more than one
//! rollout's lock: first its credential is revoked, under its group's lock (rollout creation
//! takes that lock shared, so once the revocation commits no new rollout can include the
//! device, and every rollout that did is visible); then it leaves each rollout that has not
//! ended, as a report would, under that rollout's lock; then, when it is removed, its rows go.
//! Each step is safe to repeat, so a step cut short by a crash is finished by revoking (or
//! removing) the device again.

use wavecast_core::assignment::ActiveArtifact;
use wavecast_core::audit::{Actor, AuditAction, NewAuditEvent};
use wavecast_core::fleet::{self, DeviceStatus, EnrollRefused, TokenUse};
use wavecast_core::{DeviceName, GroupName, Sha256Digest};

use super::audit::append_audit;
use super::row::{Row, read_all};
use super::{
    Backend, DeviceRecord, DeviceRef, Enrollment, EnrollmentTokenRecord, GroupRecord, NewEnrollmentToken, Retire,
    Retired, Store, StoreError, changed, conflict_or, corrupt, placeholders, q,
};

const DEVICE_COLUMNS: &str = "id, name, group_name, hardware, enrolled_at, last_seen_at, revoked_at";

fn device(r: &Row<'_>) -> Result<DeviceRecord, StoreError> {
    Ok(DeviceRecord {
        id: r.get(0)?,
        name: r.parse(1, "device name")?,
        group: r.parse(2, "group name")?,
        hardware: r.get(3)?,
        enrolled_at: r.get(4)?,
        last_seen_at: r.get(5)?,
        revoked_at: r.get(6)?,
    })
}

const TOKEN_COLUMNS: &str = "id, group_name, created_at, created_by, expires_at, max_uses, uses, revoked_at";

fn enrollment_token(r: &Row<'_>) -> Result<EnrollmentTokenRecord, StoreError> {
    let count = |i: usize| -> Result<u64, StoreError> {
        u64::try_from(r.get::<i64>(i)?).map_err(corrupt("enrollment token use count"))
    };
    Ok(EnrollmentTokenRecord {
        id: r.get(0)?,
        group: r.parse(1, "group name")?,
        created_at: r.get(2)?,
        created_by: r.get(3)?,
        expires_at: r.get(4)?,
        max_uses: match r.get::<Option<i64>>(5)? {
            Some(_) => Some(count(5)?),
            None => None,
        },
        uses: count(6)?,
        revoked_at: r.get(7)?,
    })
}

/// Why a device could not enroll.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No enrollment token has this secret.
    #[error("the enrollment token is unknown")]
    UnknownToken,
    /// The token admits no more devices.
    #[error(transparent)]
    Refused(#[from] EnrollRefused),
    /// The name is taken (by an enrolled device, revoked or not).
    #[error(
        "a device named {0} is already enrolled (to enroll a replacement under its name, remove the old one first: \
         wavecast device remove {0})"
    )]
    NameTaken(DeviceName),
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

    /// The groups' names, without counting their devices.
    pub async fn group_names(&self) -> Result<Vec<GroupName>, StoreError> {
        let op = "listing group names";
        let rows =
            sqlx::query("SELECT name FROM device_groups ORDER BY name").fetch_all(&self.pool).await.map_err(q(op))?;
        read_all(&rows, op, |r| r.parse(0, "group name"))
    }

    /// All groups with their counts of devices that are not revoked.
    pub async fn list_groups(&self) -> Result<Vec<GroupRecord>, StoreError> {
        let op = "listing groups";
        let rows = sqlx::query(
            "SELECT g.name, g.created_at, g.created_by, \
             (SELECT COUNT(*) FROM devices d WHERE d.group_name = g.name AND d.revoked_at IS NULL) \
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
        let max_uses = t.max_uses.map(|n| i64::try_from(n).unwrap_or(i64::MAX));
        sqlx::query(
            "INSERT INTO enrollment_tokens (id, group_name, secret_sha256, created_at, expires_at, created_by, max_uses) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&t.id)
        .bind(t.group.as_str())
        .bind(t.secret_sha256.to_hex())
        .bind(t.now_ms)
        .bind(t.expires_at)
        .bind(&t.created_by)
        .bind(max_uses)
        .execute(&mut *tx)
        .await
        .map_err(q(op))?;
        append_audit(&mut tx, t.now_ms, event).await?;
        tx.commit().await.map_err(q(op))
    }

    /// Every enrollment token, oldest first, without secrets.
    pub async fn list_enrollment_tokens(&self) -> Result<Vec<EnrollmentTokenRecord>, StoreError> {
        let op = "listing enrollment tokens";
        let rows = sqlx::query(&format!("SELECT {TOKEN_COLUMNS} FROM enrollment_tokens ORDER BY created_at, id"))
            .fetch_all(&self.pool)
            .await
            .map_err(q(op))?;
        read_all(&rows, op, enrollment_token)
    }

    /// Revokes an enrollment token: no device enrolls with it from the moment this commits.
    /// Returns the token as it is now; revoking it again changes nothing and records nothing.
    pub async fn revoke_enrollment_token(
        &self,
        id: &str,
        now_ms: i64,
        event: impl FnOnce(&EnrollmentTokenRecord) -> NewAuditEvent,
    ) -> Result<EnrollmentTokenRecord, StoreError> {
        let op = "revoking an enrollment token";
        let mut tx = self.begin(op).await?;
        let sql = format!("SELECT {TOKEN_COLUMNS} FROM enrollment_tokens WHERE id = $1{}", self.for_update());
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(q(op))?
            .ok_or_else(|| StoreError::NotFound { what: format!("enrollment token {id}") })?;
        let token = enrollment_token(&Row::new(&row, op))?;
        if token.revoked_at.is_some() {
            return Ok(token);
        }
        let revoke = sqlx::query("UPDATE enrollment_tokens SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL")
            .bind(id)
            .bind(now_ms);
        if changed(&mut tx, revoke, op).await? == 1 {
            append_audit(&mut tx, now_ms, event(&token)).await?;
        }
        tx.commit().await.map_err(q(op))?;
        Ok(EnrollmentTokenRecord { revoked_at: Some(now_ms), ..token })
    }

    /// Exchanges an enrollment token for a device row, if the token still admits a device
    /// ([`fleet::admits`]) and the name is free. The token's row is locked while its use is
    /// counted, so replicas enrolling at once never admit more devices than it was made for;
    /// an enrollment that fails spends no use. The caller checked the secret's shape.
    pub async fn enroll_device(
        &self,
        e: &Enrollment,
        event: impl FnOnce(&GroupName, &str) -> NewAuditEvent,
    ) -> Result<DeviceRecord, EnrollError> {
        let op = "enrolling a device";
        let mut tx = self.begin(op).await?;
        let sql =
            format!("SELECT {TOKEN_COLUMNS} FROM enrollment_tokens WHERE secret_sha256 = $1{}", self.for_update());
        let row = sqlx::query(&sql)
            .bind(e.token_sha256.to_hex())
            .fetch_optional(&mut *tx)
            .await
            .map_err(q(op))?
            .ok_or(EnrollError::UnknownToken)?;
        let token = enrollment_token(&Row::new(&row, op))?;
        let usage = TokenUse {
            expires_at_ms: token.expires_at,
            revoked: token.revoked_at.is_some(),
            uses: token.uses,
            max_uses: token.max_uses,
        };
        fleet::admits(&usage, e.now_ms)?;
        sqlx::query("UPDATE enrollment_tokens SET uses = uses + 1 WHERE id = $1")
            .bind(&token.id)
            .execute(&mut *tx)
            .await
            .map_err(q(op))?;
        let group = token.group;
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
        .map_err(|source| match conflict_or(op, || e.name.to_string())(source) {
            StoreError::Conflict { .. } => EnrollError::NameTaken(e.name.clone()),
            other => other.into(),
        })?;
        append_audit(&mut tx, e.now_ms, event(&group, &token.id)).await?;
        tx.commit().await.map_err(q(op))?;
        Ok(DeviceRecord {
            id: e.device_id.clone(),
            name: e.name.clone(),
            group,
            hardware: e.hardware.clone(),
            enrolled_at: e.now_ms,
            last_seen_at: None,
            revoked_at: None,
        })
    }

    /// All devices, optionally of one group and in one status, by name.
    pub async fn list_devices(
        &self,
        group: Option<&str>,
        status: Option<DeviceStatus>,
    ) -> Result<Vec<DeviceRecord>, StoreError> {
        let op = "listing devices";
        let status = match status {
            None => "",
            Some(DeviceStatus::Active) => " AND revoked_at IS NULL",
            Some(DeviceStatus::Revoked) => " AND revoked_at IS NOT NULL",
        };
        let rows = sqlx::query(&format!(
            "SELECT {DEVICE_COLUMNS} FROM devices WHERE ($1 = '' OR group_name = $1){status} ORDER BY name"
        ))
        .bind(group.unwrap_or(""))
        .fetch_all(&self.pool)
        .await
        .map_err(q(op))?;
        read_all(&rows, op, device)
    }

    /// One page of devices by name: of one group and in one status if given, whose names start
    /// with `name_prefix`, after `after` (the last name of the previous page). Returns at most
    /// `limit` rows. Names compare byte by byte on both backends (PostgreSQL's default collation
    /// would sort `cam-1` and `cam1` by locale rules), so a prefix is a range of the names'
    /// index (`devices_by_name_bytes`, or `devices_by_group_name` within a group): a page reads
    /// its own rows, never the fleet (the dashboard's devices page).
    pub async fn devices_page(
        &self,
        group: Option<&str>,
        status: Option<DeviceStatus>,
        name_prefix: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<DeviceRecord>, StoreError> {
        let op = "listing a page of devices";
        let name = match self.backend {
            Backend::Postgres => "name COLLATE \"C\"",
            Backend::Sqlite => "name",
        };
        // Device names are ASCII letters, digits, '.', '_' and '-': DEL sorts after all of them.
        let upper = format!("{name_prefix}\u{7f}");
        let lower = if after > name_prefix { after } else { name_prefix };
        let after_op = if after > name_prefix { ">" } else { ">=" };
        let mut sql = format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE {name} {after_op} $1 AND {name} < $2");
        if group.is_some() {
            sql += " AND group_name = $3";
        }
        match status {
            None => {}
            Some(DeviceStatus::Active) => sql += " AND revoked_at IS NULL",
            Some(DeviceStatus::Revoked) => sql += " AND revoked_at IS NOT NULL",
        }
        sql += &format!(" ORDER BY {name} LIMIT {limit}");
        let mut query = sqlx::query(&sql).bind(lower).bind(upper);
        if let Some(g) = group {
            query = query.bind(g);
        }
        let rows = query.fetch_all(&self.pool).await.map_err(q(op))?;
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

    /// Revokes the device named `name` and, when `how` says so, removes it (see the module's
    /// doc for the steps, and `wavecast_core::fleet` for what each means). `actor` is the
    /// operator's token name. Revoking a revoked device again changes nothing new and records
    /// nothing new, but finishes what an earlier revocation cut short.
    pub async fn retire_device(
        &self,
        name: &DeviceName,
        how: Retire,
        actor: &str,
        now_ms: i64,
    ) -> Result<Retired, StoreError> {
        let operator = Actor::Operator(actor.to_owned());
        let mut device = self.revoke_device(name, &operator, now_ms).await?;
        let who = DeviceRef { id: device.id.clone(), name: device.name.clone() };
        let reason = match how {
            Retire::Revoke => format!("its credential was revoked by {actor}"),
            Retire::Decommission => format!("it was removed from the fleet by {actor}"),
        };
        let left_rollouts = self.remove_from_rollouts(&who, &operator, &reason, now_ms).await?;
        if how == Retire::Decommission {
            self.delete_device(&who, &operator, now_ms).await?;
        }
        device.revoked_at = device.revoked_at.or(Some(now_ms));
        Ok(Retired { device, decommissioned: how == Retire::Decommission, left_rollouts })
    }

    /// The device named `name` as it is once its group's lock is held (in `tx`), so that
    /// nothing that revokes or removes it, or creates a rollout for its group, runs beside us.
    async fn lock_group_of(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        name: &DeviceName,
        op: &'static str,
    ) -> Result<Option<DeviceRecord>, StoreError> {
        let read = format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE name = $1");
        let Some(row) = sqlx::query(&read).bind(name.as_str()).fetch_optional(&mut **tx).await.map_err(q(op))? else {
            return Ok(None);
        };
        let group: GroupName = Row::new(&row, op).parse(2, "group name")?;
        sqlx::query(&format!("SELECT name FROM device_groups WHERE name = $1{}", self.for_no_key_update()))
            .bind(group.as_str())
            .fetch_optional(&mut **tx)
            .await
            .map_err(q(op))?;
        // Read again under the lock: what raced us has committed by now.
        let row = sqlx::query(&read).bind(name.as_str()).fetch_optional(&mut **tx).await.map_err(q(op))?;
        row.map(|r| device(&Row::new(&r, op))).transpose()
    }

    // Lock order. Every transaction that changes a rollout locks the rollout's row, then the
    // device's row in it, then the audit head (to append), then the rows of the devices it
    // bumps. The steps below lock the group's row first (no rollout transaction does), and a
    // device's own row only after the audit head, so no two transactions ever wait for each
    // other in a circle.

    /// The first step of [`Store::retire_device`]: marks the device revoked (and audits it)
    /// unless it is already, under its group's lock. Returns the device as it was read.
    async fn revoke_device(
        &self,
        name: &DeviceName,
        operator: &Actor,
        now_ms: i64,
    ) -> Result<DeviceRecord, StoreError> {
        let op = "revoking a device";
        let mut tx = self.begin(op).await?;
        let device = self
            .lock_group_of(&mut tx, name, op)
            .await?
            .ok_or_else(|| StoreError::NotFound { what: format!("device {name}") })?;
        if device.revoked_at.is_none() {
            let event = NewAuditEvent {
                actor: operator.clone(),
                action: AuditAction::DeviceRevoked,
                subject: device.name.to_string(),
                detail: serde_json::json!({ "device_id": device.id, "group": device.group }),
            };
            append_audit(&mut tx, now_ms, event).await?;
            sqlx::query("UPDATE devices SET revoked_at = $2 WHERE id = $1")
                .bind(&device.id)
                .bind(now_ms)
                .execute(&mut *tx)
                .await
                .map_err(q(op))?;
            // Every replica refuses the credential from its next request on.
            let change = crate::checkin::Change::Device(device.id.clone());
            super::changes::record(&mut tx, self.backend, &change, now_ms).await?;
            self.commit(tx, op).await?;
            return Ok(device);
        }
        tx.commit().await.map_err(q(op))?;
        Ok(device)
    }

    /// The last step of a removal: deletes the device and everything the server kept about
    /// it (its rows in every rollout, what it runs, its report ids), and audits it once. A
    /// rollout's counts keep it as they had it (removed, in one that had not ended).
    async fn delete_device(&self, who: &DeviceRef, operator: &Actor, now_ms: i64) -> Result<(), StoreError> {
        let op = "removing a device";
        let mut tx = self.begin(op).await?;
        let Some(device) = self.lock_group_of(&mut tx, &who.name, op).await?.filter(|d| d.id == who.id) else {
            // A removal that raced us got here first.
            return Ok(());
        };
        for table in ["device_artifacts", "device_reports", "rollout_devices"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE device_id = $1"))
                .bind(&device.id)
                .execute(&mut *tx)
                .await
                .map_err(q(op))?;
        }
        let event = NewAuditEvent {
            actor: operator.clone(),
            action: AuditAction::DeviceDecommissioned,
            subject: device.name.to_string(),
            detail: serde_json::json!({
                "device_id": device.id,
                "group": device.group,
                "hardware": device.hardware,
                "enrolled_at": wavecast_api::Timestamp::from_unix_ms(device.enrolled_at),
            }),
        };
        append_audit(&mut tx, now_ms, event).await?;
        sqlx::query("DELETE FROM devices WHERE id = $1").bind(&device.id).execute(&mut *tx).await.map_err(q(op))?;
        super::changes::record(&mut tx, self.backend, &crate::checkin::Change::Device(device.id.clone()), now_ms)
            .await?;
        self.commit(tx, op).await
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
