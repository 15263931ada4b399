//! Agent runs on neighbours. A node may register an agent whose model only neighbours serve:
//! each run is then placed on one of them (`workflow_policy.fallback` first, then tier, then
//! load), its steps stream back as they happen, and a failed attempt (the node died, left, or
//! refused) is retried on the next node, up to `workflow_policy.max_retries` times. The caller
//! receives exactly one outcome. This node's audit log records every attempt and names the node
//! that ran each step; the node that ran it keeps its own records too. The cloud comes last, and
//! only for agents whose policy allows egress.
//!
//! On the wire a placed run is one mesh call to [`PLACED_RUNS`]: the spec's YAML, the task and
//! the run id in; NDJSON lines (`started`, `step`, `finished`) out. Cancelling the run on the
//! placing node cancels it on the node running it too ([`PLACED_RUN`], `DELETE`).
//!
//! The running node holds a placed spec to its own `mesh.accept_runs` for the calling node, never
//! to its `agent_policy`, and keeps the run's KV in `mesh:<caller>:<agent>`. A spec beyond them is
//! answered 403 with every reason; the placing node then tries its next node without charging
//! the refusing node's breaker, and a run no node accepts ends with those reasons.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use axum::Extension;
use edgewise_agent::{
    AgentError, RunOptions, RunOutcome, RunRecord, RunStatus, StepEvent, StepRecord,
};
use edgewise_store::{sha256_hex, AuditRecord};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::mpsc::UnboundedSender;

use crate::agents::{AgentHub, Registered, RunOn};
use crate::mesh::{Mesh, MeshCaller};
use crate::{ApiError, AppState};

/// The mesh-only route that runs an agent placed here by a neighbour.
pub(crate) const PLACED_RUNS: &str = "/v1/mesh/agent-runs";
/// The mesh-only route that cancels a run placed here (`DELETE`).
pub(crate) const PLACED_RUN: &str = "/v1/mesh/agent-runs/{run}";
/// A placed run may take the spec's whole `limits.timeout`; this much more covers the transfer.
const CALL_SLACK: Duration = Duration::from_secs(30);
/// How long the placing node waits for the running node to confirm a cancel.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(5);

/// What the placing node sends.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlacedRun {
    spec: String,
    task: String,
    /// The placing node's run id, kept on every node that attempts the run.
    run: String,
    #[serde(default)]
    seed: Option<u32>,
}

/// One line of a placed run's answer.
#[derive(Serialize, Deserialize)]
#[serde(tag = "event", content = "data", rename_all = "snake_case")]
enum Line {
    Started { model: String },
    Step(StepRecord),
    Finished(RunOutcome),
}

/// Run ids travel between nodes and become KV keys: short and plain.
fn check_run_id(run: &str) -> Result<(), ApiError> {
    let ok = !run.is_empty()
        && run.len() <= 64
        && run
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request("a run id is 1–64 letters, digits, '-' or '_'").param("run"))
    }
}

/// `POST /v1/mesh/agent-runs` (through the mesh only): runs the spec here, under this node's
/// `mesh.accept_runs` for the calling node, and streams its steps. A spec beyond them is answered
/// 403 with every reason (see `AgentHub::run_placed`).
pub(crate) async fn serve_placed_run(
    State(state): State<AppState>,
    Extension(MeshCaller(from)): Extension<MeshCaller>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let hub = crate::agents::hub(&state)?;
    // The name scopes the run's KV (`mesh:<from>:<agent>`): it must be a plain node name.
    edgewise_mesh::check_node_name(&from).map_err(|e| ApiError {
        status: StatusCode::FORBIDDEN,
        ..ApiError::bad_request(format!("placed run refused: {e}"))
    })?;
    let placed: PlacedRun = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!(
            "expected {{\"spec\": YAML, \"task\": \"...\", \"run\": ID, \"seed\": N}}: {e}"
        ))
    })?;
    check_run_id(&placed.run)?;
    let events = hub
        .run_placed(&from, &placed.spec, placed.task, placed.seed, placed.run)
        .await?;
    let lines = tokio_stream::wrappers::UnboundedReceiverStream::new(events).map(|ev| {
        let line = match ev {
            StepEvent::Started { model, .. } => Line::Started { model },
            StepEvent::Step(s) => Line::Step(s),
            StepEvent::Finished(o) => Line::Finished(o),
        };
        let mut bytes = serde_json::to_vec(&line).unwrap_or_default();
        bytes.push(b'\n');
        Ok::<_, Infallible>(Bytes::from(bytes))
    });
    let mut response = Response::new(Body::from_stream(lines));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    Ok(response)
}

