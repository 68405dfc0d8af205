//! The check's result: one JSON document on stdout, bounded in size, and the exit code.
//!
//! Exit codes: 0 healthy, 1 unhealthy, 2 could not run. Anything else (a crash, a signal) means
//! the check could not run. `outcome` is derived from the failures: any failure of the model
//! makes it unhealthy, even if a later step could not run; otherwise any step that could not
//! run makes the whole check "could not run"; otherwise healthy.

use serde::{Deserialize, Serialize};

use crate::expectations::Tolerance;

/// Most failures listed.
pub const MAX_FAILURES: usize = 16;
/// Most output results listed (golden or drift).
pub const MAX_OUTPUTS: usize = 16;
/// Longest failure message, bytes.
pub const MAX_MESSAGE: usize = 512;
/// Most positions or classes listed in one deviation.
pub const MAX_INDEX: usize = 16;
/// An upper bound on the report's JSON size, bytes (what the caps above allow, with room).
pub const MAX_REPORT_BYTES: usize = 64 * 1024;

/// What the check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Every check passed.
    Healthy,
    /// The model failed a check.
    Unhealthy,
    /// The check could not be run; nothing is known about the model.
    CouldNotRun,
}

impl Outcome {
    /// The process exit code: 0 healthy, 1 unhealthy, 2 could not run.
    pub fn exit_code(self) -> u8 {
        match self {
            Outcome::Healthy => 0,
            Outcome::Unhealthy => 1,
            Outcome::CouldNotRun => 2,
        }
    }
}

/// Why a check failed, as a code a program can match on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Could not run: the command line or environment was unusable.
    BadArguments,
    /// Could not run: the artifact file is missing or unreadable.
    ArtifactMissing,
    /// Could not run: no golden set given, or its file is missing.
    GoldenMissing,
    /// Could not run: the golden bundle, its expectations or its arrays do not read.
    GoldenUnreadable,
    /// Could not run: the golden set cannot be fed to the model's recorded signature.
    GoldenMismatch,
    /// Could not run: a model format this build does not read (TensorFlow Lite).
    UnsupportedFormat,
    /// Could not run: the model keeps tensors in files outside the artifact.
    ExternalData,
    /// Could not run: the engine lacks an operator the model uses.
    UnsupportedOperator,
    /// Could not run: the engine failed or panicked preparing the model.
    EngineFailed,
    /// Could not run: the previous model (for drift) is missing or cannot run.
    PreviousUnreadable,
    /// Could not run: the previous model takes other inputs or lacks the compared outputs.
    PreviousIncompatible,
    /// Could not run: a memory budget is set but this process cannot measure memory.
    MemoryUnmeasured,
    /// Unhealthy: the artifact is not a readable ONNX model.
    ModelCorrupt,
    /// Unhealthy: inputs or outputs differ from the signature recorded at publish time.
    SignatureMismatch,
    /// Unhealthy: an inference on a golden input failed.
    InferenceFailed,
    /// Unhealthy: an output is missing, or of another type or shape than expected.
    OutputMismatch,
    /// Unhealthy: an output is further from the golden one than the tolerance.
    OutOfTolerance,
    /// Unhealthy: p95 latency over the budget.
    LatencyOverBudget,
    /// Unhealthy: peak memory over the budget.
    MemoryOverBudget,
    /// Unhealthy: outputs moved further from the previous version's than allowed.
    DriftOverLimit,
}

impl Reason {
    /// Whether this failure says the model is unhealthy or that the check could not run.
    pub fn outcome(self) -> Outcome {
        use Reason::*;
        match self {
            BadArguments | ArtifactMissing | GoldenMissing | GoldenUnreadable | GoldenMismatch | UnsupportedFormat
            | ExternalData | UnsupportedOperator | EngineFailed | PreviousUnreadable | PreviousIncompatible
            | MemoryUnmeasured => Outcome::CouldNotRun,
            ModelCorrupt | SignatureMismatch | InferenceFailed | OutputMismatch | OutOfTolerance
            | LatencyOverBudget | MemoryOverBudget | DriftOverLimit => Outcome::Unhealthy,
        }
    }
}

