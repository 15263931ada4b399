//! What this node accepts from neighbours that place agent runs on it (`mesh.accept_runs:` in
//! config.yaml). A placed spec comes from another node, so it is bounded by this policy instead of
//! the node's own `agent_policy`, and its state lives apart from this node's own agents.
//!
//! Invariant: every default is least privilege. A neighbour's run gets only tools that need no
//! authority over this node: `builtin:current_time`, the agent's own KV (in a namespace scoped to
//! the placing node, see [`placed_kv_namespace`]) and components this node installed, which keep
//! of their manifest's grants only what this policy allows (no files, no network, their KV
//! buckets under the placed scope, only shared documents). It never gets commands, files,
//! sockets, MQTT topics, egress, other agents' state or collections and documents that
//! `mesh.share` does not list, nor more steps, time, tokens or memory than `limits`, unless the
//! operator widens this policy. A refusal never tells the placing node what this node's lists
//! hold: a node not in `from` learns only that it may not place runs here.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use crate::agent_policy::{AgentPolicy, PolicyOf, PolicyScope, Scheme, Violation};
use crate::agent_spec::{
    check_agent_id, AgentSpec, Capability, Endpoint, BUILTIN_TOOLS, DEFAULT_MAX_TOKENS,
};
use crate::config::MeshShare;
use crate::grants::DOCUMENT_BUCKET_PREFIX;

/// `mesh.accept_runs`: which nodes may place runs here, of which agents, with which tools.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AcceptRuns {
    /// Node names that may place runs here; empty: every member of the trust domain. The name is
    /// the one the mesh call carries.
    #[serde(deserialize_with = "node_names")]
    pub from: Vec<String>,
    /// Agent ids whose runs are accepted; empty: any.
    #[serde(deserialize_with = "agent_ids")]
    pub agents: Vec<String>,
    /// Built-in tools (`builtin:NAME`) a placed spec may use. `search_knowledge` and
    /// `doc_get`/`doc_set` also need their collection or document in `mesh.share`;
    /// `http_request` also needs `http` or `https` in `policy.schemes`.
    #[serde(deserialize_with = "builtin_names")]
    pub builtins: Vec<String>,
    /// Installed components (`wasm:NAME`) a placed spec may use; empty: any component this node
    /// installed (a `.wasm` path never).
    #[serde(deserialize_with = "component_names")]
    pub components: Vec<String>,
    /// The most a placed spec may ask for, checked instead of the node's `agent_policy`. Keys not
    /// written here take [`AgentPolicy::placed`]'s values, never `agent_policy`'s defaults.
    #[serde(deserialize_with = "placed_policy")]
    pub policy: AgentPolicy,
    /// The most one placed run may use of this node, and how many one neighbour may run at once.
    pub limits: PlacedLimits,
}

/// `mesh.accept_runs.limits`: ceilings of a placed spec's own limits (a spec asking more is
/// refused), and of what it leaves unset (filled in by [`AcceptRuns::confine`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PlacedLimits {
    /// The spec's `limits.max_steps` at most.
    pub max_steps: u32,
    /// The spec's `limits.timeout` at most, in seconds.
    pub timeout_secs: u64,
    /// The spec's `model_config.max_tokens` (tokens one step, or one completion a component
    /// asks for, may generate) at most.
    pub max_tokens: u32,
    /// The spec's `model_config.context_window` at most.
    pub context_window: u32,
    /// Linear memory of the run's components at most: the spec's `runtime.memory_limit` and
    /// `grants.memory_limit`, and what a component's manifest grants.
    pub memory_limit: bytesize::ByteSize,
    /// Placed runs one neighbour may have in flight here at once; more are answered 429.
    pub max_concurrent_per_node: usize,
}

impl Default for PlacedLimits {
    fn default() -> Self {
        Self {
            max_steps: 16,
            timeout_secs: 300,
            max_tokens: 2048,
            context_window: 8192,
            memory_limit: bytesize::ByteSize::mib(64),
            max_concurrent_per_node: 2,
        }
    }
}

/// `mesh.accept_runs.policy` as written: a key left out keeps the placed default. (`AgentPolicy`'s
/// own `serde(default)` would fill it from the node's defaults: every scheme, `<home>/files`,
/// the `alerts/#` topics; so `policy: {allow_egress: true}` would quietly grant all of that.)
fn placed_policy<'de, D: Deserializer<'de>>(d: D) -> Result<AgentPolicy, D::Error> {
    use crate::agent_policy::{CommandLine, Destination};
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Written {
        schemes: Option<Vec<Scheme>>,
        mcp_commands: Option<Vec<CommandLine>>,
        mcp_commands_with_network: Option<Vec<CommandLine>>,
        file_roots: Option<Vec<std::path::PathBuf>>,
        unix_sockets: Option<Vec<std::path::PathBuf>>,
        mqtt_topics: Option<Vec<String>>,
        allow_egress: Option<bool>,
        local_destinations: Option<Vec<Destination>>,
    }
    let w = Written::deserialize(d)?;
    let base = AgentPolicy::placed();
    Ok(AgentPolicy {
        schemes: w.schemes.unwrap_or(base.schemes),
        mcp_commands: w.mcp_commands.unwrap_or(base.mcp_commands),
        mcp_commands_with_network: w
            .mcp_commands_with_network
            .unwrap_or(base.mcp_commands_with_network),
        file_roots: w.file_roots.unwrap_or(base.file_roots),
        unix_sockets: w.unix_sockets.unwrap_or(base.unix_sockets),
        mqtt_topics: w.mqtt_topics.unwrap_or(base.mqtt_topics),
        allow_egress: w.allow_egress.unwrap_or(base.allow_egress),
        local_destinations: w.local_destinations.unwrap_or(base.local_destinations),
    })
}

