//! A fresh installation with a server state on a chosen backend, and request helpers.

use std::net::SocketAddr;
use std::num::NonZeroU64;

use aws_lc_rs::rand::SystemRandom;
use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt as _;
use tough::editor::signed::SignedRole;
use tough::schema::{KeyHolder, Root, Signed, Targets};
use tower::ServiceExt as _;
use wavecast_core::rollout::GateApproval;
use wavecast_core::{Sha256Digest, TargetName};
use wavecast_server::install::{InitReport, Layout};
use wavecast_server::state::AppState;
use wavecast_server::{ServerConfig, api};
use wavecast_test_support::{MultipartForm, PgDatabase};
use wavecast_tuf::keys::SigningKey;
use wavecast_tuf::publish::{NewTarget, sign_new_targets};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

pub struct Env {
    pub _dir: tempfile::TempDir,
    pub report: InitReport,
    pub config: ServerConfig,
    pub state: AppState,
    pub router: Router,
    pub admin: String,
    pub _pg: Option<PgDatabase>,
}

/// A dashboard session, as a browser holds it.
pub struct Session {
    /// `wavecast_session=…`, for the `Cookie` header.
    pub cookie: String,
    /// The CSRF token its pages carry.
    pub csrf: String,
    /// The whole `Set-Cookie` the sign-in answered.
    pub set_cookie: String,
}

/// The content type of a form post.
pub fn form_header() -> (&'static str, String) {
    ("content-type", "application/x-www-form-urlencoded".to_owned())
}

pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// The error message of a JSON error body.
    pub fn message(&self) -> String {
        self.json()["error"]["message"].as_str().unwrap_or_default().to_owned()
    }
}

impl Env {
    pub async fn new(db: Db) -> Self {
        Self::with(db, |_| {}).await
    }

    /// A fresh installation whose server settings `adjust` changes before it opens.
    pub async fn with(db: Db, adjust: impl FnOnce(&mut ServerConfig)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let install = dir.path().join("install");
        let report = wavecast_server::install::init(&install).await.unwrap();
        let pg = match db {
            Db::Sqlite => None,
            Db::Postgres => Some(PgDatabase::create().await),
        };
        let mut config = ServerConfig::new(
            install,
            "127.0.0.1:0".parse().unwrap(),
            pg.as_ref().map(|p| p.url().to_owned()),
            GateApproval::AnyApprover,
        )
        .unwrap();
        adjust(&mut config);
        let state = wavecast_server::open(&config).await.unwrap();
        let router = api::router(state.clone());
        let admin = std::fs::read_to_string(&report.admin_token_file).unwrap().trim().to_owned();
        Self { _dir: dir, report, config, state, router, admin, _pg: pg }
    }

    /// Enrolls a device into an existing group; returns its credential and id.
    pub async fn enroll(&self, group: &str, name: &str) -> (String, String) {
        let t = self
            .post_json("/api/v1/enrollment-tokens", Some(&self.admin), serde_json::json!({ "group": group }))
            .await
            .json();
        let d = self
            .post_json(
                "/device/v1/enroll",
                None,
                serde_json::json!({ "token": t["token"], "name": name, "hardware": "hw" }),
            )
            .await
            .json();
        (d["credential"].as_str().unwrap().to_owned(), d["device_id"].as_str().unwrap().to_owned())
    }

