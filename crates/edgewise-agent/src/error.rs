#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("capability '{name}' ({endpoint}): {message}")]
    Capability {
        name: String,
        endpoint: String,
        message: String,
    },
    #[error(transparent)]
    Store(#[from] edgewise_store::StoreError),
    #[error(transparent)]
    Infer(#[from] edgewise_infer::InferError),
    #[error("{0}")]
    Other(String),
}
