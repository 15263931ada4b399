//! What a WebAssembly component may touch. Everything is denied unless granted here; grants come
//! from the agent spec's capability entry (`grants:`) or from the component's manifest
//! (`NAME.component.yaml` next to `NAME.wasm`), the spec's winning when both exist.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Grants {
    /// Directories preopened for the component; nothing else of the file system exists for it.
    pub files: Vec<FileGrant>,
    /// Outbound connections as `host:port` (`host:*` for any port). The resolved address must
    /// also pass the agent's egress policy.
    pub network: Vec<String>,
    /// Host interfaces the component may call: `logging`, `keyvalue`, `inference`, `tools`,
    /// `events`.
    pub interfaces: BTreeSet<HostInterface>,
    /// Key-value buckets it may open: each a namespace of its own per component, or `doc:NAME`,
    /// the node's shared CRDT document NAME.
    pub kv_buckets: Vec<String>,
    /// MQTT topics it may publish to through `events`.
    pub topics: Vec<String>,
    /// CPU time one call may take [default: 1s].
    #[serde(with = "humantime_serde")]
    pub time_limit: Option<Duration>,
    /// Linear memory one instance may use [default: the agent's `runtime.memory_limit`, else
    /// 256MiB].
    pub memory_limit: Option<bytesize::ByteSize>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileGrant {
    /// Directory on the node (relative paths resolve against the spec's or manifest's dir).
    pub path: PathBuf,
    /// Where the component sees it [default: `/data`].
    #[serde(default)]
    pub guest: Option<String>,
    #[serde(default)]
    pub writable: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HostInterface {
    Logging,
    Keyvalue,
    Inference,
    Tools,
    Events,
}

impl std::fmt::Display for HostInterface {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HostInterface::Logging => "logging",
            HostInterface::Keyvalue => "keyvalue",
            HostInterface::Inference => "inference",
            HostInterface::Tools => "tools",
            HostInterface::Events => "events",
        })
    }
}

/// `NAME.component.yaml`: what a component's author says it needs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ComponentManifest {
    pub description: Option<String>,
    pub grants: Grants,
}

impl Grants {
    pub fn allows(&self, interface: HostInterface) -> bool {
        self.interfaces.contains(&interface)
    }
}
