#!/usr/bin/env bash
# Runs llama.cpp's llama-bench and `edgewise bench` on the same model in the same run and prints both
# with ratios.
#
# llama-bench is built against the llama.cpp sources that the llama-cpp-sys-2 crate vendors (the cargo
# registry copy), so both tools run the same ggml kernels. The crate does not ship llama-bench's own
# source file (tools/ are trimmed from the package), so the driver (tools/llama-bench/*.cpp) comes from
# the llama.cpp tree vendored in the llama-cpp-python sdist on PyPI, pinned by version and sha256.
# Usage: bench/llama-bench-compare.sh [EDGEWISE_BIN] [THREADS]
set -euo pipefail
BIN=${1:-target/release/edgewise}
THREADS=${2:-2}
MODEL_NAME=${EDGEWISE_BENCH_MODEL:-qwen2.5-coder-0.5b-instruct}
HOME_DIR=${EDGEWISE_HOME:-$HOME/.local/share/edgewise}
MODEL="$HOME_DIR/models/$MODEL_NAME/model.gguf"
[ -f "$MODEL" ] || { echo "model $MODEL missing: run make models" >&2; exit 1; }

DRIVER_PKG=llama-cpp-python DRIVER_VERSION=0.3.36
DRIVER_SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e

version=$(grep -A1 'name = "llama-cpp-sys-2"' Cargo.lock | sed -n 's/version = "\(.*\)"/\1/p')
src=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/llama-cpp-sys-2-"$version"/llama.cpp 2>/dev/null | head -1)
[ -d "$src" ] || { echo "llama-cpp-sys-2 $version sources not found; run cargo fetch" >&2; exit 1; }
work=${EDGEWISE_LLAMA_BENCH_DIR:-$HOME/.cache/edgewise/llama-bench-$version}
mkdir -p "$work"
if [ ! -x "$work/build/llama-bench/llama-bench" ] || [ ! -x "$work/build/batched-bench/llama-batched-bench" ]; then
  if [ ! -f "$work/drivers/batched-bench/batched-bench.cpp" ]; then
    index="https://pypi.org/pypi/$DRIVER_PKG/json"
    # File URLs may be relative to the JSON document (some mirrors rewrite them).
    url=$(curl -sf "$index" | python3 -c "import json,sys,urllib.parse; d=json.load(sys.stdin); print(urllib.parse.urljoin('$index', next(u['url'] for u in d['releases']['$DRIVER_VERSION'] if u['filename'].endswith('.tar.gz'))))")
    curl -sf -o "$work/sdist.tar.gz" "$url"
    echo "$DRIVER_SHA256  $work/sdist.tar.gz" | sha256sum -c --quiet
    mkdir -p "$work/drivers"
    tar xzf "$work/sdist.tar.gz" -C "$work/drivers" --strip-components=4 --wildcards '*/vendor/llama.cpp/tools/llama-bench/*' '*/vendor/llama.cpp/tools/batched-bench/*'
    rm "$work/sdist.tar.gz"
  fi
  cat > "$work/CMakeLists.txt" <<CMAKE
cmake_minimum_required(VERSION 3.14)
project(edgewise_llama_bench C CXX)
set(LLAMA_BUILD_TESTS OFF CACHE BOOL "" FORCE)
set(LLAMA_BUILD_EXAMPLES OFF CACHE BOOL "" FORCE)
set(LLAMA_BUILD_SERVER OFF CACHE BOOL "" FORCE)
set(LLAMA_BUILD_TOOLS OFF CACHE BOOL "" FORCE)
set(LLAMA_BUILD_APP OFF CACHE BOOL "" FORCE)
set(LLAMA_BUILD_COMMON ON CACHE BOOL "" FORCE)
set(LLAMA_CURL OFF CACHE BOOL "" FORCE)
add_subdirectory("$src" llama)
add_subdirectory("$work/drivers/llama-bench" llama-bench)
add_subdirectory("$work/drivers/batched-bench" batched-bench)
CMAKE
  echo "building llama-bench against $src (GGML_NATIVE=ON and OpenMP, as edgewise's build)" >&2
  cmake -S "$work" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DGGML_OPENMP=ON -DBUILD_SHARED_LIBS=OFF >/dev/null
  cmake --build "$work/build" --target llama-bench llama-batched-bench -j"$(nproc)" >/dev/null
