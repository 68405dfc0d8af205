//! `wavecast-tuf-client`: the client-under-test command line of the public TUF conformance suite
//! (github.com/theupdateframework/tuf-conformance, `CLIENT-CLI.md`):
//!
//! ```text
//! tuf-client --metadata-dir DIR init TRUSTED_ROOT
//! tuf-client --metadata-dir DIR --metadata-url URL refresh
//! tuf-client --metadata-dir DIR --metadata-url URL --target-name PATH [--target-name PATH ...]
//!            --target-base-url URL --target-dir DIR download
//! ```
//!
//! Exit code 0 on success, 1 on any failure (bad usage included). `scripts/tuf-conformance`
//! runs the suite against it. It is a crate of its own so that the agent devices run ships
//! without it: nothing here is part of `wavecast-agent`'s binary.
//!
//! It is built on the agent's own verification: the top-level roles (root chain, timestamp,
//! snapshot, targets) are verified by tough's `RepositoryLoader` over the agent's
//! [`HttpTransport`] (wrapped, see below), as in [`wavecast_agent::tuf::load`]. Around that it
//! adds what the conformance protocol needs and tough does not do:
//!
//! * **The metadata directory holds only verified metadata, as the exact bytes the server sent,
//!   under plain role names.** tough's datastore re-serializes what it stores, so it lives in a
//!   private temporary directory for one run. A recording transport keeps the bytes it handed
//!   to tough; a role's bytes are copied into the metadata directory only once tough has written
//!   that role to its datastore, which it does only after verifying it. The datastore is seeded
//!   with our trusted timestamp and snapshot (for tough's rollback checks), each marked with an
//!   extra top-level field that tough ignores: a file without the mark was rewritten by tough.
//! * **Unchanged metadata is not downloaded again** (the suite counts requests). When the
//!   timestamp tough fetched has the same version as our trusted one (and both verify under the
//!   current root), tough is given our trusted copy (python-tuf keeps it too); when
//!   our trusted snapshot or targets is still the version the newer role lists (signature,
//!   hashes, length and expiry all good), tough is given that copy instead of a download. tough
//!   then verifies whatever it is given, as usual.
//! * **Delegated roles are searched on demand**, pre-order depth-first as the specification
//!   says. tough 0.24 fetches every delegated role while loading and matches path patterns with
//!   `*` crossing `/`; so the transport stops tough at its first delegated fetch (top-level
//!   metadata is verified and stored by then) and this module walks the delegations itself, with
//!   tough's types and `Delegations::verify_role` for the signatures. A role reached again
//!   through another delegator is verified again against that delegator's keys.
//!
//! Time comes from `wavecast_os::clock::now()` here and from jiff inside tough, both
//! `clock_gettime` through libc, so `faketime` works.
//!
//! Known limitation (tough 0.24): a target listing no `sha256` hash cannot be parsed by tough's
//! schema, so targets metadata holding one is refused as a whole.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context as _, bail};
use aws_lc_rs::digest::{self, SHA224, SHA256, SHA384, SHA512};
use clap::{Parser, Subcommand};
use tough::schema::{
    DelegatedRole, Delegations, Metafile, PathSet, Role, Root, Signed, Snapshot, Target, Targets, Timestamp,
};
use tough::{IntoVec as _, RepositoryLoader, Transport as _, TransportError, TransportErrorKind, TransportStream};

use wavecast_agent::tuf::HttpTransport;
use wavecast_os::error::chain;

/// Most delegated roles visited in one target search (python-tuf's default).
const MAX_DELEGATIONS: usize = 32;
/// Download cap for delegated targets metadata whose length snapshot does not give (tough's
/// default for targets).
const MAX_TARGETS_SIZE: u64 = 10 * 1024 * 1024;
/// Top-level field marking the copies we seed into tough's datastore.
const SEED_MARK: &str = "wavecast-tuf-client-seed";
/// Names a delegated role may not take: they are the files of the top-level roles.
const TOP_LEVEL: [&str; 4] = ["root", "timestamp", "snapshot", "targets"];

