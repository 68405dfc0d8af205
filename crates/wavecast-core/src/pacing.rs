//! How often devices check in: the server paces them, fast while something is happening for a
//! device and slowly otherwise, with jitter so a fleet never polls in step, and holds a
//! check-in open (long-poll) so a wave opening reaches a device at once without anyone
//! polling every second.

use crate::assignment::DeviceState;
use crate::rollout::RolloutState;

/// Between check-ins of a device with nothing to do, by default.
pub const DEFAULT_IDLE_MS: u64 = 60_000;
/// Between check-ins of a device whose wave is open, by default.
pub const DEFAULT_ACTIVE_MS: u64 = 5_000;
/// How long a check-in may be held waiting for a change, by default: under the 60 s idle
/// timeout common in proxies and load balancers, so a held check-in is not cut by one.
pub const DEFAULT_LONG_POLL_MS: u64 = 55_000;
/// The longest a check-in may be held, whatever is configured.
pub const MAX_LONG_POLL_MS: u64 = 300_000;
/// The shortest pacing interval an operator may set: faster is polling every second.
pub const MIN_INTERVAL_MS: u64 = 1_000;
/// The longest pacing interval an operator may set.
pub const MAX_INTERVAL_MS: u64 = 24 * 3600 * 1000;
/// After a held check-in, a device waits a random moment below this before the next one, so a
/// fleet woken together does not come back together.
pub const AFTER_HELD_SPREAD_MS: u64 = 1_000;

/// A group's pacing, defaults filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pacing {
    /// Between check-ins of an idle device, ms.
    pub idle_ms: u64,
    /// Between check-ins of a busy device ([`busy`]), ms.
    pub active_ms: u64,
    /// The longest a check-in is held, ms; 0 turns long-poll off.
    pub long_poll_ms: u64,
}

impl Default for Pacing {
    fn default() -> Self {
        Self { idle_ms: DEFAULT_IDLE_MS, active_ms: DEFAULT_ACTIVE_MS, long_poll_ms: DEFAULT_LONG_POLL_MS }
    }
}

/// Why a pacing setting is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacingError {
    /// An interval outside the allowed range.
    #[error("{what} must be between 1s and 24h")]
    Interval {
        /// Which setting.
        what: &'static str,
    },
    /// A long-poll wait over the maximum.
    #[error("the long-poll wait must be at most 5m (0 turns long-poll off)")]
    LongPoll,
}

impl Pacing {
    /// Checks the values an operator set.
    pub fn check(&self) -> Result<(), PacingError> {
        for (what, v) in [("the idle interval", self.idle_ms), ("the active interval", self.active_ms)] {
            if !(MIN_INTERVAL_MS..=MAX_INTERVAL_MS).contains(&v) {
                return Err(PacingError::Interval { what });
            }
        }
        if self.long_poll_ms > MAX_LONG_POLL_MS {
            return Err(PacingError::LongPoll);
        }
        Ok(())
    }

    /// The suggested delay before a device's next check-in. `long_polls` says whether the
    /// device waits on the server (long-poll): it comes back at once, spread over a second;
    /// otherwise it polls every interval, ±20%. `jitter` is a uniformly random number.
    pub fn next_poll_ms(&self, busy: bool, long_polls: bool, jitter: u16) -> u64 {
        let unit = u64::from(jitter);
        if long_polls {
            return AFTER_HELD_SPREAD_MS * unit / 65_536;
        }
        let base = if busy { self.active_ms } else { self.idle_ms };
        // base × [0.8, 1.2)
        base / 10 * 8 + base / 10 * 4 * unit / 65_536
    }

    /// How long a check-in that asked to wait `asked_ms` is held.
    pub fn hold_ms(&self, asked_ms: u64) -> u64 {
        asked_ms.min(self.long_poll_ms)
    }
}

/// Whether something is happening for a device in a rollout: its wave is open, the rollout has
/// not ended, and the device has not settled. Such a device is paced faster.
pub fn busy(rollout: RolloutState, device: DeviceState) -> bool {
    !rollout.is_terminal() && DeviceState::IN_PROGRESS.contains(&device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_means_an_open_wave_an_unfinished_rollout_and_an_unsettled_device() {
        use DeviceState as D;
        use RolloutState as R;
        let cases = [
            (R::Running, D::Pending, false),
            (R::Running, D::Assigned, true),
            (R::Running, D::Downloading, true),
            (R::Paused, D::Probing, true),
            (R::WaitingApproval, D::Succeeded, false),
            (R::Running, D::Failed, false),
            (R::Aborted, D::Downloading, false),
            (R::Completed, D::Assigned, false),
        ];
        for (r, d, want) in cases {
            assert_eq!(busy(r, d), want, "{r:?} {d:?}");
        }
    }

    #[test]
    fn the_next_poll_is_jittered_within_its_band() {
        let p = Pacing::default();
        let cases = [
            // (busy, long-polls, jitter, expected)
            (false, false, 0, 48_000),
            (false, false, u16::MAX, 71_999),
            (true, false, 0, 4_000),
            (true, false, 32_768, 5_000),
            (false, true, 0, 0),
            (true, true, u16::MAX, 999),
        ];
        for (busy, held, jitter, want) in cases {
            assert_eq!(p.next_poll_ms(busy, held, jitter), want, "busy {busy} long-polls {held} jitter {jitter}");
        }
    }

    #[test]
    fn settings_outside_their_range_are_refused() {
        let ok = Pacing::default();
        assert_eq!(ok.check(), Ok(()));
        assert_eq!(Pacing { long_poll_ms: 0, ..ok }.check(), Ok(()), "0 turns long-poll off");
        assert!(matches!(Pacing { idle_ms: 999, ..ok }.check(), Err(PacingError::Interval { .. })));
        assert!(matches!(Pacing { active_ms: MAX_INTERVAL_MS + 1, ..ok }.check(), Err(PacingError::Interval { .. })));
        assert_eq!(Pacing { long_poll_ms: MAX_LONG_POLL_MS + 1, ..ok }.check(), Err(PacingError::LongPoll));
        assert_eq!(ok.hold_ms(600_000), DEFAULT_LONG_POLL_MS);
        assert_eq!(Pacing { long_poll_ms: 0, ..ok }.hold_ms(30_000), 0);
    }
}
