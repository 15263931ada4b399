//! The components API: install or replace (hot swap), inspect, remove and call the node's Wasm
//! components. Part of the agents API: a node started with `--no-agents` has neither.
//!
//! A replacement serves new calls from the new version while calls in flight finish on the old
//! one (see `edgewise_agent::components`); every call's answer names the version (sha256) that
//! served it.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use base64::Engine as _;
use edgewise_agent::components::ComponentSource;
use edgewise_core::signing::ManifestSignature;
use edgewise_core::ComponentManifest;
use edgewise_sandbox::store::InstalledComponent;
use edgewise_sandbox::{ComponentKind, LoadedComponent, SandboxError};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::agents::hub;
use crate::{ApiError, AppState};

/// A component's bytes start with the wasm magic; anything else is the JSON form.
const WASM_MAGIC: &[u8] = b"\0asm";

fn api_error(e: SandboxError) -> ApiError {
    use SandboxError as E;
    let message = e.to_string();
    match e {
        E::NotInstalled { .. } | E::UnknownTool { .. } => ApiError::not_found(message),
        E::Load { .. }
        | E::IncompatibleWit { .. }
        | E::WrongKind { .. }
        | E::Store { .. }
        | E::GrantsWidened { .. }
        | E::UnsignedFile { .. } => ApiError::unprocessable(message),
        E::ToolFailed { .. } => ApiError::unprocessable(message),
        E::Timeout { .. } | E::HostCallTimeout { .. } => ApiError {
            status: StatusCode::GATEWAY_TIMEOUT,
            ..ApiError::internal(message)
        },
        E::BreakerOpen { retry_in_s, .. } => ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            retry_after_s: Some(retry_in_s.max(1) as u32),
            ..ApiError::internal(message)
        },
        E::MemoryLimit { .. } | E::Trap { .. } | E::Engine(_) => ApiError::internal(message),
    }
}

fn describe(c: &InstalledComponent, loaded: &LoadedComponent) -> Value {
    json!({
        "name": c.name,
        "kind": loaded.kind.to_string(),
        "sha256": c.sha256,
        "size": c.size,
        "signed_by": c.signature.as_ref().map(|s| &s.public_key),
        "description": c.manifest.description,
        "time_limit_ms": loaded.time_limit.as_millis() as u64,
        "memory_limit": bytesize::ByteSize(loaded.memory).to_string(),
        "grants": &*loaded.grants,
        "tools": loaded.tools,
    })
}

/// Runs blocking component work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, SandboxError> + Send + 'static,
) -> Result<T, ApiError> {
    crate::state::blocking(move || f().map_err(api_error)).await
}

pub async fn list(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let registry = hub(&state)?.components().clone();
    let data = blocking(move || {
        let mut out = Vec::new();
        for c in registry.store().list()? {
            // One that no longer loads (a signature now required, say) is listed with why.
            let entry = match registry.current(&ComponentSource::installed(&c.name)) {
                Ok(loaded) => describe(&c, &loaded),
                Err(e) => json!({"name": c.name, "sha256": c.sha256, "size": c.size, "error": e.to_string()}),
            };
            out.push(entry);
        }
        Ok(out)
    })
    .await?;
    Ok(Json(json!({"object": "list", "data": data})))
}

