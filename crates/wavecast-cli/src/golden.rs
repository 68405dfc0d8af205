//! Golden sets at publish time: the expectations are built from the model and the publisher's
//! `.npz`, the model check runs on this machine, and the bundle that is signed into the model's
//! target is packed — or the publish is refused before anything is signed.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail, ensure};
use wavecast_api::Artifact;
use wavecast_core::{Sha256Digest, TargetName};
use wavecast_model_check::bundle::Bundle;
use wavecast_model_check::expectations::{LatencyBudget, MemoryBudget};
use wavecast_model_check::memory::MemoryMeter;
use wavecast_model_check::report::Outcome;
use wavecast_model_check::{BuildOptions, Expectations, Previous, Report, Subject, Tolerance, bundle};
use wavecast_tuf::golden::{Golden, LocalCheck};

/// What the publisher asked for on the command line.
#[derive(Debug, Clone, clap::Args)]
pub struct GoldenArgs {
    /// Golden inputs and expected outputs (NumPy .npz, `input/NAME` and `output/NAME` arrays
    /// whose first axis is the case), signed with the model for wavecast-model-check.
    #[arg(long, value_name = "NPZ", value_parser = crate::existing_file)]
    pub golden: Option<PathBuf>,
    /// How close outputs must be: abs=A[,rel=R], rel=R, or top-k=K for classifiers.
    #[arg(long, value_name = "TOLERANCE", requires = "golden", default_value = "abs=1e-4,rel=1e-4")]
    pub tolerance: Tolerance,
    /// Slowest 95th-percentile inference on the device, like 50ms.
    #[arg(long, value_name = "DURATION", requires = "golden")]
    pub latency_budget: Option<LatencyBudget>,
    /// Most heap the model may use on the device, like 256MiB (checked on devices only).
    #[arg(long, value_name = "SIZE", requires = "golden")]
    pub memory_budget: Option<MemoryBudget>,
    /// Also fail on the device when outputs move further than this from the version it keeps.
    #[arg(long, value_name = "TOLERANCE", requires = "golden")]
    pub max_drift: Option<Tolerance>,
    /// Sign without running the golden set here (for a machine that cannot run the model);
    /// the audit records that the local check was skipped.
    #[arg(long, requires = "golden")]
    pub skip_local_check: bool,
}

/// A golden bundle ready to sign and upload.
#[derive(Debug)]
pub struct Prepared {
    /// The bundle's bytes (the third part of the upload).
    pub bundle: Vec<u8>,
    /// What the target's signed metadata says of it.
    pub golden: Golden,
    /// The local check's report, when it ran.
    pub report: Option<Report>,
}

impl GoldenArgs {
    /// Builds the bundle for `model` and, unless told not to, checks the model against it;
    /// refuses a model that fails its own golden set. `None` without `--golden`.
    pub async fn prepare(&self, target: &TargetName, model: &Path) -> anyhow::Result<Option<Prepared>> {
        let Some(npz_path) = self.golden.clone() else { return Ok(None) };
        let (args, target, model) = (self.clone(), target.clone(), model.to_owned());
        // Parsing and running a model is CPU work: off the runtime's threads.
        tokio::task::spawn_blocking(move || args.prepare_blocking(&target, &model, &npz_path).map(Some))
            .await
            .context("the local model check stopped")?
    }

    fn prepare_blocking(&self, target: &TargetName, model_path: &Path, npz_path: &Path) -> anyhow::Result<Prepared> {
        let model = std::fs::read(model_path).with_context(|| format!("reading {}", model_path.display()))?;
        let npz = std::fs::read(npz_path).with_context(|| format!("reading {}", npz_path.display()))?;
        let options = BuildOptions {
            tolerance: self.tolerance,
            latency_budget: self.latency_budget,
            memory_budget: self.memory_budget,
            max_drift: self.max_drift,
            ..BuildOptions::default()
        };
        let expectations = Expectations::build(&model, &npz, &options)
            .with_context(|| format!("making the golden set {} into expectations for {target}", npz_path.display()))?;
        let bytes = bundle::pack(&expectations, &npz);
        let packed = bundle::unpack(&bytes).context("reading back the golden bundle just packed")?;
        let (local_check, report) = if self.skip_local_check {
            (LocalCheck::Skipped, None)
        } else {
            // This machine says nothing about the device's memory: the budget is left to the
            // devices (the check counts heap only where its own binary installed the meter).
            let mut here = packed.clone();
            here.expectations.memory_budget = None;
            let subject = Subject { model: &model, bundle: &here, previous: Previous::None, max_drift: None };
            let report = wavecast_model_check::check(&subject, MemoryMeter::Unavailable);
            if report.outcome != Outcome::Healthy {
                bail!(
                    "refusing to sign {target}: on this machine the model check says {}; fix the model or the golden \
                     set, or pass --skip-local-check if this machine cannot run the model (the audit will say so)",
                    report.summary()
                );
            }
            (LocalCheck::Passed, Some(report))
        };
        let golden = Golden { sha256: Sha256Digest::of(&bytes), length: bytes.len() as u64, local_check };
        Ok(Prepared { bundle: bytes, golden, report })
    }
}

