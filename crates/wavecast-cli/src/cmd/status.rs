//! `wavecast status`: the server's health, its TUF metadata and when each role expires, the
//! audit log, and the fleet in counts, with a warning for anything the operator must renew.

use std::process::ExitCode;

use clap::Args;
use wavecast_api::{StateCounts, Status};
use wavecast_core::assignment::DeviceState;

use crate::JsonRemote;
use crate::output;

/// Show the server's health, metadata versions and expiries, the audit checkpoint, and devices.
#[derive(Debug, Args)]
#[command(after_help = "Warns when root.json or the targets expire within 30 days (renew them with \
`wavecast root rotate` and `wavecast artifact resign`), and when anything has expired. Expiries \
count from the server's clock.")]
#[command(mut_arg("json", |a| a.help("Print the status as JSON")))]
pub struct StatusArgs {
    #[command(flatten)]
    args: JsonRemote,
}

pub async fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let JsonRemote { json, remote } = args.args;
    let client = remote.client()?;
    let status: Status = client.get("/api/v1/status").await?;
    if json {
        output::json(&status)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "server     wavecast {} on {} at {}; its clock says {}",
        status.version,
        status.database,
        client.base(),
        output::time(status.server_time)
    );
    println!("blobs      {}", status.blob_store);
    println!();
    output::table(
        &["ROLE", "VERSION", "EXPIRES", "IN", "SIGNED BY"],
        &status
            .metadata
            .iter()
            .map(|m| {
                vec![
                    m.role.to_string(),
                    m.version.to_string(),
                    output::time(m.expires_at),
                    output::span(m.expires_in_secs),
                    if m.signed_offline { "offline key" } else { "the server" }.to_owned(),
                ]
            })
            .collect::<Vec<_>>(),
    );
    println!();
    let checkpoint = match &status.audit.checkpoint {
        Some(c) => format!("newest signed checkpoint at {} (root {})", c.size, c.root),
        None => "no signed checkpoint yet".to_owned(),
    };
    println!("audit      {} events; {checkpoint}", status.audit.events);
    println!(
        "devices    {} enrolled; in running rollouts: {}",
        status.devices.enrolled,
        counts(&status.devices.in_running_rollouts)
    );
    println!("rollouts   {} running", status.rollouts_running);
    if !status.warnings.is_empty() {
        println!();
        for w in &status.warnings {
            println!("WARNING: {w}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// "3 pending, 7 succeeded", or "none".
fn counts(c: &StateCounts) -> String {
    let parts: Vec<String> = DeviceState::ALL
        .into_iter()
        .filter_map(|s| {
            let n = c.get(s);
            (n > 0).then(|| format!("{n} {s}"))
        })
        .collect();
    if parts.is_empty() { "none".to_owned() } else { parts.join(", ") }
}
