#!/usr/bin/env bash
# End-to-end demo on loopback only:
#  1. one prompt through the CLI;
#  2. the factory-floor monitor (examples/factory-monitor/agent-config.yaml, the seed spec as is):
#     a sensor simulator on /tmp/sensors.sock, a Mosquitto broker, the agent reads the zone
#     pressures, decides, publishes an alert; the demo prints the alert as a subscriber got it;
#  3. the OpenAI-compatible server answering a tool-call request;
#  4. a Wasm agent component (sensor-handler) classifying a factory reading under that server.
set -euo pipefail
BIN=${1:-target/release/edgewise}
PORT=${EDGEWISE_DEMO_PORT:-18765}
HERE=$(cd "$(dirname "$0")" && pwd)
COMPONENTS=${EDGEWISE_COMPONENTS:-target/components/wasm32-wasip2/release}
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

echo "== edgewise run"
"$BIN" run --verbose --temperature 0 "What is 17 + 25? Reply with just the number."

echo "== factory monitor: sensor simulator, MQTT broker, agent"
python3 "$HERE/factory-monitor/sensor_sim.py" --socket /tmp/sensors.sock >/dev/null &
PIDS+=($!)
MQTT_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mosquitto -p "$MQTT_PORT" >/dev/null 2>&1 &
PIDS+=($!)
for _ in $(seq 1 50); do [ -S /tmp/sensors.sock ] && (echo > /dev/tcp/127.0.0.1/"$MQTT_PORT") 2>/dev/null && break; sleep 0.1; done
mosquitto_sub -p "$MQTT_PORT" -t alerts -q 1 -v > "$WORK/alerts.txt" &
PIDS+=($!)
sleep 0.5
# The spec names its broker `local-broker`; this node maps that name to the demo's broker, and
# its agent policy lets specs use the simulator's socket (by default no spec reaches any socket).
printf 'mqtt_brokers:\n  local-broker: 127.0.0.1:%s\nagent_policy:\n  unix_sockets: [/tmp/sensors.sock]\n' "$MQTT_PORT" > "$WORK/config.yaml"
"$BIN" --config "$WORK/config.yaml" agent run --seed 9 "$HERE/factory-monitor/agent-config.yaml" \
  "Check the zone pressures with local_sensor_read. For each zone whose status is OVER LIMIT, publish an alert with alert_system that names the zone and its pressure. Then answer with a one-line summary."
sleep 1
echo "-- what the MQTT subscriber received on 'alerts':"
if [ -s "$WORK/alerts.txt" ]; then cat "$WORK/alerts.txt"; else echo "(nothing)"; exit 1; fi
echo "-- audit log:"
"$BIN" audit verify

echo "== edgewise serve on 127.0.0.1:$PORT"
"$BIN" serve --listen "127.0.0.1:$PORT" &
PIDS+=($!)
for _ in $(seq 1 120); do curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break; sleep 0.5; done
# Inference is open to local clients; every other route needs the node's admin token.
AUTH="authorization: Bearer $("$BIN" token show)"

echo "== chat completion with a tool the model may call"
curl -sf "http://127.0.0.1:$PORT/v1/chat/completions" -H 'content-type: application/json' -d '{
  "model": "qwen2.5-coder-0.5b-instruct", "temperature": 0,
  "messages": [{"role": "user", "content": "What is the pressure in zone 4?"}],
  "tools": [{"type": "function", "function": {"name": "read_sensor", "description": "Read a pressure sensor",
             "parameters": {"type": "object", "properties": {"zone": {"type": "integer"}}, "required": ["zone"]}}}]
}'
echo
echo "== factory monitor, Wasm agent component: sensor-handler classifies the zone4 reading"
# components/sensor-handler runs in the sandbox with the grants of its manifest (model, its KV
# bucket, logging; nothing else). Installing it while the node serves swaps it in live.
cp "$COMPONENTS/sensor_handler.wasm" "$WORK/sensor_handler.wasm"
cp "$HERE/factory-monitor/sensor_handler.component.yaml" "$WORK/"
"$BIN" component add "$WORK/sensor_handler.wasm" --name sensor-handler
READING=$(python3 - <<'PY'
import json, socket
s = socket.socket(socket.AF_UNIX)
s.connect("/tmp/sensors.sock")
s.sendall(b'{"zone": "zone4"}\n')
r = json.loads(s.makefile().readline())
r["sensor"] = r.pop("zone")
print(json.dumps({"source": "factory-floor", "payload": r}))
PY
)
echo "event: $READING"
curl -sf "http://127.0.0.1:$PORT/v1/components/sensor-handler/events" -H "$AUTH" -H 'content-type: application/json' -d "$READING"
echo

echo "== metrics"
curl -sf "http://127.0.0.1:$PORT/metrics" -H "$AUTH" | grep -E '^edgewise_(completion_tokens_total|prefix_cache_hit_ratio)'
echo "demo finished"