/// One line on what the local check found.
pub fn describe(report: &Report) -> String {
    let mut parts = vec![format!("{} golden case(s) within tolerance", report.cases.unwrap_or_default())];
    let worst = report
        .outputs
        .iter()
        .filter_map(|o| o.max_abs_error)
        .fold(None, |a: Option<f64>, e| Some(a.map_or(e, |a| a.max(e))));
    if let Some(w) = worst {
        parts.push(format!("largest deviation {w:.3e}"));
    }
    if let Some(l) = &report.latency {
        parts.push(format!("median {:.0} µs, p95 {:.0} µs", l.median_us, l.p95_us));
    }
    parts.join(", ")
}

/// How long the server may stay silent while sending a golden set.
const STALL: std::time::Duration = std::time::Duration::from_secs(60);

/// The golden bundle signed into `target`, from the server, with what the signed target says
/// of it: the digest comes from the server's targets metadata, checked against the targets key
/// its root names; the bytes are read up to the signed length (a stall of [`STALL`] ends it)
/// and must match the digest before they are read as a bundle.
pub async fn fetch(client: &crate::Client, target: &TargetName) -> anyhow::Result<(Golden, Bundle)> {
    let root = crate::cmd::artifact::server_root(client).await?;
    let targets = crate::cmd::artifact::server_targets(client, &root.signed).await?;
    let name = wavecast_tuf::tough::TargetName::new(target.to_string()).context("a target name TUF accepts")?;
    let signed = targets.signed.targets.get(&name).with_context(|| format!("{target} is not in the signed targets"))?;
    let golden = Golden::from_custom(&signed.custom)
        .with_context(|| format!("reading {target}'s signed golden set"))?
        .with_context(|| format!("{target}'s signed target names no golden set"))?;
    let path = format!("/api/v1/blobs/{}", golden.sha256);
    let mut resp = client.send("GET", &path, client.request(reqwest::Method::GET, &path)?).await?;
    let mut bytes = Vec::new();
    loop {
        let chunk = tokio::time::timeout(STALL, resp.chunk())
            .await
            .with_context(|| format!("the server sent nothing of {target}'s golden set for {} s", STALL.as_secs()))?
            .with_context(|| format!("reading {target}'s golden set"))?;
        let Some(chunk) = chunk else { break };
        bytes.extend_from_slice(&chunk);
        ensure!(
            bytes.len() as u64 <= golden.length,
            "the server sent more than the signed {} bytes of {target}'s golden set",
            golden.length
        );
    }
    let got = Sha256Digest::of(&bytes);
    ensure!(
        got == golden.sha256 && bytes.len() as u64 == golden.length,
        "the server's golden set for {target} is not the signed one: signed sha256 {} ({} bytes), received sha256 {got} ({} bytes)",
        golden.sha256,
        golden.length,
        bytes.len()
    );
    let bundle = bundle::unpack(&bytes).with_context(|| format!("reading {target}'s golden set"))?;
    Ok((golden, bundle))
}

/// What `artifact show` prints; `golden` is the signed golden set, verified.
pub fn render(artifact: &Artifact, golden: Option<&(Golden, Bundle)>) -> String {
    let mut out = format!(
        "{}@{}  {}  sha256 {}\npublished {} by {}; hardware {}\n",
        artifact.name,
        artifact.version,
        crate::output::bytes(artifact.length),
        artifact.sha256,
        crate::output::time(artifact.published_at),
        artifact.published_by,
        artifact.hardware.as_deref().unwrap_or("any"),
    );
    let Some((signed, bundle)) = golden else {
        out.push_str("golden set  none: an exec probe with wavecast-model-check has nothing to check\n");
        return out;
    };
    let e = &bundle.expectations;
    let s = &e.signature;
    out.push_str(&format!(
        "golden set  sha256 {} ({}), local check on the publisher's machine: {}\n",
        signed.sha256,
        crate::output::bytes(signed.length),
        signed.local_check.as_str()
    ));
    let opsets: Vec<String> = s.opsets.iter().map(|o| format!("{} {}", o.domain, o.version)).collect();
    out.push_str(&format!(
        "model       {}, IR version {}, opsets {}, {} parameters\n",
        s.format,
        s.ir_version,
        opsets.join(", "),
        s.parameters
    ));
    for (kind, tensors) in [("input", &s.inputs), ("output", &s.outputs)] {
        for t in tensors {
            let shape = match &t.shape {
                Some(dims) => format!("[{}]", dims.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")),
                None => "(rank not declared)".to_owned(),
            };
            out.push_str(&format!("  {kind:<6}  {}  {} {shape}\n", t.name, t.dtype));
        }
    }
    out.push_str(&format!("expects     {} golden case(s) within {}\n", bundle.golden.cases, e.tolerance));
    let budget = |what: &str, value: Option<String>| match value {
        Some(v) => format!("{what} ≤ {v}"),
        None => format!("{what}: no budget"),
    };
    out.push_str(&format!(
        "            {}; {}; {}\n",
        budget("p95 latency", e.latency_budget.map(|b| format!("{} µs", b.micros()))),
        budget("memory", e.memory_budget.map(|b| crate::output::bytes(b.bytes()))),
        match e.max_drift {
            Some(d) => format!("drift from the kept version within {d}"),
            None => "no drift limit".to_owned(),
        }
    ));
    out
}
