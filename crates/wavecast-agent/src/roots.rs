//! The chain of trust roots: the pinned root.json, the later versions this device verified and
//! keeps, and the keys the newest of them names.
//!
//! A root rotation is TUF's chain: version N+1 is signed by the root keys of version N and by
//! its own. [`Roots::refresh`] asks the server for `N+1.root.json` until it has no newer one,
//! checks each against the one before it, and keeps it under `roots/` in the state directory
//! (fsynced) before using it. [`Roots::load`] verifies the kept chain again from the pinned
//! anchor at start-up. So the director key, and the root tough starts from, are always those of
//! the newest root verified from the anchor. (tough keeps a root in its own datastore too, but
//! does not fsync it and never starts from it.)

use std::time::Duration;

use tough::schema::{Root, Signed};
use wavecast_core::progress::WaitClass;
use wavecast_tuf::root::RootError;

use crate::net::{self, NetError};
use crate::state::{StateDir, StateError};
use crate::tuf::ServerStatus;

/// The largest root.json the agent reads (tough's default limit for a root).
const MAX_ROOT_BYTES: u64 = 1 << 20;

/// The most root versions one refresh follows (tough's default too): a server offering more is
/// broken or hostile.
const MAX_ROOT_UPDATES: u64 = 1024;

/// Why the chain could not be read or followed.
#[derive(Debug, thiserror::Error)]
pub enum RootsError {
    /// The pinned root is not a usable root.
    #[error("the pinned trust root")]
    Anchor(#[source] Box<RootError>),
    /// A kept root does not follow the ones before it, as verified from the pinned root.
    #[error(
        "{} does not follow the trust roots before it (verified from the pinned root.json); refusing to guess — \
         move it aside and the agent fetches the chain from the server again",
        .path.display()
    )]
    Kept {
        /// The kept file.
        path: std::path::PathBuf,
        /// Why it does not follow.
        #[source]
        source: Box<RootError>,
    },
    /// The server's URL does not make a root's URL.
    #[error("the URL of root.json version {version}")]
    Url {
        /// The version.
        version: u64,
        /// Why.
        #[source]
        source: url::ParseError,
    },
    /// The server could not be asked for the next root.
    #[error("fetching root.json version {version}")]
    Fetch {
        /// The version asked for.
        version: u64,
        /// Why.
        #[source]
        source: Box<NetError>,
    },
    /// The server answered with a status that is neither the file nor "no such version".
    #[error("fetching root.json version {version}")]
    Status {
        /// The version asked for.
        version: u64,
        /// The status.
        #[source]
        source: ServerStatus,
    },
    /// The server's next root does not follow the newest one this device trusts.
    #[error("the server's root.json version {version} is refused")]
    Next {
        /// The version offered.
        version: u64,
        /// Why.
        #[source]
        source: Box<RootError>,
    },
    /// The server offers more new root versions than one refresh follows.
    #[error("the server offers more than {MAX_ROOT_UPDATES} new root versions at once")]
    TooMany,
    /// Our own state could not be read or written.
    #[error(transparent)]
    State(#[from] StateError),
}

impl RootsError {
    /// The transient problem this is, to wait out; none for a refusal.
    pub fn wait_class(&self) -> Option<WaitClass> {
        match self {
            RootsError::Fetch { source, .. } if matches!(**source, NetError::TooLarge { .. }) => {
                Some(WaitClass::Server)
            }
            RootsError::Fetch { .. } => Some(WaitClass::Network),
            RootsError::Status { .. } => Some(WaitClass::Server),
            RootsError::State(StateError::Io { .. }) => Some(WaitClass::Disk),
            _ => None,
        }
    }
}

/// The roots from the pinned anchor to the newest verified one.
#[derive(Debug, Clone)]
pub struct Roots {
    /// Each root's bytes, the anchor first.
    bytes: Vec<Vec<u8>>,
    /// Each root's version and director key, the anchor first.
    directors: Vec<(u64, Option<[u8; 32]>)>,
    /// The newest, parsed.
    newest: Signed<Root>,
}

impl Roots {
    /// The pinned `anchor` and every root kept after it in `state`, each verified against the
    /// one before it.
    pub fn load(anchor: &[u8], state: &StateDir) -> Result<Self, RootsError> {
        let root = wavecast_tuf::root::parse_root(anchor).map_err(|e| RootsError::Anchor(Box::new(e)))?;
        let mut roots = Self::start(anchor.to_vec(), root);
        loop {
            let version = roots.version().saturating_add(1);
            let Some(bytes) = state.kept_root(version)? else { break };
            let next = wavecast_tuf::root::verify_next(&roots.newest.signed, &bytes)
                .map_err(|e| RootsError::Kept { path: state.root_path(version), source: Box::new(e) })?;
            roots.push(bytes, next);
        }
        Ok(roots)
    }