/// A list of names, each checked when the config is read, so a typo is an error at its line
/// instead of a list that silently matches nothing.
fn checked_names<'de, D: Deserializer<'de>>(
    d: D,
    check: fn(&str) -> Result<(), String>,
) -> Result<Vec<String>, D::Error> {
    let names = Vec::<String>::deserialize(d)?;
    for name in &names {
        check(name).map_err(serde::de::Error::custom)?;
    }
    Ok(names)
}

fn node_names<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    checked_names(d, |n| {
        crate::config::check_node_name(n).map_err(|e| format!("mesh.accept_runs.from: {e}"))
    })
}

fn agent_ids<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    checked_names(d, |id| {
        check_agent_id(id).map_err(|e| format!("mesh.accept_runs.agents: {e}"))
    })
}

fn builtin_names<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    checked_names(d, |name| {
        if BUILTIN_TOOLS.contains(&name) {
            return Ok(());
        }
        Err(format!(
            "mesh.accept_runs.builtins: no built-in tool '{}' (write the name without `builtin:`); built-ins are {}",
            name.escape_debug(),
            BUILTIN_TOOLS.join(", ")
        ))
    })
}

fn component_names<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    checked_names(d, |name| {
        // The rule `edgewise component add` names components by.
        let ok = !name.is_empty()
            && name.len() <= 64
            && !name.starts_with('-')
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if ok {
            return Ok(());
        }
        Err(format!(
            "mesh.accept_runs.components: '{}' is not an installed component's name (1–64 letters, digits, '-' and '_', as `edgewise component add` names it; no path, no .wasm)",
            name.escape_debug()
        ))
    })
}

impl Default for AcceptRuns {
    fn default() -> Self {
        Self {
            from: Vec::new(),
            agents: Vec::new(),
            builtins: vec!["current_time".into(), "kv_get".into(), "kv_set".into()],
            components: Vec::new(),
            policy: AgentPolicy::placed(),
            limits: PlacedLimits::default(),
        }
    }
}

/// The KV namespace of agent `agent_id` in runs that node `from` placed here. Node names and agent
/// ids cannot contain `:`, so it never equals another node's, nor a local agent's `agent:<id>`: a
/// neighbour naming a local agent's id reaches none of that agent's data. Its components' buckets
/// live under it too (`mesh:<from>:<agent>:wasm:<component>:<bucket>`).
pub fn placed_kv_namespace(from: &str, agent_id: &str) -> String {
    format!("mesh:{from}:{agent_id}")
}

/// Why this node refuses a run a neighbour placed here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacedRefusal {
    /// The calling node is not in `mesh.accept_runs.from`. Nothing of its spec was looked at, and
    /// it is told only this: not the list, nor which of its keys would have passed.
    #[error("node '{from}' may not place runs here")]
    Caller { from: String },
    /// The spec asks for more than `mesh.accept_runs` allows: every reason, each at the spec's
    /// position and naming the key to widen (never what this node's lists hold).
    #[error("{}", .0.join("; "))]
    Spec(Vec<String>),
}

impl PlacedRefusal {
    /// What the placing node is told.
    pub fn reasons(&self) -> Vec<String> {
        match self {
            Self::Caller { .. } => vec![self.to_string()],
            Self::Spec(reasons) => reasons.clone(),
        }
    }

    /// What this node's own audit log keeps: the reasons, and for a caller, which key refused it.
    pub fn audit_detail(&self) -> String {
        match self {
            Self::Caller { from } => format!(
                "node '{from}' is not in mesh.accept_runs.from (add it there to accept its runs)"
            ),
            Self::Spec(reasons) => reasons.join("; "),
        }
    }
}

impl AcceptRuns {
    /// Every reason this node refuses `spec`, placed here by node `from` (`Ok`: accepted). Each
    /// reason names the spec's position where it has one and the config key to widen. `share` is
    /// the node's `mesh.share`: the only collections and documents a placed run may use, as they
    /// are the only ones neighbours may read anyway. `scope` resolves the spec's relative paths.
    pub fn check(
        &self,
        from: &str,
        spec: &AgentSpec,
        share: &MeshShare,
        scope: &PolicyScope<'_>,
    ) -> Result<(), PlacedRefusal> {
        // First and alone: a node that may not place runs learns nothing more of this node.
        self.check_caller(from)?;
        let mut found = Vec::new();
        if !self.agents.is_empty() && !self.agents.contains(&spec.agent_id) {
            found.push(Violation {
                key: vec!["agent_id".into()],
                message: format!(
                    "agent '{}' is not accepted from neighbours here (add it to mesh.accept_runs.agents to accept its runs)",
                    spec.agent_id
                ),
            });
        }
        found.extend(self.policy.violations(spec, scope, PolicyOf::Placed));
        found.extend(self.limits.violations(spec));
        found.extend(model_file(spec));
        for (i, cap) in spec.capabilities.iter().enumerate() {
            found.extend(self.capability_violations(i, cap, share));
        }
        found.extend(self.knowledge_violation(spec, share));
        if found.is_empty() {
            return Ok(());
        }
        Err(PlacedRefusal::Spec(
            found
                .into_iter()
                .map(|v| spec.refusal(v).to_string())
                .collect(),
        ))
    }

