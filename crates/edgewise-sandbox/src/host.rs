//! What a component's imports reach: the node's services behind `HostServices`, each checked
//! against the component's grants before it is called. A service call's time is the node's,
//! not the component's (`CallClock`), and is bounded on its own (the host-call limit).

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edgewise_core::{Grants, HostInterface};
use wasmtime::component::{Resource, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::bindings::edgewise::agent::{events, inference, tools, types};
use crate::bindings::wasi::keyvalue::store;
use crate::bindings::wasi::logging::logging;
use crate::limits::CallLimits;

/// One chat message for `HostServices::chat`.
#[derive(Debug, Clone)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

#[derive(Debug, Clone, Default)]
pub struct InferenceOptions {
    pub max_tokens: Option<u32>,
    pub temperature: Option<f32>,
    /// Constrain the output to JSON valid under this schema.
    pub json_schema: Option<serde_json::Value>,
}

/// The node's services as components see them. Calls come from a blocking thread (components
/// run synchronously), so implementations may block, e.g. on an async runtime's handle. Errors
/// are messages for the component. Grants are checked before any of these is called.
pub trait HostServices: Send + Sync {
    fn kv_get(&self, namespace: &str, key: &str) -> Result<Option<Vec<u8>>, String>;
    fn kv_set(&self, namespace: &str, key: &str, value: &[u8]) -> Result<(), String>;
    fn kv_delete(&self, namespace: &str, key: &str) -> Result<(), String>;
    fn kv_keys(&self, namespace: &str) -> Result<Vec<String>, String>;
    /// The winning value of `key` in the shared CRDT document `document`.
    fn doc_get(&self, document: &str, key: &str) -> Result<Option<serde_json::Value>, String>;
    /// `value` is a JSON scalar (documents hold strings, numbers, booleans and null).
    fn doc_set(&self, document: &str, key: &str, value: &serde_json::Value) -> Result<(), String>;
    fn doc_delete(&self, document: &str, key: &str) -> Result<(), String>;
    fn doc_keys(&self, document: &str) -> Result<Vec<String>, String>;
    fn chat(&self, messages: &[ChatMessage], options: &InferenceOptions) -> Result<String, String>;
    fn generate(&self, prompt: &str, options: &InferenceOptions) -> Result<String, String>;
    fn embed(&self, text: &str) -> Result<Vec<f32>, String>;
    fn call_tool(&self, name: &str, args_json: &str) -> Result<String, String>;
    fn publish(&self, topic: &str, payload: &[u8]) -> Result<(), String>;
}

/// For hosts without a node behind them (`component inspect`, tests): every service says so.
pub struct NoServices;

const NO_NODE: &str = "this host has no node services (no model, store or broker)";

impl HostServices for NoServices {
    fn kv_get(&self, _: &str, _: &str) -> Result<Option<Vec<u8>>, String> {
        Err(NO_NODE.into())
    }
    fn kv_set(&self, _: &str, _: &str, _: &[u8]) -> Result<(), String> {
        Err(NO_NODE.into())
    }
    fn kv_delete(&self, _: &str, _: &str) -> Result<(), String> {
        Err(NO_NODE.into())
    }
    fn kv_keys(&self, _: &str) -> Result<Vec<String>, String> {
        Err(NO_NODE.into())
    }
    fn doc_get(&self, _: &str, _: &str) -> Result<Option<serde_json::Value>, String> {
        Err(NO_NODE.into())
    }
    fn doc_set(&self, _: &str, _: &str, _: &serde_json::Value) -> Result<(), String> {
        Err(NO_NODE.into())
    }
    fn doc_delete(&self, _: &str, _: &str) -> Result<(), String> {
        Err(NO_NODE.into())
    }
    fn doc_keys(&self, _: &str) -> Result<Vec<String>, String> {
        Err(NO_NODE.into())
    }
    fn chat(&self, _: &[ChatMessage], _: &InferenceOptions) -> Result<String, String> {
        Err(NO_NODE.into())
    }
    fn generate(&self, _: &str, _: &InferenceOptions) -> Result<String, String> {
        Err(NO_NODE.into())
    }
    fn embed(&self, _: &str) -> Result<Vec<f32>, String> {
        Err(NO_NODE.into())
    }
    fn call_tool(&self, _: &str, _: &str) -> Result<String, String> {
        Err(NO_NODE.into())
    }
    fn publish(&self, _: &str, _: &[u8]) -> Result<(), String> {
        Err(NO_NODE.into())
    }
}

/// An open bucket: a KV namespace of the component's own, or (`doc:NAME`) a shared document.
pub enum Bucket {
    Namespace(String),
    /// Values are JSON scalars as text, so `"open"`, `42`, `true` and `null` round-trip.
    Document(String),
}

/// Bucket identifiers with this prefix name a shared CRDT document instead of a private namespace.
pub const DOCUMENT_BUCKET_PREFIX: &str = edgewise_core::grants::DOCUMENT_BUCKET_PREFIX;

impl Bucket {
    fn for_identifier(component: &str, identifier: &str) -> Bucket {
        match identifier.strip_prefix(DOCUMENT_BUCKET_PREFIX) {
            Some(document) => Bucket::Document(document.to_owned()),
            None => Bucket::Namespace(format!("wasm:{component}:{identifier}")),
        }
    }
}

/// A document value from the bytes a component wrote: JSON text of a scalar.
fn document_value(key: &str, bytes: &[u8]) -> Result<serde_json::Value, store::Error> {
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| {
        store::Error::Other(format!(
            "value for '{key}' is not JSON text ({e}); document buckets store JSON scalars, e.g. \"open\" with its quotes, 42 or true"
        ))
    })?;
    if value.is_object() || value.is_array() {
        return Err(store::Error::Other(format!(
            "value for '{key}' is a JSON {}; documents hold scalars, so store each field under its own key",
            if value.is_object() { "object" } else { "array" }
        )));
    }
    Ok(value)
}

