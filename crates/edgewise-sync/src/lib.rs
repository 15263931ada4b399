//! The offline sync manager: a node works on its own, and whenever its upstream node (a fog or
//! hub node, `sync.upstream`) is reachable, a sync round exchanges what changed on either side.
//!
//! - **KV**: every key has a version ([`Kv::set_if`]). For each key the last versions both sides
//!   agreed on are kept, so the pending queue is exactly the keys whose local version moved since
//!   then; it survives restarts and grows while the upstream is away. A key changed on both sides
//!   is a conflict: it is recorded and settled by `sync.conflict_policy`. Writes upstream are
//!   conditional (`If-Match`), so a change made there during the round is never overwritten
//!   blindly.
//! - **Documents** (automerge): sync messages until both sides are quiet; concurrent edits merge
//!   by automerge's rules (see `edgewise_store::docs`).
//! - **Knowledge collections**: deltas both ways by version vector (last writer wins per chunk).
//!
//! Privacy: only the namespaces, documents and collections listed in `sync:` are ever read for
//! sending; collections must also be shareable. Everything else never leaves the node.
//!
//! The other node is reached through a [`Remote`]: its HTTP API ([`HttpRemote`], the upstream of
//! `sync:`) or the same API carried by the mesh (a neighbour, documents and collections only).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use edgewise_core::{ConflictPolicy, SyncConfig};
use edgewise_store::knowledge::{
    CollectionInfo, Delta, KnowledgeError, KnowledgeSlot, VersionVector,
};
use edgewise_store::{DocError, Documents, Kv, StoreError, Versioned};
use reqwest::Url;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Versions both sides agreed on, per upstream, namespace and key.
const AGREED: &str = "edgewise.sync";
/// Conflicts found, newest last, for `edgewise sync --status`.
const CONFLICTS: &str = "edgewise.sync.conflicts";
/// At most this many sync-protocol exchanges per document per round.
const MAX_DOC_ROUNDS: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("invalid sync config: {0}")]
    Config(String),
    #[error("upstream {upstream} is unreachable ({message}); local changes stay queued for the next round")]
    Unreachable { upstream: String, message: String },
    #[error("upstream {url} answered {status}: {message}")]
    Upstream {
        url: String,
        status: u16,
        message: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Doc(#[from] DocError),
    #[error(transparent)]
    Knowledge(#[from] KnowledgeError),
}

type Result<T> = std::result::Result<T, SyncError>;

/// What one round did.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub upstream: String,
    pub kv_pushed: usize,
    pub kv_pulled: usize,
    pub kv_conflicts: usize,
    /// Keys the upstream changed while this round ran; retried next round.
    pub kv_deferred: usize,
    pub documents: Vec<DocumentReport>,
    pub collections: Vec<CollectionReport>,
    /// Parts that failed without stopping the round (a private collection, a refused delta).
    pub errors: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct DocumentReport {
    pub name: String,
    pub messages_sent: usize,
    pub messages_received: usize,
    /// Keys that hold concurrent values after the merge (same winner on both nodes).
    pub conflicted_keys: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct CollectionReport {
    pub name: String,
    pub pushed: usize,
    pub pulled: usize,
}

/// A key changed here and upstream since they last agreed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Conflict {
    pub namespace: String,
    pub key: String,
    pub local: Option<String>,
    pub upstream: Option<String>,
    pub kept: ConflictPolicy,
    pub at: String,
}

#[derive(Debug, Serialize)]
pub struct PendingKey {
    pub namespace: String,
    pub key: String,
    pub version: u64,
    pub removed: bool,
}

#[derive(Debug, Serialize)]
pub struct Status {
    pub upstream: String,
    pub conflict_policy: ConflictPolicy,
    /// Local changes not yet on the upstream.
    pub pending: Vec<PendingKey>,
    pub conflicts: Vec<Conflict>,
    pub last_round: Option<Value>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
struct Agreed {
    local: u64,
    upstream: u64,
}

pub struct Syncer {
    cfg: SyncConfig,
    remote: Box<dyn Remote>,
    /// This node's name: the peer id the upstream keeps document sync state under.
    node: String,
    kv: Arc<Kv>,
    docs: Documents,
    knowledge: Arc<KnowledgeSlot>,
    /// One round at a time.
    round: Mutex<()>,
}

/// HTTP methods of the state API a round uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Put,
    Post,
    Delete,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Put => "PUT",
            Method::Post => "POST",
            Method::Delete => "DELETE",
        }
    }
}

