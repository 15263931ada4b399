//! MQTT triggers: a capability with `subscribe: true` starts a run for each message on its topic.
//! This module only turns subscriptions into a stream of messages; whoever hosts agents (the
//! server) decides how runs are started from them.

use std::net::SocketAddr;
use std::time::Duration;

use edgewise_core::{AgentSpec, Endpoint, NodeConfig};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::tools::{resolve_destination, ToolError};

/// One subscribed topic of one agent.
#[derive(Debug, Clone, PartialEq)]
pub struct Trigger {
    pub agent: String,
    pub capability: String,
    /// `host:port`, after the node's broker aliases.
    pub broker: String,
    pub topic: String,
}

#[derive(Debug, Clone)]
pub struct TriggerMessage {
    pub capability: String,
    pub topic: String,
    pub payload: String,
}

impl TriggerMessage {
    /// The run's task: the message, and where it came from.
    pub fn task(&self) -> String {
        format!(
            "A message arrived on the MQTT topic '{}':\n{}",
            self.topic, self.payload
        )
    }
}

/// The spec's `subscribe: true` capabilities.
pub fn triggers(spec: &AgentSpec, config: &NodeConfig) -> Vec<Trigger> {
    spec.capabilities
        .iter()
        .filter(|c| c.subscribe)
        .filter_map(|c| match &c.endpoint {
            Endpoint::Mqtt {
                broker,
                port,
                topic,
            } => Some(Trigger {
                agent: spec.agent_id.clone(),
                capability: c.name.clone(),
                broker: config.mqtt_broker_addr(broker, *port),
                topic: topic.clone(),
            }),
            _ => None,
        })
        .collect()
}

impl Trigger {
    /// Checks the broker against the egress policy (once, at registration: the connection is
    /// then pinned to the checked address).
    pub async fn resolve(
        &self,
        egress: &crate::egress::EgressPolicy,
    ) -> Result<SocketAddr, ToolError> {
        let (host, port) = match self.broker.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse::<u16>().map_err(|_| {
                    ToolError::Refused(format!(
                        "broker address '{}' has no valid port",
                        self.broker
                    ))
                })?,
            ),
            None => (self.broker.as_str(), 1883),
        };
        Ok(resolve_destination(host, port, &egress.mqtt()).await?[0])
    }

    /// Subscribes (QoS 1) and forwards each message to `out` until `cancel`. Reconnects after
    /// broker failures; resubscribes on every connection. A message that finds `out` full is
    /// dropped with a warning: a trigger must not queue without bound behind a slow agent.
    pub async fn run(
        self,
        addr: SocketAddr,
        out: mpsc::Sender<TriggerMessage>,
        cancel: CancellationToken,
    ) {
        let id = format!("edgewise-{}-{}", self.agent, uuid::Uuid::new_v4().simple());
        let mut opts = MqttOptions::new(id, addr.ip().to_string(), addr.port());
        opts.set_keep_alive(Duration::from_secs(30));
        let (client, mut events) = AsyncClient::new(opts, 16);
        let mut failures = 0u32;
        loop {
            let event = tokio::select! {
                _ = cancel.cancelled() => break,
                e = events.poll() => e,
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    failures = 0;
                    tracing::info!(agent = %self.agent, topic = %self.topic, broker = %self.broker, "trigger subscribed");
                    if let Err(e) = client.subscribe(&self.topic, QoS::AtLeastOnce).await {
                        tracing::warn!(agent = %self.agent, "subscribe to '{}': {e}", self.topic);
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let msg = TriggerMessage {
                        capability: self.capability.clone(),
                        topic: p.topic.clone(),
                        payload: String::from_utf8_lossy(&p.payload).into_owned(),
                    };
                    if out.try_send(msg).is_err() {
                        tracing::warn!(agent = %self.agent, topic = %p.topic, "trigger message dropped: the agent is still busy with earlier ones");
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    failures += 1;
                    if failures == 1 || failures.is_power_of_two() {
                        tracing::warn!(agent = %self.agent, broker = %self.broker, "trigger connection: {e} (retrying)");
                    }
                    let backoff = Duration::from_millis(500 * u64::from(failures.min(20)));
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                }
            }
        }
        let _ = client.disconnect().await;
    }
}
