//! Bearer secrets: API tokens, device credentials and enrollment tokens.
//!
//! Secrets are 32 random bytes (the caller supplies them; this crate has no randomness) shown
//! once to their owner and stored only as a SHA-256 hash. A prefix names the kind so a device
//! credential pasted into `--token` is refused with a clear message instead of a bare 401.

use std::fmt;

use crate::Sha256Digest;

/// What a secret is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretKind {
    /// An operator API token (`wct_…`).
    ApiToken,
    /// A device's own credential (`wcd_…`).
    DeviceCredential,
    /// A group enrollment token (`wce_…`).
    EnrollmentToken,
}

impl SecretKind {
    fn prefix(self) -> &'static str {
        match self {
            SecretKind::ApiToken => "wct_",
            SecretKind::DeviceCredential => "wcd_",
            SecretKind::EnrollmentToken => "wce_",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            SecretKind::ApiToken => "an API token",
            SecretKind::DeviceCredential => "a device credential",
            SecretKind::EnrollmentToken => "an enrollment token",
        }
    }
}

/// A secret in clear text. Its `Debug` does not print it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

/// A presented secret that is not of the expected kind or shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// The secret is of another kind.
    #[error("this is {found}, not {expected}")]
    WrongKind {
        /// What it looks like.
        found: &'static str,
        /// What was expected.
        expected: &'static str,
    },
    /// The secret does not have the shape of any wavecast secret.
    #[error("this is not {expected} (expected {prefix} followed by 64 hex digits)")]
    Malformed {
        /// What was expected.
        expected: &'static str,
        /// The expected prefix.
        prefix: &'static str,
    },
}

impl Secret {
    /// Formats fresh random bytes as a secret of `kind`.
    pub fn from_random(kind: SecretKind, random: [u8; 32]) -> Self {
        Self(format!("{}{}", kind.prefix(), hex::encode(random)))
    }

    /// Checks that `presented` has the shape of a `kind` secret.
    pub fn parse(kind: SecretKind, presented: &str) -> Result<Self, SecretError> {
        let presented = presented.trim();
        for other in [SecretKind::ApiToken, SecretKind::DeviceCredential, SecretKind::EnrollmentToken] {
            if other != kind && presented.starts_with(other.prefix()) {
                return Err(SecretError::WrongKind { found: other.describe(), expected: kind.describe() });
            }
        }
        let ok = presented
            .strip_prefix(kind.prefix())
            .is_some_and(|rest| rest.len() == 64 && rest.bytes().all(|b| b.is_ascii_hexdigit()));
        if !ok {
            return Err(SecretError::Malformed { expected: kind.describe(), prefix: kind.prefix() });
        }
        Ok(Self(presented.to_owned()))
    }

    /// The clear text, to show once.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The hash stored in place of the secret.
    pub fn hash(&self) -> Sha256Digest {
        Sha256Digest::of(self.0.as_bytes())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(…)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_round_trip_and_kinds_do_not_mix() {
        let s = Secret::from_random(SecretKind::ApiToken, [7; 32]);
        assert_eq!(Secret::parse(SecretKind::ApiToken, s.expose()).unwrap(), s);
        let e = Secret::parse(SecretKind::DeviceCredential, s.expose()).unwrap_err();
        assert_eq!(e.to_string(), "this is an API token, not a device credential");
        assert!(Secret::parse(SecretKind::ApiToken, "wct_123").is_err());
        assert!(Secret::parse(SecretKind::ApiToken, "Bearer x").is_err());
        assert!(!format!("{s:?}").contains("wct_"));
    }
}
