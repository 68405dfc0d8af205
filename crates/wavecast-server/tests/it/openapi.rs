//! The OpenAPI document (served at `/api/v1/openapi.json`, derived from the handlers'
//! `#[utoipa::path]` descriptions and the wire types' `ToSchema`) stays honest: it is
//! well-formed OpenAPI 3.1 with every `$ref` resolving, it lists exactly the routes `router()`
//! has, every operation it lists reaches a real handler, and it says what clients rely on
//! (credentials, error bodies, times).
//!
//! Response shapes are checked against a running server by `scripts/schemathesis`, which CI runs.

use std::collections::BTreeSet;

use axum::body::Body;
use axum::http::{Method, StatusCode};
use serde_json::Value;

use crate::both;
use crate::support::{Db, Env};

const ROUTER_SOURCE: &str = include_str!("../../src/api/mod.rs");

/// Every (method, path template) that `api::router()` serves: the document lists what the
/// router has by construction, so this list is what says a route did not go missing.
const ROUTES: &[(&str, &str)] = &[
    ("GET", "/healthz"),
    ("GET", "/metrics"),
    ("GET", "/api/v1/openapi.json"),
    ("GET", "/api/v1/whoami"),
    ("GET", "/api/v1/status"),
    ("GET", "/api/v1/artifacts"),
    ("POST", "/api/v1/artifacts"),
    ("POST", "/api/v1/artifacts/resign"),
    ("GET", "/api/v1/groups"),
    ("POST", "/api/v1/groups"),
    ("GET", "/api/v1/groups/{name}/pacing"),
    ("PUT", "/api/v1/groups/{name}/pacing"),
    ("GET", "/api/v1/enrollment-tokens"),
    ("POST", "/api/v1/enrollment-tokens"),
    ("DELETE", "/api/v1/enrollment-tokens/{id}"),
    ("GET", "/api/v1/devices"),
    ("GET", "/api/v1/devices/{name}"),
    ("DELETE", "/api/v1/devices/{name}"),
    ("POST", "/api/v1/devices/{name}/revoke"),
    ("GET", "/api/v1/audit"),
    ("GET", "/api/v1/audit/checkpoint"),
    ("GET", "/api/v1/audit/checkpoints"),
    ("GET", "/api/v1/audit/leaves"),
    ("GET", "/api/v1/audit/export"),
    ("GET", "/api/v1/audit/consistency"),
    ("GET", "/api/v1/tuf/{file}"),
    ("POST", "/api/v1/root/rotate"),
    ("GET", "/api/v1/blobs/{sha256}"),
    ("GET", "/api/v1/tokens"),
    ("POST", "/api/v1/tokens"),
    ("DELETE", "/api/v1/tokens/{id}"),
    ("GET", "/api/v1/rollouts"),
    ("POST", "/api/v1/rollouts"),
    ("GET", "/api/v1/rollouts/{id}"),
    ("POST", "/api/v1/rollouts/{id}/approve"),
    ("POST", "/api/v1/rollouts/{id}/resume"),
    ("POST", "/api/v1/rollouts/{id}/abort"),
    ("POST", "/device/v1/enroll"),
    ("GET", "/device/v1/whoami"),
    ("GET", "/device/v1/tuf/{file}"),
    ("GET", "/device/v1/assignments"),
    ("POST", "/device/v1/reports"),
    ("POST", "/device/v1/progress"),
    ("GET", "/device/v1/targets/{file}"),
];

const METHODS: &[&str] = &["get", "put", "post", "delete", "options", "head", "patch", "trace"];

fn document() -> Value {
    serde_json::from_str(&wavecast_server::api::document()).expect("the document is JSON")
}

/// (METHOD, path template) of every operation in the document.
fn operations(doc: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths is an object") {
        for (method, _) in item.as_object().expect("a path item is an object") {
            if METHODS.contains(&method.as_str()) {
                out.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    out
}

/// Follows `$ref`s (local ones only, which is all the document uses).
fn resolve<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => resolve(doc, doc.pointer(r.strip_prefix('#').expect("local $ref")).expect("$ref resolves")),
        None => v,
    }
}

