//! wavecast's TUF repository, split between an offline publisher and an online server.
//!
//! Root and targets keys stay with the publisher: [`publish`] signs a new targets file on the
//! operator's machine. The server holds only the snapshot, timestamp and director keys:
//! [`repo`] checks a submitted targets file against the root and signs snapshot and timestamp
//! over its exact bytes. [`golden`] binds a model's golden set to its target. [`keys`] makes and loads keys; [`root`] builds the trust anchor.
//! All of it sits on `tough`'s schema types, so what we sign is what any TUF client verifies.

// The public API of the trust crates is read by people deciding what to trust: every item
// says what it is for. (Other crates document where it adds something, not by rule.)
#![warn(missing_docs)]

pub mod golden;
pub mod keys;
pub mod publish;
pub mod repo;
pub mod root;

pub use tough;

/// The TUF specification version we write.
pub const SPEC_VERSION: &str = "1.0.0";

/// A custom field in a target naming the hardware it is built for.
pub const HARDWARE_FIELD: &str = "hardware";

/// The root.json field that carries wavecast's own public keys (the director's), signed by the
/// root key together with the rest of the root.
pub const WAVECAST_ROOT_FIELD: &str = "x-wavecast";

/// Rounds a time down to whole seconds: other TUF clients reject fractional `expires`.
pub fn whole_seconds(t: jiff::Timestamp) -> jiff::Timestamp {
    jiff::Timestamp::from_second(t.as_second()).unwrap_or(t)
}
