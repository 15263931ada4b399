//! Vector memory: named collections of text chunks with their embeddings, an HNSW index (usearch)
//! per collection, and deltas that let two nodes converge.
//!
//! Layout: one redb file holds collection records and chunk records; each collection's index is
//! rebuilt from the chunk records, or loaded from `index/<name>.usearch` when that file was saved
//! at the collection's current generation.
//!
//! Invariants:
//! - A chunk's text, metadata and vector are one record written in one transaction, so a crash
//!   leaves whole chunks or none (no half chunk, no vector without text).
//! - A collection declares its embedding model, dimension and schema version; vectors stamped
//!   with anything else are refused, never mixed in.
//! - Every change is stamped `(lamport, node, counter)`; deletes leave tombstones. A record is
//!   replaced only by a change with a greater `(lamport, node)`, so applying the same changes in
//!   any order, any number of times, gives the same collection (last writer wins per chunk id).
//! - The collection's version vector (node → highest counter seen) says which changes it has;
//!   `export(since)` returns every record whose stamp `since` does not cover.
//! - No clock a peer sets (lamport time, counter, version vector entry) exceeds `MAX_CLOCK`, so
//!   the next local change can always be stamped without `u64` running out.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Bump when what a stored vector means changes (pooling, normalisation, chunk recipe): older
/// collections then refuse new vectors until `edgewise kb reembed`.
pub const SCHEMA_VERSION: u32 = 1;

/// Ceiling of every clock a delta may carry: a change's lamport time and counter, and each entry
/// of the sender's version vector (at the ceiling is accepted, above it is refused). A clock grows
/// by one per change, so no honest peer gets near it (2^48 changes is about nine years at a
/// million changes a second), and a clock at most this high leaves room for every local
/// increment: a forged delta cannot make the next local change wrap.
pub const MAX_CLOCK: u64 = 1 << 48;

/// Collections up to this size are searched exactly (brute force is both faster and exact there).
pub const EXACT_SEARCH_BELOW: usize = 4096;

const COLLECTIONS: TableDefinition<&str, &str> = TableDefinition::new("collections");
/// (collection, chunk id) → record: u32 LE header length, JSON header, f32 LE vector.
const CHUNKS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("chunks");
/// (collection, source) → sha256 of the source's text once all its chunks are stored.
const SOURCES: TableDefinition<(&str, &str), &str> = TableDefinition::new("sources");
const META: TableDefinition<&str, &str> = TableDefinition::new("meta");

#[derive(Debug, thiserror::Error)]
pub enum KnowledgeError {
    #[error("knowledge store {path} is open in another edgewise process (is `edgewise serve` running? stop it or use its API)")]
    InUse { path: PathBuf },
    #[error("knowledge store {path}: {message}")]
    Db { path: PathBuf, message: String },
    #[error("no collection '{name}' (create it with `edgewise kb create {name}` or `edgewise kb add {name} FILE…`)")]
    NoCollection { name: String },
    #[error("collection '{name}' already exists with embedding model {model} ({dimension}-d)")]
    Exists {
        name: String,
        model: String,
        dimension: usize,
    },
    #[error("collection '{collection}' holds {expected} embeddings; refusing {got}{hint}")]
    EmbeddingMismatch {
        collection: String,
        expected: String,
        got: String,
        hint: &'static str,
    },
    #[error("collection '{name}' is private to this node; mark it shareable (`edgewise kb create {name} --shareable`) to export it")]
    Private { name: String },
    #[error("invalid {what}: {message}")]
    Invalid { what: String, message: String },
    #[error("vector index of '{collection}': {message}")]
    Index { collection: String, message: String },
    #[error("delta for collection '{collection}': {what} is {value}, above the ceiling of {ceiling}; clocks grow by one per change, so the peer's clock is corrupt or forged. The delta was not applied; repair or reset the sending node's copy of the collection", ceiling = MAX_CLOCK)]
    ClockOutOfRange {
        collection: String,
        /// Which clock: a change's lamport time or counter (with its id), or a version entry.
        what: String,
        value: u64,
    },
    #[error("collection '{collection}': its {clock} is {value} and cannot advance, so no local change can be stamped; a peer raised it before clocks were bounded. Remove the collection (`edgewise kb rm {collection}`) and add or import its contents again")]
    ClockExhausted {
        collection: String,
        clock: &'static str,
        value: u64,
    },
}

type Result<T> = std::result::Result<T, KnowledgeError>;

/// Which embedding a vector is: vectors are comparable only with the same identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmbeddingId {
    pub model: String,
    pub dimension: usize,
    pub schema_version: u32,
}

impl std::fmt::Display for EmbeddingId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}-d, schema {})",
            self.model, self.dimension, self.schema_version
        )
    }
}

impl EmbeddingId {
    pub fn current(model: &str, dimension: usize) -> Self {
        Self {
            model: model.to_owned(),
            dimension,
            schema_version: SCHEMA_VERSION,
        }
    }
}

/// node id → highest change counter of that node this collection has seen.
pub type VersionVector = BTreeMap<String, u64>;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CollectionInfo {
    pub name: String,
    pub embedding: EmbeddingId,
    /// Whether the collection may ever leave this node (exported as deltas).
    pub shareable: bool,
    pub chunks: u64,
    pub version: VersionVector,
    /// Highest lamport time seen.
    pub lamport: u64,
    /// Bumped by every committed change; a saved index is valid only at its generation.
    pub generation: u64,
    /// Next internal index key.
    next_key: u64,
}