/// The conformance suite's client-under-test protocol.
#[derive(Debug, Parser)]
#[command(
    name = "wavecast-tuf-client",
    about = "TUF client for the tuf-conformance suite, on the agent's tough-based verification",
    after_help = "Exit code 0 on success, 1 on any failure."
)]
struct Args {
    /// Directory of the metadata this client trusts (root.json, timestamp.json, ...).
    #[arg(long, value_name = "DIR")]
    metadata_dir: PathBuf,
    /// Base URL of the repository's metadata.
    #[arg(long, value_name = "URL")]
    metadata_url: Option<url::Url>,
    /// Target path to download; repeat for several, processed in order.
    #[arg(long = "target-name", value_name = "TARGETPATH")]
    target_names: Vec<String>,
    /// Base URL of the repository's targets.
    #[arg(long, value_name = "URL")]
    target_base_url: Option<url::Url>,
    /// Directory to store verified targets in.
    #[arg(long, value_name = "DIR")]
    target_dir: Option<PathBuf>,
    #[command(subcommand)]
    op: Op,
}

#[derive(Debug, Subcommand)]
enum Op {
    /// Trust TRUSTED_ROOT: copy it into the metadata directory (no request is made).
    Init {
        /// File holding the initial root.json.
        trusted_root: PathBuf,
    },
    /// Update the trusted top-level metadata from the repository.
    Refresh,
    /// Refresh, then find, download and verify each --target-name into --target-dir.
    Download,
}

