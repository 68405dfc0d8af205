//! The wavecast control plane: configuration, storage, the HTTP service, and the installation
//! directory it serves.
//!
//! This is the only crate that knows SQL ([`store`]) and HTTP routing ([`api`]). The `wavecast`
//! binary calls [`init`](install::init) and [`run`]; tests call [`open`] and drive
//! [`api::router`] in-process. The application state both share is in [`state`].

pub mod api;
pub mod batcher;
pub mod blobs;
pub mod checkin;
pub mod checkpoints;
pub mod dirlock;
pub mod install;
pub mod limits;
pub mod metrics;
pub mod state;
pub mod store;
pub mod tls;
pub mod trust;

use std::net::SocketAddr;
use std::num::NonZeroU64;
use std::path::PathBuf;
use std::time::Duration;

use tough::schema::{Root, Signed, Timestamp};
use wavecast_core::Role;
use wavecast_core::Sha256Digest;
use wavecast_core::audit::{Actor, AuditAction, NewAuditEvent};
use wavecast_core::rollout::GateApproval;
use wavecast_core::trust::{MetadataRole, expiry_warning};
use wavecast_os::clock;
use wavecast_os::error::Chain;
use wavecast_tuf::repo::{MetadataHead, OnlineKeys, OnlinePlan, sign_online};

use crate::blobs::{BlobConfig, BlobDelivery, BlobError, BlobStore};
use crate::install::{BootstrapFile, Layout};
use crate::limits::RateLimits;
use crate::state::{AppState, DeviceIdentity, LastSeen, Settings};
use crate::store::{Bootstrap, DatabaseConfig, NewToken, OnlineMetadata, Store, StoreError};
use crate::trust::{Trust, TrustError};

/// The default address: loopback only, since plain HTTP must not leave the machine.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7700";

/// Validated server settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The installation directory `wavecast init` made.
    pub data_dir: PathBuf,
    /// Where to listen.
    pub listen: SocketAddr,
    /// The database.
    pub database: DatabaseConfig,
    /// Whether a rollout's creator may approve its gates.
    pub approval: GateApproval,
    /// HTTPS (and device mTLS), if configured.
    pub tls: Option<tls::TlsConfig>,
    /// Request budgets; [`RateLimits::default`] unless the operator sets them.
    pub limits: RateLimits,
    /// How long a device report's id is kept, so that the report sent again is recognised and
    /// applied once ([`DEFAULT_REPORT_RETENTION`] unless the operator sets it).
    pub report_retention: Duration,
    /// Where artifact blobs are kept and how devices get them ([`BlobConfig::default`]: the
    /// data dir's `blobs/` folder, served by the server).
    pub blobs: BlobConfig,
}

/// How long report ids are kept by default. An agent sends a report again only until the
/// server acknowledges it, at every check-in: within minutes while the server is reachable.
pub const DEFAULT_REPORT_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

/// The shortest report retention accepted: shorter could forget an id while the agent that
/// sent it, cut off from the server for a while, still sends it again.
pub const MIN_REPORT_RETENTION: Duration = Duration::from_secs(3600);

/// Report ids deleted per statement by the retention task: each delete is a short transaction
/// beside the fleet's reports, however many ids are due.
const REPORT_RETENTION_CHUNK: u32 = 5_000;

/// Errors in the settings given.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `--database-url` is not PostgreSQL.
    #[error(
        "--database-url must start with postgres:// or postgresql:// (SQLite needs no URL: it is the default, in the data dir); got {0:?}"
    )]
    DatabaseUrl(String),
    /// `--report-retention` is too short to recognise a report sent again.
    #[error(
        "--report-retention must be at least {}s, so that a report an agent sends again is still recognised; got {}s",
        MIN_REPORT_RETENTION.as_secs(),
        .0.as_secs()
    )]
    ReportRetention(Duration),
    /// The blob store settings do not fit together.
    #[error("{0}")]
    Blobs(String),
}

