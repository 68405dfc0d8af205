//! TUF verification against the pinned root, with our own rollback record.
//!
//! tough does the TUF work (signatures, thresholds, expiry, snapshot and timestamp
//! consistency). Around it we add what it lacks: every metadata version accepted is recorded
//! durably in `trusted.json`, and anything older is refused even if tough's own store was
//! deleted or corrupted.
//!
//! Failures are sorted here ([`VerifyError::wait_class`]): what the server, the network, the
//! device's clock or its disk did is waited out; only what the metadata itself says (bad
//! signatures, a rollback, a target not signed) refuses an install.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tough::schema::RoleType;
use tough::{RepositoryLoader, TransportError, TransportErrorKind, TransportStream};
use wavecast_core::progress::WaitClass;
use wavecast_core::{Sha256Digest, TargetName};
use wavecast_tuf::golden::{Golden, GoldenFieldError};

use crate::net::{self, NetError};
use crate::state::{StateDir, StateError, Trusted};

/// Why verification did not produce a target. [`VerifyError::wait_class`] tells a problem to
/// wait out from a refusal; a refusal's text (with its causes) is the reason reported.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// A transient problem: the server unreachable or answering badly, the device's clock, its
    /// disk. Nothing is wrong with the update; try again later.
    #[error("{}", transient_text(*.class))]
    Transient {
        /// What kind of problem.
        class: WaitClass,
        /// tough's error.
        #[source]
        source: Box<tough::error::Error>,
    },
    /// A role's metadata has expired: wait for the server or publisher to renew it.
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
    /// The target's signed golden set reference is not one this agent reads.
    #[error("{target}")]
    Golden {
        /// The target.
        target: TargetName,
        /// What is wrong with it.
        #[source]
        source: GoldenFieldError,
    },
    /// Our own state could not be read or written.
    #[error(transparent)]
    State(#[from] StateError),
}

fn transient_text(class: WaitClass) -> &'static str {
    match class {
        WaitClass::Network => "fetching TUF metadata: the server did not answer",
        WaitClass::Server => "fetching TUF metadata: the server's answer is not usable",
        WaitClass::Clock => "TUF metadata cannot be checked against this device's clock",
        WaitClass::Disk => "keeping TUF metadata in the datastore",
        WaitClass::Metadata => "TUF metadata is not current",
    }
}

impl VerifyError {
    /// The transient problem this is, to wait out; none for a refusal. Our own state files
    /// count as the disk when they cannot be written, and as a refusal never: a corrupt state
    /// file is the caller's to handle.
    pub fn wait_class(&self) -> Option<WaitClass> {
        match self {
            VerifyError::Transient { class, .. } => Some(*class),
            VerifyError::Expired { .. } => Some(WaitClass::Metadata),
            VerifyError::State(StateError::Io { .. }) => Some(WaitClass::Disk),
            _ => None,
        }
    }
}

/// A metadata request the server answered with a status that is not the file.
#[derive(Debug, thiserror::Error)]
#[error("HTTP {0}")]
pub struct ServerStatus(pub reqwest::StatusCode);

/// The transient problem somewhere in `e`'s causes, if any: what the server answered (a
/// status, a body over tough's size limits, bytes that are not metadata), what the network did
/// (no answer, silence), or local I/O in tough's datastore. None means nothing transient was
/// found, so the failure is the metadata's own.
pub fn transient_class(e: &(dyn std::error::Error + 'static)) -> Option<WaitClass> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<TransportError>()
            && t.kind() == TransportErrorKind::FileNotFound
        {
            return Some(WaitClass::Server);
        }
        if err.is::<ServerStatus>() {
            return Some(WaitClass::Server);
        }
        if let Some(n) = err.downcast_ref::<NetError>() {
            return Some(if matches!(n, NetError::TooLarge { .. }) { WaitClass::Server } else { WaitClass::Network });
        }
        if let Some(t) = err.downcast_ref::<tough::error::Error>()
            && matches!(t, tough::error::Error::MaxSizeExceeded { .. } | tough::error::Error::ParseMetadata { .. })
        {
            return Some(WaitClass::Server);
        }
        if err.is::<reqwest::Error>() {
            return Some(WaitClass::Network);
        }
        if err.is::<std::io::Error>() {
            return Some(WaitClass::Disk);
        }
        cur = err.source();
    }
    None
}

/// Sorts a failure of tough's into what to wait out and what to refuse.
fn classify(e: tough::error::Error) -> VerifyError {
    use tough::error::Error as T;
    match e {
        T::ExpiredMetadata { role, .. } => VerifyError::Expired { role, source: Box::new(e) },
        T::OlderMetadata { role, current_version, new_version, .. } => {
            VerifyError::Rollback { role, got: new_version, had: current_version }
        }
        T::SystemTimeSteppedBackward { .. } => VerifyError::Transient { class: WaitClass::Clock, source: Box::new(e) },
        e => match transient_class(&e) {
            Some(class) => VerifyError::Transient { class, source: Box::new(e) },
            None => VerifyError::Invalid(Box::new(e)),
        },
    }
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
    /// The golden set signed with it, if any.
    pub golden: Option<Golden>,
}

