//! `wavecast-bench`: measures wavecast against baselines taken in the same run, on the same
//! machine and filesystem, and prints ratios (brief, section 8). Never part of the test
//! suite: numbers belong here, not in timed assertions.
//!
//! It drives the release binaries (`wavecast`, `wavecast-agent`) as separate processes so
//! the memory it reports is theirs alone. Build them first:
//! `cargo build --release -p wavecast-cli -p wavecast-agent -p wavecast-bench`, then
//! `target/release/wavecast-bench all`. `agent` measures the agent as devices get it: it builds
//! it with the `agent` profile itself (or takes `--binary`). `checkins` and `rollout --light`
//! simulate devices in this process (HTTP only, no files) to load the server alone; so does
//! `longpoll`, with a connection per device; `fsyncs` traces one real agent with strace.

mod checkins;
mod dashboard;
mod figures;
mod fleet;
mod fsyncs;
mod http;
mod light;
mod longpoll;
mod setup;
mod strace;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use clap::{Parser, Subcommand};
use wavecast_core::rollout::RolloutState;

use crate::setup::{
    Installation, Proc, agent_config, bin, create_rollout, enroll_token, install, ok_probe, publish, status_kib,
    wait_rollout, wavecast, write_file,
};

/// Benchmarks with in-run baselines.
#[derive(Debug, Parser)]
struct Cli {
    #[command(subcommand)]
    command: Bench,
    /// Where to put the files, made if missing (a real disk, not tmpfs, for the fsync figures to
    /// mean anything).
    #[arg(long, global = true, default_value = ".")]
    dir: PathBuf,
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// Agent download + verify + durable install of one large artifact over loopback, versus
    /// `openssl dgst -sha256` plus `dd conv=fsync` of the same file (target ≥ 0.8×).
    Install {
        /// Artifact size in MiB.
        #[arg(long, default_value_t = 1024)]
        mib: u64,
        /// Also through S3 (a moto server from scripts/s3-server on loopback): streamed by the
        /// server, and redirected to a presigned URL, beside the local folder.
        #[arg(long)]
        s3: bool,
    },
    /// A 3-wave automatic rollout of a 1 MiB artifact to N simulated devices, versus hashing and
    /// copying the same bytes N times (target ≤ 3×); reports the server's peak RSS. With
    /// `--light`, the devices are lightweight (HTTP only: they poll and report, with no files and
    /// no TUF), to measure the server alone at fleet scale.
    Rollout {
        /// Simulated devices.
        #[arg(long, default_value_t = 1000)]
        devices: u32,
        /// Lightweight devices in this process instead of real agents (`wavecast sim`).
        #[arg(long)]
        light: bool,
        #[command(flatten)]
        fleet: LightFleet,
    },
    /// Idle check-ins per second with N devices enrolled (304s, credentials rotating over the
    /// fleet, each device sending its last ETag), versus a trivial axum handler under the same
    /// load generator (target ≥ 0.5×); p50/p99 latency and server memory per device.
    Checkins {
        /// Devices enrolled.
        #[arg(long, default_value_t = 5000)]
        devices: u32,
        /// Run the server on this PostgreSQL database (fresh and empty) instead of SQLite.
        #[arg(long, value_name = "URL")]
        database_url: Option<String>,
        /// Concurrent keep-alive connections of the load generator.
        #[arg(long, default_value_t = 256)]
        connections: usize,
        /// Seconds measured for each server (after one second of warm-up).
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Long-poll: the server's memory with N devices each holding `GET
    /// /device/v1/assignments?wait=60s` on a connection of its own (goal: 100,000 within 1 GiB),
    /// then the time from `rollout approve` to each device of a gated wave of M more having its
    /// new doc (goal: the last within 2 s at 10,000), and any device woken for nothing. Raises
    /// the open-file limit (root, for more than the hard limit) and spreads the client sockets
    /// over the source addresses 127.0.0.2, 127.0.0.3, …
    Longpoll {
        /// Devices holding long-polls for the memory figure (and as bystanders of the wave).
        #[arg(long, default_value_t = 100_000)]
        devices: u32,
        /// Devices in the wave whose opening is timed (0: none).
        #[arg(long, default_value_t = 10_000)]
        wake_devices: u32,
        /// Run the server on this PostgreSQL database (fresh and empty) instead of SQLite.
        #[arg(long, value_name = "URL")]
        database_url: Option<String>,
        /// Client sockets per source address (default: three quarters of the ephemeral port
        /// range, net.ipv4.ip_local_port_range).
        #[arg(long, value_name = "N")]
        per_address: Option<usize>,
    },
    /// One real agent's fsync-family calls and writes to its own state for one install of a
    /// 1 MiB artifact, per step, and for idle check-ins (targets: ≤ 9 per install, none idle).
    /// Needs strace.
    Fsyncs {
        /// Idle check-ins to watch before and after the install (one every 100 ms).
        #[arg(long, default_value_t = 20)]
        checkins: u32,
    },
    /// The shipped agent: its size stripped, built with the `agent` profile (target ≤ 5 MiB), and
    /// the resident memory of a running agent, enrolled with a real server and checking in with
    /// nothing to do.
    Agent {
        /// The agent binary to measure; by default `cargo build --profile agent -p
        /// wavecast-agent` builds it in this checkout.
        #[arg(long, value_name = "FILE")]
        binary: Option<PathBuf>,
    },
    /// Everything above with default sizes: check-ins, long-poll and the light rollout at
    /// 100,000 devices.
    All {
        /// Also measure check-ins on this PostgreSQL database (fresh and empty).
        #[arg(long, value_name = "URL")]
        database_url: Option<String>,
        /// Also measure long-poll on this PostgreSQL database (fresh and empty: another one).
        #[arg(long, value_name = "URL")]
        longpoll_database_url: Option<String>,
    },
    /// The dashboard's pages with N devices in one group and a rollout to all of them: the time
    /// to a whole page (p50, p99) for the rollout's page (first, middle, filtered), the rollouts
    /// list, the devices page and the audit trail, versus a trivial axum handler (target: a few
    /// tens of milliseconds, whatever N).
    Dashboard {
        /// Devices enrolled in the group.
        #[arg(long, default_value_t = 10_000)]
        devices: u32,
        /// Run the server on this PostgreSQL database (fresh and empty) instead of SQLite.
        #[arg(long, value_name = "URL")]
        database_url: Option<String>,
        /// Requests counted per page.
        #[arg(long, default_value_t = 50)]
        requests: u32,
    },
    /// The check-in baseline: a trivial axum handler (run by `checkins` as a child process).
    #[command(hide = true)]
    TrivialServer {
        #[arg(long)]
        listen: SocketAddr,
    },
}

/// How lightweight devices behave (`rollout --light`).
#[derive(Debug, clap::Args)]
struct LightFleet {
    /// The longest a light device waits between polls (±20%), as an agent's `poll_interval`;
    /// within it, devices follow the server's pacing.
    #[arg(long, default_value = "30s", value_parser = parse_duration, requires = "light")]
    poll_interval: Duration,
    /// Keep-alive connections the light fleet shares.
    #[arg(long, default_value_t = 64, requires = "light")]
    connections: usize,
    /// Run the server on this PostgreSQL database (fresh and empty) instead of SQLite.
    #[arg(long, value_name = "URL", requires = "light")]
    database_url: Option<String>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    wavecast_core::duration::parse_duration(s).map_err(|e| e.to_string())
}

fn timed(cmd: &mut Command) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let st = cmd.stdout(Stdio::null()).stderr(Stdio::null()).status()?;
    ensure!(st.success(), "{cmd:?} failed");
    Ok(t.elapsed())
}

