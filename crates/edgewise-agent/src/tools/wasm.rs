//! `wasm:` capabilities: every tool of a component, run in the node's sandbox with the
//! capability's grants (or the component manifest's), and the node's services behind the host
//! interfaces the grants allow.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use edgewise_core::{AgentSpec, Capability, ComponentManifest};
use edgewise_infer::{Constraint, Engine, GenerateRequest, ToolSpec};
use edgewise_sandbox::store::{manifest_beside, ComponentStore};
use edgewise_sandbox::{
    ChatMessage, HostServices, InferenceOptions, LoadedComponent, Sandbox, SandboxConfig,
    SandboxError,
};
use serde_json::{json, Value};

use super::{Tool, ToolContext, ToolError};

/// The node's sandbox, created on first use (it starts a thread and reserves address space).
#[derive(Clone, Default)]
pub struct SandboxSlot(Arc<OnceLock<Result<Arc<Sandbox>, String>>>);

impl SandboxSlot {
    pub fn get(&self, cache_dir: &Path) -> Result<Arc<Sandbox>, String> {
        self.0
            .get_or_init(|| {
                Sandbox::new(SandboxConfig {
                    cache_dir: Some(cache_dir.to_path_buf()),
                    ..SandboxConfig::default()
                })
                .map(Arc::new)
                .map_err(|e| e.to_string())
            })
            .clone()
    }
}

/// The model the agent runs on, set once it is loaded (tools are built before it).
#[derive(Clone, Default)]
pub struct EngineSlot(pub Arc<OnceLock<Arc<Engine>>>);

/// Where a `wasm:` endpoint points: a `.wasm` file (relative to the spec) or an installed
/// component's name.
fn locate(
    target: &Path,
    ctx: &ToolContext,
) -> Result<(PathBuf, ComponentManifest, String), String> {
    let text = target.to_string_lossy();
    let is_name = !text.contains('/') && !text.ends_with(".wasm");
    if is_name {
        let store = ComponentStore::new(ctx.data_components.clone());
        let c = store.get(&text).map_err(|e| e.to_string())?;
        store
            .verify(&c, &ctx.config.trusted_keys)
            .map_err(|e| e.to_string())?;
        return Ok((c.wasm, c.manifest, c.name));
    }
    let path = ctx.spec_dir.join(target);
    let manifest = manifest_beside(&path).map_err(|e| e.to_string())?;
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "component".into());
    Ok((path, manifest, name))
}

pub(crate) fn connect(
    cap: &Capability,
    spec: &AgentSpec,
    ctx: &ToolContext,
    target: &Path,
) -> Result<Vec<Arc<dyn Tool>>, String> {
    let (path, manifest, name) = locate(target, ctx)?;
    // Relative file grants resolve where they were written: the spec's dir, or the manifest's.
    let (mut grants, base) = match &cap.grants {
        Some(g) => (g.clone(), ctx.spec_dir.clone()),
        None => (
            manifest.grants,
            path.parent().map(Path::to_path_buf).unwrap_or_default(),
        ),
    };
    for f in &mut grants.files {
        if f.path.is_relative() {
            f.path = base.join(&f.path);
        }
    }
    let sandbox = ctx.sandbox.get(&ctx.wasm_cache)?;
    let egress_allowed = ctx.egress_allowed;
    let component = sandbox
        .load(
            &name,
            &path,
            grants,
            spec.runtime.memory_limit.map(|b| b.as_u64()),
            &|ip| egress_allowed || crate::egress::is_local(ip),
        )
        .map_err(|e| e.to_string())?;
    if component.kind != edgewise_sandbox::ComponentKind::Tool {
        return Err(format!(
            "{} is an agent component (it handles events); a capability needs a tool component",
            path.display()
        ));
    }
    let component = Arc::new(component);
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
                component: component.clone(),
                services: services.clone(),
                timeout: cap.timeout.unwrap_or(super::DEFAULT_TIMEOUT),
            }) as Arc<dyn Tool>
        })
        .collect())
}

struct WasmTool {
    spec: ToolSpec,
    tool: String,
    component: Arc<LoadedComponent>,
    services: Arc<dyn HostServices>,
    timeout: Duration,
}

#[async_trait]
impl Tool for WasmTool {
    fn spec(&self) -> &ToolSpec {
        &self.spec
    }

    async fn call(&self, args: Value) -> Result<String, ToolError> {
        let component = self.component.clone();
        let services = self.services.clone();
        let tool = self.tool.clone();
        // Components run synchronously (their own time limit stops them); off the async threads.
        let call = tokio::task::spawn_blocking(move || {
            component.invoke(&tool, &args.to_string(), services)
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
    engine: EngineSlot,
    rt: tokio::runtime::Handle,
    broker: String,
    egress_allowed: bool,
}

impl NodeServices {
    pub fn new(ctx: &ToolContext) -> Self {
        Self {
            kv: ctx.kv.clone(),
            engine: ctx.engine.clone(),
            rt: tokio::runtime::Handle::current(),
            broker: ctx.config.mqtt_broker_addr("local-broker", 1883),
            egress_allowed: ctx.egress_allowed,
        }
    }

    fn engine(&self) -> Result<Arc<Engine>, String> {
        self.engine
            .0
            .get()
            .cloned()
            .ok_or_else(|| "no model is loaded for this agent".to_owned())
    }

    fn complete(&self, prompt: String, options: &InferenceOptions) -> Result<String, String> {
        let engine = self.engine()?;
        let mut req = GenerateRequest::new(prompt);
        req.max_tokens = options.max_tokens.unwrap_or(256).min(4096);
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
        self.kv.get(namespace, key).map_err(|e| e.to_string())
    }
    fn kv_set(&self, namespace: &str, key: &str, value: &[u8]) -> Result<(), String> {
        self.kv
            .set(namespace, key, value)
            .map_err(|e| e.to_string())
    }
    fn kv_delete(&self, namespace: &str, key: &str) -> Result<(), String> {
        self.kv
            .remove(namespace, key)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
    fn kv_keys(&self, namespace: &str) -> Result<Vec<String>, String> {
        self.kv
            .list(namespace)
            .map(|kv| kv.into_iter().map(|(k, _)| k).collect())
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
    fn generate(&self, prompt: &str, options: &InferenceOptions) -> Result<String, String> {
        self.complete(prompt.to_owned(), options)
    }
    fn embed(&self, _text: &str) -> Result<Vec<f32>, String> {
        Err("embeddings are not offered to components on this node yet".into())
    }
    fn call_tool(&self, name: &str, _args_json: &str) -> Result<String, String> {
        Err(format!(
            "calling other tools ('{name}') from a component is not offered on this node yet"
        ))
    }
    fn publish(&self, topic: &str, payload: &[u8]) -> Result<(), String> {
        self.rt
            .block_on(super::mqtt_publish(
                &self.broker,
                topic,
                payload,
                self.egress_allowed,
                Duration::from_secs(10),
            ))
            .map_err(|e| e.to_string())
    }
}
