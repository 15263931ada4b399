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

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use edgewise_core::{ConflictPolicy, SyncConfig};
use edgewise_store::knowledge::{CollectionInfo, Delta, KnowledgeError, KnowledgeSlot};
use edgewise_store::{DocError, Documents, Kv, StoreError, Versioned};
use reqwest::blocking::{Client, RequestBuilder};
use reqwest::{StatusCode, Url};
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
    upstream: Url,
    /// This node's name: the peer id the upstream keeps document sync state under.
    node: String,
    api_key: Option<String>,
    kv: Arc<Kv>,
    docs: Documents,
    knowledge: Arc<KnowledgeSlot>,
    http: Client,
    /// One round at a time.
    round: Mutex<()>,
}

impl Syncer {
    pub fn new(
        cfg: SyncConfig,
        node: String,
        kv: Arc<Kv>,
        docs: Documents,
        knowledge: Arc<KnowledgeSlot>,
    ) -> Result<Self> {
        let upstream = Url::parse(&cfg.upstream)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            .ok_or_else(|| {
                SyncError::Config(format!(
                    "sync.upstream '{}' is not an http(s) URL; e.g. http://fog.local:8080",
                    cfg.upstream
                ))
            })?;
        if let Some(ns) = cfg
            .kv_namespaces
            .iter()
            .find(|n| n.starts_with("edgewise."))
        {
            return Err(SyncError::Config(format!(
                "sync.kv_namespaces: '{ns}' holds the runtime's own records and cannot be synced"
            )));
        }
        let api_key = match &cfg.api_key_env {
            None => None,
            Some(var) => Some(std::env::var(var).map_err(|_| {
                SyncError::Config(format!(
                    "sync.api_key_env names {var}, which is not set in the environment"
                ))
            })?),
        };
        let http = Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| SyncError::Config(format!("HTTP client: {e}")))?;
        Ok(Self {
            cfg,
            upstream,
            node,
            api_key,
            kv,
            docs,
            knowledge,
            http,
            round: Mutex::new(()),
        })
    }

    pub fn config(&self) -> &SyncConfig {
        &self.cfg
    }

    /// One sync round. An unreachable upstream fails the round and loses nothing: the changes
    /// stay pending.
    pub fn sync_once(&self) -> Result<Report> {
        let _one = self.round.lock().unwrap_or_else(|p| p.into_inner());
        let started = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let result = self.round();
        let last = match &result {
            Ok(r) => json!({"at": started, "ok": true, "report": r}),
            Err(e) => json!({"at": started, "ok": false, "error": e.to_string()}),
        };
        self.kv.set_json(AGREED, "last-round", &last)?;
        result
    }

    fn round(&self) -> Result<Report> {
        let mut report = Report {
            upstream: self.cfg.upstream.clone(),
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
            upstream: self.cfg.upstream.clone(),
            conflict_policy: self.cfg.conflict_policy,
            pending,
            conflicts,
            last_round: self.kv.get_json(AGREED, "last-round")?,
        })
    }

    fn agreed_key(&self, ns: &str, key: &str) -> String {
        format!("kv\0{}\0{ns}\0{key}", self.cfg.upstream)
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

    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.upstream.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    fn send(&self, req: RequestBuilder) -> Result<reqwest::blocking::Response> {
        let req = match &self.api_key {
            Some(k) => req.bearer_auth(k),
            None => req,
        };
        req.send().map_err(|e| SyncError::Unreachable {
            upstream: self.cfg.upstream.clone(),
            message: e.to_string(),
        })
    }

    fn failed(url: &Url, resp: reqwest::blocking::Response) -> SyncError {
        let status = resp.status().as_u16();
        let body: Value = resp.json().unwrap_or(Value::Null);
        let message = body["error"]["message"]
            .as_str()
            .map_or_else(|| body.to_string(), str::to_owned);
        SyncError::Upstream {
            url: url.to_string(),
            status,
            message,
        }
    }

    fn remote_kv(&self, ns: &str) -> Result<BTreeMap<String, Versioned>> {
        let url = self.url(&["v1", "kv", ns]);
        let resp = self.send(self.http.get(url.clone()))?;
        if !resp.status().is_success() {
            return Err(Self::failed(&url, resp));
        }
        let body: Value = resp.json().map_err(|e| SyncError::Upstream {
            url: url.to_string(),
            status: 200,
            message: format!("not a KV listing: {e}"),
        })?;
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
        let url = self.url(&["v1", "kv", ns, key]);
        let req = match value {
            Some(v) => self.http.put(url.clone()).body(v.to_vec()),
            None => self.http.delete(url.clone()),
        };
        let resp = self.send(req.header("If-Match", format!("\"{version}\"")))?;
        match resp.status() {
            StatusCode::PRECONDITION_FAILED => Ok(None),
            s if s.is_success() => {
                let body: Value = resp.json().unwrap_or(Value::Null);
                Ok(Some(body["version"].as_u64().unwrap_or(version + 1)))
            }
            _ => Err(Self::failed(&url, resp)),
        }
    }

    fn sync_document(&self, name: &str) -> Result<DocumentReport> {
        // This node's sync state with the upstream, under the upstream's URL as the peer id.
        let peer = format!("upstream {}", self.cfg.upstream);
        let mut url = self.url(&["v1", "docs", name, "sync"]);
        url.query_pairs_mut().append_pair("peer", &self.node);
        let (mut sent, mut received) = (0, 0);
        for _ in 0..MAX_DOC_ROUNDS {
            let ours = self.docs.sync_message(name, &peer)?;
            let resp = self.send(
                self.http
                    .post(url.clone())
                    .body(ours.clone().unwrap_or_default()),
            )?;
            sent += usize::from(ours.is_some());
            let reply = match resp.status() {
                StatusCode::NO_CONTENT => None,
                s if s.is_success() => Some(resp.bytes().map_err(|e| SyncError::Unreachable {
                    upstream: self.cfg.upstream.clone(),
                    message: e.to_string(),
                })?),
                _ => return Err(Self::failed(&url, resp)),
            };
            match reply {
                Some(bytes) => {
                    self.docs.receive_sync_message(name, &peer, &bytes)?;
                    received += 1;
                }
                None if ours.is_none() => break,
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
        let url = self.url(&["v1", "knowledge"]);
        let resp = self.send(self.http.get(url.clone()))?;
        if !resp.status().is_success() {
            return Err(Self::failed(&url, resp));
        }
        let body: Value = resp.json().unwrap_or(Value::Null);
        serde_json::from_value(body["collections"].clone()).map_err(|e| SyncError::Upstream {
            url: url.to_string(),
            status: 200,
            message: format!("not a collection list: {e}"),
        })
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
            if !delta.changes.is_empty() {
                let mut url = self.url(&["v1", "knowledge", name, "import"]);
                url.query_pairs_mut().append_pair("shareable", "true");
                let resp = self.send(self.http.post(url.clone()).json(&delta))?;
                if !resp.status().is_success() {
                    return Err(Self::failed(&url, resp));
                }
                report.pushed = delta.changes.len();
            }
        }
        if theirs.is_some() {
            let since = ours.map(|c| c.version).unwrap_or_default();
            let url = self.url(&["v1", "knowledge", name, "export"]);
            let resp = self.send(self.http.post(url.clone()).json(&json!({"since": since})))?;
            if !resp.status().is_success() {
                return Err(Self::failed(&url, resp));
            }
            let delta: Delta = resp.json().map_err(|e| SyncError::Upstream {
                url: url.to_string(),
                status: 200,
                message: format!("not a delta: {e}"),
            })?;
            if !delta.changes.is_empty() {
                let r = k.import(&delta, true)?;
                k.save_index(name)?;
                report.pulled = r.applied;
            }
        }
        Ok(report)
    }
}
