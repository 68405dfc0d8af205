//! Schema migrations, embedded in the binary and applied at start.
//!
//! A tiny migrator of our own rather than sqlx's: sqlx's needs its `macros` feature (slow to
//! build) or migration files on disk next to the binary. Each migration is a shared part plus a
//! backend-specific part, applied in one transaction and recorded in `schema_migrations`.

use sqlx::Row as _;

use super::{Backend, Store, StoreError};

struct Migration {
    version: i64,
    common: &'static str,
    sqlite: &'static str,
    postgres: &'static str,
}

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        common: include_str!("../../migrations/common_0001.sql"),
        sqlite: include_str!("../../migrations/sqlite/0001_append_only.sql"),
        postgres: include_str!("../../migrations/postgres/0001_append_only.sql"),
    },
    Migration {
        version: 2,
        common: include_str!("../../migrations/common_0002.sql"),
        sqlite: include_str!("../../migrations/sqlite/0002_none.sql"),
        postgres: include_str!("../../migrations/postgres/0002_none.sql"),
    },
    Migration {
        version: 3,
        common: include_str!("../../migrations/common_0003.sql"),
        sqlite: include_str!("../../migrations/sqlite/0003_append_only.sql"),
        postgres: include_str!("../../migrations/postgres/0003_append_only.sql"),
    },
    Migration {
        version: 4,
        common: include_str!("../../migrations/common_0004.sql"),
        sqlite: include_str!("../../migrations/sqlite/0004_none.sql"),
        postgres: include_str!("../../migrations/postgres/0004_none.sql"),
    },
    Migration {
        version: 5,
        common: include_str!("../../migrations/common_0005.sql"),
        sqlite: include_str!("../../migrations/sqlite/0005_none.sql"),
        postgres: include_str!("../../migrations/postgres/0005_none.sql"),
    },
    Migration {
        version: 6,
        common: include_str!("../../migrations/common_0006.sql"),
        sqlite: include_str!("../../migrations/sqlite/0006_changes.sql"),
        postgres: include_str!("../../migrations/postgres/0006_changes.sql"),
    },
    Migration {
        version: 7,
        common: include_str!("../../migrations/common_0007.sql"),
        sqlite: include_str!("../../migrations/sqlite/0007_none.sql"),
        postgres: include_str!("../../migrations/postgres/0007_none.sql"),
    },
    Migration {
        version: 8,
        common: include_str!("../../migrations/common_0008.sql"),
        sqlite: include_str!("../../migrations/sqlite/0008_device_names.sql"),
        postgres: include_str!("../../migrations/postgres/0008_device_names.sql"),
    },
    Migration {
        version: 9,
        common: include_str!("../../migrations/common_0009.sql"),
        sqlite: include_str!("../../migrations/sqlite/0009_none.sql"),
        postgres: include_str!("../../migrations/postgres/0009_none.sql"),
    },
];

pub(super) async fn run(store: &Store) -> Result<(), StoreError> {
    let err = |version| move |source| StoreError::Migrate { version, source };
    // One transaction for all of it; on PostgreSQL an advisory lock makes replicas that start
    // together take turns, and the later one finds everything applied.
    let mut tx = store.pool.begin().await.map_err(err(0))?;
    if store.backend == Backend::Postgres {
        sqlx::query("SELECT pg_advisory_xact_lock(7700001)").execute(&mut *tx).await.map_err(err(0))?;
    }
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
    )
    .execute(&mut *tx)
    .await
    .map_err(err(0))?;
    for m in MIGRATIONS {
        let done = sqlx::query("SELECT version FROM schema_migrations WHERE version = $1")
            .bind(m.version)
            .fetch_optional(&mut *tx)
            .await
            .map_err(err(m.version))?;
        if done.is_some_and(|r| r.try_get::<i64, _>(0).is_ok()) {
            continue;
        }
        let specific = match store.backend {
            Backend::Sqlite => m.sqlite,
            Backend::Postgres => m.postgres,
        };
        sqlx::raw_sql(m.common).execute(&mut *tx).await.map_err(err(m.version))?;
        sqlx::raw_sql(specific).execute(&mut *tx).await.map_err(err(m.version))?;
        let now = wavecast_os::clock::now_ms();
        sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)")
            .bind(m.version)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(err(m.version))?;
    }
    tx.commit().await.map_err(err(0))
}
