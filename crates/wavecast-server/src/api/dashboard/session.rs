//! Signing in and out of the dashboard, the session behind each page, and its CSRF token.
//!
//! Sign-in takes an API token in a form body (never a URL), under the same budget of failed
//! authentications per client address as the API. The browser then holds only a random
//! session secret in a cookie that scripts cannot read (`HttpOnly`), that no other site's page
//! sends (`SameSite=Strict`), that travels only over TLS when the server terminates TLS
//! (`Secure`), and that ends after [`SESSION_LIFETIME_MS`]. The database keeps the secret's
//! hash and the token it stands for, so every replica knows the session, and revoking the
//! token ends it on the next request.

use axum::Form;
use axum::extract::{FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use serde::Deserialize;
use wavecast_core::Sha256Digest;
use wavecast_os::clock::now_ms;

use super::{DashboardError, view};
use crate::api::{ApiError, Operator, operator_by_token, under_failure_budget};
use crate::state::{AppState, Transport};

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "wavecast_session";

/// Twelve hours: a working day, after which the operator signs in again.
pub const SESSION_LIFETIME_MS: i64 = 12 * 60 * 60 * 1000;

/// A signed-in operator viewing the dashboard, and the CSRF token their forms carry.
#[derive(Debug, Clone)]
pub struct Viewer {
    /// Whom the session's token names, with its role.
    pub op: Operator,
    /// The token every form of this session carries (see [`csrf_token`]).
    pub csrf: String,
}

impl Viewer {
    /// Refuses a form whose CSRF token is not this session's. Compared in constant time.
    pub fn check_csrf(&self, given: Option<&str>) -> Result<(), DashboardError> {
        let given = given.unwrap_or("");
        aws_lc_rs::constant_time::verify_slices_are_equal(given.as_bytes(), self.csrf.as_bytes())
            .map_err(|_| DashboardError::Csrf)
    }
}

/// The CSRF token of the session with this secret: a hash of it under a label of its own, so
/// the page can show it without revealing the secret, and no server state is needed for it.
fn csrf_token(secret: &str) -> String {
    Sha256Digest::of(format!("wavecast dashboard CSRF token\n{secret}").as_bytes()).to_hex()
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

impl FromRequestParts<AppState> for Viewer {
    type Rejection = DashboardError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, DashboardError> {
        // After signing in, the browser comes back to the page it asked for; an action's URL
        // answers only a POST, so a form sent with an ended session leads back to the rollouts.
        let next = match parts.method {
            axum::http::Method::GET => parts.uri.path_and_query().map_or("/ui/rollouts", |p| p.as_str()).to_owned(),
            _ => "/ui/rollouts".to_owned(),
        };
        let sign_in = || DashboardError::SignIn { next: next.clone() };
        let Some(secret) = cookie(&parts.headers, SESSION_COOKIE) else { return Err(sign_in()) };
        let hash = Sha256Digest::of(secret.as_bytes());
        let token = state.store().session_token(&hash, now_ms()).await?.ok_or_else(sign_in)?;
        // A revoked token's sessions end with it: the browser is asked to sign in again.
        let op = Operator::from_token(token).map_err(|_| sign_in())?;
        Ok(Viewer { op, csrf: csrf_token(secret) })
    }
}

/// Where sign-in sends the browser: a dashboard page, never another site.
fn safe_next(next: Option<&str>) -> &str {
    match next {
        Some(n)
            if n.starts_with("/ui/")
                && !n.contains("//")
                && !n.contains('\\')
                && n.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            n
        }
        _ => "/ui/rollouts",
    }
}

#[derive(Debug, Deserialize)]
pub struct SignInQuery {
    next: Option<String>,
}

/// The sign-in form.
pub async fn sign_in_page(Query(q): Query<SignInQuery>) -> Html<String> {
    view::sign_in(safe_next(q.next.as_deref()), None)
}

#[derive(Deserialize)]
pub struct SignInForm {
    token: String,
    next: Option<String>,
}

// The token must never reach a log line, even through a derived Debug.
impl std::fmt::Debug for SignInForm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignInForm").field("next", &self.next).finish_non_exhaustive()
    }
}

/// Checks the token and starts a session. A wrong token shows the form again with why; the
/// token itself is never written back into the page.
pub async fn sign_in(State(state): State<AppState>, parts: Parts, Form(form): Form<SignInForm>) -> Response {
    let next = safe_next(form.next.as_deref()).to_owned();
    if !same_origin(&parts.headers) {
        let message = "this sign-in form was sent from another site; open the dashboard and sign in there";
        return (StatusCode::FORBIDDEN, view::sign_in(&next, Some(message))).into_response();
    }
    let op = match under_failure_budget(&parts, &state, operator_by_token(&state, form.token.trim())).await {
        Ok(op) => op,
        Err(e) => {
            let status = e.status();
            return (status, view::sign_in(&next, Some(&e.public_message()))).into_response();
        }
    };
    match start_session(&state, &op).await {
        Ok(cookie) => {
            tracing::info!(token = %op.name, role = %op.role, "dashboard sign-in");
            ([(header::SET_COOKIE, cookie)], Redirect::to(&next)).into_response()
        }
        Err(e) => DashboardError::Api(e).into_response(),
    }
}

/// Stores a new session for `op` and returns its `Set-Cookie` value.
async fn start_session(state: &AppState, op: &Operator) -> Result<String, ApiError> {
    let secret = hex::encode(crate::api::random()?);
    let now = now_ms();
    state
        .store()
        .create_session(&Sha256Digest::of(secret.as_bytes()), &op.token_id, now, now + SESSION_LIFETIME_MS)
        .await?;
    Ok(set_cookie(state, &secret, SESSION_LIFETIME_MS / 1000))
}

fn set_cookie(state: &AppState, value: &str, max_age_secs: i64) -> String {
    let secure = match state.settings().transport {
        Transport::Tls => "; Secure",
        Transport::PlainHttp => "",
    };
    format!("{SESSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age_secs}{secure}")
}

/// Whether a sign-in form came from this server's own page. Browsers say so in
/// `Sec-Fetch-Site`, which a page cannot set and which holds behind a proxy that rewrites
/// `Host`; a browser without it still sends `Origin`, compared with `Host`. A client that sends
/// neither (a script, curl) is no browser being tricked, and is let through.
fn same_origin(headers: &HeaderMap) -> bool {
    let header = |name| headers.get(name).and_then(|v: &axum::http::HeaderValue| v.to_str().ok());
    if let Some(site) = header(axum::http::HeaderName::from_static("sec-fetch-site")) {
        // "none": typed or bookmarked by the user; "same-origin": this server's page.
        return matches!(site, "same-origin" | "none");
    }
    let Some(origin) = header(header::ORIGIN) else { return true };
    let Some(host) = header(header::HOST) else { return false };
    origin.split_once("://").is_some_and(|(_, rest)| rest == host)
}

#[derive(Debug, Deserialize)]
pub struct SignOutForm {
    csrf: Option<String>,
}

/// Ends the session and clears the cookie.
pub async fn sign_out(
    State(state): State<AppState>,
    viewer: Viewer,
    headers: HeaderMap,
    Form(form): Form<SignOutForm>,
) -> Result<Response, DashboardError> {
    viewer.check_csrf(form.csrf.as_deref())?;
    if let Some(secret) = cookie(&headers, SESSION_COOKIE) {
        state.store().end_session(&Sha256Digest::of(secret.as_bytes())).await?;
    }
    Ok(([(header::SET_COOKIE, set_cookie(&state, "", 0))], Redirect::to("/ui/sign-in")).into_response())
}
