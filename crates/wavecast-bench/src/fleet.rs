//! Lightweight simulated devices: enrolled through the device API like real agents, then
//! nothing but a credential and what the benchmark that drives them keeps.
//!
//! The server has no batch enrollment, so a large fleet enrolls over several keep-alive
//! connections at once; the rate is printed, since at 100,000 devices it is a figure of its own.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use hyper::header::HeaderValue;

use crate::http::{Conn, bearer};

/// An enrolled device.
pub struct Enrolled {
    /// The server's id for it.
    pub id: String,
    /// `Bearer <credential>`.
    pub auth: HeaderValue,
}

/// How long enrolling took.
pub struct Enrollment {
    pub devices: Vec<Enrolled>,
    pub took: Duration,
    pub connections: usize,
}

impl Enrollment {
    /// One line for the report.
    pub fn describe(&self) -> String {
        format!(
            "{} devices enrolled through the API in {:.1} s ({:.0}/s over {} connections)",
            self.devices.len(),
            self.took.as_secs_f64(),
            self.devices.len() as f64 / self.took.as_secs_f64(),
            self.connections
        )
    }
}

/// Enrolls `n` devices named `<prefix>000001`… with enrollment `token`, `connections` at a time.
pub async fn enroll(
    addr: std::net::SocketAddr,
    token: &str,
    prefix: &str,
    n: u32,
    connections: usize,
) -> anyhow::Result<Enrollment> {
    let next = Arc::new(AtomicU32::new(0));
    let token: Arc<str> = token.into();
    let prefix: Arc<str> = prefix.into();
    let started = Instant::now();
    let workers: Vec<_> = (0..connections.max(1))
        .map(|_| {
            let (next, token, prefix) = (next.clone(), token.clone(), prefix.clone());
            tokio::spawn(async move {
                let mut conn = Conn::new(addr);
                let mut out = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return anyhow::Ok(out);
                    }
                    let name = format!("{prefix}{:06}", i + 1);
                    out.push((i, enroll_one(&mut conn, &token, &name).await?));
                    if n >= 10_000 && (i + 1) % (n / 10) == 0 {
                        println!("  … {} of {n} enrolled after {:.0} s", i + 1, started.elapsed().as_secs_f64());
                    }
                }
            })
        })
        .collect();
    let mut all: Vec<Option<Enrolled>> = (0..n).map(|_| None).collect();
    for w in workers {
        for (i, d) in w.await?? {
            all[i as usize] = Some(d);
        }
    }
    let devices = all.into_iter().collect::<Option<Vec<_>>>().context("a device was not enrolled")?;
    Ok(Enrollment { devices, took: started.elapsed(), connections: connections.max(1) })
}

/// One enrollment; a busy server's 5xx and a dropped connection are retried a few times.
async fn enroll_one(conn: &mut Conn, token: &str, name: &str) -> anyhow::Result<Enrolled> {
    let body = serde_json::json!({ "token": token, "name": name, "hardware": "bench" });
    let mut last = String::new();
    for attempt in 0..5u64 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
        }
        match conn.post_json("/device/v1/enroll", None, &body).await {
            Ok(a) if a.status.is_success() => {
                let v: serde_json::Value = serde_json::from_slice(&a.body)?;
                let (Some(id), Some(credential)) = (v["device_id"].as_str(), v["credential"].as_str()) else {
                    bail!("enrolling {name}: the answer has no device_id or credential: {v}");
                };
                return Ok(Enrolled { id: id.to_owned(), auth: bearer(credential)? });
            }
            Ok(a) if a.status.is_server_error() => last = format!("{}: {}", a.status, String::from_utf8_lossy(&a.body)),
            Ok(a) => bail!("enrolling {name}: {}: {}", a.status, String::from_utf8_lossy(&a.body)),
            Err(e) => last = format!("{e:#}"),
        }
    }
    bail!("enrolling {name} failed five times; last: {last}")
}
