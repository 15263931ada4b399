//! The component registry with real guest components (`make components`): a version a call holds
//! keeps working after it was replaced twice and its files are gone, while new lookups get the
//! newest version.

use std::sync::Arc;

use edgewise_agent::components::{ComponentRegistry, ComponentSource};
use edgewise_core::{ComponentManifest, DataDir};
use edgewise_sandbox::NoServices;

fn guest(name: &str) -> std::path::PathBuf {
    edgewise_sandbox::built_guest(name).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn a_held_version_finishes_after_replacements_and_new_lookups_get_the_newest() {
    let tmp = tempfile::tempdir().unwrap();
    let registry = ComponentRegistry::new(&DataDir::new(tmp.path()), Vec::new());
    let m = ComponentManifest::default();
    let source = ComponentSource::installed("tools");

    let (_, first) = registry.install("tools", &guest("calc"), &m, None).unwrap();
    let in_flight = registry.current(&source).unwrap();
    assert!(Arc::ptr_eq(&first, &in_flight));

    // Replaced twice: the first version's directory is pruned by the second replacement.
    registry
        .install("tools", &guest("text_tools"), &m, None)
        .unwrap();
    let (_, third) = registry
        .install("tools", &guest("misbehave"), &m, None)
        .unwrap();
    let versions = tmp.path().join("components/.versions/tools");
    assert_eq!(std::fs::read_dir(&versions).unwrap().count(), 2);

    let out = in_flight
        .invoke(
            "calculate",
            r#"{"expression": "6*7"}"#,
            Arc::new(NoServices),
        )
        .unwrap();
    assert_eq!(out, "42");
    let now = registry.current(&source).unwrap();
    assert_eq!(now.sha256, third.sha256);
    assert!(
        now.tools.iter().any(|t| t.name == "echo"),
        "{:?}",
        now.tools
    );
    // Unchanged files: the same loaded version, not a reload.
    assert!(Arc::ptr_eq(&now, &registry.current(&source).unwrap()));

    registry.remove("tools").unwrap();
    let err = registry.current(&source).unwrap_err().to_string();
    assert!(err.contains("no component named 'tools'"), "{err}");
}

/// A tool component granted `tools` and `inference` calls the agent's other tools (not other
/// components), audited, and embeds with the node's embedding model (the real MiniLM).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_calls_the_agents_tools_and_embeds() {
    use edgewise_agent::AgentHost;
    use edgewise_core::{AgentSpec, NodeConfig};

    let tmp = tempfile::tempdir().unwrap();
    let data = DataDir::new(tmp.path());
    let mut host = AgentHost::open(&data, NodeConfig::default()).unwrap();
    let models = std::path::PathBuf::from(
        std::env::var_os("EDGEWISE_HOME").expect("EDGEWISE_HOME must point at the pulled models"),
    )
    .join("models/all-minilm-l6-v2");
    assert!(models.exists(), "run `make models` first");
    host.embedder = Some(Arc::new(edgewise_infer::LazyEmbedder::new(
        "all-minilm-l6-v2".into(),
        models,
    )));
    let spec: AgentSpec = serde_yaml::from_str(&format!(
        r#"agent_id: probe
version: "1"
runtime:
  type: wasm-edge
capabilities:
  - name: current_time
    endpoint: "builtin:current_time"
  - name: probe
    endpoint: "wasm:{}"
    grants:
      interfaces: [tools, inference]
"#,
        guest("misbehave").display()
    ))
    .unwrap();
    let (tools, _ctx) = host.tools(&spec, tmp.path()).await.unwrap();
    let args = |t: &str| serde_json::json!({ "target": t });

    let now = tools.call("relay", &args("current_time")).await.unwrap();
    assert!(now.contains("20"), "current_time answered {now}");
    let err = tools
        .call("relay", &args("echo"))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("there is no tool named 'echo'"), "{err}");
    assert_eq!(
        tools
            .call("embed", &args("pressure is high"))
            .await
            .unwrap(),
        "384"
    );

    let log = std::fs::read_to_string(data.audit_log()).unwrap();
    let calls: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|r| r["record"].clone())
        .filter(|r| r["kind"] == "component_tool_call")
        .collect();
    assert_eq!(calls.len(), 2, "{log}");
    assert_eq!(calls[0]["tool"], "current_time");
    assert_eq!(calls[0]["decision"], "call");
    assert_eq!(calls[1]["decision"], "refused");
}
