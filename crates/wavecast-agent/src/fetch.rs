//! Downloading an artifact: resumable, capped at the signed length, hashed as it arrives, and
//! abandoned when it crawls.
//!
//! Receiving, hashing and writing overlap: the network task hands each chunk to a hashing
//! thread and a writing thread at once, so the slowest of the three sets the pace instead of
//! their sum. An interrupted download keeps its partial file; the next attempt hashes what is
//! there and asks the server for the rest with a `Range` request.

use std::io::{Read as _, Seek as _, Write as _};
use std::path::Path;
use std::sync::mpsc;
use std::time::Instant;

use bytes::Bytes;
use sha2::Digest as _;
use wavecast_core::Sha256Digest;

use crate::config::DownloadPolicy;
use crate::state::{StateError, io};

/// Why a download stopped. [`FetchError::TooLong`] refuses the artifact and
/// [`FetchError::Local`] is local trouble; every other variant is worth trying again later.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The request could not be sent or answered.
    #[error("requesting {url}")]
    Request {
        /// The artifact's URL.
        url: reqwest::Url,
        /// The cause.
        #[source]
        source: reqwest::Error,
    },
    /// The server answered with a status that is not the content.
    #[error("GET {url} answered {status}")]
    Status {
        /// The artifact's URL.
        url: reqwest::Url,
        /// The status.
        status: reqwest::StatusCode,
    },
    /// No data arrived for a whole stall window.
    #[error("download stalled: no data for {} s", .window.as_secs())]
    Stalled {
        /// The stall window.
        window: std::time::Duration,
    },
    /// The connection broke off.
    #[error("download interrupted after {total} of {length} bytes")]
    Interrupted {
        /// Bytes on disk.
        total: u64,
        /// The signed length.
        length: u64,
        /// The cause.
        #[source]
        source: reqwest::Error,
    },
    /// Data arrived, but slower than the configured floor.
    #[error("download too slow: {rate:.0} B/s over {} s, below the floor of {floor} B/s", .window.as_secs())]
    TooSlow {
        /// Bytes per second over the window.
        rate: f64,
        /// The window.
        window: std::time::Duration,
        /// The floor, bytes per second.
        floor: u64,
    },
    /// The server ended the body before the signed length.
    #[error("download ended after {total} of {length} bytes")]
    Ended {
        /// Bytes on disk.
        total: u64,
        /// The signed length.
        length: u64,
    },
    /// The hashing or writing thread stopped or panicked.
    #[error("the download's {0}")]
    Worker(&'static str),
    /// The server sent more than the signed length: refused.
    #[error("the server sent more than the signed {length} bytes; download refused")]
    TooLong {
        /// The signed length.
        length: u64,
    },
    /// Local filesystem trouble with the partial file.
    #[error(transparent)]
    Local(StateError),
}

/// A finished download.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// Bytes in the file.
    pub length: u64,
    /// Their SHA-256.
    pub sha256: Sha256Digest,
}

enum Chunk {
    Data(Bytes),
    Done,
}

