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

/// A neighbour's placed spec passes `AgentHost::placed_tools`: it is held to `mesh.accept_runs`,
/// never to the node's `agent_policy` however wide, and refused with every reason before anything
/// starts. Within the default, its KV lands in the placing node's scope, not the local agent's.
#[tokio::test]
async fn a_placed_spec_is_held_to_accept_runs_and_its_kv_is_scoped_to_the_placing_node() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let command = format!("sh -c 'touch {}'", marker.display());
    // The node's own agents may do all of what the spec asks.
    let mut config =
        NodeConfig::parse("mesh:\n  trust_domain: plant\n", Path::new("config.yaml")).unwrap();
    config.agent_policy.mcp_commands = vec![command.clone().try_into().unwrap()];
    config.agent_policy.file_roots = vec!["/".into()];
    config.agent_policy.allow_egress = true;
    let data = edgewise_core::DataDir::new(dir.path());
    let host = edgewise_agent::AgentHost::open(&data, config).unwrap();
    let yaml = format!(
        "agent_id: a\nruntime: {{type: native}}\ncapabilities:\n  - name: shell\n    endpoint: \"mcp+stdio:{command}\"\n  - name: everything\n    endpoint: \"builtin:read_file\"\n    root: /\nworkflow_policy:\n  egress_allowed: true\n"
    );
    let spec = AgentSpec::parse(&yaml, Path::new("spec")).unwrap();
    let reasons = match host.placed_tools(&spec, "node-a").await {
        Err(edgewise_agent::AgentError::PlacedRefused(refusal)) => refusal.reasons(),
        Err(e) => panic!("expected a refusal by mesh.accept_runs, got: {e}"),
        Ok(_) => panic!("a placed spec beyond mesh.accept_runs was built"),
    };
    for needles in [
        ["'shell'", "mesh.accept_runs.policy.schemes"],
        ["'everything'", "mesh.accept_runs.builtins"],
        ["'everything'", "mesh.accept_runs.policy.file_roots"],
        ["egress_allowed", "mesh.accept_runs.policy.allow_egress"],
    ] {
        assert!(
            reasons
                .iter()
                .any(|r| needles.iter().all(|n| r.contains(n))),
            "no reason with {needles:?}: {reasons:#?}"
        );
    }
    assert!(!marker.exists(), "the refused placed spec's command ran");
    // The control: as the node's own spec it passes agent_policy, and the command starts.
    let err = host
        .tools(&spec, dir.path())
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(!err.contains("agent_policy"), "{err}");
    assert!(marker.exists(), "the listed command did not run: {err}");

    // Within the default policy: the agent's own KV, scoped to the placing node.
    let kv_spec = AgentSpec::parse(
        "agent_id: a\nruntime: {type: native}\ncapabilities:\n  - name: remember\n    endpoint: \"builtin:kv_set\"\n  - name: recall\n    endpoint: \"builtin:kv_get\"\n",
        Path::new("spec"),
    )
    .unwrap();
    host.kv.set("agent:a", "shift", b"local secret").unwrap();
    let (placed, _) = host.placed_tools(&kv_spec, "node-a").await.unwrap();
    // The local agent "a" keeps its data from a neighbour's run that names the same id.
    let r = placed.call("recall", &json!({"key": "shift"})).await;
    assert!(matches!(r, Err(ToolError::Failed(_))), "{r:?}");
    placed
        .call("remember", &json!({"key": "shift", "value": "7"}))
        .await
        .unwrap();
    assert_eq!(
        host.kv.get("mesh:node-a:a", "shift").unwrap().as_deref(),
        Some(&b"7"[..])
    );
    assert_eq!(
        host.kv.get("agent:a", "shift").unwrap().as_deref(),
        Some(&b"local secret"[..])
    );
}

/// A host whose `config.yaml` is `config` (a mesh member), in `dir`.
fn placed_host(dir: &Path, config: &str) -> edgewise_agent::AgentHost {
    let config = NodeConfig::parse(config, Path::new("config.yaml")).unwrap();
    edgewise_agent::AgentHost::open(&edgewise_core::DataDir::new(dir), config).unwrap()
}

/// The attack: an installed component keeps its state in its own buckets (`wasm:NAME:BUCKET`);
/// a neighbour's run using the same component must neither read nor overwrite what it holds
/// for this node's agents.
#[tokio::test]
async fn a_placed_runs_components_keep_their_buckets_under_the_placing_nodes_scope() {
    use edgewise_sandbox::HostServices;
    let dir = tempfile::tempdir().unwrap();
    let host = placed_host(dir.path(), "mesh:\n  trust_domain: plant\n");
    let spec = AgentSpec::parse("agent_id: a\n", Path::new("spec")).unwrap();
    let bucket = "wasm:sensor-reader:predictions";
    host.kv.set(bucket, "valve", b"local state").unwrap();

    let (_, placed) = host.placed_tools(&spec, "node-a").await.unwrap();
    let services = edgewise_agent::tools::wasm::NodeServices::new(&placed);
    assert_eq!(services.kv_get(bucket, "valve").unwrap(), None);
    assert!(services.kv_keys(bucket).unwrap().is_empty());
    services.kv_set(bucket, "valve", b"planted").unwrap();
    services.kv_delete(bucket, "missing").unwrap();
    assert_eq!(
        host.kv.get(bucket, "valve").unwrap().as_deref(),
        Some(&b"local state"[..]),
        "the placed run reached this node's component state"
    );
    assert_eq!(
        host.kv
            .get("mesh:node-a:a:wasm:sensor-reader:predictions", "valve")
            .unwrap()
            .as_deref(),
        Some(&b"planted"[..])
    );
    // The control: this node's own agent reads the bucket as named.
    let (_, local) = host.tools(&spec, dir.path()).await.unwrap();
    let services = edgewise_agent::tools::wasm::NodeServices::new(&local);
    assert_eq!(
        services.kv_get(bucket, "valve").unwrap().as_deref(),
        Some(&b"local state"[..])
    );
}

