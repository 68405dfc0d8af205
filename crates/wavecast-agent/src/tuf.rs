//! TUF verification against the pinned root, with our own rollback record.
//!
//! tough does the TUF work (signatures, thresholds, expiry, snapshot and timestamp
//! consistency). Around it we add what it lacks: every metadata version accepted is recorded
//! durably in `trusted.json`, and anything older is refused even if tough's own store was
//! deleted or corrupted.

use std::path::{Path, PathBuf};

use tough::schema::RoleType;
use tough::{RepositoryLoader, TransportError, TransportErrorKind, TransportStream};
use wavecast_core::{Sha256Digest, TargetName};

use crate::state::{StateDir, StateError, Trusted};

/// Why verification did not produce a target. Every variant but [`VerifyError::Unavailable`]
/// and [`VerifyError::State`] refuses the target; its text (with its causes) is the reason
/// reported.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The server could not be reached: try later.
    #[error("fetching TUF metadata")]
    Unavailable(#[source] Box<tough::error::Error>),
    /// A role's metadata has expired.
    #[error("TUF {role} metadata has expired; new installs wait for fresh metadata")]
    Expired {
        /// The expired role.
        role: RoleType,
        /// tough's error.
        #[source]
        source: Box<tough::error::Error>,
    },
    /// A role's version is older than one accepted before (by tough's store or our record).
    #[error("TUF metadata rollback refused: {role} version {got} is older than version {had} already accepted")]
    Rollback {
        /// The role.
        role: RoleType,
        /// The version offered now.
        got: u64,
        /// The version accepted before.
        had: u64,
    },
    /// Any other failure of the TUF checks (signatures, thresholds, hashes, consistency).
    #[error("TUF verification failed")]
    Invalid(#[source] Box<tough::error::Error>),
    /// Our target name is not one tough accepts.
    #[error("target {target}")]
    TargetName {
        /// The target.
        target: TargetName,
        /// tough's error.
        #[source]
        source: Box<tough::error::Error>,
    },
    /// The signed targets metadata does not list the target.
    #[error("{target} is not in the signed TUF targets metadata (version {version})")]
    NotSigned {
        /// The target.
        target: TargetName,
        /// The targets metadata's version.
        version: u64,
    },
    /// The target's signed SHA-256 is not 32 bytes.
    #[error("{target}")]
    Digest {
        /// The target.
        target: TargetName,
        /// What is wrong with the digest.
        #[source]
        source: wavecast_core::digest::DigestError,
    },
    /// Our own state could not be read or written.
    #[error(transparent)]
    State(#[from] StateError),
}

/// What the signed targets metadata says about one target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedTarget {
    /// Signed length.
    pub length: u64,
    /// Signed SHA-256.
    pub sha256: Sha256Digest,
    /// Hardware it is built for, if any.
    pub hardware: Option<String>,
}

/// Fetches metadata over HTTP with the device credential. Bodies are small (tough caps them),
/// so each is read whole.
#[derive(Debug, Clone)]
pub struct HttpTransport {
    http: reqwest::Client,
    bearer: Option<String>,
}

impl HttpTransport {
    /// A transport sending `bearer` (if any) with each request.
    pub fn new(http: reqwest::Client, bearer: Option<String>) -> Self {
        Self { http, bearer }
    }
}

#[tough::async_trait]
impl tough::Transport for HttpTransport {
    async fn fetch(&self, url: url::Url) -> Result<TransportStream, TransportError> {
        if url.scheme() == "file" {
            return tough::FilesystemTransport.fetch(url).await;
        }
        let mut req = self.http.get(url.as_str());
        if let Some(b) = &self.bearer {
            req = req.bearer_auth(b);
        }
        let resp =
            req.send().await.map_err(|e| TransportError::new_with_cause(TransportErrorKind::Other, url.as_str(), e))?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND || resp.status() == reqwest::StatusCode::FORBIDDEN {
            return Err(TransportError::new(TransportErrorKind::FileNotFound, url.as_str()));
        }
        if !resp.status().is_success() {
            return Err(TransportError::new_with_cause(
                TransportErrorKind::Other,
                url.as_str(),
                format!("HTTP {}", resp.status()),
            ));
        }
        let body = resp
            .bytes()
            .await
            .map_err(|e| TransportError::new_with_cause(TransportErrorKind::Other, url.as_str(), e))?;
        Ok(Box::pin(futures_util::stream::once(async move { Ok(body) })))
    }
}

fn is_transport(e: &tough::error::Error) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<TransportError>() {
            return t.kind() == TransportErrorKind::Other;
        }
        cur = err.source();
    }
    false
}

