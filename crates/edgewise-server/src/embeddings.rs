//! `/v1/embeddings`.

use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::Json;
use base64::Engine as _;
use edgewise_infer::Embedder;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::openai::parse_body;
use crate::AppState;

/// Inputs per request; larger batches should be split by the client.
const MAX_INPUTS: usize = 2048;

/// The embedding model, loaded once on first use.
pub struct LazyEmbedder {
    pub name: String,
    dir: PathBuf,
    loaded: tokio::sync::OnceCell<Arc<Embedder>>,
}

impl LazyEmbedder {
    pub fn new(name: String, dir: PathBuf) -> Self {
        Self {
            name,
            dir,
            loaded: tokio::sync::OnceCell::new(),
        }
    }

    async fn get(&self) -> Result<Arc<Embedder>, ApiError> {
        self.loaded
            .get_or_try_init(|| async {
                let dir = self.dir.clone();
                let e = tokio::task::spawn_blocking(move || Embedder::load(&dir))
                    .await
                    .map_err(|e| ApiError::internal(e.to_string()))??;
                Ok::<_, ApiError>(Arc::new(e))
            })
            .await
            .cloned()
    }
}

#[derive(Deserialize)]
struct EmbeddingsBody {
    model: String,
    input: Value,
    encoding_format: Option<String>,
}

pub async fn embeddings(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let body: EmbeddingsBody = parse_body(&body)?;
    let Some(lazy) = state.embedder.as_ref().filter(|e| e.name == body.model) else {
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
    let embedder = lazy.get().await?;
    let (vectors, tokens) = tokio::task::spawn_blocking(move || embedder.embed_counting(&texts))
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
    ))
}
