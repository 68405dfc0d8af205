//! What every benchmark sets up the same way: the release binaries next to this one, a fresh
//! installation with its server as a child process, the CLI calls that publish, group and roll
//! out, reading a process's memory and CPU time from `/proc`, and the limits a fleet of sockets
//! runs into.

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

/// The CPU time process `pid` has used, in clock ticks (`utime` + `stime` of `/proc/PID/stat`);
/// 0 when it cannot be read.
pub fn cpu_ticks(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).ok().and_then(|s| parse_cpu_ticks(&s)).unwrap_or(0)
}

/// `utime` + `stime` from the text of `/proc/PID/stat`: fields 14 and 15, counted after the
/// command name, which is in parentheses and may hold spaces.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    Some(fields.next()?.parse::<u64>().ok()? + fields.next()?.parse::<u64>().ok()?)
}

/// Waits until process `pid` is idle: under 10% of a core for two half-seconds in a row.
/// Returns false if it is still busy after `limit`. The benchmarks' "everything has arrived"
/// moments are those where the server has nothing left to do.
pub async fn settle(pid: u32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    let (mut last, mut quiet) = (cpu_ticks(pid), 0);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = cpu_ticks(pid);
        // Clock ticks are hundredths of a second on Linux: 5 per half second is 10%.
        quiet = if now.saturating_sub(last) <= 5 { quiet + 1 } else { 0 };
        last = now;
        if quiet == 2 {
            return true;
        }
    }
    false
}

/// Raises this process's limit of open files (and so its children's, the server's) to at
/// least `want`, the hard limit too if need be (which takes root). Returns the limit in force,
/// which is below `want` when it could not be raised.
pub fn raise_open_files(want: u64) -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let now = getrlimit(Resource::Nofile);
    let (soft, hard) = (now.current.unwrap_or(u64::MAX), now.maximum.unwrap_or(u64::MAX));
    if soft >= want {
        return soft;
    }
    let raised = Rlimit { current: Some(want), maximum: Some(hard.max(want)) };
    if setrlimit(Resource::Nofile, raised).is_ok() {
        return want;
    }
    // Not root: as far as the hard limit allows.
    let within = Rlimit { current: Some(hard), maximum: now.maximum };
    if setrlimit(Resource::Nofile, within).is_ok() { hard } else { soft }
}

/// How many connections to one server port a single source address may safely hold: three
/// quarters of the ephemeral port range (`/proc/sys/net/ipv4/ip_local_port_range`), leaving
/// room for the ports in TIME_WAIT and everything else on the machine.
pub fn connections_per_source_addr() -> usize {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut ends = s.split_whitespace().map(str::parse::<usize>);
            let (lo, hi) = (ends.next()?.ok()?, ends.next()?.ok()?);
            Some(hi.checked_sub(lo)?.saturating_add(1) * 3 / 4)
        })
        .filter(|&n| n > 0)
        .unwrap_or(20_000)
}

/// Room left in the kernel's connection-tracking table, if it has one: loopback connections
/// take an entry each when netfilter tracks connections, and past the limit new ones are
/// dropped.
pub fn conntrack_room() -> Option<u64> {
    let read = |name: &str| -> Option<u64> {
        std::fs::read_to_string(format!("/proc/sys/net/netfilter/{name}")).ok()?.trim().parse().ok()
    };
    Some(read("nf_conntrack_max")?.saturating_sub(read("nf_conntrack_count").unwrap_or(0)))
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
    install_with(dir, database_url, &[], &[]).await
}

/// [`install`], with more `wavecast server` flags and environment.
pub async fn install_with(
    dir: &Path,
    database_url: Option<&str>,
    server_args: &[String],
    server_env: &[(&str, &str)],
) -> anyhow::Result<Installation> {
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
    server.args(server_args).envs(server_env.iter().copied());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_is_read_after_a_command_name_with_spaces() {
        let stat = "4242 (wave cast) S 1 4242 4242 0 -1 4194560 1200 0 0 0 731 269 0 0 20 0 9 0 5000 1000000 2000";
        assert_eq!(parse_cpu_ticks(stat), Some(1000));
        assert_eq!(parse_cpu_ticks("4242 (x) S 1"), None);
    }
}
