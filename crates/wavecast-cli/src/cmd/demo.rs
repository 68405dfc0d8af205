//! `wavecast demo`: the story so far, on this machine, in one command.

use std::process::ExitCode;

use clap::Args;

/// Run a self-contained demonstration: a fresh installation, a server on SQLite, a signed
/// model, a group of enrolled devices, and the audit trail.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Keep the server running at the end (Ctrl-C to stop).
    #[arg(long)]
    keep_running: bool,
    /// Number of devices to enroll.
    #[arg(long, default_value_t = 20)]
    devices: u32,
}

pub async fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    crate::demo::run(args.devices, args.keep_running).await
}
