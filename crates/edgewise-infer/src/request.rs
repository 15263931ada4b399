//! What callers send to the engine and what comes back.

use edgewise_core::SamplingParams;
use serde::Serialize;

/// Output constraint, compiled by llguidance into a token mask.
#[derive(Debug, Clone, PartialEq)]
pub enum Constraint {
    JsonSchema(serde_json::Value),
    Regex(String),
    Lark(String),
}

#[derive(Debug, Clone)]
pub struct GenerateRequest {
    /// Fully rendered prompt (chat template already applied). Special-token strings in it become
    /// control tokens except inside marked plain-text spans: build it with `ChatTemplate::render`,
    /// or pass raw text through `prompt::plain_text` unless it is trusted template text.
    pub prompt: String,
    pub max_tokens: u32,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    pub constraint: Option<Constraint>,
    /// Tighter prompt + completion limit than the engine's `context_per_request` (an agent's
    /// `context_window`); checked against the prompt the engine tokenizes anyway.
    pub context_limit: Option<u32>,
    /// The explicit call-or-answer decision (`tool_choice: auto`): when the constraint admits both
    /// text and a tool call, the first token may open a call only if the model puts at least this
    /// probability on calling (summed over call-opening tokens among those the grammar allows), so
    /// a weak match is answered in text instead of forced into the nearest tool. `None`: the
    /// sampler alone decides.
    pub call_threshold: Option<f32>,
}

impl GenerateRequest {
    pub fn new(prompt: impl Into<String>) -> Self {
        Self {
            prompt: prompt.into(),
            max_tokens: 256,
            sampling: SamplingParams::default(),
            stop: Vec::new(),
            constraint: None,
            context_limit: None,
            call_threshold: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// End-of-generation token, stop sequence, or the grammar completed.
    Stop,
    /// `max_tokens` or the per-request context limit.
    Length,
}

/// Per-request figures, reported when a generation ends.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    /// Prompt tokens whose KV came from the prefix cache instead of being prefilled.
    pub cached_tokens: u32,
    /// Tokens appended by grammar fast-forward (no sampling step).
    pub forced_tokens: u32,
    pub queue_ms: f64,
    /// Request admission to first generated token.
    pub time_to_first_token_ms: f64,
    pub generation_ms: f64,
    /// With `call_threshold`: the probability the model put on opening a tool call, which the
    /// decision compared with the threshold.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub call_probability: Option<f32>,
}

#[derive(Debug, Clone)]
pub struct Completion {
    pub text: String,
    pub finish_reason: FinishReason,
    pub usage: Usage,
}

/// One token of a tokenized prompt, for inspecting what the model reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PromptToken {
    pub id: i32,
    /// The token's text (control tokens spelled out).
    pub piece: String,
    /// A control token (`<|im_start|>`): structure, not text.
    pub control: bool,
}

#[derive(Debug)]
pub enum Event {
    /// New text (whole UTF-8 characters; stop sequences already removed).
    Delta(String),
    Done(Completion),
    Error(crate::InferError),
}
