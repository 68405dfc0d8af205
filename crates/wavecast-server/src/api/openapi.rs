//! `GET /api/v1/openapi.json`: the OpenAPI 3.1 document, derived from the code that serves it.
//!
//! Each handler says what it answers with `#[utoipa::path]` (statuses, headers, content types,
//! which credential); `api::router` registers every handler through `utoipa_axum::routes!`, so
//! a route is served at exactly the path its description names and nothing is served without
//! one. Body schemas come from the serde types themselves (`ToSchema`, derived in
//! `wavecast-api` and `wavecast-core` under their `openapi` feature): a renamed field changes
//! the document with it. What no type says — the error responses, the security schemes, the
//! multipart upload and the signed TUF files, which handlers read and write as bytes — is here.

use std::sync::Arc;

use axum::Extension;
use axum::http::header;
use axum::response::IntoResponse;
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::openapi::RefOr;
use utoipa::openapi::content::ContentBuilder;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::schema::{AllOfBuilder, KnownFormat, ObjectBuilder, Schema, SchemaFormat, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, PartialSchema, ToResponse, ToSchema};
use wavecast_api::{ErrorBody, ErrorCode};

/// The served document, rendered once when the router is built.
#[derive(Clone)]
pub struct Document(pub Arc<str>);

#[utoipa::path(
    get,
    path = "/openapi.json",
    operation_id = "openapi",
    tag = "ops",
    summary = "This document",
    responses(
        (status = 200, description = "The OpenAPI 3.1 description of this server.", body = Object),
    )
)]
/// Serves the document; no authentication, so tools can discover the API.
pub async fn openapi(Extension(Document(doc)): Extension<Document>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], doc.to_string())
}

/// What the document says beyond the routes: who it describes, the two credentials, the error
/// responses every route refers to by name.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "wavecast server",
        description = "The wavecast control plane: the operator API (`/api/v1`, API tokens with roles), the device API (`/device/v1`, device credentials), health and metrics. Request bodies are JSON (except artifact uploads) of at most 1 MiB, and unknown fields are refused. Every error has the body `{\"error\": {\"code\", \"message\"}}`.",
        license(name = "Apache-2.0"),
    ),
    tags(
        (name = "operator", description = "Operator API: bearer API token (`wct_…`)."),
        (name = "device", description = "Device API: bearer device credential (`wcd_…`)."),
        (name = "ops", description = "Health, metrics and this document; no authentication."),
    ),
    components(
        schemas(ErrorBody, wavecast_core::fleet::DeviceStatus),
        responses(
            BadRequest, Unauthorized, Forbidden, NotFound, Conflict, TooLarge, Unprocessable, TooManyRequests,
            Internal, Unavailable
        ),
    ),
    modifiers(&SecuritySchemes),
)]
pub struct ApiDoc;

/// The operator API's tokens and the device API's credentials: both bearer secrets.
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let bearer = |description: &str| {
            SecurityScheme::Http(
                HttpBuilder::new().scheme(HttpAuthScheme::Bearer).description(Some(description)).build(),
            )
        };
        components.add_security_scheme(
            "apiToken",
            bearer("An API token, `wct_` and 64 hex digits; the admin token is in DATA_DIR/admin.token."),
        );
        components.add_security_scheme(
            "deviceCredential",
            bearer("A device credential, `wcd_` and 64 hex digits, from `POST /device/v1/enroll`."),
        );
    }
}

/// The finished document, as served: what the routes and [`ApiDoc`] say, with every response
/// header marked required. utoipa's header objects cannot say so, and every header this API
/// documents is always sent, which is what lets a client (and schemathesis) rely on `ETag` or
/// `Retry-After` being there.
pub fn render(api: &utoipa::openapi::OpenApi) -> String {
    // Through `Json` rather than `serde_json::Value`, which would sort every object's keys: the
    // document keeps fields and paths in the order the code declares them.
    let mut doc = serde_json::to_string(api).and_then(|text| serde_json::from_str::<Json>(&text));
    if let Ok(doc) = &mut doc {
        for item in doc.get_mut("paths").into_iter().flat_map(Json::values_mut) {
            for op in item.values_mut() {
                budget_failed_authentication(op.get_mut("responses"));
                require_headers(op.get_mut("responses"));
            }
        }
        require_headers(doc.get_mut("components").and_then(|c| c.get_mut("responses")));
    }
    doc.and_then(|doc| serde_json::to_string(&doc)).unwrap_or_default()
}

/// Adds 429 to every operation that authenticates: failed authentications spend their
/// address's budget (`limits.rs`), and once it is spent every request from that address is
/// refused before its credential is looked at, whatever route it is for.
fn budget_failed_authentication(responses: Option<&mut Json>) {
    if let Some(Json::Object(responses)) = responses
        && responses.contains_key("401")
        && !responses.contains_key("429")
    {
        let reference = serde_json::json!({ "$ref": "#/components/responses/TooManyRequests" });
        responses.insert("429".into(), Json::Other(reference));
    }
}

