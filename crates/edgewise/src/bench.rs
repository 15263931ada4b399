//! `edgewise bench`: llama-bench's pp/tg method plus the serving figures llama-bench lacks:
//! aggregate generation with K parallel streams and time-to-first-token with a shared prefix.

use std::time::Instant;

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use edgewise_core::SamplingParams;
use edgewise_infer::{Engine, Event, GenerateRequest};
use serde::Serialize;

use crate::node::Node;

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    what: Option<BenchWhat>,
    #[arg(short, long)]
    model: Option<String>,
    /// Prompt tokens processed in one batch.
    #[arg(long, default_value_t = 512)]
    pp: u32,
    /// Tokens generated one at a time.
    #[arg(long, default_value_t = 128)]
    tg: u32,
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Parallel streams for the aggregate generation figure (1 skips it).
    #[arg(long, default_value_t = 4)]
    parallel: u32,
    /// Length of the shared prefix for the prefix-cache figure (0 skips it).
    #[arg(long, default_value_t = 1000)]
    prefix: usize,
    #[arg(long, default_value_t = 5)]
    reps: u32,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum BenchWhat {
    /// A 10-step agent run with and without KV reuse between steps.
    Agent(crate::bench_agent::AgentBenchArgs),
    /// Wasm component call latency (p50/p99 of instantiate + invoke of calc) against spawning a
    /// native process per call.
    Wasm(crate::bench_wasm::WasmBenchArgs),
    /// The knowledge collections' HNSW index: recall@k against exact search, query latency,
    /// build time and memory, on synthetic embeddings (see bench/vector-compare.sh for FAISS).
    Vector(crate::bench_vector::VectorBenchArgs),
    /// Three nodes on loopback: what offloading a request to a neighbour adds, and how soon the
    /// caller gets its answer after the node running it is killed.
    Mesh(crate::bench_mesh::MeshBenchArgs),
}

#[derive(Serialize)]
struct Report {
    model: String,
    threads: usize,
    pp: u32,
    pp_tokens_per_s: f64,
    pp_stddev: f64,
    tg: u32,
    tg_tokens_per_s: f64,
    tg_stddev: f64,
    tg_sample_ms_per_token: f64,
    single_stream_tokens_per_s: Option<f64>,
    parallel: u32,
    parallel_aggregate_tokens_per_s: Option<f64>,
    parallel_speedup: Option<f64>,
    prefix_tokens: Option<u32>,
    prefix_cold_ttft_ms: Option<f64>,
    prefix_warm_ttft_ms: Option<f64>,
    prefix_warm_cached_tokens: Option<u32>,
    prefix_ttft_ratio: Option<f64>,
}

/// Generates `tg` tokens on each of `k` prompts at once; returns aggregate tokens/s over the decode
/// phase (wall time minus the slowest stream's wait + prefill).
fn streams(engine: &Engine, k: u32, tg: u32) -> Result<f64> {
    let start = Instant::now();
    let mut rxs = Vec::new();
    for i in 0..k {
        let mut req = GenerateRequest::new(format!("<|im_start|>user\nWrite a long story about robot number {i}.<|im_end|>\n<|im_start|>assistant\n"));
        req.max_tokens = tg;
        req.sampling = SamplingParams {
            seed: i,
            ..SamplingParams::default()
        };
        rxs.push(engine.submit(req)?);
    }
    let mut tokens = 0u64;
    let mut slowest_start_ms: f64 = 0.0;
    for mut rx in rxs {
        loop {
            match rx.blocking_recv() {
                Some(Event::Delta(_)) => {}
                Some(Event::Done(c)) => {
                    tokens += c.usage.completion_tokens.saturating_sub(1) as u64;
                    slowest_start_ms =
                        slowest_start_ms.max(c.usage.queue_ms + c.usage.time_to_first_token_ms);
                    break;
                }
                Some(Event::Error(e)) => return Err(e.into()),
                None => bail!("engine stopped"),
            }
        }
    }
    let secs = (start.elapsed().as_secs_f64() - slowest_start_ms / 1000.0).max(1e-6);
    Ok(tokens as f64 / secs)
}

fn ttft(engine: &Engine, prompt: String) -> Result<(f64, u32)> {
    let mut req = GenerateRequest::new(prompt);
    req.max_tokens = 1;
    req.sampling.temperature = 0.0;
    let c = engine.generate_blocking(req, |_| {})?;
    Ok((c.usage.time_to_first_token_ms, c.usage.cached_tokens))
}

