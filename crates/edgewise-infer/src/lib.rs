//! Local inference on llama.cpp: one engine thread per loaded model serves many sequences with
//! continuous batching and a prefix cache; chat templates, constrained decoding and embeddings.
//!
//! Invariants:
//! - Only the engine thread touches the llama.cpp context; everyone else talks to it through channels.
//! - Every submitted request ends with exactly one `Event::Done` or `Event::Error`, unless the caller
//!   dropped its receiver (which cancels it).

mod bench;
mod embed;
mod engine;
mod error;
pub mod grammar;
mod request;
mod residency;
mod scheduler;
pub mod template;
mod text_stream;

pub use bench::BenchReport;
pub use embed::{Embedder, LazyEmbedder};
pub use engine::{Engine, EngineConfig, EngineStats, ModelInfo, StatsSnapshot};
pub use error::InferError;
pub use grammar::{parse_tool_calls, tool_call_grammar, ToolCall, ToolChoice, ToolSpec};
pub use request::{Completion, Constraint, Event, FinishReason, GenerateRequest, Usage};
pub use template::ChatTemplate;
