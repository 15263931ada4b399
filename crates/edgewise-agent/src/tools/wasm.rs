//! `wasm:` capabilities: every tool of a component, run in the node's sandbox with the
//! capability's grants (or the component manifest's), and the node's services behind the host
//! interfaces the grants allow.

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use edgewise_core::{AgentSpec, Capability};
use edgewise_infer::{Constraint, Engine, GenerateRequest, ToolSpec};
use edgewise_sandbox::{ChatMessage, HostServices, InferenceOptions, SandboxError};
use serde_json::{json, Value};

use super::{Tool, ToolContext, ToolError};
use crate::components::{ComponentRegistry, ComponentSource, PlacedCeiling, Target};

/// The model the agent runs on, set once it is loaded (tools are built before it).
#[derive(Clone, Default)]
pub struct EngineSlot(pub Arc<OnceLock<Arc<Engine>>>);

/// The agent's tools as components may call them (set once the agent is built), with the audit
/// log every such call is written to.
#[derive(Clone, Default)]
pub struct ToolsSlot(pub Arc<OnceLock<ComponentToolAccess>>);

pub struct ComponentToolAccess {
    /// Without components (see `ToolRegistry::without_components`).
    pub tools: super::ToolRegistry,
    pub audit: Arc<edgewise_store::AuditLog>,
    pub node: String,
    pub agent: String,
    /// The neighbour that placed the agent's run here, if one did (its audit records say so).
    pub placed_by: Option<String>,
}

/// Where a `wasm:` endpoint points: a `.wasm` file (relative to the spec) or an installed
/// component's name.
fn target_of(endpoint: &Path, ctx: &ToolContext) -> Target {
    match edgewise_core::Endpoint::Wasm(endpoint.to_path_buf()).installed_component() {
        Some(name) => Target::Installed(name),
        None => Target::File(ctx.spec_dir.join(endpoint)),
    }
}

pub(crate) fn connect(
    cap: &Capability,
    spec: &AgentSpec,
    ctx: &ToolContext,
    endpoint: &Path,
) -> Result<Vec<Arc<dyn Tool>>, String> {
    // Relative file grants in the spec resolve against the spec's dir (the manifest's, against
    // the manifest's: the registry does that).
    let grants = cap.grants.clone().map(|mut g| {
        for f in &mut g.files {
            if f.path.is_relative() {
                f.path = ctx.spec_dir.join(&f.path);
            }
        }
        g
    });
    let source = ComponentSource {
        target: target_of(endpoint, ctx),
        grants,
        default_memory: spec.runtime.memory_limit.map(|b| b.as_u64()),
        egress: ctx.egress.clone(),
        placed: placed_ceiling(ctx),
    };
    let component = ctx.components.current(&source).map_err(|e| e.to_string())?;
    if component.kind != edgewise_sandbox::ComponentKind::Tool {
        return Err(format!(
            "{} is an agent component (it handles events); a capability needs a tool component",
            component.path.display()
        ));
    }
    let services: Arc<dyn HostServices> = Arc::new(NodeServices::new(ctx));
    let single = component.tools.len() == 1;
    Ok(component
        .tools
        .iter()
        .map(|t| {
            // One tool: the capability's name and description, as for any other endpoint.
            let spec = ToolSpec {
                name: if single {
                    cap.name.clone()
                } else {
                    t.name.clone()
                },
                description: match (&cap.description, single) {
                    (Some(d), true) => d.clone(),
                    _ => t.description.clone(),
                },
                parameters: t.parameters.clone(),
            };
            Arc::new(WasmTool {
                spec,
                tool: t.name.clone(),
                registry: ctx.components.clone(),
                source: source.clone(),
                services: services.clone(),
                timeout: cap.timeout.unwrap_or(super::DEFAULT_TIMEOUT),
            }) as Arc<dyn Tool>
        })
        .collect())
}

/// For a run a neighbour placed here: what its components may keep of their manifests' grants
/// (`mesh.accept_runs`, whose policy is the context's `agent_policy`, and `mesh.share`).
fn placed_ceiling(ctx: &ToolContext) -> Option<PlacedCeiling> {
    ctx.placed_by.as_ref()?;
    let default = edgewise_core::AcceptRuns::default();
    let (accept, documents) = match &ctx.config.mesh {
        Some(m) => (&m.accept_runs, m.share.documents.clone()),
        None => (&default, Vec::new()),
    };
    // Compared with a component's file grants, which are resolved (links followed).
    let canonical = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
    let scope = edgewise_core::PolicyScope {
        home: &ctx.home,
        spec_dir: &ctx.spec_dir,
    };
    let file_roots = ctx
        .config
        .agent_policy
        .file_bases(&scope)
        .iter()
        .map(|r| canonical(r))
        .collect();
    Some(PlacedCeiling {
        file_roots,
        network: accept.grants_network(),
        documents,
        memory_limit: accept.limits.memory_limit,
    })
}

