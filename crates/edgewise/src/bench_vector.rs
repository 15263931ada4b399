//! `edgewise bench vector`: the HNSW index that knowledge collections use, on N synthetic
//! embeddings: build time, memory, recall@k against exact search, single-query latency.
//! `--write DIR` saves the vectors, queries and exact neighbours so `bench/faiss_hnsw.py` measures
//! FAISS on the same data in the same run (`bench/vector-compare.sh` does both).
//!
//! The default data is clustered like sentence embeddings are (points around 1,000 centres on the
//! unit sphere, about 0.5 cosine within a cluster, about 0 across): uniform random vectors in 384
//! dimensions have no near neighbours to find and say little about real collections.
//! `--distribution uniform` measures that worst case too.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use edgewise_store::knowledge::{build_index, CONNECTIVITY, EXPANSION_ADD, EXPANSION_SEARCH};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::bench_wasm::Latency;

#[derive(Args)]
pub struct VectorBenchArgs {
    /// Vectors in the index.
    #[arg(long, default_value_t = 100_000)]
    n: usize,
    #[arg(long, default_value_t = 384)]
    dim: usize,
    /// Queries timed one at a time (not in the index).
    #[arg(long, default_value_t = 1_000)]
    queries: usize,
    /// Neighbours per query; recall is |found ∩ exact| / k.
    #[arg(long, default_value_t = 10)]
    k: usize,
    #[arg(long, value_enum, default_value_t = Distribution::Clustered)]
    distribution: Distribution,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Also write base.f32, queries.f32, truth.u32 and meta.json here for bench/faiss_hnsw.py.
    #[arg(long)]
    write: Option<PathBuf>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum Distribution {
    /// Points around 1,000 centres, like sentence embeddings.
    Clustered,
    /// Uniform on the unit sphere: no structure, the hardest case for any ANN index.
    Uniform,
}

#[derive(Serialize)]
struct Report {
    n: usize,
    dim: usize,
    k: usize,
    distribution: Distribution,
    connectivity: usize,
    expansion_add: usize,
    expansion_search: usize,
    build_s: f64,
    build_threads: usize,
    index_mb: f64,
    rss_before_mb: f64,
    rss_after_build_mb: f64,
    recall_at_k: f64,
    ann: Latency,
    exact: Latency,
}

const CLUSTERS: usize = 1_000;
/// Per-coordinate noise around a centre: |noise| ≈ 1, so a point is ~0.7 cosine from its centre.
fn cluster_noise(dim: usize) -> f32 {
    1.0 / (dim as f32).sqrt()
}

/// A standard normal sample (Box–Muller); rand 0.8 has no normal distribution of its own.
fn normal(rng: &mut StdRng) -> f32 {
    let u1: f32 = rng.gen_range(f32::EPSILON..1.0);
    let u2: f32 = rng.gen();
    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}

fn normalise(v: &mut [f32]) {
    let norm = v
        .iter()
        .map(|x| x * x)
        .sum::<f32>()
        .sqrt()
        .max(f32::MIN_POSITIVE);
    v.iter_mut().for_each(|x| *x /= norm);
}

fn random_unit(rng: &mut StdRng, dim: usize) -> Vec<f32> {
    let mut v: Vec<f32> = (0..dim).map(|_| normal(rng)).collect();
    normalise(&mut v);
    v
}

struct Data {
    base: Vec<Vec<f32>>,
    queries: Vec<Vec<f32>>,
}

fn generate(a: &VectorBenchArgs) -> Data {
    let mut rng = StdRng::seed_from_u64(a.seed);
    let centres: Vec<Vec<f32>> = match a.distribution {
        Distribution::Clustered => (0..CLUSTERS)
            .map(|_| random_unit(&mut rng, a.dim))
            .collect(),
        Distribution::Uniform => Vec::new(),
    };
    let sigma = cluster_noise(a.dim);
    let point = |rng: &mut StdRng| match a.distribution {
        Distribution::Uniform => random_unit(rng, a.dim),
        Distribution::Clustered => {
            let c = &centres[rng.gen_range(0..centres.len())];
            let mut v: Vec<f32> = c.iter().map(|x| x + sigma * normal(rng)).collect();
            normalise(&mut v);
            v
        }
    };
    let base = (0..a.n).map(|_| point(&mut rng)).collect();
    let queries = (0..a.queries).map(|_| point(&mut rng)).collect();
    Data { base, queries }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight lanes so the compiler vectorises the sum.
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// The exact top-k by cosine (vectors are unit length), best first.
fn exact_top_k(base: &[Vec<f32>], query: &[f32], k: usize) -> Vec<u32> {
    let mut best: Vec<(f32, u32)> = Vec::with_capacity(k + 1);
    for (i, v) in base.iter().enumerate() {
        let s = dot(v, query);
        if best.len() < k || s > best[best.len() - 1].0 {
            let at = best.partition_point(|(b, _)| *b >= s);
            best.insert(at, (s, i as u32));
            best.truncate(k);
        }
    }
    best.into_iter().map(|(_, i)| i).collect()
}

/// Ground truth for every query on all cores; the first `timed` queries are also timed one at a
/// time on one core, which is what a collection without an index pays per search.
fn exact_all(
    base: &[Vec<f32>],
    queries: &[Vec<f32>],
    k: usize,
    timed: usize,
) -> (Vec<Vec<u32>>, Vec<Duration>) {
    let samples: Vec<Duration> = queries
        .iter()
        .take(timed)
        .map(|q| {
            let started = Instant::now();
            std::hint::black_box(exact_top_k(base, q, k));
            started.elapsed()
        })
        .collect();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per = queries.len().div_ceil(threads).max(1);
    let truth = std::thread::scope(|s| {
        let parts: Vec<_> = queries
            .chunks(per)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .map(|q| exact_top_k(base, q, k))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        parts
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    });
    (truth, samples)
}

fn rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn write_f32(path: &Path, rows: &[Vec<f32>]) -> Result<()> {
    let mut bytes = Vec::with_capacity(rows.len() * rows.first().map_or(0, Vec::len) * 4);
    for v in rows.iter().flatten() {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))
}

fn write_data(dir: &Path, a: &VectorBenchArgs, data: &Data, truth: &[Vec<u32>]) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    write_f32(&dir.join("base.f32"), &data.base)?;
    write_f32(&dir.join("queries.f32"), &data.queries)?;
    let ids: Vec<u8> = truth
        .iter()
        .flatten()
        .flat_map(|i| i.to_le_bytes())
        .collect();
    std::fs::write(dir.join("truth.u32"), ids).context("cannot write truth.u32")?;
    let meta = serde_json::json!({
        "n": a.n, "dim": a.dim, "queries": a.queries, "k": a.k,
        "connectivity": CONNECTIVITY, "expansion_add": EXPANSION_ADD,
        "expansion_search": EXPANSION_SEARCH,
    });
    std::fs::write(dir.join("meta.json"), serde_json::to_vec_pretty(&meta)?)
        .context("cannot write meta.json")
}

