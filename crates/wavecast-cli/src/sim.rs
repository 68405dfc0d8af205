//! The fleet simulator: N real agents (the agent library, each with its own state dir and
//! application file) in one process, against a real server.
//!
//! Every simulated device allowlists an exec probe named `sim-check`, so rollouts to them use
//! `--probe exec:sim-check`. The probe is a small shell script shared by all devices:
//! a device is healthy with the first version it ever installs (the version it "started
//! with"); with `--fail N`, the first N devices to try any later version fail its probe, and
//! keep failing later versions. Taking the first N in time (rather than N fixed names) puts
//! the failures where a canary would meet them. `--offline N` devices enroll and then never
//! check in again. `--preexisting N` devices start with a file at their application path that
//! wavecast did not put there (a "factory" model, [`factory_content`]), so their first managed
//! install replaces something an abort with revert can restore.
//!
//! A version published with a golden set (`artifact publish --golden`) is judged by the model
//! check instead, the same on every device: the probe runs `wavecast model-check` (this very
//! binary) on it, with the golden set and the kept previous version the agent passes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use wavecast_agent::{Agent, AgentConfig};
use wavecast_api::{Artifact, CreateEnrollmentToken, CreateGroup, EnrollmentTokenCreated, GroupCreated};

use crate::Client;

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Devices.
    pub devices: u32,
    /// Their group (created if missing).
    pub group: String,
    /// The trust anchor the agents pin.
    pub trust_root: PathBuf,
    /// How many devices fail new versions.
    pub fail: u32,
    /// How many devices go silent after enrolling.
    pub offline: u32,
    /// How many devices (the first ones) start with a factory file at their application path.
    pub preexisting: u32,
    /// Where the devices live.
    pub dir: PathBuf,
    /// Check-in interval.
    pub poll_interval: Duration,
    /// Hardware the devices report.
    pub hardware: String,
    /// Artifacts each device manages (default: every artifact published when the sim starts).
    pub artifacts: Vec<String>,
    /// Number of the first device (`sim-0001` by default), so several sims can share a group.
    pub first: u32,
}

/// A running simulation.
pub struct Sim {
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Device names, in order.
    pub names: Vec<String>,
    /// Names of the devices that went offline.
    pub offline: Vec<String>,
    /// The artifacts each device manages.
    pub artifacts: Vec<String>,
    dir: PathBuf,
}

impl Sim {
    /// The application file of `artifact` on device `name`.
    pub fn artifact_path(&self, name: &str, artifact: &str) -> PathBuf {
        let file = if self.artifacts.len() == 1 { "model.bin".to_owned() } else { format!("{artifact}.bin") };
        self.dir.join(name).join("app").join(file)
    }

    /// Names of the devices whose probe failed a new version so far.
    pub fn failing(&self) -> Vec<String> {
        self.names
            .iter()
            .filter(|n| self.dir.join(n.as_str()).join("app").join(".sim-fails").exists())
            .cloned()
            .collect()
    }

