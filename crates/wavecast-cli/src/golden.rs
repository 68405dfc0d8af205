//! Golden sets at publish time: the expectations are built from the model and the publisher's
//! `.npz`, the model check runs on this machine, and the bundle that is signed into the model's
//! target is packed — or the publish is refused before anything is signed.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use wavecast_core::{Sha256Digest, TargetName};
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
