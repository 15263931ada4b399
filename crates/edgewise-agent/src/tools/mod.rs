//! Tools an agent can call, built from the spec's capabilities. Each endpoint scheme is one module.

mod builtin;
mod http;
mod knowledge;
mod mcp;
mod mqtt;
mod netns;
mod unix;
pub mod wasm;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use edgewise_core::{AgentSpec, Capability, Endpoint, NodeConfig, RuntimeKind};
use edgewise_infer::ToolSpec;
use edgewise_store::Kv;
use serde_json::{json, Value};

use crate::AgentError;

pub use mqtt::publish as mqtt_publish;

/// Why a call produced no result. The message goes back to the model as the observation.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ToolError {
    /// The call broke policy or its contract (egress, path outside the root, unknown tool, bad
    /// arguments). Audited as `refused`.
    #[error("refused: {0}")]
    Refused(String),
    /// The tool ran and failed (service down, timeout, HTTP error). Audited as `tool_error`.
    #[error("failed: {0}")]
    Failed(String),
}

#[async_trait]
pub trait Tool: Send + Sync {
    fn spec(&self) -> &ToolSpec;
    /// `args` already satisfy `spec().parameters`.
    async fn call(&self, args: Value) -> Result<String, ToolError>;
    /// Wasm components may call other tools, but not components (no unbounded call depth).
    fn is_component(&self) -> bool {
        false
    }
}

/// What tools need from the node.
#[derive(Clone)]
pub struct ToolContext {
    pub agent_id: String,
    pub kv: Arc<Kv>,
    pub config: NodeConfig,
    /// What the agent's tools may reach (its `egress_allowed` under the node's policy).
    pub egress: crate::egress::EgressPolicy,
    /// The node's data dir (`agent_policy.file_roots` are relative to it).
    pub home: PathBuf,
    /// Relative paths in the spec (roots, components) resolve against this.
    pub spec_dir: PathBuf,
    /// The node's Wasm components (`wasm:NAME`, `wasm:PATH`).
    pub components: Arc<crate::components::ComponentRegistry>,
    /// The agent's model, for components granted inference.
    pub engine: wasm::EngineSlot,
    /// The node's embedding model, for components granted inference.
    pub embedder: Option<Arc<edgewise_infer::LazyEmbedder>>,
    /// The agent's other tools, for components granted `tools`.
    pub tools: wasm::ToolsSlot,
    /// The node's vector memory (`builtin:search_knowledge`).
    pub knowledge: Arc<crate::knowledge::KnowledgeSlot>,
    /// The neighbour that placed this run here, if one did. Its state (KV, cached answers) then
    /// lives in a scope of that node's, apart from this node's agent of the same id.
    pub placed_by: Option<String>,
}

impl ToolContext {
    /// `data` is the node's data dir (installed components, compiled artifacts).
    pub fn new(
        agent_id: &str,
        kv: Arc<Kv>,
        config: NodeConfig,
        egress_allowed: bool,
        spec_dir: PathBuf,
        data: &edgewise_core::DataDir,
    ) -> Self {
        let components = Arc::new(crate::components::ComponentRegistry::new(
            data,
            config.trusted_keys.clone(),
        ));
        Self {
            agent_id: agent_id.to_owned(),
            kv,
            egress: crate::egress::EgressPolicy::new(&config, egress_allowed),
            home: data.root().to_path_buf(),
            config,
            spec_dir,
            components,
            engine: wasm::EngineSlot::default(),
            embedder: None,
            tools: wasm::ToolsSlot::default(),
            knowledge: Arc::new(crate::knowledge::KnowledgeSlot::new(data.knowledge())),
            placed_by: None,
        }
    }

    /// The agent's own KV namespace (`builtin:kv_get`/`kv_set`): `agent:<id>` for this node's
    /// agents, `mesh:<node>:<id>` for a run `node` placed here, so a placed spec that names a
    /// local agent's id cannot read or overwrite that agent's data.
    pub fn kv_namespace(&self) -> String {
        match &self.placed_by {
            Some(node) => edgewise_core::placed_kv_namespace(node, &self.agent_id),
            None => format!("agent:{}", self.agent_id),
        }
    }
}

/// Resolves a tool's destination under the egress policy: a policy refusal is `Refused`, a name
/// that does not resolve is `Failed`.
pub async fn resolve_destination(
    host: &str,
    port: u16,
    egress: &crate::egress::EgressPolicy,
) -> Result<Vec<std::net::SocketAddr>, ToolError> {
    use crate::egress::{resolve_checked, EgressError};
    resolve_checked(host, port, egress)
        .await
        .map_err(|e| match e {
            EgressError::Denied { .. }
            | EgressError::Special { .. }
            | EgressError::Placed { .. } => ToolError::Refused(e.to_string()),
            EgressError::Unresolvable { .. } => ToolError::Failed(e.to_string()),
        })
}

pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

struct Registered {
    tool: Arc<dyn Tool>,
    validator: jsonschema::Validator,
    /// How the model sees this tool's results and which arguments are checked for grounding
    /// (its capability's `observation:` and `grounding:`).
    settings: ToolSettings,
}

/// What a capability says about the tools it brings, besides how to call them.
#[derive(Debug, Clone, Default)]
pub struct ToolSettings {
    pub observation: edgewise_core::ObservationFormat,
    pub grounding: edgewise_core::GroundingRule,
}

/// The agent's tools with compiled argument validators, in the order the spec declares them (the
/// order the model sees them in, which small models are sensitive to).
#[derive(Default, Clone)]
pub struct ToolRegistry {
    tools: Vec<(String, Arc<Registered>)>,
}

impl ToolRegistry {
    /// Builds every capability of `spec`; an endpoint this node cannot serve is an error now, not
    /// at the first call. MCP servers are started here (and stop with the registry).
    pub async fn from_spec(spec: &AgentSpec, ctx: &ToolContext) -> Result<Self, AgentError> {
        let mut reg = Self::default();
        // A subscribed topic is an input (a trigger, see `triggers`), not a tool: an agent that
        // could publish to its own trigger topic would start itself in a loop.
        for cap in spec.capabilities.iter().filter(|c| !c.subscribe) {
            let failed = |message| AgentError::Capability {
                name: cap.name.clone(),
                endpoint: cap.endpoint.to_string(),
                message,
            };
            let tools = match &cap.endpoint {
                Endpoint::McpStdio { command, args } => mcp::connect(
                    command,
                    args,
                    &ctx.spec_dir,
                    mcp_network(ctx, command, args),
                    cap.timeout.unwrap_or(DEFAULT_TIMEOUT),
                )
                .await
                .map_err(failed)?,
                Endpoint::Wasm(target) if spec.runtime.kind == RuntimeKind::WasmEdge => {
                    wasm::connect(cap, spec, ctx, target).map_err(failed)?
                }
                _ => vec![build(cap, ctx).map_err(failed)?],
            };
            for tool in tools {
                let settings = ToolSettings {
                    observation: cap.observation,
                    grounding: cap.grounding.clone(),
                };
                reg.insert_with(tool, settings).map_err(failed)?;
            }
        }
        Ok(reg)
    }

    pub fn insert(&mut self, tool: Arc<dyn Tool>) -> Result<(), String> {
        self.insert_with(tool, ToolSettings::default())
    }

    /// Like `insert`, with the capability's settings for the tool.
    pub fn insert_with(
        &mut self,
        tool: Arc<dyn Tool>,
        settings: ToolSettings,
    ) -> Result<(), String> {
        let validator = jsonschema::validator_for(&tool.spec().parameters)
            .map_err(|e| format!("parameters is not a valid JSON schema: {e}"))?;
        let name = tool.spec().name.clone();
        if self.get(&name).is_some() {
            return Err(format!("a tool named '{name}' is already registered"));
        }
        self.tools.push((
            name,
            Arc::new(Registered {
                tool,
                validator,
                settings,
            }),
        ));
        Ok(())
    }

    /// The tools that are not Wasm components: what components may call.
    pub fn without_components(&self) -> Self {
        Self {
            tools: self
                .tools
                .iter()
                .filter(|(_, r)| !r.tool.is_component())
                .cloned()
                .collect(),
        }
    }

    fn get(&self, name: &str) -> Option<&Arc<Registered>> {
        self.tools.iter().find(|(n, _)| n == name).map(|(_, r)| r)
    }

    /// The text the model sees for a result of the tool `name`.
    pub fn observation(&self, name: &str, result: &str) -> String {
        let format = self
            .get(name)
            .map(|r| r.settings.observation)
            .unwrap_or_default();
        crate::observation::render(result, format)
    }

    /// The arguments of `name` the grounding guard leaves alone; `None` when it is off.
    pub fn grounding_free_arguments(&self, name: &str) -> Option<Vec<String>> {
        let reg = self.get(name)?;
        reg.settings
            .grounding
            .free_arguments()
            .map(<[String]>::to_vec)
    }

    pub fn specs(&self) -> Vec<ToolSpec> {
        self.tools
            .iter()
            .map(|(_, r)| r.tool.spec().clone())
            .collect()
    }

    /// OpenAI-shaped tool objects, as chat templates expect them.
    pub fn openai_tools(&self) -> Vec<Value> {
        self.specs().iter().map(openai_tool).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.tools.is_empty()
    }

