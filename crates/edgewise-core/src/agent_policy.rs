//! The node's agent policy (`agent_policy:` in config.yaml): the most any agent spec of this node's
//! may ask for. A spec alone never decides what it starts, reads or reaches: it is checked against
//! this policy before any of its tools is built, however it arrived (the API, `agent run`). A run a
//! neighbour placed here is checked against `mesh.accept_runs.policy` instead (`accept_runs`),
//! an `AgentPolicy` too, whose defaults are `AgentPolicy::placed`.
//!
//! Invariant: every default is the least privilege that still lets a node run its own agents:
//! no commands, no sockets, no egress, files only under `<home>/files` and the spec's own directory
//! under `<home>/agents`, MQTT topics only under `alerts/` and the agent's own `agents/<id>/`.

use std::net::{IpAddr, SocketAddr};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::agent_spec::{AgentSpec, Endpoint};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentPolicy {
    /// Endpoint schemes a spec may use at all; each is further bounded by its own list below.
    pub schemes: Vec<Scheme>,
    /// `mcp+stdio` command lines a spec may start, compared word by word (shell quoting rules).
    /// Empty: no spec may start a process.
    pub mcp_commands: Vec<CommandLine>,
    /// Of those, the command lines that keep the node's network when their agent has
    /// `egress_allowed: false` (a server that talks to a device on the LAN). Every other MCP
    /// server of such an agent runs in a network namespace of its own with only loopback, and is
    /// refused where the node cannot create one.
    pub mcp_commands_with_network: Vec<CommandLine>,
    /// Directories whose files a spec may grant (`root:` of file tools, `grants.files` of
    /// components); relative entries resolve against the data dir. A spec's own directory is
    /// also allowed when it lies under `<home>/agents`.
    pub file_roots: Vec<PathBuf>,
    /// Unix sockets a spec may reach: a socket path, or a directory whose sockets all may be used.
    pub unix_sockets: Vec<PathBuf>,
    /// MQTT topic filters (`+`, `#`) a spec's topics must fall within; `{agent}` stands for the
    /// agent's id. Checked for endpoints at load and for `builtin:mqtt_publish` at each call.
    pub mqtt_topics: Vec<String>,
    /// Whether a spec may say `egress_allowed: true` (send data outside the local trust domain).
    pub allow_egress: bool,
    /// Destinations agent tools may reach although they are not in the trust domain's LAN ranges
    /// (loopback, link-local, ...): CIDRs (`127.0.0.1/32`) or `IP:PORT` (`127.0.0.1:8080`).
    pub local_destinations: Vec<Destination>,
}

impl Default for AgentPolicy {
    fn default() -> Self {
        Self {
            schemes: Scheme::ALL.to_vec(),
            mcp_commands: Vec::new(),
            mcp_commands_with_network: Vec::new(),
            file_roots: vec![PathBuf::from("files")],
            unix_sockets: Vec::new(),
            mqtt_topics: vec!["alerts/#".into(), "agents/{agent}/#".into()],
            allow_egress: false,
            local_destinations: Vec::new(),
        }
    }
}

/// An endpoint scheme, as written in `agent_policy.schemes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scheme {
    Unix,
    Mqtt,
    Wasm,
    Builtin,
    #[serde(rename = "mcp+stdio")]
    McpStdio,
    Http,
    Https,
}

impl Scheme {
    pub const ALL: [Scheme; 7] = [
        Scheme::Unix,
        Scheme::Mqtt,
        Scheme::Wasm,
        Scheme::Builtin,
        Scheme::McpStdio,
        Scheme::Http,
        Scheme::Https,
    ];

    pub fn of(endpoint: &Endpoint) -> Self {
        match endpoint {
            Endpoint::Unix(_) => Self::Unix,
            Endpoint::Mqtt { .. } => Self::Mqtt,
            Endpoint::Wasm(_) => Self::Wasm,
            Endpoint::Builtin(_) => Self::Builtin,
            Endpoint::McpStdio { .. } => Self::McpStdio,
            Endpoint::Http(u) if u.starts_with("https://") => Self::Https,
            Endpoint::Http(_) => Self::Http,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Unix => "unix",
            Self::Mqtt => "mqtt",
            Self::Wasm => "wasm",
            Self::Builtin => "builtin",
            Self::McpStdio => "mcp+stdio",
            Self::Http => "http",
            Self::Https => "https",
        }
    }
}

