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
    #[error(transparent)]
    Store(#[from] edgewise_store::StoreError),
    #[error(transparent)]
    Infer(#[from] edgewise_infer::InferError),
    #[error("{0}")]
    Other(String),
}
