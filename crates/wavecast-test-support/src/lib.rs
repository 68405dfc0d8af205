//! Helpers shared by wavecast's test suites (and the benchmark): fresh PostgreSQL databases,
//! free ports, waiting for a condition, hand-built upload bodies, a throttling proxy, a real
//! S3-compatible server and a headless browser (Debian's Chromium over WebDriver) for the
//! dashboard's tests.
//!
//! Tests that need PostgreSQL get a database of their own, created on the server at
//! `WAVECAST_TEST_PG` (default `postgres://postgres@127.0.0.1:5432/test`) and dropped when the
//! guard goes out of scope, so tests run in parallel and leave nothing behind.

pub mod browser;
pub mod proxy;
pub mod s3;

use std::time::Duration;

use sqlx::Connection as _;

/// The PostgreSQL server tests use.
pub fn pg_admin_url() -> String {
    std::env::var("WAVECAST_TEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A fresh PostgreSQL database, dropped on `Drop`.
#[derive(Debug)]
pub struct PgDatabase {
    name: String,
    url: String,
}

fn random_suffix() -> String {
    use aws_lc_rs::rand::SecureRandom as _;
    let mut b = [0u8; 6];
    aws_lc_rs::rand::SystemRandom::new().fill(&mut b).expect("random");
    hex::encode(b)
}

fn with_database(admin: &str, db: &str) -> String {
    match admin.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{db}"),
        None => format!("{admin}/{db}"),
    }
}

impl PgDatabase {
    /// Creates `wavecast_t_<random>` on the test server.
    pub async fn create() -> Self {
        let admin = pg_admin_url();
        let name = format!("wavecast_t_{}", random_suffix());
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .unwrap_or_else(|e| panic!("tests need PostgreSQL at {admin} (set WAVECAST_TEST_PG): {e}"));
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await.expect("CREATE DATABASE");
        let _ = conn.close().await;
        let url = with_database(&admin, &name);
        Self { name, url }
    }

    /// The URL of the new database.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs inside or outside a runtime; a thread with its own runtime works in both.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                return;
            };
            rt.block_on(async {
                if let Ok(mut conn) = sqlx::PgConnection::connect(&pg_admin_url()).await {
                    let _ =
                        sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut conn).await;
                    let _ = conn.close().await;
                }
            });
        })
        .join();
    }
}

/// A hand-written `multipart/form-data` body, for tests that upload to the server without a
/// client library deciding the bytes for them.
#[derive(Debug, Clone)]
pub struct MultipartForm {
    /// The `Content-Type` header, with the boundary.
    pub content_type: String,
    /// The body.
    pub body: Vec<u8>,
}

impl MultipartForm {
    const BOUNDARY: &'static str = "wavecast-test-boundary-7f3a";

    /// A form of `(name, content type, bytes)` parts in this order; each part's file name is
    /// its name.
    pub fn new(parts: &[(&str, &str, &[u8])]) -> Self {
        let boundary = Self::BOUNDARY;
        let mut body = Vec::new();
        for (name, ctype, data) in parts {
            body.extend_from_slice(
                format!(
                    "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{name}\"\r\nContent-Type: {ctype}\r\n\r\n"
                )
                .as_bytes(),
            );
            body.extend_from_slice(data);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
        Self { content_type: format!("multipart/form-data; boundary={boundary}"), body }
    }

    /// What `POST /api/v1/artifacts` takes, as the publisher CLI sends it: the signed targets
    /// metadata, then the artifact's bytes.
    pub fn publish(targets: &[u8], blob: &[u8]) -> Self {
        Self::new(&[("targets", "application/json", targets), ("blob", "application/octet-stream", blob)])
    }

    /// As [`MultipartForm::publish`], with the golden bundle the targets bind to the artifact
    /// as the third part.
    pub fn publish_with_golden(targets: &[u8], blob: &[u8], golden: &[u8]) -> Self {
        Self::new(&[
            ("targets", "application/json", targets),
            ("blob", "application/octet-stream", blob),
            ("golden", "application/zip", golden),
        ])
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

/// Polls `check` every 50 ms until it returns true or `timeout` passes.
pub async fn wait_until<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}