/// One call of the other node's state API.
pub struct RemoteRequest<'a> {
    pub method: Method,
    /// Path and query, percent-encoded, e.g. `/v1/docs/plant/sync?peer=gw-1`.
    pub path: &'a str,
    /// Sent as `If-Match: "N"`: write only if the key is still at version N.
    pub if_match: Option<u64>,
    /// JSON when `json`, raw bytes otherwise.
    pub body: Vec<u8>,
    pub json: bool,
}

/// The other node's answer.
pub struct RemoteReply {
    pub status: u16,
    pub body: Vec<u8>,
}

/// How a round reaches the other node.
pub trait Remote: Send + Sync {
    /// The other node as errors name it; also the key under which agreed versions and document
    /// sync state with it are kept, so it must stay the same across restarts.
    fn name(&self) -> &str;
    /// `Err` means the other node could not be reached (the round fails, nothing is lost).
    fn request(&self, request: &RemoteRequest<'_>) -> std::result::Result<RemoteReply, String>;
}

/// The upstream's HTTP API, with its bearer key.
pub struct HttpRemote {
    base: Url,
    name: String,
    api_key: Option<String>,
    http: reqwest::blocking::Client,
}

impl HttpRemote {
    /// `upstream` is a base URL such as `http://fog.local:8080`; `api_key_env` names the
    /// environment variable that holds its key.
    pub fn new(upstream: &str, api_key_env: Option<&str>) -> Result<Self> {
        let base = Url::parse(upstream)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            .ok_or_else(|| {
                SyncError::Config(format!(
                    "sync.upstream '{upstream}' is not an http(s) URL; e.g. http://fog.local:8080"
                ))
            })?;
        let api_key = match api_key_env {
            None => None,
            Some(var) => Some(std::env::var(var).map_err(|_| {
                SyncError::Config(format!(
                    "sync.api_key_env names {var}, which is not set in the environment"
                ))
            })?),
        };
        let http = reqwest::blocking::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| SyncError::Config(format!("HTTP client: {e}")))?;
        Ok(Self {
            base,
            name: upstream.to_owned(),
            api_key,
            http,
        })
    }
}

impl Remote for HttpRemote {
    fn name(&self) -> &str {
        &self.name
    }

    fn request(&self, r: &RemoteRequest<'_>) -> std::result::Result<RemoteReply, String> {
        let (path, query) = r.path.split_once('?').unwrap_or((r.path, ""));
        let mut url = self.base.clone();
        url.set_path(&format!("{}{path}", self.base.path().trim_end_matches('/')));
        url.set_query((!query.is_empty()).then_some(query));
        let method =
            reqwest::Method::from_bytes(r.method.as_str().as_bytes()).map_err(|e| e.to_string())?;
        let mut req = self.http.request(method, url).body(r.body.clone());
        // The upstream refuses bodies that do not say what they are.
        if r.json {
            req = req.header("content-type", "application/json");
        } else if !r.body.is_empty() {
            req = req.header("content-type", "application/octet-stream");
        }
        if let Some(v) = r.if_match {
            req = req.header("If-Match", format!("\"{v}\""));
        }
        if let Some(k) = &self.api_key {
            req = req.bearer_auth(k);
        }
        let resp = req.send().map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body = resp.bytes().map_err(|e| e.to_string())?.to_vec();
        Ok(RemoteReply { status, body })
    }
}

