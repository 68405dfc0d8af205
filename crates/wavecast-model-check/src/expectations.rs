//! What the publisher expects of a model, signed with it: the signature recorded at publish
//! time, the tolerance for golden outputs, the latency and memory budgets, and the drift
//! allowed against the previous version.
//!
//! The publisher builds it with [`Expectations::build`] from the model, the golden set and the
//! command line; the device reads it from the signed bundle. Unknown fields are refused: a
//! check that silently skipped a newer publisher's requirement would pass what it should not.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::golden::{GoldenError, GoldenSet};
use crate::model::{Model, ModelError};
use crate::signature::Signature;

/// The expectations format this build reads and writes.
pub const FORMAT: u32 = 1;

/// The expectations document (`expectations.json` in the bundle).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expectations {
    /// Always [`FORMAT`].
    pub format: u32,
    /// The model's signature when it was published.
    pub signature: Signature,
    /// How close each golden output must be.
    pub tolerance: Tolerance,
    /// Most time one inference may take, at the 95th percentile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_budget: Option<LatencyBudget>,
    /// Most heap the model may take while it loads and runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_budget: Option<MemoryBudget>,
    /// How far outputs may move from the previous version's on the golden inputs; unchecked
    /// when absent (a device may still ask with `--max-drift`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_drift: Option<Tolerance>,
    /// How latency is sampled.
    pub timing: Timing,
}

/// How close an output must be to the expected one.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Tolerance {
    /// Every element within `abs + rel × |expected|` (numpy's `allclose` rule); NaN only where
    /// NaN was expected.
    Close {
        /// Absolute slack.
        abs: f64,
        /// Slack relative to the expected value.
        rel: f64,
    },
    /// For classifiers: along the last axis, the `k` highest scores name the same classes
    /// (in any order).
    TopK {
        /// How many classes.
        k: u32,
    },
}

impl Tolerance {
    /// The default: tight enough that a retrained or damaged model fails, loose enough for two
    /// float32 runtimes to agree.
    pub const DEFAULT: Tolerance = Tolerance::Close { abs: 1e-4, rel: 1e-4 };
    /// Most classes a top-k tolerance may name.
    pub const MAX_K: u32 = 1000;

    fn validate(&self) -> Result<(), ExpectationsError> {
        match *self {
            Tolerance::Close { abs, rel } if abs.is_finite() && rel.is_finite() && abs >= 0.0 && rel >= 0.0 => Ok(()),
            Tolerance::TopK { k } if (1..=Self::MAX_K).contains(&k) => Ok(()),
            _ => Err(ExpectationsError::Tolerance(self.to_string())),
        }
    }
}

impl fmt::Display for Tolerance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tolerance::Close { abs, rel } => write!(f, "abs={abs},rel={rel}"),
            Tolerance::TopK { k } => write!(f, "top-k={k}"),
        }
    }
}

/// Parses `abs=A`, `rel=R`, `abs=A,rel=R` (the missing one is 0) or `top-k=K`.
impl FromStr for Tolerance {
    type Err = ExpectationsError;

    fn from_str(s: &str) -> Result<Tolerance, ExpectationsError> {
        let err = || ExpectationsError::Tolerance(s.to_owned());
        let t = if let Some(k) = s.trim().strip_prefix("top-k=") {
            Tolerance::TopK { k: k.parse().map_err(|_| err())? }
        } else {
            let (mut abs, mut rel) = (None, None);
            for part in s.split(',') {
                let (key, value) = part.trim().split_once('=').ok_or_else(err)?;
                let slot = match key.trim() {
                    "abs" => &mut abs,
                    "rel" => &mut rel,
                    _ => return Err(err()),
                };
                if slot.replace(value.trim().parse::<f64>().map_err(|_| err())?).is_some() {
                    return Err(err());
                }
            }
            if abs.is_none() && rel.is_none() {
                return Err(err());
            }
            Tolerance::Close { abs: abs.unwrap_or(0.0), rel: rel.unwrap_or(0.0) }
        };
        t.validate().map_err(|_| err())?;
        Ok(t)
    }
}

