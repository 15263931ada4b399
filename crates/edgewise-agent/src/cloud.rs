//! The cloud fallback: an OpenAI-compatible chat endpoint from the node config that takes a step
//! when the local model cannot (it failed to load, is saturated, or the conversation outgrew its
//! window). It is the last resort and the only model path that leaves the node, so:
//! - it is offered to an agent only when its policy has `egress_allowed: true` (whatever the URL
//!   resolves to: the endpoint is outside the trust domain by definition);
//! - it sits behind a circuit breaker shared by all agents of the node, so a dead endpoint costs
//!   `breaker_failures` timeouts, not one per step of every run.
//!
//! The endpoint gets the conversation as OpenAI messages and the tools as OpenAI functions; its
//! `tool_calls` come back as the same `<tool_call>` text the local model writes, so the loop
//! (parsing, validation against the schema, audit) does not care where a step was generated.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use edgewise_core::{CircuitBreaker, CloudEndpoint, NodeConfig};
use edgewise_infer::grammar::{TOOL_CALL_CLOSE, TOOL_CALL_OPEN};
use edgewise_infer::{parse_tool_calls, ToolChoice};
use serde_json::{json, Value};

/// One step as the endpoint gets it: the conversation, the tools it may call, and sampling.
pub struct CloudRequest<'a> {
    pub messages: &'a [Value],
    /// OpenAI `tools[]` entries.
    pub tools: &'a [Value],
    pub choice: &'a ToolChoice,
    pub temperature: f32,
    pub max_tokens: u32,
    pub seed: u32,
}

/// A step that did not come back from the endpoint.
#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    #[error("cloud endpoint {url} is not tried for {retry_in:?}: its circuit breaker opened after {failures} consecutive failures")]
    BreakerOpen {
        url: String,
        failures: u32,
        retry_in: Duration,
    },
    #[error("cloud endpoint {url}: {message}")]
    Failed { url: String, message: String },
}

/// What one cloud step produced, in the local engine's terms.
#[derive(Debug, Clone)]
pub struct CloudCompletion {
    /// Text and tool calls as the local model would have written them.
    pub text: String,
    pub prompt_tokens: u32,
    pub cached_tokens: u32,
    pub completion_tokens: u32,
}

pub struct CloudModel {
    endpoint: CloudEndpoint,
    api_key: Option<String>,
    http: reqwest::Client,
    breaker: Mutex<CircuitBreaker>,
}

/// How long one cloud step may take before it counts as a failure.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

impl CloudModel {
    /// The node's cloud endpoint, if it configures one. A key variable that is named but unset is
    /// an error here, at start, rather than a 401 in the middle of a run.
    pub fn from_config(config: &NodeConfig) -> Result<Option<Self>, String> {
        let Some(endpoint) = config.cloud.clone() else {
            return Ok(None);
        };
        let url = reqwest::Url::parse(&endpoint.url)
            .map_err(|e| format!("config cloud.url '{}': {e}", endpoint.url))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!(
                "config cloud.url '{}': expected an http:// or https:// base URL such as https://api.example.com/v1",
                endpoint.url
            ));
        }
        let api_key = match &endpoint.api_key_env {
            None => None,
            Some(var) => Some(std::env::var(var).map_err(|_| {
                format!("config cloud.api_key_env names {var}, but that environment variable is not set")
            })?),
        };
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| format!("cloud HTTP client: {e}"))?;
        let breaker = CircuitBreaker::new(
            endpoint.breaker_failures,
            Duration::from_secs(endpoint.breaker_cooldown_s),
        );
        Ok(Some(Self {
            endpoint,
            api_key,
            http,
            breaker: Mutex::new(breaker),
        }))
    }

    /// `cloud:MODEL`, as runs and audit records name it.
    pub fn label(&self) -> String {
        format!("cloud:{}", self.endpoint.model)
    }

    pub fn url(&self) -> &str {
        &self.endpoint.url
    }

    /// One chat completion, through the breaker.
    pub async fn step(&self, req: &CloudRequest<'_>) -> Result<CloudCompletion, CloudError> {
        {
            let mut b = self.lock_breaker();
            if let Err(open) = b.allow(Instant::now()) {
                return Err(CloudError::BreakerOpen {
                    url: self.endpoint.url.clone(),
                    failures: b.threshold(),
                    retry_in: open.retry_in,
                });
            }
        }
        let result = self.request(req).await;
        let mut b = self.lock_breaker();
        match &result {
            Ok(_) => b.record_success(),
            Err(_) => b.record_failure(Instant::now()),
        }
        result.map_err(|message| CloudError::Failed {
            url: self.endpoint.url.clone(),
            message,
        })
    }

    fn lock_breaker(&self) -> std::sync::MutexGuard<'_, CircuitBreaker> {
        // The breaker holds no invariant a panicking holder could break half-way.
        self.breaker.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn request(&self, req: &CloudRequest<'_>) -> Result<CloudCompletion, String> {
        let mut body = json!({
            "model": self.endpoint.model,
            "messages": openai_messages(req.messages),
            "temperature": req.temperature,
            "max_tokens": req.max_tokens,
            "seed": req.seed,
            "stream": false,
        });
        if !req.tools.is_empty() {
            body["tools"] = Value::from(req.tools.to_vec());
            body["tool_choice"] = match req.choice {
                ToolChoice::None => json!("none"),
                ToolChoice::Auto => json!("auto"),
                ToolChoice::Required => json!("required"),
                ToolChoice::Named(n) => json!({"type": "function", "function": {"name": n}}),
            };
        }
        let url = format!(
            "{}/chat/completions",
            self.endpoint.url.trim_end_matches('/')
        );
        let mut post = self.http.post(&url).json(&body);
        if let Some(key) = &self.api_key {
            post = post.bearer_auth(key);
        }
        let resp = post.send().await.map_err(|e| describe_reqwest(&e))?;
        let status = resp.status();
        let text = resp
            .text()
            .await
            .map_err(|e| format!("reading the response: {}", describe_reqwest(&e)))?;
        if !status.is_success() {
            let detail: String = text.chars().take(300).collect();
            return Err(format!("HTTP {status}: {detail}"));
        }
        let v: Value = serde_json::from_str(&text).map_err(|e| {
            format!("the response is not JSON ({e}): is cloud.url the API's /v1 base?")
        })?;
        completion_of(&v)
    }
}

