//! The operator's dashboard: server-rendered pages at `/`, kept live by Server-Sent Events.
//!
//! Pages are HTML from maud templates (checked when the server compiles) with one stylesheet
//! and one script of our own in `assets/`: no build toolchain, no external fonts or CDNs, since
//! an operator's laptop and the server may both be offline. The pages work without the script;
//! it adds confirmations and live updates (`live`).
//!
//! Who may do what is the API's rule, checked the same way: a page reads as its session's
//! operator, and each action requires the permission its API route requires before it calls
//! the same function the API handler calls (`api::rollouts`). Sign-in (`session`) takes an API
//! token once and answers with a session cookie; every form carries a CSRF token derived from
//! the session's secret, and an action without it is refused before anything else is read.
//!
//! No page reads the whole fleet: the rollout page reads the rollout's row (its counts) and one
//! page of its devices through an index, the devices page one page of names, the audit page one
//! page of events.

mod actions;
mod live;
mod pages;
mod session;
mod view;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};

use crate::api::ApiError;
use crate::state::AppState;

/// Form bodies are a few fields.
const FORM_BODY_LIMIT: usize = 16 * 1024;

/// The dashboard's routes, merged beside the APIs by `api::router`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui/rollouts") }))
        .route("/ui", get(|| async { Redirect::to("/ui/rollouts") }))
        .route("/ui/sign-in", get(session::sign_in_page).post(session::sign_in))
        .route("/ui/sign-out", post(session::sign_out))
        .route("/ui/rollouts", get(pages::rollouts).post(actions::create_rollout))
        .route("/ui/rollouts/{id}", get(pages::rollout))
        .route("/ui/rollouts/{id}/approve", post(actions::approve))
        .route("/ui/rollouts/{id}/resume", post(actions::resume))
        .route("/ui/rollouts/{id}/abort", post(actions::abort))
        .route("/ui/devices", get(pages::devices))
        .route("/ui/devices/{name}", get(pages::device))
        .route("/ui/artifacts", get(pages::artifacts))
        .route("/ui/artifacts/{name}/{version}", get(pages::artifact))
        .route("/ui/audit", get(pages::audit))
        .route("/ui/events", get(live::events))
        .route("/ui/assets/{file}", get(asset))
        .layer(DefaultBodyLimit::max(FORM_BODY_LIMIT))
        .layer(axum::middleware::map_response(protect))
}

/// Why a dashboard request was not answered with its page.
#[derive(Debug, thiserror::Error)]
pub enum DashboardError {
    /// No live session: the browser is sent to sign in, and back to `next` afterwards.
    #[error("sign in to see {next}")]
    SignIn {
        /// The page asked for.
        next: String,
    },
    /// A form without the session's CSRF token: it did not come from a page this session was
    /// shown.
    #[error(
        "this form did not come from a dashboard page of your session (its CSRF token is missing or wrong); reload the page and try again"
    )]
    Csrf,
    /// What the API would have answered.
    #[error(transparent)]
    Api(#[from] ApiError),
}

impl From<crate::store::StoreError> for DashboardError {
    fn from(e: crate::store::StoreError) -> Self {
        DashboardError::Api(e.into())
    }
}

impl IntoResponse for DashboardError {
    fn into_response(self) -> Response {
        match self {
            DashboardError::SignIn { next } => {
                let next: String = url::form_urlencoded::byte_serialize(next.as_bytes()).collect();
                Redirect::to(&format!("/ui/sign-in?next={next}")).into_response()
            }
            DashboardError::Csrf => {
                let message = DashboardError::Csrf.to_string();
                (StatusCode::FORBIDDEN, view::error_page(StatusCode::FORBIDDEN, &message)).into_response()
            }
            DashboardError::Api(e) => {
                let status = e.status();
                (status, view::error_page(status, &e.public_message())).into_response()
            }
        }
    }
}

/// Static assets: compiled into the binary, so the server needs no files beside it.
async fn asset(axum::extract::Path(file): axum::extract::Path<String>) -> Response {
    let (body, content_type) = match file.as_str() {
        "dashboard.css" => (include_str!("assets/dashboard.css"), "text/css; charset=utf-8"),
        "dashboard.js" => (include_str!("assets/dashboard.js"), "text/javascript; charset=utf-8"),
        _ => return (StatusCode::NOT_FOUND, "no such asset\n").into_response(),
    };
    // Revalidated each time: a server upgrade must not leave an old script driving new pages.
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}

/// Headers that keep the pages from being framed, sniffed, or made to run a script or send a
/// form anywhere but this server, and keep the browser from storing a page an operator saw.
async fn protect(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; \
             form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    // Not `no-referrer`: under it Chromium sends `Origin: null` with the dashboard's own forms,
    // and sign-in could not tell them from a form on a sandboxed page elsewhere.
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}
