//! Model turns of a run: a step's generation (local, or offloaded to the cloud), the task's
//! selection question, the summaries that keep a conversation in its window, and the answer
//! written from the record.

use std::sync::Arc;
use std::time::{Duration, Instant};

use edgewise_core::SamplingParams;
use edgewise_infer::{
    tool_calls_grammar, Completion, Engine, Event, GenerateRequest, InferError, ToolChoice,
    MAX_PARALLEL_CALLS,
};
use edgewise_store::{sha256_hex, AuditRecord};
use serde_json::{json, Value};

use super::{Agent, CloudAccess, StepRecord, DEFAULT_STEP_TOKENS};
use crate::cloud::{CloudError, CloudRequest};
use crate::conversation::{summary_request, Conversation, Fold};
use crate::runs::RunRecord;
use crate::selection::{ItemList, Selection};
use crate::tools::openai_tool;
use crate::AgentError;

impl Agent {
    /// One model turn: on the local engine, or on the cloud endpoint when the local model cannot
    /// take it and the agent may use the cloud. `Err` is the run's failure message. With
    /// `answer_numbers`, the turn is a text answer whose digits are only those numbers
    /// (`answer_with_numbers_grammar`; local engine only).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn generate_step(
        &self,
        messages: &[Value],
        tools_json: &[Value],
        grammar_tools: &[edgewise_infer::ToolSpec],
        choice: &ToolChoice,
        constrained: bool,
        seed: u32,
        answer_numbers: Option<&[String]>,
    ) -> Result<Generated, String> {
        let spec = &self.spec;
        let temperature = spec.model_config.temperature.unwrap_or(0.2);
        let max_tokens = self.step_tokens();
        let Some(engine) = &self.engine else {
            return self
                .offload(
                    messages,
                    grammar_tools,
                    choice,
                    seed,
                    "no local model is loaded".into(),
                )
                .await;
        };
        let prompt = render(engine, messages, tools_json)?;
        let mut req = GenerateRequest::new(prompt.clone());
        req.max_tokens = max_tokens;
        // The engine checks the window on the prompt it tokenizes anyway, and stops the answer at
        // the window's end.
        req.context_limit = spec.model_config.context_window;
        req.sampling = SamplingParams {
            temperature,
            seed,
            ..SamplingParams::default()
        };
        if let Some(numbers) = answer_numbers {
            req.constraint = Some(edgewise_infer::answer_with_numbers_grammar(numbers));
        } else if constrained && !grammar_tools.is_empty() {
            req.constraint = Some(
                tool_calls_grammar(grammar_tools, choice, self.calls_per_turn())
                    .map_err(|e| format!("tool grammar: {e}"))?,
            );
        }
        let local_failure = match generate(engine, req).await {
            Ok(c) => {
                return Ok(Generated {
                    cut_off: c.finish_reason == edgewise_infer::FinishReason::Length,
                    text: c.text,
                    usage: c.usage,
                    prompt,
                    model: None,
                    offload_reason: None,
                })
            }
            Err(e) => e,
        };
        let why = match &local_failure {
            InferError::ContextOverflow { prompt_tokens, limit } => format!(
                "the conversation ({prompt_tokens} tokens) no longer fits the context window ({limit} tokens, model_config.context_window)"
            ),
            e => format!("the model failed: {e}"),
        };
        // Failures that another model could get past; a bad grammar or request would fail there too.
        let offloadable = matches!(
            local_failure,
            InferError::ContextOverflow { .. }
                | InferError::PromptTooLong { .. }
                | InferError::QueueFull { .. }
                | InferError::Decode(_)
                | InferError::EngineStopped
        );
        if !offloadable {
            return Err(why);
        }
        self.offload(messages, grammar_tools, choice, seed, why)
            .await
    }

    /// Asks the model which field and value of `list` the task selects by (one short greedy
    /// generation under a grammar), keeps the answer if it holds up (`selection`), and audits
    /// both. Local engine only: a cloud model is not asked, and nothing is checked.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn select_items(
        &self,
        task: &str,
        list: &ItemList,
        observation: &str,
        ground: &crate::grounding::Grounding,
        record: &RunRecord,
        step: u32,
        seed: u32,
    ) -> Result<Option<Selection>, AgentError> {
        let Some(engine) = &self.engine else {
            return Ok(None);
        };
        let (question, schema) = list.question(task, observation);
        let prompt = match render(engine, &[json!({"role": "user", "content": question})], &[]) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "selection question not rendered");
                return Ok(None);
            }
        };
        let mut req = GenerateRequest::new(prompt.clone());
        req.max_tokens = 64;
        req.context_limit = self.spec.model_config.context_window;
        req.sampling = SamplingParams {
            temperature: 0.0,
            seed,
            ..SamplingParams::default()
        };
        req.constraint = Some(edgewise_infer::Constraint::JsonSchema(schema));
        let started = Instant::now();
        let answer = match generate(engine, req).await {
            Ok(c) => c.text,
            Err(e) => {
                tracing::warn!(error = %e, "selection question not answered");
                return Ok(None);
            }
        };
        let picked = list.select(task, &answer, ground);
        self.audit(AuditRecord {
            kind: "selection".into(),
            run: record.run.clone(),
            step: Some(step),
            model: Some(record.model.clone()),
            prompt_sha256: Some(sha256_hex(prompt.as_bytes())),
            tool: Some(list.tool().to_owned()),
            result: Some(answer.clone()),
            result_sha256: Some(sha256_hex(answer.as_bytes())),
            decision: if picked.is_some() {
                "selected"
            } else {
                "no_selection"
            }
            .into(),
            detail: picked.as_ref().map(Selection::describe),
            duration_ms: started.elapsed().as_millis() as u64,
            ..Default::default()
        })?;
        Ok(picked)
    }

    /// Calls one model turn may hold (`workflow_policy.parallel_tool_calls`).
    pub(super) fn calls_per_turn(&self) -> usize {
        if self.spec.workflow_policy.parallel_tool_calls {
            MAX_PARALLEL_CALLS
        } else {
            1
        }
    }

    pub(super) fn step_tokens(&self) -> u32 {
        self.spec
            .model_config
            .max_tokens
            .unwrap_or(DEFAULT_STEP_TOKENS)
    }

    /// The memory manager: while the next prompt plus room for the answer would not fit the
    /// context window, older turns are summarised by the model and replaced by the summary
    /// (first keeping the last turn verbatim, then folding it too). Local engine only: a cloud
    /// endpoint has a window of its own. If the prompt still does not fit, the step fails or
    /// offloads as before.
    pub(super) async fn fit_context(
        &self,
        conversation: &mut Conversation,
        tools_json: &[Value],
        record: &mut RunRecord,
        step: u32,
        seed: u32,
    ) -> Result<(), String> {
        let Some(engine) = &self.engine else {
            return Ok(());
        };
        let window = self.context_window(engine);
        // Room kept for the answer; a quarter of the window at most, so a large max_tokens on a
        // small window does not fold away every observation.
        let answer_room = self.step_tokens().min(window / 4);
        for keep_last in [true, false] {
            let prompt = render(engine, &conversation.messages(), tools_json)?;
            // A token covers at least one byte (plus BOS and a leading-space marker), so a
            // prompt this short fits without asking the engine thread to tokenize it.
            if prompt.len() as u64 + 2 + u64::from(answer_room) <= u64::from(window) {
                return Ok(());
            }
            let tokens = count_tokens(engine, prompt).await?;
            if tokens as u32 + answer_room <= window {
                return Ok(());
            }
            let Some(fold) = conversation.fold(keep_last) else {
                continue;
            };
            let started = Instant::now();
            let (summary, summary_prompt) = self
                .summarise(engine, conversation.task(), &fold, window, seed)
                .await?;
            let detail = format!(
                "{} earlier messages replaced by a summary: the prompt ({tokens} tokens) and {answer_room} tokens for the answer exceed the context window ({window} tokens)",
                fold.messages
            );
            tracing::info!(
                step,
                tokens,
                window,
                messages = fold.messages,
                "summarised older turns"
            );
            self.audit(AuditRecord {
                kind: "summarise".into(),
                run: record.run.clone(),
                step: Some(step),
                model: Some(record.model.clone()),
                prompt_sha256: Some(sha256_hex(summary_prompt.as_bytes())),
                result: Some(summary.clone()),
                result_sha256: Some(sha256_hex(summary.as_bytes())),
                result_bytes: Some(summary.len() as u64),
                decision: "summarise".into(),
                detail: Some(detail),
                duration_ms: started.elapsed().as_millis() as u64,
                ..Default::default()
            })
            .map_err(|e| e.to_string())?;
            conversation.apply(fold, summary);
            record.summaries += 1;
        }
        Ok(())
    }

    /// The tokens one request of this agent may hold on `engine`.
    pub(super) fn context_window(&self, engine: &Engine) -> u32 {
        let node = engine.context_per_request();
        self.spec
            .model_config
            .context_window
            .map_or(node, |w| w.min(node))
    }

    /// Asks the model to condense `fold`; returns the summary and the prompt it was made from.
    /// Each message is cut short enough for the request to fit the window with room for the
    /// summary.
    pub(super) async fn summarise(
        &self,
        engine: &Arc<Engine>,
        task: &str,
        fold: &Fold,
        window: u32,
        seed: u32,
    ) -> Result<(String, String), String> {
        let summary_tokens = (window / 4).clamp(64, 256);
        let mut max_chars = 2000usize;
        let mut prompt = String::new();
        for _ in 0..4 {
            let request = summary_request(task, fold, max_chars, summary_tokens * 2 / 3);
            prompt = render(engine, &request, &[])?;
            let tokens = count_tokens(engine, prompt.clone()).await? as u32;
            if tokens + summary_tokens <= window {
                break;
            }
            let share = (window - summary_tokens) as f64 / tokens as f64;
            max_chars = ((max_chars as f64 * share * 0.9) as usize).max(40);
        }
        let mut req = GenerateRequest::new(prompt.clone());
        req.max_tokens = summary_tokens;
        req.context_limit = Some(window);
        req.sampling = SamplingParams {
            temperature: 0.2,
            seed,
            ..SamplingParams::default()
        };
        let summary = generate(engine, req)
            .await
            .map_err(|e| format!("summarising the earlier conversation: {e}"))?
            .text
            .trim()
            .to_owned();
        if summary.is_empty() {
            return Err(
                "summarising the earlier conversation: the model wrote nothing; raise model_config.context_window".into(),
            );
        }
        Ok((summary, prompt))
    }

    /// The step on the cloud endpoint (when the agent may use it), retried up to
    /// `workflow_policy.max_retries` times with backoff; an open breaker ends the retries at once.
    pub(super) async fn offload(
        &self,
        messages: &[Value],
        tools: &[edgewise_infer::ToolSpec],
        choice: &ToolChoice,
        seed: u32,
        reason: String,
    ) -> Result<Generated, String> {
        let CloudAccess::Available(cloud) = &self.cloud else {
            return Err(format!("{reason} ({})", self.cloud.why_not()));
        };
        tracing::warn!(%reason, "local model cannot take this step; offloading to the cloud");
        let tools_json: Vec<Value> = tools.iter().map(openai_tool).collect();
        let request = CloudRequest {
            messages,
            tools: &tools_json,
            choice,
            temperature: self.spec.model_config.temperature.unwrap_or(0.2),
            max_tokens: self.step_tokens(),
            seed,
        };
        let attempts = self.spec.workflow_policy.max_retries + 1;
        let mut last = String::new();
        for attempt in 0..attempts {
            match cloud.step(&request).await {
                Ok(c) => {
                    return Ok(Generated {
                        cut_off: false,
                        text: c.text,
                        usage: edgewise_infer::Usage {
                            prompt_tokens: c.prompt_tokens,
                            cached_tokens: c.cached_tokens,
                            completion_tokens: c.completion_tokens,
                            ..Default::default()
                        },
                        // What was sent, for the audit digest.
                        prompt: serde_json::to_string(messages).unwrap_or_default(),
                        model: Some(cloud.label()),
                        offload_reason: Some(reason),
                    });
                }
                Err(e @ CloudError::BreakerOpen { .. }) => {
                    return Err(format!("{reason}; {e}"));
                }
                Err(e) => {
                    tracing::warn!(attempt = attempt + 1, error = %e, "cloud step failed");
                    last = e.to_string();
                    if attempt + 1 < attempts {
                        let backoff = Duration::from_millis(250 << attempt.min(4));
                        tokio::time::sleep(backoff).await;
                    }
                }
            }
        }
        Err(format!(
            "{reason}; the cloud fallback failed {attempts} times (workflow_policy.max_retries is {}): {last}",
            self.spec.workflow_policy.max_retries
        ))
    }
}

