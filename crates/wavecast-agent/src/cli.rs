//! Command line of `wavecast-agent`: `run` and `status`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::AgentConfig;

/// The wavecast device agent: keeps this device's models current, verified and healthy.
#[derive(Debug, Parser)]
#[command(name = "wavecast-agent", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Enroll if needed, then check in, install, probe, roll back and report, forever.
    #[command(after_help = "Stops on SIGTERM or Ctrl-C. Logs go to stderr (RUST_LOG=debug for more).")]
    Run {
        /// The agent's configuration file.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Show what each artifact runs, its previous version, and the last outcome.
    Status {
        /// The agent's configuration file.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs the command line; exit code 0 on success, 1 on error, 2 on bad usage.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run { config } => {
            #[allow(unused_mut)]
            let mut config = AgentConfig::load(&config)?;
            #[cfg(debug_assertions)]
            {
                // Test builds only: the crash-safety tests pick a step to die at.
                config.crash_at = std::env::var("WAVECAST_AGENT_CRASH_AT").ok();
            }
            let filter = tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
            let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
            rt.block_on(async move {
                let agent = crate::Agent::start(config).await?;
                tracing::info!(device_id = %agent.device_id(), "agent running");
                agent.run(wavecast_os::signal::shutdown()).await;
                tracing::info!("agent stopped");
                anyhow::Ok(())
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { config, json } => {
            let config = AgentConfig::load(&config)?;
            let status = crate::status::read(&config)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
                return Ok(ExitCode::SUCCESS);
            }
            for a in status {
                println!("{}  {}", a.name, a.path);
                match &a.active {
                    Some(i) => println!("  active    {}  sha256 {}", i.version, i.sha256),
                    None => println!("  active    none installed by wavecast yet"),
                }
                match &a.previous {
                    Some(p) => println!("  previous  {}", p.version),
                    None => println!("  previous  none"),
                }
                if let Some(w) = &a.in_progress {
                    println!("  now       {w}");
                }
                if let Some(o) = &a.last_outcome {
                    let at = jiff::Timestamp::from_millisecond(o.at_ms).map(|t| t.to_string()).unwrap_or_default();
                    println!("  last      {} {} (rollout {}) at {at}", o.state, o.version, o.rollout_id);
                    if let Some(r) = &o.reason {
                        println!("  reason    {r}");
                    }
                }
                println!("  health    {}", if a.healthy { "healthy" } else { "not healthy" });
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