    fn start(anchor: Vec<u8>, root: Signed<Root>) -> Self {
        let director = wavecast_tuf::root::director_key(&root.signed).ok();
        Self { bytes: vec![anchor], directors: vec![(root.signed.version.get(), director)], newest: root }
    }

    fn push(&mut self, bytes: Vec<u8>, root: Signed<Root>) {
        let director = wavecast_tuf::root::director_key(&root.signed).ok();
        self.directors.push((root.signed.version.get(), director));
        self.bytes.push(bytes);
        self.newest = root;
    }

    /// The newest root's version.
    pub fn version(&self) -> u64 {
        self.newest.signed.version.get()
    }

    /// The newest root as the server signed it: where tough starts.
    pub fn newest_bytes(&self) -> &[u8] {
        self.bytes.last().map_or(&[], Vec::as_slice)
    }

    /// Each root's version and the director key it names, oldest first; the last is the one
    /// assignments must be signed with.
    pub fn directors(&self) -> &[(u64, Option<[u8; 32]>)] {
        &self.directors
    }

    /// Follows the chain on the server past the newest root: asks for each next version until
    /// the server has none (404), keeping each verified one before asking for the next. Returns
    /// how many new versions were taken.
    pub async fn refresh(
        &mut self,
        http: &reqwest::Client,
        server: &reqwest::Url,
        credential: Option<&str>,
        window: Duration,
        state: &StateDir,
    ) -> Result<u64, RootsError> {
        let mut taken = 0;
        loop {
            let version = self.version().saturating_add(1);
            let url = server
                .join(&format!("device/v1/tuf/{version}.root.json"))
                .map_err(|source| RootsError::Url { version, source })?;
            let mut req = http.get(url.clone());
            if let Some(c) = credential {
                req = req.bearer_auth(c);
            }
            let (status, body) = net::exchange(req, &url, MAX_ROOT_BYTES, window)
                .await
                .map_err(|e| RootsError::Fetch { version, source: Box::new(e) })?;
            if status == reqwest::StatusCode::NOT_FOUND {
                return Ok(taken);
            }
            if !status.is_success() {
                return Err(RootsError::Status { version, source: ServerStatus(status) });
            }
            if taken >= MAX_ROOT_UPDATES {
                return Err(RootsError::TooMany);
            }
            let next = wavecast_tuf::root::verify_next(&self.newest.signed, &body)
                .map_err(|e| RootsError::Next { version, source: Box::new(e) })?;
            state.keep_root(version, &body)?;
            tracing::info!(version, "followed the trust root to a new version");
            self.push(body, next);
            taken += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use tough::editor::signed::SignedRole;
    use wavecast_tuf::keys::SigningKey;
    use wavecast_tuf::root::{KeyChanges, RootKeys};

    use super::*;

    fn later() -> jiff::Timestamp {
        wavecast_os::clock::now() + jiff::SignedDuration::from_hours(24)
    }

    /// A root v1 and two rotations: v2 with a new director key, v3 with a new root key and
    /// another director key. Returns the roots' bytes and the three director keys.
    async fn chain() -> (Vec<Vec<u8>>, Vec<SigningKey>) {
        let k = SigningKey::generate().unwrap();
        let d: Vec<SigningKey> = (0..3).map(|_| SigningKey::generate().unwrap()).collect();
        let r3 = SigningKey::generate().unwrap();
        let keys = RootKeys { root: &k, targets: &k, snapshot: &k, timestamp: &k, director: &d[0], checkpoint: &k };
        let v1 = wavecast_tuf::root::build_root(&keys, later()).await.unwrap();
        let next = async |cur: &SignedRole<Root>, by: &SigningKey, changes: KeyChanges<'_>| {
            wavecast_tuf::root::next_root(cur.signed(), by, &changes, later()).await.unwrap()
        };
        let v2 = next(&v1, &k, KeyChanges { director: Some(&d[1]), ..Default::default() }).await;
        let v3 = next(&v2, &k, KeyChanges { root: Some(&r3), director: Some(&d[2]), ..Default::default() }).await;
        (vec![v1.buffer().clone(), v2.buffer().clone(), v3.buffer().clone()], d)
    }

    #[tokio::test]
    async fn the_kept_chain_is_verified_from_the_anchor_and_names_the_newest_director() {
        let (roots, d) = chain().await;
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();

        let fresh = Roots::load(&roots[0], &state).unwrap();
        assert_eq!((fresh.version(), fresh.newest_bytes()), (1, roots[0].as_slice()));

        state.keep_root(2, &roots[1]).unwrap();
        state.keep_root(3, &roots[2]).unwrap();
        let loaded = Roots::load(&roots[0], &state).unwrap();
        assert_eq!((loaded.version(), loaded.newest_bytes()), (3, roots[2].as_slice()));
        let want: Vec<_> =
            d.iter().enumerate().map(|(i, k)| (i as u64 + 1, <[u8; 32]>::try_from(k.public_bytes()).ok())).collect();
        assert_eq!(loaded.directors(), want.as_slice());

        // A device pinned to a later root starts there; older kept roots do not matter.
        assert_eq!(Roots::load(&roots[2], &state).unwrap().directors(), &want[2..]);

        // A kept root that does not follow is refused, naming the file: never skipped.
        state.keep_root(3, &roots[1]).unwrap();
        let err = wavecast_os::error::chain(&Roots::load(&roots[0], &state).unwrap_err());
        assert!(
            err.contains("3.root.json does not follow") && err.contains("version 2 does not follow version 2"),
            "{err}"
        );
        std::fs::write(state.root_path(3), b"{").unwrap();
        assert!(matches!(Roots::load(&roots[0], &state), Err(RootsError::Kept { .. })));

        // A root from another installation is no anchor for this chain.
        let (other, _) = chain().await;
        state.keep_root(3, &roots[2]).unwrap();
        assert!(matches!(Roots::load(&other[0], &state), Err(RootsError::Kept { .. })));
    }

    /// A plain HTTP/1.1 server (no router: routes live in the server crate) answering
    /// `GET /device/v1/tuf/NAME` from `files`, 404 for anything else; `status` instead of any
    /// file when set.
    async fn serve(files: Vec<(String, Vec<u8>)>, status: Option<u16>) -> reqwest::Url {
        use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
        let files = std::sync::Arc::new(files);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = reqwest::Url::parse(&format!("http://{}/", listener.local_addr().unwrap())).unwrap();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let files = files.clone();
                tokio::spawn(async move {
                    let mut s = tokio::io::BufReader::new(s);
                    loop {
                        let mut request = String::new();
                        if s.read_line(&mut request).await.unwrap_or(0) == 0 {
                            return;
                        }
                        loop {
                            let mut line = String::new();
                            if s.read_line(&mut line).await.unwrap_or(0) == 0 {
                                return;
                            }
                            if line == "\r\n" {
                                break;
                            }
                        }
                        let path = request.split_whitespace().nth(1).unwrap_or_default();
                        let file =
                            path.strip_prefix("/device/v1/tuf/").and_then(|f| files.iter().find(|(n, _)| n == f));
                        let (code, body) = match (status, file) {
                            (Some(code), _) => (code, Vec::new()),
                            (None, Some((_, body))) => (200, body.clone()),
                            (None, None) => (404, Vec::new()),
                        };
                        let head = format!("HTTP/1.1 {code} X\r\ncontent-length: {}\r\n\r\n", body.len());
                        if s.get_mut().write_all(&[head.as_bytes(), &body].concat()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        url
    }

    #[tokio::test]
    async fn refresh_follows_the_servers_chain_and_keeps_only_what_verifies() {
        let (roots, d) = chain().await;
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let window = Duration::from_secs(5);
        let named = |v: usize| (format!("{}.root.json", v + 1), roots[v].clone());

        // The whole chain, then nothing newer: both versions taken and kept.
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let url = serve(vec![named(0), named(1), named(2)], None).await;
        let mut r = Roots::load(&roots[0], &state).unwrap();
        assert_eq!(r.refresh(&http, &url, None, window, &state).await.unwrap(), 2);
        assert_eq!(r.directors().last(), Some(&(3, <[u8; 32]>::try_from(d[2].public_bytes()).ok())));
        assert_eq!(state.kept_root(3).unwrap().as_deref(), Some(roots[2].as_slice()));
        assert_eq!(r.refresh(&http, &url, None, window, &state).await.unwrap(), 0, "nothing newer");
        assert_eq!(Roots::load(&roots[0], &state).unwrap().version(), 3, "kept across a restart");

        // A server that fails is waited out; nothing changes.
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let mut r = Roots::load(&roots[0], &state).unwrap();
        let e = r.refresh(&http, &serve(Vec::new(), Some(503)).await, None, window, &state).await.unwrap_err();
        assert_eq!(e.wait_class(), Some(WaitClass::Server), "{e:?}");
        let nobody = reqwest::Url::parse(&format!("http://127.0.0.1:{}/", wavecast_test_support::free_port())).unwrap();
        let e = r.refresh(&http, &nobody, None, window, &state).await.unwrap_err();
        assert_eq!(e.wait_class(), Some(WaitClass::Network), "{e:?}");
        assert_eq!(r.version(), 1);

        // A next root the current one did not sign is refused and never kept; the good one
        // before it is.
        let forged = vec![named(0), named(1), ("3.root.json".to_owned(), chain().await.0[1].clone())];
        let e = r.refresh(&http, &serve(forged, None).await, None, window, &state).await.unwrap_err();
        assert!(matches!(e, RootsError::Next { version: 3, .. }), "{e:?}");
        assert_eq!(e.wait_class(), None);
        assert_eq!(r.version(), 2);
        assert!(state.kept_root(2).unwrap().is_some() && state.kept_root(3).unwrap().is_none());
    }
}
