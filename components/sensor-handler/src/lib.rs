//! `sensor-handler`: seed 002's agent logic as a component. For each sensor reading it logs,
//! asks the node's model for a prediction (JSON-constrained), stores the prediction in its KV
//! bucket under the sensor's id, and returns it. When granted the shared document `plant`
//! (bucket `doc:plant`), it also sets `<sensor>/status` there, keeping the status it replaces as
//! `<sensor>/previous_status`, so other agents and nodes see the plant's state.

wit_bindgen::generate!({ world: "agent", path: "../../wit", generate_all });

use edgewise::agent::inference::{self, Message, Options};
use exports::edgewise::agent::handler::{Event, Guest};
use wasi::keyvalue::store;
use wasi::logging::logging::{log, Level};

struct SensorHandler;

const BUCKET: &str = "predictions";
const PLANT: &str = "doc:plant";
const SCHEMA: &str = r#"{"type":"object","properties":{"status":{"type":"string","enum":["normal","warning","critical"]},"reason":{"type":"string"}},"required":["status","reason"],"additionalProperties":false}"#;

impl Guest for SensorHandler {
    fn handle(event: Event) -> Result<String, String> {
        let reading: serde_json::Value = serde_json::from_str(&event.payload)
            .map_err(|e| format!("the payload is not JSON: {e}"))?;
        let sensor = reading
            .get("sensor")
            .and_then(|v| v.as_str())
            .unwrap_or(&event.source)
            .to_owned();
        log(Level::Info, "sensor-handler", &format!("reading from {sensor}: {}", event.payload));

        let messages = vec![
            Message {
                role: "system".into(),
                content: "You watch industrial sensors. Classify a reading as normal, warning (within 10% of its limit) or critical (over its limit), with a one-sentence reason.".into(),
            },
            Message { role: "user".into(), content: event.payload.clone() },
        ];
        let options = Options {
            max_tokens: Some(96),
            temperature: Some(0.0),
            json_schema: Some(SCHEMA.into()),
        };
        let prediction = inference::chat(&messages, &options).map_err(|e| format!("inference: {e:?}"))?;

        let bucket = store::open(BUCKET).map_err(|e| format!("kv open {BUCKET}: {e:?}"))?;
        bucket
            .set(&sensor, prediction.as_bytes())
            .map_err(|e| format!("kv set {sensor}: {e:?}"))?;
        log(Level::Info, "sensor-handler", &format!("prediction for {sensor}: {prediction}"));
        update_plant(&sensor, &prediction)?;
        Ok(prediction)
    }
}

/// Shared world state: `<sensor>/status` in the document `plant`; skipped when not granted.
fn update_plant(sensor: &str, prediction: &str) -> Result<(), String> {
    let plant = match store::open(PLANT) {
        Ok(bucket) => bucket,
        Err(store::Error::AccessDenied) => return Ok(()),
        Err(e) => return Err(format!("kv open {PLANT}: {e:?}")),
    };
    let status = serde_json::from_str::<serde_json::Value>(prediction)
        .ok()
        .and_then(|p| p.get("status").cloned())
        .ok_or_else(|| format!("the prediction has no status: {prediction}"))?;
    let key = format!("{sensor}/status");
    if let Some(previous) = plant.get(&key).map_err(|e| format!("kv get {key}: {e:?}"))? {
        let previous_key = format!("{sensor}/previous_status");
        plant
            .set(&previous_key, &previous)
            .map_err(|e| format!("kv set {previous_key}: {e:?}"))?;
    }
    plant
        .set(&key, status.to_string().as_bytes())
        .map_err(|e| format!("kv set {key}: {e:?}"))
}

export!(SensorHandler);
