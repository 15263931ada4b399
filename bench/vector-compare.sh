#!/usr/bin/env bash
# `edgewise bench vector` and FAISS HNSW (bench/faiss_hnsw.py) on the same vectors in the same run,
# with ratios. FAISS comes from PyPI (faiss-cpu) into bench/.venv-faiss unless PYTHON names a python
# that already has faiss and numpy.
# Usage: bench/vector-compare.sh [EDGEWISE_BIN] [extra `bench vector` flags, e.g. --n 100000 --dim 384]
set -euo pipefail
BIN=${1:-target/release/edgewise}
shift || true
here=$(cd "$(dirname "$0")" && pwd)
if [ -z "${PYTHON:-}" ]; then
  venv="$here/.venv-faiss"
  if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import faiss, numpy' 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check 'faiss-cpu==1.*' 'numpy==2.*'
  fi
  PYTHON="$venv/bin/python"
fi
data=$(mktemp -d)
trap 'rm -rf "$data"' EXIT
"$BIN" bench vector --write "$data" --json "$@" > "$data/edgewise.json"
"$PYTHON" "$here/faiss_hnsw.py" "$data" > "$data/faiss.json"
"$PYTHON" - "$data/edgewise.json" "$data/faiss.json" <<'PY'
import json, sys
e, f = (json.load(open(p)) for p in sys.argv[1:3])
print(f"{e['n']} {e['distribution']} {e['dim']}-d vectors, k={e['k']}, "
      f"M={e['connectivity']} efConstruction={e['expansion_add']} efSearch={e['expansion_search']}")
rows = [
    ("recall@k", e["recall_at_k"], f["recall_at_k"], "{:.4f}"),
    ("query p50 ms (1 core)", e["ann"]["p50_us"] / 1e3, f["ann"]["p50_us"] / 1e3, "{:.3f}"),
    ("query p99 ms (1 core)", e["ann"]["p99_us"] / 1e3, f["ann"]["p99_us"] / 1e3, "{:.3f}"),
    (f"build s ({e['build_threads']} threads)", e["build_s"], f["build_s"], "{:.2f}"),
    ("RSS growth by build MB", e["rss_after_build_mb"] - e["rss_before_mb"],
     f["rss_after_build_mb"] - f["rss_before_mb"], "{:.1f}"),
]
print(f"{'':28} {'edgewise':>10} {'faiss ' + f['faiss_version']:>12} {'edgewise/faiss':>15}")
for name, a, b, fmt in rows:
    ratio = a / b if b else float("nan")
    print(f"{name:28} {fmt.format(a):>10} {fmt.format(b):>12} {ratio:>15.2f}")
print(f"exact search p50 ms (1 core): {e['exact']['p50_us'] / 1e3:.2f}")
PY