/// Runs the client with `args` (everything after the program name): exit code 0 or 1.
pub fn main(args: Vec<OsString>) -> ExitCode {
    if succeeds(args) { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

fn succeeds(args: Vec<OsString>) -> bool {
    let argv = std::iter::once(OsString::from("wavecast-tuf-client")).chain(args);
    let args = match Args::try_parse_from(argv) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            // --help and --version print and succeed; any usage error fails with 1, not 2.
            return !e.use_stderr();
        }
    };
    match run(args) {
        Ok(()) => true,
        Err(e) => {
            eprintln!("tuf-client: error: {e:#}");
            false
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let Args { metadata_dir, metadata_url, target_names, target_base_url, target_dir, op } = args;
    if let Op::Init { trusted_root } = &op {
        return init(&metadata_dir, trusted_root);
    }
    let metadata_url = with_slash(metadata_url.context("--metadata-url is required")?);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async move {
        let mut client = Client::new(metadata_dir, metadata_url)?;
        client.refresh().await?;
        if let Op::Download = op {
            let base = with_slash(target_base_url.context("--target-base-url is required")?);
            let dir = target_dir.context("--target-dir is required")?;
            if target_names.is_empty() {
                bail!("--target-name is required");
            }
            for name in &target_names {
                let target = client.find_target(name).await?;
                client.download(name, &target, &base, &dir).await?;
            }
        }
        Ok(())
    })
}

/// Copies the trusted root into the metadata directory as `root.json`, unchecked (the protocol
/// asks for no checks here; `refresh` verifies it before any request).
fn init(dir: &Path, trusted_root: &Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(trusted_root).with_context(|| format!("reading {}", trusted_root.display()))?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    write_atomic(&dir.join("root.json"), &bytes)?;
    say(format_args!("initialized {} with trusted root {}", dir.display(), trusted_root.display()));
    Ok(())
}

/// Verified top-level metadata after a refresh.
struct TopLevel {
    root: Signed<Root>,
    snapshot: Signed<Snapshot>,
    targets: Signed<Targets>,
}

struct Client {
    dir: PathBuf,
    metadata_url: url::Url,
    transport: HttpTransport,
    http: reqwest::Client,
    top: Option<TopLevel>,
    /// Delegated roles verified in this run, by name.
    delegated: HashMap<String, Signed<Targets>>,
}

impl Client {
    fn new(dir: PathBuf, metadata_url: url::Url) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("wavecast-agent/", env!("CARGO_PKG_VERSION"), " tuf-client"))
            .build()?;
        let transport = HttpTransport::new(http.clone(), None);
        Ok(Self { dir, metadata_url, transport, http, top: None, delegated: HashMap::new() })
    }

    /// The TUF client workflow for the top-level roles, verified by tough's `RepositoryLoader`.
    /// Whatever tough accepted is stored, even when a later step fails.
    async fn refresh(&mut self) -> anyhow::Result<()> {
        let root_bytes = std::fs::read(self.dir.join("root.json"))
            .with_context(|| format!("no trusted root in {} (run init first)", self.dir.display()))?;
        let local = |name: &str| std::fs::read(self.dir.join(name)).ok();
        let session = Session::new(&root_bytes, local("timestamp.json"), local("snapshot.json"), local("targets.json"));
        let session = Arc::new(Mutex::new(session));

        let store = TempDir::new()?;
        for name in ["timestamp.json", "snapshot.json"] {
            if let Some(bytes) = local(name) {
                seed(&store.0.join(name), &bytes)?;
            }
        }
        // Targets are downloaded by `download`, never through tough.
        let targets_url = self.metadata_url.join("../targets/").unwrap_or_else(|_| self.metadata_url.clone());
        let transport = SessionTransport { inner: self.transport.clone(), session: Arc::clone(&session) };
        let loaded = RepositoryLoader::new(&root_bytes, self.metadata_url.clone(), targets_url)
            .transport(transport)
            .datastore(store.0.clone())
            .load()
            .await;

        let s = lock(&session);
        let accepted = self.store_accepted(&store.0, &root_bytes, &s)?;
        match &loaded {
            Ok(_) => {}
            Err(_) if s.deferred && accepted.targets.is_some() => {
                say(format_args!("top-level metadata verified; delegated roles are searched on demand"));
            }
            Err(e) => bail!("TUF refresh failed: {}", chain(e)),
        }
        let root = accepted.root;
        let snapshot = parse::<Snapshot>(accepted.snapshot.as_deref().context("snapshot was not accepted")?)?;
        let targets = parse::<Targets>(accepted.targets.as_deref().context("targets was not accepted")?)?;
        say(format_args!(
            "refreshed: root v{}, timestamp v{}, snapshot v{}, targets v{}",
            root.signed.version,
            s.timestamp.as_ref().map_or(0, |t| t.1.signed.version.get()),
            snapshot.signed.version,
            targets.signed.version
        ));
        self.top = Some(TopLevel { root, snapshot, targets });
        Ok(())
    }

    /// Copies into the metadata directory the raw bytes of each role tough accepted in this run.
    fn store_accepted(&self, store: &Path, initial_root: &[u8], s: &Session) -> anyhow::Result<Accepted> {
        // tough writes root.json after each root it accepts (and once more at the end).
        let mut root = parse::<Root>(initial_root).ok();
        if let Ok(kept) = std::fs::read(store.join("root.json")) {
            let kept = parse::<Root>(&kept)?;
            let initial = root.as_ref().map_or(0, |r| r.signed.version.get());
            let v = kept.signed.version.get();
            if v > initial {
                let bytes = s.roots.get(&v).with_context(|| format!("root v{v} accepted but not recorded"))?;
                self.write_role("root", bytes)?;
                root = Some(parse::<Root>(bytes)?);
            }
        }
        let root = root.context("the trusted root does not parse")?;
        let mut out = Accepted { root, snapshot: None, targets: None };
        if rewritten(&store.join("timestamp.json")) {
            let (bytes, _) = s.timestamp.as_ref().context("timestamp accepted but not recorded")?;
            self.write_role("timestamp", bytes)?;
        }
        if rewritten(&store.join("snapshot.json")) {
            let (bytes, _) = s.snapshot.as_ref().context("snapshot accepted but not recorded")?;
            self.write_role("snapshot", bytes)?;
            out.snapshot = Some(bytes.clone());
        }
        if store.join("targets.json").exists() {
            let bytes = s.targets.as_ref().context("targets accepted but not recorded")?;
            self.write_role("targets", bytes)?;
            out.targets = Some(bytes.clone());
        }
        Ok(out)
    }

    fn write_role(&self, role: &str, bytes: &[u8]) -> anyhow::Result<()> {
        let path = self.dir.join(format!("{}.json", quote(role)));
        if std::fs::read(&path).ok().as_deref() != Some(bytes) {
            write_atomic(&path, bytes)?;
            say(format_args!("stored verified {role} metadata"));
        }
        Ok(())
    }

    /// Finds `name` by a pre-order depth-first search of the delegation graph, loading delegated
    /// roles as it goes.
    async fn find_target(&mut self, name: &str) -> anyhow::Result<Target> {
        let target_name = tough::TargetName::new(name).with_context(|| format!("target {name:?}"))?;
        let mut to_visit = vec![("targets".to_owned(), "root".to_owned())];
        let mut visited = HashSet::new();
        while visited.len() <= MAX_DELEGATIONS {
            let Some((role, parent)) = to_visit.pop() else { break };
            if visited.contains(&role) {
                continue;
            }
            let targets = self.load_targets(&role, &parent).await?;
            if let Some(t) = targets.signed.targets.get(&target_name) {
                say(format_args!("{name} found in role {role:?}"));
                return Ok(t.clone());
            }
            visited.insert(role.clone());
            if let Some(delegations) = &targets.signed.delegations {
                let mut children = Vec::new();
                for child in &delegations.roles {
                    if delegates(child, name) {
                        children.push((child.name.clone(), role.clone()));
                        if child.terminating {
                            to_visit.clear();
                            break;
                        }
                    }
                }
                to_visit.extend(children.into_iter().rev());
            }
        }
        bail!("{name} is not in the signed targets metadata")
    }

    /// The verified targets metadata of `role`, delegated by `parent` (already loaded).
    async fn load_targets(&mut self, role: &str, parent: &str) -> anyhow::Result<Signed<Targets>> {
        let top = self.top.as_ref().context("no refreshed metadata")?;
        if role == "targets" {
            return Ok(top.targets.clone());
        }
        if TOP_LEVEL.contains(&role) {
            bail!("a delegated role may not be named {role:?}");
        }
        let delegator =
            if parent == "targets" { &top.targets } else { self.delegated.get(parent).context("parent")? };
        let delegations = delegator.signed.delegations.as_ref().context("delegator has no delegations")?;
        if let Some(known) = self.delegated.get(role) {
            // Reached again, maybe through another delegator: its keys must sign it too.
            delegations
                .verify_role(known, role)
                .with_context(|| format!("role {role:?} is not signed as delegated by {parent:?}"))?;
            return Ok(known.clone());
        }
        let now = wavecast_os::clock::now();
        let meta = top
            .snapshot
            .signed
            .meta
            .get(&format!("{role}.json"))
            .with_context(|| format!("role {role:?} is delegated by {parent:?} but not listed in snapshot"))?;
        let file = self.dir.join(format!("{}.json", quote(role)));
        if let Ok(bytes) = std::fs::read(&file) {
            match verify_delegated(&bytes, role, delegations, meta, now) {
                Ok(t) => {
                    say(format_args!("trusted copy of role {role:?} v{} is current", t.signed.version));
                    self.delegated.insert(role.to_owned(), t.clone());
                    return Ok(t);
                }
                Err(e) => say(format_args!("trusted copy of role {role:?} not usable: {e:#}")),
            }
        }
        let version = if top.root.signed.consistent_snapshot { format!("{}.", meta.version) } else { String::new() };
        let url = url::Url::parse(&format!("{}{version}{}.json", self.metadata_url, quote(role)))?;
        let max = meta.length.unwrap_or(MAX_TARGETS_SIZE);
        let bytes = get(&self.transport, &url).await.with_context(|| format!("fetching role {role:?}"))?;
        if bytes.len() as u64 > max {
            bail!("role {role:?}: {url} sent more than {max} bytes");
        }
        let t = verify_delegated(&bytes, role, delegations, meta, now)
            .with_context(|| format!("role {role:?} v{} refused", meta.version))?;
        write_atomic(&file, &bytes)?;
        say(format_args!("stored verified role {role:?} v{}", t.signed.version));
        self.delegated.insert(role.to_owned(), t.clone());
        Ok(t)
    }

    /// Stores `target` in `dir` (file name: the quoted target path), unless a verified copy is
    /// there already.
    async fn download(&self, name: &str, target: &Target, base: &url::Url, dir: &Path) -> anyhow::Result<()> {
        let top = self.top.as_ref().context("no refreshed metadata")?;
        let dest = dir.join(quote(name));
        if std::fs::read(&dest).is_ok_and(|bytes| verify_target(&bytes, target).is_ok()) {
            say(format_args!("{name}: verified copy already in {}", dir.display()));
            return Ok(());
        }
        let rel = if top.root.signed.consistent_snapshot {
            let (head, file) = name.rsplit_once('/').map_or(("", name), |(d, f)| (d, f));
            let sep = if name.contains('/') { "/" } else { "" };
            format!("{head}{sep}{}.{file}", hex::encode(&target.hashes.sha256))
        } else {
            name.to_owned()
        };
        let url = url::Url::parse(&format!("{base}{rel}")).with_context(|| format!("target URL for {name}"))?;
        let mut resp = self.http.get(url.clone()).send().await.with_context(|| format!("GET {url}"))?;
        say(format_args!("GET {url}: HTTP {}", resp.status()));
        if !resp.status().is_success() {
            bail!("GET {url}: HTTP {}", resp.status());
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.with_context(|| format!("GET {url}"))? {
            body.extend_from_slice(&chunk);
            if body.len() as u64 > target.length {
                bail!("{name}: the server sent more than the signed {} bytes", target.length);
            }
        }
        verify_target(&body, target).with_context(|| format!("{name} refused"))?;
        std::fs::create_dir_all(dir)?;
        write_atomic(&dest, &body)?;
        say(format_args!("{name}: downloaded and verified ({} bytes)", body.len()));
        Ok(())
    }
}