impl ServerConfig {
    /// Checks and assembles the settings. The gate approval policy has no default: the
    /// caller chooses it.
    pub fn new(
        data_dir: PathBuf,
        listen: SocketAddr,
        database_url: Option<String>,
        approval: GateApproval,
    ) -> Result<Self, ConfigError> {
        let database = match database_url {
            None => DatabaseConfig::Sqlite(Layout::new(&data_dir).sqlite_db()),
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                DatabaseConfig::Postgres(url)
            }
            Some(other) => return Err(ConfigError::DatabaseUrl(other)),
        };
        Ok(Self {
            data_dir,
            listen,
            database,
            approval,
            tls: None,
            limits: RateLimits::default(),
            report_retention: DEFAULT_REPORT_RETENTION,
            blobs: BlobConfig::default(),
        })
    }

    /// Keeps blobs where `blobs` says (checked here, connected to when the server opens).
    pub fn with_blobs(mut self, blobs: BlobConfig) -> Result<Self, ConfigError> {
        blobs.validate().map_err(ConfigError::Blobs)?;
        self.blobs = blobs;
        Ok(self)
    }

    /// Checks what only the whole can tell: served over HTTPS, redirects to a plain-HTTP blob
    /// store would be refused by every agent (they never follow HTTPS down to HTTP), so every
    /// download would wait forever. Better refused when the server starts.
    pub fn check(&self) -> Result<(), ConfigError> {
        let redirects = matches!(self.blobs.delivery, BlobDelivery::Redirect(_));
        let plain_store = self.blobs.endpoint.as_ref().is_some_and(|e| e.scheme() == "http");
        if self.tls.is_some() && redirects && plain_store {
            return Err(ConfigError::Blobs(
                "--blob-redirect with a plain-HTTP --blob-store-endpoint behind --tls-cert: agents refuse a redirect \
                 from HTTPS to plain HTTP, so no device could download; serve the store over HTTPS or drop \
                 --blob-redirect (the server then streams the bytes itself)"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Keeps report ids for `retention` (at least [`MIN_REPORT_RETENTION`]).
    pub fn with_report_retention(mut self, retention: Duration) -> Result<Self, ConfigError> {
        if retention < MIN_REPORT_RETENTION {
            return Err(ConfigError::ReportRetention(retention));
        }
        self.report_retention = retention;
        Ok(self)
    }
}

/// Errors starting or running the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The data dir is not an installation.
    #[error("{dir} is not a wavecast installation (no root.json); run `wavecast init --dir {dir}` first")]
    NotInstalled {
        /// The directory.
        dir: PathBuf,
    },
    /// A file of the installation could not be read.
    #[error("reading {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// root.json is bad.
    #[error("loading {path}")]
    Root {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: wavecast_tuf::root::RootError,
    },
    /// The root chain or the online keys are unusable.
    #[error(transparent)]
    Trust(#[from] TrustError),
    /// root.json in the data dir is a later version than the database holds.
    #[error(
        "{path} is root.json version {version}, but the database's newest is version {newest}: new roots reach the server through `wavecast root rotate`; put back the installation's root.json"
    )]
    RootNotInstalled {
        /// The file.
        path: PathBuf,
        /// Its version.
        version: u64,
        /// The newest version the database holds.
        newest: u64,
    },
    /// bootstrap.json is bad.
    #[error("{path} is corrupt")]
    Bootstrap {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The database belongs to another installation.
    #[error(
        "the database {database} belongs to another installation (root sha256 {found}, this data dir's is {expected})"
    )]
    WrongDatabase {
        /// The database.
        database: String,
        /// Its root.
        found: String,
        /// Ours.
        expected: String,
    },
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The blob store failed.
    #[error(transparent)]
    Blob(#[from] BlobError),
    /// The settings do not fit together.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Re-signing metadata failed.
    #[error(transparent)]
    Sign(#[from] wavecast_tuf::repo::OnlineSignError),
    /// TLS material is unusable.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// Binding or serving failed.
    #[error("listening on {addr}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Loads the installation, opens the database (importing the installation on first start)
/// and the blob store: everything the HTTP service needs.
///
/// The root chain comes from the database, verified from its first version; the data dir's
/// root.json must be one of its versions (the installation's first, or any later one an
/// operator put there), so a database of another installation is refused. The server needs
/// every online key the newest root names, from `keys/`.
pub async fn open(config: &ServerConfig) -> Result<AppState, ServerError> {
    config.check()?;
    let layout = Layout::new(&config.data_dir);
    let root_path = layout.root_json();
    if !root_path.exists() {
        return Err(ServerError::NotInstalled { dir: config.data_dir.clone() });
    }
    let root_bytes =
        std::fs::read(&root_path).map_err(|source| ServerError::Read { path: root_path.clone(), source })?;
    let anchor = wavecast_tuf::root::parse_root(&root_bytes)
        .map_err(|source| ServerError::Root { path: root_path.clone(), source })?;

    let store = Store::open(&config.database).await?;
    let installed = match store.installation_root().await? {
        Some(found) => found,
        None => {
            let bootstrap = read_bootstrap(&layout)?;
            if store.bootstrap(&bootstrap).await? {
                tracing::info!(database = %config.database.redacted(), "imported the installation into the database");
            }
            store.installation_root().await?.unwrap_or(bootstrap.root_sha256)
        }
    };
    let trust = Trust::open(&store, &layout.keys_dir()).await?;
    let view = trust.current();
    let in_chain = view.chain().iter().any(|r| r.text.as_bytes() == root_bytes.as_slice());
    let first = Sha256Digest::of(view.chain()[0].text.as_bytes());
    if !in_chain || first != installed {
        let (version, newest) = (anchor.signed.version.get(), view.version());
        if version > newest
            && wavecast_tuf::root::verify_chain(view.chain()[0].text.as_bytes(), &chain_after(&view, &root_bytes))
                .is_ok()
        {
            return Err(ServerError::RootNotInstalled { path: root_path, version, newest });
        }
        return Err(ServerError::WrongDatabase {
            database: config.database.redacted(),
            found: installed.to_hex(),
            expected: Sha256Digest::of(&root_bytes).to_hex(),
        });
    }
    if let Some(missing) = view.missing().into_iter().next() {
        return Err(missing.into());
    }
    drop(view);
    let blobs = BlobStore::open(&config.blobs, &layout.blobs_dir()).await?;
    tracing::info!(blobs = %blobs.describe(), "blob store open");
    let devices = match config.tls.as_ref().and_then(|t| t.device_client_ca.as_ref()) {
        Some(_) => DeviceIdentity::CredentialAndCertificate,
        None => DeviceIdentity::Credential,
    };
    let settings = Settings {
        approval: config.approval,
        devices,
        limits: config.limits.clone(),
        report_retention: config.report_retention,
        transport: if config.tls.is_some() { state::Transport::Tls } else { state::Transport::PlainHttp },
    };
    let state = AppState::new(store, blobs, trust, settings);
    refresh_online_metadata(state.store(), state.trust()).await?;
    Ok(state)
}

/// The roots after the chain's first, then `later` (a root.json newer than the chain): what
/// `verify_chain` walks to tell a root that was signed but never installed from a stranger.
fn chain_after(view: &trust::TrustView, later: &[u8]) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = view.chain()[1..].iter().map(|r| r.text.clone().into_bytes()).collect();
    out.push(later.to_vec());
    out
}

fn read_bootstrap(layout: &Layout) -> Result<Bootstrap, ServerError> {
    let path = layout.bootstrap_file();
    let corrupt =
        |source: Box<dyn std::error::Error + Send + Sync>| ServerError::Bootstrap { path: path.clone(), source };
    let bytes = std::fs::read(&path).map_err(|source| ServerError::Read { path: path.clone(), source })?;
    let file: BootstrapFile = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.into()))?;
    let mut metadata = Vec::new();
    for (role, version, name) in &file.metadata {
        if name.contains('/') || name.contains("..") {
            return Err(corrupt(format!("metadata file name {name:?}").into()));
        }
        let p = layout.bootstrap_dir().join(name);
        let body = std::fs::read_to_string(&p).map_err(|source| ServerError::Read { path: p, source })?;
        metadata.push((role.clone(), *version, body));
    }
    let admin_hash: Sha256Digest =
        file.admin_token_sha256.parse().map_err(|e: wavecast_core::digest::DigestError| corrupt(e.into()))?;
    // The installation is named by its first root, the one imported here.
    let root_sha256 = metadata
        .iter()
        .find(|(role, version, _)| role == "root" && *version == 1)
        .map(|(_, _, body)| Sha256Digest::of(body.as_bytes()))
        .ok_or_else(|| corrupt("it lists no root.json version 1".into()))?;
    Ok(Bootstrap {
        now_ms: clock::now_ms(),
        root_sha256,
        metadata,
        admin_token: NewToken {
            id: hex::encode(&admin_hash.as_bytes()[..8]),
            name: "admin".into(),
            role: Role::Admin,
            secret_sha256: admin_hash,
            created_by: "wavecast init".into(),
        },
        event: NewAuditEvent {
            actor: Actor::Init,
            action: AuditAction::InstallationInitialized,
            subject: "installation".into(),
            detail: serde_json::json!({ "root_sha256": root_sha256.to_hex(), "initialized_at": file.created_at }),
        },
    })
}

