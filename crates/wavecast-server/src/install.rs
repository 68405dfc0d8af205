//! The installation directory: what `wavecast init` writes and `wavecast server` reads.
//!
//! ```text
//! DIR/
//!   root.json             the TUF trust anchor devices pin (public)
//!   admin.token           the first admin API token (secret, 0600)
//!   offline/root.key      signs root.json — move offline after init
//!   offline/targets.key   signs artifacts — keep only on the publisher's machine
//!   keys/                 the server's online keys: snapshot, timestamp, director, and the
//!                         audit checkpoint key (0600; never copied into the database)
//!   bootstrap/            initial signed metadata and the admin token's hash, imported into
//!                         the database at the server's first start
//!   blobs/                content-addressed artifact store
//!   wavecast.db           the SQLite database (unless --database-url is given)
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use wavecast_core::secret::{Secret, SecretKind};
use wavecast_tuf::keys::{KeyError, SigningKey, write_secret_file};
use wavecast_tuf::root::{RootError, RootKeys, build_root};

/// How long the things `init` signs stay valid.
const ROOT_LIFETIME_DAYS: i64 = 365;
/// Targets are re-signed at every publish; a year covers a quiet fleet.
pub const TARGETS_LIFETIME_DAYS: i64 = 365;
/// Snapshot lifetime; the server re-signs it before it runs out.
pub const SNAPSHOT_LIFETIME_DAYS: i64 = 30;
/// Timestamp lifetime; the server re-signs it before it runs out.
pub const TIMESTAMP_LIFETIME_DAYS: i64 = 7;

/// Paths inside an installation directory.
#[derive(Debug, Clone)]
pub struct Layout {
    dir: PathBuf,
}

impl Layout {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn root_json(&self) -> PathBuf {
        self.dir.join("root.json")
    }
    pub fn admin_token(&self) -> PathBuf {
        self.dir.join("admin.token")
    }
    pub fn offline_dir(&self) -> PathBuf {
        self.dir.join("offline")
    }
    pub fn root_key(&self) -> PathBuf {
        self.offline_dir().join("root.key")
    }
    pub fn targets_key(&self) -> PathBuf {
        self.offline_dir().join("targets.key")
    }
    pub fn keys_dir(&self) -> PathBuf {
        self.dir.join("keys")
    }
    pub fn snapshot_key(&self) -> PathBuf {
        self.keys_dir().join("snapshot.key")
    }
    pub fn timestamp_key(&self) -> PathBuf {
        self.keys_dir().join("timestamp.key")
    }
    pub fn director_key(&self) -> PathBuf {
        self.keys_dir().join("director.key")
    }
    pub fn checkpoint_key(&self) -> PathBuf {
        self.keys_dir().join("checkpoint.key")
    }
    pub fn bootstrap_dir(&self) -> PathBuf {
        self.dir.join("bootstrap")
    }
    pub fn bootstrap_file(&self) -> PathBuf {
        self.bootstrap_dir().join("bootstrap.json")
    }
    pub fn blobs_dir(&self) -> PathBuf {
        self.dir.join("blobs")
    }
    pub fn sqlite_db(&self) -> PathBuf {
        self.dir.join("wavecast.db")
    }
}

/// What the server imports on first start, written by `init`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BootstrapFile {
    /// When init ran (RFC 3339).
    pub created_at: String,
    /// SHA-256 of the admin token.
    pub admin_token_sha256: String,
    /// Initial metadata files in `bootstrap/`, as (role, version, file name).
    pub metadata: Vec<(String, i64, String)>,
}

/// Errors from `init`.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// The directory already holds an installation or other files.
    #[error("{dir} is not empty{hint}; refusing to overwrite it")]
    NotEmpty {
        /// The directory.
        dir: PathBuf,
        /// A hint when it is an installation.
        hint: &'static str,
    },
    /// A file or directory could not be created.
    #[error("creating {path}")]
    Create {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Key generation or saving failed.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// Building the root failed.
    #[error(transparent)]
    Root(#[from] RootError),
    /// Signing the initial metadata failed.
    #[error(transparent)]
    Sign(#[from] wavecast_tuf::repo::OnlineSignError),
    /// The OS random source failed.
    #[error("the system random source failed")]
    Random,
}

/// What `init` made, for printing.
#[derive(Debug, Clone, Serialize)]
pub struct InitReport {
    /// The trust anchor to ship in device images.
    pub root_json: PathBuf,
    /// The targets key `artifact publish --key` takes.
    pub publisher_key: PathBuf,
    /// The root key.
    pub root_key: PathBuf,
    /// The file holding the admin token.
    pub admin_token_file: PathBuf,
    /// The directory `server --data-dir` takes.
    pub data_dir: PathBuf,
    /// The files to move off this machine.
    pub offline: Vec<PathBuf>,
}

/// 32 bytes from the OS random source.
pub fn random_bytes() -> Result<[u8; 32], InitError> {
    use aws_lc_rs::rand::SecureRandom as _;
    let mut b = [0u8; 32];
    aws_lc_rs::rand::SystemRandom::new().fill(&mut b).map_err(|_| InitError::Random)?;
    Ok(b)
}

fn mkdir(path: &Path) -> Result<(), InitError> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|source| InitError::Create { path: path.into(), source })
}

