//! Node configuration: a typed struct read from `config.yaml` in the data dir. Every field has a
//! default, so a node runs with no file at all; unknown keys are an error so typos do not pass silently.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path}:{line}:{column}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Name of this node in audit records and the mesh [default: the host name].
    pub name: Option<String>,
    /// Catalog name or path of the model `serve`, `run` and `chat` use when none is named.
    pub default_model: String,
    /// Address `serve` binds; localhost unless the operator says otherwise.
    pub listen: String,
    /// Inference threads; 0 means one per available core.
    pub threads: usize,
    /// Total KV cells shared by all sequences (the prefix-cache budget).
    pub kv_cells: u32,
    /// Longest prompt + completion one request may use.
    pub context_per_request: u32,
    /// Sequences decoded together in one batch.
    pub parallel: u32,
    /// Requests allowed to wait for a free sequence before new ones get 503.
    pub queue_depth: usize,
    /// Tokens per prefill batch (llama.cpp's n_batch).
    pub batch_tokens: u32,
    /// Layers offloaded to the GPU when built with the `cuda` feature.
    pub gpu_layers: u32,
    /// Bearer key required by the inference routes (`/v1/chat/completions`, `/v1/completions`,
    /// `/v1/embeddings`, `/v1/models`) when set; they are open to local clients otherwise. Every
    /// other route needs the admin token (`<home>/admin.token`), which is also accepted here.
    pub api_key: Option<String>,
    /// Host names (besides IP addresses and `localhost`) that requests may name in their `Host`
    /// header, e.g. `gateway.local`. Any other name is refused: a page on a rebinding domain
    /// cannot reach the node.
    pub allowed_hosts: Vec<String>,
    /// Web origins (`scheme://host[:port]`) whose pages may call the API from a browser. Empty:
    /// every request that carries an `Origin` header is refused.
    pub allowed_origins: Vec<String>,
    /// Bounds on the work clients can start at once.
    pub limits: NodeLimits,
    /// Hex ed25519 public keys; when non-empty, only models signed by one of them load.
    pub trusted_keys: Vec<String>,
    /// Embedding model served by `/v1/embeddings`.
    pub embedding_model: String,
    /// Address of the MQTT broker `serve` embeds; empty runs none.
    pub mqtt_listen: String,
    /// Broker names used in `mqtt://NAME:PORT/TOPIC` endpoints → `host:port`. `local-broker`
    /// defaults to the embedded broker's address. Names not listed are dialled as written.
    pub mqtt_brokers: BTreeMap<String, String>,
    /// Task type (`logic`, `vision`, `general`, …) → model, for agents whose runs name a type.
    pub task_models: BTreeMap<String, String>,
    /// OpenAI-compatible endpoint used as the last resort, only for agents whose policy allows egress.
    pub cloud: Option<CloudEndpoint>,
    /// Whether audit records keep raw prompts, arguments and results, or only their digests.
    pub audit_content: AuditContent,
    /// The offline sync manager: what this node shares with its upstream node, and how.
    pub sync: Option<SyncConfig>,
    /// Joining a mesh of nodes over Zenoh (mTLS on every link); absent means this node is alone.
    pub mesh: Option<MeshConfig>,
    /// The most an agent spec of this node's may ask for (commands, files, sockets, topics,
    /// egress). Runs neighbours place here are bounded by `mesh.accept_runs` instead.
    pub agent_policy: crate::AgentPolicy,
}

