//! Storage: one interface over SQLite and PostgreSQL.
//!
//! Both backends run the same SQL through sqlx's `Any` driver: the schema uses only `BIGINT` and
//! `TEXT`, placeholders are `$N` (which SQLite accepts too), and times are Unix milliseconds.
//! What must differ — the triggers that make the audit log append-only, connection pragmas,
//! advisory locks — is chosen by [`Backend`] in this module and nowhere else, so callers cannot
//! observe which database they run on.
//!
//! One file per subject: `installation` (the first start's import), `metadata` (TUF
//! metadata), `artifacts`, `devices` (groups, enrollment, devices, what they run), `tokens`,
//! `audit` (the log and its checkpoints), `rollouts`, `status` (the counts `GET /status`
//! reports). Every column is read through `row`, and
//! every value that decides something (a state, an abort mode) is bound as a parameter from
//! the domain types, never written into the SQL as a literal.

mod artifacts;
mod audit;
mod changes;
mod devices;
mod installation;
mod metadata;
mod migrate;
mod records;
mod rollouts;
mod row;
mod sessions;
mod status;
mod tokens;

use std::path::Path;
use std::str::FromStr as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use sqlx::any::AnyPoolOptions;
use sqlx::{Any, AnyPool, Transaction};

pub use artifacts::BlobLock;
pub use audit::{CheckpointRecord, NewCheckpoint};
pub use changes::ChangeListener;
pub use devices::EnrollError;
pub use metadata::MetadataWrite;
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

impl Backend {
    /// `sqlite` or `postgres`, as metrics and the status report name it.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
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
    /// An audit event has no canonical bytes (its detail holds a float), so it is not logged.
    #[error("encoding {what} as canonical JSON")]
    Canonical {
        /// What.
        what: String,
        /// Why not.
        #[source]
        source: wavecast_core::canonical::CanonicalError,
    },
    /// A stored value does not parse: the database was changed outside wavecast.
    #[error("stored {what} is corrupt")]
    Corrupt {
        /// What.
        what: String,
        /// Why it does not parse.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

fn q(op: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Query { op, source }
}

/// Maps a parse failure of a stored `what` to [`StoreError::Corrupt`].
fn corrupt<E>(what: impl Into<String>) -> impl FnOnce(E) -> StoreError
where
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    move |e| StoreError::Corrupt { what: what.into(), source: e.into() }
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

/// Runs a statement inside `tx`; returns how many rows it changed.
async fn changed<'q>(
    tx: &mut Transaction<'static, Any>,
    statement: sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>>,
    op: &'static str,
) -> Result<u64, StoreError> {
    Ok(statement.execute(&mut **tx).await.map_err(q(op))?.rows_affected())
}

/// `$first, $first+1, …` for `n` bound values: lists in SQL are parameters, never literals.
fn placeholders(first: usize, n: usize) -> String {
    (first..first + n).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ")
}

/// Counts each idle connection the pool hands out in `taken` (new ones are counted where they
/// are made, in `after_connect`), and never hands out one that is still inside a transaction.
///
/// sqlx rolls back a transaction whose future was dropped (a request cancelled by its timeout
/// or its client) by queueing the rollback on the connection; under load, connections came
/// back to the pool with sqlx still counting a transaction open — and on SQLite, holding the
/// write lock. Every later `BEGIN` on such a connection failed ("begin_with at non-zero
/// transaction depth") and every other writer waited on its lock ("database is locked"): a
/// 10,000-device rollout turned half a million reports into 500s. Such a connection is closed
/// instead (which ends its transaction) and the pool takes or opens another.
fn count_idle(options: AnyPoolOptions, taken: &Arc<AtomicU64>) -> AnyPoolOptions {
    let taken = taken.clone();
    options.before_acquire(move |conn, _meta| {
        taken.fetch_add(1, Ordering::Relaxed);
        let clean = !sqlx::Connection::is_in_transaction(conn);
        if !clean {
            tracing::warn!("a database connection came back inside a transaction; closing it");
        }
        Box::pin(async move { Ok(clean) })
    })
}

/// The wavecast database.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// Connections taken from the pool so far: see [`Store::connections_taken`].
    taken: Arc<AtomicU64>,
    /// What this replica keeps in memory for check-ins; every commit that changes what a
    /// device may do or is served updates it (see [`Store::sync_changes`]).
    checkin: Arc<crate::checkin::CheckinCache>,
    /// Where to listen for other replicas' changes, on PostgreSQL.
    postgres_url: Option<String>,
}

impl Store {
    /// Connects (creating a SQLite file if needed) and applies pending migrations.
    pub async fn open(config: &DatabaseConfig) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = config.backend();
        let connect_err = |source| StoreError::Connect { database: config.redacted(), source };
        let taken = Arc::new(AtomicU64::new(0));
        let pool = match config {
            DatabaseConfig::Sqlite(path) => Self::sqlite_pool(path, taken.clone()).await.map_err(connect_err)?,
            DatabaseConfig::Postgres(url) => {
                let new = taken.clone();
                count_idle(AnyPoolOptions::new(), &taken)
                    .max_connections(16)
                    .acquire_timeout(std::time::Duration::from_secs(10))
                    .after_connect(move |_conn, _meta| {
                        // A new connection is handed to whoever asked for one: it counts too.
                        new.fetch_add(1, Ordering::Relaxed);
                        Box::pin(async { Ok(()) })
                    })
                    .connect(url)
                    .await
                    .map_err(connect_err)?
            }
        };
        let postgres_url = match config {
            DatabaseConfig::Postgres(url) => Some(url.clone()),
            DatabaseConfig::Sqlite(_) => None,
        };
        let store = Self { pool, backend, taken, checkin: Arc::default(), postgres_url };
        migrate::run(&store).await?;
        // The caches start empty: only changes committed from now on concern them.
        store.start_change_feed().await?;
        Ok(store)
    }

    async fn sqlite_pool(path: &Path, taken: Arc<AtomicU64>) -> Result<AnyPool, sqlx::Error> {
        // Create the file through the SQLite driver's options, then hand the Any pool a URL.
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let _ = sqlx::sqlite::SqliteConnectOptions::from_str(&url)?;
        let new = taken.clone();
        count_idle(AnyPoolOptions::new(), &taken)
            .max_connections(8)
            .acquire_timeout(std::time::Duration::from_secs(30))
            .after_connect(move |conn, _meta| {
                // A new connection is handed to whoever asked for one: it counts too.
                new.fetch_add(1, Ordering::Relaxed);
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

    /// How many times a connection was taken from the pool since the store opened. Every query
    /// and every transaction takes one, so the growth of this number between two moments is
    /// how many requests reached the database: what the request-budget tests count.
    pub fn connections_taken(&self) -> u64 {
        self.taken.load(Ordering::Relaxed)
    }

    /// This replica's check-in caches.
    pub fn checkin(&self) -> &Arc<crate::checkin::CheckinCache> {
        &self.checkin
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

    /// `FOR SHARE` where the database has row locks: many holders at once, none while a
    /// [`Store::for_no_key_update`] lock is held.
    fn for_share(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite => "",
            Backend::Postgres => " FOR SHARE",
        }
    }

    /// `FOR NO KEY UPDATE` where the database has row locks: excludes [`Store::for_share`]
    /// holders, but not the key-share locks that inserting a row referring to this one takes.
    fn for_no_key_update(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite => "",
            Backend::Postgres => " FOR NO KEY UPDATE",
        }
    }
}
