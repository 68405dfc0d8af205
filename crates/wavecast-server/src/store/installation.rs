//! The installation: what `wavecast init` prepared, imported once per database.

use wavecast_core::Sha256Digest;

use super::audit::append_audit;
use super::metadata::insert_metadata;
use super::row::Row;
use super::tokens::insert_token;
use super::{Bootstrap, Store, StoreError, changed, q};

impl Store {
    /// Imports what `wavecast init` prepared, once per database. Returns false when the
    /// database already holds an installation (a restart, or another replica got there first).
    pub async fn bootstrap(&self, b: &Bootstrap) -> Result<bool, StoreError> {
        let op = "importing the installation";
        let mut tx = self.begin(op).await?;
        let insert = sqlx::query(
            "INSERT INTO installation (id, created_at, root_sha256) VALUES (1, $1, $2) ON CONFLICT (id) DO NOTHING",
        )
        .bind(b.now_ms)
        .bind(b.root_sha256.to_hex());
        if changed(&mut tx, insert, op).await? == 0 {
            return Ok(false);
        }
        for (role, version, body) in &b.metadata {
            insert_metadata(&mut tx, role, *version, body, b.now_ms).await?;
        }
        insert_token(&mut tx, &b.admin_token, b.now_ms).await?;
        append_audit(&mut tx, b.now_ms, b.event.clone()).await?;
        tx.commit().await.map_err(q(op))?;
        Ok(true)
    }

    /// The digest of the trust anchor recorded at bootstrap, if any.
    pub async fn installation_root(&self) -> Result<Option<Sha256Digest>, StoreError> {
        let op = "reading the installation";
        sqlx::query("SELECT root_sha256 FROM installation WHERE id = 1")
            .fetch_optional(&self.pool)
            .await
            .map_err(q(op))?
            .map(|r| Row::new(&r, op).parse(0, "installation root digest"))
            .transpose()
    }
}
