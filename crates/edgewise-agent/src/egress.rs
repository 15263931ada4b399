//! The egress policy: which destinations count as inside the local trust domain.
//!
//! Names are resolved first and every resulting address is checked, so `localhost.evil.example`
//! pointing at a public address is refused, and a name that resolves to a LAN address is allowed.

use std::net::{IpAddr, SocketAddr};

/// Loopback, private (RFC 1918 / ULA) and link-local addresses: this host and its LAN.
pub fn is_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback() || v4.is_private() || v4.is_link_local(),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_local(IpAddr::V4(v4));
            }
            let seg0 = v6.segments()[0];
            v6.is_loopback() || (seg0 & 0xfe00) == 0xfc00 || (seg0 & 0xffc0) == 0xfe80
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EgressError {
    /// The policy forbids the destination.
    #[error("egress denied: {host} resolves to {ip}, outside the local trust domain, and this agent's policy has egress_allowed: false")]
    Denied { host: String, ip: IpAddr },
    #[error("cannot resolve {host}: {message}")]
    Unresolvable { host: String, message: String },
}

/// Resolves `host:port` and returns the addresses, refusing any outside the trust domain when
/// egress is not allowed.
pub async fn resolve_checked(
    host: &str,
    port: u16,
    egress_allowed: bool,
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
    if !egress_allowed {
        if let Some(outside) = addrs.iter().find(|a| !is_local(a.ip())) {
            return Err(EgressError::Denied {
                host: host.to_owned(),
                ip: outside.ip(),
            });
        }
    }
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_addresses() {
        for local in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.9",
            "172.16.5.5",
            "169.254.1.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:192.168.1.1",
        ] {
            assert!(is_local(local.parse().unwrap()), "{local}");
        }
        for public in [
            "8.8.8.8",
            "1.1.1.1",
            "172.32.0.1",
            "100.64.0.1",
            "2001:4860::8888",
            "::ffff:8.8.8.8",
        ] {
            assert!(!is_local(public.parse().unwrap()), "{public}");
        }
    }

    #[tokio::test]
    async fn literal_public_address_is_refused_without_any_traffic() {
        let err = resolve_checked("203.0.113.7", 80, false)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("egress denied"), "{err}");
        assert!(resolve_checked("127.0.0.1", 80, false).await.is_ok());
        assert!(resolve_checked("203.0.113.7", 80, true).await.is_ok());
    }
}
