//! Sentence embeddings with a BERT model (all-MiniLM-L6-v2) on candle: mean pooling over the
//! attention mask, then L2 normalisation, as sentence-transformers does.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::{PaddingParams, Tokenizer, TruncationParams};

use crate::InferError;

const BATCH: usize = 32;
const MAX_TOKENS: usize = 256;

/// The node's embedding model, loaded on first use (seconds) and shared by the API, agents and
/// components. A failed load is retried on the next use.
pub struct LazyEmbedder {
    pub name: String,
    dir: PathBuf,
    loaded: Mutex<Option<Arc<Embedder>>>,
}

impl LazyEmbedder {
    pub fn new(name: String, dir: PathBuf) -> Self {
        Self {
            name,
            dir,
            loaded: Mutex::new(None),
        }
    }

    /// Blocks while the model loads (callers on an async runtime: `spawn_blocking`).
    pub fn get(&self) -> Result<Arc<Embedder>, InferError> {
        let mut slot = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = &*slot {
            return Ok(e.clone());
        }
        let e = Arc::new(Embedder::load(&self.dir)?);
        *slot = Some(e.clone());
        Ok(e)
    }
}

pub struct Embedder {
    model: BertModel,
    tokenizer: Tokenizer,
    /// The same tokenizer without truncation or padding, for measuring texts.
    counter: Tokenizer,
    device: Device,
    dimension: usize,
}

fn err(e: impl std::fmt::Display) -> InferError {
    InferError::Embedding(e.to_string())
}

impl Embedder {
    /// Loads `model.safetensors`, `config.json` and `tokenizer.json` from `dir`.
    pub fn load(dir: &Path) -> Result<Self, InferError> {
        let read = |f: &str| {
            std::fs::read_to_string(dir.join(f))
                .map_err(|e| InferError::Embedding(format!("{}: {e}", dir.join(f).display())))
        };
        let config: Config = serde_json::from_str(&read("config.json")?).map_err(err)?;
        let dimension = serde_json::from_str::<serde_json::Value>(&read("config.json")?)
            .ok()
            .and_then(|v| v["hidden_size"].as_u64())
            .unwrap_or(384) as usize;
        let mut tokenizer = Tokenizer::from_file(dir.join("tokenizer.json")).map_err(err)?;
        let mut counter = tokenizer.clone();
        counter.with_padding(None);
        counter.with_truncation(None).map_err(err)?;
        tokenizer.with_padding(Some(PaddingParams::default()));
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: MAX_TOKENS,
                ..Default::default()
            }))
            .map_err(err)?;
        let device = Device::Cpu;
        // SAFETY: the file is memory-mapped read-only and the store never rewrites installed models.
        let vb = unsafe {
            VarBuilder::from_mmaped_safetensors(
                &[dir.join("model.safetensors")],
                DType::F32,
                &device,
            )
        }
        .map_err(err)?;
        let model = BertModel::load(vb, &config).map_err(err)?;
        Ok(Self {
            model,
            tokenizer,
            counter,
            device,
            dimension,
        })
    }

    pub fn dimension(&self) -> usize {
        self.dimension
    }

    /// Tokens the model reads of one text; the rest is cut off before embedding.
    pub fn max_tokens(&self) -> usize {
        MAX_TOKENS
    }

    /// How many tokens `text` is (no special tokens, no truncation).
    pub fn count_tokens(&self, text: &str) -> usize {
        self.counter
            .encode(text, false)
            .map(|e| e.get_ids().len())
            .unwrap_or(text.len() / 4)
    }

    /// Embeds `texts` in batches; each vector has `dimension()` floats and unit length.
    pub fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, InferError> {
        Ok(self.embed_counting(texts)?.0)
    }

    /// Like `embed`, also returning how many tokens the inputs were (after truncation).
    pub fn embed_counting(&self, texts: &[String]) -> Result<(Vec<Vec<f32>>, usize), InferError> {
        let mut out = Vec::with_capacity(texts.len());
        let mut tokens = 0;
        for chunk in texts.chunks(BATCH) {
            let (vectors, n) = self.embed_batch(chunk)?;
            out.extend(vectors);
            tokens += n;
        }
        Ok((out, tokens))
    }

    fn embed_batch(&self, texts: &[String]) -> Result<(Vec<Vec<f32>>, usize), InferError> {
        let enc = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(err)?;
        let tokens = enc
            .iter()
            .map(|e| e.get_attention_mask().iter().filter(|&&m| m == 1).count())
            .sum();
        let ids: Vec<Tensor> = enc
            .iter()
            .map(|e| Tensor::new(e.get_ids(), &self.device))
            .collect::<Result<_, _>>()
            .map_err(err)?;
        let mask: Vec<Tensor> = enc
            .iter()
            .map(|e| Tensor::new(e.get_attention_mask(), &self.device))
            .collect::<Result<_, _>>()
            .map_err(err)?;
        let ids = Tensor::stack(&ids, 0).map_err(err)?;
        let mask = Tensor::stack(&mask, 0).map_err(err)?;
        let types = ids.zeros_like().map_err(err)?;
        let hidden = self.model.forward(&ids, &types, Some(&mask)).map_err(err)?;
        let m = mask
            .to_dtype(DType::F32)
            .map_err(err)?
            .unsqueeze(2)
            .map_err(err)?;
        let summed = hidden.broadcast_mul(&m).map_err(err)?.sum(1).map_err(err)?;
        let counts = m.sum(1).map_err(err)?.clamp(1e-9, f64::MAX).map_err(err)?;
        let mean = summed.broadcast_div(&counts).map_err(err)?;
        let norm = mean
            .sqr()
            .map_err(err)?
            .sum_keepdim(1)
            .map_err(err)?
            .sqrt()
            .map_err(err)?
            .clamp(1e-12, f64::MAX)
            .map_err(err)?;
        let unit = mean.broadcast_div(&norm).map_err(err)?;
        Ok((unit.to_vec2::<f32>().map_err(err)?, tokens))
    }
}