/// The stamp of a change: total order `(lamport, node)`; `counter` places it in the version vector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    pub lamport: u64,
    pub node: String,
    pub counter: u64,
}

impl Stamp {
    fn wins_over(&self, other: &Stamp) -> bool {
        (self.lamport, &self.node) > (other.lamport, &other.node)
    }
}

/// A chunk to store.
#[derive(Debug, Clone)]
pub struct NewChunk {
    pub id: String,
    pub source: String,
    pub text: String,
    pub metadata: Map<String, Value>,
    pub vector: Vec<f32>,
}

/// One record as it travels in a delta: a chunk or a tombstone.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Change {
    pub id: String,
    pub stamp: Stamp,
    /// None: the chunk was deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk: Option<ChunkBody>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChunkBody {
    pub source: String,
    pub text: String,
    #[serde(default)]
    pub metadata: Map<String, Value>,
    pub vector: Vec<f32>,
}

/// Changes of one collection that a peer lacks, with what is needed to check and apply them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Delta {
    pub collection: String,
    pub embedding: EmbeddingId,
    /// The sender's version vector: after applying, the receiver has everything it covers.
    pub version: VersionVector,
    pub changes: Vec<Change>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ImportReport {
    pub applied: usize,
    /// Already present, or superseded by a newer local change.
    pub skipped: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Hit {
    pub id: String,
    pub source: String,
    pub text: String,
    pub metadata: Map<String, Value>,
    /// Cosine similarity, 1 is identical.
    pub score: f32,
}

/// Metadata equality filter: every pair must match (`source` matches the chunk's source).
pub type Filter = BTreeMap<String, Value>;

/// The header stored in front of a chunk's vector.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Header {
    key: u64,
    stamp: Stamp,
    #[serde(default)]
    deleted: bool,
    #[serde(default)]
    source: String,
    #[serde(default)]
    text: String,
    #[serde(default)]
    metadata: Map<String, Value>,
}

