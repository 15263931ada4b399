//! The mesh: nodes of one trust domain find each other over Zenoh, advertise what they can do,
//! and run each other's API calls (inference offload), every link mutually authenticated by the
//! domain's CA.
//!
//! Key expressions (all under `edgewise/`):
//! - `edgewise/node/<name>`: a liveliness token per node; its disappearance is how a node leaving
//!   is noticed (within the link lease, `mesh.lease_ms`).
//! - `edgewise/advert/<name>`: the node's capabilities record, put every `ADVERT_EVERY`.
//! - `edgewise/call/<name>`: the node's queryable; one query is one API call, answered by a head
//!   reply and body replies (streaming). A call to [`PING_PATH`] is answered by the mesh itself
//!   at once: it is how round-trip times are measured (`probe`).
//!
//! Invariants:
//! - Every link is TLS with client authentication against the domain CA (`zconfig`); a config that
//!   names a non-`tls/` endpoint is refused before anything is opened.
//! - A member is who its certificate says (`identity`): adverts, calls and reply heads are sealed
//!   with the sender's certificate key, and what claims a node but was not sealed by that node's
//!   certificate is dropped and reported ([`Forged`]). A node is placed on only while its sealed
//!   adverts keep coming; a caller takes replies only from the node it called; a call runs once
//!   (nonce) and only on the node it was sealed for.
//! - A call's body and its answer's chunks are encrypted to the called node's advertised key
//!   (`confidential`): whoever else listens on its call key reads nothing and cannot answer.
//! - A node never calls itself through the mesh, and a call that arrives through the mesh is run
//!   locally only (the server hands the mesh a handler that does not offload), so calls cannot loop.

mod confidential;
pub mod identity;
mod pki;
pub mod wire;
mod zconfig;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edgewise_core::{MeshConfig, MeshRole};
use futures::stream::BoxStream;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use zenoh::query::ConsolidationMode;
use zenoh::sample::SampleKind;

pub use identity::{Signer, Verifier};
pub use pki::{
    init_ca, issue, issue_for_days, NodeTls, CA_CERT, CA_KEY, DEFAULT_CERT_DAYS, MAX_CERT_DAYS,
    NODE_CERT, NODE_KEY,
};
pub use zconfig::zenoh_config;

const NODE_PREFIX: &str = "edgewise/node/";
const ADVERT_PREFIX: &str = "edgewise/advert/";
const CALL_PREFIX: &str = "edgewise/call/";
/// How often a node re-publishes its advert; a newcomer knows everyone within this.
pub const ADVERT_EVERY: Duration = Duration::from_millis(500);
/// The call path answered by the mesh layer itself (no handler): a round trip and nothing else.
pub const PING_PATH: &str = "/ping";
/// Weight of the newest probe in a neighbour's smoothed round-trip time.
const RTT_WEIGHT: f64 = 0.3;
/// A neighbour is placed on only while its sealed adverts keep coming: a presence token alone
/// proves nothing (anyone can declare one under any name).
const ADVERT_FRESH: Duration = Duration::from_secs(5);
/// The clock difference tolerated between members: a sealed advert or call older (or newer)
/// than this is refused, so a recorded one cannot be replayed later.
pub const MAX_SKEW: Duration = Duration::from_secs(60);
/// Call nonces remembered for replay checks; when full, calls are refused until old ones age out.
const MAX_REMEMBERED_CALLS: usize = 65_536;
/// The share of one sender: a member that floods calls is refused before the others are.
const MAX_REMEMBERED_PER_SENDER: usize = 8_192;
/// Longest a claimed name or a reason reported as forged may be (they come from the sender).
const MAX_REPORTED: usize = 128;
/// A node warns this long before its own certificate expires.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 24 * 3600);

/// A message that claimed a node whose certificate did not seal it: dropped, and reported so the
/// node can count it and write it to its audit log.
#[derive(Debug, Clone, PartialEq)]
pub struct Forged {
    /// `advert`, `call` or `reply`.
    pub what: &'static str,
    /// The key expression it arrived on (`edgewise/advert/node-b`): Zenoh's stable API names no
    /// transport link, so this and the sealing certificate are how the sender is known.
    pub key: String,
    /// The node it claimed to be from.
    pub claimed: String,
    /// The member whose valid certificate sealed it, if one did.
    pub sealed_by: Option<String>,
    pub reason: String,
}

/// Where a node reports forged messages (the server counts and audits them).
pub type ForgedReporter = Arc<dyn Fn(Forged) + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error("mesh config: {0}")]
    Config(String),
    #[error("mesh certificates: {0}")]
    Pki(String),
    #[error("zenoh: {0}")]
    Zenoh(String),
    #[error("mesh protocol: {0}")]
    Protocol(String),
    #[error("node '{node}': {message}")]
    Remote { node: String, message: String },
}