/// `limits:` in config.yaml: how much work clients and neighbours can start at once. Requests
/// beyond them are answered 429 or 503 with `Retry-After`, never queued without bound.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeLimits {
    /// Agent runs in flight on this node (API, triggers and runs placed here by neighbours).
    pub concurrent_runs: usize,
    /// Agent runs in flight of any one agent.
    pub concurrent_runs_per_agent: usize,
    /// `/v1/embeddings` requests computed at once.
    pub concurrent_embeddings: usize,
    /// Open HTTP connections; a connection beyond them is answered 503 and closed.
    #[serde(deserialize_with = "connection_count")]
    pub connections: usize,
    /// Open HTTP connections from any one address (a LAN host cannot take every slot).
    #[serde(deserialize_with = "connection_count")]
    pub connections_per_client: usize,
    /// How long a client has to send a request's head (line and headers); also how long a
    /// kept-alive connection may sit idle. Slow clients cannot hold connections open.
    #[serde(
        deserialize_with = "http_timeout",
        serialize_with = "humantime_serde::serialize"
    )]
    pub request_head_timeout: std::time::Duration,
    /// How long a request body may take to arrive, from the end of its head; a body still
    /// arriving then is refused (a client trickling a byte at a time holds nothing for long).
    #[serde(
        deserialize_with = "http_timeout",
        serialize_with = "humantime_serde::serialize"
    )]
    pub request_body_timeout: std::time::Duration,
    /// How long a response write may make no progress (a client that stops reading) before
    /// the connection is closed.
    #[serde(
        deserialize_with = "http_timeout",
        serialize_with = "humantime_serde::serialize"
    )]
    pub send_timeout: std::time::Duration,
}

fn connection_count<'de, D: serde::Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    let n = usize::deserialize(d)?;
    if !(1..=65536).contains(&n) {
        return Err(serde::de::Error::custom(format!("{n} is outside 1..65536")));
    }
    Ok(n)
}

/// 100 ms to 1 hour: shorter cuts off real clients, longer lets idle ones pile up.
fn http_timeout<'de, D: serde::Deserializer<'de>>(d: D) -> Result<std::time::Duration, D::Error> {
    let t: std::time::Duration = humantime_serde::deserialize(d)?;
    let (lo, hi) = (
        std::time::Duration::from_millis(100),
        std::time::Duration::from_secs(3600),
    );
    if t < lo || t > hi {
        return Err(serde::de::Error::custom(format!(
            "{} is outside 100ms..1h",
            humantime::format_duration(t)
        )));
    }
    Ok(t)
}

impl Default for NodeLimits {
    fn default() -> Self {
        Self {
            concurrent_runs: 16,
            concurrent_runs_per_agent: 4,
            concurrent_embeddings: 4,
            connections: 256,
            connections_per_client: 64,
            request_head_timeout: std::time::Duration::from_secs(10),
            request_body_timeout: std::time::Duration::from_secs(60),
            send_timeout: std::time::Duration::from_secs(30),
        }
    }
}

/// `mesh:` in config.yaml: how this node joins its neighbours.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeshConfig {
    /// `peer` on the LAN, or `fog`: a Zenoh router that also serves (usually bigger models).
    #[serde(default)]
    pub role: MeshRole,
    /// The trust domain this node belongs to: the nodes holding certificates of one mesh CA.
    pub trust_domain: String,
    /// Zenoh endpoints to accept links on, e.g. `tls/0.0.0.0:7447`. Only `tls/` is accepted.
    #[serde(default)]
    pub listen: Vec<String>,
    /// Endpoints of neighbours to link to, e.g. `tls/10.0.0.2:7447`; more are learnt by gossip.
    #[serde(default)]
    pub connect: Vec<String>,
    /// Also find neighbours by UDP multicast on the LAN (links still need valid certificates).
    #[serde(default)]
    pub multicast_scouting: bool,
    /// Directory with `ca.pem`, `node.pem` and `node.key` (see `edgewise mesh cert issue`)
    /// [default: `<home>/mesh`]. Relative paths resolve against the data dir.
    #[serde(default)]
    pub tls_dir: Option<std::path::PathBuf>,
    /// Milliseconds without traffic after which a link, and the node behind it, counts as gone.
    #[serde(default = "default_mesh_lease_ms")]
    pub lease_ms: u64,
    /// What this node shares with its neighbours; nothing else is ever sent to them.
    #[serde(default)]
    pub share: MeshShare,
    /// What runs neighbours place here may do: checked instead of `agent_policy` (least
    /// privilege by default: `builtin:current_time`, the agent's own KV, installed components).
    #[serde(default)]
    pub accept_runs: crate::AcceptRuns,
}