    /// Device `cred` reports `state` (with `reason`) in `rollout` under report id `id`.
    pub async fn report(&self, cred: &str, rollout: &str, id: &str, state: &str, reason: Option<&str>) {
        let body = serde_json::json!({ "reports": [{
            "id": id, "rollout_id": rollout, "artifact": "m", "version": "1.0.0", "state": state, "reason": reason,
            "at_ms": 1
        }], "active": [] });
        let r = self.post_json("/device/v1/reports", Some(cred), body).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.message());
    }

    /// Closes the database and opens everything again from the same data dir and database.
    pub async fn restart(mut self) -> Self {
        self.state.store().close().await;
        self.state = wavecast_server::open(&self.config).await.unwrap();
        self.router = api::router(self.state.clone());
        self
    }

    pub fn layout(&self) -> Layout {
        Layout::new(&self.report.data_dir)
    }

    pub async fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, String)],
        body: Body,
    ) -> Resp {
        self.request_via(None, method, path, token, headers, body).await
    }

    /// A request as if it came over a connection from `peer` (the network's requests carry
    /// their peer address; in-process ones have none unless given).
    pub async fn request_from(
        &self,
        peer: SocketAddr,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> Resp {
        let (headers, body) = match body {
            Some(json) => (vec![("content-type", "application/json".to_owned())], Body::from(json.to_string())),
            None => (vec![], Body::empty()),
        };
        self.request_via(Some(peer), method, path, token, &headers, body).await
    }

    /// A request from `peer` (if any) with any headers.
    pub async fn request_via(
        &self,
        peer: Option<SocketAddr>,
        method: Method,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, String)],
        body: Body,
    ) -> Resp {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(peer) = peer {
            req = req.extension(axum::extract::ConnectInfo(peer));
        }
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let resp = self.router.clone().oneshot(req.body(body).unwrap()).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.unwrap().to_bytes().to_vec();
        Resp { status, headers, body }
    }

    /// Signs in to the dashboard with `token` as a browser would, and returns the session.
    pub async fn sign_in(&self, token: &str) -> Session {
        let form = format!("token={}&next=%2Fui%2Frollouts", token);
        let r = self.request(Method::POST, "/ui/sign-in", None, &[form_header()], Body::from(form)).await;
        assert_eq!(r.status, StatusCode::SEE_OTHER, "sign-in: {}", String::from_utf8_lossy(&r.body));
        let set = r.headers.get("set-cookie").expect("sign-in sets a cookie").to_str().unwrap().to_owned();
        let cookie = set.split(';').next().unwrap().to_owned();
        let page = self.request(Method::GET, "/ui/rollouts", None, &[("cookie", cookie.clone())], Body::empty()).await;
        assert_eq!(page.status, StatusCode::OK);
        let html = String::from_utf8(page.body).unwrap();
        let csrf = html
            .split("name=\"csrf\" value=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .expect("every page carries the CSRF token in its sign-out form")
            .to_owned();
        Session { cookie, csrf, set_cookie: set }
    }

    /// A dashboard request in `session` (if any); a POST sends `form` as a form body.
    pub async fn page(&self, method: Method, path: &str, session: Option<&Session>, form: &str) -> Resp {
        let mut headers = vec![form_header()];
        if let Some(s) = session {
            headers.push(("cookie", s.cookie.clone()));
        }
        self.request(method, path, None, &headers, Body::from(form.to_owned())).await
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.request(Method::GET, path, Some(&self.admin), &[], Body::empty()).await
    }

    pub async fn post_json(&self, path: &str, token: Option<&str>, body: serde_json::Value) -> Resp {
        self.request(
            Method::POST,
            path,
            token,
            &[("content-type", "application/json".into())],
            Body::from(serde_json::to_vec(&body).unwrap()),
        )
        .await
    }

    pub async fn root(&self) -> Signed<Root> {
        wavecast_tuf::root::parse_root(&std::fs::read(&self.report.root_json).unwrap()).unwrap()
    }

    pub async fn current_targets(&self) -> Signed<Targets> {
        serde_json::from_slice(&self.get("/api/v1/tuf/targets.json").await.body).unwrap()
    }

    pub fn publisher_key(&self) -> SigningKey {
        SigningKey::load(&self.report.publisher_key).unwrap()
    }

    /// A correctly signed targets file adding `name@version` for `blob`.
    pub async fn sign_for(&self, target: &str, blob: &[u8]) -> Vec<u8> {
        let new = NewTarget {
            target: TargetName::parse(target).unwrap(),
            length: blob.len() as u64,
            sha256: Sha256Digest::of(blob),
            hardware: None,
            golden: None,
        };
        let expires = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24);
        sign_new_targets(&self.root().await.signed, &self.current_targets().await, &new, &self.publisher_key(), expires)
            .await
            .unwrap()
            .buffer()
            .clone()
    }

    /// Publishes through the API as the publisher CLI would: multipart `targets` then `blob`.
    pub async fn publish_raw(&self, targets: &[u8], blob: &[u8]) -> Resp {
        let form = MultipartForm::publish(targets, blob);
        self.request(
            Method::POST,
            "/api/v1/artifacts",
            Some(&self.admin),
            &[("content-type", form.content_type)],
            Body::from(form.body),
        )
        .await
    }

    pub async fn publish(&self, target: &str, blob: &[u8]) -> Resp {
        let targets = self.sign_for(target, blob).await;
        self.publish_raw(&targets, blob).await
    }

    /// Everything a refused request must leave untouched.
    pub async fn snapshot(&self) -> (serde_json::Value, i64, usize, Vec<String>) {
        let artifacts = self.get("/api/v1/artifacts").await.json();
        let targets_version = self.current_targets().await.signed.version.get() as i64;
        let audit = self.get("/api/v1/audit").await.json().as_array().unwrap().len();
        let mut blobs: Vec<String> = walk(&self.layout().blobs_dir());
        blobs.sort();
        (artifacts, targets_version, audit, blobs)
    }
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p.display().to_string());
            }
        }
    }
    out
}

/// Signs arbitrary targets metadata with `key`, with `root` deciding which keys count.
pub async fn sign_raw(root: &Root, targets: Targets, key: &SigningKey) -> Vec<u8> {
    SignedRole::new(targets, &KeyHolder::Root(root.clone()), &[key.source()], &SystemRandom::new())
        .await
        .unwrap()
        .buffer()
        .clone()
}

/// The next version of `current` with `edit` applied.
pub fn next_targets(current: &Signed<Targets>, edit: impl FnOnce(&mut Targets)) -> Targets {
    let mut t = current.signed.clone();
    t.version = t.version.checked_add(1).unwrap_or(NonZeroU64::MAX);
    t.expires = jiff::Timestamp::from_second(jiff::Timestamp::now().as_second() + 86_400).unwrap();
    edit(&mut t);
    t
}
