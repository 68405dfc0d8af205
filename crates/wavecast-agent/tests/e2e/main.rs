//! Real-process end-to-end tests of the device agent: a real `wavecast` server on a real port
//! (in this process, so it can be stopped and restarted), the real `wavecast-agent` binary,
//! real probes, an attacker proxy, and SIGKILL at every crash point.

// A panic is how a test reports failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod support;

mod attacker;
mod bad_artifacts;
mod crash;
mod end_to_end;
mod enroll;
mod heartbeats;
mod hostile;
mod model_check;
mod probes;
mod revert;
mod rotation;
mod server_down;
mod transient;
