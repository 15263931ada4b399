//! What a signed component may do, end to end through the real binary: a publisher signs a
//! component with its grants (`component sign`), a node that trusts the publisher's key takes it
//! over `PUT /v1/components/{name}` only with the grants that were signed, and an agent spec
//! may narrow those grants but not widen them. Components come from `make components`
//! (EDGEWISE_COMPONENTS).

mod support;

use std::path::{Path, PathBuf};
use std::process::Output;

use base64::Engine as _;
use serde_json::{json, Value};
use support::{edgewise, http, text, Serve};

fn component(name: &str) -> PathBuf {
    edgewise_sandbox::built_guest(name).unwrap_or_else(|e| panic!("{e}"))
}

fn run(home: &Path, args: &[&str]) -> Output {
    edgewise(home).args(args).output().unwrap()
}

fn ok(out: Output) -> String {
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A data dir whose pulled models are signed by `key`: model files are links to the pulled ones
/// (never written), each manifest a copy, each signature this dir's own.
fn home_with_models_signed_by(key: &Path) -> tempfile::TempDir {
    let pulled = PathBuf::from(
        std::env::var_os("EDGEWISE_HOME").expect("EDGEWISE_HOME must point at the pulled models"),
    )
    .join("models");
    assert!(
        pulled.join("qwen2.5-coder-0.5b-instruct").exists(),
        "run `make models` first"
    );
    let home = tempfile::tempdir().unwrap();
    for model in std::fs::read_dir(&pulled).unwrap().flatten() {
        if !model.path().join("manifest.json").exists() {
            continue;
        }
        let dir = home.path().join("models").join(model.file_name());
        std::fs::create_dir_all(&dir).unwrap();
        for f in std::fs::read_dir(model.path()).unwrap().flatten() {
            match f.file_name().to_str() {
                Some("signature.json") => {}
                Some("manifest.json") => {
                    std::fs::copy(f.path(), dir.join("manifest.json")).unwrap();
                }
                _ => std::os::unix::fs::symlink(f.path(), dir.join(f.file_name())).unwrap(),
            }
        }
        let name = model.file_name().to_string_lossy().into_owned();
        ok(run(
            home.path(),
            &["models", "sign", &name, "--key", key.to_str().unwrap()],
        ));
    }
    support::write_admin_token(home.path(), support::TEST_ADMIN_TOKEN);
    home
}

/// The publisher: installs the component with `grants` (YAML under `grants:`) beside it, signs
/// it, and hands out the signature.
fn publish(publisher: &Path, key: &Path, grants: &str) -> Value {
    let wasm = publisher.join("probe.wasm");
    std::fs::copy(component("misbehave"), &wasm).unwrap();
    std::fs::write(
        publisher.join("probe.component.yaml"),
        format!("description: probe\ngrants:\n{grants}"),
    )
    .unwrap();
    ok(run(
        publisher,
        &["component", "add", wasm.to_str().unwrap()],
    ));
    ok(run(
        publisher,
        &["component", "sign", "probe", "--key", key.to_str().unwrap()],
    ));
    let sig = std::fs::read_to_string(publisher.join("components/probe/signature.json")).unwrap();
    serde_json::from_str(&sig).unwrap()
}

fn body_of(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

fn spec_with_grants(interfaces: &str) -> String {
    format!(
        r#"agent_id: "prober"
version: "1"
runtime:
  type: wasm-edge
capabilities:
  - name: probe
    endpoint: "wasm:probe"
    grants:
      interfaces: {interfaces}
instructions: "Use the probe tools."
"#
    )
}

#[test]
fn a_signed_components_grants_change_only_with_a_new_signature_and_specs_only_narrow_them() {
    let publisher = tempfile::tempdir().unwrap();
    let p = publisher.path();
    let key = p.join("signing.key");
    let out = ok(run(
        p,
        &["models", "keygen", "--out", key.to_str().unwrap()],
    ));
    let public_key = out
        .lines()
        .find_map(|l| l.strip_prefix("public key: "))
        .unwrap_or_else(|| panic!("no public key: {out}"))
        .to_owned();

    let narrow_yaml = "  interfaces: [logging]\n  time_limit: 2s\n";
    let narrow = json!({"interfaces": ["logging"], "time_limit": "2s"});
    let wide_yaml = "  interfaces: [logging, tools, inference]\n  time_limit: 2s\n";
    let wide = json!({"interfaces": ["logging", "tools", "inference"], "time_limit": "2s"});
    let narrow_sig = publish(p, &key, narrow_yaml);

    let home = home_with_models_signed_by(&key);
    let h = home.path();
    let config = h.join("node.yaml");
    std::fs::write(
        &config,
        format!("threads: 2\nparallel: 2\nmqtt_listen: \"\"\ntrusted_keys: [\"{public_key}\"]\n"),
    )
    .unwrap();
    let serve = Serve::start(h, &config);
    let port = serve.port;
    let wasm = base64::engine::general_purpose::STANDARD
        .encode(std::fs::read(component("misbehave")).unwrap());
    let put = |grants: &Value, signature: &Value| {
        let body = json!({
            "wasm_base64": wasm,
            "manifest": {"description": "probe", "grants": grants},
            "signature": signature,
        });
        http(port, "PUT", "/v1/components/probe", &body.to_string())
    };
    let installed_interfaces = || {
        let (status, _, body) = http(port, "GET", "/v1/components/probe", "");
        assert_eq!(status, 200, "{body}");
        body_of(&body)["grants"]["interfaces"].clone()
    };

    // Installed with the grants that were signed.
    let (status, _, body) = put(&narrow, &narrow_sig);
    assert_eq!(status, 201, "{body}");
    assert_eq!(installed_interfaces(), json!(["logging"]));

    // The same bytes and signature with wider grants: refused, and the narrow version stays.
    let (status, _, body) = put(&wide, &narrow_sig);
    assert_eq!(status, 422, "{body}");
    let message = body_of(&body)["error"]["message"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    assert!(
        message.contains("signature check failed") && message.contains("new signature"),
        "{body}"
    );
    assert_eq!(installed_interfaces(), json!(["logging"]));

    // The publisher signs the wider grants: that signature installs them.
    let wide_sig = publish(p, &key, wide_yaml);
    let (status, _, body) = put(&wide, &wide_sig);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        installed_interfaces(),
        json!(["logging", "inference", "tools"])
    );

    // A spec asking for more than the signed grants is refused, naming the capability and the
    // key; one asking for less registers.
    let (status, _, body) = http(
        port,
        "POST",
        "/v1/agents",
        &spec_with_grants("[logging, inference, events]"),
    );
    assert!((400..500).contains(&status), "{status} {body}");
    let message = body_of(&body)["error"]["message"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    assert!(
        message.contains("capability 'probe'")
            && message.contains("grants.interfaces")
            && message.contains("'events'")
            && message.contains("only narrow"),
        "{body}"
    );
    let (status, _, body) = http(port, "GET", "/v1/agents", "");
    assert!(status == 200 && !body.contains("prober"), "{body}");
    let (status, _, body) = http(port, "POST", "/v1/agents", &spec_with_grants("[logging]"));
    assert_eq!(status, 201, "{body}");
    drop(serve);

    // On disk too: the publisher's node, now trusting its key, stops loading the component once
    // its installed manifest is widened after signing.
    std::fs::write(
        p.join("config.yaml"),
        format!("trusted_keys: [\"{public_key}\"]\n"),
    )
    .unwrap();
    let call = || {
        run(
            p,
            &["component", "call", "probe", "echo", r#"{"target": "hi"}"#],
        )
    };
    assert_eq!(ok(call()).trim(), "hi");
    std::fs::write(
        p.join("components/probe/manifest.yaml"),
        "description: probe\ngrants:\n  interfaces: [logging, tools, inference, events]\n  time_limit: 2s\n",
    )
    .unwrap();
    let out = call();
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("new signature"),
        "{}",
        text(&out)
    );
}
