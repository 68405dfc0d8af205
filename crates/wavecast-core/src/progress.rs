//! Heartbeats: what a working device says while it downloads, waits or probes, and the answer.
//!
//! A device's *state* in a rollout changes only by reports, each applied exactly once through
//! the agent's outbox. Between two reports an install can take long — a big model over a slow
//! link, a probe's warm-up, a full disk waited out — and the server must tell that from
//! silence. So a working device sends [`Progress`] every [`ProgressAck::heartbeat_ms`]: it
//! restarts the device's silence clock, shows the operator how far it got or what it waits
//! for, and its answer tells the device whether its assignment still stands. Heartbeats are
//! ephemeral: never journaled, never audited, harmless to lose.

use serde::{Deserialize, Serialize};

use crate::assignment::DeviceState;

/// Why a device that is alive is not moving forward: a transient problem it waits out. None
/// of these is the model's failure and none is counted by the halt rule.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WaitClass {
    /// The device's clock is wrong (stepped back, or before the metadata was signed).
    Clock,
    /// Not enough free space, or another local I/O problem, where the update is written.
    Disk,
    /// The signed metadata has expired; waiting for the publisher or server to renew it.
    Metadata,
    /// The server or the link answers badly or not at all.
    Network,
    /// The server answered but cannot serve the update yet (404/403/5xx).
    Server,
}

impl WaitClass {
    /// Every class.
    pub const ALL: [WaitClass; 5] =
        [WaitClass::Clock, WaitClass::Disk, WaitClass::Metadata, WaitClass::Network, WaitClass::Server];

    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            WaitClass::Clock => "clock",
            WaitClass::Disk => "disk",
            WaitClass::Metadata => "metadata",
            WaitClass::Network => "network",
            WaitClass::Server => "server",
        }
    }
}

impl std::fmt::Display for WaitClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A wait class name we do not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown wait class {0:?}")]
pub struct WaitClassError(pub String);

impl std::str::FromStr for WaitClass {
    type Err = WaitClassError;
    fn from_str(s: &str) -> Result<Self, WaitClassError> {
        WaitClass::ALL.into_iter().find(|c| c.as_str() == s).ok_or_else(|| WaitClassError(s.to_owned()))
    }
}

/// A transient problem a device is waiting out, in words an operator can act on
/// (`waiting: disk — needs 812 MiB, 120 MiB free in /opt/models`).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Waiting {
    /// What kind of problem.
    pub class: WaitClass,
    /// The specifics, for the operator.
    pub reason: String,
}

/// The longest `Waiting::reason` the server keeps; longer ones are cut.
pub const MAX_REASON_LEN: usize = 1024;

impl Waiting {
    /// The reason as the server keeps it: at most [`MAX_REASON_LEN`] bytes, cut at a character
    /// boundary.
    pub fn kept_reason(&self) -> &str {
        let mut end = self.reason.len().min(MAX_REASON_LEN);
        while !self.reason.is_char_boundary(end) {
            end -= 1;
        }
        &self.reason[..end]
    }
}

/// A working device's heartbeat (`POST /device/v1/progress`).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Progress {
    /// The rollout the device works on.
    pub rollout_id: String,
    /// Artifact name, as the device read it (informational).
    pub artifact: String,
    /// Version (informational).
    pub version: String,
    /// Where the device is: one of [`DeviceState::IN_FLIGHT`].
    pub state: DeviceState,
    /// Bytes of the artifact the device holds so far (downloaded or reused).
    #[serde(default)]
    pub bytes_done: u64,
    /// The artifact's signed length.
    #[serde(default)]
    pub bytes_total: u64,
    /// Recent download rate.
    #[serde(default)]
    pub bytes_per_sec: u64,
    /// Set while the device waits out a transient problem.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<Waiting>,
}

impl Progress {
    /// Whether the heartbeat makes sense: it comes from a device at work, so its state is one of
    /// [`DeviceState::IN_FLIGHT`].
    pub fn check(&self) -> Result<(), ProgressError> {
        if self.state.started() { Ok(()) } else { Err(ProgressError::State(self.state)) }
    }
}

/// A heartbeat that does not make sense.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProgressError {
    /// A heartbeat names a state a working device cannot be in.
    #[error(
        "a heartbeat comes from a device at work (downloading, verifying, installing or probing), not one that is {0}"
    )]
    State(DeviceState),
}