/// `DELETE /v1/mesh/agent-runs/{run}` (through the mesh only): cancels a run the calling node
/// placed here. It ends `cancelled` here too, and its answer stream ends with that outcome.
pub(crate) async fn cancel_placed_run(
    State(state): State<AppState>,
    Extension(MeshCaller(from)): Extension<MeshCaller>,
    axum::extract::Path(run): axum::extract::Path<String>,
) -> Result<Response, ApiError> {
    let hub = crate::agents::hub(&state)?;
    if !hub.cancel_placed(&run, &from) {
        return Err(ApiError::not_found(format!(
            "no run '{run}' that {from} placed here is in flight"
        )));
    }
    Ok(crate::agents::cancelling(&run))
}

/// Tells `node` to stop the run it runs for us; what happened, for the audit log.
async fn cancel_on(mesh: &Mesh, node: &str, run: &str) -> String {
    let path = PLACED_RUN.replace("{run}", run);
    match mesh
        .node
        .call(node, "DELETE", &path, &[], CANCEL_TIMEOUT)
        .await
    {
        Ok(r) if r.status == 202 => "cancelled; the node stopped the run".into(),
        Ok(r) if r.status == 404 => "cancelled; the run had already ended on the node".into(),
        Ok(r) => format!("cancelled; the node answered {}", r.status),
        Err(e) => format!("cancelled; the node could not be told: {e}"),
    }
}

/// Why one attempt gave no outcome.
enum Failed {
    /// The node answered, but not with a run (it refused the spec, e.g. 403 beyond its
    /// `mesh.accept_runs`, or was busy): it is healthy, so its breaker is not charged, and the
    /// next node is tried. The message (every reason the node gave) ends up in the outcome.
    Refused(String),
    /// No answer, or it broke off: counts against the node's breaker.
    Broken(String),
    /// This node could not record a step: the run stops here.
    Local(AgentError),
}

/// Runs `reg` (placed on the mesh) to exactly one outcome, sent on `events` like a local run's.
/// `Err` only for this node's own failures (audit log, run store).
pub(crate) async fn run_on_mesh(
    hub: &Arc<AgentHub>,
    reg: &Registered,
    task: &str,
    opts: RunOptions,
    events: UnboundedSender<StepEvent>,
) -> Result<(), AgentError> {
    let run = opts
        .run_id
        .clone()
        .unwrap_or_else(edgewise_agent::new_run_id);
    let span =
        tracing::info_span!("agent_run", agent = %reg.spec.agent_id, run = %run, placed = true);
    tracing::Instrument::instrument(placed_run(hub, reg, task, opts, events, run), span).await
}