struct Accepted {
    root: Signed<Root>,
    snapshot: Option<Vec<u8>>,
    targets: Option<Vec<u8>>,
}

/// What one refresh fetched, and the trusted copies it may hand to tough instead.
struct Session {
    phase: Phase,
    now: jiff::Timestamp,
    /// The newest root handed to tough (tough stops at the first one it refuses).
    root: Option<Signed<Root>>,
    /// Raw bytes of each `N.root.json` handed to tough, by version.
    roots: BTreeMap<u64, Vec<u8>>,
    local_timestamp: Option<Vec<u8>>,
    local_snapshot: Option<Vec<u8>>,
    local_targets: Option<Vec<u8>>,
    /// Bytes handed to tough for each role.
    timestamp: Option<(Vec<u8>, Signed<Timestamp>)>,
    snapshot: Option<(Vec<u8>, Signed<Snapshot>)>,
    targets: Option<Vec<u8>>,
    /// tough asked for a delegated role and was stopped.
    deferred: bool,
}

/// Where tough is in its fetch sequence: root versions, timestamp, snapshot, targets, then
/// delegated roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Root,
    Snapshot,
    Targets,
    Delegations,
}

#[derive(Debug, Clone, Copy)]
enum Step {
    Root,
    Timestamp,
    Snapshot,
    Targets,
    Delegated,
}