/// One tool of a component; each call runs the component's current version.
struct WasmTool {
    spec: ToolSpec,
    tool: String,
    registry: Arc<ComponentRegistry>,
    source: ComponentSource,
    services: Arc<dyn HostServices>,
    timeout: Duration,
}

#[async_trait]
impl Tool for WasmTool {
    fn spec(&self) -> &ToolSpec {
        &self.spec
    }

    fn is_component(&self) -> bool {
        true
    }

    async fn call(&self, args: Value) -> Result<String, ToolError> {
        let registry = self.registry.clone();
        let source = self.source.clone();
        let services = self.services.clone();
        let tool = self.tool.clone();
        // Components run synchronously (their own time limit stops them); off the async threads.
        let call = tokio::task::spawn_blocking(move || {
            registry
                .current(&source)?
                .invoke(&tool, &args.to_string(), services)
        });
        match tokio::time::timeout(self.timeout, call).await {
            Err(_) => Err(ToolError::Failed(format!(
                "no result within {}s",
                self.timeout.as_secs_f64()
            ))),
            Ok(Err(e)) => Err(ToolError::Failed(format!(
                "the component call panicked: {e}"
            ))),
            Ok(Ok(Ok(out))) => Ok(out),
            Ok(Ok(Err(e @ SandboxError::ToolFailed { .. })))
                if e.to_string().contains("denied:") =>
            {
                Err(ToolError::Refused(e.to_string()))
            }
            Ok(Ok(Err(e))) => Err(ToolError::Failed(e.to_string())),
        }
    }
}

/// The node behind a component's host interfaces. Called on a blocking thread; async work runs
/// on the runtime the tools were built on.
pub struct NodeServices {
    kv: Arc<edgewise_store::Kv>,
    /// Opened on first use (opening may write this node's actor id).
    docs: std::sync::OnceLock<edgewise_store::Documents>,
    engine: EngineSlot,
    embedder: Option<Arc<edgewise_infer::LazyEmbedder>>,
    tools: ToolsSlot,
    rt: tokio::runtime::Handle,
    broker: String,
    topics: super::mqtt::Topics,
    /// For a run a neighbour placed here, `mesh:<node>:<agent>`: its components' KV buckets live
    /// under it, apart from the same components' state of this node's own agents.
    kv_scope: Option<String>,
    /// Tokens one completion a component asks for may generate at most.
    max_tokens: u32,
}

/// The most tokens a component's completion may ask for on this node.
const COMPONENT_MAX_TOKENS: u32 = 4096;

impl NodeServices {
    /// Must be called on a Tokio runtime (the one async services run on).
    pub fn new(ctx: &ToolContext) -> Self {
        Self {
            kv: ctx.kv.clone(),
            docs: std::sync::OnceLock::new(),
            engine: ctx.engine.clone(),
            embedder: ctx.embedder.clone(),
            tools: ctx.tools.clone(),
            rt: tokio::runtime::Handle::current(),
            broker: ctx.config.mqtt_broker_addr("local-broker", 1883),
            topics: super::mqtt::Topics::of(ctx),
            kv_scope: ctx
                .placed_by
                .as_ref()
                .map(|node| edgewise_core::placed_kv_namespace(node, &ctx.agent_id)),
            max_tokens: match (&ctx.placed_by, &ctx.config.mesh) {
                (Some(_), Some(m)) => m.accept_runs.limits.max_tokens.min(COMPONENT_MAX_TOKENS),
                (Some(_), None) => edgewise_core::PlacedLimits::default().max_tokens,
                (None, _) => COMPONENT_MAX_TOKENS,
            },
        }
    }

    /// Where a component's bucket `namespace` (`wasm:<component>:<bucket>`) lives: as named for
    /// this node's agents, under the placing node's scope in a placed run.
    fn namespace(&self, namespace: &str) -> String {
        match &self.kv_scope {
            Some(scope) => format!("{scope}:{namespace}"),
            None => namespace.to_owned(),
        }
    }

    fn engine(&self) -> Result<Arc<Engine>, String> {
        self.engine
            .0
            .get()
            .cloned()
            .ok_or_else(|| "no model is loaded for this agent".to_owned())
    }

    fn docs(&self) -> Result<&edgewise_store::Documents, String> {
        if let Some(docs) = self.docs.get() {
            return Ok(docs);
        }
        let docs = edgewise_store::Documents::open(self.kv.clone()).map_err(|e| e.to_string())?;
        Ok(self.docs.get_or_init(|| docs))
    }

    fn complete(&self, prompt: String, options: &InferenceOptions) -> Result<String, String> {
        let engine = self.engine()?;
        let mut req = GenerateRequest::new(prompt);
        req.max_tokens = options.max_tokens.unwrap_or(256).min(self.max_tokens);
        req.sampling.temperature = options.temperature.unwrap_or(0.2);
        req.constraint = options.json_schema.clone().map(Constraint::JsonSchema);
        self.rt
            .block_on(crate::runner::generate(&engine, req))
            .map(|c| c.text)
            .map_err(|e| e.to_string())
    }
}

