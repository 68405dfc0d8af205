//! `wavecast group`: device groups.

use std::process::ExitCode;

use clap::Subcommand;
use wavecast_api::{CreateGroup, Group, GroupCreated, GroupPacing, SetGroupPacing};

use crate::output;
use crate::{JsonRemote, Remote};

#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// Create a device group.
    Create {
        /// Group name: letters, digits, '.', '_' and '-'.
        name: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// List groups with their device counts.
    List(JsonRemote),
    /// Show or set how the group's devices check in.
    ///
    /// Devices that can long-poll (wavecast-agent does) hold a check-in open on the server, so a
    /// wave opening, pause or abort reaches them within about a second; the intervals pace
    /// devices that poll, and every device when long-poll is off (`--long-poll 0s`). Each
    /// suggestion is jittered ±20% so a fleet never checks in in step. Without flags, prints the
    /// current settings; flags not given keep their current value.
    ///
    /// Example: wavecast group pacing plant-7 --idle 5m --active 10s
    Pacing {
        /// Group name.
        name: String,
        /// Between check-ins of a device with nothing to do (1s to 24h; default 60s).
        #[arg(long, value_name = "DURATION")]
        idle: Option<String>,
        /// Between check-ins of a device whose wave is open (1s to 24h; default 5s).
        #[arg(long, value_name = "DURATION")]
        active: Option<String>,
        /// The longest a check-in is held waiting for a change (at most 5m; 0s turns long-poll
        /// off; default 55s, under the 60 s idle timeout of common proxies).
        #[arg(long, value_name = "DURATION")]
        long_poll: Option<String>,
        /// Put every setting back to the server's default.
        #[arg(long, conflicts_with_all = ["idle", "active", "long_poll"])]
        defaults: bool,
        #[command(flatten)]
        remote: JsonRemote,
    },
}

pub async fn run(cmd: GroupCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        GroupCommand::Create { name, remote } => {
            wavecast_core::GroupName::new(name.clone())?;
            let created: GroupCreated = remote.client()?.post("/api/v1/groups", &CreateGroup { name }).await?;
            println!("created group {}", created.name);
        }
        GroupCommand::List(JsonRemote { json, remote }) => {
            let groups: Vec<Group> = remote.client()?.get("/api/v1/groups").await?;
            output::list(json, &groups, &["NAME", "DEVICES", "CREATED", "BY"], |g| {
                vec![g.name.to_string(), g.devices.to_string(), output::time(g.created_at), g.created_by.clone()]
            })?;
        }
        GroupCommand::Pacing { name, idle, active, long_poll, defaults, remote: JsonRemote { json, remote } } => {
            wavecast_core::GroupName::new(name.clone())?;
            let client = remote.client()?;
            let path = format!("/api/v1/groups/{name}/pacing");
            let mut pacing: GroupPacing = client.get(&path).await?;
            if defaults || idle.is_some() || active.is_some() || long_poll.is_some() {
                let ms = |v: u64| format!("{v}ms");
                let body = if defaults {
                    SetGroupPacing::default()
                } else {
                    SetGroupPacing {
                        idle: Some(idle.unwrap_or_else(|| ms(pacing.idle_ms))),
                        active: Some(active.unwrap_or_else(|| ms(pacing.active_ms))),
                        long_poll: Some(long_poll.unwrap_or_else(|| ms(pacing.long_poll_ms))),
                    }
                };
                pacing = client.put(&path, &body).await?;
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&pacing)?);
            } else {
                let secs = |ms: u64| format!("{}s", ms as f64 / 1000.0);
                println!("group {}", pacing.group);
                println!("  idle interval     {}", secs(pacing.idle_ms));
                println!("  active interval   {}", secs(pacing.active_ms));
                if pacing.long_poll_ms == 0 {
                    println!("  long-poll         off");
                } else {
                    println!("  long-poll         up to {}", secs(pacing.long_poll_ms));
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
