//! Transient problems before the swap, and how the agent waits them out.
//!
//! Only a verification failure refuses an update (a signature, a digest, a length, a rollback,
//! the wrong hardware or device). Everything else that stops an install — an expired piece of
//! metadata, a clock that cannot be right, a server that answers 404 or not at all, a full
//! disk — is the device's or the infrastructure's trouble, not the model's: the agent retries
//! with backoff and says what it waits for ([`Waiting`], in its heartbeats), and nothing is
//! counted against the rollout. The decisions here are pure; the agent passes the time in.

use std::path::Path;
use std::time::Duration;

use wavecast_core::progress::{WaitClass, Waiting};

/// When this agent was built (Unix seconds, from `build.rs`).
const BUILT_AT: &str = env!("WAVECAST_AGENT_BUILT_AT");

/// When this agent was built: no correct clock reads earlier.
pub fn built_at() -> jiff::Timestamp {
    BUILT_AT
        .parse::<i64>()
        .ok()
        .and_then(|s| jiff::Timestamp::from_second(s).ok())
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
}

/// The wait for a clock that is obviously wrong: one reading a time before the agent itself
/// was built (a board that booted in 1970). Expiry checks against such a clock mean nothing,
/// so nothing new is installed until it is set.
pub fn clock_problem(now: jiff::Timestamp, built_at: jiff::Timestamp) -> Option<Waiting> {
    (now < built_at).then(|| {
        let now = jiff::Timestamp::from_second(now.as_second()).unwrap_or(now);
        Waiting {
            class: WaitClass::Clock,
            reason: format!(
                "this device's clock reads {now}, before this agent was built ({built_at}); waiting for the clock to be set"
            ),
        }
    })
}

/// How long to wait before attempt `attempts + 1` after `attempts` transient failures in a row:
/// one poll interval, doubling, up to 16 intervals and never more than 10 minutes (but never
/// less than one interval).
pub fn backoff(poll: Duration, attempts: u32) -> Duration {
    let cap = (poll * 16).min(Duration::from_secs(600)).max(poll);
    poll.saturating_mul(1u32 << attempts.saturating_sub(1).min(16)).min(cap)
}

/// Whether an I/O error means the filesystem has no room (or no quota) left.
pub fn is_no_space(e: &std::io::Error) -> bool {
    matches!(e.kind(), std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded)
}

/// Bytes available to the agent on the filesystem holding `dir`.
pub fn free_bytes(dir: &Path) -> Option<u64> {
    let s = rustix::fs::statvfs(dir).ok()?;
    Some(s.f_bavail.saturating_mul(s.f_frsize))
}

/// The wait for room on the disk: `needed` more bytes than the `free` ones in `dir`.
pub fn no_space(dir: &Path, needed: u64, free: Option<u64>) -> Waiting {
    let free = free.map_or_else(|| "unknown".to_owned(), bytes);
    Waiting {
        class: WaitClass::Disk,
        reason: format!("needs {} more, {free} free in {}", bytes(needed), dir.display()),
    }
}

/// A byte count for people: `812 MiB`, `3.5 KiB`, `17 B`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 || value >= 100.0 || value.fract() < 0.05 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_poll_interval_to_a_cap() {
        let ms = Duration::from_millis;
        let s = Duration::from_secs;
        // (poll interval, failures so far, wait)
        let cases = [
            (ms(200), 1, ms(200)),
            (ms(200), 2, ms(400)),
            (ms(200), 5, ms(3_200)),
            (ms(200), 6, ms(3_200)),
            (ms(200), 1_000, ms(3_200)),
            (s(30), 1, s(30)),
            (s(30), 4, s(240)),
            (s(30), 5, s(480)),
            (s(30), 6, s(480)),
            (s(60), 6, s(600)),
            (s(3_600), 1, s(3_600)),
            (s(3_600), 9, s(3_600)),
        ];
        for (poll, attempts, want) in cases {
            assert_eq!(backoff(poll, attempts), want, "poll {poll:?}, {attempts} failures");
        }
    }

    #[test]
    fn a_clock_before_the_build_is_waited_for() {
        let built = jiff::Timestamp::from_second(1_800_000_000).unwrap();
        let at = |s| jiff::Timestamp::from_second(s).unwrap();
        assert_eq!(clock_problem(at(1_800_000_000), built), None);
        assert_eq!(clock_problem(at(1_900_000_000), built), None);
        let w = clock_problem(at(0), built).unwrap();
        assert_eq!(w.class, WaitClass::Clock);
        assert!(w.reason.contains("1970-01-01T00:00:00Z") && w.reason.contains("2027-01-15"), "{}", w.reason);
        assert!(clock_problem(at(1_799_999_999), built).is_some());
        assert!(built_at() > at(1_700_000_000), "the build time is recorded: {}", built_at());
    }

    #[test]
    fn disk_waits_say_how_much_is_needed_and_free() {
        let w = no_space(Path::new("/opt/models"), 812 << 20, Some(120 << 20));
        assert_eq!(w.class, WaitClass::Disk);
        assert_eq!(w.reason, "needs 812 MiB more, 120 MiB free in /opt/models");
        for (n, text) in [(0, "0 B"), (17, "17 B"), (3584, "3.5 KiB"), (1 << 30, "1 GiB"), (150 << 20, "150 MiB")] {
            assert_eq!(bytes(n), text);
        }
        assert!(is_no_space(&std::io::Error::from_raw_os_error(28)), "ENOSPC");
        assert!(is_no_space(&std::io::Error::from_raw_os_error(122)), "EDQUOT");
        assert!(!is_no_space(&std::io::Error::from_raw_os_error(5)), "EIO");
        assert!(free_bytes(Path::new("/")).is_some());
    }
}
