//! API tokens and the caller's own identity.

use serde::{Deserialize, Serialize};

use crate::Timestamp;
use wavecast_core::Role;

/// `GET /whoami`: the token the request was made with.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Whoami {
    /// Token id.
    pub id: String,
    /// Token name: the actor in the audit events it causes.
    pub name: String,
    /// Its role.
    pub role: Role,
}

/// `POST /tokens`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", schema(example = json!({"role": "viewer", "name": "dashboard"})))]
pub struct CreateToken {
    /// The role.
    pub role: Role,
    /// A name (the server picks `ROLE-<id>` when absent); checked by the server.
    pub name: Option<String>,
}

/// What `POST /tokens` answers: the only time the secret is shown.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenCreated {
    /// Public id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// The secret.
    pub token: String,
}

/// An API token as listed (never its secret), and as `DELETE /tokens/{id}` answers.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    /// Public id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Creation time.
    pub created_at: Timestamp,
    /// The token name that created it.
    pub created_by: String,
    /// Revocation time; `null` while valid.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub revoked_at: Option<Timestamp>,
}
