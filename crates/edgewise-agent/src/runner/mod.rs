//! The agent loop: render → generate (grammar-constrained) → parse → validate → call → observe,
//! until the model answers or a limit ends the run. Each step is audited before it is reported.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use edgewise_core::{AgentSpec, AuditContent};
use edgewise_infer::{
    grammar::describe_tools_for_prompt, parse_tool_calls, Engine, ToolCall, ToolChoice,
};
use edgewise_store::{sha256_hex, AuditLog, AuditRecord, Kv};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::cloud::CloudModel;
use crate::conversation::Conversation;
use crate::runs::{RunRecord, RunStore};
use crate::selection::Selection;
use crate::tools::{ToolContext, ToolError, ToolRegistry};
use crate::AgentError;

mod generation;
mod verdict;

use generation::answer_request;
pub(crate) use generation::generate;
pub(crate) use verdict::collect_strings;
use verdict::{echoes, shown_again, Verdict};

const CACHE: &str = "edgewise.result-cache";
const DEFAULT_STEP_TOKENS: u32 = edgewise_core::agent_spec::DEFAULT_MAX_TOKENS;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Running,
    Completed,
    /// Tool failures beyond `max_retries`, a model error, or a context overflow.
    Failed,
    /// `limits.max_steps` reached without an answer.
    StepLimit,
    /// `limits.timeout` passed.
    Timeout,
    /// Stopped on request (API `DELETE`, node shutdown).
    Cancelled,
    /// The node stopped mid-run (found at the next start).
    Interrupted,
}

/// One model turn and what the runtime did with it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepRecord {
    pub step: u32,
    /// `call`, `refused`, `tool_error` or `answer`.
    pub decision: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments: Option<Value>,
    /// The tool's result or error, as the model sees it; the answer for `answer` steps.
    pub observation: String,
    /// What the model generated, verbatim.
    pub output: String,
    pub prompt_tokens: u32,
    /// Prompt tokens whose KV was reused from earlier steps.
    pub cached_tokens: u32,
    /// Prompt tokens this step had to prefill.
    pub prefilled_tokens: u32,
    pub completion_tokens: u32,
    pub forced_tokens: u32,
    pub generation_ms: f64,
    pub tool_ms: f64,
    /// Set when another model than the run's generated this step (`cloud:MODEL` after the local
    /// model failed; `offload_reason` says why).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offload_reason: Option<String>,
    /// Set when a neighbour ran this step (the run was placed on the mesh).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

impl StepRecord {
    /// The step's audit record: what was called with what, what came back, in what time.
    /// `run_model` is the run's model, for steps that did not name another.
    pub fn audit_record(&self, run_model: &str) -> AuditRecord {
        AuditRecord {
            kind: "step".into(),
            step: Some(self.step),
            model: Some(self.model.clone().unwrap_or_else(|| run_model.to_owned())),
            tool: self.tool.clone(),
            arguments: self.arguments.clone(),
            arguments_sha256: self
                .arguments
                .as_ref()
                .map(|a| sha256_hex(a.to_string().as_bytes())),
            result: Some(self.observation.clone()),
            result_sha256: Some(sha256_hex(self.observation.as_bytes())),
            result_bytes: Some(self.observation.len() as u64),
            decision: self.decision.clone(),
            duration_ms: (self.generation_ms + self.tool_ms) as u64,
            ..Default::default()
        }
    }
}

#[derive(Debug, Clone)]
pub enum StepEvent {
    Started { run: String, model: String },
    Step(StepRecord),
    Finished(RunOutcome),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunOutcome {
    pub agent: String,
    pub run: String,
    pub status: RunStatus,
    pub answer: Option<String>,
    pub error: Option<String>,
    pub cached: bool,
    /// Times older turns were summarised to fit the context window.
    pub summaries: u32,
    pub steps: Vec<StepRecord>,
}

#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Grammar-constrain tool calls (on by default; off only to measure what constraints buy).
    pub constrained: bool,
    /// The first N steps must be tool calls (benchmarks that need a fixed number of steps).
    pub force_tool_steps: u32,
    pub run_id: Option<String>,
    /// Overrides the spec's sampling seed.
    pub seed: Option<u32>,
    /// Cancelling ends the run with status `cancelled` (the generation in flight is dropped).
    pub cancel: Option<CancellationToken>,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            constrained: true,
            force_tool_steps: 0,
            run_id: None,
            seed: None,
            cancel: None,
        }
    }
}

