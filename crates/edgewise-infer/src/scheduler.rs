//! The engine thread's loop: admit requests into sequence slots, reuse cached prefixes, and decode all
//! running sequences together in one `llama_decode` per step (continuous batching).
//!
//! Invariants:
//! - `Slot::cached` is exactly the token sequence whose KV is stored under that slot's sequence id.
//! - The KV cells reserved by running requests never exceed `kv_cells`, so a decode never fails for
//!   lack of space; idle slots' caches are evicted least-recently-used first to make room.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Instant;

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use llguidance::{Matcher, ParserFactory};
use tokio::sync::mpsc::UnboundedSender;

use crate::bench::{run_bench, BenchReport};
use crate::engine::{EngineConfig, EngineStats};
use crate::text_stream::TextStream;
use crate::{
    grammar, prompt, Completion, Event, FinishReason, GenerateRequest, InferError, PromptToken,
    Usage,
};

pub(crate) enum Command {
    Generate {
        req: GenerateRequest,
        events: UnboundedSender<Event>,
        queued_at: Instant,
    },
    ClearCache {
        reply: mpsc::Sender<()>,
    },
    SaveSession {
        prompt: String,
        path: PathBuf,
        reply: mpsc::Sender<Result<usize, InferError>>,
    },
    RestoreSession {
        path: PathBuf,
        reply: mpsc::Sender<Result<usize, InferError>>,
    },
    Bench {
        pp: u32,
        tg: u32,
        reps: u32,
        reply: mpsc::Sender<Result<BenchReport, InferError>>,
    },
    CountTokens {
        text: String,
        reply: mpsc::Sender<usize>,
    },
    Tokenize {
        text: String,
        reply: mpsc::Sender<Vec<PromptToken>>,
    },
    Shutdown,
}

struct Waiting {
    req: GenerateRequest,
    tokens: Vec<LlamaToken>,
    events: UnboundedSender<Event>,
    queued_at: Instant,
}

struct Active {
    events: UnboundedSender<Event>,
    /// Tokens to decode next: the prompt suffix first, then each sampled (and fast-forwarded) token.
    pending: Vec<LlamaToken>,
    prompt_done: bool,
    sampler: LlamaSampler,
    matcher: Option<Matcher>,
    text: TextStream,
    max_tokens: u32,
    call_threshold: Option<f32>,
    /// Cells this request may occupy: prompt + completion, capped per request.
    reservation: usize,
    usage: Usage,
    admitted_at: Instant,
    first_token_at: Option<Instant>,
}

struct Slot {
    seq: i32,
    cached: Vec<LlamaToken>,
    last_used: u64,
    active: Option<Active>,
}

pub(crate) struct Scheduler<'m> {
    model: &'m LlamaModel,
    ctx: LlamaContext<'m>,
    cfg: EngineConfig,
    bos_text: String,
    batch: LlamaBatch<'static>,
    slots: Vec<Slot>,
    waiting: VecDeque<Waiting>,
    clock: u64,
    /// Built on the first constrained request: walking the vocabulary costs a few hundred ms.
    parser_factory: Option<ParserFactory>,
    /// Built on the first request that asks for a call decision.
    call_openers: Option<CallOpeners>,
    stats: Arc<EngineStats>,
    in_flight: Arc<AtomicUsize>,
}