pub fn run(node: &Node, a: BenchArgs) -> Result<()> {
    match a.what {
        Some(BenchWhat::Agent(args)) => return crate::bench_agent::run(node, args),
        Some(BenchWhat::Wasm(args)) => return crate::bench_wasm::run(node, args),
        Some(BenchWhat::Vector(args)) => return crate::bench_vector::run(args),
        Some(BenchWhat::Mesh(args)) => return crate::bench_mesh::run(node, args),
        None => {}
    }
    if a.pp == 0 && a.tg == 0 {
        bail!("nothing to measure: --pp and --tg are both 0");
    }
    let slots = a.parallel.max(2);
    let kv = (a.pp + a.tg)
        .max((a.prefix as u32 + 64) * 2)
        .max(slots * (a.tg + 64))
        .max(4096);
    let engine = node.load_engine(a.model.as_deref(), |c| {
        c.threads = a.threads;
        c.slots = slots;
        c.kv_cells = kv;
        c.context_per_request = kv;
        c.batch_tokens = a.pp.max(512);
    })?;
    let b = engine.bench(a.pp, a.tg, a.reps)?;
    let mut r = Report {
        model: engine.info().name.clone(),
        threads: a.threads,
        pp: a.pp,
        pp_tokens_per_s: b.pp_tokens_per_s,
        pp_stddev: b.pp_stddev,
        tg: a.tg,
        tg_tokens_per_s: b.tg_tokens_per_s,
        tg_stddev: b.tg_stddev,
        tg_sample_ms_per_token: b.tg_sample_ms_per_token,
        single_stream_tokens_per_s: None,
        parallel: a.parallel,
        parallel_aggregate_tokens_per_s: None,
        parallel_speedup: None,
        prefix_tokens: None,
        prefix_cold_ttft_ms: None,
        prefix_warm_ttft_ms: None,
        prefix_warm_cached_tokens: None,
        prefix_ttft_ratio: None,
    };
    if a.parallel > 1 && a.tg > 0 {
        let one = streams(&engine, 1, a.tg)?;
        let many = streams(&engine, a.parallel, a.tg)?;
        r.single_stream_tokens_per_s = Some(one);
        r.parallel_aggregate_tokens_per_s = Some(many);
        r.parallel_speedup = Some(many / one);
    }
    if a.prefix > 0 {
        engine.clear_cache()?;
        // A document of about `prefix` tokens, then two different questions about it.
        let sentence =
            "The pump in zone four reports pressure, temperature and flow every second. ";
        let per = engine.count_tokens(sentence)?.max(1);
        let doc = sentence.repeat(a.prefix.div_ceil(per));
        let prompt = |q: &str| {
            format!("<|im_start|>system\n{doc}<|im_end|>\n<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n")
        };
        let (cold, _) = ttft(&engine, prompt("What does the pump report?"))?;
        let (warm, cached) = ttft(&engine, prompt("How often does it report?"))?;
        r.prefix_tokens = Some(engine.count_tokens(&doc)? as u32);
        r.prefix_cold_ttft_ms = Some(cold);
        r.prefix_warm_ttft_ms = Some(warm);
        r.prefix_warm_cached_tokens = Some(cached);
        r.prefix_ttft_ratio = Some(warm / cold);
    }
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
        return Ok(());
    }
    println!("model {} threads {}", r.model, r.threads);
    println!(
        "pp{:<5} {:>9.1} ± {:.1} tokens/s",
        r.pp, r.pp_tokens_per_s, r.pp_stddev
    );
    println!(
        "tg{:<5} {:>9.1} ± {:.1} tokens/s (real sampler chain: {:.3} ms of each token)",
        r.tg, r.tg_tokens_per_s, r.tg_stddev, r.tg_sample_ms_per_token
    );
    if let (Some(one), Some(many), Some(x)) = (
        r.single_stream_tokens_per_s,
        r.parallel_aggregate_tokens_per_s,
        r.parallel_speedup,
    ) {
        println!(
            "parallel {}: {:.1} tokens/s aggregate vs {:.1} single stream ({:.2}x)",
            r.parallel, many, one, x
        );
    }
    if let (Some(n), Some(c), Some(w), Some(x)) = (
        r.prefix_tokens,
        r.prefix_cold_ttft_ms,
        r.prefix_warm_ttft_ms,
        r.prefix_ttft_ratio,
    ) {
        println!(
            "prefix {n} tokens: first token {c:.0} ms cold, {w:.0} ms with cached prefix ({x:.3}x)"
        );
    }
    Ok(())
}