/// Node names become mesh key-expression chunks, certificate names and the KV scope of the runs a
/// node places on its neighbours (`mesh:<node>:<agent>`): 1–64 letters, digits, `.`, `_`, `-`.
pub fn check_node_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "node name '{}' is not usable in the mesh: use 1–64 letters, digits, '.', '_' or '-'",
            name.escape_debug()
        ))
    }
}

/// `mesh.share`: the documents and collections that neighbours may read and that this node keeps
/// in sync with every neighbour (the privacy allow-list of the mesh, like `sync:`'s).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeshShare {
    /// CRDT documents, merged with every neighbour's copy (automerge sync messages).
    #[serde(default)]
    pub documents: Vec<String>,
    /// Knowledge collections (they must be shareable), exchanged as deltas.
    #[serde(default)]
    pub collections: Vec<String>,
    /// Milliseconds between sync rounds with each neighbour.
    #[serde(default = "default_share_interval_ms")]
    pub interval_ms: u64,
}

fn default_share_interval_ms() -> u64 {
    500
}

impl Default for MeshShare {
    fn default() -> Self {
        Self {
            documents: Vec::new(),
            collections: Vec::new(),
            interval_ms: default_share_interval_ms(),
        }
    }
}

fn default_mesh_lease_ms() -> u64 {
    1000
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MeshRole {
    #[default]
    Peer,
    Fog,
}

impl MeshRole {
    /// Offload order: lower tiers are tried first (local is 0).
    pub fn tier(self) -> u8 {
        match self {
            MeshRole::Peer => 1,
            MeshRole::Fog => 2,
        }
    }
}

impl std::fmt::Display for MeshRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MeshRole::Peer => "peer",
            MeshRole::Fog => "fog",
        })
    }
}

/// `sync:` in config.yaml. Only what is listed here ever leaves the node; the lists are the
/// privacy controls.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncConfig {
    /// Base URL of the upstream node's HTTP API, e.g. `http://fog.local:8080`.
    pub upstream: String,
    /// Environment variable that holds the upstream's admin token (never the token itself): the
    /// state routes sync uses need it.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Seconds between rounds while `serve` runs; 0 syncs only on request.
    #[serde(default = "default_sync_interval")]
    pub interval_s: u64,
    /// Who wins when a key changed here and upstream since the last sync.
    #[serde(default)]
    pub conflict_policy: ConflictPolicy,
    /// KV namespaces that may leave this node (exact names).
    #[serde(default)]
    pub kv_namespaces: Vec<String>,
    /// Knowledge collections that may leave this node (they must also be shareable).
    #[serde(default)]
    pub collections: Vec<String>,
    /// CRDT documents that may leave this node.
    #[serde(default)]
    pub documents: Vec<String>,
}

