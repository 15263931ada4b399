//! Tools built into the runtime (`builtin:NAME`).

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use edgewise_core::Capability;
use edgewise_infer::ToolSpec;
use edgewise_store::Kv;
use serde_json::{json, Value};

use super::{http::HttpTool, mqtt::MqttTool, Tool, ToolContext, ToolError};

const MAX_FILE: u64 = 64 * 1024;

pub(super) fn build(
    name: &str,
    cap: &Capability,
    ctx: &ToolContext,
    spec_for: impl Fn(String, Value) -> ToolSpec,
    timeout: Duration,
) -> Result<Arc<dyn Tool>, String> {
    let path_param = |what: &str| {
        json!({
            "type": "object",
            "properties": {"path": {"type": "string", "description": what}},
            "required": ["path"],
            "additionalProperties": false
        })
    };
    Ok(match name {
        "read_file" | "list_dir" => {
            let root = cap.root.as_ref().ok_or_else(|| {
                format!("builtin:{name} needs `root:`, the directory it may read")
            })?;
            let root = ctx.spec_dir.join(root);
            let root = root.canonicalize().map_err(|e| {
                format!(
                    "root {} is not an accessible directory: {e}",
                    root.display()
                )
            })?;
            // The spec's root passed the node's file roots as written; a symlink on the way must
            // not lead out of them.
            let canonical = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
            let (home, spec_dir) = (canonical(&ctx.home), canonical(&ctx.spec_dir));
            let scope = edgewise_core::PolicyScope {
                home: &home,
                spec_dir: &spec_dir,
            };
            if !ctx.config.agent_policy.file_root_allowed(&root, &scope) {
                return Err(format!(
                    "root {} leads outside the file roots this node allows (agent_policy.file_roots in config.yaml)",
                    root.display()
                ));
            }
            let kind = if name == "read_file" {
                FileKind::Read
            } else {
                FileKind::List
            };
            let spec = if kind == FileKind::Read {
                spec_for(
                    "Read a text file. `path` is relative to the agent's file root.".into(),
                    path_param("Path of the file, relative to the root (as the task names it)"),
                )
            } else {
                spec_for(
                    "List a directory. `path` is relative to the agent's file root ('.' for the root).".into(),
                    path_param("Directory path relative to the root, e.g. ."),
                )
            };
            Arc::new(FileTool { spec, root, kind })
        }
        "kv_get" => Arc::new(KvTool {
            spec: spec_for(
                "Read a value this agent stored earlier.".into(),
                json!({"type": "object", "properties": {"key": {"type": "string"}}, "required": ["key"], "additionalProperties": false}),
            ),
            kv: ctx.kv.clone(),
            namespace: ctx.kv_namespace(),
            write: false,
        }),
        "kv_set" => Arc::new(KvTool {
            spec: spec_for(
                "Store a value under a key; it persists across runs.".into(),
                json!({"type": "object", "properties": {"key": {"type": "string"}, "value": {"type": "string"}}, "required": ["key", "value"], "additionalProperties": false}),
            ),
            kv: ctx.kv.clone(),
            namespace: ctx.kv_namespace(),
            write: true,
        }),
        "current_time" => Arc::new(TimeTool {
            spec: spec_for(
                "The current date and time (UTC, RFC 3339).".into(),
                json!({"type": "object", "properties": {}, "additionalProperties": false}),
            ),
        }),
        "http_request" => Arc::new(
            HttpTool::free(
                spec_for(
                    "Send an HTTP request.".into(),
                    json!({
                        "type": "object",
                        "properties": {
                            "url": {"type": "string"},
                            "method": {"type": "string", "enum": ["GET", "POST", "PUT", "DELETE"]},
                            "body": {"type": "string"}
                        },
                        "required": ["url"],
                        "additionalProperties": false
                    }),
                ),
                ctx.egress.clone(),
                timeout,
            )
            .only_schemes(http_schemes(ctx)),
        ),
        "mqtt_publish" => Arc::new(MqttTool::new(
            spec_for(
                "Publish a message to an MQTT topic on the local broker.".into(),
                json!({
                    "type": "object",
                    "properties": {"topic": {"type": "string"}, "message": {"type": "string"}},
                    "required": ["topic", "message"],
                    "additionalProperties": false
                }),
            ),
            ctx.config.mqtt_broker_addr("local-broker", 1883),
            None,
            super::mqtt::Topics::of(ctx),
            timeout,
        )),
        "search_knowledge" => {
            let collection = cap.collection.clone().ok_or_else(|| {
                "builtin:search_knowledge needs `collection:`, the knowledge collection it searches"
                    .to_string()
            })?;
            Arc::new(super::knowledge::SearchKnowledgeTool {
                spec: spec_for(
                    format!("Search the '{collection}' knowledge base for passages about a question. Each passage has an id to cite."),
                    json!({
                        "type": "object",
                        "properties": {
                            "query": {"type": "string", "description": "What to look for, in a few words."}
                        },
                        "required": ["query"],
                        "additionalProperties": false
                    }),
                ),
                collection,
                knowledge: ctx.knowledge.clone(),
                embedder: ctx.embedder.clone(),
            })
        }
        "doc_get" | "doc_set" => {
            let document = cap.document.clone().ok_or_else(|| {
                format!("builtin:{name} needs `document:`, the shared document it uses")
            })?;
            let docs =
                edgewise_store::Documents::open(ctx.kv.clone()).map_err(|e| e.to_string())?;
            let write = name == "doc_set";
            let spec = if write {
                spec_for(
                    format!("Set a key of the shared '{document}' state, e.g. key zone4/valve, value closed. Other nodes see it after sync."),
                    json!({"type": "object", "properties": {"key": {"type": "string"}, "value": {"type": "string"}}, "required": ["key", "value"], "additionalProperties": false}),
                )
            } else {
                spec_for(
                    format!("Read the shared '{document}' state: one key (e.g. zone4/valve), or every key when `key` is empty."),
                    json!({"type": "object", "properties": {"key": {"type": "string"}}, "required": ["key"], "additionalProperties": false}),
                )
            };
            Arc::new(DocTool {
                spec,
                docs,
                document,
                write,
            })
        }
        other => return Err(format!("no built-in tool '{other}'")),
    })
}

