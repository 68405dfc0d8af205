//! The API's one error type and how each variant becomes an HTTP status and a JSON body.
//!
//! The body is always `{"error": {"code": "...", "message": "..."}}`. A client's mistake is
//! answered with the error and its causes on one line ([`ApiError::bad_request`] and the
//! like); internal causes (database, filesystem) keep their `source()` chain, are logged with
//! it, and are answered with a generic message, so nothing about the server's insides leaks
//! to a client.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use wavecast_api::{ErrorBody, ErrorCode, ErrorDetail};
use wavecast_os::error::{Chain, chain};

use crate::blobs::BlobError;
use crate::checkpoints::CheckpointError;
use crate::store::StoreError;
use crate::trust::TrustError;

/// Everything a handler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No or bad credentials.
    #[error("{0}")]
    Unauthorized(String),
    /// Credentials fine, permission missing.
    #[error("{0}")]
    Forbidden(String),
    /// No such thing.
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with existing state.
    #[error("{0}")]
    Conflict(String),
    /// The request is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// The request is well-formed but refused (bad signature, hash mismatch, …).
    #[error("{0}")]
    Unprocessable(String),
    /// The body is larger than allowed.
    #[error("{0}")]
    TooLarge(String),
    /// The caller exceeded its request budget.
    #[error("{message}")]
    TooManyRequests {
        /// Whose budget, and what it is.
        message: String,
        /// When the next request could be let through (the `Retry-After` header, in whole
        /// seconds rounded up).
        retry_after: std::time::Duration,
    },
    /// This server cannot do it now, for a reason an operator can fix (a key it lacks); the
    /// message says how, so unlike other 5xx answers it is shown.
    #[error("{0}")]
    Unavailable(String),
    /// Storage failed.
    #[error(transparent)]
    Store(StoreError),
    /// The blob store failed.
    #[error(transparent)]
    Blob(BlobError),
    /// Reading or proving audit evidence failed.
    #[error(transparent)]
    Evidence(CheckpointError),
    /// Anything else on our side.
    #[error("{context}")]
    Internal {
        /// What we were doing, or what is wrong.
        context: String,
        /// The cause, if another error.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

impl ApiError {
    /// `whose` budget is spent: 429, with when to come back.
    pub fn too_many(whose: String, exceeded: crate::limits::Exceeded) -> Self {
        ApiError::TooManyRequests { message: whose, retry_after: exceeded.retry_after }
    }

    /// The request is malformed, as `e` (and its causes) say.
    pub fn bad_request(e: &dyn std::error::Error) -> Self {
        ApiError::BadRequest(chain(e))
    }

    /// The credentials are bad, as `e` (and its causes) say.
    pub fn unauthorized(e: &dyn std::error::Error) -> Self {
        ApiError::Unauthorized(chain(e))
    }

    /// Something on our side is wrong, with no other error behind it.
    pub fn internal(context: impl Into<String>) -> Self {
        ApiError::Internal { context: context.into(), source: None }
    }

    /// Something on our side failed while doing `context`, because of `source`.
    pub fn internal_from(
        context: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        ApiError::Internal { context: context.into(), source: Some(source.into()) }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict { what } => ApiError::Conflict(format!("{what} already exists")),
            StoreError::NotFound { what } => ApiError::NotFound(format!("{what} not found")),
            other => ApiError::Store(other),
        }
    }
}

impl From<TrustError> for ApiError {
    fn from(e: TrustError) -> Self {
        match e {
            missing @ TrustError::MissingKey { .. } => ApiError::Unavailable(chain(&missing)),
            TrustError::Store(e) => e.into(),
            other => ApiError::internal_from("loading the trust material", other),
        }
    }
}

impl From<BlobError> for ApiError {
    fn from(e: BlobError) -> Self {
        match e {
            BlobError::TooLong { .. } => ApiError::Unprocessable(format!("{}; nothing was stored", chain(&e))),
            BlobError::Interrupted { .. } => ApiError::BadRequest(format!("{}; nothing was stored", chain(&e))),
            // The store will most likely answer again: the client is told to retry, and a device
            // waits rather than counting the model as failed.
            store @ BlobError::Store { .. } => {
                tracing::warn!(error = %Chain(&store), "the blob store failed");
                ApiError::Unavailable(format!("{}; try again later", chain(&store)))
            }
            other @ (BlobError::Io { .. } | BlobError::Config { .. } | BlobError::Missing { .. }) => {
                ApiError::Blob(other)
            }
        }
    }
}

impl ApiError {
    fn status_and_code(&self) -> (StatusCode, ErrorCode) {
        match self {
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, ErrorCode::Forbidden),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, ErrorCode::NotFound),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, ErrorCode::Conflict),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, ErrorCode::BadRequest),
            ApiError::Unprocessable(_) => (StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::Refused),
            ApiError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::TooLarge),
            ApiError::TooManyRequests { .. } => (StatusCode::TOO_MANY_REQUESTS, ErrorCode::RateLimited),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable),
            ApiError::Store(_) | ApiError::Blob(_) | ApiError::Evidence(_) | ApiError::Internal { .. } => {
                (StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Internal)
            }
        }
    }
}

impl ApiError {
    /// The status this error is answered with.
    pub fn status(&self) -> StatusCode {
        self.status_and_code().0
    }

    /// What the caller is told: the error itself, or for a server fault a pointer to the log,
    /// where it is written (the details of a fault are not the client's to read).
    pub fn public_message(&self) -> String {
        if self.status().is_server_error() && !matches!(self, ApiError::Unavailable(_)) {
            tracing::error!(error = %Chain(self), "request failed");
            "internal server error; the server log has details".to_owned()
        } else {
            self.to_string()
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let retry_after = match &self {
            // At least a second: `Retry-After` counts whole seconds, and 0 invites a hot loop.
            ApiError::TooManyRequests { retry_after, .. } => Some(retry_after.as_secs_f64().ceil().max(1.0) as u64),
            // Someone has to copy a key first: not a matter of a second.
            ApiError::Unavailable(_) => Some(10),
            _ => None,
        };
        let message = self.public_message();
        let mut resp = (status, Json(ErrorBody { error: ErrorDetail { code, message } })).into_response();
        if let Some(secs) = retry_after {
            resp.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from(secs));
        }
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(axum::http::header::WWW_AUTHENTICATE, axum::http::HeaderValue::from_static("Bearer"));
        }
        resp
    }
}
