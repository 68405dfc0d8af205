//! The golden set a publisher signs with a model: a custom field of the model's own target
//! naming the bundle's digest and length, so the two are one signed entry.
//!
//! Why custom metadata rather than a second target: a second target could be published, or
//! left out, on its own, and every reader of the targets would have to pair the two by name.
//! Here the model's entry carries the bundle's hash: no one can swap, drop or add a golden set
//! without the targets key, and the device fetches the bundle by that hash and checks it
//! exactly as it checks the model. The field also records whether the publisher's machine ran
//! the check before signing (`passed`) or was told not to (`skipped`), so the audit trail can
//! say it from signed data.

use serde::{Deserialize, Serialize};
use wavecast_core::Sha256Digest;

/// The custom field of a target holding its [`Golden`].
pub const GOLDEN_FIELD: &str = "golden";

/// The largest golden bundle a target may name, bytes: a golden set of at most 256 MiB
/// unpacked and its expectations (the model check's own limits).
pub const MAX_GOLDEN_BYTES: u64 = 257 * 1024 * 1024;

/// A golden bundle bound to a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Golden {
    /// SHA-256 of the bundle.
    pub sha256: Sha256Digest,
    /// Its length in bytes.
    pub length: u64,
    /// What the publisher's machine did before signing.
    pub local_check: LocalCheck,
}

/// Whether the model passed its golden set on the publisher's machine before it was signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LocalCheck {
    /// It ran and every check passed.
    Passed,
    /// The publisher said `--skip-local-check`.
    Skipped,
}

impl LocalCheck {
    /// As written in the field and in the audit.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Passed => "passed",
            Self::Skipped => "skipped",
        }
    }
}

/// A golden field that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum GoldenFieldError {
    /// Not the object [`Golden`] describes.
    #[error("the target's `{GOLDEN_FIELD}` field is not a golden bundle reference")]
    Malformed(#[source] serde_json::Error),
    /// Larger than any bundle may be.
    #[error("the target's golden bundle is {length} bytes, over the limit of {MAX_GOLDEN_BYTES}")]
    TooLarge {
        /// The signed length.
        length: u64,
    },
}

impl Golden {
    /// Reads the golden field from a target's custom metadata: none when absent.
    pub fn from_custom(
        custom: &std::collections::HashMap<String, serde_json::Value>,
    ) -> Result<Option<Self>, GoldenFieldError> {
        let Some(value) = custom.get(GOLDEN_FIELD) else { return Ok(None) };
        let golden: Self = serde_json::from_value(value.clone()).map_err(GoldenFieldError::Malformed)?;
        if golden.length > MAX_GOLDEN_BYTES {
            return Err(GoldenFieldError::TooLarge { length: golden.length });
        }
        Ok(Some(golden))
    }

    /// The field's value.
    pub fn to_value(&self) -> serde_json::Value {
        // A struct of a string, a number and a string always serializes.
        serde_json::to_value(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn custom(value: serde_json::Value) -> HashMap<String, serde_json::Value> {
        HashMap::from([(GOLDEN_FIELD.to_owned(), value)])
    }

    #[test]
    fn the_field_reads_back_and_refuses_what_it_does_not_know() {
        let golden = Golden { sha256: Sha256Digest::of(b"bundle"), length: 10, local_check: LocalCheck::Passed };
        assert_eq!(Golden::from_custom(&custom(golden.to_value())).unwrap(), Some(golden));
        assert_eq!(Golden::from_custom(&HashMap::new()).unwrap(), None);
        let mut extra = golden.to_value();
        extra["url"] = "http://elsewhere".into();
        for bad in
            [serde_json::json!("abc"), serde_json::json!({"sha256": "00", "length": 1, "local_check": "passed"}), extra]
        {
            assert!(matches!(Golden::from_custom(&custom(bad)), Err(GoldenFieldError::Malformed(_))));
        }
        let huge = Golden { length: MAX_GOLDEN_BYTES + 1, ..golden };
        assert!(matches!(Golden::from_custom(&custom(huge.to_value())), Err(GoldenFieldError::TooLarge { .. })));
    }
}
