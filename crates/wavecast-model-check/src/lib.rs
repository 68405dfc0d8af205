//! A health probe that knows it is a model: `wavecast-model-check` loads the active artifact,
//! checks its signature against the one recorded at publish time, runs the publisher's golden
//! inputs and compares the outputs, measures latency and peak memory against budgets, and
//! optionally compares with the previous version (drift). It prints one bounded JSON report and
//! exits 0 (healthy), 1 (unhealthy) or 2 (could not run).
//!
//! It is its own binary, never linked into the agent: the inference engine (`tract`) is large.
//! A device installs it and allowlists it like any exec probe.
//!
//! For the publisher and the agent: [`model::Model::parse`] and [`model::Model::signature`]
//! read a model's signature; [`expectations::Expectations::build`] makes the expectations from
//! a model, a golden `.npz` and the command line; [`bundle::pack`] makes the signed golden
//! bundle, [`bundle::read`] reads it; [`check::check`] (bytes) and [`check::run`] (files) run
//! the check; [`report::Report`] is its JSON.

pub mod bundle;
pub mod check;
pub mod cli;
mod compare;
pub mod expectations;
pub mod golden;
pub mod memory;
pub mod model;
pub mod npy;
pub mod report;
pub mod signature;
mod zip;

pub use check::{Previous, Request, Subject, check, run};
pub use expectations::{BuildOptions, Expectations, Tolerance};
pub use report::{Outcome, Reason, Report};