/// The schema a possibly-null value has when it is not null: OpenAPI 3.1 writes `Option<T>` as
/// `oneOf: [{"type": "null"}, T]`.
fn non_null<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
    let v = resolve(doc, v);
    match v.get("oneOf").and_then(Value::as_array) {
        Some(alternatives) => {
            let mut rest = alternatives.iter().filter(|a| a["type"] != "null");
            match (rest.next(), rest.next()) {
                (Some(only), None) => resolve(doc, only),
                _ => v,
            }
        }
        None => v,
    }
}

fn check_refs(doc: &Value, v: &Value, at: &str, count: &mut usize) {
    match v {
        Value::Object(map) => {
            if let Some(r) = map.get("$ref") {
                let r = r.as_str().unwrap_or_else(|| panic!("{at}: $ref is not a string"));
                let pointer = r.strip_prefix('#').unwrap_or_else(|| panic!("{at}: $ref {r} is not local"));
                assert!(doc.pointer(pointer).is_some(), "{at}: $ref {r} does not resolve");
                *count += 1;
            }
            for (k, child) in map {
                check_refs(doc, child, &format!("{at}/{k}"), count);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                check_refs(doc, child, &format!("{at}/{i}"), count);
            }
        }
        _ => {}
    }
}

#[test]
fn document_is_openapi_3_with_resolving_refs() {
    let doc = document();
    let version = doc["openapi"].as_str().expect("openapi version");
    assert!(version.starts_with("3.1."), "OpenAPI 3.1.x, got {version}");
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
    let mut refs = 0;
    check_refs(&doc, &doc, "#", &mut refs);
    assert!(refs > 50, "only {refs} $refs: is the document complete?");

    let schemes = doc["components"]["securitySchemes"].as_object().expect("security schemes");
    for (name, scheme) in schemes {
        assert_eq!((scheme["type"].as_str(), scheme["scheme"].as_str()), (Some("http"), Some("bearer")), "{name}");
    }

    for (path, item) in doc["paths"].as_object().unwrap() {
        assert!(path.starts_with('/'), "{path}");
        let templated: BTreeSet<&str> =
            path.split('/').filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}'))).collect();
        for (method, op) in item.as_object().unwrap() {
            let at = format!("{} {path}", method.to_uppercase());
            assert!(METHODS.contains(&method.as_str()), "{at}: not an HTTP method");
            assert!(op["operationId"].is_string(), "{at}: operationId");
            let params = op["parameters"].as_array().cloned().unwrap_or_default();
            let in_path: BTreeSet<&str> = params
                .iter()
                .map(|p| resolve(&doc, p))
                .filter(|p| p["in"] == "path")
                .map(|p| {
                    assert_eq!(p["required"], true, "{at}: path parameters are required");
                    p["name"].as_str().unwrap()
                })
                .collect();
            assert_eq!(in_path, templated, "{at}: path parameters and the template disagree");

            let responses = op["responses"].as_object().unwrap_or_else(|| panic!("{at}: responses"));
            assert!(responses.keys().any(|s| s.starts_with('2')), "{at}: no success response");
            for (status, resp) in responses {
                let resp = resolve(&doc, resp);
                assert!(resp["description"].is_string(), "{at} {status}: description");
                // Every error is the one JSON error shape, except the file server's bodiless
                // answers to conditional and range requests.
                if status.starts_with('4') && !["412", "416"].contains(&status.as_str()) || status.starts_with('5') {
                    let schema = &resp["content"]["application/json"]["schema"];
                    let refs_error = schema["allOf"][0]["$ref"] == "#/components/schemas/ErrorBody";
                    assert!(refs_error, "{at} {status}: error responses use the ErrorBody schema: {schema}");
                }
                // A client waits as long as the server says.
                if ["429", "503"].contains(&status.as_str()) {
                    assert_eq!(resp["headers"]["Retry-After"]["required"], true, "{at} {status}: Retry-After");
                }
            }

            // No `security` at all is an open route.
            let security: Vec<String> = op["security"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|s| s.as_object().unwrap().keys().cloned())
                .collect();
            for s in &security {
                assert!(schemes.contains_key(s), "{at}: unknown security scheme {s}");
            }
            let open = ["/healthz", "/metrics", "/api/v1/openapi.json", "/device/v1/enroll"];
            if !open.contains(&path.as_str()) {
                let scheme = if path.starts_with("/device/") { "deviceCredential" } else { "apiToken" };
                assert_eq!(security, [scheme], "{at}: security");
                assert!(responses.contains_key("401"), "{at}: authenticated routes answer 401");
                // Failed authentications spend their address's budget, whatever the route.
                assert!(responses.contains_key("429"), "{at}: authenticated routes answer 429");
            } else {
                if path == "/device/v1/enroll" {
                    assert!(responses.contains_key("429"), "{at}: wrong enrollment tokens spend a budget (429)");
                }
                assert!(security.is_empty(), "{at}: needs no credentials");
            }

            if let Some(body) = op.get("requestBody") {
                let body = resolve(&doc, body);
                if let Some(schema) = body["content"].get("application/json").map(|c| resolve(&doc, &c["schema"])) {
                    // The server refuses unknown fields in every JSON body.
                    assert_eq!(schema["additionalProperties"], false, "{at}: additionalProperties");
                    for status in ["400", "413"] {
                        assert!(responses.contains_key(status), "{at}: JSON bodies can get {status}");
                    }
                }
            }
        }
    }
}

