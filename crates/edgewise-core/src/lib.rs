//! Types shared by every Edgewise crate: where data lives, the node configuration, sampling knobs.
//!
//! Invariant: this crate does no network I/O and starts no threads; it only reads the config file.

pub mod config;
pub mod paths;
pub mod sampling;

pub use config::{ConfigError, NodeConfig};
pub use paths::DataDir;
pub use sampling::SamplingParams;