fn encode(header: &Header, vector: &[f32]) -> Vec<u8> {
    let json = serde_json::to_vec(header).unwrap_or_default();
    let mut out = Vec::with_capacity(4 + json.len() + vector.len() * 4);
    out.extend_from_slice(&(json.len() as u32).to_le_bytes());
    out.extend_from_slice(&json);
    for x in vector {
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

fn decode_header(bytes: &[u8]) -> Option<(Header, &[u8])> {
    let len = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    let json = bytes.get(4..4 + len)?;
    let header = serde_json::from_slice(json).ok()?;
    Some((header, &bytes[4 + len..]))
}

fn decode_vector(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// What search needs in memory per live chunk.
struct Entry {
    id: String,
    source: String,
    metadata: Map<String, Value>,
}

struct LoadedIndex {
    generation: u64,
    index: usearch::Index,
    entries: HashMap<u64, Entry>,
}

pub struct Knowledge {
    db: Database,
    path: PathBuf,
    index_dir: PathBuf,
    node: String,
    indexes: Mutex<HashMap<String, Arc<Mutex<LoadedIndex>>>>,
}

/// Index parameters: measured with `edgewise bench vector` (recall@10 ≥ 0.95 on 100k × 384).
pub const CONNECTIVITY: usize = 16;
pub const EXPANSION_ADD: usize = 128;
pub const EXPANSION_SEARCH: usize = 64;

fn new_index(dimension: usize, capacity: usize) -> std::result::Result<usearch::Index, String> {
    let options = usearch::IndexOptions {
        dimensions: dimension,
        metric: usearch::MetricKind::Cos,
        quantization: usearch::ScalarKind::F32,
        connectivity: CONNECTIVITY,
        expansion_add: EXPANSION_ADD,
        expansion_search: EXPANSION_SEARCH,
        multi: false,
    };
    let index = usearch::Index::new(&options).map_err(|e| e.to_string())?;
    index.reserve(capacity.max(64)).map_err(|e| e.to_string())?;
    Ok(index)
}

impl Knowledge {
    /// Opens (creating if needed) `dir/knowledge.redb`; saved indexes live in `dir/index/`.
    pub fn open(dir: &Path) -> Result<Self> {
        let path = dir.join("knowledge.redb");
        let db_err = |message: String| KnowledgeError::Db {
            path: path.clone(),
            message,
        };
        std::fs::create_dir_all(dir.join("index"))
            .map_err(|e| db_err(format!("cannot create {}: {e}", dir.display())))?;
        let db = Database::create(&path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => {
                KnowledgeError::InUse { path: path.clone() }
            }
            other => db_err(other.to_string()),
        })?;
        let this = Self {
            db,
            path: path.clone(),
            index_dir: dir.join("index"),
            node: String::new(),
            indexes: Mutex::new(HashMap::new()),
        };
        let node = this.node_id()?;
        Ok(Self { node, ..this })
    }

    fn err(&self, e: impl std::fmt::Display) -> KnowledgeError {
        KnowledgeError::Db {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }

    /// This store's id in version vectors: random, made once.
    fn node_id(&self) -> Result<String> {
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        let id = {
            let mut t = tx.open_table(META).map_err(|e| self.err(e))?;
            let existing = t
                .get("node")
                .map_err(|e| self.err(e))?
                .map(|v| v.value().to_owned());
            match existing {
                Some(id) => id,
                None => {
                    let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
                    t.insert("node", id.as_str()).map_err(|e| self.err(e))?;
                    id
                }
            }
        };
        tx.commit().map_err(|e| self.err(e))?;
        Ok(id)
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn collections(&self) -> Result<Vec<CollectionInfo>> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = match tx.open_table(COLLECTIONS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(self.err(e)),
        };
        let mut out = Vec::new();
        for item in t.iter().map_err(|e| self.err(e))? {
            let (_, v) = item.map_err(|e| self.err(e))?;
            out.push(serde_json::from_str(v.value()).map_err(|e| self.err(e))?);
        }
        Ok(out)
    }

    pub fn collection(&self, name: &str) -> Result<CollectionInfo> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = match tx.open_table(COLLECTIONS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => {
                return Err(KnowledgeError::NoCollection { name: name.into() })
            }
            Err(e) => return Err(self.err(e)),
        };
        let v = t
            .get(name)
            .map_err(|e| self.err(e))?
            .ok_or_else(|| KnowledgeError::NoCollection { name: name.into() })?;
        serde_json::from_str(v.value()).map_err(|e| self.err(e))
    }

    /// Creates a collection, or returns the existing one if it has the same embedding.
    pub fn create(
        &self,
        name: &str,
        embedding: &EmbeddingId,
        shareable: bool,
    ) -> Result<CollectionInfo> {
        check_name(name)?;
        match self.collection(name) {
            Ok(c) if &c.embedding == embedding => return Ok(c),
            Ok(c) => {
                return Err(KnowledgeError::Exists {
                    name: name.into(),
                    model: c.embedding.model,
                    dimension: c.embedding.dimension,
                })
            }
            Err(KnowledgeError::NoCollection { .. }) => {}
            Err(e) => return Err(e),
        }
        let info = CollectionInfo {
            name: name.into(),
            embedding: embedding.clone(),
            shareable,
            chunks: 0,
            version: VersionVector::new(),
            lamport: 0,
            generation: 0,
            next_key: 1,
        };
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut t = tx.open_table(COLLECTIONS).map_err(|e| self.err(e))?;
            let json = serde_json::to_string(&info).map_err(|e| self.err(e))?;
            t.insert(name, json.as_str()).map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))?;
        Ok(info)
    }

    /// Removes a collection, its chunks and its saved index.
    pub fn drop_collection(&self, name: &str) -> Result<()> {
        self.collection(name)?;
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut t = tx.open_table(COLLECTIONS).map_err(|e| self.err(e))?;
            t.remove(name).map_err(|e| self.err(e))?;
            let mut chunks = tx.open_table(CHUNKS).map_err(|e| self.err(e))?;
            chunks
                .retain_in((name, "")..=(name, "\u{10ffff}"), |_, _| false)
                .map_err(|e| self.err(e))?;
            let mut sources = tx.open_table(SOURCES).map_err(|e| self.err(e))?;
            sources
                .retain_in((name, "")..=(name, "\u{10ffff}"), |_, _| false)
                .map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))?;
        self.forget_index(name);
        let _ = std::fs::remove_file(self.index_file(name));
        Ok(())
    }

    fn check_embedding(info: &CollectionInfo, got: &EmbeddingId) -> Result<()> {
        if &info.embedding == got {
            return Ok(());
        }
        Err(KnowledgeError::EmbeddingMismatch {
            collection: info.name.clone(),
            expected: info.embedding.to_string(),
            got: got.to_string(),
            hint: if info.embedding.schema_version != got.schema_version
                || info.embedding.model != got.model
            {
                "; migrate the collection with `edgewise kb reembed` first"
            } else {
                ""
            },
        })
    }

    /// Stores chunks (replacing chunks with the same ids) in one transaction. Every vector must be
    /// `embedding` and the collection must hold `embedding`.
    pub fn upsert(&self, name: &str, embedding: &EmbeddingId, chunks: &[NewChunk]) -> Result<()> {
        self.write(name, |w| {
            Self::check_embedding(&w.info, embedding)?;
            for c in chunks {
                if c.vector.len() != w.info.embedding.dimension {
                    return Err(KnowledgeError::EmbeddingMismatch {
                        collection: name.into(),
                        expected: w.info.embedding.to_string(),
                        got: format!("a {}-d vector for chunk '{}'", c.vector.len(), c.id),
                        hint: "",
                    });
                }
                if c.id.is_empty() {
                    return Err(KnowledgeError::Invalid {
                        what: "chunk id".into(),
                        message: "empty".into(),
                    });
                }
            }
            for c in chunks {
                let stamp = w.next_stamp()?;
                w.put(
                    &c.id,
                    stamp,
                    Some(ChunkBody {
                        source: c.source.clone(),
                        text: c.text.clone(),
                        metadata: c.metadata.clone(),
                        vector: c.vector.clone(),
                    }),
                )?;
            }
            Ok(())
        })
    }

    /// Deletes chunks by id; returns how many existed.
    pub fn delete(&self, name: &str, ids: &[String]) -> Result<usize> {
        let mut n = 0;
        self.write(name, |w| {
            for id in ids {
                if w.live(id)? {
                    let stamp = w.next_stamp()?;
                    w.put(id, stamp, None)?;
                    n += 1;
                }
            }
            Ok(())
        })?;
        Ok(n)
    }

    /// Ids of the live chunks from `source`, in id order.
    pub fn source_chunks(&self, name: &str, source: &str) -> Result<Vec<String>> {
        Ok(self
            .scan(name, false)?
            .into_iter()
            .filter(|(_, h, _)| !h.deleted && h.source == source)
            .map(|(id, _, _)| id)
            .collect())
    }

    /// The digest recorded when `source` was last stored completely, if it was.
    pub fn source_digest(&self, name: &str, source: &str) -> Result<Option<String>> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = match tx.open_table(SOURCES) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(self.err(e)),
        };
        let v = t.get((name, source)).map_err(|e| self.err(e))?;
        Ok(v.map(|v| v.value().to_owned()))
    }

    /// Records that all of `source`'s chunks are stored; chunks of the source not in `keep` are
    /// deleted in the same transaction (a shorter new version of a file).
    pub fn finish_source(
        &self,
        name: &str,
        source: &str,
        digest: &str,
        keep: &[String],
    ) -> Result<()> {
        let stale: Vec<String> = self
            .source_chunks(name, source)?
            .into_iter()
            .filter(|id| !keep.contains(id))
            .collect();
        self.write(name, |w| {
            for id in &stale {
                let stamp = w.next_stamp()?;
                w.put(id, stamp, None)?;
            }
            let mut t = w.tx.open_table(SOURCES).map_err(|e| w.err(e))?;
            t.insert((name, source), digest).map_err(|e| w.err(e))?;
            Ok(())
        })
    }

    /// Forgets that a source was complete (it is about to be rewritten).
    pub fn start_source(&self, name: &str, source: &str) -> Result<()> {
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut t = tx.open_table(SOURCES).map_err(|e| self.err(e))?;
            t.remove((name, source)).map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))
    }

    /// Runs `f` in one write transaction of collection `name`, then stores the updated
    /// collection record (counts, version vector, generation) in the same transaction.
    fn write(&self, name: &str, f: impl FnOnce(&mut Writer<'_>) -> Result<()>) -> Result<()> {
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        // Read inside the write transaction: writers are serialised, so counts, version vector
        // and generation never go back.
        let info: CollectionInfo = {
            let t = tx.open_table(COLLECTIONS).map_err(|e| self.err(e))?;
            let v = t
                .get(name)
                .map_err(|e| self.err(e))?
                .ok_or_else(|| KnowledgeError::NoCollection { name: name.into() })?;
            serde_json::from_str(v.value()).map_err(|e| self.err(e))?
        };
        let mut w = Writer {
            tx: &tx,
            info,
            node: &self.node,
            path: &self.path,
            index_updates: Vec::new(),
        };
        f(&mut w)?;
        w.info.generation += 1;
        let info = w.info.clone();
        let updates = std::mem::take(&mut w.index_updates);
        {
            let mut t = tx.open_table(COLLECTIONS).map_err(|e| self.err(e))?;
            let json = serde_json::to_string(&info).map_err(|e| self.err(e))?;
            t.insert(name, json.as_str()).map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))?;
        self.apply_to_index(&info, updates);
        Ok(())
    }

    /// Keeps a loaded index in step with a committed write; an index that cannot follow is
    /// dropped and rebuilt on the next search.
    fn apply_to_index(&self, info: &CollectionInfo, updates: Vec<IndexUpdate>) {
        let loaded = self
            .indexes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&info.name)
            .cloned();
        let Some(loaded) = loaded else { return };
        let mut l = loaded.lock().unwrap_or_else(|p| p.into_inner());
        let mut ok = l.generation + 1 == info.generation;
        for u in updates {
            if !ok {
                break;
            }
            if let Some(old) = u.old_key {
                l.entries.remove(&old);
                ok &= l.index.remove(old).is_ok();
            }
            if let Some((key, entry, vector)) = u.new {
                if l.index.size() + 1 >= l.index.capacity() {
                    let cap = (l.index.capacity() * 2).max(1024);
                    ok &= l.index.reserve(cap).is_ok();
                }
                ok &= l.index.add(key, &vector).is_ok();
                l.entries.insert(key, entry);
            }
        }
        if ok {
            l.generation = info.generation;
        } else {
            drop(l);
            self.forget_index(&info.name);
        }
    }

    fn forget_index(&self, name: &str) {
        self.indexes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
    }

    fn index_file(&self, name: &str) -> PathBuf {
        self.index_dir.join(format!("{name}.usearch"))
    }

    /// Every record of a collection: (id, header, vector; empty unless `vectors`).
    fn scan(&self, name: &str, vectors: bool) -> Result<Vec<(String, Header, Vec<f32>)>> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = match tx.open_table(CHUNKS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(self.err(e)),
        };
        let mut out = Vec::new();
        for item in t
            .range((name, "")..=(name, "\u{10ffff}"))
            .map_err(|e| self.err(e))?
        {
            let (k, v) = item.map_err(|e| self.err(e))?;
            let (_, id) = k.value();
            let bytes = v.value();
            let (header, vector) = decode_header(bytes)
                .ok_or_else(|| self.err(format!("chunk '{id}' of '{name}' is corrupt")))?;
            let vector = if vectors {
                decode_vector(vector)
            } else {
                Vec::new()
            };
            out.push((id.to_owned(), header, vector));
        }
        Ok(out)
    }

    /// The collection's index, loaded from its saved file when that is current, else rebuilt.
    fn index(&self, info: &CollectionInfo) -> Result<Arc<Mutex<LoadedIndex>>> {
        if let Some(l) = self
            .indexes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&info.name)
        {
            if l.lock().unwrap_or_else(|p| p.into_inner()).generation == info.generation {
                return Ok(l.clone());
            }
        }
        let index_err = |message: String| KnowledgeError::Index {
            collection: info.name.clone(),
            message,
        };
        let live_of = |vectors| -> Result<Vec<_>> {
            Ok(self
                .scan(&info.name, vectors)?
                .into_iter()
                .filter(|(_, h, _)| !h.deleted)
                .collect())
        };
        // Vectors are read only when the saved index cannot be used.
        let mut live: Vec<(String, Header, Vec<f32>)> = live_of(false)?;
        let saved = self.index_file(&info.name);
        let stamp = saved.with_extension("generation");
        let restored = std::fs::read_to_string(&stamp)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .filter(|g| *g == info.generation)
            .and_then(|_| usearch::Index::restore(&saved.to_string_lossy()).ok())
            .filter(|i| i.size() == live.len() && i.dimensions() == info.embedding.dimension);
        let index = match restored {
            Some(i) => {
                i.change_expansion_search(EXPANSION_SEARCH);
                i
            }
            None => {
                live = live_of(true)?;
                let index =
                    new_index(info.embedding.dimension, live.len() + 64).map_err(&index_err)?;
                add_parallel(&index, live.iter().map(|(_, h, v)| (h.key, v.as_slice())))
                    .map_err(&index_err)?;
                index
            }
        };
        let entries = live
            .into_iter()
            .map(|(id, h, _)| {
                (
                    h.key,
                    Entry {
                        id,
                        source: h.source,
                        metadata: h.metadata,
                    },
                )
            })
            .collect();
        let loaded = Arc::new(Mutex::new(LoadedIndex {
            generation: info.generation,
            index,
            entries,
        }));
        self.indexes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(info.name.clone(), loaded.clone());
        Ok(loaded)
    }

    /// Saves the collection's index so the next process loads it instead of rebuilding.
    pub fn save_index(&self, name: &str) -> Result<()> {
        let info = self.collection(name)?;
        let loaded = self.index(&info)?;
        let l = loaded.lock().unwrap_or_else(|p| p.into_inner());
        let file = self.index_file(name);
        let stamp = file.with_extension("generation");
        let _ = std::fs::remove_file(&stamp);
        l.index
            .save(&file.to_string_lossy())
            .map_err(|e| KnowledgeError::Index {
                collection: name.into(),
                message: e.to_string(),
            })?;
        std::fs::write(&stamp, l.generation.to_string()).map_err(|e| self.err(e))
    }

    /// Top-`k` chunks nearest to `query` (an embedding of `embedding`), optionally filtered.
    pub fn search(
        &self,
        name: &str,
        embedding: &EmbeddingId,
        query: &[f32],
        k: usize,
        filter: &Filter,
    ) -> Result<Vec<Hit>> {
        let info = self.collection(name)?;
        Self::check_embedding(&info, embedding)?;
        if query.len() != info.embedding.dimension {
            return Err(KnowledgeError::EmbeddingMismatch {
                collection: name.into(),
                expected: info.embedding.to_string(),
                got: format!("a {}-d query", query.len()),
                hint: "",
            });
        }
        let loaded = self.index(&info)?;
        let l = loaded.lock().unwrap_or_else(|p| p.into_inner());
        let index_err = |e: String| KnowledgeError::Index {
            collection: name.into(),
            message: e,
        };
        let matches_filter = |key: u64| {
            l.entries
                .get(&key)
                .is_some_and(|e| filter_matches(filter, e))
        };
        let found: Vec<(u64, f32)> = if filter.is_empty() {
            let m = if l.entries.len() < EXACT_SEARCH_BELOW {
                l.index.exact_search(query, k)
            } else {
                l.index.search(query, k)
            }
            .map_err(|e| index_err(e.to_string()))?;
            m.keys.into_iter().zip(m.distances).collect()
        } else if l.entries.len() < EXACT_SEARCH_BELOW {
            let mut scored: Vec<(u64, f32)> = Vec::new();
            let mut buf = vec![0f32; info.embedding.dimension];
            for key in l.entries.keys().copied().filter(|k| matches_filter(*k)) {
                if l.index.get(key, &mut buf).is_ok() {
                    scored.push((key, 1.0 - cosine(query, &buf)));
                }
            }
            scored.sort_by(|a, b| a.1.total_cmp(&b.1));
            scored.truncate(k);
            scored
        } else {
            let m = l
                .index
                .filtered_search(query, k, matches_filter)
                .map_err(|e| index_err(e.to_string()))?;
            m.keys.into_iter().zip(m.distances).collect()
        };
        let ids: Vec<(String, f32)> = found
            .into_iter()
            .filter_map(|(key, d)| l.entries.get(&key).map(|e| (e.id.clone(), 1.0 - d)))
            .collect();
        drop(l);
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = tx.open_table(CHUNKS).map_err(|e| self.err(e))?;
        let mut hits = Vec::new();
        for (id, score) in ids {
            let Some(v) = t.get((name, id.as_str())).map_err(|e| self.err(e))? else {
                continue;
            };
            if let Some((h, _)) = decode_header(v.value()) {
                if !h.deleted {
                    hits.push(Hit {
                        id,
                        source: h.source,
                        text: h.text,
                        metadata: h.metadata,
                        score,
                    });
                }
            }
        }
        Ok(hits)
    }

    /// One chunk by id.
    pub fn get(&self, name: &str, id: &str) -> Result<Option<Hit>> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = match tx.open_table(CHUNKS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(self.err(e)),
        };
        let Some(v) = t.get((name, id)).map_err(|e| self.err(e))? else {
            return Ok(None);
        };
        Ok(decode_header(v.value())
            .filter(|(h, _)| !h.deleted)
            .map(|(h, _)| Hit {
                id: id.into(),
                source: h.source,
                text: h.text,
                metadata: h.metadata,
                score: 1.0,
            }))
    }

    /// Live chunks in id order with their vectors (for re-embedding and checks).
    pub fn chunks(&self, name: &str) -> Result<Vec<(Hit, Vec<f32>)>> {
        Ok(self
            .scan(name, true)?
            .into_iter()
            .filter(|(_, h, _)| !h.deleted)
            .map(|(id, h, v)| {
                (
                    Hit {
                        id,
                        source: h.source,
                        text: h.text,
                        metadata: h.metadata,
                        score: 1.0,
                    },
                    v,
                )
            })
            .collect())
    }

    /// Checks that every record decodes, every live chunk has a vector of the collection's
    /// dimension and text, the count matches, and the index holds exactly the live chunks.
    /// Returns the number of live chunks.
    pub fn check(&self, name: &str) -> Result<u64> {
        let info = self.collection(name)?;
        let records = self.scan(name, true)?;
        let problem = |message: String| KnowledgeError::Invalid {
            what: format!("collection '{name}'"),
            message,
        };
        let mut live = 0u64;
        for (id, h, v) in &records {
            if h.deleted {
                if !v.is_empty() {
                    return Err(problem(format!("tombstone '{id}' still has a vector")));
                }
                continue;
            }
            live += 1;
            if v.len() != info.embedding.dimension {
                return Err(problem(format!(
                    "chunk '{id}' has a {}-d vector, the collection is {}-d",
                    v.len(),
                    info.embedding.dimension
                )));
            }
            if h.text.is_empty() {
                return Err(problem(format!("chunk '{id}' has no text")));
            }
        }
        if live != info.chunks {
            return Err(problem(format!(
                "{live} live chunks but the collection record counts {}",
                info.chunks
            )));
        }
        let loaded = self.index(&info)?;
        let l = loaded.lock().unwrap_or_else(|p| p.into_inner());
        if l.index.size() as u64 != live || l.entries.len() as u64 != live {
            return Err(problem(format!(
                "index holds {} vectors for {live} chunks",
                l.index.size()
            )));
        }
        Ok(live)
    }

    /// Records whose stamps `since` does not cover. Refused for private collections.
    pub fn export(&self, name: &str, since: &VersionVector) -> Result<Delta> {
        let info = self.collection(name)?;
        if !info.shareable {
            return Err(KnowledgeError::Private { name: name.into() });
        }
        let changes = self
            .scan(name, true)?
            .into_iter()
            .filter(|(_, h, _)| since.get(&h.stamp.node).copied().unwrap_or(0) < h.stamp.counter)
            .map(|(id, h, vector)| Change {
                id,
                chunk: (!h.deleted).then(|| ChunkBody {
                    source: h.source,
                    text: h.text,
                    metadata: h.metadata,
                    vector,
                }),
                stamp: h.stamp,
            })
            .collect();
        Ok(Delta {
            collection: name.into(),
            embedding: info.embedding,
            version: info.version,
            changes,
        })
    }

    /// Applies a peer's delta: creates the collection if missing (private unless `shareable`),
    /// refuses another embedding, and skips changes it already has or that lose to local ones.
    /// A delta with a wrong-sized vector or a clock above `MAX_CLOCK` is refused whole, before
    /// anything (the collection included) is written.
    pub fn import(&self, delta: &Delta, shareable: bool) -> Result<ImportReport> {
        check_clocks(delta)?;
        for c in &delta.changes {
            if let Some(body) = &c.chunk {
                if body.vector.len() != delta.embedding.dimension {
                    return Err(KnowledgeError::EmbeddingMismatch {
                        collection: delta.collection.clone(),
                        expected: delta.embedding.to_string(),
                        got: format!("a {}-d vector for chunk '{}'", body.vector.len(), c.id),
                        hint: "",
                    });
                }
            }
        }
        match self.collection(&delta.collection) {
            Ok(info) => Self::check_embedding(&info, &delta.embedding)?,
            Err(KnowledgeError::NoCollection { .. }) => {
                self.create(&delta.collection, &delta.embedding, shareable)?;
            }
            Err(e) => return Err(e),
        }
        let mut report = ImportReport::default();
        self.write(&delta.collection, |w| {
            for c in &delta.changes {
                w.info.lamport = w.info.lamport.max(c.stamp.lamport);
                if w.stamp_of(&c.id)?.is_some_and(|s| !c.stamp.wins_over(&s)) {
                    report.skipped += 1;
                    continue;
                }
                w.put(&c.id, c.stamp.clone(), c.chunk.clone())?;
                report.applied += 1;
            }
            for (node, counter) in &delta.version {
                let mine = w.info.version.entry(node.clone()).or_insert(0);
                *mine = (*mine).max(*counter);
            }
            Ok(())
        })?;
        Ok(report)
    }

    /// Replaces every vector (and the collection's embedding identity) in one transaction:
    /// `embed` gets the chunks in order and returns one vector each.
    pub fn reembed(
        &self,
        name: &str,
        embedding: &EmbeddingId,
        embed: impl FnOnce(&[Hit]) -> std::result::Result<Vec<Vec<f32>>, String>,
    ) -> Result<u64> {
        let chunks = self.chunks(name)?;
        let hits: Vec<Hit> = chunks.iter().map(|(h, _)| h.clone()).collect();
        let vectors = embed(&hits).map_err(|message| KnowledgeError::Invalid {
            what: "re-embedding".into(),
            message,
        })?;
        if vectors.len() != hits.len() || vectors.iter().any(|v| v.len() != embedding.dimension) {
            return Err(KnowledgeError::Invalid {
                what: "re-embedding".into(),
                message: format!(
                    "expected {} vectors of {} floats",
                    hits.len(),
                    embedding.dimension
                ),
            });
        }
        self.write(name, |w| {
            w.info.embedding = embedding.clone();
            for ((hit, _), vector) in chunks.into_iter().zip(vectors) {
                let stamp = w.next_stamp()?;
                w.put(
                    &hit.id,
                    stamp,
                    Some(ChunkBody {
                        source: hit.source,
                        text: hit.text,
                        metadata: hit.metadata,
                        vector,
                    }),
                )?;
            }
            Ok(())
        })?;
        // The dimension may have changed: rebuild rather than patch.
        self.forget_index(name);
        let _ = std::fs::remove_file(self.index_file(name).with_extension("generation"));
        Ok(self.collection(name)?.chunks)
    }
}

