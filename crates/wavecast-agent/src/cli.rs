//! Command line of `wavecast-agent`: `run` and `status`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

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
            let _ = tracing_subscriber::registry()
                .with(log_filter(std::env::var("RUST_LOG").ok().as_deref()))
                .with(
                    tracing_subscriber::fmt::layer()
                        .with_writer(std::io::stderr)
                        .with_ansi(wavecast_os::term::stderr_color()),
                )
                .try_init();
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
            print!("{}", crate::status::text(&status));
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The log filter from `RUST_LOG`: a default level and per-target levels, as in
/// `debug` or `info,tough=warn,wavecast_agent=debug`. Empty, unset or not understood means
/// `info`. Span and field filters (`target[span{field}]=level`) are not supported: the agent
/// logs little, and the parser that supports them (tracing-subscriber's env-filter) brings a
/// regex engine into the binary devices run.
fn log_filter(rust_log: Option<&str>) -> Targets {
    let info = || Targets::new().with_default(LevelFilter::INFO);
    let directives: Vec<&str> =
        rust_log.unwrap_or_default().split(',').map(str::trim).filter(|d| !d.is_empty()).collect();
    if directives.is_empty() {
        return info();
    }
    directives.join(",").parse().unwrap_or_else(|_| info())
}

#[cfg(test)]
mod tests {
    use tracing::Level;

    use super::*;

    #[test]
    fn rust_log_sets_the_levels() {
        use Level as L;
        // (RUST_LOG, target, level, logged?)
        let cases: &[(Option<&str>, &str, Level, bool)] = &[
            (None, "wavecast_agent::agent", L::INFO, true),
            (None, "wavecast_agent::agent", L::DEBUG, false),
            (Some(""), "tough", L::INFO, true),
            (Some(" , "), "tough", L::DEBUG, false),
            (Some("debug"), "wavecast_agent::agent", L::DEBUG, true),
            (Some("debug"), "tough", L::TRACE, false),
            (Some("warn"), "wavecast_agent::agent", L::INFO, false),
            (Some("warn"), "wavecast_agent::agent", L::WARN, true),
            (Some("info,tough=warn"), "tough::repository", L::INFO, false),
            (Some("info,tough=warn"), "wavecast_agent::fetch", L::INFO, true),
            (Some("wavecast_agent=debug"), "wavecast_agent::fetch", L::DEBUG, true),
            (Some("wavecast_agent=debug"), "hyper", L::ERROR, false),
            (Some("info,"), "tough", L::DEBUG, false),
            (Some("off"), "wavecast_agent::agent", L::ERROR, false),
            // Not understood: the default, rather than nothing or everything.
            (Some("a=b=c"), "wavecast_agent::agent", L::INFO, true),
            (Some("a=b=c"), "wavecast_agent::agent", L::DEBUG, false),
            (Some("x[span{f=1}]=debug"), "x", L::DEBUG, false),
        ];
        for &(rust_log, target, level, logged) in cases {
            assert_eq!(log_filter(rust_log).would_enable(target, &level), logged, "{rust_log:?} {target} {level}");
        }
    }
}
