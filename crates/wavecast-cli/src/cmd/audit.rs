//! `wavecast audit`: the audit trail, its signed checkpoints, exports, and their verification.
//!
//! Verification trusts only the trust anchor (root.json, checked against its own root keys):
//! the checkpoint keys come from the `x-wavecast` field of each root in its chain, and
//! everything the server sends is checked against checkpoints signed by them. After a rotation
//! the chain runs from the installation's first root (which names the log) to the newest: the
//! live check fetches it from the server, an export carries it, and either way the root given
//! with `--trust-root` must be one of its versions. The newest checkpoint must be the newest
//! root's key's; an older key's counts only below it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Subcommand;
use serde::Serialize;
use wavecast_api::audit::{AuditEvent, ConsistencyProof, Export, LeafRow, StoredCheckpoint};
use wavecast_core::Sha256Digest;
use wavecast_core::checkpoint::{CheckpointKeys, origin_for_root, peek_checkpoint};
use wavecast_core::evidence::{
    ExportVerified, Growth, LogVerified, VerifyError, verify_export, verify_growth, verify_log,
};
use wavecast_tuf::keys::verify_ed25519;

use crate::output;
use crate::{Client, JsonRemote, Remote, existing_file};

/// Rows or checkpoints fetched per request (the server's maximum).
const PAGE: usize = 10_000;

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
        #[command(flatten)]
        args: JsonRemote,
    },
    /// Print the newest signed checkpoint; keep it to prove later that the log only grew.
    Checkpoint {
        /// Write it to this file instead of printing it.
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Write events with their inclusion proofs and the signed checkpoint to a file that
    /// verifies offline with the trust anchor alone.
    Export {
        /// Only the events of this rollout (its own events and its devices' outcomes).
        #[arg(long)]
        rollout: Option<String>,
        /// The file to write.
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        remote: Remote,
    },
    /// Verify an export file offline, or (without FILE) the live log against its signed
    /// checkpoints. Exits 1 naming the first event that does not verify.
    #[command(mut_arg("json", |a| a.help("Print the verdict as JSON")))]
    Verify {
        /// An export file written by `wavecast audit export`.
        #[arg(value_parser = existing_file)]
        file: Option<PathBuf>,
        /// The installation's root.json: the checkpoint key is taken from it.
        #[arg(long, value_parser = existing_file)]
        trust_root: PathBuf,
        /// An older checkpoint note (from `wavecast audit checkpoint`): also prove the log only
        /// grew since, by a consistency proof from the server.
        #[arg(long, value_parser = existing_file)]
        since_checkpoint: Option<PathBuf>,
        #[command(flatten)]
        args: JsonRemote,
    },
}

