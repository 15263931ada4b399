//! Prometheus text exposition. A handful of counters and gauges do not justify a metrics registry
//! crate; the format is written directly.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::AppState;

#[derive(Default)]
pub struct HttpMetrics {
    /// (route, status) → count
    requests: Mutex<BTreeMap<(String, u16), u64>>,
}

pub async fn count_requests(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "other".into());
    let resp = next.run(req).await;
    if let Ok(mut m) = state.metrics.requests.lock() {
        *m.entry((route, resp.status().as_u16())).or_default() += 1;
    }
    resp
}

pub async fn metrics(State(state): State<AppState>) -> Response {
    let s = state.engine.stats();
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: f64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    metric(
        "edgewise_http_connections_open",
        "gauge",
        "HTTP connections open now (at most limits.connections).",
        state
            .connections
            .open
            .load(std::sync::atomic::Ordering::Relaxed) as f64,
    );
    metric(
        "edgewise_http_connections_refused_total",
        "counter",
        "HTTP connections answered 503 because limits.connections were open.",
        state
            .connections
            .refused
            .load(std::sync::atomic::Ordering::Relaxed) as f64,
    );
    metric(
        "edgewise_inference_requests_total",
        "counter",
        "Generation requests admitted to the engine.",
        s.requests as f64,
    );
    metric(
        "edgewise_prompt_tokens_total",
        "counter",
        "Prompt tokens received.",
        s.prompt_tokens as f64,
    );
    metric(
        "edgewise_prompt_tokens_cached_total",
        "counter",
        "Prompt tokens served from the prefix cache.",
        s.cached_tokens as f64,
    );
    metric(
        "edgewise_completion_tokens_total",
        "counter",
        "Tokens generated.",
        s.completion_tokens as f64,
    );
    let tps = if s.generation_seconds > 0.0 {
        s.completion_tokens as f64 / s.generation_seconds
    } else {
        0.0
    };
    metric(
        "edgewise_generation_tokens_per_second",
        "gauge",
        "Generated tokens per second of request time, since start.",
        tps,
    );
    let hit = if s.prompt_tokens > 0 {
        s.cached_tokens as f64 / s.prompt_tokens as f64
    } else {
        0.0
    };
    metric(
        "edgewise_prefix_cache_hit_ratio",
        "gauge",
        "Share of prompt tokens served from the prefix cache.",
        hit,
    );
    metric(
        "edgewise_queue_depth",
        "gauge",
        "Requests waiting for a free sequence.",
        s.waiting as f64,
    );
    metric(
        "edgewise_active_sequences",
        "gauge",
        "Sequences being decoded.",
        s.active as f64,
    );
    if let Some(mesh) = &state.mesh {
        use std::sync::atomic::Ordering::Relaxed;
        metric(
            "edgewise_mesh_offloads_total",
            "counter",
            "Requests this node sent to a neighbour (each attempt).",
            mesh.metrics.offloads.load(Relaxed) as f64,
        );
        metric(
            "edgewise_mesh_offload_failures_total",
            "counter",
            "Offload attempts that got no answer (then the next node is tried).",
            mesh.metrics.offload_failures.load(Relaxed) as f64,
        );
        metric(
            "edgewise_mesh_retries_total",
            "counter",
            "Offload attempts on a further neighbour after one failed.",
            mesh.metrics.retries.load(Relaxed) as f64,
        );
        metric(
            "edgewise_mesh_breaker_trips_total",
            "counter",
            "Times a neighbour's circuit breaker opened.",
            mesh.metrics.breaker_trips.load(Relaxed) as f64,
        );
        metric(
            "edgewise_mesh_calls_served_total",
            "counter",
            "Calls from neighbours this node ran.",
            mesh.metrics.calls_served.load(Relaxed) as f64,
        );
        metric(
            "edgewise_mesh_forged_messages_total",
            "counter",
            "Mesh messages (adverts, calls, replies) dropped: not sealed by the node they claimed.",
            mesh.metrics.forged.load(Relaxed) as f64,
        );
        metric(
            "edgewise_mesh_placed_runs_refused_total",
            "counter",
            "Agent runs neighbours placed here that mesh.accept_runs refused.",
            state
                .agents
                .as_ref()
                .map_or(0, |hub| hub.placed_runs_refused.load(Relaxed)) as f64,
        );
    }
    let _ = writeln!(out, "# HELP edgewise_http_requests_total HTTP requests by route and status.\n# TYPE edgewise_http_requests_total counter");
    if let Ok(m) = state.metrics.requests.lock() {
        for ((route, status), n) in m.iter() {
            let _ = writeln!(
                out,
                "edgewise_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        out,
    )
        .into_response()
}
