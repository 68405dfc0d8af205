//! API tokens: create, look up, list, revoke. Secrets are stored only as hashes.

use sqlx::{Any, Transaction};
use wavecast_core::Sha256Digest;
use wavecast_core::audit::NewAuditEvent;

use super::audit::append_audit;
use super::row::{Row, read_all};
use super::{NewToken, Store, StoreError, TokenRecord, changed, conflict_or, q};

const TOKEN_COLUMNS: &str = "id, name, role, created_at, created_by, revoked_at";

/// [`TOKEN_COLUMNS`] of the table aliased `alias`, for a join.
pub(super) fn token_columns_of(alias: &str) -> String {
    TOKEN_COLUMNS.split(", ").map(|c| format!("{alias}.{c}")).collect::<Vec<_>>().join(", ")
}

pub(super) fn token(r: &Row<'_>) -> Result<TokenRecord, StoreError> {
    Ok(TokenRecord {
        id: r.get(0)?,
        name: r.get(1)?,
        role: r.parse(2, "token role")?,
        created_at: r.get(3)?,
        created_by: r.get(4)?,
        revoked_at: r.get(5)?,
    })
}

impl Store {
    /// The API token with this secret hash (revoked or not: the caller says which is which).
    pub async fn token_by_secret(&self, hash: &Sha256Digest) -> Result<Option<TokenRecord>, StoreError> {
        let op = "looking up a token";
        sqlx::query(&format!("SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE secret_sha256 = $1"))
            .bind(hash.to_hex())
            .fetch_optional(&self.pool)
            .await
            .map_err(q(op))?
            .map(|r| token(&Row::new(&r, op)))
            .transpose()
    }

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
        let op = "listing tokens";
        let rows = sqlx::query(&format!("SELECT {TOKEN_COLUMNS} FROM api_tokens ORDER BY created_at DESC, id"))
            .fetch_all(&self.pool)
            .await
            .map_err(q(op))?;
        read_all(&rows, op, token)
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
        let row = sqlx::query(&format!("SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE id = $1"))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(q(op))?
            .ok_or_else(|| StoreError::NotFound { what: format!("token {id}") })?;
        let token = token(&Row::new(&row, op))?;
        if token.revoked_at.is_some() {
            return Ok(token);
        }
        let revoke = sqlx::query("UPDATE api_tokens SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL")
            .bind(id)
            .bind(now_ms);
        if changed(&mut tx, revoke, op).await? == 1 {
            append_audit(&mut tx, now_ms, event(&token)).await?;
        }
        tx.commit().await.map_err(q(op))?;
        Ok(TokenRecord { revoked_at: Some(now_ms), ..token })
    }
}

/// Inserts a token row inside `tx`.
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
