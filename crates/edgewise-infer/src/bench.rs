//! Prompt-processing and generation throughput measured the way llama-bench measures it (random
//! tokens, pp in n_batch chunks, tg one token per decode, a warm-up first, mean over repetitions) —
//! except that tg draws each next token through the real sampler chain instead of at random.

use std::time::Instant;

use edgewise_core::SamplingParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use serde::Serialize;

use crate::scheduler::build_sampler;
use crate::InferError;

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub pp_tokens: u32,
    pub pp_tokens_per_s: f64,
    pub pp_stddev: f64,
    pub tg_tokens: u32,
    pub tg_tokens_per_s: f64,
    pub tg_stddev: f64,
    /// Time the sampler chain takes per generated token (the rest of a tg step is `llama_decode`).
    pub tg_sample_ms_per_token: f64,
    pub reps: u32,
}

/// Deterministic token source: the figures must not depend on a random generator's state.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: i32) -> LlamaToken {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        LlamaToken(((self.0 >> 33) % n as u64) as i32)
    }
}

fn decode_err(e: impl std::fmt::Display) -> InferError {
    InferError::Decode(e.to_string())
}

fn prompt_pass(
    model: &LlamaModel,
    ctx: &mut LlamaContext<'_>,
    n: u32,
    rng: &mut Lcg,
) -> Result<(), InferError> {
    let n_batch = ctx.n_batch() as usize;
    let vocab = model.vocab();
    let mut tokens: Vec<LlamaToken> = (0..n).map(|_| rng.next(model.n_vocab())).collect();
    if vocab.should_add_bos() && !tokens.is_empty() {
        tokens[0] = vocab.bos();
    }
    let mut batch = LlamaBatch::new(n_batch, 1);
    for (c, chunk) in tokens.chunks(n_batch).enumerate() {
        batch.clear();
        for (j, &t) in chunk.iter().enumerate() {
            let pos = (c * n_batch + j) as i32;
            batch
                .add(t, pos, &[0], j == chunk.len() - 1)
                .map_err(decode_err)?;
        }
        ctx.decode(&mut batch).map_err(decode_err)?;
    }
    ctx.synchronize();
    Ok(())
}

/// Returns the time spent in the sampler chain.
fn gen_pass(
    model: &LlamaModel,
    ctx: &mut LlamaContext<'_>,
    n: u32,
) -> Result<std::time::Duration, InferError> {
    let vocab = model.vocab();
    let mut sampler = build_sampler(&SamplingParams::default(), model.n_vocab());
    let mut tok = if vocab.should_add_bos() {
        vocab.bos()
    } else {
        LlamaToken(0)
    };
    let mut batch = LlamaBatch::new(1, 1);
    let mut sampling = std::time::Duration::ZERO;
    for pos in 0..n as i32 {
        batch.clear();
        batch.add(tok, pos, &[0], true).map_err(decode_err)?;
        ctx.decode(&mut batch).map_err(decode_err)?;
        let t = Instant::now();
        tok = sampler.sample(ctx, 0);
        sampling += t.elapsed();
    }
    ctx.synchronize();
    Ok(sampling)
}

fn mean_std(xs: &[f64]) -> (f64, f64) {
    let n = xs.len().max(1) as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (mean, var.sqrt())
}

pub(crate) fn run_bench(
    model: &LlamaModel,
    ctx: &mut LlamaContext<'_>,
    pp: u32,
    tg: u32,
    reps: u32,
) -> Result<BenchReport, InferError> {
    if pp + tg > ctx.n_ctx() {
        return Err(InferError::InvalidRequest(format!(
            "pp + tg = {} exceeds the context of {}",
            pp + tg,
            ctx.n_ctx()
        )));
    }
    let reps = reps.max(1);
    let mut rng = Lcg(42);
    let mut pp_rates = Vec::new();
    let mut tg_rates = Vec::new();
    let mut sample_ms = Vec::new();
    if pp > 0 {
        ctx.clear_kv_cache();
        prompt_pass(model, ctx, pp.min(ctx.n_batch()), &mut rng)?; // warm-up
        for _ in 0..reps {
            ctx.clear_kv_cache();
            let t = Instant::now();
            prompt_pass(model, ctx, pp, &mut rng)?;
            pp_rates.push(pp as f64 / t.elapsed().as_secs_f64());
        }
    }
    if tg > 0 {
        ctx.clear_kv_cache();
        gen_pass(model, ctx, 1)?; // warm-up
        for _ in 0..reps {
            ctx.clear_kv_cache();
            let t = Instant::now();
            let sampling = gen_pass(model, ctx, tg)?;
            tg_rates.push(tg as f64 / t.elapsed().as_secs_f64());
            sample_ms.push(sampling.as_secs_f64() * 1000.0 / tg as f64);
        }
    }
    ctx.clear_kv_cache();
    let (pp_mean, pp_std) = mean_std(&pp_rates);
    let (tg_mean, tg_std) = mean_std(&tg_rates);
    let (sample_mean, _) = mean_std(&sample_ms);
    Ok(BenchReport {
        pp_tokens: pp,
        pp_tokens_per_s: pp_mean,
        pp_stddev: pp_std,
        tg_tokens: tg,
        tg_tokens_per_s: tg_mean,
        tg_stddev: tg_std,
        tg_sample_ms_per_token: sample_mean,
        reps,
    })
}
