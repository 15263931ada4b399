//! `/v1/chat/completions` and `/v1/completions`: OpenAI request shapes in, engine requests out.

use std::convert::Infallible;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use edgewise_agent::call_decision::{CallDecision, Retry};
use edgewise_core::SamplingParams;
use edgewise_infer::grammar::prose_answer_grammar;
use edgewise_infer::{
    parse_tool_calls, tool_calls_grammar, Completion, Constraint, Event, FinishReason,
    GenerateRequest, ToolChoice, ToolSpec, DEFAULT_CALL_THRESHOLD, MAX_PARALLEL_CALLS,
};
use futures::Stream;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::error::ApiError;
use crate::AppState;

#[derive(Deserialize)]
#[serde(untagged)]
enum StopField {
    One(String),
    Many(Vec<String>),
}

/// Fields shared by both endpoints. Unknown fields are ignored, as OpenAI clients send many.
#[derive(Deserialize)]
struct Common {
    model: String,
    #[serde(default)]
    stream: bool,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<i32>,
    min_p: Option<f32>,
    repeat_penalty: Option<f32>,
    seed: Option<i64>,
    max_tokens: Option<u32>,
    max_completion_tokens: Option<u32>,
    stop: Option<StopField>,
    n: Option<u32>,
    stream_options: Option<Value>,
}

#[derive(Deserialize)]
struct ChatBody {
    #[serde(flatten)]
    common: Common,
    messages: Vec<Value>,
    tools: Option<Vec<Value>>,
    tool_choice: Option<Value>,
    /// Several calls in one turn (default true, as in OpenAI's API).
    parallel_tool_calls: Option<bool>,
    response_format: Option<Value>,
}

#[derive(Deserialize)]
struct CompletionBody {
    #[serde(flatten)]
    common: Common,
    prompt: Value,
    response_format: Option<Value>,
    /// Opt-in: special-token strings in the prompt become control tokens (see `completions`).
    /// Checked by hand so a wrong type names the field.
    parse_special: Option<Value>,
}

/// Longest stop sequence accepted.
const MAX_STOP_BYTES: usize = 256;

pub(crate) fn parse_body<T: for<'de> Deserialize<'de>>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("malformed request body: {e}")))
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Common {
    fn to_request(&self, state: &AppState, prompt: String) -> Result<GenerateRequest, ApiError> {
        state.check_chat_model(&self.model)?;
        if self.n.unwrap_or(1) != 1 {
            return Err(ApiError::bad_request("only n = 1 is supported").param("n"));
        }
        let d = SamplingParams::default();
        let temperature = self.temperature.unwrap_or(1.0);
        if !(0.0..=2.0).contains(&temperature) {
            return Err(ApiError::bad_request(format!(
                "temperature must be between 0 and 2, got {temperature}"
            ))
            .param("temperature"));
        }
        let top_p = self.top_p.unwrap_or(1.0);
        if !(0.0..=1.0).contains(&top_p) || top_p == 0.0 {
            return Err(
                ApiError::bad_request(format!("top_p must be in (0, 1], got {top_p}"))
                    .param("top_p"),
            );
        }
        let mut req = GenerateRequest::new(prompt);
        req.sampling = SamplingParams {
            temperature,
            top_p,
            top_k: self.top_k.unwrap_or(0),
            min_p: self.min_p.unwrap_or(0.0),
            repeat_penalty: self.repeat_penalty.unwrap_or(1.0),
            seed: self.seed.map(|s| s as u32).unwrap_or(d.seed),
            ..d
        };
        let default_max = state.context_per_request;
        req.max_tokens = self
            .max_completion_tokens
            .or(self.max_tokens)
            .unwrap_or(default_max)
            .max(1);
        req.stop = match &self.stop {
            None => Vec::new(),
            Some(StopField::One(s)) => vec![s.clone()],
            Some(StopField::Many(v)) => v.clone(),
        };
        if req.stop.len() > 4 {
            return Err(ApiError::bad_request("at most 4 stop sequences").param("stop"));
        }
        // Each generated token is matched against every stop string: bound their length too.
        if let Some(long) = req.stop.iter().find(|s| s.len() > MAX_STOP_BYTES) {
            return Err(ApiError::bad_request(format!(
                "a stop sequence is {} bytes long; at most {MAX_STOP_BYTES}",
                long.len()
            ))
            .param("stop"));
        }
        Ok(req)
    }

    fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .and_then(|o| o.get("include_usage"))
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }
}

