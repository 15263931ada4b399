//! The egress policy: which destinations agent tools (and components, and MQTT triggers) may reach.
//!
//! The local trust domain is the LAN (RFC 1918, IPv6 ULA) and the mesh's members. This host's own
//! services and the link (loopback, link-local with cloud metadata at 169.254.169.254, multicast,
//! unspecified, broadcast) are not: an agent reaches them only where the node's
//! `agent_policy.local_destinations` lists them, or (MQTT only) as the node's configured brokers.
//! Everything else is egress, allowed only to agents with `egress_allowed: true`.
//!
//! Names are resolved first and every resulting address is checked, so `localhost.evil.example`
//! pointing at a public address is refused, and a name that resolves to a LAN address is allowed.

use std::net::{IpAddr, SocketAddr};

use edgewise_core::agent_policy::canonical_ip;
use edgewise_core::NodeConfig;

/// Private LAN addresses (RFC 1918, IPv6 ULA fc00::/7): the trust domain's own network.
pub fn is_lan(ip: IpAddr) -> bool {
    match canonical_ip(ip) {
        IpAddr::V4(v4) => v4.is_private(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xfe00) == 0xfc00,
    }
}

/// Addresses that are not another machine of the LAN or the internet but this host or the link:
/// reaching them from an agent is how SSRF reaches local admin APIs and cloud metadata.
pub fn special_kind(ip: IpAddr) -> Option<&'static str> {
    match canonical_ip(ip) {
        IpAddr::V4(v4) => {
            if v4.is_loopback() {
                Some("a loopback address")
            } else if v4.is_link_local() {
                Some("a link-local address (cloud metadata lives at 169.254.169.254)")
            } else if v4.is_multicast() {
                Some("a multicast address")
            } else if v4.is_unspecified() || v4.octets()[0] == 0 {
                Some("an unspecified address")
            } else if v4.is_broadcast() {
                Some("the broadcast address")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            if v6.is_loopback() {
                Some("a loopback address")
            } else if (v6.segments()[0] & 0xffc0) == 0xfe80 {
                Some("a link-local address")
            } else if v6.is_multicast() {
                Some("a multicast address")
            } else if v6.is_unspecified() {
                Some("an unspecified address")
            } else {
                None
            }
        }
    }
}

/// The trust domain without any node's additions: LAN ranges only. Tools use `EgressPolicy`; this
/// is for callers with no node config (benchmarks).
pub fn is_local(ip: IpAddr) -> bool {
    is_lan(ip)
}

/// Which destinations one agent's tools may reach on this node.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EgressPolicy {
    /// The spec's `egress_allowed` (already checked against `agent_policy.allow_egress`).
    pub egress_allowed: bool,
    /// `agent_policy.local_destinations`.
    listed: Vec<edgewise_core::agent_policy::Destination>,
    /// Addresses of mesh members named in the node's config (literal IPs of `mesh.connect`).
    mesh: Vec<IpAddr>,
    /// `host:port` of the node's configured MQTT brokers: reachable by MQTT tools and triggers
    /// (`mqtt()`), whatever their address, because the operator named them.
    brokers: Vec<String>,
    mqtt: bool,
    /// A run a neighbour placed here: this node's LAN and mesh are not its trust domain, so it
    /// reaches only listed destinations (and, with egress allowed, addresses outside the LAN).
    confined: bool,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EgressError {
    /// The policy forbids the destination.
    #[error("egress denied: {host} resolves to {ip}, outside the local trust domain, and this agent's policy has egress_allowed: false")]
    Denied { host: String, ip: IpAddr },
    /// A run a neighbour placed here, reaching an address its policy does not list.
    #[error("egress denied: {host} resolves to {ip}; a run a neighbour placed here reaches only the addresses mesh.accept_runs.policy.local_destinations lists (and, with allow_egress, addresses outside this node's LAN)")]
    Placed { host: String, ip: IpAddr },
    /// A loopback, link-local, ... address the node's policy does not list.
    #[error("egress denied: {host} resolves to {ip}, {kind}, which agent tools reach only when the node's agent_policy.local_destinations lists it")]
    Special {
        host: String,
        ip: IpAddr,
        kind: &'static str,
    },
    #[error("cannot resolve {host}: {message}")]
    Unresolvable { host: String, message: String },
}