/// URL schemes `builtin:http_request` may use: both for this node's agents; for a run a
/// neighbour placed here, only those `mesh.accept_runs.policy.schemes` lists.
fn http_schemes(ctx: &ToolContext) -> Vec<String> {
    use edgewise_core::agent_policy::Scheme;
    [(Scheme::Http, "http"), (Scheme::Https, "https")]
        .into_iter()
        .filter(|(s, _)| ctx.placed_by.is_none() || ctx.config.agent_policy.schemes.contains(s))
        .map(|(_, name)| name.to_owned())
        .collect()
}

#[derive(PartialEq)]
enum FileKind {
    Read,
    List,
}

struct FileTool {
    spec: ToolSpec,
    /// Canonical.
    root: PathBuf,
    kind: FileKind,
}

/// Resolves `rel` inside `root`: no absolute paths, no `..`, and the canonical result (symlinks
/// followed) must still be under the root.
pub(crate) fn confine(root: &Path, rel: &str) -> Result<PathBuf, ToolError> {
    let p = Path::new(rel);
    if p.is_absolute() {
        return Err(ToolError::Refused(format!(
            "'{rel}' is absolute; paths are relative to the agent's file root"
        )));
    }
    if p.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(ToolError::Refused(format!(
            "'{rel}' contains '..'; paths may not leave the agent's file root"
        )));
    }
    let joined = root.join(p);
    let real = joined
        .canonicalize()
        .map_err(|e| ToolError::Failed(format!("'{rel}': {e}")))?;
    if !real.starts_with(root) {
        return Err(ToolError::Refused(format!(
            "'{rel}' leads outside the agent's file root (through a symlink)"
        )));
    }
    Ok(real)
}

#[async_trait]
impl Tool for FileTool {
    fn spec(&self) -> &ToolSpec {
        &self.spec
    }

