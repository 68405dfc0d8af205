//! The one error body every operator API error answers with.

use serde::{Deserialize, Serialize};

/// `{"error": {"code": "...", "message": "..."}}`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// The inside of an [`ErrorBody`].
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Stable and machine-readable; one per HTTP status.
    pub code: ErrorCode,
    /// For a person. 5xx messages never carry the server's internals.
    pub message: String,
}

/// The machine-readable part of an error; each goes with one HTTP status.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// 401: no or bad credentials.
    Unauthorized,
    /// 403: credentials fine, permission missing.
    Forbidden,
    /// 404.
    NotFound,
    /// 409: the request conflicts with existing state.
    Conflict,
    /// 400: the request is malformed.
    BadRequest,
    /// 422: well-formed but refused (bad signature, hash mismatch, …).
    Refused,
    /// 413.
    TooLarge,
    /// 429: the caller exceeded its request budget.
    RateLimited,
    /// 500.
    Internal,
    /// 503: this server cannot do it now (it lacks a key the newest root names, say); the
    /// message says what would make it able to.
    Unavailable,
}
