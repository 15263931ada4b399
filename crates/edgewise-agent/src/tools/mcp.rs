//! `mcp+stdio:COMMAND ARGS`: every tool of a local MCP server (rmcp client over the server's
//! stdin/stdout). The server process lives as long as the agent's tool registry.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use edgewise_infer::ToolSpec;
use rmcp::model::CallToolRequestParams;
use rmcp::service::RunningService;
use rmcp::transport::TokioChildProcess;
use rmcp::{RoleClient, ServiceExt};
use serde_json::Value;

use super::{Tool, ToolError};

type Client = RunningService<RoleClient, ()>;

/// Replies longer than this are cut off: an observation must fit the model's context.
const MAX_REPLY: usize = 64 * 1024;

pub struct McpTool {
    spec: ToolSpec,
    client: Arc<Client>,
    timeout: Duration,
}

/// Which network an MCP server process gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Network {
    /// The node's own (the agent may send data out, or the node trusts this command with it).
    Node,
    /// None but the process's own loopback (a network namespace of its own).
    LoopbackOnly,
}

/// Starts the server (working directory `dir`), completes the MCP handshake and lists its tools.
pub async fn connect(
    command: &str,
    args: &[String],
    dir: &Path,
    network: Network,
    timeout: Duration,
) -> Result<Vec<Arc<dyn Tool>>, String> {
    let mut cmd = tokio::process::Command::new(command);
    cmd.args(args).current_dir(dir);
    let marker = (network == Network::LoopbackOnly).then(|| super::netns::isolate(&mut cmd));
    let (transport, _) = TokioChildProcess::builder(cmd)
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| match &marker {
            Some(m) => m.classify(e),
            None => Ok(e),
        })
        .map_err(|e| match e {
            Err(super::netns::NamespaceUnavailable(e)) => format!(
                "cannot start '{command}' without network, as egress_allowed: false requires: this node cannot create a network namespace ({e}); to run it with the node's network, list it in agent_policy.mcp_commands_with_network in config.yaml"
            ),
            Ok(e) => format!("cannot start '{command}': {e}"),
        })?;
    let client = tokio::time::timeout(timeout, ().serve(transport))
        .await
        .map_err(|_| format!("'{command}' did not complete the MCP handshake within {timeout:?}"))?
        .map_err(|e| format!("MCP handshake with '{command}': {e}"))?;
    let tools = tokio::time::timeout(timeout, client.list_all_tools())
        .await
        .map_err(|_| format!("'{command}' did not list its tools within {timeout:?}"))?
        .map_err(|e| format!("listing the tools of '{command}': {e}"))?;
    if tools.is_empty() {
        return Err(format!("the MCP server '{command}' offers no tools"));
    }
    let client = Arc::new(client);
    Ok(tools
        .into_iter()
        .map(|t| {
            Arc::new(McpTool {
                spec: ToolSpec {
                    name: t.name.to_string(),
                    description: t.description.map(|d| d.to_string()).unwrap_or_default(),
                    parameters: Value::Object((*t.input_schema).clone()),
                },
                client: client.clone(),
                timeout,
            }) as Arc<dyn Tool>
        })
        .collect())
}

#[async_trait]
impl Tool for McpTool {
    fn spec(&self) -> &ToolSpec {
        &self.spec
    }

    async fn call(&self, args: Value) -> Result<String, ToolError> {
        let mut params = CallToolRequestParams::new(self.spec.name.clone());
        params.arguments = match args {
            Value::Object(o) => Some(o),
            _ => None,
        };
        let result = tokio::time::timeout(self.timeout, self.client.call_tool(params))
            .await
            .map_err(|_| {
                ToolError::Failed(format!(
                    "the MCP tool '{}' did not answer within {:?}",
                    self.spec.name, self.timeout
                ))
            })?
            .map_err(|e| ToolError::Failed(format!("MCP tool '{}': {e}", self.spec.name)))?;
        let mut text: String = result
            .content
            .iter()
            .filter_map(|c| c.as_text().map(|t| t.text.as_str()))
            .collect::<Vec<_>>()
            .join("\n");
        if text.is_empty() {
            if let Some(v) = &result.structured_content {
                text = v.to_string();
            }
        }
        if text.len() > MAX_REPLY {
            let mut cut = MAX_REPLY;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
        }
        if result.is_error == Some(true) {
            return Err(ToolError::Failed(text));
        }
        Ok(text)
    }
}