fn write_public(path: &Path, data: &[u8]) -> Result<(), InitError> {
    use std::io::Write as _;
    let create = |source| InitError::Create { path: path.into(), source };
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(path).map_err(create)?;
    f.write_all(data).map_err(create)?;
    f.sync_all().map_err(create)
}

/// Creates a new installation in `dir` (which must be missing or empty).
pub async fn init(dir: &Path) -> Result<InitReport, InitError> {
    let layout = Layout::new(dir);
    if let Ok(mut entries) = std::fs::read_dir(dir) {
        if entries.next().is_some() {
            let hint = if layout.root_json().exists() { " (it holds a wavecast installation)" } else { "" };
            return Err(InitError::NotEmpty { dir: dir.into(), hint });
        }
    }
    for d in [
        layout.dir().to_path_buf(),
        layout.offline_dir(),
        layout.keys_dir(),
        layout.bootstrap_dir(),
        layout.blobs_dir(),
    ] {
        mkdir(&d)?;
    }

    let root_key = SigningKey::generate()?;
    let targets_key = SigningKey::generate()?;
    let snapshot_key = SigningKey::generate()?;
    let timestamp_key = SigningKey::generate()?;
    let director_key = SigningKey::generate()?;
    let checkpoint_key = SigningKey::generate()?;
    root_key.save(&layout.root_key())?;
    targets_key.save(&layout.targets_key())?;
    snapshot_key.save(&layout.snapshot_key())?;
    timestamp_key.save(&layout.timestamp_key())?;
    director_key.save(&layout.director_key())?;
    checkpoint_key.save(&layout.checkpoint_key())?;

    let now = wavecast_os::clock::now();
    let days = |d: i64| now + jiff::SignedDuration::from_hours(24 * d);
    let root = build_root(
        &RootKeys {
            root: &root_key,
            targets: &targets_key,
            snapshot: &snapshot_key,
            timestamp: &timestamp_key,
            director: &director_key,
            checkpoint: &checkpoint_key,
        },
        days(ROOT_LIFETIME_DAYS),
    )
    .await?;
    write_public(&layout.root_json(), root.buffer())?;

    let targets =
        wavecast_tuf::repo::initial_targets(&root.signed().signed, &targets_key, days(TARGETS_LIFETIME_DAYS)).await?;
    let one = std::num::NonZeroU64::MIN;
    let online = wavecast_tuf::repo::sign_online(
        &root.signed().signed,
        &wavecast_tuf::repo::OnlineKeys { snapshot: snapshot_key, timestamp: timestamp_key },
        &targets,
        wavecast_tuf::repo::OnlinePlan {
            targets_version: one,
            snapshot_version: one,
            timestamp_version: one,
            snapshot_expires: days(SNAPSHOT_LIFETIME_DAYS),
            timestamp_expires: days(TIMESTAMP_LIFETIME_DAYS),
        },
    )
    .await?;
    let files = [
        ("root", "1.root.json", root.buffer().as_slice()),
        ("targets", "1.targets.json", targets.as_slice()),
        ("snapshot", "1.snapshot.json", online.snapshot.as_slice()),
        ("timestamp", "1.timestamp.json", online.timestamp.as_slice()),
    ];
    for (_, name, bytes) in files {
        write_public(&layout.bootstrap_dir().join(name), bytes)?;
    }

    let admin = Secret::from_random(SecretKind::ApiToken, random_bytes()?);
    write_secret_file(&layout.admin_token(), format!("{}\n", admin.expose()).as_bytes())
        .map_err(|source| InitError::Create { path: layout.admin_token(), source })?;
    let bootstrap = BootstrapFile {
        created_at: format!("{now:.3}"), // RFC 3339 with milliseconds, like every time the API shows
        admin_token_sha256: admin.hash().to_hex(),
        metadata: files.iter().map(|(role, name, _)| (role.to_string(), 1, name.to_string())).collect(),
    };
    let json = serde_json::to_vec_pretty(&bootstrap).unwrap_or_default();
    write_secret_file(&layout.bootstrap_file(), &json)
        .map_err(|source| InitError::Create { path: layout.bootstrap_file(), source })?;
    // Make the new entries durable before reporting success.
    for d in [layout.offline_dir(), layout.keys_dir(), layout.bootstrap_dir(), layout.dir().to_path_buf()] {
        if let Ok(f) = std::fs::File::open(&d) {
            let _ = f.sync_all();
        }
    }

    Ok(InitReport {
        root_json: layout.root_json(),
        publisher_key: layout.targets_key(),
        root_key: layout.root_key(),
        admin_token_file: layout.admin_token(),
        data_dir: layout.dir().to_path_buf(),
        offline: vec![layout.root_key(), layout.targets_key()],
    })
}
