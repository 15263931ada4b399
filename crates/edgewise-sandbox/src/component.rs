//! Loading components (compile once, cache by content hash, check the WIT version, pre-link) and
//! calling them (a fresh instance per call, under the component's limits).

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edgewise_core::grants::DEFAULT_TIME_LIMIT;
use edgewise_core::{CircuitBreaker, Grants};
use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap,
    UpdateDeadline,
};
use wasmtime_wasi::sockets::SocketAddrUse;
use wasmtime_wasi::{FsPerms, WasiCtx};

use crate::bindings;
use crate::host::{CallClock, HostCallTimeout, HostServices, HostState};
use crate::limits::{CallLimits, MemoryLimitHit};
use crate::{SandboxError, WIT_PACKAGE, WIT_VERSION};

/// How often the epoch advances: the granularity of time limits.
const EPOCH_TICK: Duration = Duration::from_millis(5);
const DEFAULT_MEMORY: u64 = 256 << 20;
/// Traps in a row that stop calls to a component for `BREAKER_COOLDOWN`.
const BREAKER_TRAPS: u32 = 3;
const BREAKER_COOLDOWN: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Where compiled artifacts are kept; none compiles on every load.
    pub cache_dir: Option<PathBuf>,
    /// Largest linear memory any component may be granted (the pooling allocator reserves
    /// address space for it per slot).
    pub max_memory: u64,
    /// Component instances alive at once (concurrent calls).
    pub max_instances: u32,
    /// How long one host service call (inference, a tool, KV) may take; longer ends the
    /// component's call. Service time does not count against a component's own time limit.
    pub host_call_limit: Duration,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            cache_dir: None,
            max_memory: 4 << 30,
            max_instances: 32,
            host_call_limit: Duration::from_secs(300),
        }
    }
}

/// What a component exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ComponentKind {
    /// `edgewise:agent/tool-api`: tools an agent calls.
    Tool,
    /// `edgewise:agent/handler`: agent logic that handles events.
    Agent,
}

impl std::fmt::Display for ComponentKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ComponentKind::Tool => "tool",
            ComponentKind::Agent => "agent",
        })
    }
}

/// The wasmtime engine and linker shared by every component of a node.
pub struct Sandbox {
    engine: Engine,
    linker: Linker<HostState>,
    config: SandboxConfig,
}

