//! Agents: a spec (edgewise-core) becomes a loop that reasons with a local model, calls tools under
//! policy, and writes every step to the audit log.
//!
//! Invariants:
//! - The model can only emit a call to a registered tool with schema-valid arguments (grammar);
//!   the runtime still validates every call, so an unconstrained model is refused the same way.
//! - A step is appended to the audit log before it is reported to anyone.
//! - `egress_allowed: false` is checked against resolved addresses, not names, and such an agent
//!   never gets the cloud fallback, whatever its URL.
//! - A spec is checked against the node's `agent_policy` in `AgentHost::tools`, which every way a
//!   spec of this node's arrives goes through, before any of its tools is built or any command
//!   starts; a neighbour's placed spec is checked against `mesh.accept_runs` instead, in
//!   `AgentHost::placed_spec` and `placed_tools`, never against `agent_policy`; its KV (its
//!   components' buckets included) is scoped to that node, its components keep only what
//!   `mesh.accept_runs` allows of their manifests' grants, and this node's LAN is not its to reach.
//! - This host and the link (loopback, link-local, multicast, ...) are reachable by agent tools
//!   only where the node's policy lists them, whatever the spec's egress.

pub mod call_decision;
pub mod cloud;
pub mod components;
mod conversation;
pub mod egress;
mod error;
pub mod eval;
pub mod grounding;
mod host;
pub mod knowledge;
mod model_choice;
pub mod observation;
mod runner;
pub mod runs;
pub mod selection;
pub mod tools;
pub mod triggers;

pub use error::AgentError;
pub use host::AgentHost;
pub use model_choice::{choose_model, placed_model, ModelChoice};
pub use runner::{
    new_run_id, Agent, CloudAccess, RunOptions, RunOutcome, RunStatus, StepEvent, StepRecord,
};
pub use runs::{RunRecord, RunStore};
pub use tools::{Tool, ToolError, ToolRegistry};
