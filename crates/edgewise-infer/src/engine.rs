//! The engine handle: loads a model on a dedicated thread and hands out event streams.

use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Instant;

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use llama_cpp_2::token_type::LlamaTokenAttr;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use crate::bench::BenchReport;
use crate::prompt::ControlTokens;
use crate::residency;
use crate::scheduler::{Command, Scheduler};
use crate::template::{ChatTemplate, CHATML};
use crate::{Completion, Event, GenerateRequest, InferError, PromptToken};

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub model_path: PathBuf,
    /// Name reported by the API.
    pub model_name: String,
    pub threads: usize,
    /// KV cells shared by all sequences: the prefix-cache budget.
    pub kv_cells: u32,
    pub context_per_request: u32,
    /// Sequences that can be decoded together (and cached between requests).
    pub slots: u32,
    /// Requests allowed to wait beyond the busy slots.
    pub queue_depth: usize,
    pub batch_tokens: u32,
    pub gpu_layers: u32,
    /// Reuse cached KV for shared prompt prefixes.
    pub prefix_cache: bool,
}

impl EngineConfig {
    pub fn new(model_path: impl Into<PathBuf>, model_name: impl Into<String>) -> Self {
        Self {
            model_path: model_path.into(),
            model_name: model_name.into(),
            threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            kv_cells: 8192,
            context_per_request: 4096,
            slots: 8,
            queue_depth: 64,
            batch_tokens: 512,
            gpu_layers: 0,
            prefix_cache: true,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub name: String,
    pub architecture: String,
    pub n_ctx_train: u32,
    pub n_vocab: i32,
    pub n_params: u64,
    pub size_bytes: u64,
    /// Bytes of the vocabulary's longest token text (an upper bound on what one token covers).
    pub longest_token_bytes: usize,
}

/// Counters the server exports as Prometheus metrics.
#[derive(Debug, Default)]
pub struct EngineStats {
    pub requests: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub cached_tokens: AtomicU64,
    pub completion_tokens: AtomicU64,
    pub generation_us: AtomicU64,
    pub waiting: AtomicUsize,
    pub active: AtomicUsize,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct StatsSnapshot {
    pub requests: u64,
    pub prompt_tokens: u64,
    pub cached_tokens: u64,
    pub completion_tokens: u64,
    pub generation_seconds: f64,
    pub waiting: usize,
    pub active: usize,
}

pub struct Engine {
    commands: mpsc::Sender<Command>,
    info: ModelInfo,
    template: ChatTemplate,
    stats: Arc<EngineStats>,
    /// Requests submitted and not yet finished; bounded by slots + queue_depth.
    in_flight: Arc<AtomicUsize>,
    limit: usize,
    context_per_request: u32,
    thread: Option<JoinHandle<()>>,
}

/// llama.cpp's backend may be initialised once per process.
pub(crate) fn backend() -> Result<&'static LlamaBackend, String> {
    static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            let mut b = LlamaBackend::init().map_err(|e| e.to_string())?;
            if std::env::var_os("EDGEWISE_LLAMA_LOG").is_none() {
                b.void_logs();
            }
            Ok(b)
        })
        .as_ref()
        .map_err(Clone::clone)
}

