//! Local inference on llama.cpp: one engine thread per loaded model serves many sequences with
//! continuous batching and a prefix cache; chat templates, constrained decoding and embeddings.
//!
//! Invariants:
//! - Only the engine thread touches the llama.cpp context; everyone else talks to it through channels.
//! - Content is never control: only the chat template's own text becomes control tokens; every
//!   string from messages, tools and raw completion prompts is tokenized as text (`prompt`).
//! - Every submitted request ends with exactly one `Event::Done` or `Event::Error`, unless the caller
//!   dropped its receiver (which cancels it).

mod bench;
mod embed;
mod engine;
mod error;
pub mod grammar;
pub mod prompt;
mod request;
mod residency;
mod scheduler;
pub mod template;
mod text_stream;

pub use bench::BenchReport;
pub use embed::{Embedder, LazyEmbedder};
pub use engine::{Engine, EngineConfig, EngineStats, ModelInfo, StatsSnapshot};
pub use error::InferError;
pub use grammar::{
    answer_with_numbers_grammar, parse_tool_calls, tool_call_grammar, tool_calls_grammar, ToolCall,
    ToolChoice, ToolSpec, DEFAULT_CALL_THRESHOLD, MAX_PARALLEL_CALLS,
};
pub use prompt::ControlTokens;
pub use request::{
    Completion, Constraint, Event, FinishReason, GenerateRequest, PromptToken, Usage,
};
pub use template::ChatTemplate;
