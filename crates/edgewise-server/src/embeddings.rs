//! `/v1/embeddings`.

use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::openai::parse_body;
use crate::AppState;

/// Inputs per request; larger batches should be split by the client.
const MAX_INPUTS: usize = 2048;

#[derive(Deserialize)]
struct EmbeddingsBody {
    model: String,
    input: Value,
    encoding_format: Option<String>,
}

pub async fn embeddings(State(state): State<AppState>, raw: Bytes) -> Result<Response, ApiError> {
    let body: EmbeddingsBody = parse_body(&raw)?;
    let Some(lazy) = state.embedder.as_ref().filter(|e| e.name == body.model) else {
        if let Some(answer) =
            crate::mesh::offload(&state, "/v1/embeddings", &body.model, &raw).await
        {
            return answer;
        }
        return Err(ApiError::model_not_found(
            &body.model,
            &state.served_models(),
        ));
    };
    let name = lazy.name.clone();
    let texts: Vec<String> = match &body.input {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) if !a.is_empty() && a.iter().all(Value::is_string) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => {
            return Err(ApiError::bad_request(
                "input must be a string or a non-empty array of strings",
            )
            .param("input"))
        }
    };
    if texts.len() > MAX_INPUTS {
        return Err(
            ApiError::bad_request(format!("at most {MAX_INPUTS} inputs per request"))
                .param("input"),
        );
    }
    let base64 = match body.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "unknown encoding_format '{other}' (float, base64)"
            ))
            .param("encoding_format"))
        }
    };
    // Embedding is CPU-bound and runs off the async runtime: without a bound, a burst of requests
    // would queue blocking threads without limit.
    // The permit moves into the blocking task: a client that disconnects drops this handler,
    // not the work, so the slot stays taken until the embedding is done.
    let Ok(slot) = state.embedding_slots.clone().try_acquire_owned() else {
        return Err(ApiError {
            status: axum::http::StatusCode::SERVICE_UNAVAILABLE,
            kind: "server_error",
            code: Some("server_overloaded"),
            retry_after_s: Some(1),
            ..ApiError::bad_request(
                "this node is computing as many embeddings as limits.concurrent_embeddings allows; retry shortly",
            )
        });
    };
    let lazy = lazy.clone();
    let (vectors, tokens) = tokio::task::spawn_blocking(move || {
        let _slot = slot;
        lazy.get()?.embed_counting(&texts)
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))??;
    let data: Vec<Value> = vectors
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|f| f.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    Ok(Json(
        json!({"object": "list", "data": data, "model": name, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}),
    )
    .into_response())
}
