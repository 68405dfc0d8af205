//! The check itself, in the order a device runs it: read the model, compare its signature with
//! the recorded one, fit the golden set, prepare the model, run every golden case and compare
//! the outputs, time inferences, read peak memory, and compare with the previous version.
//!
//! Each step that cannot go on returns the report as it stands; a failure that leaves the
//! model runnable (an output out of tolerance) lets the later steps run, so the report shows
//! latency and memory too. [`run`] reads files (the binary); [`check`] takes bytes (the
//! publisher, which checks before it signs).

use std::path::PathBuf;
use std::time::Instant;

use wavecast_os::error::chain;

use crate::bundle::{self, Bundle, BundleError};
use crate::compare::Comparison;
use crate::expectations::{Timing, Tolerance};
use crate::golden::GoldenSet;
use crate::memory::MemoryMeter;
use crate::model::{LoadError, Model, ModelError, RunError, Runner};
use crate::npy::Array;
use crate::report::{Drift, Latency, MAX_OUTPUTS, Memory, Reason, Report};

/// What to check, as files: what the binary gets from its arguments and environment.
#[derive(Debug, Clone)]
pub struct Request {
    /// The model file (`WAVECAST_ARTIFACT_PATH`).
    pub artifact: PathBuf,
    /// The golden bundle (`WAVECAST_GOLDEN_PATH`); none is "could not run".
    pub golden: Option<PathBuf>,
    /// The previous version's file, for drift (`WAVECAST_PREVIOUS_PATH`); read only when a drift
    /// limit is set.
    pub previous: Option<PathBuf>,
    /// A drift limit the device adds to the publisher's (`--max-drift`); both apply.
    pub max_drift: Option<Tolerance>,
    /// Where peak memory is read.
    pub meter: MemoryMeter,
}

/// What to check, in memory.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    /// The model file's bytes.
    pub model: &'a [u8],
    /// The expectations and golden set.
    pub bundle: &'a Bundle,
    /// The previous version, for drift.
    pub previous: Previous<'a>,
    /// A drift limit added to the expectations' own; both apply.
    pub max_drift: Option<Tolerance>,
}

