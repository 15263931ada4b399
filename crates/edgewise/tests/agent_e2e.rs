//! Agent end-to-end: the real `edgewise` binary runs the seed's factory-monitor spec against the
//! sensor simulator (a unix socket service) and a real Mosquitto broker started here, with the
//! real default model. Only loopback and temp-dir sockets are used.

mod support;

use std::io::{BufRead, BufReader, Write};

use std::net::TcpStream;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{connect, edgewise, free_port, home, http, text, Guard, Serve};

use serde_json::Value;

static MODEL_LOCK: Mutex<()> = Mutex::new(());

const SEED_SPEC: &str = "../../examples/factory-monitor/agent-config.yaml";
const TASK: &str = "Check the zone pressures with local_sensor_read. For each zone whose status is OVER LIMIT, publish an alert with alert_system that names the zone and its pressure. Then answer with a one-line summary.";

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ready() {
        assert!(Instant::now() < deadline, "{what} did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn mosquitto(port: u16) -> Guard {
    let child = Command::new("mosquitto")
        .args(["-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto (Debian package mosquitto; `make deps` installs it)");
    wait_for("mosquitto", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    Guard(child)
}

/// `mosquitto_sub` on `topic`; received lines are collected.
fn subscribe(port: u16, topic: &str) -> (Guard, Arc<Mutex<Vec<String>>>) {
    let mut child = Command::new("mosquitto_sub")
        .args(["-p", &port.to_string(), "-t", topic, "-q", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto_sub");
    let out = child.stdout.take().unwrap();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(l);
        }
    });
    // Give the subscription time to register before anything is published.
    std::thread::sleep(Duration::from_millis(500));
    (Guard(child), lines)
}

fn sensor_sim(socket: &Path) -> Guard {
    let child = Command::new("python3")
        .arg(manifest_dir().join("../../examples/factory-monitor/sensor_sim.py"))
        .arg("--socket")
        .arg(socket)
        .stdout(Stdio::null())
        .spawn()
        .expect("python3 for the sensor simulator");
    wait_for("sensor simulator", || socket.exists());
    Guard(child)
}

/// Whether a `local_sensor_read` observation of the run showed zone4 over its limit.
fn steps_read_zone4_over(outcome: &Value) -> bool {
    outcome["steps"].as_array().is_some_and(|steps| {
        steps.iter().any(|s| {
            s["tool"] == "local_sensor_read"
                && s["observation"].as_str().is_some_and(|o| {
                    o.lines()
                        .any(|l| l.contains("zone=zone4") && l.contains("OVER LIMIT"))
                })
        })
    })
}

/// Zone names in free text: `zone4`, `Zone 4`, `zone_4` → `zone4`.
fn zones_named(text: &str) -> std::collections::BTreeSet<String> {
    let lower = text.to_lowercase();
    let mut zones = std::collections::BTreeSet::new();
    let mut rest = lower.as_str();
    while let Some(i) = rest.find("zone") {
        rest = &rest[i + 4..];
        let digits: String = rest
            .trim_start_matches([' ', '_', '-'])
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        if !digits.is_empty() {
            zones.insert(format!("zone{digits}"));
        }
    }
    zones
}

/// Decimal numbers in free text.
fn numbers_in(text: &str) -> Vec<f64> {
    text.split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .filter_map(|w| w.trim_matches('.').parse::<f64>().ok())
        .collect()
}

/// Judges one factory-monitor run by its outcome, not by its tool calls: the zones over the limit
/// in what the agent read are exactly the zones alerted on, every alert names its zone's pressure
/// as read, and the answer names those zones.
fn judge_factory_run(outcome: &Value, alerts: &[String]) -> Result<(), String> {
    if outcome["status"] != "completed" {
        return Err(format!("status {}", outcome["status"]));
    }
    // zone → pressures read, and the zones read over their limit.
    let mut read: std::collections::BTreeMap<String, Vec<f64>> = Default::default();
    let mut over = std::collections::BTreeSet::new();
    let steps = outcome["steps"].as_array().cloned().unwrap_or_default();
    for step in steps
        .iter()
        .filter(|s| s["tool"] == "local_sensor_read" && s["decision"] == "call")
    {
        // The observation as the model saw it: `key=value` lines, one per reading.
        let raw = step["observation"].as_str().unwrap_or_default();
        for line in raw.lines() {
            let field = |key: &str| {
                line.trim_start_matches("- ")
                    .split_whitespace()
                    .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
                    .map(|v| v.trim_matches('"').to_owned())
            };
            let (Some(zone), Some(p), Some(limit)) = (
                field("zone"),
                field("pressure_bar").and_then(|p| p.parse::<f64>().ok()),
                field("limit_bar").and_then(|p| p.parse::<f64>().ok()),
            ) else {
                continue;
            };
            read.entry(zone.clone()).or_default().push(p);
            if p > limit {
                over.insert(zone);
            }
        }
    }
    if read.is_empty() {
        return Err("no sensor reading".into());
    }
    let mut alerted = std::collections::BTreeSet::new();
    for alert in alerts {
        let zones = zones_named(alert);
        if zones.is_empty() {
            return Err(format!("an alert names no zone: {alert}"));
        }
        for zone in &zones {
            if !over.contains(zone) {
                return Err(format!(
                    "an alert names {zone}, which is within its limit: {alert}"
                ));
            }
            let pressures = &read[zone];
            if !numbers_in(alert)
                .iter()
                .any(|n| pressures.iter().any(|p| (n - p).abs() < 0.005))
            {
                return Err(format!(
                    "the alert for {zone} does not give the pressure read {pressures:?}: {alert}"
                ));
            }
        }
        alerted.extend(zones);
    }
    if alerted != over {
        return Err(format!("alerted on {alerted:?}, over the limit: {over:?}"));
    }
    let answer = outcome["answer"].as_str().unwrap_or_default();
    if !over.is_subset(&zones_named(answer)) {
        return Err(format!("the answer does not name {over:?}: {answer}"));
    }
    Ok(())
}

#[test]
fn seed_spec_validates_unchanged_and_a_broken_one_reports_line_and_column() {
    let home = home();
    let spec = manifest_dir().join(SEED_SPEC);
    let out = edgewise(home.path())
        .args(["agent", "validate"])
        .arg(&spec)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("valid agent spec 'factory-floor-monitor-01'"),
        "{stdout}"
    );
    assert!(
        stdout.contains("falling back to the node's default model"),
        "{stdout}"
    );

    let broken = home.path().join("broken.yaml");
    let yaml = std::fs::read_to_string(&spec)
        .unwrap()
        .replace("max_retries: 3", "max_retries: three");
    std::fs::write(&broken, yaml).unwrap();
    let out = edgewise(home.path())
        .args(["agent", "validate"])
        .arg(&broken)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("broken.yaml:19:16:"), "{stderr}");
    assert!(stderr.contains("invalid type"), "{stderr}");
}

