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
//! - A node never calls itself through the mesh, and a call that arrives through the mesh is run
//!   locally only (the server hands the mesh a handler that does not offload), so calls cannot loop.

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

pub use pki::{init_ca, issue, NodeTls, CA_CERT, CA_KEY, NODE_CERT, NODE_KEY};
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

/// Node names become key-expression chunks and certificate names: letters, digits, `.`, `_`, `-`.
pub fn check_node_name(name: &str) -> Result<(), MeshError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(MeshError::Config(format!(
            "node name '{}' is not usable in the mesh: use 1–64 letters, digits, '.', '_' or '-'",
            name.escape_debug()
        )))
    }
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
}

impl PeerEntry {
    fn new(alive: bool) -> Self {
        Self {
            alive,
            last_seen: Instant::now(),
            rtt_ms: None,
            advert: None,
        }
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
    peers: Arc<Mutex<BTreeMap<String, PeerEntry>>>,
    /// Woken whenever a neighbour's presence goes away, so calls waiting on it end at once.
    departed: Arc<tokio::sync::Notify>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
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
    ) -> Result<Self, MeshError> {
        check_node_name(name)?;
        tls.check()?;
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
            let (peers, me) = (peers.clone(), me.clone());
            tasks.push(tokio::spawn(async move {
                while let Ok(sample) = adverts.recv_async().await {
                    let Some(node) = sample.key_expr().as_str().strip_prefix(ADVERT_PREFIX) else {
                        continue;
                    };
                    if node == me || sample.kind() != SampleKind::Put {
                        continue;
                    }
                    let advert: Advert = match serde_json::from_slice(&sample.payload().to_bytes())
                    {
                        Ok(a) => a,
                        Err(e) => {
                            tracing::warn!(node, error = %e, "unreadable advert");
                            continue;
                        }
                    };
                    let mut table = lock(&peers);
                    let entry = table
                        .entry(node.to_owned())
                        .or_insert_with(|| PeerEntry::new(false));
                    entry.last_seen = Instant::now();
                    entry.advert = Some(advert);
                }
            }));
        }
        {
            let session = session.clone();
            let key = format!("{ADVERT_PREFIX}{me}");
            tasks.push(tokio::spawn(async move {
                let mut every = tokio::time::interval(ADVERT_EVERY);
                loop {
                    every.tick().await;
                    let bytes = serde_json::to_vec(&advert()).unwrap_or_default();
                    if let Err(e) = session.put(&key, bytes).await {
                        tracing::warn!(error = %e, "cannot publish this node's advert");
                    }
                }
            }));
        }
        tasks.push(tokio::spawn(async move {
            // Neighbours cannot make this node run more calls at once than this; beyond it they
            // get an error at once and try their next candidate.
            let in_flight = Arc::new(tokio::sync::Semaphore::new(MAX_CALLS_IN_FLIGHT));
            while let Ok(query) = calls.recv_async().await {
                let handler = handler.clone();
                match in_flight.clone().try_acquire_owned() {
                    Ok(permit) => {
                        tokio::spawn(async move {
                            answer(query, handler).await;
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
            .filter(|(_, e)| e.alive)
            .filter_map(|(node, e)| {
                let a = e.advert.as_ref()?;
                // Not measured yet: after the measured ones of the same tier and load.
                let rtt_us = e.rtt_ms.map_or(u64::MAX, |ms| (ms * 1000.0) as u64);
                capable(a).then(|| (a.tier, a.waiting + a.active, rtt_us, node.clone()))
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
        let head = wire::RequestHead {
            from: self.name.clone(),
            method: method.to_owned(),
            path: path.to_owned(),
        };
        let replies = self
            .session
            .get(format!("{CALL_PREFIX}{node}"))
            .payload(wire::encode_request(&head, body))
            .consolidation(ConsolidationMode::None)
            .timeout(timeout)
            .await
            .map_err(zenoh_err)?;
        let remote = |message: String| MeshError::Remote {
            node: node.to_owned(),
            message,
        };
        // Zenoh ends a query when its route goes away; the presence watch ends it as soon as
        // the node is known gone, whichever comes first.
        let gone = until_gone(self.peers.clone(), self.departed.clone(), node.to_owned());
        let first = tokio::select! {
            first = replies.recv_async() => first
                .map_err(|_| remote("did not answer (gone, or not serving calls)".into()))?,
            () = gone => return Err(remote("left the mesh before answering".into())),
        };
        let sample = first
            .result()
            .map_err(|e| remote(String::from_utf8_lossy(&e.payload().to_bytes()).into_owned()))?;
        let head = match wire::decode_reply(&sample.payload().to_bytes())? {
            wire::Frame::Head(h) => h,
            wire::Frame::Body(_) => return Err(remote("answered without a head".into())),
        };
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let name = node.to_owned();
        let (peers, departed) = (self.peers.clone(), self.departed.clone());
        tokio::spawn(async move {
            let gone = until_gone(peers, departed, name.clone());
            tokio::pin!(gone);
            loop {
                let reply = tokio::select! {
                    reply = replies.recv_async() => match reply {
                        Ok(r) => r,
                        Err(_) => return,
                    },
                    () = &mut gone => {
                        let _ = tx.send(Err(MeshError::Remote {
                            node: name.clone(),
                            message: "left the mesh mid-answer".into(),
                        }));
                        return;
                    }
                };
                let chunk = match reply.result() {
                    Ok(sample) => match wire::decode_reply(&sample.payload().to_bytes()) {
                        Ok(wire::Frame::Body(b)) => Ok(b.to_vec()),
                        Ok(wire::Frame::Head(_)) => {
                            Err(MeshError::Protocol("a second head in one answer".into()))
                        }
                        Err(e) => Err(e),
                    },
                    Err(e) => Err(MeshError::Remote {
                        node: name.clone(),
                        message: String::from_utf8_lossy(&e.payload().to_bytes()).into_owned(),
                    }),
                };
                let failed = chunk.is_err();
                if tx.send(chunk).is_err() || failed {
                    return;
                }
            }
        });
        Ok(RemoteResponse {
            node: node.to_owned(),
            status: head.status,
            content_type: head.content_type,
            body: rx,
        })
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

/// Runs one incoming call and streams its answer back as replies.
async fn answer(query: zenoh::query::Query, handler: Arc<dyn CallHandler>) {
    let payload = query.payload().map(|p| p.to_bytes().into_owned());
    let Some(payload) = payload else {
        let _ = query.reply_err("a call needs a payload").await;
        return;
    };
    let (head, body) = match wire::decode_request(&payload) {
        Ok(v) => v,
        Err(e) => {
            let _ = query.reply_err(e.to_string()).await;
            return;
        }
    };
    if head.path == PING_PATH {
        let head = wire::ResponseHead {
            status: 204,
            content_type: "text/plain".into(),
        };
        let _ = query
            .reply(query.key_expr().clone(), wire::encode_head(&head))
            .await;
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
    let head = wire::ResponseHead {
        status: response.status,
        content_type: response.content_type,
    };
    if query
        .reply(key.clone(), wire::encode_head(&head))
        .await
        .is_err()
    {
        return;
    }
    let mut body = response.body;
    while let Some(chunk) = body.next().await {
        if let Err(e) = query.reply(key.clone(), wire::encode_body(&chunk)).await {
            tracing::debug!(error = %e, "caller went away mid-answer");
            return;
        }
    }
}
