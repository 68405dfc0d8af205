//! The content-addressed artifact store: one interface over a local folder or an object store.
//!
//! Callers see the same four steps whatever holds the bytes: [`receive`](BlobStore::receive) an
//! upload (hashed and length-capped while it streams, invisible to everyone), compare its digest
//! with the signed target, [`place`](BlobStore::place) it under its content address (saying
//! whether this call created it), and [`serve`](BlobStore::serve) it to devices with `Range`.
//! A received upload that is dropped instead of placed leaves nothing behind.
//!
//! The local folder ([`local`]) is the default and needs nothing else. An object store
//! ([`object`]: S3 or any S3-compatible service, in memory for tests) lets several replicas
//! share blobs with nothing but the bucket; it can also answer a device with a short-lived
//! presigned URL instead of the bytes.

mod local;
mod object;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::response::Response;
use bytes::Bytes;
use futures_util::Stream;
use wavecast_core::Sha256Digest;

pub use object::S3Location;

/// Errors storing or serving a blob.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// Filesystem trouble in the local folder.
    #[error("{op} {path}")]
    Io {
        /// What we were doing.
        op: &'static str,
        /// Where.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The object store failed or could not be reached.
    #[error("{op} {key} in the blob store {store}")]
    Store {
        /// What we were doing.
        op: &'static str,
        /// The object's key.
        key: String,
        /// The store, as configured (`s3://bucket/prefix`).
        store: String,
        /// The cause (boxed: it is large, and every handler's error type carries this one).
        #[source]
        source: Box<object_store::Error>,
    },
    /// The object store is configured wrongly.
    #[error("the blob store {store}: {reason}")]
    Config {
        /// The store, as configured.
        store: String,
        /// What is wrong.
        reason: String,
    },
    /// The upload carried more bytes than the signed length.
    #[error("the upload is longer than the signed length of {expected} bytes")]
    TooLong {
        /// The signed length.
        expected: u64,
    },
    /// The upload stream broke.
    #[error("the upload was interrupted after {received} bytes")]
    Interrupted {
        /// Bytes received.
        received: u64,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A blob the database refers to is not in the store.
    #[error("blob {digest} is referenced but missing from the blob store {store}")]
    Missing {
        /// The blob.
        digest: Sha256Digest,
        /// The store.
        store: String,
    },
}

/// Where blobs live, as the operator configured it (`wavecast server --blob-store`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobLocation {
    /// A folder on this machine; `None` is the data dir's `blobs/`.
    Local(Option<PathBuf>),
    /// A bucket (and prefix) in S3 or an S3-compatible service.
    S3(S3Location),
    /// In memory, lost when the process ends: for tests only, so it has no URL.
    Memory,
}

impl std::str::FromStr for BlobLocation {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(rest) = s.strip_prefix("s3://") {
            return rest.parse().map(BlobLocation::S3);
        }
        if let Some(path) = s.strip_prefix("file://") {
            return Ok(BlobLocation::Local(Some(PathBuf::from(path))));
        }
        if s.contains("://") {
            return Err(format!("{s:?}: expected a folder, file://FOLDER or s3://BUCKET/PREFIX"));
        }
        if s.is_empty() {
            return Err("expected a folder, file://FOLDER or s3://BUCKET/PREFIX; got nothing".into());
        }
        Ok(BlobLocation::Local(Some(PathBuf::from(s))))
    }
}

/// How devices get a blob's bytes from an object store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BlobDelivery {
    /// Through the server, streamed from the store (the default: devices only ever talk to
    /// the server).
    #[default]
    Proxied,
    /// A redirect to a presigned URL valid this long: the bytes go straight from the store to
    /// the device, which verifies them exactly as before.
    Redirect(Duration),
}

/// Everything needed to open the blob store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobConfig {
    /// Where the blobs are.
    pub location: BlobLocation,
    /// The S3 endpoint, for services other than AWS (`--blob-store-endpoint`); AWS's own
    /// endpoint, or `AWS_ENDPOINT_URL`, when absent.
    pub endpoint: Option<url::Url>,
    /// How devices get the bytes.
    pub delivery: BlobDelivery,
    /// Credentials for the object store given here rather than by the environment (tests,
    /// embedding); `None` reads the usual `AWS_*` variables, instance roles included.
    pub credentials: Option<S3Credentials>,
}

/// An S3 access key given explicitly.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Credentials {
    /// The access key id.
    pub access_key_id: String,
    /// The secret access key.
    pub secret_access_key: String,
    /// The region to sign for.
    pub region: String,
}

impl std::fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

impl Default for BlobConfig {
    fn default() -> Self {
        Self { location: BlobLocation::Local(None), endpoint: None, delivery: BlobDelivery::Proxied, credentials: None }
    }
}

impl BlobConfig {
    /// Checks the combination: a redirect or an endpoint means an object store.
    pub fn validate(&self) -> Result<(), String> {
        let s3 = matches!(self.location, BlobLocation::S3(_));
        if !s3 && self.endpoint.is_some() {
            return Err("--blob-store-endpoint needs an s3:// --blob-store".into());
        }
        if !s3 && matches!(self.delivery, BlobDelivery::Redirect(_)) {
            return Err(
                "--blob-redirect needs an s3:// --blob-store (a local folder is served by the server itself)".into()
            );
        }
        if let BlobDelivery::Redirect(ttl) = self.delivery
            && !(Duration::from_secs(1)..=Duration::from_secs(7 * 24 * 3600)).contains(&ttl)
        {
            return Err(format!(
                "--blob-redirect must be between 1s and 7d (presigned URLs live at most a week); got {}s",
                ttl.as_secs()
            ));
        }
        Ok(())
    }
}

