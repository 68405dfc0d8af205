//! What every benchmark sets up the same way: the release binaries next to this one, a fresh
//! installation with its server as a child process, the CLI calls that publish, group and roll
//! out, and reading a process's memory from `/proc`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure};
use wavecast_api::{EnrollmentTokenCreated, Rollout};
use wavecast_core::rollout::RolloutState;
use wavecast_test_support::free_port;

/// A release binary built next to the benchmark.
pub fn bin(name: &str) -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe()?;
    let p = me.with_file_name(name);
    ensure!(
        p.exists(),
        "{} not found next to the benchmark; run `cargo build --release -p wavecast-cli -p wavecast-agent` first",
        p.display()
    );
    Ok(p)
}

/// A child process, killed when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A field of `/proc/PID/status` in KiB (`VmRSS:`, `VmHWM:`); 0 when it cannot be read.
pub fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

/// KiB as MiB, for printing.
pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// A fresh installation and its running server.
pub struct Installation {
    pub dir: PathBuf,
    pub url: String,
    pub addr: std::net::SocketAddr,
    pub token: String,
    pub server: Proc,
}

impl Installation {
    /// The server's process id.
    pub fn server_pid(&self) -> u32 {
        self.server.0.id()
    }

    /// Which database the server uses, for printing.
    pub fn backend(database_url: Option<&str>) -> &'static str {
        if database_url.is_some() { "PostgreSQL" } else { "SQLite" }
    }
}

/// The `wavecast` CLI talking to `url` with `token`.
pub fn wavecast(url: &str, token: &str) -> anyhow::Result<Command> {
    let mut c = Command::new(bin("wavecast")?);
    c.env("WAVECAST_SERVER", url).env("WAVECAST_TOKEN", token);
    Ok(c)
}

/// Runs `cmd`; its stdout, or an error with its stderr.
pub fn run_ok(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output()?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `wavecast init` in `dir/install`, then `wavecast server` on a free port (on SQLite in the
/// data dir, or on `database_url`), logging warnings to `dir/server.log`.
pub async fn install(dir: &Path, database_url: Option<&str>) -> anyhow::Result<Installation> {
    let inst = dir.join("install");
    run_ok(Command::new(bin("wavecast")?).args(["init", "--dir"]).arg(&inst))?;
    let port = free_port();
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let url = format!("http://{addr}");
    let mut server = Command::new(bin("wavecast")?);
    server.args(["server", "--listen", &addr.to_string(), "--data-dir"]).arg(&inst);
    if let Some(db) = database_url {
        server.args(["--database-url", db]);
    }
    let server = Proc(
        server
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("server.log"))?)
            .spawn()?,
    );
    for _ in 0..600 {
        if reqwest::get(format!("{url}/healthz")).await.is_ok_and(|r| r.status().is_success()) {
            let token = std::fs::read_to_string(inst.join("admin.token"))?.trim().to_owned();
            return Ok(Installation { dir: inst, url, addr, token, server });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("the server did not start; see {}", dir.join("server.log").display())
}

/// Writes `bytes` of incompressible, reproducible data to `path`, durably.
pub fn write_file(path: &Path, bytes: u64) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut block = vec![0u8; 1 << 20];
    let mut seed = sha256(b"wavecast bench");
    for chunk in block.chunks_mut(32) {
        seed = sha256(&seed);
        chunk.copy_from_slice(&seed[..chunk.len()]);
    }
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    for i in 0..bytes.div_ceil(1 << 20) {
        block[..8].copy_from_slice(&i.to_le_bytes());
        let n = (bytes - i * (1 << 20)).min(1 << 20) as usize;
        f.write_all(&block[..n])?;
    }
    f.into_inner()?.sync_all()?;
    Ok(())
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    *wavecast_core::Sha256Digest::of(data).as_bytes()
}

/// A config for a real agent named `name` under `dir/name`, checking in every 100 ms, with one
/// artifact `model` and one exec probe `ok`.
pub fn agent_config(dir: &Path, inst: &Installation, token: &str, name: &str, probe: &Path) -> anyhow::Result<PathBuf> {
    let home = dir.join(name);
    std::fs::create_dir_all(home.join("app"))?;
    let cfg = home.join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "server = {:?}\nstate_dir = {:?}\ntrust_root = {:?}\nenrollment_token = {token:?}\ndevice_name = {name:?}\nhardware = \"bench\"\npoll_interval = \"100ms\"\n[[artifacts]]\nname = \"model\"\npath = {:?}\n[probes]\nok = {probe:?}\n",
            inst.url,
            std::fs::canonicalize(&home)?.join("state"),
            std::fs::canonicalize(inst.dir.join("root.json"))?,
            std::fs::canonicalize(&home)?.join("app").join("model.bin"),
        ),
    )?;
    Ok(cfg)
}

