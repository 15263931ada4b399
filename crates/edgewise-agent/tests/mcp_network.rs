//! An MCP server is a process: `egress_allowed: false` holds for it only if it has no network.
//! A real MCP server (the official Python SDK) probes what it can reach; the test listens on the
//! node's loopback, where an isolated server must not arrive.

use std::io::ErrorKind;
use std::net::TcpListener;
use std::path::{Path, PathBuf};

use edgewise_core::{AgentSpec, NodeConfig};
use serde_json::json;

const PROBE_SERVER: &str = r#"
import socket
from mcp.server.fastmcp import FastMCP

mcp = FastMCP("probe")

@mcp.tool()
def reach(port: int) -> str:
    """Connects to 127.0.0.1:port."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=3).close()
        return "connected"
    except OSError as e:
        return f"unreachable: {e}"

@mcp.tool()
def escape(port: int) -> str:
    """Tries to join the node's network namespace (as root could), then connects to 127.0.0.1:port."""
    import ctypes, os
    libc = ctypes.CDLL(None, use_errno=True)
    tried = []
    for pid in (os.getppid(), 1):
        try:
            fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
        except OSError as e:
            tried.append(f"open {pid}: {e.strerror}")
            continue
        if libc.setns(fd, 0x40000000) != 0:
            tried.append(f"setns {pid}: {os.strerror(ctypes.get_errno())}")
        os.close(fd)
    return "; ".join(tried) + " / " + reach(port)

@mcp.tool()
def interfaces() -> str:
    """The network interfaces this process sees."""
    return ",".join(sorted(name for _, name in socket.if_nameindex()))

@mcp.tool()
def own_loopback() -> str:
    """Listens on its own loopback and connects to itself."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    socket.create_connection(server.getsockname(), timeout=3).close()
    return "loopback works"

mcp.run()
"#;

fn test_python() -> PathBuf {
    std::env::var_os("EDGEWISE_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python"))
}

/// The tools of an agent whose only capability is the probe server, under `config`.
async fn probe(
    dir: &Path,
    egress: bool,
    config: NodeConfig,
) -> (edgewise_agent::AgentHost, edgewise_agent::ToolRegistry) {
    let yaml = format!(
        "agent_id: probe\nruntime: {{type: native}}\ncapabilities:\n  - name: probe\n    endpoint: \"mcp+stdio:{}\"\nworkflow_policy:\n  egress_allowed: {egress}\n",
        command_line(dir)
    );
    let spec = AgentSpec::parse(&yaml, Path::new("agents/probe.yaml")).unwrap();
    let host = edgewise_agent::AgentHost::open(&edgewise_core::DataDir::new(dir), config).unwrap();
    let (tools, _) = host
        .tools(&spec, dir)
        .await
        .unwrap_or_else(|e| panic!("the probe server did not start: {e}"));
    (host, tools)
}

fn command_line(dir: &Path) -> String {
    format!(
        "{} {}",
        test_python().display(),
        dir.join("probe.py").display()
    )
}

fn policy(dir: &Path, egress: bool, with_network: bool) -> NodeConfig {
    let mut config = NodeConfig::default();
    let line: edgewise_core::agent_policy::CommandLine = command_line(dir).try_into().unwrap();
    config.agent_policy.mcp_commands = vec![line.clone()];
    if with_network {
        config.agent_policy.mcp_commands_with_network = vec![line];
    }
    config.agent_policy.allow_egress = egress;
    config
}

/// Whether anything connected to `listener` since the last look.
fn arrived(listener: &TcpListener) -> bool {
    match listener.accept() {
        Ok(_) => true,
        Err(e) if e.kind() == ErrorKind::WouldBlock => false,
        Err(e) => panic!("accept: {e}"),
    }
}

#[tokio::test]
async fn an_mcp_server_of_an_agent_without_egress_has_only_its_own_loopback() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("probe.py"), PROBE_SERVER).unwrap();
    // A service of the node's, on its loopback (the node's API, a local database ...).
    let node_service = TcpListener::bind("127.0.0.1:0").unwrap();
    node_service.set_nonblocking(true).unwrap();
    let port = node_service.local_addr().unwrap().port();

    let (host, isolated) = probe(dir.path(), false, policy(dir.path(), false, false)).await;
    let reach = isolated
        .call("reach", &json!({ "port": port }))
        .await
        .unwrap();
    assert!(reach.contains("unreachable"), "{reach}");
    assert!(
        !arrived(&node_service),
        "the isolated server reached the node's loopback"
    );
    // Not even by joining the node's namespace, which a child root in the node's user namespace
    // could do.
    let escape = isolated
        .call("escape", &json!({ "port": port }))
        .await
        .unwrap();
    assert!(escape.contains("unreachable"), "{escape}");
    assert!(
        !arrived(&node_service),
        "the server escaped its namespace: {escape}"
    );
    let interfaces = isolated.call("interfaces", &json!({})).await.unwrap();
    assert!(
        interfaces.contains("lo") && !interfaces.contains(','),
        "{interfaces}"
    );
    let own = isolated.call("own_loopback", &json!({})).await.unwrap();
    assert!(own.contains("loopback works"), "{own}");
    drop((isolated, host));

    // The controls: the operator trusts this command with the node's network, or the agent
    // may send data out. Either way the server reaches the node's service.
    for (egress, with_network) in [(false, true), (true, false)] {
        let (_host, tools) =
            probe(dir.path(), egress, policy(dir.path(), egress, with_network)).await;
        let reach = tools.call("reach", &json!({ "port": port })).await.unwrap();
        assert!(
            reach.contains("connected"),
            "egress {egress}, trusted {with_network}: {reach}"
        );
        assert!(arrived(&node_service));
    }
}