impl Session {
    fn new(root: &[u8], timestamp: Option<Vec<u8>>, snapshot: Option<Vec<u8>>, targets: Option<Vec<u8>>) -> Self {
        Self {
            phase: Phase::Root,
            now: wavecast_os::clock::now(),
            root: parse::<Root>(root).ok(),
            roots: BTreeMap::new(),
            local_timestamp: timestamp,
            local_snapshot: snapshot,
            local_targets: targets,
            timestamp: None,
            snapshot: None,
            targets: None,
            deferred: false,
        }
    }

    fn step(&mut self, url: &url::Url) -> Step {
        match self.phase {
            Phase::Root if url.path().ends_with("/timestamp.json") => {
                self.phase = Phase::Snapshot;
                Step::Timestamp
            }
            Phase::Root => Step::Root,
            Phase::Snapshot => {
                self.phase = Phase::Targets;
                Step::Snapshot
            }
            Phase::Targets => {
                self.phase = Phase::Delegations;
                Step::Targets
            }
            Phase::Delegations => Step::Delegated,
        }
    }

    fn root_fetched(&mut self, bytes: &[u8]) {
        if let Ok(root) = parse::<Root>(bytes) {
            self.roots.insert(root.signed.version.get(), bytes.to_vec());
            self.root = Some(root);
        }
    }

    /// The timestamp to hand tough: our trusted copy when the repository's has the same version
    /// (and both are signed under the current root), else the repository's.
    fn timestamp_fetched(&mut self, remote: Vec<u8>) -> Vec<u8> {
        let keep = (|| {
            let root = self.root.as_ref()?;
            let local_bytes = self.local_timestamp.as_ref()?;
            let local = parse::<Timestamp>(local_bytes).ok()?;
            let new = parse::<Timestamp>(&remote).ok()?;
            root.signed.verify_role(&local).ok()?;
            root.signed.verify_role(&new).ok()?;
            (local.signed.version == new.signed.version).then(|| local_bytes.clone())
        })();
        let bytes = match keep {
            Some(local) => {
                say(format_args!("timestamp version unchanged: keeping the trusted copy"));
                local
            }
            None => remote,
        };
        if let Ok(t) = parse::<Timestamp>(&bytes) {
            self.timestamp = Some((bytes.clone(), t));
        }
        bytes
    }

    /// Our trusted snapshot, when it is still the one the (verified) timestamp lists.
    fn current_local_snapshot(&self) -> Option<Vec<u8>> {
        let meta = self.timestamp.as_ref()?.1.signed.meta.get("snapshot.json")?;
        self.still_current::<Snapshot>(self.local_snapshot.as_ref()?, meta)
    }

