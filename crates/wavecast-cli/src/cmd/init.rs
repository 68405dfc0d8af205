//! `wavecast init`: create an installation directory.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;

/// Create keys, the signed TUF trust anchor and an admin token in a new directory.
#[derive(Debug, Args)]
#[command(after_help = "Refuses to touch a directory that is not empty. Afterwards, move the keys in \
DIR/offline/ off this machine:\nroot.key signs each new root version (`wavecast root rotate`: a \
yearly renewal, or new keys); targets.key signs every publish and belongs on the publisher's machine.")]
pub struct InitArgs {
    /// The directory to create (or an empty one).
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// Print where each file is as JSON (keys root_json, publisher_key, admin_token_file, data_dir).
    #[arg(long)]
    json: bool,
}

pub async fn run(args: InitArgs) -> anyhow::Result<ExitCode> {
    let report = wavecast_server::install::init(&args.dir)
        .await
        .with_context(|| format!("creating an installation in {}", args.dir.display()))?;
    if args.json {
        crate::output::json(&report)?;
        return Ok(ExitCode::SUCCESS);
    }
    let d = report.data_dir.display();
    println!("Created a wavecast installation in {d}\n");
    println!("  trust anchor      {}   (ship it in device images; agents pin it)", report.root_json.display());
    println!("  admin API token   {}", report.admin_token_file.display());
    println!("  publisher key     {}", report.publisher_key.display());
    println!("  root key          {}", report.root_key.display());
    println!("\nMove these offline now — the server never needs them:");
    println!("  {}  signs root.json; needed to renew it yearly and to rotate keys", report.root_key.display());
    println!("  {}  signs every publish; keep it only on the publisher's machine", report.publisher_key.display());
    println!("\nNext:");
    println!("  wavecast server --data-dir {d}");
    println!("  export WAVECAST_TOKEN=$(cat {})", report.admin_token_file.display());
    Ok(ExitCode::SUCCESS)
}
