//! The device loop: check in, verify the director's assignment, and carry out each install or
//! revert through the journal, so a crash at any step resumes where it stopped.
//!
//! Order of an install, each step journaled before it starts:
//! TUF metadata (pinned root, rollback record) → cross-check director against TUF (digest,
//! length, hardware) → download (resumable, capped, hashed) → check the bytes → swap (old
//! version kept) → probe → keep, or roll back locally. Reports go to the outbox first and are
//! delivered when the server answers; their ids are derived from what they report, so a
//! report re-sent after a crash is applied once.
//!
//! Before the swap, an install follows its assignment: it resumes after a restart only while
//! the latest verified doc still assigns it, and stops (keeping its partial download) when a
//! heartbeat's answer says the assignment no longer stands. Problems that are not the
//! update's fault are waited out with backoff and told in heartbeats ([`crate::wait`]); only a
//! verification failure is refused. After the swap, the device finishes on its own: it ends on
//! the new version confirmed healthy, or on the previous one.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};
use tokio::time::Instant;
use wavecast_core::assignment::{Action, ActiveArtifact, Assignment, DeviceState, Report, ReportAck, ReportBatch};
use wavecast_core::progress::{Progress, WaitClass, Waiting};
use wavecast_core::{ArtifactName, ArtifactVersion, Sha256Digest, TargetName};
use wavecast_os::clock;
use wavecast_os::error::chain;
use wavecast_tuf::golden::Golden;

use crate::config::{AgentConfig, ArtifactConfig};
use crate::director;
use crate::fetch::{FetchError, Fetched, Watch, fetch};
use crate::heartbeat::{Heartbeat, Rate};
use crate::net::{self, NetError};
use crate::probe::{self, ProbeOutcome};
use crate::roots::{Roots, RootsError};
use crate::state::{
    Change, Hook, Identity, Installed, Journal, Outcome, Phase, Previous, Refused, StateDir, StateError, Work,
};
use crate::swap::{Restore, Slots, sha256_file};
use crate::tuf::{self, HttpTransport};
use crate::wait;

/// Errors that stop the agent (as opposed to an install failing, which is reported).
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Local state is unusable.
    #[error(transparent)]
    State(#[from] StateError),
    /// Enrollment failed.
    #[error("enrolling {device} with {server}")]
    Enroll {
        /// Device name.
        device: String,
        /// Server.
        server: String,
        /// Why.
        #[source]
        source: EnrollError,
    },
    /// The HTTP client could not be built.
    #[error("setting up HTTPS")]
    Http(#[source] HttpSetupError),
    /// The trust roots kept after the pinned one do not verify.
    #[error(transparent)]
    Roots(#[from] RootsError),
}

/// Why enrollment failed.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// Not enrolled, and nothing to enroll with.
    #[error("this device is not enrolled yet and agent.toml has no enrollment_token")]
    NoToken,
    /// The enrollment URL could not be formed from `server`.
    #[error(transparent)]
    Url(url::ParseError),
    /// The server could not be reached or did not answer.
    #[error(transparent)]
    Request(Box<NetError>),
    /// The server refused the enrollment.
    #[error("HTTP {status}: {message}")]
    Refused {
        /// The status.
        status: reqwest::StatusCode,
        /// The server's message.
        message: String,
    },
    /// The server's answer lacks a field.
    #[error("the answer lacks {0}")]
    Incomplete(&'static str),
    /// The pinned root is not the server's: every doc it sends would be refused.
    #[error(
        "refusing to enroll: {} is not this server's trust root (the server's root.json version {version} is \
         different); put a copy of the root.json of the server's installation at trust_root",
        .path.display()
    )]
    ForeignRoot {
        /// trust_root.
        path: std::path::PathBuf,
        /// The pinned root's version.
        version: u64,
    },
    /// The server has no root of the pinned root's version.
    #[error(
        "refusing to enroll: {} is not this server's trust root (the server has no root.json version {version}); \
         put a copy of the root.json of the server's installation at trust_root",
        .path.display()
    )]
    NoSuchRoot {
        /// trust_root.
        path: std::path::PathBuf,
        /// The pinned root's version.
        version: u64,
    },
    /// The server would not show its root, so the check cannot be made.
    #[error(
        "refusing to enroll: the server answered HTTP {status} when asked for its root.json version {version}, so \
         this agent cannot check that it pins the server's trust root"
    )]
    RootUnavailable {
        /// The pinned root's version.
        version: u64,
        /// The status.
        status: reqwest::StatusCode,
    },
}

/// Why the HTTP client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum HttpSetupError {
    /// `ca_file` could not be read.
    #[error("reading ca_file {}", .0.display())]
    ReadCa(std::path::PathBuf, #[source] std::io::Error),
    /// `ca_file` does not hold PEM certificates.
    #[error("ca_file {} is not PEM certificates", .0.display())]
    CaPem(std::path::PathBuf, #[source] reqwest::Error),
    /// `client_cert` or `client_key` could not be read.
    #[error("reading {}", .0.display())]
    ReadIdentity(std::path::PathBuf, #[source] std::io::Error),
    /// `client_cert` and `client_key` do not make an identity.
    #[error("client_cert {} / client_key {}", .cert.display(), .key.display())]
    Identity {
        /// The certificate file.
        cert: std::path::PathBuf,
        /// The key file.
        key: std::path::PathBuf,
        /// The cause.
        #[source]
        source: reqwest::Error,
    },
    /// reqwest refused the settings.
    #[error(transparent)]
    Build(reqwest::Error),
}

/// How an install step ended when it did not succeed.
enum Stop {
    /// A transient problem: try again with backoff, and say what the device waits for.
    Wait(Waiting),
    /// Refused: report it and never try this version for this rollout again.
    Refuse(String),
    /// The assignment no longer stands: stop, keep the partial download, wait for a new doc.
    Dropped(String),
}

fn wait_for(class: WaitClass, reason: impl Into<String>) -> Stop {
    Stop::Wait(Waiting { class, reason: reason.into() })
}

/// An install waiting out a transient problem.
#[derive(Debug)]
struct Retry {
    work: Work,
    /// Transient failures in a row.
    attempts: u32,
    /// No attempt before this.
    not_before: Instant,
    /// What it waits for.
    waiting: Waiting,
}

/// An install whose assignment stopped standing, with the doc generation it was dropped in:
/// it starts again only when a newer doc still assigns it.
#[derive(Debug)]
struct Dropped {
    rollout_id: String,
    sha256: Sha256Digest,
    generation: u64,
}

/// Why work stops when a heartbeat's answer says `proceed: false`.
const NO_LONGER_STANDS: &str = "the server says the assignment no longer stands";

/// The largest answer to a report batch or an enrollment the agent reads.
const MAX_ANSWER_BYTES: u64 = 1 << 20;

/// A running agent.
pub struct Agent {
    config: AgentConfig,
    state: StateDir,
    http: reqwest::Client,
    /// For HTTP probes: redirects only to listed hosts.
    probe_http: reqwest::Client,
    identity: Identity,
    /// The pinned root and the later ones verified from it: the director key and tough's
    /// starting root come from the newest.
    roots: Roots,
    /// The last doc whose signature sent the agent to look for a newer root (found or not):
    /// the same doc does not send it again.
    roots_checked_for: Option<Sha256Digest>,
    etag: Option<String>,
    /// The longest the server holds a check-in (long-poll), as its last answer offered.
    long_poll: Option<Duration>,
    /// When the server's last answer suggested checking in next.
    next_poll: Option<Duration>,
    assignments: Vec<Assignment>,
    doc_expires: i64,
    /// Counts the docs with new content accepted since the agent started.
    doc_generation: u64,
    /// The SHA-256 of the last accepted doc's signed part, to tell a new doc from the same one.
    doc_digest: Option<Sha256Digest>,
    reported_refusals: HashSet<String>,
    heartbeat: Heartbeat,
    retries: HashMap<ArtifactName, Retry>,
    dropped: HashMap<ArtifactName, Dropped>,
}

/// Builds the HTTP client, trusting only `ca_file` when one is configured.
pub fn http_client(config: &AgentConfig) -> Result<reqwest::Client, AgentError> {
    client_builder(config)?.build().map_err(|e| AgentError::Http(HttpSetupError::Build(e)))
}

/// Builds the client HTTP probes use: redirects only to listed hosts, and no proxy, so the
/// only connections a probe makes are to hosts agent.toml lists.
pub fn probe_client(config: &AgentConfig) -> Result<reqwest::Client, AgentError> {
    client_builder(config)?
        .redirect(probe::redirect_policy(config.probes.http_hosts.clone()))
        .no_proxy()
        .build()
        .map_err(|e| AgentError::Http(HttpSetupError::Build(e)))
}

/// The server may send a download to its object store (`--blob-redirect`): a presigned URL on
/// another host. It is followed with the `Range` the agent asked for and never with the
/// device's credential (reqwest drops `Authorization` when the host changes), and the bytes are
/// verified exactly as when the server sends them. Never from HTTPS down to plain HTTP: the
/// URL is a short-lived key to the model's bytes, not to be sent in the clear.
fn server_redirects() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let downgrade =
            attempt.previous().last().is_some_and(|from| from.scheme() == "https") && attempt.url().scheme() != "https";
        if downgrade {
            let to = attempt.url().host_str().unwrap_or_default().to_owned();
            attempt.error(format!("the server redirected from HTTPS to plain HTTP ({to}); not followed"))
        } else if attempt.previous().len() >= 3 {
            attempt.error("more than 3 redirects")
        } else {
            attempt.follow()
        }
    })
}