    /// Our trusted targets, when it is still the one the (verified) snapshot lists.
    fn current_local_targets(&self) -> Option<Vec<u8>> {
        let meta = self.snapshot.as_ref()?.1.signed.meta.get("targets.json")?;
        self.still_current::<Targets>(self.local_targets.as_ref()?, meta)
    }

    /// `bytes`, our trusted copy of a role, when it is still what `meta` (from the newer role)
    /// lists: signed under the current root, the same version, length and hashes, not expired.
    fn still_current<T: Role + serde::de::DeserializeOwned>(&self, bytes: &[u8], meta: &Metafile) -> Option<Vec<u8>> {
        let root = self.root.as_ref()?;
        let local = parse::<T>(bytes).ok()?;
        root.signed.verify_role(&local).ok()?;
        let usable = local.signed.version() == meta.version
            && matches_metafile(bytes, meta)
            && self.now <= local.signed.expires();
        usable.then(|| bytes.to_vec())
    }
}

/// Wraps the agent's [`HttpTransport`]: records what it hands tough, hands tough still-current
/// trusted copies instead of downloading them again, and stops tough at delegated roles.
#[derive(Debug, Clone)]
struct SessionTransport {
    inner: HttpTransport,
    session: Arc<Mutex<Session>>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("phase", &self.phase).field("deferred", &self.deferred).finish_non_exhaustive()
    }
}

#[tough::async_trait]
impl tough::Transport for SessionTransport {
    async fn fetch(&self, url: url::Url) -> Result<TransportStream, TransportError> {
        let step = lock(&self.session).step(&url);
        let bytes = match step {
            Step::Root => {
                let bytes = get(&self.inner, &url).await?;
                lock(&self.session).root_fetched(&bytes);
                bytes
            }
            Step::Timestamp => {
                let remote = get(&self.inner, &url).await?;
                lock(&self.session).timestamp_fetched(remote)
            }
            Step::Snapshot => {
                let local = lock(&self.session).current_local_snapshot();
                let bytes = match local {
                    Some(b) => {
                        say(format_args!("snapshot unchanged: using the trusted copy, not {url}"));
                        b
                    }
                    None => get(&self.inner, &url).await?,
                };
                let mut s = lock(&self.session);
                if let Ok(parsed) = parse::<Snapshot>(&bytes) {
                    s.snapshot = Some((bytes.clone(), parsed));
                }
                bytes
            }
            Step::Targets => {
                let local = lock(&self.session).current_local_targets();
                let bytes = match local {
                    Some(b) => {
                        say(format_args!("targets unchanged: using the trusted copy, not {url}"));
                        b
                    }
                    None => get(&self.inner, &url).await?,
                };
                lock(&self.session).targets = Some(bytes.clone());
                bytes
            }
            Step::Delegated => {
                lock(&self.session).deferred = true;
                return Err(TransportError::new_with_cause(
                    TransportErrorKind::Other,
                    url.as_str(),
                    "delegated roles are loaded on demand by the target search",
                ));
            }
        };
        Ok(Box::pin(futures_util::stream::once(async move { Ok(bytes::Bytes::from(bytes)) })))
    }
}

/// One whole body through the agent's transport, logged.
async fn get(transport: &HttpTransport, url: &url::Url) -> Result<Vec<u8>, TransportError> {
    let r = async { transport.fetch(url.clone()).await?.into_vec().await }.await;
    match &r {
        Ok(b) => say(format_args!("GET {url}: {} bytes", b.len())),
        Err(e) if e.kind() == TransportErrorKind::FileNotFound => say(format_args!("GET {url}: not found")),
        Err(e) => say(format_args!("GET {url}: {}", chain(e))),
    }
    r
}

/// Checks delegated targets metadata against snapshot's entry and the delegator's keys.
fn verify_delegated(
    bytes: &[u8],
    role: &str,
    delegations: &Delegations,
    meta: &Metafile,
    now: jiff::Timestamp,
) -> anyhow::Result<Signed<Targets>> {
    if let Some(len) = meta.length.filter(|&len| len != bytes.len() as u64) {
        bail!("length {} differs from the {len} bytes snapshot lists", bytes.len());
    }
    if let Some(h) = &meta.hashes {
        verify_hashes(bytes, &h.sha256, &h._extra)?;
    }
    let t = parse::<Targets>(bytes)?;
    delegations.verify_role(&t, role)?;
    if t.signed.version != meta.version {
        bail!("version {} differs from version {} that snapshot lists", t.signed.version, meta.version);
    }
    if now > t.signed.expires {
        bail!("expired at {}", t.signed.expires);
    }
    Ok(t)
}

