//! Heartbeats: while an install takes long (a big download, a problem waited out, a probe's
//! warm-up), the device tells the server every `heartbeat_ms` that it is alive and how far it
//! got, so the server tells progress from silence; the answer says whether the assignment still
//! stands.
//!
//! A heartbeat is ephemeral: never journaled, never put in the outbox, harmless to lose. The
//! device's state on the server changes only by reports. A server that does not know heartbeats
//! (an older one answers 404) is simply not told; only an explicit `proceed: false` stops work.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use wavecast_core::progress::{DEFAULT_HEARTBEAT_MS, MIN_HEARTBEAT_MS, Progress, ProgressAck};
use wavecast_os::error::chain;

use crate::net;

/// The largest answer to a heartbeat the agent reads.
const MAX_ACK_BYTES: u64 = 64 * 1024;

/// Sends heartbeats; cheap to clone (one shared interval and pacing for the whole agent).
#[derive(Debug, Clone)]
pub struct Heartbeat {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    http: reqwest::Client,
    url: Option<reqwest::Url>,
    credential: String,
    window: Duration,
    /// The interval the server asked for last, within bounds.
    interval_ms: AtomicU64,
    /// Whether the server has said an interval yet.
    heard: AtomicBool,
    /// When the last heartbeat about each artifact went out.
    last: Mutex<HashMap<String, Instant>>,
}

type Sending = Pin<Box<dyn Future<Output = Option<ProgressAck>> + Send>>;

async fn next_ack(sending: &mut Option<Sending>) -> Option<ProgressAck> {
    match sending {
        Some(f) => f.as_mut().await,
        None => std::future::pending().await,
    }
}

