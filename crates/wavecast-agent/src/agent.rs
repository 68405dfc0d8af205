//! The device loop: check in, verify the director's assignment, and carry out each install or
//! revert through the journal, so a crash at any step resumes where it stopped.
//!
//! Order of an install, each step journaled before it starts:
//! TUF metadata (pinned root, rollback record) → cross-check director against TUF (digest,
//! length, hardware) → download (resumable, capped, hashed) → check the bytes → swap (old
//! version kept) → probe → keep, or roll back locally. Reports go to the outbox first and are
//! delivered when the server answers; their ids are derived from what they report, so a
//! report re-sent after a crash is applied once.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use sha2::Digest as _;
use wavecast_core::assignment::{Action, ActiveArtifact, Assignment, DeviceState, Report, ReportAck, ReportBatch};
use wavecast_core::probe::ProbeKind;
use wavecast_core::{ArtifactVersion, TargetName};
use wavecast_os::clock;
use wavecast_os::error::chain;

use crate::config::{AgentConfig, ArtifactConfig};
use crate::director;
use crate::fetch::{FetchError, fetch};
use crate::probe::{self, ProbeOutcome};
use crate::state::{Identity, Installed, Journal, Outcome, Phase, Refused, StateDir, StateError, Work};
use crate::swap::{Slots, sha256_file};
use crate::tuf::{self, HttpTransport, VerifyError};

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
    Request(reqwest::Error),
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
    /// Try again at the next check-in (server unreachable, download interrupted).
    Later(String),
    /// Refused: report it and never try this version for this rollout again.
    Refuse(String),
}

/// A running agent.
pub struct Agent {
    config: AgentConfig,
    state: StateDir,
    http: reqwest::Client,
    identity: Identity,
    etag: Option<String>,
    assignments: Vec<Assignment>,
    doc_expires: i64,
    reported_refusals: HashSet<String>,
}

/// Builds the HTTP client, trusting only `ca_file` when one is configured.
pub fn http_client(config: &AgentConfig) -> Result<reqwest::Client, AgentError> {
    let mut b = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
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
    b.build().map_err(|e| AgentError::Http(HttpSetupError::Build(e)))
}

