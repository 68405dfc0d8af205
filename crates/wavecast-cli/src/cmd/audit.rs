//! `wavecast audit`: the audit trail.

use std::process::ExitCode;

use clap::Subcommand;
use wavecast_core::audit::AuditEvent;

use crate::Remote;
use crate::output;

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// List audit events, oldest first.
    List {
        /// Start at this sequence number.
        #[arg(long, default_value_t = 0)]
        from: i64,
        /// At most this many events.
        #[arg(long, default_value_t = 1000)]
        limit: i64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: Remote,
    },
}

pub async fn run(cmd: AuditCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        AuditCommand::List { from, limit, json, remote } => {
            let events: Vec<AuditEvent> =
                remote.client()?.get(&format!("/api/v1/audit?from={from}&limit={limit}")).await?;
            if json {
                output::json(&events)?;
            } else {
                print_events(&events);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints events as a table.
pub fn print_events(events: &[AuditEvent]) {
    let rows: Vec<Vec<String>> = events
        .iter()
        .map(|e| vec![e.seq.to_string(), e.at.clone(), e.actor.clone(), e.action.to_string(), e.subject.clone()])
        .collect();
    output::table(&["SEQ", "AT", "ACTOR", "ACTION", "SUBJECT"], &rows);
}
