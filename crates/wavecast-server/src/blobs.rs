//! The content-addressed artifact store on the local filesystem.
//!
//! A blob lives at `blobs/sha256/<first two hex>/<hex>`. Uploads stream into `blobs/tmp/`,
//! hashed and length-capped on the way in, and are renamed into place only after the bytes
//! matched the signed target; a refused or abandoned upload leaves nothing behind. Placing
//! says whether it created the file, because only the publish that did may remove it again.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures_util::{Stream, StreamExt as _};
use tokio::io::AsyncWriteExt as _;
use wavecast_core::Sha256Digest;
use wavecast_core::Sha256Hasher;

/// Errors storing a blob.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// Filesystem trouble.
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
}

/// The blob store rooted at a directory.
#[derive(Debug, Clone)]
pub struct BlobStore {
    root: PathBuf,
}

/// An upload that has been written to a temporary file but not yet placed.
#[derive(Debug)]
pub struct Received {
    tmp: Option<PathBuf>,
    /// SHA-256 of what was received.
    pub sha256: Sha256Digest,
    /// Bytes received.
    pub length: u64,
}

impl Drop for Received {
    fn drop(&mut self) {
        if let Some(tmp) = self.tmp.take() {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

impl BlobStore {
    /// Opens (creating) the store under `root`, clearing temporaries a crash left behind.
    pub fn open(root: &Path) -> Result<Self, BlobError> {
        let tmp = root.join("tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        for d in [root.join("sha256"), tmp] {
            std::fs::create_dir_all(&d).map_err(|source| BlobError::Io { op: "creating", path: d.clone(), source })?;
        }
        Ok(Self { root: root.to_path_buf() })
    }

    /// Where the blob with this digest lives (whether or not it exists).
    pub fn path(&self, digest: &Sha256Digest) -> PathBuf {
        let hex = digest.to_hex();
        self.root.join("sha256").join(&hex[..2]).join(hex)
    }

    /// Streams an upload to a temporary file, hashing it, refusing more than `max_len` bytes.
    pub async fn receive<S, E>(&self, mut body: S, max_len: u64) -> Result<Received, BlobError>
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
        let mut received = Received { tmp: Some(tmp.clone()), sha256: Sha256Digest::from_bytes([0; 32]), length: 0 };
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

    /// Moves a verified upload into place under its digest, durably, and says whether this
    /// call created the file. When one is there already (another publish of the same bytes,
    /// committed or not yet), the verified upload replaces it in one rename, so the path never
    /// goes missing; but the file is not this publish's to remove if it fails.
    ///
    /// Call it holding the blob's lock (`Store::lock_blob`): whether the file exists and
    /// who placed it only mean something under it.
    pub async fn place(&self, mut received: Received) -> Result<Placed, BlobError> {
        let dest = self.path(&received.sha256);
        let Some(tmp) = received.tmp.take() else {
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

    /// Removes the blob with this digest. Call it only holding the blob's lock, for a file
    /// this process [`place`](Self::place)d and no committed artifact refers to.
    pub async fn remove(&self, digest: &Sha256Digest) -> Result<(), BlobError> {
        let path = self.path(digest);
        match tokio::fs::remove_file(&path).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(source) => return Err(BlobError::Io { op: "removing", path, source }),
        }
        sync_dir(path.parent().unwrap_or(&self.root)).await
    }
}

/// What [`BlobStore::place`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "only the publish that created a blob's file may remove it"]
pub struct Placed {
    /// The file was not there before: if the publish fails, it is this publish's to remove.
    pub created: bool,
}

/// Makes a rename or removal in `dir` durable.
async fn sync_dir(dir: &Path) -> Result<(), BlobError> {
    let path = dir.to_path_buf();
    let synced = tokio::task::spawn_blocking(move || wavecast_os::fs::sync_dir(&path))
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
    synced.map_err(|source| BlobError::Io { op: "syncing", path: dir.to_path_buf(), source })
}