fn verify_target(bytes: &[u8], target: &Target) -> anyhow::Result<()> {
    if bytes.len() as u64 != target.length {
        bail!("length {} differs from the signed {}", bytes.len(), target.length);
    }
    verify_hashes(bytes, &target.hashes.sha256, &target.hashes._extra)
}

/// Checks the sha256 and every other listed hash; an algorithm we cannot compute is refused.
fn verify_hashes(bytes: &[u8], sha256: &[u8], others: &HashMap<String, serde_json::Value>) -> anyhow::Result<()> {
    if digest::digest(&SHA256, bytes).as_ref() != sha256 {
        bail!("sha256 mismatch");
    }
    for (alg, want) in others {
        let want = want.as_str().with_context(|| format!("{alg} hash is not a string"))?;
        let got = match alg.as_str() {
            "sha512" => hex::encode(digest::digest(&SHA512, bytes)),
            "sha384" => hex::encode(digest::digest(&SHA384, bytes)),
            "sha224" => hex::encode(digest::digest(&SHA224, bytes)),
            _ => bail!("unsupported hash algorithm {alg:?}"),
        };
        if !got.eq_ignore_ascii_case(want) {
            bail!("{alg} mismatch");
        }
    }
    Ok(())
}

fn matches_metafile(bytes: &[u8], meta: &Metafile) -> bool {
    meta.length.is_none_or(|l| l == bytes.len() as u64)
        && meta.hashes.as_ref().is_none_or(|h| verify_hashes(bytes, &h.sha256, &h._extra).is_ok())
}

/// Whether delegation `role` covers target path `name`.
fn delegates(role: &DelegatedRole, name: &str) -> bool {
    match &role.paths {
        PathSet::Paths(patterns) => patterns.iter().any(|p| path_matches(name, p.value())),
        PathSet::PathHashPrefixes(prefixes) => {
            let digest = hex::encode(digest::digest(&SHA256, name.as_bytes()));
            prefixes.iter().any(|p| digest.starts_with(p.value()))
        }
    }
}

/// The specification's PATHPATTERN match: shell-style wildcards, segment by segment, so a
/// wildcard never matches `/`.
fn path_matches(name: &str, pattern: &str) -> bool {
    let names: Vec<&str> = name.split('/').collect();
    let patterns: Vec<&str> = pattern.split('/').collect();
    names.len() == patterns.len()
        && names.iter().zip(&patterns).all(|(n, p)| {
            let n: Vec<char> = n.chars().collect();
            let p: Vec<char> = p.chars().collect();
            fnmatch(&n, &p)
        })
}

/// Shell-style matching of one segment: `*`, `?`, `[seq]`, `[!seq]` (as Python's `fnmatch`).
fn fnmatch(name: &[char], pat: &[char]) -> bool {
    match pat.split_first() {
        None => name.is_empty(),
        Some(('*', rest)) => {
            let rest = rest.iter().position(|&c| c != '*').map_or(&rest[rest.len()..], |i| &rest[i..]);
            (0..=name.len()).any(|i| fnmatch(&name[i..], rest))
        }
        Some(('?', rest)) => !name.is_empty() && fnmatch(&name[1..], rest),
        Some(('[', rest)) => match char_class(rest) {
            Some((set, negated, after)) => match name.split_first() {
                Some((c, tail)) => {
                    let inside = set.iter().any(|&(lo, hi)| lo <= *c && *c <= hi);
                    inside != negated && fnmatch(tail, after)
                }
                None => false,
            },
            None => name.first() == Some(&'[') && fnmatch(&name[1..], rest),
        },
        Some((c, rest)) => name.first() == Some(c) && fnmatch(&name[1..], rest),
    }
}

/// A `[...]` class: inclusive ranges, whether negated, and the rest of the pattern.
type CharClass<'a> = (Vec<(char, char)>, bool, &'a [char]);