pub async fn run(cmd: AuditCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        AuditCommand::List { from, limit, args: JsonRemote { json, remote } } => {
            let events: Vec<AuditEvent> =
                remote.client()?.get(&format!("/api/v1/audit?from={from}&limit={limit}")).await?;
            output::list(json, &events, &EVENT_HEADERS, event_row)?;
        }
        AuditCommand::Checkpoint { out, remote } => {
            let note = String::from_utf8(remote.client()?.get_bytes("/api/v1/audit/checkpoint").await?)
                .context("the server's checkpoint is not UTF-8")?;
            match out {
                Some(path) => write_file(&path, note.as_bytes())?,
                None => print!("{note}"),
            }
        }
        AuditCommand::Export { rollout, out, remote } => {
            let path = match &rollout {
                Some(id) => format!("/api/v1/audit/export?rollout={}", url_encode(id)),
                None => "/api/v1/audit/export".to_owned(),
            };
            let export: Export = remote.client()?.get(&path).await?;
            let size = peek_checkpoint(&export.checkpoint).map(|c| c.size).unwrap_or_default();
            let json = serde_json::to_vec_pretty(&export)?;
            write_file(&out, &json)?;
            println!(
                "wrote {} events to {} with inclusion proofs against the checkpoint of size {size}",
                export.events.len(),
                out.display()
            );
        }
        AuditCommand::Verify { file, trust_root, since_checkpoint, args: JsonRemote { json, remote } } => {
            return verify(file.as_deref(), &trust_root, since_checkpoint.as_deref(), json, &remote).await;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What verification established.
#[derive(Debug, Serialize)]
#[serde(rename_all = "snake_case", tag = "mode")]
enum Verified {
    Export {
        #[serde(flatten)]
        summary: ExportVerified,
        growth: Option<Growth>,
    },
    Live {
        #[serde(flatten)]
        summary: LogVerified,
        growth: Option<Growth>,
    },
}

/// The checkpoint keys of the root chain `chain` (every version from the first, as signed),
/// which must hold the trust anchor at `trust_root`. An empty chain is an installation never
/// rotated: the anchor is its only root.
fn trusted_keys(trust_root: &Path, chain: &[Vec<u8>]) -> anyhow::Result<CheckpointKeys> {
    let shown = trust_root.display();
    let anchor = std::fs::read(trust_root).with_context(|| format!("reading {shown}"))?;
    let root = wavecast_tuf::root::parse_root(&anchor).with_context(|| format!("{shown} is not a valid trust root"))?;
    let version = root.signed.version.get();
    let chain: Vec<Vec<u8>> = if chain.is_empty() {
        anyhow::ensure!(
            version == 1,
            "{shown} is root.json version {version}, but this evidence predates the installation's first rotation: verify it with root.json version 1"
        );
        vec![anchor.clone()]
    } else {
        chain.to_vec()
    };
    wavecast_tuf::root::verify_chain(&chain[0], &chain[1..]).context("verifying the root chain")?;
    anyhow::ensure!(
        chain.contains(&anchor),
        "{shown} (root.json version {version}) is not one of the {} root versions this evidence rests on: it belongs to another installation, or is newer than the evidence",
        chain.len()
    );
    let mut keys = Vec::with_capacity(chain.len());
    for (i, bytes) in chain.iter().enumerate() {
        let root = wavecast_tuf::root::parse_root(bytes).with_context(|| format!("root.json version {}", i + 1))?;
        keys.push(
            wavecast_tuf::root::checkpoint_key(&root.signed)
                .with_context(|| format!("reading the checkpoint key of root.json version {}", i + 1))?,
        );
    }
    CheckpointKeys::new(origin_for_root(&Sha256Digest::of(&chain[0])), keys)
        .context("the root chain names no checkpoint key")
}

/// Every root version the server holds, from the first (empty when it holds only that one).
async fn server_chain(client: &Client) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut chain = Vec::new();
    for version in 1u64.. {
        match client.get_bytes(&format!("/api/v1/tuf/{version}.root.json")).await {
            Ok(bytes) => chain.push(bytes),
            Err(e) if e.status() == Some(reqwest::StatusCode::NOT_FOUND) => break,
            Err(e) => return Err(e.into()),
        }
    }
    if chain.len() == 1 {
        chain.clear();
    }
    Ok(chain)
}

async fn verify(
    file: Option<&Path>,
    trust_root: &Path,
    since: Option<&Path>,
    json: bool,
    remote: &Remote,
) -> anyhow::Result<ExitCode> {
    let old_note =
        since.map(|p| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))).transpose()?;
    let verdict = match file {
        Some(path) => verify_file(path, trust_root, old_note.as_deref(), remote).await?,
        None => {
            let client = remote.client()?;
            let keys = trusted_keys(trust_root, &server_chain(&client).await?)?;
            verify_live(&keys, old_note.as_deref(), &client).await?
        }
    };
    match verdict {
        Ok(verified) => {
            if json {
                output::json(&serde_json::json!({ "ok": true, "verified": verified }))?;
            } else {
                print_verified(&verified);
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            if json {
                let problem = match &e {
                    VerifyError::Event { problem, .. } => serde_json::to_value(problem)?,
                    _ => serde_json::Value::Null,
                };
                output::json(
                    &serde_json::json!({ "ok": false, "seq": e.seq(), "problem": problem, "error": e.to_string() }),
                )?;
            } else {
                eprintln!("audit verification FAILED: {e}");
            }
            Ok(ExitCode::FAILURE)
        }
    }
}