    async fn call(&self, args: Value) -> Result<String, ToolError> {
        let rel = args.get("path").and_then(Value::as_str).unwrap_or(".");
        let path = confine(&self.root, rel)?;
        let fail = |e: std::io::Error| ToolError::Failed(format!("'{rel}': {e}"));
        match self.kind {
            FileKind::Read => {
                let meta = tokio::fs::metadata(&path).await.map_err(fail)?;
                if !meta.is_file() {
                    return Err(ToolError::Failed(format!("'{rel}' is not a file")));
                }
                if meta.len() > MAX_FILE {
                    return Err(ToolError::Failed(format!(
                        "'{rel}' is {} bytes; read_file returns files up to {MAX_FILE} bytes",
                        meta.len()
                    )));
                }
                let bytes = tokio::fs::read(&path).await.map_err(fail)?;
                Ok(String::from_utf8_lossy(&bytes).into_owned())
            }
            FileKind::List => {
                let mut entries = tokio::fs::read_dir(&path).await.map_err(fail)?;
                let mut names = Vec::new();
                while let Some(e) = entries.next_entry().await.map_err(fail)? {
                    let mut name = e.file_name().to_string_lossy().into_owned();
                    if e.file_type().await.map(|t| t.is_dir()).unwrap_or(false) {
                        name.push('/');
                    }
                    names.push(name);
                }
                names.sort();
                Ok(names.join("\n"))
            }
        }
    }
}

struct KvTool {
    spec: ToolSpec,
    kv: Arc<Kv>,
    namespace: String,
    write: bool,
}

#[async_trait]
impl Tool for KvTool {
    fn spec(&self) -> &ToolSpec {
        &self.spec
    }

    async fn call(&self, args: Value) -> Result<String, ToolError> {
        let key = args
            .get("key")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let kv = self.kv.clone();
        let ns = self.namespace.clone();
        let k = key.clone();
        if self.write {
            let value = match args.get("value") {
                Some(Value::String(s)) => s.clone(),
                Some(v) => v.to_string(),
                None => String::new(),
            };
            off_runtime(move || kv.set(&ns, &k, value.as_bytes())).await?;
            Ok(format!("stored '{key}'"))
        } else {
            match off_runtime(move || kv.get(&ns, &k)).await? {
                Some(bytes) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
                None => Err(ToolError::Failed(format!("no value stored under '{key}'"))),
            }
        }
    }
}

/// Runs a (blocking, fsyncing) store operation off the async runtime's threads.
/// Runs a blocking store operation (redb commits fsync) off the async runtime.
async fn off_runtime<T: Send + 'static, E: std::fmt::Display + Send + 'static>(
    op: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, ToolError> {
    tokio::task::spawn_blocking(op)
        .await
        .map_err(|e| ToolError::Failed(e.to_string()))?
        .map_err(|e| ToolError::Failed(e.to_string()))
}

struct TimeTool {
    spec: ToolSpec,
}

#[async_trait]
impl Tool for TimeTool {
    fn spec(&self) -> &ToolSpec {
        &self.spec
    }

    async fn call(&self, _args: Value) -> Result<String, ToolError> {
        Ok(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confinement_refuses_escapes_and_allows_inside() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/a.txt"), "hi").unwrap();
        std::fs::write(dir.path().join("secret"), "s").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), root.join("link")).unwrap();
        let root = root.canonicalize().unwrap();
        assert!(confine(&root, "sub/a.txt").is_ok());
        for bad in ["../secret", "/etc/passwd", "sub/../../secret", "link"] {
            assert!(
                matches!(confine(&root, bad), Err(ToolError::Refused(_))),
                "{bad}"
            );
        }
    }
}

/// `doc_get` / `doc_set` on one shared CRDT document.
struct DocTool {
    spec: ToolSpec,
    docs: edgewise_store::Documents,
    document: String,
    write: bool,
}

#[async_trait]
impl Tool for DocTool {
    fn spec(&self) -> &ToolSpec {
        &self.spec
    }

    async fn call(&self, args: Value) -> Result<String, ToolError> {
        let key = args
            .get("key")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .trim()
            .to_owned();
        let (docs, document) = (self.docs.clone(), self.document.clone());
        if self.write {
            let value = args.get("value").cloned().unwrap_or(Value::Null);
            if key.is_empty() {
                return Err(ToolError::Refused("`key` is empty".into()));
            }
            let (k, v) = (key.clone(), value.clone());
            off_runtime(move || docs.set(&document, &k, &v)).await?;
            return Ok(format!("{}: {key} = {value}", self.document));
        }
        if key.is_empty() {
            let all = off_runtime(move || docs.entries(&document)).await?;
            return Ok(serde_json::to_string(&all).unwrap_or_default());
        }
        let k = key.clone();
        match off_runtime(move || docs.get(&document, &k)).await? {
            Some(e) => Ok(serde_json::to_string(&e).unwrap_or_default()),
            None => Ok(format!("{}: no value for {key}", self.document)),
        }
    }
}