/// The previous version, for drift.
#[derive(Debug, Clone, Copy)]
pub enum Previous<'a> {
    /// There is none (a first install): drift is skipped.
    None,
    /// Its file's bytes.
    Model(&'a [u8]),
    /// It exists but could not be read; why.
    Unreadable(&'a str),
}

/// Reads the files `request` names and checks them.
pub fn run(request: &Request) -> Report {
    let Some(golden) = &request.golden else {
        return Report::failed(Reason::GoldenMissing, "no golden set: pass --golden PATH or set WAVECAST_GOLDEN_PATH");
    };
    let model = match std::fs::read(&request.artifact) {
        Ok(bytes) => bytes,
        Err(e) => {
            return Report::failed(
                Reason::ArtifactMissing,
                format!("reading the model {}: {e}", request.artifact.display()),
            );
        }
    };
    let bundle = match bundle::read(golden) {
        Ok(bundle) => bundle,
        Err(e) => {
            let missing =
                matches!(&e, BundleError::Read { source, .. } if source.kind() == std::io::ErrorKind::NotFound);
            let reason = if missing { Reason::GoldenMissing } else { Reason::GoldenUnreadable };
            return Report::failed(reason, chain(&e));
        }
    };
    let wants_drift = bundle.expectations.max_drift.is_some() || request.max_drift.is_some();
    let (bytes, unreadable);
    let previous = match (&request.previous, wants_drift) {
        (Some(path), true) => match std::fs::read(path) {
            Ok(b) => {
                bytes = b;
                Previous::Model(&bytes)
            }
            Err(e) => {
                unreadable = format!("reading the previous model {}: {e}", path.display());
                Previous::Unreadable(&unreadable)
            }
        },
        _ => Previous::None,
    };
    check(&Subject { model: &model, bundle: &bundle, previous, max_drift: request.max_drift }, request.meter)
}

/// Checks a model against its bundle.
pub fn check(subject: &Subject<'_>, meter: MemoryMeter) -> Report {
    let expectations = &subject.bundle.expectations;
    let golden = &subject.bundle.golden;
    meter.start();
    let model = match Model::parse(subject.model) {
        Ok(model) => model,
        Err(e @ ModelError::Tflite) => return Report::failed(Reason::UnsupportedFormat, chain(&e)),
        Err(e) => return Report::failed(Reason::ModelCorrupt, chain(&e)),
    };
    let differences = expectations.signature.differences(model.signature());
    if !differences.is_empty() {
        return Report::failed(
            Reason::SignatureMismatch,
            format!("the model differs from the signature recorded at publish time: {}", differences.join("; ")),
        );
    }
    let problems = expectations.golden_problems(golden);
    if !problems.is_empty() {
        return Report::failed(
            Reason::GoldenMismatch,
            format!("the golden set does not fit the model: {}", problems.join("; ")),
        );
    }
    let mut runner = match Runner::load(&model, golden) {
        Ok(runner) => runner,
        Err(e) => return Report::failed(load_reason(&e), chain(&e)),
    };
    let inputs: Vec<Vec<(&str, Array)>> = (0..golden.cases).map(|i| golden.case_inputs(i)).collect();
    let mut report = Report::new();
    let outputs = match run_cases(&mut runner, &inputs) {
        Ok(outputs) => outputs,
        Err((case, e)) => {
            report.fail(Reason::InferenceFailed, format!("golden case {case}: {}", chain(&e)));
            return report;
        }
    };
    report.cases = Some(golden.cases);
    compare_outputs(&mut report, golden, &outputs, expectations.tolerance);

    match time(&mut runner, &inputs, expectations.timing) {
        Ok((median_us, p95_us)) => {
            let budget = expectations.latency_budget.map(|b| b.micros());
            if let Some(b) = budget.filter(|&b| p95_us > b as f64) {
                report.fail(
                    Reason::LatencyOverBudget,
                    format!("p95 latency {p95_us:.1} µs is over the budget of {b} µs (median {median_us:.1} µs)"),
                );
            }
            let Timing { warmup, runs } = expectations.timing;
            report.latency = Some(Latency { median_us, p95_us, runs, warmup, budget_us: budget });
        }
        Err(e) => report.fail(Reason::InferenceFailed, format!("timing: {}", chain(&e))),
    }

    let peak = meter.peak();
    let budget = expectations.memory_budget.map(|b| b.bytes());
    match (budget, peak) {
        (Some(b), Some(p)) if p > b => {
            report.fail(Reason::MemoryOverBudget, format!("peak memory {p} bytes is over the budget of {b} bytes"))
        }
        (Some(_), None) => {
            report.fail(Reason::MemoryUnmeasured, "a memory budget is set but this process does not count its heap")
        }
        _ => {}
    }
    report.memory = peak.map(|peak_bytes| Memory { peak_bytes, budget_bytes: budget });
    drop(runner);

    let limits: Vec<Tolerance> = expectations.max_drift.into_iter().chain(subject.max_drift).collect();
    if !limits.is_empty() {
        drift(&mut report, subject.previous, &model, golden, &inputs, &outputs, &limits);
    }
    report
}

fn load_reason(e: &LoadError) -> Reason {
    match e {
        LoadError::Unsupported(_) => Reason::UnsupportedOperator,
        LoadError::ExternalData(_) => Reason::ExternalData,
        LoadError::Engine(_) | LoadError::Panicked(_) => Reason::EngineFailed,
    }
}

type CaseOutputs = Vec<Vec<(String, Array)>>;

fn run_cases(runner: &mut Runner, inputs: &[Vec<(&str, Array)>]) -> Result<CaseOutputs, (usize, RunError)> {
    inputs.iter().enumerate().map(|(case, inputs)| runner.run(inputs).map_err(|e| (case, e))).collect()
}

/// Compares each golden output with what the model gave, case by case.
fn compare_outputs(report: &mut Report, golden: &GoldenSet, outputs: &CaseOutputs, tolerance: Tolerance) {
    // Every output is compared; only the listing is capped.
    for (name, expected) in &golden.outputs {
        let cases = (0..golden.cases).map(|case| (case, expected.case(case), &outputs[case]));
        if let Some(c) = compare(report, name, tolerance, cases, Reason::OutputMismatch) {
            if c.failed() {
                report.fail(Reason::OutOfTolerance, c.describe(("expected", "got")));
            }
            if report.outputs.len() < MAX_OUTPUTS {
                report.outputs.push(c.result());
            }
        }
    }
}

/// Compares output `name` over `cases` (each a case number, the wanted array and every output
/// found); `None` after recording `mismatch` when an output is missing or shaped otherwise.
fn compare<'a>(
    report: &mut Report,
    name: &str,
    tolerance: Tolerance,
    cases: impl Iterator<Item = (usize, Array, &'a Vec<(String, Array)>)>,
    mismatch: Reason,
) -> Option<Comparison> {
    let mut c = Comparison::new(name, tolerance);
    for (case, want, found) in cases {
        let Some((_, have)) = found.iter().find(|(n, _)| n == name) else {
            report.fail(mismatch, format!("the model gave no {} output {name:?}", want.dtype()));
            return None;
        };
        if have.dtype() != want.dtype() || have.shape != want.shape {
            report.fail(
                mismatch,
                format!(
                    "output {name:?} of case {case} is {}{:?}, expected {}{:?}",
                    have.dtype(),
                    have.shape,
                    want.dtype(),
                    want.shape
                ),
            );
            return None;
        }
        c.add(case, &want, have);
    }
    Some(c)
}

/// Runs `timing.warmup` untimed inferences, then `timing.runs` timed ones cycling through the
/// cases; the median and nearest-rank 95th percentile, µs. Each inference includes copying its
/// inputs in and its outputs out, as an application's would.
fn time(runner: &mut Runner, inputs: &[Vec<(&str, Array)>], timing: Timing) -> Result<(f64, f64), RunError> {
    for i in 0..timing.warmup as usize {
        runner.run(&inputs[i % inputs.len()])?;
    }
    let mut samples = Vec::with_capacity(timing.runs as usize);
    for i in 0..timing.runs as usize {
        let start = Instant::now();
        runner.run(&inputs[i % inputs.len()])?;
        samples.push(start.elapsed().as_secs_f64() * 1e6);
    }
    samples.sort_by(f64::total_cmp);
    let n = samples.len();
    let median = if n % 2 == 1 { samples[n / 2] } else { (samples[n / 2 - 1] + samples[n / 2]) / 2.0 };
    let p95 = samples[(n * 95).div_ceil(100).max(1) - 1];
    // To the nanosecond: finer digits would be noise in the report.
    let ns = |us: f64| (us * 1e3).round() / 1e3;
    Ok((ns(median), ns(p95)))
}

/// Runs the golden inputs through the previous version and compares the new outputs with its
/// outputs under each limit.
fn drift(
    report: &mut Report,
    previous: Previous<'_>,
    model: &Model,
    golden: &GoldenSet,
    inputs: &[Vec<(&str, Array)>],
    outputs: &CaseOutputs,
    limits: &[Tolerance],
) {
    let bytes = match previous {
        Previous::None => {
            report.drift =
                Some(Drift { skipped: Some("no previous model on this device".to_owned()), outputs: vec![] });
            return;
        }
        Previous::Unreadable(why) => return report.fail(Reason::PreviousUnreadable, why),
        Previous::Model(bytes) => bytes,
    };
    let old = match Model::parse(bytes) {
        Ok(old) => old,
        Err(e) => return report.fail(Reason::PreviousUnreadable, format!("the previous model: {}", chain(&e))),
    };
    let problems = old.signature().golden_problems(golden);
    if old.signature().inputs != model.signature().inputs || !problems.is_empty() {
        let why = if problems.is_empty() { "its inputs differ".to_owned() } else { problems.join("; ") };
        return report.fail(Reason::PreviousIncompatible, format!("the previous model cannot be compared: {why}"));
    }
    let old_outputs = match Runner::load(&old, golden) {
        Ok(mut runner) => {
            run_cases(&mut runner, inputs).map_err(|(case, e)| format!("golden case {case}: {}", chain(&e)))
        }
        Err(e) => Err(chain(&e)),
    };
    let old_outputs = match old_outputs {
        Ok(o) => o,
        Err(why) => return report.fail(Reason::PreviousUnreadable, format!("the previous model: {why}")),
    };
    let mut result = Drift { skipped: None, outputs: vec![] };
    for limit in limits {
        for (name, _) in &golden.outputs {
            // The previous version's output is the reference; the new one is what moved.
            let cases = (0..golden.cases).filter_map(|case| {
                let reference = old_outputs[case].iter().find(|(n, _)| n == name)?.1.clone();
                Some((case, reference, &outputs[case]))
            });
            if let Some(c) = compare(report, name, *limit, cases, Reason::PreviousIncompatible) {
                if c.failed() {
                    let text = c.describe(("previously", "now"));
                    report.fail(Reason::DriftOverLimit, format!("drift from the previous model: {text}"));
                }
                if result.outputs.len() < MAX_OUTPUTS {
                    result.outputs.push(c.result());
                }
            }
        }
    }
    report.drift = Some(result);
}