/// Re-signs snapshot and timestamp when less than half the timestamp's lifetime remains, so
/// devices never see expired metadata while a server is running.
pub async fn refresh_online_metadata(store: &Store, trust: &Trust) -> Result<bool, ServerError> {
    // The versions are read before the root (in `refresh`): a rotation that lands after that
    // writes the same snapshot version, so one of the two conflicts and nothing is ever signed
    // with keys the newest root no longer names.
    let Some((ts_version, ts_body)) = store.latest_metadata("timestamp").await? else {
        return Ok(false);
    };
    let ts: Signed<Timestamp> = serde_json::from_str(&ts_body)
        .map_err(|e| StoreError::Corrupt { what: "timestamp metadata".into(), source: e.into() })?;
    let now = clock::now();
    let half = jiff::SignedDuration::from_hours(24 * install::TIMESTAMP_LIFETIME_DAYS / 2);
    if ts.signed.expires - half > now {
        return Ok(false);
    }
    let (targets_version, targets) =
        store.latest_metadata("targets").await?.ok_or(StoreError::NotFound { what: "targets metadata".into() })?;
    let (snapshot_version, _) =
        store.latest_metadata("snapshot").await?.ok_or(StoreError::NotFound { what: "snapshot metadata".into() })?;
    let view = trust.refresh(store).await?;
    let versions = (snapshot_version + 1, ts_version + 1, targets_version);
    let m = sign_snapshot_and_timestamp(&view.root().signed, &view.online()?, &targets, versions, now).await?;
    match store.refresh_online_metadata(&m, now.as_millisecond()).await {
        // Another replica refreshed first; its versions serve just as well.
        Err(StoreError::Conflict { .. }) => Ok(false),
        Err(e) => Err(e.into()),
        Ok(()) => {
            tracing::info!(timestamp_version = ts_version + 1, "re-signed snapshot and timestamp");
            Ok(true)
        }
    }
}

