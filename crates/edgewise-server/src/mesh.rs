//! The mesh as the API sees it: `GET /v1/mesh`, offload of requests for models that only other
//! nodes serve, the handler that runs calls arriving from other nodes, and the rounds that keep
//! `mesh.share`'s documents and collections in step with every neighbour.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use edgewise_core::{CircuitBreaker, MeshShare, SyncConfig};
use edgewise_mesh::{CallHandler, CallRequest, CallResponse, MeshNode};
use edgewise_store::knowledge::Delta;
use edgewise_sync::{Remote, RemoteReply, RemoteRequest, Syncer};
use futures::StreamExt;
use serde_json::{json, Value};
use tower::ServiceExt;

use crate::error::ApiError;
use crate::state::{self as node_api, ImportQuery, NodeState, PeerQuery};
use crate::AppState;

/// A remote generation may stream for minutes; the caller's disconnect ends it sooner.
const CALL_TIMEOUT: Duration = Duration::from_secs(600);

/// The inference routes (and agent runs placed here) a neighbour may run on this node. Besides
/// these, it may only cancel the runs it placed here and sync the documents and collections of
/// `mesh.share`; never the agents API, KV or anything else.
const CALLABLE: [&str; 4] = [
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    crate::mesh_runs::PLACED_RUNS,
];
/// A sync call that takes longer than this counts as the neighbour being unreachable.
const SYNC_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Response header naming the node that produced the answer.
pub const SERVED_BY: &str = "x-edgewise-node";

/// Offload counters for `/metrics`.
#[derive(Default)]
pub struct MeshMetrics {
    pub offloads: AtomicU64,
    pub offload_failures: AtomicU64,
    /// Attempts on a further node after one failed.
    pub retries: AtomicU64,
    /// Times a neighbour's breaker opened.
    pub breaker_trips: AtomicU64,
    pub calls_served: AtomicU64,
    /// Mesh messages dropped because they claimed a node that did not seal them.
    pub forged: AtomicU64,
}

/// Forged messages of one kind (advert, call, reply) written to the audit log per minute at most;
/// beyond it they are counted only, so a member flooding forgeries cannot grow the log without
/// bound, nor use up with junk adverts the budget that would record a forged call.
const FORGED_AUDITS_PER_MINUTE: u32 = 20;

/// What this node does with a forged mesh message: count it, and write it to the audit log as a
/// security event (`mesh_forged`, agent `mesh`) naming the key it came on, the node it claimed
/// and the member whose certificate sealed it.
pub fn forged_reporter(
    metrics: Arc<MeshMetrics>,
    audit: Option<Arc<edgewise_store::AuditLog>>,
    node: String,
) -> edgewise_mesh::ForgedReporter {
    let window = std::sync::Mutex::new((Instant::now(), std::collections::HashMap::new()));
    Arc::new(move |forged: edgewise_mesh::Forged| {
        let _ = metrics
            .forged
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_add(1))
            });
        let Some(audit) = &audit else { return };
        {
            let mut w = window.lock().unwrap_or_else(|p| p.into_inner());
            if w.0.elapsed() >= Duration::from_secs(60) {
                *w = (Instant::now(), std::collections::HashMap::new());
            }
            let written: &mut u32 = w.1.entry(forged.what).or_default();
            if *written >= FORGED_AUDITS_PER_MINUTE {
                return;
            }
            *written += 1;
        }
        let record = edgewise_store::AuditRecord {
            kind: "mesh_forged".into(),
            node: node.clone(),
            agent: "mesh".into(),
            run: String::new(),
            decision: "dropped".into(),
            detail: Some(format!(
                "forged {} on {} claiming {}, sealed by {}: {}",
                forged.what,
                forged.key,
                forged.claimed,
                forged
                    .sealed_by
                    .as_deref()
                    .unwrap_or("no valid certificate"),
                forged.reason
            )),
            ..Default::default()
        };
        if let Err(e) = audit.append(&record) {
            tracing::error!(error = %e, "cannot audit a forged mesh message");
        }
    })
}

/// Consecutive failed offloads to one neighbour that open its breaker.
const BREAKER_FAILURES: u32 = 3;
/// How long an open breaker keeps a neighbour out of placement before one trial call.
const BREAKER_COOLDOWN: Duration = Duration::from_secs(10);

