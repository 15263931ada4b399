//! `misbehave`: a component that does what a sandbox must stop — spin forever, eat memory, open
//! files and sockets it was not granted — and probes the host interfaces tests check (calling
//! another tool, embedding). Tests only; never register it on a real node.

wit_bindgen::generate!({ world: "tool", path: "../../wit", generate_all });

use exports::edgewise::agent::tool_api::{Guest, ToolError, ToolSpec};

struct Misbehave;

fn tool(name: &str, description: &str) -> ToolSpec {
    ToolSpec {
        name: name.into(),
        description: description.into(),
        parameters: r#"{"type":"object","properties":{"target":{"type":"string"}},"additionalProperties":false}"#.into(),
    }
}

impl Guest for Misbehave {
    fn describe() -> Vec<ToolSpec> {
        vec![
            tool("spin", "Loops forever."),
            tool("allocate", "Allocates memory until something stops it."),
            tool("read_file", "Reads the file named by target."),
            tool("connect", "Opens a TCP connection to target (host:port)."),
            tool("echo", "Returns target: proof the component still works."),
            tool("relay", "Calls the agent's tool named target with no arguments."),
            tool("embed", "Embeds target with the node's model; returns the dimension."),
        ]
    }

    fn invoke(name: String, args_json: String) -> Result<String, ToolError> {
        let args: serde_json::Value = serde_json::from_str(&args_json).unwrap_or_default();
        let target = args.get("target").and_then(|v| v.as_str()).unwrap_or("").to_owned();
        match name.as_str() {
            "spin" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "allocate" => {
                let mut chunks: Vec<Vec<u8>> = Vec::new();
                loop {
                    // Touch every page so the memory is really used.
                    chunks.push(vec![1u8; 16 << 20]);
                    std::hint::black_box(&chunks);
                }
            }
            "read_file" => std::fs::read_to_string(&target)
                .map(|s| format!("read {} bytes", s.len()))
                .map_err(|e| ToolError::Denied(format!("open {target}: {e}"))),
            "connect" => std::net::TcpStream::connect(&target)
                .map(|_| format!("connected to {target}"))
                .map_err(|e| ToolError::Denied(format!("connect {target}: {e}"))),
            "echo" => Ok(target),
            "relay" => edgewise::agent::tools::call(&target, "{}"),
            "embed" => edgewise::agent::inference::embed(&target)
                .map(|v| v.len().to_string())
                .map_err(|e| ToolError::Failed(format!("{e:?}"))),
            _ => Err(ToolError::UnknownTool(name)),
        }
    }
}

export!(Misbehave);