/// Snapshot and timestamp over `targets`, signed with `keys` under `root`, expiring after their
/// lifetimes from `now`; `versions` are the new snapshot's, the new timestamp's and the
/// targets'.
pub(crate) async fn sign_snapshot_and_timestamp(
    root: &Root,
    keys: &OnlineKeys,
    targets: &str,
    (snapshot_version, timestamp_version, targets_version): (i64, i64, i64),
    now: jiff::Timestamp,
) -> Result<OnlineMetadata, wavecast_tuf::repo::OnlineSignError> {
    let nz = |v: i64| NonZeroU64::new(v as u64).unwrap_or(NonZeroU64::MIN);
    let days = |d: i64| now + jiff::SignedDuration::from_hours(24 * d);
    let signed = sign_online(
        root,
        keys,
        targets.as_bytes(),
        OnlinePlan {
            targets_version: nz(targets_version),
            snapshot_version: nz(snapshot_version),
            timestamp_version: nz(timestamp_version),
            snapshot_expires: days(install::SNAPSHOT_LIFETIME_DAYS),
            timestamp_expires: days(install::TIMESTAMP_LIFETIME_DAYS),
        },
    )
    .await?;
    Ok(OnlineMetadata {
        snapshot_version,
        snapshot: String::from_utf8_lossy(&signed.snapshot).into_owned(),
        timestamp_version,
        timestamp: String::from_utf8_lossy(&signed.timestamp).into_owned(),
    })
}