fn zenoh_err(e: impl std::fmt::Display) -> MeshError {
    MeshError::Zenoh(e.to_string())
}

/// Node names become key-expression chunks and certificate names (the rule is core's, which
/// also checks the names config.yaml gives).
pub fn check_node_name(name: &str) -> Result<(), MeshError> {
    edgewise_core::config::check_node_name(name).map_err(MeshError::Config)
}

/// What a node offers, as its neighbours see it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Advert {
    pub node: String,
    pub role: MeshRole,
    /// Offload order: peers (1) before fog (2); local is 0.
    pub tier: u8,
    pub trust_domain: String,
    pub version: String,
    /// Chat models loaded and ready.
    pub models: Vec<String>,
    pub embedding_model: Option<String>,
    /// Installed Wasm components.
    pub components: Vec<String>,
    /// MemAvailable of the host, bytes.
    pub free_memory_bytes: u64,
    /// KV cells of the loaded model's context (its cache budget).
    pub kv_cells: u32,
    /// Requests waiting for a sequence, and sequences running.
    pub waiting: u64,
    pub active: u64,
    /// Generated tokens per second over the node's lifetime.
    pub tokens_per_s: f64,
    /// When it was sealed (Unix ms); stale adverts are refused.
    #[serde(default)]
    pub sent_ms: u64,
    /// The node's X25519 public key for this run of its process, hex: calls to it are
    /// encrypted to it (`confidential`).
    #[serde(default)]
    pub kx_public: String,
}

/// One neighbour, for `mesh status` and placement.
#[derive(Debug, Clone, Serialize)]
pub struct PeerStatus {
    pub node: String,
    /// Its liveliness token is present.
    pub alive: bool,
    /// Milliseconds since its last advert (or since it appeared).
    pub last_seen_ms: u64,
    /// Smoothed round-trip time of a call to it (mesh-level ping), once measured.
    pub rtt_ms: Option<f64>,
    pub advert: Option<Advert>,
}

struct PeerEntry {
    alive: bool,
    last_seen: Instant,
    rtt_ms: Option<f64>,
    advert: Option<Advert>,
    /// When its last sealed advert was verified.
    advert_at: Option<Instant>,
}

impl PeerEntry {
    fn new(alive: bool) -> Self {
        Self {
            alive,
            last_seen: Instant::now(),
            rtt_ms: None,
            advert: None,
            advert_at: None,
        }
    }

    fn advert_fresh(&self) -> bool {
        self.advert_at.is_some_and(|at| at.elapsed() < ADVERT_FRESH)
    }
}

/// An API call as the mesh carries it.
#[derive(Debug, Clone)]
pub struct CallRequest {
    pub from: String,
    /// `GET`, `POST`, …
    pub method: String,
    /// Path and query, e.g. `/v1/docs/plant/sync?peer=gw-1`.
    pub path: String,
    pub body: Vec<u8>,
}

/// A call's answer: the head, then the body as it is produced.
pub struct CallResponse {
    pub status: u16,
    pub content_type: String,
    pub body: BoxStream<'static, Vec<u8>>,
}

/// Runs calls that arrive from other nodes (the server's API, without offload).
#[async_trait::async_trait]
pub trait CallHandler: Send + Sync + 'static {
    async fn call(&self, request: CallRequest) -> CallResponse;
}

/// A remote call's answer as the caller receives it.
pub struct RemoteResponse {
    pub node: String,
    pub status: u16,
    pub content_type: String,
    /// Body chunks in order; an `Err` means the call broke off (the node went away mid-answer).
    pub body: tokio::sync::mpsc::UnboundedReceiver<Result<Vec<u8>, MeshError>>,
}

/// Mesh calls this node answers at once (inference calls then also wait in the engine's bounded
/// queue; placed runs count against `limits.concurrent_runs`).
pub const MAX_CALLS_IN_FLIGHT: usize = 64;

