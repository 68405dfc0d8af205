//! Blobs in an object store: S3 or any S3-compatible service (in memory for tests).
//!
//! A blob lives at `<prefix>/sha256/<first two hex>/<hex>`. An upload streams into a multipart
//! upload at that key while it is hashed and length-capped; S3 shows no object until the upload
//! is completed, and it is completed only after the bytes matched the signed target, under the
//! blob's database lock, and only if no object is there yet. So a refused, failed or interrupted
//! publish leaves nothing under the key, and two publishes of the same bytes complete one object.
//! The upload is aborted when a publish fails; one a crash abandons stays invisible until the
//! bucket's lifecycle rule removes it (README, "Running several replicas").
//!
//! The upload goes straight to the final key rather than to a temporary one copied over
//! afterwards: a single-request copy stops at 5 GiB on AWS, and a model is often larger.
//!
//! Every request to the store has a connect timeout and a read timeout that measures silence,
//! never a total: a large blob streams to a slow device for as long as bytes keep flowing.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use futures_util::stream::FuturesUnordered;
use futures_util::{Stream, StreamExt as _, TryStreamExt as _};
use object_store::path::Path as Key;
use object_store::signer::Signer;
use object_store::{
    ClientConfigKey, ClientOptions, GetOptions, GetRange, MultipartUpload, ObjectStore, ObjectStoreExt as _,
    PutPayload, RetryConfig,
};
use wavecast_core::{Sha256Digest, Sha256Hasher};

use super::{BlobConfig, BlobDelivery, BlobError, Pending, Placed, Received};

/// Bytes sent to the store per multipart part: S3 wants at least 5 MiB but for the last, and
/// at most 10,000 parts, so a blob over 75 GiB gets larger parts ([`part_bytes`]).
const PART_BYTES: usize = 8 << 20;

/// Parts an upload is planned in at most, below S3's limit of 10,000.
const MAX_PARTS: u64 = 9_500;

/// The part size for a blob of `length` bytes.
fn part_bytes(length: u64) -> usize {
    usize::try_from(length.div_ceil(MAX_PARTS)).unwrap_or(usize::MAX).max(PART_BYTES)
}

/// Parts in flight per upload: with the part being filled, a publish holds at most about
/// three parts in memory however large the blob.
const PARTS_IN_FLIGHT: usize = 2;

/// A bucket and a prefix in it (`s3://BUCKET/PREFIX`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Location {
    /// The bucket.
    pub bucket: String,
    /// The key prefix, without leading or trailing `/` (may be empty).
    pub prefix: String,
}

impl std::str::FromStr for S3Location {
    type Err = String;

    /// Parses what follows `s3://`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (bucket, prefix) = s.split_once('/').unwrap_or((s, ""));
        let valid_bucket = (3..=63).contains(&bucket.len())
            && bucket.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !valid_bucket {
            return Err(format!(
                "s3://{s}: {bucket:?} is not a bucket name (3 to 63 lowercase letters, digits, '-' or '.')"
            ));
        }
        let prefix = prefix.trim_matches('/');
        if prefix.split('/').any(|p| p == "." || p == "..") || prefix.contains("//") {
            return Err(format!("s3://{s}: the prefix {prefix:?} has an empty, '.' or '..' segment"));
        }
        Ok(Self { bucket: bucket.to_owned(), prefix: prefix.to_owned() })
    }
}

impl fmt::Display for S3Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.prefix.is_empty() {
            write!(f, "s3://{}", self.bucket)
        } else {
            write!(f, "s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

/// The blob store in an object store.
pub(super) struct ObjectBlobs {
    store: Arc<dyn ObjectStore>,
    /// Presigns redirects; `None` where the store cannot (in memory).
    signer: Option<Arc<dyn Signer>>,
    prefix: String,
    delivery: BlobDelivery,
    describe: String,
}

impl fmt::Debug for ObjectBlobs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectBlobs").field("store", &self.describe).field("delivery", &self.delivery).finish()
    }
}

/// An upload in progress at its final key: aborted when dropped unless placed.
pub(super) struct PendingUpload {
    key: Key,
    /// The digest the upload was opened for; placing anything else is refused.
    expected: Sha256Digest,
    upload: Option<Box<dyn MultipartUpload>>,
}

impl fmt::Debug for PendingUpload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingUpload").field("key", &self.key.as_ref()).finish()
    }
}

impl Drop for PendingUpload {
    fn drop(&mut self) {
        if let Some(mut upload) = self.upload.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            // Best effort: an upload never completed shows no object either way, and the
            // bucket's lifecycle rule removes its parts if this abort does not get through.
            let key = self.key.to_string();
            rt.spawn(async move {
                if let Err(e) = upload.abort().await {
                    tracing::warn!(key, error = %wavecast_os::error::Chain(&e), "aborting an unfinished upload");
                }
            });
        }
    }
}