/// A command line as argv, parsed with shell quoting rules (`shell-words`), so `a "b c"` is two
/// words and `a b c` three: an allowlist entry matches only the exact argv it names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CommandLine(pub Vec<String>);

impl TryFrom<String> for CommandLine {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let words = shell_words::split(&s)
            .map_err(|e| format!("command line '{s}' does not parse: {e}"))?;
        if words.is_empty() {
            return Err("an empty command line allows nothing; remove it".into());
        }
        Ok(Self(words))
    }
}

impl From<CommandLine> for String {
    fn from(c: CommandLine) -> String {
        shell_words::join(&c.0)
    }
}

/// A destination outside the trust domain's LAN ranges that the operator lets agent tools reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Destination {
    /// Every port of the addresses in this network.
    Net(ipnet::IpNet),
    /// One address and port.
    Addr(SocketAddr),
}

impl TryFrom<String> for Destination {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if let Ok(net) = s.parse::<ipnet::IpNet>() {
            return Ok(Self::Net(net));
        }
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(Self::Net(ipnet::IpNet::from(ip)));
        }
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(Self::Addr(addr));
        }
        Err(format!(
            "local destination '{s}': expected a CIDR (127.0.0.1/32, fd00::/8), an IP, or IP:PORT ([::1]:8080); names are not allowed (they could resolve anywhere)"
        ))
    }
}

impl From<Destination> for String {
    fn from(d: Destination) -> String {
        match d {
            Destination::Net(n) => n.to_string(),
            Destination::Addr(a) => a.to_string(),
        }
    }
}

impl Destination {
    /// Whether `addr` is this destination (`port: None` when the caller cannot know the port,
    /// e.g. a component's `host:*` grant: then only network entries count).
    pub fn contains(&self, ip: IpAddr, port: Option<u16>) -> bool {
        let ip = canonical_ip(ip);
        match self {
            Self::Net(n) => n.contains(&ip),
            Self::Addr(a) => canonical_ip(a.ip()) == ip && port == Some(a.port()),
        }
    }
}

/// IPv4-mapped IPv6 addresses are the IPv4 address they carry.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// Where the spec's relative paths resolve, and the data dir the policy's paths are relative to.
pub struct PolicyScope<'a> {
    pub home: &'a Path,
    pub spec_dir: &'a Path,
}

/// Whose spec a policy is checked for: it decides the config key refusals name and what they show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyOf {
    /// This node's own specs (`agent_policy`): refusals show what the policy lists.
    Node,
    /// Runs neighbours place here (`mesh.accept_runs.policy`): refusals name the key to widen,
    /// never what it lists nor where this node keeps its files.
    Placed,
}

impl PolicyOf {
    /// The config key the policy is written under.
    pub fn key(self) -> &'static str {
        match self {
            Self::Node => "agent_policy",
            Self::Placed => "mesh.accept_runs.policy",
        }
    }
}

/// What a spec asks for beyond the policy: the spec key that asks (its path of map keys and list
/// indices, for the position) and a message naming the policy key to change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub key: Vec<String>,
    pub message: String,
}

fn key(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| (*s).to_owned()).collect()
}

impl AgentPolicy {
    /// Least privilege for a spec a neighbour placed here (`mesh.accept_runs.policy`): built-in
    /// tools and installed components only, no command, no file, no socket, no MQTT topic, no
    /// egress, no local destination. A neighbour brings no authority over this node's resources.
    pub fn placed() -> Self {
        Self {
            schemes: vec![Scheme::Builtin, Scheme::Wasm],
            mcp_commands: Vec::new(),
            mcp_commands_with_network: Vec::new(),
            file_roots: Vec::new(),
            unix_sockets: Vec::new(),
            mqtt_topics: Vec::new(),
            allow_egress: false,
            local_destinations: Vec::new(),
        }
    }

    /// Whether the MCP server `command args` keeps the node's network under `egress_allowed: false`.
    pub fn mcp_command_has_network(&self, command: &str, args: &[String]) -> bool {
        self.mcp_commands_with_network
            .iter()
            .any(|c| c.0.split_first() == Some((&command.to_owned(), args)))
    }

