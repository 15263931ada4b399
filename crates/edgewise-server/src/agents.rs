//! The agents API: register specs, start runs (SSE stream of steps), read transcripts, cancel.
//!
//! Runs belong to the node, not to the connection that started them: a client that disconnects
//! stops receiving steps, the run goes on and its transcript stays readable. `DELETE` cancels.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use edgewise_agent::triggers::triggers;
use edgewise_agent::{
    choose_model, new_run_id, placed_model, Agent, AgentHost, RunOptions, StepEvent,
};
use edgewise_core::AgentSpec;
use edgewise_infer::Engine;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::{ApiError, AppState};

/// KV namespace of registered specs, so registrations survive a restart.
const REGISTRY: &str = "edgewise.agents";

/// Agents registered on this node and the runs in flight.
pub struct AgentHub {
    host: AgentHost,
    engine: Arc<Engine>,
    /// Catalog names, to tell a catalog model from a file path in `model_config.path`.
    catalog: Vec<String>,
    /// Relative paths in a spec registered without `base_dir` resolve against this.
    default_base_dir: PathBuf,
    agents: RwLock<BTreeMap<String, Arc<Registered>>>,
    active: Mutex<HashMap<String, Active>>,
    /// What components called through the components API reach: the node's model, KV and
    /// embedder (no agent's tools).
    pub(crate) component_services: Arc<dyn edgewise_sandbox::HostServices>,
    /// Set once the node has joined its mesh: where runs of agents placed on the mesh go.
    pub(crate) mesh: std::sync::OnceLock<Arc<crate::mesh::Mesh>>,
    /// Runs neighbours placed here that `mesh.accept_runs` refused (`/metrics`).
    pub(crate) placed_runs_refused: AtomicU64,
}

pub(crate) struct Registered {
    pub(crate) spec: AgentSpec,
    /// The model its runs use (catalog name).
    pub(crate) model: String,
    tool_names: Vec<String>,
    pub(crate) run_on: RunOn,
    /// The spec's text as registered (also what a placed run sends).
    pub(crate) source: String,
    base_dir: PathBuf,
    warning: Option<String>,
    /// Stops this registration's MQTT triggers (on unregister or replace).
    triggers: CancellationToken,
}

/// Where the runs of a registered agent execute.
pub(crate) enum RunOn {
    /// This node serves the agent's model.
    Here(Agent),
    /// Only neighbours serve it: each run is placed on one of them (`mesh_runs`). The cloud agent
    /// is the last resort; `Err` says why there is none (policy or config).
    Mesh { cloud: Result<Agent, String> },
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.triggers.cancel();
    }
}

struct Active {
    agent: String,
    cancel: CancellationToken,
    /// The neighbour that placed this run here: only it may cancel the run through the mesh.
    placed_by: Option<String>,
}

/// A run's place in `AgentHub::active`, given back on drop.
struct RunSlot {
    hub: Arc<AgentHub>,
    run: String,
}

impl Drop for RunSlot {
    fn drop(&mut self) {
        self.hub.active().remove(&self.run);
    }
}

#[derive(Deserialize)]
struct StoredSpec {
    source: String,
    base_dir: PathBuf,
}

impl AgentHub {
    pub(crate) fn components(&self) -> &Arc<edgewise_agent::components::ComponentRegistry> {
        &self.host.components
    }

    pub(crate) fn host(&self) -> &AgentHost {
        &self.host
    }