impl Syncer {
    /// The sync manager of `sync:`, with its upstream over HTTP.
    pub fn new(
        cfg: SyncConfig,
        node: String,
        kv: Arc<Kv>,
        docs: Documents,
        knowledge: Arc<KnowledgeSlot>,
    ) -> Result<Self> {
        let remote = HttpRemote::new(&cfg.upstream, cfg.api_key_env.as_deref())?;
        Self::with_remote(cfg, Box::new(remote), node, kv, docs, knowledge)
    }

    /// Rounds with `remote` of what `cfg` lists (its `upstream` is not used).
    pub fn with_remote(
        cfg: SyncConfig,
        remote: Box<dyn Remote>,
        node: String,
        kv: Arc<Kv>,
        docs: Documents,
        knowledge: Arc<KnowledgeSlot>,
    ) -> Result<Self> {
        if let Some(ns) = cfg
            .kv_namespaces
            .iter()
            .find(|n| n.starts_with("edgewise."))
        {
            return Err(SyncError::Config(format!(
                "sync.kv_namespaces: '{ns}' holds the runtime's own records and cannot be synced"
            )));
        }
        Ok(Self {
            cfg,
            remote,
            node,
            kv,
            docs,
            knowledge,
            round: Mutex::new(()),
        })
    }

    pub fn config(&self) -> &SyncConfig {
        &self.cfg
    }

    /// One sync round. An unreachable upstream fails the round and loses nothing: the changes
    /// stay pending.
    pub fn sync_once(&self) -> Result<Report> {
        let started = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let result = self.exchange();
        let last = match &result {
            Ok(r) => json!({"at": started, "ok": true, "report": r}),
            Err(e) => json!({"at": started, "ok": false, "error": e.to_string()}),
        };
        self.kv.set_json(AGREED, "last-round", &last)?;
        result
    }

    /// One round without recording it as the last round: for neighbours that sync every
    /// moment, where a write per round would wear the disk for nothing.
    pub fn exchange(&self) -> Result<Report> {
        let _one = self.round.lock().unwrap_or_else(|p| p.into_inner());
        let mut report = Report {
            upstream: self.remote.name().to_owned(),
            ..Report::default()
        };
        for ns in &self.cfg.kv_namespaces {
            self.sync_namespace(ns, &mut report)?;
        }
        for name in &self.cfg.documents {
            match self.sync_document(name) {
                Ok(d) => report.documents.push(d),
                Err(e @ SyncError::Unreachable { .. }) => return Err(e),
                Err(e) => report.errors.push(format!("document '{name}': {e}")),
            }
        }
        let remote = if self.cfg.collections.is_empty() {
            Vec::new()
        } else {
            self.remote_collections()?
        };
        for name in &self.cfg.collections {
            match self.sync_collection(name, &remote) {
                Ok(c) => report.collections.push(c),
                Err(e @ SyncError::Unreachable { .. }) => return Err(e),
                Err(e) => report.errors.push(format!("collection '{name}': {e}")),
            }
        }
        Ok(report)
    }

    /// Pending changes and recorded conflicts, without contacting the upstream.
    pub fn status(&self) -> Result<Status> {
        let mut pending = Vec::new();
        for ns in &self.cfg.kv_namespaces {
            for v in self.kv.list_versioned(ns)? {
                let changed = match self.agreed(ns, &v.key)? {
                    Some(a) => a.local != v.version,
                    None => v.value.is_some() || v.version > 0,
                };
                if changed {
                    pending.push(PendingKey {
                        namespace: ns.clone(),
                        key: v.key,
                        version: v.version,
                        removed: v.value.is_none(),
                    });
                }
            }
        }
        let conflicts = self
            .kv
            .list(CONFLICTS)?
            .into_iter()
            .filter_map(|(_, v)| serde_json::from_slice(&v).ok())
            .collect();
        Ok(Status {
            upstream: self.remote.name().to_owned(),
            conflict_policy: self.cfg.conflict_policy,
            pending,
            conflicts,
            last_round: self.kv.get_json(AGREED, "last-round")?,
        })
    }

