//! Shared world state as CRDT documents (automerge): named documents, each a map of keys such as
//! `zone4/valve` to JSON scalars, that several nodes edit offline and merge.
//!
//! Conflict semantics (automerge's, written down here because agents depend on them):
//! - Concurrent writes of one key: every node keeps all of them and shows the same winner, the
//!   write with the greater (Lamport counter, actor id); `get` also returns the losing values as
//!   `conflicts` until a later write, which supersedes them all.
//! - A write concurrent with a delete of the same key wins: a delete removes only the values
//!   it has seen.
//! - Writes of different keys never conflict.
//!
//! Storage: each document's full automerge save in the KV namespace `edgewise.docs`; per-peer
//! sync state in `edgewise.docs.sync`, so a sync resumes where it stopped after a restart.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use automerge::sync::{Message, State, SyncDoc};
use automerge::{ActorId, AutoCommit, ReadDoc, ScalarValue, Value as AmValue, ROOT};
use serde::Serialize;
use serde_json::Value;

use crate::{Kv, StoreError};

const DOCS: &str = "edgewise.docs";
const SYNC: &str = "edgewise.docs.sync";
const META: &str = "edgewise.docs.meta";

#[derive(Debug, thiserror::Error)]
pub enum DocError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("document '{name}' is damaged: {message}")]
    Corrupt { name: String, message: String },
    #[error("invalid {what}: {message}")]
    Invalid { what: String, message: String },
    #[error("sync message for '{name}' from {peer}: {message}")]
    Sync {
        name: String,
        peer: String,
        message: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Entry {
    pub value: Value,
    /// Values written concurrently that lost (same on every node); empty without a conflict.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub conflicts: Vec<Value>,
}

/// The node's documents. Cheap to open and clone.
#[derive(Clone)]
pub struct Documents {
    kv: Arc<Kv>,
    actor: ActorId,
    /// Live sync sessions: (document, peer) → state. Automerge persists only the heads both
    /// sides share; what is in flight lives here, so one instance should drive a peer's sync.
    sessions: Arc<Mutex<HashMap<(String, String), State>>>,
}

/// Read-modify-write of a document is serialised per process; one process holds the KV file.
static WRITE: Mutex<()> = Mutex::new(());

fn check_name(what: &str, name: &str) -> Result<(), DocError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.contains('\0')
        && !name.chars().any(char::is_control);
    if ok {
        Ok(())
    } else {
        Err(DocError::Invalid {
            what: format!("{what} '{}'", name.escape_debug()),
            message: "use 1–128 printable characters".into(),
        })
    }
}

fn to_scalar(v: &Value) -> Result<ScalarValue, DocError> {
    Ok(match v {
        Value::Null => ScalarValue::Null,
        Value::Bool(b) => ScalarValue::Boolean(*b),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => ScalarValue::Int(i),
            (None, Some(f)) => ScalarValue::F64(f),
            _ => ScalarValue::Str(n.to_string().into()),
        },
        Value::String(s) => ScalarValue::Str(s.as_str().into()),
        other => {
            return Err(DocError::Invalid {
                what: "value".into(),
                message: format!(
                    "{other} is not a string, number, boolean or null; store structures as separate keys"
                ),
            })
        }
    })
}

fn to_json(v: &AmValue<'_>) -> Value {
    match v {
        AmValue::Scalar(s) => match s.as_ref() {
            ScalarValue::Null => Value::Null,
            ScalarValue::Boolean(b) => Value::Bool(*b),
            ScalarValue::Int(i) => Value::from(*i),
            ScalarValue::Uint(u) => Value::from(*u),
            ScalarValue::F64(f) => Value::from(*f),
            ScalarValue::Counter(c) => Value::from(i64::from(c)),
            ScalarValue::Timestamp(t) => Value::from(*t),
            ScalarValue::Str(s) => Value::String(s.to_string()),
            other => Value::String(other.to_string()),
        },
        AmValue::Object(kind) => Value::String(format!("<{kind:?}>")),
    }
}

impl Documents {
    /// The actor id (this node's identity in every document) is made once and kept in KV.
    pub fn open(kv: Arc<Kv>) -> Result<Self, DocError> {
        let actor = match kv.get(META, "actor")? {
            Some(bytes) => ActorId::from(bytes),
            None => {
                let id = uuid::Uuid::new_v4().as_bytes().to_vec();
                kv.set(META, "actor", &id)?;
                ActorId::from(id)
            }
        };
        Ok(Self {
            kv,
            actor,
            sessions: Arc::default(),
        })
    }

    fn load(&self, name: &str) -> Result<AutoCommit, DocError> {
        let doc = match self.kv.get(DOCS, name)? {
            Some(bytes) => AutoCommit::load(&bytes).map_err(|e| DocError::Corrupt {
                name: name.into(),
                message: e.to_string(),
            })?,
            None => AutoCommit::new(),
        };
        Ok(doc.with_actor(self.actor.clone()))
    }

    fn store(&self, name: &str, doc: &mut AutoCommit) -> Result<(), DocError> {
        self.kv.set(DOCS, name, &doc.save())?;
        Ok(())
    }

    /// Names of the documents on this node.
    pub fn list(&self) -> Result<Vec<String>, DocError> {
        Ok(self.kv.list(DOCS)?.into_iter().map(|(k, _)| k).collect())
    }

    pub fn exists(&self, name: &str) -> Result<bool, DocError> {
        Ok(self.kv.get(DOCS, name)?.is_some())
    }

