//! Knowledge end-to-end with the real models: `edgewise kb add` chunks and embeds documents with
//! all-MiniLM-L6-v2, an agent on Qwen2.5-Coder-0.5B answers from them through
//! `builtin:search_knowledge` and cites the chunk, and a `kb add` killed with SIGKILL leaves a
//! consistent collection.

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{edgewise, home, text, Guard};

/// Both tests are CPU-bound on the same cores; one at a time.
static CPU: Mutex<()> = Mutex::new(());

fn example(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/clinic-rag")
        .join(rel)
}

fn ok(cmd: &mut std::process::Command) -> String {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn an_agent_answers_from_ingested_notes_and_cites_the_chunk() {
    let _l = CPU.lock().unwrap_or_else(|p| p.into_inner());
    let home = home();
    let notes: Vec<PathBuf> = std::fs::read_dir(example("notes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let added = ok(edgewise(home.path())
        .args(["kb", "add", "clinic-notes"])
        .args(&notes));
    assert!(added.contains("ward-b-lindqvist.md: "), "{added}");
    assert!(added.contains("chunks/s"), "{added}");
    // Adding the same files again changes nothing.
    let again = ok(edgewise(home.path())
        .args(["kb", "add", "clinic-notes"])
        .args(&notes));
    assert!(again.contains("ward-b-lindqvist.md: unchanged"), "{again}");
    ok(edgewise(home.path()).args(["kb", "check", "clinic-notes"]));

    let out = edgewise(home.path())
        .args(["agent", "run", "--json", "--seed", "1"])
        .arg(example("agent.yaml"))
        .arg("What dose of apixaban was Rosa Lindqvist discharged on?")
        .output()
        .unwrap();
    let outcome: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON outcome ({e}): {}", text(&out)));
    assert_eq!(outcome["status"], "completed", "{outcome}");
    // The retrieval is on the audit log with the chunks it found.
    let run = outcome["run"].as_str().unwrap();
    let audit = ok(edgewise(home.path()).args(["audit", "show", "--json", "--run", run]));
    let retrieved = audit
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|r| r["kind"] == "retrieve" || r["record"]["kind"] == "retrieve")
        .unwrap_or_else(|| panic!("no retrieve record: {audit}"));
    assert!(
        retrieved.to_string().contains("ward-b-lindqvist#"),
        "{retrieved}"
    );
    let answer = outcome["answer"].as_str().unwrap_or_default();
    // The dose exists only in the notes (the usual dose is 5 mg).
    assert!(answer.contains("2.5"), "{answer}");
    // It cites a chunk that exists and says so.
    let cited: Vec<&str> = answer
        .split('[')
        .skip(1)
        .filter_map(|s| s.split(']').next())
        .filter(|id| id.contains('#'))
        .collect();
    assert!(!cited.is_empty(), "no chunk id cited: {answer}");
    let shown = ok(edgewise(home.path()).args(["kb", "show", "clinic-notes", cited[0]]));
    assert!(shown.contains("apixaban 2.5 mg"), "{} → {shown}", cited[0]);
}

/// Text of roughly `words` words, varied enough to give distinct chunks.
fn long_document(words: usize) -> String {
    let topics = [
        "pump",
        "valve",
        "boiler",
        "compressor",
        "conveyor",
        "sensor",
        "relay",
        "turbine",
    ];
    let mut out = String::new();
    for i in 0..words / 12 {
        let t = topics[i % topics.len()];
        out.push_str(&format!(
            "Inspection {i}: the {t} on line {} was checked at shift {} and logged as nominal. ",
            i % 17,
            i % 3
        ));
        if i % 10 == 9 {
            out.push_str("\n\n");
        }
    }
    out
}

fn live_chunks(home: &Path, source: &str) -> usize {
    let list = ok(edgewise(home).args(["kb", "list", "logs"]));
    list.lines()
        .find(|l| l.trim_start().starts_with(source))
        .and_then(|l| l.split('\t').nth(1))
        .and_then(|n| n.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[test]
fn kill_9_during_ingest_leaves_a_consistent_collection_that_the_next_add_completes() {
    let _l = CPU.lock().unwrap_or_else(|p| p.into_inner());
    let home = home();
    let small = home.path().join("shift-notes.txt");
    let big = home.path().join("inspection-log.txt");
    std::fs::write(&small, long_document(400)).unwrap();
    std::fs::write(&big, long_document(30_000)).unwrap();

    let mut child = edgewise(home.path())
        .args(["kb", "add", "logs"])
        .args([&small, &big])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut child = Guard(child);
    // The first document is stored; kill while the second is being embedded.
    let mut lines = BufReader::new(stdout).lines();
    let first = lines.next().and_then(Result::ok).unwrap_or_default();
    assert!(first.starts_with("shift-notes.txt: "), "{first}");
    std::thread::sleep(Duration::from_secs(12));
    assert!(
        child.0.try_wait().unwrap().is_none(),
        "kb add finished before it could be killed; make the document longer"
    );
    child.0.kill().unwrap(); // SIGKILL
    child.0.wait().unwrap();

    let checked = ok(edgewise(home.path()).args(["kb", "check", "logs"]));
    assert!(checked.contains("consistent"), "{checked}");
    let partial = live_chunks(home.path(), "inspection-log.txt");
    // Whole batches only: no chunk without its vector, none half written.
    assert!(
        partial > 0,
        "killed before the first batch was stored; wait longer"
    );
    assert_eq!(partial % 32, 0, "{partial} chunks of the killed document");

    let started = Instant::now();
    let done = ok(edgewise(home.path())
        .args(["kb", "add", "logs"])
        .args([&small, &big]));
    assert!(done.contains("shift-notes.txt: unchanged"), "{done}");
    let full = live_chunks(home.path(), "inspection-log.txt");
    assert!(full > partial, "{full} after the rerun, {partial} before");
    let checked = ok(edgewise(home.path()).args(["kb", "check", "logs"]));
    assert!(checked.contains("consistent"), "{checked}");
    eprintln!(
        "killed after {partial} chunks; the rerun stored {full} in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // Search works on the completed collection.
    let hits = ok(edgewise(home.path()).args([
        "kb",
        "search",
        "logs",
        "turbine on line 5",
        "-k",
        "2",
        "--where",
        "source=inspection-log.txt",
    ]));
    assert!(hits.contains("[inspection-log#"), "{hits}");
}