/// Marks every header of these responses required.
fn require_headers(responses: Option<&mut Json>) {
    for response in responses.into_iter().flat_map(Json::values_mut) {
        for header in response.get_mut("headers").into_iter().flat_map(Json::values_mut) {
            if let Json::Object(header) = header {
                header.insert("required".into(), Json::Other(Value::Bool(true)));
            }
        }
    }
}

/// JSON whose objects keep their keys in order.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Json {
    Object(IndexMap<String, Json>),
    Array(Vec<Json>),
    Other(Value),
}

impl Json {
    fn get_mut(&mut self, key: &str) -> Option<&mut Json> {
        match self {
            Json::Object(map) => map.get_mut(key),
            _ => None,
        }
    }

    /// An object's values; nothing for anything else.
    fn values_mut(&mut self) -> impl Iterator<Item = &mut Json> {
        match self {
            Json::Object(map) => Some(map.values_mut()),
            _ => None,
        }
        .into_iter()
        .flatten()
    }
}

/// An error response: the [`ErrorBody`] with `code` narrowed to the one its status has.
fn error_response(code: ErrorCode, description: &str, headers: &[(&str, &str)]) -> RefOr<Response> {
    let code = match serde_json::to_value(code) {
        Ok(Value::String(code)) => code,
        _ => String::new(),
    };
    let narrowed = ObjectBuilder::new().property(
        "error",
        ObjectBuilder::new().property("code", ObjectBuilder::new().schema_type(Type::String).enum_values(Some([code]))),
    );
    let schema =
        AllOfBuilder::new().item(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(ErrorBody::name()))).item(narrowed);
    let mut response = ResponseBuilder::new()
        .description(description)
        .content("application/json", ContentBuilder::new().schema(Some(schema)).build());
    for (name, description) in headers {
        response = response
            .header(*name, HeaderBuilder::new().schema(String::schema()).description(Some(*description)).build());
    }
    response.build().into()
}

macro_rules! error_responses {
    ($($(#[$doc:meta])* $name:ident => $code:ident, $description:literal $(, $header:literal: $what:literal)?;)*) => {$(
        $(#[$doc])*
        pub struct $name;

        impl<'r> ToResponse<'r> for $name {
            fn response() -> (&'r str, RefOr<Response>) {
                (stringify!($name), error_response(ErrorCode::$code, $description, &[$(($header, $what))?]))
            }
        }
    )*};
}

error_responses! {
    /// 400.
    BadRequest => BadRequest, "The request is malformed (body, query or path).";
    /// 401, with the challenge.
    Unauthorized => Unauthorized, "No, malformed, unknown or revoked credentials.",
        "WWW-Authenticate": "`Bearer`.";
    /// 403.
    Forbidden => Forbidden, "The token's role may not do this.";
    /// 404.
    NotFound => NotFound, "No such thing.";
    /// 409.
    Conflict => Conflict, "The request conflicts with the current state.";
    /// 413.
    TooLarge => TooLarge, "The request body is too large.";
    /// 422.
    Unprocessable => Refused, "Well-formed but refused.";
    /// 429, with when to try again.
    TooManyRequests => RateLimited, "The caller exceeded its request budget.",
        "Retry-After": "Seconds to wait.";
    /// 500.
    Internal => Internal, "The server failed; its log has details.";
    /// 503, with when to try again.
    Unavailable => Unavailable,
        "This server cannot sign now: it lacks a key the newest root.json names. The message says which, and where to copy it.",
        "Retry-After": "Seconds to wait.";
}

/// Bytes: artifacts and their ranges, served as files are.
pub struct Binary;

impl PartialSchema for Binary {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)))
            .into()
    }
}

impl ToSchema for Binary {}

/// A signed TUF file, served byte for byte as signed; tough, not this API, knows its fields.
pub struct TufMetadata;

impl PartialSchema for TufMetadata {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .description(Some("A TUF metadata file exactly as signed (root, timestamp, snapshot or targets)."))
            .property("signed", ObjectBuilder::new())
            .required("signed")
            .property("signatures", utoipa::openapi::schema::ArrayBuilder::new())
            .required("signatures")
            .into()
    }
}

impl ToSchema for TufMetadata {}

/// The publish upload, which the handler reads part by part as a stream rather than as a type.
pub struct PublishUpload;

impl PartialSchema for PublishUpload {
    fn schema() -> RefOr<Schema> {
        let binary = |description: &str| {
            ObjectBuilder::new()
                .schema_type(Type::String)
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)))
                .description(Some(description))
        };
        ObjectBuilder::new()
            .description(Some("Multipart parts, in this order: `targets`, then `blob`."))
            .property("targets", binary("The publisher-signed targets.json adding exactly one target."))
            .required("targets")
            .property("blob", binary("The artifact's bytes."))
            .required("blob")
            .into()
    }
}

impl ToSchema for PublishUpload {}
