//! Policy refusals with the real tools (no model needed): path traversal, an unregistered tool,
//! schema-invalid arguments, non-local destinations under `egress_allowed: false`. None of these
//! calls reaches a network: refusals happen before any connection.

use std::path::Path;
use std::sync::Arc;

use edgewise_agent::tools::ToolContext;
use edgewise_agent::{ToolError, ToolRegistry};
use edgewise_core::{AgentSpec, NodeConfig};
use edgewise_store::Kv;
use serde_json::json;

async fn registry(dir: &Path, egress: bool) -> ToolRegistry {
    registry_on(dir, egress, NodeConfig::default()).await
}

async fn registry_on(dir: &Path, egress: bool, config: NodeConfig) -> ToolRegistry {
    std::fs::create_dir_all(dir.join("files/notes")).unwrap();
    std::fs::write(dir.join("files/notes/today.txt"), "valve 4 serviced").unwrap();
    std::fs::write(dir.join("secret.txt"), "do not read").unwrap();
    std::os::unix::fs::symlink(dir.join("secret.txt"), dir.join("files/escape")).unwrap();
    let yaml = format!(
        r#"agent_id: policy-test
runtime: {{type: native}}
capabilities:
  - name: read_file
    endpoint: "builtin:read_file"
    root: files
  - name: fetch
    endpoint: "builtin:http_request"
  - name: report
    endpoint: "http://203.0.113.9/api"
  - name: remote_alert
    endpoint: "mqtt://198.51.100.7:1883/alerts"
  - name: remember
    endpoint: "builtin:kv_set"
workflow_policy:
  egress_allowed: {egress}
"#
    );
    let spec = AgentSpec::parse(&yaml, Path::new("policy.yaml")).unwrap();
    let ctx = ToolContext::new(
        &spec.agent_id,
        Arc::new(Kv::open(&dir.join("state.redb")).unwrap()),
        config,
        spec.workflow_policy.egress_allowed,
        dir.to_path_buf(),
        &edgewise_core::DataDir::new(dir),
    );
    ToolRegistry::from_spec(&spec, &ctx).await.unwrap()
}

fn refused(r: Result<String, ToolError>) -> String {
    match r {
        Err(ToolError::Refused(m)) => m,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn file_tools_stay_inside_their_root() {
    let dir = tempfile::tempdir().unwrap();
    let reg = registry(dir.path(), false).await;
    let ok = reg
        .call("read_file", &json!({"path": "notes/today.txt"}))
        .await
        .unwrap();
    assert_eq!(ok, "valve 4 serviced");
    for (path, why) in [
        ("../secret.txt", "'..'"),
        ("/etc/passwd", "absolute"),
        ("notes/../../secret.txt", "'..'"),
        ("escape", "symlink"),
    ] {
        let m = refused(reg.call("read_file", &json!({ "path": path })).await);
        assert!(m.contains(why), "{path}: {m}");
    }
}

#[tokio::test]
async fn unknown_tools_and_bad_arguments_are_refused_before_running() {
    let dir = tempfile::tempdir().unwrap();
    let reg = registry(dir.path(), false).await;
    let m = refused(reg.call("rm_rf", &json!({})).await);
    assert!(
        m.contains("no tool named 'rm_rf'") && m.contains("read_file"),
        "{m}"
    );
    let m = refused(reg.call("remember", &json!({"key": "k"})).await);
    assert!(
        m.contains("do not match its schema") && m.contains("value"),
        "{m}"
    );
    let m = refused(reg.call("read_file", &json!({"path": 7})).await);
    assert!(m.contains("/path"), "{m}");
}

#[tokio::test]
async fn non_local_destinations_are_refused_without_egress() {
    let dir = tempfile::tempdir().unwrap();
    let reg = registry(dir.path(), false).await;
    for (tool, args) in [
        ("fetch", json!({"url": "http://203.0.113.9/"})),
        ("fetch", json!({"url": "http://[2001:db8::1]:8080/"})),
        ("report", json!({"path": "/v1"})),
        ("remote_alert", json!({"message": "zone 4"})),
    ] {
        let m = refused(reg.call(tool, &args).await);
        assert!(m.contains("egress denied"), "{tool}: {m}");
    }
    // This host and the link are not the trust domain: its own services and cloud metadata are
    // refused too, with or without egress.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let own = format!("http://127.0.0.1:{port}/");
    let egress_dir = tempfile::tempdir().unwrap();
    let egress = registry(egress_dir.path(), true).await;
    for reg in [&reg, &egress] {
        for (url, why) in [
            (own.as_str(), "loopback"),
            ("http://[::1]:9/", "loopback"),
            ("http://169.254.169.254/latest/meta-data/", "link-local"),
            ("http://0.0.0.0:9/", "unspecified"),
        ] {
            let m = refused(reg.call("fetch", &json!({ "url": url })).await);
            assert!(
                m.contains(why) && m.contains("agent_policy.local_destinations"),
                "{url}: {m}"
            );
        }
    }
    // Listed by the node, that one address and port passes the policy (and fails only because
    // nothing listens there); its neighbour port stays refused.
    let mut config = NodeConfig::default();
    config.agent_policy.local_destinations = vec![format!("127.0.0.1:{port}").try_into().unwrap()];
    let listed_dir = tempfile::tempdir().unwrap();
    let listed = registry_on(listed_dir.path(), false, config).await;
    let r = listed.call("fetch", &json!({ "url": own })).await;
    assert!(matches!(r, Err(ToolError::Failed(_))), "{r:?}");
    let other = format!("http://127.0.0.1:{}/", port.wrapping_add(1));
    refused(listed.call("fetch", &json!({ "url": other })).await);
}

/// `AgentHost::tools` is where every spec passes (API, `agent run`, placed runs): a spec beyond
/// the node's policy is refused there with its position, before its command starts.
#[tokio::test]
async fn the_host_refuses_a_spec_beyond_the_node_policy_before_starting_anything() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let command = format!("sh -c 'touch {}'", marker.display());
    let yaml = format!(
        "agent_id: a\nruntime: {{type: native}}\ncapabilities:\n  - name: shell\n    endpoint: \"mcp+stdio:{command}\"\n"
    );
    let spec = AgentSpec::parse(&yaml, Path::new("agents/a.yaml")).unwrap();
    let data = edgewise_core::DataDir::new(dir.path());
    let host = edgewise_agent::AgentHost::open(&data, NodeConfig::default()).unwrap();
    let err = host
        .tools(&spec, dir.path())
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.starts_with("agent spec agents/a.yaml:5:5: capability 'shell' starts")
            && err.contains("agent_policy.mcp_commands"),
        "{err}"
    );
    assert!(!marker.exists(), "the refused command ran");
    // The control: listed, the command starts (and fails the MCP handshake).
    let mut config = NodeConfig::default();
    config.agent_policy.mcp_commands = vec![command.clone().try_into().unwrap()];
    drop(host);
    let host = edgewise_agent::AgentHost::open(&data, config).unwrap();
    let err = host
        .tools(&spec, dir.path())
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(!err.contains("agent_policy"), "{err}");
    assert!(marker.exists(), "the listed command did not run: {err}");
}