/// Parses the body of a `[...]` class (after `[`): its ranges, whether negated, and the pattern
/// after `]`; `None` when there is no closing `]` (then `[` is literal).
fn char_class(pat: &[char]) -> Option<CharClass<'_>> {
    let negated = pat.first() == Some(&'!');
    let body_start = usize::from(negated);
    // A `]` right at the start is a member, not the end.
    let search_from = if pat.get(body_start) == Some(&']') { body_start + 1 } else { body_start };
    let end = search_from + pat.get(search_from..)?.iter().position(|&c| c == ']')?;
    let body = &pat[body_start..end];
    let mut set = Vec::new();
    let mut i = 0;
    while i < body.len() {
        if i + 2 < body.len() && body[i + 1] == '-' {
            set.push((body[i], body[i + 2]));
            i += 3;
        } else {
            set.push((body[i], body[i]));
            i += 1;
        }
    }
    Some((set, negated, &pat[end + 1..]))
}

/// Percent-encodes everything but ASCII letters, digits and `_.-~` (Python's
/// `urllib.parse.quote(s, safe="")`): role names in URLs and file names, target file names.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn parse<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> anyhow::Result<Signed<T>> {
    serde_json::from_slice(bytes).context("metadata does not parse")
}

/// Writes a trusted copy into tough's datastore, marked so that a rewrite by tough shows.
fn seed(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    if let Ok(serde_json::Value::Object(mut m)) = serde_json::from_slice::<serde_json::Value>(bytes) {
        m.insert(SEED_MARK.to_owned(), serde_json::Value::Bool(true));
        std::fs::write(path, serde_json::to_vec(&m)?).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Whether tough wrote `path` in this run (it exists without our seed mark).
fn rewritten(path: &Path) -> bool {
    match std::fs::read(path).map(|b| serde_json::from_slice::<serde_json::Value>(&b)) {
        Ok(Ok(serde_json::Value::Object(m))) => !m.contains_key(SEED_MARK),
        _ => false,
    }
}

/// Replaces `path` durably (a hidden temporary beside it, never read as metadata, then a rename).
fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    wavecast_os::fs::write_atomic(path, bytes, 0o644).with_context(|| format!("writing {}", path.display()))
}

fn with_slash(mut url: url::Url) -> url::Url {
    if !url.path().ends_with('/') {
        let p = format!("{}/", url.path());
        url.set_path(&p);
    }
    url
}

fn lock(s: &Mutex<Session>) -> MutexGuard<'_, Session> {
    s.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn say(msg: std::fmt::Arguments<'_>) {
    eprintln!("tuf-client: {msg}");
}

/// A private directory for tough's datastore, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> anyhow::Result<Self> {
        let base = std::env::temp_dir();
        let nanos = wavecast_os::clock::now().as_nanosecond();
        for n in 0..100u32 {
            let p = base.join(format!("wavecast-tuf-client-{}-{nanos}-{n}", std::process::id()));
            match std::fs::create_dir(&p) {
                Ok(()) => return Ok(Self(p)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e).with_context(|| format!("creating {}", p.display())),
            }
        }
        bail!("could not create a temporary directory in {}", base.display())
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_patterns_match_segment_by_segment() {
        assert!(path_matches("README.md", "*.md"));
        assert!(!path_matches("releases/README.md", "*.md"));
        assert!(path_matches("releases/x/x_v1", "releases/*/*"));
        assert!(path_matches("releases/x/x_v1", "releases/x/*"));
        assert!(!path_matches("releases/z/z_v1.zip", "releases/y/*.zip"));
        assert!(path_matches("foo-1.tgz", "foo-?.tgz"));
        assert!(!path_matches("foo-alpha.tgz", "foo-?.tgz"));
        assert!(!path_matches("README.MD", "*.md"));
        assert!(path_matches("a1", "a[0-9]"));
        assert!(!path_matches("a1", "a[!0-9]"));
        assert!(path_matches("a[", "a["));
        assert!(path_matches("anything at all", "*"));
        assert!(path_matches("", "*"));
    }

    #[test]
    fn quoting_matches_python() {
        assert_eq!(quote("?"), "%3F");
        assert_eq!(quote("../delegatedrole"), "..%2Fdelegatedrole");
        assert_eq!(quote("a b~c"), "a%20b~c");
        assert_eq!(quote("ö"), "%C3%B6");
    }

    #[test]
    fn exit_codes_are_zero_or_one() {
        assert!(!succeeds(vec!["--bogus".into()]));
        assert!(!succeeds(vec![]));
        assert!(succeeds(vec!["--help".into()]));
    }
}
