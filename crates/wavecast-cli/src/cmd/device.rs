//! `wavecast device`: enrollment tokens and the device inventory.

use std::process::ExitCode;

use clap::Subcommand;
use serde::{Deserialize, Serialize};

use crate::Remote;
use crate::output;

#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    /// Mint a token that devices use once to enroll into a group.
    #[command(after_help = "The token works for any number of devices until it expires. Put it in \
the agent's config as enrollment_token; each device exchanges it for its own credential.")]
    EnrollToken {
        /// The group the devices join.
        #[arg(long)]
        group: String,
        /// How long the token stays valid (like 1h, 7d).
        #[arg(long, default_value = "7d", value_parser = wavecast_core::duration::parse_duration)]
        expires_in: std::time::Duration,
        /// Print JSON (field `token`).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// List enrolled devices.
    List {
        /// Only this group's devices.
        #[arg(long)]
        group: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Show one device: identity, group, and what it runs.
    Show {
        /// The device's name.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Debug, Deserialize, Serialize)]
struct Device {
    id: String,
    name: String,
    group: String,
    hardware: String,
    enrolled_at: i64,
    last_seen_at: Option<i64>,
}

pub async fn run(cmd: DeviceCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        DeviceCommand::EnrollToken { group, expires_in, json, remote } => {
            wavecast_core::GroupName::new(group.clone())?;
            let body = serde_json::json!({ "group": group, "expires_in_secs": expires_in.as_secs().max(1) });
            let created: serde_json::Value = remote.client()?.post("/api/v1/enrollment-tokens", &body).await?;
            if json {
                output::json(&created)?;
            } else {
                println!("{}", created["token"].as_str().unwrap_or_default());
                eprintln!(
                    "enrollment token for group {group}, valid until {}; shown once, keep it secret",
                    created["expires_at"].as_str().unwrap_or("?")
                );
            }
        }
        DeviceCommand::List { group, json, remote } => {
            let path = match &group {
                Some(g) => format!("/api/v1/devices?group={}", wavecast_core::GroupName::new(g.clone())?),
                None => "/api/v1/devices".to_owned(),
            };
            let devices: Vec<Device> = remote.client()?.get(&path).await?;
            if json {
                output::json(&devices)?;
            } else {
                let rows: Vec<Vec<String>> = devices
                    .iter()
                    .map(|d| {
                        vec![
                            d.name.clone(),
                            d.group.clone(),
                            d.hardware.clone(),
                            d.last_seen_at.map_or_else(|| "never".to_owned(), output::time),
                        ]
                    })
                    .collect();
                output::table(&["NAME", "GROUP", "HARDWARE", "LAST SEEN"], &rows);
            }
        }
        DeviceCommand::Show { name, json, remote } => {
            wavecast_core::DeviceName::new(name.clone())?;
            let d: serde_json::Value = remote.client()?.get(&format!("/api/v1/devices/{name}")).await?;
            if json {
                output::json(&d)?;
            } else {
                let s = |k: &str| d[k].as_str().unwrap_or("-").to_owned();
                println!("device    {}", s("name"));
                println!("id        {}", s("id"));
                println!("group     {}", s("group"));
                println!("hardware  {}", s("hardware"));
                println!("enrolled  {}", d["enrolled_at"].as_i64().map_or_else(|| "-".into(), output::time));
                println!("last seen {}", d["last_seen_at"].as_i64().map_or_else(|| "never".into(), output::time));
                let artifacts = d["artifacts"].as_array().cloned().unwrap_or_default();
                if artifacts.is_empty() {
                    println!("artifacts none reported yet");
                } else {
                    for a in artifacts {
                        println!(
                            "artifact  {}@{} sha256 {}",
                            a["name"].as_str().unwrap_or("?"),
                            a["version"].as_str().unwrap_or("?"),
                            a["sha256"].as_str().unwrap_or("?")
                        );
                    }
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
