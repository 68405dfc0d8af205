//! Blobs in a folder on this machine (the default: the data dir's `blobs/`).
//!
//! A blob lives at `sha256/<first two hex>/<hex>`. Uploads stream into `tmp/`, hashed and
//! length-capped on the way in, and are renamed into place only after the bytes matched the
//! signed target; a refused or abandoned upload leaves nothing behind. Placing says whether it
//! created the file, because only the publish that did may remove it again.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use axum::extract::Request;
use axum::response::{IntoResponse as _, Response};
use bytes::Bytes;
use futures_util::{Stream, StreamExt as _};
use tokio::io::AsyncWriteExt as _;
use tower::ServiceExt as _;
use wavecast_core::Sha256Digest;
use wavecast_core::Sha256Hasher;

use super::{BlobError, Pending, Placed, Received};

/// A temporary file older than this, untouched, belongs to no upload in progress (every write
/// touches it) and is removed when a server starts. Never all of `tmp/`: with the folder shared,
/// another replica may be receiving an upload into it right now.
const STALE_UPLOAD: Duration = Duration::from_secs(3600);

/// The blob store rooted at a directory.
#[derive(Debug)]
pub(super) struct LocalBlobs {
    root: PathBuf,
}

/// An upload written to a temporary file: removed when dropped unless placed.
#[derive(Debug)]
pub(super) struct PendingFile {
    tmp: Option<PathBuf>,
}

impl Drop for PendingFile {
    fn drop(&mut self) {
        if let Some(tmp) = self.tmp.take() {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

impl LocalBlobs {
    /// Opens (creating) the store under `root`, removing temporaries a crash left behind long
    /// enough ago that no upload can still be writing them.
    pub(super) async fn open(root: &Path) -> Result<Self, BlobError> {
        let tmp = root.join("tmp");
        for d in [root.join("sha256"), tmp.clone()] {
            std::fs::create_dir_all(&d).map_err(|source| BlobError::Io { op: "creating", path: d.clone(), source })?;
        }
        let now = SystemTime::from(wavecast_os::clock::now());
        for entry in std::fs::read_dir(&tmp).into_iter().flatten().flatten() {
            let stale = entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| now.duration_since(t).is_ok_and(|age| age > STALE_UPLOAD));
            if stale {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(Self { root: root.to_path_buf() })
    }

    /// Whether the folder is still there.
    pub(super) fn check(&self) -> Result<(), BlobError> {
        let sha = self.root.join("sha256");
        std::fs::metadata(&sha).map(|_| ()).map_err(|source| BlobError::Io { op: "looking for", path: sha, source })
    }

    pub(super) fn describe(&self) -> String {
        self.root.display().to_string()
    }

    /// Where the blob with this digest lives (whether or not it exists).
    pub(super) fn path(&self, digest: &Sha256Digest) -> PathBuf {
        let hex = digest.to_hex();
        self.root.join("sha256").join(&hex[..2]).join(hex)
    }

    /// Streams an upload to a temporary file, hashing it, refusing more than `max_len` bytes.
    pub(super) async fn receive<S, E>(&self, mut body: S, max_len: u64) -> Result<Received, BlobError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let tmp = self
            .root
            .join("tmp")
            .join(format!("upload-{}", hex::encode(crate::install::random_bytes().unwrap_or_default())));
        let io = |op, source| BlobError::Io { op, path: tmp.clone(), source };
        let mut file = tokio::fs::File::create(&tmp).await.map_err(|e| io("creating", e))?;
        // From here on the guard removes the file on every early return.
        let mut received = Received {
            pending: Pending::Local(PendingFile { tmp: Some(tmp.clone()) }),
            sha256: Sha256Digest::from_bytes([0; 32]),
            length: 0,
        };
        let mut hasher = Sha256Hasher::new();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| BlobError::Interrupted { received: received.length, source: e.into() })?;
            received.length += chunk.len() as u64;
            if received.length > max_len {
                return Err(BlobError::TooLong { expected: max_len });
            }
            hasher.update(&chunk);
            file.write_all(&chunk).await.map_err(|e| io("writing", e))?;
        }
        file.sync_all().await.map_err(|e| io("syncing", e))?;
        received.sha256 = hasher.finish();
        Ok(received)
    }

    /// Moves a verified upload into place under its digest, durably. When a file is there
    /// already, the verified upload replaces it in one rename, so the path never goes missing.
    pub(super) async fn place(&self, received: Received) -> Result<Placed, BlobError> {
        let dest = self.path(&received.sha256);
        let Pending::Local(mut pending) = received.pending else {
            unreachable!("a local store receives into local files only");
        };
        let Some(tmp) = pending.tmp.take() else {
            return Ok(Placed { created: false });
        };
        let dir = dest.parent().map(Path::to_path_buf).unwrap_or_else(|| self.root.clone());
        tokio::fs::create_dir_all(&dir).await.map_err(|source| BlobError::Io {
            op: "creating",
            path: dir.clone(),
            source,
        })?;
        let existed = tokio::fs::try_exists(&dest).await.map_err(|source| BlobError::Io {
            op: "looking for",
            path: dest.clone(),
            source,
        })?;
        if let Err(source) = tokio::fs::rename(&tmp, &dest).await {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(BlobError::Io { op: "placing", path: dest, source });
        }
        sync_dir(&dir).await?;
        Ok(Placed { created: !existed })
    }

    pub(super) async fn remove(&self, digest: &Sha256Digest) -> Result<(), BlobError> {
        let path = self.path(digest);
        match tokio::fs::remove_file(&path).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(source) => return Err(BlobError::Io { op: "removing", path, source }),
        }
        sync_dir(path.parent().unwrap_or(&self.root)).await
    }

    /// The file, with `Range`, conditional requests and `HEAD` as `ServeFile` does them.
    pub(super) async fn serve(&self, digest: &Sha256Digest, req: Request) -> Result<Response, BlobError> {
        let path = self.path(digest);
        let Ok(resp) = tower_http::services::ServeFile::new(&path).oneshot(req).await;
        if resp.status() == axum::http::StatusCode::NOT_FOUND {
            return Err(BlobError::Missing { digest: *digest, store: self.describe() });
        }
        Ok(resp.map(axum::body::Body::new).into_response())
    }
}

/// Makes a rename or removal in `dir` durable.
async fn sync_dir(dir: &Path) -> Result<(), BlobError> {
    let path = dir.to_path_buf();
    let synced = tokio::task::spawn_blocking(move || wavecast_os::fs::sync_dir(&path))
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
    synced.map_err(|source| BlobError::Io { op: "syncing", path: dir.to_path_buf(), source })
}