    /// The first thing `spec` asks for that this policy (the node's `agent_policy`) does not allow.
    pub fn check(&self, spec: &AgentSpec, scope: &PolicyScope<'_>) -> Result<(), Violation> {
        match self
            .violations(spec, scope, PolicyOf::Node)
            .into_iter()
            .next()
        {
            Some(v) => Err(v),
            None => Ok(()),
        }
    }

    /// Everything `spec` asks for that this policy does not allow, in spec order (egress first).
    /// `of` says whose spec it is: each message names the config key this policy is written
    /// under, and shows what the policy lists only for this node's own specs.
    pub fn violations(
        &self,
        spec: &AgentSpec,
        scope: &PolicyScope<'_>,
        of: PolicyOf,
    ) -> Vec<Violation> {
        let at = of.key();
        let mut found = Vec::new();
        if spec.workflow_policy.egress_allowed && !self.allow_egress {
            found.push(Violation {
                key: key(&["workflow_policy", "egress_allowed"]),
                message: format!("egress_allowed: true, but {at}.allow_egress is false on this node (set {at}.allow_egress: true in config.yaml to let agents send data outside the local trust domain)"),
            });
        }
        for (i, cap) in spec.capabilities.iter().enumerate() {
            let idx = i.to_string();
            let field = |f: &str| key(&["capabilities", &idx, f]);
            let name = &cap.name;
            let scheme = Scheme::of(&cap.endpoint);
            if !self.schemes.contains(&scheme) {
                // The scheme alone rules the capability out; its other fields would only add noise.
                found.push(Violation {
                    key: field("endpoint"),
                    message: format!(
                        "capability '{name}' uses the scheme '{}', which {at}.schemes does not list (add it to {at}.schemes in config.yaml)",
                        scheme.name()
                    ),
                });
                continue;
            }
            match &cap.endpoint {
                Endpoint::McpStdio { command, args } => {
                    let argv: Vec<String> = std::iter::once(command.clone())
                        .chain(args.clone())
                        .collect();
                    if !self.mcp_commands.iter().any(|c| c.0 == argv) {
                        let line = shell_words::join(&argv);
                        found.push(Violation {
                            key: field("endpoint"),
                            message: format!(
                                "capability '{name}' starts '{line}', which {at}.mcp_commands does not list (add \"{}\" to {at}.mcp_commands in config.yaml)",
                                line.replace('"', "\\\"")
                            ),
                        });
                    }
                }
                Endpoint::Unix(path) => {
                    if !self.socket_allowed(path) {
                        found.push(Violation {
                            key: field("endpoint"),
                            message: format!(
                                "capability '{name}' reaches the socket {}, which {at}.unix_sockets does not list (add it, or its directory, to {at}.unix_sockets in config.yaml)",
                                path.display()
                            ),
                        });
                    }
                }
                Endpoint::Mqtt { topic, .. } => {
                    if !cap.subscribe && (topic.contains('+') || topic.contains('#')) {
                        found.push(Violation {
                            key: field("endpoint"),
                            message: format!("capability '{name}' publishes to '{topic}', but a topic to publish to cannot contain the wildcards + or #"),
                        });
                    } else if !self.topic_allowed(topic, &spec.agent_id) {
                        let verb = if cap.subscribe {
                            "subscribes to"
                        } else {
                            "publishes to"
                        };
                        let listed = match of {
                            PolicyOf::Node => format!(" ({})", self.mqtt_topics.join(", ")),
                            PolicyOf::Placed => String::new(),
                        };
                        found.push(Violation {
                            key: field("endpoint"),
                            message: format!(
                                "capability '{name}' {verb} '{topic}', which {at}.mqtt_topics{listed} does not cover (add a filter for it to {at}.mqtt_topics in config.yaml)"
                            ),
                        });
                    }
                }
                _ => {}
            }
            if let Some(root) = &cap.root {
                if !self.file_root_allowed(&scope.spec_dir.join(root), scope) {
                    found.push(self.file_violation(field("root"), name, root, scope, of));
                }
            }
            if let Some(grants) = &cap.grants {
                for (j, f) in grants.files.iter().enumerate() {
                    if !self.file_root_allowed(&scope.spec_dir.join(&f.path), scope) {
                        let k = key(&["capabilities", &idx, "grants", "files", &j.to_string()]);
                        found.push(self.file_violation(k, name, &f.path, scope, of));
                    }
                }
            }
        }
        found
    }

