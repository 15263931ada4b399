//! The grounding trap, end to end: the real binary and default model read a station log full of
//! similar numbers (a unix-socket service started here) and report one station's value. The
//! guard refuses values never shown, and values read for another station, back to the model;
//! the test judges the answer against the log and checks that every refusal is on the audit log.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::Path;

use serde_json::{json, Value};
use support::{edgewise, home, text};

const SPEC: &str = r#"agent_id: "torque-reporter"
version: "1"
runtime:
  type: native
capabilities:
  - name: station_log
    endpoint: "unix://SOCKET"
    description: "Reads the latest torque log of every station on line 7."
limits:
  max_steps: 6
workflow_policy:
  max_retries: 4
"#;

const TASK: &str =
    "Read the log with station_log and report the torque of station S-17 in Nm, exactly as logged.";

/// Sixteen stations with torques within a few Nm of each other; `run` varies the values.
fn station_log(run: u64) -> (Value, String) {
    let mut state = run.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut target = String::new();
    let stations: Vec<Value> = (11..27)
        .map(|n| {
            let torque = format!("{}.{:02}", 40 + next() % 4, 1 + next() % 99);
            if n == 17 {
                target = torque.clone();
            }
            json!({"station": format!("S-{n}"), "torque_nm": torque.parse::<f64>().unwrap(),
                   "spec_nm": 42.0, "cycles": 1000 + next() % 9000})
        })
        .collect();
    (json!({"line": 7, "stations": stations}), target)
}

/// Serves `log` to every request line, one connection after another.
fn serve(socket: &Path, log: Value) -> std::thread::JoinHandle<()> {
    let listener = UnixListener::bind(socket).unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming().map_while(Result::ok) {
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            if reader.read_line(&mut line).is_ok() {
                let mut conn = conn;
                let _ = writeln!(conn, "{log}");
            }
        }
    })
}

#[test]
fn an_agent_reports_the_value_it_read_among_similar_ones_and_refusals_are_audited() {
    let home = home();
    const RUNS: u64 = 10;
    let (mut right, mut refusals) = (0, 0);
    let mut report = Vec::new();
    for run in 1..=RUNS {
        let socket = home.path().join(format!("log{run}.sock"));
        let (log, target) = station_log(run);
        let _service = serve(&socket, log);
        let spec = home.path().join(format!("spec{run}.yaml"));
        std::fs::write(&spec, SPEC.replace("SOCKET", &socket.display().to_string())).unwrap();
        let config = home.path().join(format!("config{run}.yaml"));
        std::fs::write(
            &config,
            format!(
                "threads: 2\nagent_policy:\n  unix_sockets: [\"{}\"]\n",
                socket.display()
            ),
        )
        .unwrap();
        let out = edgewise(home.path())
            .arg("--config")
            .arg(&config)
            .args(["agent", "run", "--json", "--seed", &run.to_string()])
            .arg(&spec)
            .arg(TASK)
            .output()
            .unwrap();
        let outcome: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("run {run} printed no JSON outcome ({e}): {}", text(&out)));
        let answer = outcome["answer"].as_str().unwrap_or_default();
        let exact = outcome["status"] == "completed" && reports_exactly(answer, &target);
        right += exact as usize;
        let refused: Vec<String> = outcome["steps"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|s| s["decision"] == "ungrounded")
            .map(|s| s["output"].as_str().unwrap_or_default().trim().to_owned())
            .collect();
        refusals += refused.len();
        // Each refusal is on the audit log, with what was refused.
        let run_id = outcome["run"].as_str().unwrap_or_default();
        let out = edgewise(home.path())
            .args(["audit", "show", "--json", "--run", run_id])
            .output()
            .unwrap();
        let audited = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("refused: "))
            .count();
        assert_eq!(
            audited,
            refused.len(),
            "run {run}: refusals not audited: {}",
            text(&out)
        );
        report.push(format!(
            "run {run}: S-17 = {target}: {} answer={answer:?} refused={refused:?}",
            if exact { "right" } else { "WRONG" }
        ));
    }
    eprintln!(
        "grounding trap: {right}/{RUNS} answers report S-17's torque exactly, {refusals} refusals on the way\n{}",
        report.join("\n")
    );
    assert!(right >= 9, "{right}/{RUNS} right:\n{}", report.join("\n"));
}

/// The answer gives the logged value (as logged, trailing zeros aside) and no other torque.
fn reports_exactly(answer: &str, target: &str) -> bool {
    let want: f64 = target.parse().unwrap();
    let numbers: Vec<f64> = answer
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .filter_map(|w| w.trim_matches('.').parse().ok())
        .filter(|n: &f64| n.fract() != 0.0)
        .collect();
    !numbers.is_empty() && numbers.iter().all(|n| (n - want).abs() < 1e-9)
}
