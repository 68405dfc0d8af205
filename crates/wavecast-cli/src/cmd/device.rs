//! `wavecast device`: enrollment tokens, the device inventory, and taking devices out of the
//! fleet (revoke: refused, still listed; remove: gone, name free again).

use std::num::NonZeroU64;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use wavecast_api::{
    CreateEnrollmentToken, Device, DeviceDetail, DeviceRemoval, DeviceStatus, EnrollmentToken, EnrollmentTokenCreated,
};

use crate::output;
use crate::{JsonRemote, Remote};

#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    /// Mint a token that devices use to enroll into a group (or list and revoke tokens).
    #[command(after_help = "The token enrolls any number of devices until it expires, or --uses of them. \
Put it in the agent's config as enrollment_token; each device exchanges it for its own credential. \
`enroll-token list` shows every token with its id and uses; `enroll-token revoke ID` stops one \
at once (devices it enrolled keep their credentials).")]
    #[command(mut_arg("json", |a| a.help("Print JSON (field `token`)")))]
    EnrollToken(EnrollTokenArgs),
    /// List enrolled devices.
    List {
        /// Only this group's devices.
        #[arg(long)]
        group: Option<String>,
        /// Only devices in this state: active, or revoked (credential refused).
        #[arg(long, value_parser = parse_status)]
        state: Option<DeviceStatus>,
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
    /// Revoke a device's credential: refused at once, out of its running rollouts, still listed.
    #[command(after_help = "The server refuses the device's credential from its next request on, on \
every replica. The device leaves every rollout that has not ended as `removed` (settled, never a \
failure, so it no longer holds a wave) and no new rollout includes it. It stays listed as revoked, \
under its name, until `wavecast device remove` deletes it. Everything is in the audit log.")]
    Revoke {
        /// The device's name.
        name: String,
        #[command(flatten)]
        args: JsonRemote,
    },
    /// Remove (decommission) a device: revoked, then gone from its group and the device list.
    #[command(after_help = "Revokes the device as `wavecast device revoke` does, then deletes it and \
what the server kept about it: it leaves its group and the device list, and a replacement can \
enroll under its name. The audit log keeps its whole history.")]
    Remove {
        /// The device's name.
        name: String,
        #[command(flatten)]
        args: JsonRemote,
    },
}

/// `device enroll-token`: mint one (the flags), or list or revoke them (the subcommands).
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct EnrollTokenArgs {
    #[command(subcommand)]
    action: Option<EnrollTokenAction>,
    /// The group the devices join.
    #[arg(long, required = true)]
    group: Option<String>,
    /// How long the token stays valid (like 1h, 7d).
    #[arg(long, visible_alias = "expires", default_value = "7d", value_parser = wavecast_core::duration::parse_duration)]
    expires_in: std::time::Duration,
    /// How many devices it may enroll (any number until it expires when not given).
    #[arg(long)]
    uses: Option<NonZeroU64>,
    /// Print a complete, commented agent.toml with the server's URL and the new token in it
    /// (every key with its default) instead of the token alone.
    #[arg(long, conflicts_with = "json")]
    agent_config: bool,
    /// With --agent-config: the device's name.
    #[arg(long, requires = "agent_config", default_value = "cam-001")]
    device_name: String,
    /// With --agent-config: the device's hardware (must match the artifacts' --hardware).
    #[arg(long, requires = "agent_config", default_value = "jetson-orin-nano")]
    hardware: String,
    #[command(flatten)]
    args: JsonRemote,
}

#[derive(Debug, Subcommand)]
enum EnrollTokenAction {
    /// List enrollment tokens (never their secrets) with how many devices each enrolled.
    List(JsonRemote),
    /// Revoke an enrollment token by id: no device enrolls with it any more.
    Revoke {
        /// The token's id (from `enroll-token` or `enroll-token list`).
        id: String,
        #[command(flatten)]
        remote: Remote,
    },
}

fn parse_status(s: &str) -> Result<DeviceStatus, String> {
    s.parse().map_err(|e: wavecast_core::fleet::DeviceStatusError| e.to_string())
}