/// `builtin:mqtt_publish` lets the model name the topic: the node's topics bound it at each call.
#[tokio::test]
async fn mqtt_publish_is_bounded_by_the_node_topics_at_each_call() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = "agent_id: a\nruntime: {type: native}\ncapabilities:\n  - name: pub\n    endpoint: \"builtin:mqtt_publish\"\n";
    let spec = AgentSpec::parse(yaml, Path::new("a.yaml")).unwrap();
    // The node's broker, where nothing listens.
    let mut config = NodeConfig::default();
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    config.mqtt_listen = free.local_addr().unwrap().to_string();
    drop(free);
    let ctx = ToolContext::new(
        "a",
        Arc::new(Kv::open(&dir.path().join("s.redb")).unwrap()),
        config,
        false,
        dir.path().to_path_buf(),
        &edgewise_core::DataDir::new(dir.path()),
    );
    let reg = ToolRegistry::from_spec(&spec, &ctx).await.unwrap();
    for topic in [
        "plant/valves/set",
        "agents/b/x",
        "$SYS/broker/x",
        "alerts/#",
    ] {
        let m = refused(
            reg.call("pub", &json!({"topic": topic, "message": "open"}))
                .await,
        );
        assert!(m.contains(topic), "{topic}: {m}");
    }
    // An allowed topic passes the policy and fails only because no broker listens.
    let r = reg
        .call("pub", &json!({"topic": "agents/a/out", "message": "hi"}))
        .await;
    assert!(matches!(r, Err(ToolError::Failed(_))), "{r:?}");
}

#[tokio::test]
async fn endpoints_this_node_cannot_serve_are_refused_at_load_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = ToolContext::new(
        "a",
        Arc::new(Kv::open(&dir.path().join("s.redb")).unwrap()),
        NodeConfig::default(),
        false,
        dir.path().to_path_buf(),
        &edgewise_core::DataDir::new(dir.path()),
    );
    for (endpoint, why) in [
        ("wasm:calc.wasm", "cannot read"),
        (
            "mcp+stdio:/nonexistent/mcp-server --stdio",
            "cannot start '/nonexistent/mcp-server'",
        ),
    ] {
        let yaml =
            format!("agent_id: a\ncapabilities:\n  - name: t\n    endpoint: \"{endpoint}\"\n");
        let spec = AgentSpec::parse(&yaml, Path::new("a.yaml")).unwrap();
        let err = ToolRegistry::from_spec(&spec, &ctx)
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains(why), "{endpoint}: {err}");
    }
}
