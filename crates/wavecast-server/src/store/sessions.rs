//! Dashboard sessions: a signed-in browser's secret (stored only as its hash), the API token it
//! stands for, and when it ends.

use wavecast_core::Sha256Digest;

use super::row::Row;
use super::tokens::{token, token_columns_of};
use super::{Store, StoreError, TokenRecord, q};

impl Store {
    /// Starts a session for token `token_id` that ends at `expires_at_ms`, and forgets the
    /// sessions that have ended, so the table holds only live ones.
    pub async fn create_session(
        &self,
        secret: &Sha256Digest,
        token_id: &str,
        now_ms: i64,
        expires_at_ms: i64,
    ) -> Result<(), StoreError> {
        let op = "starting a dashboard session";
        let mut tx = self.begin(op).await?;
        sqlx::query("DELETE FROM dashboard_sessions WHERE expires_at <= $1")
            .bind(now_ms)
            .execute(&mut *tx)
            .await
            .map_err(q(op))?;
        sqlx::query(
            "INSERT INTO dashboard_sessions (secret_sha256, token_id, created_at, expires_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(secret.to_hex())
        .bind(token_id)
        .bind(now_ms)
        .bind(expires_at_ms)
        .execute(&mut *tx)
        .await
        .map_err(q(op))?;
        tx.commit().await.map_err(q(op))
    }

    /// The token of the live session with this secret hash (revoked or not: the caller refuses
    /// a revoked one), or `None` when there is no such session or it has ended.
    pub async fn session_token(&self, secret: &Sha256Digest, now_ms: i64) -> Result<Option<TokenRecord>, StoreError> {
        let op = "reading a dashboard session";
        sqlx::query(&format!(
            "SELECT {} FROM dashboard_sessions s JOIN api_tokens t ON t.id = s.token_id \
             WHERE s.secret_sha256 = $1 AND s.expires_at > $2",
            token_columns_of("t")
        ))
        .bind(secret.to_hex())
        .bind(now_ms)
        .fetch_optional(&self.pool)
        .await
        .map_err(q(op))?
        .map(|r| token(&Row::new(&r, op)))
        .transpose()
    }

    /// Ends the session with this secret hash (signing out); ending one that is gone is not an
    /// error.
    pub async fn end_session(&self, secret: &Sha256Digest) -> Result<(), StoreError> {
        let op = "ending a dashboard session";
        sqlx::query("DELETE FROM dashboard_sessions WHERE secret_sha256 = $1")
            .bind(secret.to_hex())
            .execute(&self.pool)
            .await
            .map_err(q(op))?;
        Ok(())
    }
}
