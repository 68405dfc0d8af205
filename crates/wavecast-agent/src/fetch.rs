//! Downloading an artifact: resumable, capped at the signed length, hashed as it arrives, and
//! abandoned when it crawls.
//!
//! Receiving, hashing and writing overlap: the network task hands each chunk to a hashing
//! thread and a writing thread at once, so the slowest of the three sets the pace instead of
//! their sum. An interrupted download keeps its partial file; the next attempt hashes what is
//! there and asks the server for the rest with a `Range` request, and takes the answer only if
//! its `Content-Range` starts where the file ends.
//!
//! Every wait is bounded by a timer on silence (for the response headers, then for each next
//! chunk), never by the download's total duration: a big model over a slow link may take hours
//! and still be making progress. The caller watches the progress through a [`Watch`] and can
//! stop the download at the next chunk boundary, keeping what it has.

use std::io::{Read as _, Seek as _, Write as _};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use bytes::Bytes;
use wavecast_core::Sha256Digest;

use crate::config::DownloadPolicy;
use crate::state::{StateError, io};
use crate::swap::open_partial;

/// Why a download stopped. [`FetchError::TooLong`] refuses the artifact,
/// [`FetchError::Local`] is local trouble (a full disk, say), [`FetchError::Stopped`] is the
/// caller's own request; every other variant is worth trying again later.
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
    /// The server sent no response headers within the stall window.
    #[error("GET {url} sent no response headers within {} s", .window.as_secs())]
    NoHeaders {
        /// The artifact's URL.
        url: reqwest::Url,
        /// The stall window.
        window: std::time::Duration,
    },
    /// A resumed download's answer is not the rest of the file; the partial file is discarded
    /// so the next attempt starts from zero.
    #[error(
        "GET {url} with Range bytes={have}- answered 206 with Content-Range {got:?}, not the bytes asked for; the partial download was discarded"
    )]
    BadRange {
        /// The artifact's URL.
        url: reqwest::Url,
        /// Bytes on disk, where the range should start.
        have: u64,
        /// The `Content-Range` received.
        got: String,
    },
    /// The caller asked the download to stop; the partial file is kept for a resume.
    #[error("download stopped after {total} of {length} bytes, as asked; kept for a resume")]
    Stopped {
        /// Bytes on disk.
        total: u64,
        /// The signed length.
        length: u64,
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
    /// Whether bytes an earlier attempt left were kept (so a mismatch may be theirs).
    pub resumed: bool,
}

/// A running download as its caller sees it: how far it got, and a way to stop it.
#[derive(Debug, Default)]
pub struct Watch {
    done: AtomicU64,
    stop: AtomicBool,
}

impl Watch {
    /// Bytes on disk so far (kept from earlier attempts, plus received).
    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    /// Asks the download to stop at the next chunk boundary, keeping what it has.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// Whether a 206's `Content-Range` (`bytes START-END/TOTAL`) is exactly the rest of a file of
/// `length` bytes of which `have` are on disk.
pub fn range_is_rest(content_range: &str, have: u64, length: u64) -> bool {
    let Some(spec) = content_range.trim().strip_prefix("bytes ") else { return false };
    let Some((range, total)) = spec.split_once('/') else { return false };
    let Some((start, end)) = range.split_once('-') else { return false };
    let (Ok(start), Ok(end)) = (start.trim().parse::<u64>(), end.trim().parse::<u64>()) else { return false };
    let total_ok = total.trim() == "*" || total.trim().parse::<u64>() == Ok(length);
    start == have && end.checked_add(1) == Some(length) && total_ok
}

/// The queues to the hashing and writing threads hold at most this many pieces of at most
/// [`PIECE_BYTES`]: about 4 MiB in flight however the bytes arrive. A read from a fast link
/// (an object store nearby, a redirect to one) hands over hundreds of KiB at once, and a bound
/// on whole reads let a download take 50 MiB of a small device's memory.
const QUEUED_PIECES: usize = 64;
const PIECE_BYTES: usize = 64 * 1024;

enum Chunk {
    Data(Bytes),
    Done,
}

/// Downloads `url` into `dest` (resuming what is there), at most `length` bytes, reporting
/// progress to and taking a stop request from `watch`. `halfway` runs once when at least half
/// the bytes are on disk (a test hook).
#[allow(clippy::too_many_arguments)]
pub async fn fetch(
    http: &reqwest::Client,
    url: &reqwest::Url,
    credential: &str,
    dest: &Path,
    length: u64,
    policy: DownloadPolicy,
    watch: &Watch,
    mut halfway: impl FnMut(),
) -> Result<Fetched, FetchError> {
    let local = |op: &'static str| {
        let to_state = io(op, dest);
        move |source| FetchError::Local(to_state(source))
    };
    let mut file = open_partial(dest).map_err(FetchError::Local)?;
    let mut have = file.metadata().map_err(local("reading"))?.len();
    if have > length {
        file.set_len(0).map_err(local("truncating"))?;
        have = 0;
    }
    // Hash what an earlier attempt left, then continue after it.
    let mut prefix = wavecast_core::Sha256Hasher::new();
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
    watch.done.store(have, Ordering::Relaxed);
    if have == length {
        file.sync_all().map_err(local("syncing"))?;
        return Ok(Fetched { length, sha256: prefix.finish(), resumed: true });
    }