pub fn run(a: VectorBenchArgs) -> Result<()> {
    if a.n == 0 || a.dim == 0 || a.queries == 0 || a.k == 0 {
        bail!("--n, --dim, --queries and --k must all be at least 1");
    }
    if a.k > a.n {
        bail!("--k {} is more than the {} vectors in the index", a.k, a.n);
    }
    let data = generate(&a);
    let timed_exact = a.queries.min(100);
    let (truth, exact_samples) = exact_all(&data.base, &data.queries, a.k, timed_exact);
    if let Some(dir) = &a.write {
        write_data(dir, &a, &data, &truth)?;
    }

    let rss_before_mb = rss_mb();
    let started = Instant::now();
    let index =
        build_index(a.dim, &data.base).map_err(|e| anyhow::anyhow!("building the index: {e}"))?;
    let build_s = started.elapsed().as_secs_f64();
    let rss_after_build_mb = rss_mb();

    for q in data.queries.iter().take(100) {
        index
            .search(q, a.k)
            .map_err(|e| anyhow::anyhow!("search: {e}"))?;
    }
    let mut samples = Vec::with_capacity(a.queries);
    let mut found = 0usize;
    for (q, exact) in data.queries.iter().zip(&truth) {
        let started = Instant::now();
        let hits = index
            .search(q, a.k)
            .map_err(|e| anyhow::anyhow!("search: {e}"))?;
        samples.push(started.elapsed());
        found += hits
            .keys
            .iter()
            .filter(|key| exact.contains(&(**key as u32)))
            .count();
    }
    let report = Report {
        n: a.n,
        dim: a.dim,
        k: a.k,
        distribution: a.distribution,
        connectivity: CONNECTIVITY,
        expansion_add: EXPANSION_ADD,
        expansion_search: EXPANSION_SEARCH,
        build_s,
        build_threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        index_mb: index.memory_usage() as f64 / (1024.0 * 1024.0),
        rss_before_mb,
        rss_after_build_mb,
        recall_at_k: found as f64 / (a.k * a.queries) as f64,
        ann: Latency::of(samples),
        exact: Latency::of(exact_samples),
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let r = &report;
    println!(
        "usearch HNSW (M={}, ef_construction={}, ef_search={}) on {} {} {}-d vectors",
        r.connectivity,
        r.expansion_add,
        r.expansion_search,
        r.n,
        a.distribution
            .to_possible_value()
            .map_or_else(String::new, |v| v.get_name().to_owned()),
        r.dim
    );
    println!(
        "build        {:>9.2} s on {} threads",
        r.build_s, r.build_threads
    );
    println!(
        "memory       {:>9.1} MB index, RSS {:.1} → {:.1} MB",
        r.index_mb, r.rss_before_mb, r.rss_after_build_mb
    );
    println!(
        "recall@{:<5} {:>9.4} over {} queries",
        r.k, r.recall_at_k, a.queries
    );
    println!(
        "query (1 core) p50 {:.3} ms, p99 {:.3} ms; exact search p50 {:.2} ms ({:.0}x slower)",
        r.ann.p50_us / 1e3,
        r.ann.p99_us / 1e3,
        r.exact.p50_us / 1e3,
        r.exact.p50_us / r.ann.p50_us
    );
    if let Some(dir) = &a.write {
        println!("vectors written to {}", dir.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_top_k_orders_by_cosine() {
        let base = vec![vec![1.0, 0.0], vec![0.0, 1.0], vec![0.8, 0.6]];
        assert_eq!(exact_top_k(&base, &[1.0, 0.0], 2), vec![0, 2]);
        assert_eq!(exact_top_k(&base, &[0.0, 1.0], 3), vec![1, 2, 0]);
    }

    #[test]
    fn clustered_points_are_close_to_their_neighbours_and_unit_length() {
        let a = VectorBenchArgs {
            n: 10_000,
            dim: 64,
            queries: 10,
            k: 5,
            distribution: Distribution::Clustered,
            seed: 1,
            write: None,
            json: false,
        };
        let data = generate(&a);
        assert!(data.base.iter().all(|v| (dot(v, v) - 1.0).abs() < 1e-4));
        // Ten points per cluster: each query's best match is a cluster mate, not a stranger (~0).
        let q = &data.queries[0];
        let best = exact_top_k(&data.base, q, 1)[0] as usize;
        assert!(dot(q, &data.base[best]) > 0.3);
    }
}