/// Where one call's time went: what the node's services took is kept apart, so the time limit
/// counts the component's own work only (a cold embedding model loading inside an `embed`
/// must not stop the component that asked).
pub(crate) struct CallClock {
    started: Instant,
    in_services: Duration,
}

impl CallClock {
    pub fn start() -> Self {
        Self {
            started: Instant::now(),
            in_services: Duration::ZERO,
        }
    }

    /// Time spent so far outside the node's services: the component's own work.
    pub fn component_time(&self) -> Duration {
        self.started.elapsed().saturating_sub(self.in_services)
    }
}

/// A node service that did not answer within the host-call limit; it ends the component's call.
#[derive(Debug)]
pub(crate) struct HostCallTimeout {
    pub service: &'static str,
    pub limit: Duration,
}

impl std::fmt::Display for HostCallTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "host service {} did not answer within {} ms",
            self.service,
            self.limit.as_millis()
        )
    }
}

impl std::error::Error for HostCallTimeout {}

/// The store data of one call.
pub(crate) struct HostState {
    pub wasi: WasiCtx,
    pub table: ResourceTable,
    pub limits: CallLimits,
    pub grants: Arc<Grants>,
    pub services: Arc<dyn HostServices>,
    pub component: String,
    pub clock: CallClock,
    /// How long one service call may take before the component's call is ended.
    pub host_call_limit: Duration,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl HostState {
    /// Runs a node service on a thread of its own and waits at most the host-call limit: its
    /// time is not charged to the component, and a service that hangs ends the call (a trap)
    /// instead of holding it forever. A service that overran keeps its thread until it returns;
    /// its answer is dropped.
    fn service<T: Send + 'static>(
        &mut self,
        name: &'static str,
        call: impl FnOnce(&dyn HostServices) -> T + Send + 'static,
    ) -> wasmtime::Result<T> {
        let services = self.services.clone();
        let (tx, rx) = mpsc::sync_channel(1);
        let started = Instant::now();
        std::thread::Builder::new()
            .name("wasm-host-call".into())
            .spawn(move || {
                let _ = tx.send(call(&*services));
            })
            .map_err(|e| wasmtime::Error::msg(format!("host service {name}: no thread: {e}")))?;
        let answer = rx.recv_timeout(self.host_call_limit);
        self.clock.in_services += started.elapsed();
        match answer {
            Ok(v) => Ok(v),
            Err(RecvTimeoutError::Timeout) => Err(wasmtime::Error::new(HostCallTimeout {
                service: name,
                limit: self.host_call_limit,
            })),
            Err(RecvTimeoutError::Disconnected) => Err(wasmtime::Error::msg(format!(
                "host service {name} failed without an answer (it panicked)"
            ))),
        }
    }

    /// Ok when the grants allow `interface`; else the message the component gets.
    fn require(&self, interface: HostInterface) -> Result<(), String> {
        if self.grants.allows(interface) {
            return Ok(());
        }
        Err(format!(
            "component '{}' is not granted the {interface} interface (grants.interfaces)",
            self.component
        ))
    }
}

impl types::Host for HostState {}