    /// Stops every agent and waits for them.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// What a device started with `--preexisting` holds at its application path before wavecast
/// installs anything there.
pub fn factory_content(device: &str, artifact: &str) -> String {
    format!("factory {artifact} model of {device}\n")
}

fn probe_script(dir: &Path, fail: u32, wavecast: &Path) -> String {
    format!(
        r#"#!/bin/sh
# wavecast sim's health probe. The artifact path is the last argument (also in
# WAVECAST_ARTIFACT_PATH). A version signed with a golden set gets the model check. Otherwise:
# healthy with the first version the device installed; with a fail budget, the first {fail}
# devices to try another version fail it, and keep failing.
if [ -n "$WAVECAST_GOLDEN_PATH" ]; then exec '{wavecast}' model-check "$@"; fi
a="$WAVECAST_ARTIFACT_PATH"
d=$(dirname "$a")
if [ ! -e "$d/.sim-baseline" ]; then cp "$a" "$d/.sim-baseline" && exit 0; fi
cmp -s "$a" "$d/.sim-baseline" && exit 0
if [ -e "$d/.sim-fails" ]; then echo "sim-check: this device rejects versions it did not start with" >&2; exit 1; fi
i=1
while [ "$i" -le {fail} ]; do
  if mkdir "{slots}/$i" 2>/dev/null; then
    touch "$d/.sim-fails"
    echo "sim-check: this device rejects versions it did not start with" >&2
    exit 1
  fi
  i=$((i+1))
done
exit 0
"#,
        slots = dir.join("fail-slots").display(),
        wavecast = wavecast.display()
    )
}

/// Enrolls the devices and starts their agents.
pub async fn start(client: &Client, opts: &SimOptions) -> anyhow::Result<Sim> {
    anyhow::ensure!(opts.offline + opts.fail <= opts.devices, "--fail plus --offline cannot exceed --devices");
    anyhow::ensure!(opts.preexisting <= opts.devices, "--preexisting cannot exceed --devices");
    wavecast_core::GroupName::new(opts.group.clone())?;
    let artifacts = if opts.artifacts.is_empty() {
        let listed: Vec<Artifact> = client.get("/api/v1/artifacts").await.context("listing artifacts")?;
        let mut names: Vec<String> = listed.into_iter().map(|a| a.name.into()).collect();
        names.sort();
        names.dedup();
        anyhow::ensure!(
            !names.is_empty(),
            "no artifact is published yet: publish one first, or name it with --artifact"
        );
        names
    } else {
        opts.artifacts.clone()
    };
    std::fs::create_dir_all(opts.dir.join("fail-slots")).with_context(|| format!("creating {}", opts.dir.display()))?;
    let dir = std::fs::canonicalize(&opts.dir)?;
    let probe = dir.join("sim-check");
    let wavecast = std::env::current_exe().context("finding this binary, for the model check")?;
    std::fs::write(&probe, probe_script(&dir, opts.fail, &wavecast)).context("writing the sim-check probe")?;
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&probe, std::fs::Permissions::from_mode(0o755))?;
    }
    match client.post::<_, GroupCreated>("/api/v1/groups", &CreateGroup { name: opts.group.clone() }).await {
        Ok(_) => {}
        Err(e) if e.status() == Some(reqwest::StatusCode::CONFLICT) => {}
        Err(e) => return Err(e).context("creating the group"),
    }
    let minted: EnrollmentTokenCreated = client
        .post(
            "/api/v1/enrollment-tokens",
            &CreateEnrollmentToken { group: opts.group.clone(), expires_in_secs: Some(3600), max_uses: None },
        )
        .await
        .context("minting an enrollment token")?;
    let token = minted.token;
    let trust_root = std::fs::canonicalize(&opts.trust_root)
        .with_context(|| format!("reading --trust-root {}", opts.trust_root.display()))?;

    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let names: Vec<String> = (opts.first..opts.first + opts.devices).map(|i| format!("sim-{i:04}")).collect();
    let offline: Vec<String> = names[(opts.devices - opts.offline) as usize..].to_vec();
    // Enroll with bounded concurrency: a thousand enrollments at once would only queue on the
    // server's database.
    let limit = std::sync::Arc::new(tokio::sync::Semaphore::new(16));
    let mut starting = tokio::task::JoinSet::new();
    for (i, name) in names.iter().enumerate() {
        let home = dir.join(name);
        std::fs::create_dir_all(home.join("app"))?;
        let factory = (i as u32) < opts.preexisting;
        let mut toml = format!(
            "server = {server:?}\nstate_dir = {state:?}\ntrust_root = {root:?}\nenrollment_token = {token:?}\n\
             device_name = {name:?}\nhardware = {hw:?}\npoll_interval = \"{poll}ms\"\n",
            server = client.base().as_str(),
            state = home.join("state"),
            root = trust_root,
            hw = opts.hardware,
            poll = opts.poll_interval.as_millis(),
        );
        for a in &artifacts {
            let file = if artifacts.len() == 1 { "model.bin".to_owned() } else { format!("{a}.bin") };
            let path = home.join("app").join(file);
            // A restarted sim keeps what its devices hold.
            if factory && !path.exists() {
                std::fs::write(&path, factory_content(name, a))
                    .with_context(|| format!("writing the factory file {}", path.display()))?;
            }
            toml.push_str(&format!("[[artifacts]]\nname = {a:?}\npath = {path:?}\n"));
        }
        toml.push_str(&format!("[probes]\nsim-check = {probe:?}\n"));
        let limit = limit.clone();
        let name = name.clone();
        starting.spawn(async move {
            let _permit = limit.acquire().await;
            let config = AgentConfig::parse(&home.join("agent.toml"), &toml)?;
            let agent = Agent::start(config).await.with_context(|| format!("starting {name}"))?;
            anyhow::Ok((name, agent))
        });
    }
    let mut tasks = Vec::new();
    while let Some(r) = starting.join_next().await {
        let (name, agent) = r??;
        if offline.contains(&name) {
            // Enrolled, then gone.
            continue;
        }
        let mut rx = stop_rx.clone();
        tasks.push(tokio::spawn(agent.run(async move {
            let _ = rx.wait_for(|s| *s).await;
        })));
    }
    Ok(Sim { stop, tasks, names, offline, artifacts, dir })
}
