//! Knowledge ingest: documents (txt, md, pdf) → token-sized chunks with overlap → embeddings →
//! a collection in the node's vector memory. The CLI (`edgewise kb add`) and the
//! `search_knowledge` tool share this, so chunk ids mean the same everywhere.
//!
//! A document is identified by its file name: adding `notes/ward-b.md` again replaces its chunks
//! (`ward-b#0`, `ward-b#1`, …), and an unchanged file (same sha256) is skipped. A document counts
//! as stored only when all its chunks are: an interrupted add leaves whole chunks and is redone
//! by the next add.

use std::path::Path;
use std::sync::Arc;

use edgewise_infer::{Embedder, LazyEmbedder};
use edgewise_store::knowledge::{EmbeddingId, Filter, Hit, NewChunk};
use edgewise_store::{Knowledge, KnowledgeError};
use serde_json::{Map, Value};
use text_splitter::{ChunkConfig, ChunkSizer, MarkdownSplitter, TextSplitter};

/// Chunks embedded and stored per transaction.
const BATCH: usize = 32;

pub use edgewise_store::knowledge::KnowledgeSlot;

/// The `k` chunks of `collection` nearest to `query` that match `filter`, embedded with the
/// node's embedding model; the model and the store work off the async runtime.
pub async fn search(
    knowledge: Arc<KnowledgeSlot>,
    embedder: Option<Arc<LazyEmbedder>>,
    collection: &str,
    query: &str,
    k: usize,
    filter: Filter,
) -> Result<Vec<Hit>, String> {
    let embedder = embedder.ok_or_else(|| {
        "this node has no embedding model; run `edgewise pull all-minilm-l6-v2`".to_string()
    })?;
    let (collection, query) = (collection.to_owned(), query.to_owned());
    tokio::task::spawn_blocking(move || {
        let e = embedder.get().map_err(|e| e.to_string())?;
        let id = EmbeddingId::current(&embedder.name, e.dimension());
        let q = e
            .embed(&[query])
            .map_err(|e| e.to_string())?
            .pop()
            .ok_or("the embedder returned no vector")?;
        knowledge
            .get()
            .map_err(|e| e.to_string())?
            .search(&collection, &id, &q, k, &filter)
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())?
}

#[derive(Debug, Clone, Copy)]
pub struct ChunkOptions {
    /// Tokens of the embedding model's tokenizer per chunk.
    pub tokens: usize,
    /// Tokens repeated from the end of one chunk at the start of the next.
    pub overlap: usize,
}

impl ChunkOptions {
    /// Chunks as long as the embedding model reads (tokens past that would be invisible to
    /// search), with an eighth of overlap.
    pub fn for_model(embedder: &Embedder) -> Self {
        let tokens = embedder.max_tokens();
        Self {
            tokens,
            overlap: tokens / 8,
        }
    }
}

/// Reads a document as text: `.txt`, `.md`/`.markdown`, or `.pdf`.
pub fn read_document(path: &Path) -> Result<String, String> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    match ext.as_str() {
        "txt" | "text" | "md" | "markdown" => String::from_utf8(bytes).map_err(|_| {
            format!(
                "{} is not UTF-8 text; convert it first (e.g. `iconv -t UTF-8`)",
                path.display()
            )
        }),
        "pdf" => pdf_extract::extract_text_from_mem(&bytes).map_err(|e| {
            format!(
                "{}: cannot extract text from this PDF ({e}); scanned PDFs need OCR first",
                path.display()
            )
        }),
        other => Err(format!(
            "{}: unsupported document type '.{other}'; edgewise kb add reads .txt, .md and .pdf",
            path.display()
        )),
    }
}

struct TokenSizer<'a>(&'a Embedder);

impl ChunkSizer for TokenSizer<'_> {
    fn size(&self, chunk: &str) -> usize {
        self.0.count_tokens(chunk)
    }
}