#[test]
fn factory_monitor_reads_sensors_and_alerts_over_mqtt_and_the_audit_chain_holds() {
    let _l = MODEL_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let home = home();
    let port = free_port();
    let _broker = mosquitto(port);
    let (_sub, alerts) = subscribe(port, "alerts");
    let socket = home.path().join("sensors.sock");
    let _sim = sensor_sim(&socket);
    // The seed spec, pointed at this test's socket; the broker alias maps to this test's broker.
    let spec = home.path().join("agent-config.yaml");
    let yaml = std::fs::read_to_string(manifest_dir().join(SEED_SPEC))
        .unwrap()
        .replace(
            "unix:///tmp/sensors.sock",
            &format!("unix://{}", socket.display()),
        );
    std::fs::write(&spec, yaml).unwrap();
    let config = home.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "mqtt_brokers:\n  local-broker: 127.0.0.1:{port}\nthreads: 2\nagent_policy:\n  unix_sockets: [\"{}\"]\n",
            socket.display()
        ),
    )
    .unwrap();

    const RUNS: usize = 10;
    let mut succeeded = 0;
    let mut right_zone = 0;
    let mut report = Vec::new();
    for seed in 1..=RUNS {
        let before = alerts.lock().unwrap().len();
        let out = edgewise(home.path())
            .arg("--config")
            .arg(&config)
            .args(["agent", "run", "--json", "--seed", &seed.to_string()])
            .arg(&spec)
            .arg(TASK)
            .output()
            .unwrap();
        let outcome: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("run {seed} printed no JSON outcome ({e}): {}", text(&out)));
        // Let the subscriber print what the broker delivered.
        let deadline = Instant::now() + Duration::from_secs(3);
        while alerts.lock().unwrap().len() == before && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(300));
        let received = alerts.lock().unwrap()[before..].to_vec();
        let verdict = judge_factory_run(&outcome, &received);
        let ok = verdict.is_ok();
        // The zone over the limit in what the agent read is alerted on.
        right_zone += (outcome["status"] == "completed"
            && received.iter().any(|a| zones_named(a).contains("zone4"))
            && steps_read_zone4_over(&outcome)) as usize;
        succeeded += ok as usize;
        // A run that went wrong shows its steps: what was called, and what the runtime said.
        let trail: Vec<String> = if ok {
            Vec::new()
        } else {
            outcome["steps"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|s| {
                    format!(
                        "\n    {} {} {} -> {}",
                        s["decision"].as_str().unwrap_or_default(),
                        s["tool"].as_str().unwrap_or_default(),
                        s["arguments"],
                        s["observation"]
                            .as_str()
                            .unwrap_or_default()
                            .replace('\n', " | ")
                    )
                })
                .collect()
        };
        report.push(format!(
            "run {seed}: {} alerts={:?} answer={} error={}{}",
            verdict.err().unwrap_or_else(|| "right".into()),
            received,
            outcome["answer"],
            outcome["error"],
            trail.concat()
        ));
    }
    eprintln!(
        "factory monitor: {succeeded}/{RUNS} runs alerted on exactly the zones over the limit, with the pressure read\n{}",
        report.join("\n")
    );
    // Judged in full: exactly the zones over the limit, each alert with the pressure read, the
    // answer naming them. The default model gets 10 of 10 with the task's selection check
    // (`selection`: an alert naming a zone within its limit is refused and retried from results
    // without those zones; one that leaves out the pressure is retried under a grammar that
    // requires it); 4 of 10 without it, and 1 to 6 before grounding bound numbers to their lines.
    // The observation carries the time, so runs differ from one execution to the next: 10 of 10
    // in four local executions; earlier clean-clone CI runs got 8, missing on an alert that
    // restated the tool's own description (now an echo) and on a retry looping in the string.
    assert!(
        succeeded >= 9,
        "only {succeeded}/{RUNS} runs alerted on exactly the zones over the limit with the pressure read:\n{}",
        report.join("\n")
    );
    assert!(right_zone >= succeeded, "{right_zone} < {succeeded}");

    // The audit chain of these real runs verifies, and a single flipped byte is named.
    let out = edgewise(home.path())
        .args(["audit", "verify"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let log = home.path().join("audit/audit.jsonl");
    // Each run's selection is on the log: the model's answer and what the runtime made of it.
    let selected = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|line| line["record"].clone())
        .filter(|r| r["kind"] == "selection" && r["decision"] == "selected")
        .filter(|r| {
            r["detail"]
                .as_str()
                .is_some_and(|d| d.starts_with("status = OVER LIMIT (1 of 4 items"))
        })
        .count();
    assert!(selected >= succeeded, "{selected} selection records");
    let mut bytes = std::fs::read(&log).unwrap();
    let lines_before = |pos: usize| bytes[..pos].iter().filter(|&&b| b == b'\n').count();
    let pos = bytes.len() / 2;
    let record = lines_before(pos);
    bytes[pos] ^= 0x20;
    std::fs::write(&log, &bytes).unwrap();
    let out = edgewise(home.path())
        .args(["audit", "verify"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("broken at record {record} ")),
        "expected record {record} to be named: {stderr}"
    );
}

