//! The fleet's own rules: whether a device is still trusted, and whether an enrollment token
//! still admits a device.
//!
//! Revoking and removing differ in what stays behind. A **revoked** device's credential is
//! refused from its next request on, it leaves every rollout that has not ended as `removed`
//! (settled, never a failure), no new rollout includes it, and it stays listed (as revoked) in
//! its group, so its history can still be read and its name is not reused by accident. A
//! **removed** (decommissioned) device is revoked and then deleted: it leaves its group and the
//! device list, its name is free for a replacement, and only the audit log remembers it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Whether a device is still trusted.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceStatus {
    /// Its credential works, and rollouts include it.
    Active,
    /// Its credential is refused, and no rollout waits for it or counts it.
    Revoked,
}

impl DeviceStatus {
    /// Every status.
    pub const ALL: [DeviceStatus; 2] = [DeviceStatus::Active, DeviceStatus::Revoked];

    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceStatus::Active => "active",
            DeviceStatus::Revoked => "revoked",
        }
    }

    /// The status of a device revoked at `revoked_at`, if it was.
    pub fn of(revoked_at: Option<i64>) -> Self {
        if revoked_at.is_some() { DeviceStatus::Revoked } else { DeviceStatus::Active }
    }
}

impl fmt::Display for DeviceStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A device status name we do not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown device state {0:?}; expected active or revoked")]
pub struct DeviceStatusError(pub String);

impl FromStr for DeviceStatus {
    type Err = DeviceStatusError;
    fn from_str(s: &str) -> Result<Self, DeviceStatusError> {
        DeviceStatus::ALL.into_iter().find(|d| d.as_str() == s).ok_or_else(|| DeviceStatusError(s.to_owned()))
    }
}

/// What decides whether an enrollment token admits one more device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenUse {
    /// When it stops admitting devices (Unix ms).
    pub expires_at_ms: i64,
    /// Whether an operator revoked it.
    pub revoked: bool,
    /// Devices it admitted so far.
    pub uses: u64,
    /// How many devices it admits in all; `None` for any number until it expires.
    pub max_uses: Option<u64>,
}

/// Why an enrollment token admits no more devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EnrollRefused {
    /// An operator revoked it.
    #[error("the enrollment token was revoked; ask an operator for a new one")]
    Revoked,
    /// It expired.
    #[error("the enrollment token has expired; ask an operator for a new one")]
    Expired,
    /// Every use it was made for is spent.
    #[error("the enrollment token was made for {max_uses} device(s), and all of them have enrolled")]
    UsedUp {
        /// The devices it admits in all.
        max_uses: u64,
    },
}

/// Whether `token` admits one more device at `now_ms`: not revoked, not expired, a use left.
pub fn admits(token: &TokenUse, now_ms: i64) -> Result<(), EnrollRefused> {
    if token.revoked {
        return Err(EnrollRefused::Revoked);
    }
    if token.expires_at_ms <= now_ms {
        return Err(EnrollRefused::Expired);
    }
    match token.max_uses {
        Some(max_uses) if token.uses >= max_uses => Err(EnrollRefused::UsedUp { max_uses }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip() {
        for s in DeviceStatus::ALL {
            assert_eq!(s.as_str().parse::<DeviceStatus>(), Ok(s));
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        assert!("removed".parse::<DeviceStatus>().is_err());
        assert_eq!((DeviceStatus::of(None), DeviceStatus::of(Some(0))), (DeviceStatus::Active, DeviceStatus::Revoked));
    }

    #[test]
    fn a_token_admits_until_revoked_expired_or_used_up() {
        let token = |revoked, expires_at_ms, uses, max_uses| TokenUse { expires_at_ms, revoked, uses, max_uses };
        let now = 1_000;
        // (token, what it says at `now`); a revoked token says so even when also expired or spent.
        let table = [
            (token(false, 1_001, 0, None), Ok(())),
            (token(false, 1_001, 1_000_000, None), Ok(())),
            (token(false, 1_001, 2, Some(3)), Ok(())),
            (token(false, 1_001, 3, Some(3)), Err(EnrollRefused::UsedUp { max_uses: 3 })),
            (token(false, 1_001, 4, Some(3)), Err(EnrollRefused::UsedUp { max_uses: 3 })),
            (token(false, 1_000, 0, None), Err(EnrollRefused::Expired)),
            (token(false, 999, 3, Some(3)), Err(EnrollRefused::Expired)),
            (token(true, 1_001, 0, None), Err(EnrollRefused::Revoked)),
            (token(true, 0, 3, Some(3)), Err(EnrollRefused::Revoked)),
        ];
        for (t, expected) in table {
            assert_eq!(admits(&t, now), expected, "{t:?}");
        }
    }
}