impl Heartbeat {
    /// Heartbeats to `server`'s progress endpoint with the device `credential`; `window` bounds
    /// each exchange (headers, silence).
    pub fn new(http: reqwest::Client, server: &reqwest::Url, credential: String, window: Duration) -> Self {
        let url = server.join("device/v1/progress").ok();
        Self {
            inner: Arc::new(Inner {
                http,
                url,
                credential,
                window,
                interval_ms: AtomicU64::new(DEFAULT_HEARTBEAT_MS),
                heard: AtomicBool::new(false),
                last: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// How often the server wants heartbeats: what it said last (within 1 s and 30 s), 30 s
    /// until it has said.
    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.inner.interval_ms.load(Ordering::Relaxed))
    }

    /// How long to wait before the first heartbeat of a long step: the interval once the server
    /// has said one; until then the shortest, so the device learns the interval before the
    /// server's timeout can run out on a slow step.
    fn first_delay(&self) -> Duration {
        if self.inner.heard.load(Ordering::Relaxed) { self.interval() } else { Duration::from_millis(MIN_HEARTBEAT_MS) }
    }

    /// Whether a heartbeat about `artifact` is due (none sent yet, or one interval since the last).
    pub fn due(&self, artifact: &str) -> bool {
        let last = self.inner.last.lock().unwrap_or_else(|e| e.into_inner());
        last.get(artifact).is_none_or(|t| t.elapsed() >= self.interval())
    }

    /// When the next heartbeat about any of `artifacts` is due.
    pub fn next_due<'a>(&self, artifacts: impl IntoIterator<Item = &'a str>) -> Option<Instant> {
        let last = self.inner.last.lock().unwrap_or_else(|e| e.into_inner());
        artifacts.into_iter().map(|a| last.get(a).map_or_else(Instant::now, |t| *t + self.interval())).min()
    }

    /// Sends `progress`, unless one about the same artifact went out less than 1 s ago (never
    /// more often than that, whatever the server says); returns the server's answer, if it
    /// gave one.
    pub async fn send(&self, progress: Progress) -> Option<ProgressAck> {
        {
            let mut last = self.inner.last.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            if last.get(&progress.artifact).is_some_and(|t| now < *t + Duration::from_millis(MIN_HEARTBEAT_MS)) {
                return None;
            }
            last.insert(progress.artifact.clone(), now);
        }
        let url = self.inner.url.as_ref()?;
        let req = self.inner.http.post(url.clone()).bearer_auth(&self.inner.credential).json(&progress);
        match net::exchange(req, url, MAX_ACK_BYTES, self.inner.window).await {
            Ok((status, body)) if status.is_success() => match serde_json::from_slice::<ProgressAck>(&body) {
                Ok(ack) => {
                    let ms = ack.heartbeat_ms.clamp(MIN_HEARTBEAT_MS, DEFAULT_HEARTBEAT_MS);
                    self.inner.interval_ms.store(ms, Ordering::Relaxed);
                    self.inner.heard.store(true, Ordering::Relaxed);
                    Some(ack)
                }
                Err(e) => {
                    tracing::debug!(error = %e, "unreadable heartbeat answer; ignored");
                    None
                }
            },
            Ok((status, _)) => {
                tracing::debug!(%status, "the server did not take the heartbeat");
                None
            }
            Err(e) => {
                tracing::debug!(error = %chain(&e), "heartbeat not delivered");
                None
            }
        }
    }

    /// Runs `work` to its end while heart-beating: a heartbeat built by `progress` every
    /// interval, each answer handed to `on_ack`. Heartbeats go out beside the work, never in
    /// its way: a slow answer does not hold a download back.
    pub async fn during<F: Future>(
        &self,
        work: F,
        mut progress: impl FnMut() -> Progress,
        mut on_ack: impl FnMut(&ProgressAck),
    ) -> F::Output {
        enum Event<T> {
            Done(T),
            Answered(Option<ProgressAck>),
            Due,
        }
        tokio::pin!(work);
        let mut next = Instant::now() + self.first_delay();
        let mut sending: Option<Sending> = None;
        loop {
            let event = tokio::select! {
                out = &mut work => Event::Done(out),
                ack = next_ack(&mut sending) => Event::Answered(ack),
                () = tokio::time::sleep_until(next), if sending.is_none() => Event::Due,
            };
            match event {
                Event::Done(out) => return out,
                Event::Answered(ack) => {
                    sending = None;
                    if let Some(ack) = ack {
                        on_ack(&ack);
                    }
                    next = Instant::now() + self.interval();
                }
                Event::Due => {
                    let (hb, p) = (self.clone(), progress());
                    sending = Some(Box::pin(async move { hb.send(p).await }));
                }
            }
        }
    }
}

/// A download rate from two readings of bytes done.
#[derive(Debug)]
pub struct Rate {
    at: Instant,
    bytes: u64,
}

impl Rate {
    /// Starts measuring from `bytes` done now.
    pub fn new(bytes: u64) -> Self {
        Self { at: Instant::now(), bytes }
    }