impl Sandbox {
    pub fn new(config: SandboxConfig) -> Result<Self, SandboxError> {
        let engine_err = |e: wasmtime::Error| SandboxError::Engine(format!("{e:#}"));
        let mut wasm = Config::new();
        wasm.wasm_component_model(true).epoch_interruption(true);
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(config.max_instances)
            .total_core_instances(config.max_instances * 8)
            .total_memories(config.max_instances * 4)
            .total_tables(config.max_instances * 4)
            .total_stacks(config.max_instances)
            .max_memory_size(config.max_memory as usize);
        wasm.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = match Engine::new(&wasm) {
            Ok(e) => e,
            Err(e) => {
                // Pooling reserves address space up front; where that is refused (tight
                // overcommit settings) fall back to allocating per instance.
                tracing::warn!("pooling allocator unavailable ({e:#}); allocating on demand");
                wasm.allocation_strategy(InstanceAllocationStrategy::OnDemand);
                Engine::new(&wasm).map_err(engine_err)?
            }
        };
        let weak = engine.weak();
        std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })
            .map_err(|e| SandboxError::Engine(format!("epoch thread: {e}")))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(engine_err)?;
        bindings::Agent::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s).map_err(engine_err)?;
        Ok(Self {
            engine,
            linker,
            config,
        })
    }

    /// Compiles (or takes from the cache), checks and pre-links the component at `path`.
    /// `egress_ok` says whether an address may be reached under the agent's egress policy;
    /// network grants are resolved now and kept only where it agrees.
    pub fn load(
        &self,
        name: &str,
        path: &Path,
        grants: Grants,
        default_memory: Option<u64>,
        egress_ok: &dyn Fn(IpAddr) -> bool,
    ) -> Result<LoadedComponent, SandboxError> {
        let load_err = |message: String| SandboxError::Load {
            path: path.to_path_buf(),
            message,
        };
        let bytes = std::fs::read(path).map_err(|e| load_err(format!("cannot read: {e}")))?;
        let sha256 = hex::encode(Sha256::digest(&bytes));
        let component = self.compile_cached(&bytes, &sha256, path)?;
        let kind = check_contract(&self.engine, &component, path)?;
        let pre = self.linker.instantiate_pre(&component).map_err(|e| {
            load_err(format!(
                "cannot be linked against this node's host interfaces: {e:#}"
            ))
        })?;
        let pre = match kind {
            ComponentKind::Tool => Pre::Tool(
                bindings::tool::ToolPre::new(pre).map_err(|e| load_err(format!("{e:#}")))?,
            ),
            ComponentKind::Agent => {
                Pre::Agent(bindings::AgentPre::new(pre).map_err(|e| load_err(format!("{e:#}")))?)
            }
        };
        let memory = grants
            .memory_limit
            .map(|b| b.as_u64())
            .or(default_memory)
            .unwrap_or(DEFAULT_MEMORY);
        if memory > self.config.max_memory {
            return Err(load_err(format!(
                "memory limit {} is above this node's largest component memory ({})",
                bytesize::ByteSize(memory),
                bytesize::ByteSize(self.config.max_memory)
            )));
        }
        let network = resolve_network(&grants.network, egress_ok).map_err(load_err)?;
        let mut loaded = LoadedComponent {
            name: name.to_owned(),
            path: path.to_path_buf(),
            sha256,
            kind,
            engine: self.engine.clone(),
            pre,
            time_limit: grants.time_limit.unwrap_or(DEFAULT_TIME_LIMIT),
            host_call_limit: self.config.host_call_limit,
            memory,
            network: Arc::new(network),
            grants: Arc::new(grants),
            tools: Vec::new(),
            breaker: Mutex::new(CircuitBreaker::new(BREAKER_TRAPS, BREAKER_COOLDOWN)),
        };
        if kind == ComponentKind::Tool {
            loaded.tools = loaded.describe(Arc::new(crate::NoServices))?;
        }
        Ok(loaded)
    }

    fn compile_cached(
        &self,
        bytes: &[u8],
        sha256: &str,
        path: &Path,
    ) -> Result<Component, SandboxError> {
        let compile = || {
            Component::from_binary(&self.engine, bytes).map_err(|e| SandboxError::Load {
                path: path.to_path_buf(),
                message: format!("not a valid WebAssembly component: {e:#}"),
            })
        };
        let Some(dir) = &self.config.cache_dir else {
            return compile();
        };
        // The engine's compatibility hash covers wasmtime's version and settings: an artifact
        // from another build is never loaded.
        let mut h = std::hash::DefaultHasher::new();
        std::hash::Hash::hash(&self.engine.precompile_compatibility_hash(), &mut h);
        let cached = dir.join(format!(
            "{sha256}-{:016x}.cwasm",
            std::hash::Hasher::finish(&h)
        ));
        if cached.exists() {
            // SAFETY: the file is one this node wrote (content-hash named, in its own data dir)
            // for an engine with the same compatibility hash.
            match unsafe { Component::deserialize_file(&self.engine, &cached) } {
                Ok(c) => return Ok(c),
                Err(e) => {
                    tracing::warn!(path = %cached.display(), "recompiling: cached artifact unusable: {e:#}")
                }
            }
        }
        let component = compile()?;
        match component.serialize() {
            Ok(artifact) => {
                let tmp = cached.with_extension("tmp");
                let written = std::fs::create_dir_all(dir)
                    .and_then(|_| std::fs::write(&tmp, artifact))
                    .and_then(|_| std::fs::rename(&tmp, &cached));
                if let Err(e) = written {
                    tracing::warn!(path = %cached.display(), "cannot cache compiled component: {e}");
                }
            }
            Err(e) => tracing::warn!("cannot serialize compiled component: {e:#}"),
        }
        Ok(component)
    }
}

