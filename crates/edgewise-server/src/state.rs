//! The node's local state over HTTP: KV (`/v1/kv`), CRDT documents and their automerge sync
//! messages (`/v1/docs`), knowledge collections, search and deltas (`/v1/knowledge`). Another
//! node's sync manager speaks these; so can any HTTP client.
//!
//! Invariants: namespaces starting with `edgewise.` (the runtime's own records) are not reachable
//! here; a write is durable before its response is sent; a private collection never leaves
//! through `export`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use edgewise_infer::LazyEmbedder;
use edgewise_store::knowledge::{Delta, Filter, KnowledgeError, KnowledgeSlot, VersionVector};
use edgewise_store::{DocError, Documents, Kv, StoreError, Versioned};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::AppState;

/// What the state endpoints serve: the node's KV, documents and vector memory.
pub struct NodeState {
    pub kv: Arc<Kv>,
    pub docs: Documents,
    pub knowledge: Arc<KnowledgeSlot>,
    pub embedder: Option<Arc<LazyEmbedder>>,
    /// The offline sync manager, when `sync:` is configured.
    pub sync: Option<Arc<edgewise_sync::Syncer>>,
}

fn node_state(s: &AppState) -> Result<Arc<NodeState>, ApiError> {
    s.node_state.clone().ok_or_else(|| {
        ApiError::not_found("this node serves no local state (it was started with --no-agents)")
    })
}

/// Runs a store (or sandbox) call off the async runtime.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("blocking task failed: {e}")))?
}

fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::InUse { .. } => ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            ..ApiError::internal(e.to_string())
        },
        e => ApiError::internal(e.to_string()),
    }
}

fn doc_error(e: DocError) -> ApiError {
    match e {
        DocError::Invalid { .. } | DocError::Sync { .. } => ApiError::bad_request(e.to_string()),
        DocError::Store(e) => store_error(e),
        e => ApiError::internal(e.to_string()),
    }
}

fn knowledge_error(e: KnowledgeError) -> ApiError {
    let status = match &e {
        KnowledgeError::NoCollection { .. } => StatusCode::NOT_FOUND,
        KnowledgeError::Exists { .. } | KnowledgeError::EmbeddingMismatch { .. } => {
            StatusCode::CONFLICT
        }
        KnowledgeError::Private { .. } => StatusCode::FORBIDDEN,
        KnowledgeError::Invalid { .. } => StatusCode::BAD_REQUEST,
        // A delta whose clocks are out of range: well-formed JSON the node will not apply.
        KnowledgeError::ClockOutOfRange { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        KnowledgeError::ClockExhausted { .. } => StatusCode::CONFLICT,
        KnowledgeError::InUse { .. } => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    ApiError {
        status,
        ..ApiError::bad_request(e.to_string())
    }
}

fn check_namespace(ns: &str) -> Result<(), ApiError> {
    if ns.starts_with("edgewise.") {
        return Err(ApiError {
            status: StatusCode::FORBIDDEN,
            ..ApiError::bad_request(format!(
                "namespace '{ns}' holds the runtime's own records and is not served; use another name"
            ))
        });
    }
    Ok(())
}

/// `If-Match: "3"` (or `3`) → 3; `*` or absent → any version.
fn if_match(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(v) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let text = v.to_str().unwrap_or("").trim();
    if text == "*" {
        return Ok(None);
    }
    let digits = text.trim_start_matches("W/").trim_matches('"');
    digits.parse().map(Some).map_err(|_| {
        ApiError::bad_request(format!(
            "If-Match '{text}' is not a version: send the ETag of a GET, e.g. If-Match: \"3\""
        ))
        .param("If-Match")
    })
}

fn etag(version: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\"")).unwrap_or(HeaderValue::from_static("\"0\""))
}

/// A value as JSON: text when it is UTF-8, base64 otherwise.
fn value_json(v: &Versioned) -> Value {
    let mut o = json!({"key": v.key, "version": v.version});
    match &v.value {
        None => o["removed"] = json!(true),
        Some(bytes) => match std::str::from_utf8(bytes) {
            Ok(text) => o["value"] = json!(text),
            Err(_) => {
                o["value_base64"] = json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            }
        },
    }
    o
}

/// `GET /v1/kv/{ns}`: every key with its version, removed keys included (`"removed": true`).
pub async fn kv_list(
    State(s): State<AppState>,
    Path(ns): Path<String>,
) -> Result<Json<Value>, ApiError> {
    check_namespace(&ns)?;
    let st = node_state(&s)?;
    let keys = {
        let ns = ns.clone();
        blocking(move || st.kv.list_versioned(&ns).map_err(store_error)).await?
    };
    let keys: Vec<Value> = keys.iter().map(value_json).collect();
    Ok(Json(json!({"namespace": ns, "keys": keys})))
}