    /// Bytes per second since the last reading; takes `bytes` as the new reading.
    pub fn update(&mut self, bytes: u64) -> u64 {
        let secs = self.at.elapsed().as_secs_f64();
        let rate = if secs > 0.0 { (bytes.saturating_sub(self.bytes) as f64 / secs) as u64 } else { 0 };
        *self = Self::new(bytes);
        rate
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
    use wavecast_core::assignment::DeviceState;

    use super::*;

    fn progress(artifact: &str, done: u64) -> Progress {
        Progress {
            rollout_id: "r-1".into(),
            artifact: artifact.into(),
            version: "1.0.0".into(),
            state: DeviceState::Downloading,
            bytes_done: done,
            bytes_total: 100,
            bytes_per_sec: 0,
            waiting: None,
        }
    }

    /// A plain HTTP/1.1 server answering every request with `status` and `body` (keeping the
    /// connection), and keeping the heartbeats it received.
    async fn server(status: &'static str, body: String) -> (reqwest::Url, Arc<Mutex<Vec<Progress>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = reqwest::Url::parse(&format!("http://{}/", l.local_addr().unwrap())).unwrap();
        let kept = seen.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let (seen, body) = (kept.clone(), body.clone());
                tokio::spawn(async move {
                    let mut s = tokio::io::BufReader::new(s);
                    loop {
                        let mut length = 0usize;
                        loop {
                            let mut line = String::new();
                            if s.read_line(&mut line).await.unwrap_or(0) == 0 {
                                return;
                            }
                            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                                length = v.trim().parse().unwrap_or(0);
                            }
                            if line == "\r\n" {
                                break;
                            }
                        }
                        let mut sent = vec![0u8; length];
                        if s.read_exact(&mut sent).await.is_err() {
                            return;
                        }
                        if let Ok(p) = serde_json::from_slice(&sent) {
                            seen.lock().unwrap().push(p);
                        }
                        let answer = format!("HTTP/1.1 {status}\r\ncontent-length: {}\r\n\r\n{body}", body.len());
                        if s.get_mut().write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (url, seen)
    }

    async fn acking(ack: ProgressAck) -> (reqwest::Url, Arc<Mutex<Vec<Progress>>>) {
        server("200 OK", serde_json::to_string(&ack).unwrap()).await
    }

    fn heartbeat(url: &reqwest::Url) -> Heartbeat {
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        Heartbeat::new(http, url, "wcd_x".into(), Duration::from_secs(5))
    }

    #[tokio::test]
    async fn the_servers_interval_is_kept_within_bounds_and_never_beaten() {
        let cases = [(10, MIN_HEARTBEAT_MS), (2_500, 2_500), (3_600_000, DEFAULT_HEARTBEAT_MS)];
        for (asked, kept) in cases {
            let (url, seen) = acking(ProgressAck { proceed: true, heartbeat_ms: asked }).await;
            let hb = heartbeat(&url);
            assert_eq!(hb.interval(), Duration::from_millis(DEFAULT_HEARTBEAT_MS), "30 s until told");
            assert!(hb.send(progress("m", 1)).await.is_some());
            assert_eq!(hb.interval(), Duration::from_millis(kept), "asked {asked} ms");
            // At once again: not sent, whatever the server asked.
            assert!(hb.send(progress("m", 2)).await.is_none());
            // Another artifact has its own pace.
            assert!(hb.send(progress("other", 2)).await.is_some());
            assert_eq!(seen.lock().unwrap().len(), 2);
        }
    }

    #[tokio::test]
    async fn a_server_without_heartbeats_stops_nothing() {
        let (url, seen) = server("404 Not Found", String::new()).await;
        let hb = heartbeat(&url);
        assert_eq!(hb.send(progress("m", 1)).await, None, "a 404 is no answer, and no stop");
        assert_eq!(seen.lock().unwrap().len(), 1, "the heartbeat was sent");
        assert_eq!(hb.interval(), Duration::from_millis(DEFAULT_HEARTBEAT_MS));
    }

    #[tokio::test]
    async fn work_runs_to_its_end_while_answers_are_handed_over() {
        let (url, seen) = acking(ProgressAck { proceed: false, heartbeat_ms: 1_000 }).await;
        let hb = heartbeat(&url);
        let built = AtomicUsize::new(0);
        let mut answers = Vec::new();
        let out = hb
            .during(
                async {
                    tokio::time::sleep(Duration::from_millis(2_600)).await;
                    7
                },
                || progress("m", built.fetch_add(1, Ordering::Relaxed) as u64),
                |ack| answers.push(ack.proceed),
            )
            .await;
        assert_eq!(out, 7);
        // One after the first second, then one a second: at least one, never more than three.
        let n = seen.lock().unwrap().len();
        assert!((1..=3).contains(&n), "{n} heartbeats in 2.6 s at one a second");
        assert_eq!(answers.len(), n);
        assert!(answers.iter().all(|p| !p));
    }
}