/// Creates `group` and an enrollment token for it (any number of uses) with the CLI.
pub fn enroll_token(inst: &Installation, group: &str) -> anyhow::Result<String> {
    run_ok(wavecast(&inst.url, &inst.token)?.args(["group", "create", group]))?;
    let out = run_ok(wavecast(&inst.url, &inst.token)?.args(["device", "enroll-token", "--group", group, "--json"]))?;
    Ok(serde_json::from_str::<EnrollmentTokenCreated>(&out)?.token)
}

/// A probe that always passes.
pub fn ok_probe(dir: &Path) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let p = std::fs::canonicalize(dir)?.join("ok.sh");
    std::fs::write(&p, "#!/bin/sh\nexit 0\n")?;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))?;
    Ok(p)
}

/// Publishes `file` as `model@1.0.0` with the CLI.
pub fn publish(inst: &Installation, file: &Path) -> anyhow::Result<()> {
    publish_version(inst, file, "1.0.0")
}

/// Publishes `file` as `model@VERSION` with the CLI.
pub fn publish_version(inst: &Installation, file: &Path, version: &str) -> anyhow::Result<()> {
    let key = inst.dir.join("offline").join("targets.key");
    run_ok(
        wavecast(&inst.url, &inst.token)?
            .args(["artifact", "publish", "--name", "model", "--version", version, "--key"])
            .arg(&key)
            .arg("--file")
            .arg(file),
    )?;
    Ok(())
}

/// Creates a rollout of `model@1.0.0` with the CLI; `args` add to the group, probe and attempts.
pub fn create_rollout(inst: &Installation, group: &str, probe: &str, args: &[&str]) -> anyhow::Result<Rollout> {
    create_rollout_of(inst, "1.0.0", group, probe, args)
}

/// Creates a rollout of `model@VERSION` with the CLI; `args` add to the group, probe and
/// attempts.
pub fn create_rollout_of(
    inst: &Installation,
    version: &str,
    group: &str,
    probe: &str,
    args: &[&str],
) -> anyhow::Result<Rollout> {
    let target = format!("model@{version}");
    let out = run_ok(
        wavecast(&inst.url, &inst.token)?
            .args(["rollout", "create", "--artifact", &target, "--group", group, "--probe", probe])
            .args(["--probe-attempts", "1", "--json"])
            .args(args),
    )?;
    Ok(serde_json::from_str(&out)?)
}

/// Polls rollout `id` every `every` until it ends or pauses.
pub async fn wait_rollout(
    inst: &Installation,
    id: &str,
    every: Duration,
    timeout: Duration,
) -> anyhow::Result<Rollout> {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + timeout;
    loop {
        let r: Rollout = http
            .get(format!("{}/api/v1/rollouts/{id}", inst.url))
            .bearer_auth(&inst.token)
            .send()
            .await?
            .json()
            .await?;
        if r.state.is_terminal() || r.state == RolloutState::Paused {
            return Ok(r);
        }
        ensure!(Instant::now() < deadline, "rollout {id} did not finish in {timeout:?}: {r:?}");
        tokio::time::sleep(every).await;
    }
}