/// Fetches metadata over HTTP with the device credential, streaming each body to tough (which
/// caps it at its size limits as it arrives) and giving up after a stall window of silence,
/// for the headers and for each next chunk.
#[derive(Debug, Clone)]
pub struct HttpTransport {
    http: reqwest::Client,
    bearer: Option<String>,
    window: Duration,
}

impl HttpTransport {
    /// A transport sending `bearer` (if any) with each request, with a one-minute stall window.
    pub fn new(http: reqwest::Client, bearer: Option<String>) -> Self {
        Self { http, bearer, window: Duration::from_secs(60) }
    }

    /// The longest silence tolerated, for the headers and within a body.
    pub fn stall_timeout(mut self, window: Duration) -> Self {
        self.window = window;
        self
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
        let other =
            |url: &url::Url, e: NetError| TransportError::new_with_cause(TransportErrorKind::Other, url.as_str(), e);
        let resp = net::send(req, &url, self.window).await.map_err(|e| other(&url, e))?;
        let status = resp.status();
        if status == reqwest::StatusCode::NOT_FOUND || status == reqwest::StatusCode::FORBIDDEN {
            return Err(TransportError::new_with_cause(
                TransportErrorKind::FileNotFound,
                url.as_str(),
                ServerStatus(status),
            ));
        }
        if !status.is_success() {
            return Err(TransportError::new_with_cause(TransportErrorKind::Other, url.as_str(), ServerStatus(status)));
        }
        let window = self.window;
        let chunks = futures_util::stream::unfold(Some(resp), move |resp| {
            let url = url.clone();
            async move {
                let mut resp = resp?;
                match tokio::time::timeout(window, resp.chunk()).await {
                    Err(_) => Some((Err(other(&url, NetError::Stalled { url: url.clone(), window })), None)),
                    Ok(Err(source)) => Some((Err(other(&url, NetError::Body { url: url.clone(), source })), None)),
                    Ok(Ok(None)) => None,
                    Ok(Ok(Some(bytes))) => Some((Ok(bytes), Some(resp))),
                }
            }
        });
        Ok(Box::pin(chunks))
    }
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
    let golden =
        Golden::from_custom(&t.custom).map_err(|source| VerifyError::Golden { target: target.clone(), source })?;
    Ok(SignedTarget { length: t.length, sha256, hardware, golden })
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
    loaded.map_err(classify)
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
        // Written with the next record, which comes before the swap or a report.
        state.accept_trusted(&t);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url() -> reqwest::Url {
        reqwest::Url::parse("http://server/device/v1/tuf/timestamp.json").unwrap()
    }

    #[test]
    fn transient_causes_are_told_from_the_metadatas_own_failures() {
        let transport = |kind, cause: Box<dyn std::error::Error + Send + Sync>| {
            Box::new(TransportError::new_with_cause(kind, url().as_str(), cause)) as Box<dyn std::error::Error>
        };
        let window = Duration::from_secs(10);
        let io = |kind| std::io::Error::new(kind, "boom");
        // (case, error, class)
        let cases: Vec<(&str, Box<dyn std::error::Error>, Option<WaitClass>)> = vec![
            (
                "404",
                transport(TransportErrorKind::FileNotFound, Box::new(ServerStatus(reqwest::StatusCode::NOT_FOUND))),
                Some(WaitClass::Server),
            ),
            (
                "503",
                transport(TransportErrorKind::Other, Box::new(ServerStatus(reqwest::StatusCode::SERVICE_UNAVAILABLE))),
                Some(WaitClass::Server),
            ),
            (
                "no headers",
                transport(TransportErrorKind::Other, Box::new(NetError::NoHeaders { url: url(), window })),
                Some(WaitClass::Network),
            ),
            (
                "silence mid-body",
                transport(TransportErrorKind::Other, Box::new(NetError::Stalled { url: url(), window })),
                Some(WaitClass::Network),
            ),
            (
                "over a cap",
                transport(TransportErrorKind::Other, Box::new(NetError::TooLarge { url: url(), limit: 1 })),
                Some(WaitClass::Server),
            ),
            ("the datastore's disk", Box::new(io(std::io::ErrorKind::StorageFull)), Some(WaitClass::Disk)),
            ("a cause we do not know", transport(TransportErrorKind::Other, "delegated roles".into()), None),
            (
                "an unsupported scheme",
                Box::new(TransportError::new(TransportErrorKind::UnsupportedUrlScheme, "x")),
                None,
            ),
        ];
        for (case, e, want) in cases {
            assert_eq!(transient_class(e.as_ref()), want, "{case}");
        }
    }

    #[test]
    fn only_transient_failures_are_waited_out() {
        let state_io = VerifyError::State(StateError::Io {
            op: "writing",
            path: "/x".into(),
            source: std::io::Error::new(std::io::ErrorKind::StorageFull, "full"),
        });
        assert_eq!(state_io.wait_class(), Some(WaitClass::Disk));
        let rollback = VerifyError::Rollback { role: RoleType::Timestamp, got: 1, had: 2 };
        assert_eq!(rollback.wait_class(), None);
        let target = TargetName::parse("m@1.0.0").unwrap();
        assert_eq!(VerifyError::NotSigned { target, version: 3 }.wait_class(), None);
    }
}