    fn file_violation(
        &self,
        key: Vec<String>,
        name: &str,
        path: &Path,
        scope: &PolicyScope<'_>,
        of: PolicyOf,
    ) -> Violation {
        if of == PolicyOf::Placed {
            // Another node's spec: the path as it wrote it, not where this node keeps files.
            return Violation {
                key,
                message: format!(
                    "capability '{name}' grants the files of {}, outside the file roots this node allows a neighbour's run (add the directory to mesh.accept_runs.policy.file_roots in this node's config.yaml)",
                    path.display()
                ),
            };
        }
        let at = of.key();
        let bases: Vec<String> = self
            .file_bases(scope)
            .iter()
            .map(|b| b.display().to_string())
            .collect();
        let allowed = if bases.is_empty() {
            "none".to_owned()
        } else {
            bases.join(", ")
        };
        Violation {
            key,
            message: format!(
                "capability '{name}' grants the files of {}, outside the file roots this node allows ({allowed}) (move the files under one of them, or add the directory to {at}.file_roots in config.yaml)",
                normalize(&scope.spec_dir.join(path)).display(),
            ),
        }
    }

    /// The directories whose files a spec in `scope` may grant.
    pub fn file_bases(&self, scope: &PolicyScope<'_>) -> Vec<PathBuf> {
        let mut bases: Vec<PathBuf> = self
            .file_roots
            .iter()
            .map(|r| normalize(&scope.home.join(r)))
            .collect();
        let spec_dir = normalize(scope.spec_dir);
        if spec_dir.starts_with(normalize(&scope.home.join("agents"))) {
            bases.push(spec_dir);
        }
        bases
    }

    /// Whether `path` (absolute) lies in a directory this policy lets a spec in `scope` grant.
    /// Lexical: callers that can, check the canonical path again (symlinks).
    pub fn file_root_allowed(&self, path: &Path, scope: &PolicyScope<'_>) -> bool {
        let path = normalize(path);
        path.is_absolute() && self.file_bases(scope).iter().any(|b| path.starts_with(b))
    }

    pub fn socket_allowed(&self, path: &Path) -> bool {
        if path.components().any(|c| matches!(c, Component::ParentDir)) {
            return false;
        }
        let path = normalize(path);
        self.unix_sockets
            .iter()
            .any(|s| path.starts_with(normalize(s)))
    }

    /// Whether `topic` (a name, or a filter for a subscription) is covered by a policy filter.
    pub fn topic_allowed(&self, topic: &str, agent_id: &str) -> bool {
        self.mqtt_topics
            .iter()
            .any(|p| filter_covers(&p.replace("{agent}", agent_id), topic))
    }

    /// Whether agent tools may reach `ip` (port when known) although it is outside the LAN ranges.
    pub fn lists_destination(&self, ip: IpAddr, port: Option<u16>) -> bool {
        self.local_destinations.iter().any(|d| d.contains(ip, port))
    }
}