/// Whether an agent may fall back to the node's cloud endpoint, and if not, why not (said in the
/// error of a step the local model could not take).
#[derive(Clone)]
pub enum CloudAccess {
    Available(Arc<CloudModel>),
    /// The agent's policy forbids egress.
    Forbidden,
    NotConfigured,
    /// The node config names an endpoint that cannot be used (message says why).
    Misconfigured(String),
}

impl CloudAccess {
    pub(crate) fn why_not(&self) -> String {
        match self {
            CloudAccess::Available(_) => String::new(),
            CloudAccess::Forbidden => {
                "no cloud fallback: the agent's policy has egress_allowed: false".into()
            }
            CloudAccess::NotConfigured => {
                "no cloud fallback: the node config has no `cloud` endpoint".into()
            }
            CloudAccess::Misconfigured(m) => format!("no cloud fallback: {m}"),
        }
    }
}

/// A loaded agent: spec, tools and the node services it runs on.
pub struct Agent {
    pub spec: AgentSpec,
    tools: ToolRegistry,
    /// None when the local model could not be loaded and every step goes to the cloud.
    engine: Option<Arc<Engine>>,
    cloud: CloudAccess,
    audit: Arc<AuditLog>,
    kv: Arc<Kv>,
    runs: RunStore,
    node: String,
    audit_content: AuditContent,
    /// `memory.knowledge`: the node's vector memory and embedder.
    knowledge: Arc<crate::knowledge::KnowledgeSlot>,
    embedder: Option<Arc<edgewise_infer::LazyEmbedder>>,
    /// The neighbour that placed this agent's runs here, if one did (see `cache_key`).
    placed_by: Option<String>,
}

impl Agent {
    /// `tools` come from `ToolRegistry::from_spec(&spec, ctx)`, built by the caller so that a spec
    /// with an unusable capability fails before the model is loaded.
    ///
    /// Without an engine every step goes to the cloud, or fails saying why it cannot.
    pub fn new(
        spec: AgentSpec,
        tools: ToolRegistry,
        ctx: &ToolContext,
        engine: Option<Arc<Engine>>,
        cloud: CloudAccess,
        audit: Arc<AuditLog>,
        node: String,
    ) -> Self {
        Self {
            spec,
            tools,
            engine,
            cloud,
            audit,
            kv: ctx.kv.clone(),
            runs: RunStore::new(ctx.kv.clone()),
            node,
            audit_content: ctx.config.audit_content,
            knowledge: ctx.knowledge.clone(),
            embedder: ctx.embedder.clone(),
            placed_by: ctx.placed_by.clone(),
        }
    }

    /// `memory.knowledge`: the task preceded by the nearest passages, each with its id (small
    /// models answer from passages reliably when they come right before the question). The
    /// retrieval is audited with the ids it found.
    async fn with_knowledge(&self, task: &str, run: &str) -> Result<String, String> {
        let Some(mem) = &self.spec.memory.knowledge else {
            return Ok(task.to_owned());
        };
        let hits = crate::knowledge::search(
            self.knowledge.clone(),
            self.embedder.clone(),
            &mem.collection,
            task,
            mem.passages.max(1),
            Default::default(),
        )
        .await
        .map_err(|e| format!("memory.knowledge: {e}"))?;
        let ids: Vec<&str> = hits.iter().map(|h| h.id.as_str()).collect();
        self.audit(AuditRecord {
            kind: "retrieve".into(),
            run: run.to_owned(),
            decision: "retrieve".into(),
            tool: Some(format!("knowledge:{}", mem.collection)),
            result: Some(ids.join(" ")),
            ..Default::default()
        })
        .map_err(|e| e.to_string())?;
        let mut out = String::new();
        for h in &hits {
            // One line per passage: a 0.5B model echoes passages that keep their line breaks.
            let text = h.text.split_whitespace().collect::<Vec<_>>().join(" ");
            out.push_str(&format!("Passage [{}]: {text}\n\n", h.id));
        }
        out.push_str("Question: ");
        out.push_str(task);
        Ok(out)
    }

