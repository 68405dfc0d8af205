//! An attacker in the middle: an HTTP proxy between the agent and the real server that can
//! replace any response body (replayed or forged TUF metadata) and rewrite the director's
//! assignment doc, re-signing it with the real director key (a compromised control plane).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use serde_json::Value;
use wavecast_tuf::keys::SigningKey;

type Rewrite = Box<dyn Fn(&mut Value) -> bool + Send + Sync>;

struct Inner {
    upstream: String,
    http: reqwest::Client,
    overrides: Mutex<HashMap<String, Vec<u8>>>,
    rewrite: Mutex<Option<Rewrite>>,
    director: SigningKey,
    /// Paths requested, in order (for checks that the agent asked for something).
    seen: Mutex<Vec<String>>,
}

pub struct Proxy {
    pub url: String,
    inner: Arc<Inner>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// A proxy to `upstream`, holding the director key of the installation at `install`.
    pub async fn start(upstream: &str, install: &Path) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let inner = Arc::new(Inner {
            upstream: upstream.trim_end_matches('/').to_owned(),
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
            overrides: Mutex::new(HashMap::new()),
            rewrite: Mutex::new(None),
            director: SigningKey::load(&install.join("keys/director.key")).unwrap(),
            seen: Mutex::new(Vec::new()),
        });
        let app = axum::Router::new().fallback(handle).with_state(inner.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { url, inner, task }
    }

    /// Answers `path` (exact, without query) with `body` instead of asking the server.
    pub fn set_override(&self, path: &str, body: Vec<u8>) {
        self.inner.overrides.lock().unwrap().insert(path.to_owned(), body);
    }

    pub fn clear_overrides(&self) {
        self.inner.overrides.lock().unwrap().clear();
    }

    /// Rewrites the `signed` part of every assignment doc (re-signing it with the director key
    /// when `f` returns true). While a rewrite is set, `If-None-Match` is not forwarded, so the
    /// agent always receives a (rewritten) body.
    pub fn set_rewrite(&self, f: impl Fn(&mut Value) -> bool + Send + Sync + 'static) {
        *self.inner.rewrite.lock().unwrap() = Some(Box::new(f));
    }

    pub fn clear_rewrite(&self) {
        *self.inner.rewrite.lock().unwrap() = None;
    }

    pub fn seen(&self) -> Vec<String> {
        self.inner.seen.lock().unwrap().clone()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn respond(status: u16, headers: &[(String, Vec<u8>)], body: Vec<u8>) -> Response {
    let mut b = Response::builder().status(status);
    for (k, v) in headers {
        b = b.header(k.as_str(), v.as_slice());
    }
    b.body(Body::from(body)).unwrap()
}

async fn handle(State(inner): State<Arc<Inner>>, req: Request) -> Response {
    let path = req.uri().path().to_owned();
    let path_and_query = req.uri().path_and_query().map_or_else(|| path.clone(), |p| p.as_str().to_owned());
    inner.seen.lock().unwrap().push(path.clone());
    let forged = inner.overrides.lock().unwrap().get(&path).cloned();
    if let Some(body) = forged {
        return respond(200, &[("content-type".into(), b"application/json".to_vec())], body);
    }
    let rewriting = path == "/device/v1/assignments" && inner.rewrite.lock().unwrap().is_some();
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap_or_default();
    let method = reqwest::Method::from_bytes(parts.method.as_str().as_bytes()).unwrap();
    let mut up = inner.http.request(method, format!("{}{path_and_query}", inner.upstream));
    for (k, v) in &parts.headers {
        if k.as_str() == "host" || (rewriting && k.as_str() == "if-none-match") {
            continue;
        }
        up = up.header(k.as_str(), v.as_bytes());
    }
    let resp = match up.body(body.to_vec()).send().await {
        Ok(r) => r,
        Err(e) => return respond(502, &[], format!("proxy: {e}").into_bytes()),
    };
    let status = resp.status().as_u16();
    let headers: Vec<(String, Vec<u8>)> = resp
        .headers()
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "content-length" | "transfer-encoding" | "connection"))
        .map(|(k, v)| (k.as_str().to_owned(), v.as_bytes().to_vec()))
        .collect();
    let mut bytes = resp.bytes().await.unwrap_or_default().to_vec();
    if rewriting
        && status == 200
        && let Ok(mut doc) = serde_json::from_slice::<Value>(&bytes)
    {
        let changed = match inner.rewrite.lock().unwrap().as_ref() {
            Some(f) => f(&mut doc["signed"]),
            None => false,
        };
        if changed {
            let message = wavecast_core::canonical::to_vec(&doc["signed"]);
            doc["signature"] = Value::String(hex::encode(inner.director.sign_bytes(&message)));
            bytes = serde_json::to_vec(&doc).unwrap();
        }
    }
    respond(status, &headers, bytes)
}