/// `a/./b/../c` → `a/c`, without touching the file system (a `..` above the root stays at it).
pub fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// Whether every topic `filter` matches is matched by `pattern` (MQTT 3.1.1 §4.7: `+` one level,
/// `#` the rest including the parent, and wildcards first never match `$` topics).
fn filter_covers(pattern: &str, filter: &str) -> bool {
    if filter.starts_with('$') && !pattern.starts_with('$') {
        return false;
    }
    let p: Vec<&str> = pattern.split('/').collect();
    let f: Vec<&str> = filter.split('/').collect();
    for (i, level) in p.iter().enumerate() {
        match *level {
            "#" => return true,
            "+" => match f.get(i) {
                Some(&"#") | None => return false,
                Some(_) => {}
            },
            lit => {
                if f.get(i) != Some(&lit) {
                    return false;
                }
            }
        }
    }
    p.len() == f.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> AgentSpec {
        AgentSpec::parse(yaml, Path::new("spec")).unwrap()
    }

    fn scope<'a>(home: &'a Path, dir: &'a Path) -> PolicyScope<'a> {
        PolicyScope {
            home,
            spec_dir: dir,
        }
    }

    const HOME: &str = "/srv/edgewise";

    fn check(policy: &AgentPolicy, yaml: &str, dir: &str) -> Result<(), Violation> {
        policy.check(&spec(yaml), &scope(Path::new(HOME), Path::new(dir)))
    }

    fn cap(endpoint: &str, extra: &str) -> String {
        format!("agent_id: a\ncapabilities:\n  - name: t\n    endpoint: \"{endpoint}\"\n{extra}")
    }

    #[test]
    fn the_default_policy_starts_no_command_and_reaches_no_socket() {
        let p = AgentPolicy::default();
        let v = check(&p, &cap("mcp+stdio:bash -c 'touch /tmp/x'", ""), "/tmp").unwrap_err();
        assert_eq!(v.key, key(&["capabilities", "0", "endpoint"]));
        assert!(
            v.message.contains("starts 'bash -c 'touch /tmp/x''"),
            "{}",
            v.message
        );
        assert!(
            v.message.contains("agent_policy.mcp_commands"),
            "{}",
            v.message
        );
        let v = check(&p, &cap("unix:///var/run/docker.sock", ""), "/tmp").unwrap_err();
        assert!(
            v.message.contains("agent_policy.unix_sockets"),
            "{}",
            v.message
        );
    }

    #[test]
    fn mcp_commands_compare_as_argv_not_as_text() {
        let p = AgentPolicy {
            mcp_commands: vec![
                CommandLine::try_from("python3 'plant server.py'".to_owned()).unwrap(),
            ],
            ..AgentPolicy::default()
        };
        assert!(check(&p, &cap("mcp+stdio:python3 'plant server.py'", ""), "/").is_ok());
        assert!(check(
            &p,
            &cap("mcp+stdio:python3 \\\"plant server.py\\\"", ""),
            "/"
        )
        .is_ok());
        // Same text split differently, an extra argument, or a prefix: not the listed argv.
        for bad in [
            "mcp+stdio:python3 plant server.py",
            "mcp+stdio:python3 'plant server.py' --evil",
            "mcp+stdio:python3",
        ] {
            assert!(check(&p, &cap(bad, ""), "/").is_err(), "{bad}");
        }
        assert!(CommandLine::try_from("a 'b".to_owned()).is_err());
        assert!(CommandLine::try_from("  ".to_owned()).is_err());
    }

    #[test]
    fn file_roots_stay_under_home_files_or_the_specs_own_agents_dir() {
        let p = AgentPolicy::default();
        let read = |root: &str| cap("builtin:read_file", &format!("    root: {root}\n"));
        // Under <home>/files: allowed from anywhere.
        assert!(check(&p, &read("/srv/edgewise/files/plant"), "/tmp").is_ok());
        // The spec's own directory, when it is under <home>/agents.
        assert!(check(&p, &read("data"), "/srv/edgewise/agents/mon").is_ok());
        for (root, dir) in [
            ("/", "/srv/edgewise/agents/mon"),
            ("../other", "/srv/edgewise/agents/mon/"),
            ("../../state", "/srv/edgewise/agents/mon"),
            ("/srv/edgewise/files/../mesh", "/tmp"),
            ("data", "/tmp"),
            ("/srv/edgewise/filesystem", "/tmp"),
        ] {
            let v = check(&p, &read(root), dir).unwrap_err();
            assert_eq!(v.key, key(&["capabilities", "0", "root"]), "{root}");
            assert!(
                v.message.contains("agent_policy.file_roots"),
                "{}",
                v.message
            );
        }
        // Component file grants are file roots too.
        let granted = cap(
            "wasm:tool.wasm",
            "    grants:\n      files:\n        - path: /etc\n",
        );
        let v = check(&p, &granted, "/srv/edgewise/agents/mon").unwrap_err();
        assert_eq!(v.key, key(&["capabilities", "0", "grants", "files", "0"]));
        let widened = AgentPolicy {
            file_roots: vec!["/etc".into()],
            ..AgentPolicy::default()
        };
        assert!(check(&widened, &granted, "/tmp").is_ok());
    }

    #[test]
    fn unix_sockets_are_listed_paths_or_directories() {
        let p = AgentPolicy {
            unix_sockets: vec!["/run/plant/".into(), "/tmp/sensors.sock".into()],
            ..AgentPolicy::default()
        };
        assert!(check(&p, &cap("unix:///run/plant/valves.sock", ""), "/").is_ok());
        assert!(check(&p, &cap("unix:///tmp/sensors.sock", ""), "/").is_ok());
        for bad in [
            "unix:///run/plant/../docker.sock",
            "unix:///tmp/sensors.sock2",
            "unix:///run/plantx.sock",
        ] {
            assert!(check(&p, &cap(bad, ""), "/").is_err(), "{bad}");
        }
    }

    #[test]
    fn mqtt_topics_default_to_alerts_and_the_agents_own_namespace() {
        let p = AgentPolicy::default();
        let sub = "    subscribe: true\n";
        for ok in [
            ("mqtt://local-broker/alerts", ""),
            ("mqtt://local-broker/alerts/zone4", ""),
            ("mqtt://local-broker/agents/a/out", ""),
            ("mqtt://local-broker/agents/a/#", sub),
        ] {
            assert!(check(&p, &cap(ok.0, ok.1), "/").is_ok(), "{ok:?}");
        }
        for bad in [
            ("mqtt://local-broker/plant/valves/set", ""),
            ("mqtt://local-broker/agents/b/out", ""),
            ("mqtt://local-broker/#", sub),
            ("mqtt://local-broker/+/a/x", sub),
            ("mqtt://local-broker/$SYS/broker", ""),
            ("mqtt://local-broker/alerts/#", ""),
        ] {
            let v = check(&p, &cap(bad.0, bad.1), "/").unwrap_err();
            assert_eq!(v.key, key(&["capabilities", "0", "endpoint"]), "{bad:?}");
        }
        assert!(p.topic_allowed("alerts", "a"));
        assert!(!p.topic_allowed("alertsx", "a"));
        assert!(!p.topic_allowed("$SYS/x", "a"));
        let all = AgentPolicy {
            mqtt_topics: vec!["#".into()],
            ..AgentPolicy::default()
        };
        assert!(all.topic_allowed("plant/alarms", "a"));
        assert!(
            !all.topic_allowed("$SYS/x", "a"),
            "# never matches $ topics"
        );
        assert!(filter_covers("a/+/c", "a/b/c"));
        assert!(!filter_covers("a/+/c", "a/#"));
        assert!(!filter_covers("a/+", "a/b/c"));
    }

    #[test]
    fn egress_needs_the_node_to_allow_it_and_schemes_can_be_switched_off() {
        let p = AgentPolicy::default();
        let yaml = "agent_id: a\nworkflow_policy:\n  egress_allowed: true\n";
        let v = check(&p, yaml, "/").unwrap_err();
        assert_eq!(v.key, key(&["workflow_policy", "egress_allowed"]));
        assert!(
            v.message.contains("agent_policy.allow_egress"),
            "{}",
            v.message
        );
        let open = AgentPolicy {
            allow_egress: true,
            ..AgentPolicy::default()
        };
        assert!(check(&open, yaml, "/").is_ok());
        let no_http = AgentPolicy {
            schemes: vec![Scheme::Builtin],
            ..AgentPolicy::default()
        };
        let v = check(&no_http, &cap("https://example.com", ""), "/").unwrap_err();
        assert!(v.message.contains("scheme 'https'"), "{}", v.message);
    }

    #[test]
    fn local_destinations_are_cidrs_or_exact_addresses() {
        let net = Destination::try_from("127.0.0.0/8".to_owned()).unwrap();
        assert!(net.contains("127.0.0.2".parse().unwrap(), None));
        assert!(net.contains("::ffff:127.0.0.1".parse().unwrap(), Some(1)));
        let one = Destination::try_from("127.0.0.1:8080".to_owned()).unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap(), Some(8080)));
        assert!(!one.contains("127.0.0.1".parse().unwrap(), Some(8081)));
        assert!(!one.contains("127.0.0.1".parse().unwrap(), None));
        let ip = Destination::try_from("169.254.169.254".to_owned()).unwrap();
        assert!(ip.contains("169.254.169.254".parse().unwrap(), Some(80)));
        assert!(!ip.contains("169.254.169.253".parse().unwrap(), Some(80)));
        for bad in ["localhost:80", "10.0.0.0/33", "metadata"] {
            assert!(Destination::try_from(bad.to_owned()).is_err(), "{bad}");
        }
    }
}
