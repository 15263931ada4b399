#!/usr/bin/env bash
# Builds llama.cpp's llama-bench from the very sources llama-cpp-sys-2 vendors (the cargo registry
# copy), runs it and `edgewise bench` on the same model in the same run, and prints both with ratios.
# Usage: bench/llama-bench-compare.sh [EDGEWISE_BIN] [THREADS]
set -euo pipefail
BIN=${1:-target/release/edgewise}
THREADS=${2:-2}
MODEL_NAME=${EDGEWISE_BENCH_MODEL:-qwen2.5-coder-0.5b-instruct}
HOME_DIR=${EDGEWISE_HOME:-$HOME/.local/share/edgewise}
MODEL="$HOME_DIR/models/$MODEL_NAME/model.gguf"
[ -f "$MODEL" ] || { echo "model $MODEL missing: run make models" >&2; exit 1; }

version=$(grep -A1 'name = "llama-cpp-sys-2"' Cargo.lock | sed -n 's/version = "\(.*\)"/\1/p')
src=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/llama-cpp-sys-2-"$version"/llama.cpp 2>/dev/null | head -1)
[ -d "$src" ] || { echo "llama-cpp-sys-2 $version sources not found; run cargo fetch" >&2; exit 1; }
build=${EDGEWISE_LLAMA_BENCH_BUILD:-$HOME/.cache/edgewise/llama-bench-$version}
if [ ! -x "$build/bin/llama-bench" ]; then
  echo "building llama-bench from $src (GGML_NATIVE=ON, OpenMP, as our build)" >&2
  cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DGGML_OPENMP=ON \
    -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
    -DLLAMA_BUILD_TOOLS=ON -DBUILD_SHARED_LIBS=OFF >/dev/null
  cmake --build "$build" --target llama-bench -j"$(nproc)" >/dev/null
fi

out=$(mktemp -d)
"$build/bin/llama-bench" -m "$MODEL" -p 512 -n 128 -t "$THREADS" -r 5 -o json > "$out/llama.json"
"$BIN" bench -m "$MODEL_NAME" --pp 512 --tg 128 --threads "$THREADS" --parallel 4 --prefix 1000 --json > "$out/edgewise.json"
python3 - "$out/llama.json" "$out/edgewise.json" <<'PY'
import json, sys
llama = json.load(open(sys.argv[1])); ew = json.load(open(sys.argv[2]))
pp = next(r for r in llama if r["n_prompt"] > 0 and r["n_gen"] == 0)["avg_ts"]
tg = next(r for r in llama if r["n_gen"] > 0 and r["n_prompt"] == 0)["avg_ts"]
print(f"{'figure':<34}{'llama-bench':>14}{'edgewise':>12}{'ratio':>9}")
print(f"{'pp512 tokens/s':<34}{pp:>14.1f}{ew['pp_tokens_per_s']:>12.1f}{ew['pp_tokens_per_s']/pp:>9.3f}")
print(f"{'tg128 tokens/s':<34}{tg:>14.1f}{ew['tg_tokens_per_s']:>12.1f}{ew['tg_tokens_per_s']/tg:>9.3f}")
if ew.get("parallel_speedup"):
    print(f"{'parallel 4 aggregate / 1 stream':<34}{'':>14}{ew['parallel_aggregate_tokens_per_s']:>12.1f}{ew['parallel_speedup']:>9.2f}")
if ew.get("prefix_ttft_ratio"):
    print(f"{'1000-token prefix: warm/cold TTFT':<34}{'':>14}{ew['prefix_warm_ttft_ms']:>10.0f}ms{ew['prefix_ttft_ratio']:>9.3f}")
print(json.dumps({"llama_bench": {"pp512": pp, "tg128": tg}, "edgewise": ew}))
PY
