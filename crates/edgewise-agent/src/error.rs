#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("capability '{name}' ({endpoint}): {message}")]
    Capability {
        name: String,
        endpoint: String,
        message: String,
    },
    /// The spec asks for more than the node's `agent_policy` allows; nothing of it was started.
    #[error(transparent)]
    Policy(#[from] edgewise_core::SpecError),
    /// A run a neighbour placed here is beyond this node's `mesh.accept_runs`: the calling node may
    /// not place runs here, or every reason its spec is refused. Nothing of it was started.
    #[error("placed run refused by this node's mesh.accept_runs: {0}")]
    PlacedRefused(edgewise_core::PlacedRefusal),
    /// A neighbour chose the id of a run this node already has a record of: a placed run never
    /// replaces a record (this node's own agent's, or an earlier placement's).
    #[error("run '{run}' of agent '{agent}' already has a record on this node; a placed run never replaces one (place it under a new run id)")]
    RunExists { agent: String, run: String },
    #[error(transparent)]
    Store(#[from] edgewise_store::StoreError),
    #[error(transparent)]
    Infer(#[from] edgewise_infer::InferError),
    #[error("{0}")]
    Other(String),
}
