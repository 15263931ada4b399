//! `mesh:` in config.yaml → Zenoh's configuration. Zenoh's own file format is not exposed: the
//! few settings a node needs are ours, and the security ones are not optional.

use edgewise_core::{MeshConfig, MeshRole};
use serde_json::json;

use crate::{MeshError, NodeTls};

/// Zenoh keep-alives per lease: a silent link is declared dead after one lease.
const KEEP_ALIVES_PER_LEASE: u64 = 4;
/// Longest pause between attempts to re-link to a `connect` endpoint: a healed partition is
/// bridged again within this (Zenoh's default backs off to 4 s).
const RECONNECT_MAX_MS: u64 = 500;

pub fn zenoh_config(cfg: &MeshConfig, tls: &NodeTls) -> Result<zenoh::Config, MeshError> {
    check(cfg)?;
    let path = |p: &std::path::Path| p.to_string_lossy().into_owned();
    let config = json!({
        "mode": match cfg.role { MeshRole::Peer => "peer", MeshRole::Fog => "router" },
        "listen": { "endpoints": cfg.listen },
        "connect": {
            "endpoints": cfg.connect,
            "retry": {
                "period_init_ms": 100,
                "period_max_ms": RECONNECT_MAX_MS,
                "period_increase_factor": 2.0,
            },
        },
        "access_control": access_control(),
        "scouting": {
            "multicast": { "enabled": cfg.multicast_scouting },
            "gossip": { "enabled": true },
        },
        "transport": { "link": {
            "tx": { "lease": cfg.lease_ms, "keep_alive": KEEP_ALIVES_PER_LEASE },
            "tls": {
                "root_ca_certificate": path(&tls.ca),
                "listen_private_key": path(&tls.key),
                "listen_certificate": path(&tls.cert),
                "connect_private_key": path(&tls.key),
                "connect_certificate": path(&tls.cert),
                "enable_mtls": true,
                // Nodes are reached by address on a LAN (DHCP, no DNS): the CA is the trust
                // decision, not the name in the certificate.
                "verify_name_on_connect": false,
            },
        }},
    });
    zenoh::Config::from_json5(&config.to_string()).map_err(|e| MeshError::Config(e.to_string()))
}

/// Zenoh's access control, default deny: over the mesh's links a node may only take part in
/// presence (`edgewise/node/*`), adverts (`edgewise/advert/*`) and calls (`edgewise/call/*`).
/// Anything else a linked process publishes, subscribes or queries is dropped at both ends, so
/// a member cannot use the mesh as a general bus into other nodes.
fn access_control() -> serde_json::Value {
    let both = ["ingress", "egress"];
    json!({
        "enabled": true,
        "default_permission": "deny",
        "rules": [
            {
                "id": "presence",
                "messages": ["liveliness_token", "declare_liveliness_subscriber", "liveliness_query"],
                "flows": both,
                "permission": "allow",
                "key_exprs": [format!("{}*", crate::NODE_PREFIX)],
            },
            {
                "id": "adverts",
                "messages": ["put", "declare_subscriber"],
                "flows": both,
                "permission": "allow",
                "key_exprs": [format!("{}*", crate::ADVERT_PREFIX)],
            },
            {
                "id": "calls",
                "messages": ["query", "declare_queryable", "reply"],
                "flows": both,
                "permission": "allow",
                "key_exprs": [format!("{}*", crate::CALL_PREFIX)],
            },
        ],
        "subjects": [{ "id": "mesh-links", "link_protocols": ["tls"] }],
        "policies": [{ "rules": ["presence", "adverts", "calls"], "subjects": ["mesh-links"] }],
    })
}

fn check(cfg: &MeshConfig) -> Result<(), MeshError> {
    if cfg.trust_domain.trim().is_empty() {
        return Err(MeshError::Config(
            "mesh.trust_domain is empty: name the domain whose CA signed this node's certificate"
                .into(),
        ));
    }
    for (field, endpoints) in [("listen", &cfg.listen), ("connect", &cfg.connect)] {
        if let Some(bad) = endpoints.iter().find(|e| !e.starts_with("tls/")) {
            return Err(MeshError::Config(format!(
                "mesh.{field} has '{bad}': every mesh link is mutually authenticated TLS, so endpoints look like tls/10.0.0.2:7447"
            )));
        }
    }
    if cfg.listen.is_empty() && cfg.connect.is_empty() && !cfg.multicast_scouting {
        return Err(MeshError::Config(
            "mesh has no listen or connect endpoints and multicast_scouting is off: this node would never meet another".into(),
        ));
    }
    if cfg.lease_ms < 100 {
        return Err(MeshError::Config(format!(
            "mesh.lease_ms is {}; use at least 100",
            cfg.lease_ms
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(yaml: &str) -> MeshConfig {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn plain_tcp_and_lonely_configs_are_refused_with_the_fix() {
        let tls = NodeTls::in_dir(std::path::Path::new("/tls"));
        let err = zenoh_config(&cfg("trust_domain: a\nlisten: [tcp/0.0.0.0:7447]"), &tls)
            .unwrap_err()
            .to_string();
        assert!(err.contains("tls/10.0.0.2:7447"), "{err}");
        let err = zenoh_config(&cfg("trust_domain: a"), &tls)
            .unwrap_err()
            .to_string();
        assert!(err.contains("never meet"), "{err}");
        let err = zenoh_config(&cfg("trust_domain: ''\nconnect: [tls/1.2.3.4:7447]"), &tls)
            .unwrap_err()
            .to_string();
        assert!(err.contains("trust_domain"), "{err}");
        zenoh_config(
            &cfg("trust_domain: a\nrole: fog\nlisten: [tls/0.0.0.0:7447]"),
            &tls,
        )
        .unwrap();
    }
}