async fn verify_file(
    path: &Path,
    trust_root: &Path,
    old_note: Option<&str>,
    remote: &Remote,
) -> anyhow::Result<Result<Verified, VerifyError>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let export: Export = match serde_json::from_slice(&bytes) {
        Ok(e) => e,
        Err(e) => return Ok(Err(VerifyError::Format { detail: format!("{}: {e}", path.display()) })),
    };
    let chain: Vec<Vec<u8>> = export.roots.iter().map(|r| r.clone().into_bytes()).collect();
    let keys = trusted_keys(trust_root, &chain)?;
    let summary = match verify_export(&export, &keys, verify_ed25519) {
        Ok(s) => s,
        Err(e) => return Ok(Err(e)),
    };
    let growth = match old_note {
        None => None,
        // An export carries no proof about other checkpoints; the server cuts one, and it is
        // checked against both signed checkpoints, so the server is not trusted for it.
        Some(old) => match prove_growth(old, summary.tree_size, &summary.root, &keys, &remote.client()?).await? {
            Ok(g) => Some(g),
            Err(e) => return Ok(Err(e)),
        },
    };
    Ok(Ok(Verified::Export { summary, growth }))
}

async fn verify_live(
    keys: &CheckpointKeys,
    old_note: Option<&str>,
    client: &Client,
) -> anyhow::Result<Result<Verified, VerifyError>> {
    // Checkpoints first: every row they cover was committed before the rows are read.
    let mut checkpoints: Vec<StoredCheckpoint> = Vec::new();
    loop {
        let from = checkpoints.last().map_or(0, |c| c.size + 1);
        let page: Vec<StoredCheckpoint> =
            client.get(&format!("/api/v1/audit/checkpoints?from={from}&limit={PAGE}")).await?;
        let done = page.len() < PAGE;
        checkpoints.extend(page);
        if done {
            break;
        }
    }
    let mut leaves: Vec<LeafRow> = Vec::new();
    loop {
        let from = leaves.last().map_or(0, |l| l.seq + 1);
        let page: Vec<LeafRow> = client.get(&format!("/api/v1/audit/leaves?from={from}&limit={PAGE}")).await?;
        let done = page.len() < PAGE;
        leaves.extend(page);
        if done {
            break;
        }
    }
    let summary = match verify_log(&leaves, &checkpoints, keys, verify_ed25519) {
        Ok(s) => s,
        Err(e) => return Ok(Err(e)),
    };
    let growth = match old_note {
        None => None,
        Some(old) => match prove_growth(old, summary.tree_size, &summary.root, keys, client).await? {
            Ok(g) => Some(g),
            Err(e) => return Ok(Err(e)),
        },
    };
    Ok(Ok(Verified::Live { summary, growth }))
}

/// Proves the log at `size` (root `root`, already verified) extends the older checkpoint.
async fn prove_growth(
    old_note: &str,
    size: u64,
    root: &Sha256Digest,
    keys: &CheckpointKeys,
    client: &Client,
) -> anyhow::Result<Result<Growth, VerifyError>> {
    let old = match peek_checkpoint(old_note) {
        Ok(c) => c,
        Err(e) => return Ok(Err(VerifyError::Growth { old: 0, detail: format!("the older checkpoint: {e}") })),
    };
    if old.size > size {
        return Ok(Err(VerifyError::Growth {
            old: old.size,
            detail: format!("the verified log has only {size} events: it shrank"),
        }));
    }
    let proof: ConsistencyProof =
        match client.get(&format!("/api/v1/audit/consistency?from={}&to={size}", old.size)).await {
            Ok(p) => p,
            Err(e @ crate::ClientError::Api { .. }) => {
                return Ok(Err(VerifyError::Growth { old: old.size, detail: format!("the server has no proof: {e}") }));
            }
            Err(e) => return Err(e.into()),
        };
    let growth = match verify_growth(old_note, &proof, keys, verify_ed25519) {
        Ok(g) => g,
        Err(e) => return Ok(Err(e)),
    };
    if growth.new_size != size || growth.new_root != *root {
        return Ok(Err(VerifyError::Growth {
            old: old.size,
            detail: format!("the proof ends at another checkpoint than the verified one (size {size})"),
        }));
    }
    Ok(Ok(growth))
}

