//! The HTTP face of a node: an OpenAI-compatible API (existing clients just work), health and
//! Prometheus metrics. Handlers translate requests; all inference happens in `edgewise-infer`.
//!
//! Invariants: binds what it is told (the CLI defaults to 127.0.0.1); every error body is OpenAI's
//! error JSON; a client that disconnects cancels its generation.

mod access;
mod agents;
pub mod broker;
mod components;
mod embeddings;
mod error;
mod listen;
pub mod mesh;
mod mesh_runs;
mod metrics;
mod openai;
mod state;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::middleware;
use axum::routing::{get, post};
use axum::{Json, Router};

use edgewise_infer::{Engine, LazyEmbedder};
use serde_json::json;

pub use access::Access;
pub use agents::AgentHub;
pub use error::ApiError;
pub use state::NodeState;

#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
    pub(crate) context_per_request: u32,
    /// `None` on a node started without agents.
    pub(crate) agents: Option<Arc<AgentHub>>,
    /// KV, documents and knowledge; `None` on a node started without agents.
    pub(crate) node_state: Option<Arc<NodeState>>,
    /// `None` on a node outside any mesh.
    pub(crate) mesh: Option<Arc<mesh::Mesh>>,
}

/// Shared by all handlers behind one `Arc`.
pub struct Inner {
    pub(crate) engine: Arc<Engine>,
    pub(crate) embedder: Option<Arc<LazyEmbedder>>,
    pub(crate) api_key: Option<String>,
    /// The admin token, allowed hosts and origins.
    pub(crate) access: Access,
    /// `/v1/embeddings` requests computed at once (`limits.concurrent_embeddings`).
    pub(crate) embedding_slots: Arc<tokio::sync::Semaphore>,
    pub(crate) metrics: metrics::HttpMetrics,
    pub(crate) connections: Arc<listen::ConnectionMetrics>,
    pub(crate) limits: edgewise_core::NodeLimits,
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.inner
    }
}

impl AppState {
    /// `context_per_request` is also the default `max_tokens`: generation stops at the context limit.
    pub fn new(
        engine: Arc<Engine>,
        embedder: Option<Arc<LazyEmbedder>>,
        api_key: Option<String>,
        access: Access,
        limits: &edgewise_core::NodeLimits,
        context_per_request: u32,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                engine,
                embedder,
                api_key: api_key.filter(|k| !k.is_empty()),
                access,
                embedding_slots: Arc::new(tokio::sync::Semaphore::new(
                    limits.concurrent_embeddings.max(1),
                )),
                metrics: metrics::HttpMetrics::default(),
                connections: Arc::default(),
                limits: limits.clone(),
            }),
            context_per_request,
            agents: None,
            node_state: None,
            mesh: None,
        }
    }

    /// Offloads requests for models only neighbours serve (and runs of agents placed on the
    /// mesh), and serves `/v1/mesh`. The mesh's call handler must come from this state before
    /// this call (`mesh::call_handler`), and the agents, if any, must already be attached.
    pub fn with_mesh(
        mut self,
        node: edgewise_mesh::MeshNode,
        metrics: Arc<mesh::MeshMetrics>,
    ) -> Self {
        let mesh = Arc::new(mesh::Mesh {
            node,
            metrics,
            breakers: mesh::Breakers::default(),
        });
        if let Some(hub) = &self.agents {
            let _ = hub.mesh.set(mesh.clone());
        }
        self.mesh = Some(mesh);
        self
    }

    /// Serves the agents API from `hub`.
    pub fn with_agents(mut self, hub: Arc<AgentHub>) -> Self {
        self.agents = Some(hub);
        self
    }

    /// Serves the state API (`/v1/kv`, `/v1/docs`, `/v1/knowledge`) from `state`.
    pub fn with_node_state(mut self, state: NodeState) -> Self {
        self.node_state = Some(Arc::new(state));
        self
    }

    fn served_models(&self) -> Vec<String> {
        let mut v = vec![self.engine.info().name.clone()];
        if let Some(e) = &self.embedder {
            v.push(e.name.clone());
        }
        v
    }

    pub(crate) fn check_chat_model(&self, model: &str) -> Result<(), ApiError> {
        if model == self.engine.info().name {
            Ok(())
        } else {
            Err(ApiError::model_not_found(model, &self.served_models()))
        }
    }
}