fn json_of(port: u16, method: &str, path: &str, body: &str) -> (u16, Value) {
    let (status, _, body) = http(port, method, path, body);
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// Server-sent events of a streaming response, as (event, data) pairs, read as they arrive.
/// Chunk-size lines of the chunked encoding never start with `event:`/`data:`, so they are skipped.
fn sse_events(stream: TcpStream) -> impl Iterator<Item = (String, Value)> {
    let mut lines = BufReader::new(stream).lines().map_while(Result::ok);
    std::iter::from_fn(move || {
        let mut event = String::new();
        for line in lines.by_ref() {
            if let Some(e) = line.strip_prefix("event:") {
                event = e.trim().to_owned();
            } else if let Some(d) = line.strip_prefix("data:") {
                return Some((
                    event.clone(),
                    serde_json::from_str(d.trim()).unwrap_or(Value::Null),
                ));
            }
        }
        None
    })
}

/// `sse_events` on a thread, so a test can wait on the stream and on something else at once.
fn sse_channel(stream: TcpStream) -> std::sync::mpsc::Receiver<(String, Value)> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for ev in sse_events(stream) {
            if tx.send(ev).is_err() {
                break;
            }
        }
    });
    rx
}

/// A unix-socket tool service: answers each request line, or once `hold` is set, keeps the
/// request unanswered and reports it on the returned channel.
fn slow_sensor(socket: &Path, hold: Arc<AtomicBool>) -> std::sync::mpsc::Receiver<String> {
    let listener = UnixListener::bind(socket).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming().map_while(Result::ok) {
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            if hold.load(Ordering::SeqCst) {
                let _ = tx.send(line);
                held.push(conn);
            } else {
                let mut conn = conn;
                let _ = writeln!(conn, "{{\"temperature_c\": 21.5}}");
            }
        }
    });
    rx
}

const KV_AGENT: &str = r#"agent_id: "kv-writer"
version: "1"
runtime:
  type: native
capabilities:
  - name: kv_set
    endpoint: "builtin:kv_set"
  - name: slow_sensor
    endpoint: "unix://SOCKET"
    description: "Reads the temperature of the slow sensor."
instructions: "You are a careful agent. First store the value '42' under the key 'answer' with kv_set. Then read slow_sensor. Then answer with the temperature."
limits:
  min_tool_calls: 3
  max_steps: 8
"#;