async fn placed_run(
    hub: &Arc<AgentHub>,
    reg: &Registered,
    task: &str,
    opts: RunOptions,
    events: UnboundedSender<StepEvent>,
    run: String,
) -> Result<(), AgentError> {
    let host = hub.host();
    let spec = &reg.spec;
    let me = host.config.node_name();
    let audit = |rec: AuditRecord| {
        host.audit_placed(AuditRecord {
            agent: spec.agent_id.clone(),
            run: run.clone(),
            ..rec
        })
    };
    let now = || chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let mut record = RunRecord {
        agent: spec.agent_id.clone(),
        run: run.clone(),
        task: task.to_owned(),
        status: RunStatus::Running,
        model: reg.model.clone(),
        started: now(),
        ended: None,
        answer: None,
        error: None,
        summaries: 0,
        cached: false,
        steps: Vec::new(),
        // This node's own agent; where it runs is in the steps' `node`.
        placed_by: None,
    };
    audit(AuditRecord {
        kind: "run_start".into(),
        node: me.clone(),
        model: Some(reg.model.clone()),
        arguments: Some(json!({ "task": task })),
        arguments_sha256: Some(sha256_hex(task.as_bytes())),
        decision: "start".into(),
        detail: Some(format!(
            "placed on the mesh: this node does not serve '{}'",
            reg.model
        )),
        ..Default::default()
    })?;
    host.runs().save(&record)?;
    let _ = events.send(StepEvent::Started {
        run: run.clone(),
        model: reg.model.clone(),
    });

    let placed = serde_json::to_vec(&PlacedRun {
        spec: reg.source.clone(),
        task: task.to_owned(),
        run: run.clone(),
        seed: opts.seed,
    })
    .unwrap_or_default();
    let attempts_allowed = 1 + spec.workflow_policy.max_retries as usize;
    let cancel = opts.cancel.clone().unwrap_or_default();
    let mut tried: Vec<String> = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    let mut outcome = None;
    let components: Vec<String> = spec
        .capabilities
        .iter()
        .filter_map(|c| c.endpoint.installed_component())
        .collect();
    let mesh = hub.mesh.get();
    while let Some(mesh) = mesh.filter(|_| tried.len() < attempts_allowed) {
        let Some(node) = next_node(
            mesh,
            &reg.model,
            &components,
            spec.workflow_policy.fallback.as_deref(),
            &tried,
            &mut failures,
        ) else {
            break;
        };
        if !tried.is_empty() {
            mesh.metrics.retries.fetch_add(1, Ordering::Relaxed);
        }
        tried.push(node.clone());
        audit(AuditRecord {
            kind: "placement".into(),
            node: node.clone(),
            decision: "attempt".into(),
            detail: Some(format!("attempt {} of {attempts_allowed}", tried.len())),
            ..Default::default()
        })?;
        record.steps.clear();
        let timeout = spec.limits.timeout + CALL_SLACK;
        let trial = attempt(mesh, &node, &placed, timeout, |mut step| {
            step.node = Some(node.clone());
            audit(AuditRecord {
                node: node.clone(),
                ..step.audit_record(&reg.model)
            })?;
            record.steps.push(step.clone());
            host.runs().save(&record)?;
            let _ = events.send(StepEvent::Step(step));
            Ok(())
        });
        let result = tokio::select! {
            r = trial => r,
            () = cancel.cancelled() => Err(Failed::Refused(cancel_on(mesh, &node, &run).await)),
        };
        match result {
            Ok(o) => {
                mesh.record(&node, true);
                outcome = Some((node, o));
                break;
            }
            Err(failed) => {
                let (why, broken) = match failed {
                    Failed::Refused(why) => (why, false),
                    Failed::Broken(why) => (why, true),
                    Failed::Local(e) => return Err(e),
                };
                mesh.record(&node, !broken);
                mesh.metrics
                    .offload_failures
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(node = %node, failure = %why, "placed run failed");
                audit(AuditRecord {
                    kind: "placement".into(),
                    node: node.clone(),
                    decision: "failed".into(),
                    detail: Some(why.clone()),
                    ..Default::default()
                })?;
                failures.push(format!("{node}: {why}"));
                if cancel.is_cancelled() {
                    break;
                }
            }
        }
    }

    let ran_on = match outcome {
        Some((node, o)) => {
            record.status = o.status;
            record.answer = o.answer;
            record.error = o.error;
            record.summaries = o.summaries;
            node
        }
        None if cancel.is_cancelled() => {
            record.status = RunStatus::Cancelled;
            record.error = Some("the run was cancelled".into());
            me.clone()
        }
        None => {
            let tried_on = if mesh.is_none() {
                "this node has not joined its mesh".to_owned()
            } else if failures.is_empty() && components.is_empty() {
                format!("no node of the mesh serves '{}'", reg.model)
            } else if failures.is_empty() {
                format!(
                    "no node of the mesh serves '{}' with the components {}",
                    reg.model,
                    components.join(", ")
                )
            } else {
                format!("no node of the mesh ran it ({})", failures.join("; "))
            };
            match &reg.run_on {
                // The last resort runs here with every step on the cloud; it records itself.
                RunOn::Mesh { cloud: Ok(agent) } => {
                    audit(AuditRecord {
                        kind: "placement".into(),
                        node: me.clone(),
                        decision: "cloud".into(),
                        detail: Some(tried_on),
                        ..Default::default()
                    })?;
                    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
                    let forward = async {
                        while let Some(ev) = rx.recv().await {
                            if !matches!(ev, StepEvent::Started { .. }) {
                                let _ = events.send(ev);
                            }
                        }
                    };
                    let opts = RunOptions {
                        run_id: Some(run.clone()),
                        ..opts
                    };
                    let (ran, ()) = tokio::join!(agent.run(task, opts, Some(tx)), forward);
                    return ran.map(drop);
                }
                RunOn::Mesh { cloud: Err(why) } => {
                    record.status = RunStatus::Failed;
                    record.error = Some(format!("{tried_on}; {why}"));
                }
                RunOn::Here(_) => {
                    record.status = RunStatus::Failed;
                    record.error = Some(tried_on);
                }
            }
            me.clone()
        }
    };
    record.ended = Some(now());
    audit(AuditRecord {
        node: ran_on,
        ..record.end_audit()
    })?;
    host.runs().save(&record)?;
    let _ = events.send(StepEvent::Finished(record.outcome()));
    Ok(())
}

