//! Prometheus counters, kept as atomics and rendered by hand: a few counters do not justify a
//! metrics framework in the dependency tree.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::http::StatusCode;

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

    /// The Prometheus text exposition.
    pub fn render(&self, backend: Backend) -> String {
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
        out.push_str("# HELP wavecast_info Static facts about this server.\n# TYPE wavecast_info gauge\n");
        let db = match backend {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        };
        let _ = writeln!(out, "wavecast_info{{version=\"{}\",database=\"{db}\"}} 1", env!("CARGO_PKG_VERSION"));
        out
    }
}