/// Loads the repository's metadata against the pinned root and returns what it signs for
/// `target`. Records accepted versions; refuses any version older than one accepted before.
pub async fn signed_target(
    root: &[u8],
    metadata_url: &url::Url,
    transport: HttpTransport,
    state: &StateDir,
    target: &TargetName,
) -> Result<SignedTarget, VerifyError> {
    let repo = load(root, metadata_url, transport, &state.tuf_dir()).await?;
    check_and_record(state, &repo)?;
    let name = tough::TargetName::new(target.to_string())
        .map_err(|e| VerifyError::TargetName { target: target.clone(), source: Box::new(e) })?;
    let t = repo
        .targets()
        .signed
        .find_target(&name, false)
        .map_err(|_| VerifyError::NotSigned { target: target.clone(), version: repo.targets().signed.version.get() })?;
    let sha256 = Sha256Digest::from_slice(&t.hashes.sha256)
        .map_err(|source| VerifyError::Digest { target: target.clone(), source })?;
    let hardware = t.custom.get(wavecast_tuf::HARDWARE_FIELD).and_then(|v| v.as_str()).map(str::to_owned);
    Ok(SignedTarget { length: t.length, sha256, hardware })
}

/// Loads and verifies metadata with tough, classifying failures.
pub async fn load(
    root: &[u8],
    metadata_url: &url::Url,
    transport: HttpTransport,
    datastore: &Path,
) -> Result<tough::Repository, VerifyError> {
    // tough writes into its datastore but never creates it: a store deleted under a running
    // agent must read as empty (our own record then refuses rollbacks), not fail every install.
    {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(datastore).map_err(|source| {
            VerifyError::State(StateError::Io { op: "creating", path: datastore.to_path_buf(), source })
        })?;
    }
    // The targets URL is unused: artifacts are downloaded by our own fetcher.
    let targets_url = metadata_url.join("../targets/").unwrap_or_else(|_| metadata_url.clone());
    let loaded = RepositoryLoader::new(&root, metadata_url.clone(), targets_url)
        .transport(transport)
        .datastore(PathBuf::from(datastore))
        .load()
        .await;
    loaded.map_err(|e| match e {
        e if is_transport(&e) => VerifyError::Unavailable(Box::new(e)),
        tough::error::Error::ExpiredMetadata { role, .. } => VerifyError::Expired { role, source: Box::new(e) },
        tough::error::Error::OlderMetadata { role, current_version, new_version, .. } => {
            VerifyError::Rollback { role, got: new_version, had: current_version }
        }
        e => VerifyError::Invalid(Box::new(e)),
    })
}

/// Refuses metadata older than what was accepted before; records what is accepted now.
fn check_and_record(state: &StateDir, repo: &tough::Repository) -> Result<(), VerifyError> {
    let mut t: Trusted = state.trusted()?;
    let now = [
        (RoleType::Root, repo.root().signed.version.get(), t.root),
        (RoleType::Timestamp, repo.timestamp().signed.version.get(), t.timestamp),
        (RoleType::Snapshot, repo.snapshot().signed.version.get(), t.snapshot),
        (RoleType::Targets, repo.targets().signed.version.get(), t.targets),
    ];
    for (role, got, had) in now {
        if got < had {
            return Err(VerifyError::Rollback { role, got, had });
        }
    }
    let next =
        Trusted { root: now[0].1, timestamp: now[1].1, snapshot: now[2].1, targets: now[3].1, counter: t.counter };
    if next != t {
        t = next;
        state.save_trusted(&t)?;
    }
    Ok(())
}
