//! The trust material the server signs with: the chain of roots the database holds, verified
//! from the installation's first root, and the online keys in `keys/` that the newest root
//! names.
//!
//! A rotation reaches every replica through the database: each one follows the chain
//! ([`Trust::refresh`], before every TUF signing and every few seconds otherwise). The server
//! loads every key file in `keys/` and signs only with those the newest root names, so new
//! online keys are copied into `keys/` beside the old ones before a rotation, and a replica that
//! lacks one refuses to sign with it (its requests answer 503 and say why) rather than sign
//! with a retired key. Until then it looks in `keys/` again at each refresh, so copying the key
//! is all it takes.
//!
//! The audit log's origin is fixed for the life of the installation: it names the first root.
//! Checkpoint keys change with the root; verifiers take every one from the chain.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use tough::schema::{Root, Signed};
use wavecast_core::Sha256Digest;
use wavecast_core::checkpoint::{CheckpointKeys, origin_for_root};
use wavecast_core::trust::KeyRole;
use wavecast_tuf::keys::{KeyError, SigningKey};
use wavecast_tuf::repo::OnlineKeys;
use wavecast_tuf::root::{RootError, checkpoint_key, named_key, names_key, parse_root, verify_next};

use crate::store::{Store, StoreError};

/// Why the trust material cannot be loaded or used.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// `keys/` could not be listed.
    #[error("reading the key directory {dir}")]
    ReadDir {
        /// The directory.
        dir: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A key file in `keys/` is unusable.
    #[error("loading the server's keys")]
    Key(#[from] KeyError),
    /// An offline key was put where the server reads its keys.
    #[error(
        "{path} is the {role} key of root.json version {version}: it belongs offline, never with the server; move it out of the key directory"
    )]
    OfflineKey {
        /// The key file.
        path: PathBuf,
        /// Its role.
        role: KeyRole,
        /// The root naming it.
        version: u64,
    },
    /// The newest root names an online key this server does not hold.
    #[error(
        "this server does not hold the {role} key root.json version {version} names ({key}); copy the key files `wavecast root rotate` generated into {dir} (the server loads every key there and signs with those the newest root names)"
    )]
    MissingKey {
        /// The role.
        role: KeyRole,
        /// The root naming it.
        version: u64,
        /// What the root names (key ids, or the public key).
        key: String,
        /// Where the key belongs.
        dir: PathBuf,
    },
    /// The database holds no first root: the installation was never imported.
    #[error("the database holds no root.json version 1")]
    NoRoot,
    /// A root stored in the database does not parse, or does not follow the one before it.
    #[error("root.json version {version} in the database")]
    Chain {
        /// The version.
        version: i64,
        /// Why it is refused.
        #[source]
        source: RootError,
    },
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One root of the chain, parsed, with its bytes exactly as signed.
#[derive(Debug, Clone)]
pub struct ChainRoot {
    /// The root.
    pub root: Signed<Root>,
    /// Its bytes.
    pub text: String,
}

/// The online roles the server signs for.
const ONLINE: [KeyRole; 4] = [KeyRole::Snapshot, KeyRole::Timestamp, KeyRole::Director, KeyRole::Checkpoint];

/// The chain as far as this server follows it, and the keys it holds for the newest root.
#[derive(Debug)]
pub struct TrustView {
    chain: Vec<ChainRoot>,
    keys: HashMap<KeyRole, SigningKey>,
    keys_dir: PathBuf,
    checkpoint_keys: CheckpointKeys,
}

impl TrustView {
    /// Builds the view of `chain` (verified, oldest first, never empty) with the keys in
    /// `keyring` that its newest root names.
    fn new(chain: Vec<ChainRoot>, keyring: &[(PathBuf, SigningKey)], keys_dir: &Path) -> Result<Self, TrustError> {
        let newest = &chain.last().ok_or(TrustError::NoRoot)?.root.signed;
        let mut keys = HashMap::new();
        for (path, key) in keyring {
            for role in [KeyRole::Root, KeyRole::Targets] {
                if names_key(newest, role, key) {
                    return Err(TrustError::OfflineKey { path: path.clone(), role, version: newest.version.get() });
                }
            }
            for role in ONLINE {
                if names_key(newest, role, key) {
                    keys.entry(role).or_insert_with(|| key.clone());
                }
            }
        }
        let origin = origin_for_root(&Sha256Digest::of(chain[0].text.as_bytes()));
        let checkpoint_keys =
            CheckpointKeys::new(origin, chain.iter().filter_map(|r| checkpoint_key(&r.root.signed).ok())).ok_or_else(
                || TrustError::Chain { version: newest.version.get() as i64, source: RootError::NoCheckpointKey },
            )?;
        Ok(Self { chain, keys, keys_dir: keys_dir.to_path_buf(), checkpoint_keys })
    }

    /// The newest root.
    pub fn root(&self) -> &Signed<Root> {
        &self.newest().root
    }

    fn newest(&self) -> &ChainRoot {
        // Never empty: `new` refuses an empty chain.
        &self.chain[self.chain.len() - 1]
    }

    /// The newest root's version.
    pub fn version(&self) -> u64 {
        self.root().signed.version.get()
    }

    /// Every root from the first to the newest, with their bytes.
    pub fn chain(&self) -> &[ChainRoot] {
        &self.chain
    }

