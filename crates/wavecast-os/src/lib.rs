//! The few operating-system helpers every wavecast binary shares, so each exists once.
//!
//! `wavecast-core` does no IO by design; whatever touches the OS and is needed by more than one
//! of the server, the CLI and the agent lives here instead: a durable atomic file write, the one
//! function that reads the wall clock, the shutdown signal, the error-chain formatter used
//! where `anyhow`'s `{:#}` is not available, and whether output may carry colours. It depends on nothing but `jiff` and `tokio`, so
//! the agent can use it without growing.

pub mod clock;
pub mod error;
pub mod fs;
pub mod signal;
pub mod term;
