//! `GET /api/v1/openapi.json`: the hand-written OpenAPI 3.0 description of every route.

use axum::http::header;
use axum::response::IntoResponse;

/// The document, kept honest by the `openapi` integration test and `scripts/schemathesis`.
pub const DOCUMENT: &str = include_str!("openapi.json");

/// Serves [`DOCUMENT`]; no authentication, so tools can discover the API.
pub async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], DOCUMENT)
}