fn response_format_constraint(rf: Option<&Value>) -> Result<Option<Constraint>, ApiError> {
    let Some(rf) = rf else { return Ok(None) };
    let bad = |m: &str| ApiError::bad_request(m.to_owned()).param("response_format");
    match rf.get("type").and_then(Value::as_str) {
        None | Some("text") => Ok(None),
        Some("json_object") => Ok(Some(Constraint::JsonSchema(json!({"type": "object"})))),
        Some("json_schema") => {
            let schema = rf
                .get("json_schema")
                .and_then(|j| j.get("schema"))
                .ok_or_else(|| bad("json_schema.schema is required"))?;
            if !schema.is_object() {
                return Err(bad("json_schema.schema must be a JSON object"));
            }
            Ok(Some(Constraint::JsonSchema(schema.clone())))
        }
        Some(other) => Err(bad(&format!(
            "unknown response_format type '{other}' (text, json_object, json_schema)"
        ))),
    }
}

fn tool_choice(v: Option<&Value>) -> Result<Option<ToolChoice>, ApiError> {
    let bad = |m: String| ApiError::bad_request(m).param("tool_choice");
    match v {
        None => Ok(Some(ToolChoice::Auto)),
        Some(Value::String(s)) => match s.as_str() {
            "none" => Ok(Some(ToolChoice::None)),
            "auto" => Ok(Some(ToolChoice::Auto)),
            "required" => Ok(Some(ToolChoice::Required)),
            other => Err(bad(format!(
                "unknown tool_choice '{other}' (none, auto, required, or a function)"
            ))),
        },
        Some(obj) => obj
            .get("function")
            .and_then(|f| f.get("name"))
            .and_then(Value::as_str)
            .map(|n| Some(ToolChoice::Named(n.to_owned())))
            .ok_or_else(|| bad("tool_choice object needs function.name".into())),
    }
}

/// Checks each message and flattens content-part arrays into text.
fn normalize_messages(messages: &[Value]) -> Result<Vec<Value>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::bad_request("messages must not be empty").param("messages"));
    }
    messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let bad = |what: &str| {
                ApiError::bad_request(format!("messages[{i}]: {what}")).param("messages")
            };
            let role = m
                .get("role")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("missing role"))?;
            if !["system", "developer", "user", "assistant", "tool"].contains(&role) {
                return Err(bad(&format!("unknown role '{role}'")));
            }
            let mut m = m.clone();
            if role == "developer" {
                m["role"] = json!("system");
            }
            match m.get("content") {
                None | Some(Value::Null) if role == "assistant" => m["content"] = json!(""),
                Some(Value::String(_)) => {}
                Some(Value::Array(parts)) => {
                    let mut text = String::new();
                    for p in parts {
                        match (
                            p.get("type").and_then(Value::as_str),
                            p.get("text").and_then(Value::as_str),
                        ) {
                            (Some("text"), Some(t)) => text.push_str(t),
                            _ => return Err(bad("only text content parts are supported")),
                        }
                    }
                    m["content"] = json!(text);
                }
                _ => return Err(bad("content must be a string or an array of text parts")),
            }
            Ok(m)
        })
        .collect()
}

/// Waits for the first event so that errors become HTTP statuses before any body is sent.
async fn start(
    state: &AppState,
    req: GenerateRequest,
) -> Result<(UnboundedReceiver<Event>, Option<Event>), ApiError> {
    let mut rx = state.engine.submit(req)?;
    match rx.recv().await {
        Some(Event::Error(e)) => Err(e.into()),
        None => Err(ApiError::internal("the engine stopped")),
        first => Ok((rx, first)),
    }
}

async fn collect(
    mut rx: UnboundedReceiver<Event>,
    first: Option<Event>,
) -> Result<Completion, ApiError> {
    let mut next = first;
    loop {
        match next {
            Some(Event::Done(c)) => return Ok(c),
            Some(Event::Error(e)) => return Err(e.into()),
            None => return Err(ApiError::internal("the engine stopped")),
            Some(Event::Delta(_)) => {}
        }
        next = rx.recv().await;
    }
}

fn usage_json(c: &Completion) -> Value {
    let u = &c.usage;
    json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_tokens}
    })
}

fn finish_str(r: FinishReason) -> &'static str {
    match r {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
    }
}

