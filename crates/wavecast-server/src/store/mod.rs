//! Storage: one interface over SQLite and PostgreSQL.
//!
//! Both backends run the same SQL through sqlx's `Any` driver: the schema uses only `BIGINT` and
//! `TEXT`, placeholders are `$N` (which SQLite accepts too), and times are Unix milliseconds.
//! What must differ — the triggers that make the audit log append-only, connection pragmas,
//! advisory locks — is chosen by [`Backend`] in this module and nowhere else, so callers cannot
//! observe which database they run on.

mod audit;
mod migrate;
mod records;
mod rollouts;
mod tokens;

use std::path::Path;
use std::str::FromStr as _;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{Any, AnyPool, Row as _, Transaction};
use wavecast_core::audit::{AuditEvent, NewAuditEvent};
use wavecast_core::{Role, Sha256Digest};

pub use audit::{CheckpointRecord, NewCheckpoint};
pub use records::*;
pub use rollouts::*;

/// Which database a [`Store`] runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file in the data dir.
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

/// Where the database is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseConfig {
    /// A SQLite file, created if missing.
    Sqlite(std::path::PathBuf),
    /// A `postgres://` URL.
    Postgres(String),
}

impl DatabaseConfig {
    fn backend(&self) -> Backend {
        match self {
            DatabaseConfig::Sqlite(_) => Backend::Sqlite,
            DatabaseConfig::Postgres(_) => Backend::Postgres,
        }
    }

    /// The URL with any password removed, for messages.
    pub fn redacted(&self) -> String {
        match self {
            DatabaseConfig::Sqlite(p) => format!("sqlite:{}", p.display()),
            DatabaseConfig::Postgres(url) => match url.split_once('@') {
                Some((creds, rest)) if creds.contains(':') && creds.matches(':').count() > 1 => {
                    let user = creds.rsplit_once(':').map_or(creds, |(u, _)| u);
                    format!("{user}:***@{rest}")
                }
                _ => url.clone(),
            },
        }
    }
}

/// Errors from the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached or opened.
    #[error("connecting to {database}")]
    Connect {
        /// The database, without password.
        database: String,
        /// The cause.
        #[source]
        source: sqlx::Error,
    },
    /// A migration failed.
    #[error("applying schema migration {version}")]
    Migrate {
        /// The migration.
        version: i64,
        /// The cause.
        #[source]
        source: sqlx::Error,
    },
    /// A query failed.
    #[error("database error while {op}")]
    Query {
        /// What we were doing.
        op: &'static str,
        /// The cause.
        #[source]
        source: sqlx::Error,
    },
    /// The row to create exists already.
    #[error("{what} already exists")]
    Conflict {
        /// What.
        what: String,
    },
    /// The row asked for does not exist.
    #[error("{what} not found")]
    NotFound {
        /// What.
        what: String,
    },
    /// A stored value does not parse: the database was changed outside wavecast.
    #[error("stored {what} is corrupt: {detail}")]
    Corrupt {
        /// What.
        what: &'static str,
        /// Details.
        detail: String,
    },
}

fn q(op: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Query { op, source }
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

/// Maps a unique-key violation to [`StoreError::Conflict`] naming `what`.
fn conflict_or(op: &'static str, what: impl FnOnce() -> String) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| {
        if is_unique_violation(&source) {
            StoreError::Conflict { what: what() }
        } else {
            StoreError::Query { op, source }
        }
    }
}

/// The wavecast database.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
}