    /// Whether node `from` may place runs here at all (`from`), before anything of its spec is
    /// read: if not, all it is told is [`PlacedRefusal::Caller`].
    pub fn check_caller(&self, from: &str) -> Result<(), PlacedRefusal> {
        if self.from.is_empty() || self.from.iter().any(|n| n == from) {
            return Ok(());
        }
        Err(PlacedRefusal::Caller {
            from: from.to_owned(),
        })
    }

    /// Whether node `from`, with `in_flight` runs placed here still running, may start another
    /// (`limits.max_concurrent_per_node`); else the reason for its 429.
    pub fn admit(&self, from: &str, in_flight: usize) -> Result<(), String> {
        if in_flight < self.limits.max_concurrent_per_node {
            return Ok(());
        }
        Err(format!(
            "node '{from}' already has {in_flight} runs placed here in flight (mesh.accept_runs.limits.max_concurrent_per_node)"
        ))
    }

    /// Fills what a spec that passed [`check`](Self::check) leaves unset with this node's
    /// ceilings, so no default (the runner's, a component manifest's) takes it past them: the
    /// context window, the tokens of one step and its components' memory.
    pub fn confine(&self, spec: &mut AgentSpec) {
        let l = &self.limits;
        let m = &mut spec.model_config;
        m.context_window = Some(
            m.context_window
                .unwrap_or(l.context_window)
                .min(l.context_window),
        );
        m.max_tokens = Some(m.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS).min(l.max_tokens));
        let memory = spec.runtime.memory_limit.unwrap_or(l.memory_limit);
        spec.runtime.memory_limit = Some(memory.min(l.memory_limit));
        spec.limits.max_steps = spec.limits.max_steps.min(l.max_steps);
        spec.limits.timeout = spec.limits.timeout.min(Duration::from_secs(l.timeout_secs));
    }

    /// Whether a component in a placed run may keep any network grant: only where `policy`
    /// lets placed runs reach something (egress, or listed local destinations).
    pub fn grants_network(&self) -> bool {
        self.policy.allow_egress || !self.policy.local_destinations.is_empty()
    }

    /// What capability `i` asks for beyond this policy, besides what `policy` checks.
    fn capability_violations(
        &self,
        i: usize,
        cap: &Capability,
        share: &MeshShare,
    ) -> Vec<Violation> {
        let name = &cap.name;
        let mut found = Vec::new();
        match &cap.endpoint {
            Endpoint::Builtin(tool) if !self.builtins.contains(tool) => {
                found.push(Violation {
                    key: cap_key(i, &["endpoint"]),
                    message: format!(
                        "capability '{name}' uses builtin:{tool}, which mesh.accept_runs.builtins does not list (add it there to let neighbours' runs use it)"
                    ),
                });
            }
            // Listed: the model writes its URLs, so it needs the schemes too.
            Endpoint::Builtin(tool) if tool == "http_request" => {
                let web = |s: &Scheme| matches!(s, Scheme::Http | Scheme::Https);
                if !self.policy.schemes.iter().any(web) {
                    found.push(Violation {
                        key: cap_key(i, &["endpoint"]),
                        message: format!(
                            "capability '{name}' uses builtin:http_request, which needs http or https in mesh.accept_runs.policy.schemes as well (add the schemes its URLs may use there)"
                        ),
                    });
                }
            }
            // Listed: still only what `mesh.share` lets neighbours read (the collection's
            // `shareable` flag guards exports, not searches).
            Endpoint::Builtin(tool) if tool == "search_knowledge" => {
                let unshared = cap.collection.as_ref().filter(|c| !shared(&share.collections, c));
                if let Some(c) = unshared {
                    let (key, who) = (cap_key(i, &["collection"]), format!("capability '{name}'"));
                    found.push(not_shared(key, &who, "collection", c));
                }
            }
            Endpoint::Builtin(tool) if tool == "doc_get" || tool == "doc_set" => {
                let unshared = cap.document.as_ref().filter(|d| !shared(&share.documents, d));
                if let Some(d) = unshared {
                    let (key, who) = (cap_key(i, &["document"]), format!("capability '{name}'"));
                    found.push(not_shared(key, &who, "document", d));
                }
            }
            // `wasm:NAME` is a component the operator installed (and signed, where signatures
            // are required); `wasm:PATH.wasm` would load any file the spec names, with grants
            // written by the neighbour. Only the first is this node's own code.
            Endpoint::Wasm(path) => match cap.endpoint.installed_component() {
                None => found.push(Violation {
                    key: cap_key(i, &["endpoint"]),
                    message: format!(
                        "capability '{name}' loads the file wasm:{}; a placed run may use only components installed on this node, by name (install it with `edgewise component add` and name it wasm:NAME)",
                        path.display()
                    ),
                }),
                Some(component) => {
                    if !self.components.is_empty() && !self.components.contains(&component) {
                        found.push(Violation {
                            key: cap_key(i, &["endpoint"]),
                            message: format!(
                                "capability '{name}' uses the component '{component}', which mesh.accept_runs.components does not list (add it there to let neighbours' runs use it)"
                            ),
                        });
                    }
                    found.extend(self.grants_violations(i, cap, share));
                }
            },
            _ => {}
        }
        found
    }

    /// What a component capability's own `grants:` ask beyond this policy: shared documents
    /// `mesh.share` does not list, network where `policy` reaches nothing. (Files: `policy`;
    /// memory: `limits`.)
    fn grants_violations(&self, i: usize, cap: &Capability, share: &MeshShare) -> Vec<Violation> {
        let Some(grants) = &cap.grants else {
            return Vec::new();
        };
        let name = &cap.name;
        let mut found = Vec::new();
        for (j, bucket) in grants.kv_buckets.iter().enumerate() {
            let Some(doc) = bucket.strip_prefix(DOCUMENT_BUCKET_PREFIX) else {
                continue;
            };
            if !shared(&share.documents, doc) {
                let key = cap_key(i, &["grants", "kv_buckets", &j.to_string()]);
                let who = format!("capability '{name}'");
                found.push(not_shared(key, &who, "document", doc));
            }
        }
        if !grants.network.is_empty() && !self.grants_network() {
            found.push(Violation {
                key: cap_key(i, &["grants", "network"]),
                message: format!(
                    "capability '{name}' grants its component the network ({}), but mesh.accept_runs.policy lets a neighbour's run reach nothing (set mesh.accept_runs.policy.allow_egress, or list mesh.accept_runs.policy.local_destinations)",
                    grants.network.join(", ")
                ),
            });
        }
        found
    }

    /// `memory.knowledge`: retrieval before the first step reads a collection as
    /// `search_knowledge` does.
    fn knowledge_violation(&self, spec: &AgentSpec, share: &MeshShare) -> Option<Violation> {
        let k = spec.memory.knowledge.as_ref()?;
        if !self.builtins.iter().any(|b| b == "search_knowledge") {
            return Some(Violation {
                key: vec!["memory".into(), "knowledge".into()],
                message: "memory.knowledge searches a collection, which needs search_knowledge in mesh.accept_runs.builtins (add it there to let neighbours' runs use it)".into(),
            });
        }
        if shared(&share.collections, &k.collection) {
            return None;
        }
        let key = vec!["memory".into(), "knowledge".into(), "collection".into()];
        Some(not_shared(
            key,
            "memory.knowledge",
            "collection",
            &k.collection,
        ))
    }
}