impl logging::Host for HostState {
    fn log(
        &mut self,
        level: logging::Level,
        context: String,
        message: String,
    ) -> wasmtime::Result<()> {
        // Denied logging is dropped, not an error: a log line must never change behaviour.
        if !self.grants.allows(HostInterface::Logging) {
            return Ok(());
        }
        let c = &self.component;
        match level {
            logging::Level::Trace => tracing::trace!(component = %c, %context, "{message}"),
            logging::Level::Debug => tracing::debug!(component = %c, %context, "{message}"),
            logging::Level::Info => tracing::info!(component = %c, %context, "{message}"),
            logging::Level::Warn => tracing::warn!(component = %c, %context, "{message}"),
            logging::Level::Error | logging::Level::Critical => {
                tracing::error!(component = %c, %context, "{message}")
            }
        }
        Ok(())
    }
}

impl store::Host for HostState {
    fn open(
        &mut self,
        identifier: String,
    ) -> wasmtime::Result<Result<Resource<Bucket>, store::Error>> {
        if !self.grants.allows(HostInterface::Keyvalue)
            || !self.grants.kv_buckets.iter().any(|b| *b == identifier)
        {
            return Ok(Err(store::Error::AccessDenied));
        }
        let bucket = Bucket::for_identifier(&self.component, &identifier);
        Ok(Ok(self.table.push(bucket)?))
    }
}

impl store::HostBucket for HostState {
    fn get(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, store::Error>> {
        let read = match self.table.get(&bucket)? {
            Bucket::Namespace(ns) => {
                let ns = ns.clone();
                self.service("keyvalue.get", move |s| s.kv_get(&ns, &key))?
            }
            Bucket::Document(doc) => {
                let doc = doc.clone();
                self.service("keyvalue.get", move |s| s.doc_get(&doc, &key))?
                    .map(|v| v.map(|v| v.to_string().into_bytes()))
            }
        };
        Ok(read.map_err(store::Error::Other))
    }

    fn set(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), store::Error>> {
        let written = match self.table.get(&bucket)? {
            Bucket::Namespace(ns) => {
                let ns = ns.clone();
                self.service("keyvalue.set", move |s| s.kv_set(&ns, &key, &value))?
            }
            Bucket::Document(doc) => match document_value(&key, &value) {
                Ok(value) => {
                    let doc = doc.clone();
                    self.service("keyvalue.set", move |s| s.doc_set(&doc, &key, &value))?
                }
                Err(e) => return Ok(Err(e)),
            },
        };
        Ok(written.map_err(store::Error::Other))
    }

    fn delete(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
    ) -> wasmtime::Result<Result<(), store::Error>> {
        let deleted = match self.table.get(&bucket)? {
            Bucket::Namespace(ns) => {
                let ns = ns.clone();
                self.service("keyvalue.delete", move |s| s.kv_delete(&ns, &key))?
            }
            Bucket::Document(doc) => {
                let doc = doc.clone();
                self.service("keyvalue.delete", move |s| s.doc_delete(&doc, &key))?
            }
        };
        Ok(deleted.map_err(store::Error::Other))
    }

    fn exists(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
    ) -> wasmtime::Result<Result<bool, store::Error>> {
        let found = match self.table.get(&bucket)? {
            Bucket::Namespace(ns) => {
                let ns = ns.clone();
                self.service("keyvalue.exists", move |s| s.kv_get(&ns, &key))?
                    .map(|v| v.is_some())
            }
            Bucket::Document(doc) => {
                let doc = doc.clone();
                self.service("keyvalue.exists", move |s| s.doc_get(&doc, &key))?
                    .map(|v| v.is_some())
            }
        };
        Ok(found.map_err(store::Error::Other))
    }

    fn list_keys(
        &mut self,
        bucket: Resource<Bucket>,
        _cursor: Option<String>,
    ) -> wasmtime::Result<Result<store::KeyResponse, store::Error>> {
        // One page: a component's bucket is small, and the cursor stays for the interface's sake.
        let keys = match self.table.get(&bucket)? {
            Bucket::Namespace(ns) => {
                let ns = ns.clone();
                self.service("keyvalue.list-keys", move |s| s.kv_keys(&ns))?
            }
            Bucket::Document(doc) => {
                let doc = doc.clone();
                self.service("keyvalue.list-keys", move |s| s.doc_keys(&doc))?
            }
        };
        Ok(keys
            .map(|keys| store::KeyResponse { keys, cursor: None })
            .map_err(store::Error::Other))
    }

    fn drop(&mut self, bucket: Resource<Bucket>) -> wasmtime::Result<()> {
        self.table.delete(bucket)?;
        Ok(())
    }
}

fn options_of(o: &inference::Options) -> Result<InferenceOptions, inference::Error> {
    let json_schema = match &o.json_schema {
        None => None,
        Some(s) => Some(serde_json::from_str(s).map_err(|e| {
            inference::Error::Failed(format!("options.json-schema is not JSON: {e}"))
        })?),
    };
    Ok(InferenceOptions {
        max_tokens: o.max_tokens,
        temperature: o.temperature,
        json_schema,
    })
}

impl inference::Host for HostState {
    fn chat(
        &mut self,
        messages: Vec<inference::Message>,
        options: inference::Options,
    ) -> wasmtime::Result<Result<String, inference::Error>> {
        if let Err(why) = self.require(HostInterface::Inference) {
            return Ok(Err(inference::Error::Denied(why)));
        }
        let options = match options_of(&options) {
            Ok(o) => o,
            Err(e) => return Ok(Err(e)),
        };
        let messages: Vec<ChatMessage> = messages
            .into_iter()
            .map(|m| ChatMessage {
                role: m.role,
                content: m.content,
            })
            .collect();
        Ok(self
            .service("inference.chat", move |s| s.chat(&messages, &options))?
            .map_err(inference::Error::Failed))
    }

