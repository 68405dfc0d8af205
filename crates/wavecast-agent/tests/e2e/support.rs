//! The harness: a real server on a real port (in this process, so it can be stopped and
//! restarted on the same port and data dir), the real `wavecast-agent` binary as a child
//! process, operator API helpers, and bounded waits that print the agent's log when they fail.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use tough::schema::{Signed, Targets};
use wavecast_agent::state::StateDir;
use wavecast_core::{ArtifactName, Sha256Digest, TargetName};
use wavecast_server::ServerConfig;
use wavecast_test_support::MultipartForm;
use wavecast_tuf::keys::SigningKey;
use wavecast_tuf::publish::{NewTarget, sign_new_targets};

/// How long any single wait may take before the test fails (generous: two shared cores).
pub const WAIT: Duration = Duration::from_secs(45);
/// The agents' poll interval.
pub const POLL: Duration = Duration::from_millis(200);
/// Device states that end a device's part in a rollout.
pub const FINAL: &[&str] = &["succeeded", "failed", "timed_out", "unreachable", "reverted", "revert_skipped"];

/// Waits until `$cond` (which may `.await`) holds, or panics naming `$what` with the agent's
/// log tail.
macro_rules! wait {
    ($what:expr, $agent:expr, $cond:expr) => {
        wait!($what, $agent, $crate::support::WAIT, $cond)
    };
    ($what:expr, $agent:expr, $timeout:expr, $cond:expr) => {{
        let deadline = tokio::time::Instant::now() + $timeout;
        loop {
            if $cond {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "timed out after {:?} waiting for {}\n--- agent {} log tail ---\n{}",
                    $timeout,
                    $what,
                    $agent.name,
                    $agent.log_tail()
                );
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }};
}

pub fn sha_hex(bytes: &[u8]) -> String {
    wavecast_core::Sha256Digest::of(bytes).to_hex()
}

pub fn file_sha(path: &Path) -> Option<String> {
    std::fs::read(path).ok().map(|b| sha_hex(&b))
}

/// `len` deterministic bytes that differ for every `tag`.
pub fn blob(tag: &str, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 32);
    let mut i = 0u64;
    while out.len() < len {
        let mut h = wavecast_core::Sha256Hasher::new();
        h.update(tag.as_bytes());
        h.update(i.to_le_bytes());
        out.extend_from_slice(h.finish().as_bytes());
        i += 1;
    }
    out.truncate(len);
    out
}

/// Nanoseconds since the Unix epoch (the same clock `date +%s%N` reads).
pub fn now_ns() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos()
}

/// Writes an executable `#!/bin/sh` script.
pub fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

// ----- the server -----------------------------------------------------------------------------

