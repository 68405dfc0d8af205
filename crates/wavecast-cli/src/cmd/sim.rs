//! `wavecast sim`: a fleet of real agents in one process.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;

use crate::Remote;

/// Run N real device agents in this process against a server, until Ctrl-C.
#[derive(Debug, Args)]
#[command(after_help = "Each device is named sim-0001, sim-0002, … and allowlists an exec probe named \
sim-check, so roll out to them with --probe exec:sim-check. A device is healthy with the first \
version it installs; with --fail N, the first N devices to try any later version fail its probe \
(and keep failing later ones). --offline N: the last N devices enroll, then never check in. \
--preexisting N: the first N devices start with a file wavecast did not put at their application \
path (\"factory <artifact> model of <device>\"), which their first managed install replaces and an \
abort with revert puts back.")]
pub struct SimArgs {
    /// How many devices.
    #[arg(long)]
    devices: u32,
    /// Their group (created if it does not exist).
    #[arg(long)]
    group: String,
    /// The installation's root.json, which every agent pins.
    #[arg(long, value_name = "ROOT_JSON")]
    trust_root: PathBuf,
    /// How many devices fail versions they did not start with.
    #[arg(long, default_value_t = 0)]
    fail: u32,
    /// How many devices go silent after enrolling.
    #[arg(long, default_value_t = 0)]
    offline: u32,
    /// How many devices start with a factory file at their application path.
    #[arg(long, default_value_t = 0)]
    preexisting: u32,
    /// Where the devices keep their state and files (default: a temporary directory, removed at exit).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Check-in interval of each device.
    #[arg(long, default_value = "1s", value_parser = wavecast_core::duration::parse_duration)]
    poll_interval: Duration,
    /// Hardware the devices report.
    #[arg(long, default_value = "sim")]
    hardware: String,
    /// Number the devices from here (so several sims can share a group without name clashes).
    #[arg(long, default_value_t = 1)]
    first: u32,
    /// Artifacts each device manages (default: every artifact already published). Repeatable.
    #[arg(long = "artifact", value_name = "NAME")]
    artifacts: Vec<String>,
    #[command(flatten)]
    remote: Remote,
}

pub async fn run(args: SimArgs) -> anyhow::Result<ExitCode> {
    let tmp;
    let dir = match args.dir {
        Some(d) => d,
        None => {
            tmp =
                tempfile::Builder::new().prefix("wavecast-sim-").tempdir().context("creating a temporary directory")?;
            tmp.path().to_path_buf()
        }
    };
    let client = args.remote.client()?;
    let opts = crate::sim::SimOptions {
        devices: args.devices,
        group: args.group.clone(),
        trust_root: args.trust_root,
        fail: args.fail,
        offline: args.offline,
        preexisting: args.preexisting,
        dir: dir.clone(),
        poll_interval: args.poll_interval,
        hardware: args.hardware,
        artifacts: args.artifacts,
        first: args.first,
    };
    let sim = crate::sim::start(&client, &opts).await?;
    println!(
        "sim: {} devices in group {} managing {} ({} fail new versions; offline: {}); state in {}; Ctrl-C to stop",
        sim.names.len(),
        args.group,
        sim.artifacts.join(", "),
        args.fail,
        if sim.offline.is_empty() { "none".to_owned() } else { sim.offline.join(", ") },
        dir.display()
    );
    wavecast_os::signal::shutdown().await;
    sim.stop().await;
    Ok(ExitCode::SUCCESS)
}
