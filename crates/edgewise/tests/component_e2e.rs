//! Wasm components end to end through the real binary: install, call, refuse an incompatible
//! WIT version and a tampered signed component, and an agent calling a component tool with the
//! real default model. Components come from `make components` (EDGEWISE_COMPONENTS).

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use support::text;

use serde_json::Value;

fn component(name: &str) -> PathBuf {
    let dir = std::env::var_os("EDGEWISE_COMPONENTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../components/target/wasm32-wasip2/release")
        });
    let path = dir.join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: run `make components`",
        path.display()
    );
    path
}

/// A fresh data dir sharing the pulled models.
fn home() -> tempfile::TempDir {
    let models = PathBuf::from(
        std::env::var_os("EDGEWISE_HOME").expect("EDGEWISE_HOME must point at the pulled models"),
    )
    .join("models");
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(&models, dir.path().join("models")).unwrap();
    dir
}

fn edgewise(home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_edgewise"))
        .env("EDGEWISE_HOME", home)
        .env_remove("EDGEWISE_CONFIG")
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn components_install_call_and_refuse_bad_versions_and_tampering() {
    let home = home();
    let h = home.path();
    let calc = component("calc");
    let out = edgewise(h, &["component", "add", calc.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("tool calculate"),
        "{}",
        text(&out)
    );
    let out = edgewise(
        h,
        &[
            "component",
            "call",
            "calc",
            "calculate",
            r#"{"expression": "6*7"}"#,
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42");
    let out = edgewise(h, &["component", "list"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("calc"),
        "{}",
        text(&out)
    );

    // Built against edgewise:agent@0.2.0: refused, naming the interface and both versions.
    let future = component("future_tool");
    let out = edgewise(
        h,
        &[
            "component",
            "add",
            future.to_str().unwrap(),
            "--name",
            "future",
        ],
    );
    assert!(!out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("edgewise:agent/") && err.contains("@0.2.0") && err.contains("@0.1.0"),
        "{}",
        text(&out)
    );
    assert!(
        !String::from_utf8_lossy(&edgewise(h, &["component", "list"]).stdout).contains("future")
    );

    // Signatures: with trusted keys, unsigned is refused, signed loads, tampered is refused.
    let key = h.join("signing.key");
    let out = edgewise(h, &["models", "keygen", "--out", key.to_str().unwrap()]);
    let public_key = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("public key: ").map(str::to_owned))
        .unwrap_or_else(|| panic!("{}", text(&out)));
    std::fs::write(
        h.join("config.yaml"),
        format!("trusted_keys: [\"{public_key}\"]\n"),
    )
    .unwrap();
    let call = || {
        edgewise(
            h,
            &[
                "component",
                "call",
                "calc",
                "calculate",
                r#"{"expression": "1+1"}"#,
            ],
        )
    };
    let out = call();
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("unsigned"),
        "{}",
        text(&out)
    );
    let out = edgewise(
        h,
        &["component", "sign", "calc", "--key", key.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", text(&out));
    let out = call();
    assert!(out.status.success(), "{}", text(&out));
    let installed = h.join("components/calc/component.wasm");
    let mut bytes = std::fs::read(&installed).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(&installed, bytes).unwrap();
    let out = call();
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("altered after signing"),
        "{}",
        text(&out)
    );
}

#[test]
fn an_agent_calls_a_component_tool_with_the_real_model() {
    let home = home();
    let h = home.path();
    std::fs::copy(component("calc"), h.join("calc.wasm")).unwrap();
    let spec = h.join("calc-agent.yaml");
    std::fs::write(
        &spec,
        r#"agent_id: "calc-agent"
version: "1"
runtime:
  type: wasm-edge
  memory_limit: 64MiB
capabilities:
  - name: calculate
    endpoint: "wasm:calc.wasm"
    description: "Evaluate an arithmetic expression exactly."
instructions: "You are a careful assistant. Use the calculate tool for arithmetic, then answer with the number."
limits:
  min_tool_calls: 1
  max_steps: 4
"#,
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_edgewise"))
        .env("EDGEWISE_HOME", h)
        .env_remove("EDGEWISE_CONFIG")
        .args(["agent", "run", "--json", "--seed", "1"])
        .arg(&spec)
        .arg("What is 1234 * 5678?")
        .output()
        .unwrap();
    let outcome: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON outcome ({e}): {}", text(&out)));
    let steps = outcome["steps"].as_array().cloned().unwrap_or_default();
    let call = steps
        .iter()
        .find(|s| s["tool"] == "calculate" && s["decision"] == "call")
        .unwrap_or_else(|| panic!("no calculate call: {outcome}"));
    assert_eq!(call["observation"], "7006652", "{outcome}");
    assert_eq!(outcome["status"], "completed", "{outcome}");
}