/// Serves `state` over plain HTTP on `listener` until `shutdown` resolves, then finishes
/// in-flight requests.
pub async fn serve(
    state: AppState,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(state, listener, None, shutdown).await
}

/// Serves `state` over HTTPS (or plain HTTP when `tls` is `None`).
pub async fn serve_with(
    state: AppState,
    listener: tokio::net::TcpListener,
    tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let background = spawn_background(&state);
    let app = api::router(state.clone());
    // Held check-ins answer as soon as the server starts stopping, or the graceful shutdown
    // would wait out every long-poll.
    let checkin = state.store().checkin().clone();
    let shutdown = async move {
        shutdown.await;
        checkin.close();
    };
    let result = tls::serve(listener, tls, app, shutdown).await;
    for task in background {
        task.abort();
    }
    flush_last_seen(state.store(), state.last_seen()).await;
    // Cover the last burst before stopping, so a clean shutdown leaves no event unsigned.
    if let Err(e) = state.checkpoints().checkpoint_now().await {
        tracing::warn!(error = %Chain(&e), "signing the final audit checkpoint failed");
    }
    state.store().close().await;
    result
}

/// Logs a warning for each TUF role the operator must renew soon (or that has expired), as
/// `wavecast status` shows them.
pub async fn warn_about_expiry(store: &Store) -> Result<Vec<String>, ServerError> {
    let now_ms = clock::now_ms();
    let mut warnings = Vec::new();
    for (role, head) in metadata_heads(store).await? {
        if let Some(w) = expiry_warning(role, head.version, head.expires.as_millisecond(), now_ms) {
            tracing::warn!(role = %role, version = head.version, expires = %head.expires, "{w}");
            warnings.push(w);
        }
    }
    Ok(warnings)
}

/// The version and expiry of the newest version of every TUF role, root first.
pub async fn metadata_heads(store: &Store) -> Result<Vec<(MetadataRole, MetadataHead)>, StoreError> {
    let mut out = Vec::with_capacity(MetadataRole::ALL.len());
    for role in MetadataRole::ALL {
        let (_, body) = store
            .latest_metadata(role.as_str())
            .await?
            .ok_or_else(|| StoreError::NotFound { what: format!("{role} metadata") })?;
        let head = MetadataHead::parse(body.as_bytes())
            .map_err(|e| StoreError::Corrupt { what: format!("{role} metadata"), source: e.into() })?;
        out.push((role, head));
    }
    Ok(out)
}

/// The server's periodic work: re-signing TUF metadata, following the root chain, expiry
/// warnings, device timeouts, check-in times, report ids past their retention, forgetting idle
/// request budgets.
fn spawn_background(state: &AppState) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = spawn_change_feed(state.store());
    tasks.extend(spawn_periodic(state));
    tasks
}

/// What keeps this replica's check-in caches true (see [`checkin`]): the change feed read
/// every few seconds whatever else happens, so a replica that missed a notification (or runs
/// on SQLite, where none is sent) converges within that period; and, on PostgreSQL, read at
/// once whenever another replica notifies.
pub fn spawn_change_feed(store: &Store) -> Vec<tokio::task::JoinHandle<()>> {
    let polled = store.clone();
    vec![
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(CHANGE_POLL);
            loop {
                tick.tick().await;
                if let Err(e) = polled.sync_changes().await {
                    tracing::warn!(error = %Chain(&e), "reading the change feed failed");
                }
            }
        }),
        tokio::spawn(listen_for_changes(store.clone())),
    ]
}