fn tool_calls_json(calls: &[edgewise_infer::ToolCall]) -> Value {
    Value::Array(
        calls
            .iter()
            .enumerate()
            .map(|(i, c)| {
                json!({
                    "index": i,
                    "id": format!("call_{}", uuid::Uuid::new_v4().simple()),
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments.to_string()}
                })
            })
            .collect(),
    )
}

pub async fn chat_completions(
    State(state): State<AppState>,
    raw: Bytes,
) -> Result<Response, ApiError> {
    let body: ChatBody = parse_body(&raw)?;
    if body.common.model != state.engine.info().name {
        if let Some(answer) =
            crate::mesh::offload(&state, "/v1/chat/completions", &body.common.model, &raw).await
        {
            return answer;
        }
    }
    let mut messages = normalize_messages(&body.messages)?;
    let tools: Vec<ToolSpec> = body
        .tools
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|t| ToolSpec::from_openai(t).map_err(|e| ApiError::bad_request(e).param("tools")))
        .collect::<Result<_, _>>()?;
    let choice = if tools.is_empty() {
        None
    } else {
        tool_choice(body.tool_choice.as_ref())?
    };
    let template = state.engine.template();
    let messages_without_tools = messages.clone();
    let tools_for_template: Option<Vec<Value>> = match (&choice, template.supports_tools()) {
        (Some(_), true) => body.tools.clone(),
        (Some(_), false) => {
            messages.insert(0, json!({"role": "system", "content": edgewise_infer::grammar::describe_tools_for_prompt(&tools)}));
            None
        }
        (None, _) => None,
    };
    let prompt = template
        .render(&messages, tools_for_template.as_deref(), true)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let mut req = body.common.to_request(&state, prompt)?;
    let max_calls = if body.parallel_tool_calls.unwrap_or(true) {
        MAX_PARALLEL_CALLS
    } else {
        1
    };
    req.constraint = match &choice {
        Some(c) => Some(
            tool_calls_grammar(&tools, c, max_calls)
                .map_err(|e| ApiError::bad_request(e).param("tool_choice"))?,
        ),
        None => response_format_constraint(body.response_format.as_ref())?,
    };
    // With `auto` the runtime decides whether the turn calls: the model's probability of calling
    // against a threshold, then a review of the calls (see edgewise_agent::call_decision).
    let decision = match choice {
        Some(ToolChoice::Auto) => {
            req.call_threshold = Some(DEFAULT_CALL_THRESHOLD);
            let answer_prompt = template
                .render(&messages_without_tools, None, true)
                .map_err(|e| ApiError::bad_request(e.to_string()))?;
            Some(Decision {
                state: state.clone(),
                req: req.clone(),
                review: CallDecision::from_messages(&body.messages, tools.clone(), max_calls),
                answer_prompt,
            })
        }
        _ => None,
    };
    let id = format!("chatcmpl-{}", uuid::Uuid::new_v4().simple());
    let model = state.engine.info().name.clone();
    let (rx, first) = match start(&state, req).await {
        Err(busy) if busy.status == axum::http::StatusCode::SERVICE_UNAVAILABLE => {
            return crate::mesh::offload_when_busy(
                &state,
                "/v1/chat/completions",
                &model,
                &raw,
                busy,
            )
            .await
        }
        started => started?,
    };
    if body.common.stream {
        let stream = chat_stream(
            rx,
            first,
            id,
            model,
            choice.is_some(),
            decision,
            body.common.include_usage(),
        );
        return Ok(Sse::new(stream)
            .keep_alive(KeepAlive::default())
            .into_response());
    }
    let mut c = collect(rx, first).await?;
    if let Some(mut d) = decision {
        while let Some((rx, first)) = d.again(&c.text).await? {
            c = collect(rx, first).await?;
        }
    }
    let (content, calls) = if choice.is_some() {
        parse_tool_calls(&c.text)
    } else {
        (c.text.clone(), Vec::new())
    };
    let (message, finish) = if calls.is_empty() {
        (
            json!({"role": "assistant", "content": content}),
            finish_str(c.finish_reason),
        )
    } else {
        let content = if content.is_empty() {
            Value::Null
        } else {
            json!(content)
        };
        (
            json!({"role": "assistant", "content": content, "tool_calls": tool_calls_json(&calls)}),
            "tool_calls",
        )
    };
    Ok(Json(json!({
        "id": id, "object": "chat.completion", "created": now_secs(), "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": null}],
        "usage": usage_json(&c),
    }))
    .into_response())
}

