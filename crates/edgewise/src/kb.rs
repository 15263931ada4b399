//! `edgewise kb`: the node's vector memory (knowledge collections for RAG).

use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use clap::Subcommand;
use edgewise_agent::knowledge::{add_document, stored_embedding_text, ChunkOptions};
use edgewise_infer::Embedder;
use edgewise_store::knowledge::{Delta, EmbeddingId, Filter, VersionVector};
use edgewise_store::Knowledge;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Map, Value};

use crate::node::Node;

#[derive(Subcommand)]
pub enum KbCommand {
    /// Create an empty collection for the node's embedding model.
    Create {
        collection: String,
        /// Allow the collection to leave this node (`kb export`, mesh sync). Off: it never does.
        #[arg(long)]
        shareable: bool,
    },
    /// Add documents (.txt, .md, .pdf): chunked, embedded and stored. A file added again
    /// replaces its chunks; an unchanged one is skipped. Creates the collection if needed.
    Add {
        collection: String,
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Tokens per chunk [default: as many as the embedding model reads, 256 for MiniLM].
        #[arg(long)]
        chunk_tokens: Option<usize>,
        /// Tokens shared by neighbouring chunks [default: an eighth of --chunk-tokens].
        #[arg(long)]
        overlap: Option<usize>,
        /// Metadata stored with every chunk, `KEY=VALUE` (repeatable); search can filter on it.
        #[arg(long = "meta", value_name = "KEY=VALUE")]
        meta: Vec<String>,
    },
    /// The nearest chunks to a question.
    Search {
        collection: String,
        query: String,
        #[arg(short, default_value_t = 5)]
        k: usize,
        /// Only chunks whose metadata has `KEY=VALUE` (repeatable; `source=FILE` for one document).
        #[arg(long = "where", value_name = "KEY=VALUE")]
        filters: Vec<String>,
    },
    /// List collections, or with a name, its documents and chunk counts.
    List { collection: Option<String> },
    /// Print one chunk.
    Show { collection: String, id: String },
    /// Remove a whole collection, one document (`--source FILE`) or chunks (`--chunk ID`).
    Rm {
        collection: String,
        #[arg(long, conflicts_with = "chunk")]
        source: Option<String>,
        #[arg(long)]
        chunk: Vec<String>,
    },
    /// Re-embed every chunk with the node's current embedding model (after a model or schema
    /// change); the collection then accepts only that model's vectors.
    Reembed { collection: String },
    /// Check a collection: every chunk whole, vectors of the right size, index in step.
    Check { collection: String },
    /// Write the changes a peer lacks as a delta (JSON). `--since` is the peer's version vector
    /// (JSON, from `kb version`); without it, everything.
    Export {
        collection: String,
        #[arg(long)]
        since: Option<PathBuf>,
    },
    /// Apply a delta from `kb export` (idempotent).
    Import {
        file: PathBuf,
        /// If the delta creates the collection here, make it shareable too.
        #[arg(long)]
        shareable: bool,
    },
    /// Print a collection's version vector (what `kb export --since` takes).
    Version { collection: String },
}

fn open(node: &Node) -> Result<Knowledge> {
    Ok(Knowledge::open(&node.data.knowledge())?)
}

/// The node's embedding model, loaded, with its identity.
fn embedder(node: &Node) -> Result<(Embedder, EmbeddingId)> {
    let name = &node.config.embedding_model;
    let model = node
        .store
        .open_for_load(name, &node.config.trusted_keys)
        .with_context(|| {
            format!("the embedding model {name} is needed; run `edgewise pull {name}`")
        })?;
    let e = Embedder::load(&model.path)?;
    let id = EmbeddingId::current(name, e.dimension());
    Ok((e, id))
}

fn pairs(items: &[String], what: &str) -> Result<Map<String, Value>> {
    let mut out = Map::new();
    for item in items {
        let (k, v) = item
            .split_once('=')
            .ok_or_else(|| anyhow!("{what} '{item}' is not KEY=VALUE"))?;
        out.insert(k.trim().to_owned(), Value::String(v.trim().to_owned()));
    }
    Ok(out)
}