fn client_builder(config: &AgentConfig) -> Result<reqwest::ClientBuilder, AgentError> {
    let mut b = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .redirect(server_redirects())
        .user_agent(concat!("wavecast-agent/", env!("CARGO_PKG_VERSION")));
    if let Some(ca) = &config.ca_file {
        let pem = std::fs::read(ca).map_err(|e| AgentError::Http(HttpSetupError::ReadCa(ca.clone(), e)))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| AgentError::Http(HttpSetupError::CaPem(ca.clone(), e)))?;
        b = b.tls_certs_only(certs);
    }
    if let Some((cert, key)) = &config.client_identity {
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|e| AgentError::Http(HttpSetupError::ReadIdentity(p.to_path_buf(), e)))
        };
        let mut pem = read(key)?;
        pem.extend_from_slice(&read(cert)?);
        let identity = reqwest::Identity::from_pem(&pem).map_err(|source| {
            AgentError::Http(HttpSetupError::Identity { cert: cert.clone(), key: key.clone(), source })
        })?;
        b = b.identity(identity);
    }
    Ok(b)
}

impl Agent {
    /// Opens the state dir and enrolls if this device has no identity yet.
    pub async fn start(config: AgentConfig) -> Result<Self, AgentError> {
        let state = StateDir::open_with(&config.state_dir, &|| kill_at(&config, "during-migration"))?;
        let roots = Roots::load(&config.trust_root, &state)?;
        let http = http_client(&config)?;
        let probe_http = probe_client(&config)?;
        let identity = match state.identity()? {
            Some(id) => id,
            None => {
                let id = enroll(&config, &http).await?;
                state.save_identity(&id)?;
                tracing::info!(device = %id.name, id = %id.device_id, "enrolled");
                id
            }
        };
        let heartbeat =
            Heartbeat::new(http.clone(), &config.server, identity.credential.clone(), config.download.stall_timeout);
        Ok(Self {
            config,
            state,
            http,
            probe_http,
            identity,
            roots,
            roots_checked_for: None,
            etag: None,
            long_poll: None,
            next_poll: None,
            assignments: Vec::new(),
            doc_expires: 0,
            doc_generation: 0,
            doc_digest: None,
            reported_refusals: HashSet::new(),
            heartbeat,
            retries: HashMap::new(),
            dropped: HashMap::new(),
        })
    }

    /// This device's id on the server.
    pub fn device_id(&self) -> &str {
        &self.identity.device_id
    }