/// This node's membership: its Zenoh session, token, advert publisher, call queryable and the
/// table of neighbours. Leaving (drop) withdraws all of them.
pub struct MeshNode {
    name: String,
    session: zenoh::Session,
    keys: Arc<Keys>,
    peers: Arc<Mutex<BTreeMap<String, PeerEntry>>>,
    /// Woken whenever a neighbour's presence goes away, so calls waiting on it end at once.
    departed: Arc<tokio::sync::Notify>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// This node's name, key and trust, shared by its tasks.
struct Keys {
    name: String,
    signer: Signer,
    verifier: Verifier,
    on_forged: ForgedReporter,
    kx: confidential::KxKey,
    /// Calls answered lately (nonce, sealed at): each runs once.
    seen: Mutex<SeenCalls>,
}

/// Calls answered lately, for replay checks: bounded in all and per sender, so one member
/// flooding calls fills only its own share.
#[derive(Default)]
struct SeenCalls {
    /// (sealed at, nonce, sender), oldest first by when they were sealed.
    order: std::collections::BTreeSet<(u64, String, String)>,
    nonces: std::collections::HashSet<String>,
    per_sender: std::collections::HashMap<String, usize>,
}

impl SeenCalls {
    /// Records `nonce` from `sender`; an error if it was seen already or too many calls are
    /// remembered (in all, or from `sender`).
    fn first_time(
        &mut self,
        sender: &str,
        nonce: &str,
        sent_ms: u64,
        now_ms: u64,
    ) -> Result<(), &'static str> {
        let horizon = now_ms.saturating_sub(MAX_SKEW.as_millis() as u64);
        while let Some(first) = self.order.first().cloned() {
            if first.0 >= horizon {
                break;
            }
            self.order.remove(&first);
            self.nonces.remove(&first.1);
            if let Some(n) = self.per_sender.get_mut(&first.2) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.per_sender.remove(&first.2);
                }
            }
        }
        if self.nonces.contains(nonce) {
            return Err("a replayed call (its nonce was seen already)");
        }
        let from_sender = self.per_sender.get(sender).copied().unwrap_or(0);
        if self.order.len() >= MAX_REMEMBERED_CALLS || from_sender >= MAX_REMEMBERED_PER_SENDER {
            return Err("busy: too many recent calls to remember for replay checks");
        }
        self.nonces.insert(nonce.to_owned());
        self.order
            .insert((sent_ms, nonce.to_owned(), sender.to_owned()));
        *self.per_sender.entry(sender.to_owned()).or_default() += 1;
        Ok(())
    }
}

impl Keys {
    fn report(
        &self,
        what: &'static str,
        key: &str,
        claimed: &str,
        sealed_by: Option<String>,
        reason: String,
    ) {
        let (key, claimed, reason) = (reported(key), reported(claimed), reported(&reason));
        tracing::debug!(what, key, claimed, sealed_by = ?sealed_by, %reason, "forged mesh message dropped");
        (self.on_forged)(Forged {
            what,
            key,
            claimed,
            sealed_by,
            reason,
        });
    }

    /// The member that sealed `env` (certificate checked), if any, for reports.
    fn sealer(&self, env: &identity::Envelope<'_>) -> Option<String> {
        self.verifier
            .certificate_name(env.cert, std::time::SystemTime::now())
            .ok()
    }
}

/// A sender's string as it may be reported: escaped, at most [`MAX_REPORTED`] characters.
fn reported(text: &str) -> String {
    let escaped: String = text.escape_debug().collect();
    if escaped.chars().count() <= MAX_REPORTED {
        return escaped;
    }
    let cut: String = escaped.chars().take(MAX_REPORTED).collect();
    format!("{cut}…")
}

/// Whether `sent_ms` is within the allowed skew of now.
fn fresh(sent_ms: u64, now_ms: u64) -> bool {
    now_ms.abs_diff(sent_ms) <= MAX_SKEW.as_millis() as u64
}

/// This node's own certificate: it must name `name`, chain to the CA and be valid now. Warns
/// within [`EXPIRY_WARNING`] of its end.
fn check_own_certificate(name: &str, keys: &Keys, tls: &NodeTls) -> Result<(), MeshError> {
    let now = std::time::SystemTime::now();
    let named = keys
        .verifier
        .certificate_name(keys.signer.cert_der(), now)
        .map_err(|e| {
            MeshError::Pki(format!(
                "{}: {e}; this node cannot join: issue it a new one with `edgewise mesh cert issue {name}` on the CA holder",
                tls.cert.display()
            ))
        })?;
    if named != name {
        return Err(MeshError::Pki(format!(
            "{} is the certificate of '{named}', not of '{name}': a node joins under the name its certificate gives (set `name: {named}` in its config.yaml, or issue a certificate for '{name}')",
            tls.cert.display()
        )));
    }
    if let Some(end) = identity::not_after(keys.signer.cert_der()) {
        if let Ok(left) = end.duration_since(now) {
            if left < EXPIRY_WARNING {
                let days = left.as_secs() / 86_400;
                tracing::warn!(days, "this node's mesh certificate expires soon");
                eprintln!(
                    "mesh: warning: this node's certificate expires in {days} days; issue a new one with `edgewise mesh cert issue {name} --days N`"
                );
            }
        }
    }
    Ok(())
}