impl Engine {
    /// Loads the model and starts the engine thread; returns when the model is ready.
    pub fn load(cfg: EngineConfig) -> Result<Self, InferError> {
        if cfg.slots == 0 || cfg.kv_cells < cfg.context_per_request || cfg.batch_tokens == 0 {
            return Err(InferError::InvalidRequest(format!(
                "engine config: need slots > 0, batch_tokens > 0 and kv_cells ({}) >= context_per_request ({})",
                cfg.kv_cells, cfg.context_per_request
            )));
        }
        let (tx, rx) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::channel();
        let stats = Arc::new(EngineStats::default());
        let in_flight = Arc::new(AtomicUsize::new(0));
        let thread = {
            let (cfg, stats, in_flight) = (cfg.clone(), stats.clone(), in_flight.clone());
            std::thread::Builder::new()
                .name(format!("edgewise-engine-{}", cfg.model_name))
                .spawn(move || engine_thread(cfg, rx, ready_tx, stats, in_flight))
                .map_err(|e| InferError::Load {
                    path: PathBuf::new(),
                    message: e.to_string(),
                })?
        };
        let (info, template_src, bos, eos, control) = match ready_rx.recv() {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e);
            }
            Err(_) => {
                let _ = thread.join();
                return Err(InferError::Load {
                    path: cfg.model_path,
                    message: "engine thread died while loading".into(),
                });
            }
        };
        let template = ChatTemplate::new(&template_src, &bos, &eos)
            .or_else(|e| {
                tracing::warn!(error = %e, "model's chat template does not parse; using ChatML");
                ChatTemplate::new(CHATML, &bos, &eos)
            })?
            .with_control_tokens(control);
        let limit = cfg.slots as usize + cfg.queue_depth;
        let context_per_request = cfg.context_per_request;
        Ok(Self {
            commands: tx,
            info,
            template,
            stats,
            in_flight,
            limit,
            context_per_request,
            thread: Some(thread),
        })
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// The most tokens one request may hold (prompt and answer); a request's own
    /// `context_limit` can only lower it.
    pub fn context_per_request(&self) -> u32 {
        self.context_per_request
    }

    pub fn template(&self) -> &ChatTemplate {
        &self.template
    }

    pub fn stats(&self) -> StatsSnapshot {
        let s = &self.stats;
        StatsSnapshot {
            requests: s.requests.load(Ordering::Relaxed),
            prompt_tokens: s.prompt_tokens.load(Ordering::Relaxed),
            cached_tokens: s.cached_tokens.load(Ordering::Relaxed),
            completion_tokens: s.completion_tokens.load(Ordering::Relaxed),
            generation_seconds: s.generation_us.load(Ordering::Relaxed) as f64 / 1e6,
            waiting: s.waiting.load(Ordering::Relaxed),
            active: s.active.load(Ordering::Relaxed),
        }
    }

    /// Queues a request. Fails at once with `QueueFull` when slots and queue are taken (backpressure).
    /// Dropping the receiver cancels the request.
    pub fn submit(&self, req: GenerateRequest) -> Result<UnboundedReceiver<Event>, InferError> {
        self.check_prompt_length(&req)?;
        let prev = self.in_flight.fetch_add(1, Ordering::SeqCst);
        if prev >= self.limit {
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            return Err(InferError::QueueFull { limit: self.limit });
        }
        let (tx, rx) = unbounded_channel();
        self.commands
            .send(Command::Generate {
                req,
                events: tx,
                queued_at: Instant::now(),
            })
            .map_err(|_| {
                self.in_flight.fetch_sub(1, Ordering::SeqCst);
                InferError::EngineStopped
            })?;
        Ok(rx)
    }

    /// Refuses, without tokenizing, a prompt too long to fit even if every token were the
    /// vocabulary's longest: tokenizing runs on the engine thread, so a huge prompt would stall
    /// every sequence for as long as it takes.
    fn check_prompt_length(&self, req: &GenerateRequest) -> Result<(), InferError> {
        let limit = req.context_limit.map_or(self.context_per_request, |r| {
            r.min(self.context_per_request)
        }) as usize;
        let marks = req
            .prompt
            .chars()
            .filter(|&c| matches!(c, crate::prompt::TEXT_OPEN | crate::prompt::TEXT_CLOSE))
            .count();
        let bytes = req.prompt.len().saturating_sub(marks.saturating_mul(3));
        if bytes > limit.saturating_mul(self.info.longest_token_bytes) {
            return Err(InferError::PromptTooLong { bytes, limit });
        }
        Ok(())
    }

    /// Runs a request to completion on the calling (non-async) thread, passing each delta to `on_delta`.
    pub fn generate_blocking(
        &self,
        req: GenerateRequest,
        mut on_delta: impl FnMut(&str),
    ) -> Result<Completion, InferError> {
        let mut rx = self.submit(req)?;
        while let Some(ev) = rx.blocking_recv() {
            match ev {
                Event::Delta(d) => on_delta(&d),
                Event::Done(c) => return Ok(c),
                Event::Error(e) => return Err(e),
            }
        }
        Err(InferError::EngineStopped)
    }

    fn call<T>(&self, make: impl FnOnce(mpsc::Sender<T>) -> Command) -> Result<T, InferError> {
        let (tx, rx) = mpsc::channel();
        self.commands
            .send(make(tx))
            .map_err(|_| InferError::EngineStopped)?;
        rx.recv().map_err(|_| InferError::EngineStopped)
    }

    /// Drops every cached prefix that no running request uses.
    pub fn clear_cache(&self) -> Result<(), InferError> {
        self.call(|reply| Command::ClearCache { reply })
    }

    /// Saves the KV state of the cached sequence sharing the longest prefix with `prompt` to `path`.
    /// Returns the number of tokens saved.
    pub fn save_session(
        &self,
        prompt: &str,
        path: impl Into<PathBuf>,
    ) -> Result<usize, InferError> {
        let path = path.into();
        self.call(|reply| Command::SaveSession {
            prompt: prompt.to_owned(),
            path,
            reply,
        })?
    }

    /// Restores a saved KV state into a free sequence, where later requests with that prefix find it.
    pub fn restore_session(&self, path: impl Into<PathBuf>) -> Result<usize, InferError> {
        let path = path.into();
        self.call(|reply| Command::RestoreSession { path, reply })?
    }

    /// llama-bench style prompt-processing and generation figures, measured on the engine's context
    /// while no request runs.
    pub fn bench(&self, pp: u32, tg: u32, reps: u32) -> Result<BenchReport, InferError> {
        self.call(|reply| Command::Bench {
            pp,
            tg,
            reps,
            reply,
        })?
    }

    /// The tokens a prompt becomes, exactly as generation tokenizes it (marked spans as text).
    pub fn tokenize(&self, prompt: &str) -> Result<Vec<PromptToken>, InferError> {
        self.call(|reply| Command::Tokenize {
            text: prompt.to_owned(),
            reply,
        })
    }

    /// Number of tokens `text` becomes with this model's tokenizer, counted the way generation
    /// tokenizes a prompt: pass a rendered prompt (or `prompt::plain_text`) to count what runs.
    pub fn count_tokens(&self, text: &str) -> Result<usize, InferError> {
        self.call(|reply| Command::CountTokens {
            text: text.to_owned(),
            reply,
        })
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Shutdown);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