/// Every time in the operator API's bodies is documented as what it is on the wire: an RFC 3339
/// string (`format: date-time`). The one exception is the raw checkpoint row, whose `created_at`
/// stays the stored Unix ms beside the signed note it describes.
#[test]
fn every_time_is_documented_as_rfc3339() {
    let doc = document();
    let mut times = 0;
    for (schema, body) in doc["components"]["schemas"].as_object().unwrap() {
        for (field, property) in body["properties"].as_object().into_iter().flatten() {
            let time = field.ends_with("_at") || field.ends_with("_time") || field == "at";
            // The device API's own view of a device keeps the stored Unix ms, as it always has.
            if !time || schema == "StoredCheckpoint" || schema == "DeviceRecord" {
                continue;
            }
            times += 1;
            let property = non_null(&doc, property);
            assert_eq!(
                (property["type"].as_str(), property["format"].as_str()),
                (Some("string"), Some("date-time")),
                "{schema}.{field} is a time on the wire: {property}"
            );
        }
    }
    assert!(times > 20, "only {times} time fields found: the scan is broken");
    // The rollout states are the engine's, every one of them.
    let states: Vec<&str> = doc["components"]["schemas"]["RolloutState"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let engine: Vec<&str> = wavecast_core::rollout::RolloutState::ALL.iter().map(|s| s.as_str()).collect();
    assert_eq!(states, engine);
}

#[test]
fn document_lists_exactly_the_routes() {
    let listed: BTreeSet<(String, String)> = ROUTES.iter().map(|(m, p)| (m.to_string(), p.to_string())).collect();
    assert_eq!(listed.len(), ROUTES.len(), "ROUTES has duplicates");
    let documented = operations(&document());
    let missing: Vec<_> = listed.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&listed).collect();
    assert!(missing.is_empty() && extra.is_empty(), "not documented: {missing:?}; not served: {extra:?}");

    // The document lists what router() serves because every route goes through `routes!`,
    // which registers a handler with its description; a plain `.route(` would serve a path
    // the document does not know.
    let plain = ROUTER_SOURCE.lines().filter(|l| !l.trim_start().starts_with("//")).any(|l| l.contains(".route("));
    assert!(!plain, "router() adds a route without its description: register it with routes!()");
}

