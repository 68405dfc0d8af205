//! Live updates: a Server-Sent Events stream that tells a page when to fetch itself again.
//!
//! The stream polls the audit log's head, one row read per second per open page: every change
//! an operator cares about (a wave opening, a device failing, an approval) is written with an
//! audit event in the same transaction, and every replica reads the same head, so a page
//! served by any replica sees a change made through any other within a second. A page with
//! devices at work also asks for a refresh every few seconds (`progress=1`), because download
//! progress is a heartbeat, not an audit event. The events carry no data: the page fetches
//! itself with the viewer's session, so the stream can never show more than the page would.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse as _, Response};
use futures_util::Stream;
use serde::Deserialize;

use super::DashboardError;
use super::session::Viewer;
use crate::state::AppState;

/// How often the audit head is read.
const POLL: Duration = Duration::from_secs(1);
/// How often a page showing progress is refreshed without a change.
const PROGRESS_EVERY: Duration = Duration::from_secs(3);
/// A stream ends after this long, and the browser reconnects with its session checked again:
/// a session that ended or a token revoked stops feeding the page within this time.
const STREAM_LIFETIME: Duration = Duration::from_secs(300);

#[derive(Debug, Deserialize)]
pub struct LiveQuery {
    /// `1` to be told every few seconds even without a change.
    progress: Option<u8>,
}

struct Watch {
    state: AppState,
    head: Option<i64>,
    last_sent: Instant,
    ends: Instant,
    progress: bool,
}

/// The event stream for one open page. Without a live session it is a 401, not the sign-in
/// redirect pages get: `EventSource` would follow that to HTML and fail without saying why; on
/// a 401 it stops, and the page's script reloads the page, which then goes to sign in.
pub async fn events(
    State(state): State<AppState>,
    viewer: Result<Viewer, DashboardError>,
    Query(q): Query<LiveQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, Response> {
    match viewer {
        Ok(_) => {}
        Err(DashboardError::SignIn { .. }) => {
            return Err((StatusCode::UNAUTHORIZED, "the dashboard session ended; sign in again\n").into_response());
        }
        Err(other) => return Err(other.into_response()),
    }
    let now = Instant::now();
    let head = state.store().audit_size().await.ok();
    let watch = Watch { state, head, last_sent: now, ends: now + STREAM_LIFETIME, progress: q.progress == Some(1) };
    let stream = futures_util::stream::unfold(watch, |mut w| async move {
        loop {
            // A stopping server ends its streams rather than wait out its drain for them; the
            // pages reconnect to whichever replica answers.
            if Instant::now() >= w.ends || w.state.store().checkin().closing() {
                return None;
            }
            tokio::time::sleep(POLL).await;
            // A failed read is no change: the next second reads again, and the keep-alive holds
            // the connection meanwhile.
            let head = w.state.store().audit_size().await.ok();
            if head.is_some() && head != w.head {
                w.head = head;
                w.last_sent = Instant::now();
                let event = Event::default().event("change").data(head.unwrap_or(0).to_string());
                return Some((Ok(event), w));
            }
            if w.progress && w.last_sent.elapsed() >= PROGRESS_EVERY {
                w.last_sent = Instant::now();
                return Some((Ok(Event::default().event("progress").data("")), w));
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}