/// Refuses any `edgewise:agent` interface of another version, and finds what the component is.
fn check_contract(
    engine: &Engine,
    component: &Component,
    path: &Path,
) -> Result<ComponentKind, SandboxError> {
    let ty = component.component_type();
    let imports = ty.imports(engine).map(|(n, _)| n.to_owned());
    let exports: Vec<String> = ty.exports(engine).map(|(n, _)| n.to_owned()).collect();
    for name in imports.chain(exports.iter().cloned()) {
        let Some(rest) = name.strip_prefix(&format!("{WIT_PACKAGE}/")) else {
            continue;
        };
        let (interface, version) = rest.split_once('@').unwrap_or((rest, "(unversioned)"));
        if version != WIT_VERSION {
            return Err(SandboxError::IncompatibleWit {
                path: path.to_path_buf(),
                interface: format!("{WIT_PACKAGE}/{interface}"),
                found: version.to_owned(),
                supported: WIT_VERSION.to_owned(),
            });
        }
    }
    let exported = |i: &str| {
        exports
            .iter()
            .any(|e| *e == format!("{WIT_PACKAGE}/{i}@{WIT_VERSION}"))
    };
    if exported("tool-api") {
        Ok(ComponentKind::Tool)
    } else if exported("handler") {
        Ok(ComponentKind::Agent)
    } else {
        Err(SandboxError::Load {
            path: path.to_path_buf(),
            message: format!(
                "exports neither {WIT_PACKAGE}/tool-api@{WIT_VERSION} (world tool) nor {WIT_PACKAGE}/handler@{WIT_VERSION} (world agent); it exports: {}",
                if exports.is_empty() { "nothing".to_owned() } else { exports.join(", ") }
            ),
        })
    }
}

/// `host:port` / `host:*` grants → the addresses they resolve to, where egress allows.
fn resolve_network(
    grants: &[String],
    egress_ok: &dyn Fn(IpAddr) -> bool,
) -> Result<Vec<(IpAddr, Option<u16>)>, String> {
    let mut out = Vec::new();
    for g in grants {
        let (host, port) = g
            .rsplit_once(':')
            .ok_or_else(|| format!("network grant '{g}': expected host:port or host:*"))?;
        let port = match port {
            "*" => None,
            p => Some(
                p.parse::<u16>()
                    .map_err(|_| format!("network grant '{g}': '{p}' is not a port"))?,
            ),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let addrs = (host, port.unwrap_or(0))
            .to_socket_addrs()
            .map_err(|e| format!("network grant '{g}': cannot resolve {host}: {e}"))?;
        for a in addrs {
            if egress_ok(a.ip()) {
                out.push((a.ip(), port));
            } else {
                tracing::warn!(grant = %g, addr = %a.ip(), "network grant dropped: the egress policy forbids this address");
            }
        }
    }
    Ok(out)
}

enum Pre {
    Tool(bindings::tool::ToolPre<HostState>),
    Agent(bindings::AgentPre<HostState>),
}

/// A compiled, checked, pre-linked component. Cheap to call concurrently: every call gets its
/// own instance.
pub struct LoadedComponent {
    pub name: String,
    pub path: PathBuf,
    pub sha256: String,
    pub kind: ComponentKind,
    engine: Engine,
    pre: Pre,
    /// Time a call may spend in the component's own code.
    pub time_limit: Duration,
    host_call_limit: Duration,
    /// Linear memory limit in bytes.
    pub memory: u64,
    network: Arc<Vec<(IpAddr, Option<u16>)>>,
    pub grants: Arc<Grants>,
    /// What `describe` returned at load (tool components).
    pub tools: Vec<ToolInfo>,
    breaker: Mutex<CircuitBreaker>,
}

impl std::fmt::Debug for LoadedComponent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedComponent")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("sha256", &self.sha256)
            .finish_non_exhaustive()
    }
}

/// One tool of a component.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ToolInfo {
    pub name: String,
    pub description: String,
    /// JSON schema of the arguments.
    pub parameters: serde_json::Value,
}

