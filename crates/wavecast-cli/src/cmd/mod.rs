//! One module per top-level command.

pub mod artifact;
pub mod audit;
pub mod demo;
pub mod device;
pub mod group;
pub mod init;
pub mod rollout;
pub mod root;
pub mod server;
pub mod sim;
pub mod status;
pub mod token;
