use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum InferError {
    #[error("cannot load model {path}: {message}")]
    Load { path: PathBuf, message: String },
    #[error("prompt is {prompt_tokens} tokens but this node allows {limit} per request (prompt + completion); shorten the prompt or raise context_per_request")]
    ContextOverflow { prompt_tokens: usize, limit: usize },
    /// Refused before tokenizing: even at the vocabulary's longest token per token, the prompt
    /// could not fit.
    #[error("prompt is {bytes} bytes, more than {limit} tokens can hold (this node allows {limit} per request, prompt + completion); shorten the prompt or raise context_per_request")]
    PromptTooLong { bytes: usize, limit: usize },
    #[error("server busy: {limit} requests already queued; retry later")]
    QueueFull { limit: usize },
    #[error("empty prompt")]
    EmptyPrompt,
    #[error("invalid output constraint: {0}")]
    Grammar(String),
    #[error("inference failed: {0}")]
    Decode(String),
    #[error("the inference engine has stopped")]
    EngineStopped,
    #[error(transparent)]
    Template(#[from] crate::template::TemplateError),
    #[error("session state {path}: {message}")]
    Session { path: PathBuf, message: String },
    #[error("embedding model: {0}")]
    Embedding(String),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
}