    /// Checks name and arguments, then calls. Refusals never reach the tool.
    pub async fn call(&self, name: &str, args: &Value) -> Result<String, ToolError> {
        let reg = self.get(name).ok_or_else(|| {
            ToolError::Refused(format!(
                "there is no tool named '{name}'; the tools are: {}",
                self.tools
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
        let problems: Vec<String> = reg
            .validator
            .iter_errors(args)
            .map(|e| {
                let at = e.instance_path().to_string();
                if at.is_empty() {
                    e.to_string()
                } else {
                    format!("{at}: {e}")
                }
            })
            .collect();
        if !problems.is_empty() {
            return Err(ToolError::Refused(format!(
                "arguments for '{name}' do not match its schema: {}",
                problems.join("; ")
            )));
        }
        reg.tool.call(args.clone()).await
    }
}

/// An MCP server is a process the node cannot watch socket by socket: under `egress_allowed:
/// false` it gets no network at all, unless the operator trusts that command line with the
/// node's (`agent_policy.mcp_commands_with_network`, e.g. a server that talks to a PLC).
fn mcp_network(ctx: &ToolContext, command: &str, args: &[String]) -> mcp::Network {
    let policy = &ctx.config.agent_policy;
    if ctx.egress.egress_allowed || policy.mcp_command_has_network(command, args) {
        mcp::Network::Node
    } else {
        mcp::Network::LoopbackOnly
    }
}

fn build(cap: &Capability, ctx: &ToolContext) -> Result<Arc<dyn Tool>, String> {
    let timeout = cap.timeout.unwrap_or(DEFAULT_TIMEOUT);
    let spec_for = |default_description: String, default_parameters: Value| ToolSpec {
        name: cap.name.clone(),
        description: cap.description.clone().unwrap_or(default_description),
        parameters: cap.parameters.clone().unwrap_or(default_parameters),
    };
    Ok(match &cap.endpoint {
        Endpoint::Unix(path) => Arc::new(unix::UnixTool::new(
            spec_for(
                format!(
                    "{}: query the local service at {} and return its JSON reply.",
                    words(&cap.name),
                    cap.endpoint
                ),
                // Without declared parameters the service gets an empty request: guessing fields
                // would only let the model invent them.
                json!({"type": "object", "properties": {}, "additionalProperties": false}),
            ),
            path.clone(),
            timeout,
        )),
        Endpoint::Mqtt {
            broker,
            port,
            topic,
        } => Arc::new(mqtt::MqttTool::new(
            spec_for(
                // Readers of a topic see only the message: small models otherwise publish
                // "pressure is over limit" without saying whose or how much.
                format!(
                    "{}: publish one message to the MQTT topic '{topic}'. Readers see only the message, so it must state the facts itself, with their names and values.",
                    words(&cap.name)
                ),
                json!({
                    "type": "object",
                    "properties": {"message": {"type": "string", "description": "The message, with the names and values it is about."}},
                    "required": ["message"],
                    "additionalProperties": false
                }),
            ),
            ctx.config.mqtt_broker_addr(broker, *port),
            Some(topic.clone()),
            mqtt::Topics::of(ctx),
            timeout,
        )),
        Endpoint::Http(base) => Arc::new(http::HttpTool::fixed(
            spec_for(
                format!("{}: send an HTTP request to {base}.", words(&cap.name)),
                json!({
                    "type": "object",
                    "properties": {
                        "method": {"type": "string", "enum": ["GET", "POST", "PUT", "DELETE"]},
                        "path": {"type": "string", "description": "Path appended to the base URL."},
                        "body": {"type": "string"}
                    },
                    "additionalProperties": false
                }),
            ),
            base.clone(),
            ctx.egress.clone(),
            timeout,
        )?),
        Endpoint::Builtin(name) => builtin::build(name, cap, ctx, spec_for, timeout)?,
        // `wasm-edge` components are connected in `ToolRegistry::from_spec`.
        Endpoint::Wasm(_) => {
            return Err(
                "wasm: tools need `runtime.type: wasm-edge`, and this spec says native".into(),
            )
        }
        // One capability, many tools: `ToolRegistry::from_spec` connects these.
        Endpoint::McpStdio { .. } => return Err("an MCP server has no single tool".into()),
    })
}

/// `local_sensor_read` → `Local sensor read`: a capability's name is the best description a spec
/// without one gives, and small models read prose better than identifiers.
fn words(name: &str) -> String {
    let spaced = name.replace(['_', '-'], " ");
    let mut chars = spaced.chars();
    match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect(),
        None => spaced,
    }
}

/// One tool as an OpenAI `tools[]` entry.
pub fn openai_tool(t: &ToolSpec) -> Value {
    json!({"type": "function", "function": {"name": t.name, "description": t.description, "parameters": t.parameters}})
}
