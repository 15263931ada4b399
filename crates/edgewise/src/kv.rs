//! `edgewise kv get|set|list|rm`: the node's key-value state, namespace by namespace. Agents'
//! `kv_set` writes to the namespace `agent:<agent_id>`.

use anyhow::{bail, Result};
use clap::Subcommand;
use edgewise_store::Kv;

use crate::node::Node;

#[derive(Subcommand)]
pub enum KvCommand {
    /// Print one value (exit code 1 if the key is absent).
    Get { namespace: String, key: String },
    /// Write one value; durable when the command returns.
    Set {
        namespace: String,
        key: String,
        value: String,
    },
    /// Print the keys of a namespace with their values.
    List { namespace: String },
    /// Remove one key (exit code 1 if it was absent).
    Rm { namespace: String, key: String },
}

pub fn run(node: &Node, cmd: KvCommand) -> Result<()> {
    let kv = Kv::open(&node.data.state_db())?;
    match cmd {
        KvCommand::Get { namespace, key } => match kv.get(&namespace, &key)? {
            Some(v) => println!("{}", String::from_utf8_lossy(&v)),
            None => bail!("no key '{key}' in namespace '{namespace}'"),
        },
        KvCommand::Set {
            namespace,
            key,
            value,
        } => kv.set(&namespace, &key, value.as_bytes())?,
        KvCommand::List { namespace } => {
            for (k, v) in kv.list(&namespace)? {
                println!("{k}\t{}", String::from_utf8_lossy(&v));
            }
        }
        KvCommand::Rm { namespace, key } => {
            if !kv.remove(&namespace, &key)? {
                bail!("no key '{key}' in namespace '{namespace}'");
            }
        }
    }
    Ok(())
}