pub fn run(node: &Node, cmd: KbCommand) -> Result<()> {
    match cmd {
        KbCommand::Create {
            collection,
            shareable,
        } => {
            let (_, id) = embedder(node)?;
            let k = open(node)?;
            k.create(&collection, &id, shareable)?;
            println!("collection {collection}: {id}");
        }
        KbCommand::Add {
            collection,
            paths,
            chunk_tokens,
            overlap,
            meta,
        } => add(node, &collection, &paths, chunk_tokens, overlap, &meta)?,
        KbCommand::Search {
            collection,
            query,
            k,
            filters,
        } => {
            let filter: Filter = pairs(&filters, "--where")?.into_iter().collect();
            let (e, id) = embedder(node)?;
            let q = e
                .embed(&[query])?
                .pop()
                .ok_or_else(|| anyhow!("the embedder returned no vector"))?;
            let store = open(node)?;
            for h in store.search(&collection, &id, &q, k, &filter)? {
                println!("[{}] {:.3} {}", h.id, h.score, h.source);
                println!("    {}", h.text.replace('\n', "\n    "));
            }
        }
        KbCommand::List { collection: None } => {
            let store = open(node)?;
            println!(
                "{:<24} {:>8}  {:<10} EMBEDDING",
                "COLLECTION", "CHUNKS", "SHARING"
            );
            for c in store.collections()? {
                let sharing = if c.shareable { "shareable" } else { "private" };
                println!(
                    "{:<24} {:>8}  {:<10} {}",
                    c.name, c.chunks, sharing, c.embedding
                );
            }
        }
        KbCommand::List {
            collection: Some(name),
        } => {
            let store = open(node)?;
            let info = store.collection(&name)?;
            println!("{name}: {} chunks, {}", info.chunks, info.embedding);
            let mut per_source: std::collections::BTreeMap<String, usize> = Default::default();
            for (h, _) in store.chunks(&name)? {
                *per_source.entry(h.source).or_default() += 1;
            }
            for (source, n) in per_source {
                println!("  {source}\t{n} chunks");
            }
        }
        KbCommand::Show { collection, id } => {
            let store = open(node)?;
            let h = store
                .get(&collection, &id)?
                .ok_or_else(|| anyhow!("no chunk '{id}' in '{collection}'"))?;
            println!("[{}] {}  {}", h.id, h.source, Value::Object(h.metadata));
            println!("{}", h.text);
        }
        KbCommand::Rm {
            collection,
            source,
            chunk,
        } => {
            let store = open(node)?;
            if let Some(source) = source {
                let ids = store.source_chunks(&collection, &source)?;
                if ids.is_empty() {
                    bail!("no document '{source}' in '{collection}' (see `edgewise kb list {collection}`)");
                }
                store.start_source(&collection, &source)?;
                let n = store.delete(&collection, &ids)?;
                println!("removed {source}: {n} chunks");
            } else if !chunk.is_empty() {
                let n = store.delete(&collection, &chunk)?;
                if n < chunk.len() {
                    bail!(
                        "removed {n} of {} chunks; the others did not exist",
                        chunk.len()
                    );
                }
                println!("removed {n} chunks");
            } else {
                store.drop_collection(&collection)?;
                println!("removed collection {collection}");
            }
            store.save_index(&collection).ok();
        }
        KbCommand::Reembed { collection } => {
            let (e, id) = embedder(node)?;
            let store = open(node)?;
            let before = store.collection(&collection)?.embedding;
            let bar = chunk_bar(
                store.collection(&collection)?.chunks as usize,
                "re-embedding",
            );
            let n = store.reembed(&collection, &id, |hits| {
                let mut out = Vec::with_capacity(hits.len());
                for part in hits.chunks(32) {
                    let texts: Vec<String> = part.iter().map(stored_embedding_text).collect();
                    out.extend(e.embed(&texts).map_err(|e| e.to_string())?);
                    bar.inc(part.len() as u64);
                }
                Ok(out)
            })?;
            bar.finish_and_clear();
            store.save_index(&collection)?;
            println!("{collection}: {n} chunks re-embedded, {before} → {id}");
        }
        KbCommand::Check { collection } => {
            let store = open(node)?;
            let n = store.check(&collection)?;
            println!("{collection}: consistent, {n} chunks");
        }
        KbCommand::Export { collection, since } => {
            let since: VersionVector = match since {
                None => VersionVector::new(),
                Some(p) => serde_json::from_slice(
                    &std::fs::read(&p).with_context(|| p.display().to_string())?,
                )
                .with_context(|| {
                    format!(
                        "{}: not a version vector (JSON object of node → counter)",
                        p.display()
                    )
                })?,
            };
            let delta = open(node)?.export(&collection, &since)?;
            println!("{}", serde_json::to_string(&delta)?);
        }
        KbCommand::Import { file, shareable } => {
            let bytes = std::fs::read(&file).with_context(|| file.display().to_string())?;
            let delta: Delta = serde_json::from_slice(&bytes).with_context(|| {
                format!("{}: not a delta from `edgewise kb export`", file.display())
            })?;
            let store = open(node)?;
            let r = store.import(&delta, shareable)?;
            store.save_index(&delta.collection)?;
            println!(
                "{}: {} changes applied, {} already here or superseded",
                delta.collection, r.applied, r.skipped
            );
        }
        KbCommand::Version { collection } => {
            let info = open(node)?.collection(&collection)?;
            println!("{}", serde_json::to_string(&info.version)?);
        }
    }
    Ok(())
}

