//! The node's agent services in one place: durable state (KV, audit log), the node config, and
//! turning a spec into a runnable agent. The CLI and the server both go through it, so an agent
//! behaves the same however it is started.

use std::path::{Path, PathBuf};
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
            placed_by: r.placed_by.clone(),
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

    /// Where relative paths of specs that neighbours place here resolve (`<home>/placed-runs`).
    pub fn placed_spec_dir(&self) -> PathBuf {
        self.data.placed_runs()
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
        self.build_tools(spec, ctx).await
    }

    /// Holds a spec the neighbour `from` placed here to this node's `mesh.accept_runs`, before
    /// anything else is done with it (its model is chosen, its tools built): `Ok` with the spec
    /// confined to `mesh.accept_runs.limits` (what it leaves unset set to the ceilings).
    ///
    /// `from` is the name the mesh call carried, checked by the caller to be a node name.
    pub fn placed_spec(&self, mut spec: AgentSpec, from: &str) -> Result<AgentSpec, AgentError> {
        let accept = self.check_placed(&spec, from)?;
        accept.confine(&mut spec);
        Ok(spec)
    }

    /// `mesh.accept_runs` (which `spec`, placed here by `from`, passed), or why it is refused.
    fn check_placed(
        &self,
        spec: &AgentSpec,
        from: &str,
    ) -> Result<&edgewise_core::AcceptRuns, AgentError> {
        let Some(mesh) = &self.config.mesh else {
            return Err(AgentError::PlacedRefused(edgewise_core::PlacedRefusal::Spec(vec![
                "this node is not in a mesh (no mesh: in its config.yaml), so it runs no neighbour's agents".into(),
            ])));
        };
        let (home, dir) = self.scope_paths(&self.placed_spec_dir());
        let scope = edgewise_core::PolicyScope {
            home: &home,
            spec_dir: &dir,
        };
        mesh.accept_runs
            .check(from, spec, &mesh.share, &scope)
            .map_err(AgentError::PlacedRefused)?;
        Ok(&mesh.accept_runs)
    }

    /// Refuses a run id a neighbour chose when this node already has a record of that run of
    /// `agent` (its own agent's, or an earlier placement's): a placed run must never overwrite it.
    pub fn check_new_run(&self, agent: &str, run: &str) -> Result<(), AgentError> {
        if self.runs().contains(agent, run)? {
            return Err(AgentError::RunExists {
                agent: agent.to_owned(),
                run: run.to_owned(),
            });
        }
        Ok(())
    }

    /// Like `tools`, for a spec that the neighbour `from` placed here (pass it through
    /// `placed_spec` first): checked against the node's `mesh.accept_runs` (never its
    /// `agent_policy`), with every reason refused at once, and built under
    /// `mesh.accept_runs.policy`, so the checks tools make when built and at each call (file
    /// roots, MQTT topics, destinations, its components' grants) hold it to that policy too. Its
    /// KV, its components' buckets and cached answers live in `mesh:<from>:<agent>`; relative
    /// paths resolve in `<home>/placed-runs`; it reaches no address of this node's LAN that
    /// `mesh.accept_runs.policy.local_destinations` does not list.
    pub async fn placed_tools(
        &self,
        spec: &AgentSpec,
        from: &str,
    ) -> Result<(ToolRegistry, ToolContext), AgentError> {
        let accept = self.check_placed(spec, from)?;
        let spec_dir = self.placed_spec_dir();
        // A process an operator allowed here starts in this directory; it must exist.
        tokio::fs::create_dir_all(&spec_dir).await.map_err(|e| {
            AgentError::Other(format!(
                "cannot create {} for placed runs: {e}",
                spec_dir.display()
            ))
        })?;
        let mut config = self.config.clone();
        config.agent_policy = accept.policy.clone();
        let mut ctx = self.tool_context_under(
            config,
            &spec.agent_id,
            spec.workflow_policy.egress_allowed,
            &spec_dir,
        );
        ctx.egress = ctx.egress.clone().confined();
        ctx.placed_by = Some(from.to_owned());
        self.build_tools(spec, ctx).await
    }

    /// Builds the tools of a spec that passed its policy, in `ctx`.
    async fn build_tools(
        &self,
        spec: &AgentSpec,
        ctx: ToolContext,
    ) -> Result<(ToolRegistry, ToolContext), AgentError> {
        let tools = ToolRegistry::from_spec(spec, &ctx).await?;
        // Components granted `tools` call the agent's other tools.
        let _ = ctx.tools.0.set(ComponentToolAccess {
            tools: tools.without_components(),
            audit: self.audit.clone(),
            node: self.config.node_name(),
            agent: spec.agent_id.clone(),
            placed_by: ctx.placed_by.clone(),
        });
        Ok((tools, ctx))
    }

    /// Refuses a spec that asks for more than the node's `agent_policy` allows, naming the key
    /// that asks and the policy key to change. Every way this node's own specs arrive (the agents
    /// API, `agent run`) builds its tools through `tools`, so through here, before any command
    /// starts or any socket is touched; neighbours' placed specs pass `placed_tools` instead.
    pub fn check_policy(&self, spec: &AgentSpec, spec_dir: &Path) -> Result<(), AgentError> {
        let (home, spec_dir) = self.scope_paths(spec_dir);
        let scope = edgewise_core::PolicyScope {
            home: &home,
            spec_dir: &spec_dir,
        };
        self.config
            .agent_policy
            .check(spec, &scope)
            .map_err(|v| AgentError::Policy(spec.refusal(v)))
    }

    /// The data dir and `spec_dir` as absolute paths, as policies compare them.
    fn scope_paths(&self, spec_dir: &Path) -> (PathBuf, PathBuf) {
        // `agent run spec.yaml` has an empty parent: the current directory.
        let absolute = |p: &Path| {
            let p = if p.as_os_str().is_empty() {
                Path::new(".")
            } else {
                p
            };
            std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
        };
        (absolute(self.data.root()), absolute(spec_dir))
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
        self.tool_context_under(self.config.clone(), agent_id, egress_allowed, spec_dir)
    }

    /// `tool_context` with `config` in place of the node's (its `agent_policy` is the policy the
    /// tools are held to).
    fn tool_context_under(
        &self,
        config: NodeConfig,
        agent_id: &str,
        egress_allowed: bool,
        spec_dir: &Path,
    ) -> ToolContext {
        let mut ctx = ToolContext::new(
            agent_id,
            self.kv.clone(),
            config,
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
        // `check_policy` (for a placed spec, `mesh.accept_runs`) refuses such a spec already; the
        // cloud is the one path that would carry data out if it ever let one through, so it also
        // needs the node's own `agent_policy.allow_egress`, placed or not.
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
