//! `wavecast token`: API tokens with roles.

use std::process::ExitCode;

use clap::Subcommand;
use wavecast_api::{CreateToken, Token, TokenCreated};
use wavecast_core::Role;

use crate::output;
use crate::{JsonRemote, Remote};

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create an API token; its secret is printed once.
    #[command(after_help = "Roles: admin (everything, including tokens), publisher (publish artifacts), \
operator (groups, enrollment, create/resume/abort rollouts), approver (approve gates), viewer \
(read only). The token's name is the actor in every audit event it causes.")]
    #[command(mut_arg("json", |a| a.help("Print JSON (fields `id` and `token`)")))]
    Create {
        /// The role.
        #[arg(long, value_parser = ["admin", "publisher", "operator", "approver", "viewer"])]
        role: String,
        /// A name for it (default: ROLE-<id>).
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        args: JsonRemote,
    },
    /// List tokens (never their secrets).
    List(JsonRemote),
    /// Revoke a token by id or name; it stops working at once.
    Revoke {
        /// The token's id or name (from `token create` or `token list`).
        #[arg(value_name = "ID_OR_NAME")]
        id: String,
        #[command(flatten)]
        remote: Remote,
    },
}

pub async fn run(cmd: TokenCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        TokenCommand::Create { role, name, args: JsonRemote { json, remote } } => {
            let role: Role = role.parse()?;
            let created: TokenCreated = remote.client()?.post("/api/v1/tokens", &CreateToken { role, name }).await?;
            if json {
                output::json(&created)?;
            } else {
                println!("{}", created.token);
                eprintln!(
                    "token {} (id {}, role {}); shown once, keep it secret",
                    created.name, created.id, created.role
                );
            }
        }
        TokenCommand::List(JsonRemote { json, remote }) => {
            let tokens: Vec<Token> = remote.client()?.get("/api/v1/tokens").await?;
            output::list(json, &tokens, &["ID", "NAME", "ROLE", "CREATED", "STATUS"], |t| {
                vec![
                    t.id.clone(),
                    t.name.clone(),
                    t.role.to_string(),
                    output::time(t.created_at),
                    t.revoked_at.map_or_else(|| "active".to_owned(), |r| format!("revoked {}", output::time(r))),
                ]
            })?;
        }
        TokenCommand::Revoke { id: given, remote } => {
            let client = remote.client()?;
            let tokens: Vec<Token> = client.get("/api/v1/tokens").await?;
            // An id first; else the one token still active under that name.
            let id = match tokens.iter().find(|t| t.id == given) {
                Some(t) => t.id.clone(),
                None => {
                    let named: Vec<&Token> = tokens.iter().filter(|t| t.name == given).collect();
                    match named.iter().find(|t| t.revoked_at.is_none()).or(named.first()) {
                        Some(t) => t.id.clone(),
                        None => {
                            anyhow::bail!("no token has the id or name {given:?} (`wavecast token list` shows them)")
                        }
                    }
                }
            };
            let t: Token = client.delete(&format!("/api/v1/tokens/{id}")).await?;
            println!("revoked token {} ({})", t.name, id);
        }
    }
    Ok(ExitCode::SUCCESS)
}