/// Splits at the largest semantic unit that fits (sections, paragraphs, sentences, words).
pub fn split(
    text: &str,
    markdown: bool,
    embedder: &Embedder,
    opts: ChunkOptions,
) -> Result<Vec<String>, String> {
    let config = ChunkConfig::new(opts.tokens)
        .with_overlap(opts.overlap)
        .map_err(|e| format!("chunk overlap {}: {e}", opts.overlap))?
        .with_sizer(TokenSizer(embedder));
    let chunks: Vec<String> = if markdown {
        MarkdownSplitter::new(config)
            .chunks(text)
            .map(str::to_owned)
            .collect()
    } else {
        TextSplitter::new(config)
            .chunks(text)
            .map(str::to_owned)
            .collect()
    };
    Ok(chunks
        .into_iter()
        .map(|c| c.trim().to_owned())
        .filter(|c| !c.is_empty())
        .collect())
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct FileReport {
    pub source: String,
    pub chunks: usize,
    /// The file had not changed since it was last added.
    pub unchanged: bool,
}

/// The id stem of a document: its file name without extension, as the model will cite it.
fn stem(source: &str) -> String {
    let s = Path::new(source)
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or(source);
    s.chars()
        .map(|c| if c.is_whitespace() { '-' } else { c })
        .collect()
}

/// What is embedded for a chunk: the chunk under its document's title, so a section that never
/// names its subject (a plan without the patient's name) is still found by it.
pub fn embedding_text(title: Option<&str>, chunk: &str) -> String {
    match title {
        Some(t) if !chunk.contains(t) => format!("{t}\n{chunk}"),
        _ => chunk.to_owned(),
    }
}

/// [`embedding_text`] of a stored chunk (its title is in the metadata).
pub fn stored_embedding_text(hit: &edgewise_store::knowledge::Hit) -> String {
    embedding_text(hit.metadata.get("title").and_then(Value::as_str), &hit.text)
}

/// The document's first non-empty line (a markdown heading without its `#`s), if short.
fn title(text: &str) -> Option<String> {
    let line = text.lines().map(str::trim).find(|l| !l.is_empty())?;
    let t = line.trim_start_matches('#').trim();
    (!t.is_empty() && t.chars().count() <= 160).then(|| t.to_owned())
}

/// Adds (or replaces) one document; `progress(done, total)` after each stored batch.
pub fn add_document(
    knowledge: &Knowledge,
    collection: &str,
    embedder: &Embedder,
    embedding: &EmbeddingId,
    path: &Path,
    metadata: &Map<String, Value>,
    opts: ChunkOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<FileReport, String> {
    let text = read_document(path)?;
    let source = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| format!("{}: the file name is not UTF-8", path.display()))?
        .to_owned();
    let digest = edgewise_store::sha256_hex(text.as_bytes());
    let kerr = |e: KnowledgeError| e.to_string();
    if knowledge.source_digest(collection, &source).map_err(kerr)? == Some(digest.clone()) {
        let chunks = knowledge
            .source_chunks(collection, &source)
            .map_err(kerr)?
            .len();
        return Ok(FileReport {
            source,
            chunks,
            unchanged: true,
        });
    }
    let markdown = matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("md" | "markdown")
    );
    let pieces = split(&text, markdown, embedder, opts)?;
    if pieces.is_empty() {
        return Err(format!("{}: no text to add", path.display()));
    }
    let id_stem = stem(&source);
    let title = title(&text);
    if let Some(other) = knowledge
        .get(collection, &format!("{id_stem}#0"))
        .map_err(kerr)?
        .filter(|c| c.source != source)
    {
        return Err(format!(
            "{}: its chunk ids ({id_stem}#N) are taken by {} in '{collection}'; rename one of the files",
            path.display(),
            other.source
        ));
    }
    knowledge.start_source(collection, &source).map_err(kerr)?;
    let mut ids = Vec::with_capacity(pieces.len());
    for (batch_no, batch) in pieces.chunks(BATCH).enumerate() {
        let titled: Vec<String> = batch
            .iter()
            .map(|c| embedding_text(title.as_deref(), c))
            .collect();
        let vectors = embedder
            .embed(&titled)
            .map_err(|e| format!("embedding {}: {e}", path.display()))?;
        let chunks: Vec<NewChunk> = batch
            .iter()
            .zip(vectors)
            .enumerate()
            .map(|(i, (text, vector))| {
                let n = batch_no * BATCH + i;
                let mut meta = metadata.clone();
                meta.insert("chunk".into(), n.into());
                if let Some(t) = &title {
                    meta.insert("title".into(), t.clone().into());
                }
                NewChunk {
                    id: format!("{id_stem}#{n}"),
                    source: source.clone(),
                    text: text.clone(),
                    metadata: meta,
                    vector,
                }
            })
            .collect();
        ids.extend(chunks.iter().map(|c| c.id.clone()));
        knowledge
            .upsert(collection, embedding, &chunks)
            .map_err(kerr)?;
        progress(ids.len(), pieces.len());
    }
    knowledge
        .finish_source(collection, &source, &digest, &ids)
        .map_err(kerr)?;
    Ok(FileReport {
        source,
        chunks: ids.len(),
        unchanged: false,
    })
}
