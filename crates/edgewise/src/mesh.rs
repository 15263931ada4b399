//! `edgewise mesh`: the trust domain's CA and node certificates, and the mesh as a serving node
//! sees it. Joining happens in `serve` when the config has a `mesh:` section.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use edgewise_core::MeshConfig;
use edgewise_mesh::{Advert, MeshNode, NodeTls};
use serde_json::Value;

use crate::node::Node;

#[derive(Subcommand)]
pub enum MeshCommand {
    /// The trust domain's certificate authority.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Node certificates signed by the domain's CA.
    #[command(subcommand)]
    Cert(CertCommand),
    /// Nodes this serving node sees: roles, models, load, last seen (asks its /v1/mesh).
    Status {
        /// The node's API [default: http://<the config's listen>].
        #[arg(long)]
        url: Option<String>,
        /// Admin token of the node at --url (this node's own token is sent only to this node).
        #[arg(long, env = "EDGEWISE_NODE_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum CaCommand {
    /// Create the CA (ca.pem, ca.key); keep ca.key off the nodes.
    Init {
        /// Name of the trust domain (mesh.trust_domain of its nodes).
        #[arg(long)]
        domain: String,
        /// Where to write it [default: <home>/mesh-ca].
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
pub enum CertCommand {
    /// Sign a certificate for NODE (its name in the mesh and its config's `name`).
    Issue {
        node: String,
        /// The CA's directory [default: <home>/mesh-ca].
        #[arg(long)]
        ca: Option<PathBuf>,
        /// Where to write ca.pem, node.pem and node.key [default: <home>/mesh-certs/NODE]; the
        /// node reads them from <its home>/mesh or mesh.tls_dir.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Days the certificate is valid (1–3650); nodes warn 30 days before it ends.
        #[arg(long, default_value_t = edgewise_mesh::DEFAULT_CERT_DAYS)]
        days: u32,
    },
}

pub fn run(node: &Node, cmd: MeshCommand) -> Result<()> {
    let ca_default = || node.data.root().join("mesh-ca");
    match cmd {
        MeshCommand::Ca(CaCommand::Init { domain, dir }) => {
            let dir = dir.unwrap_or_else(ca_default);
            let cert = edgewise_mesh::init_ca(&dir, &domain)?;
            println!(
                "mesh CA for '{domain}' in {}: issue node certificates with `edgewise mesh cert issue NODE`; keep {} secret",
                cert.display(),
                dir.join(edgewise_mesh::CA_KEY).display()
            );
            Ok(())
        }
        MeshCommand::Cert(CertCommand::Issue {
            node: name,
            ca,
            out,
            days,
        }) => {
            let ca = ca.unwrap_or_else(ca_default);
            let out = out.unwrap_or_else(|| node.data.root().join("mesh-certs").join(&name));
            let tls = edgewise_mesh::issue_for_days(&ca, &name, &out, days)?;
            println!(
                "certificate for '{name}' (valid {days} days) in {}: copy the directory to the node as <home>/mesh (or set mesh.tls_dir)",
                tls.cert.parent().unwrap_or(&out).display()
            );
            Ok(())
        }
        MeshCommand::Status { url, token, json } => status(node, url, token, json),
    }
}

fn status(node: &Node, url: Option<String>, token: Option<String>, json: bool) -> Result<()> {
    // This node's token goes only to this node: another URL gets only a token given for it.
    let token = match (&url, token) {
        (_, Some(t)) => Some(t),
        (None, None) => crate::token::for_requests(node)?,
        (Some(_), None) => None,
    };
    let base = url.unwrap_or_else(|| format!("http://{}", node.config.listen));
    let mut req = reqwest::blocking::Client::new().get(format!("{base}/v1/mesh"));
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    let resp = req.send().with_context(|| {
        format!("cannot reach the node at {base} (is `edgewise serve` running?)")
    })?;
    let code = resp.status();
    let body: Value = resp
        .json()
        .context("the node's /v1/mesh answer is not JSON")?;
    if !code.is_success() {
        bail!(
            "{base}/v1/mesh: {code}: {}",
            body["error"]["message"].as_str().unwrap_or("")
        );
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&body)?);
        return Ok(());
    }
    println!(
        "node {}: {} offload(s), {} failed, {} call(s) served for neighbours",
        body["node"].as_str().unwrap_or("?"),
        body["offloads"],
        body["offload_failures"],
        body["calls_served"]
    );
    println!(
        "{:<20} {:<6} {:<5} {:<14} {:>9} {:>8} {:<7} {:>5} {:>8}  MODELS",
        "NODE", "ALIVE", "ROLE", "DOMAIN", "LAST SEEN", "RTT", "BREAKER", "LOAD", "TOK/S"
    );
    for p in body["peers"].as_array().into_iter().flatten() {
        let a = &p["advert"];
        let models: Vec<&str> = a["models"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let node = p["node"].as_str().unwrap_or("?");
        let rtt = p["rtt_ms"]
            .as_f64()
            .map_or_else(|| "-".to_owned(), |ms| format!("{ms:.2}ms"));
        println!(
            "{:<20} {:<6} {:<5} {:<14} {:>7}ms {:>8} {:<7} {:>5} {:>8.1}  {}",
            node,
            if p["alive"].as_bool() == Some(true) {
                "yes"
            } else {
                "no"
            },
            a["role"].as_str().unwrap_or("-"),
            a["trust_domain"].as_str().unwrap_or("-"),
            p["last_seen_ms"],
            rtt,
            body["breakers"][node].as_str().unwrap_or("-"),
            a["waiting"].as_u64().unwrap_or(0) + a["active"].as_u64().unwrap_or(0),
            a["tokens_per_s"].as_f64().unwrap_or(0.0),
            models.join(",")
        );
    }
    Ok(())
}

/// What this node tells its neighbours, re-read at every advert.
pub fn advert_source(
    node: &Node,
    cfg: &MeshConfig,
    engine: Arc<edgewise_infer::Engine>,
    embedding_model: Option<String>,
) -> Arc<dyn Fn() -> Advert + Send + Sync> {
    let name = node.config.node_name();
    let (role, domain) = (cfg.role, cfg.trust_domain.clone());
    let kv_cells = node.config.kv_cells;
    let components = edgewise_sandbox::store::ComponentStore::new(node.data.components());
    Arc::new(move || {
        let s = engine.stats();
        Advert {
            node: name.clone(),
            role,
            tier: role.tier(),
            trust_domain: domain.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            models: vec![engine.info().name.clone()],
            embedding_model: embedding_model.clone(),
            components: components.names().unwrap_or_default(),
            free_memory_bytes: mem_available(),
            kv_cells,
            waiting: s.waiting as u64,
            active: s.active as u64,
            tokens_per_s: if s.generation_seconds > 0.0 {
                s.completion_tokens as f64 / s.generation_seconds
            } else {
                0.0
            },
            // The mesh fills in when it seals it and its key agreement key.
            ..Advert::default()
        }
    })
}

/// Joins the mesh of `cfg` with the TLS material of `mesh.tls_dir` (default `<home>/mesh`).
pub async fn join(
    node: &Node,
    cfg: &MeshConfig,
    advert: Arc<dyn Fn() -> Advert + Send + Sync>,
    handler: Arc<dyn edgewise_mesh::CallHandler>,
    on_forged: edgewise_mesh::ForgedReporter,
) -> Result<MeshNode> {
    let dir = match &cfg.tls_dir {
        Some(d) if d.is_relative() => node.data.root().join(d),
        Some(d) => d.clone(),
        None => node.data.mesh_tls(),
    };
    let name = node.config.node_name();
    let mesh = MeshNode::join(
        &name,
        cfg,
        &NodeTls::in_dir(&dir),
        advert,
        handler,
        on_forged,
    )
    .await
    .with_context(|| format!("cannot join the mesh as '{name}'"))?;
    eprintln!(
        "mesh: joined trust domain '{}' as '{name}' ({}), listening on {}",
        cfg.trust_domain,
        cfg.role,
        if cfg.listen.is_empty() {
            "nothing".to_owned()
        } else {
            cfg.listen.join(", ")
        }
    );
    Ok(mesh)
}

fn mem_available() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemAvailable:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}
