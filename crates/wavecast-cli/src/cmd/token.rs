//! `wavecast token`: API tokens with roles.

use std::process::ExitCode;

use clap::Subcommand;

use crate::Remote;
use crate::output;

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create an API token; its secret is printed once.
    #[command(after_help = "Roles: admin (everything, including tokens), publisher (publish artifacts), \
operator (groups, enrollment, create/resume/abort rollouts), approver (approve gates), viewer \
(read only). The token's name is the actor in every audit event it causes.")]
    Create {
        /// The role.
        #[arg(long, value_parser = ["admin", "publisher", "operator", "approver", "viewer"])]
        role: String,
        /// A name for it (default: ROLE-<id>).
        #[arg(long)]
        name: Option<String>,
        /// Print JSON (fields `id` and `token`).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// List tokens (never their secrets).
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Revoke a token by id; it stops working at once.
    Revoke {
        /// The token's id (from `token create` or `token list`).
        id: String,
        #[command(flatten)]
        remote: Remote,
    },
}

pub async fn run(cmd: TokenCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        TokenCommand::Create { role, name, json, remote } => {
            let created: serde_json::Value =
                remote.client()?.post("/api/v1/tokens", &serde_json::json!({ "role": role, "name": name })).await?;
            if json {
                output::json(&created)?;
            } else {
                println!("{}", created["token"].as_str().unwrap_or_default());
                eprintln!(
                    "token {} (id {}, role {}); shown once, keep it secret",
                    created["name"].as_str().unwrap_or("?"),
                    created["id"].as_str().unwrap_or("?"),
                    created["role"].as_str().unwrap_or("?")
                );
            }
        }
        TokenCommand::List { json, remote } => {
            let tokens: Vec<serde_json::Value> = remote.client()?.get("/api/v1/tokens").await?;
            if json {
                output::json(&tokens)?;
            } else {
                let rows: Vec<Vec<String>> = tokens
                    .iter()
                    .map(|t| {
                        vec![
                            t["id"].as_str().unwrap_or("-").to_owned(),
                            t["name"].as_str().unwrap_or("-").to_owned(),
                            t["role"].as_str().unwrap_or("-").to_owned(),
                            output::time(t["created_at"].as_i64().unwrap_or_default()),
                            t["revoked_at"]
                                .as_i64()
                                .map_or_else(|| "active".to_owned(), |r| format!("revoked {}", output::time(r))),
                        ]
                    })
                    .collect();
                output::table(&["ID", "NAME", "ROLE", "CREATED", "STATUS"], &rows);
            }
        }
        TokenCommand::Revoke { id, remote } => {
            anyhow::ensure!(
                id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric()),
                "{id:?} is not a token id"
            );
            let client = remote.client()?;
            let req = client.request(reqwest::Method::DELETE, &format!("/api/v1/tokens/{id}"))?;
            let resp = client.send("DELETE", &format!("/api/v1/tokens/{id}"), req).await?;
            let t: serde_json::Value = resp.json().await?;
            println!("revoked token {} ({})", t["name"].as_str().unwrap_or("?"), id);
        }
    }
    Ok(ExitCode::SUCCESS)
}
