//! Health probes as operators write them: `exec:NAME [ARGS…]`, `http(s)://…`, `file:NAME`.
//!
//! The device owner decides what a probe may touch: an exec probe names a binary on the
//! device's own allowlist, a file probe names an entry of its list of readiness files, and an
//! HTTP probe may ask only the hosts the device lists. The server can name an entry but never a
//! path, and nothing is ever run through a shell.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What to check.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ProbeKind {
    /// Run the allowlisted binary `name` with `args`; exit 0 is healthy.
    Exec {
        /// The allowlist key.
        name: String,
        /// Arguments before the artifact path.
        args: Vec<String>,
    },
    /// GET `url`; any 2xx is healthy.
    Http {
        /// The URL.
        url: String,
    },
    /// Healthy once the application has written the readiness file the device lists as
    /// `name` after the swap.
    File {
        /// The device's `[readiness_files]` key. Rollouts made before readiness files were
        /// names carried a path here (as `path`); it reads as a name, which no device lists, so
        /// such a probe is refused by the device without touching the file.
        #[serde(alias = "path")]
        name: String,
    },
}

/// A probe with its timing.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeSpec {
    /// What to check.
    #[serde(flatten)]
    pub kind: ProbeKind,
    /// Per-attempt timeout, ms.
    pub timeout_ms: u64,
    /// How many attempts (at least 1).
    pub attempts: u32,
    /// Pause between attempts, ms.
    pub interval_ms: u64,
    /// Pause before the first attempt, ms.
    pub initial_delay_ms: u64,
}

/// Defaults for the timing settings.
impl ProbeSpec {
    /// 30 s per attempt.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
    /// 3 attempts.
    pub const DEFAULT_ATTEMPTS: u32 = 3;
    /// 5 s between attempts.
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
    /// No initial delay.
    pub const DEFAULT_INITIAL_DELAY: Duration = Duration::ZERO;

    /// A probe of `kind` with the default timing.
    pub fn new(kind: ProbeKind) -> Self {
        Self {
            kind,
            timeout_ms: Self::DEFAULT_TIMEOUT.as_millis() as u64,
            attempts: Self::DEFAULT_ATTEMPTS,
            interval_ms: Self::DEFAULT_INTERVAL.as_millis() as u64,
            initial_delay_ms: Self::DEFAULT_INITIAL_DELAY.as_millis() as u64,
        }
    }

    /// Checks the timing is usable.
    pub fn validate(&self) -> Result<(), ProbeError> {
        if self.attempts == 0 || self.attempts > 100 {
            return Err(ProbeError::Attempts(self.attempts));
        }
        if self.timeout_ms == 0 {
            return Err(ProbeError::Timeout);
        }
        Ok(())
    }
}

/// A probe that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    /// Not one of the three forms.
    #[error("probe {0:?} is not exec:NAME [ARGS…], http(s)://… or file:NAME")]
    Form(String),
    /// An exec probe name that is not a plain allowlist key.
    #[error("exec probe name {0:?} must be an allowlist key (letters, digits, '.', '_', '-'), never a path")]
    ExecName(String),
    /// A file probe that does not name a readiness file the device lists.
    #[error(
        "file probe {0:?} must name an entry of the device's [readiness_files] (letters, digits, '.', '_', '-'), never a path"
    )]
    FileName(String),
    /// Attempts out of range.
    #[error("probe attempts must be between 1 and 100, got {0}")]
    Attempts(u32),
    /// Zero timeout.
    #[error("probe timeout must be more than zero")]
    Timeout,
}

impl FromStr for ProbeKind {
    type Err = ProbeError;

    fn from_str(s: &str) -> Result<Self, ProbeError> {
        let s = s.trim();
        if let Some(rest) = s.strip_prefix("exec:") {
            let mut words = rest.split_whitespace().map(str::to_owned);
            let name = words.next().ok_or_else(|| ProbeError::Form(s.to_owned()))?;
            crate::name::validate("probe", &name).map_err(|_| ProbeError::ExecName(name.clone()))?;
            return Ok(ProbeKind::Exec { name, args: words.collect() });
        }
        if s.starts_with("http://") || s.starts_with("https://") {
            if s.contains(char::is_whitespace) {
                return Err(ProbeError::Form(s.to_owned()));
            }
            return Ok(ProbeKind::Http { url: s.to_owned() });
        }
        if let Some(name) = s.strip_prefix("file:") {
            crate::name::validate("readiness file", name).map_err(|_| ProbeError::FileName(name.to_owned()))?;
            return Ok(ProbeKind::File { name: name.to_owned() });
        }
        Err(ProbeError::Form(s.to_owned()))
    }
}

