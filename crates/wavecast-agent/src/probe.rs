//! Health probes: exec (allowlisted binaries only, no shell), HTTP GET, readiness file.
//!
//! "Could not run" — a name missing from the allowlist, a binary that cannot be started — is
//! its own outcome, distinct from a probe that ran and said unhealthy. Both lead to rollback;
//! the distinction is for the operator reading the reason.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use tokio::io::AsyncReadExt as _;
use wavecast_core::probe::{ProbeKind, ProbeSpec};

/// What a probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// An attempt passed.
    Healthy,
    /// Every attempt ran and failed; the last reason.
    Unhealthy(String),
    /// The probe could not be run at all.
    CouldNotRun(String),
}

/// Runs `spec` against the artifact at `artifact`. `swapped_at` is when the new file went in
/// (a readiness file must be newer). `on_attempt` runs before each attempt (a test hook).
pub async fn run(
    spec: &ProbeSpec,
    allowlist: &BTreeMap<String, PathBuf>,
    artifact: &Path,
    swapped_at: SystemTime,
    http: &reqwest::Client,
    mut on_attempt: impl FnMut(),
) -> ProbeOutcome {
    // Resolve exec probes before waiting: a name that is not allowed is refused at once and
    // nothing runs.
    if let ProbeKind::Exec { name, .. } = &spec.kind
        && !allowlist.contains_key(name)
    {
        return ProbeOutcome::CouldNotRun(format!(
            "probe exec:{name} is not on this device's allowlist ([probes] in agent.toml); nothing was run"
        ));
    }
    tokio::time::sleep(Duration::from_millis(spec.initial_delay_ms)).await;
    let timeout = Duration::from_millis(spec.timeout_ms);
    let mut last = String::new();
    for attempt in 1..=spec.attempts.max(1) {
        if attempt > 1 {
            tokio::time::sleep(Duration::from_millis(spec.interval_ms)).await;
        }
        on_attempt();
        let result = match &spec.kind {
            ProbeKind::Exec { name, args } => exec(&allowlist[name], name, args, artifact, timeout).await,
            ProbeKind::Http { url } => get(http, url, timeout).await,
            ProbeKind::File { path } => readiness(Path::new(path), swapped_at, timeout).await,
        };
        match result {
            Ok(()) => return ProbeOutcome::Healthy,
            Err(Attempt::CouldNotRun(reason)) => return ProbeOutcome::CouldNotRun(reason),
            Err(Attempt::Unhealthy(reason)) => last = format!("attempt {attempt}/{}: {reason}", spec.attempts),
        }
    }
    ProbeOutcome::Unhealthy(last)
}

enum Attempt {
    Unhealthy(String),
    CouldNotRun(String),
}

async fn exec(binary: &Path, name: &str, args: &[String], artifact: &Path, timeout: Duration) -> Result<(), Attempt> {
    let mut child = tokio::process::Command::new(binary)
        .args(args)
        .arg(artifact)
        .env("WAVECAST_ARTIFACT_PATH", artifact)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            Attempt::CouldNotRun(format!("probe exec:{name} ({}) could not be started: {e}", binary.display()))
        })?;
    let mut stderr = child.stderr.take();
    let waited = tokio::time::timeout(timeout, child.wait()).await;
    let status = match waited {
        Ok(Ok(status)) => status,
        Ok(Err(e)) => return Err(Attempt::CouldNotRun(format!("waiting for probe exec:{name}: {e}"))),
        Err(_) => {
            let _ = child.kill().await;
            return Err(Attempt::Unhealthy(format!(
                "exec:{name} did not finish within {} ms and was killed",
                timeout.as_millis()
            )));
        }
    };
    if status.success() {
        return Ok(());
    }
    let mut tail = String::new();
    if let Some(err) = stderr.as_mut() {
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_millis(200), err.read_to_end(&mut buf)).await;
        let text = String::from_utf8_lossy(&buf);
        let text = text.trim();
        let start = text.len().saturating_sub(200);
        tail = text.get(start..).unwrap_or(text).replace('\n', " ");
    }
    let code = status.code().map_or_else(|| "a signal".to_owned(), |c| format!("status {c}"));
    Err(Attempt::Unhealthy(if tail.is_empty() {
        format!("exec:{name} exited with {code}")
    } else {
        format!("exec:{name} exited with {code}: {tail}")
    }))
}

async fn get(http: &reqwest::Client, url: &str, timeout: Duration) -> Result<(), Attempt> {
    let url =
        reqwest::Url::parse(url).map_err(|e| Attempt::CouldNotRun(format!("probe URL {url:?} is not a URL: {e}")))?;
    match tokio::time::timeout(timeout, http.get(url.clone()).send()).await {
        Err(_) => Err(Attempt::Unhealthy(format!("GET {url} did not answer within {} ms", timeout.as_millis()))),
        Ok(Err(e)) => Err(Attempt::Unhealthy(format!("GET {url} failed: {e}"))),
        Ok(Ok(resp)) if resp.status().is_success() => Ok(()),
        Ok(Ok(resp)) => Err(Attempt::Unhealthy(format!("GET {url} answered {}", resp.status()))),
    }
}

async fn readiness(path: &Path, since: SystemTime, timeout: Duration) -> Result<(), Attempt> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        // The agent removed any stale readiness file before the swap, so one that exists now
        // was written for the new version; the modification time is a second guard.
        if let Ok(meta) = std::fs::metadata(path) {
            let slack = Duration::from_secs(2);
            if meta.modified().is_ok_and(|m| m + slack >= since) {
                return Ok(());
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Attempt::Unhealthy(format!(
                "readiness file {} was not written within {} ms of the swap",
                path.display(),
                timeout.as_millis()
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