    /// Re-registers the specs stored by earlier runs of the node (and starts their triggers); one
    /// that no longer loads is skipped with a warning (it stays stored, so fixing the node config
    /// brings it back).
    pub async fn new(
        host: AgentHost,
        engine: Arc<Engine>,
        catalog: Vec<String>,
        default_base_dir: PathBuf,
    ) -> Result<Arc<Self>, edgewise_agent::AgentError> {
        let component_services = Arc::new(host.direct_services(Some(engine.clone())));
        let hub = Arc::new(Self {
            component_services,
            host,
            engine,
            catalog,
            default_base_dir,
            agents: RwLock::default(),
            active: Mutex::default(),
            mesh: std::sync::OnceLock::new(),
            placed_runs_refused: AtomicU64::new(0),
        });
        for (id, bytes) in hub.host.kv.list(REGISTRY)? {
            let stored: StoredSpec = match serde_json::from_slice(&bytes) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(agent = %id, "stored agent registration unreadable: {e}");
                    continue;
                }
            };
            let registered = match hub.build(&stored.source, stored.base_dir, None).await {
                Ok(r) => Arc::new(r),
                Err(e) => {
                    let e = ApiError::from(e);
                    tracing::warn!(agent = %id, "stored agent not loaded: {}", e.message);
                    continue;
                }
            };
            if let Err(e) = hub.start_triggers(&registered).await {
                tracing::warn!(agent = %id, "stored agent's triggers not started: {}", e.message);
            }
            hub.write_agents().insert(id, registered);
        }
        Ok(hub)
    }

    /// Subscribes the agent's `subscribe: true` capabilities; each message starts a run, one at a
    /// time per agent (messages beyond a short queue are dropped with a warning).
    async fn start_triggers(self: &Arc<Self>, reg: &Arc<Registered>) -> Result<(), ApiError> {
        let spec = &reg.spec;
        let mut resolved = Vec::new();
        for t in triggers(spec, &self.host.config) {
            let egress = edgewise_agent::egress::EgressPolicy::new(
                &self.host.config,
                spec.workflow_policy.egress_allowed,
            );
            let addr = t.resolve(&egress).await.map_err(|e| {
                ApiError::unprocessable(format!("trigger '{}' ({}): {e}", t.capability, t.broker))
            })?;
            resolved.push((t, addr));
        }
        if resolved.is_empty() {
            return Ok(());
        }
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        for (t, addr) in resolved {
            tokio::spawn(t.run(addr, tx.clone(), reg.triggers.clone()));
        }
        // Holds the registration only weakly: unregistering drops it, which stops the triggers.
        let hub = self.clone();
        let weak = Arc::downgrade(reg);
        let weak_id = reg.spec.agent_id.clone();
        let stop = reg.triggers.clone();
        tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    _ = stop.cancelled() => break,
                    m = rx.recv() => m,
                };
                let (Some(msg), Some(reg)) = (msg, weak.upgrade()) else {
                    break;
                };
                match hub.spawn_run(reg, msg.task(), None, None, None) {
                    Ok((_, mut events)) => while events.recv().await.is_some() {},
                    Err(e) => {
                        tracing::warn!(agent = %weak_id, "trigger message dropped: {}", e.message)
                    }
                }
            }
        });
        Ok(())
    }

    /// Starts a run as a node task (here or on the mesh); its steps arrive on the returned
    /// channel, which closes when the run has ended (whether or not anyone listens). `run` is
    /// the id of a run the neighbour `placed_by` placed here; `None` makes a new one. Refused
    /// with 429 when the node or the agent already has `limits` runs in flight, or the placing
    /// neighbour `mesh.accept_runs.limits.max_concurrent_per_node`; with 409 when the run id is in
    /// flight, or (placed) when this node has a record of that run of the agent.
    fn spawn_run(
        self: &Arc<Self>,
        reg: Arc<Registered>,
        task: String,
        seed: Option<u32>,
        run: Option<String>,
        placed_by: Option<String>,
    ) -> Result<(String, tokio::sync::mpsc::UnboundedReceiver<StepEvent>), ApiError> {
        let run = run.unwrap_or_else(new_run_id);
        let cancel = CancellationToken::new();
        let agent = reg.spec.agent_id.clone();
        {
            // Counted and inserted under one lock, so concurrent starts cannot overshoot.
            let mut active = self.active();
            let limits = &self.host.config.limits;
            let of_agent = active.values().filter(|a| a.agent == agent).count();
            let full = if active.len() >= limits.concurrent_runs {
                Some(format!(
                    "this node already runs {} agent runs (limits.concurrent_runs)",
                    active.len()
                ))
            } else if of_agent >= limits.concurrent_runs_per_agent {
                Some(format!(
                    "agent '{agent}' already has {of_agent} runs in flight (limits.concurrent_runs_per_agent)"
                ))
            } else {
                None
            };
            let full = full.or_else(|| {
                let from = placed_by.as_deref()?;
                self.placed_admission(&active, from).err()
            });
            if let Some(why) = full {
                return Err(ApiError {
                    status: StatusCode::TOO_MANY_REQUESTS,
                    kind: "rate_limit_error",
                    code: Some("too_many_runs"),
                    retry_after_s: Some(1),
                    ..ApiError::bad_request(format!("{why}; retry when one has finished"))
                });
            }
            if active.contains_key(&run) {
                return Err(run_conflict(format!(
                    "run '{run}' is already in flight here (place it under a new run id)"
                )));
            }
            // A run id a neighbour chose must not overwrite a record of this node's: checked
            // under the lock, so a run of the same id cannot start in between.
            if placed_by.is_some() {
                match self.host.check_new_run(&agent, &run) {
                    Ok(()) => {}
                    Err(e @ edgewise_agent::AgentError::RunExists { .. }) => {
                        return Err(run_conflict(e.to_string()))
                    }
                    Err(e) => return Err(ApiError::internal(format!("run store: {e}"))),
                }
            }
            active.insert(
                run.clone(),
                Active {
                    agent: agent.clone(),
                    cancel: cancel.clone(),
                    placed_by,
                },
            );
        }
        let opts = RunOptions {
            run_id: Some(run.clone()),
            seed,
            cancel: Some(cancel),
            ..RunOptions::default()
        };
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let hub = self.clone();
        let id = run.clone();
        tokio::spawn(async move {
            // Frees the run's slot however the task ends, a panic included.
            let _slot = RunSlot {
                hub: hub.clone(),
                run: id.clone(),
            };
            let ran = match &reg.run_on {
                RunOn::Here(a) => a.run(&task, opts, Some(tx)).await.map(drop),
                RunOn::Mesh { .. } => {
                    crate::mesh_runs::run_on_mesh(&hub, &reg, &task, opts, tx).await
                }
            };
            if let Err(e) = ran {
                tracing::error!(agent = %agent, run = %id, "run stopped by a node failure: {e}");
            }
        });
        Ok((run, rx))
    }

    /// Runs a spec the neighbour `from` placed here, under the neighbour's run id. Only for agents
    /// whose model this node serves. The spec is held to this node's `mesh.accept_runs` (never its
    /// `agent_policy`); beyond them it is refused 403 with every reason, counted and audited, and
    /// nothing of it starts.
    pub(crate) async fn run_placed(
        self: &Arc<Self>,
        from: &str,
        source: &str,
        task: String,
        seed: Option<u32>,
        run: String,
    ) -> Result<tokio::sync::mpsc::UnboundedReceiver<StepEvent>, ApiError> {
        // Before the spec is read: a node that may not place runs here learns nothing more.
        if let Some(mesh) = &self.host.config.mesh {
            if let Err(refusal) = mesh.accept_runs.check_caller(from) {
                return Err(self.refuse_placed(from, "", &run, &refusal));
            }
        }
        let dir = self.host.placed_spec_dir();
        let placement = Placement { from, run: &run };
        let reg = match self.build(source, dir, Some(placement)).await {
            Ok(reg) => reg,
            Err(BuildError::PlacedRefused { agent, refusal }) => {
                return Err(self.refuse_placed(from, &agent, &run, &refusal))
            }
            Err(BuildError::Api(e)) => return Err(e),
        };
        let from = Some(from.to_owned());
        Ok(self
            .spawn_run(Arc::new(reg), task, seed, Some(run), from)?
            .1)
    }

    /// Counts and audits a placed run `mesh.accept_runs` refused; the 403 that says why. The
    /// audit record keeps what the caller is not told (e.g. which key refused the node).
    fn refuse_placed(
        &self,
        from: &str,
        agent: &str,
        run: &str,
        refusal: &edgewise_core::PlacedRefusal,
    ) -> ApiError {
        // Saturating: a neighbour that keeps being refused cannot wrap the counter back to 0.
        let _ = self
            .placed_runs_refused
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_add(1))
            });
        let detail = refusal.audit_detail();
        tracing::warn!(
            from = %from,
            agent = %agent,
            run = %run,
            reasons = %detail,
            "placed run refused"
        );
        let audited = self.host.audit.append(&edgewise_store::AuditRecord {
            kind: "placed_run_refused".into(),
            node: self.host.config.node_name(),
            agent: agent.to_owned(),
            run: run.to_owned(),
            placed_by: Some(from.to_owned()),
            decision: "refused".into(),
            detail: Some(format!("placed by {from}: {detail}")),
            ..Default::default()
        });
        if let Err(e) = audited {
            return ApiError::internal(format!("audit log: {e}"));
        }
        placed_refusal(refusal)
    }

    /// Whether the neighbour `from` may start one more run here, given the runs in flight.
    fn placed_admission(&self, active: &HashMap<String, Active>, from: &str) -> Result<(), String> {
        let in_flight = active
            .values()
            .filter(|a| a.placed_by.as_deref() == Some(from))
            .count();
        match &self.host.config.mesh {
            Some(mesh) => mesh.accept_runs.admit(from, in_flight),
            None => edgewise_core::AcceptRuns::default().admit(from, in_flight),
        }
    }

    /// Cancels a run the neighbour `from` placed here; `false` when there is no such run in
    /// flight (it ended, another node placed it, or it was started on this node, which a
    /// neighbour may not cancel).
    pub(crate) fn cancel_placed(&self, run: &str, from: &str) -> bool {
        match self
            .active()
            .get(run)
            .filter(|a| a.placed_by.as_deref() == Some(from))
        {
            Some(a) => {
                a.cancel.cancel();
                true
            }
            None => false,
        }
    }

    fn read_agents(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<Registered>>> {
        self.agents.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_agents(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Arc<Registered>>> {
        self.agents.write().unwrap_or_else(|p| p.into_inner())
    }

    fn active(&self) -> std::sync::MutexGuard<'_, HashMap<String, Active>> {
        self.active.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Loads `source`: this node's own spec, or one the neighbour `placed_by` placed here. An
    /// agent of this node whose model it does not serve is placed on the mesh when the node is in
    /// one; otherwise (and always for a placed spec) it is refused with what to do.
    async fn build(
        &self,
        source: &str,
        base_dir: PathBuf,
        placed: Option<Placement<'_>>,
    ) -> Result<Registered, BuildError> {
        // A placed run runs here or nowhere: calls arriving through the mesh never go on.
        let on_mesh = placed.is_none();
        let spec = AgentSpec::parse(source, std::path::Path::new("spec"))
            .map_err(|e| ApiError::unprocessable(e.to_string()))?;
        let served = &self.engine.info().name;
        let is_model = |n: &str| self.catalog.iter().any(|c| c == n);
        let (spec, choice) = match &placed {
            None => {
                let choice = choose_model(&spec, &self.host.config, None, is_model)
                    .map_err(ApiError::unprocessable)?;
                (spec, choice)
            }
            // `mesh.accept_runs` first: nothing is looked up for a spec this node refuses.
            Some(Placement { from, run }) => {
                let agent = spec.agent_id.clone();
                let spec = self.host.placed_spec(spec, from).map_err(|e| match e {
                    edgewise_agent::AgentError::PlacedRefused(refusal) => {
                        BuildError::PlacedRefused { agent, refusal }
                    }
                    e => ApiError::unprocessable(e.to_string()).into(),
                })?;
                // Before any tool is built (`spawn_run` checks again, under its lock).
                self.host
                    .check_new_run(&spec.agent_id, run)
                    .map_err(|e| match e {
                        e @ edgewise_agent::AgentError::RunExists { .. } => {
                            run_conflict(e.to_string())
                        }
                        e => ApiError::internal(format!("run store: {e}")),
                    })?;
                let choice = placed_model(&spec, &self.host.config, |n| {
                    n == served.as_str() || is_model(n)
                })
                .map_err(ApiError::unprocessable)?;
                (spec, choice)
            }
        };
        let here = &choice.model == served;
        if !here && !(on_mesh && self.host.config.mesh.is_some()) {
            return Err(ApiError::unprocessable(format!(
                "agent '{}' needs model '{}', but this node serves '{served}' (start the node with `edgewise serve --model {}`, or join a mesh whose nodes serve it)",
                spec.agent_id, choice.model, choice.model
            ))
            .into());
        }
        let tools = match &placed {
            None => self.host.tools(&spec, &base_dir).await,
            Some(p) => self.host.placed_tools(&spec, p.from).await,
        };
        let (tool_names, run_on) = match tools {
            Ok(tools) => {
                let names = tools.0.specs().iter().map(|t| t.name.clone()).collect();
                let run_on = if here {
                    RunOn::Here(self.host.agent(spec.clone(), tools, self.engine.clone()))
                } else {
                    let cloud = self.host.cloud_agent(spec.clone(), tools);
                    RunOn::Mesh {
                        cloud: cloud.map_err(|e| e.to_string()),
                    }
                };
                (names, run_on)
            }
            // Beyond the node's policy: refused wherever it would run.
            Err(e @ edgewise_agent::AgentError::Policy(_)) => {
                return Err(ApiError::unprocessable(e.to_string()).into())
            }
            Err(edgewise_agent::AgentError::PlacedRefused(refusal)) => {
                return Err(BuildError::PlacedRefused {
                    agent: spec.agent_id.clone(),
                    refusal,
                })
            }
            Err(e) if here => return Err(ApiError::unprocessable(e.to_string()).into()),
            // The nodes that run it need its tools (placement asks for its components); only
            // the cloud fallback, which calls tools here, needs them on this node.
            Err(e) => {
                let names = spec.capabilities.iter().map(|c| c.name.clone()).collect();
                let cloud = Err(format!(
                    "no cloud fallback: it would call the tools on this node, and they do not load here: {e}"
                ));
                (names, RunOn::Mesh { cloud })
            }
        };
        Ok(Registered {
            spec,
            model: choice.model,
            tool_names,
            run_on,
            source: source.to_owned(),
            base_dir,
            warning: choice.warning,
            triggers: CancellationToken::new(),
        })
    }

    fn get(&self, id: &str) -> Result<Arc<Registered>, ApiError> {
        self.read_agents().get(id).cloned().ok_or_else(|| {
            ApiError::not_found(format!("no agent '{id}' is registered on this node"))
        })
    }

    /// Cancels every run in flight (node shutdown) and waits up to `grace` for them to record it.
    pub async fn cancel_all(&self, grace: Duration) {
        for a in self.active().values() {
            a.cancel.cancel();
        }
        let deadline = tokio::time::Instant::now() + grace;
        while !self.active().is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A run a neighbour places here: the calling node and the run id it chose.
struct Placement<'a> {
    from: &'a str,
    run: &'a str,
}

/// Why `AgentHub::build` made no registration.
enum BuildError {
    /// A neighbour's placed run beyond this node's `mesh.accept_runs`.
    PlacedRefused {
        agent: String,
        refusal: edgewise_core::PlacedRefusal,
    },
    Api(ApiError),
}

impl From<ApiError> for BuildError {
    fn from(e: ApiError) -> Self {
        Self::Api(e)
    }
}

impl From<BuildError> for ApiError {
    fn from(e: BuildError) -> Self {
        match e {
            BuildError::PlacedRefused { refusal, .. } => placed_refusal(&refusal),
            BuildError::Api(e) => e,
        }
    }
}

/// The 403 a neighbour gets for a run beyond `mesh.accept_runs`: a node that may not place runs
/// here is told only that; a spec beyond it, every reason, each naming the key of this node's
/// config that would accept it (never what this node's lists hold). The placing node tries its
/// next node and does not count the refusal against this one's breaker.
fn placed_refusal(refusal: &edgewise_core::PlacedRefusal) -> ApiError {
    let message = match refusal {
        edgewise_core::PlacedRefusal::Caller { .. } => format!("placed run refused: {refusal}"),
        edgewise_core::PlacedRefusal::Spec(reasons) => format!(
            "placed run refused by this node's mesh.accept_runs: {} (the operator of this node widens mesh.accept_runs in its config.yaml to accept it)",
            reasons.join("; ")
        ),
    };
    ApiError {
        status: StatusCode::FORBIDDEN,
        code: Some("placed_run_refused"),
        ..ApiError::bad_request(message)
    }
}

/// The 409 for a run id that is taken (in flight, or recorded on this node).
fn run_conflict(message: String) -> ApiError {
    ApiError {
        status: StatusCode::CONFLICT,
        code: Some("run_exists"),
        ..ApiError::bad_request(message)
    }
}

pub(crate) fn hub(state: &AppState) -> Result<&Arc<AgentHub>, ApiError> {
    state.agents.as_ref().ok_or_else(|| ApiError {
        status: StatusCode::NOT_FOUND,
        ..ApiError::bad_request("this node runs without agents (started with --no-agents)")
    })
}

fn summary(r: &Registered) -> Value {
    let spec = &r.spec;
    json!({
        "id": spec.agent_id,
        "version": spec.version,
        "model": r.model,
        "runs_on": match r.run_on { RunOn::Here(_) => "this node", RunOn::Mesh { .. } => "mesh" },
        "tools": r.tool_names,
        "egress_allowed": spec.workflow_policy.egress_allowed,
        "base_dir": r.base_dir,
        "warning": r.warning,
    })
}

/// `POST /v1/agents`: the body is the spec's YAML (`Content-Type: application/yaml`), or JSON
/// `{"spec": YAML, "base_dir": DIR}` (`application/json`).
/// Registering an id again replaces it (runs in flight finish on the old spec).
pub async fn register(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let hub = hub(&state)?;
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError::bad_request("the agent spec is not UTF-8 text"))?;
    let json = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("application/json")
        });
    let (source, base_dir) = if json {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Body {
            spec: String,
            base_dir: Option<PathBuf>,
        }
        let b: Body = serde_json::from_str(text).map_err(|e| {
            ApiError::bad_request(format!(
                "expected JSON {{\"spec\": \"<agent spec YAML>\", \"base_dir\": \"<dir>\"}} (or send the YAML itself as application/yaml): {e}"
            ))
        })?;
        (b.spec, b.base_dir)
    } else {
        (text.to_owned(), None)
    };
    let base_dir = base_dir.unwrap_or_else(|| hub.default_base_dir.clone());
    if !base_dir.is_absolute() {
        return Err(ApiError::bad_request(format!(
            "base_dir '{}' must be an absolute path",
            base_dir.display()
        ))
        .param("base_dir"));
    }
    let registered = Arc::new(hub.build(&source, base_dir.clone(), None).await?);
    hub.start_triggers(&registered).await?;
    let id = registered.spec.agent_id.clone();
    hub.host
        .kv
        .set_json(
            REGISTRY,
            &id,
            &json!({"source": source, "base_dir": base_dir}),
        )
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let body = summary(&registered);
    // The replaced registration's triggers stop now; its runs in flight finish on it.
    let replaced = match hub.write_agents().insert(id, registered) {
        Some(old) => {
            old.triggers.cancel();
            true
        }
        None => false,
    };
    let status = if replaced {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(body)).into_response())
}

