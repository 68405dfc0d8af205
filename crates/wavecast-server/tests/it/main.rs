//! The server's integration tests: the `Router` driven in-process, on SQLite and PostgreSQL.
//!
//! Every test body is an `async fn(Db)`; [`both!`] runs it once per backend, each run in a
//! fresh installation and a fresh database.

// A panic is how a test reports failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

mod audit;
mod authz;
mod batches;
mod checkin;
mod dashboard;
mod fleet;
mod lifecycle;
mod limits;
mod objects;
mod openapi;
mod progress;
mod publish;
mod rollouts;
mod storage;
mod tls;
mod trust;

/// Runs `async fn NAME(db: Db)` as two tests, `NAME::sqlite` and `NAME::postgres`.
#[macro_export]
macro_rules! both {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::support::Db::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name($crate::support::Db::Postgres).await
            }
        }
    )*};
}