/// A circuit breaker per neighbour: one that keeps failing is skipped for a while.
#[derive(Default)]
pub struct Breakers(std::sync::Mutex<std::collections::BTreeMap<String, CircuitBreaker>>);

impl Breakers {
    fn with<T>(&self, node: &str, f: impl FnOnce(&mut CircuitBreaker) -> T) -> T {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let breaker = map
            .entry(node.to_owned())
            .or_insert_with(|| CircuitBreaker::new(BREAKER_FAILURES, BREAKER_COOLDOWN));
        f(breaker)
    }

    /// `open` or `closed` per neighbour that has been called.
    pub fn states(&self) -> Value {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.iter()
            .map(|(node, b)| {
                let state = if b.is_open() { "open" } else { "closed" };
                (node.clone(), Value::from(state))
            })
            .collect::<serde_json::Map<_, _>>()
            .into()
    }
}

/// The node a mesh call came from, for the handlers that scope what it may do (placed runs).
/// Only `LocalCalls` sets it, from the call's head: the public HTTP router serves no route that
/// reads it, and no header can forge it. The mesh runs a call only when the certificate that
/// sealed it names this node (`edgewise_mesh::identity`), so the name is authenticated.
#[derive(Debug, Clone)]
pub(crate) struct MeshCaller(pub(crate) String);

/// Runs calls from other nodes through this node's own handlers, without the API key layer
/// (the link is mTLS within the trust domain) and without offload (so calls never loop).
struct LocalCalls {
    router: Router,
    metrics: Arc<MeshMetrics>,
}

/// `state` must be the node's state before `with_mesh`.
pub fn call_handler(
    state: &AppState,
    share: &MeshShare,
    metrics: Arc<MeshMetrics>,
) -> Arc<dyn CallHandler> {
    let mut local = state.clone();
    local.mesh = None;
    let router = Router::new()
        .route(CALLABLE[0], post(crate::openai::chat_completions))
        .route(CALLABLE[1], post(crate::openai::completions))
        .route(CALLABLE[2], post(crate::embeddings::embeddings))
        .route(CALLABLE[3], post(crate::mesh_runs::serve_placed_run))
        .route(
            crate::mesh_runs::PLACED_RUN,
            axum::routing::delete(crate::mesh_runs::cancel_placed_run),
        )
        .route("/v1/docs/{name}/sync", post(shared_doc_sync))
        .route("/v1/knowledge", get(shared_collections))
        .route("/v1/knowledge/{c}/export", post(shared_export))
        .route("/v1/knowledge/{c}/import", post(shared_import))
        .fallback(|| async {
            ApiError {
                status: StatusCode::FORBIDDEN,
                ..ApiError::bad_request("not callable through the mesh")
            }
        })
        .layer(Extension(Arc::new(share.clone())))
        .with_state(local);
    Arc::new(LocalCalls { router, metrics })
}

fn not_shared(what: &str, name: &str) -> ApiError {
    ApiError {
        status: StatusCode::FORBIDDEN,
        ..ApiError::bad_request(format!(
            "{what} '{name}' is not in this node's mesh.share, so it never leaves the node"
        ))
    }
}

async fn shared_doc_sync(
    state: State<AppState>,
    Extension(share): Extension<Arc<MeshShare>>,
    Path(name): Path<String>,
    peer: Query<PeerQuery>,
    body: Bytes,
) -> Result<Response, ApiError> {
    if !share.documents.contains(&name) {
        return Err(not_shared("document", &name));
    }
    node_api::doc_sync(state, Path(name), peer, body).await
}

/// The shared collections only: the names of the others are not for neighbours either.
async fn shared_collections(
    state: State<AppState>,
    Extension(share): Extension<Arc<MeshShare>>,
) -> Result<Json<Value>, ApiError> {
    let Json(mut listing) = node_api::collections(state).await?;
    if let Some(list) = listing["collections"].as_array_mut() {
        list.retain(|c| {
            c["name"]
                .as_str()
                .is_some_and(|n| share.collections.iter().any(|s| s == n))
        });
    }
    Ok(Json(listing))
}

