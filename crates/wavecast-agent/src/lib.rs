//! The wavecast device agent.
//!
//! It never applies bytes it has not verified: a model reaches the application's path only
//! after the TUF metadata (pinned root, our own rollback record), the director's signed
//! assignment and the SHA-256 of the received bytes all agree. It swaps atomically, keeps the
//! previous version beside the new one, probes the application, rolls back by itself, and
//! journals every step so a crash at any instant resumes consistently.
//!
//! [`config`] reads `agent.toml`; [`agent`] is the loop; [`director`] reads and checks the signed
//! assignment doc; [`roots`] follows the trust root through rotations; [`fetch`], [`tuf`],
//! [`swap`] and [`probe`] are its steps; [`state`] is everything kept on disk; [`cli`] is the
//! binary. [`net`] bounds every network read,
//! [`heartbeat`] tells the server a long step is progress, and [`wait`] decides what is waited
//! out rather than refused.

pub mod agent;
pub mod cli;
pub mod config;
pub mod director;
pub mod fetch;
pub mod heartbeat;
pub mod net;
pub mod probe;
pub mod roots;
pub mod state;
pub mod status;
pub mod swap;
pub mod tuf;
pub mod wait;

pub use agent::Agent;
pub use config::AgentConfig;
