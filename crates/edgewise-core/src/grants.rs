//! What a WebAssembly component may touch. Everything is denied unless granted here. The
//! component's manifest (`NAME.component.yaml` next to `NAME.wasm`, or the installed one, which
//! its signature covers) says the most it may do; an agent spec's capability entry (`grants:`)
//! may narrow that, never widen it (`Grants::narrowed_by`). A `.wasm` file without a manifest
//! has only the spec's grants.

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};
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
    /// Time one call may spend in the component's own code (host calls such as inference do
    /// not count) [default: 1s].
    #[serde(with = "humantime_serde")]
    pub time_limit: Option<Duration>,
    /// Linear memory one instance may use [default: the agent's `runtime.memory_limit`, else
    /// 256MiB]. Written back as a number of bytes: a signature covers the exact value, which a
    /// rounded "95.4 MiB" would not keep.
    #[serde(serialize_with = "exact_bytes")]
    pub memory_limit: Option<bytesize::ByteSize>,
}

/// A `kv_buckets` entry with this prefix names the node's shared CRDT document (`doc:NAME`), not a
/// namespace of the component's own.
pub const DOCUMENT_BUCKET_PREFIX: &str = "doc:";

/// The time limit of a component whose grants name none.
pub const DEFAULT_TIME_LIMIT: Duration = Duration::from_secs(1);
/// Where a granted directory appears to the component unless the grant says otherwise.
pub const DEFAULT_GUEST_DIR: &str = "/data";

fn exact_bytes<S: serde::Serializer>(
    value: &Option<bytesize::ByteSize>,
    ser: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(b) => ser.serialize_some(&b.as_u64()),
        None => ser.serialize_none(),
    }
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

/// A spec's grants that ask for more than the component's manifest grants.
#[derive(Debug, thiserror::Error)]
#[error("grants.{key}: {message}; a spec may only narrow a component's grants (its manifest's, which its signature covers): remove it from the spec, or install the component with a manifest that grants it (and sign that)")]
pub struct GrantsWidened {
    /// The spec key under the capability's `grants:` (`interfaces`, `files`, `time_limit`, …).
    pub key: &'static str,
    pub message: String,
}

fn widened(key: &'static str, message: String) -> GrantsWidened {
    GrantsWidened { key, message }
}

fn listed<T: std::fmt::Display>(items: impl IntoIterator<Item = T>) -> String {
    let all: Vec<String> = items.into_iter().map(|i| i.to_string()).collect();
    if all.is_empty() {
        "nothing".into()
    } else {
        all.join(", ")
    }
}

/// `host:port` or `host:*` as (lowercase host, port or none for any).
fn host_port(grant: &str) -> Option<(String, Option<&str>)> {
    let (host, port) = grant.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some((host.to_ascii_lowercase(), (port != "*").then_some(port)))
}

/// Whether `inner` lies in `outer`, by path components; a `..` is never inside anything.
fn inside(inner: &Path, outer: &Path) -> bool {
    !inner.components().any(|c| c == Component::ParentDir) && inner.starts_with(outer)
}

impl Grants {
    pub fn allows(&self, interface: HostInterface) -> bool {
        self.interfaces.contains(&interface)
    }

