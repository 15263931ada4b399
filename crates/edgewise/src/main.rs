//! `edgewise`: the one binary. It only wires the library crates together and owns user-facing errors.

mod agent;
mod bench;
mod bench_agent;
mod bench_mesh;
mod bench_vector;
mod bench_wasm;
mod chat;
mod component;
mod eval;
mod kb;
mod kv;
mod mesh;
mod models;
mod node;
mod progress;
mod sync;
mod token;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "edgewise",
    version,
    about = "Edge-native runtime for AI agents: local models, OpenAI-compatible API"
)]
struct Cli {
    /// Data directory (models, downloads, sessions).
    #[arg(long, global = true, env = "EDGEWISE_HOME")]
    home: Option<PathBuf>,
    /// Node config file [default: <home>/config.yaml].
    #[arg(long, global = true, env = "EDGEWISE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Download a catalog model (resumable, sha256-verified).
    Pull {
        /// Catalog name [default: the node's default model].
        name: Option<String>,
    },
    /// Manage installed models.
    #[command(subcommand)]
    Models(models::ModelsCommand),
    /// Answer one prompt and exit, streaming the answer.
    Run(chat::RunArgs),
    /// Interactive chat that keeps the conversation history.
    Chat(chat::ChatArgs),
    /// Serve the OpenAI-compatible HTTP API.
    Serve {
        /// Address to bind [default: the config's listen, 127.0.0.1:8080].
        #[arg(long)]
        listen: Option<String>,
        /// Chat model to serve [default: the config's default_model].
        #[arg(short, long)]
        model: Option<String>,
        /// Do not load the embedding model (then /v1/embeddings answers 404).
        #[arg(long)]
        no_embeddings: bool,
        /// Do not serve the agents API (/v1/agents); leaves the node's state and audit log to
        /// other processes.
        #[arg(long)]
        no_agents: bool,
    },
    /// Run and check agent specs.
    #[command(subcommand)]
    Agent(agent::AgentCommand),
    /// Read and write the node's key-value state (agents' kv_set lands in `agent:<id>`).
    #[command(subcommand)]
    Kv(kv::KvCommand),
    /// Knowledge collections for RAG: add documents, search, sync deltas.
    #[command(subcommand)]
    Kb(kb::KbCommand),
    /// Exchange pending changes with the upstream node named in the config's `sync:` section
    /// (KV namespaces, documents and collections listed there, nothing else).
    Sync(sync::SyncArgs),
    /// The mesh of nodes: the trust domain's CA, node certificates, and what a serving node sees.
    #[command(subcommand)]
    Mesh(mesh::MeshCommand),
    /// Install, inspect and call Wasm components (tools and agent logic).
    #[command(subcommand)]
    Component(component::ComponentCommand),
    /// Verify and read the hash-chained audit log.
    #[command(subcommand)]
    Audit(agent::AuditCommand),
    /// The node's admin token (`show`, `rotate`): the credential for agents, state, components,
    /// mesh and metrics routes.
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Evaluate the model's tool calling (`eval tools`).
    #[command(subcommand)]
    Eval(eval::EvalCommand),
    /// Measure prompt processing, generation, parallel and prefix-cache throughput; `bench agent`
    /// measures a multi-step agent run with and without KV reuse, `bench wasm` a component call.
    Bench(bench::BenchArgs),
}

fn main() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("EDGEWISE_LOG")
        .unwrap_or_else(|_| "warn".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    let node = node::Node::open(cli.home, cli.config)?;
    match cli.command {
        Command::Pull { name } => models::pull(&node, name.as_deref()),
        Command::Models(cmd) => models::run(&node, cmd),
        Command::Run(args) => chat::run(&node, args),
        Command::Chat(args) => chat::chat(&node, args),
        Command::Serve {
            listen,
            model,
            no_embeddings,
            no_agents,
        } => serve(&node, listen, model, no_embeddings, no_agents),
        Command::Bench(args) => bench::run(&node, args),
        Command::Agent(cmd) => agent::run(&node, cmd),
        Command::Audit(cmd) => agent::audit(&node, cmd),
        Command::Kv(cmd) => kv::run(&node, cmd),
        Command::Kb(cmd) => kb::run(&node, cmd),
        Command::Sync(args) => sync::run(&node, args),
        Command::Mesh(cmd) => mesh::run(&node, cmd),
        Command::Component(cmd) => component::run(&node, cmd),
        Command::Eval(cmd) => eval::run(&node, cmd),
        Command::Token(cmd) => token::run(&node, cmd),
    }
}