    let mut req = http.get(url.clone()).bearer_auth(credential);
    if have > 0 {
        req = req.header(reqwest::header::RANGE, format!("bytes={have}-"));
    }
    let mut resp = match tokio::time::timeout(policy.stall_timeout, req.send()).await {
        Err(_) => return Err(FetchError::NoHeaders { url: url.clone(), window: policy.stall_timeout }),
        Ok(r) => r.map_err(|source| FetchError::Request { url: url.clone(), source })?,
    };
    match resp.status() {
        reqwest::StatusCode::PARTIAL_CONTENT if have > 0 => {
            let got = resp
                .headers()
                .get(reqwest::header::CONTENT_RANGE)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .unwrap_or_default();
            if !range_is_rest(&got, have, length) {
                file.set_len(0).map_err(local("truncating"))?;
                watch.done.store(0, Ordering::Relaxed);
                return Err(FetchError::BadRange { url: url.clone(), have, got });
            }
        }
        reqwest::StatusCode::OK => {
            // The server ignored the range: start over.
            if have > 0 {
                file.set_len(0).map_err(local("truncating"))?;
                have = 0;
                prefix = wavecast_core::Sha256Hasher::new();
                watch.done.store(0, Ordering::Relaxed);
            }
        }
        status => return Err(FetchError::Status { url: url.clone(), status }),
    }
    let resumed = have > 0;
    if let Some(len) = resp.content_length()
        && have + len > length
    {
        return Err(FetchError::TooLong { length });
    }
    file.seek(std::io::SeekFrom::Start(have)).map_err(local("seeking"))?;

    // Two threads: one hashes, one writes; bounded queues of bounded pieces keep memory flat.
    let (hash_tx, hash_rx) = mpsc::sync_channel::<Chunk>(QUEUED_PIECES);
    let (write_tx, write_rx) = mpsc::sync_channel::<Chunk>(QUEUED_PIECES);
    let hasher = std::thread::spawn(move || {
        let mut h = prefix;
        while let Ok(Chunk::Data(b)) = hash_rx.recv() {
            h.update(&b);
        }
        h.finish()
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
            if watch.stopped() {
                return Err(FetchError::Stopped { total, length });
            }
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
            let mut rest = chunk;
            while !rest.is_empty() {
                let piece = rest.split_to(rest.len().min(PIECE_BYTES));
                if hash_tx.send(Chunk::Data(piece.clone())).is_err() || write_tx.send(Chunk::Data(piece)).is_err() {
                    return Err(FetchError::Worker("worker threads stopped"));
                }
            }
            watch.done.store(total, Ordering::Relaxed);
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
    // A write that failed (a full disk) stops the writer, and then the receiving loop sees a
    // closed channel: the write's own error is the reason, not the channel's.
    match written {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(source))) => return Err(FetchError::Local(io("writing", dest)(source))),
        _ => return Err(FetchError::Worker("writer thread failed")),
    }
    let total = result?;
    let sha256 = sha256.ok().and_then(|r| r.ok()).ok_or(FetchError::Worker("hashing thread failed"))?;
    Ok(Fetched { length: total, sha256, resumed })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resumed_answer_must_be_exactly_the_rest() {
        // (Content-Range, bytes on disk, signed length, accepted)
        let cases = [
            ("bytes 100-999/1000", 100, 1000, true),
            ("bytes 100-999/*", 100, 1000, true),
            (" bytes 100-999/1000 ", 100, 1000, true),
            ("bytes 0-999/1000", 100, 1000, false),
            ("bytes 101-999/1000", 100, 1000, false),
            ("bytes 100-998/1000", 100, 1000, false),
            ("bytes 100-1999/2000", 100, 1000, false),
            ("bytes 100-999/2000", 100, 1000, false),
            ("bytes 100-999", 100, 1000, false),
            ("items 100-999/1000", 100, 1000, false),
            ("bytes -999/1000", 100, 1000, false),
            ("bytes 100-18446744073709551615/1000", 100, 1000, false),
            ("", 100, 1000, false),
        ];
        for (header, have, length, ok) in cases {
            assert_eq!(range_is_rest(header, have, length), ok, "{header:?} with {have} of {length}");
        }
    }
}