impl fmt::Display for ProbeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeKind::Exec { name, args } => {
                write!(f, "exec:{name}")?;
                for a in args {
                    write!(f, " {a}")?;
                }
                Ok(())
            }
            ProbeKind::Http { url } => f.write_str(url),
            ProbeKind::File { name } => write!(f, "file:{name}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_forms() {
        let exec =
            |n: &str, a: &[&str]| ProbeKind::Exec { name: n.into(), args: a.iter().map(|s| s.to_string()).collect() };
        let cases: &[(&str, Result<ProbeKind, ()>)] = &[
            ("exec:check-model", Ok(exec("check-model", &[]))),
            ("exec:check-model --fast -n 3", Ok(exec("check-model", &["--fast", "-n", "3"]))),
            ("exec:/usr/bin/rm -rf /", Err(())),
            ("exec:../bin/x", Err(())),
            ("exec:", Err(())),
            ("http://127.0.0.1:8080/healthz", Ok(ProbeKind::Http { url: "http://127.0.0.1:8080/healthz".into() })),
            ("https://infer.local/ready", Ok(ProbeKind::Http { url: "https://infer.local/ready".into() })),
            ("file:model-ready", Ok(ProbeKind::File { name: "model-ready".into() })),
            // A path is never a probe: the device lists its readiness files by name.
            ("file:/run/app/ready", Err(())),
            ("file:../etc/passwd", Err(())),
            ("file:", Err(())),
            ("sh -c true", Err(())),
            ("", Err(())),
        ];
        for (text, want) in cases {
            let got = text.parse::<ProbeKind>();
            assert_eq!(got.clone().map_err(|_| ()), *want, "{text}: {got:?}");
            if let Ok(k) = got {
                assert_eq!(k.to_string().parse::<ProbeKind>().unwrap(), k, "round trip {text}");
            }
        }
    }

    #[test]
    fn file_probes_are_written_with_a_name_and_old_ones_read_as_one() {
        let spec = ProbeSpec::new(ProbeKind::File { name: "model-ready".into() });
        let json = serde_json::to_value(&spec).unwrap();
        assert_eq!((json["kind"].as_str(), json["name"].as_str()), (Some("file"), Some("model-ready")), "{json}");
        assert!(json.get("path").is_none(), "{json}");
        // A rollout stored before readiness files were names: its path reads as a name, which
        // is not a valid one, so no device can have it on its list.
        let mut old = json;
        old.as_object_mut().unwrap().remove("name");
        old["path"] = "/run/app/ready".into();
        let read: ProbeSpec = serde_json::from_value(old).unwrap();
        assert_eq!(read.kind, ProbeKind::File { name: "/run/app/ready".into() });
    }
}

/// The most bytes of an exec probe's stdout kept as its result (a JSON object); a longer
/// output is not kept at all, since half a JSON document says nothing.
pub const MAX_PROBE_RESULT: usize = 8 * 1024;

/// One line for people about a probe's JSON result, when it is a model check's report
/// (`wavecast-model-check`: `outcome`, `failures`, `outputs`, `latency`, `memory`, `drift`):
/// the outcome, the largest deviation from the golden outputs and from the previous version,
/// latency and memory against their budgets. `None` for any other JSON.
pub fn describe_result(result: &serde_json::Value) -> Option<String> {
    let outcome = result.get("outcome")?.as_str()?;
    let mut parts = vec![format!("model check {}", outcome.replace('_', " "))];
    let worst = |outputs: Option<&serde_json::Value>| {
        outputs?
            .as_array()?
            .iter()
            .filter_map(|o| Some((o.get("max_abs_error")?.as_f64()?, o.get("output")?.as_str()?.to_owned())))
            .max_by(|a, b| a.0.total_cmp(&b.0))
    };
    if let Some((err, output)) = worst(result.get("outputs")) {
        parts.push(format!("largest deviation {err:.3e} on {output}"));
    }
    if let Some((err, output)) = worst(result.get("drift").and_then(|d| d.get("outputs"))) {
        parts.push(format!("drift {err:.3e} on {output}"));
    }
    if let Some(l) = result.get("latency") {
        let p95 = l.get("p95_us").and_then(|v| v.as_f64()).unwrap_or_default();
        let budget = l.get("budget_us").and_then(|v| v.as_u64());
        parts.push(match budget {
            Some(b) => format!("p95 {} of {} budget", micros(p95), micros(b as f64)),
            None => format!("p95 {}", micros(p95)),
        });
    }
    if let Some(m) = result.get("memory") {
        let peak = m.get("peak_bytes").and_then(|v| v.as_u64()).unwrap_or_default();
        parts.push(match m.get("budget_bytes").and_then(|v| v.as_u64()) {
            Some(b) => format!("memory {} of {} budget", mib(peak), mib(b)),
            None => format!("memory {}", mib(peak)),
        });
    }
    // The first failure's message is the probe's stderr, which the reason already ends with.
    Some(parts.join("; "))
}

fn micros(us: f64) -> String {
    if us >= 1000.0 { format!("{:.1} ms", us / 1000.0) } else { format!("{us:.0} µs") }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

#[cfg(test)]
mod result_tests {
    use super::*;

    #[test]
    fn a_model_checks_report_reads_as_one_line_and_other_json_does_not() {
        let report = serde_json::json!({
            "outcome": "unhealthy",
            "failures": [{"reason": "out_of_tolerance", "message": "output \"probs\": 21 of 24 outside abs=0.0001"}],
            "cases": 8,
            "outputs": [{"output": "probs", "max_abs_error": 0.055413}, {"output": "logits", "max_abs_error": 0.001}],
            "latency": {"median_us": 120.0, "p95_us": 2500.0, "runs": 20, "warmup": 3, "budget_us": 50000},
            "memory": {"peak_bytes": 1572864, "budget_bytes": 268435456},
        });
        assert_eq!(
            describe_result(&report).unwrap(),
            "model check unhealthy; largest deviation 5.541e-2 on probs; p95 2.5 ms of 50.0 ms budget; \
             memory 1.5 MiB of 256.0 MiB budget"
        );
        let healthy = serde_json::json!({"outcome": "healthy", "outputs": [], "latency": {"p95_us": 80.0}});
        assert_eq!(describe_result(&healthy).unwrap(), "model check healthy; p95 80 µs");
        assert_eq!(describe_result(&serde_json::json!({"status": "ok"})), None);
    }
}
