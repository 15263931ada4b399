use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("component {path}: {message}")]
    Load { path: PathBuf, message: String },
    #[error("component {path} was built against {interface}@{found}, but this node implements @{supported}: rebuild it against wit/ of this edgewise version")]
    IncompatibleWit {
        path: PathBuf,
        interface: String,
        found: String,
        supported: String,
    },
    #[error("component '{component}': {tool} did not finish within its time limit ({limit_ms} ms) and was stopped")]
    Timeout {
        component: String,
        tool: String,
        limit_ms: u64,
    },
    #[error("component '{component}': {tool} was stopped: {service} did not answer within the host-call limit ({limit_ms} ms); the node service is slow or hung, not the component")]
    HostCallTimeout {
        component: String,
        tool: String,
        service: String,
        limit_ms: u64,
    },
    #[error("component '{component}': {tool} tried to grow its memory beyond its limit ({limit})")]
    MemoryLimit {
        component: String,
        tool: String,
        limit: String,
    },
    #[error("component '{component}': {tool} trapped: {message}")]
    Trap {
        component: String,
        tool: String,
        message: String,
    },
    #[error("component '{component}' is not called for {retry_in_s}s: it trapped {failures} times in a row")]
    BreakerOpen {
        component: String,
        failures: u32,
        retry_in_s: u64,
    },
    #[error("component '{component}' has no tool '{tool}'; it offers: {offered}")]
    UnknownTool {
        component: String,
        tool: String,
        offered: String,
    },
    #[error("component '{component}' is a {kind} component; {what}")]
    WrongKind {
        component: String,
        kind: String,
        what: String,
    },
    #[error("component '{component}': {tool}: {message}")]
    ToolFailed {
        component: String,
        tool: String,
        message: String,
    },
    #[error("component '{component}': {source}")]
    GrantsWidened {
        component: String,
        source: edgewise_core::GrantsWidened,
    },
    #[error("component {path}: this node loads only installed, signed components (trusted_keys is set): install it with `edgewise component add {path}`, sign it, and name it in the spec as `wasm:NAME`")]
    UnsignedFile { path: PathBuf },
    #[error("no component named '{name}' is installed (edgewise component list)")]
    NotInstalled { name: String },
    #[error("component store {path}: {message}")]
    Store { path: PathBuf, message: String },
    #[error("wasm engine: {0}")]
    Engine(String),
}