/// A turn under `tool_choice: auto`, with what it takes to generate it again.
struct Decision {
    state: AppState,
    req: GenerateRequest,
    review: CallDecision,
    /// The conversation rendered without the tool menu, for a turn to be answered in prose.
    answer_prompt: String,
}

impl Decision {
    /// Reviews a finished turn's calls; where they are set aside, starts the turn again under
    /// the narrower constraint.
    async fn again(
        &mut self,
        text: &str,
    ) -> Result<Option<(UnboundedReceiver<Event>, Option<Event>)>, ApiError> {
        let Some((retry, why)) = self.review.review(&parse_tool_calls(text).1) else {
            return Ok(None);
        };
        tracing::info!(?why, "tool calls set aside; the turn is decided again");
        match retry {
            Retry::Decide(c) => self.req.constraint = Some(c),
            Retry::Answer => {
                self.req.prompt = self.answer_prompt.clone();
                self.req.constraint = Some(prose_answer_grammar());
            }
        }
        start(&self.state, self.req.clone()).await.map(Some)
    }
}

fn sse_json(v: Value) -> Result<SseEvent, Infallible> {
    Ok(SseEvent::default().data(v.to_string()))
}

fn chat_stream(
    mut rx: UnboundedReceiver<Event>,
    first: Option<Event>,
    id: String,
    model: String,
    tools_active: bool,
    mut decision: Option<Decision>,
    include_usage: bool,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    let created = now_secs();
    let chunk = move |delta: Value, finish: Option<&str>| {
        json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": null}]})
    };
    async_stream_impl(move |tx| async move {
        let _ = tx.send(sse_json(chunk(
            json!({"role": "assistant", "content": ""}),
            None,
        )));
        // With tools, text is streamed only once it cannot be a tool call (calls start with '<' or '{').
        let mut held = String::new();
        let mut streaming_text = !tools_active;
        let mut next = first;
        loop {
            match next {
                Some(Event::Delta(d)) => {
                    if streaming_text {
                        let _ = tx.send(sse_json(chunk(json!({"content": d}), None)));
                    } else {
                        held.push_str(&d);
                        let trimmed = held.trim_start();
                        if !trimmed.is_empty() && !trimmed.starts_with(['<', '{']) {
                            streaming_text = true;
                            let _ = tx.send(sse_json(chunk(
                                json!({"content": std::mem::take(&mut held)}),
                                None,
                            )));
                        }
                    }
                }
                Some(Event::Done(c)) => {
                    // Calls are held until the end, so a turn the decision sets aside is
                    // generated again before anything of it was sent.
                    if let (Some(d), false) = (decision.as_mut(), streaming_text) {
                        match d.again(&c.text).await {
                            Ok(Some((again, first))) => {
                                rx = again;
                                next = first;
                                held.clear();
                                continue;
                            }
                            Ok(None) => {}
                            Err(e) => {
                                let _ = tx.send(sse_json(
                                    json!({"error": {"message": e.message, "type": e.kind}}),
                                ));
                                break;
                            }
                        }
                    }
                    let (content, calls) = if tools_active && !streaming_text {
                        parse_tool_calls(&c.text)
                    } else {
                        (String::new(), Vec::new())
                    };
                    let finish = if calls.is_empty() {
                        if !held.is_empty() {
                            let _ = tx.send(sse_json(chunk(json!({"content": held}), None)));
                        }
                        finish_str(c.finish_reason)
                    } else {
                        if !content.is_empty() {
                            let _ = tx.send(sse_json(chunk(json!({"content": content}), None)));
                        }
                        let _ = tx.send(sse_json(chunk(
                            json!({"tool_calls": tool_calls_json(&calls)}),
                            None,
                        )));
                        "tool_calls"
                    };
                    let mut last = chunk(json!({}), Some(finish));
                    if include_usage {
                        let _ = tx.send(sse_json(last));
                        last = json!({"id": "", "object": "chat.completion.chunk", "created": created, "choices": [], "usage": usage_json(&c)});
                    }
                    let _ = tx.send(sse_json(last));
                    break;
                }
                Some(Event::Error(e)) => {
                    let _ = tx.send(sse_json(
                        json!({"error": {"message": e.to_string(), "type": "server_error"}}),
                    ));
                    break;
                }
                None => break,
            }
            next = rx.recv().await;
        }
        let _ = tx.send(Ok(SseEvent::default().data("[DONE]")));
    })
}