    /// Checks in every poll interval (±20%) until `shutdown` resolves.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        // Poll it once now: a signal future installs its handler on first poll, and until then
        // a SIGTERM during the first (possibly long) tick would kill the process outright.
        tokio::select! {
            biased;
            () = &mut shutdown => return,
            () = std::future::ready(()) => {}
        }
        loop {
            self.recover_all().await;
            self.deliver().await;
            // A held check-in (long-poll) can last a minute: stopping does not wait for it.
            let answer = tokio::select! {
                biased;
                () = &mut shutdown => return,
                answer = self.check_in() => answer,
            };
            self.on_answer(answer).await;
            self.act_all().await;
            self.deliver().await;
            // Until the next check-in, installs that wait out a problem keep saying so. The
            // server paces check-ins (at once after a held one, soon while this device's wave
            // is open), within the owner's bound: never longer than the poll interval.
            let ours = jitter(self.config.poll_interval);
            let next_poll = Instant::now() + self.next_poll.take().map_or(ours, |theirs| theirs.min(ours));
            loop {
                let due = self.heartbeat.next_due(self.retries.keys().map(ArtifactName::as_str));
                let wake = due.map_or(next_poll, |d| d.min(next_poll));
                tokio::select! {
                    () = &mut shutdown => return,
                    () = tokio::time::sleep_until(wake) => {}
                }
                if Instant::now() >= next_poll {
                    break;
                }
                self.heartbeat_retries().await;
            }
        }
    }

    /// One cycle: finish work interrupted past the swap, deliver reports, check in, act on the
    /// assignments (resuming an interrupted install only if its assignment still stands),
    /// deliver again.
    pub async fn tick(&mut self) {
        self.recover_all().await;
        self.deliver().await;
        self.poll().await;
        self.act_all().await;
        self.deliver().await;
    }

    async fn recover_all(&mut self) {
        for cfg in self.config.artifacts.clone() {
            if let Err(e) = self.recover(&cfg).await {
                tracing::error!(artifact = %cfg.name, error = %chain(&e), "resuming interrupted work failed");
            }
        }
    }

    async fn act_all(&mut self) {
        for cfg in self.config.artifacts.clone() {
            if let Err(e) = self.act(&cfg).await {
                tracing::error!(artifact = %cfg.name, error = %chain(&e), "acting on the assignment failed");
            }
        }
    }

    fn crash(&self, point: &str) {
        kill_at(&self.config, point);
    }

    fn report(
        &self,
        rollout_id: &str,
        artifact: &str,
        version: &str,
        state: DeviceState,
        reason: Option<String>,
    ) -> Report {
        // The id names the transition, so the same transition re-sent after a crash is
        // recognised by the server and applied once.
        let mut h = wavecast_core::Sha256Hasher::new();
        for part in [self.identity.device_id.as_str(), rollout_id, artifact, version, state.as_str()] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        Report {
            id: hex::encode(&h.finish().as_bytes()[..16]),
            rollout_id: rollout_id.to_owned(),
            artifact: artifact.to_owned(),
            version: version.to_owned(),
            state,
            reason,
            probe_result: None,
            at_ms: clock::now_ms(),
        }
    }

    fn queue(
        &self,
        cfg: &ArtifactConfig,
        work: &Work,
        state: DeviceState,
        reason: Option<String>,
    ) -> Result<(), StateError> {
        self.state.push_report(&self.report_of(cfg, work, state, reason))
    }

    fn report_of(&self, cfg: &ArtifactConfig, work: &Work, state: DeviceState, reason: Option<String>) -> Report {
        self.report(&work.rollout_id, cfg.name.as_str(), &work.version.to_string(), state, reason)
    }

    /// Writes `j` as the artifact's journal together with the reports the transition queues:
    /// one record, one flush, so neither is ever on disk without the other. In debug builds
    /// this is where the crash tests' kill points `torn-PHASE` (half of the record that sets
    /// PHASE written, then SIGKILL) and `during-compaction` are.
    fn transition(&self, cfg: &ArtifactConfig, j: &Journal, reports: &[Report]) -> Result<(), StateError> {
        let change = Change { journal: Some((&cfg.name, j)), reports };
        let torn = format!("torn-{}", j.phase.name());
        let tear = || self.crash(&torn);
        let compacting = || self.crash("during-compaction");
        let hook = match self.config.crash_at.as_deref() {
            Some(p) if cfg!(debug_assertions) && p == torn => Hook::Torn(&tear),
            Some("during-compaction") if cfg!(debug_assertions) => Hook::Compacting(&compacting),
            _ => Hook::Append,
        };
        self.state.commit(change, hook)
    }

    // ----- checking in ----------------------------------------------------------------------

    async fn poll(&mut self) {
        let answer = self.check_in().await;
        self.on_answer(answer).await;
    }

    /// Asks the server for this device's assignments: held (long-poll) when the server offers
    /// it, the device holds a current doc, and no install waits out a problem (whose heartbeats
    /// must not wait for the answer). Only network work: it changes nothing, so stopping may
    /// drop it at any point.
    async fn check_in(&self) -> CheckIn {
        let mut url = match self.config.server.join("device/v1/assignments") {
            Ok(u) => u,
            Err(e) => return CheckIn::Failed(format!("bad server URL: {e}")),
        };
        let fresh = clock::now().as_second() < self.doc_expires;
        let etag = self.etag.as_ref().filter(|_| fresh);
        let wait = self.long_poll.filter(|_| etag.is_some() && self.retries.is_empty());
        if let Some(w) = wait {
            url.set_query(Some(&format!("wait={}s", w.as_secs())));
        }
        let held = wait.unwrap_or_default();
        // Silence is the measure: a held check-in is silent by design for up to its wait.
        let window = self.config.download.stall_timeout;
        let mut req =
            self.http.get(url.clone()).bearer_auth(&self.identity.credential).timeout(held + Duration::from_secs(30));
        if let Some(etag) = etag {
            req = req.header(reqwest::header::IF_NONE_MATCH, etag);
        }
        let resp = match net::send(req, &url, window + held).await {
            Ok(r) => r,
            Err(e) => return CheckIn::Failed(format!("cannot reach the server; will retry: {}", chain(&e))),
        };
        let pacing = Pacing::of(resp.headers());
        match resp.status() {
            reqwest::StatusCode::NOT_MODIFIED => CheckIn::Unchanged(pacing),
            s if s.is_success() => {
                let etag = resp.headers().get(reqwest::header::ETAG).and_then(|v| v.to_str().ok()).map(str::to_owned);
                // Capped while it streams: a doc names a few artifacts, and a server sending
                // more is broken or hostile.
                match net::read_capped(resp, &url, self.config.max_assignment_bytes, window).await {
                    Ok(body) => CheckIn::Doc { etag, body, pacing },
                    Err(e) => CheckIn::Failed(format!("reading the assignment failed; will retry: {}", chain(&e))),
                }
            }
            reqwest::StatusCode::UNAUTHORIZED => CheckIn::Refused(
                "the server does not accept this device's credential; was the device removed or its state dir copied?"
                    .into(),
            ),
            s => CheckIn::Failed(format!("the server refused the check-in (HTTP {s}); will retry")),
        }
    }

    /// Takes in what a check-in brought: a new doc is verified and kept, and the server's
    /// pacing followed.
    async fn on_answer(&mut self, answer: CheckIn) {
        match answer {
            CheckIn::Unchanged(pacing) => self.follow(pacing),
            CheckIn::Doc { etag, body, pacing } => {
                self.follow(pacing);
                if let Err(e) = self.accept(&body).await {
                    tracing::error!(error = %chain(&e), "processing the assignment failed");
                } else {
                    self.etag = etag;
                }
            }
            CheckIn::Failed(why) => {
                tracing::warn!("{why}");
                self.next_poll = None;
            }
            CheckIn::Refused(why) => {
                tracing::error!("{why}");
                self.next_poll = None;
            }
        }
    }

    fn follow(&mut self, pacing: Pacing) {
        self.long_poll = pacing.long_poll;
        self.next_poll = pacing.next_poll;
    }

    /// Verifies a signed assignment doc and keeps its assignments.
    async fn accept(&mut self, body: &[u8]) -> Result<(), StateError> {
        let doc = match director::parse_doc(body) {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "the assignment does not parse; ignored");
                return Ok(());
            }
        };
        let mut signer = director::signer(&doc, self.roots.directors());
        let seen = Sha256Digest::of(&[doc.message.as_slice(), &doc.signature].concat());
        if signer != director::Signer::Current && self.roots_checked_for != Some(seen) {
            // A rotated director key signs docs as soon as the server has the new root, which
            // this device may not have fetched yet: look for it once before refusing.
            if self.refresh_roots().await.is_ok() {
                self.roots_checked_for = Some(seen);
            }
            signer = director::signer(&doc, self.roots.directors());
        }
        if let Some(reason) = signer.refusal() {
            // Not reported: content the current director did not sign names nothing we can
            // trust, not even the rollout to report to.
            tracing::error!(%reason, "assignment ignored");
            return Ok(());
        }
        let mut trusted = self.state.trusted()?;
        match director::check(&doc, &self.identity.device_id, clock::now(), trusted.counter) {
            Err(refusal @ director::Refusal::Expired { .. }) => {
                // Not an update's failure: a doc held back and replayed, or this device's
                // clock running ahead. Nothing in it is acted on, and nothing is reported
                // failed; the next check-in asks for a fresh doc.
                tracing::warn!(reason = %refusal, now = %clock::now(), "assignment doc ignored; is this device's clock right?");
                return Ok(());
            }
            Err(refusal) => {
                let reason = refusal.to_string();
                tracing::error!(%reason, "assignment refused");
                for item in &doc.items {
                    self.report_refused_item(item, &reason)?;
                }
                return Ok(());
            }
            Ok(director::Accepted { new_counter: Some(counter) }) => {
                // Written with the first record this doc leads to, before anything is done on it.
                trusted.counter = counter;
                self.state.accept_trusted(&trusted);
            }
            Ok(director::Accepted { new_counter: None }) => {}
        }
        let mut accepted = Vec::new();
        for item in &doc.items {
            match director::parse_item(item) {
                Ok(a) => accepted.push(a),
                Err(e) => {
                    let reason = format!("assignment refused: {e}");
                    tracing::error!(%reason, "assignment refused");
                    self.report_refused_item(item, &reason)?;
                }
            }
        }
        let digest = Sha256Digest::of(&doc.message);
        if self.doc_digest != Some(digest) {
            self.doc_digest = Some(digest);
            self.doc_generation += 1;
        }
        self.assignments = accepted;
        self.doc_expires = doc.expires;
        Ok(())
    }

    /// Follows the trust root to the newest version the server has, keeping each new one.
    async fn refresh_roots(&mut self) -> Result<u64, RootsError> {
        let window = self.config.download.stall_timeout;
        let credential = Some(self.identity.credential.as_str());
        let refreshed = self.roots.refresh(&self.http, &self.config.server, credential, window, &self.state).await;
        if let Err(e) = &refreshed {
            tracing::warn!(error = %chain(e), "could not follow the trust root to a newer version");
        }
        refreshed
    }

    fn report_refused_item(&mut self, item: &serde_json::Value, reason: &str) -> Result<(), StateError> {
        let s = |k: &str| item[k].as_str().unwrap_or_default().chars().take(128).collect::<String>();
        let report =
            self.report(&s("rollout_id"), &s("artifact"), &s("version"), DeviceState::Failed, Some(reason.to_owned()));
        if self.reported_refusals.insert(format!("{}:{reason}", report.id)) {
            self.state.push_report(&report)?;
        }
        Ok(())
    }

    // ----- acting -------------------------------------------------------------------------

    /// Acts on this artifact's assignment: resumes an interrupted install while its assignment
    /// stands (dropping it when not), or starts what the doc asks for.
    async fn act(&mut self, cfg: &ArtifactConfig) -> Result<(), StateError> {
        let j = self.state.journal(&cfg.name)?;
        match j.phase.clone() {
            Phase::Installing { work } => {
                if !self.doc_is_current() {
                    // Nothing heard from the server since the restart (or only an expired doc):
                    // the download needs the server anyway, and whether the assignment still
                    // stands is its to say.
                    return Ok(());
                }
                if self.assigned(cfg, &work) {
                    return self.attempt(cfg, work).await;
                }
                self.drop_work(cfg, &work, "the latest assignment doc no longer assigns it")?;
                self.begin(cfg).await
            }
            Phase::Idle => self.begin(cfg).await,
            // Past the swap: `recover` finishes it.
            _ => Ok(()),
        }
    }

    /// Whether the doc held is verified and not expired.
    fn doc_is_current(&self) -> bool {
        self.doc_expires > clock::now().as_second()
    }

    /// Whether the current doc still asks this device to install exactly `work`.
    fn assigned(&self, cfg: &ArtifactConfig, work: &Work) -> bool {
        self.doc_is_current()
            && self.assignments.iter().any(|a| {
                a.artifact == cfg.name
                    && a.action == Action::Install
                    && a.rollout_id == work.rollout_id
                    && a.sha256 == work.sha256
                    && a.version == work.version
                    && a.length == work.length
            })
    }

    /// Starts what the doc asks of an idle artifact.
    async fn begin(&mut self, cfg: &ArtifactConfig) -> Result<(), StateError> {
        let Some(a) = self.assignments.iter().find(|a| a.artifact == cfg.name).cloned() else {
            self.retries.remove(&cfg.name);
            return Ok(());
        };
        let mut j = self.state.journal(&cfg.name)?;
        if j.phase != Phase::Idle {
            return Ok(());
        }
        let work = Work {
            rollout_id: a.rollout_id.clone(),
            version: a.version.clone(),
            sha256: a.sha256,
            length: a.length,
            probe: a.probe.clone(),
            golden: None,
        };
        match a.action {
            Action::Install => {
                if j.active.as_ref().is_some_and(|x| x.sha256 == a.sha256) {
                    let told = j.last_outcome.as_ref().is_some_and(|o| {
                        o.rollout_id == a.rollout_id && matches!(o.state, DeviceState::Succeeded | DeviceState::Failed)
                    });
                    if !told {
                        // Already running it (an earlier rollout, or this one before a
                        // crash): the rollout still needs to hear so.
                        let told = self.report_of(cfg, &work, DeviceState::Succeeded, None);
                        j.last_outcome = Some(outcome_of(&work, DeviceState::Succeeded, None));
                        self.transition(cfg, &j, &[told])?;
                    }
                    return Ok(());
                }
                if j.refused(&a.rollout_id, &a.sha256) {
                    return Ok(());
                }
                if self.dropped.get(&cfg.name).is_some_and(|d| {
                    d.rollout_id == a.rollout_id && d.sha256 == a.sha256 && d.generation == self.doc_generation
                }) {
                    // Dropped on the server's word while this same doc was current: wait for
                    // the next one.
                    return Ok(());
                }
                if let Err(reason) = probe::resolve(&work.probe.kind, &self.config.probes) {
                    // A probe naming what this device does not list could never pass: refused
                    // before anything is downloaded, in one record.
                    return self.refuse(cfg, work, format!("probe could not run: {reason}"));
                }
                // Picked up: the journal and the report that says so, in one record.
                j.phase = Phase::Installing { work: work.clone() };
                let picked_up = self.report_of(cfg, &work, DeviceState::Downloading, None);
                self.transition(cfg, &j, &[picked_up])?;
                self.attempt(cfg, work).await
            }
            Action::Revert => {
                if j.reverted.contains(&a.rollout_id) {
                    return Ok(());
                }
                j.phase = Phase::Reverting { rollout_id: a.rollout_id.clone(), version: work.version.clone() };
                self.transition(cfg, &j, &[])?;
                self.revert(cfg, &a.rollout_id, &work.version).await
            }
        }
    }

    /// Finishes whatever an earlier run of the agent left half done past the swap. (An
    /// install before the swap resumes in [`Agent::act`], once the server confirms it.)
    async fn recover(&mut self, cfg: &ArtifactConfig) -> Result<(), StateError> {
        let mut j = self.state.journal(&cfg.name)?;
        match j.phase.clone() {
            Phase::Idle | Phase::Installing { .. } => Ok(()),
            Phase::Swapping { work } => {
                let slots = Slots::new(&cfg.path);
                if sha256_file(slots.path()) != Some(work.sha256) {
                    let staged = slots.partial(&work.sha256);
                    if sha256_file(&staged) == Some(work.sha256) {
                        slots.swap_in(&staged, || {})?;
                    } else {
                        // Neither in place nor staged: start the install over, once the
                        // server confirms it.
                        j.phase = Phase::Installing { work };
                        return self.transition(cfg, &j, &[]);
                    }
                }
                j.previous = slots.kept(j.active.as_ref())?;
                j.phase = Phase::Probing { work: work.clone(), restarts: 0 };
                self.transition(cfg, &j, &[self.report_of(cfg, &work, DeviceState::Probing, None)])?;
                self.probe_and_finish(cfg, work, SystemTime::from(clock::now())).await
            }
            Phase::Probing { work, restarts } => {
                if restarts >= 2 {
                    let reason = format!(
                        "the agent restarted {} times while probing {}; giving up on it",
                        restarts + 1,
                        work.version
                    );
                    return self.roll_back(cfg, work, reason, None).await;
                }
                j.phase = Phase::Probing { work: work.clone(), restarts: restarts + 1 };
                self.transition(cfg, &j, &[self.report_of(cfg, &work, DeviceState::Probing, None)])?;
                self.probe_and_finish(cfg, work, SystemTime::from(clock::now())).await
            }
            Phase::RollingBack { work, reason, probe_result } => self.roll_back(cfg, work, reason, probe_result).await,
            Phase::Reverting { rollout_id, version } => self.revert(cfg, &rollout_id, &version).await,
        }
    }

    /// Attempts an install, unless it waits out a problem and its backoff has not passed (then
    /// it only says what it waits for, when a heartbeat is due).
    async fn attempt(&mut self, cfg: &ArtifactConfig, work: Work) -> Result<(), StateError> {
        if let Some(r) = self.retries.get(&cfg.name)
            && r.work == work
            && Instant::now() < r.not_before
        {
            if self.heartbeat.due(cfg.name.as_str()) {
                self.heartbeat_retry(cfg).await?;
            }
            return Ok(());
        }
        self.install(cfg, work).await
    }

    /// Stops working on `work` before its swap: the journal goes idle, the partial download
    /// stays for a resume, and the same assignment starts again only from a newer doc.
    fn drop_work(&mut self, cfg: &ArtifactConfig, work: &Work, why: &str) -> Result<(), StateError> {
        let mut j = self.state.journal(&cfg.name)?;
        if matches!(&j.phase, Phase::Installing { work: w } if w == work) {
            j.phase = Phase::Idle;
            self.transition(cfg, &j, &[])?;
        }
        self.retries.remove(&cfg.name);
        self.dropped.insert(
            cfg.name.clone(),
            Dropped { rollout_id: work.rollout_id.clone(), sha256: work.sha256, generation: self.doc_generation },
        );
        tracing::info!(
            artifact = %cfg.name, version = %work.version, rollout = %work.rollout_id, %why,
            "install dropped; what was downloaded is kept for a resume"
        );
        Ok(())
    }

    /// Records a transient problem, tells the server at once, and schedules the next attempt.
    async fn wait_out(&mut self, cfg: &ArtifactConfig, work: &Work, waiting: Waiting) -> Result<(), StateError> {
        let r = self.retries.entry(cfg.name.clone()).or_insert_with(|| Retry {
            work: work.clone(),
            attempts: 0,
            not_before: Instant::now(),
            waiting: waiting.clone(),
        });
        if r.work != *work {
            r.work = work.clone();
            r.attempts = 0;
        }
        r.attempts += 1;
        let pause = wait::backoff(self.config.poll_interval, r.attempts);
        r.not_before = Instant::now() + pause;
        r.waiting = waiting;
        tracing::warn!(
            artifact = %cfg.name, version = %work.version, retry_in = ?pause,
            "waiting: {} — {}", r.waiting.class, r.waiting.reason
        );
        self.heartbeat_retry(cfg).await
    }

    /// A heartbeat for each install waiting out a problem whose heartbeat is due.
    async fn heartbeat_retries(&mut self) {
        let due: Vec<ArtifactConfig> = self
            .config
            .artifacts
            .iter()
            .filter(|c| self.retries.contains_key(&c.name) && self.heartbeat.due(c.name.as_str()))
            .cloned()
            .collect();
        for cfg in due {
            if let Err(e) = self.heartbeat_retry(&cfg).await {
                tracing::error!(artifact = %cfg.name, error = %chain(&e), "dropping the install failed");
            }
        }
    }

    /// Tells the server what this artifact's install waits for; drops the install when the
    /// answer says its assignment no longer stands.
    async fn heartbeat_retry(&mut self, cfg: &ArtifactConfig) -> Result<(), StateError> {
        let Some(r) = self.retries.get(&cfg.name) else { return Ok(()) };
        let work = r.work.clone();
        let partial = Slots::new(&cfg.path).partial(&work.sha256);
        let done = std::fs::symlink_metadata(&partial).map_or(0, |m| m.len().min(work.length));
        let mut progress = self.progress(cfg, &work, DeviceState::Downloading, done);
        progress.waiting = Some(r.waiting.clone());
        match self.heartbeat.send(progress).await {
            Some(ack) if !ack.proceed => self.drop_work(cfg, &work, NO_LONGER_STANDS),
            _ => Ok(()),
        }
    }

    fn progress(&self, cfg: &ArtifactConfig, work: &Work, state: DeviceState, done: u64) -> Progress {
        Progress {
            rollout_id: work.rollout_id.clone(),
            artifact: cfg.name.to_string(),
            version: work.version.to_string(),
            state,
            bytes_done: done,
            bytes_total: work.length,
            bytes_per_sec: 0,
            waiting: None,
        }
    }

    async fn install(&mut self, cfg: &ArtifactConfig, mut work: Work) -> Result<(), StateError> {
        let verdict = match self.fetch_and_verify(cfg, &work).await {
            Ok(v) => v,
            // Our own state directory full or unwritable: local trouble to wait out like the
            // download directory's (a corrupt state file is not, and stops here).
            Err(e @ StateError::Io { .. }) => Err(wait_for(WaitClass::Disk, chain(&e))),
            Err(e) => return Err(e),
        };
        match verdict {
            Ok(golden) => {
                self.retries.remove(&cfg.name);
                work.golden = golden;
            }
            Err(Stop::Wait(waiting)) => return self.wait_out(cfg, &work, waiting).await,
            Err(Stop::Dropped(why)) => return self.drop_work(cfg, &work, &why),
            Err(Stop::Refuse(reason)) => {
                self.retries.remove(&cfg.name);
                return self.refuse(cfg, work, reason);
            }
        }
        let slots = Slots::new(&cfg.path);
        if let Ok(probe::Resolved::File { path, .. }) = probe::resolve(&work.probe.kind, &self.config.probes) {
            // A readiness file left from the old version must not pass the new one's probe. Only
            // a file the device lists is ever removed.
            let _ = std::fs::remove_file(path);
        }
        // Verified and about to swap: one record, with the versions of the metadata the bytes
        // were checked against (held in memory until now).
        let mut j = self.state.journal(&cfg.name)?;
        j.phase = Phase::Swapping { work: work.clone() };
        let reports = [DeviceState::Verifying, DeviceState::Installing].map(|s| self.report_of(cfg, &work, s, None));
        self.transition(cfg, &j, &reports)?;
        slots.swap_in(&slots.partial(&work.sha256), || self.crash("between-renames"))?;
        let swapped_at = SystemTime::from(clock::now());
        // The journal says what the previous slot holds now: a rollback or revert puts back
        // exactly that, after checking its digest.
        j.previous = slots.kept(j.active.as_ref())?;
        j.phase = Phase::Probing { work: work.clone(), restarts: 0 };
        self.transition(cfg, &j, &[self.report_of(cfg, &work, DeviceState::Probing, None)])?;
        self.probe_and_finish(cfg, work, swapped_at).await
    }

    /// Everything before the swap. The outer error is local trouble the agent cannot wait out
    /// (its own state unreadable); the inner says whether to wait, refuse or stop, or gives the
    /// golden set signed into the target (verified and in place, if there is one).
    async fn fetch_and_verify(
        &mut self,
        cfg: &ArtifactConfig,
        work: &Work,
    ) -> Result<Result<Option<Golden>, Stop>, StateError> {
        // A probe naming what this device does not list could never pass: refused before
        // anything is downloaded or swapped.
        if let Err(reason) = probe::resolve(&work.probe.kind, &self.config.probes) {
            return Ok(Err(Stop::Refuse(format!("probe could not run: {reason}"))));
        }
        let slots = Slots::new(&cfg.path);
        if let Err(e) = slots.prepare() {
            return Ok(Err(wait_for(WaitClass::Disk, chain(&e))));
        }
        if let Err(e) = slots.check_dir(self.config.shared_dirs) {
            return Ok(Err(wait_for(WaitClass::Disk, e.to_string())));
        }
        let target = TargetName::new(cfg.name.clone(), work.version.clone());
        self.queue(cfg, work, DeviceState::Downloading, None)?;
        // Tell the server at once that the assignment was picked up: the rest of the install
        // can take longer than the device timeout, and a silent device would be settled as
        // unreachable.
        self.deliver().await;
        if let Some(w) = wait::clock_problem(clock::now(), wait::built_at()) {
            return Ok(Err(Stop::Wait(w)));
        }

        // A rotated root is followed first (and kept), so tough starts from the newest root
        // and our record of it survives a power cut.
        if let Err(e) = self.refresh_roots().await {
            return match (e.wait_class(), e) {
                (Some(class), e) => Ok(Err(wait_for(class, chain(&e)))),
                (None, RootsError::State(e)) => Err(e),
                (None, e) => Ok(Err(Stop::Refuse(chain(&e)))),
            };
        }
        let metadata_url = match self.config.server.join("device/v1/tuf/") {
            Ok(u) => u,
            Err(e) => return Ok(Err(wait_for(WaitClass::Network, e.to_string()))),
        };
        let transport = HttpTransport::new(self.http.clone(), Some(self.identity.credential.clone()))
            .stall_timeout(self.config.download.stall_timeout);
        // Metadata over a slow link takes long too (targets.json may be megabytes): heartbeat.
        let partial = slots.partial(&work.sha256);
        let have = std::fs::symlink_metadata(&partial).map_or(0, |m| m.len().min(work.length));
        let mut stands = true;
        let loading = tuf::signed_target(self.roots.newest_bytes(), &metadata_url, transport, &self.state, &target);
        let progress = || self.progress(cfg, work, DeviceState::Downloading, have);
        let loaded = self.heartbeat.during(loading, progress, |ack| stands &= ack.proceed).await;
        if !stands {
            return Ok(Err(Stop::Dropped(NO_LONGER_STANDS.into())));
        }
        let signed = match loaded {
            Ok(s) => s,
            Err(e) => {
                return match (e.wait_class(), e) {
                    (Some(class), e) => Ok(Err(wait_for(class, chain(&e)))),
                    (None, tuf::VerifyError::State(e)) => Err(e),
                    (None, e) => Ok(Err(Stop::Refuse(chain(&e)))),
                };
            }
        };
        if signed.sha256 != work.sha256 || signed.length != work.length {
            return Ok(Err(Stop::Refuse(format!(
                "director and TUF disagree on {target}: the assignment says sha256 {} ({} bytes), the signed targets say sha256 {} ({} bytes)",
                work.sha256, work.length, signed.sha256, signed.length
            ))));
        }
        if let Some(hw) = &signed.hardware
            && hw != &self.config.hardware
        {
            return Ok(Err(Stop::Refuse(format!(
                "{target} is built for hardware {hw}; this device is {}",
                self.config.hardware
            ))));
        }

        slots.remove_stale_partials(Some(&partial));
        let url = match self.config.server.join(&format!("device/v1/targets/{}.{target}", work.sha256)) {
            Ok(u) => u,
            Err(e) => return Ok(Err(wait_for(WaitClass::Network, e.to_string()))),
        };
        // A resumed download whose bytes do not hash right is downloaded once more from zero
        // before it is refused: the earlier bytes may be what went wrong.
        for attempt in 0..2 {
            let have = std::fs::symlink_metadata(&partial).map_or(0, |m| m.len().min(work.length));
            let needed = work.length - have;
            let free = wait::free_bytes(slots.dir());
            if free.is_some_and(|f| f < needed) {
                return Ok(Err(Stop::Wait(wait::no_space(slots.dir(), needed, free))));
            }
            let watch = Watch::default();
            let fetched = self.download(cfg, work, &url, &partial, &watch).await;
            let fetched = match fetched {
                Ok(f) => f,
                Err(e) => return self.fetch_failed(&slots, work, &partial, &watch, e),
            };
            if fetched.sha256 == work.sha256 && fetched.length == work.length {
                self.crash("after-verify");
                return match signed.golden {
                    None => {
                        slots.remove_goldens(None);
                        Ok(Ok(None))
                    }
                    Some(golden) => {
                        Ok(self.fetch_golden(cfg, work, &target, &slots, golden).await?.map(|()| Some(golden)))
                    }
                };
            }
            let _ = std::fs::remove_file(&partial);
            if fetched.resumed && attempt == 0 {
                tracing::warn!(
                    artifact = %cfg.name, version = %work.version, sha256 = %fetched.sha256,
                    "a resumed download does not hash right; downloading it again from zero"
                );
                continue;
            }
            return Ok(Err(Stop::Refuse(format!(
                "the downloaded bytes do not match the signed target {target}: received sha256 {} ({} bytes), signed sha256 {} ({} bytes)",
                fetched.sha256, fetched.length, work.sha256, work.length
            ))));
        }
        unreachable!("the second download either verifies or is refused")
    }

    /// Puts the golden set signed into `target` in its place beside the artifact, fetched by
    /// its signed digest and checked exactly like the artifact's bytes (length and SHA-256
    /// against the signed targets): nothing unsigned ever reaches the model check. A set that
    /// does not match is refused before the swap, so the check never runs on it.
    async fn fetch_golden(
        &self,
        cfg: &ArtifactConfig,
        work: &Work,
        target: &TargetName,
        slots: &Slots,
        golden: Golden,
    ) -> Result<Result<(), Stop>, StateError> {
        let place = slots.golden(&golden.sha256);
        if sha256_file(&place) == Some(golden.sha256) {
            return Ok(Ok(()));
        }
        let partial = slots.partial(&golden.sha256);
        let url = match self.config.server.join(&format!("device/v1/targets/{}.{target}", golden.sha256)) {
            Ok(u) => u,
            Err(e) => return Ok(Err(wait_for(WaitClass::Network, e.to_string()))),
        };
        // As for the artifact: a resumed download that does not hash right is fetched once
        // more from zero before it is refused.
        for attempt in 0..2 {
            let watch = Watch::default();
            let fetching = fetch(
                &self.http,
                &url,
                &self.identity.credential,
                &partial,
                golden.length,
                self.config.download,
                &watch,
                || {},
            );
            let progress = || self.progress(cfg, work, DeviceState::Downloading, work.length);
            let fetched = match self.heartbeat.during(fetching, progress, |_| {}).await {
                Ok(f) => f,
                Err(e) => return self.fetch_failed(slots, work, &partial, &watch, e),
            };
            if fetched.sha256 == golden.sha256 && fetched.length == golden.length {
                break;
            }
            let _ = std::fs::remove_file(&partial);
            if fetched.resumed && attempt == 0 {
                continue;
            }
            return Ok(Err(Stop::Refuse(format!(
                "the golden set downloaded for {target} does not match the one signed into it: received sha256 {} ({} bytes), signed sha256 {} ({} bytes); the model check did not run",
                fetched.sha256, fetched.length, golden.sha256, golden.length
            ))));
        }
        slots.remove_goldens(Some(&place));
        std::fs::rename(&partial, &place).map_err(crate::state::io("renaming into place", &place))?;
        Ok(Ok(()))
    }

    /// Downloads `work` into `partial`, heart-beating its progress; stops at the next chunk
    /// when the server's answer says the assignment no longer stands.
    async fn download(
        &self,
        cfg: &ArtifactConfig,
        work: &Work,
        url: &reqwest::Url,
        partial: &std::path::Path,
        watch: &Watch,
    ) -> Result<Fetched, FetchError> {
        let download = fetch(
            &self.http,
            url,
            &self.identity.credential,
            partial,
            work.length,
            self.config.download,
            watch,
            || self.crash("mid-download"),
        );
        let mut rate = Rate::new(watch.done());
        let progress = || {
            let done = watch.done();
            let mut p = self.progress(cfg, work, DeviceState::Downloading, done);
            p.bytes_per_sec = rate.update(done);
            p
        };
        let on_ack = |ack: &wavecast_core::progress::ProgressAck| {
            if !ack.proceed {
                watch.stop();
            }
        };
        self.heartbeat.during(download, progress, on_ack).await
    }

    /// Sorts a failed download into a wait, a refusal or a stop.
    fn fetch_failed<T>(
        &self,
        slots: &Slots,
        work: &Work,
        partial: &std::path::Path,
        watch: &Watch,
        e: FetchError,
    ) -> Result<Result<T, Stop>, StateError> {
        let stop = match e {
            FetchError::TooLong { .. } => {
                let _ = std::fs::remove_file(partial);
                Stop::Refuse(e.to_string())
            }
            FetchError::Stopped { .. } => Stop::Dropped(NO_LONGER_STANDS.into()),
            FetchError::Local(StateError::Io { ref source, .. }) if wait::is_no_space(source) => {
                let needed = work.length.saturating_sub(watch.done());
                let mut w = wait::no_space(slots.dir(), needed.max(1), wait::free_bytes(slots.dir()));
                w.reason = format!("{}: {}", w.reason, chain(&e));
                Stop::Wait(w)
            }
            FetchError::Local(e @ StateError::Io { .. }) => wait_for(WaitClass::Disk, chain(&e)),
            FetchError::Local(e) => return Err(e),
            FetchError::Worker(_) => wait_for(WaitClass::Disk, chain(&e)),
            FetchError::Status { .. } | FetchError::BadRange { .. } => wait_for(WaitClass::Server, chain(&e)),
            FetchError::Request { .. }
            | FetchError::NoHeaders { .. }
            | FetchError::Stalled { .. }
            | FetchError::Interrupted { .. }
            | FetchError::TooSlow { .. }
            | FetchError::Ended { .. } => wait_for(WaitClass::Network, chain(&e)),
        };
        Ok(Err(stop))
    }

    async fn probe_and_finish(
        &mut self,
        cfg: &ArtifactConfig,
        work: Work,
        swapped_at: SystemTime,
    ) -> Result<(), StateError> {
        // The caller queued `probing` with the journal's Probing phase.
        self.deliver().await;
        let slots = Slots::new(&cfg.path);
        // What a model check needs beside the artifact: the verified golden set, and the
        // version kept for rollback (to compare against it).
        let mut env = Vec::new();
        if let Some(g) = &work.golden {
            env.push(("WAVECAST_GOLDEN_PATH", slots.golden(&g.sha256)));
        }
        if std::fs::symlink_metadata(slots.previous()).is_ok_and(|m| m.is_file()) {
            env.push(("WAVECAST_PREVIOUS_PATH", slots.previous()));
        }
        let target = probe::Target { artifact: &cfg.path, env: &env };
        let probing = probe::run(&work.probe, &self.config.probes, target, swapped_at, &self.probe_http, || {
            self.crash("during-probe")
        });
        // A long initial delay is progress, not silence. The answer does not stop a probe: a
        // device past its download finishes on its own, even in a paused rollout.
        let progress = || self.progress(cfg, &work, DeviceState::Probing, work.length);
        let probed = self.heartbeat.during(probing, progress, |_| {}).await;
        match probed.outcome {
            ProbeOutcome::Healthy => {
                let mut j = self.state.journal(&cfg.name)?;
                // The report and the journal's "done" are one record: a crash before it re-runs
                // the probe and queues the same report id again.
                let mut succeeded = self.report_of(cfg, &work, DeviceState::Succeeded, None);
                succeeded.probe_result = probed.result;
                let new = Installed { version: work.version.clone(), sha256: work.sha256 };
                if j.active.as_ref() != Some(&new) {
                    // What ran before is in the previous slot now (unless nothing wavecast
                    // installed was there: then the swap recorded what it kept).
                    if let Some(old) = j.active.take() {
                        j.previous = Some(old.into());
                    }
                    j.active = Some(new);
                }
                j.last_outcome = Some(outcome_of(&work, DeviceState::Succeeded, None));
                j.phase = Phase::Idle;
                self.transition(cfg, &j, &[succeeded])?;
                tracing::info!(artifact = %cfg.name, version = %work.version, "installed and healthy");
                self.crash("before-report");
                Ok(())
            }
            ProbeOutcome::Unhealthy(r) => self.roll_back(cfg, work, format!("probe failed: {r}"), probed.result).await,
            ProbeOutcome::CouldNotRun(r) => {
                self.roll_back(cfg, work, format!("probe could not run: {r}"), probed.result).await
            }
        }
    }

    async fn roll_back(
        &mut self,
        cfg: &ArtifactConfig,
        work: Work,
        reason: String,
        probe_result: Option<serde_json::Value>,
    ) -> Result<(), StateError> {
        let mut j = self.state.journal(&cfg.name)?;
        j.phase = Phase::RollingBack { work: work.clone(), reason: reason.clone(), probe_result: probe_result.clone() };
        self.transition(cfg, &j, &[])?;
        // The swap put what `path` held in the previous slot: the active version, or (before
        // wavecast's first install there) what the swap recorded.
        let expected: Option<Previous> = match &j.active {
            Some(a) => Some(a.clone().into()),
            None => j.previous.clone(),
        };
        let slots = Slots::new(&cfg.path);
        let reason = match slots.restore(expected.as_ref())? {
            Restore::Done | Restore::Removed => {
                j.previous = expected;
                tracing::warn!(artifact = %cfg.name, version = %work.version, %reason, "rolled back to the previous version");
                reason
            }
            trouble => {
                // Wrong bytes are never put back: the failed version stays where it is, and
                // the journal says so.
                let why = restore_trouble(&trouble, expected.as_ref());
                tracing::error!(artifact = %cfg.name, version = %work.version, %reason, %why, "could not roll back");
                j.active = Some(Installed { version: work.version.clone(), sha256: work.sha256 });
                format!("{reason}; rolling back was refused: {why}; {} stays in place", work.version)
            }
        };
        self.finish_failed(cfg, work, reason, j, probe_result)
    }

    fn refuse(&mut self, cfg: &ArtifactConfig, work: Work, reason: String) -> Result<(), StateError> {
        let slots = Slots::new(&cfg.path);
        let _ = std::fs::remove_file(slots.partial(&work.sha256));
        tracing::error!(artifact = %cfg.name, version = %work.version, %reason, "refused; nothing was applied");
        let j = self.state.journal(&cfg.name)?;
        self.finish_failed(cfg, work, reason, j, None)
    }

    fn finish_failed(
        &mut self,
        cfg: &ArtifactConfig,
        work: Work,
        reason: String,
        mut j: Journal,
        probe_result: Option<serde_json::Value>,
    ) -> Result<(), StateError> {
        let mut failed = self.report_of(cfg, &work, DeviceState::Failed, Some(reason.clone()));
        failed.probe_result = probe_result;
        if !j.refused(&work.rollout_id, &work.sha256) {
            j.refused.push(Refused { rollout_id: work.rollout_id.clone(), sha256: work.sha256 });
        }
        j.last_outcome = Some(outcome_of(&work, DeviceState::Failed, Some(reason)));
        j.phase = Phase::Idle;
        self.transition(cfg, &j, &[failed])
    }

    /// Undoes `version` for an aborted rollout: puts the previous version back when there is
    /// one and its bytes are intact (`reverted`), or says why not (`revert_skipped`). The
    /// report states only what happened.
    async fn revert(
        &mut self,
        cfg: &ArtifactConfig,
        rollout_id: &str,
        version: &ArtifactVersion,
    ) -> Result<(), StateError> {
        let mut j = self.state.journal(&cfg.name)?;
        let slots = Slots::new(&cfg.path);
        let (state, reason) = match j.active.clone() {
            Some(active) if active.version == *version => match j.previous.clone() {
                None => (
                    DeviceState::RevertSkipped,
                    Some(format!(
                        "{version} was the first version installed here and replaced no file; nothing to go back to, so it stays"
                    )),
                ),
                Some(p) if p.sha256 == active.sha256 => {
                    (DeviceState::RevertSkipped, Some(format!("no version before {version} is kept here; it stays")))
                }
                Some(p) => match slots.restore(Some(&p))? {
                    Restore::Done | Restore::Removed => {
                        j.active = p.installed();
                        tracing::info!(artifact = %cfg.name, undone = %version, to = %p.version, "reverted to the previous version");
                        (DeviceState::Reverted, None)
                    }
                    trouble => (
                        DeviceState::RevertSkipped,
                        Some(format!("{}; {version} stays", restore_trouble(&trouble, Some(&p)))),
                    ),
                },
            },
            // Never put in place here, or already rolled back: the device runs what it ran
            // before the rollout.
            _ => (DeviceState::Reverted, Some(format!("{version} is not in place on this device; nothing to undo"))),
        };
        if let Some(r) = &reason {
            tracing::warn!(artifact = %cfg.name, %version, state = %state, reason = %r, "revert");
        }
        let r = self.report(rollout_id, cfg.name.as_str(), &version.to_string(), state, reason.clone());
        j.reverted.push(rollout_id.to_owned());
        j.last_outcome = Some(Outcome {
            state,
            reason,
            rollout_id: rollout_id.to_owned(),
            version: version.clone(),
            at_ms: clock::now_ms(),
        });
        j.phase = Phase::Idle;
        self.transition(cfg, &j, &[r])
    }

    // ----- reporting ----------------------------------------------------------------------

    /// Sends queued reports; keeps them when the server does not answer.
    pub async fn deliver(&self) {
        let pending = match self.state.pending_reports() {
            Ok(p) => p,
            Err(e) => return tracing::error!(error = %chain(&e), "reading the outbox failed"),
        };
        if pending.is_empty() {
            return;
        }
        let active = self.active();
        let Ok(url) = self.config.server.join("device/v1/reports") else { return };
        for chunk in pending.chunks(wavecast_core::assignment::MAX_REPORTS_PER_BATCH) {
            let batch = ReportBatch { reports: chunk.to_vec(), active: active.clone() };
            let req = self
                .http
                .post(url.clone())
                .bearer_auth(&self.identity.credential)
                .timeout(Duration::from_secs(30))
                .json(&batch);
            let sent = net::exchange(req, &url, MAX_ANSWER_BYTES, self.config.download.stall_timeout).await;
            let ack: ReportAck = match sent {
                Ok((status, body)) if status.is_success() => match serde_json::from_slice(&body) {
                    Ok(a) => a,
                    Err(e) => return tracing::warn!(error = %e, "unreadable report acknowledgement; will resend"),
                },
                Ok((status, _)) => return tracing::warn!(%status, "the server refused reports; will resend"),
                Err(e) => return tracing::debug!(error = %chain(&e), "server unreachable; reports stay queued"),
            };
            if let Err(e) = self.state.remove_reports(&ack.acked) {
                tracing::error!(error = %chain(&e), "clearing delivered reports failed");
            }
        }
    }

    fn active(&self) -> Vec<ActiveArtifact> {
        let mut out = Vec::new();
        for cfg in &self.config.artifacts {
            let Ok(j) = self.state.journal(&cfg.name) else { continue };
            if let Some(a) = j.active {
                out.push(ActiveArtifact { name: cfg.name.clone(), version: a.version, sha256: a.sha256 });
            }
        }
        out
    }
}

