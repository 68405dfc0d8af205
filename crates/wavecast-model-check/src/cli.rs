//! The command line of `wavecast-model-check`: arguments and environment in, one JSON line on
//! stdout and the exit code out.
//!
//! Bad arguments are a report too ("could not run", exit 2), so whoever runs the probe always
//! gets the JSON it parses. A one-line summary goes to stderr when the model is not healthy:
//! it is what an agent that only keeps stderr shows as the reason.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use clap::error::ErrorKind;

use crate::check::{self, Request};
use crate::expectations::Tolerance;
use crate::memory::MemoryMeter;
use crate::report::{Outcome, Reason, Report};

/// Checks a model on this device against the golden set its publisher signed: signature,
/// golden outputs, latency and memory budgets, and drift from the previous version.
///
/// Prints one JSON object; exits 0 when healthy, 1 when unhealthy, 2 when the check could not
/// run.
#[derive(Debug, Parser)]
#[command(name = "wavecast-model-check", version)]
struct Args {
    /// The model file (an exec probe gets the active artifact's path as its last argument).
    #[arg(env = "WAVECAST_ARTIFACT_PATH", value_name = "MODEL")]
    artifact: PathBuf,
    /// The golden bundle (expectations.json and golden.npz) signed with the model.
    #[arg(long, env = "WAVECAST_GOLDEN_PATH", value_name = "FILE")]
    golden: Option<PathBuf>,
    /// The previous version of the model, for drift; without it drift is skipped.
    #[arg(long, env = "WAVECAST_PREVIOUS_PATH", value_name = "FILE")]
    previous: Option<PathBuf>,
    /// Also fail if outputs move further than this from the previous version's: abs=A[,rel=R],
    /// rel=R or top-k=K. Adds to any limit the publisher set; it never replaces it.
    #[arg(long, value_name = "TOLERANCE")]
    max_drift: Option<Tolerance>,
}

/// Runs the command line with peak memory read from `meter`.
pub fn main(meter: MemoryMeter) -> ExitCode {
    main_from(std::env::args_os(), meter)
}

/// Runs the command line `args` (the program's name first), with peak memory read from
/// `meter`: for a binary that offers the check as one of its commands.
pub fn main_from(args: impl IntoIterator<Item = std::ffi::OsString>, meter: MemoryMeter) -> ExitCode {
    let report = match Args::try_parse_from(args) {
        Ok(args) => check::run(&Request {
            artifact: args.artifact,
            golden: args.golden,
            previous: args.previous,
            max_drift: args.max_drift,
            meter,
        }),
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let text = e.to_string();
            let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("bad arguments");
            Report::failed(Reason::BadArguments, first.trim_start_matches("error: "))
        }
    };
    // The reader may have gone; the exit code still tells.
    let _ = writeln!(std::io::stdout().lock(), "{}", report.to_json());
    if report.outcome != Outcome::Healthy {
        eprintln!("wavecast-model-check: {}", report.summary());
    }
    ExitCode::from(report.outcome.exit_code())
}