/// Runs `body` as a task feeding a channel, so the stream ends (and the engine request is cancelled)
/// when the client disconnects and the channel's receiver is dropped.
fn async_stream_impl<F, Fut>(body: F) -> impl Stream<Item = Result<SseEvent, Infallible>>
where
    F: FnOnce(tokio::sync::mpsc::UnboundedSender<Result<SseEvent, Infallible>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let task = tokio::spawn(body(tx));
    CancelOnDrop { rx, task }
}

struct CancelOnDrop {
    rx: UnboundedReceiver<Result<SseEvent, Infallible>>,
    task: tokio::task::JoinHandle<()>,
}

impl Stream for CancelOnDrop {
    type Item = Result<SseEvent, Infallible>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        // Aborting drops the engine receiver inside the task, which cancels generation.
        self.task.abort();
    }
}

/// `/v1/completions`: the prompt is tokenized as plain text by default, so a special-token string
/// in it (`<|im_end|>`) is text, never a turn marker: content is never control. A caller that
/// writes its own template sets `"parse_special": true` (an Edgewise extension) to have those
/// strings become control tokens, as llama.cpp's `parse_special` does; U+E000 and U+E001 are
/// removed from such a prompt (Edgewise uses them to mark text spans).
pub async fn completions(State(state): State<AppState>, raw: Bytes) -> Result<Response, ApiError> {
    let body: CompletionBody = parse_body(&raw)?;
    if body.common.model != state.engine.info().name {
        if let Some(answer) =
            crate::mesh::offload(&state, "/v1/completions", &body.common.model, &raw).await
        {
            return answer;
        }
    }
    let prompt = match &body.prompt {
        Value::String(s) => s.clone(),
        Value::Array(a) if a.len() == 1 && a[0].is_string() => {
            a[0].as_str().unwrap_or_default().to_owned()
        }
        _ => {
            return Err(ApiError::bad_request(
                "prompt must be a string (or an array of one string)",
            )
            .param("prompt"))
        }
    };
    let parse_special = match &body.parse_special {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "parse_special must be true or false, got {other}"
            ))
            .param("parse_special"))
        }
    };
    let prompt = if parse_special {
        edgewise_infer::prompt::strip_marks(&prompt)
    } else {
        edgewise_infer::prompt::plain_text(&prompt)
    };
    let mut req = body.common.to_request(&state, prompt)?;
    req.constraint = response_format_constraint(body.response_format.as_ref())?;
    let id = format!("cmpl-{}", uuid::Uuid::new_v4().simple());
    let model = state.engine.info().name.clone();
    let (rx, first) = match start(&state, req).await {
        Err(busy) if busy.status == axum::http::StatusCode::SERVICE_UNAVAILABLE => {
            return crate::mesh::offload_when_busy(&state, "/v1/completions", &model, &raw, busy)
                .await
        }
        started => started?,
    };
    let created = now_secs();
    if body.common.stream {
        let include_usage = body.common.include_usage();
        let mut rx = rx;
        let stream = async_stream_impl(move |tx| async move {
            let chunk = |text: &str, finish: Option<&str>| {
                json!({"id": id, "object": "text_completion", "created": created, "model": model,
                       "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": null}]})
            };
            let mut next = first;
            loop {
                match next {
                    Some(Event::Delta(d)) => {
                        let _ = tx.send(sse_json(chunk(&d, None)));
                    }
                    Some(Event::Done(c)) => {
                        let mut last = chunk("", Some(finish_str(c.finish_reason)));
                        if include_usage {
                            last["usage"] = usage_json(&c);
                        }
                        let _ = tx.send(sse_json(last));
                        break;
                    }
                    Some(Event::Error(e)) => {
                        let _ = tx.send(sse_json(
                            json!({"error": {"message": e.to_string(), "type": "server_error"}}),
                        ));
                        break;
                    }
                    None => break,
                }
                next = rx.recv().await;
            }
            let _ = tx.send(Ok(SseEvent::default().data("[DONE]")));
        });
        return Ok(Sse::new(stream)
            .keep_alive(KeepAlive::default())
            .into_response());
    }
    let c = collect(rx, first).await?;
    Ok(Json(json!({
        "id": id, "object": "text_completion", "created": created, "model": model,
        "choices": [{"index": 0, "text": c.text, "finish_reason": finish_str(c.finish_reason), "logprobs": null}],
        "usage": usage_json(&c),
    }))
    .into_response())
}