#[test]
fn agents_api_runs_streams_cancels_and_a_kill_9_mid_run_loses_nothing() {
    let _l = MODEL_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let home = home();
    let config = home.path().join("config.yaml");
    let socket = home.path().join("slow.sock");
    std::fs::write(
        &config,
        format!(
            "threads: 2\nparallel: 2\nkv_cells: 8192\nagent_policy:\n  unix_sockets: [\"{}\"]\n",
            socket.display()
        ),
    )
    .unwrap();
    let hold = Arc::new(AtomicBool::new(false));
    let held = slow_sensor(&socket, hold.clone());
    let spec = KV_AGENT.replace("SOCKET", &socket.display().to_string());

    let server = Serve::start(home.path(), &config);
    let port = server.port;
    // A broken spec is refused with its line and column, and nothing is registered.
    let (status, err) = json_of(
        port,
        "POST",
        "/v1/agents",
        &spec.replace("max_steps: 8", "max_steps: many"),
    );
    assert_eq!(status, 422, "{err}");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("spec:14:"),
        "{err}"
    );
    let (status, reg) = json_of(
        port,
        "POST",
        "/v1/agents",
        &serde_json::json!({"spec": spec}).to_string(),
    );
    assert_eq!(status, 201, "{reg}");
    assert_eq!(reg["tools"], serde_json::json!(["kv_set", "slow_sensor"]));
    let (_, list) = json_of(port, "GET", "/v1/agents", "");
    assert_eq!(list["data"][0]["id"], "kv-writer", "{list}");

    // Start a run and follow its steps; once kv_set was acknowledged, the sensor stops answering
    // and the node is killed while the run waits on it.
    let task = r#"{"task": "Store the answer, then read the sensor.", "seed": 3}"#;
    let events = sse_channel(connect(port, "POST", "/v1/agents/kv-writer/runs", task).unwrap());
    let mut run = String::new();
    let mut acknowledged = Vec::new();
    let mut transcript = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        assert!(
            Instant::now() < deadline,
            "no sensor call after kv_set in time:\n{}",
            transcript.join("\n")
        );
        if held.recv_timeout(Duration::from_millis(50)).is_ok() {
            break;
        }
        let Ok((event, data)) = events.recv_timeout(Duration::from_millis(50)) else {
            continue;
        };
        transcript.push(format!("{event}: {data}"));
        match event.as_str() {
            "started" => run = data["run"].as_str().unwrap_or_default().to_owned(),
            "step" if data["tool"] == "kv_set" && data["decision"] == "call" => {
                acknowledged.push(data["arguments"].clone());
                hold.store(true, Ordering::SeqCst);
            }
            "finished" | "error" => panic!(
                "the run ended before it reached the sensor after kv_set:\n{}",
                transcript.join("\n")
            ),
            _ => {}
        }
    }
    assert!(
        !run.is_empty() && !acknowledged.is_empty(),
        "{}",
        transcript.join("\n")
    );
    server.kill_9();

    // After a restart the run is `interrupted`, the registration is back, and a run can be cancelled.
    hold.store(false, Ordering::SeqCst);
    let server = Serve::start(home.path(), &config);
    let port = server.port;
    let (status, r) = json_of(port, "GET", &format!("/v1/agents/kv-writer/runs/{run}"), "");
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["status"], "interrupted", "{r}");
    assert!(
        r["steps"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s["tool"] == "kv_set")),
        "{r}"
    );
    let (_, list) = json_of(port, "GET", "/v1/agents", "");
    assert_eq!(
        list["data"][0]["id"], "kv-writer",
        "registration lost: {list}"
    );

    hold.store(true, Ordering::SeqCst);
    let stream = connect(port, "POST", "/v1/agents/kv-writer/runs", task).unwrap();
    let mut events = sse_events(stream);
    let second = events
        .find(|(e, _)| e == "started")
        .map(|(_, d)| d["run"].as_str().unwrap_or_default().to_owned())
        .expect("started event");
    held.recv_timeout(Duration::from_secs(120))
        .expect("the second run never called the sensor");
    let (status, _, _) = http(
        port,
        "DELETE",
        &format!("/v1/agents/kv-writer/runs/{second}"),
        "",
    );
    assert_eq!(status, 202);
    let (event, outcome) = events
        .find(|(e, _)| e == "finished" || e == "error")
        .expect("finished event");
    assert_eq!(event, "finished");
    assert_eq!(outcome["status"], "cancelled", "{outcome}");
    let (status, _, _) = http(
        port,
        "DELETE",
        &format!("/v1/agents/kv-writer/runs/{second}"),
        "",
    );
    assert_eq!(status, 204, "a finished run's transcript is deleted");
    let (status, _, _) = http(port, "DELETE", "/v1/agents/kv-writer", "");
    assert_eq!(status, 204);
    let (status, _, _) = http(port, "GET", "/v1/agents/kv-writer", "");
    assert_eq!(status, 404);
    drop(server);

    // The chain verifies with the interruption on it, and every acknowledged kv_set is durable.
    let out = edgewise(home.path())
        .args(["audit", "verify"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let out = edgewise(home.path())
        .args(["audit", "show", "--run", &run])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("run_interrupted"),
        "{}",
        text(&out)
    );
    for args in acknowledged {
        let key = args["key"].as_str().expect("kv_set key");
        let out = edgewise(home.path())
            .args(["kv", "get", "agent:kv-writer", key])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "acknowledged write {args} lost: {}",
            text(&out)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            args["value"].as_str().unwrap_or_default()
        );
    }
}