/// Inference routes follow `api_key`; every other route needs the admin token; all of them pass
/// the browser guard first (`access`). `/health` needs no credential.
pub fn router(state: AppState) -> Router {
    let inference = Router::new()
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/embeddings", post(embeddings::embeddings))
        .route("/v1/models", get(list_models))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            access::require_api_key,
        ));
    let admin = Router::new()
        .route("/v1/agents", post(agents::register).get(agents::list))
        .route("/v1/agents/{id}", get(agents::show).delete(agents::remove))
        .route(
            "/v1/agents/{id}/runs",
            post(agents::start_run).get(agents::list_runs),
        )
        .route(
            "/v1/agents/{id}/runs/{run}",
            get(agents::get_run).delete(agents::delete_run),
        )
        .route("/v1/components", get(components::list))
        .route(
            "/v1/components/{name}",
            get(components::show)
                .put(components::put)
                .layer(DefaultBodyLimit::max(64 << 20))
                .delete(components::remove),
        )
        .route(
            "/v1/components/{name}/tools/{tool}",
            post(components::call_tool),
        )
        .route(
            "/v1/components/{name}/events",
            post(components::handle_event),
        )
        .route("/v1/kv/{ns}", get(state::kv_list))
        .route(
            "/v1/kv/{ns}/{key}",
            get(state::kv_get)
                .put(state::kv_put)
                .delete(state::kv_delete),
        )
        .route("/v1/docs", get(state::docs_list))
        .route(
            "/v1/docs/{name}",
            get(state::doc_get).patch(state::doc_patch),
        )
        .route("/v1/docs/{name}/sync", post(state::doc_sync))
        .route("/v1/knowledge", get(state::collections))
        .route("/v1/knowledge/{c}/search", post(state::search))
        .route("/v1/knowledge/{c}/export", post(state::export))
        .route(
            "/v1/knowledge/{c}/import",
            post(state::import).layer(DefaultBodyLimit::max(256 << 20)),
        )
        .route("/v1/sync", get(state::sync_status).post(state::sync_now))
        .route("/v1/mesh", get(mesh::status))
        .route("/metrics", get(metrics::metrics))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            access::require_admin,
        ));
    let api = inference
        .merge(admin)
        .route("/health", get(health))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            access::guard_browser,
        ));
    Router::new()
        .merge(api)
        .fallback(|| async {
            ApiError {
                status: axum::http::StatusCode::NOT_FOUND,
                ..ApiError::bad_request("no such endpoint")
            }
        })
        .layer(middleware::from_fn_with_state(
            state.clone(),
            metrics::count_requests,
        ))
        .layer(DefaultBodyLimit::max(8 << 20))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            listen::body_deadline,
        ))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

async fn health(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(
        json!({"status": "ok", "model": state.engine.info().name, "embedding_model": state.embedder.as_ref().map(|e| &e.name)}),
    )
}

async fn list_models(State(state): State<AppState>) -> Json<serde_json::Value> {
    let data: Vec<_> = state
        .served_models()
        .into_iter()
        .map(|id| json!({"id": id, "object": "model", "created": 0, "owned_by": "edgewise"}))
        .collect();
    Json(json!({"object": "list", "data": data}))
}

/// Serves until Ctrl-C or SIGTERM.
pub async fn serve(state: AppState, listen: &str) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e} (is another server running there? pick one with --listen)"))?;
    let addr = listener.local_addr()?;
    eprintln!(
        "edgewise serving {} on http://{addr} (OpenAI API at /v1)",
        state.engine.info().name
    );
    let agents = state.agents.clone();
    let shutdown = async move {
        shutdown_signal().await;
        // Streams of runs in flight end once their runs are cancelled and recorded; then the
        // graceful shutdown can finish.
        if let Some(hub) = agents {
            hub.cancel_all(std::time::Duration::from_secs(10)).await;
        }
    };
    let limits = state.limits.clone();
    let metrics = state.connections.clone();
    listen::serve_connections(listener, router(state), &limits, metrics, shutdown).await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