/// Downloads `url` into `dest` (resuming what is there), at most `length` bytes.
/// `halfway` runs once when at least half the bytes are on disk (a test hook).
pub async fn fetch(
    http: &reqwest::Client,
    url: &reqwest::Url,
    credential: &str,
    dest: &Path,
    length: u64,
    policy: DownloadPolicy,
    mut halfway: impl FnMut(),
) -> Result<Fetched, FetchError> {
    let local = |op: &'static str| {
        let to_state = io(op, dest);
        move |source| FetchError::Local(to_state(source))
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(dest)
        .map_err(local("opening"))?;
    let mut have = file.metadata().map_err(local("reading"))?.len();
    if have > length {
        file.set_len(0).map_err(local("truncating"))?;
        have = 0;
    }
    // Hash what an earlier attempt left, then continue after it.
    let mut prefix = sha2::Sha256::new();
    if have > 0 {
        file.rewind().map_err(local("reading"))?;
        let mut buf = vec![0u8; 1 << 16];
        let mut left = have;
        while left > 0 {
            let n = file.read(&mut buf[..(left.min(1 << 16)) as usize]).map_err(local("reading"))?;
            if n == 0 {
                break;
            }
            prefix.update(&buf[..n]);
            left -= n as u64;
        }
    }
    if have == length {
        file.sync_all().map_err(local("syncing"))?;
        return Ok(Fetched { length, sha256: Sha256Digest::from_bytes(prefix.finalize().into()) });
    }

    let mut req = http.get(url.clone()).bearer_auth(credential);
    if have > 0 {
        req = req.header(reqwest::header::RANGE, format!("bytes={have}-"));
    }
    let mut resp = req.send().await.map_err(|source| FetchError::Request { url: url.clone(), source })?;
    match resp.status() {
        reqwest::StatusCode::PARTIAL_CONTENT if have > 0 => {}
        reqwest::StatusCode::OK => {
            // The server ignored the range: start over.
            if have > 0 {
                file.set_len(0).map_err(local("truncating"))?;
                have = 0;
                prefix = sha2::Sha256::new();
            }
        }
        status => return Err(FetchError::Status { url: url.clone(), status }),
    }
    if let Some(len) = resp.content_length()
        && have + len > length
    {
        return Err(FetchError::TooLong { length });
    }
    file.seek(std::io::SeekFrom::Start(have)).map_err(local("seeking"))?;

    // Two threads: one hashes, one writes; bounded queues keep memory flat.
    let (hash_tx, hash_rx) = mpsc::sync_channel::<Chunk>(64);
    let (write_tx, write_rx) = mpsc::sync_channel::<Chunk>(64);
    let hasher = std::thread::spawn(move || {
        let mut h = prefix;
        while let Ok(Chunk::Data(b)) = hash_rx.recv() {
            h.update(&b);
        }
        Sha256Digest::from_bytes(h.finalize().into())
    });
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
        while let Ok(Chunk::Data(b)) = write_rx.recv() {
            w.write_all(&b)?;
        }
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()
    });

    let result = async {
        let mut total = have;
        let mut window_start = Instant::now();
        let mut window_bytes = 0u64;
        let mut fired = false;
        loop {
            let chunk = match tokio::time::timeout(policy.stall_timeout, resp.chunk()).await {
                Err(_) => return Err(FetchError::Stalled { window: policy.stall_timeout }),
                Ok(Err(source)) => return Err(FetchError::Interrupted { total, length, source }),
                Ok(Ok(None)) => break,
                Ok(Ok(Some(c))) => c,
            };
            total += chunk.len() as u64;
            if total > length {
                return Err(FetchError::TooLong { length });
            }
            window_bytes += chunk.len() as u64;
            let elapsed = window_start.elapsed();
            if elapsed >= policy.stall_timeout {
                let rate = window_bytes as f64 / elapsed.as_secs_f64();
                if rate < policy.min_bytes_per_sec as f64 {
                    return Err(FetchError::TooSlow { rate, window: elapsed, floor: policy.min_bytes_per_sec });
                }
                window_start = Instant::now();
                window_bytes = 0;
            }
            if hash_tx.send(Chunk::Data(chunk.clone())).is_err() || write_tx.send(Chunk::Data(chunk)).is_err() {
                return Err(FetchError::Worker("worker threads stopped"));
            }
            if !fired && total * 2 >= length {
                fired = true;
                halfway();
            }
        }
        if total < length {
            return Err(FetchError::Ended { total, length });
        }
        Ok(total)
    }
    .await;
    let _ = hash_tx.send(Chunk::Done);
    let _ = write_tx.send(Chunk::Done);
    drop(hash_tx);
    drop(write_tx);
    let written = tokio::task::spawn_blocking(move || writer.join()).await;
    let sha256 = tokio::task::spawn_blocking(move || hasher.join()).await;
    let total = result?;
    match written {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(source))) => return Err(FetchError::Local(io("writing", dest)(source))),
        _ => return Err(FetchError::Worker("writer thread failed")),
    }
    let sha256 = sha256.ok().and_then(|r| r.ok()).ok_or(FetchError::Worker("hashing thread failed"))?;
    Ok(Fetched { length: total, sha256 })
}