impl ObjectBlobs {
    /// The bucket, with credentials and region from the usual `AWS_*` environment variables
    /// unless given; nothing is asked of it yet.
    pub(super) fn s3(location: &S3Location, settings: &BlobConfig) -> Result<Self, BlobError> {
        let describe = location.to_string();
        let config = |reason: String| BlobError::Config { store: describe.clone(), reason };
        let options = ClientOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            // No total: a blob streams to a slow device for as long as bytes keep coming.
            .with_timeout_disabled()
            .with_config(ClientConfigKey::ReadTimeout, "30s");
        let retry = RetryConfig { max_retries: 3, retry_timeout: Duration::from_secs(20), ..RetryConfig::default() };
        let mut builder = object_store::aws::AmazonS3Builder::from_env()
            .with_bucket_name(&location.bucket)
            .with_client_options(options)
            .with_retry(retry);
        if let Some(c) = &settings.credentials {
            builder = builder
                .with_access_key_id(&c.access_key_id)
                .with_secret_access_key(&c.secret_access_key)
                .with_region(&c.region);
        }
        if let Some(endpoint) = &settings.endpoint {
            builder = builder.with_endpoint(endpoint.as_str().trim_end_matches('/'));
            // Plain HTTP only where the operator wrote an http:// endpoint.
            builder = builder.with_allow_http(endpoint.scheme() == "http");
        }
        let s3 = Arc::new(builder.build().map_err(|e| config(wavecast_os::error::chain(&e)))?);
        Ok(Self {
            store: s3.clone(),
            signer: Some(s3),
            prefix: location.prefix.clone(),
            delivery: settings.delivery,
            describe,
        })
    }

    /// A store in memory, for tests.
    pub(super) fn memory() -> Self {
        Self {
            store: Arc::new(object_store::memory::InMemory::new()),
            signer: None,
            prefix: String::new(),
            delivery: BlobDelivery::Proxied,
            describe: "memory:".into(),
        }
    }

    pub(super) fn describe(&self) -> &str {
        &self.describe
    }

    /// Asks for an object that is never there.
    pub(super) async fn check(&self) -> Result<(), BlobError> {
        let key = self.key_for("wavecast-start-check");
        match self.store.head(&key).await {
            Ok(_) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(source) => Err(self.error("checking", &key, source)),
        }
    }

    fn key_for(&self, name: &str) -> Key {
        if self.prefix.is_empty() { Key::from(name) } else { Key::from(format!("{}/{name}", self.prefix)) }
    }

    fn key(&self, digest: &Sha256Digest) -> Key {
        let hex = digest.to_hex();
        self.key_for(&format!("sha256/{}/{hex}", &hex[..2]))
    }

    fn error(&self, op: &'static str, key: &Key, source: object_store::Error) -> BlobError {
        BlobError::Store { op, key: key.to_string(), store: self.describe.clone(), source: Box::new(source) }
    }