/// The crash tests' kill points: in debug builds, SIGKILLs the agent when `point` is the one
/// `crash_at` names.
fn kill_at(config: &AgentConfig, point: &str) {
    #[cfg(debug_assertions)]
    if config.crash_at.as_deref() == Some(point) {
        tracing::warn!(point, "test hook: killing the agent with SIGKILL");
        let _ = std::process::Command::new("kill").args(["-KILL", &std::process::id().to_string()]).status();
        std::thread::sleep(Duration::from_secs(30));
    }
    #[cfg(not(debug_assertions))]
    let _ = (config, point);
}

/// Why a restore did not happen, for the report.
fn restore_trouble(trouble: &Restore, expected: Option<&Previous>) -> String {
    let what =
        expected.map_or_else(|| "the previous version".to_owned(), |p| format!("the previous version ({})", p.version));
    match trouble {
        Restore::Missing => format!("{what} is no longer kept as a regular file next to the application's"),
        Restore::Wrong { found } => format!(
            "the previous-version file holds sha256 {found}, not {what}'s {}; wrong bytes are never put back",
            expected.map_or_else(String::new, |p| p.sha256.to_string())
        ),
        Restore::Done | Restore::Removed => String::new(),
    }
}

fn outcome_of(work: &Work, state: DeviceState, reason: Option<String>) -> Outcome {
    Outcome {
        state,
        reason,
        rollout_id: work.rollout_id.clone(),
        version: work.version.clone(),
        at_ms: clock::now_ms(),
    }
}