/// One failed check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    /// The code.
    pub reason: Reason,
    /// What exactly, for a person (at most [`MAX_MESSAGE`] bytes).
    pub message: String,
}

/// The whole result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Healthy, unhealthy or could not run.
    pub outcome: Outcome,
    /// Every failure, in the order found (at most [`MAX_FAILURES`]).
    pub failures: Vec<Failure>,
    /// How many golden cases were run, once they were.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cases: Option<usize>,
    /// Each compared golden output (at most [`MAX_OUTPUTS`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<OutputResult>,
    /// Latency, once measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<Latency>,
    /// Peak memory, once measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Memory>,
    /// Drift against the previous version, when a limit is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift: Option<Drift>,
}

/// How one output compared, over every case.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputResult {
    /// The output.
    pub output: String,
    /// The rule applied.
    pub tolerance: Tolerance,
    /// Elements compared (rows, for top-k).
    pub compared: u64,
    /// Elements (rows) outside the tolerance.
    pub violations: u64,
    /// Largest absolute difference; `null` when a NaN or infinity differed.
    pub max_abs_error: Option<f64>,
    /// Largest difference relative to the expected value (`null` as above).
    pub max_rel_error: Option<f64>,
    /// The element furthest outside the tolerance, or nearest to its edge when all pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worst: Option<Deviation>,
}

/// Where an output deviated most.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Deviation {
    /// One element.
    Value {
        /// The golden case.
        case: usize,
        /// The element's position within the case's output.
        index: Vec<usize>,
        /// The value wanted (`null` if not finite).
        expected: Option<f64>,
        /// The value found (`null` if not finite).
        actual: Option<f64>,
    },
    /// One row of class scores whose top classes differ.
    Classes {
        /// The golden case.
        case: usize,
        /// The row's position (every axis but the last).
        index: Vec<usize>,
        /// The top classes wanted, best first.
        expected: Vec<usize>,
        /// The top classes found, best first.
        actual: Vec<usize>,
    },
}

/// Latency over the timed runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    /// Median, µs.
    pub median_us: f64,
    /// 95th percentile (nearest rank), µs.
    pub p95_us: f64,
    /// Timed runs.
    pub runs: u32,
    /// Untimed runs before them.
    pub warmup: u32,
    /// The budget for p95, µs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_us: Option<u64>,
}

/// Peak memory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Memory {
    /// Peak heap growth from parsing the model to the end of the timed runs, bytes.
    pub peak_bytes: u64,
    /// The budget, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_bytes: Option<u64>,
}

/// Drift against the previous version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Drift {
    /// Why drift was not measured (the device has no previous version), when it was not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    /// Each compared output and limit (at most [`MAX_OUTPUTS`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<OutputResult>,
}

impl Report {
    /// An empty report (healthy until a failure is added).
    pub fn new() -> Report {
        Report {
            outcome: Outcome::Healthy,
            failures: Vec::new(),
            cases: None,
            outputs: Vec::new(),
            latency: None,
            memory: None,
            drift: None,
        }
    }

    /// A report of one failure.
    pub fn failed(reason: Reason, message: impl Into<String>) -> Report {
        let mut r = Report::new();
        r.fail(reason, message);
        r
    }

    /// Records a failure and updates the outcome.
    pub fn fail(&mut self, reason: Reason, message: impl Into<String>) {
        if self.failures.len() < MAX_FAILURES {
            self.failures.push(Failure { reason, message: cut(&message.into(), MAX_MESSAGE) });
        }
        self.outcome = match (self.outcome, reason.outcome()) {
            (Outcome::Unhealthy, _) | (_, Outcome::Unhealthy) => Outcome::Unhealthy,
            _ => Outcome::CouldNotRun,
        };
    }