    /// Durable when it returns.
    pub fn set(&self, name: &str, key: &str, value: &Value) -> Result<(), DocError> {
        check_name("document name", name)?;
        check_name("key", key)?;
        let scalar = to_scalar(value)?;
        let _g = WRITE.lock().unwrap_or_else(|p| p.into_inner());
        let mut doc = self.load(name)?;
        automerge::transaction::Transactable::put(&mut doc, ROOT, key, scalar).map_err(|e| {
            DocError::Invalid {
                what: format!("key '{key}'"),
                message: e.to_string(),
            }
        })?;
        self.store(name, &mut doc)
    }

    /// Returns whether the key had a value.
    pub fn remove(&self, name: &str, key: &str) -> Result<bool, DocError> {
        let _g = WRITE.lock().unwrap_or_else(|p| p.into_inner());
        let mut doc = self.load(name)?;
        let had = doc.get(ROOT, key).ok().flatten().is_some();
        if had {
            automerge::transaction::Transactable::delete(&mut doc, ROOT, key).map_err(|e| {
                DocError::Invalid {
                    what: format!("key '{key}'"),
                    message: e.to_string(),
                }
            })?;
            self.store(name, &mut doc)?;
        }
        Ok(had)
    }

    pub fn get(&self, name: &str, key: &str) -> Result<Option<Entry>, DocError> {
        let doc = self.load(name)?;
        Ok(entry(&doc, key))
    }

    /// Every key with its value (and conflicts), in key order.
    pub fn entries(&self, name: &str) -> Result<BTreeMap<String, Entry>, DocError> {
        let doc = self.load(name)?;
        Ok(doc
            .keys(ROOT)
            .filter_map(|k| entry(&doc, &k).map(|e| (k, e)))
            .collect())
    }

    /// The next automerge sync message for `peer`, or None when `peer` is known to be up to
    /// date (or a message is still unanswered). The sync state is persisted.
    pub fn sync_message(&self, name: &str, peer: &str) -> Result<Option<Vec<u8>>, DocError> {
        check_name("document name", name)?;
        check_name("peer", peer)?;
        let _g = WRITE.lock().unwrap_or_else(|p| p.into_inner());
        let mut doc = self.load(name)?;
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let state = self.session(&mut sessions, name, peer)?;
        let msg = doc.sync().generate_sync_message(state);
        self.persist_session(name, peer, state)?;
        Ok(msg.map(Message::encode))
    }

    /// Writes the session's state only when it changed: neighbours in a mesh exchange messages
    /// every moment, and most exchanges change nothing.
    fn persist_session(&self, name: &str, peer: &str, state: &State) -> Result<(), DocError> {
        let key = sync_key(name, peer);
        let encoded = state.encode();
        if self.kv.get(SYNC, &key)?.as_deref() != Some(encoded.as_slice()) {
            self.kv.set(SYNC, &key, &encoded)?;
        }
        Ok(())
    }

    /// Drops the live sync session with `peer`, so the next exchange starts again from the
    /// persisted shared heads: for when a message may have been lost on a broken link (a live
    /// session that still waits for an answer would otherwise send nothing more).
    pub fn forget_session(&self, name: &str, peer: &str) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions.remove(&(name.to_owned(), peer.to_owned()));
    }

    /// Applies a sync message from `peer` (creating the document if this node lacks it).
    pub fn receive_sync_message(
        &self,
        name: &str,
        peer: &str,
        message: &[u8],
    ) -> Result<(), DocError> {
        check_name("document name", name)?;
        check_name("peer", peer)?;
        let sync_err = |message: String| DocError::Sync {
            name: name.into(),
            peer: peer.into(),
            message,
        };
        let msg = Message::decode(message).map_err(|e| sync_err(e.to_string()))?;
        let _g = WRITE.lock().unwrap_or_else(|p| p.into_inner());
        let mut doc = self.load(name)?;
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let state = self.session(&mut sessions, name, peer)?;
        let before = doc.get_heads();
        doc.sync()
            .receive_sync_message(state, msg)
            .map_err(|e| sync_err(e.to_string()))?;
        if doc.get_heads() != before || !self.exists(name)? {
            self.store(name, &mut doc)?;
        }
        self.persist_session(name, peer, state)?;
        Ok(())
    }

    /// The live session with `peer`, resumed from the persisted shared heads when new.
    fn session<'a>(
        &self,
        sessions: &'a mut HashMap<(String, String), State>,
        name: &str,
        peer: &str,
    ) -> Result<&'a mut State, DocError> {
        let key = (name.to_owned(), peer.to_owned());
        if !sessions.contains_key(&key) {
            let state = match self.kv.get(SYNC, &sync_key(name, peer))? {
                Some(bytes) => State::decode(&bytes).unwrap_or_else(|_| State::new()),
                None => State::new(),
            };
            sessions.insert(key.clone(), state);
        }
        Ok(sessions.entry(key).or_default())
    }
}

fn sync_key(name: &str, peer: &str) -> String {
    format!("{name}\0{peer}")
}

fn entry(doc: &AutoCommit, key: &str) -> Option<Entry> {
    let (winner, winner_id) = doc.get(ROOT, key).ok()??;
    let conflicts = doc
        .get_all(ROOT, key)
        .ok()?
        .iter()
        .filter(|(_, id)| *id != winner_id)
        .map(|(v, _)| to_json(v))
        .collect();
    Some(Entry {
        value: to_json(&winner),
        conflicts,
    })
}
