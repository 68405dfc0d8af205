//! `wavecast group`: device groups.

use std::process::ExitCode;

use clap::Subcommand;
use serde::Deserialize;

use crate::Remote;
use crate::output;

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
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Debug, Deserialize, serde::Serialize)]
struct Group {
    name: String,
    created_at: i64,
    created_by: String,
    devices: i64,
}

pub async fn run(cmd: GroupCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        GroupCommand::Create { name, remote } => {
            wavecast_core::GroupName::new(name.clone())?;
            let _: serde_json::Value =
                remote.client()?.post("/api/v1/groups", &serde_json::json!({ "name": name })).await?;
            println!("created group {name}");
        }
        GroupCommand::List { json, remote } => {
            let groups: Vec<Group> = remote.client()?.get("/api/v1/groups").await?;
            if json {
                output::json(&groups)?;
            } else {
                let rows: Vec<Vec<String>> = groups
                    .iter()
                    .map(|g| {
                        vec![g.name.clone(), g.devices.to_string(), output::time(g.created_at), g.created_by.clone()]
                    })
                    .collect();
                output::table(&["NAME", "DEVICES", "CREATED", "BY"], &rows);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