/// What a check-in brought.
enum CheckIn {
    /// The doc the device holds is current.
    Unchanged(Pacing),
    /// A new doc.
    Doc { etag: Option<String>, body: Vec<u8>, pacing: Pacing },
    /// Nothing, for a reason that passes (the network, the server): try again later.
    Failed(String),
    /// The server refuses this device.
    Refused(String),
}

/// The server's pacing, from an answer's headers. Bounded here: a server cannot hold this
/// device longer than [`MAX_LONG_POLL`], nor ask it to wait longer than its poll interval.
#[derive(Debug, Clone, Copy, Default)]
struct Pacing {
    long_poll: Option<Duration>,
    next_poll: Option<Duration>,
}

/// The longest check-in this agent lets the server hold.
const MAX_LONG_POLL: Duration = Duration::from_secs(300);

impl Pacing {
    fn of(headers: &reqwest::header::HeaderMap) -> Self {
        let number =
            |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok());
        Pacing {
            long_poll: number(wavecast_core::assignment::LONG_POLL_HEADER)
                .filter(|&s| s > 0)
                .map(|s| Duration::from_secs(s).min(MAX_LONG_POLL)),
            next_poll: number(wavecast_core::assignment::POLL_AFTER_HEADER).map(Duration::from_millis),
        }
    }
}