/// The prompt for `messages` in the model's own chat template.
fn render(engine: &Engine, messages: &[Value], tools_json: &[Value]) -> Result<String, String> {
    let template = engine.template();
    template
        .render(
            messages,
            (!tools_json.is_empty() && template.supports_tools()).then_some(tools_json),
            true,
        )
        .map_err(|e| format!("chat template: {e}"))
}

/// Tokenizes on the engine thread, off the async runtime.
async fn count_tokens(engine: &Arc<Engine>, text: String) -> Result<usize, String> {
    let engine = engine.clone();
    tokio::task::spawn_blocking(move || engine.count_tokens(&text))
        .await
        .map_err(|e| format!("counting tokens: {e}"))?
        .map_err(|e| format!("counting tokens: {e}"))
}

/// The request for an answer written from the run's record: the task and each call made with
/// what it returned, in a context of their own.
pub(super) fn answer_request(task: &str, steps: &[StepRecord]) -> Vec<Value> {
    // The record shares a small context window with the task and the answer: results get an
    // equal share of RECORD_CHARS, each cut with a note when longer.
    const RECORD_CHARS: usize = 1500;
    let calls: Vec<&StepRecord> = steps.iter().filter(|s| s.decision == "call").collect();
    let share = RECORD_CHARS / calls.len().max(1);
    let mut record = String::new();
    for (i, s) in calls.iter().enumerate() {
        let args = s
            .arguments
            .as_ref()
            .map(Value::to_string)
            .unwrap_or_default();
        let total = s.observation.chars().count();
        let result = if total > share {
            let head: String = s.observation.chars().take(share).collect();
            format!("{head} [... {} more characters]", total - share)
        } else {
            s.observation.clone()
        };
        record.push_str(&format!(
            "{}. {}({args}) returned:\n{result}\n",
            i + 1,
            s.tool.as_deref().unwrap_or_default(),
        ));
    }
    vec![
        json!({"role": "system", "content": "You write the final answer of an agent that has finished its tool calls. Answer the task in one or two sentences, saying what was found and what was done, with the exact names and values from the record."}),
        json!({"role": "user", "content": format!("Task: {task}\n\nThe agent's tool calls:\n{record}\nThe final answer:")}),
    ]
}

/// What one model turn produced, wherever it ran.
pub(super) struct Generated {
    pub(super) text: String,
    /// The local model hit `max_tokens` or the context limit before it finished.
    pub(super) cut_off: bool,
    pub(super) usage: edgewise_infer::Usage,
    /// The rendered prompt (local) or the messages as sent (cloud): what the audit digests.
    pub(super) prompt: String,
    pub(super) model: Option<String>,
    pub(super) offload_reason: Option<String>,
}

/// One generation to its end; dropping the future (run timeout, cancel) cancels it in the engine.
pub(crate) async fn generate(
    engine: &Engine,
    req: GenerateRequest,
) -> Result<Completion, InferError> {
    let mut rx = engine.submit(req)?;
    while let Some(event) = rx.recv().await {
        match event {
            Event::Delta(_) => {}
            Event::Done(c) => return Ok(c),
            Event::Error(e) => return Err(e),
        }
    }
    Err(InferError::EngineStopped)
}
