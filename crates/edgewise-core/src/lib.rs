//! Types shared by every Edgewise crate: where data lives, the node configuration, sampling knobs.
//!
//! Invariant: this crate does no network I/O and starts no threads; its only I/O is reading the
//! config and agent spec files it is pointed at.

pub mod accept_runs;
pub mod admin_token;
pub mod agent_policy;
pub mod agent_spec;
pub mod breaker;
pub mod config;
pub mod grants;
pub mod paths;
pub mod sampling;
pub mod signing;

pub use accept_runs::{placed_kv_namespace, AcceptRuns, PlacedLimits, PlacedRefusal};
pub use agent_policy::{AgentPolicy, PolicyScope, Violation};
pub use agent_spec::{
    AgentSpec, Capability, Endpoint, GroundingRule, ObservationFormat, RuntimeKind, SpecError,
    Switch,
};
pub use breaker::{BreakerOpen, CircuitBreaker};
/// The type of every memory size in config and specs (`memory_limit`).
pub use bytesize::ByteSize;
pub use config::{
    AuditContent, CloudEndpoint, ConfigError, ConflictPolicy, MeshConfig, MeshRole, MeshShare,
    NodeConfig, NodeLimits, SyncConfig,
};
pub use grants::{ComponentManifest, FileGrant, Grants, GrantsWidened, HostInterface};
pub use paths::DataDir;
pub use sampling::SamplingParams;
