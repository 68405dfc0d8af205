//! An attacker in the middle: an HTTP proxy between the agent and the real server that can
//! replace any response body (replayed or forged TUF metadata) and rewrite the director's
//! assignment doc, re-signing it with the real director key (a compromised control plane) or
//! with another key (a rotated director key the server does not hold).
//! It can also play a broken or hostile server on one path (a status instead of the file, an
//! endless body, headers and then silence, a cut-off body, a 206 with the wrong range), and it
//! keeps the heartbeats the agent sends, so tests see what a device said it waits for.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use serde_json::Value;
use wavecast_tuf::keys::SigningKey;

type Rewrite = Box<dyn Fn(&mut Value) -> bool + Send + Sync>;

/// How the proxy misbehaves on one path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hostile {
    /// Answer this status, with no body.
    Status(u16),
    /// 200, then bytes forever.
    Endless,
    /// 200 and headers, then nothing at all.
    Silent,
    /// A download cut off after this many bytes (the connection then closes), and its resume
    /// (a `Range` request) answered 206 with the whole file, labelled as starting at byte 0.
    WrongRange(usize),
}

struct Inner {
    upstream: String,
    http: reqwest::Client,
    overrides: Mutex<HashMap<String, Vec<u8>>>,
    rewrite: Mutex<Option<Rewrite>>,
    director: Mutex<SigningKey>,
    /// Paths requested, in order (for checks that the agent asked for something).
    seen: Mutex<Vec<String>>,
    hostile: Mutex<HashMap<String, Hostile>>,
    /// The heartbeats the agent sent, as JSON.
    progress: Mutex<Vec<Value>>,
}

pub struct Proxy {
    pub url: String,
    pub addr: std::net::SocketAddr,
    inner: Arc<Inner>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// A proxy to `upstream`, holding the director key of the installation at `install`.
    pub async fn start(upstream: &str, install: &Path) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let url = format!("http://{addr}");
        let inner = Arc::new(Inner {
            upstream: upstream.trim_end_matches('/').to_owned(),
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
            overrides: Mutex::new(HashMap::new()),
            rewrite: Mutex::new(None),
            director: Mutex::new(SigningKey::load(&install.join("keys/director.key")).unwrap()),
            seen: Mutex::new(Vec::new()),
            hostile: Mutex::new(HashMap::new()),
            progress: Mutex::new(Vec::new()),
        });
        let app = axum::Router::new().fallback(handle).with_state(inner.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { url, addr, inner, task }
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

    /// Re-signs rewritten docs with `key` instead of the installation's director key.
    pub fn set_signer(&self, key: SigningKey) {
        *self.inner.director.lock().unwrap() = key;
    }

    pub fn clear_rewrite(&self) {
        *self.inner.rewrite.lock().unwrap() = None;
    }

    pub fn seen(&self) -> Vec<String> {
        self.inner.seen.lock().unwrap().clone()
    }

    pub fn forget_seen(&self) {
        self.inner.seen.lock().unwrap().clear();
    }

    /// Misbehaves on `path` (exact, without query) until cleared.
    pub fn set_hostile(&self, path: &str, how: Hostile) {
        self.inner.hostile.lock().unwrap().insert(path.to_owned(), how);
    }

    pub fn clear_hostile(&self) {
        self.inner.hostile.lock().unwrap().clear();
    }

    /// The heartbeats received so far.
    pub fn progress(&self) -> Vec<Value> {
        self.inner.progress.lock().unwrap().clone()
    }

    /// The heartbeats that said the device waits for something of `class`.
    pub fn waiting(&self, class: &str) -> Vec<Value> {
        self.progress().into_iter().filter(|p| p["waiting"]["class"] == class).collect()
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
        if path == "/device/v1/progress" {
            let sent = axum::body::to_bytes(req.into_body(), 1 << 20).await.unwrap_or_default();
            if let Ok(v) = serde_json::from_slice::<Value>(&sent) {
                inner.progress.lock().unwrap().push(v);
            }
        }
        return respond(200, &[("content-type".into(), b"application/json".to_vec())], body);
    }
    let hostile = inner.hostile.lock().unwrap().get(&path).copied();
    let ranged = req.headers().contains_key("range");
    match hostile {
        Some(Hostile::Status(code)) => return respond(code, &[], Vec::new()),
        Some(Hostile::Endless) => {
            let chunk = bytes::Bytes::from(vec![b'{'; 64 * 1024]);
            let endless = futures_util::stream::repeat_with(move || Ok::<_, std::io::Error>(chunk.clone()));
            return Response::builder().status(200).body(Body::from_stream(endless)).unwrap();
        }
        Some(Hostile::Silent) => {
            let silence = futures_util::stream::pending::<Result<bytes::Bytes, std::io::Error>>();
            return Response::builder().status(200).body(Body::from_stream(silence)).unwrap();
        }
        _ => {}
    }
    let rewriting = path == "/device/v1/assignments" && inner.rewrite.lock().unwrap().is_some();
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap_or_default();
    if path == "/device/v1/progress"
        && let Ok(v) = serde_json::from_slice::<Value>(&body)
    {
        inner.progress.lock().unwrap().push(v);
    }
    let method = reqwest::Method::from_bytes(parts.method.as_str().as_bytes()).unwrap();
    let mut up = inner.http.request(method, format!("{}{path_and_query}", inner.upstream));
    for (k, v) in &parts.headers {
        let whole = matches!(hostile, Some(Hostile::WrongRange(_))) && k.as_str() == "range";
        if k.as_str() == "host" || (rewriting && k.as_str() == "if-none-match") || whole {
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
    match hostile {
        Some(Hostile::WrongRange(_)) if ranged && status == 200 => {
            let range = format!("bytes 0-{}/{}", bytes.len().saturating_sub(1), bytes.len());
            let mut headers = headers;
            headers.push(("content-range".into(), range.into_bytes()));
            return respond(206, &headers, bytes);
        }
        Some(Hostile::WrongRange(n)) if status == 200 => {
            // Announce the whole length, send part of it, close: an interrupted download.
            let total = bytes.len();
            bytes.truncate(n.min(total));
            let part = bytes::Bytes::from(bytes);
            // The part goes out (and is flushed) before the break, as on a link that drops.
            let cut = futures_util::stream::once(async {
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "cut off"))
            });
            let stream = futures_util::StreamExt::chain(futures_util::stream::iter([Ok(part)]), cut);
            let mut b = Response::builder().status(200).header("content-length", total.to_string());
            for (k, v) in &headers {
                b = b.header(k.as_str(), v.as_slice());
            }
            return b.body(Body::from_stream(stream)).unwrap();
        }
        _ => {}
    }
    if rewriting
        && status == 200
        && let Ok(mut doc) = serde_json::from_slice::<Value>(&bytes)
    {
        let changed = match inner.rewrite.lock().unwrap().as_ref() {
            Some(f) => f(&mut doc["signed"]),
            None => false,
        };
        if changed {
            let message = wavecast_core::canonical::to_vec(&doc["signed"]).unwrap();
            doc["signature"] = Value::String(hex::encode(inner.director.lock().unwrap().sign_bytes(&message)));
            bytes = serde_json::to_vec(&doc).unwrap();
        }
    }
    respond(status, &headers, bytes)
}
