//! `edgewise component add|list|inspect|rm|call|sign`: installed Wasm components.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use edgewise_agent::components::{ComponentRegistry, ComponentSource};
use edgewise_sandbox::store::{check_name, manifest_beside, InstalledComponent};
use edgewise_sandbox::LoadedComponent;

use crate::node::Node;

#[derive(Subcommand)]
pub enum ComponentCommand {
    /// Install a component (a .wasm built against wit/); it is loaded first, so one that cannot
    /// run is never installed. Grants come from NAME.component.yaml beside it. Replaces an
    /// installed component of the same name.
    Add {
        path: PathBuf,
        /// Name to install it under [default: the file name without .wasm].
        #[arg(long)]
        name: Option<String>,
    },
    /// Installed components: name, kind, tools, size, signature.
    List,
    /// A component's tools, grants, hash and signature.
    Inspect { name: String },
    /// Remove an installed component.
    Rm { name: String },
    /// Call one tool of a component: `edgewise component call calc calculate '{"expression": "6*7"}'`.
    Call {
        name: String,
        tool: String,
        /// Arguments as a JSON object.
        #[arg(default_value = "{}")]
        args: String,
    },
    /// Sign an installed component (name, sha256, size, and its manifest's grants and limits)
    /// with an ed25519 key from `models keygen`; nodes with trusted_keys load only signed
    /// components, and only with the grants that were signed.
    Sign {
        name: String,
        #[arg(long)]
        key: PathBuf,
    },
}

/// Loads an installed component after checking its signature (when the node requires one).
fn load_installed(
    registry: &ComponentRegistry,
    name: &str,
) -> Result<(InstalledComponent, Arc<LoadedComponent>)> {
    let c = registry.store().get(name)?;
    let loaded = registry.current(&ComponentSource::installed(name))?;
    Ok((c, loaded))
}

pub fn run(node: &Node, cmd: ComponentCommand) -> Result<()> {
    let registry = ComponentRegistry::new(&node.data, node.config.trusted_keys.clone());
    let store = registry.store();
    match cmd {
        ComponentCommand::Add { path, name } => {
            let name = match name {
                Some(n) => n,
                None => path
                    .file_stem()
                    .map(|s| s.to_string_lossy().replace('_', "-"))
                    .context("the path has no file name; pass --name")?,
            };
            check_name(&name)?;
            let manifest = manifest_beside(&path)?;
            // Installed locally by whoever runs the node: a signature may follow (`sign`).
            let (c, loaded) = registry.install(&name, &path, &manifest, None)?;
            println!(
                "installed {name} ({} component, {} bytes, sha256 {})",
                loaded.kind, c.size, c.sha256
            );
            for t in &loaded.tools {
                println!("  tool {}: {}", t.name, t.description);
            }
        }
        ComponentCommand::List => {
            let all = store.list()?;
            if all.is_empty() {
                println!("no components installed (edgewise component add PATH)");
            }
            for c in all {
                let signed = if c.signature.is_some() {
                    "signed"
                } else {
                    "unsigned"
                };
                println!(
                    "{:<24} {:>9} bytes  {}  {}",
                    c.name,
                    c.size,
                    &c.sha256[..12],
                    signed
                );
            }
        }
        ComponentCommand::Inspect { name } => {
            let (c, loaded) = load_installed(&registry, &name)?;
            println!(
                "name: {}\nkind: {}\nsha256: {}\nsize: {}",
                c.name, loaded.kind, c.sha256, c.size
            );
            match &c.signature {
                Some(s) => println!("signed by: {}", s.public_key),
                None => println!("signed by: nobody"),
            }
            println!(
                "time limit: {} ms\nmemory limit: {}",
                loaded.time_limit.as_millis(),
                bytesize::ByteSize(loaded.memory)
            );
            println!(
                "grants:\n{}",
                serde_yaml::to_string(&*loaded.grants)?.trim_end()
            );
            for t in &loaded.tools {
                println!(
                    "tool {}: {}\n  parameters: {}",
                    t.name, t.description, t.parameters
                );
            }
        }
        ComponentCommand::Rm { name } => {
            registry.remove(&name)?;
            println!("removed {name}");
        }
        ComponentCommand::Call { name, tool, args } => {
            let parsed: serde_json::Value = serde_json::from_str(&args)
                .with_context(|| format!("ARGS must be a JSON object, got: {args}"))?;
            if !parsed.is_object() {
                bail!("ARGS must be a JSON object, got: {args}");
            }
            let (_, loaded) = load_installed(&registry, &name)?;
            let host = crate::agent::open_host(node)?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let _guard = rt.enter();
            // No model is loaded for a one-off call: components granted inference are told so.
            let services = Arc::new(host.direct_services(None));
            let out = loaded.invoke(&tool, &parsed.to_string(), services)?;
            println!("{out}");
        }
        ComponentCommand::Sign { name, key } => {
            let key = edgewise_core::signing::load_signing_key(&key)?;
            let sig = store.sign(&name, &key)?;
            println!("signed {name} with {}", sig.public_key);
        }
    }
    Ok(())
}