impl LoadedComponent {
    fn store(&self, services: Arc<dyn HostServices>) -> Result<Store<HostState>, SandboxError> {
        let mut wasi = WasiCtx::builder();
        for f in &self.grants.files {
            let guest = f
                .guest
                .clone()
                .unwrap_or_else(|| edgewise_core::grants::DEFAULT_GUEST_DIR.into());
            let perms = if f.writable {
                FsPerms::ReadWrite
            } else {
                FsPerms::ReadOnly
            };
            wasi.preopened_dir(&f.path, &guest, perms)
                .map_err(|e| SandboxError::Load {
                    path: self.path.clone(),
                    message: format!("file grant {}: {e:#}", f.path.display()),
                })?;
        }
        let network = self.network.clone();
        // TCP clients only: UDP stays off, and every address is checked below.
        wasi.allow_ip_name_lookup(!network.is_empty())
            .allow_tcp(!network.is_empty());
        wasi.socket_addr_check(move |addr: SocketAddr, usage| {
            let ok = match usage {
                // The implicit bind before a client connect (wildcard address, any port); an
                // explicit bind or listen would make the component a server: never granted.
                SocketAddrUse::TcpBind => {
                    !network.is_empty() && addr.ip().is_unspecified() && addr.port() == 0
                }
                SocketAddrUse::TcpConnect => network
                    .iter()
                    .any(|(ip, port)| *ip == addr.ip() && port.is_none_or(|p| p == addr.port())),
                _ => false,
            };
            Box::pin(async move { ok })
        });
        let state = HostState {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            limits: CallLimits {
                memory_bytes: self.memory as usize,
                max_instances: 16,
                max_tables: 32,
                max_table_elements: 100_000,
                memory_refused: false,
            },
            grants: self.grants.clone(),
            services,
            component: self.name.clone(),
            clock: CallClock::start(),
            host_call_limit: self.host_call_limit,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        // The epoch deadline is wall time; when it passes, the call goes on for whatever of the
        // limit the node's services used (their time is not the component's).
        let limit = self.time_limit;
        store.epoch_deadline_callback(move |ctx| {
            let used = ctx.data().clock.component_time();
            Ok(match limit.checked_sub(used) {
                Some(left) if !left.is_zero() => UpdateDeadline::Continue(ticks(left)),
                _ => UpdateDeadline::Interrupt,
            })
        });
        store.set_epoch_deadline(ticks(limit));
        Ok(store)
    }

    fn check_breaker(&self) -> Result<(), SandboxError> {
        let mut b = self.breaker.lock().unwrap_or_else(|p| p.into_inner());
        b.allow(Instant::now())
            .map_err(|open| SandboxError::BreakerOpen {
                component: self.name.clone(),
                failures: b.threshold(),
                retry_in_s: open.retry_in.as_secs(),
            })
    }

    /// Classifies a failed call and feeds the breaker.
    fn failed(&self, store: &Store<HostState>, what: &str, e: wasmtime::Error) -> SandboxError {
        let err =
            if store.data().limits.memory_refused || e.downcast_ref::<MemoryLimitHit>().is_some() {
                SandboxError::MemoryLimit {
                    component: self.name.clone(),
                    tool: what.to_owned(),
                    limit: bytesize::ByteSize(self.memory).to_string(),
                }
            } else if let Some(t) = e.downcast_ref::<HostCallTimeout>() {
                SandboxError::HostCallTimeout {
                    component: self.name.clone(),
                    tool: what.to_owned(),
                    service: t.service.to_owned(),
                    limit_ms: t.limit.as_millis() as u64,
                }
            } else if e.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
                SandboxError::Timeout {
                    component: self.name.clone(),
                    tool: what.to_owned(),
                    limit_ms: self.time_limit.as_millis() as u64,
                }
            } else {
                SandboxError::Trap {
                    component: self.name.clone(),
                    tool: what.to_owned(),
                    message: format!("{e:#}"),
                }
            };
        self.breaker
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .record_failure(Instant::now());
        err
    }

    fn succeeded(&self) {
        self.breaker
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .record_success();
    }