fn spawn_periodic(state: &AppState) -> Vec<tokio::task::JoinHandle<()>> {
    let every = |period: std::time::Duration,
                 state: AppState,
                 work: fn(AppState) -> futures_util::future::BoxFuture<'static, ()>| {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                work(state.clone()).await;
            }
        })
    };
    vec![
        every(std::time::Duration::from_secs(60), state.clone(), |state| {
            Box::pin(async move {
                if let Err(e) = refresh_online_metadata(state.store(), state.trust()).await {
                    tracing::error!(error = %Chain(&e), "re-signing TUF metadata failed");
                }
            })
        }),
        // A rotation another replica installed is followed within seconds: until then this
        // replica signs assignments with the director key it had, which devices that already
        // follow the new root ignore until their next check-in.
        every(std::time::Duration::from_secs(5), state.clone(), |state| {
            Box::pin(async move {
                if let Err(e) = state.trust().refresh(state.store()).await {
                    tracing::error!(error = %Chain(&e), "following the root chain failed");
                }
            })
        }),
        // Once at start and then daily, so the log says it while there is time to act.
        every(std::time::Duration::from_secs(24 * 3600), state.clone(), |state| {
            Box::pin(async move {
                if let Err(e) = warn_about_expiry(state.store()).await {
                    tracing::error!(error = %Chain(&e), "checking TUF metadata expiry failed");
                }
            })
        }),
        // Device timeouts are minutes in production and seconds in tests; a one-second sweep
        // costs one indexed query per active rollout.
        every(std::time::Duration::from_secs(1), state.clone(), |state| {
            Box::pin(async move {
                if let Err(e) = state.store().sweep_timeouts(clock::now_ms()).await {
                    tracing::error!(error = %Chain(&e), "checking device timeouts failed");
                }
            })
        }),
        every(std::time::Duration::from_secs(5), state.clone(), |state| {
            Box::pin(async move { flush_last_seen(state.store(), state.last_seen()).await })
        }),
        // Report ids past their retention, at start and then hourly: an hour more or less of
        // them costs nothing, and a busy fleet's deletes are spread over the day.
        every(std::time::Duration::from_secs(3600), state.clone(), |state| {
            Box::pin(async move {
                let retention = state.settings().report_retention;
                match forget_old_reports(state.store(), retention, clock::now_ms(), REPORT_RETENTION_CHUNK).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(forgotten = n, "forgot report ids past their retention"),
                    Err(e) => tracing::error!(error = %Chain(&e), "forgetting old report ids failed"),
                }
            })
        }),
        // Budgets of clients gone quiet are full again and can be forgotten: memory follows the
        // clients of the last ten seconds, not every address ever seen.
        every(std::time::Duration::from_secs(10), state.clone(), |state| {
            Box::pin(async move { state.limits().evict_idle() })
        }),
        every(std::time::Duration::from_secs(60), state.clone(), |state| {
            Box::pin(async move {
                let before = clock::now_ms() - CHANGE_RETENTION_MS;
                if let Err(e) = state.store().forget_changes(before).await {
                    tracing::warn!(error = %Chain(&e), "pruning the change feed failed");
                }
            })
        }),
        // Signs audit checkpoints after each write burst; it keeps its own poll loop.
        tokio::spawn(state.checkpoints().clone().run()),
    ]
}

/// How often a replica reads the change feed when nothing tells it to.
const CHANGE_POLL: std::time::Duration = std::time::Duration::from_secs(5);

/// How long change events are kept: far beyond any replica's poll period.
const CHANGE_RETENTION_MS: i64 = 3600 * 1000;