impl Store {
    /// Connects (creating a SQLite file if needed) and applies pending migrations.
    pub async fn open(config: &DatabaseConfig) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = config.backend();
        let connect_err = |source| StoreError::Connect { database: config.redacted(), source };
        let pool = match config {
            DatabaseConfig::Sqlite(path) => Self::sqlite_pool(path).await.map_err(connect_err)?,
            DatabaseConfig::Postgres(url) => AnyPoolOptions::new()
                .max_connections(16)
                .acquire_timeout(std::time::Duration::from_secs(10))
                .connect(url)
                .await
                .map_err(connect_err)?,
        };
        let store = Self { pool, backend };
        migrate::run(&store).await?;
        Ok(store)
    }

    async fn sqlite_pool(path: &Path) -> Result<AnyPool, sqlx::Error> {
        // Create the file through the SQLite driver's options, then hand the Any pool a URL.
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let _ = sqlx::sqlite::SqliteConnectOptions::from_str(&url)?;
        AnyPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(std::time::Duration::from_secs(30))
            .after_connect(|conn, _meta| {
                Box::pin(async move {
                    use sqlx::Executor as _;
                    // WAL lets readers run beside the one writer; FULL makes a committed
                    // publish or audit event survive power loss; the busy timeout turns writer
                    // contention into waiting instead of errors.
                    conn.execute("PRAGMA journal_mode = WAL").await?;
                    conn.execute("PRAGMA synchronous = FULL").await?;
                    conn.execute("PRAGMA foreign_keys = ON").await?;
                    conn.execute("PRAGMA busy_timeout = 10000").await?;
                    Ok(())
                })
            })
            .connect(&url)
            .await
    }

    /// Which backend this store runs on (for logs and tests only).
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Closes the pool, waiting for connections to be returned.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Starts a write transaction. On SQLite it takes the write lock at once (`BEGIN
    /// IMMEDIATE`): a deferred transaction that reads first and writes later fails with "database
    /// is locked" when another writer got in between, instead of waiting its turn.
    async fn begin(&self, op: &'static str) -> Result<Transaction<'static, Any>, StoreError> {
        match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(q(op)),
            Backend::Postgres => self.pool.begin().await.map_err(q(op)),
        }
    }

    /// `FOR UPDATE` where the database has row locks; SQLite's write lock covers it already.
    fn for_update(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite => "",
            Backend::Postgres => " FOR UPDATE",
        }
    }

    // ----- installation ---------------------------------------------------------------------

    /// Imports what `wavecast init` prepared, once per database. Returns false when the
    /// database already holds an installation (a restart, or another replica got there first).
    pub async fn bootstrap(&self, b: &Bootstrap) -> Result<bool, StoreError> {
        let mut tx = self.begin("importing the installation").await?;
        let inserted = sqlx::query(
            "INSERT INTO installation (id, created_at, root_sha256) VALUES (1, $1, $2) ON CONFLICT (id) DO NOTHING",
        )
        .bind(b.now_ms)
        .bind(b.root_sha256.to_hex())
        .execute(&mut *tx)
        .await
        .map_err(q("importing the installation"))?
        .rows_affected();
        if inserted == 0 {
            return Ok(false);
        }
        for (role, version, body) in &b.metadata {
            insert_metadata(&mut tx, role, *version, body, b.now_ms).await?;
        }
        insert_token(&mut tx, &b.admin_token, b.now_ms).await?;
        append_audit(&mut tx, b.now_ms, b.event.clone()).await?;
        tx.commit().await.map_err(q("importing the installation"))?;
        Ok(true)
    }

    /// The root digest recorded at bootstrap, if any.
    pub async fn installation_root(&self) -> Result<Option<String>, StoreError> {
        sqlx::query("SELECT root_sha256 FROM installation WHERE id = 1")
            .fetch_optional(&self.pool)
            .await
            .map_err(q("reading the installation"))?
            .map(|r| r.try_get::<String, _>(0).map_err(q("reading the installation")))
            .transpose()
    }

    // ----- tokens -------------------------------------------------------------------------

    /// The unrevoked API token with this secret hash.
    pub async fn token_by_secret(&self, hash: &Sha256Digest) -> Result<Option<TokenRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT id, name, role, created_at, created_by, revoked_at FROM api_tokens WHERE secret_sha256 = $1",
        )
        .bind(hash.to_hex())
        .fetch_optional(&self.pool)
        .await
        .map_err(q("looking up a token"))?;
        row.map(|r| token_from_row(&r)).transpose()
    }

    // ----- TUF metadata ---------------------------------------------------------------------

    /// The newest version of `role`, with its bytes.
    pub async fn latest_metadata(&self, role: &str) -> Result<Option<(i64, String)>, StoreError> {
        let row = sqlx::query("SELECT version, body FROM tuf_metadata WHERE role = $1 ORDER BY version DESC LIMIT 1")
            .bind(role)
            .fetch_optional(&self.pool)
            .await
            .map_err(q("reading TUF metadata"))?;
        row.map(|r| {
            Ok((r.try_get(0).map_err(q("reading TUF metadata"))?, r.try_get(1).map_err(q("reading TUF metadata"))?))
        })
        .transpose()
    }

    /// One version of `role`.
    pub async fn metadata(&self, role: &str, version: i64) -> Result<Option<String>, StoreError> {
        sqlx::query("SELECT body FROM tuf_metadata WHERE role = $1 AND version = $2")
            .bind(role)
            .bind(version)
            .fetch_optional(&self.pool)
            .await
            .map_err(q("reading TUF metadata"))?
            .map(|r| r.try_get(0).map_err(q("reading TUF metadata")))
            .transpose()
    }

    /// Stores a new snapshot and timestamp (the periodic refresh before they expire).
    pub async fn refresh_online_metadata(&self, m: &OnlineMetadata, now_ms: i64) -> Result<(), StoreError> {
        let mut tx = self.begin("refreshing TUF metadata").await?;
        insert_metadata(&mut tx, "snapshot", m.snapshot_version, &m.snapshot, now_ms).await?;
        insert_metadata(&mut tx, "timestamp", m.timestamp_version, &m.timestamp, now_ms).await?;
        tx.commit().await.map_err(q("refreshing TUF metadata"))
    }

    // ----- artifacts ------------------------------------------------------------------------

    /// Records a publish: the new targets, snapshot and timestamp, the artifact rows, and the
    /// audit events, all or nothing. Conflicts if another publish took the same targets
    /// version first, or if the name@version exists.
    pub async fn publish(&self, p: &Publish) -> Result<(), StoreError> {
        let mut tx = self.begin("publishing").await?;
        insert_metadata(&mut tx, "targets", p.targets_version, &p.targets, p.now_ms).await?;
        insert_metadata(&mut tx, "snapshot", p.online.snapshot_version, &p.online.snapshot, p.now_ms).await?;
        insert_metadata(&mut tx, "timestamp", p.online.timestamp_version, &p.online.timestamp, p.now_ms).await?;
        for a in &p.artifacts {
            sqlx::query(
                "INSERT INTO artifacts (name, version, length, sha256, hardware, targets_version, published_at, published_by) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(&a.name)
            .bind(&a.version)
            .bind(a.length)
            .bind(&a.sha256)
            .bind(a.hardware.clone())
            .bind(p.targets_version)
            .bind(p.now_ms)
            .bind(&a.published_by)
            .execute(&mut *tx)
            .await
            .map_err(conflict_or("publishing", || format!("artifact {}@{}", a.name, a.version)))?;
        }
        for e in &p.events {
            append_audit(&mut tx, p.now_ms, e.clone()).await?;
        }
        tx.commit().await.map_err(q("publishing"))
    }

    /// All published artifacts, by name then publish time.
    pub async fn list_artifacts(&self) -> Result<Vec<ArtifactRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT name, version, length, sha256, hardware, published_at, published_by FROM artifacts ORDER BY name, published_at",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(q("listing artifacts"))?;
        rows.iter().map(artifact_from_row).collect()
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

    // ----- groups and devices ---------------------------------------------------------------

    /// Creates a group.
    pub async fn create_group(
        &self,
        name: &str,
        actor: &str,
        now_ms: i64,
        event: NewAuditEvent,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin("creating a group").await?;
        sqlx::query("INSERT INTO device_groups (name, created_at, created_by) VALUES ($1, $2, $3)")
            .bind(name)
            .bind(now_ms)
            .bind(actor)
            .execute(&mut *tx)
            .await
            .map_err(conflict_or("creating a group", || format!("group {name}")))?;
        append_audit(&mut tx, now_ms, event).await?;
        tx.commit().await.map_err(q("creating a group"))
    }

    /// All groups with their device counts.
    pub async fn list_groups(&self) -> Result<Vec<GroupRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT g.name, g.created_at, g.created_by, \
             (SELECT COUNT(*) FROM devices d WHERE d.group_name = g.name) \
             FROM device_groups g ORDER BY g.name",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(q("listing groups"))?;
        rows.iter()
            .map(|r| {
                Ok(GroupRecord {
                    name: r.try_get(0).map_err(q("listing groups"))?,
                    created_at: r.try_get(1).map_err(q("listing groups"))?,
                    created_by: r.try_get(2).map_err(q("listing groups"))?,
                    devices: r.try_get(3).map_err(q("listing groups"))?,
                })
            })
            .collect()
    }

    /// Mints an enrollment token for an existing group.
    pub async fn create_enrollment_token(
        &self,
        t: &NewEnrollmentToken,
        event: NewAuditEvent,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin("creating an enrollment token").await?;
        let exists = sqlx::query("SELECT 1 FROM device_groups WHERE name = $1")
            .bind(&t.group)
            .fetch_optional(&mut *tx)
            .await
            .map_err(q("creating an enrollment token"))?;
        if exists.is_none() {
            return Err(StoreError::NotFound { what: format!("group {}", t.group) });
        }
        sqlx::query(
            "INSERT INTO enrollment_tokens (id, group_name, secret_sha256, created_at, expires_at, created_by) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&t.id)
        .bind(&t.group)
        .bind(t.secret_sha256.to_hex())
        .bind(t.now_ms)
        .bind(t.expires_at)
        .bind(&t.created_by)
        .execute(&mut *tx)
        .await
        .map_err(q("creating an enrollment token"))?;
        append_audit(&mut tx, t.now_ms, event).await?;
        tx.commit().await.map_err(q("creating an enrollment token"))
    }

    /// Exchanges a valid enrollment token for a device row. The caller checked the secret's
    /// shape; this checks it exists, is unrevoked and unexpired, and that the name is free.
    pub async fn enroll_device(
        &self,
        e: &Enrollment,
        event: impl FnOnce(&str) -> NewAuditEvent,
    ) -> Result<DeviceRecord, StoreError> {
        let mut tx = self.begin("enrolling a device").await?;
        let row =
            sqlx::query("SELECT group_name, expires_at, revoked_at FROM enrollment_tokens WHERE secret_sha256 = $1")
                .bind(e.token_sha256.to_hex())
                .fetch_optional(&mut *tx)
                .await
                .map_err(q("enrolling a device"))?
                .ok_or_else(|| StoreError::NotFound { what: "enrollment token".into() })?;
        let group: String = row.try_get(0).map_err(q("enrolling a device"))?;
        let expires_at: i64 = row.try_get(1).map_err(q("enrolling a device"))?;
        let revoked_at: Option<i64> = row.try_get(2).map_err(q("enrolling a device"))?;
        if revoked_at.is_some() || expires_at <= e.now_ms {
            return Err(StoreError::NotFound { what: "enrollment token (expired or revoked)".into() });
        }
        sqlx::query(
            "INSERT INTO devices (id, name, group_name, hardware, credential_sha256, enrolled_at) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&e.device_id)
        .bind(&e.name)
        .bind(&group)
        .bind(&e.hardware)
        .bind(e.credential_sha256.to_hex())
        .bind(e.now_ms)
        .execute(&mut *tx)
        .await
        .map_err(conflict_or("enrolling a device", || format!("device {}", e.name)))?;
        append_audit(&mut tx, e.now_ms, event(&group)).await?;
        tx.commit().await.map_err(q("enrolling a device"))?;
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
        let rows = sqlx::query(
            "SELECT id, name, group_name, hardware, enrolled_at, last_seen_at FROM devices \
             WHERE ($1 = '' OR group_name = $1) ORDER BY name",
        )
        .bind(group.unwrap_or(""))
        .fetch_all(&self.pool)
        .await
        .map_err(q("listing devices"))?;
        rows.iter().map(device_from_row).collect()
    }

    /// One device by name.
    pub async fn device_by_name(&self, name: &str) -> Result<Option<DeviceRecord>, StoreError> {
        sqlx::query("SELECT id, name, group_name, hardware, enrolled_at, last_seen_at FROM devices WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(q("reading a device"))?
            .map(|r| device_from_row(&r))
            .transpose()
    }

    /// The device holding this credential.
    pub async fn device_by_credential(&self, hash: &Sha256Digest) -> Result<Option<DeviceRecord>, StoreError> {
        sqlx::query(
            "SELECT id, name, group_name, hardware, enrolled_at, last_seen_at FROM devices WHERE credential_sha256 = $1",
        )
        .bind(hash.to_hex())
        .fetch_optional(&self.pool)
        .await
        .map_err(q("authenticating a device"))?
        .map(|r| device_from_row(&r))
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
                    let list = (1..=chunk.len()).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ");
                    let sql = format!("SELECT id FROM devices WHERE id IN ({list}) ORDER BY id FOR UPDATE SKIP LOCKED");
                    let mut query = sqlx::query(&sql);
                    for (id, _) in chunk {
                        query = query.bind(id);
                    }
                    query
                        .fetch_all(&mut *tx)
                        .await
                        .map_err(q(op))?
                        .iter()
                        .map(|r| r.try_get::<String, _>(0))
                        .collect::<Result<_, _>>()
                        .map_err(q(op))?
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

    // ----- audit ----------------------------------------------------------------------------

    /// Appends one event on its own.
    pub async fn audit(&self, now_ms: i64, event: NewAuditEvent) -> Result<AuditEvent, StoreError> {
        let mut tx = self.begin("writing the audit log").await?;
        let placed = append_audit(&mut tx, now_ms, event).await?;
        tx.commit().await.map_err(q("writing the audit log"))?;
        Ok(placed)
    }

    /// Events with `seq >= from`, at most `limit`, oldest first.
    pub async fn audit_events(&self, from: i64, limit: i64) -> Result<Vec<AuditEvent>, StoreError> {
        let rows = sqlx::query("SELECT seq, body FROM audit_log WHERE seq >= $1 ORDER BY seq LIMIT $2")
            .bind(from)
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(q("reading the audit log"))?;
        rows.iter()
            .map(|r| {
                let seq: i64 = r.try_get(0).map_err(q("reading the audit log"))?;
                let body: String = r.try_get(1).map_err(q("reading the audit log"))?;
                let e = AuditEvent::from_bytes(body.as_bytes())
                    .map_err(|e| StoreError::Corrupt { what: "audit event", detail: format!("seq {seq}: {e}") })?;
                if e.seq != seq as u64 {
                    return Err(StoreError::Corrupt {
                        what: "audit event",
                        detail: format!("row {seq} holds event {}", e.seq),
                    });
                }
                Ok(e)
            })
            .collect()
    }
}

async fn insert_metadata(
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

pub(super) async fn insert_token(
    tx: &mut Transaction<'static, Any>,
    t: &NewToken,
    now_ms: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO api_tokens (id, name, role, secret_sha256, created_at, created_by) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&t.id)
    .bind(&t.name)
    .bind(t.role.as_str())
    .bind(t.secret_sha256.to_hex())
    .bind(now_ms)
    .bind(&t.created_by)
    .execute(&mut **tx)
    .await
    .map_err(conflict_or("creating a token", || format!("token {}", t.name)))?;
    Ok(())
}

/// Appends an event inside `tx`, taking the next sequence number under audit_head's row lock.
pub(super) async fn append_audit(
    tx: &mut Transaction<'static, Any>,
    now_ms: i64,
    event: NewAuditEvent,
) -> Result<AuditEvent, StoreError> {
    let size: i64 = sqlx::query("UPDATE audit_head SET size = size + 1 WHERE id = 1 RETURNING size")
        .fetch_one(&mut **tx)
        .await
        .map_err(q("writing the audit log"))?
        .try_get(0)
        .map_err(q("writing the audit log"))?;
    let seq = size - 1;
    let at = jiff::Timestamp::from_millisecond(now_ms).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    let placed = AuditEvent::place(event, seq as u64, at.to_string());
    let body = String::from_utf8(placed.canonical_bytes())
        .map_err(|e| StoreError::Corrupt { what: "audit event", detail: e.to_string() })?;
    sqlx::query("INSERT INTO audit_log (seq, at, actor, action, subject, body) VALUES ($1, $2, $3, $4, $5, $6)")
        .bind(seq)
        .bind(now_ms)
        .bind(&placed.actor)
        .bind(placed.action.as_str())
        .bind(&placed.subject)
        .bind(body)
        .execute(&mut **tx)
        .await
        .map_err(q("writing the audit log"))?;
    Ok(placed)
}

pub(super) fn token_from_row(r: &AnyRow) -> Result<TokenRecord, StoreError> {
    let role: String = r.try_get(2).map_err(q("reading a token"))?;
    Ok(TokenRecord {
        id: r.try_get(0).map_err(q("reading a token"))?,
        name: r.try_get(1).map_err(q("reading a token"))?,
        role: role.parse::<Role>().map_err(|e| StoreError::Corrupt { what: "token role", detail: e.to_string() })?,
        created_at: r.try_get(3).map_err(q("reading a token"))?,
        created_by: r.try_get(4).map_err(q("reading a token"))?,
        revoked_at: r.try_get(5).map_err(q("reading a token"))?,
    })
}

fn artifact_from_row(r: &AnyRow) -> Result<ArtifactRecord, StoreError> {
    let e = q("listing artifacts");
    let get = |i| r.try_get::<String, _>(i);
    Ok(ArtifactRecord {
        name: get(0).map_err(q("listing artifacts"))?,
        version: get(1).map_err(q("listing artifacts"))?,
        length: r.try_get(2).map_err(q("listing artifacts"))?,
        sha256: get(3).map_err(q("listing artifacts"))?,
        hardware: r.try_get(4).map_err(q("listing artifacts"))?,
        published_at: r.try_get(5).map_err(q("listing artifacts"))?,
        published_by: get(6).map_err(e)?,
    })
}

fn device_from_row(r: &AnyRow) -> Result<DeviceRecord, StoreError> {
    Ok(DeviceRecord {
        id: r.try_get(0).map_err(q("reading a device"))?,
        name: r.try_get(1).map_err(q("reading a device"))?,
        group: r.try_get(2).map_err(q("reading a device"))?,
        hardware: r.try_get(3).map_err(q("reading a device"))?,
        enrolled_at: r.try_get(4).map_err(q("reading a device"))?,
        last_seen_at: r.try_get(5).map_err(q("reading a device"))?,
    })
}