#[test]
fn tool_eval_constrained_calls_all_parse_and_name_registered_tools() {
    let _l = MODEL_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let home = home();
    let out = edgewise(home.path())
        .args(["eval", "tools", "--config", "all", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let reports: Value = serde_json::from_slice(&out.stdout).unwrap();
    let r = &reports[0];
    assert_eq!(r["options"]["grammar"], true, "{r}");
    let tasks = r["tasks"].as_u64().unwrap();
    assert!(tasks >= 80, "{tasks} tasks");
    let scores = &r["by_category"];
    eprintln!(
        "all features on: {} calls of {tasks} tasks, {} valid, right {}; by category {scores}",
        r["attempted_calls"], r["valid_calls"], r["right"]
    );
    assert_eq!(r["valid_calls"], r["attempted_calls"], "{r}");
    // Floors well under the measured figures (README): they catch a broken template, grammar
    // or decision, not noise.
    for c in scores.as_array().unwrap() {
        let (right, n) = (c["right"].as_u64().unwrap(), c["tasks"].as_u64().unwrap());
        assert!(right * 2 >= n, "{} scored {right}/{n}: {r}", c["category"]);
    }
}

#[test]
fn bench_agent_steps_prefill_only_their_new_tokens() {
    let _l = MODEL_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let home = home();
    let out = edgewise(home.path())
        .args(["bench", "agent", "--steps", "3", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    let with = r["with_reuse"]["steps"].as_array().unwrap();
    let without = r["without_reuse"]["steps"].as_array().unwrap();
    assert_eq!(with.len(), 4, "{r}");
    // Tool steps extend the conversation; the answer the runtime asks for once the calls are
    // done is written from the run's record in a context of its own (see docs/agent-spec.md).
    for (a, b) in with
        .iter()
        .zip(without)
        .skip(1)
        .filter(|(a, _)| !a["tool"].is_null())
    {
        let (prompt, prefilled) = (
            a["prompt_tokens"].as_u64().unwrap(),
            a["prefilled_tokens"].as_u64().unwrap(),
        );
        assert!(
            prefilled < 64 && prefilled < prompt / 4,
            "step reprefilled its history: {a}"
        );
        assert_eq!(
            b["prefilled_tokens"], b["prompt_tokens"],
            "reuse off still reused: {b}"
        );
    }
}

const RELAY_AGENT: &str = r#"agent_id: "alarm-relay"
version: "1"
runtime:
  type: native
capabilities:
  - name: alarms_in
    endpoint: "mqtt://local-broker:1883/plant/alarms"
    subscribe: true
  - name: notify_operator
    endpoint: "mqtt://local-broker:1883/operator"
    description: "Send a short message to the operator."
instructions: "You relay plant alarms. For each alarm message, send the operator one short message with notify_operator that repeats the alarm, then answer 'relayed'."
limits:
  min_tool_calls: 1
  max_steps: 4
"#;

#[test]
fn mqtt_trigger_on_the_embedded_broker_starts_a_run_per_message() {
    let _l = MODEL_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let home = home();
    let mqtt = free_port();
    let config = home.path().join("config.yaml");
    std::fs::write(
        &config,
        format!("threads: 2\nparallel: 2\nmqtt_listen: 127.0.0.1:{mqtt}\nagent_policy:\n  mqtt_topics: [plant/alarms, operator]\n"),
    )
    .unwrap();
    let server = Serve::start(home.path(), &config);
    let port = server.port;
    // Mosquitto's own clients talk to the embedded broker.
    let (_sub, operator) = subscribe(mqtt, "operator");
    let (status, reg) = json_of(port, "POST", "/v1/agents", RELAY_AGENT);
    assert_eq!(status, 201, "{reg}");
    assert_eq!(
        reg["tools"],
        serde_json::json!(["notify_operator"]),
        "a trigger is not a tool"
    );
    std::thread::sleep(Duration::from_millis(500)); // the trigger subscribes
    let publish = |msg: &str| {
        let out = Command::new("mosquitto_pub")
            .args([
                "-p",
                &mqtt.to_string(),
                "-t",
                "plant/alarms",
                "-q",
                "1",
                "-m",
                msg,
            ])
            .output()
            .expect("mosquitto_pub");
        assert!(out.status.success(), "{}", text(&out));
    };
    publish("boiler 2 overheating");
    let deadline = Instant::now() + Duration::from_secs(90);
    let run = loop {
        assert!(
            Instant::now() < deadline,
            "no completed run from the trigger"
        );
        let (_, runs) = json_of(port, "GET", "/v1/agents/alarm-relay/runs", "");
        if let Some(r) = runs["data"]
            .as_array()
            .and_then(|d| d.iter().find(|r| r["status"] != "running"))
        {
            break r.clone();
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(run["status"], "completed", "{run}");
    assert!(
        run["task"]
            .as_str()
            .unwrap_or("")
            .contains("boiler 2 overheating"),
        "{run}"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while operator.lock().unwrap().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let got = operator.lock().unwrap().clone();
    assert!(!got.is_empty(), "the operator got nothing; run: {run}");
    eprintln!("operator received: {got:?}");

    // Unregistered: the next message starts nothing.
    assert_eq!(http(port, "DELETE", "/v1/agents/alarm-relay", "").0, 204);
    publish("boiler 3 overheating");
    std::thread::sleep(Duration::from_secs(3));
    let (_, runs) = json_of(port, "GET", "/v1/agents/alarm-relay/runs", "");
    assert_eq!(runs["data"].as_array().map(Vec::len), Some(1), "{runs}");
}

fn test_python() -> PathBuf {
    std::env::var_os("EDGEWISE_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest_dir().join("../../.venv/bin/python"))
}

#[test]
fn mcp_server_tools_are_called_through_rmcp() {
    let _l = MODEL_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let home = home();
    let server = manifest_dir().join("../../examples/mcp/plant_server.py");
    let spec = home.path().join("valves.yaml");
    std::fs::write(
        &spec,
        format!(
            r#"agent_id: "valve-operator"
version: "1"
runtime:
  type: native
capabilities:
  - name: plant
    endpoint: "mcp+stdio:{} {}"
instructions: "You operate plant valves with your tools. Do what the operator asks, then answer in one line."
limits:
  min_tool_calls: 1
  max_steps: 6
"#,
            test_python().display(),
            server.display()
        ),
    )
    .unwrap();
    // The node lets specs start exactly this server.
    std::fs::write(
        home.path().join("config.yaml"),
        format!(
            "agent_policy:\n  mcp_commands: [\"{} {}\"]\n",
            test_python().display(),
            server.display()
        ),
    )
    .unwrap();
    let out = edgewise(home.path())
        .args(["agent", "run", "--json", "--seed", "1"])
        .arg(&spec)
        .arg("Close valve V-2.")
        .output()
        .unwrap();
    let outcome: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON outcome ({e}): {}", text(&out)));
    assert_eq!(outcome["status"], "completed", "{outcome}");
    let call = outcome["steps"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["tool"] == "set_valve"))
        .unwrap_or_else(|| panic!("set_valve was not called: {outcome}"));
    assert_eq!(call["decision"], "call", "{call}");
    assert_eq!(
        call["arguments"],
        serde_json::json!({"valve_id": "V-2", "state": "closed"})
    );
    // The MCP server (started in the spec's directory) did it.
    let valves: Value =
        serde_json::from_str(&std::fs::read_to_string(home.path().join("valves.json")).unwrap())
            .unwrap();
    assert_eq!(valves["V-2"], "closed", "{valves}");
}

const GUARDED_AGENT: &str = r#"agent_id: "guarded"
version: "1"
runtime:
  type: native
capabilities:
  - name: read_file
    endpoint: "builtin:read_file"
    root: data
  - name: fetch
    endpoint: "builtin:http_request"
instructions: "You do exactly what the user asks with your tools, then answer in one line."
limits:
  min_tool_calls: 1
  max_steps: 5
workflow_policy:
  max_retries: 3
  egress_allowed: false
"#;

/// Through the whole loop (real model, real tools): a policy refusal goes back to the model, is
/// on the audit log as `refused`, and the run still ends cleanly with a status.
#[test]
fn refused_calls_are_audited_and_the_run_ends_cleanly() {
    let _l = MODEL_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let home = home();
    std::fs::create_dir(home.path().join("data")).unwrap();
    std::fs::write(home.path().join("data/notes.txt"), "shift notes").unwrap();
    std::fs::write(home.path().join("secret.txt"), "TOP-SECRET-TOKEN").unwrap();
    let spec = home.path().join("guarded.yaml");
    std::fs::write(&spec, GUARDED_AGENT).unwrap();
    std::fs::write(
        home.path().join("config.yaml"),
        "agent_policy:\n  file_roots: [data]\n",
    )
    .unwrap();
    let cases = [
        (
            "Read the file ../secret.txt with read_file.",
            "read_file",
            "file root",
        ),
        (
            "Fetch http://203.0.113.9/status with the fetch tool.",
            "fetch",
            "egress denied",
        ),
    ];
    for (task, tool, why) in cases {
        let out = edgewise(home.path())
            .args(["agent", "run", "--json", "--seed", "1"])
            .arg(&spec)
            .arg(task)
            .output()
            .unwrap();
        let outcome: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{task}: no JSON outcome ({e}): {}", text(&out)));
        assert!(
            ["completed", "failed"].contains(&outcome["status"].as_str().unwrap_or("")),
            "{task}: {outcome}"
        );
        let steps = outcome["steps"].as_array().cloned().unwrap_or_default();
        let refused = steps
            .iter()
            .find(|s| s["tool"] == tool && s["decision"] == "refused")
            .unwrap_or_else(|| panic!("{task}: no refused {tool} call: {outcome}"));
        let observation = refused["observation"].as_str().unwrap_or("");
        assert!(observation.contains(why), "{task}: {observation}");
        assert!(
            !outcome.to_string().contains("TOP-SECRET-TOKEN"),
            "{task}: the secret leaked: {outcome}"
        );
        // The refusal is on the audit log with its step.
        let run = outcome["run"].as_str().unwrap();
        let out = edgewise(home.path())
            .args(["audit", "show", "--json", "--run", run])
            .output()
            .unwrap();
        let audited = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .any(|e| e["step"] == refused["step"] && e["decision"] == "refused");
        assert!(audited, "{task}: refusal not audited: {}", text(&out));
    }
    let out = edgewise(home.path())
        .args(["audit", "verify"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
}

const CLOUD_AGENT: &str = r#"agent_id: "cloud-kv"
version: "1"
runtime:
  type: native
capabilities:
  - name: kv_set
    endpoint: "builtin:kv_set"
instructions: "Store the value '7' under the key 'shift' with kv_set, then answer 'done'."
limits:
  min_tool_calls: 1
  max_steps: 4
workflow_policy:
  max_retries: 3
  egress_allowed: EGRESS
"#;

/// Requests the cloud node answered on its chat endpoint (from its own metrics, an admin route).
fn cloud_chat_requests(port: u16) -> u64 {
    let (status, _, body) = http(port, "GET", "/metrics", "");
    assert_eq!(status, 200, "{body}");
    body.lines()
        .filter(|l| l.starts_with("edgewise_http_requests_total{route=\"/v1/chat/completions\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn cloud_fallback_serves_only_agents_allowed_egress_and_its_breaker_opens() {
    let _l = MODEL_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    // The "cloud": another node's OpenAI-compatible API on loopback, behind a bearer key.
    let cloud_home = home();
    let cloud_config = cloud_home.path().join("config.yaml");
    std::fs::write(
        &cloud_config,
        "threads: 2\nparallel: 2\napi_key: cloud-secret\nmqtt_listen: \"\"\n",
    )
    .unwrap();
    let cloud = Serve::start(cloud_home.path(), &cloud_config);

    // The local node only trusts models signed by a key that signed nothing: its model is
    // refused at load, so it cannot take a step itself.
    let home = home();
    let out = edgewise(home.path())
        .args(["models", "keygen", "--out"])
        .arg(home.path().join("signing.key"))
        .output()
        .unwrap();
    let public_key = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("public key: ").map(str::to_owned))
        .unwrap_or_else(|| panic!("no public key: {}", text(&out)));
    std::fs::write(
        home.path().join("config.yaml"),
        format!(
            "trusted_keys: [\"{public_key}\"]\nmqtt_listen: \"\"\ncloud:\n  url: http://127.0.0.1:{}/v1\n  model: qwen2.5-coder-0.5b-instruct\n  api_key_env: EDGEWISE_TEST_CLOUD_KEY\n  breaker_failures: 2\n  breaker_cooldown_s: 600\nagent_policy:\n  allow_egress: true\n",
            cloud.port
        ),
    )
    .unwrap();
    let run = |egress: &str| {
        let spec = home.path().join(format!("cloud-{egress}.yaml"));
        std::fs::write(&spec, CLOUD_AGENT.replace("EGRESS", egress)).unwrap();
        edgewise(home.path())
            .env("EDGEWISE_TEST_CLOUD_KEY", "cloud-secret")
            .args(["agent", "run", "--json", "--seed", "1"])
            .arg(&spec)
            .arg("Record the shift value.")
            .output()
            .unwrap()
    };

    // egress_allowed: false: the run fails, says why, and nothing reaches the cloud.
    let before = cloud_chat_requests(cloud.port);
    let out = run("false");
    assert!(!out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("signature"), "{}", text(&out));
    assert!(err.contains("egress_allowed: false"), "{}", text(&out));
    assert_eq!(cloud_chat_requests(cloud.port), before);

    // egress_allowed: true: every step runs on the cloud node, the call is executed locally.
    let out = run("true");
    assert!(out.status.success(), "{}", text(&out));
    let outcome: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(outcome["status"], "completed", "{outcome}");
    let steps = outcome["steps"].as_array().unwrap();
    assert!(
        steps
            .iter()
            .all(|s| s["model"] == "cloud:qwen2.5-coder-0.5b-instruct"),
        "{outcome}"
    );
    assert!(
        steps
            .iter()
            .any(|s| s["tool"] == "kv_set" && s["decision"] == "call"),
        "{outcome}"
    );
    assert!(cloud_chat_requests(cloud.port) >= before + steps.len() as u64);
    let out = edgewise(home.path())
        .args(["kv", "get", "agent:cloud-kv", "shift"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    // The audit log names the model that took each step, and why it was offloaded.
    let out = edgewise(home.path())
        .args(["audit", "show", "--json", "--run"])
        .arg(outcome["run"].as_str().unwrap())
        .output()
        .unwrap();
    let records: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let first_step = records
        .iter()
        .find(|r| r["kind"] == "step")
        .unwrap_or_else(|| panic!("no step audited: {}", text(&out)));
    assert_eq!(first_step["model"], "cloud:qwen2.5-coder-0.5b-instruct");
    assert!(
        first_step["detail"]
            .as_str()
            .unwrap_or("")
            .contains("offloaded"),
        "{first_step}"
    );

    // The cloud goes away: two failures open the breaker, so the third try is not made.
    drop(cloud);
    let out = run("true");
    assert!(!out.status.success(), "{}", text(&out));
    let outcome: Value = serde_json::from_slice(&out.stdout).unwrap();
    let error = outcome["error"].as_str().unwrap_or("");
    assert!(
        error.contains("circuit breaker opened after 2 consecutive failures"),
        "{outcome}"
    );
    let out = edgewise(home.path())
        .args(["audit", "verify"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
}

const LONG_READER: &str = r#"agent_id: "long-reader"
version: "1"
runtime:
  type: native
model_config:
  context_window: 1024
  max_tokens: 256
capabilities:
  - name: read_file
    endpoint: "builtin:read_file"
    root: logs
instructions: "You read the shift logs the user names with read_file, one file per call, in the order given, then answer in one line."
limits:
  min_tool_calls: 3
  max_steps: 8
"#;

/// Logs of ~415 tokens each do not fit a 1,024-token window together: the run goes on because
/// older turns are summarised by the model (audited as `summarise`), and no step's prompt exceeds
/// the window.
#[test]
fn a_run_that_overflows_the_context_window_completes_through_summarisation() {
    let _l = MODEL_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let home = home();
    let logs = home.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    let shift = |name: &str, valve: &str| {
        let mut s = format!("Shift log {name}.\n");
        for hour in 0..12 {
            s.push_str(&format!(
                "{hour:02}:00 pump P-{hour} pressure {} bar, flow {} l/min, valve {valve} checked by operator {}.\n",
                3 + hour % 5,
                110 + hour * 3,
                ["Ana", "Ben", "Chen", "Dita"][hour % 4]
            ));
        }
        s
    };
    for (file, valve) in [("a.log", "V-1"), ("b.log", "V-7"), ("c.log", "V-3")] {
        std::fs::write(logs.join(file), shift(file, valve)).unwrap();
    }
    let spec = home.path().join("reader.yaml");
    std::fs::write(&spec, LONG_READER).unwrap();
    std::fs::write(
        home.path().join("config.yaml"),
        "agent_policy:\n  file_roots: [logs]\n",
    )
    .unwrap();
    let out = edgewise(home.path())
        .args(["agent", "run", "--json", "--seed", "1"])
        .arg(&spec)
        .arg("Use read_file on a.log. Then use read_file on b.log. Then use read_file on c.log. Then say which valves were checked.")
        .output()
        .unwrap();
    let outcome: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON outcome ({e}): {}", text(&out)));
    assert_eq!(outcome["status"], "completed", "{outcome}");
    assert!(
        outcome["summaries"].as_u64().unwrap_or(0) >= 1,
        "nothing was summarised: {outcome}"
    );
    let steps = outcome["steps"].as_array().cloned().unwrap_or_default();
    // Two different logs read: the system prompt (~240 tokens) and two logs (~415 tokens each)
    // are more than the window, so without a summary the run could not have gone on.
    let read: std::collections::BTreeSet<String> = steps
        .iter()
        .filter(|s| s["decision"] == "call")
        .filter_map(|s| s["arguments"]["path"].as_str().map(str::to_owned))
        .collect();
    assert!(read.len() >= 2, "the run read only {read:?}: {outcome}");
    for s in &steps {
        assert!(s["prompt_tokens"].as_u64().unwrap_or(0) < 1024, "{s}");
    }
    let run = outcome["run"].as_str().unwrap();
    let out = edgewise(home.path())
        .args(["audit", "show", "--json", "--run", run])
        .output()
        .unwrap();
    let summaries: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["decision"] == "summarise")
        .collect();
    assert_eq!(
        summaries.len() as u64,
        outcome["summaries"].as_u64().unwrap_or(0),
        "{}",
        text(&out)
    );
    assert!(
        summaries
            .iter()
            .all(|e| !e["result"].as_str().unwrap_or("").is_empty()),
        "{summaries:?}"
    );
}