/// Refuses a delta carrying any clock above `MAX_CLOCK`, naming the first one found.
fn check_clocks(delta: &Delta) -> Result<()> {
    let refuse = |what: String, value: u64| KnowledgeError::ClockOutOfRange {
        collection: delta.collection.clone(),
        what,
        value,
    };
    for c in &delta.changes {
        if c.stamp.lamport > MAX_CLOCK {
            return Err(refuse(
                format!("the lamport time of change '{}'", c.id),
                c.stamp.lamport,
            ));
        }
        if c.stamp.counter > MAX_CLOCK {
            return Err(refuse(
                format!("the counter of change '{}' (node '{}')", c.id, c.stamp.node),
                c.stamp.counter,
            ));
        }
    }
    for (node, counter) in &delta.version {
        if *counter > MAX_CLOCK {
            return Err(refuse(
                format!("the version vector entry of node '{node}'"),
                *counter,
            ));
        }
    }
    Ok(())
}

fn filter_matches(filter: &Filter, e: &Entry) -> bool {
    filter.iter().all(|(k, want)| {
        if k == "source" {
            want.as_str() == Some(e.source.as_str())
        } else {
            e.metadata.get(k) == Some(want)
        }
    })
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let (mut dot, mut na, mut nb) = (0f32, 0f32, 0f32);
    for (x, y) in a.iter().zip(b) {
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na.sqrt() * nb.sqrt())
    }
}