impl HostServices for NodeServices {
    fn kv_get(&self, namespace: &str, key: &str) -> Result<Option<Vec<u8>>, String> {
        self.kv
            .get(&self.namespace(namespace), key)
            .map_err(|e| e.to_string())
    }
    fn kv_set(&self, namespace: &str, key: &str, value: &[u8]) -> Result<(), String> {
        self.kv
            .set(&self.namespace(namespace), key, value)
            .map_err(|e| e.to_string())
    }
    fn kv_delete(&self, namespace: &str, key: &str) -> Result<(), String> {
        self.kv
            .remove(&self.namespace(namespace), key)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
    fn kv_keys(&self, namespace: &str) -> Result<Vec<String>, String> {
        self.kv
            .list(&self.namespace(namespace))
            .map(|kv| kv.into_iter().map(|(k, _)| k).collect())
            .map_err(|e| e.to_string())
    }
    fn doc_get(&self, document: &str, key: &str) -> Result<Option<Value>, String> {
        self.docs()?
            .get(document, key)
            .map(|entry| entry.map(|e| e.value))
            .map_err(|e| e.to_string())
    }
    fn doc_set(&self, document: &str, key: &str, value: &Value) -> Result<(), String> {
        self.docs()?
            .set(document, key, value)
            .map_err(|e| e.to_string())
    }
    fn doc_delete(&self, document: &str, key: &str) -> Result<(), String> {
        self.docs()?
            .remove(document, key)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
    fn doc_keys(&self, document: &str) -> Result<Vec<String>, String> {
        self.docs()?
            .entries(document)
            .map(|entries| entries.into_keys().collect())
            .map_err(|e| e.to_string())
    }
    fn chat(&self, messages: &[ChatMessage], options: &InferenceOptions) -> Result<String, String> {
        let engine = self.engine()?;
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| json!({"role": m.role, "content": m.content}))
            .collect();
        let prompt = engine
            .template()
            .render(&messages, None, true)
            .map_err(|e| e.to_string())?;
        self.complete(prompt, options)
    }
    /// A component's raw prompt is text: it cannot open or close turns (content is never
    /// control); a component that wants turns asks for `chat`.
    fn generate(&self, prompt: &str, options: &InferenceOptions) -> Result<String, String> {
        self.complete(edgewise_infer::prompt::plain_text(prompt), options)
    }
    fn embed(&self, text: &str) -> Result<Vec<f32>, String> {
        let embedder = self.embedder.as_ref().ok_or(
            "this node has no embedding model (edgewise pull all-minilm-l6-v2, or serve without --no-embeddings)",
        )?;
        let mut v = embedder
            .get()
            .and_then(|e| e.embed(&[text.to_owned()]))
            .map_err(|e| e.to_string())?;
        v.pop()
            .ok_or_else(|| "the embedding model returned nothing".into())
    }
    fn call_tool(&self, name: &str, args_json: &str) -> Result<String, String> {
        let access = self.tools.0.get().ok_or(
            "no agent tools are available to this call (components called directly have none)",
        )?;
        let args: Value = serde_json::from_str(args_json)
            .map_err(|e| format!("arguments for '{name}' are not JSON: {e}"))?;
        let started = std::time::Instant::now();
        let result = self.rt.block_on(access.tools.call(name, &args));
        let (decision, detail) = match &result {
            Ok(_) => ("call", None),
            Err(e @ ToolError::Refused(_)) => ("refused", Some(e.to_string())),
            Err(e @ ToolError::Failed(_)) => ("tool_error", Some(e.to_string())),
        };
        // Calls a component makes are steps of the agent too: audited like the runner's.
        access
            .audit
            .append(&edgewise_store::AuditRecord {
                kind: "component_tool_call".into(),
                node: access.node.clone(),
                agent: access.agent.clone(),
                placed_by: access.placed_by.clone(),
                tool: Some(name.to_owned()),
                arguments: Some(args),
                result: result.as_ref().ok().cloned(),
                decision: decision.into(),
                detail,
                duration_ms: started.elapsed().as_millis() as u64,
                ..Default::default()
            })
            .map_err(|e| format!("audit log: {e}"))?;
        result.map_err(|e| e.to_string())
    }
    fn publish(&self, topic: &str, payload: &[u8]) -> Result<(), String> {
        self.topics.check(topic).map_err(|e| e.to_string())?;
        self.rt
            .block_on(super::mqtt_publish(
                &self.broker,
                topic,
                payload,
                &self.topics.egress,
                Duration::from_secs(10),
            ))
            .map_err(|e| e.to_string())
    }
}