impl PlacedLimits {
    /// Every limit `spec` asks above these ceilings, naming the spec key, the ceiling and the
    /// config key that raises it.
    fn violations(&self, spec: &AgentSpec) -> Vec<Violation> {
        let mut found = Vec::new();
        let mut over = |key: &[&str], asked: String, ceiling: String, config: &str| {
            found.push(Violation {
                key: key.iter().map(|s| (*s).to_owned()).collect(),
                message: format!(
                    "{} is {asked}, more than this node gives a neighbour's run ({ceiling}) (ask for less, or raise mesh.accept_runs.limits.{config} in this node's config.yaml)",
                    key.join(".")
                ),
            });
        };
        let l = &spec.limits;
        if l.max_steps > self.max_steps {
            let (asked, max) = (l.max_steps.to_string(), self.max_steps.to_string());
            over(&["limits", "max_steps"], asked, max, "max_steps");
        }
        let timeout = Duration::from_secs(self.timeout_secs);
        if l.timeout > timeout {
            let show = |d: Duration| humantime::format_duration(d).to_string();
            over(
                &["limits", "timeout"],
                show(l.timeout),
                show(timeout),
                "timeout_secs",
            );
        }
        let m = &spec.model_config;
        if let Some(t) = m.max_tokens.filter(|t| *t > self.max_tokens) {
            let (asked, max) = (t.to_string(), self.max_tokens.to_string());
            over(&["model_config", "max_tokens"], asked, max, "max_tokens");
        }
        if let Some(w) = m.context_window.filter(|w| *w > self.context_window) {
            let (asked, max) = (w.to_string(), self.context_window.to_string());
            over(
                &["model_config", "context_window"],
                asked,
                max,
                "context_window",
            );
        }
        let memory = self.memory_limit;
        if let Some(b) = spec.runtime.memory_limit.filter(|b| *b > memory) {
            let (asked, max) = (b.to_string(), memory.to_string());
            over(&["runtime", "memory_limit"], asked, max, "memory_limit");
        }
        for (i, cap) in spec.capabilities.iter().enumerate() {
            let asked = cap.grants.as_ref().and_then(|g| g.memory_limit);
            if let Some(b) = asked.filter(|b| *b > memory) {
                let idx = i.to_string();
                let key = ["capabilities", idx.as_str(), "grants", "memory_limit"];
                over(&key, b.to_string(), memory.to_string(), "memory_limit");
            }
        }
        found
    }
}

/// A placed spec names its model by the name this node serves it under: a path would have this
/// node look at its own file system on a neighbour's behalf.
fn model_file(spec: &AgentSpec) -> Option<Violation> {
    let path = spec.model_config.path.as_deref()?;
    names_a_file(path).then(|| Violation {
        key: vec!["model_config".into(), "path".into()],
        message: format!(
            "model_config.path '{}' names a file; a placed run names its model by the catalog name this node serves it under (e.g. qwen2.5-coder-0.5b-instruct)",
            path.escape_debug()
        ),
    })
}

