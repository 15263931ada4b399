#!/usr/bin/env bash
# End-to-end demo: one prompt through the CLI, then the OpenAI-compatible server answering a chat
# request and a tool call. Uses only loopback.
set -euo pipefail
BIN=${1:-target/release/edgewise}
PORT=${EDGEWISE_DEMO_PORT:-18765}

echo "== edgewise run"
"$BIN" run --verbose --temperature 0 "What is 17 + 25? Reply with just the number."

echo "== edgewise serve on 127.0.0.1:$PORT"
"$BIN" serve --listen "127.0.0.1:$PORT" &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break; sleep 0.5; done

echo "== chat completion with a tool the model may call"
curl -sf "http://127.0.0.1:$PORT/v1/chat/completions" -H 'content-type: application/json' -d '{
  "model": "qwen2.5-coder-0.5b-instruct", "temperature": 0,
  "messages": [{"role": "user", "content": "What is the pressure in zone 4?"}],
  "tools": [{"type": "function", "function": {"name": "read_sensor", "description": "Read a pressure sensor",
             "parameters": {"type": "object", "properties": {"zone": {"type": "integer"}}, "required": ["zone"]}}}]
}'
echo
echo "== metrics"
curl -sf "http://127.0.0.1:$PORT/metrics" | grep -E '^edgewise_(completion_tokens_total|prefix_cache_hit_ratio)'
echo "demo finished"