fn default_sync_interval() -> u64 {
    30
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConflictPolicy {
    /// The upstream's value is kept and copied here (the hub is the authority).
    #[default]
    UpstreamWins,
    /// This node's value overwrites the upstream's.
    LocalWins,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudEndpoint {
    /// Base URL, e.g. `https://api.example.com/v1`.
    pub url: String,
    pub model: String,
    /// Environment variable that holds the bearer key (never the key itself in the file).
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Consecutive failures that open the circuit breaker.
    #[serde(default = "default_breaker_failures")]
    pub breaker_failures: u32,
    /// Seconds the breaker stays open before one trial request.
    #[serde(default = "default_breaker_cooldown")]
    pub breaker_cooldown_s: u64,
}

fn default_breaker_failures() -> u32 {
    3
}
fn default_breaker_cooldown() -> u64 {
    30
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditContent {
    /// Raw arguments and results, plus digests.
    #[default]
    Raw,
    /// Digests and sizes only: the log proves what happened without holding the data.
    Digest,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            name: None,
            default_model: "qwen2.5-coder-0.5b-instruct".into(),
            listen: "127.0.0.1:8080".into(),
            threads: 0,
            kv_cells: 8192,
            context_per_request: 4096,
            parallel: 8,
            queue_depth: 64,
            batch_tokens: 512,
            gpu_layers: 0,
            api_key: None,
            allowed_hosts: Vec::new(),
            allowed_origins: Vec::new(),
            limits: NodeLimits::default(),
            trusted_keys: Vec::new(),
            embedding_model: "all-minilm-l6-v2".into(),
            mqtt_listen: "127.0.0.1:1883".into(),
            mqtt_brokers: BTreeMap::new(),
            task_models: BTreeMap::new(),
            cloud: None,
            audit_content: AuditContent::Raw,
            sync: None,
            mesh: None,
            agent_policy: crate::AgentPolicy::default(),
        }
    }
}

impl NodeConfig {
    /// Reads `path` if it exists; a missing file means defaults.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.into(),
                    source,
                })
            }
        };
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        serde_yaml::from_str(text).map_err(|e| {
            let (line, column) = e
                .location()
                .map(|l| (l.line(), l.column()))
                .unwrap_or((0, 0));
            ConfigError::Parse {
                path: path.into(),
                line,
                column,
                message: e.to_string(),
            }
        })
    }

    /// The configured name, else the host name, else `local`.
    pub fn node_name(&self) -> String {
        if let Some(n) = self.name.as_ref().filter(|n| !n.is_empty()) {
            return n.clone();
        }
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "local".into())
    }

    /// `host:port` for a broker named in an endpoint: the configured alias, the embedded broker for
    /// `local-broker`, else the name and port as written.
    pub fn mqtt_broker_addr(&self, name: &str, port: u16) -> String {
        if let Some(addr) = self.mqtt_brokers.get(name) {
            return addr.clone();
        }
        if name == "local-broker" && !self.mqtt_listen.is_empty() {
            return self.mqtt_listen.clone();
        }
        format!("{name}:{port}")
    }

    /// Threads to use: the configured count, else every available core.
    pub fn effective_threads(&self) -> usize {
        if self.threads > 0 {
            return self.threads;
        }
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_is_reported_with_line_and_column() {
        let err =
            NodeConfig::parse("listen: 127.0.0.1:1\nthreds: 2\n", Path::new("c.yaml")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("config c.yaml:2:1:"), "{msg}");
        assert!(msg.contains("threds"), "{msg}");
    }

    #[test]
    fn a_bad_agent_policy_entry_is_reported_with_its_position() {
        let text = "agent_policy:\n  local_destinations: [\"localhost:80\"]\n";
        let msg = NodeConfig::parse(text, Path::new("c.yaml"))
            .unwrap_err()
            .to_string();
        assert!(msg.starts_with("config c.yaml:2:"), "{msg}");
        assert!(msg.contains("names are not allowed"), "{msg}");
        let text = "agent_policy:\n  mcp_commands: [\"python3 'x\"]\n";
        let msg = NodeConfig::parse(text, Path::new("c.yaml"))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("does not parse"), "{msg}");
    }

    #[test]
    fn connection_limits_out_of_bounds_are_reported_with_their_position() {
        let text = "limits:\n  request_head_timeout: 0s\n";
        let e = NodeConfig::parse(text, Path::new("config.yaml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("config.yaml:2:") && e.contains("outside 100ms..1h"),
            "{e}"
        );
        let text = "limits:\n  connections: 0\n";
        let e = NodeConfig::parse(text, Path::new("config.yaml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("config.yaml:2:") && e.contains("outside 1..65536"),
            "{e}"
        );
        let text = "limits:\n  connections: 3000000000000000000\n";
        let e = NodeConfig::parse(text, Path::new("config.yaml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("outside 1..65536"), "{e}");
        let text = "limits:\n  request_body_timeout: 2m\n";
        let c = NodeConfig::parse(text, Path::new("config.yaml")).unwrap();
        assert_eq!(
            c.limits.request_body_timeout,
            std::time::Duration::from_secs(120)
        );
    }

    #[test]
    fn empty_file_means_defaults() {
        let cfg = NodeConfig::parse("", Path::new("c.yaml")).unwrap();
        assert_eq!(cfg.listen, "127.0.0.1:8080");
    }
}