/// The blob store.
#[derive(Debug, Clone)]
pub struct BlobStore {
    inner: Arc<Backend>,
}

#[derive(Debug)]
enum Backend {
    Local(local::LocalBlobs),
    Object(object::ObjectBlobs),
}

/// An upload that has been received and hashed but not yet placed: dropped, it leaves nothing.
#[derive(Debug)]
pub struct Received {
    pending: Pending,
    /// SHA-256 of what was received.
    pub sha256: Sha256Digest,
    /// Bytes received.
    pub length: u64,
}

#[derive(Debug)]
enum Pending {
    Local(local::PendingFile),
    Object(object::PendingUpload),
}

/// What [`BlobStore::place`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "only the publish that created a blob may remove it"]
pub struct Placed {
    /// The blob was not there before: if the publish fails, it is this publish's to remove.
    pub created: bool,
}

impl BlobStore {
    /// Opens the store `config` names (`default_dir` for a local folder without a path).
    ///
    /// An object store that does not answer yet is not an error here: a replica that starts
    /// while the bucket is unreachable still serves check-ins, reports and operators, answers
    /// publishes and downloads `503` until the store is back, and says so in the log and in
    /// `GET /status`. A setting that cannot work (a bad endpoint URL) is an error.
    pub async fn open(config: &BlobConfig, default_dir: &std::path::Path) -> Result<Self, BlobError> {
        let backend = match &config.location {
            BlobLocation::Local(dir) => {
                Backend::Local(local::LocalBlobs::open(dir.as_deref().unwrap_or(default_dir)).await?)
            }
            BlobLocation::S3(location) => Backend::Object(object::ObjectBlobs::s3(location, config)?),
            BlobLocation::Memory => Backend::Object(object::ObjectBlobs::memory()),
        };
        let this = Self { inner: Arc::new(backend) };
        // In the background: a store that does not answer must not hold up the start.
        let probe = this.clone();
        tokio::spawn(async move {
            match probe.check().await {
                Ok(()) => tracing::info!(blobs = %probe.describe(), "the blob store answers"),
                Err(e) => tracing::error!(
                    error = %wavecast_os::error::Chain(&e),
                    "the blob store does not answer; publishing and downloads fail until it does"
                ),
            }
        });
        Ok(this)
    }

    /// Whether the store answers now: an object store is asked for an object that is never
    /// there, so a wrong bucket, endpoint or credentials show as well as an outage.
    pub async fn check(&self) -> Result<(), BlobError> {
        match &*self.inner {
            Backend::Local(l) => l.check(),
            Backend::Object(o) => o.check().await,
        }
    }

    /// The store as configured, for logs and messages (`s3://bucket/prefix`, or the folder).
    pub fn describe(&self) -> String {
        match &*self.inner {
            Backend::Local(l) => l.describe(),
            Backend::Object(o) => o.describe().to_owned(),
        }
    }

    /// Streams an upload that should be the blob `expected`, hashing it and refusing more than
    /// `max_len` bytes. Nothing is visible under any digest until [`place`](Self::place).
    pub async fn receive<S, E>(&self, body: S, expected: &Sha256Digest, max_len: u64) -> Result<Received, BlobError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        match &*self.inner {
            Backend::Local(l) => l.receive(body, max_len).await,
            Backend::Object(o) => o.receive(body, expected, max_len).await,
        }
    }

    /// Makes a verified upload visible under its digest and says whether this call created
    /// the blob. When it is there already (another publish of the same bytes, committed or
    /// not yet), it is kept and this upload dropped; it is then not this publish's to remove.
    ///
    /// Call it holding the blob's lock (`Store::lock_blob`): whether the blob exists and who
    /// placed it only mean something under it, across every replica.
    pub async fn place(&self, received: Received) -> Result<Placed, BlobError> {
        match &*self.inner {
            Backend::Local(l) => l.place(received).await,
            Backend::Object(o) => o.place(received).await,
        }
    }

    /// Removes the blob with this digest. Call it only holding the blob's lock, for a blob
    /// this process [`place`](Self::place)d and no committed artifact refers to.
    pub async fn remove(&self, digest: &Sha256Digest) -> Result<(), BlobError> {
        match &*self.inner {
            Backend::Local(l) => l.remove(digest).await,
            Backend::Object(o) => o.remove(digest).await,
        }
    }

    /// Answers a device's `GET` for the blob: the bytes (honouring one `Range`), or with an
    /// object store configured so, a redirect to a presigned URL.
    pub async fn serve(&self, digest: &Sha256Digest, req: Request) -> Result<Response, BlobError> {
        match &*self.inner {
            Backend::Local(l) => l.serve(digest, req).await,
            Backend::Object(o) => o.serve(digest, req).await,
        }
    }
    /// Where a blob's file is in a local folder (for tests and tools that inspect it); `None`
    /// for an object store.
    pub fn local_path(&self, digest: &Sha256Digest) -> Option<PathBuf> {
        match &*self.inner {
            Backend::Local(l) => Some(l.path(digest)),
            Backend::Object(_) => None,
        }
    }
}
