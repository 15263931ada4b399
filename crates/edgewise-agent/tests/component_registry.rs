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

/// An agent spec may narrow an installed component's grants, never widen them: the refusal
/// names the capability and the spec key. With trusted keys, a `.wasm` file named by a spec
/// (unsigned, its manifest unsigned) is not loaded at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spec_narrows_a_components_grants_and_cannot_widen_them() {
    use edgewise_agent::AgentHost;
    use edgewise_core::{AgentSpec, NodeConfig};

    let tmp = tempfile::tempdir().unwrap();
    let data = DataDir::new(tmp.path());
    let host = AgentHost::open(&data, NodeConfig::default()).unwrap();
    let manifest: ComponentManifest =
        serde_yaml::from_str("grants:\n  interfaces: [tools]\n  time_limit: 2s\n").unwrap();
    host.components
        .install("probe", &guest("misbehave"), &manifest, None)
        .unwrap();
    let spec = |grants: &str| -> AgentSpec {
        serde_yaml::from_str(&format!(
            r#"agent_id: probe
version: "1"
runtime:
  type: wasm-edge
capabilities:
  - name: current_time
    endpoint: "builtin:current_time"
  - name: probe
    endpoint: "wasm:probe"
    grants: {grants}
"#
        ))
        .unwrap()
    };
    let args = serde_json::json!({ "target": "current_time" });

    // The manifest's grants: the component may call the agent's tools.
    let (tools, _) = host.tools(&spec("null"), tmp.path()).await.unwrap();
    assert!(tools.call("relay", &args).await.unwrap().contains("20"));

    // Narrowed by the spec to nothing: the call is denied.
    let (tools, _) = host.tools(&spec("{}"), tmp.path()).await.unwrap();
    let err = tools.call("relay", &args).await.unwrap_err().to_string();
    assert!(err.contains("not granted the tools interface"), "{err}");

    for (grants, key) in [
        ("{interfaces: [tools, inference]}", "grants.interfaces"),
        (
            "{interfaces: [tools], time_limit: 10s}",
            "grants.time_limit",
        ),
        (r#"{kv_buckets: ["doc:plant"]}"#, "grants.kv_buckets"),
    ] {
        let err = host
            .tools(&spec(grants), tmp.path())
            .await
            .err()
            .unwrap_or_else(|| panic!("{grants} widened the manifest's grants"))
            .to_string();
        assert!(
            err.contains("capability 'probe'") && err.contains(key) && err.contains("only narrow"),
            "{grants}: {err}"
        );
    }

    // A node that requires signatures loads no component file named by a spec.
    let config = NodeConfig {
        trusted_keys: vec!["ab".repeat(32)],
        ..NodeConfig::default()
    };
    let signed_only = tempfile::tempdir().unwrap();
    let host = AgentHost::open(&DataDir::new(signed_only.path()), config).unwrap();
    let spec: AgentSpec = serde_yaml::from_str(&format!(
        "agent_id: f\nversion: \"1\"\nruntime:\n  type: wasm-edge\ncapabilities:\n  - name: calc\n    endpoint: \"wasm:{}\"\n",
        guest("calc").display()
    ))
    .unwrap();
    let err = host
        .tools(&spec, signed_only.path())
        .await
        .err()
        .expect("an unsigned file loaded on a node that requires signatures")
        .to_string();
    assert!(err.contains("only installed, signed components"), "{err}");
}

/// A signed component's grants are part of what was signed: installing the same bytes with
/// wider grants and the old signature is refused; a signature over the new grants installs.
#[test]
fn reinstalling_with_other_grants_needs_a_new_signature() {
    use edgewise_core::signing::{self, Artifact};

    let tmp = tempfile::tempdir().unwrap();
    let key_file = tmp.path().join("signing.key");
    std::fs::write(&key_file, "03".repeat(32)).unwrap();
    let key = signing::load_signing_key(&key_file).unwrap();
    let registry = ComponentRegistry::new(
        &DataDir::new(tmp.path()),
        vec![signing::public_key_hex(&key)],
    );
    let wasm = guest("calc");
    let bytes = std::fs::read(&wasm).unwrap();
    let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
    let sign = |m: &ComponentManifest| {
        signing::sign(
            &key,
            Artifact::Component { grants: &m.grants },
            "calc",
            &sha,
            bytes.len() as u64,
        )
    };
    let narrow = ComponentManifest::default();
    let wide: ComponentManifest =
        serde_yaml::from_str("grants:\n  interfaces: [inference, tools]\n").unwrap();
    let old = sign(&narrow);
    registry
        .install("calc", &wasm, &narrow, Some(&old))
        .unwrap();
    let err = registry
        .install("calc", &wasm, &wide, Some(&old))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("signature check failed") && err.contains("grants"),
        "{err}"
    );
    // Still the narrow version.
    let now = registry
        .current(&ComponentSource::installed("calc"))
        .unwrap();
    assert!(now.grants.interfaces.is_empty(), "{:?}", now.grants);

    let (_, loaded) = registry
        .install("calc", &wasm, &wide, Some(&sign(&wide)))
        .unwrap();
    assert_eq!(loaded.grants.interfaces, wide.grants.interfaces);
}