/// The control plane, served in this process on a fixed port.
struct Server {
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Server {
    async fn start(config: &ServerConfig) -> Self {
        let state = wavecast_server::open(config).await.expect("opening the server");
        let mut listener = None;
        for _ in 0..100 {
            match tokio::net::TcpListener::bind(config.listen).await {
                Ok(l) => {
                    listener = Some(l);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        let listener = listener.unwrap_or_else(|| panic!("cannot bind {} again", config.listen));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(wavecast_server::serve(state, listener, async move {
            let _ = rx.await;
        }));
        Self { shutdown: Some(tx), task: Some(task) }
    }

    async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(mut task) = self.task.take()
            && tokio::time::timeout(Duration::from_secs(10), &mut task).await.is_err()
        {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Probe settings for a rollout.
#[derive(Debug, Clone)]
pub struct Probe {
    pub spec: String,
    pub timeout_ms: u64,
    pub attempts: u32,
    pub interval_ms: u64,
    pub initial_delay_ms: u64,
}

impl Probe {
    pub fn new(spec: impl Into<String>) -> Self {
        Self { spec: spec.into(), timeout_ms: 5_000, attempts: 1, interval_ms: 100, initial_delay_ms: 0 }
    }
    pub fn timeout(mut self, ms: u64) -> Self {
        self.timeout_ms = ms;
        self
    }
    pub fn attempts(mut self, n: u32) -> Self {
        self.attempts = n;
        self
    }
    pub fn interval(mut self, ms: u64) -> Self {
        self.interval_ms = ms;
        self
    }
    pub fn initial_delay(mut self, ms: u64) -> Self {
        self.initial_delay_ms = ms;
        self
    }
}

/// One installation with its server, for one test.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub install: PathBuf,
    pub url: String,
    pub admin: String,
    pub http: reqwest::Client,
    config: ServerConfig,
    server: Server,
    pub group: String,
}

impl Env {
    /// `init`, a server on a free port, and a group `fleet`.
    pub async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let install = dir.path().join("install");
        wavecast_server::install::init(&install).await.expect("init");
        let port = wavecast_test_support::free_port();
        let approval = wavecast_core::rollout::GateApproval::AnyApprover;
        let config =
            ServerConfig::new(install.clone(), format!("127.0.0.1:{port}").parse().unwrap(), None, approval).unwrap();
        let server = Server::start(&config).await;
        let admin = std::fs::read_to_string(install.join("admin.token")).unwrap().trim().to_owned();
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let env = Self {
            dir,
            install,
            url: format!("http://127.0.0.1:{port}"),
            admin,
            http,
            config,
            server,
            group: "fleet".into(),
        };
        env.api("POST", "/api/v1/groups", Some(json!({ "name": "fleet" }))).await;
        env
    }

    pub async fn stop_server(&mut self) {
        self.server.stop().await;
    }

    /// Starts the server again on the same port and data dir.
    pub async fn start_server(&mut self) {
        self.server.stop().await;
        self.server = Server::start(&self.config).await;
    }

    pub fn root(&self) -> PathBuf {
        self.install.join("root.json")
    }

    /// An operator request; returns status and JSON body (Null when not JSON).
    pub async fn request(&self, method: &str, path: &str, body: Option<Value>) -> (reqwest::StatusCode, Value) {
        let method: reqwest::Method = method.parse().unwrap();
        let mut req = self.http.request(method, format!("{}{path}", self.url)).bearer_auth(&self.admin);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap_or_else(|e| panic!("{path}: {e}"));
        let status = resp.status();
        let bytes = resp.bytes().await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    /// An operator request that must succeed.
    pub async fn api(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, v) = self.request(method, path, body.clone()).await;
        assert!(status.is_success(), "{method} {path} {body:?} answered {status}: {v}");
        v
    }

    pub async fn enrollment_token(&self) -> String {
        let v = self.api("POST", "/api/v1/enrollment-tokens", Some(json!({ "group": self.group }))).await;
        v["token"].as_str().unwrap().to_owned()
    }

    pub async fn current_targets(&self) -> Signed<Targets> {
        let resp = self
            .http
            .get(format!("{}/api/v1/tuf/targets.json", self.url))
            .bearer_auth(&self.admin)
            .send()
            .await
            .unwrap();
        serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap()
    }

    /// The newest signed metadata of `role` as served, raw.
    pub async fn metadata(&self, file: &str) -> Vec<u8> {
        let resp =
            self.http.get(format!("{}/api/v1/tuf/{file}", self.url)).bearer_auth(&self.admin).send().await.unwrap();
        assert!(resp.status().is_success(), "{file}: {}", resp.status());
        resp.bytes().await.unwrap().to_vec()
    }

    /// Publishes `target` (`name@version`) with `bytes` the way the publisher CLI does:
    /// targets signed with the offline key, then multipart `targets` + `blob`.
    pub async fn publish(&self, target: &str, bytes: &[u8], hardware: Option<&str>) {
        self.publish_with_golden(target, bytes, hardware, None).await;
    }

    /// As [`Env::publish`], with a golden bundle signed into the model's target (as passed
    /// by the publisher's local check) and uploaded as the third part.
    pub async fn publish_with_golden(&self, target: &str, bytes: &[u8], hardware: Option<&str>, golden: Option<&[u8]>) {
        let root = wavecast_tuf::root::parse_root(&std::fs::read(self.root()).unwrap()).unwrap();
        let key = SigningKey::load(&self.install.join("offline/targets.key")).unwrap();
        let new = NewTarget {
            target: TargetName::parse(target).unwrap(),
            length: bytes.len() as u64,
            sha256: Sha256Digest::of(bytes),
            hardware: hardware.map(str::to_owned),
            golden: golden.map(|g| wavecast_tuf::golden::Golden {
                sha256: Sha256Digest::of(g),
                length: g.len() as u64,
                local_check: wavecast_tuf::golden::LocalCheck::Passed,
            }),
        };
        let expires = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24);
        let targets = sign_new_targets(&root.signed, &self.current_targets().await, &new, &key, expires)
            .await
            .unwrap()
            .buffer()
            .clone();
        let form = match golden {
            None => MultipartForm::publish(&targets, bytes),
            Some(g) => MultipartForm::publish_with_golden(&targets, bytes, g),
        };
        let resp = self
            .http
            .post(format!("{}/api/v1/artifacts", self.url))
            .bearer_auth(&self.admin)
            .header("content-type", form.content_type)
            .body(form.body)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        assert!(status.is_success(), "publishing {target}: {status} {}", resp.text().await.unwrap_or_default());
    }

    /// Where the server keeps the blob with this digest.
    pub fn blob_path(&self, sha256: &str) -> PathBuf {
        self.install.join("blobs").join("sha256").join(&sha256[..2]).join(sha256)
    }

    /// Creates a one-wave rollout of `target` to the group; returns its id.
    pub async fn rollout(&self, target: &str, probe: &Probe) -> String {
        self.rollout_with(target, probe, json!({})).await
    }

    /// [`Env::rollout`] with some of the request's fields set otherwise (`extra` wins).
    pub async fn rollout_with(&self, target: &str, probe: &Probe, extra: Value) -> String {
        let mut body = json!({
            "artifact": target,
            "group": self.group,
            "waves": [100],
            "probe": probe.spec,
            "probe_timeout_ms": probe.timeout_ms,
            "probe_attempts": probe.attempts,
            "probe_interval_ms": probe.interval_ms,
            "probe_initial_delay_ms": probe.initial_delay_ms,
            "halt_after": 1,
            "device_timeout_ms": 300_000,
        });
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                b.insert(k.clone(), v.clone());
            }
        }
        let v = self.api("POST", "/api/v1/rollouts", Some(body)).await;
        v["id"].as_str().unwrap().to_owned()
    }

    /// Aborts rollout `id`, keeping or reverting (`mode`).
    pub async fn abort(&self, id: &str, mode: &str) {
        self.api("POST", &format!("/api/v1/rollouts/{id}/abort"), Some(json!({ "mode": mode }))).await;
    }

    pub async fn rollout_view(&self, id: &str) -> Value {
        self.api("GET", &format!("/api/v1/rollouts/{id}"), None).await
    }

    /// Aborts (keep) a rollout that is still active, so the next one may start.
    pub async fn settle(&self, id: &str) {
        let state = self.rollout_view(id).await["state"].as_str().unwrap_or_default().to_owned();
        if matches!(state.as_str(), "running" | "paused" | "waiting_approval") {
            self.api("POST", &format!("/api/v1/rollouts/{id}/abort"), Some(json!({ "mode": "keep" }))).await;
        }
    }

    pub async fn device(&self, name: &str) -> Option<Value> {
        let (status, v) = self.request("GET", &format!("/api/v1/devices/{name}"), None).await;
        status.is_success().then_some(v)
    }

    /// The device's entry for rollout `id`.
    pub async fn device_rollout(&self, name: &str, id: &str) -> Option<Value> {
        let d = self.device(name).await?;
        d["rollouts"].as_array()?.iter().find(|r| r["rollout_id"] == id).cloned()
    }

    /// Waits until the device reaches a final state in rollout `id`; returns that entry.
    pub async fn wait_final(&self, agent: &Agent, id: &str) -> Value {
        let mut last = Value::Null;
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(r) = self.device_rollout(&agent.name, id).await {
                if FINAL.contains(&r["state"].as_str().unwrap_or_default()) {
                    return r;
                }
                last = r;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "timed out waiting for {} to settle in rollout {id}; last seen {last}\n--- agent log tail ---\n{}",
                    agent.name,
                    agent.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn wait_enrolled(&self, agent: &Agent) {
        wait!("enrollment", agent, self.device(&agent.name).await.is_some());
    }

    pub async fn audit(&self) -> Vec<Value> {
        self.api("GET", "/api/v1/audit?limit=10000", None).await.as_array().cloned().unwrap_or_default()
    }

    /// The device.updated / device.failed events for `device` in rollout `id`.
    pub async fn outcome_events(&self, device: &str, id: &str) -> Vec<Value> {
        self.audit()
            .await
            .into_iter()
            .filter(|e| {
                matches!(e["action"].as_str(), Some("device.updated" | "device.failed"))
                    && e["subject"] == device
                    && e["detail"]["rollout"] == id
            })
            .collect()
    }

    /// A new agent for this installation talking to `server` (this env's server by default).
    pub async fn agent(&self, name: &str, probes: &[(&str, PathBuf)], server: Option<&str>) -> Agent {
        let token = self.enrollment_token().await;
        Agent::new(self.dir.path(), name, server.unwrap_or(&self.url), &self.root(), &token, probes)
    }

    /// A new agent, started and enrolled.
    pub async fn start_agent(&self, name: &str, probes: &[(&str, PathBuf)], server: Option<&str>) -> Agent {
        let mut agent = self.agent(name, probes, server).await;
        agent.start();
        self.wait_enrolled(&agent).await;
        agent
    }

    /// A directory for probe scripts.
    pub fn probes_dir(&self) -> PathBuf {
        self.dir.path().join("probes")
    }

    /// A path inside this test's temp dir.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

// ----- the agent ------------------------------------------------------------------------------

/// One `wavecast-agent` process (restartable) and its files. Killed on drop.
pub struct Agent {
    pub name: String,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub state_dir: PathBuf,
    /// The file the application reads.
    pub path: PathBuf,
    pub log: PathBuf,
    /// Prepended to the agent's PATH (a directory holding probe binaries that are NOT allowed).
    pub extra_path: Option<PathBuf>,
    /// More environment for the agent process (a fake clock, say).
    pub env: Vec<(String, String)>,
    child: Option<Child>,
}

impl Agent {
    fn new(root: &Path, name: &str, server: &str, trust_root: &Path, token: &str, probes: &[(&str, PathBuf)]) -> Self {
        let dir = root.join(format!("agent-{name}"));
        std::fs::create_dir_all(dir.join("app")).unwrap();
        let state_dir = dir.join("state");
        let path = dir.join("app").join("model.bin");
        let config = dir.join("agent.toml");
        let mut probe_lines = String::new();
        for (k, p) in probes {
            probe_lines.push_str(&format!("{k} = {:?}\n", p.display().to_string()));
        }
        let toml = format!(
            "server = {server:?}\n\
             state_dir = {state:?}\n\
             trust_root = {root:?}\n\
             enrollment_token = {token:?}\n\
             device_name = {name:?}\n\
             hardware = \"hw-a\"\n\
             poll_interval = \"{poll}ms\"\n\
             \n[download]\nmin_bytes_per_sec = 1\nstall_timeout = \"10s\"\n\
             \n[[artifacts]]\nname = \"model\"\npath = {path:?}\n\
             \n[probes]\n{probe_lines}",
            state = state_dir.display().to_string(),
            root = trust_root.display().to_string(),
            poll = POLL.as_millis(),
            path = path.display().to_string(),
        );
        std::fs::write(&config, toml).unwrap();
        let log = dir.join("agent.log");
        Self {
            name: name.to_owned(),
            dir,
            config,
            state_dir,
            path,
            log,
            extra_path: None,
            env: Vec::new(),
            child: None,
        }
    }

    /// Starts `wavecast-agent run` (after stopping a running one).
    pub fn start(&mut self) {
        self.start_with(None);
    }

    /// Starts the agent; with `crash_at`, it SIGKILLs itself at that step.
    pub fn start_with(&mut self, crash_at: Option<&str>) {
        self.kill();
        let mut log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        writeln!(log, "===== test: starting agent (crash_at = {crash_at:?}) =====").unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_wavecast-agent"));
        cmd.arg("run").arg("--config").arg(&self.config);
        cmd.env("NO_COLOR", "1").env("RUST_LOG", "info");
        for v in ["http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"] {
            cmd.env_remove(v);
        }
        cmd.env_remove("WAVECAST_AGENT_CRASH_AT");
        if let Some(point) = crash_at {
            cmd.env("WAVECAST_AGENT_CRASH_AT", point);
        }
        if let Some(extra) = &self.extra_path {
            let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into());
            cmd.env("PATH", format!("{}:{path}", extra.display()));
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null()).stdout(log.try_clone().unwrap()).stderr(log);
        self.child = Some(cmd.spawn().expect("spawning wavecast-agent"));
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits for a clean exit.
    pub async fn stop(&mut self) {
        if self.child.is_none() {
            return;
        }
        // The agent handles SIGTERM once it runs its loop; while it is still enrolling, the
        // signal's default action applies. Wait for "agent running" from this start.
        let up = |a: &Agent| {
            let log = a.log_text();
            log.matches("agent running").count() >= log.matches("===== test: starting agent").count()
        };
        wait!("the agent to be running before SIGTERM", self, up(self) || !self.running());
        let Some(c) = &self.child else { return };
        let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
        let status = self.wait_exit(Duration::from_secs(15)).await;
        assert!(status.success(), "agent exited with {status} after SIGTERM\n{}", self.log_tail());
    }

    /// Adds `text` (tables, say) at the end of agent.toml (takes effect at the next start).
    pub fn append_config(&self, text: &str) {
        let mut f = std::fs::OpenOptions::new().append(true).open(&self.config).unwrap();
        writeln!(f, "\n{text}").unwrap();
    }

    /// Replaces `from` with `to` in agent.toml (takes effect at the next start).
    pub fn edit_config(&self, from: &str, to: &str) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        assert!(text.contains(from), "agent.toml has no {from:?}:\n{text}");
        std::fs::write(&self.config, text.replacen(from, to, 1)).unwrap();
    }

    /// The process's peak resident memory so far (VmHWM), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let pid = self.child.as_ref().expect("agent not started").id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM in /proc/PID/status");
        line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).expect("VmHWM in kB")
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Waits for the process to exit on its own.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let c = self.child.as_mut().expect("agent not started");
            if let Some(status) = c.try_wait().unwrap() {
                self.child = None;
                return status;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("agent did not exit within {timeout:?}\n{}", self.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for the agent to die by SIGKILL (the crash hook).
    pub async fn wait_killed(&mut self) {
        let status = self.wait_exit(WAIT).await;
        assert_eq!(status.signal(), Some(9), "expected death by SIGKILL, got {status}\n{}", self.log_tail());
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_tail(&self) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    /// `wavecast-agent status`, as text.
    pub fn status_text(&self) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_wavecast-agent"))
            .arg("status")
            .arg("--config")
            .arg(&self.config)
            .output()
            .unwrap();
        assert!(out.status.success(), "status failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    /// `wavecast-agent status --json`, first (only) artifact.
    pub fn status(&self) -> Value {
        let out = Command::new(env!("CARGO_BIN_EXE_wavecast-agent"))
            .arg("status")
            .arg("--config")
            .arg(&self.config)
            .arg("--json")
            .output()
            .unwrap();
        assert!(out.status.success(), "status failed: {}", String::from_utf8_lossy(&out.stderr));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v[0].clone()
    }

    /// The agent's state as it is on disk, read the way `wavecast-agent status` reads it
    /// (nothing written, a record being written not read).
    fn state(&self) -> Option<StateDir> {
        StateDir::read_only(&self.state_dir).ok()
    }

    /// The journal of `model`, as JSON (null before there is one).
    pub fn journal(&self) -> Value {
        let model = ArtifactName::new("model").unwrap();
        self.state()
            .filter(|s| s.journaled().contains(&model))
            .and_then(|s| serde_json::to_value(s.journal(&model).ok()?).ok())
            .unwrap_or(Value::Null)
    }

    /// The artifacts that have a journal.
    pub fn journaled(&self) -> Vec<String> {
        self.state().map(|s| s.journaled().iter().map(ToString::to_string).collect()).unwrap_or_default()
    }

    /// The accepted-versions record, as JSON.
    pub fn trusted(&self) -> Value {
        self.state().and_then(|s| serde_json::to_value(s.trusted().ok()?).ok()).unwrap_or(Value::Null)
    }

    pub fn sha(&self) -> Option<String> {
        file_sha(&self.path)
    }

    pub fn previous_path(&self) -> PathBuf {
        self.path.with_file_name(".model.bin.wavecast-previous")
    }

    pub fn previous_sha(&self) -> Option<String> {
        file_sha(&self.previous_path())
    }

    /// Download/staging files left next to the application's file.
    pub fn partials(&self) -> Vec<String> {
        let mut out: Vec<String> = std::fs::read_dir(self.path.parent().unwrap())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".partial"))
            .collect();
        out.sort();
        out
    }

    /// Reports still waiting in the outbox.
    pub fn outbox(&self) -> Vec<Value> {
        let pending = self.state().and_then(|s| s.pending_reports().ok()).unwrap_or_default();
        pending.iter().filter_map(|r| serde_json::to_value(r).ok()).collect()
    }

    /// Every file under the agent's app dir with its sha256 (to prove nothing else was written).
    pub fn app_files(&self) -> BTreeMap<String, Option<String>> {
        std::fs::read_dir(self.path.parent().unwrap())
            .unwrap()
            .flatten()
            .map(|e| (e.file_name().to_string_lossy().into_owned(), file_sha(&e.path())))
            .collect()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Publishes `version` of `model`, rolls it out, and waits for this device's outcome.
/// Returns (rollout id, device entry).
pub async fn update(env: &Env, agent: &Agent, version: &str, bytes: &[u8], probe: &Probe) -> (String, Value) {
    let target = format!("model@{version}");
    env.publish(&target, bytes, None).await;
    let id = env.rollout(&target, probe).await;
    let r = env.wait_final(agent, &id).await;
    (id, r)
}

/// Asserts the device entry is `failed` with a reason containing every needle; returns the reason.
pub fn assert_failed(entry: &Value, needles: &[&str], agent: &Agent) -> String {
    assert_eq!(entry["state"], "failed", "expected failed: {entry}\n{}", agent.log_tail());
    let reason = entry["reason"].as_str().unwrap_or_default().to_owned();
    for n in needles {
        assert!(reason.contains(n), "reason {reason:?} lacks {n:?}\n{}", agent.log_tail());
    }
    reason
}

pub fn assert_succeeded(entry: &Value, agent: &Agent) {
    assert_eq!(entry["state"], "succeeded", "expected succeeded: {entry}\n{}", agent.log_tail());
}
