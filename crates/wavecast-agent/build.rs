//! Records when the agent was built, as a floor for the device's clock.
//!
//! A device whose clock reads a time before its own agent was built has an obviously wrong
//! clock (a board that booted in 1970, a dead RTC battery): expiry checks against it mean
//! nothing, so the agent waits for the clock instead of trusting it. `SOURCE_DATE_EPOCH` wins
//! when set, for reproducible builds.

use std::time::{SystemTime, UNIX_EPOCH};

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    let built = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or_else(|| SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0));
    println!("cargo:rustc-env=WAVECAST_AGENT_BUILT_AT={built}");
}