impl EgressPolicy {
    pub fn new(config: &NodeConfig, egress_allowed: bool) -> Self {
        let mesh = config
            .mesh
            .iter()
            .flat_map(|m| m.connect.iter().chain(&m.listen))
            .filter_map(|e| {
                let addr = e.split_once('/').map_or(e.as_str(), |(_, a)| a);
                addr.parse::<SocketAddr>().ok().map(|a| a.ip())
            })
            .filter(|ip| special_kind(*ip).is_none())
            .collect();
        let mut brokers: Vec<String> = config.mqtt_brokers.values().cloned().collect();
        if !config.mqtt_listen.is_empty() {
            brokers.push(config.mqtt_listen.clone());
        }
        Self {
            egress_allowed,
            listed: config.agent_policy.local_destinations.clone(),
            mesh,
            brokers,
            mqtt: false,
            confined: false,
        }
    }

    /// The same policy for a run a neighbour placed here (built from `mesh.accept_runs.policy`):
    /// this node's LAN and mesh members are no longer trusted by default.
    pub fn confined(self) -> Self {
        Self {
            confined: true,
            ..self
        }
    }

    /// The same policy for an MQTT client: the node's configured brokers are reachable too.
    pub fn mqtt(&self) -> Self {
        Self {
            mqtt: true,
            ..self.clone()
        }
    }

    /// Why `addr` may not be reached (`port: None` when unknown, e.g. a `host:*` grant).
    fn refusal(&self, host: &str, ip: IpAddr, port: Option<u16>) -> Option<EgressError> {
        if self.listed.iter().any(|d| d.contains(ip, port)) {
            return None;
        }
        if let Some(kind) = special_kind(ip) {
            return Some(EgressError::Special {
                host: host.to_owned(),
                ip,
                kind,
            });
        }
        let in_domain = is_lan(ip) || self.mesh.contains(&canonical_ip(ip));
        if self.confined {
            let allowed = self.egress_allowed && !in_domain;
            return (!allowed).then(|| EgressError::Placed {
                host: host.to_owned(),
                ip,
            });
        }
        if in_domain || self.egress_allowed {
            return None;
        }
        Some(EgressError::Denied {
            host: host.to_owned(),
            ip,
        })
    }

    /// Whether a component's network grant may keep `ip` (its port may be a wildcard).
    pub fn allows_ip(&self, ip: IpAddr) -> bool {
        self.refusal("", ip, None).is_none()
    }

    fn is_configured_broker(&self, host: &str, port: u16) -> bool {
        self.mqtt
            && self.brokers.iter().any(|b| match b.rsplit_once(':') {
                Some((h, p)) => {
                    h.trim_start_matches('[').trim_end_matches(']') == host && p.parse() == Ok(port)
                }
                None => b == host && port == 1883,
            })
    }
}