/// The attack: a neighbour picks the id of a run this node already recorded (its own agent's),
/// to overwrite that record with its own.
#[tokio::test]
async fn a_placed_run_may_not_take_the_id_of_a_recorded_run() {
    let dir = tempfile::tempdir().unwrap();
    let host = placed_host(dir.path(), "mesh:\n  trust_domain: plant\n");
    host.runs()
        .save(&edgewise_agent::RunRecord {
            agent: "shift-keeper".into(),
            run: "run-1".into(),
            task: "local task".into(),
            status: edgewise_agent::RunStatus::Completed,
            model: "m".into(),
            started: "2026-01-01T00:00:00Z".into(),
            ended: None,
            answer: Some("local answer".into()),
            error: None,
            summaries: 0,
            cached: false,
            steps: Vec::new(),
            placed_by: None,
        })
        .unwrap();
    let err = host.check_new_run("shift-keeper", "run-1").unwrap_err();
    assert!(
        matches!(err, edgewise_agent::AgentError::RunExists { .. })
            && err.to_string().contains("new run id"),
        "{err}"
    );
    // Another agent's run of that id, or a new id, is free.
    host.check_new_run("other", "run-1").unwrap();
    host.check_new_run("shift-keeper", "run-2").unwrap();
}

/// The attack: a member not in `mesh.accept_runs.from` probes which of its spec's keys would pass.
#[tokio::test]
async fn a_node_not_in_from_is_told_only_that_before_its_spec_is_looked_at() {
    let dir = tempfile::tempdir().unwrap();
    let host = placed_host(
        dir.path(),
        "mesh:\n  trust_domain: plant\n  accept_runs:\n    from: [node-a]\n    agents: [hidden]\n",
    );
    let spec = AgentSpec::parse(
        "agent_id: probe\nmodel_config:\n  path: /etc/passwd\ncapabilities:\n  - name: shell\n    endpoint: \"mcp+stdio:sh\"\n",
        Path::new("spec"),
    )
    .unwrap();
    let refusal = match host.placed_spec(spec.clone(), "node-c") {
        Err(edgewise_agent::AgentError::PlacedRefused(r)) => r,
        other => panic!("expected a refusal, got {other:?}"),
    };
    assert_eq!(refusal.reasons(), ["node 'node-c' may not place runs here"]);
    // node-a is listed: it gets every reason, none echoing the lists.
    let reasons = match host.placed_spec(spec, "node-a") {
        Err(edgewise_agent::AgentError::PlacedRefused(r)) => r.reasons(),
        other => panic!("expected a refusal, got {other:?}"),
    };
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("mesh.accept_runs.agents")),
        "{reasons:#?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("model_config.path")),
        "{reasons:#?}"
    );
    assert!(
        reasons
            .iter()
            .all(|r| !r.contains("hidden") && !r.contains("node-a")),
        "{reasons:#?}"
    );
}

/// A placed spec's unset limits take the ceilings, and `builtin:http_request` reaches only the
/// schemes and destinations `mesh.accept_runs.policy` lists: not this node's LAN.
#[tokio::test]
async fn a_placed_runs_http_request_keeps_to_the_placed_schemes_and_destinations() {
    let dir = tempfile::tempdir().unwrap();
    let host = placed_host(
        dir.path(),
        "mesh:\n  trust_domain: plant\n  accept_runs:\n    builtins: [http_request]\n    policy:\n      schemes: [builtin, https]\n",
    );
    let spec = AgentSpec::parse(
        "agent_id: a\nruntime: {type: native}\ncapabilities:\n  - name: fetch\n    endpoint: \"builtin:http_request\"\n",
        Path::new("spec"),
    )
    .unwrap();
    let spec = host.placed_spec(spec, "node-a").unwrap();
    assert_eq!(spec.model_config.max_tokens, Some(512));
    assert_eq!(spec.model_config.context_window, Some(8192));
    let (tools, _) = host.placed_tools(&spec, "node-a").await.unwrap();
    let m = refused(
        tools
            .call("fetch", &json!({"url": "http://10.0.0.1/x"}))
            .await,
    );
    assert!(m.contains("http URLs are not allowed here"), "{m}");
    let m = refused(
        tools
            .call("fetch", &json!({"url": "https://10.0.0.1/x"}))
            .await,
    );
    assert!(
        m.contains("mesh.accept_runs.policy.local_destinations"),
        "{m}"
    );
}
