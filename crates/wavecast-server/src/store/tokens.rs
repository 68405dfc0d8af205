//! API tokens: create, list, revoke. Secrets are stored only as hashes.

use wavecast_core::audit::NewAuditEvent;

use super::{NewToken, Store, StoreError, TokenRecord, append_audit, insert_token, q, token_from_row};

impl Store {
    /// Creates a token; names are unique so audit actors are unambiguous.
    pub async fn create_token(&self, t: &NewToken, now_ms: i64, event: NewAuditEvent) -> Result<(), StoreError> {
        let op = "creating a token";
        let mut tx = self.begin(op).await?;
        let taken = sqlx::query("SELECT 1 FROM api_tokens WHERE name = $1")
            .bind(&t.name)
            .fetch_optional(&mut *tx)
            .await
            .map_err(q(op))?;
        if taken.is_some() {
            return Err(StoreError::Conflict { what: format!("a token named {:?}", t.name) });
        }
        insert_token(&mut tx, t, now_ms).await?;
        append_audit(&mut tx, now_ms, event).await?;
        tx.commit().await.map_err(q(op))
    }

    /// Every token, newest first (secrets are not stored, so none is shown).
    pub async fn list_tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, name, role, created_at, created_by, revoked_at FROM api_tokens ORDER BY created_at DESC, id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(q("listing tokens"))?;
        rows.iter().map(token_from_row).collect()
    }

    /// Revokes a token. Returns the token as it was; `NotFound` if there is none with that id.
    pub async fn revoke_token(
        &self,
        id: &str,
        now_ms: i64,
        event: impl FnOnce(&TokenRecord) -> NewAuditEvent,
    ) -> Result<TokenRecord, StoreError> {
        let op = "revoking a token";
        let mut tx = self.begin(op).await?;
        let row =
            sqlx::query("SELECT id, name, role, created_at, created_by, revoked_at FROM api_tokens WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(q(op))?
                .ok_or_else(|| StoreError::NotFound { what: format!("token {id}") })?;
        let token = token_from_row(&row)?;
        if token.revoked_at.is_some() {
            return Ok(token);
        }
        let changed = sqlx::query("UPDATE api_tokens SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL")
            .bind(id)
            .bind(now_ms)
            .execute(&mut *tx)
            .await
            .map_err(q(op))?
            .rows_affected();
        if changed == 1 {
            append_audit(&mut tx, now_ms, event(&token)).await?;
        }
        tx.commit().await.map_err(q(op))?;
        Ok(TokenRecord { revoked_at: Some(now_ms), ..token })
    }
}
