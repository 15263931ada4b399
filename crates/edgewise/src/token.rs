//! `edgewise token`: the node's admin token, which every route other than inference and
//! `/health` needs (`Authorization: Bearer <token>`).

use anyhow::Result;
use clap::Subcommand;

use crate::node::Node;

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Print the admin token (made first if the node has none yet).
    Show,
    /// Replace the admin token with a new random one; a running node accepts only the new one
    /// from its next request on.
    Rotate,
}

pub fn run(node: &Node, cmd: TokenCommand) -> Result<()> {
    let path = node.data.admin_token();
    let token = match cmd {
        TokenCommand::Show => edgewise_core::admin_token::load_or_create(&path)?,
        TokenCommand::Rotate => {
            let t = edgewise_core::admin_token::rotate(&path)?;
            eprintln!("new admin token written to {}", path.display());
            t
        }
    };
    println!("{token}");
    Ok(())
}

/// The admin token for requests this CLI makes to its own node, if the node has one.
pub fn for_requests(node: &Node) -> Result<Option<String>> {
    Ok(edgewise_core::admin_token::read(&node.data.admin_token())?)
}