async fn shared_export(
    state: State<AppState>,
    Extension(share): Extension<Arc<MeshShare>>,
    Path(c): Path<String>,
    body: Bytes,
) -> Result<Json<Delta>, ApiError> {
    if !share.collections.contains(&c) {
        return Err(not_shared("collection", &c));
    }
    node_api::export(state, Path(c), body).await
}

async fn shared_import(
    state: State<AppState>,
    Extension(share): Extension<Arc<MeshShare>>,
    Path(c): Path<String>,
    query: Query<ImportQuery>,
    delta: Json<Delta>,
) -> Result<Json<Value>, ApiError> {
    if !share.collections.contains(&c) {
        return Err(not_shared("collection", &c));
    }
    node_api::import(state, Path(c), query, delta).await
}

#[async_trait::async_trait]
impl CallHandler for LocalCalls {
    async fn call(&self, request: CallRequest) -> CallResponse {
        let Ok(method) = Method::from_bytes(request.method.as_bytes()) else {
            let message = format!("'{}' is not an HTTP method", request.method);
            return call_response(ApiError::bad_request(message).into_response());
        };
        if CALLABLE.contains(&request.path.as_str()) {
            self.metrics.calls_served.fetch_add(1, Ordering::Relaxed);
        }
        let http = Request::builder()
            .method(method)
            .uri(&request.path)
            .header(header::CONTENT_TYPE, "application/json")
            .extension(MeshCaller(request.from))
            .body(Body::from(request.body));
        let response = match http {
            Ok(http) => match self.router.clone().oneshot(http).await {
                Ok(r) => r,
                Err(never) => match never {},
            },
            Err(e) => ApiError::bad_request(e.to_string()).into_response(),
        };
        call_response(response)
    }
}

/// A handler's response as the mesh carries it back, body streamed.
fn call_response(response: Response) -> CallResponse {
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_owned();
    let body = response
        .into_body()
        .into_data_stream()
        .filter_map(|chunk| async move { chunk.ok().map(|b| b.to_vec()) })
        .boxed();
    CallResponse {
        status,
        content_type,
        body,
    }
}

/// When `model` is not served here but a neighbour advertises it, runs the request there and
/// streams its answer back; `None` leaves the request to the local handler (and its 404).
pub(crate) async fn offload(
    state: &AppState,
    path: &str,
    model: &str,
    body: &Bytes,
) -> Option<Result<Response, ApiError>> {
    let mesh = state.mesh.as_ref()?;
    let nodes = if path == "/v1/embeddings" {
        mesh.node.nodes_embedding(model)
    } else {
        mesh.node.nodes_serving(model, &[])
    };
    if nodes.is_empty() {
        return None;
    }
    let mut failures = Vec::new();
    let mut attempts = 0;
    let mut busy = 0;
    for node in &nodes {
        if let Err(closed) = mesh.admit(node) {
            failures.push(closed);
            continue;
        }
        if attempts > 0 {
            mesh.metrics.retries.fetch_add(1, Ordering::Relaxed);
        }
        attempts += 1;
        let span = tracing::info_span!("offload", node = %node, model, path);
        let call = mesh.node.call(node, "POST", path, body, CALL_TIMEOUT);
        let failure = match tracing::Instrument::instrument(call, span).await {
            // Busy there: the next neighbour may have room; the node itself is fine.
            Ok(remote) if remote.status == 503 => {
                mesh.record(node, true);
                busy += 1;
                format!("{node}: busy (503)")
            }
            Ok(remote) => {
                mesh.record(node, true);
                return Some(Ok(remote_response(remote)));
            }
            Err(e) => {
                mesh.record(node, false);
                format!("{node}: {e}")
            }
        };
        mesh.metrics
            .offload_failures
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(failure = %failure, "offload failed; trying the next node");
        failures.push(failure);
    }
    // Every node that was tried is only busy: the client should come back, as after a local 503.
    let all_busy = attempts > 0 && busy == attempts;
    Some(Err(ApiError {
        status: if all_busy {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::BAD_GATEWAY
        },
        kind: "server_error",
        code: Some("offload_failed"),
        param: None,
        message: format!(
            "model '{model}' is served by {} in the mesh, but none answered: {}",
            nodes.join(", "),
            failures.join("; ")
        ),
        retry_after_s: Some(1),
    }))
}