impl Agent {
    /// Opens the state dir and enrolls if this device has no identity yet.
    pub async fn start(config: AgentConfig) -> Result<Self, AgentError> {
        let state = StateDir::open(&config.state_dir)?;
        let http = http_client(&config)?;
        let identity = match state.identity()? {
            Some(id) => id,
            None => {
                let id = enroll(&config, &http).await?;
                state.save_identity(&id)?;
                tracing::info!(device = %id.name, id = %id.device_id, "enrolled");
                id
            }
        };
        Ok(Self {
            config,
            state,
            http,
            identity,
            etag: None,
            assignments: Vec::new(),
            doc_expires: 0,
            reported_refusals: HashSet::new(),
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
            self.tick().await;
            let pause = jitter(self.config.poll_interval);
            tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// One cycle: finish interrupted work, deliver reports, check in, act, deliver again.
    pub async fn tick(&mut self) {
        for cfg in self.config.artifacts.clone() {
            if let Err(e) = self.recover(&cfg).await {
                tracing::error!(artifact = %cfg.name, error = %chain(&e), "resuming interrupted work failed");
            }
        }
        self.deliver().await;
        self.poll().await;
        for cfg in self.config.artifacts.clone() {
            let assignment = self.assignments.iter().find(|a| a.artifact == cfg.name).cloned();
            if let Some(a) = assignment
                && let Err(e) = self.act(&cfg, &a).await
            {
                tracing::error!(artifact = %cfg.name, error = %chain(&e), "acting on the assignment failed");
            }
        }
        self.deliver().await;
    }

    fn crash(&self, point: &str) {
        #[cfg(debug_assertions)]
        if self.config.crash_at.as_deref() == Some(point) {
            tracing::warn!(point, "test hook: killing the agent with SIGKILL");
            let _ = std::process::Command::new("kill").args(["-KILL", &std::process::id().to_string()]).status();
            std::thread::sleep(Duration::from_secs(30));
        }
        #[cfg(not(debug_assertions))]
        let _ = point;
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
        let mut h = sha2::Sha256::new();
        for part in [self.identity.device_id.as_str(), rollout_id, artifact, version, state.as_str()] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        Report {
            id: hex::encode(&h.finalize()[..16]),
            rollout_id: rollout_id.to_owned(),
            artifact: artifact.to_owned(),
            version: version.to_owned(),
            state,
            reason,
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
        let r = self.report(&work.rollout_id, cfg.name.as_str(), &work.version.to_string(), state, reason);
        self.state.push_report(&r)
    }

    // ----- checking in ----------------------------------------------------------------------

    async fn poll(&mut self) {
        let url = match self.config.server.join("device/v1/assignments") {
            Ok(u) => u,
            Err(e) => return tracing::error!(error = %e, "bad server URL"),
        };
        let mut req = self.http.get(url).bearer_auth(&self.identity.credential).timeout(Duration::from_secs(30));
        let fresh = clock::now().as_second() < self.doc_expires;
        if let (Some(etag), true) = (&self.etag, fresh) {
            req = req.header(reqwest::header::IF_NONE_MATCH, etag);
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => return tracing::warn!(error = %chain(&e), "cannot reach the server; will retry"),
        };
        match resp.status() {
            reqwest::StatusCode::NOT_MODIFIED => {}
            s if s.is_success() => {
                let etag = resp.headers().get(reqwest::header::ETAG).and_then(|v| v.to_str().ok()).map(str::to_owned);
                match resp.bytes().await {
                    Ok(body) => {
                        if let Err(e) = self.accept(&body) {
                            tracing::error!(error = %chain(&e), "processing the assignment failed");
                        } else {
                            self.etag = etag;
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "reading the assignment failed; will retry"),
                }
            }
            reqwest::StatusCode::UNAUTHORIZED => {
                tracing::error!(
                    "the server does not accept this device's credential; was the device removed or its state dir copied?"
                )
            }
            s => tracing::warn!(status = %s, "the server refused the check-in; will retry"),
        }
    }

    /// Verifies a signed assignment doc and keeps its assignments.
    fn accept(&mut self, body: &[u8]) -> Result<(), StateError> {
        let doc = match director::parse_doc(body) {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "the assignment does not parse; ignored");
                return Ok(());
            }
        };
        let key =
            aws_lc_rs::signature::UnparsedPublicKey::new(&aws_lc_rs::signature::ED25519, self.config.director_key);
        if key.verify(&doc.message, &doc.signature).is_err() {
            // Unsigned content is not even worth a report: it names nothing we can trust.
            tracing::error!("assignment signature does not verify against the director key in the trust root; ignored");
            return Ok(());
        }
        let mut trusted = self.state.trusted()?;
        match director::check(&doc, &self.identity.device_id, clock::now(), trusted.counter) {
            Err(refusal) => {
                let reason = refusal.to_string();
                tracing::error!(%reason, "assignment refused");
                for item in &doc.items {
                    self.report_refused_item(item, &reason)?;
                }
                return Ok(());
            }
            Ok(director::Accepted { new_counter: Some(counter) }) => {
                trusted.counter = counter;
                self.state.save_trusted(&trusted)?;
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
        self.assignments = accepted;
        self.doc_expires = doc.expires;
        Ok(())
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

    async fn act(&mut self, cfg: &ArtifactConfig, a: &Assignment) -> Result<(), StateError> {
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
                        self.queue(cfg, &work, DeviceState::Succeeded, None)?;
                        j.last_outcome = Some(outcome_of(&work, DeviceState::Succeeded, None));
                        self.state.save_journal(&cfg.name, &j)?;
                    }
                    return Ok(());
                }
                if j.refused(&a.rollout_id, &a.sha256) {
                    return Ok(());
                }
                j.phase = Phase::Installing { work: work.clone() };
                self.state.save_journal(&cfg.name, &j)?;
                self.install(cfg, work).await
            }
            Action::Revert => {
                if j.reverted.contains(&a.rollout_id) {
                    return Ok(());
                }
                j.phase = Phase::Reverting { rollout_id: a.rollout_id.clone(), version: work.version.clone() };
                self.state.save_journal(&cfg.name, &j)?;
                self.revert(cfg, &a.rollout_id, &work.version).await
            }
        }
    }

    /// Finishes whatever an earlier run of the agent left half done.
    async fn recover(&mut self, cfg: &ArtifactConfig) -> Result<(), StateError> {
        let mut j = self.state.journal(&cfg.name)?;
        match j.phase.clone() {
            Phase::Idle => Ok(()),
            Phase::Installing { work } => self.install(cfg, work).await,
            Phase::Swapping { work } => {
                let slots = Slots::new(&cfg.path);
                if sha256_file(slots.path()) != Some(work.sha256) {
                    let staged = slots.partial(&work.sha256);
                    if sha256_file(&staged) == Some(work.sha256) {
                        slots.swap_in(&staged, || {})?;
                    } else {
                        // Neither in place nor staged: start the install over.
                        j.phase = Phase::Installing { work: work.clone() };
                        self.state.save_journal(&cfg.name, &j)?;
                        return self.install(cfg, work).await;
                    }
                }
                j.phase = Phase::Probing { work: work.clone(), restarts: 0 };
                self.state.save_journal(&cfg.name, &j)?;
                self.probe_and_finish(cfg, work, SystemTime::from(clock::now())).await
            }
            Phase::Probing { work, restarts } => {
                if restarts >= 2 {
                    let reason = format!(
                        "the agent restarted {} times while probing {}; giving up on it",
                        restarts + 1,
                        work.version
                    );
                    return self.roll_back(cfg, work, reason).await;
                }
                j.phase = Phase::Probing { work: work.clone(), restarts: restarts + 1 };
                self.state.save_journal(&cfg.name, &j)?;
                self.probe_and_finish(cfg, work, SystemTime::from(clock::now())).await
            }
            Phase::RollingBack { work, reason } => self.roll_back(cfg, work, reason).await,
            Phase::Reverting { rollout_id, version } => self.revert(cfg, &rollout_id, &version).await,
        }
    }

    async fn install(&mut self, cfg: &ArtifactConfig, work: Work) -> Result<(), StateError> {
        match self.fetch_and_verify(cfg, &work).await? {
            Ok(()) => {}
            Err(Stop::Later(why)) => {
                tracing::warn!(artifact = %cfg.name, version = %work.version, %why, "install postponed");
                return Ok(());
            }
            Err(Stop::Refuse(reason)) => return self.refuse(cfg, work, reason),
        }
        let slots = Slots::new(&cfg.path);
        self.queue(cfg, &work, DeviceState::Installing, None)?;
        if let ProbeKind::File { path } = &work.probe.kind {
            // A readiness file left from the old version must not pass the new one's probe.
            let _ = std::fs::remove_file(path);
        }
        let mut j = self.state.journal(&cfg.name)?;
        j.phase = Phase::Swapping { work: work.clone() };
        self.state.save_journal(&cfg.name, &j)?;
        slots.swap_in(&slots.partial(&work.sha256), || self.crash("between-renames"))?;
        let swapped_at = SystemTime::from(clock::now());
        j.phase = Phase::Probing { work: work.clone(), restarts: 0 };
        self.state.save_journal(&cfg.name, &j)?;
        self.probe_and_finish(cfg, work, swapped_at).await
    }

    /// Everything before the swap. The outer error is local trouble; the inner says whether
    /// to wait or refuse.
    async fn fetch_and_verify(&mut self, cfg: &ArtifactConfig, work: &Work) -> Result<Result<(), Stop>, StateError> {
        let slots = Slots::new(&cfg.path);
        slots.prepare()?;
        let target = TargetName::new(cfg.name.clone(), work.version.clone());
        self.queue(cfg, work, DeviceState::Downloading, None)?;
        // Tell the server at once that the assignment was picked up: the rest of the install
        // can take longer than the device timeout, and a silent device would be settled as
        // unreachable.
        self.deliver().await;

        let metadata_url = match self.config.server.join("device/v1/tuf/") {
            Ok(u) => u,
            Err(e) => return Ok(Err(Stop::Later(e.to_string()))),
        };
        let transport = HttpTransport::new(self.http.clone(), Some(self.identity.credential.clone()));
        let signed =
            match tuf::signed_target(&self.config.trust_root, &metadata_url, transport, &self.state, &target).await {
                Ok(s) => s,
                Err(VerifyError::State(e)) => return Err(e),
                Err(e @ VerifyError::Unavailable(_)) => return Ok(Err(Stop::Later(chain(&e)))),
                Err(e) => return Ok(Err(Stop::Refuse(chain(&e)))),
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

        let partial = slots.partial(&work.sha256);
        slots.remove_stale_partials(Some(&partial));
        let url = match self.config.server.join(&format!("device/v1/targets/{}.{target}", work.sha256)) {
            Ok(u) => u,
            Err(e) => return Ok(Err(Stop::Later(e.to_string()))),
        };
        let fetched =
            fetch(&self.http, &url, &self.identity.credential, &partial, work.length, self.config.download, || {
                self.crash("mid-download")
            })
            .await;
        let fetched = match fetched {
            Ok(f) => f,
            Err(e @ FetchError::TooLong { .. }) => {
                let _ = std::fs::remove_file(&partial);
                return Ok(Err(Stop::Refuse(e.to_string())));
            }
            Err(FetchError::Local(e)) => return Err(e),
            Err(e) => return Ok(Err(Stop::Later(chain(&e)))),
        };
        self.queue(cfg, work, DeviceState::Verifying, None)?;
        if fetched.sha256 != work.sha256 || fetched.length != work.length {
            let _ = std::fs::remove_file(&partial);
            return Ok(Err(Stop::Refuse(format!(
                "the downloaded bytes do not match the signed target {target}: received sha256 {} ({} bytes), signed sha256 {} ({} bytes)",
                fetched.sha256, fetched.length, work.sha256, work.length
            ))));
        }
        self.crash("after-verify");
        Ok(Ok(()))
    }

    async fn probe_and_finish(
        &mut self,
        cfg: &ArtifactConfig,
        work: Work,
        swapped_at: SystemTime,
    ) -> Result<(), StateError> {
        self.queue(cfg, &work, DeviceState::Probing, None)?;
        self.deliver().await;
        let outcome = probe::run(&work.probe, &self.config.probes, &cfg.path, swapped_at, &self.http, || {
            self.crash("during-probe")
        })
        .await;
        match outcome {
            ProbeOutcome::Healthy => {
                let mut j = self.state.journal(&cfg.name)?;
                // The report goes to the outbox before the journal says "done": a crash in
                // between re-runs the probe and queues the same report id again.
                self.queue(cfg, &work, DeviceState::Succeeded, None)?;
                let new = Installed { version: work.version.clone(), sha256: work.sha256 };
                if j.active.as_ref() != Some(&new) {
                    j.previous = j.active.take();
                    j.active = Some(new);
                }
                j.last_outcome = Some(outcome_of(&work, DeviceState::Succeeded, None));
                j.phase = Phase::Idle;
                self.state.save_journal(&cfg.name, &j)?;
                tracing::info!(artifact = %cfg.name, version = %work.version, "installed and healthy");
                self.crash("before-report");
                Ok(())
            }
            ProbeOutcome::Unhealthy(r) => self.roll_back(cfg, work, format!("probe failed: {r}")).await,
            ProbeOutcome::CouldNotRun(r) => self.roll_back(cfg, work, format!("probe could not run: {r}")).await,
        }
    }

    async fn roll_back(&mut self, cfg: &ArtifactConfig, work: Work, reason: String) -> Result<(), StateError> {
        let mut j = self.state.journal(&cfg.name)?;
        j.phase = Phase::RollingBack { work: work.clone(), reason: reason.clone() };
        self.state.save_journal(&cfg.name, &j)?;
        let slots = Slots::new(&cfg.path);
        slots.restore_previous()?;
        tracing::warn!(artifact = %cfg.name, version = %work.version, %reason, "rolled back to the previous version");
        self.finish_failed(cfg, work, reason, j)
    }

    fn refuse(&mut self, cfg: &ArtifactConfig, work: Work, reason: String) -> Result<(), StateError> {
        let slots = Slots::new(&cfg.path);
        let _ = std::fs::remove_file(slots.partial(&work.sha256));
        tracing::error!(artifact = %cfg.name, version = %work.version, %reason, "refused; nothing was applied");
        let j = self.state.journal(&cfg.name)?;
        self.finish_failed(cfg, work, reason, j)
    }

    fn finish_failed(
        &mut self,
        cfg: &ArtifactConfig,
        work: Work,
        reason: String,
        mut j: Journal,
    ) -> Result<(), StateError> {
        self.queue(cfg, &work, DeviceState::Failed, Some(reason.clone()))?;
        if !j.refused(&work.rollout_id, &work.sha256) {
            j.refused.push(Refused { rollout_id: work.rollout_id.clone(), sha256: work.sha256 });
        }
        j.last_outcome = Some(outcome_of(&work, DeviceState::Failed, Some(reason)));
        j.phase = Phase::Idle;
        self.state.save_journal(&cfg.name, &j)
    }

    async fn revert(
        &mut self,
        cfg: &ArtifactConfig,
        rollout_id: &str,
        version: &ArtifactVersion,
    ) -> Result<(), StateError> {
        let mut j = self.state.journal(&cfg.name)?;
        let slots = Slots::new(&cfg.path);
        if j.active.as_ref().is_some_and(|a| a.version == *version) && j.previous.is_some() {
            slots.restore_previous()?;
            j.active = j.previous.clone();
            tracing::info!(artifact = %cfg.name, undone = %version, "reverted to the previous version");
        }
        let r = self.report(rollout_id, cfg.name.as_str(), &version.to_string(), DeviceState::Reverted, None);
        self.state.push_report(&r)?;
        j.reverted.push(rollout_id.to_owned());
        j.last_outcome = Some(Outcome {
            state: DeviceState::Reverted,
            reason: None,
            rollout_id: rollout_id.to_owned(),
            version: version.clone(),
            at_ms: clock::now_ms(),
        });
        j.phase = Phase::Idle;
        self.state.save_journal(&cfg.name, &j)
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
            let sent = self
                .http
                .post(url.clone())
                .bearer_auth(&self.identity.credential)
                .timeout(Duration::from_secs(30))
                .json(&batch)
                .send()
                .await;
            let ack: ReportAck = match sent {
                Ok(r) if r.status().is_success() => match r.json().await {
                    Ok(a) => a,
                    Err(e) => return tracing::warn!(error = %e, "unreadable report acknowledgement; will resend"),
                },
                Ok(r) => return tracing::warn!(status = %r.status(), "the server refused reports; will resend"),
                Err(e) => return tracing::debug!(error = %e, "server unreachable; reports stay queued"),
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

fn outcome_of(work: &Work, state: DeviceState, reason: Option<String>) -> Outcome {
    Outcome {
        state,
        reason,
        rollout_id: work.rollout_id.clone(),
        version: work.version.clone(),
        at_ms: clock::now_ms(),
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

async fn enroll(config: &AgentConfig, http: &reqwest::Client) -> Result<Identity, AgentError> {
    let fail = |source: EnrollError| AgentError::Enroll {
        device: config.device_name.to_string(),
        server: config.server.to_string(),
        source,
    };
    let token = config.enrollment_token.as_ref().ok_or_else(|| fail(EnrollError::NoToken))?;
    let url = config.server.join("device/v1/enroll").map_err(|e| fail(EnrollError::Url(e)))?;
    let resp = http
        .post(url)
        .timeout(Duration::from_secs(30))
        .json(&serde_json::json!({ "token": token.expose(), "name": config.device_name, "hardware": config.hardware }))
        .send()
        .await
        .map_err(|e| fail(EnrollError::Request(e)))?;
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    if !status.is_success() {
        let message = body["error"]["message"].as_str().unwrap_or("no reason given").to_owned();
        return Err(fail(EnrollError::Refused { status, message }));
    }
    let get = |k: &'static str| body[k].as_str().map(str::to_owned).ok_or_else(|| fail(EnrollError::Incomplete(k)));
    Ok(Identity { device_id: get("device_id")?, name: get("name")?, credential: get("credential")? })
}