/// reqwest's top-level message hides the cause ("error sending request"); users need it.
fn describe_reqwest(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

/// The loop keeps assistant turns as the model's own text (so local KV reuse sees identical
/// tokens); an OpenAI endpoint wants calls as `tool_calls` and results tied to them by id.
fn openai_messages(messages: &[Value]) -> Vec<Value> {
    let mut out = Vec::with_capacity(messages.len());
    let mut pending_ids: Vec<String> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("");
        let content = m.get("content").and_then(Value::as_str).unwrap_or("");
        match role {
            "assistant" => {
                let (text, calls) = parse_tool_calls(content);
                if calls.is_empty() {
                    out.push(json!({"role": "assistant", "content": content}));
                    continue;
                }
                pending_ids.clear();
                let tool_calls: Vec<Value> = calls
                    .iter()
                    .enumerate()
                    .map(|(j, c)| {
                        let id = format!("call_{i}_{j}");
                        pending_ids.push(id.clone());
                        json!({"id": id, "type": "function",
                               "function": {"name": c.name, "arguments": c.arguments.to_string()}})
                    })
                    .collect();
                let text = text.trim();
                out.push(json!({
                    "role": "assistant",
                    "content": if text.is_empty() { Value::Null } else { Value::from(text) },
                    "tool_calls": tool_calls,
                }));
            }
            "tool" => {
                let id = if pending_ids.is_empty() {
                    format!("call_{i}")
                } else {
                    pending_ids.remove(0)
                };
                out.push(json!({"role": "tool", "tool_call_id": id, "content": content}));
            }
            _ => out.push(m.clone()),
        }
    }
    out
}

fn completion_of(v: &Value) -> Result<CloudCompletion, String> {
    let message = v
        .pointer("/choices/0/message")
        .ok_or("the response has no choices[0].message")?;
    let mut text = message
        .get("content")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    for call in message
        .get("tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let name = call
            .pointer("/function/name")
            .and_then(Value::as_str)
            .ok_or("a tool call in the response has no function.name")?;
        let raw = call
            .pointer("/function/arguments")
            .cloned()
            .unwrap_or(json!({}));
        // Arguments arrive as a JSON string; one that does not parse is passed on as a string,
        // so the runtime's schema check refuses it like any other invalid call.
        let arguments = match &raw {
            Value::String(s) => serde_json::from_str(s).unwrap_or(raw.clone()),
            _ => raw,
        };
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&format!(
            "{TOOL_CALL_OPEN}\n{}\n{TOOL_CALL_CLOSE}",
            json!({"name": name, "arguments": arguments})
        ));
    }
    let n = |p: &str| v.pointer(p).and_then(Value::as_u64).unwrap_or(0) as u32;
    Ok(CloudCompletion {
        text,
        prompt_tokens: n("/usage/prompt_tokens"),
        cached_tokens: n("/usage/prompt_tokens_details/cached_tokens"),
        completion_tokens: n("/usage/completion_tokens"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_calls_come_back_in_the_local_format_and_round_trip() {
        let resp = json!({
            "choices": [{"message": {"role": "assistant", "content": null, "tool_calls": [
                {"id": "x", "type": "function",
                 "function": {"name": "kv_set", "arguments": "{\"key\":\"a\",\"value\":\"1\"}"}}
            ]}}],
            "usage": {"prompt_tokens": 40, "completion_tokens": 9}
        });
        let c = completion_of(&resp).unwrap();
        let (text, calls) = parse_tool_calls(&c.text);
        assert_eq!(text.trim(), "");
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].name, "kv_set");
        assert_eq!(calls[0].arguments, json!({"key": "a", "value": "1"}));
        assert_eq!((c.prompt_tokens, c.completion_tokens), (40, 9));

        // The same turn sent back: a tool_calls message, and the result tied to it by id.
        let msgs = openai_messages(&[
            json!({"role": "user", "content": "store a"}),
            json!({"role": "assistant", "content": c.text}),
            json!({"role": "tool", "name": "kv_set", "content": "ok"}),
        ]);
        assert_eq!(msgs[1]["tool_calls"][0]["function"]["name"], "kv_set");
        assert_eq!(msgs[1]["content"], Value::Null);
        assert_eq!(msgs[2]["tool_call_id"], msgs[1]["tool_calls"][0]["id"]);
    }

    #[test]
    fn unparsable_arguments_stay_visible_for_the_schema_check() {
        let resp = json!({"choices": [{"message": {"tool_calls": [
            {"function": {"name": "f", "arguments": "{oops"}}
        ]}}]});
        let c = completion_of(&resp).unwrap();
        let (_, calls) = parse_tool_calls(&c.text);
        assert_eq!(calls[0].arguments, json!("{oops"));
    }

    #[test]
    fn a_response_without_choices_is_an_error_not_an_empty_answer() {
        assert!(completion_of(&json!({"error": "x"})).is_err());
    }
}