/// On PostgreSQL, reads the change feed whenever another replica notifies that it grew, so a
/// revocation or a wave opening is in force on every replica within milliseconds. A lost
/// connection is made again (and the feed read, since notifications were missed meanwhile).
async fn listen_for_changes(store: Store) {
    loop {
        match store.change_listener().await {
            Ok(None) => return,
            Ok(Some(mut listener)) => loop {
                let delivered = listener.next().await;
                if let Err(e) = &delivered {
                    tracing::warn!(error = %Chain(e), "listening for other replicas' changes failed; reconnecting");
                }
                if let Err(e) = store.sync_changes().await {
                    tracing::warn!(error = %Chain(&e), "reading the change feed failed");
                }
                if delivered.is_err() {
                    break;
                }
            },
            Err(e) => tracing::warn!(error = %Chain(&e), "listening for other replicas' changes failed; retrying"),
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// Deletes the ids of device reports received more than `retention` before `now_ms`, at most
/// `chunk` per statement, until none is left. Returns how many.
///
/// Safe because an agent sends a report again only until it is acknowledged: a report whose
/// id is gone is older than any an agent still sends, and should one come after all, it is
/// judged again against where the device stands now (at worst out of date, and let be).
pub async fn forget_old_reports(
    store: &Store,
    retention: Duration,
    now_ms: i64,
    chunk: u32,
) -> Result<u64, StoreError> {
    let before = now_ms.saturating_sub(i64::try_from(retention.as_millis()).unwrap_or(i64::MAX));
    let mut forgotten = 0;
    loop {
        let n = store.forget_reports_before(before, chunk.max(1)).await?;
        forgotten += n;
        if n < u64::from(chunk.max(1)) {
            return Ok(forgotten);
        }
        // Between chunks, whatever waits for the database goes first.
        tokio::task::yield_now().await;
    }
}

async fn flush_last_seen(store: &Store, last_seen: &LastSeen) {
    let seen = last_seen.drain();
    if seen.is_empty() {
        return;
    }
    match store.record_last_seen(&seen).await {
        Ok(skipped) => {
            for (id, at) in skipped {
                last_seen.touch(&id, at);
            }
        }
        Err(e) => {
            tracing::warn!(error = %Chain(&e), devices = seen.len(), "recording check-in times failed")
        }
    }
}

/// Opens the installation and serves it until SIGTERM or Ctrl-C.
pub async fn run(config: ServerConfig) -> Result<(), ServerError> {
    let state = open(&config).await?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServerError::Listen { addr: config.listen, source })?;
    let addr = listener.local_addr().map_err(|source| ServerError::Listen { addr: config.listen, source })?;
    let tls = match &config.tls {
        Some(t) => Some(tls::server_config(t)?),
        None => {
            tracing::warn!(%addr, "serving plain HTTP (no --tls-cert): tokens and credentials cross the network in clear text; use this only on loopback or behind a TLS-terminating proxy");
            None
        }
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(url = %format!("{scheme}://{addr}"), database = %config.database.redacted(), data_dir = %config.data_dir.display(), device_mtls = config.tls.as_ref().is_some_and(|t| t.device_client_ca.is_some()), "wavecast server listening");
    serve_with(state, listener, tls, shutdown_signal()).await.map_err(|source| ServerError::Listen { addr, source })?;
    tracing::info!("wavecast server stopped");
    Ok(())
}

async fn shutdown_signal() {
    wavecast_os::signal::shutdown().await;
    tracing::info!("shutdown requested; finishing in-flight requests");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_from_https_to_a_plain_http_store_are_refused_at_start() {
        let tls = || tls::TlsConfig {
            cert: "c.pem".into(),
            key: "k.pem".into(),
            device_client_ca: None,
            device_client_crls: Vec::new(),
        };
        let blobs = |endpoint: &str, delivery| BlobConfig {
            location: crate::blobs::BlobLocation::S3("models/fleet".parse().unwrap()),
            endpoint: Some(endpoint.parse().unwrap()),
            delivery,
            credentials: None,
        };
        let redirect = BlobDelivery::Redirect(Duration::from_secs(300));
        // (TLS, endpoint, delivery, accepted)
        let cases = [
            (true, "http://minio:9000", redirect, false),
            (true, "https://minio:9000", redirect, true),
            (true, "http://minio:9000", BlobDelivery::Proxied, true),
            (false, "http://minio:9000", redirect, true),
        ];
        for (with_tls, endpoint, delivery, accepted) in cases {
            let mut config =
                ServerConfig::new("/tmp/x".into(), "127.0.0.1:0".parse().unwrap(), None, GateApproval::AnyApprover)
                    .unwrap()
                    .with_blobs(blobs(endpoint, delivery))
                    .unwrap();
            config.tls = with_tls.then(tls);
            let checked = config.check();
            assert_eq!(checked.is_ok(), accepted, "{with_tls} {endpoint} {delivery:?}: {checked:?}");
            if let Err(e) = checked {
                assert!(e.to_string().contains("agents refuse a redirect from HTTPS to plain HTTP"), "{e}");
            }
        }
    }
}
