//! Agent end-to-end: the real `edgewise` binary runs the seed's factory-monitor spec against the
//! sensor simulator (a unix socket service) and a real Mosquitto broker started here, with the
//! real default model. Only loopback and temp-dir sockets are used.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

static MODEL_LOCK: Mutex<()> = Mutex::new(());

const SEED_SPEC: &str = "../../examples/factory-monitor/agent-config.yaml";
const TASK: &str = "Check the zone pressures with local_sensor_read. For each zone whose status is OVER LIMIT, publish an alert with alert_system that names the zone and its pressure. Then answer with a one-line summary.";

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A fresh data dir whose models/ is the pulled models (`make models`), so state and audit log
/// start empty for each test.
fn home() -> tempfile::TempDir {
    let models = PathBuf::from(
        std::env::var_os("EDGEWISE_HOME").expect("EDGEWISE_HOME must point at the pulled models"),
    )
    .join("models");
    assert!(
        models.join("qwen2.5-coder-0.5b-instruct").exists(),
        "run `make models` first"
    );
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(&models, dir.path().join("models")).unwrap();
    dir
}

fn edgewise(home: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_edgewise"));
    c.env("EDGEWISE_HOME", home).env_remove("EDGEWISE_CONFIG");
    c
}

/// Kills the process on drop.
struct Guard(Child);
impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
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
        format!("mqtt_brokers:\n  local-broker: 127.0.0.1:{port}\nthreads: 2\n"),
    )
    .unwrap();

    const RUNS: usize = 10;
    let mut succeeded = 0;
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
        let steps = outcome["steps"].as_array().cloned().unwrap_or_default();
        let called = |tool: &str| {
            steps
                .iter()
                .any(|s| s["tool"] == tool && s["decision"] == "call")
        };
        // Let the subscriber print what the broker delivered.
        let deadline = Instant::now() + Duration::from_secs(3);
        while alerts.lock().unwrap().len() == before && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let received = alerts.lock().unwrap()[before..].to_vec();
        let ok = outcome["status"] == "completed"
            && called("local_sensor_read")
            && called("alert_system")
            && !received.is_empty();
        succeeded += ok as usize;
        report.push(format!(
            "run {seed}: status={} steps={} alerts={:?}",
            outcome["status"],
            steps.len(),
            received
        ));
    }
    eprintln!(
        "factory monitor: {succeeded}/{RUNS} runs read the sensors and delivered an alert\n{}",
        report.join("\n")
    );
    assert!(
        succeeded >= 9,
        "only {succeeded}/{RUNS} runs succeeded:\n{}",
        report.join("\n")
    );

    // The audit chain of these real runs verifies, and a single flipped byte is named.
    let out = edgewise(home.path())
        .args(["audit", "verify"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let log = home.path().join("audit/audit.jsonl");
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
