//! The node's agent services in one place: durable state (KV, audit log), the node config, and
//! turning a spec into a runnable agent. The CLI and the server both go through it, so an agent
//! behaves the same however it is started.

use std::path::Path;
use std::sync::Arc;

use edgewise_core::{AgentSpec, AuditContent, DataDir, NodeConfig};
use edgewise_infer::{Engine, LazyEmbedder};
use edgewise_store::{AuditLog, AuditRecord, Kv};

use crate::cloud::CloudModel;
use crate::components::ComponentRegistry;
use crate::knowledge::KnowledgeSlot;
use crate::runner::CloudAccess;
use crate::runs::{RunRecord, RunStore};
use crate::tools::wasm::{ComponentToolAccess, NodeServices};
use crate::tools::{ToolContext, ToolRegistry};
use crate::{Agent, AgentError};

pub struct AgentHost {
    pub kv: Arc<Kv>,
    pub audit: Arc<AuditLog>,
    pub config: NodeConfig,
    /// The node's cloud fallback, shared (with its breaker) by all its agents; `Err` says why the
    /// configured one cannot be used, so only agents that would use it fail.
    cloud: Result<Option<Arc<CloudModel>>, String>,
    data: DataDir,
    /// One Wasm sandbox and set of loaded components for all the node's agents.
    pub components: Arc<ComponentRegistry>,
    /// The node's embedding model, if it has one (components' `inference.embed`).
    pub embedder: Option<Arc<LazyEmbedder>>,
    /// The node's vector memory, opened on first use.
    pub knowledge: Arc<KnowledgeSlot>,
}

impl AgentHost {
    /// Opens KV and audit log, and marks runs left `running` by a process that died as
    /// `interrupted` (each one audited), so a crash never loses a run silently.
    pub fn open(data: &DataDir, config: NodeConfig) -> Result<Self, AgentError> {
        let kv = Arc::new(Kv::open(&data.state_db())?);
        let audit = Arc::new(AuditLog::open(&data.audit_log())?);
        let cloud = CloudModel::from_config(&config).map(|c| c.map(Arc::new));
        let components = Arc::new(ComponentRegistry::new(data, config.trusted_keys.clone()));
        let host = Self {
            kv,
            audit,
            config,
            cloud,
            data: data.clone(),
            components,
            embedder: None,
            knowledge: Arc::new(KnowledgeSlot::new(data.knowledge())),
        };
        for r in host.runs().mark_interrupted()? {
            tracing::warn!(agent = %r.agent, run = %r.run, "run was interrupted by a node stop");
            host.audit_interrupted(&r)?;
        }
        Ok(host)
    }

    fn audit_interrupted(&self, r: &RunRecord) -> Result<(), AgentError> {
        self.audit.append(&AuditRecord {
            kind: "run_interrupted".into(),
            node: self.config.node_name(),
            agent: r.agent.clone(),
            run: r.run.clone(),
            decision: "interrupted".into(),
            detail: r.error.clone(),
            ..Default::default()
        })?;
        Ok(())
    }

    /// Appends a record about a run this node placed on another node (`rec.node` names the node
    /// that did it), keeping only digests when the node's `audit_content` says so.
    pub fn audit_placed(&self, mut rec: AuditRecord) -> Result<(), AgentError> {
        if self.config.audit_content == AuditContent::Digest {
            rec.arguments = None;
            rec.result = None;
        }
        self.audit.append(&rec)?;
        Ok(())
    }

    pub fn runs(&self) -> RunStore {
        RunStore::new(self.kv.clone())
    }

    /// Builds (and so checks) every capability of `spec`; relative paths in it resolve against
    /// `spec_dir`. Call it before loading a model so a bad spec fails before seconds are spent.
    pub async fn tools(
        &self,
        spec: &AgentSpec,
        spec_dir: &Path,
    ) -> Result<(ToolRegistry, ToolContext), AgentError> {
        self.check_policy(spec, spec_dir)?;
        let ctx = self.tool_context(
            &spec.agent_id,
            spec.workflow_policy.egress_allowed,
            spec_dir,
        );
        let tools = ToolRegistry::from_spec(spec, &ctx).await?;
        // Components granted `tools` call the agent's other tools.
        let _ = ctx.tools.0.set(ComponentToolAccess {
            tools: tools.without_components(),
            audit: self.audit.clone(),
            node: self.config.node_name(),
            agent: spec.agent_id.clone(),
        });
        Ok((tools, ctx))
    }

