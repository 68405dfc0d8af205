//! `wavecast device`: enrollment tokens and the device inventory.

use std::process::ExitCode;

use clap::Subcommand;
use wavecast_api::{CreateEnrollmentToken, Device, DeviceDetail, EnrollmentTokenCreated};

use crate::JsonRemote;
use crate::output;

#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    /// Mint a token that devices use once to enroll into a group.
    #[command(after_help = "The token works for any number of devices until it expires. Put it in \
the agent's config as enrollment_token; each device exchanges it for its own credential.")]
    #[command(mut_arg("json", |a| a.help("Print JSON (field `token`)")))]
    EnrollToken {
        /// The group the devices join.
        #[arg(long)]
        group: String,
        /// How long the token stays valid (like 1h, 7d).
        #[arg(long, default_value = "7d", value_parser = wavecast_core::duration::parse_duration)]
        expires_in: std::time::Duration,
        #[command(flatten)]
        args: JsonRemote,
    },
    /// List enrolled devices.
    List {
        /// Only this group's devices.
        #[arg(long)]
        group: Option<String>,
        #[command(flatten)]
        args: JsonRemote,
    },
    /// Show one device: identity, group, what it runs, and where it is in each rollout.
    Show {
        /// The device's name.
        name: String,
        #[command(flatten)]
        args: JsonRemote,
    },
}

pub async fn run(cmd: DeviceCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        DeviceCommand::EnrollToken { group, expires_in, args: JsonRemote { json, remote } } => {
            wavecast_core::GroupName::new(group.clone())?;
            let body =
                CreateEnrollmentToken { group, expires_in_secs: Some(expires_in.as_secs().max(1)), max_uses: None };
            let created: EnrollmentTokenCreated = remote.client()?.post("/api/v1/enrollment-tokens", &body).await?;
            if json {
                output::json(&created)?;
            } else {
                println!("{}", created.token);
                eprintln!(
                    "enrollment token for group {}, valid until {}; shown once, keep it secret",
                    created.group, created.expires_at
                );
            }
        }
        DeviceCommand::List { group, args: JsonRemote { json, remote } } => {
            let path = match &group {
                Some(g) => format!("/api/v1/devices?group={}", wavecast_core::GroupName::new(g.clone())?),
                None => "/api/v1/devices".to_owned(),
            };
            let devices: Vec<Device> = remote.client()?.get(&path).await?;
            output::list(json, &devices, &["NAME", "GROUP", "HARDWARE", "LAST SEEN"], |d| {
                vec![
                    d.name.to_string(),
                    d.group.to_string(),
                    d.hardware.clone(),
                    d.last_seen_at.map_or_else(|| "never".to_owned(), output::time),
                ]
            })?;
        }
        DeviceCommand::Show { name, args: JsonRemote { json, remote } } => {
            wavecast_core::DeviceName::new(name.clone())?;
            let d: DeviceDetail = remote.client()?.get(&format!("/api/v1/devices/{name}")).await?;
            if json {
                output::json(&d)?;
            } else {
                println!("device    {}", d.device.name);
                println!("id        {}", d.device.id);
                println!("group     {}", d.device.group);
                println!("hardware  {}", d.device.hardware);
                println!("enrolled  {}", output::time(d.device.enrolled_at));
                println!("last seen {}", d.device.last_seen_at.map_or_else(|| "never".into(), output::time));
                if d.artifacts.is_empty() {
                    println!("artifacts none reported yet");
                } else {
                    for a in &d.artifacts {
                        println!("artifact  {}@{} sha256 {}", a.name, a.version, a.sha256);
                    }
                }
                for r in &d.rollouts {
                    let mut line =
                        format!("rollout   {} {}@{} wave {} {}", r.rollout_id, r.artifact, r.version, r.wave, r.state);
                    if let Some(p) = &r.progress {
                        line.push_str(&format!(" — {}", super::rollout::describe_progress(p)));
                    }
                    if let Some(reason) = &r.reason {
                        line.push_str(&format!(" — {reason}"));
                    }
                    println!("{line}");
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
