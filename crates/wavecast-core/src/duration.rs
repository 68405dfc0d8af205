//! Human durations as operators type them: `30s`, `10m`, `24h`, `7d`, `500ms`.

use std::time::Duration;

/// A duration that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not a duration; use a whole number with a unit: ms, s, m, h or d (like 30s, 10m, 7d)")]
pub struct DurationError {
    /// The refused text.
    pub value: String,
}

/// Parses `<whole number><unit>`.
pub fn parse_duration(value: &str) -> Result<Duration, DurationError> {
    let err = || DurationError { value: value.to_owned() };
    let split = value.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?;
    let (n, unit) = value.split_at(split);
    let n: u64 = n.parse().map_err(|_| err())?;
    let ms = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(err()),
    };
    n.checked_mul(ms).map(Duration::from_millis).ok_or_else(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let cases: &[(&str, Option<u64>)] = &[
            ("30s", Some(30_000)),
            ("10m", Some(600_000)),
            ("24h", Some(86_400_000)),
            ("7d", Some(604_800_000)),
            ("250ms", Some(250)),
            ("0s", Some(0)),
            ("10", None),
            ("s", None),
            ("1.5h", None),
            ("-1s", None),
            ("10w", None),
            ("", None),
        ];
        for (text, ms) in cases {
            assert_eq!(parse_duration(text).ok().map(|d| d.as_millis() as u64), *ms, "{text}");
        }
    }
}