fn chunk_bar(total: usize, label: &str) -> ProgressBar {
    let bar = ProgressBar::new(total as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg:24} {bar:30} {pos:>6}/{len:<6} chunks {per_sec:>12} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(label.to_owned());
    bar
}

fn add(
    node: &Node,
    collection: &str,
    paths: &[PathBuf],
    chunk_tokens: Option<usize>,
    overlap: Option<usize>,
    meta: &[String],
) -> Result<()> {
    let metadata = pairs(meta, "--meta")?;
    let (e, id) = embedder(node)?;
    let mut opts = ChunkOptions::for_model(&e);
    if let Some(t) = chunk_tokens {
        if t < 16 || t > 8192 {
            bail!("--chunk-tokens {t}: use 16 to 8192");
        }
        if t > e.max_tokens() {
            eprintln!(
                "note: the embedding model reads {} tokens; the rest of each {t}-token chunk is stored but not searched",
                e.max_tokens()
            );
        }
        opts.tokens = t;
        opts.overlap = t / 8;
    }
    if let Some(o) = overlap {
        if o >= opts.tokens {
            bail!(
                "--overlap {o} must be smaller than the chunk size ({})",
                opts.tokens
            );
        }
        opts.overlap = o;
    }
    let store = open(node)?;
    store.create(collection, &id, false)?;
    let started = std::time::Instant::now();
    let mut stored = 0usize;
    let mut failed = Vec::new();
    for path in paths {
        let label = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let bar = chunk_bar(0, &label);
        let result = add_document(
            &store,
            collection,
            &e,
            &id,
            path,
            &metadata,
            opts,
            &mut |done, total| {
                bar.set_length(total as u64);
                bar.set_position(done as u64);
            },
        );
        bar.finish_and_clear();
        match result {
            Ok(r) if r.unchanged => println!("{}: unchanged ({} chunks)", r.source, r.chunks),
            Ok(r) => {
                stored += r.chunks;
                println!("{}: {} chunks", r.source, r.chunks);
            }
            Err(e) => {
                eprintln!("error: {e}");
                failed.push(path.display().to_string());
            }
        }
    }
    store.save_index(collection)?;
    let secs = started.elapsed().as_secs_f64();
    if stored > 0 {
        println!(
            "{collection}: {stored} chunks stored in {secs:.1} s ({:.1} chunks/s)",
            stored as f64 / secs.max(1e-9)
        );
    }
    if !failed.is_empty() {
        bail!(
            "{} of {} documents not added: {}",
            failed.len(),
            paths.len(),
            failed.join(", ")
        );
    }
    Ok(())
}
