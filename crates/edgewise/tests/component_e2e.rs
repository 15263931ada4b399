//! Wasm components end to end through the real binary: install, call, refuse an incompatible
//! WIT version and a tampered signed component, and an agent calling a component tool with the
//! real default model. Components come from `make components` (EDGEWISE_COMPONENTS).

mod support;

use sha2::Digest;
use std::path::{Path, PathBuf};
use std::process::Output;
use support::{edgewise, home, http, http_bytes, text, Serve};

use serde_json::Value;

fn component(name: &str) -> PathBuf {
    edgewise_sandbox::built_guest(name).unwrap_or_else(|e| panic!("{e}"))
}

/// The binary with `args`, to completion.
fn run(home: &Path, args: &[&str]) -> Output {
    edgewise(home).args(args).output().unwrap()
}

#[test]
fn components_install_call_and_refuse_bad_versions_and_tampering() {
    let home = home();
    let h = home.path();
    let calc = component("calc");
    let out = run(h, &["component", "add", calc.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("tool calculate"),
        "{}",
        text(&out)
    );
    let out = run(
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
    let out = run(h, &["component", "list"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("calc"),
        "{}",
        text(&out)
    );

    // Built against edgewise:agent@0.2.0: refused, naming the interface and both versions.
    let future = component("future_tool");
    let out = run(
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
    assert!(!String::from_utf8_lossy(&run(h, &["component", "list"]).stdout).contains("future"));

    // Signatures: with trusted keys, unsigned is refused, signed loads, tampered is refused.
    let key = h.join("signing.key");
    let out = run(h, &["models", "keygen", "--out", key.to_str().unwrap()]);
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
        run(
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
    let out = run(
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
    let out = edgewise(h)
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

/// `wasm` with a custom section appended: the same behaviour, another version (sha256).
fn another_version(wasm: &[u8], tag: &str) -> Vec<u8> {
    fn leb128(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let name = b"edgewise-test-version";
    let mut contents = Vec::new();
    leb128(name.len(), &mut contents);
    contents.extend_from_slice(name);
    contents.extend_from_slice(tag.as_bytes());
    let mut out = wasm.to_vec();
    out.push(0);
    leb128(contents.len(), &mut out);
    out.extend_from_slice(&contents);
    out
}

fn node_config(home: &Path) -> PathBuf {
    let config = home.join("node.yaml");
    std::fs::write(&config, "threads: 2\nparallel: 2\nmqtt_listen: \"\"\n").unwrap();
    config
}

fn json_body(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// One call of calc through the API: (status, output, sha256 of the version that answered).
fn call_calc(port: u16) -> (u16, String, String) {
    let (status, _, body) = http(
        port,
        "POST",
        "/v1/components/calc/tools/calculate",
        r#"{"expression": "6*7"}"#,
    );
    let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    (
        status,
        v["output"].as_str().unwrap_or(&body).to_owned(),
        v["sha256"].as_str().unwrap_or_default().to_owned(),
    )
}

#[test]
fn a_component_replaced_under_load_answers_every_call() {
    use base64::Engine as _;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    let home = home();
    let h = home.path();
    let serve = Serve::start(h, &node_config(h));
    let port = serve.port;
    let v1 = std::fs::read(component("calc")).unwrap();
    let v2 = another_version(&v1, "2");
    let sha = |b: &[u8]| hex::encode(sha2::Sha256::digest(b));
    let (sha1, sha2) = (sha(&v1), sha(&v2));

    // First install: the raw bytes.
    let (status, _, body) = http_bytes(port, "PUT", "/v1/components/calc", &v1, "application/wasm");
    assert_eq!(status, 201, "{body}");
    assert_eq!(json_body(&body)["sha256"], sha1.as_str());
    assert_eq!(json_body(&body)["tools"][0]["name"], "calculate");

    // Four clients call in a loop (bounded in count and time) while the component is replaced
    // twice: through the API (JSON form) and through the CLI from another process.
    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicUsize::new(0));
    let log: Arc<Mutex<Vec<(Instant, u16, String, String)>>> = Arc::default();
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (stop, calls, log) = (stop.clone(), calls.clone(), log.clone());
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(120);
                for _ in 0..5_000 {
                    if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                        break;
                    }
                    let started = Instant::now();
                    let (status, output, sha) = call_calc(port);
                    log.lock().unwrap().push((started, status, output, sha));
                    calls.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let wait_calls = |n: usize| {
        let target = calls.load(Ordering::Relaxed) + n;
        let deadline = Instant::now() + Duration::from_secs(60);
        while calls.load(Ordering::Relaxed) < target && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    };

    wait_calls(100);
    let body = serde_json::json!({
        "wasm_base64": base64::engine::general_purpose::STANDARD.encode(&v2),
        "manifest": {"description": "calc, second build", "grants": {"time_limit": "2s"}},
    })
    .to_string();
    let (status, _, resp) = http(port, "PUT", "/v1/components/calc", &body);
    assert_eq!(status, 200, "{resp}");
    assert_eq!(json_body(&resp)["sha256"], sha2.as_str());
    let swapped_to_v2 = Instant::now();

    wait_calls(100);
    let v1_file = h.join("calc.wasm");
    std::fs::write(&v1_file, &v1).unwrap();
    let reinstalling = Instant::now();
    let out = run(
        h,
        &[
            "component",
            "add",
            v1_file.to_str().unwrap(),
            "--name",
            "calc",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let swapped_to_v1 = Instant::now();

    wait_calls(100);
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }

    let log = log.lock().unwrap();
    let failed: Vec<_> = log
        .iter()
        .filter(|(_, status, output, _)| *status != 200 || output != "42")
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} calls failed, e.g. {:?}",
        failed.len(),
        log.len(),
        failed.first()
    );
    // A call that started after a replacement returned runs the new version (during the CLI's
    // run either may answer).
    for (started, _, _, sha) in log.iter() {
        if *started > swapped_to_v1 {
            assert_eq!(
                *sha, sha1,
                "a call after the CLI reinstall ran another version"
            );
        } else if *started > swapped_to_v2 && *started < reinstalling {
            assert_eq!(*sha, sha2, "a call after the PUT ran another version");
        }
    }
    let served_by = |s: &str| log.iter().filter(|(_, _, _, sha)| sha == s).count();
    eprintln!(
        "{} calls, none failed: {} by the first version, {} by the second",
        log.len(),
        served_by(&sha1),
        served_by(&sha2)
    );
    assert!(
        served_by(&sha2) >= 100,
        "the second version served {}",
        served_by(&sha2)
    );

    // The API's own answers to mistakes.
    let (status, _, body) = http(port, "POST", "/v1/components/calc/tools/nope", "{}");
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("offers: calculate"), "{body}");
    let (status, _, body) = http(
        port,
        "POST",
        "/v1/components/calc/events",
        r#"{"payload": "x"}"#,
    );
    assert_eq!(status, 422, "{body}");
    let (status, _, body) = http(port, "GET", "/v1/components/missing", "");
    assert_eq!(status, 404, "{body}");
    let (status, _, body) = http(port, "DELETE", "/v1/components/calc", "");
    assert_eq!(status, 200, "{body}");
    assert_eq!(call_calc(port).0, 404);
}

#[test]
fn sensor_handler_under_serve_leaves_its_prediction_in_kv_and_the_plant_document() {
    use base64::Engine as _;

    let home = home();
    let h = home.path();
    let serve = Serve::start(h, &node_config(h));
    let port = serve.port;
    let wasm = std::fs::read(component("sensor_handler")).unwrap();
    let body = serde_json::json!({
        "wasm_base64": base64::engine::general_purpose::STANDARD.encode(&wasm),
        "manifest": {
            "description": "seed 002's sensor handler",
            "grants": {
                "interfaces": ["logging", "inference", "keyvalue"],
                "kv_buckets": ["predictions", "doc:plant"],
                "time_limit": "120s"
            }
        },
    })
    .to_string();
    let (status, _, resp) = http(port, "PUT", "/v1/components/sensor-handler", &body);
    assert_eq!(status, 201, "{resp}");
    assert_eq!(json_body(&resp)["kind"], "agent");

    // The shared document already has a status for the boiler, set through the API.
    let (status, _, resp) = http(
        port,
        "PATCH",
        "/v1/docs/plant",
        r#"{"set": {"boiler-7/status": "unknown", "zone4/valve": "open"}}"#,
    );
    assert!(status == 200 || status == 204, "{status} {resp}");

    let event = r#"{"source": "line-3", "payload": {"sensor": "boiler-7", "temperature_c": 131.0, "limit_c": 100.0}}"#;
    let (status, _, resp) = http(port, "POST", "/v1/components/sensor-handler/events", event);
    assert_eq!(status, 200, "{resp}");
    let output = json_body(&resp)["output"].as_str().unwrap().to_owned();
    let prediction = json_body(&output);
    assert!(
        ["normal", "warning", "critical"].contains(&prediction["status"].as_str().unwrap_or("")),
        "{prediction}"
    );
    assert!(prediction["reason"].is_string(), "{prediction}");

    // Through its `doc:plant` bucket the component read the old status and wrote the new one
    // into the CRDT document, as JSON scalars; the key it did not touch is unchanged.
    let (status, _, resp) = http(port, "GET", "/v1/docs/plant", "");
    assert_eq!(status, 200, "{resp}");
    let plant = json_body(&resp);
    let entries = &plant["entries"];
    assert_eq!(
        entries["boiler-7/status"]["value"], prediction["status"],
        "{plant}"
    );
    assert_eq!(
        entries["boiler-7/previous_status"]["value"], "unknown",
        "{plant}"
    );
    assert_eq!(entries["zone4/valve"]["value"], "open", "{plant}");

    // The node's KV holds it, in the component's own bucket namespace.
    drop(serve);
    let out = run(
        h,
        &["kv", "get", "wasm:sensor-handler:predictions", "boiler-7"],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), output);
}