fn mbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e6
}

async fn bench_install(root: &Path, mib: u64, s3: bool) -> anyhow::Result<()> {
    let bytes = mib << 20;
    let file = root.join("artifact.bin");
    println!("install: writing a {mib} MiB artifact…");
    write_file(&file, bytes)?;
    // Baseline: the two physical steps, one after the other, on the same file and filesystem.
    let hash = timed(Command::new("openssl").args(["dgst", "-sha256"]).arg(&file))?;
    let copy = timed(
        Command::new("dd")
            .arg(format!("if={}", file.display()))
            .arg(format!("of={}", root.join("copy.bin").display()))
            .args(["bs=1M", "conv=fsync"]),
    )?;
    let _ = std::fs::remove_file(root.join("copy.bin"));
    let baseline = hash + copy;
    let base_rate = mbps(bytes, baseline);
    println!(
        "install: baseline openssl sha256 {:.2}s + dd conv=fsync {:.2}s = {:.2}s ({base_rate:.0} MB/s)",
        hash.as_secs_f64(),
        copy.as_secs_f64(),
        baseline.as_secs_f64()
    );

    let local = install_once(&root.join("local"), &file, &[], &[]).await?;
    local.print("local folder", bytes, base_rate, None);
    if s3 {
        let server = wavecast_test_support::s3::S3Server::start();
        let env = server.env();
        for (name, redirect) in [("s3 streamed", false), ("s3 redirect", true)] {
            let bucket = format!("wavecast-bench-{}", if redirect { "redirect" } else { "streamed" });
            server.create_bucket(&bucket);
            let mut args = vec![
                "--blob-store".to_owned(),
                format!("s3://{bucket}/blobs"),
                "--blob-store-endpoint".to_owned(),
                server.endpoint(),
            ];
            if redirect {
                args.push("--blob-redirect".to_owned());
            }
            let run = install_once(&root.join(name.replace(' ', "-")), &file, &args, &env).await?;
            run.print(name, bytes, base_rate, Some(&local));
        }
        println!("install: s3 is moto (Python, objects in memory) on loopback: a protocol peer, not a fast store");
    }
    Ok(())
}