pub async fn list(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let hub = hub(&state)?;
    let data: Vec<Value> = hub.read_agents().values().map(|r| summary(r)).collect();
    Ok(Json(json!({"object": "list", "data": data})))
}

pub async fn show(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let hub = hub(&state)?;
    let r = hub.get(&id)?;
    let mut v = summary(&r);
    v["spec"] = json!(r.source);
    Ok(Json(v))
}

/// Unregisters the agent and cancels its runs in flight; its transcripts and audit records stay.
pub async fn remove(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let hub = hub(&state)?;
    let Some(registered) = hub.write_agents().remove(&id) else {
        return Err(ApiError::not_found(format!(
            "no agent '{id}' is registered on this node"
        )));
    };
    registered.triggers.cancel();
    hub.host
        .kv
        .remove(REGISTRY, &id)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    for a in hub.active().values().filter(|a| a.agent == id) {
        a.cancel.cancel();
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RunBody {
    task: String,
    /// Stream steps as server-sent events (default); `false` answers with the outcome when done.
    #[serde(default = "yes")]
    stream: bool,
    seed: Option<u32>,
}

fn yes() -> bool {
    true
}

/// `POST /v1/agents/{id}/runs`: starts a run. The SSE stream has events `started`, `step` (one
/// per model turn) and `finished` (the outcome); `error` if the node failed mid-run.
pub async fn start_run(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let hub = hub(&state)?;
    let r = hub.get(&id)?;
    let body: RunBody = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!(
            "expected {{\"task\": \"...\", \"stream\": true, \"seed\": 1}}: {e}"
        ))
    })?;
    if body.task.trim().is_empty() {
        return Err(ApiError::bad_request("the task is empty").param("task"));
    }
    let (run, rx) = hub.spawn_run(r, body.task, body.seed, None, None)?;

    if body.stream {
        let events = tokio_stream::wrappers::UnboundedReceiverStream::new(rx);
        let finished = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let seen_finish = finished.clone();
        let stream = events
            .map(move |ev| {
                let (name, data) = match ev {
                    StepEvent::Started { run, model } => ("started", json!({"run": run, "model": model})),
                    StepEvent::Step(s) => ("step", json!(s)),
                    StepEvent::Finished(o) => {
                        seen_finish.store(true, std::sync::atomic::Ordering::Relaxed);
                        ("finished", json!(o))
                    }
                };
                Ok::<_, Infallible>(SseEvent::default().event(name).data(data.to_string()))
            })
            .chain(tokio_stream::once(()).filter_map(move |()| {
                // The channel closed; without a `finished` event the node failed mid-run.
                (!finished.load(std::sync::atomic::Ordering::Relaxed)).then(|| {
                    Ok(SseEvent::default().event("error").data(
                        json!({"run": run, "message": "the run stopped without an outcome; see the node log"})
                            .to_string(),
                    ))
                })
            }));
        return Ok(Sse::new(stream)
            .keep_alive(KeepAlive::default())
            .into_response());
    }
    let mut rx = rx;
    while let Some(ev) = rx.recv().await {
        if let StepEvent::Finished(o) = ev {
            return Ok(Json(json!(o)).into_response());
        }
    }
    Err(ApiError::internal(format!(
        "run {run} stopped without an outcome; see the node log"
    )))
}