/// `base` ± 20%, from the OS random source.
fn jitter(base: Duration) -> Duration {
    use aws_lc_rs::rand::SecureRandom as _;
    let mut b = [0u8; 2];
    let _ = aws_lc_rs::rand::SystemRandom::new().fill(&mut b);
    let r = u16::from_le_bytes(b) as f64 / u16::MAX as f64; // 0..=1
    base.mul_f64(0.8 + 0.4 * r)
}

/// Checks that the server's root of the pinned root's version is the pinned root, before the
/// enrollment token is spent: a device pinning another root would enroll, then refuse every
/// assignment and count in every rollout. Root files are public; no credential is needed.
async fn check_server_root(config: &AgentConfig, http: &reqwest::Client) -> Result<(), EnrollError> {
    let pinned: serde_json::Value = serde_json::from_slice(&config.trust_root).unwrap_or_default();
    let version = pinned["signed"]["version"].as_u64().unwrap_or(0);
    let url = config.server.join(&format!("device/v1/tuf/{version}.root.json")).map_err(EnrollError::Url)?;
    let req = http.get(url.clone()).timeout(Duration::from_secs(30));
    let (status, body) = net::exchange(req, &url, MAX_ANSWER_BYTES, config.download.stall_timeout)
        .await
        .map_err(|e| EnrollError::Request(Box::new(e)))?;
    let path = config.trust_root_path.clone();
    if status == reqwest::StatusCode::NOT_FOUND {
        return Err(EnrollError::NoSuchRoot { path, version });
    }
    if !status.is_success() {
        return Err(EnrollError::RootUnavailable { version, status });
    }
    // The same signed content is the same root, however the file is formatted.
    let theirs: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    if theirs["signed"].is_null() || theirs["signed"] != pinned["signed"] {
        return Err(EnrollError::ForeignRoot { path, version });
    }
    Ok(())
}