/// The next node to try: live, serving `model` with every installed component the spec's tools
/// name, not tried yet, breaker closed; the spec's `fallback` node first, then the mesh's order
/// (tier, load, round trip).
fn next_node(
    mesh: &Mesh,
    model: &str,
    components: &[String],
    fallback: Option<&str>,
    tried: &[String],
    failures: &mut Vec<String>,
) -> Option<String> {
    let mut nodes = mesh.node.nodes_serving(model, components);
    nodes.retain(|n| !tried.contains(n));
    if let Some(f) = fallback {
        nodes.sort_by_key(|n| n != f);
    }
    for node in nodes {
        match mesh.admit(&node) {
            Ok(()) => return Some(node),
            Err(closed) => {
                if !failures.contains(&closed) {
                    failures.push(closed);
                }
            }
        }
    }
    None
}

/// One attempt on `node`: the outcome, after passing each step to `on_step` as it arrives.
async fn attempt(
    mesh: &Mesh,
    node: &str,
    placed: &[u8],
    timeout: Duration,
    mut on_step: impl FnMut(StepRecord) -> Result<(), AgentError>,
) -> Result<RunOutcome, Failed> {
    let mut remote = mesh
        .node
        .call(node, "POST", PLACED_RUNS, placed, timeout)
        .await
        .map_err(|e| Failed::Broken(e.to_string()))?;
    let mut buf = Vec::new();
    if remote.status != 200 {
        while let Some(Ok(chunk)) = remote.body.recv().await {
            buf.extend(chunk);
        }
        let message = serde_json::from_slice::<serde_json::Value>(&buf)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&buf).into_owned());
        return Err(Failed::Refused(format!(
            "refused ({}): {message}",
            remote.status
        )));
    }
    while let Some(chunk) = remote.body.recv().await {
        buf.extend(chunk.map_err(|e| Failed::Broken(e.to_string()))?);
        while let Some(end) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=end).collect();
            match serde_json::from_slice::<Line>(&line) {
                Ok(Line::Started { .. }) => {}
                Ok(Line::Step(step)) => on_step(step).map_err(Failed::Local)?,
                Ok(Line::Finished(outcome)) => return Ok(outcome),
                Err(e) => return Err(Failed::Broken(format!("unreadable answer: {e}"))),
            }
        }
    }
    Err(Failed::Broken("the answer ended without an outcome".into()))
}