pub async fn list_runs(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let hub = hub(&state)?;
    let runs = hub
        .host
        .runs()
        .list(Some(&id))
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let data: Vec<Value> = runs
        .iter()
        .map(|r| {
            json!({"run": r.run, "task": r.task, "status": r.status, "started": r.started,
                   "ended": r.ended, "answer": r.answer, "steps": r.steps.len()})
        })
        .collect();
    Ok(Json(json!({"object": "list", "data": data})))
}

/// The run's transcript: task, status, every step, answer or error.
pub async fn get_run(
    State(state): State<AppState>,
    Path((id, run)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let hub = hub(&state)?;
    match hub.host.runs().get(&id, &run) {
        Ok(Some(r)) => Ok(Json(json!(r))),
        Ok(None) => Err(ApiError::not_found(format!(
            "agent '{id}' has no run '{run}'"
        ))),
        Err(e) => Err(ApiError::internal(e.to_string())),
    }
}

/// The answer to a cancel: 202, the run ends `cancelled` shortly.
pub(crate) fn cancelling(run: &str) -> Response {
    (
        StatusCode::ACCEPTED,
        Json(json!({"run": run, "status": "cancelling"})),
    )
        .into_response()
}

/// Cancels a run in flight (202; it ends `cancelled`), or deletes a finished run's transcript (204).
pub async fn delete_run(
    State(state): State<AppState>,
    Path((id, run)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let hub = hub(&state)?;
    if let Some(a) = hub.active().get(&run).filter(|a| a.agent == id) {
        a.cancel.cancel();
        return Ok(cancelling(&run));
    }
    match hub.host.runs().delete(&id, &run) {
        Ok(true) => Ok(StatusCode::NO_CONTENT.into_response()),
        Ok(false) => Err(ApiError::not_found(format!(
            "agent '{id}' has no run '{run}'"
        ))),
        Err(e) => Err(ApiError::internal(e.to_string())),
    }
}
