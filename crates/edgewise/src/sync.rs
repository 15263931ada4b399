//! `edgewise sync`: one round with the upstream node named in `sync:` (or `--status`), on a node
//! that is not serving; a serving node syncs on its own every `sync.interval_s` and answers
//! `POST /v1/sync`.

use std::sync::Arc;

use anyhow::{bail, Result};
use clap::Args;
use edgewise_store::knowledge::KnowledgeSlot;
use edgewise_store::{Documents, Kv};
use edgewise_sync::Syncer;

use crate::node::Node;

#[derive(Args)]
pub struct SyncArgs {
    /// Show pending changes and recorded conflicts without contacting the upstream.
    #[arg(long)]
    status: bool,
    /// Print JSON instead of a summary.
    #[arg(long)]
    json: bool,
}

/// The node's sync manager over its own state; `None` without a `sync:` section.
pub fn syncer(node: &Node, kv: Arc<Kv>, knowledge: Arc<KnowledgeSlot>) -> Result<Option<Syncer>> {
    let Some(cfg) = node.config.sync.clone() else {
        return Ok(None);
    };
    let docs = Documents::open(kv.clone())?;
    Ok(Some(Syncer::new(
        cfg,
        node.config.node_name(),
        kv,
        docs,
        knowledge,
    )?))
}

pub fn run(node: &Node, a: SyncArgs) -> Result<()> {
    let kv = Arc::new(Kv::open(&node.data.state_db())?);
    let knowledge = Arc::new(KnowledgeSlot::new(node.data.knowledge()));
    let Some(syncer) = syncer(node, kv, knowledge)? else {
        bail!(
            "no upstream configured: add a sync: section to the node's config.yaml, e.g.\n  sync:\n    upstream: http://HUB:8080\n    kv_namespaces: [plant]"
        );
    };
    if a.status {
        let s = syncer.status()?;
        if a.json {
            println!("{}", serde_json::to_string_pretty(&s)?);
            return Ok(());
        }
        println!("upstream {} ({:?})", s.upstream, s.conflict_policy);
        println!("{} pending change(s)", s.pending.len());
        for p in &s.pending {
            let what = if p.removed { "removed" } else { "changed" };
            println!("  {}/{} {what} (version {})", p.namespace, p.key, p.version);
        }
        for c in &s.conflicts {
            println!(
                "conflict {} {}/{}: here {:?}, upstream {:?}; kept {:?}",
                c.at, c.namespace, c.key, c.local, c.upstream, c.kept
            );
        }
        return Ok(());
    }
    let r = syncer.sync_once()?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    println!(
        "kv: {} pushed, {} pulled, {} conflicts, {} deferred",
        r.kv_pushed, r.kv_pulled, r.kv_conflicts, r.kv_deferred
    );
    for d in &r.documents {
        println!(
            "document {}: {} messages sent, {} received{}",
            d.name,
            d.messages_sent,
            d.messages_received,
            if d.conflicted_keys.is_empty() {
                String::new()
            } else {
                format!(", concurrent values in {}", d.conflicted_keys.join(", "))
            }
        );
    }
    for c in &r.collections {
        println!(
            "collection {}: {} pushed, {} pulled",
            c.name, c.pushed, c.pulled
        );
    }
    for e in &r.errors {
        eprintln!("warning: {e}");
    }
    Ok(())
}