/// The server's answer to a heartbeat.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgressAck {
    /// Whether the device should go on. False when the assignment no longer stands for it (the
    /// rollout paused before the device got past its download, was aborted, or no longer
    /// includes the device): stop at the next chunk boundary, keep what was downloaded, and
    /// wait for the next assignment doc.
    pub proceed: bool,
    /// How often the server wants a heartbeat from this device while it works.
    #[cfg_attr(feature = "openapi", schema(minimum = 1000, maximum = 30000))]
    pub heartbeat_ms: u64,
}

/// The heartbeat interval before the server has said one, and its upper bound.
pub const DEFAULT_HEARTBEAT_MS: u64 = 30_000;

impl ProgressAck {
    /// The answer about a rollout the server does not know, or that does not include the
    /// device: stop, and wait for the next assignment doc.
    pub const NOT_ASSIGNED: ProgressAck = ProgressAck { proceed: false, heartbeat_ms: DEFAULT_HEARTBEAT_MS };
}

/// The shortest interval a device ever heart-beats at.
pub const MIN_HEARTBEAT_MS: u64 = 1_000;

/// The heartbeat interval for a rollout whose device timeout is `device_timeout_ms`: four
/// heartbeats per timeout, so one or two lost on a flaky link never look like silence, within
/// one a second and one every 30 s (a 10-minute timeout gives 30 s: two a minute per device).
pub fn heartbeat_ms(device_timeout_ms: u64) -> u64 {
    (device_timeout_ms / 4).clamp(MIN_HEARTBEAT_MS, DEFAULT_HEARTBEAT_MS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeats_come_four_per_timeout_within_bounds() {
        for (timeout, want) in [
            (10 * 60_000, 30_000), // the default timeout: two a minute
            (60_000, 15_000),
            (4_000, 1_000),
            (1_000, 1_000), // never more often than once a second
            (0, 1_000),
            (u64::MAX, 30_000),
        ] {
            assert_eq!(heartbeat_ms(timeout), want, "device timeout {timeout} ms");
        }
    }

    #[test]
    fn wait_classes_round_trip() {
        for class in WaitClass::ALL {
            assert_eq!(class.as_str().parse::<WaitClass>(), Ok(class));
            assert_eq!(serde_json::to_value(class).expect("serializes"), class.as_str());
        }
        assert!("weather".parse::<WaitClass>().is_err());
    }

    #[test]
    fn only_working_devices_heartbeat_and_long_reasons_are_cut_on_a_character() {
        let mut p = Progress {
            rollout_id: "r-1".into(),
            artifact: "yolo".into(),
            version: "2.1.0".into(),
            state: DeviceState::Downloading,
            bytes_done: 0,
            bytes_total: 0,
            bytes_per_sec: 0,
            waiting: None,
        };
        for state in DeviceState::ALL {
            p.state = state;
            assert_eq!(p.check().is_ok(), DeviceState::IN_FLIGHT.contains(&state), "{state}");
        }
        let w = |reason: String| Waiting { class: WaitClass::Network, reason };
        assert_eq!(w("short".into()).kept_reason(), "short");
        assert_eq!(w("a".repeat(MAX_REASON_LEN + 5)).kept_reason().len(), MAX_REASON_LEN);
        // 'é' is two bytes: a cut in its middle moves back before it.
        let odd = format!("{}é", "a".repeat(MAX_REASON_LEN - 1));
        assert_eq!(w(odd).kept_reason(), "a".repeat(MAX_REASON_LEN - 1));
    }

    #[test]
    fn progress_round_trips_and_refuses_unknown_fields() {
        let p = Progress {
            rollout_id: "r-1".into(),
            artifact: "yolo".into(),
            version: "2.1.0".into(),
            state: DeviceState::Downloading,
            bytes_done: 10,
            bytes_total: 100,
            bytes_per_sec: 5,
            waiting: Some(Waiting { class: WaitClass::Disk, reason: "needs 90 B, 0 B free".into() }),
        };
        let text = serde_json::to_string(&p).unwrap();
        assert!(text.contains(r#""waiting":{"class":"disk","#), "{text}");
        assert_eq!(serde_json::from_str::<Progress>(&text).unwrap(), p);
        assert!(serde_json::from_str::<Progress>(&text.replace("bytes_done", "bytes_don")).is_err());
    }
}
