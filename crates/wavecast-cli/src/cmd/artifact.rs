//! `wavecast artifact`: publish (sign offline, upload), re-sign, and list.
//!
//! Publishing signs on this machine: the CLI fetches the server's root and current targets,
//! checks the targets are signed by the root's targets key (so a compromised server cannot get
//! us to sign targets we never saw), adds the new target, signs with the publisher key, and
//! uploads the signed file and the bytes in one request. Re-signing does the same without
//! adding anything: a new version and expiry over the same targets.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Subcommand;
use futures_util::StreamExt as _;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::io::AsyncReadExt as _;
use wavecast_api::{Artifact, ResignTargets, TargetsResigned};
use wavecast_core::Sha256Hasher;
use wavecast_core::{ArtifactName, ArtifactVersion, Sha256Digest, TargetName};
use wavecast_tuf::keys::SigningKey;
use wavecast_tuf::publish::{NewTarget, PublishError, resign_targets, sign_new_targets};
use wavecast_tuf::tough::schema::{Root, Signed, Targets};

use crate::golden::{GoldenArgs, Prepared, describe};
use crate::output;
use crate::{Client, ClientError, JsonRemote};

#[derive(Debug, Subcommand)]
pub enum ArtifactCommand {
    /// Sign an artifact version with the publisher key and upload it.
    #[command(after_help = "The publisher key (DIR/offline/targets.key from `wavecast init`) never \
leaves this machine: only the signed metadata and the file are sent. A name@version can be \
published once; publish a new version to change the bytes.

With --golden, the golden set and the expectations (tolerance, budgets, drift) are signed into \
the model's target; devices fetch and verify them like the model, and an exec probe pointing at \
wavecast-model-check runs them on the device before the new version is kept. The same check \
runs here first: a model that fails its own golden set is not signed.

Example:
  wavecast artifact publish --name yolo-v8n --version 2.1.0 --file model.onnx \\
      --key DIR/offline/targets.key --golden golden.npz --tolerance top-k=1 --latency-budget 50ms")]
    #[command(mut_arg("json", |a| a.help("Print the published artifact as JSON")))]
    Publish {
        /// Artifact name, like yolo-v8n.
        #[arg(long)]
        name: String,
        /// Semantic version, like 2.1.0.
        #[arg(long = "version", id = "artifact_version", value_name = "SEMVER")]
        artifact_version: String,
        /// The file to publish.
        #[arg(long, value_parser = crate::existing_file)]
        file: PathBuf,
        /// The publisher (TUF targets) key.
        #[arg(long, value_name = "PUBLISHER_KEY")]
        key: PathBuf,
        /// Only devices with this hardware may install it.
        #[arg(long, value_name = "HW")]
        hardware: Option<String>,
        #[command(flatten)]
        golden: GoldenArgs,
        #[command(flatten)]
        args: JsonRemote,
    },
    /// Sign the current targets again with a new expiry, changing no artifact.
    #[command(after_help = "Targets expire (a year after the last publish, by default); once \
they have, devices install nothing new. Re-sign before then: `wavecast status` warns 30 days ahead. \
The publisher key never leaves this machine.")]
    #[command(mut_arg("json", |a| a.help("Print the new targets version as JSON")))]
    Resign {
        /// The publisher (TUF targets) key.
        #[arg(long, value_name = "PUBLISHER_KEY")]
        key: PathBuf,
        /// How long the re-signed targets stay valid.
        #[arg(long, default_value = "365d", value_parser = wavecast_core::duration::parse_duration)]
        expires: std::time::Duration,
        #[command(flatten)]
        args: JsonRemote,
    },
    /// List published artifacts.
    List(JsonRemote),
    /// Show one artifact version: its digest and, for a model published with a golden set, the
    /// model's signature and what the check expects of it.
    #[command(after_help = "The golden set is fetched from the server and checked against the \
digest signed into the model's target (signed by the publisher key named in the server's \
root.json) before anything in it is shown.")]
    #[command(mut_arg("json", |a| a.help("Print the artifact and its golden expectations as JSON")))]
    Show {
        /// The artifact version, as NAME@VERSION.
        #[arg(value_name = "NAME@VERSION")]
        target: String,
        #[command(flatten)]
        args: JsonRemote,
    },
}