/// Adds vectors on all cores: usearch's HNSW accepts concurrent inserts.
fn add_parallel<'a>(
    index: &usearch::Index,
    items: impl Iterator<Item = (u64, &'a [f32])>,
) -> std::result::Result<(), String> {
    let items: Vec<(u64, &[f32])> = items.collect();
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(items.len().max(1));
    index
        .reserve_capacity_and_threads(index.capacity().max(items.len() + 64), threads)
        .map_err(|e| e.to_string())?;
    let per = items.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = items
            .chunks(per)
            .map(|part| {
                s.spawn(move || {
                    for (key, v) in part {
                        index.add(*key, v).map_err(|e| e.to_string())?;
                    }
                    Ok::<(), String>(())
                })
            })
            .collect();
        for h in handles {
            h.join()
                .map_err(|_| "an index thread panicked".to_string())??;
        }
        Ok(())
    })
}

/// The node's vector memory, opened on first use so processes that never touch it do not hold
/// its lock. A failed open is retried on the next use.
pub struct KnowledgeSlot {
    dir: PathBuf,
    open: Mutex<Option<Arc<Knowledge>>>,
}

impl KnowledgeSlot {
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            open: Mutex::new(None),
        }
    }

    pub fn get(&self) -> Result<Arc<Knowledge>> {
        let mut slot = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(k) = &*slot {
            return Ok(k.clone());
        }
        let k = Arc::new(Knowledge::open(&self.dir)?);
        *slot = Some(k.clone());
        Ok(k)
    }
}