    /// The key the newest root names for the online `role`, or why this server cannot sign
    /// for it.
    pub fn key(&self, role: KeyRole) -> Result<&SigningKey, TrustError> {
        self.keys.get(&role).ok_or_else(|| TrustError::MissingKey {
            role,
            version: self.version(),
            key: named_key(&self.root().signed, role),
            dir: self.keys_dir.clone(),
        })
    }

    /// The snapshot and timestamp keys.
    pub fn online(&self) -> Result<OnlineKeys, TrustError> {
        Ok(OnlineKeys {
            snapshot: self.key(KeyRole::Snapshot)?.clone(),
            timestamp: self.key(KeyRole::Timestamp)?.clone(),
        })
    }

    /// Every online key the newest root names that this server lacks.
    pub fn missing(&self) -> Vec<TrustError> {
        ONLINE.into_iter().filter_map(|role| self.key(role).err()).collect()
    }

    /// The checkpoint keys of the whole chain, for verifying stored checkpoints; the newest
    /// root's is the current one.
    pub fn checkpoint_keys(&self) -> &CheckpointKeys {
        &self.checkpoint_keys
    }

    /// The view of the root that follows this one (already verified to follow it), with the
    /// keys `keys_dir` holds now.
    pub fn followed_by(&self, next: ChainRoot) -> Result<TrustView, TrustError> {
        let mut chain = self.chain.clone();
        chain.push(next);
        TrustView::new(chain, &load_keyring(&self.keys_dir)?, &self.keys_dir)
    }
}

/// The trust material, shared by every request and background task; see the module docs.
#[derive(Debug)]
pub struct Trust {
    keys_dir: PathBuf,
    view: RwLock<Arc<TrustView>>,
}

impl Trust {
    /// Loads the chain the database holds (it must start at version 1, and each version must
    /// follow the one before) and the keys in `keys_dir`.
    pub async fn open(store: &Store, keys_dir: &Path) -> Result<Self, TrustError> {
        let rows = store.roots_after(0).await?;
        let mut chain: Vec<ChainRoot> = Vec::with_capacity(rows.len());
        for (version, text) in rows {
            let root = match chain.last() {
                None if version == 1 => parse_root(text.as_bytes()),
                None => return Err(TrustError::NoRoot),
                Some(previous) => verify_next(&previous.root.signed, text.as_bytes()),
            }
            .map_err(|source| TrustError::Chain { version, source })?;
            chain.push(ChainRoot { root, text });
        }
        let view = TrustView::new(chain, &load_keyring(keys_dir)?, keys_dir)?;
        Ok(Self { keys_dir: keys_dir.to_path_buf(), view: RwLock::new(Arc::new(view)) })
    }

    /// The view in use.
    pub fn current(&self) -> Arc<TrustView> {
        match self.view.read() {
            Ok(v) => v.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Follows the chain to the newest root the database holds, and looks in `keys/` again
    /// while a key the newest root names is missing. Returns the view in use afterwards.
    pub async fn refresh(&self, store: &Store) -> Result<Arc<TrustView>, TrustError> {
        let current = self.current();
        let newest = store.newest_root_version().await?;
        if newest <= current.version() as i64 && current.missing().is_empty() {
            return Ok(current);
        }
        let mut chain = current.chain.clone();
        for (version, text) in store.roots_after(current.version() as i64).await? {
            let previous = &chain[chain.len() - 1];
            let root = verify_next(&previous.root.signed, text.as_bytes())
                .map_err(|source| TrustError::Chain { version, source })?;
            chain.push(ChainRoot { root, text });
        }
        let view = TrustView::new(chain, &load_keyring(&self.keys_dir)?, &self.keys_dir)?;
        if view.version() == current.version() && view.missing().len() == current.missing().len() {
            return Ok(current);
        }
        Ok(self.install(view))
    }

    /// Puts `view` in use unless a newer one is already (another request got there first), and
    /// says what changed. Returns the view in use.
    pub fn install(&self, view: TrustView) -> Arc<TrustView> {
        let mut slot = match self.view.write() {
            Ok(v) => v,
            Err(poisoned) => poisoned.into_inner(),
        };
        let older = slot.version() > view.version()
            || (slot.version() == view.version() && slot.missing().len() <= view.missing().len());
        if older {
            return slot.clone();
        }
        let view = Arc::new(view);
        if slot.version() != view.version() {
            tracing::info!(from = slot.version(), to = view.version(), "following root.json to a new version");
        }
        for missing in view.missing() {
            tracing::error!(
                error = %wavecast_os::error::chain(&missing),
                "this replica signs nothing for that role until the key is copied in"
            );
        }
        *slot = view.clone();
        view
    }
}

/// Every key file (`*.key`) in `dir`, with its path.
fn load_keyring(dir: &Path) -> Result<Vec<(PathBuf, SigningKey)>, TrustError> {
    let read = |source| TrustError::ReadDir { dir: dir.to_path_buf(), source };
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read)? {
        let path = entry.map_err(read)?.path();
        if path.extension().is_some_and(|e| e == "key") && path.is_file() {
            paths.push(path);
        }
    }
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let key = SigningKey::load(&path)?;
            Ok((path, key))
        })
        .collect()
}