/// Runs a request this node has no room for (its queue is full) on a neighbour that serves the
/// same model; `busy`, this node's own 503, when none can take it.
pub(crate) async fn offload_when_busy(
    state: &AppState,
    path: &str,
    model: &str,
    body: &Bytes,
    busy: ApiError,
) -> Result<Response, ApiError> {
    match offload(state, path, model, body).await {
        Some(Ok(answer)) => Ok(answer),
        _ => Err(busy),
    }
}

/// The answer of a neighbour, streamed to the client with the node's name in a header.
fn remote_response(remote: edgewise_mesh::RemoteResponse) -> Response {
    let stream = tokio_stream::wrappers::UnboundedReceiverStream::new(remote.body)
        .map(|chunk| chunk.map(Bytes::from).map_err(std::io::Error::other));
    let mut response = Response::new(Body::from_stream(stream));
    *response.status_mut() = StatusCode::from_u16(remote.status).unwrap_or(StatusCode::BAD_GATEWAY);
    if let Ok(v) = HeaderValue::from_str(&remote.content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    if let Ok(v) = HeaderValue::from_str(&remote.node) {
        response.headers_mut().insert(SERVED_BY, v);
    }
    response
}

/// This node's membership, shared by the handlers.
pub struct Mesh {
    pub node: MeshNode,
    pub metrics: Arc<MeshMetrics>,
    pub breakers: Breakers,
}

impl Mesh {
    /// Counts an offload attempt to `node`, unless its breaker is open (`Err` says so).
    pub(crate) fn admit(&self, node: &str) -> Result<(), String> {
        if let Err(open) = self.breakers.with(node, |b| b.allow(Instant::now())) {
            return Err(format!(
                "{node}: breaker open (next trial in {} s)",
                open.retry_in.as_secs()
            ));
        }
        self.metrics.offloads.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Feeds `node`'s breaker: `ok` is whether the node answered (a refusal is an answer).
    pub(crate) fn record(&self, node: &str, ok: bool) {
        if ok {
            self.breakers.with(node, |b| b.record_success());
            return;
        }
        let tripped = self.breakers.with(node, |b| {
            let was_open = b.is_open();
            b.record_failure(Instant::now());
            !was_open && b.is_open()
        });
        if tripped {
            self.metrics.breaker_trips.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// `GET /v1/mesh`: this node and every neighbour seen, with its advert.
pub async fn status(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let mesh = state.mesh.as_ref().ok_or_else(|| {
        ApiError::not_found("this node is not in a mesh (no mesh: in its config)")
    })?;
    Ok(Json(json!({
        "node": mesh.node.name(),
        "peers": mesh.node.peers(),
        "offloads": mesh.metrics.offloads.load(Ordering::Relaxed),
        "offload_failures": mesh.metrics.offload_failures.load(Ordering::Relaxed),
        "retries": mesh.metrics.retries.load(Ordering::Relaxed),
        "breaker_trips": mesh.metrics.breaker_trips.load(Ordering::Relaxed),
        "breakers": mesh.breakers.states(),
        "calls_served": mesh.metrics.calls_served.load(Ordering::Relaxed),
    })))
}

/// A neighbour's state API through the mesh, for the sync rounds of `mesh.share`.
struct MeshRemote {
    mesh: Arc<Mesh>,
    peer: String,
    /// `mesh:NAME`: the key of what this node agreed with that neighbour.
    label: String,
    runtime: tokio::runtime::Handle,
}

impl Remote for MeshRemote {
    fn name(&self) -> &str {
        &self.label
    }

    /// Runs on a blocking thread (sync rounds do), so it may wait on the runtime.
    fn request(&self, r: &RemoteRequest<'_>) -> Result<RemoteReply, String> {
        if r.if_match.is_some() {
            return Err("conditional KV writes are not carried by the mesh".into());
        }
        self.runtime.block_on(async {
            let remote = self
                .mesh
                .node
                .call(
                    &self.peer,
                    r.method.as_str(),
                    r.path,
                    &r.body,
                    SYNC_CALL_TIMEOUT,
                )
                .await
                .map_err(|e| e.to_string())?;
            let mut body = Vec::new();
            let mut chunks = remote.body;
            while let Some(chunk) = chunks.recv().await {
                body.extend(chunk.map_err(|e| e.to_string())?);
            }
            Ok(RemoteReply {
                status: remote.status,
                body,
            })
        })
    }
}

/// How often each neighbour's round trip is measured (placement prefers the nearer of equals).
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// Measures the round trip to every live neighbour every `PROBE_EVERY`.
pub fn spawn_probes(state: &AppState) -> Option<tokio::task::JoinHandle<()>> {
    let mesh = state.mesh.clone()?;
    Some(tokio::spawn(async move {
        let mut every = tokio::time::interval(PROBE_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            mesh.node.probe(PROBE_EVERY).await;
        }
    }))
}

/// Keeps `share`'s documents and collections in step with every live neighbour: one round with
/// each every `share.interval_ms`. After a partition heals, the first round with a neighbour
/// brings both sides up to date; no node coordinates.
pub fn spawn_share_sync(state: &AppState, share: MeshShare) -> Option<tokio::task::JoinHandle<()>> {
    let mesh = state.mesh.clone()?;
    let node_state = state.node_state.clone()?;
    if share.documents.is_empty() && share.collections.is_empty() {
        return None;
    }
    Some(tokio::spawn(share_rounds(mesh, node_state, share)))
}

async fn share_rounds(mesh: Arc<Mesh>, st: Arc<NodeState>, share: MeshShare) {
    let me = mesh.node.name().to_owned();
    let mut syncers: std::collections::HashMap<String, Arc<Syncer>> = Default::default();
    // One round per neighbour at a time, each on its own: a neighbour whose link just died
    // holds up only its own rounds, never those with the others.
    let mut in_flight: std::collections::HashMap<String, tokio::task::JoinHandle<()>> =
        Default::default();
    let mut every = tokio::time::interval(Duration::from_millis(share.interval_ms.max(50)));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let reachable = mesh.node.reachable_peers();
        // A departed neighbour's syncer goes; what it agreed is persisted and found on return.
        syncers.retain(|peer, _| reachable.contains(peer));
        in_flight.retain(|_, round| !round.is_finished());
        for peer in reachable {
            if in_flight.contains_key(&peer) {
                continue;
            }
            let syncer = match syncers.get(&peer) {
                Some(s) => s.clone(),
                None => {
                    let cfg = SyncConfig {
                        upstream: format!("mesh:{peer}"),
                        api_key_env: None,
                        interval_s: 0,
                        conflict_policy: Default::default(),
                        kv_namespaces: Vec::new(),
                        collections: share.collections.clone(),
                        documents: share.documents.clone(),
                    };
                    let remote = MeshRemote {
                        mesh: mesh.clone(),
                        peer: peer.clone(),
                        label: cfg.upstream.clone(),
                        runtime: tokio::runtime::Handle::current(),
                    };
                    let made = Syncer::with_remote(
                        cfg,
                        Box::new(remote),
                        me.clone(),
                        st.kv.clone(),
                        st.docs.clone(),
                        st.knowledge.clone(),
                    );
                    match made {
                        Ok(s) => syncers.entry(peer.clone()).or_insert(Arc::new(s)).clone(),
                        Err(e) => {
                            tracing::warn!(error = %e, "mesh.share cannot be synced");
                            return;
                        }
                    }
                }
            };
            let name = peer.clone();
            let round = tokio::task::spawn_blocking(move || syncer.exchange());
            in_flight.insert(
                peer,
                tokio::spawn(async move { log_round(&name, round.await) }),
            );
        }
    }
}

fn log_round(
    peer: &str,
    round: Result<Result<edgewise_sync::Report, edgewise_sync::SyncError>, tokio::task::JoinError>,
) {
    match round {
        Ok(Ok(r)) => {
            let moved = r.documents.iter().any(|d| d.messages_received > 0)
                || r.collections.iter().any(|c| c.pushed + c.pulled > 0);
            if moved {
                tracing::info!(peer = %peer, report = ?r, "mesh share round");
            }
            for e in &r.errors {
                tracing::warn!(peer = %peer, error = %e, "mesh share round");
            }
        }
        Ok(Err(e)) => tracing::debug!(peer = %peer, error = %e, "mesh share round failed"),
        Err(e) => tracing::warn!(error = %e, "mesh share round panicked"),
    }
}