pub async fn run(cmd: ArtifactCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ArtifactCommand::Publish {
            name,
            artifact_version,
            file,
            key,
            hardware,
            golden,
            args: JsonRemote { json, remote },
        } => {
            let target = TargetName::new(ArtifactName::new(name)?, ArtifactVersion::new(&artifact_version)?);
            if let Some(hw) = &hardware {
                wavecast_core::name::validate("hardware", hw)?;
            }
            let key = SigningKey::load(&key)?;
            let client = remote.client()?;
            let golden = golden.prepare(&target, &file).await?;
            if let Some(g) = golden.as_ref().filter(|_| !json) {
                match &g.report {
                    Some(report) => eprintln!("model check on this machine passed: {}", describe(report)),
                    None => eprintln!("model check on this machine skipped (--skip-local-check); the audit records it"),
                }
            }
            let (published, new) = match publish(&client, &target, &file, &key, hardware, golden.as_ref(), !json).await
            {
                Ok(published) => (published, true),
                // The same bytes under the same name@version: a retry, and a success.
                Err(e) if matches!(e.downcast_ref(), Some(PublishError::AlreadyPublished { .. })) => {
                    let artifacts: Vec<Artifact> = client.get("/api/v1/artifacts").await?;
                    let found =
                        artifacts.into_iter().find(|a| a.name == *target.name() && a.version == *target.version());
                    (found.with_context(|| format!("{target} is published, but the server does not list it"))?, false)
                }
                Err(e) => return Err(e),
            };
            if json {
                output::json(&published)?;
            } else {
                println!(
                    "{} {}@{}  {}  sha256 {}",
                    if new { "published" } else { "already published" },
                    published.name,
                    published.version,
                    output::bytes(published.length),
                    published.sha256
                );
            }
        }
        ArtifactCommand::Resign { key, expires, args: JsonRemote { json, remote } } => {
            let key = SigningKey::load(&key)?;
            let resigned = resign(&remote.client()?, &key, expires).await?;
            if json {
                output::json(&resigned)?;
            } else {
                println!(
                    "signed the targets again as version {}, valid until {}; no artifact changed",
                    resigned.version,
                    output::time(resigned.expires_at)
                );
            }
        }
        ArtifactCommand::Show { target, args: JsonRemote { json, remote } } => {
            let target = TargetName::parse(&target)
                .with_context(|| format!("{target:?} is not NAME@VERSION, like yolo-v8n@2.1.0"))?;
            let client = remote.client()?;
            let artifacts: Vec<Artifact> = client.get("/api/v1/artifacts").await?;
            let artifact =
                artifacts
                    .into_iter()
                    .find(|a| a.name == *target.name() && a.version == *target.version())
                    .with_context(|| format!("{target} is not published (`wavecast artifact list` shows what is)"))?;
            let golden = match &artifact.golden {
                None => None,
                Some(_) => Some(crate::golden::fetch(&client, &target).await?),
            };
            if json {
                output::json(&serde_json::json!({
                    "artifact": artifact,
                    "expectations": golden.as_ref().map(|(_, b)| &b.expectations),
                    "golden_cases": golden.as_ref().map(|(_, b)| b.golden.cases),
                }))?;
            } else {
                print!("{}", crate::golden::render(&artifact, golden.as_ref()));
            }
        }
        ArtifactCommand::List(JsonRemote { json, remote }) => {
            let artifacts: Vec<Artifact> = remote.client()?.get("/api/v1/artifacts").await?;
            output::list(json, &artifacts, &["NAME", "VERSION", "SIZE", "HARDWARE", "SHA256", "PUBLISHED"], |a| {
                vec![
                    a.name.to_string(),
                    a.version.to_string(),
                    output::bytes(a.length),
                    a.hardware.clone().unwrap_or_else(|| "any".into()),
                    a.sha256.to_string(),
                    output::time(a.published_at),
                ]
            })?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn bar(len: u64, what: &str, show: bool) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    let style = ProgressStyle::with_template("{msg:>9} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    pb.set_style(style);
    pb.set_message(what.to_owned());
    pb
}

/// Streams a file through SHA-256.
async fn hash_file(path: &Path, show: bool) -> anyhow::Result<(u64, Sha256Digest)> {
    let mut f = tokio::fs::File::open(path).await.with_context(|| format!("opening {}", path.display()))?;
    let len = f.metadata().await.with_context(|| format!("reading {}", path.display()))?.len();
    let pb = bar(len, "hashing", show);
    let mut hasher = Sha256Hasher::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf).await.with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
        pb.inc(n as u64);
    }
    pb.finish_and_clear();
    Ok((total, hasher.finish()))
}

