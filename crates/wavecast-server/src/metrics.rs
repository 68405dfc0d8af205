//! Prometheus counters, kept as atomics and rendered by hand: a few counters do not justify a
//! metrics framework in the dependency tree. Beside them, the seconds until each TUF role's
//! newest version expires, read from the database at each scrape so every replica reports the
//! same.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::http::StatusCode;
use wavecast_core::trust::MetadataRole;
use wavecast_tuf::repo::MetadataHead;

use crate::store::Backend;

/// Which API a request went to.
#[derive(Debug, Clone, Copy)]
pub enum Api {
    /// `/api/v1`.
    Operator,
    /// `/device/v1`.
    Device,
    /// Anything else (`/healthz`, `/metrics`, unknown paths).
    Other,
}

impl Api {
    /// Classifies a request path.
    pub fn of(path: &str) -> Self {
        if path.starts_with("/api/") {
            Api::Operator
        } else if path.starts_with("/device/") {
            Api::Device
        } else {
            Api::Other
        }
    }

    fn index(self) -> usize {
        match self {
            Api::Operator => 0,
            Api::Device => 1,
            Api::Other => 2,
        }
    }
}

const APIS: [&str; 3] = ["operator", "device", "other"];
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The server's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: [[AtomicU64; 5]; 3],
    published: AtomicU64,
}

impl Metrics {
    /// Counts one answered request.
    pub fn record(&self, api: Api, status: StatusCode) {
        let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        self.requests[api.index()][class].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one publish.
    pub fn published(&self) {
        self.published.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition; `metadata` is the newest version of each TUF role (none
    /// when it could not be read), `now_ms` the time its expiries count from.
    pub fn render(&self, backend: Backend, metadata: &[(MetadataRole, MetadataHead)], now_ms: i64) -> String {
        let mut out = String::new();
        out.push_str("# HELP wavecast_http_requests_total HTTP requests answered, by API and status class.\n");
        out.push_str("# TYPE wavecast_http_requests_total counter\n");
        for (a, api) in APIS.iter().enumerate() {
            for (c, class) in CLASSES.iter().enumerate() {
                let n = self.requests[a][c].load(Ordering::Relaxed);
                let _ = writeln!(out, "wavecast_http_requests_total{{api=\"{api}\",status=\"{class}\"}} {n}");
            }
        }
        out.push_str("# HELP wavecast_artifacts_published_total Artifact versions published through this server.\n");
        out.push_str("# TYPE wavecast_artifacts_published_total counter\n");
        let _ = writeln!(out, "wavecast_artifacts_published_total {}", self.published.load(Ordering::Relaxed));
        if !metadata.is_empty() {
            out.push_str(
                "# HELP wavecast_tuf_expires_in_seconds Seconds until the newest version of each TUF role expires \
                 (negative once expired); root and targets are renewed offline by people.\n",
            );
            out.push_str("# TYPE wavecast_tuf_expires_in_seconds gauge\n");
            for (role, head) in metadata {
                let left = (head.expires.as_millisecond() - now_ms).div_euclid(1000);
                let _ = writeln!(out, "wavecast_tuf_expires_in_seconds{{role=\"{role}\"}} {left}");
            }
            out.push_str("# HELP wavecast_tuf_version The newest version of each TUF role.\n");
            out.push_str("# TYPE wavecast_tuf_version gauge\n");
            for (role, head) in metadata {
                let _ = writeln!(out, "wavecast_tuf_version{{role=\"{role}\"}} {}", head.version);
            }
        }
        out.push_str("# HELP wavecast_info Static facts about this server.\n# TYPE wavecast_info gauge\n");
        let db = backend.name();
        let _ = writeln!(out, "wavecast_info{{version=\"{}\",database=\"{db}\"}} 1", env!("CARGO_PKG_VERSION"));
        out
    }
}