/// Whether a `model_config.path` is written as a file path rather than a model's name.
pub fn names_a_file(model: &str) -> bool {
    model.contains('/')
        || model.contains('\\')
        || model.starts_with('.')
        || model.starts_with('~')
        || model.to_ascii_lowercase().ends_with(".gguf")
}

/// The key of field `parts` of capability `i`.
fn cap_key(i: usize, parts: &[&str]) -> Vec<String> {
    let mut key = vec!["capabilities".to_owned(), i.to_string()];
    key.extend(parts.iter().map(|p| (*p).to_owned()));
    key
}

fn shared(list: &[String], name: &str) -> bool {
    list.iter().any(|n| n == name)
}

/// `who` uses the `what` (`collection`, `document`) `name`, which `mesh.share` does not list.
fn not_shared(key: Vec<String>, who: &str, what: &str, name: &str) -> Violation {
    Violation {
        key,
        message: format!(
            "{who} uses the {what} '{name}', which is not in this node's mesh.share.{what}s (a placed run reads only what neighbours may read; add it to mesh.share.{what}s to share it)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const HOME: &str = "/srv/edgewise";
    /// Where a placed spec's relative paths resolve: not under `<home>/agents`, so a placed spec
    /// has no directory of its own to grant.
    const PLACED_DIR: &str = "/srv/edgewise/placed-runs";

    fn spec(yaml: &str) -> AgentSpec {
        AgentSpec::parse(yaml, Path::new("spec")).unwrap()
    }

    fn check(accept: &AcceptRuns, from: &str, yaml: &str) -> Result<(), Vec<String>> {
        check_shared(accept, from, yaml, &MeshShare::default())
    }

    fn check_shared(
        accept: &AcceptRuns,
        from: &str,
        yaml: &str,
        share: &MeshShare,
    ) -> Result<(), Vec<String>> {
        let scope = PolicyScope {
            home: Path::new(HOME),
            spec_dir: Path::new(PLACED_DIR),
        };
        accept
            .check(from, &spec(yaml), share, &scope)
            .map_err(|r| r.reasons())
    }

    fn caps(entries: &str) -> String {
        format!("agent_id: probe\ncapabilities:\n{entries}")
    }

    fn one_reason_with(reasons: &[String], needles: &[&str]) {
        assert!(
            reasons
                .iter()
                .any(|r| needles.iter().all(|n| r.contains(n))),
            "no reason with {needles:?} in {reasons:#?}"
        );
    }

    #[test]
    fn a_spec_of_current_time_and_its_own_kv_is_accepted_by_default() {
        let yaml = caps(
            "  - name: now\n    endpoint: \"builtin:current_time\"\n  - name: remember\n    endpoint: \"builtin:kv_set\"\n  - name: recall\n    endpoint: \"builtin:kv_get\"\n",
        );
        assert_eq!(check(&AcceptRuns::default(), "node-a", &yaml), Ok(()));
        // A model-only spec too.
        assert_eq!(
            check(&AcceptRuns::default(), "node-a", "agent_id: probe\n"),
            Ok(())
        );
    }

    #[test]
    fn the_default_refuses_commands_files_egress_and_collections_with_every_reason() {
        let yaml = format!(
            "{}workflow_policy:\n  egress_allowed: true\n",
            caps(concat!(
                "  - name: shell\n    endpoint: \"mcp+stdio:sh -c 'touch /tmp/x'\"\n",
                "  - name: everything\n    endpoint: \"builtin:read_file\"\n    root: /\n",
                "  - name: manuals\n    endpoint: \"builtin:search_knowledge\"\n    collection: patients\n",
                "  - name: docker\n    endpoint: \"unix:///var/run/docker.sock\"\n",
                "  - name: tool\n    endpoint: \"wasm:/tmp/evil.wasm\"\n",
            ))
        );
        let reasons = check(&AcceptRuns::default(), "node-a", &yaml).unwrap_err();
        // All of them at once, each at its position and naming the key to widen.
        one_reason_with(
            &reasons,
            &["spec:4:5:", "'shell'", "mesh.accept_runs.policy.schemes"],
        );
        one_reason_with(
            &reasons,
            &[
                "'everything'",
                "builtin:read_file",
                "mesh.accept_runs.builtins",
            ],
        );
        one_reason_with(
            &reasons,
            &[
                "spec:7:5:",
                "mesh.accept_runs.policy.file_roots",
                "the files of /,",
            ],
        );
        one_reason_with(
            &reasons,
            &[
                "'manuals'",
                "builtin:search_knowledge",
                "mesh.accept_runs.builtins",
            ],
        );
        one_reason_with(&reasons, &["'docker'", "mesh.accept_runs.policy.schemes"]);
        one_reason_with(
            &reasons,
            &["'tool'", "wasm:/tmp/evil.wasm", "installed on this node"],
        );
        one_reason_with(
            &reasons,
            &["egress_allowed", "mesh.accept_runs.policy.allow_egress"],
        );
        assert!(
            reasons.iter().all(|r| !r.contains("agent_policy.")),
            "a placed spec is never checked against the node's agent_policy: {reasons:#?}"
        );
        assert!(
            reasons.iter().all(|r| !r.contains(HOME)),
            "a neighbour is not told where this node keeps its files: {reasons:#?}"
        );
        assert_eq!(reasons.len(), 7, "{reasons:#?}");
    }

    #[test]
    fn knowledge_and_documents_need_the_builtin_and_a_shared_name() {
        let accept = AcceptRuns {
            builtins: vec!["search_knowledge".into(), "doc_get".into()],
            ..AcceptRuns::default()
        };
        let share = MeshShare {
            collections: vec!["manuals".into()],
            documents: vec!["plant".into()],
            ..MeshShare::default()
        };
        let search = |c: &str| {
            caps(&format!(
                "  - name: s\n    endpoint: \"builtin:search_knowledge\"\n    collection: {c}\n"
            ))
        };
        assert_eq!(
            check_shared(&accept, "node-a", &search("manuals"), &share),
            Ok(())
        );
        let reasons = check_shared(&accept, "node-a", &search("patients"), &share).unwrap_err();
        one_reason_with(&reasons, &["'patients'", "mesh.share.collections"]);
        let doc =
            caps("  - name: d\n    endpoint: \"builtin:doc_get\"\n    document: shift-notes\n");
        let reasons = check_shared(&accept, "node-a", &doc, &share).unwrap_err();
        one_reason_with(&reasons, &["'shift-notes'", "mesh.share.documents"]);
        // Retrieval before the first step is a search too.
        let memory = "agent_id: probe\nmemory:\n  knowledge:\n    collection: patients\n";
        let reasons = check(&AcceptRuns::default(), "node-a", memory).unwrap_err();
        one_reason_with(&reasons, &["memory.knowledge", "search_knowledge"]);
        let reasons = check_shared(&accept, "node-a", memory, &share).unwrap_err();
        one_reason_with(&reasons, &["'patients'", "mesh.share.collections"]);
    }

    #[test]
    fn from_and_agents_lists_narrow_who_may_place_what() {
        let accept = AcceptRuns {
            from: vec!["node-a".into()],
            agents: vec!["probe".into()],
            ..AcceptRuns::default()
        };
        assert_eq!(check(&accept, "node-a", "agent_id: probe\n"), Ok(()));
        let reasons = check(&accept, "node-a", "agent_id: other\n").unwrap_err();
        one_reason_with(&reasons, &["agent 'other'", "mesh.accept_runs.agents"]);
        // Empty lists: every member, any agent.
        assert_eq!(
            check(&AcceptRuns::default(), "node-c", "agent_id: other\n"),
            Ok(())
        );
    }

    /// The attack: a member probes what this node's lists hold, and which of its spec's keys pass.
    #[test]
    fn a_node_not_in_from_learns_only_that_it_may_not_place_runs_here() {
        let accept = AcceptRuns {
            from: vec!["node-a".into(), "secret-gateway".into()],
            agents: vec!["probe".into()],
            ..AcceptRuns::default()
        };
        let scope = PolicyScope {
            home: Path::new(HOME),
            spec_dir: Path::new(PLACED_DIR),
        };
        let overreach = caps("  - name: shell\n    endpoint: \"mcp+stdio:sh\"\n");
        let refusal = accept
            .check("node-c", &spec(&overreach), &MeshShare::default(), &scope)
            .unwrap_err();
        assert_eq!(
            refusal,
            PlacedRefusal::Caller {
                from: "node-c".into()
            }
        );
        // One generic reason: no list, no verdict on the spec.
        assert_eq!(refusal.reasons(), ["node 'node-c' may not place runs here"]);
        // This node's own audit record says which key refused it.
        assert!(
            refusal.audit_detail().contains("mesh.accept_runs.from"),
            "{refusal:?}"
        );
    }

    #[test]
    fn reasons_name_the_key_to_widen_but_never_echo_this_nodes_lists() {
        let accept = AcceptRuns {
            agents: vec!["hidden-agent".into()],
            builtins: vec!["current_time".into(), "doc_get".into()],
            components: vec!["hidden-component".into()],
            ..AcceptRuns::default()
        };
        let yaml = format!(
            "agent_id: probe\ncapabilities:\n{}{}",
            "  - name: mem\n    endpoint: \"builtin:kv_get\"\n",
            "  - name: tool\n    endpoint: \"wasm:sensor-reader\"\n",
        );
        let reasons = check(&accept, "node-a", &yaml).unwrap_err();
        one_reason_with(&reasons, &["agent 'probe'", "mesh.accept_runs.agents"]);
        one_reason_with(
            &reasons,
            &["'mem'", "builtin:kv_get", "mesh.accept_runs.builtins"],
        );
        one_reason_with(
            &reasons,
            &["'tool'", "'sensor-reader'", "mesh.accept_runs.components"],
        );
        for listed in [
            "hidden-agent",
            "doc_get",
            "hidden-component",
            "current_time",
        ] {
            assert!(
                reasons.iter().all(|r| !r.contains(listed)),
                "'{listed}' echoed: {reasons:#?}"
            );
        }
        // A listed component passes.
        let listed = caps("  - name: tool\n    endpoint: \"wasm:hidden-component\"\n");
        let accept = AcceptRuns {
            components: vec!["hidden-component".into()],
            ..AcceptRuns::default()
        };
        assert_eq!(check(&accept, "node-a", &listed), Ok(()));
    }

    #[test]
    fn a_spec_asking_more_than_a_ceiling_is_refused_naming_both_and_the_key_to_raise() {
        let yaml = concat!(
            "agent_id: probe\n",
            "runtime:\n  memory_limit: 1GiB\n",
            "model_config:\n  max_tokens: 4096\n  context_window: 32768\n",
            "limits:\n  max_steps: 100\n  timeout: 1h\n",
        );
        let reasons = check(&AcceptRuns::default(), "node-a", yaml).unwrap_err();
        for (key, ceiling, config) in [
            (
                "limits.max_steps is 100",
                "(16)",
                "mesh.accept_runs.limits.max_steps",
            ),
            (
                "limits.timeout is 1h",
                "(5m)",
                "mesh.accept_runs.limits.timeout_secs",
            ),
            (
                "model_config.max_tokens is 4096",
                "(2048)",
                "mesh.accept_runs.limits.max_tokens",
            ),
            (
                "model_config.context_window is 32768",
                "(8192)",
                "mesh.accept_runs.limits.context_window",
            ),
            (
                "runtime.memory_limit is",
                "(64.0 MiB)",
                "mesh.accept_runs.limits.memory_limit",
            ),
        ] {
            one_reason_with(&reasons, &[key, ceiling, config]);
        }
        assert_eq!(reasons.len(), 5, "{reasons:#?}");
        // A component capability's own memory grant too.
        let grants = caps(
            "  - name: t\n    endpoint: \"wasm:sensor-reader\"\n    grants:\n      memory_limit: 128MiB\n",
        );
        let reasons = check(&AcceptRuns::default(), "node-a", &grants).unwrap_err();
        one_reason_with(
            &reasons,
            &[
                "capabilities.0.grants.memory_limit",
                "mesh.accept_runs.limits.memory_limit",
            ],
        );
        // Raised by the operator: accepted.
        let raised = AcceptRuns {
            limits: PlacedLimits {
                max_steps: 100,
                timeout_secs: 3600,
                max_tokens: 4096,
                context_window: 32768,
                memory_limit: bytesize::ByteSize::gib(1),
                ..PlacedLimits::default()
            },
            ..AcceptRuns::default()
        };
        assert_eq!(check(&raised, "node-a", yaml), Ok(()));
    }

    #[test]
    fn what_a_placed_spec_leaves_unset_is_filled_with_the_ceilings() {
        let accept = AcceptRuns::default();
        let mut s = spec("agent_id: probe\n");
        accept.confine(&mut s);
        assert_eq!(s.model_config.context_window, Some(8192));
        // The runner's default step tokens, under the ceiling.
        assert_eq!(s.model_config.max_tokens, Some(DEFAULT_MAX_TOKENS));
        assert_eq!(s.runtime.memory_limit, Some(bytesize::ByteSize::mib(64)));
        let low = AcceptRuns {
            limits: PlacedLimits {
                max_tokens: 100,
                ..PlacedLimits::default()
            },
            ..AcceptRuns::default()
        };
        let mut s = spec("agent_id: probe\nmodel_config:\n  context_window: 2048\n");
        low.confine(&mut s);
        assert_eq!(s.model_config.max_tokens, Some(100));
        assert_eq!(s.model_config.context_window, Some(2048));
    }

    #[test]
    fn a_placed_spec_names_its_model_never_a_file_of_this_node() {
        for path in [
            "/etc/passwd",
            "../models/x.gguf",
            "phi.gguf",
            "~/m",
            ".hidden",
        ] {
            let yaml = format!("agent_id: probe\nmodel_config:\n  path: \"{path}\"\n");
            let reasons = check(&AcceptRuns::default(), "node-a", &yaml).unwrap_err();
            one_reason_with(
                &reasons,
                &["spec:3:3:", "model_config.path", "names a file"],
            );
        }
        let named = "agent_id: probe\nmodel_config:\n  path: qwen2.5-coder-0.5b-instruct\n";
        assert_eq!(check(&AcceptRuns::default(), "node-a", named), Ok(()));
    }

    #[test]
    fn http_request_also_needs_a_web_scheme_in_the_placed_policy() {
        let yaml = caps("  - name: fetch\n    endpoint: \"builtin:http_request\"\n");
        let listed = AcceptRuns {
            builtins: vec!["http_request".into()],
            ..AcceptRuns::default()
        };
        let reasons = check(&listed, "node-a", &yaml).unwrap_err();
        one_reason_with(
            &reasons,
            &[
                "'fetch'",
                "builtin:http_request",
                "mesh.accept_runs.policy.schemes",
            ],
        );
        let with_scheme = AcceptRuns {
            policy: AgentPolicy {
                schemes: vec![Scheme::Builtin, Scheme::Https],
                ..AgentPolicy::placed()
            },
            ..listed
        };
        assert_eq!(check(&with_scheme, "node-a", &yaml), Ok(()));
    }

    #[test]
    fn a_components_own_grants_stay_within_share_and_the_placed_network() {
        let share = MeshShare {
            documents: vec!["plant".into()],
            ..MeshShare::default()
        };
        let yaml = caps(concat!(
            "  - name: t\n    endpoint: \"wasm:sensor-reader\"\n    grants:\n",
            "      kv_buckets: [\"doc:plant\", \"doc:payroll\", predictions]\n",
            "      network: [\"10.0.0.9:502\"]\n",
        ));
        let reasons = check_shared(&AcceptRuns::default(), "node-a", &yaml, &share).unwrap_err();
        one_reason_with(&reasons, &["'payroll'", "mesh.share.documents"]);
        one_reason_with(
            &reasons,
            &["10.0.0.9:502", "mesh.accept_runs.policy.allow_egress"],
        );
        assert_eq!(reasons.len(), 2, "{reasons:#?}");
    }

    #[test]
    fn one_neighbour_runs_at_most_max_concurrent_per_node_at_once() {
        let accept = AcceptRuns::default();
        assert_eq!(accept.admit("node-a", 0), Ok(()));
        assert_eq!(accept.admit("node-a", 1), Ok(()));
        let why = accept.admit("node-a", 2).unwrap_err();
        assert!(
            why.contains("node 'node-a'")
                && why.contains("mesh.accept_runs.limits.max_concurrent_per_node"),
            "{why}"
        );
    }

    #[test]
    fn installed_components_pass_and_an_operator_can_widen_the_policy() {
        let component = caps("  - name: t\n    endpoint: \"wasm:sensor-reader\"\n");
        assert_eq!(check(&AcceptRuns::default(), "node-a", &component), Ok(()));
        let yaml = caps(
            "  - name: logs\n    endpoint: \"builtin:read_file\"\n    root: /srv/edgewise/files/logs\n",
        );
        assert!(check(&AcceptRuns::default(), "node-a", &yaml).is_err());
        let widened = AcceptRuns {
            builtins: vec!["read_file".into()],
            policy: AgentPolicy {
                file_roots: vec!["files/logs".into()],
                ..AgentPolicy::placed()
            },
            ..AcceptRuns::default()
        };
        assert_eq!(check(&widened, "node-a", &yaml), Ok(()));
    }

    #[test]
    fn placed_kv_lives_apart_from_local_agents_and_other_nodes() {
        let ns = placed_kv_namespace("node-a", "shift-keeper");
        assert_eq!(ns, "mesh:node-a:shift-keeper");
        assert_ne!(ns, "agent:shift-keeper");
        assert_ne!(ns, placed_kv_namespace("node-b", "shift-keeper"));
    }

    #[test]
    fn accept_runs_parse_from_config_with_least_privilege_defaults() {
        let cfg = crate::NodeConfig::parse(
            "mesh:\n  trust_domain: plant\n  accept_runs:\n    from: [node-a]\n    policy:\n      allow_egress: true\n",
            Path::new("c.yaml"),
        )
        .unwrap();
        let accept = cfg.mesh.unwrap().accept_runs;
        assert_eq!(accept.from, ["node-a"]);
        assert!(accept.policy.allow_egress);
        // Keys not written keep their defaults: `policy:` given in part is still the placed
        // policy, not the node's `agent_policy` default.
        assert!(accept.policy.file_roots.is_empty(), "{accept:?}");
        assert!(accept.policy.mqtt_topics.is_empty(), "{accept:?}");
        assert_eq!(accept.builtins, AcceptRuns::default().builtins);
        let cfg = crate::NodeConfig::parse("mesh:\n  trust_domain: plant\n", Path::new("c.yaml"))
            .unwrap();
        assert_eq!(cfg.mesh.unwrap().accept_runs, AcceptRuns::default());
        let err = crate::NodeConfig::parse(
            "mesh:\n  trust_domain: plant\n  accept_runs:\n    form: [node-a]\n",
            Path::new("c.yaml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("form"), "{err}");
    }

    /// `mesh.accept_runs` of a config whose `accept_runs:` block is `accept` (indented lines).
    fn parse(accept: &str) -> Result<AcceptRuns, String> {
        crate::NodeConfig::parse(
            &format!("mesh:\n  trust_domain: plant\n  accept_runs:\n{accept}"),
            Path::new("c.yaml"),
        )
        .map(|c| c.mesh.unwrap().accept_runs)
        .map_err(|e| e.to_string())
    }

    #[test]
    fn accept_runs_limits_parse_with_their_defaults_and_refuse_unknown_keys() {
        let accept = parse("    limits:\n      max_steps: 4\n      memory_limit: 32MiB\n").unwrap();
        assert_eq!(accept.limits.max_steps, 4);
        assert_eq!(accept.limits.memory_limit, bytesize::ByteSize::mib(32));
        // Unwritten keys keep the defaults.
        assert_eq!(accept.limits.timeout_secs, 300);
        assert_eq!(accept.limits.max_tokens, 2048);
        assert_eq!(accept.limits.context_window, 8192);
        assert_eq!(accept.limits.max_concurrent_per_node, 2);
        let err = parse("    limits:\n      max_step: 4\n").unwrap_err();
        assert!(err.contains("max_step"), "{err}");
    }

    #[test]
    fn names_in_accept_runs_are_checked_when_the_config_is_read() {
        for (accept, says) in [
            ("    builtins: [shell]\n", "no built-in tool 'shell'"),
            ("    builtins: [\"builtin:kv_get\"]\n", "without `builtin:`"),
            ("    from: [\"node/a\"]\n", "not usable in the mesh"),
            ("    agents: [\"a b\"]\n", "agent_id"),
            (
                "    components: [x.wasm]\n",
                "not an installed component's name",
            ),
        ] {
            let err = parse(accept).unwrap_err();
            assert!(
                err.contains("mesh.accept_runs.") && err.contains(says),
                "{accept}: {err}"
            );
        }
        let ok = parse(
            "    from: [node-a]\n    agents: [probe]\n    builtins: [http_request]\n    components: [sensor-reader]\n",
        )
        .unwrap();
        assert_eq!(ok.components, ["sensor-reader"]);
    }
}