    /// The grants a spec asks for (`spec`), if they stay within these (the manifest's); a
    /// limit the spec leaves out is the manifest's. File paths on both sides must already be
    /// absolute and resolved (links followed): this compares them as written.
    pub fn narrowed_by(&self, spec: &Grants) -> Result<Grants, GrantsWidened> {
        if let Some(i) = spec.interfaces.difference(&self.interfaces).next() {
            return Err(widened(
                "interfaces",
                format!(
                    "'{i}' is not granted by the component's manifest (it grants: {})",
                    listed(&self.interfaces)
                ),
            ));
        }
        for (key, asked, granted) in [
            ("kv_buckets", &spec.kv_buckets, &self.kv_buckets),
            ("topics", &spec.topics, &self.topics),
        ] {
            if let Some(x) = asked.iter().find(|x| !granted.contains(x)) {
                return Err(widened(
                    key,
                    format!(
                        "'{x}' is not granted by the component's manifest (it grants: {})",
                        listed(granted)
                    ),
                ));
            }
        }
        for n in &spec.network {
            let covered = host_port(n).is_some_and(|(host, port)| {
                self.network
                    .iter()
                    .filter_map(|m| host_port(m))
                    .any(|(h, p)| h == host && (p.is_none() || p == port))
            });
            if !covered {
                return Err(widened(
                    "network",
                    format!(
                        "'{n}' is not within the component's manifest (it grants: {})",
                        listed(&self.network)
                    ),
                ));
            }
        }
        for f in &spec.files {
            let covered = self
                .files
                .iter()
                .any(|m| inside(&f.path, &m.path) && (m.writable || !f.writable));
            if !covered {
                let granted = self.files.iter().map(|m| {
                    format!(
                        "{}{}",
                        m.path.display(),
                        if m.writable { " (writable)" } else { "" }
                    )
                });
                return Err(widened(
                    "files",
                    format!(
                        "'{}'{} is not within the component's manifest (it grants: {})",
                        f.path.display(),
                        if f.writable { " writable" } else { "" },
                        listed(granted)
                    ),
                ));
            }
        }
        let ceiling = self.time_limit.unwrap_or(DEFAULT_TIME_LIMIT);
        if let Some(t) = spec.time_limit.filter(|t| *t > ceiling) {
            return Err(widened(
                "time_limit",
                format!(
                    "{} is longer than the component's manifest allows ({})",
                    humantime_serde::re::humantime::format_duration(t),
                    humantime_serde::re::humantime::format_duration(ceiling)
                ),
            ));
        }
        if let (Some(asked), Some(ceiling)) = (spec.memory_limit, self.memory_limit) {
            if asked > ceiling {
                return Err(widened(
                    "memory_limit",
                    format!("{asked} is more than the component's manifest allows ({ceiling})"),
                ));
            }
        }
        Ok(Grants {
            time_limit: spec.time_limit.or(self.time_limit),
            memory_limit: spec.memory_limit.or(self.memory_limit),
            ..spec.clone()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Grants {
        Grants {
            files: vec![FileGrant {
                path: "/srv/plant".into(),
                guest: None,
                writable: false,
            }],
            network: vec!["broker.local:1883".into(), "api.example:*".into()],
            interfaces: [HostInterface::Logging, HostInterface::Keyvalue].into(),
            kv_buckets: vec!["predictions".into()],
            topics: vec!["alerts".into()],
            time_limit: Some(Duration::from_secs(2)),
            memory_limit: Some(bytesize::ByteSize::mib(64)),
        }
    }

    #[test]
    fn a_spec_may_narrow_a_manifests_grants_and_inherits_its_limits() {
        let spec = Grants {
            files: vec![FileGrant {
                path: "/srv/plant/zone4".into(),
                guest: Some("/zone".into()),
                writable: false,
            }],
            network: vec!["API.example:443".into()],
            interfaces: [HostInterface::Logging].into(),
            ..Grants::default()
        };
        let g = manifest().narrowed_by(&spec).unwrap();
        assert_eq!(g.interfaces, spec.interfaces);
        assert!(g.kv_buckets.is_empty() && g.topics.is_empty());
        assert_eq!(g.files, spec.files);
        assert_eq!(g.time_limit, Some(Duration::from_secs(2)));
        assert_eq!(g.memory_limit, Some(bytesize::ByteSize::mib(64)));
        let shorter = Grants {
            time_limit: Some(Duration::from_millis(100)),
            ..Grants::default()
        };
        assert_eq!(
            manifest().narrowed_by(&shorter).unwrap().time_limit,
            shorter.time_limit
        );
    }

    #[test]
    fn a_spec_that_widens_a_manifests_grants_is_refused_naming_the_key() {
        let file = |path: &str, writable| FileGrant {
            path: path.into(),
            guest: None,
            writable,
        };
        let cases: Vec<(&str, Grants)> = vec![
            (
                "interfaces",
                Grants {
                    interfaces: [HostInterface::Inference].into(),
                    ..Grants::default()
                },
            ),
            (
                "kv_buckets",
                Grants {
                    kv_buckets: vec!["doc:plant".into()],
                    ..Grants::default()
                },
            ),
            (
                "topics",
                Grants {
                    topics: vec!["commands".into()],
                    ..Grants::default()
                },
            ),
            (
                "network",
                Grants {
                    network: vec!["broker.local:*".into()],
                    ..Grants::default()
                },
            ),
            (
                "files",
                Grants {
                    files: vec![file("/srv/plant", true)],
                    ..Grants::default()
                },
            ),
            (
                "files",
                Grants {
                    files: vec![file("/srv/plant/../../etc", false)],
                    ..Grants::default()
                },
            ),
            (
                "files",
                Grants {
                    files: vec![file("/srv/plantation", false)],
                    ..Grants::default()
                },
            ),
            (
                "time_limit",
                Grants {
                    time_limit: Some(Duration::from_secs(3)),
                    ..Grants::default()
                },
            ),
            (
                "memory_limit",
                Grants {
                    memory_limit: Some(bytesize::ByteSize::mib(65)),
                    ..Grants::default()
                },
            ),
        ];
        for (key, spec) in cases {
            let err = manifest().narrowed_by(&spec).unwrap_err();
            assert_eq!(err.key, key, "{err}");
            let msg = err.to_string();
            assert!(
                msg.starts_with(&format!("grants.{key}: ")) && msg.contains("only narrow"),
                "{msg}"
            );
        }
        // A manifest that names no time limit allows the default, no more.
        let err = Grants::default()
            .narrowed_by(&Grants {
                time_limit: Some(Duration::from_secs(30)),
                ..Grants::default()
            })
            .unwrap_err();
        assert_eq!(err.key, "time_limit", "{err}");
    }
}