    /// The model this agent's runs use (`cloud:MODEL` when there is no local one).
    pub fn model_name(&self) -> String {
        match (&self.engine, &self.cloud) {
            (Some(e), _) => e.info().name.clone(),
            (None, CloudAccess::Available(c)) => c.label(),
            (None, _) => String::new(),
        }
    }

    pub fn tools(&self) -> &ToolRegistry {
        &self.tools
    }

    pub fn runs(&self) -> &RunStore {
        &self.runs
    }

    fn system_prompt(&self) -> String {
        let mut s = self.spec.instructions.clone().unwrap_or_else(|| {
            format!(
                "You are {}, an autonomous agent on an edge node. You see and change the world only through your tools. Read each tool result carefully and copy names and numbers exactly as they appear in it. When the task is done, give a short final answer that says what you found and what you did, with those names and numbers.",
                self.spec.agent_id
            )
        });

        let prompt_lists_tools = self
            .engine
            .as_ref()
            .is_some_and(|e| !e.template().supports_tools());
        if !self.tools.is_empty() && prompt_lists_tools {
            s.push_str("\n\n");
            s.push_str(&describe_tools_for_prompt(&self.tools.specs()));
        }
        s
    }

    fn audit(&self, mut rec: AuditRecord) -> Result<(), AgentError> {
        rec.node = self.node.clone();
        rec.agent = self.spec.agent_id.clone();
        // A placed run's records are told apart from this node's own agent of the same id.
        rec.placed_by = self.placed_by.clone();
        if self.audit_content == AuditContent::Digest {
            rec.arguments = None;
            rec.result = None;
        }
        self.audit.append(&rec)?;
        Ok(())
    }

    fn cache_key(&self, task: &str) -> String {
        let normalized = task
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .to_lowercase();
        // A placed run's answers are kept apart from this node's agent of the same id (and from
        // other neighbours'): one could otherwise read, or plant, another's cached answer.
        let scope = match &self.placed_by {
            Some(node) => edgewise_core::placed_kv_namespace(node, &self.spec.agent_id),
            None => self.spec.agent_id.clone(),
        };
        sha256_hex(format!("{scope}\n{normalized}").as_bytes())
    }

    fn cached_answer(&self, task: &str) -> Result<Option<String>, AgentError> {
        let Some(ttl) = self.spec.cache.ttl else {
            return Ok(None);
        };
        let Some(v) = self.kv.get_json(CACHE, &self.cache_key(task))? else {
            return Ok(None);
        };
        let at = v.get("at").and_then(Value::as_i64).unwrap_or(0);
        let age = chrono::Utc::now().timestamp() - at;
        if age < 0 || age as u64 > ttl.as_secs() {
            return Ok(None);
        }
        Ok(v.get("answer").and_then(Value::as_str).map(str::to_owned))
    }

    /// Runs the task to an outcome. Errors are only for node failures (store, audit); everything
    /// the model or tools do wrong ends up in the outcome's status.
    pub async fn run(
        &self,
        task: &str,
        opts: RunOptions,
        events: Option<UnboundedSender<StepEvent>>,
    ) -> Result<RunOutcome, AgentError> {
        let run = opts.run_id.clone().unwrap_or_else(new_run_id);
        let span = tracing::info_span!("agent_run", agent = %self.spec.agent_id, run = %run);
        self.run_inner(task, opts, events, run)
            .instrument(span)
            .await
    }