/// A latency budget: most microseconds one inference may take (at least 1). In JSON, a number
/// of µs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "u64", into = "u64")]
pub struct LatencyBudget(u64);

impl LatencyBudget {
    /// The budget, µs.
    pub fn micros(self) -> u64 {
        self.0
    }
}

/// A memory budget: most bytes of heap (at least 1). In JSON, a number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "u64", into = "u64")]
pub struct MemoryBudget(u64);

impl MemoryBudget {
    /// The budget, bytes.
    pub fn bytes(self) -> u64 {
        self.0
    }
}

const LATENCY_UNITS: &[(&str, u64)] = &[("us", 1), ("µs", 1), ("ms", 1_000), ("s", 1_000_000)];
const MEMORY_UNITS: &[(&str, u64)] = &[
    ("B", 1),
    ("KiB", 1 << 10),
    ("MiB", 1 << 20),
    ("GiB", 1 << 30),
    ("KB", 1_000),
    ("MB", 1_000_000),
    ("GB", 1_000_000_000),
];

/// The two budgets' shared rules: a whole number above zero, typed as a number of the smallest
/// unit, or as text with any of `units`.
macro_rules! budget {
    ($budget:ident, $units:expr, $show:literal) => {
        impl TryFrom<u64> for $budget {
            type Error = ExpectationsError;

            fn try_from(n: u64) -> Result<$budget, ExpectationsError> {
                if n == 0 {
                    return Err(ExpectationsError::Budget(n.to_string()));
                }
                Ok($budget(n))
            }
        }

        impl From<$budget> for u64 {
            fn from(b: $budget) -> u64 {
                b.0
            }
        }

        /// Parses a whole number with a unit (`50ms`, `256MiB`).
        impl FromStr for $budget {
            type Err = ExpectationsError;

            fn from_str(s: &str) -> Result<$budget, ExpectationsError> {
                let n = with_unit(s, $units).ok_or_else(|| ExpectationsError::Budget(s.to_owned()))?;
                $budget::try_from(n).map_err(|_| ExpectationsError::Budget(s.to_owned()))
            }
        }

        impl fmt::Display for $budget {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, $show, self.0)
            }
        }
    };
}
budget!(LatencyBudget, LATENCY_UNITS, "{}us");
budget!(MemoryBudget, MEMORY_UNITS, "{}B");

fn with_unit(s: &str, units: &[(&str, u64)]) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = s.split_at(split);
    let scale = units.iter().find(|(u, _)| *u == unit.trim())?.1;
    n.parse::<u64>().ok()?.checked_mul(scale)
}

/// How latency is sampled: `warmup` untimed inferences, then `runs` timed ones cycling through
/// the golden cases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timing {
    /// Untimed inferences first (caches, lazy allocation).
    pub warmup: u32,
    /// Timed inferences (the median and 95th percentile are over these).
    pub runs: u32,
}

impl Timing {
    /// Three warm-up runs, then twenty timed ones: enough for a stable median on a device
    /// without making the probe slow.
    pub const DEFAULT: Timing = Timing { warmup: 3, runs: 20 };
    /// Most timed runs.
    pub const MAX_RUNS: u32 = 1000;
    /// Most warm-up runs.
    pub const MAX_WARMUP: u32 = 100;
}

/// What the publisher chose on the command line.
#[derive(Debug, Clone, PartialEq)]
pub struct BuildOptions {
    /// For golden outputs; [`Tolerance::DEFAULT`] unless given.
    pub tolerance: Tolerance,
    /// p95 latency budget.
    pub latency_budget: Option<LatencyBudget>,
    /// Heap budget.
    pub memory_budget: Option<MemoryBudget>,
    /// Drift allowed against the previous version.
    pub max_drift: Option<Tolerance>,
    /// Latency sampling; [`Timing::DEFAULT`] unless given.
    pub timing: Timing,
}