async fn enroll(config: &AgentConfig, http: &reqwest::Client) -> Result<Identity, AgentError> {
    let fail = |source: EnrollError| AgentError::Enroll {
        device: config.device_name.to_string(),
        server: config.server.to_string(),
        source,
    };
    let token = config.enrollment_token.as_ref().ok_or_else(|| fail(EnrollError::NoToken))?;
    check_server_root(config, http).await.map_err(fail)?;
    let url = config.server.join("device/v1/enroll").map_err(|e| fail(EnrollError::Url(e)))?;
    let req = http
        .post(url.clone())
        .timeout(Duration::from_secs(30))
        .json(&serde_json::json!({ "token": token.expose(), "name": config.device_name, "hardware": config.hardware }));
    let (status, body) = net::exchange(req, &url, MAX_ANSWER_BYTES, config.download.stall_timeout)
        .await
        .map_err(|e| fail(EnrollError::Request(Box::new(e))))?;
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    if !status.is_success() {
        let message = body["error"]["message"].as_str().unwrap_or("no reason given").to_owned();
        return Err(fail(EnrollError::Refused { status, message }));
    }
    let get = |k: &'static str| body[k].as_str().map(str::to_owned).ok_or_else(|| fail(EnrollError::Incomplete(k)));
    Ok(Identity { device_id: get("device_id")?, name: get("name")?, credential: get("credential")? })
}

