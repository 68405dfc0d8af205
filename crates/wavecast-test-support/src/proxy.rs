//! A throttling TCP proxy: a slow, cuttable link between a device and the server, in-process;
//! and a round-robin balancer in front of several servers.
//!
//! Edge links are slow and models are big; tests need downloads that take longer than a device
//! timeout without waiting for real cellular links. The proxy forwards every connection to one
//! upstream address and meters the server→client direction through one token bucket shared by
//! all connections, as one physical link would be. The rate can change while it runs; a rate of
//! zero holds every byte back (the link is cut but connections stay open, as on a dead radio).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio::time::Instant;

/// A running proxy; it stops when dropped.
#[derive(Debug)]
pub struct ThrottledProxy {
    addr: SocketAddr,
    link: Arc<Link>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Debug)]
struct Link {
    /// Server→client: 0 holds everything back.
    down: Bucket,
    /// Client→server: unmetered ([`u64::MAX`]) unless a test slows uploads.
    up: Bucket,
    /// Bytes delivered to clients so far.
    delivered: AtomicU64,
    /// Refusing: new connections are closed at once and open ones broken off.
    refusing: std::sync::atomic::AtomicBool,
}

/// One direction's token bucket, kept as the time the link is next free to send.
#[derive(Debug)]
struct Bucket {
    /// Bytes per second; 0 holds everything back, [`u64::MAX`] does not meter.
    rate: AtomicU64,
    next_free: Mutex<Instant>,
}

impl Bucket {
    fn new(rate: u64) -> Self {
        Self { rate: AtomicU64::new(rate), next_free: Mutex::new(Instant::now()) }
    }

    /// Waits until `n` bytes may go out at the current rate.
    async fn reserve(&self, n: usize) {
        loop {
            let rate = self.rate.load(Ordering::Relaxed);
            if rate == u64::MAX {
                return;
            }
            if rate == 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            let cost = Duration::from_secs_f64(n as f64 / rate as f64);
            let start = {
                let mut next = self.next_free.lock().await;
                let now = Instant::now();
                // An idle link does not bank credit beyond a 50 ms burst.
                let start = (*next).max(now.checked_sub(Duration::from_millis(50)).unwrap_or(now));
                *next = start + cost;
                start
            };
            tokio::time::sleep_until(start + cost).await;
            return;
        }
    }

    /// Bytes to read at once: small chunks keep the pacing smooth at low rates.
    fn chunk(&self, max: usize) -> usize {
        let rate = self.rate.load(Ordering::Relaxed).max(1);
        usize::try_from(rate / 20).unwrap_or(usize::MAX).clamp(512, max)
    }
}

impl ThrottledProxy {
    /// Listens on 127.0.0.1 (a free port) and forwards to `upstream` at `bytes_per_sec`
    /// server→client.
    pub async fn start(upstream: SocketAddr, bytes_per_sec: u64) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let link = Arc::new(Link {
            down: Bucket::new(bytes_per_sec),
            up: Bucket::new(u64::MAX),
            delivered: AtomicU64::new(0),
            refusing: std::sync::atomic::AtomicBool::new(false),
        });
        let task = tokio::spawn({
            let link = link.clone();
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    if link.refusing.load(Ordering::Relaxed) {
                        drop(client);
                        continue;
                    }
                    let link = link.clone();
                    tokio::spawn(async move {
                        if let Ok(server) = TcpStream::connect(upstream).await {
                            forward(client, server, link).await;
                        }
                    });
                }
            }
        });
        Self { addr, link, task }
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`, for configs that take a base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Changes the server→client rate; 0 cuts the link (nothing flows, nothing is closed).
    pub fn set_rate(&self, bytes_per_sec: u64) {
        self.link.down.rate.store(bytes_per_sec, Ordering::Relaxed);
    }

    /// Meters the client→server direction too (uploads), at `bytes_per_sec`.
    pub fn set_upload_rate(&self, bytes_per_sec: u64) {
        self.link.up.rate.store(bytes_per_sec, Ordering::Relaxed);
    }

    /// Takes the far side down (`true`): connections are closed as soon as they are made and
    /// open ones broken off, as when a host goes away; `false` brings it back.
    pub fn set_down(&self, down: bool) {
        self.link.refusing.store(down, Ordering::Relaxed);
    }

    /// Bytes delivered to clients so far (what went over the "wire" toward devices).
    pub fn bytes_delivered(&self) -> u64 {
        self.link.delivered.load(Ordering::Relaxed)
    }
}

impl Drop for ThrottledProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(client: TcpStream, server: TcpStream, link: Arc<Link>) {
    let _ = client.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let up = pump(client_read, server_write, &link, &link.up, false);
    let down = pump(server_read, client_write, &link, &link.down, true);
    tokio::join!(up, down);
}

/// Copies one direction through its bucket until either side ends or the link is refusing.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    link: &Link,
    bucket: &Bucket,
    count: bool,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let chunk = bucket.chunk(buf.len());
        let n = match from.read(&mut buf[..chunk]).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if link.refusing.load(Ordering::Relaxed) {
            break;
        }
        bucket.reserve(n).await;
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
        if count {
            link.delivered.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
    let _ = to.shutdown().await;
}

/// A round-robin TCP load balancer over several upstreams, as in front of server replicas:
/// each new connection goes to the next upstream that accepts it.
#[derive(Debug)]
pub struct Balancer {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Balancer {
    /// Listens on 127.0.0.1 (a free port).
    pub async fn start(upstreams: Vec<SocketAddr>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the balancer");
        let addr = listener.local_addr().expect("balancer address");
        let task = tokio::spawn(async move {
            let mut next = 0usize;
            while let Ok((mut client, _)) = listener.accept().await {
                let order: Vec<SocketAddr> =
                    (0..upstreams.len()).map(|i| upstreams[(next + i) % upstreams.len()]).collect();
                next = next.wrapping_add(1);
                tokio::spawn(async move {
                    for upstream in order {
                        if let Ok(mut server) = TcpStream::connect(upstream).await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                            return;
                        }
                    }
                });
            }
        });
        Self { addr, task }
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo_server(payload: Vec<u8>) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let payload = payload.clone();
                tokio::spawn(async move {
                    let mut one = [0u8; 1];
                    let _ = s.read_exact(&mut one).await;
                    let _ = s.write_all(&payload).await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn delivers_every_byte_no_faster_than_the_rate() {
        let payload: Vec<u8> = (0..96 * 1024).map(|i| (i % 251) as u8).collect();
        let proxy = ThrottledProxy::start(echo_server(payload.clone()).await, 64 * 1024).await;
        let started = Instant::now();
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        s.write_all(b"x").await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, payload, "the proxy must not change bytes");
        // 96 KiB at 64 KiB/s: at least about 1.4 s (the first 50 ms burst may be free). A lower
        // bound only: the machine may be slower, never faster.
        assert!(started.elapsed() >= Duration::from_millis(1300), "took {:?}", started.elapsed());
        assert_eq!(proxy.bytes_delivered(), payload.len() as u64);
    }

    #[tokio::test]
    async fn a_cut_link_holds_bytes_until_restored() {
        let proxy = ThrottledProxy::start(echo_server(vec![7u8; 1000]).await, 0).await;
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        s.write_all(b"x").await.unwrap();
        let mut buf = [0u8; 1];
        let early = tokio::time::timeout(Duration::from_millis(300), s.read(&mut buf)).await;
        assert!(early.is_err(), "nothing may arrive over a cut link");
        proxy.set_rate(1_000_000);
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        assert_eq!(got.len(), 1000);
    }
}