/// Signs and uploads one artifact version; retries once if another publish landed between our
/// read of the targets metadata and our upload.
pub async fn publish(
    client: &Client,
    target: &TargetName,
    file: &Path,
    key: &SigningKey,
    hardware: Option<String>,
    golden: Option<&Prepared>,
    show_progress: bool,
) -> anyhow::Result<Artifact> {
    let (length, sha256) = hash_file(file, show_progress).await?;
    let root = server_root(client).await?;
    let new = NewTarget { target: target.clone(), length, sha256, hardware, golden: golden.map(|g| g.golden) };
    let mut attempts = 0;
    loop {
        attempts += 1;
        let current = server_targets(client, &root.signed).await?;
        let expires = wavecast_os::clock::now()
            + jiff::SignedDuration::from_hours(24 * wavecast_server::install::TARGETS_LIFETIME_DAYS);
        let signed = match sign_new_targets(&root.signed, &current, &new, key, expires).await {
            Ok(s) => s,
            Err(e) => return Err(e.into()),
        };
        let bundle = golden.map(|g| g.bundle.clone());
        match upload(client, signed.buffer().clone(), file, length, target, bundle, show_progress).await {
            Err(e) if e.status() == Some(reqwest::StatusCode::CONFLICT) && attempts < 3 => {
                eprintln!("another publish landed first; signing again on top of it");
            }
            other => return Ok(other?),
        }
    }
}

/// The server's newest root.json, checked against its own root keys.
pub(crate) async fn server_root(client: &Client) -> anyhow::Result<Signed<Root>> {
    let root_bytes = client.get_bytes("/api/v1/tuf/root.json").await?;
    wavecast_tuf::root::parse_root(&root_bytes).context("checking the server's root.json")
}

/// The server's current targets, which must be signed by `root`'s targets key.
pub(crate) async fn server_targets(client: &Client, root: &Root) -> anyhow::Result<Signed<Targets>> {
    let bytes = client.get_bytes("/api/v1/tuf/targets.json").await?;
    let current: Signed<Targets> = serde_json::from_slice(&bytes).context("parsing the server's targets.json")?;
    root.verify_role(&current)
        .context("the server's current targets.json is not signed by the targets key in its root.json; refusing to sign on top of it")?;
    Ok(current)
}

/// Signs the current targets again with `key`, valid for `lifetime`, and uploads them; signs
/// again on top if another publish landed in between.
pub async fn resign(
    client: &Client,
    key: &SigningKey,
    lifetime: std::time::Duration,
) -> anyhow::Result<TargetsResigned> {
    let lifetime = jiff::SignedDuration::try_from(lifetime).context("--expires is too long")?;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let root = server_root(client).await?;
        let current = server_targets(client, &root.signed).await?;
        let signed = resign_targets(&root.signed, &current, key, wavecast_os::clock::now() + lifetime).await?;
        let body = ResignTargets { targets: String::from_utf8(signed.buffer().clone())? };
        match client.post::<_, TargetsResigned>("/api/v1/artifacts/resign", &body).await {
            Err(e) if e.status() == Some(reqwest::StatusCode::CONFLICT) && attempts < 3 => {
                eprintln!("the targets changed meanwhile; signing again on top of them");
            }
            other => return Ok(other?),
        }
    }
}

async fn upload(
    client: &Client,
    targets: Vec<u8>,
    file: &Path,
    length: u64,
    target: &TargetName,
    golden: Option<Vec<u8>>,
    show_progress: bool,
) -> Result<Artifact, ClientError> {
    let path = "/api/v1/artifacts";
    let f = tokio::fs::File::open(file)
        .await
        .map_err(|source| ClientError::OpenFile { path: file.to_path_buf(), source })?;
    let pb = bar(length, "uploading", show_progress);
    let pb2 = pb.clone();
    let stream = tokio_util::io::ReaderStream::with_capacity(f, 1 << 16).inspect(move |chunk| {
        if let Ok(c) = chunk {
            pb2.inc(c.len() as u64);
        }
    });
    let mut form = reqwest::multipart::Form::new()
        .part(
            "targets",
            reqwest::multipart::Part::bytes(targets)
                .file_name("targets.json")
                .mime_str("application/json")
                .map_err(|source| ClientError::Request { path: path.into(), source })?,
        )
        .part(
            "blob",
            reqwest::multipart::Part::stream_with_length(reqwest::Body::wrap_stream(stream), length)
                .file_name(target.to_string()),
        );
    if let Some(bundle) = golden {
        form = form.part("golden", reqwest::multipart::Part::bytes(bundle).file_name("golden.zip"));
    }
    let req = client.request(reqwest::Method::POST, path)?.multipart(form);
    let result = client.send("POST", path, req).await;
    pb.finish_and_clear();
    crate::client::decode(path, result?).await
}