#[cfg(test)]
mod redirect_tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpListener;

    use super::server_redirects;

    /// Answers every connection with `answer` (after reading the request head), counting them.
    async fn answering(answer: String, tls: Option<tokio_rustls::TlsAcceptor>) -> (u16, Arc<AtomicU32>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let hits = Arc::new(AtomicU32::new(0));
        let seen = hits.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                seen.fetch_add(1, Ordering::SeqCst);
                let (answer, tls) = (answer.clone(), tls.clone());
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    match tls {
                        Some(acceptor) => {
                            let Ok(mut s) = acceptor.accept(tcp).await else { return };
                            let _ = s.read(&mut buf).await;
                            let _ = s.write_all(answer.as_bytes()).await;
                            let _ = s.shutdown().await;
                        }
                        None => {
                            let mut s = tcp;
                            let _ = s.read(&mut buf).await;
                            let _ = s.write_all(answer.as_bytes()).await;
                        }
                    }
                });
            }
        });
        (port, hits)
    }

    #[tokio::test]
    async fn a_redirect_from_https_to_plain_http_is_not_followed() {
        let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der()).unwrap();
        let config =
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(vec![cert.cert.der().clone()], key)
                .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));

        let ok = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok".to_owned();
        let (plain, plain_hits) = answering(ok, None).await;
        let to_plain = format!(
            "HTTP/1.1 307 Temporary Redirect\r\nlocation: http://127.0.0.1:{plain}/blob\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        );
        let (https, _) = answering(to_plain.clone(), Some(acceptor)).await;
        let (http, _) = answering(to_plain, None).await;

        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(server_redirects())
            .tls_certs_only([reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap()])
            .build()
            .unwrap();
        let err = client.get(format!("https://127.0.0.1:{https}/target")).send().await.unwrap_err();
        let text = wavecast_os::error::chain(&err);
        assert!(text.contains("from HTTPS to plain HTTP"), "{text}");
        assert_eq!(plain_hits.load(Ordering::SeqCst), 0, "the plain-HTTP URL was never asked");

        // From plain HTTP, the same redirect is followed: nothing is given away that was not already.
        let resp = client.get(format!("http://127.0.0.1:{http}/target")).send().await.unwrap();
        assert_eq!(resp.text().await.unwrap(), "ok");
        assert_eq!(plain_hits.load(Ordering::SeqCst), 1);
    }
}
