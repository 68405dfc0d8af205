//! Operator API for API tokens: create (the secret is shown once), list, revoke.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use wavecast_api::{CreateToken, Token, TokenCreated};
use wavecast_core::audit::{AuditAction, NewAuditEvent};
use wavecast_core::secret::{Secret, SecretKind};
use wavecast_os::clock::now_ms;

use super::openapi::{BadRequest, Conflict, Forbidden, Internal, NotFound, TooLarge, Unauthorized};
use super::{ApiError, ApiJson, ApiPath, CanManageTokens, bodies, new_id, random};
use crate::state::AppState;
use crate::store::NewToken;

#[utoipa::path(
    post,
    path = "/tokens",
    operation_id = "createToken",
    tag = "operator",
    summary = "Create an API token",
    description = "Needs the admin role. 409: a token with that name exists.",
    security(("apiToken" = [])),
    request_body(content = CreateToken, content_type = "application/json"),
    responses(
        (status = 201, description = "Created; the secret is shown only here.", body = TokenCreated),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 409, response = Conflict),
        (status = 413, response = TooLarge),
        (status = 500, response = Internal),
    )
)]
pub async fn create(
    State(state): State<AppState>,
    CanManageTokens(op): CanManageTokens,
    ApiJson(req): ApiJson<CreateToken>,
) -> Result<(StatusCode, Json<TokenCreated>), ApiError> {
    let id = new_id()?;
    let name = req.name.unwrap_or_else(|| format!("{}-{}", req.role, &id[..6]));
    wavecast_core::name::validate("token", &name).map_err(|e| ApiError::bad_request(&e))?;
    let secret = Secret::from_random(SecretKind::ApiToken, random()?);
    let token = NewToken {
        id: id.clone(),
        name: name.clone(),
        role: req.role,
        secret_sha256: secret.hash(),
        created_by: op.name.clone(),
    };
    let event = NewAuditEvent {
        actor: op.actor(),
        action: AuditAction::TokenCreated,
        subject: name.clone(),
        detail: serde_json::json!({ "id": id, "role": req.role }),
    };
    state.store().create_token(&token, now_ms(), event).await?;
    Ok((StatusCode::CREATED, Json(TokenCreated { id, name, role: req.role, token: secret.expose().to_owned() })))
}

#[utoipa::path(
    get,
    path = "/tokens",
    operation_id = "listTokens",
    tag = "operator",
    summary = "API tokens",
    description = "Needs the admin role.",
    security(("apiToken" = [])),
    responses(
        (status = 200, description = "Every token, newest first, without secrets.", body = Vec<Token>),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 500, response = Internal),
    )
)]
pub async fn list(State(state): State<AppState>, _: CanManageTokens) -> Result<Json<Vec<Token>>, ApiError> {
    Ok(Json(state.store().list_tokens().await?.into_iter().map(bodies::token).collect()))
}

#[utoipa::path(
    delete,
    path = "/tokens/{id}",
    operation_id = "revokeToken",
    tag = "operator",
    summary = "Revoke an API token",
    description = "Needs the admin role.",
    security(("apiToken" = [])),
    params(
        ("id" = String, Path, description = "Token id.", min_length = 1, example = "4f1b2b0b822cd15d"),
    ),
    responses(
        (status = 200, description = "Revoked (revoking twice is not an error).", body = Token),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 500, response = Internal),
    )
)]
pub async fn revoke(
    State(state): State<AppState>,
    CanManageTokens(op): CanManageTokens,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Token>, ApiError> {
    let actor = op.actor();
    let revoked = state
        .store()
        .revoke_token(&id, now_ms(), |t| NewAuditEvent {
            actor,
            action: AuditAction::TokenRevoked,
            subject: t.name.clone(),
            detail: serde_json::json!({ "id": t.id, "role": t.role }),
        })
        .await?;
    Ok(Json(bodies::token(revoked)))
}