pub async fn show(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let registry = hub(&state)?.components().clone();
    blocking(move || {
        let c = registry.store().get(&name)?;
        let loaded = registry.current(&ComponentSource::installed(&name))?;
        Ok(Json(describe(&c, &loaded)))
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutBody {
    wasm_base64: String,
    #[serde(default)]
    manifest: Option<ComponentManifest>,
    #[serde(default)]
    signature: Option<ManifestSignature>,
}

/// `PUT /v1/components/{name}`: the component's bytes (keeping the installed manifest, if any),
/// or JSON `{"wasm_base64", "manifest", "signature"}`. 201 when new, 200 when replaced.
pub async fn put(
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let registry = hub(&state)?.components().clone();
    let (bytes, manifest, signature) = if body.starts_with(WASM_MAGIC) {
        (body.to_vec(), None, None)
    } else {
        let b: PutBody = serde_json::from_slice(&body).map_err(|e| {
            ApiError::bad_request(format!(
                "expected the component's .wasm bytes, or JSON {{\"wasm_base64\": \"…\", \"manifest\": {{\"grants\": …}}, \"signature\": {{…}}}}: {e}"
            ))
        })?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b.wasm_base64.trim())
            .map_err(|e| ApiError::bad_request(format!("wasm_base64: {e}")).param("wasm_base64"))?;
        (bytes, b.manifest, b.signature)
    };
    if signature.is_none() && registry.requires_signatures() {
        return Err(ApiError {
            status: StatusCode::FORBIDDEN,
            ..ApiError::bad_request(format!(
                "this node loads only signed components (trusted_keys is set): send JSON with \"signature\" from `edgewise component sign {name}` on a node holding the key"
            ))
        });
    }
    blocking(move || {
        let existing = match registry.store().get(&name) {
            Ok(c) => Some(c),
            Err(SandboxError::NotInstalled { .. }) => None,
            Err(e) => return Err(e),
        };
        let manifest = manifest
            .or_else(|| existing.as_ref().map(|c| c.manifest.clone()))
            .unwrap_or_default();
        // The upload is staged inside the store's dir (same file system as the install).
        let dir = registry.store().dir().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|e| store_err(&dir, e))?;
        let staged = tempfile::Builder::new()
            .prefix(".upload-")
            .suffix(".wasm")
            .tempfile_in(&dir)
            .map_err(|e| store_err(&dir, e))?;
        std::fs::write(staged.path(), &bytes).map_err(|e| store_err(staged.path(), e))?;
        let (c, loaded) = registry.install(&name, staged.path(), &manifest, signature.as_ref())?;
        tracing::info!(component = %name, sha256 = %c.sha256, replaced = existing.is_some(), "component installed");
        let status = if existing.is_some() {
            StatusCode::OK
        } else {
            StatusCode::CREATED
        };
        Ok((status, Json(describe(&c, &loaded))))
    })
    .await
}

fn store_err(path: &std::path::Path, e: std::io::Error) -> SandboxError {
    SandboxError::Store {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

pub async fn remove(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let registry = hub(&state)?.components().clone();
    let removed = name.clone();
    blocking(move || registry.remove(&removed)).await?;
    Ok(Json(json!({"name": name, "deleted": true})))
}

/// `POST /v1/components/{name}/tools/{tool}`: the body is the arguments object.
pub async fn call_tool(
    State(state): State<AppState>,
    Path((name, tool)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let hub = hub(&state)?;
    let args: Value = if body.is_empty() {
        json!({})
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::bad_request(format!("the body must be a JSON object of arguments: {e}"))
        })?
    };
    if !args.is_object() {
        return Err(ApiError::bad_request(
            "the body must be a JSON object of arguments",
        ));
    }
    let registry = hub.components().clone();
    let services = hub.component_services.clone();
    let (sha256, output) = blocking(move || {
        let c = registry.current(&ComponentSource::installed(&name))?;
        let out = c.invoke(&tool, &args.to_string(), services)?;
        Ok((c.sha256.clone(), out))
    })
    .await?;
    Ok(Json(json!({"output": output, "sha256": sha256})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventBody {
    #[serde(default)]
    source: Option<String>,
    /// A string is passed as is; any other JSON value as its JSON text.
    payload: Value,
}

/// `POST /v1/components/{name}/events`: hands `{"source", "payload"}` to an agent component.
pub async fn handle_event(
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let hub = hub(&state)?;
    let event: EventBody = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!(
            "expected JSON {{\"source\": \"…\", \"payload\": …}}: {e}"
        ))
    })?;
    let payload = match event.payload {
        Value::String(s) => s,
        other => other.to_string(),
    };
    let source = event.source.unwrap_or_else(|| "api".into());
    let registry = hub.components().clone();
    let services: Arc<dyn edgewise_sandbox::HostServices> = hub.component_services.clone();
    let (sha256, output) = blocking(move || {
        let c = registry.current(&ComponentSource::installed(&name))?;
        if c.kind != ComponentKind::Agent {
            return Err(SandboxError::WrongKind {
                component: name,
                kind: c.kind.to_string(),
                what:
                    "events go to agent components (world agent); call its tools at /tools/{tool}"
                        .into(),
            });
        }
        let out = c.handle(&source, &payload, services)?;
        Ok((c.sha256.clone(), out))
    })
    .await?;
    Ok(Json(json!({"output": output, "sha256": sha256})))
}