/// Builds a standalone index over `vectors` (keys 0..n), on all cores; for benchmarks.
pub fn build_index(
    dimension: usize,
    vectors: &[Vec<f32>],
) -> std::result::Result<usearch::Index, String> {
    let index = new_index(dimension, vectors.len() + 64)?;
    add_parallel(
        &index,
        vectors
            .iter()
            .enumerate()
            .map(|(i, v)| (i as u64, v.as_slice())),
    )?;
    Ok(index)
}

fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(KnowledgeError::Invalid {
            what: format!("collection name '{name}'"),
            message: "use 1–64 letters, digits, '-', '_' or '.', not starting with '.'".into(),
        })
    }
}

struct IndexUpdate {
    old_key: Option<u64>,
    new: Option<(u64, Entry, Vec<f32>)>,
}

/// One write transaction on one collection.
struct Writer<'a> {
    tx: &'a redb::WriteTransaction,
    info: CollectionInfo,
    node: &'a str,
    path: &'a Path,
    index_updates: Vec<IndexUpdate>,
}

impl Writer<'_> {
    fn err(&self, e: impl std::fmt::Display) -> KnowledgeError {
        KnowledgeError::Db {
            path: self.path.into(),
            message: e.to_string(),
        }
    }

    /// The stamp of the next local change. Imports keep every clock at most `MAX_CLOCK`, so this
    /// fails only where a peer raised a clock before clocks were bounded; it never wraps.
    fn next_stamp(&mut self) -> Result<Stamp> {
        let exhausted = |clock: &'static str, value: u64| KnowledgeError::ClockExhausted {
            collection: self.info.name.clone(),
            clock,
            value,
        };
        let lamport = self
            .info
            .lamport
            .checked_add(1)
            .ok_or_else(|| exhausted("lamport time", self.info.lamport))?;
        let mine = self.info.version.get(self.node).copied().unwrap_or(0);
        let counter = mine
            .checked_add(1)
            .ok_or_else(|| exhausted("change counter", mine))?;
        self.info.lamport = lamport;
        self.info.version.insert(self.node.to_owned(), counter);
        Ok(Stamp {
            lamport,
            node: self.node.to_owned(),
            counter,
        })
    }

    fn header(&self, id: &str) -> Result<Option<Header>> {
        let t = self.tx.open_table(CHUNKS).map_err(|e| self.err(e))?;
        let v = t
            .get((self.info.name.as_str(), id))
            .map_err(|e| self.err(e))?;
        Ok(v.and_then(|v| decode_header(v.value()).map(|(h, _)| h)))
    }

    fn stamp_of(&self, id: &str) -> Result<Option<Stamp>> {
        Ok(self.header(id)?.map(|h| h.stamp))
    }

    fn live(&self, id: &str) -> Result<bool> {
        Ok(self.header(id)?.is_some_and(|h| !h.deleted))
    }

    /// Writes a chunk (or a tombstone when `body` is None) and keeps count and index in step.
    fn put(&mut self, id: &str, stamp: Stamp, body: Option<ChunkBody>) -> Result<()> {
        let old = self.header(id)?;
        let old_live_key = old.as_ref().filter(|h| !h.deleted).map(|h| h.key);
        let key = self.info.next_key;
        self.info.next_key += 1;
        let (header, vector) = match body {
            Some(b) => (
                Header {
                    key,
                    stamp,
                    deleted: false,
                    source: b.source,
                    text: b.text,
                    metadata: b.metadata,
                },
                b.vector,
            ),
            None => (
                Header {
                    key,
                    stamp,
                    deleted: true,
                    source: String::new(),
                    text: String::new(),
                    metadata: Map::new(),
                },
                Vec::new(),
            ),
        };
        {
            let mut t = self.tx.open_table(CHUNKS).map_err(|e| self.err(e))?;
            t.insert(
                (self.info.name.as_str(), id),
                encode(&header, &vector).as_slice(),
            )
            .map_err(|e| self.err(e))?;
        }
        if old_live_key.is_some() {
            self.info.chunks -= 1;
        }
        if !header.deleted {
            self.info.chunks += 1;
        }
        self.index_updates.push(IndexUpdate {
            old_key: old_live_key,
            new: (!header.deleted).then(|| {
                (
                    key,
                    Entry {
                        id: id.to_owned(),
                        source: header.source.clone(),
                        metadata: header.metadata.clone(),
                    },
                    vector,
                )
            }),
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Imports cannot get a clock here any more; a store written before clocks were bounded can.
    #[test]
    fn an_exhausted_clock_is_an_error_for_the_next_local_change_not_a_wrap() {
        let dir = tempfile::tempdir().unwrap();
        let k = Knowledge::open(dir.path()).unwrap();
        k.create("notes", &EmbeddingId::current("test-model", 4), true)
            .unwrap();
        let err = k
            .write("notes", |w| {
                w.info.lamport = u64::MAX;
                w.next_stamp().map(drop)
            })
            .unwrap_err();
        assert!(
            matches!(
                err,
                KnowledgeError::ClockExhausted {
                    clock: "lamport time",
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("edgewise kb rm notes"), "{err}");
        let err = k
            .write("notes", |w| {
                w.info.version.insert(w.node.to_owned(), u64::MAX);
                w.next_stamp().map(drop)
            })
            .unwrap_err();
        assert!(
            matches!(
                err,
                KnowledgeError::ClockExhausted {
                    clock: "change counter",
                    ..
                }
            ),
            "{err}"
        );
        // A refused write commits nothing: the clocks are where they were.
        let info = k.collection("notes").unwrap();
        assert_eq!((info.lamport, info.version.len()), (0, 0));
    }
}