/// `GET /v1/kv/{ns}/{key}`: the raw value with its version as the ETag.
pub async fn kv_get(
    State(s): State<AppState>,
    Path((ns, key)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    check_namespace(&ns)?;
    let st = node_state(&s)?;
    let (k, n) = (key.clone(), ns.clone());
    let (value, version) = blocking(move || {
        let version = st.kv.version(&n, &k).map_err(store_error)?;
        let value = st.kv.get(&n, &k).map_err(store_error)?;
        Ok((value, version))
    })
    .await?;
    let Some(value) = value else {
        return Err(ApiError::not_found(format!(
            "no key '{key}' in namespace '{ns}'"
        )));
    };
    let mut r = (StatusCode::OK, value).into_response();
    r.headers_mut().insert(header::ETAG, etag(version));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    Ok(r)
}

async fn kv_write(
    s: AppState,
    ns: String,
    key: String,
    value: Option<Vec<u8>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    check_namespace(&ns)?;
    if key.is_empty() {
        return Err(ApiError::bad_request("empty key"));
    }
    let expected = if_match(&headers)?;
    let st = node_state(&s)?;
    let (n, k) = (ns.clone(), key.clone());
    let outcome = blocking(move || {
        match value {
            Some(v) => st
                .kv
                .set_if(&n, &k, Some(&v), expected)
                .map(|r| r.map(Some)),
            None => st.kv.remove_if(&n, &k, expected),
        }
        .map_err(store_error)
    })
    .await?;
    match outcome {
        // Removing an absent key without a version to check: nothing was there.
        Ok(None) if expected.is_none() => Err(ApiError::not_found(format!(
            "no key '{key}' in namespace '{ns}'"
        ))),
        Ok(version) => {
            let version = version.unwrap_or(expected.unwrap_or_default());
            let mut r =
                Json(json!({"namespace": ns, "key": key, "version": version})).into_response();
            r.headers_mut().insert(header::ETAG, etag(version));
            Ok(r)
        }
        Err(current) => {
            let mut r = ApiError {
                status: StatusCode::PRECONDITION_FAILED,
                code: Some("version_mismatch"),
                ..ApiError::bad_request(format!(
                    "'{key}' in '{ns}' is at version {}, not {}: someone else changed it; GET it and retry",
                    current.version,
                    expected.unwrap_or_default()
                ))
            }
            .into_response();
            r.headers_mut().insert(header::ETAG, etag(current.version));
            Ok(r)
        }
    }
}

/// `PUT /v1/kv/{ns}/{key}`: the body is the value; `If-Match` makes it conditional (412 when
/// the version moved). Durable when the response is sent.
pub async fn kv_put(
    State(s): State<AppState>,
    Path((ns, key)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    kv_write(s, ns, key, Some(body.to_vec()), headers).await
}

/// `DELETE /v1/kv/{ns}/{key}` (conditional with `If-Match`).
pub async fn kv_delete(
    State(s): State<AppState>,
    Path((ns, key)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    kv_write(s, ns, key, None, headers).await
}

/// `GET /v1/docs`.
pub async fn docs_list(State(s): State<AppState>) -> Result<Json<Value>, ApiError> {
    let st = node_state(&s)?;
    let names = blocking(move || st.docs.list().map_err(doc_error)).await?;
    Ok(Json(json!({"documents": names})))
}

/// `GET /v1/docs/{name}`: every key with its value and concurrent losers (`conflicts`).
pub async fn doc_get(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let st = node_state(&s)?;
    let n = name.clone();
    let entries = blocking(move || {
        if !st.docs.exists(&n).map_err(doc_error)? {
            return Err(ApiError::not_found(format!("no document '{n}'")));
        }
        st.docs.entries(&n).map_err(doc_error)
    })
    .await?;
    Ok(Json(json!({"name": name, "entries": entries})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DocPatch {
    #[serde(default)]
    set: BTreeMap<String, Value>,
    #[serde(default)]
    remove: Vec<String>,
}

/// `PATCH /v1/docs/{name}` `{"set": {key: scalar}, "remove": [key]}`: creates the document if
/// needed; returns its entries.
pub async fn doc_patch(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Json(patch): Json<DocPatch>,
) -> Result<Json<Value>, ApiError> {
    let st = node_state(&s)?;
    let n = name.clone();
    let entries = blocking(move || {
        for (k, v) in &patch.set {
            st.docs.set(&n, k, v).map_err(doc_error)?;
        }
        for k in &patch.remove {
            st.docs.remove(&n, k).map_err(doc_error)?;
        }
        st.docs.entries(&n).map_err(doc_error)
    })
    .await?;
    Ok(Json(json!({"name": name, "entries": entries})))
}

#[derive(Deserialize)]
pub struct PeerQuery {
    peer: String,
}

/// `POST /v1/docs/{name}/sync?peer=ID`: one round of automerge's sync protocol. The body is the
/// peer's message (empty to only ask for ours); the answer is this node's next message, or 204
/// when it has nothing more to send.
pub async fn doc_sync(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<PeerQuery>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let st = node_state(&s)?;
    let reply = blocking(move || {
        if !body.is_empty() {
            st.docs
                .receive_sync_message(&name, &q.peer, &body)
                .map_err(doc_error)?;
        }
        st.docs.sync_message(&name, &q.peer).map_err(doc_error)
    })
    .await?;
    Ok(match reply {
        Some(msg) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/octet-stream")],
            msg,
        )
            .into_response(),
        None => StatusCode::NO_CONTENT.into_response(),
    })
}

/// `GET /v1/knowledge`: the collections with their embedding identity and version vector.
pub async fn collections(State(s): State<AppState>) -> Result<Json<Value>, ApiError> {
    let st = node_state(&s)?;
    let list = blocking(move || {
        let k = st.knowledge.get().map_err(knowledge_error)?;
        k.collections().map_err(knowledge_error)
    })
    .await?;
    Ok(Json(json!({"collections": list})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchRequest {
    query: String,
    #[serde(default = "default_k")]
    k: usize,
    #[serde(default)]
    filter: Filter,
}

fn default_k() -> usize {
    4
}

/// `POST /v1/knowledge/{c}/search` `{"query", "k", "filter"}`: the nearest chunks with ids.
pub async fn search(
    State(s): State<AppState>,
    Path(collection): Path<String>,
    Json(req): Json<SearchRequest>,
) -> Result<Json<Value>, ApiError> {
    if req.k == 0 || req.k > 100 {
        return Err(ApiError::bad_request("k must be 1–100").param("k"));
    }
    let st = node_state(&s)?;
    let (slot, c) = (st.knowledge.clone(), collection.clone());
    // A missing collection is a 404 of its own, not a failed search.
    blocking(move || {
        let k = slot.get().map_err(knowledge_error)?;
        k.collection(&c).map_err(knowledge_error)
    })
    .await?;
    let hits = edgewise_agent::knowledge::search(
        st.knowledge.clone(),
        st.embedder.clone(),
        &collection,
        &req.query,
        req.k,
        req.filter,
    )
    .await
    .map_err(ApiError::unprocessable)?;
    Ok(Json(json!({"collection": collection, "hits": hits})))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ExportRequest {
    #[serde(default)]
    since: VersionVector,
}

/// `POST /v1/knowledge/{c}/export` `{"since": version vector}`: the changes `since` lacks.
/// Private collections answer 403.
pub async fn export(
    State(s): State<AppState>,
    Path(collection): Path<String>,
    body: Bytes,
) -> Result<Json<Delta>, ApiError> {
    let req: ExportRequest = if body.is_empty() {
        ExportRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("export request: {e}")))?
    };
    let st = node_state(&s)?;
    let delta = blocking(move || {
        let k = st.knowledge.get().map_err(knowledge_error)?;
        k.export(&collection, &req.since).map_err(knowledge_error)
    })
    .await?;
    Ok(Json(delta))
}

#[derive(Deserialize)]
pub struct ImportQuery {
    /// Whether a collection this import creates may be exported again from here.
    #[serde(default)]
    shareable: bool,
}

/// `POST /v1/knowledge/{c}/import` with a delta: applied idempotently; another embedding is
/// refused (409), a clock above `MAX_CLOCK` too (422), with nothing applied.
pub async fn import(
    State(s): State<AppState>,
    Path(collection): Path<String>,
    Query(q): Query<ImportQuery>,
    Json(delta): Json<Delta>,
) -> Result<Json<Value>, ApiError> {
    if delta.collection != collection {
        return Err(ApiError::bad_request(format!(
            "the delta is for collection '{}', not '{collection}'",
            delta.collection
        )));
    }
    let st = node_state(&s)?;
    let report = blocking(move || {
        let k = st.knowledge.get().map_err(knowledge_error)?;
        let report = k.import(&delta, q.shareable).map_err(knowledge_error)?;
        k.save_index(&collection).map_err(knowledge_error)?;
        Ok(report)
    })
    .await?;
    Ok(Json(json!(report)))
}

fn syncer(s: &AppState) -> Result<Arc<edgewise_sync::Syncer>, ApiError> {
    node_state(s)?.sync.clone().ok_or_else(|| {
        ApiError::not_found("this node has no upstream: add a sync: section to its config.yaml")
    })
}

fn sync_error(e: edgewise_sync::SyncError) -> ApiError {
    use edgewise_sync::SyncError;
    match e {
        // A delta the upstream sent with clocks out of range is the upstream's fault too.
        SyncError::Unreachable { .. }
        | SyncError::Upstream { .. }
        | SyncError::Knowledge(KnowledgeError::ClockOutOfRange { .. }) => ApiError {
            status: StatusCode::BAD_GATEWAY,
            ..ApiError::internal(e.to_string())
        },
        e => ApiError::internal(e.to_string()),
    }
}

/// `GET /v1/sync`: pending local changes, recorded conflicts and the last round.
pub async fn sync_status(State(s): State<AppState>) -> Result<Json<Value>, ApiError> {
    let sync = syncer(&s)?;
    let status = blocking(move || sync.status().map_err(sync_error)).await?;
    Ok(Json(json!(status)))
}

/// `POST /v1/sync`: one sync round now; 502 when the upstream cannot be reached (nothing is
/// lost: the changes stay pending).
pub async fn sync_now(State(s): State<AppState>) -> Result<Json<Value>, ApiError> {
    let sync = syncer(&s)?;
    let report = blocking(move || sync.sync_once().map_err(sync_error)).await?;
    Ok(Json(json!(report)))
}