    /// Refuses a spec that asks for more than the node's `agent_policy` allows, naming the key
    /// that asks and the policy key to change. Every way a spec reaches this node (the agents API,
    /// `agent run`, a run a neighbour placed here) builds its tools through `tools`, so through
    /// here, before any command starts or any socket is touched.
    pub fn check_policy(&self, spec: &AgentSpec, spec_dir: &Path) -> Result<(), AgentError> {
        // `agent run spec.yaml` has an empty parent: the current directory.
        let absolute = |p: &Path| {
            let p = if p.as_os_str().is_empty() {
                Path::new(".")
            } else {
                p
            };
            std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
        };
        let (home, spec_dir) = (absolute(self.data.root()), absolute(spec_dir));
        let scope = edgewise_core::PolicyScope {
            home: &home,
            spec_dir: &spec_dir,
        };
        self.config
            .agent_policy
            .check(spec, &scope)
            .map_err(|v| AgentError::Policy(spec.refusal(v)))
    }

    /// An agent on the local `engine`, with the cloud fallback if its policy allows egress.
    pub fn agent(
        &self,
        spec: AgentSpec,
        tools: (ToolRegistry, ToolContext),
        engine: Arc<Engine>,
    ) -> Agent {
        let cloud = self.cloud_access(&spec);
        // Components granted inference use the agent's model.
        let _ = tools.1.engine.0.set(engine.clone());
        self.build(spec, tools, Some(engine), cloud)
    }

    /// An agent for a node whose local model could not be loaded: every step goes to the cloud
    /// fallback. An error (saying why the cloud cannot be used) when the policy or config rules
    /// that out.
    pub fn cloud_agent(
        &self,
        spec: AgentSpec,
        tools: (ToolRegistry, ToolContext),
    ) -> Result<Agent, AgentError> {
        let cloud = self.cloud_access(&spec);
        if !matches!(cloud, CloudAccess::Available(_)) {
            return Err(AgentError::Other(cloud.why_not()));
        }
        Ok(self.build(spec, tools, None, cloud))
    }

    fn build(
        &self,
        spec: AgentSpec,
        (tools, ctx): (ToolRegistry, ToolContext),
        engine: Option<Arc<Engine>>,
        cloud: CloudAccess,
    ) -> Agent {
        Agent::new(
            spec,
            tools,
            &ctx,
            engine,
            cloud,
            self.audit.clone(),
            self.config.node_name(),
        )
    }

    /// The node's services for components called directly (the components API, `component
    /// call`): the node's model and embedder, KV, MQTT on the local network only, no agent tools.
    /// Call on a Tokio runtime.
    pub fn direct_services(&self, engine: Option<Arc<Engine>>) -> NodeServices {
        let ctx = self.tool_context("components", false, self.data.root());
        if let Some(e) = engine {
            let _ = ctx.engine.0.set(e);
        }
        NodeServices::new(&ctx)
    }

    /// What tools of `agent_id` need from this node: its KV, config, components and embedder.
    fn tool_context(&self, agent_id: &str, egress_allowed: bool, spec_dir: &Path) -> ToolContext {
        let mut ctx = ToolContext::new(
            agent_id,
            self.kv.clone(),
            self.config.clone(),
            egress_allowed,
            spec_dir.to_path_buf(),
            &self.data,
        );
        ctx.components = self.components.clone();
        ctx.embedder = self.embedder.clone();
        ctx.knowledge = self.knowledge.clone();
        ctx
    }

    fn cloud_access(&self, spec: &AgentSpec) -> CloudAccess {
        // `check_policy` refuses such a spec already; the cloud is the one path that would
        // carry data out if it ever let one through.
        if !spec.workflow_policy.egress_allowed || !self.config.agent_policy.allow_egress {
            return CloudAccess::Forbidden;
        }
        match &self.cloud {
            Ok(Some(c)) => CloudAccess::Available(c.clone()),
            Ok(None) => CloudAccess::NotConfigured,
            Err(e) => CloudAccess::Misconfigured(e.clone()),
        }
    }
}