fi

out=$(mktemp -d)
# The two tools alternate for several rounds and the medians are compared: on a shared machine one
# sample of each can differ by 10% from noise alone.
ROUNDS=${EDGEWISE_BENCH_ROUNDS:-3}
for r in $(seq 1 "$ROUNDS"); do
  "$work/build/llama-bench/llama-bench" -m "$MODEL" -p 512 -n 128 -t "$THREADS" -r 5 -o json > "$out/llama.$r.json"
  "$BIN" bench -m "$MODEL_NAME" --pp 512 --tg 128 --threads "$THREADS" --parallel 1 --prefix 0 --json > "$out/edgewise.$r.json"
done
# llama.cpp's own parallel-generation figure (decode only, no sampling): aggregate tg at 1 and 4 sequences.
"$work/build/batched-bench/llama-batched-bench" -m "$MODEL" -c 4096 -b 512 -ub 512 -npp 32 -ntg 128 -npl 1,4 -t "$THREADS" \
  --output-format jsonl 2>/dev/null | grep '^{' > "$out/batched.jsonl"
"$BIN" bench -m "$MODEL_NAME" --pp 16 --tg 128 --threads "$THREADS" --parallel 4 --prefix 1000 --reps 1 --json > "$out/edgewise.json"
python3 - "$out" "$ROUNDS" <<'PY'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
ew = json.load(open(f"{out}/edgewise.json"))
batched = {r["pl"]: r["speed_tg"] for r in map(json.loads, open(f"{out}/batched.jsonl"))}
rows = {"pp": [], "tg": []}
for r in range(1, rounds + 1):
    llama = json.load(open(f"{out}/llama.{r}.json")); mine = json.load(open(f"{out}/edgewise.{r}.json"))
    pp = next(x for x in llama if x["n_prompt"] > 0 and x["n_gen"] == 0)["avg_ts"]
    tg = next(x for x in llama if x["n_gen"] > 0 and x["n_prompt"] == 0)["avg_ts"]
    rows["pp"].append((pp, mine["pp_tokens_per_s"])); rows["tg"].append((tg, mine["tg_tokens_per_s"]))
print(f"{'figure (median of %d rounds)' % rounds:<36}{'llama-bench':>12}{'edgewise':>12}{'ratio':>8}   per-round ratios")
for name, label in (("pp", "pp512 tokens/s"), ("tg", "tg128 tokens/s")):
    theirs = statistics.median(a for a, _ in rows[name]); ours = statistics.median(b for _, b in rows[name])
    per_round = " ".join(f"{b / a:.3f}" for a, b in rows[name])
    print(f"{label:<36}{theirs:>12.1f}{ours:>12.1f}{ours / theirs:>8.3f}   {per_round}")
if ew.get("parallel_speedup"):
    print(f"{'edgewise tg: 4 streams vs 1 (t/s)':<36}{ew['single_stream_tokens_per_s']:>12.1f}{ew['parallel_aggregate_tokens_per_s']:>12.1f}{ew['parallel_speedup']:>8.2f}")
if 1 in batched and 4 in batched:
    print(f"{'llama-batched-bench tg: 4 vs 1 (t/s)':<36}{batched[1]:>12.1f}{batched[4]:>12.1f}{batched[4]/batched[1]:>8.2f}")
if ew.get("prefix_ttft_ratio"):
    print(f"{'TTFT ms, 1000-token prefix cold/warm':<36}{ew['prefix_cold_ttft_ms']:>12.0f}{ew['prefix_warm_ttft_ms']:>12.0f}{ew['prefix_ttft_ratio']:>8.3f}")
print(json.dumps({"rounds": rows, "llama_batched_bench_speed_tg": batched, "edgewise_serving": ew}))
PY