    /// Streams an upload into a multipart upload at `expected`'s key, hashing it.
    pub(super) async fn receive<S, E>(
        &self,
        mut body: S,
        expected: &Sha256Digest,
        max_len: u64,
    ) -> Result<Received, BlobError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let key = self.key(expected);
        let upload = self.store.put_multipart(&key).await.map_err(|e| self.error("starting an upload to", &key, e))?;
        // From here on the guard aborts the upload on every early return.
        let mut received = Received {
            pending: Pending::Object(PendingUpload { key: key.clone(), expected: *expected, upload: Some(upload) }),
            sha256: Sha256Digest::from_bytes([0; 32]),
            length: 0,
        };
        let Pending::Object(pending) = &mut received.pending else { unreachable!() };
        let upload = pending.upload.as_mut().expect("just set");
        let mut hasher = Sha256Hasher::new();
        let mut part: Vec<Bytes> = Vec::new();
        let mut part_len = 0usize;
        let mut parts_sent = 0usize;
        let mut in_flight = FuturesUnordered::new();
        let part_size = part_bytes(max_len);
        loop {
            let chunk = match body.next().await {
                Some(chunk) => {
                    chunk.map_err(|e| BlobError::Interrupted { received: received.length, source: e.into() })?
                }
                None => break,
            };
            received.length += chunk.len() as u64;
            if received.length > max_len {
                return Err(BlobError::TooLong { expected: max_len });
            }
            hasher.update(&chunk);
            part_len += chunk.len();
            part.push(chunk);
            if part_len >= part_size {
                while in_flight.len() >= PARTS_IN_FLIGHT {
                    part_sent(&mut in_flight).await.map_err(|e| self.error("uploading a part to", &key, e))?;
                }
                // Spawned, so the part goes out while the next one is received.
                in_flight.push(tokio::spawn(upload.put_part(PutPayload::from_iter(std::mem::take(&mut part)))));
                part_len = 0;
                parts_sent += 1;
            }
        }
        // The last part may be short; an empty blob still needs one part.
        if part_len > 0 || parts_sent == 0 {
            in_flight.push(tokio::spawn(upload.put_part(PutPayload::from_iter(part))));
        }
        while !in_flight.is_empty() {
            part_sent(&mut in_flight).await.map_err(|e| self.error("uploading a part to", &key, e))?;
        }
        received.sha256 = hasher.finish();
        Ok(received)
    }

    /// Completes a verified upload unless the blob is there already.
    pub(super) async fn place(&self, received: Received) -> Result<Placed, BlobError> {
        let Pending::Object(mut pending) = received.pending else {
            unreachable!("an object store receives into uploads only");
        };
        if pending.expected != received.sha256 {
            // The caller compares digests before placing; an upload at another blob's key
            // must never complete, so say so rather than trust that.
            return Err(BlobError::Config {
                store: self.describe.clone(),
                reason: format!("refusing to place {} at the key of {}", received.sha256, pending.expected),
            });
        }
        let key = pending.key.clone();
        match self.store.head(&key).await {
            // Under the blob's lock nobody completes it meanwhile; this upload is dropped
            // (and aborted) with `pending`.
            Ok(_) => return Ok(Placed { created: false }),
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(self.error("looking for", &key, e)),
        }
        let mut upload = pending.upload.take().expect("placed once");
        if let Err(e) = upload.complete().await {
            let _ = upload.abort().await;
            return Err(self.error("completing the upload of", &key, e));
        }
        Ok(Placed { created: true })
    }

    pub(super) async fn remove(&self, digest: &Sha256Digest) -> Result<(), BlobError> {
        let key = self.key(digest);
        match self.store.delete(&key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.error("removing", &key, e)),
        }
    }

    /// Streams the object (one `Range` honoured), or redirects to a presigned URL.
    pub(super) async fn serve(&self, digest: &Sha256Digest, req: Request) -> Result<Response, BlobError> {
        let key = self.key(digest);
        if let (BlobDelivery::Redirect(ttl), Some(signer)) = (self.delivery, &self.signer) {
            let url = signer
                .signed_url(axum::http::Method::GET, &key, ttl)
                .await
                .map_err(|e| self.error("presigning a URL for", &key, e))?;
            return Ok(Response::builder()
                .status(StatusCode::TEMPORARY_REDIRECT)
                .header(header::LOCATION, url.as_str())
                // The URL expires: no cache may keep the redirect longer than it lives.
                .header(header::CACHE_CONTROL, "no-store")
                .body(Body::empty())
                .expect("a valid response"));
        }
        let range = requested_range(req.headers());
        let head_only = req.method() == axum::http::Method::HEAD;
        let options = GetOptions { range: range.clone(), head: head_only, ..GetOptions::default() };
        let got = match self.store.get_opts(&key, options).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(BlobError::Missing { digest: *digest, store: self.describe.clone() });
            }
            Err(e) if range.is_some() => {
                // A range past the end is the client's mistake, not the store's: answer 416
                // with the size, as a file server would.
                let meta = self.store.head(&key).await.map_err(|_| self.error("reading", &key, e))?;
                return Ok(unsatisfiable(meta.size));
            }
            Err(e) => return Err(self.error("reading", &key, e)),
        };
        let size = got.meta.size;
        let served = got.range.clone();
        let mut resp = Response::builder()
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .header(header::ACCEPT_RANGES, "bytes")
            .header(header::CONTENT_LENGTH, served.end - served.start);
        if let Some(etag) = got.meta.e_tag.as_deref().and_then(|t| HeaderValue::from_str(t).ok()) {
            resp = resp.header(header::ETAG, etag);
        }
        if range.is_some() {
            resp = resp.status(StatusCode::PARTIAL_CONTENT).header(
                header::CONTENT_RANGE,
                format!("bytes {}-{}/{size}", served.start, served.end.saturating_sub(1)),
            );
        }
        let body = if head_only {
            Body::empty()
        } else {
            let key = key.to_string();
            Body::from_stream(got.into_stream().inspect_err(move |e| {
                tracing::warn!(key, error = %wavecast_os::error::Chain(e), "the blob store broke off a download");
            }))
        };
        Ok(resp.body(body).expect("a valid response"))
    }
}

/// Waits for one of the parts in flight to be stored.
async fn part_sent(
    in_flight: &mut FuturesUnordered<tokio::task::JoinHandle<object_store::Result<()>>>,
) -> object_store::Result<()> {
    match in_flight.next().await {
        None => Ok(()),
        Some(Ok(sent)) => sent,
        Some(Err(source)) => Err(object_store::Error::JoinError { source }),
    }
}