/// Sync rounds every `sync.interval_s` while the node serves; a failed round (upstream away)
/// leaves the changes pending for the next.
async fn sync_every(syncer: Arc<edgewise_sync::Syncer>) {
    let every = std::time::Duration::from_secs(syncer.config().interval_s);
    loop {
        tokio::time::sleep(every).await;
        let s = syncer.clone();
        match tokio::task::spawn_blocking(move || s.sync_once()).await {
            Ok(Ok(r)) => tracing::info!(
                pushed = r.kv_pushed,
                pulled = r.kv_pulled,
                conflicts = r.kv_conflicts,
                "sync round done"
            ),
            Ok(Err(e)) => tracing::warn!(error = %e, "sync round failed"),
            Err(e) => tracing::warn!(error = %e, "sync round panicked"),
        }
    }
}

fn serve(
    node: &node::Node,
    listen: Option<String>,
    model: Option<String>,
    no_embeddings: bool,
    no_agents: bool,
) -> Result<()> {
    // The credential first: a token file others can read stops the node before model loading.
    let access = edgewise_server::Access::new(
        node.data.admin_token(),
        &node.config.allowed_hosts,
        &node.config.allowed_origins,
    )?;
    eprintln!(
        "admin token in {} (`edgewise token show`)",
        node.data.admin_token().display()
    );
    // Open the state first: a second node on the same data dir fails here, before model loading.
    let host = if no_agents {
        None
    } else {
        Some(agent::open_host(node)?)
    };
    if !node.config.mqtt_listen.is_empty() {
        use edgewise_server::broker::{start, BrokerStart};
        match start(&node.config.mqtt_listen).map_err(anyhow::Error::msg)? {
            BrokerStart::Started(addr) => eprintln!("MQTT broker on {addr} (local-broker)"),
            BrokerStart::AddressInUse(addr) => eprintln!(
                "warning: {addr} is taken (another MQTT broker?): not embedding one; local-broker is whatever listens there (set mqtt_listen to move or \"\" to disable)"
            ),
        }
    }
    let engine = Arc::new(node.load_engine(model.as_deref(), |_| {})?);
    let embedder = if no_embeddings {
        None
    } else {
        let name = &node.config.embedding_model;
        node.ensure_model(name)?;
        let resolved = node.store.open_for_load(name, &node.config.trusted_keys)?;
        Some(Arc::new(edgewise_infer::LazyEmbedder::new(
            name.clone(),
            resolved.path,
        )))
    };
    // Components granted inference embed with the same model.
    let host = host.map(|mut h| {
        h.embedder = embedder.clone();
        h
    });
    let listen = listen.unwrap_or_else(|| node.config.listen.clone());
    let (state_engine, embedding_model) =
        (engine.clone(), embedder.as_ref().map(|e| e.name.clone()));
    let mut state = edgewise_server::AppState::new(
        engine.clone(),
        embedder.clone(),
        node.config.api_key.clone(),
        access,
        &node.config.limits,
        node.config.context_per_request,
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // Mesh security events go to the agents' audit log (or, without agents, to the same file).
    let audit = match &host {
        Some(h) => Some(h.audit.clone()),
        None => Some(Arc::new(edgewise_store::AuditLog::open(
            &node.data.audit_log(),
        )?)),
    };
    if let Some(host) = host {
        let syncer = sync::syncer(node, host.kv.clone(), host.knowledge.clone())?.map(Arc::new);
        if let Some(s) = syncer.clone().filter(|s| s.config().interval_s > 0) {
            rt.spawn(sync_every(s));
        }
        state = state.with_node_state(edgewise_server::NodeState {
            kv: host.kv.clone(),
            docs: edgewise_store::Documents::open(host.kv.clone())?,
            knowledge: host.knowledge.clone(),
            embedder,
            sync: syncer,
        });
        let catalog = node.store.known_names();
        let hub = rt.block_on(edgewise_server::AgentHub::new(
            host,
            engine,
            catalog,
            node.data.agents(),
        ))?;
        state = state.with_agents(hub);
    }
    if let Some(cfg) = node.config.mesh.clone() {
        let metrics = Arc::new(edgewise_server::mesh::MeshMetrics::default());
        let handler = edgewise_server::mesh::call_handler(&state, &cfg.share, metrics.clone());
        let advert = mesh::advert_source(node, &cfg, state_engine.clone(), embedding_model.clone());
        let forged = edgewise_server::mesh::forged_reporter(
            metrics.clone(),
            audit.clone(),
            node.config.node_name(),
        );
        let member = rt.block_on(mesh::join(node, &cfg, advert, handler, forged))?;
        state = state.with_mesh(member, metrics);
        let _runtime = rt.enter();
        edgewise_server::mesh::spawn_share_sync(&state, cfg.share.clone());
        edgewise_server::mesh::spawn_probes(&state);
    }
    rt.block_on(edgewise_server::serve(state, &listen))
}