fn print_verified(v: &Verified) {
    let growth = match v {
        Verified::Export { summary: s, growth } => {
            let what = match &s.rollout {
                Some(r) => format!("{} events of rollout {r}", s.events),
                None => format!("all {} events", s.events),
            };
            println!(
                "OK: {what} are in log {} at size {} (root {}), signed by the checkpoint key of the trust root's chain",
                s.origin, s.tree_size, s.root
            );
            growth
        }
        Verified::Live { summary: s, growth } => {
            println!(
                "OK: all {} events of log {} match its {} signed checkpoints (root {}){}",
                s.tree_size,
                s.origin,
                s.checkpoints,
                s.root,
                if s.pending > 0 {
                    format!("; {} newer events await their checkpoint", s.pending)
                } else {
                    String::new()
                }
            );
            growth
        }
    };
    if let Some(g) = growth {
        println!(
            "OK: the log only grew since the checkpoint of size {} (consistency proof to size {})",
            g.old_size, g.new_size
        );
    }
}

/// For the demo: waits until a checkpoint covers every event, exports `rollout`'s events to
/// `out`, and verifies the export offline and the live log. Returns the lines to show.
pub(crate) async fn demo_evidence(
    client: &Client,
    rollout: &str,
    out: &Path,
    trust_root: &Path,
) -> anyhow::Result<Vec<String>> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        // Covered when no row lies past the newest checkpoint's size.
        let note = String::from_utf8(client.get_bytes("/api/v1/audit/checkpoint").await?)?;
        let size = peek_checkpoint(&note)?.size;
        let newer: Vec<LeafRow> = client.get(&format!("/api/v1/audit/leaves?from={size}&limit=1")).await?;
        if newer.is_empty() {
            break;
        }
        anyhow::ensure!(std::time::Instant::now() < deadline, "the server signed no checkpoint covering every event");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let keys = trusted_keys(trust_root, &server_chain(client).await?)?;
    let export: Export = client.get(&format!("/api/v1/audit/export?rollout={}", url_encode(rollout))).await?;
    write_file(out, &serde_json::to_vec_pretty(&export)?)?;
    let offline = verify_export(&export, &keys, verify_ed25519)?;
    let live = match verify_live(&keys, None, client).await? {
        Ok(Verified::Live { summary, .. }) => summary,
        Ok(Verified::Export { .. }) => anyhow::bail!("live verification returned an export verdict"),
        Err(e) => return Err(e.into()),
    };
    Ok(vec![
        format!(
            "wrote {} ({} events of rollout {rollout}, each with its inclusion proof)",
            out.display(),
            offline.events
        ),
        format!(
            "audit verify {}: OK against checkpoint {} of {}, signed by the key root.json names",
            out.file_name().map(|n| n.to_string_lossy()).unwrap_or_default(),
            offline.tree_size,
            offline.origin
        ),
        format!("audit verify (live): all {} events match {} signed checkpoints", live.tree_size, live.checkpoints),
    ])
}

/// Writes a checkpoint or an export so that a crash never leaves half a file; owner-only, as
/// the temporary file it used to be renamed from was.
fn write_file(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    wavecast_os::fs::write_atomic(path, data, 0o600).with_context(|| format!("writing {}", path.display()))
}

/// Percent-encodes a query value.
fn url_encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

const EVENT_HEADERS: [&str; 5] = ["SEQ", "AT", "ACTOR", "ACTION", "SUBJECT"];

fn event_row(e: &AuditEvent) -> Vec<String> {
    vec![e.seq.to_string(), e.at.clone(), e.actor.clone(), e.action.to_string(), e.subject.clone()]
}

/// Prints events as a table.
pub fn print_events(events: &[AuditEvent]) {
    output::table(&EVENT_HEADERS, &events.iter().map(event_row).collect::<Vec<_>>());
}