    fn tool_pre(&self, what: &str) -> Result<&bindings::tool::ToolPre<HostState>, SandboxError> {
        match &self.pre {
            Pre::Tool(p) => Ok(p),
            Pre::Agent(_) => Err(SandboxError::WrongKind {
                component: self.name.clone(),
                kind: self.kind.to_string(),
                what: format!("{what} needs a tool component"),
            }),
        }
    }

    fn describe(&self, services: Arc<dyn HostServices>) -> Result<Vec<ToolInfo>, SandboxError> {
        let pre = self.tool_pre("describe")?;
        let mut store = self.store(services)?;
        let specs = pre
            .instantiate(&mut store)
            .and_then(|tool| tool.edgewise_agent_tool_api().call_describe(&mut store))
            .map_err(|e| self.failed(&store, "describe", e))?;
        let mut tools = Vec::new();
        for s in specs {
            let parameters =
                serde_json::from_str(&s.parameters).map_err(|e| SandboxError::Load {
                    path: self.path.clone(),
                    message: format!(
                        "tool '{}' declares parameters that are not JSON: {e}",
                        s.name
                    ),
                })?;
            tools.push(ToolInfo {
                name: s.name,
                description: s.description,
                parameters,
            });
        }
        Ok(tools)
    }

    /// Calls `tool` with a JSON arguments object in a fresh instance. A tool's own error is
    /// `SandboxError::ToolFailed`; traps, time and memory limits are their own variants.
    pub fn invoke(
        &self,
        tool: &str,
        args_json: &str,
        services: Arc<dyn HostServices>,
    ) -> Result<String, SandboxError> {
        let pre = self.tool_pre("invoke")?;
        if !self.tools.iter().any(|t| t.name == tool) {
            return Err(SandboxError::UnknownTool {
                component: self.name.clone(),
                tool: tool.to_owned(),
                offered: self
                    .tools
                    .iter()
                    .map(|t| t.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        self.check_breaker()?;
        let mut store = self.store(services)?;
        let result = pre.instantiate(&mut store).and_then(|t| {
            t.edgewise_agent_tool_api()
                .call_invoke(&mut store, tool, args_json)
        });
        match result {
            Err(e) => Err(self.failed(&store, tool, e)),
            Ok(outcome) => {
                self.succeeded();
                outcome.map_err(|e| SandboxError::ToolFailed {
                    component: self.name.clone(),
                    tool: tool.to_owned(),
                    message: tool_error_message(e),
                })
            }
        }
    }

    /// Hands an event to an agent component's handler in a fresh instance.
    pub fn handle(
        &self,
        source: &str,
        payload: &str,
        services: Arc<dyn HostServices>,
    ) -> Result<String, SandboxError> {
        let Pre::Agent(pre) = &self.pre else {
            return Err(SandboxError::WrongKind {
                component: self.name.clone(),
                kind: self.kind.to_string(),
                what: "handling events needs an agent component".into(),
            });
        };
        self.check_breaker()?;
        let mut store = self.store(services)?;
        let event = bindings::exports::edgewise::agent::handler::Event {
            source: source.to_owned(),
            payload: payload.to_owned(),
            timestamp_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
        };
        let result = pre
            .instantiate(&mut store)
            .and_then(|a| a.edgewise_agent_handler().call_handle(&mut store, &event));
        match result {
            Err(e) => Err(self.failed(&store, "handle", e)),
            Ok(outcome) => {
                self.succeeded();
                outcome.map_err(|message| SandboxError::ToolFailed {
                    component: self.name.clone(),
                    tool: "handle".into(),
                    message,
                })
            }
        }
    }
}

/// Epoch ticks covering `d` (at least one).
fn ticks(d: Duration) -> u64 {
    (d.as_nanos().div_ceil(EPOCH_TICK.as_nanos()) as u64).max(1)
}

fn tool_error_message(e: bindings::edgewise::agent::types::ToolError) -> String {
    use bindings::edgewise::agent::types::ToolError as E;
    match e {
        E::InvalidArguments(m) => format!("invalid arguments: {m}"),
        E::Failed(m) => m,
        E::Denied(m) => format!("denied: {m}"),
        E::UnknownTool(m) => format!("unknown tool: {m}"),
    }
}
