//! The node's embedded MQTT broker (rumqttd), so agents on a gateway have a broker without
//! installing one. `local-broker` in endpoints maps to it (edgewise-core's config).

use std::net::SocketAddr;

use serde_json::json;

/// What happened to the embedded broker at start.
#[derive(Debug, PartialEq)]
pub enum BrokerStart {
    Started(SocketAddr),
    /// Something already listens there (often Mosquitto): agents use that broker instead.
    AddressInUse(SocketAddr),
}

/// Starts rumqttd (MQTT 3.1.1) on `listen` in its own threads; it runs until the process exits.
pub fn start(listen: &str) -> Result<BrokerStart, String> {
    let addr: SocketAddr = listen.parse().map_err(|e| {
        format!("mqtt_listen '{listen}' is not an address like 127.0.0.1:1883: {e}")
    })?;
    // rumqttd reports a bind failure only in its log, so probe the address first.
    match std::net::TcpListener::bind(addr) {
        Ok(probe) => drop(probe),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            return Ok(BrokerStart::AddressInUse(addr))
        }
        Err(e) => return Err(format!("cannot listen for MQTT on {addr}: {e}")),
    }
    // Built from JSON because part of rumqttd's config is only reachable through serde.
    let config: rumqttd::Config = serde_json::from_value(json!({
        "id": 0,
        "router": {
            "max_connections": 1000,
            "max_outgoing_packet_count": 200,
            "max_segment_size": 4 << 20,
            "max_segment_count": 10,
        },
        "v4": {"1": {
            "name": "edgewise-mqtt",
            "listen": addr.to_string(),
            "next_connection_delay_ms": 1,
            "connections": {
                "connection_timeout_ms": 60000,
                "max_payload_size": 256 << 10,
                "max_inflight_count": 100,
                "dynamic_filters": true,
            },
        }},
    }))
    .map_err(|e| format!("embedded MQTT broker config: {e}"))?;
    let mut broker = rumqttd::Broker::new(config);
    std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            if let Err(e) = broker.start() {
                tracing::error!("embedded MQTT broker stopped: {e}");
            }
        })
        .map_err(|e| format!("cannot start the MQTT broker thread: {e}"))?;
    // Wait until it accepts connections, so agents started right after can publish.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while std::net::TcpStream::connect(addr).is_err() {
        if std::time::Instant::now() > deadline {
            return Err(format!(
                "the embedded MQTT broker did not come up on {addr}"
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Ok(BrokerStart::Started(addr))
}
