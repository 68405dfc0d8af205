//! What trust looks like over a fleet's lifetime: the TUF roles, the keys a root names, who
//! renews each role, and when an operator must be warned that one runs out.
//!
//! Root and targets are signed offline by people; if they expire, every device stops
//! installing until someone signs them again, so the operator is warned [`RENEW_WITHIN_DAYS`]
//! ahead. Snapshot and timestamp are renewed by the server on its own; they are worth a
//! warning only once the server has let one lapse.

use std::fmt;

use serde::{Deserialize, Serialize};

/// How long before an offline-signed role expires the operator is warned (in `wavecast
/// status`, and in the server's log once a day).
pub const RENEW_WITHIN_DAYS: i64 = 30;

/// A TUF metadata role.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MetadataRole {
    /// `root.json`, the trust anchor: signed offline with the root key.
    Root,
    /// `targets.json`, what may run at all: signed offline with the publisher's targets key.
    Targets,
    /// `snapshot.json`: signed online by the server.
    Snapshot,
    /// `timestamp.json`: signed online by the server.
    Timestamp,
}

impl MetadataRole {
    /// Every role, in the order people read them.
    pub const ALL: [MetadataRole; 4] =
        [MetadataRole::Root, MetadataRole::Targets, MetadataRole::Snapshot, MetadataRole::Timestamp];

    /// The role's name, as TUF files and the store name it.
    pub fn as_str(self) -> &'static str {
        match self {
            MetadataRole::Root => "root",
            MetadataRole::Targets => "targets",
            MetadataRole::Snapshot => "snapshot",
            MetadataRole::Timestamp => "timestamp",
        }
    }

    /// Whether people sign it with an offline key (root, targets); the server renews the others.
    pub fn signed_offline(self) -> bool {
        matches!(self, MetadataRole::Root | MetadataRole::Targets)
    }

    /// The command that renews it, for warnings.
    fn renew_with(self) -> &'static str {
        match self {
            MetadataRole::Root => "wavecast root rotate --root-key ROOT_KEY",
            MetadataRole::Targets => "wavecast artifact resign --key PUBLISHER_KEY",
            MetadataRole::Snapshot | MetadataRole::Timestamp => "the server's log says why it does not renew it",
        }
    }
}

impl fmt::Display for MetadataRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A key a root names: the four TUF role keys and wavecast's own two.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyRole {
    /// Signs root.json (offline).
    Root,
    /// Signs targets.json (offline, the publisher's).
    Targets,
    /// Signs snapshot.json (online, the server's).
    Snapshot,
    /// Signs timestamp.json (online, the server's).
    Timestamp,
    /// Signs device assignments (online, the server's).
    Director,
    /// Signs audit log checkpoints (online, the server's).
    Checkpoint,
}

impl KeyRole {
    /// Every key role, in the order people read them.
    pub const ALL: [KeyRole; 6] = [
        KeyRole::Root,
        KeyRole::Targets,
        KeyRole::Snapshot,
        KeyRole::Timestamp,
        KeyRole::Director,
        KeyRole::Checkpoint,
    ];

    /// The role's name.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyRole::Root => "root",
            KeyRole::Targets => "targets",
            KeyRole::Snapshot => "snapshot",
            KeyRole::Timestamp => "timestamp",
            KeyRole::Director => "director",
            KeyRole::Checkpoint => "checkpoint",
        }
    }

    /// Whether the server holds this key (in its `keys/`); the others stay offline.
    pub fn online(self) -> bool {
        !matches!(self, KeyRole::Root | KeyRole::Targets)
    }
}

impl fmt::Display for KeyRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The warning an operator should see about `role` (version `version`) expiring at
/// `expires_ms`, as of `now_ms` (Unix milliseconds): an offline-signed role within
/// [`RENEW_WITHIN_DAYS`] of its expiry, or any role already expired. `None` when all is well.
pub fn expiry_warning(role: MetadataRole, version: u64, expires_ms: i64, now_ms: i64) -> Option<String> {
    let left_ms = expires_ms.saturating_sub(now_ms);
    let day_ms = 24 * 3600 * 1000;
    let fix = role.renew_with();
    if left_ms <= 0 {
        return Some(format!(
            "{role} metadata version {version} has expired: devices install nothing new until it is renewed ({fix})"
        ));
    }
    if role.signed_offline() && left_ms < RENEW_WITHIN_DAYS * day_ms {
        let days = left_ms / day_ms;
        let when = match days {
            0 => "in less than a day".to_owned(),
            1 => "in 1 day".to_owned(),
            n => format!("in {n} days"),
        };
        return Some(format!(
            "{role} metadata version {version} expires {when}: renew it before then ({fix}), or devices stop installing new versions"
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offline_roles_warn_thirty_days_ahead_and_every_role_once_expired() {
        const DAY: i64 = 24 * 3600 * 1000;
        let now = 1_000 * DAY;
        use MetadataRole::*;
        // (role, expires in ms from now, a warning containing this, or none)
        let table: &[(MetadataRole, i64, Option<&str>)] = &[
            (Root, 31 * DAY, None),
            (Root, 30 * DAY, None),
            (Root, 30 * DAY - 1, Some("expires in 29 days")),
            (Targets, 5 * DAY + 1, Some("expires in 5 days")),
            (Targets, DAY + 1, Some("expires in 1 day")),
            (Targets, 1, Some("in less than a day")),
            (Targets, 0, Some("has expired")),
            (Targets, -400 * DAY, Some("has expired")),
            (Snapshot, DAY, None),
            (Timestamp, 1, None),
            (Timestamp, -1, Some("has expired")),
            (Snapshot, 0, Some("has expired")),
        ];
        for (role, left, want) in table {
            let got = expiry_warning(*role, 3, now + left, now);
            match (want, &got) {
                (None, None) => {}
                (Some(w), Some(g)) => assert!(g.contains(w) && g.contains("version 3"), "{role} {left}: {g}"),
                _ => panic!("{role} expiring in {left} ms: got {got:?}, want {want:?}"),
            }
        }
        let root = expiry_warning(Root, 1, now + DAY * 2, now).unwrap();
        assert!(root.contains("wavecast root rotate"), "{root}");
        let targets = expiry_warning(Targets, 1, now + DAY * 2, now).unwrap();
        assert!(targets.contains("wavecast artifact resign"), "{targets}");
    }
}