    async fn run_inner(
        &self,
        task: &str,
        opts: RunOptions,
        events: Option<UnboundedSender<StepEvent>>,
        run: String,
    ) -> Result<RunOutcome, AgentError> {
        let emit = |e: StepEvent| {
            if let Some(tx) = &events {
                let _ = tx.send(e);
            }
        };
        let model = self.model_name();
        let mut record = RunRecord {
            agent: self.spec.agent_id.clone(),
            run: run.clone(),
            task: task.to_owned(),
            status: RunStatus::Running,
            model: model.clone(),
            started: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            ended: None,
            answer: None,
            error: None,
            cached: false,
            summaries: 0,
            steps: Vec::new(),
            placed_by: self.placed_by.clone(),
        };
        emit(StepEvent::Started {
            run: run.clone(),
            model: model.clone(),
        });

        if let Some(answer) = self.cached_answer(task)? {
            record.status = RunStatus::Completed;
            record.answer = Some(answer.clone());
            record.cached = true;
            record.ended = Some(chrono::Utc::now().to_rfc3339());
            self.audit(AuditRecord {
                kind: "run_cached".into(),
                run: run.clone(),
                decision: "cached".into(),
                result: Some(answer.clone()),
                result_sha256: Some(sha256_hex(answer.as_bytes())),
                result_bytes: Some(answer.len() as u64),
                ..Default::default()
            })?;
            self.runs.save(&record)?;
            let outcome = record.outcome();
            emit(StepEvent::Finished(outcome.clone()));
            return Ok(outcome);
        }

        self.audit(AuditRecord {
            kind: "run_start".into(),
            run: run.clone(),
            model: Some(model.clone()),
            arguments: Some(json!({ "task": task })),
            arguments_sha256: Some(sha256_hex(task.as_bytes())),
            decision: "start".into(),
            ..Default::default()
        })?;
        self.runs.save(&record)?;

        let limits = &self.spec.limits;
        let cancel = opts.cancel.clone().unwrap_or_default();
        let result = tokio::select! {
            r = tokio::time::timeout(limits.timeout, self.steps(task, &opts, &mut record, &emit)) => Some(r),
            _ = cancel.cancelled() => None,
        };
        match result {
            Some(Ok(Ok(()))) => {}
            Some(Ok(Err(e))) => return Err(e),
            Some(Err(_)) => {
                record.status = RunStatus::Timeout;
                record.error = Some(format!(
                    "the run did not finish within limits.timeout ({})",
                    humanize(limits.timeout)
                ));
            }
            None => {
                record.status = RunStatus::Cancelled;
                record.error = Some("the run was cancelled".into());
            }
        }
        record.ended =
            Some(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true));
        self.audit(record.end_audit())?;
        self.runs.save(&record)?;
        if record.status == RunStatus::Completed && self.spec.cache.ttl.is_some() {
            if let Some(answer) = &record.answer {
                self.kv.set_json(
                    CACHE,
                    &self.cache_key(task),
                    &json!({"answer": answer, "at": chrono::Utc::now().timestamp()}),
                )?;
            }
        }
        let outcome = record.outcome();
        emit(StepEvent::Finished(outcome.clone()));
        Ok(outcome)
    }

    async fn steps(
        &self,
        task: &str,
        opts: &RunOptions,
        record: &mut RunRecord,
        emit: &impl Fn(StepEvent),
    ) -> Result<(), AgentError> {
        let spec = &self.spec;
        let limits = &spec.limits;
        let task_with_passages = match self.with_knowledge(task, &record.run).await {
            Ok(t) => t,
            Err(message) => {
                record.status = RunStatus::Failed;
                record.error = Some(message);
                return Ok(());
            }
        };
        let tools_json = self.tools.openai_tools();
        let all_tools = self.tools.specs();
        // What values in calls and the answer may come from: all the model is shown.
        let guard = spec.workflow_policy.grounding == edgewise_core::Switch::On;
        let mut ground = crate::grounding::Grounding::default();
        ground.add(&self.system_prompt());
        ground.add(&task_with_passages);
        for tool in &tools_json {
            ground.add(&tool.to_string());
        }
        let mut conversation =
            Conversation::new(self.system_prompt(), self.history()?, task_with_passages);
        let mut calls_by_tool: BTreeMap<String, u32> = BTreeMap::new();
        let mut total_calls = 0u32;
        let mut failures = 0u32;
        // Successful calls of this run: (tool, arguments, observation).
        let mut done_calls: Vec<(String, Value, String)> = Vec::new();
        let mut must_answer = false;
        let mut repeats = 0u32;
        // A tool the model called again verbatim is left out of the grammar for the rest of the
        // run: a small model stuck on one call then has to pick another tool or answer (let back
        // in, it loops again after the next call).
        let mut looping_on: std::collections::BTreeSet<String> = Default::default();
        // The task's selection of the items of each tool's latest list result (`selection`).
        let mut selections: BTreeMap<String, Selection> = BTreeMap::new();
        // After a call that left out values the task asks for: (tool, argument, values) the
        // next turn's grammar requires (`selection::tighten`).
        let mut tightened: Option<(String, String, Vec<String>)> = None;
        // After an answer refused for a value read for something else: the numbers the next
        // answer may write (`Ungrounded::retry_numbers`), held to by its grammar.
        let mut answer_numbers: Option<Vec<String>> = None;
        let seed = opts
            .seed
            .or(spec.model_config.seed)
            .unwrap_or_else(rand_seed);

        for step in 1..=limits.max_steps {
            // Instrumenting the awaits (not entering the span) keeps it off other tasks of this
            // thread while the step waits.
            let span = tracing::info_span!("agent_step", step);
            // Tools still within budget; none once the run's call budget is spent.
            let available: Vec<_> = if total_calls >= limits.max_tool_calls {
                Vec::new()
            } else {
                all_tools
                    .iter()
                    .filter(|t| {
                        limits
                            .tool_budgets
                            .get(&t.name)
                            .is_none_or(|b| calls_by_tool.get(&t.name).copied().unwrap_or(0) < *b)
                    })
                    .cloned()
                    .collect()
            };
            let offered: Vec<_> = available
                .iter()
                .filter(|t| !looping_on.contains(&t.name))
                .cloned()
                .collect();
            let answer_numbers_now = answer_numbers.take();
            let choice = if offered.is_empty() || must_answer || answer_numbers_now.is_some() {
                ToolChoice::None
            } else if step <= opts.force_tool_steps
                || total_calls < limits.min_tool_calls.min(limits.max_tool_calls)
            {
                ToolChoice::Required
            } else {
                ToolChoice::Auto
            };
            // When the runtime, not the model, ends the calls (repeats, budgets), the answer is
            // written from the run's record in a fresh context: a small model cut off mid-plan
            // in its own conversation writes a fragment of that plan ("Yes", a call as text).
            // Local engine only: a cloud endpoint gets the agent's own conversation.
            let compose = choice == ToolChoice::None && total_calls > 0 && self.engine.is_some();
            let plain_tools = if offered.is_empty() {
                all_tools.clone()
            } else {
                offered.clone()
            };
            let mut grammar_tools = plain_tools.clone();
            let tightened_now = tightened.take();
            if let Some((tool, argument, values)) = &tightened_now {
                for t in grammar_tools.iter_mut().filter(|t| t.name == *tool) {
                    if let Some(tight) = crate::selection::tighten(t, argument, values) {
                        *t = tight;
                    }
                }
            }
            let grammar_tools = &grammar_tools;
            if let Err(message) = self
                .fit_context(&mut conversation, &tools_json, record, step, seed)
                .instrument(span.clone())
                .await
            {
                record.status = RunStatus::Failed;
                record.error = Some(format!("step {step}: {message}"));
                return Ok(());
            }
            let messages = if compose {
                answer_request(conversation.task(), &record.steps)
            } else {
                conversation.messages()
            };
            let started = Instant::now();
            let generated = self
                .generate_step(
                    &messages,
                    if compose { &[] } else { &tools_json },
                    if compose { &[] } else { grammar_tools },
                    &choice,
                    opts.constrained,
                    seed.wrapping_add(step),
                    answer_numbers_now.as_deref(),
                )
                .instrument(span.clone())
                .await;
            // A tightened grammar the matcher gives up on (llguidance's lexer has a fuel limit)
            // costs the tightening, not the run: the turn is generated again without it.
            let generated = match generated {
                Err(message)
                    if (tightened_now.is_some() || answer_numbers_now.is_some()) && !compose =>
                {
                    tracing::warn!(%message, "tightened grammar failed; generating without it");
                    self.generate_step(
                        &messages,
                        &tools_json,
                        &plain_tools,
                        &choice,
                        opts.constrained,
                        seed.wrapping_add(step),
                        None,
                    )
                    .instrument(span.clone())
                    .await
                }
                other => other,
            };
            let gen = match generated {
                Ok(g) => g,
                Err(message) => {
                    record.status = RunStatus::Failed;
                    record.error = Some(format!("step {step}: {message}"));
                    return Ok(());
                }
            };
            let cut_off = gen.cut_off;
            let (output, usage, prompt) = (gen.text, gen.usage, gen.prompt);
            let generation_ms = started.elapsed().as_secs_f64() * 1000.0;
            let (content, calls) = parse_tool_calls(&output);
            let mut rec = StepRecord {
                step,
                decision: String::new(),
                tool: None,
                arguments: None,
                observation: String::new(),
                output: output.clone(),
                prompt_tokens: usage.prompt_tokens,
                cached_tokens: usage.cached_tokens,
                prefilled_tokens: usage.prompt_tokens.saturating_sub(usage.cached_tokens),
                completion_tokens: usage.completion_tokens,
                forced_tokens: usage.forced_tokens,
                generation_ms,
                tool_ms: 0.0,
                model: gen.model,
                offload_reason: gen.offload_reason,
                node: None,
            };
            let prompt_sha = sha256_hex(prompt.as_bytes());

            // A call the token limit cut off is neither a call nor an answer (a small model can
            // loop inside a string): it counts against max_retries and is not shown, so the model
            // does not continue the loop; the step is retried as it was.
            let opened_call = {
                let t = content.trim_start();
                t.starts_with("<tool_call>") || t.starts_with('{')
            };
            if calls.is_empty() && cut_off && opened_call && choice != ToolChoice::None {
                let note = format!(
                    "error: failed: the call was cut off after {} tokens before it was complete",
                    usage.completion_tokens
                );
                rec.decision = "tool_error".into();
                rec.observation = note.clone();
                self.finish_step(record, rec, &prompt_sha, Some("call cut off".into()), emit)?;
                failures += 1;
                if out_of_retries(record, failures, spec, "tool calls", &note) {
                    return Ok(());
                }
                tightened = tightened_now;
                continue;
            }
            if calls.is_empty() {
                if let Some(refusal) = guard.then(|| ground.check_text(&content).err()).flatten() {
                    let hint = refusal.hint();
                    rec.decision = "ungrounded".into();
                    rec.observation = hint.clone();
                    self.finish_step(
                        record,
                        rec,
                        &prompt_sha,
                        Some(format!("answer refused: {}", refusal.reason())),
                        emit,
                    )?;
                    failures += 1;
                    if out_of_retries(record, failures, spec, "steps", &hint) {
                        return Ok(());
                    }
                    match refusal.retry_note() {
                        Some(note) => {
                            conversation.push_note(&note);
                            answer_numbers = Some(refusal.retry_numbers.clone());
                        }
                        None => conversation.push_feedback(&output, &hint),
                    }
                    continue;
                }
                rec.decision = "answer".into();
                rec.observation = content.clone();
                self.finish_step(record, rec, &prompt_sha, None, emit)?;
                record.status = RunStatus::Completed;
                record.answer = Some(content);
                return Ok(());
            }

            // The turn's calls are decided in the order the model wrote them (repeats, grounding,
            // budgets), the admitted ones run concurrently, and every result is recorded and
            // shown in that order.
            let mut verdicts: Vec<(ToolCall, Verdict)> = Vec::new();
            let mut admitted_now: BTreeMap<String, u32> = BTreeMap::new();
            for call in calls {
                if verdicts
                    .iter()
                    .any(|(c, _)| c.name == call.name && c.arguments == call.arguments)
                {
                    continue; // the same call twice in one turn runs once
                }
                let earlier = done_calls
                    .iter()
                    .find(|(n, a, _)| *n == call.name && *a == call.arguments)
                    .or_else(|| {
                        // A call whose arguments restate the tool's own words, its last result
                        // or its description ("publish 'Delivered to the MQTT topic alerts'"),
                        // is a small model's echo, not an action.
                        let described = all_tools
                            .iter()
                            .find(|t| t.name == call.name)
                            .map_or("", |t| t.description.as_str());
                        done_calls
                            .iter()
                            .rev()
                            .find(|(n, _, _)| *n == call.name)
                            .filter(|(_, _, result)| {
                                echoes(&call.arguments, &format!("{result} {described}"))
                            })
                    })
                    .map(|(_, _, observation)| observation.clone());
                let verdict = if let Some(earlier) = earlier.filter(|_| !must_answer) {
                    // A call identical to one that already worked is not executed again (small
                    // models loop here, and side effects must not repeat). The model sees that
                    // call's result again, not an instruction: small models echo instructions
                    // as their answer. The tool leaves the grammar; after a second repeat the
                    // model must answer.
                    repeats += 1;
                    must_answer = repeats >= 2;
                    looping_on.insert(call.name.clone());
                    Verdict::Repeat(shown_again(&earlier))
                } else if let Some(refusal) = guard
                    .then(|| self.tools.grounding_free_arguments(&call.name))
                    .flatten()
                    .and_then(|free| ground.check_arguments(&call.arguments, &free).err())
                {
                    Verdict::Ungrounded(refusal)
                } else if let Some(refusal) = guard
                    .then(|| {
                        selections
                            .values()
                            .find_map(|s| s.check(&call.name, &call.arguments, &ground).err())
                    })
                    .flatten()
                {
                    Verdict::OffSelection(refusal)
                } else {
                    let used = calls_by_tool.get(&call.name).copied().unwrap_or(0)
                        + admitted_now.get(&call.name).copied().unwrap_or(0);
                    let budget = limits.tool_budgets.get(&call.name).copied();
                    let total = total_calls + admitted_now.values().sum::<u32>();
                    let known = all_tools.iter().any(|t| t.name == call.name);
                    if known
                        && (total >= limits.max_tool_calls || budget.is_some_and(|b| used >= b))
                    {
                        Verdict::OverBudget
                    } else {
                        *admitted_now.entry(call.name.clone()).or_default() += 1;
                        Verdict::Run
                    }
                };
                verdicts.push((call, verdict));
            }
            let runs = verdicts.iter().map(|(call, verdict)| {
                let span = span.clone();
                async move {
                    if !matches!(verdict, Verdict::Run) {
                        return None;
                    }
                    let started = Instant::now();
                    let result = self
                        .tools
                        .call(&call.name, &call.arguments)
                        .instrument(span)
                        .await;
                    Some((result, started.elapsed().as_secs_f64() * 1000.0))
                }
            });
            let results = futures::future::join_all(runs).await;

            let mut shown = Vec::new();
            let mut last_failure = String::new();
            // When this turn ran nothing and acted on what the task does not ask for, it is not
            // shown: the items to take out of the results shown instead (`Conversation::leave_out`;
            // none when the call only left out values and the retry runs under a tighter grammar).
            let ran_any = verdicts.iter().any(|(_, v)| matches!(v, Verdict::Run));
            let mut leave_out: Option<(Vec<String>, String)> = None;
            for ((call, verdict), result) in verdicts.into_iter().zip(results) {
                let mut rec = rec.clone();
                rec.tool = Some(call.name.clone());
                rec.arguments = Some(call.arguments.clone());
                let (decision, observation, detail) = match (verdict, result) {
                    (Verdict::Repeat(earlier), _) => (
                        "repeat",
                        earlier,
                        Some("identical to an earlier successful call; not executed".to_owned()),
                    ),
                    (Verdict::Ungrounded(refusal), _) => (
                        "ungrounded",
                        refusal.hint(),
                        Some(format!("call refused: {}", refusal.reason())),
                    ),
                    (Verdict::OffSelection(refusal), _) => {
                        if !ran_any && !refusal.outside.is_empty() {
                            leave_out =
                                Some((refusal.outside.clone(), refusal.left_out_note.clone()));
                        }
                        if let Some((argument, values)) = &refusal.missing {
                            // Retried from the same conversation under the tighter grammar: a
                            // hint shown here ends up quoted in the alert.
                            tightened = Some((call.name.clone(), argument.clone(), values.clone()));
                            if !ran_any {
                                leave_out.get_or_insert_with(Default::default);
                            }
                        }
                        (
                            "off_selection",
                            refusal.hint(),
                            Some(format!("call refused: {}", refusal.reason())),
                        )
                    }
                    (Verdict::OverBudget, _) => (
                        "refused",
                        format!(
                            "error: {}",
                            ToolError::Refused(format!(
                                "the call budget for '{}' is spent in this run",
                                call.name
                            ))
                        ),
                        None,
                    ),
                    (Verdict::Run, Some((result, tool_ms))) => {
                        rec.tool_ms = tool_ms;
                        match result {
                            Ok(out) => {
                                let observation = self.tools.observation(&call.name, &out);
                                done_calls.push((
                                    call.name.clone(),
                                    call.arguments.clone(),
                                    observation.clone(),
                                ));
                                total_calls += 1;
                                *calls_by_tool.entry(call.name.clone()).or_default() += 1;
                                ("call", observation, None)
                            }
                            Err(e @ ToolError::Refused(_)) => {
                                ("refused", format!("error: {e}"), None)
                            }
                            Err(e @ ToolError::Failed(_)) => {
                                ("tool_error", format!("error: {e}"), None)
                            }
                        }
                    }
                    (Verdict::Run, None) => unreachable!("every admitted call ran"),
                };
                if matches!(
                    decision,
                    "ungrounded" | "off_selection" | "refused" | "tool_error"
                ) {
                    failures += 1;
                    last_failure = observation.clone();
                }
                rec.decision = decision.into();
                rec.observation = observation.clone();
                self.finish_step(record, rec, &prompt_sha, detail, emit)?;
                ground.add(&observation);
                if guard && decision == "call" {
                    let list = crate::selection::ItemList::parse(&call.name, &observation);
                    if let Some(list) = list {
                        let picked = self
                            .select_items(task, &list, &observation, &ground, record, step, seed)
                            .instrument(span.clone())
                            .await?;
                        match picked {
                            Some(s) => selections.insert(call.name.clone(), s),
                            None => selections.remove(&call.name),
                        };
                    }
                }
                shown.push((call.name, observation));
            }
            if out_of_retries(record, failures, spec, "tool calls", &last_failure) {
                return Ok(());
            }
            match leave_out {
                // The refused turn is not shown: the model retries from the results without the
                // items it should not have acted on.
                Some((items, note)) => conversation.leave_out(&items, &note),
                None => conversation.push_calls(&output, &shown),
            }
        }
        record.status = RunStatus::StepLimit;
        record.error = Some(format!(
            "no answer after limits.max_steps ({}) steps",
            limits.max_steps
        ));
        Ok(())
    }

    /// Audits a finished step, then records and reports it (in that order: nothing is reported
    /// that is not on the audit log).
    fn finish_step(
        &self,
        record: &mut RunRecord,
        rec: StepRecord,
        prompt_sha: &str,
        detail: Option<String>,
        emit: &impl Fn(StepEvent),
    ) -> Result<(), AgentError> {
        self.audit(AuditRecord {
            run: record.run.clone(),
            prompt_sha256: Some(prompt_sha.to_owned()),
            detail: match (&rec.offload_reason, detail) {
                (Some(why), Some(d)) => Some(format!("{d}; offloaded: {why}")),
                (Some(why), None) => Some(format!("offloaded: {why}")),
                (None, d) => d,
            },
            ..rec.audit_record(&record.model)
        })?;
        record.steps.push(rec.clone());
        self.runs.save(record)?;
        emit(StepEvent::Step(rec));
        Ok(())
    }

    /// Earlier runs of this agent (task and answer), newest last, per `memory.history_window`.
    fn history(&self) -> Result<Vec<Value>, AgentError> {
        let n = self.spec.memory.history_window as usize;
        if n == 0 {
            return Ok(Vec::new());
        }
        let runs = self.runs.list(Some(&self.spec.agent_id))?;
        // Only runs of the same origin: a neighbour's placed runs are not this node's agent's
        // past (they could plant instructions in it), nor is this node's past theirs to read.
        let done: Vec<_> = runs
            .iter()
            .filter(|r| r.placed_by == self.placed_by)
            .filter(|r| r.status == RunStatus::Completed && r.answer.is_some())
            .collect();
        let mut out = Vec::new();
        for r in &done[done.len().saturating_sub(n)..] {
            out.push(json!({"role": "user", "content": r.task}));
            out.push(json!({"role": "assistant", "content": r.answer}));
        }
        Ok(out)
    }
}

/// Ends the run `failed` once more steps were refused or failed than
/// `workflow_policy.max_retries` allows; `true` when it did.
fn out_of_retries(
    record: &mut RunRecord,
    failures: u32,
    spec: &AgentSpec,
    what: &str,
    last: &str,
) -> bool {
    let allowed = spec.workflow_policy.max_retries;
    if failures <= allowed {
        return false;
    }
    record.status = RunStatus::Failed;
    record.error = Some(format!(
        "{failures} refused or failed {what} (workflow_policy.max_retries is {allowed}); last: {last}"
    ));
    true
}

fn humanize(d: Duration) -> String {
    format!("{}s", d.as_secs_f64())
}

/// A fresh run id: 12 hex digits, short enough to type, unique enough for one node.
pub fn new_run_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
}

fn rand_seed() -> u32 {
    uuid::Uuid::new_v4().as_u128() as u32
}
