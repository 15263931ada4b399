//! The agent spec: a YAML file that becomes an autonomous agent (semantics in docs/agent-spec.md).
//!
//! Parsing is strict so a typo never passes silently: every error carries file:line:column, and a
//! key the spec does not define is an error unless it starts with `x-` (user extensions).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A spec that failed to load: where, and what was expected.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("cannot read agent spec {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    /// A valid spec that asks for more than this node's `agent_policy` allows.
    #[error("agent spec {path}:{line}:{column}: {message}")]
    Refused {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentSpec {
    /// Unique name of the agent on this node; scopes its KV namespace, runs and audit records.
    pub agent_id: String,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub runtime: Runtime,
    #[serde(default)]
    pub capabilities: Vec<Capability>,
    #[serde(default)]
    pub model_config: ModelConfig,
    #[serde(default)]
    pub workflow_policy: WorkflowPolicy,
    /// System prompt: the agent's role and rules.
    #[serde(default)]
    pub instructions: Option<String>,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub memory: Memory,
    /// Task type → model (catalog name or path), overriding the node's `task_models`.
    #[serde(default)]
    pub task_types: BTreeMap<String, String>,
    #[serde(default)]
    pub cache: ResultCache,
    /// The text the spec was parsed from and its label, so checks after parsing (the node's
    /// agent policy) can name a line and column too.
    #[serde(skip)]
    origin: Option<std::sync::Arc<Origin>>,
}

#[derive(Debug)]
struct Origin {
    text: String,
    path: PathBuf,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Runtime {
    #[serde(default, rename = "type")]
    pub kind: RuntimeKind,
    /// Memory cap for the agent's Wasm components, e.g. `2GB`, `512MiB`.
    #[serde(default)]
    pub memory_limit: Option<bytesize::ByteSize>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RuntimeKind {
    /// Component tools and agent logic run in the Wasm sandbox.
    #[default]
    WasmEdge,
    /// Built-in and service tools only; `wasm:` endpoints are refused.
    Native,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Capability {
    /// The tool name the model sees and calls.
    pub name: String,
    pub endpoint: Endpoint,
    #[serde(default)]
    pub description: Option<String>,
    /// JSON schema of the call's arguments.
    #[serde(default)]
    pub parameters: Option<Value>,
    /// `mqtt:` only: each message on the topic also starts a run.
    #[serde(default)]
    pub subscribe: bool,
    /// `builtin:read_file` / `builtin:list_dir`: the directory the tool is confined to.
    #[serde(default)]
    pub root: Option<PathBuf>,
    /// `builtin:search_knowledge`: the knowledge collection it searches.
    #[serde(default)]
    pub collection: Option<String>,
    /// `builtin:doc_get` / `builtin:doc_set`: the shared CRDT document they read and write.
    #[serde(default)]
    pub document: Option<String>,
    /// Time one call may take.
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// `wasm:` only: what the component may touch (default: nothing).
    #[serde(default)]
    pub grants: Option<crate::Grants>,
    /// How the model sees this tool's results (default `lines`).
    #[serde(default)]
    pub observation: ObservationFormat,
    /// The grounding guard for this tool's arguments: `on` (default), `off`, or the names of
    /// free-text arguments it leaves alone.
    #[serde(default)]
    pub grounding: GroundingRule,
}

/// A capability's `grounding:`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum GroundingRule {
    Switch(Switch),
    /// Arguments whose values are free text (checked: all the others).
    FreeText(Vec<String>),
}

impl Default for GroundingRule {
    fn default() -> Self {
        Self::Switch(Switch::On)
    }
}

impl GroundingRule {
    /// `None` when the guard is off for this capability, else the arguments it leaves alone.
    pub fn free_arguments(&self) -> Option<&[String]> {
        match self {
            Self::Switch(Switch::On) => Some(&[]),
            Self::Switch(Switch::Off) => None,
            Self::FreeText(args) => Some(args),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Switch {
    #[default]
    On,
    Off,
}

/// A capability's `observation:`. `lines` shows a JSON result as `key=value` lines, one per item
/// of a list (small models misread nested JSON); `raw` shows results exactly as they came.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ObservationFormat {
    #[default]
    Lines,
    Raw,
}

/// Where a capability's calls go. Written as a URI in the spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Endpoint {
    /// Newline-delimited JSON with a local socket service.
    Unix(PathBuf),
    /// Publish to `topic` on the broker named `broker` (a node-config alias or a host).
    Mqtt {
        broker: String,
        port: u16,
        topic: String,
    },
    /// A WebAssembly component tool.
    Wasm(PathBuf),
    /// A tool built into the runtime.
    Builtin(String),
    /// Every tool of an MCP server started as a child process.
    McpStdio { command: String, args: Vec<String> },
    /// An HTTP request tool with this base URL (subject to the egress policy).
    Http(String),
}

/// The longest `agent_id`: it becomes part of KV namespaces, run keys and audit records.
pub const MAX_AGENT_ID_LEN: usize = 64;

/// Tokens one step may generate when the spec's `model_config.max_tokens` is unset.
pub const DEFAULT_MAX_TOKENS: u32 = 512;

/// Why `id` cannot be an agent's id, if it cannot: 1–64 letters, digits, `-`, `_` and `.` (no
/// `:`, so `agent:<id>` and `mesh:<node>:<id>` never collide).
pub fn check_agent_id(id: &str) -> Result<(), String> {
    let plain = !id.is_empty()
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if !plain {
        let shown: String = id.chars().take(MAX_AGENT_ID_LEN).collect();
        return Err(format!(
            "agent_id '{}' must be non-empty and use only letters, digits, '-', '_' and '.'",
            shown.escape_debug()
        ));
    }
    if id.len() > MAX_AGENT_ID_LEN {
        return Err(format!(
            "agent_id '{}…' is {} characters long; use at most {MAX_AGENT_ID_LEN}",
            &id[..MAX_AGENT_ID_LEN],
            id.len()
        ));
    }
    Ok(())
}

pub const BUILTIN_TOOLS: &[&str] = &[
    "read_file",
    "list_dir",
    "kv_get",
    "kv_set",
    "http_request",
    "mqtt_publish",
    "current_time",
    "search_knowledge",
    "doc_get",
    "doc_set",
];

impl TryFrom<String> for Endpoint {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        let bad = |why: &str| format!("invalid endpoint '{s}': {why}");
        if let Some(path) = s.strip_prefix("unix://") {
            if !path.starts_with('/') {
                return Err(bad(
                    "expected an absolute socket path, e.g. unix:///tmp/sensors.sock",
                ));
            }
            return Ok(Self::Unix(path.into()));
        }
        if let Some(rest) = s.strip_prefix("mqtt://") {
            let (authority, topic) = rest
                .split_once('/')
                .ok_or_else(|| bad("expected mqtt://HOST:PORT/TOPIC"))?;
            if topic.is_empty() {
                return Err(bad("the topic after the host is empty"));
            }
            let (broker, port) = match authority.rsplit_once(':') {
                Some((h, p)) => (
                    h,
                    p.parse::<u16>()
                        .map_err(|_| bad("the port is not a number from 0 to 65535"))?,
                ),
                None => (authority, 1883),
            };
            if broker.is_empty() {
                return Err(bad("the broker host is empty"));
            }
            return Ok(Self::Mqtt {
                broker: broker.into(),
                port,
                topic: topic.into(),
            });
        }
        if let Some(path) = s.strip_prefix("wasm:") {
            if path.is_empty() {
                return Err(bad("expected wasm:PATH to a .wasm component"));
            }
            return Ok(Self::Wasm(path.into()));
        }
        if let Some(name) = s.strip_prefix("builtin:") {
            if !BUILTIN_TOOLS.contains(&name) {
                return Err(bad(&format!(
                    "no built-in tool '{name}'; built-ins are {}",
                    BUILTIN_TOOLS.join(", ")
                )));
            }
            return Ok(Self::Builtin(name.into()));
        }
        if let Some(cmdline) = s.strip_prefix("mcp+stdio:") {
            // Shell quoting rules, so an argument may contain spaces; no shell ever runs it.
            let words = shell_words::split(cmdline)
                .map_err(|e| bad(&format!("the command line does not parse: {e}")))?;
            let mut words = words.into_iter();
            let command = words
                .next()
                .ok_or_else(|| bad("expected mcp+stdio:COMMAND ARGS"))?;
            return Ok(Self::McpStdio {
                command,
                args: words.collect(),
            });
        }
        if s.starts_with("http://") || s.starts_with("https://") {
            return Ok(Self::Http(s));
        }
        Err(bad(
            "unknown scheme; use unix://, mqtt://, wasm:, builtin:, mcp+stdio:, http:// or https://",
        ))
    }
}

impl Endpoint {
    /// The installed component a `wasm:NAME` endpoint names (no `/`, no `.wasm`); `None` for a
    /// `.wasm` file path or any other scheme.
    pub fn installed_component(&self) -> Option<String> {
        let Self::Wasm(path) = self else {
            return None;
        };
        let text = path.to_string_lossy();
        (!text.contains('/') && !text.ends_with(".wasm")).then(|| text.into_owned())
    }
}

impl From<Endpoint> for String {
    fn from(e: Endpoint) -> String {
        e.to_string()
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unix(p) => write!(f, "unix://{}", p.display()),
            Self::Mqtt {
                broker,
                port,
                topic,
            } => write!(f, "mqtt://{broker}:{port}/{topic}"),
            Self::Wasm(p) => write!(f, "wasm:{}", p.display()),
            Self::Builtin(n) => write!(f, "builtin:{n}"),
            Self::McpStdio { command, args } => {
                let argv: Vec<&str> = std::iter::once(command.as_str())
                    .chain(args.iter().map(String::as_str))
                    .collect();
                write!(f, "mcp+stdio:{}", shell_words::join(argv))
            }
            Self::Http(u) => f.write_str(u),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ModelConfig {
    /// A GGUF path or a catalog name; a missing file falls back to the node's default model.
    #[serde(default)]
    pub path: Option<String>,
    /// Longest prompt + answer of one step, in tokens.
    #[serde(default)]
    pub context_window: Option<u32>,
    #[serde(default)]
    pub temperature: Option<f32>,
    /// Tokens one step may generate.
    #[serde(default)]
    pub max_tokens: Option<u32>,
    #[serde(default)]
    pub seed: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkflowPolicy {
    /// Mesh node or tier to offload to when the local node cannot serve.
    #[serde(default)]
    pub fallback: Option<String>,
    /// Extra attempts for a failed tool call or offload.
    #[serde(default = "default_retries")]
    pub max_retries: u32,
    /// Whether user data may leave the local trust domain. Off unless the spec says so.
    #[serde(default)]
    pub egress_allowed: bool,
    /// The grounding guard (numbers and identifiers in calls and answers must have been shown
    /// to the model): `on` by default; `off` for agents that write free text.
    #[serde(default)]
    pub grounding: Switch,
    /// Whether one model turn may hold several tool calls (run concurrently, results shown in
    /// order), as OpenAI's `parallel_tool_calls`. Off by default in agent runs: with it, the
    /// default model tends to call a tool once per item of a list it read, fitting or not
    /// (measured on the factory monitor; see `edgewise eval`).
    #[serde(default)]
    pub parallel_tool_calls: bool,
}

fn default_retries() -> u32 {
    2
}

impl Default for WorkflowPolicy {
    fn default() -> Self {
        Self {
            fallback: None,
            max_retries: default_retries(),
            egress_allowed: false,
            grounding: Switch::On,
            parallel_tool_calls: false,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Limits {
    /// Model turns per run (each a tool call or the answer).
    #[serde(default = "default_max_steps")]
    pub max_steps: u32,
    #[serde(default = "default_max_tool_calls")]
    pub max_tool_calls: u32,
    /// Successful tool calls required before the model may answer. Agents exist to perceive and
    /// act, and small models otherwise answer from imagination; set 0 for agents that may
    /// answer directly.
    #[serde(default = "default_min_tool_calls")]
    pub min_tool_calls: u32,
    /// Tool name → calls allowed per run.
    #[serde(default)]
    pub tool_budgets: BTreeMap<String, u32>,
    /// Wall-clock limit of one run.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn default_max_steps() -> u32 {
    10
}
fn default_max_tool_calls() -> u32 {
    20
}
fn default_min_tool_calls() -> u32 {
    1
}
fn default_timeout() -> Duration {
    Duration::from_secs(300)
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_steps: default_max_steps(),
            max_tool_calls: default_max_tool_calls(),
            min_tool_calls: default_min_tool_calls(),
            tool_budgets: BTreeMap::new(),
            timeout: default_timeout(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Memory {
    /// Earlier runs' messages (task and answer) carried into a new run; 0 starts every run fresh.
    #[serde(default)]
    pub history_window: u32,
    /// Retrieval before the first step: the passages of this knowledge collection nearest to the
    /// task are put in front of it, each with the id an answer cites.
    #[serde(default)]
    pub knowledge: Option<KnowledgeMemory>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KnowledgeMemory {
    pub collection: String,
    /// How many passages to retrieve.
    #[serde(default = "default_passages")]
    pub passages: usize,
}

fn default_passages() -> usize {
    3
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ResultCache {
    /// Reuse the answer of an identical task (same agent, normalised input) for this long. Off when
    /// unset: most agents act on the world and must not skip a run.
    #[serde(default, with = "humantime_serde")]
    pub ttl: Option<Duration>,
}

impl AgentSpec {
    pub fn load(path: &Path) -> Result<Self, SpecError> {
        let text = std::fs::read_to_string(path).map_err(|source| SpecError::Read {
            path: path.into(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates; `path` only labels errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, SpecError> {
        let invalid = |line, column, message: String| SpecError::Invalid {
            path: path.into(),
            line,
            column,
            message,
        };
        let mut unknown: Vec<Vec<String>> = Vec::new();
        let de = serde_yaml::Deserializer::from_str(text);
        let spec: AgentSpec = serde_ignored::deserialize(de, |p| {
            let segments = path_segments(&p);
            let extension = segments.last().is_some_and(|k| k.starts_with("x-"));
            if !extension {
                unknown.push(segments);
            }
        })
        .map_err(|e| {
            let message = e.to_string();
            let (line, column) = endpoint_error_location(text, &message)
                .or_else(|| e.location().map(|l| (l.line(), l.column())))
                .unwrap_or((1, 1));
            let message = match message.rsplit_once(" at line ") {
                Some((m, _)) => m.to_owned(),
                None => message,
            };
            invalid(line, column, message)
        })?;
        if let Some(segments) = unknown.first() {
            let (line, column) = locate_key(text, segments).unwrap_or((1, 1));
            let key = segments.join(".");
            return Err(invalid(
                line,
                column,
                format!("unknown key `{key}` (extensions must start with `x-`)"),
            ));
        }
        let mut spec = spec;
        spec.validate().map_err(|(segments, message)| {
            let (line, column) = locate_key(text, &segments).unwrap_or((1, 1));
            invalid(line, column, message)
        })?;
        spec.origin = Some(std::sync::Arc::new(Origin {
            text: text.to_owned(),
            path: path.to_path_buf(),
        }));
        Ok(spec)
    }

    /// The node's refusal of what this spec asks for, at the key that asks for it (1:1 for a spec
    /// not parsed from text).
    pub fn refusal(&self, v: crate::agent_policy::Violation) -> SpecError {
        let (path, (line, column)) = match &self.origin {
            Some(o) => (
                o.path.clone(),
                locate_key(&o.text, &v.key).unwrap_or((1, 1)),
            ),
            None => (PathBuf::from(&self.agent_id), (1, 1)),
        };
        SpecError::Refused {
            path,
            line,
            column,
            message: v.message,
        }
    }

    /// Checks that need the whole spec; returns the path of the offending key.
    fn validate(&self) -> Result<(), (Vec<String>, String)> {
        let key = |parts: &[&str]| parts.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        check_agent_id(&self.agent_id).map_err(|message| (key(&["agent_id"]), message))?;
        let mut seen = std::collections::BTreeSet::new();
        for (i, cap) in self.capabilities.iter().enumerate() {
            let idx = i.to_string();
            let valid_name = !cap.name.is_empty()
                && cap
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !valid_name {
                return Err((
                    key(&["capabilities", &idx, "name"]),
                    format!(
                        "capability name '{}' must use only letters, digits, '_' and '-'",
                        cap.name
                    ),
                ));
            }
            if !seen.insert(cap.name.as_str()) {
                return Err((
                    key(&["capabilities", &idx, "name"]),
                    format!("capability '{}' is declared twice", cap.name),
                ));
            }
            if let Some(p) = &cap.parameters {
                if p.get("type").and_then(Value::as_str) != Some("object") {
                    return Err((
                        key(&["capabilities", &idx, "parameters"]),
                        "parameters must be a JSON schema with `type: object`".into(),
                    ));
                }
            }
            if cap.subscribe && !matches!(cap.endpoint, Endpoint::Mqtt { .. }) {
                return Err((
                    key(&["capabilities", &idx, "subscribe"]),
                    "`subscribe` applies to mqtt:// endpoints only".into(),
                ));
            }
        }
        if let Some(t) = self.model_config.temperature {
            if !(0.0..=2.0).contains(&t) {
                return Err((
                    key(&["model_config", "temperature"]),
                    format!("temperature {t} is outside 0.0..=2.0"),
                ));
            }
        }
        for name in self.limits.tool_budgets.keys() {
            if !self.capabilities.iter().any(|c| &c.name == name) {
                return Err((
                    key(&["limits", "tool_budgets", name]),
                    format!("tool_budgets names '{name}', which is not a capability of this agent"),
                ));
            }
        }
        self.check_bounds()
    }

    /// Every number a spec sets stays within `bounds`: a typo like `passages: 10000000000` is a
    /// clear error here, not an allocation that aborts the node.
    fn check_bounds(&self) -> Result<(), (Vec<String>, String)> {
        use bounds::*;
        let key = |parts: &[&str]| parts.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let within = |parts: &[&str], value: u64, (lo, hi): (u64, u64)| {
            if (lo..=hi).contains(&value) {
                return Ok(());
            }
            Err((
                key(parts),
                format!(
                    "{} is {value}; it must be from {lo} to {hi}",
                    parts.last().copied().unwrap_or_default()
                ),
            ))
        };
        let within_time = |parts: &[&str], value: Duration, (lo, hi): (Duration, Duration)| {
            if (lo..=hi).contains(&value) {
                return Ok(());
            }
            Err((
                key(parts),
                format!(
                    "{} is {}; it must be from {} to {}",
                    parts.last().copied().unwrap_or_default(),
                    humantime::format_duration(value),
                    humantime::format_duration(lo),
                    humantime::format_duration(hi)
                ),
            ))
        };
        let m = &self.model_config;
        if let Some(w) = m.context_window {
            within(
                &["model_config", "context_window"],
                w.into(),
                CONTEXT_WINDOW,
            )?;
        }
        if let Some(t) = m.max_tokens {
            within(&["model_config", "max_tokens"], t.into(), MAX_TOKENS)?;
        }
        let l = &self.limits;
        within(&["limits", "max_steps"], l.max_steps.into(), MAX_STEPS)?;
        within(
            &["limits", "max_tool_calls"],
            l.max_tool_calls.into(),
            TOOL_CALLS,
        )?;
        within(
            &["limits", "min_tool_calls"],
            l.min_tool_calls.into(),
            (0, l.max_tool_calls.into()),
        )?;
        for (name, n) in &l.tool_budgets {
            within(
                &["limits", "tool_budgets", name.as_str()],
                (*n).into(),
                TOOL_CALLS,
            )?;
        }
        within_time(&["limits", "timeout"], l.timeout, RUN_TIMEOUT)?;
        within(
            &["workflow_policy", "max_retries"],
            self.workflow_policy.max_retries.into(),
            MAX_RETRIES,
        )?;
        within(
            &["memory", "history_window"],
            self.memory.history_window.into(),
            HISTORY_WINDOW,
        )?;
        if let Some(k) = &self.memory.knowledge {
            within(
                &["memory", "knowledge", "passages"],
                k.passages as u64,
                PASSAGES,
            )?;
        }
        if let Some(ttl) = self.cache.ttl {
            within_time(&["cache", "ttl"], ttl, CACHE_TTL)?;
        }
        for (i, cap) in self.capabilities.iter().enumerate() {
            if let Some(t) = cap.timeout {
                within_time(
                    &["capabilities", i.to_string().as_str(), "timeout"],
                    t,
                    CALL_TIMEOUT,
                )?;
            }
        }
        if let Some(m) = self.runtime.memory_limit {
            within(&["runtime", "memory_limit"], m.as_u64(), MEMORY_LIMIT)?;
        }
        Ok(())
    }
}

/// The inclusive range each number of a spec must fall in (docs/agent-spec.md lists them): wide
/// enough for any agent an edge node runs, narrow enough that no value exhausts the node.
pub mod bounds {
    use std::time::Duration;

    /// Tokens of one step's prompt + answer (the largest context of the models we run).
    pub const CONTEXT_WINDOW: (u64, u64) = (1, 131_072);
    /// Tokens one step may generate.
    pub const MAX_TOKENS: (u64, u64) = (1, 32_768);
    pub const MAX_STEPS: (u64, u64) = (1, 1_000);
    /// `max_tool_calls` and each of `tool_budgets`.
    pub const TOOL_CALLS: (u64, u64) = (0, 10_000);
    pub const MAX_RETRIES: (u64, u64) = (0, 100);
    /// Earlier runs carried into a new one.
    pub const HISTORY_WINDOW: (u64, u64) = (0, 1_000);
    /// Passages retrieved before the first step.
    pub const PASSAGES: (u64, u64) = (1, 100);
    pub const RUN_TIMEOUT: (Duration, Duration) =
        (Duration::from_secs(1), Duration::from_secs(24 * 3600));
    /// One tool call.
    pub const CALL_TIMEOUT: (Duration, Duration) =
        (Duration::from_millis(1), Duration::from_secs(3600));
    pub const CACHE_TTL: (Duration, Duration) = (Duration::ZERO, Duration::from_secs(30 * 86_400));
    /// Linear memory of the agent's Wasm components, in bytes (16 GiB).
    pub const MEMORY_LIMIT: (u64, u64) = (64 * 1024, 16 << 30);
}

/// serde reports a bad endpoint at its capability; point at the `endpoint` key instead. The message
/// starts with the capability's path, e.g. `capabilities[1]: invalid endpoint ...`.
fn endpoint_error_location(text: &str, message: &str) -> Option<(usize, usize)> {
    let (path, rest) = message.split_once(": ")?;
    if !rest.starts_with("invalid endpoint") {
        return None;
    }
    let index = path.strip_prefix("capabilities[")?.strip_suffix(']')?;
    locate_key(
        text,
        &["capabilities".into(), index.into(), "endpoint".into()],
    )
}

fn path_segments(p: &serde_ignored::Path<'_>) -> Vec<String> {
    use serde_ignored::Path as P;
    match p {
        P::Root => Vec::new(),
        P::Seq { parent, index } => {
            let mut v = path_segments(parent);
            v.push(index.to_string());
            v
        }
        P::Map { parent, key } => {
            let mut v = path_segments(parent);
            v.push(key.clone());
            v
        }
        P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => {
            path_segments(parent)
        }
    }
}

/// Finds the 1-based line and column of the key at `segments` (map keys and sequence indices)
/// by walking the YAML event stream, which, unlike serde, keeps positions.
pub fn locate_key(text: &str, segments: &[String]) -> Option<(usize, usize)> {
    use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
    use yaml_rust2::scanner::Marker;

    enum Frame {
        Map {
            expecting_key: bool,
            key: Option<String>,
        },
        Seq {
            next: usize,
        },
    }
    struct Walker<'s> {
        target: &'s [String],
        stack: Vec<Frame>,
        found: Option<(usize, usize)>,
    }
    impl Walker<'_> {
        /// Path of the node about to start (segments of enclosing frames).
        fn current_path(&self) -> Vec<String> {
            self.stack
                .iter()
                .filter_map(|f| match f {
                    Frame::Map { key, .. } => key.clone(),
                    Frame::Seq { next } => Some(next.to_string()),
                })
                .collect()
        }
        /// A value node finished: advance the parent.
        fn value_done(&mut self) {
            match self.stack.last_mut() {
                Some(Frame::Map { expecting_key, key }) => {
                    *expecting_key = true;
                    *key = None;
                }
                Some(Frame::Seq { next }) => *next += 1,
                None => {}
            }
        }
    }
    impl MarkedEventReceiver for Walker<'_> {
        fn on_event(&mut self, ev: Event, mark: Marker) {
            if self.found.is_some() {
                return;
            }
            let at = (mark.line(), mark.col() + 1);
            // A sequence element about to start may itself be the target (index path).
            if let Some(Frame::Seq { next }) = self.stack.last() {
                if !matches!(ev, Event::SequenceEnd) {
                    let mut p = self.current_path();
                    p.pop();
                    p.push(next.to_string());
                    if p == self.target {
                        self.found = Some(at);
                        return;
                    }
                }
            }
            match ev {
                Event::Scalar(value, ..) => {
                    if let Some(Frame::Map { expecting_key, key }) = self.stack.last_mut() {
                        if *expecting_key {
                            *expecting_key = false;
                            *key = Some(value);
                            if self.current_path() == self.target {
                                self.found = Some(at);
                            }
                            return;
                        }
                    }
                    self.value_done();
                }
                Event::Alias(_) => self.value_done(),
                Event::MappingStart(..) => self.stack.push(Frame::Map {
                    expecting_key: true,
                    key: None,
                }),
                Event::SequenceStart(..) => self.stack.push(Frame::Seq { next: 0 }),
                Event::MappingEnd | Event::SequenceEnd => {
                    self.stack.pop();
                    self.value_done();
                }
                _ => {}
            }
        }
    }

    let mut walker = Walker {
        target: segments,
        stack: Vec::new(),
        found: None,
    };
    let mut parser = Parser::new_from_str(text);
    // A syntax error here is reported by serde already; positions found so far still count.
    let _ = parser.load(&mut walker, false);
    walker.found
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seed's spec, byte for byte.
    pub const SEED_SPEC: &str = r#"# agent-config.yaml
# Edge-Native Agent Specification
agent_id: "factory-floor-monitor-01"
version: "2026.3.1"
runtime:
  type: "wasm-edge"
  memory_limit: "2GB"
capabilities:
  - name: "local_sensor_read"
    endpoint: "unix:///tmp/sensors.sock"
  - name: "alert_system"
    endpoint: "mqtt://local-broker:1883/alerts"
model_config:
  path: "/models/phi-4-mini-q4.gguf"
  context_window: 4096
  temperature: 0.2
workflow_policy:
  fallback: "regional-fog-node"   # If local VRAM is full, offload to nearby node
  max_retries: 3
  egress_allowed: false           # Strict local-only mode for data privacy
"#;

    fn parse(text: &str) -> Result<AgentSpec, SpecError> {
        AgentSpec::parse(text, Path::new("a.yaml"))
    }

    #[test]
    fn seed_spec_loads_unchanged() {
        let s = parse(SEED_SPEC).unwrap();
        assert_eq!(s.agent_id, "factory-floor-monitor-01");
        assert_eq!(s.runtime.kind, RuntimeKind::WasmEdge);
        assert_eq!(s.runtime.memory_limit.unwrap().as_u64(), 2_000_000_000);
        assert_eq!(
            s.capabilities[0].endpoint,
            Endpoint::Unix("/tmp/sensors.sock".into())
        );
        assert_eq!(
            s.capabilities[1].endpoint,
            Endpoint::Mqtt {
                broker: "local-broker".into(),
                port: 1883,
                topic: "alerts".into()
            }
        );
        assert_eq!(s.model_config.context_window, Some(4096));
        assert_eq!(s.workflow_policy.max_retries, 3);
        assert!(!s.workflow_policy.egress_allowed);
        assert_eq!(
            s.workflow_policy.fallback.as_deref(),
            Some("regional-fog-node")
        );
    }

    #[test]
    fn an_agent_id_longer_than_64_characters_is_refused_at_its_position() {
        let at_limit = "a".repeat(MAX_AGENT_ID_LEN);
        assert!(parse(&format!("agent_id: {at_limit}\n")).is_ok());
        let err = parse(&format!("version: \"1\"\nagent_id: {at_limit}b\n"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("a.yaml:2:1:") && err.contains("65 characters long; use at most 64"),
            "{err}"
        );
        let err = parse("agent_id: \"a:b\"\n").unwrap_err().to_string();
        assert!(err.contains("only letters, digits"), "{err}");
    }

    #[test]
    fn a_wasm_endpoint_names_an_installed_component_or_a_file() {
        let named = |e: &str| {
            Endpoint::try_from(e.to_owned())
                .unwrap()
                .installed_component()
        };
        assert_eq!(named("wasm:calc").as_deref(), Some("calc"));
        assert_eq!(named("wasm:components/calc.wasm"), None);
        assert_eq!(named("wasm:calc.wasm"), None);
        assert_eq!(named("builtin:kv_get"), None);
    }

    #[test]
    fn unknown_key_reports_its_line_and_column() {
        let text = SEED_SPEC.replace("  max_retries: 3", "  max_retrys: 3");
        let err = parse(&text).unwrap_err().to_string();
        assert!(
            err.starts_with("a.yaml:19:3: unknown key `workflow_policy.max_retrys`"),
            "{err}"
        );
    }

    #[test]
    fn unknown_key_in_a_list_item_is_located() {
        let text = SEED_SPEC.replace(
            "    endpoint: \"mqtt://local-broker:1883/alerts\"",
            "    endpoint: \"mqtt://local-broker:1883/alerts\"\n    descripton: x",
        );
        let err = parse(&text).unwrap_err().to_string();
        assert!(
            err.starts_with("a.yaml:13:5: unknown key `capabilities.1.descripton`"),
            "{err}"
        );
    }

    #[test]
    fn extension_keys_are_allowed_anywhere() {
        let text =
            format!("{SEED_SPEC}x-owner: plant-ops\nlimits:\n  x-note: hi\n  max_steps: 4\n");
        let s = parse(&text).unwrap();
        assert_eq!(s.limits.max_steps, 4);
    }

    #[test]
    fn wrong_type_reports_position_and_expectation() {
        let text = SEED_SPEC.replace("context_window: 4096", "context_window: big");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.starts_with("a.yaml:15:19:"), "{err}");
        assert!(err.contains("invalid type"), "{err}");
    }

    #[test]
    fn bad_endpoint_names_the_schemes() {
        let text = SEED_SPEC.replace("unix:///tmp/sensors.sock", "ftp://x");
        let err = parse(&text).unwrap_err().to_string();
        assert!(
            err.starts_with("a.yaml:10:5: capabilities[0]: invalid endpoint 'ftp://x'"),
            "{err}"
        );
        assert!(err.contains("unknown scheme"), "{err}");
    }

    #[test]
    fn semantic_errors_point_at_the_key() {
        let text = SEED_SPEC.replace("temperature: 0.2", "temperature: 7");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.starts_with("a.yaml:16:3: temperature 7"), "{err}");
        let text = SEED_SPEC.replace("name: \"alert_system\"", "name: \"local_sensor_read\"");
        let err = parse(&text).unwrap_err().to_string();
        assert!(
            err.starts_with("a.yaml:11:5: capability 'local_sensor_read' is declared twice"),
            "{err}"
        );
    }

    #[test]
    fn numbers_beyond_their_bounds_are_errors_at_their_key() {
        for (extra, at, what) in [
            (
                "memory:\n  knowledge:\n    collection: c\n    passages: 10000000000\n",
                "a.yaml:24:5:",
                "passages is 10000000000; it must be from 1 to 100",
            ),
            (
                "memory:\n  history_window: 5000\n",
                "a.yaml:22:3:",
                "history_window is 5000",
            ),
            (
                "limits:\n  max_steps: 0\n",
                "a.yaml:22:3:",
                "max_steps is 0; it must be from 1",
            ),
            (
                "limits:\n  timeout: 100years\n",
                "a.yaml:22:3:",
                "timeout is 100years",
            ),
            (
                "limits:\n  max_tool_calls: 2\n  min_tool_calls: 3\n",
                "a.yaml:23:3:",
                "min_tool_calls is 3; it must be from 0 to 2",
            ),
            ("cache:\n  ttl: 1year\n", "a.yaml:22:3:", "ttl is"),
        ] {
            let err = parse(&format!("{SEED_SPEC}{extra}"))
                .unwrap_err()
                .to_string();
            assert!(err.starts_with(at) && err.contains(what), "{extra}: {err}");
        }
        for (from, to, at, what) in [
            (
                "context_window: 4096",
                "context_window: 4000000",
                "a.yaml:15:3:",
                "context_window is 4000000",
            ),
            (
                "max_retries: 3",
                "max_retries: 1000000",
                "a.yaml:19:3:",
                "max_retries is 1000000",
            ),
            (
                "memory_limit: \"2GB\"",
                "memory_limit: \"1PB\"",
                "a.yaml:7:3:",
                "memory_limit is",
            ),
        ] {
            let err = parse(&SEED_SPEC.replace(from, to)).unwrap_err().to_string();
            assert!(err.starts_with(at) && err.contains(what), "{to}: {err}");
        }
        let slow_tool = SEED_SPEC.replace(
            "    endpoint: \"unix:///tmp/sensors.sock\"",
            "    endpoint: \"unix:///tmp/sensors.sock\"\n    timeout: 2days",
        );
        let err = parse(&slow_tool).unwrap_err().to_string();
        assert!(err.starts_with("a.yaml:11:5: timeout is 2days"), "{err}");
    }

    #[test]
    fn endpoints_round_trip() {
        for s in [
            "unix:///run/x.sock",
            "mqtt://broker:1884/a/b",
            "wasm:components/calc.wasm",
            "builtin:read_file",
            "mcp+stdio:python3 server.py --flag",
            "mcp+stdio:python3 'plant server.py'",
            "https://example.com/api",
        ] {
            let e = Endpoint::try_from(s.to_owned()).unwrap();
            assert_eq!(e.to_string(), s);
        }
        assert!(Endpoint::try_from("builtin:rm_rf".to_owned()).is_err());
        assert!(Endpoint::try_from("mqtt://host:99999/t".to_owned()).is_err());
    }
}