    fn agreed_key(&self, ns: &str, key: &str) -> String {
        format!("kv\0{}\0{ns}\0{key}", self.remote.name())
    }

    fn agreed(&self, ns: &str, key: &str) -> Result<Option<Agreed>> {
        Ok(self
            .kv
            .get_json(AGREED, &self.agreed_key(ns, key))?
            .and_then(|v| serde_json::from_value(v).ok()))
    }

    fn agree(&self, ns: &str, key: &str, local: u64, upstream: u64) -> Result<()> {
        let v = json!(Agreed { local, upstream });
        Ok(self.kv.set_json(AGREED, &self.agreed_key(ns, key), &v)?)
    }

    fn sync_namespace(&self, ns: &str, report: &mut Report) -> Result<()> {
        let local: BTreeMap<String, Versioned> = self
            .kv
            .list_versioned(ns)?
            .into_iter()
            .map(|v| (v.key.clone(), v))
            .collect();
        let remote = self.remote_kv(ns)?;
        let keys: BTreeSet<&String> = local.keys().chain(remote.keys()).collect();
        for key in keys {
            let (lv, lval) = local
                .get(key)
                .map_or((0, None), |v| (v.version, v.value.clone()));
            let (rv, rval) = remote
                .get(key)
                .map_or((0, None), |v| (v.version, v.value.clone()));
            let (local_changed, remote_changed) = match self.agreed(ns, key)? {
                Some(a) => (lv != a.local, rv != a.upstream),
                None => (lv > 0 || lval.is_some(), rv > 0 || rval.is_some()),
            };
            if !local_changed && !remote_changed {
                continue;
            }
            if lval == rval {
                self.agree(ns, key, lv, rv)?;
                continue;
            }
            let push = match (local_changed, remote_changed) {
                (true, false) => true,
                (false, _) => false,
                (true, true) => {
                    self.record_conflict(ns, key, &lval, &rval)?;
                    report.kv_conflicts += 1;
                    self.cfg.conflict_policy == ConflictPolicy::LocalWins
                }
            };
            if push {
                match self.put_remote(ns, key, lval.as_deref(), rv)? {
                    Some(new_rv) => {
                        self.agree(ns, key, lv, new_rv)?;
                        report.kv_pushed += 1;
                    }
                    None => report.kv_deferred += 1,
                }
            } else {
                match self.kv.set_if(ns, key, rval.as_deref(), Some(lv))? {
                    Ok(new_lv) => {
                        self.agree(ns, key, new_lv, rv)?;
                        report.kv_pulled += 1;
                    }
                    // Written here during the round: next round sees it.
                    Err(_) => report.kv_deferred += 1,
                }
            }
        }
        Ok(())
    }

    fn record_conflict(
        &self,
        ns: &str,
        key: &str,
        local: &Option<Vec<u8>>,
        upstream: &Option<Vec<u8>>,
    ) -> Result<()> {
        let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let text =
            |v: &Option<Vec<u8>>| v.as_ref().map(|b| String::from_utf8_lossy(b).into_owned());
        let c = Conflict {
            namespace: ns.into(),
            key: key.into(),
            local: text(local),
            upstream: text(upstream),
            kept: self.cfg.conflict_policy,
            at: at.clone(),
        };
        tracing::warn!(namespace = ns, key, policy = ?c.kept, "sync conflict");
        self.kv
            .set_json(CONFLICTS, &format!("{at}\0{ns}\0{key}"), &json!(c))?;
        Ok(())
    }

