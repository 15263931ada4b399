//! `edgewise pull` and `edgewise models …`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;
use edgewise_models::signing;

use crate::node::Node;
use crate::progress::Bar;

#[derive(Subcommand)]
pub enum ModelsCommand {
    /// List installed models and the catalog.
    List,
    /// Copy a local GGUF into the store under a name.
    Import {
        path: PathBuf,
        #[arg(long)]
        name: String,
    },
    /// Re-hash an installed model against its manifest.
    Verify { name: String },
    /// Remove an installed model.
    Rm { name: String },
    /// Sign a model's manifest (name, sha256, size) with an ed25519 key.
    Sign {
        name: String,
        /// Secret key file written by `models keygen`.
        #[arg(long)]
        key: PathBuf,
    },
    /// Create an ed25519 signing key; prints the public key to put in trusted_keys.
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
}

pub fn pull(node: &Node, name: Option<&str>) -> Result<()> {
    let name = name.unwrap_or(&node.config.default_model);
    let entry = node.store.catalog().get(name).with_context(|| {
        format!(
            "'{name}' is not in the catalog (known: {}); add it to {}",
            node.store.catalog().names(),
            node.data.catalog_file().display()
        )
    })?;
    let m = edgewise_models::pull(&node.store, entry, &Bar::new())?;
    println!("{} {} bytes sha256 {}", m.name, m.size, m.sha256);
    Ok(())
}

pub fn run(node: &Node, cmd: ModelsCommand) -> Result<()> {
    let store = &node.store;
    match cmd {
        ModelsCommand::List => {
            let installed = store.list()?;
            println!("{:<32} {:<10} {:>12}  STATUS", "NAME", "ARCH", "SIZE");
            for e in store.catalog().entries() {
                let status = if installed.iter().any(|m| m.name == e.name) {
                    "installed"
                } else {
                    "available"
                };
                let size = e
                    .size
                    .map(|s| format!("{:.1} MB", s as f64 / 1e6))
                    .unwrap_or_else(|| "?".into());
                println!(
                    "{:<32} {:<10} {:>12}  {status}",
                    e.name, e.architecture, size
                );
            }
            for m in installed
                .iter()
                .filter(|m| store.catalog().get(&m.name).is_none())
            {
                println!(
                    "{:<32} {:<10} {:>12}  installed (imported)",
                    m.name,
                    m.architecture,
                    format!("{:.1} MB", m.size as f64 / 1e6)
                );
            }
        }
        ModelsCommand::Import { path, name } => {
            let m = store.import(&path, &name)?;
            println!(
                "imported {} ({}, {} bytes, sha256 {})",
                m.name, m.architecture, m.size, m.sha256
            );
        }
        ModelsCommand::Verify { name } => {
            let m = store.verify(&name)?;
            println!("{}: ok (sha256 {})", m.name, m.sha256);
        }
        ModelsCommand::Rm { name } => {
            store.remove(&name)?;
            println!("removed {name}");
        }
        ModelsCommand::Sign { name, key } => {
            let key = signing::load_signing_key(&key)?;
            let sig = store.sign(&name, &key)?;
            println!("signed {name} with {}", sig.public_key);
        }
        ModelsCommand::Keygen { out } => {
            let pk = signing::generate_key(&out)?;
            println!("secret key written to {}\npublic key: {pk}\nadd it to trusted_keys in the node config", out.display());
        }
    }
    Ok(())
}