/// One publish and one agent install of `file`, against a server started with `server_args`.
struct InstallRun {
    publish: Duration,
    agent: Duration,
    idle_rss: u64,
    peak_rss: u64,
}

impl InstallRun {
    fn print(&self, name: &str, bytes: u64, base_rate: f64, local: Option<&InstallRun>) {
        let rate = mbps(bytes, self.agent);
        let beside = local
            .map(|l| format!("; {:.2}x the local folder's time", self.agent.as_secs_f64() / l.agent.as_secs_f64()));
        println!(
            "install [{name}]: agent fetch+verify+durable install {:.2}s ({rate:.0} MB/s), ratio agent/baseline = {:.2}x (target ≥ 0.80x){}",
            self.agent.as_secs_f64(),
            rate / base_rate,
            beside.unwrap_or_default()
        );
        println!(
            "install [{name}]: publish {:.2}s ({:.0} MB/s); agent RSS idle {} KiB, peak during install {} KiB",
            self.publish.as_secs_f64(),
            mbps(bytes, self.publish),
            self.idle_rss,
            self.peak_rss
        );
    }
}

async fn install_once(
    root: &Path,
    file: &Path,
    server_args: &[String],
    server_env: &[(&str, &str)],
) -> anyhow::Result<InstallRun> {
    std::fs::create_dir_all(root)?;
    let inst = setup::install_with(root, None, server_args, server_env).await?;
    let t = Instant::now();
    publish(&inst, file)?;
    let publish = t.elapsed();
    let token = enroll_token(&inst, "bench")?;
    let probe = ok_probe(root)?;
    let cfg = agent_config(root, &inst, &token, "device-1", &probe)?;
    let agent = Proc(
        Command::new(bin("wavecast-agent")?)
            .args(["run", "--config"])
            .arg(&cfg)
            .env("RUST_LOG", "warn")
            .stderr(std::fs::File::create(root.join("agent.log"))?)
            .spawn()?,
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pid = agent.0.id();
    let idle_rss = status_kib(pid, "VmRSS:");
    let created = create_rollout(&inst, "bench", "exec:ok", &[])?;
    let t = Instant::now();
    let r = wait_rollout(&inst, &created.id, Duration::from_millis(20), Duration::from_secs(600)).await?;
    let agent_time = t.elapsed();
    ensure!(r.state == RolloutState::Completed, "the install did not succeed: {r:?}");
    let peak_rss = status_kib(pid, "VmHWM:");
    drop(agent);
    drop(inst.server);
    Ok(InstallRun { publish, agent: agent_time, idle_rss, peak_rss })
}

async fn bench_rollout(root: &Path, devices: u32) -> anyhow::Result<()> {
    let bytes = 1u64 << 20;
    let file = root.join("model-1mib.bin");
    write_file(&file, bytes)?;
    // Baseline: hash and durably copy the same bytes once per device, on the same filesystem.
    let copies = root.join("copies");
    std::fs::create_dir_all(&copies)?;
    let data = std::fs::read(&file)?;
    let t = Instant::now();
    for i in 0..devices {
        use std::io::Write as _;
        let _ = setup::sha256(&data);
        let mut f = std::fs::File::create(copies.join(format!("{i}")))?;
        f.write_all(&data)?;
        f.sync_all()?;
    }
    let baseline = t.elapsed();
    let _ = std::fs::remove_dir_all(&copies);

    let inst = install(root, None).await?;
    publish(&inst, &file)?;
    println!("rollout: starting {devices} simulated devices…");
    let mut sim = Proc(
        wavecast(&inst.url, &inst.token)?
            .args([
                "sim",
                "--devices",
                &devices.to_string(),
                "--group",
                "fleet",
                "--poll-interval",
                "1s",
                "--trust-root",
            ])
            .arg(inst.dir.join("root.json"))
            .arg("--dir")
            .arg(root.join("fleet"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?,
    );
    {
        use std::io::BufRead as _;
        let mut line = String::new();
        std::io::BufReader::new(sim.0.stdout.take().context("sim stdout")?).read_line(&mut line)?;
        ensure!(line.starts_with("sim:"), "the sim did not start: {line}");
    }
    let server_pid = inst.server.0.id();
    let rss_idle = status_kib(server_pid, "VmRSS:");
    let created =
        create_rollout(&inst, "fleet", "exec:sim-check", &["--waves", "10,50,100", "--device-timeout", "10m"])?;
    let t = Instant::now();
    let r = wait_rollout(&inst, &created.id, Duration::from_millis(20), Duration::from_secs(3600)).await?;
    let took = t.elapsed();
    let peak = status_kib(server_pid, "VmHWM:");
    drop(sim);
    ensure!(r.state == RolloutState::Completed, "the rollout did not complete: {r:?}");
    println!("rollout: baseline sha256 + fsynced copy of 1 MiB x {devices}: {:.2}s", baseline.as_secs_f64());
    println!(
        "rollout: 3-wave auto rollout to {devices} devices: {:.2}s; ratio {:.2}x (target ≤ 3x)",
        took.as_secs_f64(),
        took.as_secs_f64() / baseline.as_secs_f64()
    );
    println!(
        "rollout: server RSS with {devices} devices registered {rss_idle} KiB before, peak {peak} KiB during ({:.2} KiB per device at peak)",
        peak as f64 / f64::from(devices)
    );
    Ok(())
}

/// Builds the agent as devices get it and returns the executable's path, as cargo reports it.
fn build_shipped_agent() -> anyhow::Result<PathBuf> {
    let checkout = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    println!("agent: building it with `cargo build --profile agent -p wavecast-agent` (minutes: fat LTO)…");
    let out = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .current_dir(&checkout)
        .args(["build", "--locked", "--profile", "agent", "-p", "wavecast-agent", "--message-format=json"])
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running cargo in {}; or pass --binary", checkout.display()))?;
    ensure!(out.status.success(), "building the agent failed");
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        if msg["reason"] == "compiler-artifact"
            && msg["target"]["name"] == "wavecast-agent"
            && let Some(exe) = msg["executable"].as_str()
        {
            return Ok(PathBuf::from(exe));
        }
    }
    bail!("cargo did not report where it put wavecast-agent")
}

/// Waits until the server has recorded a check-in of device `name` later than `after`; returns
/// its time (Unix ms). The server writes check-in times in batches every few seconds.
async fn wait_checked_in(inst: &Installation, name: &str, after: Option<i64>) -> anyhow::Result<i64> {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let devices: serde_json::Value =
            http.get(format!("{}/api/v1/devices", inst.url)).bearer_auth(&inst.token).send().await?.json().await?;
        let seen = devices
            .as_array()
            .and_then(|all| all.iter().find(|d| d["name"] == name))
            .and_then(|d| serde_json::from_value::<wavecast_api::Timestamp>(d["last_seen_at"].clone()).ok())
            .map(wavecast_api::Timestamp::unix_ms);
        if let Some(at) = seen.filter(|&at| after.is_none_or(|a| at > a)) {
            return Ok(at);
        }
        ensure!(Instant::now() < deadline, "{name} did not check in within a minute");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn bench_agent(root: &Path, binary: Option<&Path>) -> anyhow::Result<()> {
    let agent = match binary {
        Some(p) => p.to_path_buf(),
        None => build_shipped_agent()?,
    };
    // The size a device stores: the profile already strips symbols; strip(1) takes off what
    // is left (section names, notes), if it is installed.
    let as_built = std::fs::metadata(&agent).with_context(|| format!("reading {}", agent.display()))?.len();
    let stripped = root.join("wavecast-agent.stripped");
    std::fs::copy(&agent, &stripped)?;
    let strip = Command::new("strip").arg(&stripped).stderr(Stdio::null()).status();
    let size = std::fs::metadata(&stripped)?.len();
    let how = if strip.is_ok_and(|s| s.success()) { "stripped" } else { "as built (no strip(1) here)" };
    println!(
        "agent: {} is {:.2} MiB {how} ({size} bytes; {as_built} as built); target ≤ 5 MiB",
        agent.display(),
        size as f64 / 1048576.0
    );

    // Idle: enrolled with a real server and checking in every 100 ms with nothing assigned.
    let inst = install(root, None).await?;
    let token = enroll_token(&inst, "idle")?;
    let probe = ok_probe(root)?;
    let cfg = agent_config(root, &inst, &token, "idle-device", &probe)?;
    let log = root.join("idle-agent.log");
    let mut proc =
        Proc(Command::new(&agent).args(["run", "--config"]).arg(&cfg).stderr(std::fs::File::create(&log)?).spawn()?);
    let started = Instant::now();
    let first = wait_checked_in(&inst, "idle-device", None).await?;
    wait_checked_in(&inst, "idle-device", Some(first)).await?;
    ensure!(proc.0.try_wait()?.is_none(), "the agent exited; see {}", log.display());
    let pid = proc.0.id();
    let (rss, peak) = (status_kib(pid, "VmRSS:"), status_kib(pid, "VmHWM:"));
    println!(
        "agent: idle RSS {rss} KiB ({:.1} MiB), peak {peak} KiB, after {:.0} s enrolled and checking in every 100 ms with nothing to do",
        rss as f64 / 1024.0,
        started.elapsed().as_secs_f64()
    );
    drop(proc);
    drop(inst.server);
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        // A child process of `checkins`: it needs no directory, and is killed, not stopped.
        Bench::TrivialServer { listen } => checkins::serve_trivial(listen).await,
        command => {
            // A `--dir` that does not exist yet is made, as an output directory usually is.
            std::fs::create_dir_all(&cli.dir).with_context(|| format!("creating --dir {}", cli.dir.display()))?;
            let tmp = tempfile::Builder::new()
                .prefix("wavecast-bench-")
                .tempdir_in(&cli.dir)
                .with_context(|| format!("making a scratch directory in --dir {}", cli.dir.display()))?;
            bench(command, tmp.path()).await
        }
    }
}

async fn bench(command: Bench, root: &Path) -> anyhow::Result<()> {
    let light = |devices, fleet: LightFleet| light::Options {
        devices,
        connections: fleet.connections,
        poll_interval: fleet.poll_interval,
        database_url: fleet.database_url,
    };
    let checkins =
        |devices, database_url, connections, seconds| checkins::Options { devices, database_url, connections, seconds };
    match command {
        Bench::Install { mib, s3 } => bench_install(root, mib, s3).await,
        Bench::Rollout { devices, light: false, .. } => bench_rollout(root, devices).await,
        Bench::Rollout { devices, light: true, fleet } => light::run(root, &light(devices, fleet)).await,
        Bench::Checkins { devices, database_url, connections, seconds } => {
            checkins::run(root, &checkins(devices, database_url, connections, seconds)).await
        }
        Bench::Longpoll { devices, wake_devices, database_url, per_address } => {
            longpoll::run(root, &longpoll::Options { devices, wake_devices, database_url, per_address }).await
        }
        Bench::Fsyncs { checkins } => fsyncs::run(root, checkins).await,
        Bench::Dashboard { devices, database_url, requests } => {
            dashboard::run(root, &dashboard::Options { devices, database_url, requests }).await
        }
        Bench::Agent { binary } => bench_agent(root, binary.as_deref()).await,
        Bench::All { database_url, longpoll_database_url } => {
            let dir = |name: &str| -> anyhow::Result<PathBuf> {
                let d = root.join(name);
                std::fs::create_dir_all(&d)?;
                Ok(d)
            };
            bench_agent(&dir("agent")?, None).await?;
            fsyncs::run(&dir("fsyncs")?, 20).await?;
            bench_install(&dir("install")?, 1024, true).await?;
            bench_rollout(&dir("rollout")?, 1000).await?;
            let pages = dashboard::Options { devices: 10_000, database_url: None, requests: 50 };
            dashboard::run(&dir("dashboard")?, &pages).await?;
            checkins::run(&dir("checkins-sqlite")?, &checkins(100_000, None, 256, 10)).await?;
            if database_url.is_some() {
                checkins::run(&dir("checkins-postgres")?, &checkins(100_000, database_url, 256, 10)).await?;
            }
            let longpoll = |database_url| longpoll::Options {
                devices: 100_000,
                wake_devices: 10_000,
                database_url,
                per_address: None,
            };
            longpoll::run(&dir("longpoll-sqlite")?, &longpoll(None)).await?;
            if longpoll_database_url.is_some() {
                longpoll::run(&dir("longpoll-postgres")?, &longpoll(longpoll_database_url)).await?;
            }
            let fleet = LightFleet { poll_interval: Duration::from_secs(30), connections: 64, database_url: None };
            light::run(&dir("rollout-light")?, &light(100_000, fleet)).await
        }
        Bench::TrivialServer { listen } => checkins::serve_trivial(listen).await,
    }
}