    /// Whether a failure with `reason` was recorded.
    pub fn has(&self, reason: Reason) -> bool {
        self.failures.iter().any(|f| f.reason == reason)
    }

    /// The report as one line of JSON.
    pub fn to_json(&self) -> String {
        // Serializing plain structs of numbers and strings cannot fail.
        serde_json::to_string(self).unwrap_or_else(|_| r#"{"outcome":"could_not_run","failures":[]}"#.to_owned())
    }

    /// One line for a person: the outcome and the first failure.
    pub fn summary(&self) -> String {
        let outcome = match self.outcome {
            Outcome::Healthy => "healthy",
            Outcome::Unhealthy => "unhealthy",
            Outcome::CouldNotRun => "could not run",
        };
        match self.failures.first() {
            None => outcome.to_owned(),
            Some(f) => {
                let more = self.failures.len() - 1;
                let more = if more > 0 { format!(" (and {more} more)") } else { String::new() };
                format!("{outcome}: {}{more}", f.message)
            }
        }
    }
}

impl Default for Report {
    fn default() -> Self {
        Report::new()
    }
}

/// A finite value, or `None`.
pub(crate) fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

/// `s` cut to at most `max` bytes on a character boundary, ending in `…` when cut.
pub(crate) fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_outcome_follows_the_worst_failure() {
        use Reason::*;
        let cases: &[(&[Reason], Outcome)] = &[
            (&[], Outcome::Healthy),
            (&[OutOfTolerance], Outcome::Unhealthy),
            (&[UnsupportedOperator], Outcome::CouldNotRun),
            (&[OutOfTolerance, PreviousUnreadable], Outcome::Unhealthy),
            (&[PreviousUnreadable, DriftOverLimit], Outcome::Unhealthy),
            (&[GoldenUnreadable, MemoryUnmeasured], Outcome::CouldNotRun),
        ];
        for (reasons, want) in cases {
            let mut r = Report::new();
            reasons.iter().for_each(|&reason| r.fail(reason, "x"));
            assert_eq!(r.outcome, *want, "{reasons:?}");
        }
        assert_eq!([Outcome::Healthy, Outcome::Unhealthy, Outcome::CouldNotRun].map(Outcome::exit_code), [0, 1, 2]);
    }

    #[test]
    fn the_report_stays_bounded_however_much_goes_wrong() {
        let mut r = Report::new();
        for _ in 0..1000 {
            r.fail(Reason::OutOfTolerance, "é".repeat(10_000));
        }
        let result = OutputResult {
            output: "o".repeat(crate::signature::MAX_NAME),
            tolerance: Tolerance::DEFAULT,
            compared: u64::MAX,
            violations: u64::MAX,
            max_abs_error: Some(f64::MAX),
            max_rel_error: None,
            worst: Some(Deviation::Classes {
                case: usize::MAX,
                index: vec![usize::MAX; MAX_INDEX],
                expected: vec![usize::MAX; MAX_INDEX],
                actual: vec![usize::MAX; MAX_INDEX],
            }),
        };
        r.outputs = vec![result.clone(); MAX_OUTPUTS];
        r.drift = Some(Drift { skipped: Some("x".repeat(MAX_MESSAGE)), outputs: vec![result; MAX_OUTPUTS] });
        r.latency = Some(Latency {
            median_us: f64::MAX,
            p95_us: f64::MAX,
            runs: u32::MAX,
            warmup: u32::MAX,
            budget_us: Some(u64::MAX),
        });
        r.memory = Some(Memory { peak_bytes: u64::MAX, budget_bytes: Some(u64::MAX) });
        assert_eq!(r.failures.len(), MAX_FAILURES);
        assert!(r.failures.iter().all(|f| f.message.len() <= MAX_MESSAGE && f.message.ends_with('…')));
        let json = r.to_json();
        assert!(json.len() <= MAX_REPORT_BYTES, "{} bytes", json.len());
        assert!(!json.contains('\n'));
        assert_eq!(serde_json::from_str::<Report>(&json).expect("reads back"), r);
    }
}