impl Default for BuildOptions {
    /// The strict tolerance, no budgets, no drift limit.
    fn default() -> Self {
        BuildOptions {
            tolerance: Tolerance::DEFAULT,
            latency_budget: None,
            memory_budget: None,
            max_drift: None,
            timing: Timing::DEFAULT,
        }
    }
}

/// Expectations that cannot be built or used.
#[derive(Debug, thiserror::Error)]
pub enum ExpectationsError {
    /// A tolerance that does not parse or is out of range.
    #[error(
        "tolerance {0:?} is not abs=A[,rel=R], rel=R or top-k=K with finite, non-negative A and R and 1 ≤ K ≤ 1000"
    )]
    Tolerance(String),
    /// A budget that does not parse or is zero.
    #[error(
        "budget {0:?} is not a whole number above zero with a unit (latency: us, ms, s; memory: B, KiB, MiB, GiB, KB, MB, GB)"
    )]
    Budget(String),
    /// Timing out of range.
    #[error(
        "timing of {warmup} warm-up and {runs} timed runs is out of range (runs 1..={}, warm-up 0..={})",
        Timing::MAX_RUNS,
        Timing::MAX_WARMUP
    )]
    Timing {
        /// Warm-up runs.
        warmup: u32,
        /// Timed runs.
        runs: u32,
    },
    /// A format this build does not read.
    #[error("expectations format {0} is not {FORMAT}: this wavecast-model-check is too old or too new for it")]
    Format(u32),
    /// The model.
    #[error("reading the model")]
    Model(#[source] ModelError),
    /// The golden set.
    #[error("reading the golden set")]
    Golden(#[source] GoldenError),
    /// The golden set does not fit the model or the tolerance.
    #[error("the golden set does not fit the model: {}", .0.join("; "))]
    Mismatch(Vec<String>),
}

impl Expectations {
    /// Builds the expectations for publishing `model` with `golden_npz`. Refuses a golden set
    /// that cannot be run against the model; whether the model passes it is the check's job,
    /// which the publisher runs next.
    pub fn build(model: &[u8], golden_npz: &[u8], options: &BuildOptions) -> Result<Expectations, ExpectationsError> {
        let model = Model::parse(model).map_err(ExpectationsError::Model)?;
        let golden = GoldenSet::from_npz(golden_npz).map_err(ExpectationsError::Golden)?;
        let expectations = Expectations {
            format: FORMAT,
            signature: model.signature().clone(),
            tolerance: options.tolerance,
            latency_budget: options.latency_budget,
            memory_budget: options.memory_budget,
            max_drift: options.max_drift,
            timing: options.timing,
        };
        expectations.validate()?;
        let problems = expectations.golden_problems(&golden);
        if !problems.is_empty() {
            return Err(ExpectationsError::Mismatch(problems));
        }
        Ok(expectations)
    }

    /// Checks the values are in range (the types cannot say all of it).
    pub fn validate(&self) -> Result<(), ExpectationsError> {
        if self.format != FORMAT {
            return Err(ExpectationsError::Format(self.format));
        }
        self.tolerance.validate()?;
        if let Some(d) = &self.max_drift {
            d.validate()?;
        }
        let Timing { warmup, runs } = self.timing;
        if !(1..=Timing::MAX_RUNS).contains(&runs) || warmup > Timing::MAX_WARMUP {
            return Err(ExpectationsError::Timing { warmup, runs });
        }
        Ok(())
    }

    /// Why `golden` cannot be checked against a model of the recorded signature with these
    /// tolerances; empty when it can.
    pub fn golden_problems(&self, golden: &GoldenSet) -> Vec<String> {
        let mut problems = self.signature.golden_problems(golden);
        for tolerance in std::iter::once(&self.tolerance).chain(&self.max_drift) {
            if let Tolerance::TopK { k } = *tolerance {
                for (name, array) in &golden.outputs {
                    let classes = if array.shape.len() > 1 { array.shape[array.shape.len() - 1] } else { 0 };
                    if classes < k as usize {
                        problems.push(format!(
                            "output {name:?} has {classes} classes on its last axis, fewer than top-k={k}"
                        ));
                    }
                }
            }
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tolerances_parse() {
        let cases: &[(&str, Option<Tolerance>)] = &[
            ("abs=1e-4", Some(Tolerance::Close { abs: 1e-4, rel: 0.0 })),
            ("rel=0.01", Some(Tolerance::Close { abs: 0.0, rel: 0.01 })),
            ("abs=0.1, rel=0.2", Some(Tolerance::Close { abs: 0.1, rel: 0.2 })),
            ("top-k=5", Some(Tolerance::TopK { k: 5 })),
            ("top-k=0", None),
            ("top-k=1001", None),
            ("abs=-1", None),
            ("abs=NaN", None),
            ("abs=inf", None),
            ("abs=1,abs=2", None),
            ("abs", None),
            ("max=1", None),
            ("", None),
            ("0.1", None),
        ];
        for (text, want) in cases {
            assert_eq!(text.parse::<Tolerance>().ok(), *want, "{text}");
        }
        for t in [Tolerance::DEFAULT, Tolerance::TopK { k: 3 }] {
            assert_eq!(t.to_string().parse::<Tolerance>().ok(), Some(t));
        }
    }

    #[test]
    fn budgets_parse() {
        let latency: &[(&str, Option<u64>)] = &[
            ("50ms", Some(50_000)),
            ("500us", Some(500)),
            ("2s", Some(2_000_000)),
            ("1us", Some(1)),
            ("0ms", None),
            ("1.5ms", None),
            ("50", None),
            ("50m", None),
            ("-1ms", None),
        ];
        for (text, want) in latency {
            assert_eq!(text.parse::<LatencyBudget>().ok().map(LatencyBudget::micros), *want, "{text}");
        }
        let memory: &[(&str, Option<u64>)] = &[
            ("256MiB", Some(256 << 20)),
            ("64KiB", Some(64 << 10)),
            ("1GiB", Some(1 << 30)),
            ("10MB", Some(10_000_000)),
            ("1B", Some(1)),
            ("0B", None),
            ("256", None),
            ("256mib", None),
            ("99999999999999999999GiB", None),
        ];
        for (text, want) in memory {
            assert_eq!(text.parse::<MemoryBudget>().ok().map(MemoryBudget::bytes), *want, "{text}");
        }
    }

    #[test]
    fn the_document_is_stable_json_and_refuses_unknown_fields() {
        let e = Expectations {
            format: FORMAT,
            signature: Signature {
                format: "onnx".into(),
                ir_version: 8,
                opsets: vec![],
                inputs: vec![],
                outputs: vec![],
                parameters: 0,
            },
            tolerance: Tolerance::TopK { k: 1 },
            latency_budget: Some(LatencyBudget(50_000)),
            memory_budget: None,
            max_drift: Some(Tolerance::Close { abs: 0.01, rel: 0.0 }),
            timing: Timing::DEFAULT,
        };
        let json = serde_json::to_value(&e).expect("serializes");
        assert_eq!(json["tolerance"], serde_json::json!({"kind": "top_k", "k": 1}));
        assert_eq!(json["max_drift"], serde_json::json!({"kind": "close", "abs": 0.01, "rel": 0.0}));
        assert_eq!(json["latency_budget"], serde_json::json!(50_000));
        assert!(json.get("memory_budget").is_none());
        assert_eq!(serde_json::from_value::<Expectations>(json.clone()).expect("parses"), e);
        let mut newer = json;
        newer["accuracy_floor"] = serde_json::json!(0.9);
        assert!(serde_json::from_value::<Expectations>(newer).is_err());
        let mut zero = serde_json::to_value(&e).expect("serializes");
        zero["latency_budget"] = serde_json::json!(0);
        assert!(serde_json::from_value::<Expectations>(zero).is_err(), "a zero budget is refused when read too");
    }
}