    fn generate(
        &mut self,
        prompt: String,
        options: inference::Options,
    ) -> wasmtime::Result<Result<String, inference::Error>> {
        if let Err(why) = self.require(HostInterface::Inference) {
            return Ok(Err(inference::Error::Denied(why)));
        }
        let options = match options_of(&options) {
            Ok(o) => o,
            Err(e) => return Ok(Err(e)),
        };
        Ok(self
            .service("inference.generate", move |s| s.generate(&prompt, &options))?
            .map_err(inference::Error::Failed))
    }

    fn embed(&mut self, text: String) -> wasmtime::Result<Result<Vec<f32>, inference::Error>> {
        if let Err(why) = self.require(HostInterface::Inference) {
            return Ok(Err(inference::Error::Denied(why)));
        }
        Ok(self
            .service("inference.embed", move |s| s.embed(&text))?
            .map_err(inference::Error::Failed))
    }
}

impl tools::Host for HostState {
    fn call(
        &mut self,
        name: String,
        args_json: String,
    ) -> wasmtime::Result<Result<String, types::ToolError>> {
        if let Err(why) = self.require(HostInterface::Tools) {
            return Ok(Err(types::ToolError::Denied(why)));
        }
        Ok(self
            .service("tools.call", move |s| s.call_tool(&name, &args_json))?
            .map_err(types::ToolError::Failed))
    }
}

impl events::Host for HostState {
    fn publish(
        &mut self,
        topic: String,
        payload: Vec<u8>,
    ) -> wasmtime::Result<Result<(), events::Error>> {
        if let Err(why) = self.require(HostInterface::Events) {
            return Ok(Err(events::Error::Denied(why)));
        }
        if !self.grants.topics.iter().any(|t| *t == topic) {
            return Ok(Err(events::Error::Denied(format!(
                "component '{}' is not granted topic '{topic}' (grants.topics)",
                self.component
            ))));
        }
        Ok(self
            .service("events.publish", move |s| s.publish(&topic, &payload))?
            .map_err(events::Error::Failed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doc_identifiers_name_shared_documents_and_others_private_namespaces() {
        assert!(matches!(
            Bucket::for_identifier("sensor", "doc:plant"),
            Bucket::Document(d) if d == "plant"
        ));
        assert!(matches!(
            Bucket::for_identifier("sensor", "predictions"),
            Bucket::Namespace(ns) if ns == "wasm:sensor:predictions"
        ));
    }

    #[test]
    fn document_values_are_json_scalars() {
        assert_eq!(
            document_value("k", b"\"open\"").unwrap(),
            serde_json::json!("open")
        );
        assert_eq!(document_value("k", b"42").unwrap(), serde_json::json!(42));
        assert_eq!(
            document_value("k", b"null").unwrap(),
            serde_json::Value::Null
        );
        for (bad, says) in [
            (&b"open"[..], "not JSON text"),
            (b"{\"a\":1}", "JSON object"),
            (b"[1]", "JSON array"),
        ] {
            match document_value("zone4/valve", bad) {
                Err(store::Error::Other(m)) => {
                    assert!(m.contains(says) && m.contains("zone4/valve"), "{m}")
                }
                other => panic!("{other:?}"),
            }
        }
    }
}