    /// Path (and query) of the other node's API, each segment percent-encoded.
    fn path(segments: &[&str], query: &[(&str, &str)]) -> String {
        let mut url = Url::parse("http://remote/").expect("a fixed, valid URL");
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_owned(),
        }
    }

    fn send(
        &self,
        method: Method,
        path: &str,
        if_match: Option<u64>,
        body: Vec<u8>,
        json: bool,
    ) -> Result<RemoteReply> {
        let request = RemoteRequest {
            method,
            path,
            if_match,
            body,
            json,
        };
        self.remote
            .request(&request)
            .map_err(|message| SyncError::Unreachable {
                upstream: self.remote.name().to_owned(),
                message,
            })
    }

    fn get(&self, path: &str) -> Result<RemoteReply> {
        self.send(Method::Get, path, None, Vec::new(), false)
    }

    fn post_json(&self, path: &str, body: &impl Serialize) -> Result<RemoteReply> {
        let bytes = serde_json::to_vec(body).map_err(|e| SyncError::Config(e.to_string()))?;
        self.send(Method::Post, path, None, bytes, true)
    }

    fn failed(&self, path: &str, reply: &RemoteReply) -> SyncError {
        let body: Value = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
        let message = body["error"]["message"].as_str().map_or_else(
            || String::from_utf8_lossy(&reply.body).into_owned(),
            str::to_owned,
        );
        SyncError::Upstream {
            url: format!("{}{path}", self.remote.name()),
            status: reply.status,
            message,
        }
    }

    fn parse<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        reply: &RemoteReply,
        what: &str,
    ) -> Result<T> {
        if !(200..300).contains(&reply.status) {
            return Err(self.failed(path, reply));
        }
        serde_json::from_slice(&reply.body).map_err(|e| SyncError::Upstream {
            url: format!("{}{path}", self.remote.name()),
            status: reply.status,
            message: format!("not {what}: {e}"),
        })
    }

    fn remote_kv(&self, ns: &str) -> Result<BTreeMap<String, Versioned>> {
        let path = Self::path(&["v1", "kv", ns], &[]);
        let body: Value = self.parse(&path, &self.get(&path)?, "a KV listing")?;
        let mut out = BTreeMap::new();
        for k in body["keys"].as_array().into_iter().flatten() {
            let Some(key) = k["key"].as_str() else {
                continue;
            };
            let value = match (k["value"].as_str(), k["value_base64"].as_str()) {
                (Some(text), _) => Some(text.as_bytes().to_vec()),
                (None, Some(b64)) => base64::engine::general_purpose::STANDARD.decode(b64).ok(),
                (None, None) => None,
            };
            let v = Versioned {
                key: key.to_owned(),
                value,
                version: k["version"].as_u64().unwrap_or(0),
            };
            out.insert(key.to_owned(), v);
        }
        Ok(out)
    }

    /// Writes (or removes) the key upstream if it is still at `version` there; `None` when it
    /// moved meanwhile.
    fn put_remote(
        &self,
        ns: &str,
        key: &str,
        value: Option<&[u8]>,
        version: u64,
    ) -> Result<Option<u64>> {
        let path = Self::path(&["v1", "kv", ns, key], &[]);
        let reply = match value {
            Some(v) => self.send(Method::Put, &path, Some(version), v.to_vec(), false)?,
            None => self.send(Method::Delete, &path, Some(version), Vec::new(), false)?,
        };
        match reply.status {
            412 => Ok(None),
            200..=299 => {
                let body: Value = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
                Ok(Some(body["version"].as_u64().unwrap_or(version + 1)))
            }
            _ => Err(self.failed(&path, &reply)),
        }
    }

    fn sync_document(&self, name: &str) -> Result<DocumentReport> {
        // This node's sync state with the upstream, under the upstream's URL as the peer id.
        let peer = format!("upstream {}", self.remote.name());
        let path = Self::path(&["v1", "docs", name, "sync"], &[("peer", &self.node)]);
        let (mut sent, mut received) = (0, 0);
        for _ in 0..MAX_DOC_ROUNDS {
            let ours = self.docs.sync_message(name, &peer)?;
            let sent_now = ours.is_some();
            let reply = self.send(Method::Post, &path, None, ours.unwrap_or_default(), false);
            let reply = match reply {
                Ok(r) => r,
                Err(e) => {
                    // The message may be lost: start the next exchange from the shared heads.
                    self.docs.forget_session(name, &peer);
                    return Err(e);
                }
            };
            sent += usize::from(sent_now);
            let reply = match reply.status {
                204 => None,
                200..=299 => Some(reply.body),
                _ => return Err(self.failed(&path, &reply)),
            };
            match reply {
                Some(bytes) => {
                    self.docs.receive_sync_message(name, &peer, &bytes)?;
                    received += 1;
                }
                None if !sent_now => break,
                None => {}
            }
        }
        let conflicted_keys = if self.docs.exists(name)? {
            self.docs
                .entries(name)?
                .into_iter()
                .filter(|(_, e)| !e.conflicts.is_empty())
                .map(|(k, _)| k)
                .collect()
        } else {
            Vec::new()
        };
        Ok(DocumentReport {
            name: name.into(),
            messages_sent: sent,
            messages_received: received,
            conflicted_keys,
        })
    }

    fn remote_collections(&self) -> Result<Vec<CollectionInfo>> {
        #[derive(Deserialize)]
        struct Listing {
            collections: Vec<CollectionInfo>,
        }
        let path = Self::path(&["v1", "knowledge"], &[]);
        let listing: Listing = self.parse(&path, &self.get(&path)?, "a collection list")?;
        Ok(listing.collections)
    }

    fn sync_collection(&self, name: &str, remote: &[CollectionInfo]) -> Result<CollectionReport> {
        let k = self.knowledge.get()?;
        let theirs = remote.iter().find(|c| c.name == name);
        let ours = match k.collection(name) {
            Ok(info) => Some(info),
            Err(KnowledgeError::NoCollection { .. }) => None,
            Err(e) => return Err(e.into()),
        };
        let mut report = CollectionReport {
            name: name.into(),
            pushed: 0,
            pulled: 0,
        };
        if let Some(ours) = &ours {
            if !ours.shareable {
                return Err(KnowledgeError::Private { name: name.into() }.into());
            }
            let since = theirs.map(|c| c.version.clone()).unwrap_or_default();
            let delta = k.export(name, &since)?;
            // Also with no changes: a version they lack (a change that lost to one they have)
            // must still reach them, or the two version vectors never agree.
            if !delta.changes.is_empty() || !covers(&since, &delta.version) {
                let path = Self::path(
                    &["v1", "knowledge", name, "import"],
                    &[("shareable", "true")],
                );
                let reply = self.post_json(&path, &delta)?;
                if !(200..300).contains(&reply.status) {
                    return Err(self.failed(&path, &reply));
                }
                report.pushed = delta.changes.len();
            }
        }
        if theirs.is_some() {
            let since = ours.map(|c| c.version).unwrap_or_default();
            let path = Self::path(&["v1", "knowledge", name, "export"], &[]);
            let reply = self.post_json(&path, &json!({"since": since}))?;
            let delta: Delta = self.parse(&path, &reply, "a delta")?;
            if !delta.changes.is_empty() || !covers(&since, &delta.version) {
                let r = k.import(&delta, true)?;
                k.save_index(name)?;
                report.pulled = r.applied;
            }
        }
        Ok(report)
    }
}

/// Whether `have` has seen everything `other` has.
fn covers(have: &VersionVector, other: &VersionVector) -> bool {
    other
        .iter()
        .all(|(node, n)| have.get(node).is_some_and(|h| h >= n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_vector_covers_only_what_it_has_seen() {
        let vv = |pairs: &[(&str, u64)]| -> VersionVector {
            pairs.iter().map(|(n, c)| ((*n).to_owned(), *c)).collect()
        };
        assert!(covers(&vv(&[("a", 2), ("b", 1)]), &vv(&[("a", 1)])));
        assert!(covers(&vv(&[("a", 1)]), &vv(&[])));
        assert!(!covers(&vv(&[("a", 1)]), &vv(&[("a", 2)])));
        assert!(!covers(&vv(&[("a", 1)]), &vv(&[("b", 1)])));
    }
}
