#!/usr/bin/env python3
"""FAISS HNSW on the vectors `edgewise bench vector --write DIR` wrote, with the same parameters
(M, efConstruction, efSearch) and the same exact neighbours, so the two indexes are compared on
equal terms. Prints one JSON object. Needs numpy and faiss-cpu (PyPI).

Usage: faiss_hnsw.py DIR
"""
import json
import resource
import sys
import time

import faiss
import numpy as np


def rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: faiss_hnsw.py DIR (written by `edgewise bench vector --write DIR`)")
    d = sys.argv[1]
    meta = json.load(open(f"{d}/meta.json"))
    n, dim, nq, k = meta["n"], meta["dim"], meta["queries"], meta["k"]
    base = np.fromfile(f"{d}/base.f32", dtype="<f4").reshape(n, dim)
    queries = np.fromfile(f"{d}/queries.f32", dtype="<f4").reshape(nq, dim)
    truth = np.fromfile(f"{d}/truth.u32", dtype="<u4").reshape(nq, k)

    threads = faiss.omp_get_max_threads()
    rss_before = rss_mb()
    # Unit vectors: inner product is cosine, as usearch's cos metric.
    index = faiss.IndexHNSWFlat(dim, meta["connectivity"], faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = meta["expansion_add"]
    started = time.perf_counter()
    index.add(base)
    build_s = time.perf_counter() - started
    rss_after = rss_mb()

    index.hnsw.efSearch = meta["expansion_search"]
    # One query per call on one core, as an agent's search is.
    faiss.omp_set_num_threads(1)
    for q in queries[:100]:
        index.search(q.reshape(1, dim), k)
    samples, found = [], 0
    for q, exact in zip(queries, truth):
        started = time.perf_counter()
        _, ids = index.search(q.reshape(1, dim), k)
        samples.append(time.perf_counter() - started)
        found += len(set(ids[0].tolist()) & set(exact.tolist()))
    samples.sort()
    at = lambda p: samples[round((len(samples) - 1) * p)] * 1e6
    print(json.dumps({
        "faiss_version": faiss.__version__,
        "n": n, "dim": dim, "k": k,
        "build_s": build_s, "build_threads": threads,
        "rss_before_mb": rss_before, "rss_after_build_mb": rss_after,
        "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "recall_at_k": found / (k * nq),
        "ann": {"calls": nq, "p50_us": at(0.5), "p99_us": at(0.99),
                "mean_us": sum(samples) / len(samples) * 1e6},
    }, indent=2))


if __name__ == "__main__":
    main()