fn common_prefix(a: &[LlamaToken], b: &[LlamaToken]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl<'m> Scheduler<'m> {
    pub(crate) fn new(
        model: &'m LlamaModel,
        ctx: LlamaContext<'m>,
        cfg: EngineConfig,
        bos_text: String,
        stats: Arc<EngineStats>,
        in_flight: Arc<AtomicUsize>,
    ) -> Self {
        let slots = (0..cfg.slots as i32)
            .map(|seq| Slot {
                seq,
                cached: Vec::new(),
                last_used: 0,
                active: None,
            })
            .collect();
        let batch = LlamaBatch::new(cfg.batch_tokens as usize, 1);
        Self {
            model,
            ctx,
            cfg,
            bos_text,
            batch,
            slots,
            waiting: VecDeque::new(),
            clock: 0,
            parser_factory: None,
            call_openers: None,
            stats,
            in_flight,
        }
    }

    pub(crate) fn run(mut self, commands: mpsc::Receiver<Command>) {
        loop {
            let busy = !self.waiting.is_empty() || self.slots.iter().any(|s| s.active.is_some());
            if !busy {
                match commands.recv() {
                    Ok(Command::Shutdown) | Err(_) => return,
                    Ok(cmd) => self.handle(cmd),
                }
            }
            loop {
                match commands.try_recv() {
                    Ok(Command::Shutdown) | Err(mpsc::TryRecvError::Disconnected) => {
                        return self.fail_all()
                    }
                    Ok(cmd) => self.handle(cmd),
                    Err(mpsc::TryRecvError::Empty) => break,
                }
            }
            self.drop_cancelled();
            self.admit();
            if self.slots.iter().any(|s| s.active.is_some()) {
                self.step();
            }
            self.publish_gauges();
        }
    }

    fn publish_gauges(&self) {
        self.stats
            .waiting
            .store(self.waiting.len(), Ordering::Relaxed);
        self.stats.active.store(
            self.slots.iter().filter(|s| s.active.is_some()).count(),
            Ordering::Relaxed,
        );
    }

    /// Template text parses special tokens; marked spans (content) never do (see `prompt`).
    /// Every path that needs a prompt's tokens (generation, counting, sessions) comes here.
    fn tokenize(&self, text: &str) -> Vec<LlamaToken> {
        let vocab = self.model.vocab();
        let pieces = prompt::pieces(text);
        // The template usually writes the BOS text itself; parse_special turns it into the token.
        let add_bos = self.bos_text.is_empty()
            || !pieces
                .first()
                .is_some_and(|(p, special)| *special && p.starts_with(&self.bos_text));
        match pieces[..] {
            [] => vocab.tokenize(b"", add_bos, true),
            [(piece, special)] => vocab.tokenize(piece.as_bytes(), add_bos, special),
            _ => {
                // BOS and EOS once around the whole prompt, where one call would add them.
                let mut out = Vec::with_capacity(text.len() / 3 + 2);
                if add_bos && vocab.should_add_bos() {
                    out.push(vocab.bos());
                }
                for (piece, special) in pieces {
                    out.extend(vocab.tokenize(piece.as_bytes(), false, special));
                }
                if add_bos && vocab.should_add_eos() {
                    out.push(vocab.eos());
                }
                out
            }
        }
    }

    fn release(&self) {
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
    }

    /// Prompt + completion cells `req` may use: the engine's limit, or the request's if tighter.
    fn context_limit(&self, req: &GenerateRequest) -> usize {
        let node = self.cfg.context_per_request;
        req.context_limit.map_or(node, |r| r.min(node)) as usize
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Generate {
                req,
                events,
                queued_at,
            } => {
                let tokens = self.tokenize(&req.prompt);
                let limit = self.context_limit(&req);
                let err = if tokens.is_empty() {
                    Some(InferError::EmptyPrompt)
                } else if tokens.len() >= limit {
                    Some(InferError::ContextOverflow {
                        prompt_tokens: tokens.len(),
                        limit,
                    })
                } else {
                    None
                };
                match err {
                    Some(e) => {
                        let _ = events.send(Event::Error(e));
                        self.release();
                    }
                    None => self.waiting.push_back(Waiting {
                        req,
                        tokens,
                        events,
                        queued_at,
                    }),
                }
            }
            Command::ClearCache { reply } => {
                for i in 0..self.slots.len() {
                    if self.slots[i].active.is_none() {
                        self.evict(i);
                    }
                }
                let _ = reply.send(());
            }
            Command::SaveSession {
                prompt,
                path,
                reply,
            } => {
                let _ = reply.send(self.save_session(&prompt, &path));
            }
            Command::RestoreSession { path, reply } => {
                let _ = reply.send(self.restore_session(&path));
            }
            Command::Bench {
                pp,
                tg,
                reps,
                reply,
            } => {
                // Benchmarks need the whole context: only run when idle.
                if self.slots.iter().any(|s| s.active.is_some()) || !self.waiting.is_empty() {
                    let _ = reply.send(Err(InferError::InvalidRequest(
                        "bench needs an idle engine".into(),
                    )));
                    return;
                }
                for i in 0..self.slots.len() {
                    self.evict(i);
                }
                let result = run_bench(self.model, &mut self.ctx, pp, tg, reps);
                self.ctx.clear_kv_cache();
                let _ = reply.send(result);
            }
            Command::CountTokens { text, reply } => {
                let _ = reply.send(self.tokenize(&text).len());
            }
            Command::Tokenize { text, reply } => {
                let vocab = self.model.vocab();
                let tokens = self
                    .tokenize(&text)
                    .into_iter()
                    .map(|t| PromptToken {
                        id: t.0,
                        piece: String::from_utf8_lossy(&vocab.token_to_piece(t, true, None))
                            .into_owned(),
                        control: vocab.is_control(t),
                    })
                    .collect();
                let _ = reply.send(tokens);
            }
            Command::Shutdown => {}
        }
    }

    fn evict(&mut self, i: usize) {
        let seq = self.slots[i].seq;
        let _ = self.ctx.clear_kv_cache_seq(Some(seq as u32), None, None);
        self.slots[i].cached.clear();
    }

    fn fail_all(&mut self) {
        for s in &mut self.slots {
            if let Some(a) = s.active.take() {
                let _ = a.events.send(Event::Error(InferError::EngineStopped));
            }
        }
        for w in self.waiting.drain(..) {
            let _ = w.events.send(Event::Error(InferError::EngineStopped));
        }
    }

    fn drop_cancelled(&mut self) {
        let before = self.waiting.len();
        self.waiting.retain(|w| !w.events.is_closed());
        for _ in self.waiting.len()..before {
            self.release();
        }
        for i in 0..self.slots.len() {
            if self.slots[i]
                .active
                .as_ref()
                .is_some_and(|a| a.events.is_closed())
            {
                tracing::debug!(
                    seq = self.slots[i].seq,
                    "client went away; request cancelled"
                );
                self.slots[i].active = None;
                self.touch(i);
                self.release();
                self.publish_gauges();
            }
        }
    }

    fn touch(&mut self, i: usize) {
        self.clock += 1;
        self.slots[i].last_used = self.clock;
    }

    /// Cells held by cached sequences plus what running requests may still grow into.
    fn cells_committed(&self, except: usize) -> usize {
        self.slots
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != except)
            .map(|(_, s)| match &s.active {
                Some(a) => a.reservation.max(s.cached.len()),
                None => s.cached.len(),
            })
            .sum()
    }

    /// The least recently used slot without a running request, preferring empty ones.
    fn lru_free_slot(&self) -> Option<usize> {
        (0..self.slots.len())
            .filter(|&i| self.slots[i].active.is_none())
            .min_by_key(|&i| (!self.slots[i].cached.is_empty(), self.slots[i].last_used))
    }

    /// Evicts idle caches other than `keep`'s, least recently used first, until `needed` more cells
    /// fit the budget. Returns whether they fit.
    fn make_room(&mut self, keep: usize, needed: usize) -> bool {
        let budget = self.cfg.kv_cells as usize;
        while self.cells_committed(keep) + needed > budget {
            let victim = (0..self.slots.len())
                .filter(|&i| {
                    i != keep && self.slots[i].active.is_none() && !self.slots[i].cached.is_empty()
                })
                .min_by_key(|&i| self.slots[i].last_used);
            match victim {
                Some(v) => self.evict(v),
                None => return false,
            }
        }
        true
    }

    /// Moves waiting requests into free slots, reusing the longest cached prefix.
    fn admit(&mut self) {
        while let Some(w) = self.waiting.front() {
            if self.lru_free_slot().is_none() {
                return;
            }
            let tokens = &w.tokens;
            // Longest prefix over every slot (a running one can share its prefix by copy).
            let (best, best_len) = if self.cfg.prefix_cache {
                (0..self.slots.len())
                    .map(|i| (i, common_prefix(&self.slots[i].cached, tokens)))
                    .max_by_key(|&(i, n)| (n, self.slots[i].active.is_none()))
                    .unwrap_or((0, 0))
            } else {
                (0, 0)
            };
            let target = if best_len > 0 && self.slots[best].active.is_none() {
                best
            } else {
                match self.lru_free_slot() {
                    Some(i) => i,
                    None => return,
                }
            };
            let w = match self.waiting.pop_front() {
                Some(w) => w,
                None => return,
            };
            let mut reuse = if self.cfg.prefix_cache {
                common_prefix(&self.slots[target].cached, &w.tokens)
            } else {
                0
            };
            if target != best && best_len > reuse {
                // Share the running sequence's prefix: with a unified KV cache this only tags cells.
                self.evict(target);
                let (src, dst) = (self.slots[best].seq, self.slots[target].seq);
                let _ = self
                    .ctx
                    .copy_kv_cache_seq(src, dst, None, Some(best_len as u32));
                self.slots[target].cached = self.slots[best].cached[..best_len].to_vec();
                reuse = best_len;
            }
            // At least one prompt token must be decoded to get logits for the first sample.
            reuse = reuse.min(w.tokens.len() - 1);
            let seq = self.slots[target].seq;
            if self.slots[target].cached.len() > reuse {
                let _ = self
                    .ctx
                    .clear_kv_cache_seq(Some(seq as u32), Some(reuse as u32), None);
                self.slots[target].cached.truncate(reuse);
            }
            let limit = self.context_limit(&w.req);
            let reservation = (w.tokens.len() + w.req.max_tokens as usize).min(limit);
            if !self.make_room(target, reservation) {
                // Running requests hold the cells; wait for one to finish.
                self.waiting.push_front(w);
                return;
            }
            let matcher = match &w.req.constraint {
                None => None,
                Some(c) => match self.matcher_for(c) {
                    Ok(m) => Some(m),
                    Err(e) => {
                        let _ = w.events.send(Event::Error(e));
                        self.release();
                        continue;
                    }
                },
            };
            let now = Instant::now();
            let usage = Usage {
                prompt_tokens: w.tokens.len() as u32,
                cached_tokens: reuse as u32,
                queue_ms: ms(now - w.queued_at),
                ..Usage::default()
            };
            self.stats.requests.fetch_add(1, Ordering::Relaxed);
            self.stats
                .prompt_tokens
                .fetch_add(w.tokens.len() as u64, Ordering::Relaxed);
            self.stats
                .cached_tokens
                .fetch_add(reuse as u64, Ordering::Relaxed);
            tracing::debug!(
                seq = self.slots[target].seq,
                prompt_tokens = w.tokens.len(),
                cached_tokens = reuse,
                reservation,
                "request admitted"
            );
            let mut sampler = build_sampler(&w.req.sampling, self.model.n_vocab());
            // Penalties look at recent context, prompt included, as llama.cpp's own sampler does.
            sampler.accept_many(w.tokens.iter());
            let pending = w.tokens[reuse..].to_vec();
            self.slots[target].active = Some(Active {
                events: w.events,
                pending,
                prompt_done: false,
                sampler,
                matcher,
                text: TextStream::new(w.req.stop.clone()),
                max_tokens: w.req.max_tokens,
                call_threshold: w.req.call_threshold,
                reservation,
                usage,
                admitted_at: now,
                first_token_at: None,
            });
            self.touch(target);
        }
    }

    fn matcher_for(&mut self, c: &crate::Constraint) -> Result<Matcher, InferError> {
        if self.parser_factory.is_none() {
            let env = LlamaSampler::llguidance_tok_env(self.model);
            let mut f =
                ParserFactory::new_simple(&env).map_err(|e| InferError::Grammar(e.to_string()))?;
            f.quiet();
            self.parser_factory = Some(f);
        }
        let factory = self
            .parser_factory
            .as_ref()
            .ok_or_else(|| InferError::Grammar("no parser factory".into()))?;
        let parser = factory.create_parser(grammar::to_grammar(c));
        let m = Matcher::new(parser);
        match m.get_error() {
            Some(e) => Err(InferError::Grammar(e)),
            None => Ok(m),
        }
    }

    /// One batched decode over every running sequence, then sampling for those that produced logits.
    fn step(&mut self) {
        self.batch.clear();
        let mut budget = self.cfg.batch_tokens as usize;
        let mut outputs: Vec<(usize, i32)> = Vec::new();
        // Generating sequences first, so decoding latency does not wait behind long prefills.
        let mut order: Vec<usize> = (0..self.slots.len())
            .filter(|&i| self.slots[i].active.is_some())
            .collect();
        order.sort_by_key(|&i| self.slots[i].active.as_ref().map(|a| !a.prompt_done));
        for i in order {
            let slot = &mut self.slots[i];
            let Some(a) = slot.active.as_mut() else {
                continue;
            };
            let n = budget.min(a.pending.len());
            if n == 0 {
                continue;
            }
            let last_chunk = n == a.pending.len();
            for (j, tok) in a.pending.drain(..n).enumerate() {
                let logits = last_chunk && j == n - 1;
                let pos = slot.cached.len() as i32;
                if self.batch.add(tok, pos, &[slot.seq], logits).is_err() {
                    break;
                }
                slot.cached.push(tok);
                if logits {
                    outputs.push((i, self.batch.n_tokens() - 1));
                }
            }
            budget -= n;
            if budget == 0 {
                break;
            }
        }
        if self.batch.n_tokens() == 0 {
            return;
        }
        if let Err(e) = self.ctx.decode(&mut self.batch) {
            tracing::error!(error = %e, "llama_decode failed; failing the running requests");
            for i in 0..self.slots.len() {
                if let Some(a) = self.slots[i].active.take() {
                    let _ = a
                        .events
                        .send(Event::Error(InferError::Decode(e.to_string())));
                    self.release();
                }
                self.evict(i);
            }
            return;
        }
        for (i, idx) in outputs {
            self.sample(i, idx);
        }
    }

    fn sample(&mut self, i: usize, idx: i32) {
        let model = self.model;
        let vocab = model.vocab();
        let seq_len = self.slots[i].cached.len();
        let Some(a) = self.slots[i].active.as_mut() else {
            return;
        };
        a.prompt_done = true;
        let decide = a.first_token_at.is_none() && a.matcher.is_some();
        let decision = match a.call_threshold {
            Some(threshold) if decide => {
                let openers = self
                    .call_openers
                    .get_or_insert_with(|| call_opening_tokens(model));
                Some((&*openers, threshold))
            }
            _ => None,
        };
        let tok = match a.matcher.as_mut() {
            None => a.sampler.sample(&self.ctx, idx),
            Some(m) => match constrained_sample(&self.ctx, idx, &mut a.sampler, m, decision) {
                Ok((t, p)) => {
                    if p.is_some() {
                        a.usage.call_probability = p;
                    }
                    t
                }
                Err(e) => return self.finish(i, Err(e)),
            },
        };
        let now = Instant::now();
        if a.first_token_at.is_none() {
            a.first_token_at = Some(now);
            a.usage.time_to_first_token_ms = ms(now - a.admitted_at);
        }
        if vocab.is_eog(tok) {
            return self.finish(i, Ok(FinishReason::Stop));
        }
        a.usage.completion_tokens += 1;
        let mut next = vec![tok];
        let mut grammar_done = false;
        if let Some(m) = a.matcher.as_mut() {
            if m.consume_token(tok.0 as u32).is_err() {
                let e = m
                    .get_error()
                    .unwrap_or_else(|| "grammar rejected a token".into());
                return self.finish(i, Err(InferError::Grammar(e)));
            }
            grammar_done = m.is_stopped();
            if !grammar_done {
                let forced = forced_tokens(model, m);
                a.usage.forced_tokens += forced.len() as u32;
                a.usage.completion_tokens += forced.len() as u32;
                next.extend(forced);
                grammar_done = m.is_stopped();
            }
        }
        let mut stopped = false;
        for &t in &next {
            if t != tok {
                a.sampler.accept(t);
            }
            let (delta, hit) = a.text.push(&vocab.token_to_piece(t, false, None));
            if !delta.is_empty() {
                let _ = a.events.send(Event::Delta(delta));
            }
            if hit {
                stopped = true;
                break;
            }
        }
        if stopped || grammar_done {
            return self.finish(i, Ok(FinishReason::Stop));
        }
        if a.usage.completion_tokens >= a.max_tokens || seq_len + next.len() >= a.reservation {
            return self.finish(i, Ok(FinishReason::Length));
        }
        a.pending = next;
    }

    fn finish(&mut self, i: usize, outcome: Result<FinishReason, InferError>) {
        let Some(mut a) = self.slots[i].active.take() else {
            return;
        };
        self.touch(i);
        self.release();
        self.publish_gauges();
        match outcome {
            Err(e) => {
                let _ = a.events.send(Event::Error(e));
            }
            Ok(reason) => {
                let rest = a.text.finish();
                if !rest.is_empty() {
                    let _ = a.events.send(Event::Delta(rest));
                }
                let gen_ms = ms(a.admitted_at.elapsed());
                a.usage.generation_ms = gen_ms;
                tracing::debug!(
                    seq = self.slots[i].seq,
                    completion_tokens = a.usage.completion_tokens,
                    forced_tokens = a.usage.forced_tokens,
                    ttft_ms = a.usage.time_to_first_token_ms,
                    total_ms = gen_ms,
                    ?reason,
                    "request finished"
                );
                self.stats
                    .completion_tokens
                    .fetch_add(a.usage.completion_tokens as u64, Ordering::Relaxed);
                self.stats
                    .generation_us
                    .fetch_add((gen_ms * 1000.0) as u64, Ordering::Relaxed);
                let _ = a.events.send(Event::Done(Completion {
                    text: a.text.text().to_owned(),
                    finish_reason: reason,
                    usage: a.usage,
                }));
            }
        }
    }

    fn save_session(&mut self, prompt: &str, path: &std::path::Path) -> Result<usize, InferError> {
        let tokens = self.tokenize(prompt);
        let (i, n) = (0..self.slots.len())
            .map(|i| (i, common_prefix(&self.slots[i].cached, &tokens)))
            .max_by_key(|&(_, n)| n)
            .unwrap_or((0, 0));
        if n == 0 {
            return Err(InferError::Session {
                path: path.into(),
                message: "no cached sequence shares a prefix with that prompt; run it first".into(),
            });
        }
        let slot = &self.slots[i];
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| InferError::Session {
                path: path.into(),
                message: e.to_string(),
            })?;
        }
        self.ctx
            .state_seq_save_file(path, slot.seq, &slot.cached)
            .map_err(|e| InferError::Session {
                path: path.into(),
                message: e.to_string(),
            })?;
        Ok(slot.cached.len())
    }

    fn restore_session(&mut self, path: &std::path::Path) -> Result<usize, InferError> {
        let free = self.lru_free_slot().ok_or_else(|| InferError::Session {
            path: path.into(),
            message: "no free sequence; retry when idle".into(),
        })?;
        self.evict(free);
        let max = self.cfg.context_per_request as usize;
        self.make_room(free, max);
        let seq = self.slots[free].seq;
        match self.ctx.state_seq_load_file(path, seq, max) {
            Ok((tokens, _)) => {
                self.slots[free].cached = tokens;
                self.touch(free);
                Ok(self.slots[free].cached.len())
            }
            Err(e) => {
                self.evict(free);
                Err(InferError::Session {
                    path: path.into(),
                    message: format!("{e} (written by another model or context size?)"),
                })
            }
        }
    }
}

