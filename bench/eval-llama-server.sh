#!/usr/bin/env bash
# Function-calling accuracy of llama.cpp's own llama-server, asked through a plain OpenAI client, on
# the eval set of `edgewise eval tools` (eval/tools.yaml): same tasks, system prompt, tools and
# scoring (bench/eval_openai_tools.py), so its row reads against edgewise's rows. llama-server runs
# with --jinja, so tools go through the model's own chat template and llama.cpp's tool-call parser.
#
# llama-server is built from the complete llama.cpp tree vendored in the llama-cpp-python sdist on
# PyPI (the one bench/llama-bench-compare.sh takes its drivers from), pinned by version and sha256.
# Not from the llama-cpp-sys-2 crate's copy: the crate drops tools/server, tools/ui and
# scripts/ui-assets.cmake, and its llama.cpp (0.6.0) is newer than the sdist's (0.5.0), whose server
# calls common functions the crate's common no longer has (fs_open_ifstream). So the time column
# compares different ggml builds; the scores compare prompting and tool-call handling.
# Usage: bench/eval-llama-server.sh [-m MODEL_NAME] [--json]
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL_NAME=qwen2.5-coder-0.5b-instruct
JSON=
while [ $# -gt 0 ]; do
  case $1 in
    -m) MODEL_NAME=$2; shift 2 ;;
    --json) JSON=--json; shift ;;
    *) echo "usage: $0 [-m MODEL_NAME] [--json]" >&2; exit 2 ;;
  esac
done
THREADS=${EDGEWISE_EVAL_THREADS:-2}
HOME_DIR=${EDGEWISE_HOME:-$HOME/.local/share/edgewise}
MODEL="$HOME_DIR/models/$MODEL_NAME/model.gguf"
[ -f "$MODEL" ] || { echo "model $MODEL missing: run make models (or edgewise pull $MODEL_NAME)" >&2; exit 1; }
PY=.venv/bin/python
"$PY" -c 'import openai, yaml, jsonschema' 2>/dev/null \
  || { echo "$PY lacks openai, pyyaml or jsonschema: run rm -f .venv/.ready && make venv" >&2; exit 1; }

SDIST_PKG=llama-cpp-python SDIST_VERSION=0.3.36
SDIST_SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
work=${EDGEWISE_LLAMA_SERVER_DIR:-$HOME/.cache/edgewise/llama-server-$SDIST_PKG-$SDIST_VERSION}
server="$work/build/bin/llama-server"
if [ ! -x "$server" ]; then
  if [ ! -f "$work/llama.cpp/.extracted" ]; then
    mkdir -p "$work"
    index="https://pypi.org/pypi/$SDIST_PKG/json"
    # File URLs may be relative to the JSON document (some mirrors rewrite them).
    url=$(curl -sf "$index" | python3 -c "import json,sys,urllib.parse; d=json.load(sys.stdin); print(urllib.parse.urljoin('$index', next(u['url'] for u in d['releases']['$SDIST_VERSION'] if u['filename'].endswith('.tar.gz'))))")
    curl -sf -o "$work/sdist.tar.gz" "$url"
    echo "$SDIST_SHA256  $work/sdist.tar.gz" | sha256sum -c --quiet
    rm -rf "$work/llama.cpp"
    # Vocab test models and docs (110 MB) are not needed; the .git link points into the sdist's
    # .git, which is not extracted, and would only make the build-info lookup fail noisily.
    tar xzf "$work/sdist.tar.gz" -C "$work" --strip-components=2 \
      --exclude='*/vendor/llama.cpp/models' --exclude='*/vendor/llama.cpp/docs' --exclude='*/vendor/llama.cpp/.git' \
      "llama_cpp_python-$SDIST_VERSION/vendor/llama.cpp"
    rm "$work/sdist.tar.gz"
    touch "$work/llama.cpp/.extracted"
  fi
  # Same CPU flags as edgewise's build (native, OpenMP, static). The web UI stays out: no npm and no
  # download of prebuilt assets (the server then serves no UI, the API is unaffected); no OpenSSL,
  # as the server only listens on 127.0.0.1 and downloads nothing.
  echo "building llama-server from $work/llama.cpp (first run only; long on few cores)" >&2
  cmake -S "$work/llama.cpp" -B "$work/build" -DCMAKE_BUILD_TYPE=Release \
    -DGGML_NATIVE=ON -DGGML_OPENMP=ON -DBUILD_SHARED_LIBS=OFF \
    -DLLAMA_BUILD_COMMON=ON -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF \
    -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF >/dev/null
  cmake --build "$work/build" --target llama-server -j"$(nproc)" >/dev/null
fi

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
log=$(mktemp)
# One slot, as `edgewise eval tools` loads the engine (slots = 1): with several, llama-server
# splits -c between them and the all-tools prompt would not fit one slot's share.
"$server" -m "$MODEL" --host 127.0.0.1 --port "$port" --jinja -t "$THREADS" -c 4096 -np 1 >"$log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -f "$log"' EXIT
# /health answers 503 until the model is loaded.
for _ in $(seq 1 240); do
  curl -sf "http://127.0.0.1:$port/health" >/dev/null && break
  kill -0 "$pid" 2>/dev/null || { tail -20 "$log" >&2; echo "llama-server exited" >&2; exit 1; }
  sleep 0.5
done
curl -sf "http://127.0.0.1:$port/health" >/dev/null || { tail -20 "$log" >&2; echo "llama-server not ready after 120 s" >&2; exit 1; }
"$PY" bench/eval_openai_tools.py "http://127.0.0.1:$port/v1" "$MODEL_NAME" $JSON
