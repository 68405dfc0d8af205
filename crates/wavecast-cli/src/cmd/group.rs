//! `wavecast group`: device groups.

use std::process::ExitCode;

use clap::Subcommand;
use wavecast_api::{CreateGroup, Group, GroupCreated};

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
    }
    Ok(ExitCode::SUCCESS)
}