/// Resolves `host:port` and returns the addresses, refusing them all if any is one the policy
/// forbids (a name must not straddle the boundary).
pub async fn resolve_checked(
    host: &str,
    port: u16,
    policy: &EgressPolicy,
) -> Result<Vec<SocketAddr>, EgressError> {
    let unresolvable = |message: String| EgressError::Unresolvable {
        host: host.to_owned(),
        message,
    };
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| unresolvable(e.to_string()))?
        .collect();
    if addrs.is_empty() {
        return Err(unresolvable("no address".into()));
    }
    if policy.is_configured_broker(host, port) {
        return Ok(addrs);
    }
    if let Some(e) = addrs
        .iter()
        .find_map(|a| policy.refusal(host, a.ip(), Some(a.port())))
    {
        return Err(e);
    }
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(yaml: &str, egress: bool) -> EgressPolicy {
        let config = NodeConfig::parse(yaml, std::path::Path::new("c.yaml")).unwrap();
        EgressPolicy::new(&config, egress)
    }

    #[test]
    fn classifies_addresses() {
        let p = policy("", false);
        for local in [
            "10.1.2.3",
            "192.168.0.9",
            "172.16.5.5",
            "fd00::1",
            "::ffff:192.168.1.1",
        ] {
            assert!(p.allows_ip(local.parse().unwrap()), "{local}");
        }
        for refused in [
            "127.0.0.1",
            "127.8.9.1",
            "169.254.169.254",
            "169.254.1.1",
            "224.0.0.1",
            "255.255.255.255",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "ff02::1",
            "::",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "8.8.8.8",
            "172.32.0.1",
            "100.64.0.1",
            "2001:4860::8888",
            "::ffff:8.8.8.8",
        ] {
            assert!(!p.allows_ip(refused.parse().unwrap()), "{refused}");
        }
    }

    #[test]
    fn egress_opens_the_internet_but_not_this_host_or_the_link() {
        let p = policy("", true);
        assert!(p.allows_ip("8.8.8.8".parse().unwrap()));
        for special in ["127.0.0.1", "169.254.169.254", "::1", "fe80::1"] {
            assert!(!p.allows_ip(special.parse().unwrap()), "{special}");
        }
    }

    #[test]
    fn listed_destinations_and_mesh_members_are_reachable() {
        let p = policy(
            "agent_policy:\n  local_destinations: [\"127.0.0.1:8080\", \"169.254.0.0/16\"]\nmesh:\n  trust_domain: plant\n  connect: [\"tls/100.64.3.4:7447\"]\n",
            false,
        );
        let ok = |ip: &str, port| p.refusal("h", ip.parse().unwrap(), port).is_none();
        assert!(ok("127.0.0.1", Some(8080)));
        assert!(
            !ok("127.0.0.1", Some(8081)),
            "a listed port opens only that port"
        );
        assert!(!ok("127.0.0.1", None));
        assert!(ok("169.254.169.254", Some(80)));
        assert!(ok("100.64.3.4", Some(7447)), "a mesh member");
        assert!(!ok("100.64.3.5", Some(7447)));
    }

    /// A placed run's policy: this node's LAN and mesh members are not its to reach.
    #[test]
    fn a_confined_policy_reaches_only_listed_addresses_and_egress_outside_the_lan() {
        let config = "agent_policy:\n  local_destinations: [\"10.0.0.9:502\"]\nmesh:\n  trust_domain: plant\n  connect: [\"tls/100.64.3.4:7447\"]\n";
        let p = policy(config, false).confined();
        let ok =
            |p: &EgressPolicy, ip: &str, port| p.refusal("h", ip.parse().unwrap(), port).is_none();
        assert!(ok(&p, "10.0.0.9", Some(502)), "listed");
        for (ip, port) in [
            ("10.0.0.8", Some(80)),
            ("192.168.1.1", Some(80)),
            ("100.64.3.4", Some(7447)),
            ("8.8.8.8", Some(443)),
        ] {
            assert!(!ok(&p, ip, port), "{ip}");
        }
        let err = p
            .refusal("plc", "192.168.1.1".parse().unwrap(), Some(80))
            .unwrap()
            .to_string();
        assert!(
            err.contains("mesh.accept_runs.policy.local_destinations"),
            "{err}"
        );
        let egress = policy(config, true).confined();
        assert!(ok(&egress, "8.8.8.8", Some(443)));
        assert!(
            !ok(&egress, "192.168.1.1", Some(80)),
            "egress is not the LAN"
        );
        assert!(!ok(&egress, "127.0.0.1", Some(80)));
    }

    #[tokio::test]
    async fn literal_addresses_are_refused_without_any_traffic() {
        let p = policy("", false);
        for (host, why) in [
            ("203.0.113.7", "egress_allowed: false"),
            ("127.0.0.1", "loopback"),
            ("169.254.169.254", "link-local"),
        ] {
            let err = resolve_checked(host, 80, &p).await.unwrap_err().to_string();
            assert!(err.contains("egress denied") && err.contains(why), "{err}");
        }
        assert!(resolve_checked("10.0.0.1", 80, &p).await.is_ok());
        assert!(resolve_checked("203.0.113.7", 80, &policy("", true))
            .await
            .is_ok());
    }

    #[tokio::test]
    async fn configured_brokers_are_reachable_by_mqtt_only() {
        let p = policy("mqtt_listen: 127.0.0.1:1999\n", false);
        assert!(resolve_checked("127.0.0.1", 1999, &p.mqtt()).await.is_ok());
        assert!(resolve_checked("127.0.0.1", 1999, &p).await.is_err());
        assert!(resolve_checked("127.0.0.1", 2000, &p.mqtt()).await.is_err());
    }
}