/// Tokens the grammar forces next, appended without sampling (fast-forward). llguidance's own
/// `compute_ff_tokens` is empty for the approximate token env built from a llama.cpp vocabulary, so
/// the forced bytes are tokenized here and checked by the matcher. The last token is held back: it
/// could merge with what the model writes next (e.g. `":"` before a value).
fn forced_tokens(model: &LlamaModel, m: &mut Matcher) -> Vec<LlamaToken> {
    let bytes = m.compute_ff_bytes();
    if bytes.is_empty() {
        return Vec::new();
    }
    let toks = model.vocab().tokenize(&bytes, false, false);
    let candidate: Vec<u32> = toks[..toks.len().saturating_sub(1)]
        .iter()
        .map(|t| t.0 as u32)
        .collect();
    match m.try_consume_tokens(&candidate) {
        Ok(n) => candidate[..n]
            .iter()
            .map(|&t| LlamaToken(t as i32))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// The tokens that open a tool call, for the call-or-answer decision.
pub(crate) struct CallOpeners {
    /// Per token id: its text opens a call (the `<tool_call>` token, or anything starting with `<`,
    /// `{` or `[`: the bare-JSON forms the call grammar also admits).
    opens: Vec<bool>,
    /// The `<tool_call>` token, where the vocabulary has one: a decided call opens with it, the
    /// form the model was trained on and the one it continues with further calls.
    block: Option<LlamaToken>,
}

fn call_opening_tokens(model: &LlamaModel) -> CallOpeners {
    let vocab = model.vocab();
    let opens = (0..model.n_vocab())
        .map(|t| {
            let piece = vocab.token_to_piece(LlamaToken(t), true, None);
            matches!(piece.first(), Some(b'<' | b'{' | b'['))
        })
        .collect();
    let block = match vocab.tokenize(crate::grammar::TOOL_CALL_OPEN.as_bytes(), false, true)[..] {
        [t] => Some(t),
        _ => None,
    };
    CallOpeners { opens, block }
}

/// Samples under the grammar's mask. With `decision` (call openers, threshold) it also makes the
/// call-or-answer decision: the probability of opening a call among the allowed tokens; below
/// the threshold call openers are masked, at or above it text is, and the call opens with the
/// `<tool_call>` token where the grammar allows it.
fn constrained_sample(
    ctx: &LlamaContext<'_>,
    idx: i32,
    sampler: &mut LlamaSampler,
    m: &mut Matcher,
    decision: Option<(&CallOpeners, f32)>,
) -> Result<(LlamaToken, Option<f32>), InferError> {
    let mask = m
        .compute_mask_or_eos()
        .map_err(|e| InferError::Grammar(e.to_string()))?;
    let mut arr = ctx.token_data_array_ith(idx);
    for d in arr.data.iter_mut() {
        if !mask.is_allowed(d.id().0 as u32) {
            d.set_logit(f32::NEG_INFINITY);
        }
    }
    let mut call_probability = None;
    if let Some((openers, threshold)) = decision {
        let opens = |d: &llama_cpp_2::token::data::LlamaTokenData| {
            openers
                .opens
                .get(d.id().0 as usize)
                .copied()
                .unwrap_or(false)
        };
        let max = arr
            .data
            .iter()
            .map(|d| d.logit())
            .fold(f32::NEG_INFINITY, f32::max);
        let (mut call, mut total, mut text_allowed) = (0f64, 0f64, false);
        for d in arr.data.iter().filter(|d| d.logit().is_finite()) {
            let w = f64::from(d.logit() - max).exp();
            total += w;
            if opens(d) {
                call += w;
            } else {
                text_allowed = true;
            }
        }
        // Only a real choice is decided: a grammar that allows no call, or nothing but a call,
        // leaves nothing to score.
        if text_allowed && call > 0.0 && total > 0.0 {
            let p = (call / total) as f32;
            call_probability = Some(p);
            let block_allowed = openers.block.is_some_and(|b| {
                arr.data
                    .iter()
                    .any(|d| d.id() == b && d.logit().is_finite())
            });
            for d in arr.data.iter_mut() {
                let keep = if p < threshold {
                    !opens(d)
                } else if block_allowed {
                    Some(d.id()) == openers.block
                } else {
                    opens(d)
                };
                if !keep {
                    d.set_logit(f32::NEG_INFINITY);
                }
            }
        }
    }
    sampler.apply(&mut arr);
    let tok = arr
        .selected_token()
        .ok_or_else(|| InferError::Grammar("no token satisfies the grammar".into()))?;
    sampler.accept(tok);
    Ok((tok, call_probability))
}

/// llama.cpp's default order: penalties, top-k, top-p, min-p, temperature, then the draw.
pub(crate) fn build_sampler(p: &edgewise_core::SamplingParams, n_vocab: i32) -> LlamaSampler {
    let mut chain = Vec::new();
    if p.repeat_penalty != 1.0 && p.repeat_penalty > 0.0 {
        chain.push(LlamaSampler::penalties(
            n_vocab,
            p.repeat_last_n,
            p.repeat_penalty,
            0.0,
            0.0,
        ));
    }
    if p.temperature <= 0.0 {
        chain.push(LlamaSampler::greedy());
    } else {
        if p.top_k > 0 {
            chain.push(LlamaSampler::top_k(p.top_k));
        }
        if p.top_p < 1.0 {
            chain.push(LlamaSampler::top_p(p.top_p, 1));
        }
        if p.min_p > 0.0 {
            chain.push(LlamaSampler::min_p(p.min_p, 1));
        }
        chain.push(LlamaSampler::temp(p.temperature));
        chain.push(LlamaSampler::dist(p.seed));
    }
    LlamaSampler::chain_simple(chain)
}
