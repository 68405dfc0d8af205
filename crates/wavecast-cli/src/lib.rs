//! The `wavecast` command: operator CLI, and the entry points of the server and the demo.
//!
//! Arguments are parsed by clap into [`Cli`], then each command turns its flags into typed
//! values before doing anything, so a bad flag fails before any side effect. Errors travel as
//! `anyhow` only here, at the binary's edge, and are printed with their whole chain.

// This crate's `println!` and `print!`: the same as std's, except that a reader that went
// away (`wavecast device list | head -1`) ends the command quietly with success instead of a
// panic, as well-behaved command-line tools do. Defined before the modules so they all use it.
macro_rules! println {
    () => {
        $crate::output::write_stdout(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::output::write_stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

macro_rules! print {
    ($($arg:tt)*) => {
        $crate::output::write_stdout(format_args!($($arg)*))
    };
}

mod client;
mod cmd;
mod demo;
mod golden;
mod output;
pub mod sim;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

pub use client::{Client, ClientError};

/// wavecast deploys signed machine-learning models to fleets of edge devices, in waves.
#[derive(Debug, Parser)]
#[command(name = "wavecast", version, max_term_width = 100)]
#[command(after_help = "Start here: `wavecast demo` plays a whole rollout on this machine.\n\
Then: `wavecast init --dir DIR`, `wavecast server --data-dir DIR`, and the commands above with\n\
WAVECAST_TOKEN set to the contents of DIR/admin.token.")]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where the server is and who we are to it.
#[derive(Debug, Clone, Args)]
pub struct Remote {
    /// The wavecast server's URL.
    #[arg(long, env = "WAVECAST_SERVER", default_value = "http://127.0.0.1:7700", global = true)]
    server: String,
    /// An API token (the admin token is in DATA_DIR/admin.token).
    #[arg(long, env = "WAVECAST_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
}

impl Remote {
    fn client(&self) -> anyhow::Result<Client> {
        Ok(Client::new(&self.server, self.token.clone())?)
    }
}

/// The arguments of every command that asks the server something and prints the answer:
/// `--json` and where the server is. A command whose JSON deserves a word of its own says so
/// with `mut_arg("json", …)`.
#[derive(Debug, Clone, Args)]
pub struct JsonRemote {
    /// Print JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    remote: Remote,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a new installation: keys, the TUF trust anchor, an admin token.
    Init(cmd::init::InitArgs),
    /// Run the control plane on an installation made by `init`.
    Server(cmd::server::ServerArgs),
    /// Play the whole story on this machine: server, devices, a signed model.
    Demo(cmd::demo::DemoArgs),
    /// Run N real device agents in this process (tests, demos, benchmarks).
    Sim(cmd::sim::SimArgs),
    /// Publish and list artifacts (models).
    #[command(subcommand)]
    Artifact(cmd::artifact::ArtifactCommand),
    /// Create and list device groups.
    #[command(subcommand)]
    Group(cmd::group::GroupCommand),
    /// Enroll, list, inspect, revoke and remove devices.
    #[command(subcommand)]
    Device(cmd::device::DeviceCommand),
    /// Roll an artifact out to a group in waves, and steer it.
    #[command(subcommand)]
    Rollout(cmd::rollout::RolloutCommand),
    /// Create, list and revoke API tokens with roles.
    #[command(subcommand)]
    Token(cmd::token::TokenCommand),
    /// Read the audit trail.
    #[command(subcommand)]
    Audit(cmd::audit::AuditCommand),
    /// The server's health, TUF metadata expiries, audit checkpoint and devices.
    Status(cmd::status::StatusArgs),
    /// Renew the trust anchor, or rotate the keys it names.
    #[command(subcommand)]
    Root(cmd::root::RootCommand),
    /// Check a model against its golden set here, as wavecast-model-check does on a device
    /// (`wavecast model-check --help` for its arguments).
    #[command(
        disable_help_flag = true,
        after_help = "The same check as the wavecast-model-check binary, except peak memory: this binary does not \
count its heap, so a golden set with a memory budget cannot run here. Devices should install \
wavecast-model-check (small, no server inside) and allowlist it as an exec probe."
    )]
    ModelCheck {
        /// wavecast-model-check's arguments: MODEL [--golden FILE] [--previous FILE] [--max-drift TOLERANCE].
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0.., value_name = "ARGS")]
        args: Vec<std::ffi::OsString>,
    },
}

/// Parses the command line, runs the command, and maps the outcome to an exit code:
/// 0 for success, 1 for any error (printed with its causes), 2 for bad usage.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // The model check is synchronous CPU work with a JSON report of its own: no runtime.
    if let Command::ModelCheck { args } = cli.command {
        return model_check(args);
    }
    // Simulated agents journal every step with fsync, which blocks the thread it runs on; with
    // hundreds of agents in one process, two worker threads would spend the rollout waiting
    // on the disk while other agents' check-ins starve.
    let workers = match cli.command {
        Command::Sim(_) | Command::Demo(_) => 32,
        _ => std::thread::available_parallelism().map_or(2, |n| n.get()),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(workers).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Init(args) => cmd::init::run(args).await,
        Command::Server(args) => cmd::server::run(args).await,
        Command::Demo(args) => cmd::demo::run(args).await,
        Command::Sim(args) => cmd::sim::run(args).await,
        Command::Artifact(c) => cmd::artifact::run(c).await,
        Command::Group(c) => cmd::group::run(c).await,
        Command::Device(c) => cmd::device::run(c).await,
        Command::Rollout(c) => cmd::rollout::run(c).await,
        Command::Token(c) => cmd::token::run(c).await,
        Command::Audit(c) => cmd::audit::run(c).await,
        Command::Status(args) => cmd::status::run(args).await,
        Command::Root(c) => cmd::root::run(c).await,
        Command::ModelCheck { args } => Ok(model_check(args)),
    }
}

/// `wavecast model-check ARGS`: wavecast-model-check's command line, without a memory meter.
fn model_check(args: Vec<std::ffi::OsString>) -> ExitCode {
    let argv = std::iter::once(std::ffi::OsString::from("wavecast model-check")).chain(args);
    wavecast_model_check::cli::main_from(argv, wavecast_model_check::memory::MemoryMeter::Unavailable)
}

/// Reads a token file written by `init` (one line).
pub fn read_token_file(path: &std::path::Path) -> anyhow::Result<String> {
    use anyhow::Context as _;
    Ok(std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?.trim().to_owned())
}

/// A path argument that must exist.
fn existing_file(s: &str) -> Result<PathBuf, String> {
    let p = PathBuf::from(s);
    if p.is_file() { Ok(p) } else { Err(format!("{s} is not a file")) }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory as _;
        super::Cli::command().debug_assert();
    }
}