async fn every_documented_operation_reaches_a_handler(db: Db) {
    let env = Env::new(db).await;

    let served = env.request(Method::GET, "/api/v1/openapi.json", None, &[], Body::empty()).await;
    assert_eq!(served.status, StatusCode::OK);
    assert_eq!(served.headers["content-type"], "application/json");
    assert_eq!(served.body, wavecast_server::api::document().as_bytes(), "served without credentials");

    for (method, path) in operations(&document()) {
        // Any value will do: a handler answering 404 for it still proves the route exists.
        let uri = path.split('/').map(|s| if s.starts_with('{') { "sample" } else { s }).collect::<Vec<_>>().join("/");
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let token = uri.starts_with("/api/").then_some(env.admin.as_str());
        let r = env
            .request(method.clone(), &uri, token, &[("content-type", "application/json".into())], Body::from("{}"))
            .await;
        assert_ne!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {uri}: the path exists, the method does not");
        if r.status == StatusCode::NOT_FOUND {
            assert!(!r.message().starts_with("no route for"), "{method} {uri} fell through to the fallback");
        }
    }
}

both!(every_documented_operation_reaches_a_handler);

/// Query and path rejections were axum's text/plain, not the documented JSON error (the
/// negative cases of `scripts/schemathesis` send exactly such requests).
async fn malformed_query_and_path_get_json_errors(db: Db) {
    let env = Env::new(db).await;
    for uri in [
        "/api/v1/audit?limit=abc",
        "/api/v1/audit?unknown=1",
        "/api/v1/audit/consistency",
        "/api/v1/audit/leaves?from=-1",
        "/api/v1/devices?group=a&group=b",
        "/api/v1/devices/%FF",
        "/api/v1/rollouts/%C3%28",
    ] {
        let r = env.get(uri).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{uri}");
        assert_eq!(r.headers["content-type"], "application/json", "{uri}");
        assert_eq!(r.json()["error"]["code"], "bad_request", "{uri}");
        assert!(!r.message().is_empty(), "{uri}");
    }
}

/// The API takes any u64 as `device_timeout_ms` (and the document says so); one past i64::MAX
/// overflowed the timeout sweep, which panicked in debug builds (ending all sweeps) and in
/// release wrapped to a negative timeout that marked every device unreachable at once.
async fn huge_device_timeouts_never_expire(db: Db) {
    let env = Env::new(db).await;
    assert_eq!(env.publish("m@1.0.0", b"bytes").await.status, StatusCode::CREATED);
    let mut ids = Vec::new();
    for (group, timeout) in [("g1", u64::MAX), ("g2", 1u64 << 63)] {
        env.post_json("/api/v1/groups", Some(&env.admin), serde_json::json!({ "name": group })).await;
        let t = env
            .post_json("/api/v1/enrollment-tokens", Some(&env.admin), serde_json::json!({ "group": group }))
            .await
            .json();
        let r = env
            .post_json(
                "/device/v1/enroll",
                None,
                serde_json::json!({ "token": t["token"], "name": format!("dev-{group}"), "hardware": "hw" }),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.message());
        let r = env
            .post_json(
                "/api/v1/rollouts",
                Some(&env.admin),
                serde_json::json!({
                    "artifact": "m@1.0.0", "group": group, "waves": [100], "probe": "exec:check",
                    "device_timeout_ms": timeout,
                }),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.message());
        assert_eq!(r.json()["device_timeout_ms"], timeout);
        ids.push(r.json()["id"].as_str().unwrap().to_owned());
    }
    let settled = env.state.store().sweep_timeouts(jiff::Timestamp::now().as_millisecond()).await.unwrap();
    assert_eq!(settled, 0, "no device can have outlived a timeout of half a billion years");
    for id in ids {
        let r = env.get(&format!("/api/v1/rollouts/{id}")).await.json();
        assert_eq!((r["state"].as_str(), r["counts"]["assigned"].as_u64()), (Some("running"), Some(1)), "{r}");
    }
}

both!(malformed_query_and_path_get_json_errors, huge_device_timeouts_never_expire);