/// The one byte range a device asked for, if it asked for exactly one this server can serve.
/// Anything else (several ranges, `If-Range`, garbage) is answered with the whole blob, which
/// HTTP allows and every client handles.
fn requested_range(headers: &axum::http::HeaderMap) -> Option<GetRange> {
    if headers.contains_key(header::IF_RANGE) {
        return None;
    }
    let spec = headers.get(header::RANGE)?.to_str().ok()?.strip_prefix("bytes=")?.trim();
    if spec.contains(',') {
        return None;
    }
    let (start, end) = spec.split_once('-')?;
    match (start.trim(), end.trim()) {
        ("", n) => n.parse().ok().filter(|&n| n > 0).map(GetRange::Suffix),
        (a, "") => a.parse().ok().map(GetRange::Offset),
        (a, b) => {
            let (a, b): (u64, u64) = (a.parse().ok()?, b.parse().ok()?);
            (a <= b).then(|| GetRange::Bounded(a..b.saturating_add(1)))
        }
    }
}

fn unsatisfiable(size: u64) -> Response {
    Response::builder()
        .status(StatusCode::RANGE_NOT_SATISFIABLE)
        .header(header::CONTENT_RANGE, format!("bytes */{size}"))
        .body(Body::empty())
        .expect("a valid response")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_a_device_may_send() {
        let cases: &[(&str, Option<GetRange>)] = &[
            ("bytes=100-", Some(GetRange::Offset(100))),
            ("bytes=0-99", Some(GetRange::Bounded(0..100))),
            ("bytes=-5", Some(GetRange::Suffix(5))),
            ("bytes=5-1", None),
            ("bytes=0-1,5-6", None),
            ("items=0-1", None),
            ("bytes=x-", None),
            ("bytes=-0", None),
        ];
        for (header, want) in cases {
            let mut h = axum::http::HeaderMap::new();
            h.insert(header::RANGE, HeaderValue::from_str(header).unwrap());
            assert_eq!(&requested_range(&h), want, "{header}");
        }
    }

    #[test]
    fn parts_grow_for_blobs_too_large_for_ten_thousand() {
        assert_eq!(part_bytes(1 << 30), PART_BYTES);
        let huge = 200u64 << 30;
        assert!(huge.div_ceil(part_bytes(huge) as u64) <= MAX_PARTS);
        assert!(part_bytes(huge) > PART_BYTES);
    }

    #[test]
    fn s3_locations() {
        let ok = |s: &str| s.parse::<S3Location>().unwrap();
        assert_eq!(ok("models"), S3Location { bucket: "models".into(), prefix: String::new() });
        assert_eq!(ok("models/fleet/a/"), S3Location { bucket: "models".into(), prefix: "fleet/a".into() });
        assert_eq!(ok("models/fleet").to_string(), "s3://models/fleet");
        for bad in ["", "ab", "Models", "models/a//b", "models/../x", "under_score"] {
            assert!(bad.parse::<S3Location>().is_err(), "{bad}");
        }
    }

    /// The whole path through the in-memory backend: nothing visible before placing, one
    /// object for two uploads of the same bytes, and a dropped upload leaves nothing.
    #[tokio::test]
    async fn uploads_are_invisible_until_placed_and_placed_once() {
        let blobs = ObjectBlobs::memory();
        let bytes = Bytes::from(vec![7u8; PART_BYTES * 2 + 3]);
        let digest = Sha256Digest::of(&bytes);
        let body = || {
            futures_util::stream::iter(
                bytes.chunks(1 << 20).map(|c| Ok::<_, std::io::Error>(Bytes::copy_from_slice(c))).collect::<Vec<_>>(),
            )
        };

        let first = blobs.receive(body(), &digest, bytes.len() as u64).await.unwrap();
        assert_eq!((first.sha256, first.length), (digest, bytes.len() as u64));
        let second = blobs.receive(body(), &digest, bytes.len() as u64).await.unwrap();
        assert!(blobs.store.head(&blobs.key(&digest)).await.is_err(), "nothing before placing");
        assert_eq!(blobs.place(first).await.unwrap(), Placed { created: true });
        assert_eq!(blobs.place(second).await.unwrap(), Placed { created: false });
        let stored = blobs.store.get(&blobs.key(&digest)).await.unwrap().bytes().await.unwrap();
        assert_eq!(stored, bytes);

        let long = blobs.receive(body(), &digest, 10).await.unwrap_err();
        assert!(matches!(long, BlobError::TooLong { expected: 10 }), "{long:?}");
        blobs.remove(&digest).await.unwrap();
        let dropped = blobs.receive(body(), &digest, bytes.len() as u64).await.unwrap();
        drop(dropped);
        assert!(blobs.store.head(&blobs.key(&digest)).await.is_err(), "a dropped upload leaves nothing");
    }
}
