//! The node's agent policy against a real `edgewise serve`: a spec asking for more than the node
//! allows (a command to start, `root: /`, a socket, egress, absurd numbers) is refused at
//! registration with its position and the policy key to change, and nothing of it starts; an
//! agent without egress cannot reach this node's own API or cloud metadata, and the refusal is
//! on the audit log.

mod support;

use std::path::Path;
use std::sync::Mutex;

use serde_json::Value;
use support::{edgewise, home, http, text, Serve};

static MODEL_LOCK: Mutex<()> = Mutex::new(());

fn json_of(port: u16, method: &str, path: &str, body: &str) -> (u16, Value) {
    let (status, _, body) = http(port, method, path, body);
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

fn message(v: &Value) -> String {
    v["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// A spec whose capability entry (after `capabilities:`) is `capability`; its first line is
/// line 5 of the spec, so the entry's `endpoint` is on line 6, column 5.
fn spec_with(capability: &str) -> String {
    format!(
        "agent_id: \"probe\"\nversion: \"1\"\nruntime: {{type: native}}\ncapabilities:\n{capability}"
    )
}

fn config(home: &Path, extra: &str) -> std::path::PathBuf {
    let path = home.join("config.yaml");
    std::fs::write(
        &path,
        format!("threads: 2\nparallel: 2\nmqtt_listen: \"\"\n{extra}"),
    )
    .unwrap();
    path
}

#[test]
fn specs_beyond_the_node_policy_are_refused_at_registration_and_nothing_starts() {
    let _l = MODEL_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let home = home();
    let marker = home.path().join("command-ran");
    let command = format!("sh -c 'touch {}'", marker.display());
    let mcp = spec_with(&format!(
        "  - name: shell\n    endpoint: \"mcp+stdio:{command}\"\n"
    ));
    let cfg = config(home.path(), "");
    let server = Serve::start(home.path(), &cfg);
    let port = server.port;

    let cases = [
        (mcp.clone(), "spec:6:5:", "agent_policy.mcp_commands"),
        (
            spec_with("  - name: everything\n    endpoint: \"builtin:read_file\"\n    root: /\n"),
            "spec:7:5:",
            "agent_policy.file_roots",
        ),
        (
            spec_with("  - name: docker\n    endpoint: \"unix:///var/run/docker.sock\"\n"),
            "spec:6:5:",
            "agent_policy.unix_sockets",
        ),
        (
            spec_with(
                "  - name: valves\n    endpoint: \"mqtt://local-broker:1883/plant/valves/set\"\n",
            ),
            "spec:6:5:",
            "agent_policy.mqtt_topics",
        ),
        (
            format!(
                "{}workflow_policy:\n  egress_allowed: true\n",
                spec_with("  - name: t\n    endpoint: \"builtin:current_time\"\n")
            ),
            "spec:8:3:",
            "agent_policy.allow_egress",
        ),
        (
            format!(
                "{}memory:\n  knowledge:\n    collection: notes\n    passages: 10000000000\n",
                spec_with("  - name: t\n    endpoint: \"builtin:current_time\"\n")
            ),
            "spec:10:5:",
            "passages is 10000000000; it must be from 1 to 100",
        ),
        (
            format!(
                "{}limits:\n  max_steps: 4000000000\n",
                spec_with("  - name: t\n    endpoint: \"builtin:current_time\"\n")
            ),
            "spec:8:3:",
            "max_steps is 4000000000",
        ),
    ];
    for (spec, at, why) in &cases {
        let (status, err) = json_of(port, "POST", "/v1/agents", spec);
        assert_eq!(status, 422, "{spec}\n{err}");
        let m = message(&err);
        assert!(
            m.contains(at) && m.contains(why),
            "{spec}\nexpected {at} … {why}: {m}"
        );
    }
    // The node is up, nothing was registered, and the command never ran.
    assert_eq!(http(port, "GET", "/health", "").0, 200);
    let (_, list) = json_of(port, "GET", "/v1/agents", "");
    assert_eq!(list["data"], serde_json::json!([]), "{list}");
    assert!(!marker.exists(), "the refused spec's command ran");
    // A spec within the policy registers: the refusals above are the policy's, not the node's.
    let fine = spec_with("  - name: t\n    endpoint: \"builtin:current_time\"\n");
    assert_eq!(json_of(port, "POST", "/v1/agents", &fine).0, 201);
    drop(server);

    // `agent run` refuses the same spec with the file's position, before the command starts.
    let file = home.path().join("shell.yaml");
    std::fs::write(&file, &mcp).unwrap();
    let run = |cfg: &Path| {
        edgewise(home.path())
            .arg("--config")
            .arg(cfg)
            .args(["agent", "run", "--json"])
            .arg(&file)
            .arg("hello")
            .output()
            .unwrap()
    };
    let out = run(&cfg);
    assert!(!out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("agent spec {}:6:5:", file.display()))
            && stderr.contains("agent_policy.mcp_commands"),
        "{}",
        text(&out)
    );
    assert!(!marker.exists(), "`agent run` started the refused command");
    // The control: a node that lists the command does start it (the marker appears), so the
    // check above would have seen a command that ran.
    let listed = config(
        home.path(),
        &format!("agent_policy:\n  mcp_commands: [\"{command}\"]\n"),
    );
    let _ = run(&listed);
    assert!(marker.exists(), "the listed command did not run");
}

const FETCHER: &str = r#"agent_id: "fetcher"
version: "1"
runtime:
  type: native
capabilities:
  - name: fetch
    endpoint: "builtin:http_request"
instructions: "You do exactly what the user asks with your tools, then answer in one line."
limits:
  min_tool_calls: 1
  max_steps: 4
workflow_policy:
  max_retries: 3
  egress_allowed: false
"#;

/// Through the whole loop (real model, real tool): `http_request` to this node's own API on
/// 127.0.0.1 and to cloud metadata at 169.254.169.254 is refused before any connection, the
/// model gets the refusal as its observation, and the audit log has it.
#[test]
fn an_agent_without_egress_cannot_reach_this_node_or_cloud_metadata_and_it_is_audited() {
    let _l = MODEL_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let home = home();
    let cfg = config(home.path(), "");
    let server = Serve::start(home.path(), &cfg);
    let port = server.port;
    let (status, reg) = json_of(port, "POST", "/v1/agents", FETCHER);
    assert_eq!(status, 201, "{reg}");
    let cases = [
        (format!("http://127.0.0.1:{port}/v1/agents"), "loopback"),
        (
            "http://169.254.169.254/latest/meta-data/".to_owned(),
            "link-local",
        ),
    ];
    let mut runs = Vec::new();
    for (url, why) in &cases {
        let task = serde_json::json!({
            "task": format!("Fetch {url} with the fetch tool."),
            "seed": 1,
            "stream": false,
        })
        .to_string();
        let (status, outcome) = json_of(port, "POST", "/v1/agents/fetcher/runs", &task);
        assert_eq!(status, 200, "{outcome}");
        let steps = outcome["steps"].as_array().cloned().unwrap_or_default();
        let refused = steps
            .iter()
            .find(|s| s["tool"] == "fetch" && s["decision"] == "refused")
            .unwrap_or_else(|| panic!("{url}: no refused fetch: {outcome}"));
        let observation = refused["observation"].as_str().unwrap_or("");
        assert!(
            observation.contains("egress denied") && observation.contains(why),
            "{url}: {observation}"
        );
        assert!(
            !steps
                .iter()
                .any(|s| s["tool"] == "fetch" && s["decision"] == "call"),
            "{url}: a fetch went through: {outcome}"
        );
        runs.push((
            outcome["run"].as_str().unwrap().to_owned(),
            refused["step"].clone(),
        ));
    }
    drop(server);
    for (run, step) in runs {
        let out = edgewise(home.path())
            .args(["audit", "show", "--json", "--run", &run])
            .output()
            .unwrap();
        let audited = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .any(|e| {
                e["step"] == step
                    && e["decision"] == "refused"
                    && e["result"].as_str().unwrap_or("").contains("egress denied")
            });
        assert!(audited, "run {run}: refusal not audited: {}", text(&out));
    }
    let out = edgewise(home.path())
        .args(["audit", "verify"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
}
