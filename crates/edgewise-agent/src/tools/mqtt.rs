//! `mqtt://BROKER:PORT/TOPIC` and `builtin:mqtt_publish`: publish with QoS 1 and wait for the
//! broker's acknowledgement, so "published" means the broker has it.

use std::time::Duration;

use async_trait::async_trait;
use edgewise_infer::ToolSpec;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;

use super::{resolve_destination, Tool, ToolContext, ToolError};
use crate::egress::EgressPolicy;

/// Where one agent may publish: its egress (the node's brokers included) and the node's
/// `agent_policy.mqtt_topics` for its id.
#[derive(Clone)]
pub struct Topics {
    pub egress: EgressPolicy,
    policy: edgewise_core::AgentPolicy,
    agent: String,
}

impl Topics {
    pub fn of(ctx: &ToolContext) -> Self {
        Self {
            egress: ctx.egress.mqtt(),
            policy: ctx.config.agent_policy.clone(),
            agent: ctx.agent_id.clone(),
        }
    }

    /// Refuses a topic the node's policy does not cover, or one with wildcards.
    pub fn check(&self, topic: &str) -> Result<(), ToolError> {
        if topic.contains('+') || topic.contains('#') {
            return Err(ToolError::Refused(format!(
                "'{topic}' contains a wildcard; publish to one topic"
            )));
        }
        if !self.policy.topic_allowed(topic, &self.agent) {
            return Err(ToolError::Refused(format!(
                "the topic '{topic}' is outside agent_policy.mqtt_topics ({}) of this node",
                self.policy.mqtt_topics.join(", ")
            )));
        }
        Ok(())
    }
}

pub struct MqttTool {
    spec: ToolSpec,
    /// `host:port`.
    broker: String,
    /// Fixed topic (capability endpoint) or `None` when the call names it (`mqtt_publish`).
    topic: Option<String>,
    topics: Topics,
    timeout: Duration,
}

impl MqttTool {
    pub fn new(
        spec: ToolSpec,
        broker: String,
        topic: Option<String>,
        topics: Topics,
        timeout: Duration,
    ) -> Self {
        Self {
            spec,
            broker,
            topic,
            topics,
            timeout,
        }
    }
}

#[async_trait]
impl Tool for MqttTool {
    fn spec(&self) -> &ToolSpec {
        &self.spec
    }

    async fn call(&self, args: Value) -> Result<String, ToolError> {
        let topic = match &self.topic {
            Some(t) => t.clone(),
            None => args
                .get("topic")
                .and_then(Value::as_str)
                .ok_or_else(|| ToolError::Refused("`topic` is required".into()))?
                .to_owned(),
        };
        self.topics.check(&topic)?;
        let message = match args.get("message") {
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => args.to_string(),
        };
        publish(
            &self.broker,
            &topic,
            message.as_bytes(),
            &self.topics.egress,
            self.timeout,
        )
        .await?;
        Ok(format!("delivered to '{topic}'"))
    }
}

/// One connection per publish: alerts are rare, and a fresh connection cannot be stale.
pub async fn publish(
    broker: &str,
    topic: &str,
    payload: &[u8],
    egress: &EgressPolicy,
    timeout: Duration,
) -> Result<(), ToolError> {
    let (host, port) = match broker.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse::<u16>().map_err(|_| {
                ToolError::Refused(format!("broker address '{broker}' has no valid port"))
            })?,
        ),
        None => (broker, 1883),
    };
    let addrs = resolve_destination(host, port, egress).await?;
    let addr = addrs[0];
    let id = format!("edgewise-{}", uuid::Uuid::new_v4().simple());
    let mut opts = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    opts.set_keep_alive(Duration::from_secs(10));
    let (client, mut events) = AsyncClient::new(opts, 8);
    client
        .publish(topic, QoS::AtLeastOnce, false, payload.to_vec())
        .await
        .map_err(|e| ToolError::Failed(format!("mqtt publish: {e}")))?;
    let acked = async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(format!("mqtt broker {broker}: {e}")),
            }
        }
    };
    let result = match tokio::time::timeout(timeout, acked).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(ToolError::Failed(e)),
        Err(_) => Err(ToolError::Failed(format!(
            "mqtt broker {broker} did not acknowledge within {timeout:?}"
        ))),
    };
    let _ = client.disconnect().await;
    // Flush the DISCONNECT; the broker may close first, which is fine.
    let _ = tokio::time::timeout(Duration::from_millis(200), events.poll()).await;
    result
}