type Ready = Result<(ModelInfo, String, String, String, ControlTokens), InferError>;

fn engine_thread(
    cfg: EngineConfig,
    commands: mpsc::Receiver<Command>,
    ready: mpsc::Sender<Ready>,
    stats: Arc<EngineStats>,
    in_flight: Arc<AtomicUsize>,
) {
    let load_err = |message: String| InferError::Load {
        path: cfg.model_path.clone(),
        message,
    };
    let backend = match backend() {
        Ok(b) => b,
        Err(e) => {
            let _ = ready.send(Err(load_err(e)));
            return;
        }
    };
    let params = LlamaModelParams::default().with_n_gpu_layers(cfg.gpu_layers);
    let model = match LlamaModel::load_from_file(backend, &cfg.model_path, &params) {
        Ok(m) => m,
        Err(e) => {
            let _ = ready.send(Err(load_err(format!(
                "{e} (is it a GGUF file llama.cpp supports?)"
            ))));
            return;
        }
    };
    let threads = cfg.threads.max(1) as i32;
    let ctx_params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(cfg.kv_cells))
        .with_n_batch(cfg.batch_tokens)
        .with_n_ubatch(cfg.batch_tokens)
        .with_n_seq_max(cfg.slots)
        .with_n_threads(threads)
        .with_n_threads_batch(threads)
        .with_kv_unified(true);
    let mut ctx = match model.new_context(backend, ctx_params) {
        Ok(c) => c,
        Err(e) => {
            let _ = ready.send(Err(load_err(format!("cannot create context: {e}"))));
            return;
        }
    };
    match residency::release_file_pages(&cfg.model_path) {
        Ok(bytes) => tracing::debug!(bytes, "released the model mapping's pages before warm-up"),
        Err(e) => tracing::warn!(error = %e, "cannot release the model mapping's pages"),
    }
    if let Err(e) = residency::warm_up(&model, &mut ctx) {
        let _ = ready.send(Err(load_err(format!("warm-up decode failed: {e}"))));
        return;
    }
    let vocab = model.vocab();
    let piece = |t| String::from_utf8_lossy(&vocab.token_to_piece(t, true, None)).into_owned();
    let bos = if vocab.bos().0 >= 0 {
        piece(vocab.bos())
    } else {
        String::new()
    };
    let eos = if vocab.eos().0 >= 0 {
        piece(vocab.eos())
    } else {
        String::new()
    };
    let control = control_tokens(&model);
    let template = model
        .meta_val_str("tokenizer.chat_template")
        .unwrap_or_else(|_| CHATML.to_owned());
    let info = ModelInfo {
        name: cfg.model_name.clone(),
        architecture: model
            .meta_val_str("general.architecture")
            .unwrap_or_default(),
        n_ctx_train: model.n_ctx_train(),
        n_vocab: model.n_vocab(),
        n_params: model.n_params(),
        size_bytes: model.size(),
        longest_token_bytes: longest_token_bytes(&model),
    };
    let _ = ready.send(Ok((info, template, bos.clone(), eos, control)));
    drop(ready);
    Scheduler::new(&model, ctx, cfg, bos, stats, in_flight).run(commands);
}

/// The longest token text in bytes. A token's text is at least as long as the bytes it stands
/// for (byte-level BPE writes each byte as one or two; SentencePiece writes a space as three), so
/// no prompt of N bytes becomes fewer than N / this many tokens.
fn longest_token_bytes(model: &LlamaModel) -> usize {
    let vocab = model.vocab();
    (0..vocab.n_tokens())
        .filter_map(|id| vocab.text(LlamaToken(id)).map(|t| t.to_bytes().len()))
        .max()
        .unwrap_or(1)
        .max(1)
}

/// The vocabulary's tokens llama.cpp matches only when parsing special tokens (control and
/// unknown), by their raw text as its tokenizer matches them.
fn control_tokens(model: &LlamaModel) -> ControlTokens {
    let vocab = model.vocab();
    let special = LlamaTokenAttr::Control | LlamaTokenAttr::Unknown;
    ControlTokens::new((0..vocab.n_tokens()).filter_map(|id| {
        let t = LlamaToken(id);
        if !vocab.attr(t).intersects(special) {
            return None;
        }
        Some(vocab.text(t)?.to_string_lossy().into_owned())
    }))
}