pub async fn run(cmd: DeviceCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        DeviceCommand::EnrollToken(EnrollTokenArgs { action: Some(action), .. }) => enroll_tokens(action).await?,
        DeviceCommand::EnrollToken(EnrollTokenArgs {
            action: None,
            group,
            expires_in,
            uses,
            agent_config: want_config,
            device_name,
            hardware,
            args,
        }) => {
            let JsonRemote { json, remote } = args;
            let group = group.ok_or_else(|| anyhow::anyhow!("--group is required"))?;
            wavecast_core::GroupName::new(group.clone())?;
            if want_config {
                wavecast_core::DeviceName::new(device_name.clone())?;
                wavecast_core::name::validate("hardware", &hardware)?;
            }
            anyhow::ensure!(
                expires_in.as_secs() > 0,
                "--expires-in must be at least 1s: a token that expires at once enrolls no device"
            );
            let body = CreateEnrollmentToken {
                group,
                expires_in_secs: Some(expires_in.as_secs()),
                max_uses: uses.map(NonZeroU64::get),
            };
            let client = remote.client()?;
            let created: EnrollmentTokenCreated = client.post("/api/v1/enrollment-tokens", &body).await?;
            if json {
                output::json(&created)?;
            } else if want_config {
                let server = client.base().as_str().trim_end_matches('/');
                print!("{}", agent_config(server, &created.token, &device_name, &hardware));
                eprintln!(
                    "agent.toml for group {} with enrollment token {} (valid until {}); it holds a secret: \
                     install it as /etc/wavecast/agent.toml, readable by the agent only",
                    created.group, created.id, created.expires_at
                );
            } else {
                println!("{}", created.token);
                let uses = created.max_uses.map_or_else(String::new, |n| format!(" for {n} device(s)"));
                eprintln!(
                    "enrollment token {} for group {}{uses}, valid until {}; shown once, keep it secret",
                    created.id, created.group, created.expires_at
                );
            }
        }
        DeviceCommand::List { group, state, args: JsonRemote { json, remote } } => {
            let mut query = Vec::new();
            if let Some(g) = &group {
                query.push(format!("group={}", wavecast_core::GroupName::new(g.clone())?));
            }
            if let Some(s) = state {
                query.push(format!("state={s}"));
            }
            let path = if query.is_empty() {
                "/api/v1/devices".to_owned()
            } else {
                format!("/api/v1/devices?{}", query.join("&"))
            };
            let devices: Vec<Device> = remote.client()?.get(&path).await?;
            output::list(json, &devices, &["NAME", "GROUP", "HARDWARE", "STATE", "LAST SEEN"], |d| {
                vec![
                    d.name.to_string(),
                    d.group.to_string(),
                    d.hardware.clone(),
                    d.state.to_string(),
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
                match d.device.revoked_at {
                    Some(at) => println!("state     revoked {} (its credential is refused)", output::time(at)),
                    None => println!("state     {}", d.device.state),
                }
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
                    if let Some(check) = r.probe_result.as_ref().and_then(wavecast_core::probe::describe_result) {
                        println!("          {check}");
                    }
                }
            }
        }
        DeviceCommand::Revoke { name, args: JsonRemote { json, remote } } => {
            wavecast_core::DeviceName::new(name.clone())?;
            let r: DeviceRemoval = remote.client()?.post_empty(&format!("/api/v1/devices/{name}/revoke")).await?;
            report_removal(json, &r, "revoked")?;
        }
        DeviceCommand::Remove { name, args: JsonRemote { json, remote } } => {
            wavecast_core::DeviceName::new(name.clone())?;
            let r: DeviceRemoval = remote.client()?.delete(&format!("/api/v1/devices/{name}")).await?;
            report_removal(json, &r, "removed")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What revoking or removing a device did, in one line (or the JSON).
fn report_removal(json: bool, r: &DeviceRemoval, done: &str) -> anyhow::Result<()> {
    if json {
        return output::json(r);
    }
    let left = match r.left_rollouts.len() {
        0 => "it was in no running rollout".to_owned(),
        n => format!(
            "it left {n} running rollout{} as removed: {}",
            if n == 1 { "" } else { "s" },
            r.left_rollouts.join(", ")
        ),
    };
    let listed = if r.decommissioned { "no longer in group" } else { "still listed in group" };
    println!("{done} device {} ({listed} {}); {left}", r.device.name, r.device.group);
    Ok(())
}

async fn enroll_tokens(action: EnrollTokenAction) -> anyhow::Result<()> {
    match action {
        EnrollTokenAction::List(JsonRemote { json, remote }) => {
            let tokens: Vec<EnrollmentToken> = remote.client()?.get("/api/v1/enrollment-tokens").await?;
            output::list(json, &tokens, &["ID", "GROUP", "USES", "EXPIRES", "STATUS"], |t| {
                vec![
                    t.id.clone(),
                    t.group.to_string(),
                    t.max_uses.map_or_else(|| t.uses.to_string(), |max| format!("{}/{max}", t.uses)),
                    output::time(t.expires_at),
                    t.revoked_at.map_or_else(|| "active".to_owned(), |r| format!("revoked {}", output::time(r))),
                ]
            })
        }
        EnrollTokenAction::Revoke { id, remote } => {
            anyhow::ensure!(
                !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric()),
                "{id:?} is not an enrollment token id (see `wavecast device enroll-token list`)"
            );
            let t: EnrollmentToken = remote.client()?.delete(&format!("/api/v1/enrollment-tokens/{id}")).await?;
            println!("revoked enrollment token {id} for group {} (it enrolled {} device(s))", t.group, t.uses);
            Ok(())
        }
    }
}

/// A complete `agent.toml` for a device that enrolls at `server` with `token`: every key the
/// agent reads (see `wavecast_agent::config`), each with its default or an example, and a
/// comment saying what it is for. Optional keys without a default are commented out.
pub fn agent_config(server: &str, token: &str, device_name: &str, hardware: &str) -> String {
    let download = wavecast_agent::config::DownloadPolicy::default();
    let max_doc = wavecast_agent::config::DEFAULT_MAX_ASSIGNMENT_BYTES;
    let stall = download.stall_timeout.as_secs();
    let rate = download.min_bytes_per_sec;
    format!(
        r#"# wavecast-agent configuration: `wavecast-agent run --config /etc/wavecast/agent.toml`.
# It holds a secret (enrollment_token): keep it readable by the agent's user only.
# Paths must be absolute. A wrong or unknown key is refused with a message naming it.

# The wavecast server's URL, as devices reach it (https:// in production; see ca_file).
server = "{server}"

# Where the agent keeps its journal, outbox, credential and TUF metadata; created if missing.
state_dir = "/var/lib/wavecast-agent"

# The installation's root.json, copied from the server's data dir (DATA_DIR/root.json from
# `wavecast init`). Everything the device installs is verified against it.
trust_root = "/etc/wavecast/root.json"

# Used once, to enroll; the device then has a credential of its own in state_dir.
enrollment_token = "{token}"

# This device's name, unique in the fleet (letters, digits, '-', '_', '.').
device_name = "{device_name}"

# This device's hardware: an artifact published with --hardware installs only where it matches.
hardware = "{hardware}"

# Time between check-ins with the server (jittered by ±20%); at least 100ms.
poll_interval = "30s"

# The largest assignment document the agent reads from the server, in bytes (at least 4096).
max_assignment_bytes = {max_doc}

# Whether the agent writes into an artifact directory other users can write to: "refuse"
# (the install waits, naming the directory) or "allow".
artifact_dirs_writable_by_others = "refuse"

# A CA bundle (PEM) to trust for an https:// server instead of the system's.
# ca_file = "/etc/wavecast/ca.pem"

# This device's client certificate and key (PEM), for a server that requires mutual TLS.
# client_cert = "/etc/wavecast/device.pem"
# client_key = "/etc/wavecast/device.key"

[download]
# A download slower than this many bytes per second over stall_timeout starts over from where
# it got to; stall_timeout also bounds every other silence on the network.
min_bytes_per_sec = {rate}
stall_timeout = "{stall}s"

# The artifacts this device runs: the name they are published under, and the file the
# application reads (its directory must be writable by the agent's user only). Repeatable.
[[artifacts]]
name = "yolo-v8n"
path = "/opt/models/yolo.onnx"

# The only binaries a rollout's exec: probe may run, by name: `--probe exec:check-model`
# runs /usr/local/bin/check-model after the swap; exit 0 means healthy.
[probes]
check-model = "/usr/local/bin/check-model"
"#
    )
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use wavecast_agent::AgentConfig;

    use super::agent_config;

    /// The printed config with the trust root filled in, as a device would have it.
    fn filled(text: &str, root: &Path) -> String {
        text.replace("/etc/wavecast/root.json", &root.display().to_string())
    }

    #[tokio::test]
    async fn the_printed_agent_config_is_one_the_agent_accepts_with_its_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let install = dir.path().join("install");
        wavecast_server::install::init(&install).await.unwrap();
        let root = wavecast_server::install::Layout::new(&install).root_json();
        let kind = wavecast_core::secret::SecretKind::EnrollmentToken;
        let token = wavecast_core::secret::Secret::from_random(kind, [7; 32]).expose().to_owned();
        let text = agent_config("http://127.0.0.1:7700", &token, "cam-042", "rpi-5");
        let path = Path::new("/etc/wavecast/agent.toml");
        let config = AgentConfig::parse(path, &filled(&text, &root)).unwrap();
        assert_eq!(config.server.as_str(), "http://127.0.0.1:7700/");
        assert_eq!((config.device_name.as_str(), config.hardware.as_str()), ("cam-042", "rpi-5"));
        assert_eq!(config.enrollment_token.as_ref().map(|t| t.expose().to_owned()), Some(token.clone()));

        // The values it prints are the agent's defaults: without them, the same config.
        let defaults: String = text
            .lines()
            .filter(|l| {
                ![
                    "poll_interval",
                    "max_assignment_bytes",
                    "artifact_dirs_writable_by_others",
                    "min_bytes_per_sec",
                    "stall_timeout",
                ]
                .iter()
                .any(|k| l.starts_with(k))
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let bare = AgentConfig::parse(path, &filled(&defaults, &root)).unwrap();
        assert_eq!(
            (bare.poll_interval, bare.max_assignment_bytes, bare.shared_dirs, bare.download),
            (config.poll_interval, config.max_assignment_bytes, config.shared_dirs, config.download)
        );

        // The keys it leaves commented out are real keys too: uncommented, they parse.
        let optional: String = text
            .lines()
            .map(|l| format!("{}\n", l.strip_prefix("# ").filter(|r| r.contains(" = \"/")).unwrap_or(l)))
            .collect();
        assert!(optional.contains("\nca_file = ") && optional.contains("\nclient_key = "), "{optional}");
        let all = AgentConfig::parse(path, &filled(&optional, &root)).unwrap();
        assert!(all.ca_file.is_some() && all.client_identity.is_some());
    }
}