impl MeshNode {
    /// Opens the session (mTLS with the domain CA), declares this node and starts advertising and
    /// serving calls. Must run on a Tokio runtime.
    pub async fn join(
        name: &str,
        cfg: &MeshConfig,
        tls: &NodeTls,
        advert: Arc<dyn Fn() -> Advert + Send + Sync>,
        handler: Arc<dyn CallHandler>,
        on_forged: ForgedReporter,
    ) -> Result<Self, MeshError> {
        check_node_name(name)?;
        tls.check()?;
        let keys = Arc::new(Keys {
            name: name.to_owned(),
            signer: Signer::load(tls)?,
            verifier: Verifier::load(tls)?,
            on_forged,
            kx: confidential::KxKey::generate(),
            seen: Mutex::default(),
        });
        check_own_certificate(name, &keys, tls)?;
        let config = zenoh_config(cfg, tls)?;
        let session = zenoh::open(config).await.map_err(zenoh_err)?;
        let peers: Arc<Mutex<BTreeMap<String, PeerEntry>>> = Arc::default();
        let departed = Arc::new(tokio::sync::Notify::new());

        let token = session
            .liveliness()
            .declare_token(format!("{NODE_PREFIX}{name}"))
            .await
            .map_err(zenoh_err)?;
        let presence = session
            .liveliness()
            .declare_subscriber(format!("{NODE_PREFIX}*"))
            .history(true)
            .await
            .map_err(zenoh_err)?;
        let adverts = session
            .declare_subscriber(format!("{ADVERT_PREFIX}*"))
            .await
            .map_err(zenoh_err)?;
        let calls = session
            .declare_queryable(format!("{CALL_PREFIX}{name}"))
            .await
            .map_err(zenoh_err)?;

        let mut tasks = Vec::new();
        let me = name.to_owned();
        {
            let (peers, me, departed) = (peers.clone(), me.clone(), departed.clone());
            tasks.push(tokio::spawn(async move {
                // Owning the token here ties it to this task: aborting the task withdraws it.
                let _token = token;
                while let Ok(sample) = presence.recv_async().await {
                    let Some(node) = sample.key_expr().as_str().strip_prefix(NODE_PREFIX) else {
                        continue;
                    };
                    if node == me {
                        continue;
                    }
                    // Anyone may declare a token under any name: a token alone never makes a node
                    // a placement candidate (its sealed adverts must keep coming, `advert_fresh`).
                    let alive = sample.kind() == SampleKind::Put;
                    tracing::info!(node, alive, "mesh presence");
                    let mut table = lock(&peers);
                    let entry = table
                        .entry(node.to_owned())
                        .or_insert_with(|| PeerEntry::new(alive));
                    entry.alive = alive;
                    entry.last_seen = Instant::now();
                    drop(table);
                    if !alive {
                        departed.notify_waiters();
                    }
                }
            }));
        }
        {
            let (peers, me, keys_a) = (peers.clone(), me.clone(), keys.clone());
            tasks.push(tokio::spawn(async move {
                while let Ok(sample) = adverts.recv_async().await {
                    let Some(node) = sample.key_expr().as_str().strip_prefix(ADVERT_PREFIX) else {
                        continue;
                    };
                    if node == me || sample.kind() != SampleKind::Put {
                        continue;
                    }
                    let bytes = sample.payload().to_bytes();
                    let advert = match verify_advert(&keys_a, node, &bytes) {
                        Ok(a) => a,
                        Err((sealed_by, reason)) => {
                            let key = sample.key_expr().as_str();
                            keys_a.report("advert", key, node, sealed_by, reason);
                            continue;
                        }
                    };
                    let mut table = lock(&peers);
                    let entry = table
                        .entry(node.to_owned())
                        .or_insert_with(|| PeerEntry::new(false));
                    // Only newer than the last one taken: a recorded advert replayed later
                    // changes nothing.
                    if entry
                        .advert
                        .as_ref()
                        .is_some_and(|old| old.sent_ms >= advert.sent_ms)
                    {
                        continue;
                    }
                    entry.last_seen = Instant::now();
                    entry.advert_at = Some(Instant::now());
                    entry.advert = Some(advert);
                }
            }));
        }
        {
            let session = session.clone();
            let key = format!("{ADVERT_PREFIX}{me}");
            let keys = keys.clone();
            tasks.push(tokio::spawn(async move {
                let mut every = tokio::time::interval(ADVERT_EVERY);
                loop {
                    every.tick().await;
                    let mut a = advert();
                    a.node = keys.name.clone();
                    a.sent_ms = identity::now_ms();
                    a.kx_public = hex::encode(keys.kx.public);
                    let json = serde_json::to_vec(&a).unwrap_or_default();
                    let bytes = keys.signer.seal(identity::Kind::Advert, &json, &[]);
                    if let Err(e) = session.put(&key, bytes).await {
                        tracing::warn!(error = %e, "cannot publish this node's advert");
                    }
                }
            }));
        }
        let keys_c = keys.clone();
        tasks.push(tokio::spawn(async move {
            // Neighbours cannot make this node run more calls at once than this; beyond it they
            // get an error at once and try their next candidate.
            let in_flight = Arc::new(tokio::sync::Semaphore::new(MAX_CALLS_IN_FLIGHT));
            while let Ok(query) = calls.recv_async().await {
                let handler = handler.clone();
                let keys = keys_c.clone();
                match in_flight.clone().try_acquire_owned() {
                    Ok(permit) => {
                        tokio::spawn(async move {
                            answer(query, handler, keys).await;
                            drop(permit);
                        });
                    }
                    Err(_) => {
                        tokio::spawn(async move {
                            let _ = query
                                .reply_err(format!("busy: this node already answers {MAX_CALLS_IN_FLIGHT} mesh calls"))
                                .await;
                        });
                    }
                }
            }
        }));

        Ok(Self {
            name: name.to_owned(),
            session,
            keys,
            peers,
            departed,
            tasks,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Every neighbour seen since this node joined, by name.
    pub fn peers(&self) -> Vec<PeerStatus> {
        lock(&self.peers)
            .iter()
            .map(|(node, e)| PeerStatus {
                node: node.clone(),
                alive: e.alive,
                last_seen_ms: e.last_seen.elapsed().as_millis() as u64,
                rtt_ms: e.rtt_ms,
                advert: e.advert.clone(),
            })
            .collect()
    }

    /// Live neighbours that advertise the chat model `model` and every one of `components`, in
    /// offload order: lower tier first, then the less loaded, then the nearer (round trip).
    pub fn nodes_serving(&self, model: &str, components: &[String]) -> Vec<String> {
        self.ranked(|a| {
            a.models.iter().any(|m| m == model)
                && components.iter().all(|c| a.components.contains(c))
        })
    }

    /// Live neighbours whose embedding model is `model`, in the same order as `nodes_serving`.
    pub fn nodes_embedding(&self, model: &str) -> Vec<String> {
        self.ranked(|a| a.embedding_model.as_deref() == Some(model))
    }

    /// Live neighbours whose advert passes `capable`: lower tier first, then less load, then
    /// shorter round trip.
    fn ranked(&self, capable: impl Fn(&Advert) -> bool) -> Vec<String> {
        let mut found: Vec<(u8, u64, u64, String)> = lock(&self.peers)
            .iter()
            .filter(|(_, e)| e.alive && e.advert_fresh())
            .filter_map(|(node, e)| {
                let a = e.advert.as_ref()?;
                // Not measured yet: after the measured ones of the same tier and load.
                let rtt_us = e.rtt_ms.map_or(u64::MAX, |ms| (ms * 1000.0) as u64);
                // The tier follows the advertised role, not a number a member picks for itself.
                let load = a.waiting.saturating_add(a.active);
                capable(a).then(|| (a.role.tier(), load, rtt_us, node.clone()))
            })
            .collect();
        found.sort();
        found.into_iter().map(|(_, _, _, node)| node).collect()
    }

    /// Pings every live neighbour once (concurrently, each within `timeout`) and folds the round
    /// trips into their smoothed RTT. A neighbour that does not answer keeps its last figure;
    /// its departure is presence's business.
    pub async fn probe(&self, timeout: Duration) {
        let pings = self.reachable_peers().into_iter().map(|node| async move {
            let sent = Instant::now();
            let answered = self.call(&node, "GET", PING_PATH, &[], timeout).await;
            (node, answered.ok().map(|_| sent.elapsed()))
        });
        for (node, rtt) in futures::future::join_all(pings).await {
            let Some(rtt) = rtt else { continue };
            let ms = rtt.as_secs_f64() * 1000.0;
            if let Some(e) = lock(&self.peers).get_mut(&node) {
                e.rtt_ms = Some(match e.rtt_ms {
                    Some(old) => old * (1.0 - RTT_WEIGHT) + ms * RTT_WEIGHT,
                    None => ms,
                });
            }
        }
    }

    /// Live neighbours heard from (an advert) within three advert periods: the ones worth a
    /// background call. A link that just died still shows its node alive for up to a lease, and
    /// calls queued into it only wait.
    pub fn reachable_peers(&self) -> Vec<String> {
        lock(&self.peers)
            .iter()
            .filter(|(_, e)| e.alive && e.last_seen.elapsed() < 3 * ADVERT_EVERY)
            .map(|(node, _)| node.clone())
            .collect()
    }

    /// Names of the neighbours whose presence token is up.
    pub fn alive_peers(&self) -> Vec<String> {
        lock(&self.peers)
            .iter()
            .filter(|(_, e)| e.alive)
            .map(|(node, _)| node.clone())
            .collect()
    }

    /// Runs `method` `path` with `body` on `node` and returns its answer as it streams in.
    pub async fn call(
        &self,
        node: &str,
        method: &str,
        path: &str,
        body: &[u8],
        timeout: Duration,
    ) -> Result<RemoteResponse, MeshError> {
        check_node_name(node)?;
        if node == self.name {
            return Err(MeshError::Config(
                "a node does not call itself through the mesh".into(),
            ));
        }
        let remote = |message: String| MeshError::Remote {
            node: node.to_owned(),
            message,
        };
        // The body is encrypted to the key in `node`'s sealed advert: no advert, no call.
        let kx_public = lock(&self.peers)
            .get(node)
            .and_then(|e| e.advert.as_ref())
            .and_then(|a| hex::decode(&a.kx_public).ok())
            .and_then(|k| <[u8; 32]>::try_from(k).ok())
            .ok_or_else(|| {
                remote("no sealed advert from it yet (not a member, or just joined)".into())
            })?;
        let nonce = hex::encode(rand::random::<[u8; 16]>());
        let (call_keys, eph) = confidential::caller_keys(&kx_public, &nonce)
            .ok_or_else(|| remote("its advert carries an unusable key".into()))?;
        let head = wire::RequestHead {
            from: self.name.clone(),
            to: node.to_owned(),
            method: method.to_owned(),
            path: path.to_owned(),
            nonce: nonce.clone(),
            sent_ms: identity::now_ms(),
            eph: hex::encode(eph),
        };
        let key = format!("{CALL_PREFIX}{node}");
        let head_bytes = wire::head_bytes(&head);
        let sealed_body = call_keys.seal_request(&head_bytes, body);
        let payload = wire::seal_request(&self.keys.signer, &head_bytes, &sealed_body);
        let call = wire::call_hash(&payload);
        let replies = self
            .session
            .get(&key)
            .payload(payload)
            .consolidation(ConsolidationMode::None)
            .timeout(timeout)
            .await
            .map_err(zenoh_err)?;
        // Zenoh ends a query when its route goes away; the presence watch ends it as soon as
        // the node is known gone, whichever comes first.
        let gone = until_gone(self.peers.clone(), self.departed.clone(), node.to_owned());
        tokio::pin!(gone);
        // Every member may answer a query on any call key: the first head sealed by `node`
        // for this call's nonce is the answer, and only chunks sealed by the same certificate
        // follow it. Errors are unsealed (Zenoh's own, or "busy"): the last one is kept for
        // when no answer comes.
        let mut last_error = None;
        let (status, content_type) = loop {
            let reply = tokio::select! {
                reply = replies.recv_async() => match reply {
                    Ok(r) => r,
                    Err(_) => return Err(remote(last_error.unwrap_or_else(|| {
                        "did not answer (gone, or not serving calls)".to_owned()
                    }))),
                },
                () = &mut gone => return Err(remote("left the mesh before answering".into())),
            };
            let sample = match reply.result() {
                Ok(sample) => sample,
                Err(e) => {
                    last_error =
                        Some(String::from_utf8_lossy(&e.payload().to_bytes()).into_owned());
                    continue;
                }
            };
            let bytes = sample.payload().to_bytes();
            match verify_head(&self.keys, node, &nonce, &call, &bytes) {
                Ok(found) => break found,
                Err((sealed_by, reason)) => {
                    self.keys.report("reply", &key, node, sealed_by, reason);
                }
            }
        };
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let name = node.to_owned();
        let (peers, departed, keys) =
            (self.peers.clone(), self.departed.clone(), self.keys.clone());
        tokio::spawn(async move {
            let gone = until_gone(peers, departed, name.clone());
            tokio::pin!(gone);
            let mut seq = 0u64;
            loop {
                let reply = tokio::select! {
                    reply = replies.recv_async() => match reply {
                        Ok(r) => r,
                        // The query ended before the last chunk: the answer was cut short.
                        Err(_) => {
                            let _ = tx.send(Err(MeshError::Remote {
                                node: name.clone(),
                                message: "the answer was cut short (no final chunk arrived)".into(),
                            }));
                            return;
                        }
                    },
                    () = &mut gone => {
                        let _ = tx.send(Err(MeshError::Remote {
                            node: name.clone(),
                            message: "left the mesh mid-answer".into(),
                        }));
                        return;
                    }
                };
                // Errors after the head are another responder's: the answer goes on.
                let Ok(sample) = reply.result() else { continue };
                let bytes = sample.payload().to_bytes();
                let (chunk, last) = match open_chunk(&call_keys, &call, seq, &bytes) {
                    Ok(chunk) => chunk,
                    Err(reason) => {
                        keys.report("reply", &key, &name, None, reason);
                        continue;
                    }
                };
                seq = seq.saturating_add(1);
                if !chunk.is_empty() && tx.send(Ok(chunk)).is_err() {
                    return;
                }
                if last {
                    return;
                }
            }
        });
        Ok(RemoteResponse {
            node: node.to_owned(),
            status,
            content_type,
            body: rx,
        })
    }
}

/// An advert sealed by `node`'s certificate, about `node`, and fresh; else who sealed it and why
/// it is refused.
fn verify_advert(
    keys: &Keys,
    node: &str,
    bytes: &[u8],
) -> Result<Advert, (Option<String>, String)> {
    let env = identity::open(bytes, identity::Kind::Advert).map_err(|e| (None, e))?;
    let signer = keys.verifier.verify(&env).map_err(|e| (None, e))?;
    if signer != node {
        return Err((
            Some(signer.clone()),
            format!("sealed by {signer}, not by {node}"),
        ));
    }
    let advert: Advert = serde_json::from_slice(env.signed)
        .map_err(|e| (Some(signer.clone()), format!("unreadable advert: {e}")))?;
    if advert.node != node {
        return Err((
            Some(signer),
            format!("an advert for '{}' under {node}'s key", advert.node),
        ));
    }
    if !fresh(advert.sent_ms, identity::now_ms()) {
        return Err((
            Some(signer),
            "a stale advert (sealed outside the allowed clock skew)".into(),
        ));
    }
    Ok(advert)
}

/// A reply head sealed by `node` for the call `nonce`: its status and content type.
fn verify_head(
    keys: &Keys,
    node: &str,
    nonce: &str,
    call: &[u8; 32],
    bytes: &[u8],
) -> Result<(u16, String), (Option<String>, String)> {
    let (head, env) = match wire::open_reply(bytes) {
        Ok(wire::Frame::Head(head, env)) => (head, env),
        Ok(wire::Frame::Body(_)) => return Err((None, "a body chunk before any head".into())),
        Err(e) => return Err((None, e.to_string())),
    };
    let signer = keys
        .verifier
        .verify(&env)
        .map_err(|e| (keys.sealer(&env), e))?;
    if signer != node {
        return Err((
            Some(signer.clone()),
            format!("answered by {signer}, not by the called node {node}"),
        ));
    }
    if head.nonce != nonce || head.call != hex::encode(call) {
        return Err((Some(signer), "the head answers another call".into()));
    }
    Ok((head.status, head.content_type))
}

/// Body chunk `seq` of an answer: only the called node holds the key it is encrypted with.
fn open_chunk(
    call_keys: &confidential::CallKeys,
    call: &[u8; 32],
    seq: u64,
    bytes: &[u8],
) -> Result<(Vec<u8>, bool), String> {
    match wire::open_reply(bytes) {
        Ok(wire::Frame::Body(sealed)) => call_keys
            .open_chunk(call, seq, sealed)
            .ok_or_else(|| format!("chunk {seq} of the answer does not open with the call's key")),
        Ok(wire::Frame::Head(..)) => Err("a second head in one answer".into()),
        Err(e) => Err(e.to_string()),
    }
}

impl Drop for MeshNode {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Resolves once `node`'s presence is gone (a node never seen counts as present).
async fn until_gone(
    peers: Arc<Mutex<BTreeMap<String, PeerEntry>>>,
    departed: Arc<tokio::sync::Notify>,
    node: String,
) {
    loop {
        // Registered before the check, so a departure between the two is not missed.
        let notified = departed.notified();
        if lock(&peers).get(&node).is_some_and(|e| !e.alive) {
            return;
        }
        notified.await;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs one incoming call, if it is sealed by the node it names, for this node, fresh and not a
/// replay, and streams its answer back as sealed replies.
async fn answer(query: zenoh::query::Query, handler: Arc<dyn CallHandler>, keys: Arc<Keys>) {
    let payload = query.payload().map(|p| p.to_bytes().into_owned());
    let Some(payload) = payload else {
        let _ = query.reply_err("a call needs a payload").await;
        return;
    };
    let key = query.key_expr().as_str().to_owned();
    let (head, body, call_keys) = match verify_call(&keys, &payload) {
        Ok(v) => v,
        Err((claimed, sealed_by, reason)) => {
            keys.report("call", &key, &claimed, sealed_by, reason.clone());
            let _ = query.reply_err(format!("refused: {reason}")).await;
            return;
        }
    };
    let nonce = head.nonce.clone();
    let call = wire::call_hash(&payload);
    let sealed_head = |status: u16, content_type: String| {
        wire::seal_head(
            &keys.signer,
            &wire::ResponseHead {
                status,
                content_type,
                nonce: nonce.clone(),
                call: hex::encode(call),
            },
        )
    };
    if head.path == PING_PATH {
        let key = query.key_expr().clone();
        if query
            .reply(key.clone(), sealed_head(204, "text/plain".into()))
            .await
            .is_ok()
        {
            let end = call_keys.seal_chunk(&call, 0, &[], true);
            let _ = query.reply(key, wire::chunk_frame(end)).await;
        }
        return;
    }
    let span = tracing::info_span!("mesh_call", from = %head.from, method = %head.method, path = %head.path);
    let response = tracing::Instrument::instrument(
        handler.call(CallRequest {
            from: head.from,
            method: head.method,
            path: head.path,
            body: body.to_vec(),
        }),
        span,
    )
    .await;
    let key = query.key_expr().clone();
    if query
        .reply(
            key.clone(),
            sealed_head(response.status, response.content_type),
        )
        .await
        .is_err()
    {
        return;
    }
    let mut body = response.body;
    let mut seq = 0u64;
    while let Some(chunk) = body.next().await {
        let sealed = wire::chunk_frame(call_keys.seal_chunk(&call, seq, &chunk, false));
        seq = seq.saturating_add(1);
        if let Err(e) = query.reply(key.clone(), sealed).await {
            tracing::debug!(error = %e, "caller went away mid-answer");
            return;
        }
    }
    // The last chunk says so: a caller that never gets it knows the answer was cut short.
    let end = wire::chunk_frame(call_keys.seal_chunk(&call, seq, &[], true));
    let _ = query.reply(key, end).await;
}

/// A call's head and body when it is sealed by the node its head names, sealed for this node,
/// fresh, its nonce new and its body encrypted to this node: the head, the body and the call's
/// keys; else (claimed sender, sealer, reason).
fn verify_call(
    keys: &Keys,
    payload: &[u8],
) -> Result<(wire::RequestHead, Vec<u8>, confidential::CallKeys), (String, Option<String>, String)>
{
    let (env, head) =
        wire::open_request(payload).map_err(|e| ("?".to_owned(), None, e.to_string()))?;
    let claimed = head.from.clone();
    // Shapes first (cheap, and they bound what is kept and reported).
    let hex_of = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    if check_node_name(&head.from).is_err()
        || check_node_name(&head.to).is_err()
        || !hex_of(&head.nonce, 32)
        || !hex_of(&head.eph, 64)
    {
        return Err((claimed, keys.sealer(&env), "a malformed call head".into()));
    }
    let signer = keys
        .verifier
        .verify(&env)
        .map_err(|e| (claimed.clone(), keys.sealer(&env), e))?;
    let refuse = |reason: String| (claimed.clone(), Some(signer.clone()), reason);
    if signer != head.from {
        return Err(refuse(format!(
            "sealed by {signer}, but claims to be from {}",
            head.from
        )));
    }
    if head.to != keys.name {
        return Err(refuse(format!("sealed for {}, not for this node", head.to)));
    }
    let now = identity::now_ms();
    if !fresh(head.sent_ms, now) {
        return Err(refuse(
            "a stale call (sealed outside the allowed clock skew)".into(),
        ));
    }
    let call_keys = hex::decode(&head.eph)
        .ok()
        .and_then(|e| <[u8; 32]>::try_from(e).ok())
        .and_then(|eph| confidential::callee_keys(&keys.kx, &eph, &head.nonce))
        .ok_or_else(|| refuse("the call carries no usable key".into()))?;
    let body = call_keys
        .open_request(env.signed, env.payload)
        .ok_or_else(|| refuse("the body is not encrypted to this node under this head".into()))?;
    lock(&keys.seen)
        .first_time(&signer, &head.nonce, head.sent_ms, now)
        .map_err(|e| refuse(e.to_owned()))?;
    Ok((head, body, call_keys))
}
