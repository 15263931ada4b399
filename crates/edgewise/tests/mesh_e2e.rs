//! The mesh with real nodes: each `edgewise serve` runs in a network namespace of its own, joined to
//! the others by veth links on a bridge that lives in one more namespace. The test creates and
//! removes them; no address outside 10.91.<n>.0/24 in those namespaces is ever contacted.
//! Needs root (network namespaces) and the pulled models.

mod support;

use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{edgewise, home, http, http_with, text, Guard};

/// Namespaces of one test: a bridge and one namespace per node.
struct Lan {
    bridge: String,
    nodes: Vec<String>,
    subnet: u32,
}

static LANS: AtomicU32 = AtomicU32::new(0);

/// One LAN of model-serving nodes at a time: several on two cores starve each other's leases.
static ONE_LAN: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("run ip (iproute2; make deps installs it)");
    assert!(
        out.status.success(),
        "ip {}: {} (the mesh tests need root for network namespaces)",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Lan {
    fn new(nodes: usize) -> Lan {
        let n = LANS.fetch_add(1, Ordering::SeqCst);
        let tag = format!("ew{}x{n}", std::process::id());
        let subnet = 91 + n;
        let lan = Lan {
            bridge: format!("{tag}-br"),
            nodes: (0..nodes).map(|i| format!("{tag}-{i}")).collect(),
            subnet,
        };
        ip(&["netns", "add", &lan.bridge]);
        ip(&["-n", &lan.bridge, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &lan.bridge, "link", "set", "br0", "up"]);
        for (i, ns) in lan.nodes.iter().enumerate() {
            let port = format!("p{i}");
            ip(&["netns", "add", ns]);
            ip(&[
                "-n",
                ns,
                "link",
                "add",
                "eth0",
                "type",
                "veth",
                "peer",
                "name",
                &port,
                "netns",
                &lan.bridge,
            ]);
            ip(&[
                "-n",
                &lan.bridge,
                "link",
                "set",
                &port,
                "master",
                "br0",
                "up",
            ]);
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{}/24", lan.addr(i)),
                "dev",
                "eth0",
            ]);
            ip(&["-n", ns, "link", "set", "eth0", "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        lan
    }

    fn addr(&self, node: usize) -> String {
        format!("10.91.{}.{}", self.subnet, node + 1)
    }

    /// Runs `f` on a thread inside node `i`'s namespace (its sockets stay there).
    fn inside<T: Send>(&self, i: usize, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/var/run/netns/{}", self.nodes[i]);
        std::thread::scope(|s| {
            s.spawn(|| {
                let ns = std::fs::File::open(&path).expect("open the namespace");
                // SAFETY: setns on this thread only, with a valid namespace fd.
                let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .expect("thread inside the namespace")
        })
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for ns in self.nodes.iter().chain([&self.bridge]) {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

const PORT: u16 = 8080;

struct Node {
    name: String,
    home: tempfile::TempDir,
    guard: Option<Guard>,
}

/// Writes `config.yaml` for a node of the LAN; `mesh_extra` is more of the `mesh:` section,
/// each line indented by two spaces.
fn configure(
    home: &Path,
    name: &str,
    model: &str,
    listen: &str,
    connect: &[String],
    mesh_extra: &str,
) {
    let connect: Vec<String> = connect.iter().map(|a| format!("tls/{a}:7447")).collect();
    let yaml = format!(
        "name: {name}\ndefault_model: {model}\nmqtt_listen: \"\"\nmesh:\n  trust_domain: plant\n  listen: [tls/{listen}:7447]\n  connect: [{}]\n{mesh_extra}",
        connect.join(", ")
    );
    std::fs::write(home.join("config.yaml"), yaml).unwrap();
}

/// A CA for the trust domain `plant` in `pki`/ca, and node homes with certificates from it,
/// configured to link to every other node of the LAN.
fn plant_nodes(lan: &Lan, pki: &Path, names: &[&str], model: &str, mesh_extra: &str) -> Vec<Node> {
    let ca = pki.join("ca");
    if !ca.exists() {
        init_ca(pki, "plant", ca.to_str().unwrap());
    }
    names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let node = Node {
                name: (*name).to_owned(),
                home: home(),
                guard: None,
            };
            let tls = node.home.path().join("mesh");
            issue_cert(pki, name, ca.to_str().unwrap(), tls.to_str().unwrap());
            let others: Vec<String> = (0..names.len())
                .filter(|&j| j != i)
                .map(|j| lan.addr(j))
                .collect();
            configure(
                node.home.path(),
                name,
                model,
                &lan.addr(i),
                &others,
                mesh_extra,
            );
            node
        })
        .collect()
}

/// `edgewise mesh ca init` for `domain` into `dir` (a path string).
fn init_ca(home: &Path, domain: &str, dir: &str) {
    run_ok(
        home,
        &["mesh", "ca", "init", "--domain", domain, "--dir", dir],
    );
}

/// `edgewise mesh cert issue` for `node` by the CA in `ca`, into `out` (path strings).
fn issue_cert(home: &Path, node: &str, ca: &str, out: &str) {
    run_ok(
        home,
        &["mesh", "cert", "issue", node, "--ca", ca, "--out", out],
    );
}

fn run_ok(home: &Path, args: &[&str]) {
    let out = edgewise(home).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "edgewise {}: {}",
        args.join(" "),
        text(&out)
    );
}

fn start(lan: &Lan, i: usize, node: &mut Node) {
    start_on(lan, i, node, "127.0.0.1");
}

/// Starts node `i` with its API on `host`:PORT (the loopback of its namespace, or its LAN side).
fn start_on(lan: &Lan, i: usize, node: &mut Node, host: &str) {
    let child = Command::new("ip")
        .args(["netns", "exec", &lan.nodes[i]])
        .arg(env!("CARGO_BIN_EXE_edgewise"))
        .args(["serve", "--no-embeddings", "--listen"])
        .arg(format!("{host}:{PORT}"))
        .env("EDGEWISE_HOME", node.home.path())
        .env_remove("EDGEWISE_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn edgewise serve in its namespace");
    node.guard = Some(Guard(child));
}

/// Polls `done` every 50 ms; fails with `what` if it does not hold within `limit`.
fn wait_until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_healthy(lan: &Lan, i: usize) {
    wait_until(
        Duration::from_secs(120),
        &format!("node {i} did not come up"),
        || lan.inside(i, || http(PORT, "GET", "/health", "").0) == 200,
    );
}

fn mesh_of(lan: &Lan, i: usize) -> Value {
    let (status, _, body) = lan.inside(i, || http(PORT, "GET", "/v1/mesh", ""));
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Names of the peers node `i` sees alive with an advert.
fn alive_peers(lan: &Lan, i: usize) -> Vec<String> {
    let mut v: Vec<String> = mesh_of(lan, i)["peers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["alive"] == true && p["advert"].is_object())
        .map(|p| p["node"].as_str().unwrap().to_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn nodes_discover_each_other_offload_to_the_node_with_the_model_and_refuse_outsiders() {
    let _one = ONE_LAN.lock().unwrap_or_else(|e| e.into_inner());
    // a, b, c: the plant's nodes (only b has the Qwen model); d: certificate from another CA;
    // e: a self-signed certificate. d and e trust the plant's CA, so only the plant's checks
    // can keep them out.
    let lan = Lan::new(5);
    let pki = tempfile::tempdir().unwrap();
    let (ca, foreign) = (pki.path().join("ca"), pki.path().join("foreign"));
    let ca_s = ca.to_str().unwrap();
    init_ca(pki.path(), "plant", ca_s);
    init_ca(pki.path(), "other", foreign.to_str().unwrap());
    let names = ["node-a", "node-b", "node-c", "node-d", "node-e"];
    let models = [
        "gemma-3-270m",
        "qwen2.5-coder-0.5b-instruct",
        "gemma-3-270m",
        "gemma-3-270m",
        "gemma-3-270m",
    ];
    let mut nodes: Vec<Node> = names
        .iter()
        .map(|n| Node {
            name: (*n).to_owned(),
            home: home(),
            guard: None,
        })
        .collect();
    for (i, node) in nodes.iter().enumerate() {
        let h = node.home.path();
        let tls = h.join("mesh");
        let tls_s = tls.to_str().unwrap();
        match i {
            3 => issue_cert(pki.path(), &node.name, foreign.to_str().unwrap(), tls_s),
            4 => {
                // A certificate that signs itself, with the plant's CA as its trust anchor.
                let own = pki.path().join("self");
                init_ca(pki.path(), "plant", own.to_str().unwrap());
                std::fs::create_dir_all(&tls).unwrap();
                std::fs::copy(own.join("ca.pem"), tls.join("node.pem")).unwrap();
                std::fs::copy(own.join("ca.key"), tls.join("node.key")).unwrap();
                std::fs::copy(ca.join("ca.pem"), tls.join("ca.pem")).unwrap();
            }
            _ => issue_cert(pki.path(), &node.name, ca_s, tls_s),
        }
        let others: Vec<String> = (0..3).filter(|&j| j != i).map(|j| lan.addr(j)).collect();
        configure(h, &node.name, models[i], &lan.addr(i), &others, "");
        if i == 0 {
            // One sequence and no queue: a second request finds a full.
            let mut cfg = std::fs::read_to_string(h.join("config.yaml")).unwrap();
            cfg.push_str("parallel: 1\nqueue_depth: 0\n");
            std::fs::write(h.join("config.yaml"), cfg).unwrap();
        }
    }

    for i in 0..4 {
        start(&lan, i, &mut nodes[i]);
    }
    for i in 0..4 {
        wait_healthy(&lan, i);
    }
    // e's own certificate does not chain to the CA it names: it does not start at all.
    let mut e = Command::new("ip")
        .args(["netns", "exec", &lan.nodes[4]])
        .arg(env!("CARGO_BIN_EXE_edgewise"))
        .args(["serve", "--no-embeddings", "--listen"])
        .arg(format!("127.0.0.1:{PORT}"))
        .env("EDGEWISE_HOME", nodes[4].home.path())
        .env_remove("EDGEWISE_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = e.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = e.kill();
            panic!("node-e with a self-signed certificate kept running");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut e.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success(), "{err}");
    assert!(
        err.contains("cannot join") && err.contains("not one of this trust domain's"),
        "{err}"
    );

    // Discovery: every plant node sees the other two, adverts included, within 2 s of the last
    // one serving.
    let all_up = Instant::now();
    let want = |i: usize| -> Vec<String> {
        (0..3)
            .filter(|&j| j != i)
            .map(|j| names[j].to_owned())
            .collect()
    };
    loop {
        if (0..3).all(|i| alive_peers(&lan, i) == want(i)) {
            break;
        }
        assert!(
            all_up.elapsed() < Duration::from_secs(2),
            "discovery took over 2 s: {:?}",
            (0..3).map(|i| mesh_of(&lan, i)).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let discovered = all_up.elapsed();
    eprintln!(
        "discovery complete {} ms after the last node served",
        discovered.as_millis()
    );
    let advert_b = mesh_of(&lan, 0)["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["node"] == "node-b")
        .unwrap()["advert"]
        .clone();
    assert_eq!(
        advert_b["models"][0], "qwen2.5-coder-0.5b-instruct",
        "{advert_b}"
    );
    assert_eq!(advert_b["trust_domain"], "plant", "{advert_b}");
    assert_eq!(advert_b["role"], "peer", "{advert_b}");
    // Round trips to every neighbour are measured (each second) for placement.
    wait_until(Duration::from_secs(5), "no round trips measured", || {
        mesh_of(&lan, 0)["peers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["alive"] == true)
            .all(|p| p["rtt_ms"].as_f64().is_some_and(|ms| ms > 0.0))
    });

    // Offload: node a has only Gemma; a request for Qwen sent to a is answered by b.
    let ask = |stream: bool| {
        format!(
            r#"{{"model":"qwen2.5-coder-0.5b-instruct","temperature":0,"stream":{stream},"messages":[{{"role":"user","content":"What is 17 + 25? Reply with just the number."}}]}}"#
        )
    };
    let (status, head, body) = lan.inside(0, || {
        http(PORT, "POST", "/v1/chat/completions", &ask(false))
    });
    assert_eq!(status, 200, "{head}\n{body}");
    assert!(
        head.to_ascii_lowercase()
            .contains("x-edgewise-node: node-b"),
        "{head}"
    );
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["model"], "qwen2.5-coder-0.5b-instruct", "{answer}");
    assert_eq!(
        answer["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .trim(),
        "42",
        "{answer}"
    );
    assert!(
        answer["usage"]["completion_tokens"].as_u64().unwrap() > 0,
        "{answer}"
    );

    // Streamed through a: SSE events as b produces them, ending in [DONE].
    let (status, head, body) =
        lan.inside(0, || http(PORT, "POST", "/v1/chat/completions", &ask(true)));
    assert_eq!(status, 200, "{head}\n{body}");
    assert!(head.contains("text/event-stream"), "{head}");
    let events: Vec<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(events.last(), Some(&"[DONE]"), "{body}");
    let streamed: String = events
        .iter()
        .filter(|e| **e != "[DONE]")
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(streamed.trim(), "42", "{body}");
    assert!(events.len() >= 3, "expected several events: {body}");
    assert_eq!(mesh_of(&lan, 0)["offloads"], 2);
    assert_eq!(mesh_of(&lan, 1)["calls_served"], 2);
    assert_eq!(mesh_of(&lan, 0)["breakers"]["node-b"], "closed");

    // A model nobody serves is still a plain 404.
    let (status, _, body) = lan.inside(0, || {
        http(
            PORT,
            "POST",
            "/v1/chat/completions",
            r#"{"model":"nope","messages":[{"role":"user","content":"x"}]}"#,
        )
    });
    assert_eq!(status, 404, "{body}");

    // Capacity: a serves one sequence and queues none. While a long generation holds it, a
    // request for a's own model runs on c, the other plant node that serves it.
    let (first_line, status, head, body) = lan.inside(0, || {
        let long = r#"{"model":"gemma-3-270m","prompt":"Once upon a time","max_tokens":400,"temperature":0,"stream":true}"#;
        let held = support::connect(PORT, "POST", "/v1/completions", long).unwrap();
        let mut reader = std::io::BufReader::new(held);
        let mut first_line = String::new();
        std::io::BufRead::read_line(&mut reader, &mut first_line).unwrap();
        let short = r#"{"model":"gemma-3-270m","prompt":"The capital of France is","max_tokens":4,"temperature":0}"#;
        let (status, head, body) = http(PORT, "POST", "/v1/completions", short);
        (first_line, status, head, body)
    });
    assert!(first_line.contains(" 200"), "{first_line}");
    assert_eq!(status, 200, "{head}\n{body}");
    assert!(
        head.to_ascii_lowercase()
            .contains("x-edgewise-node: node-c"),
        "{head}"
    );

    // Outsiders: d (foreign CA) has tried to link to a, b and c all along; nobody lets it in, so
    // it sees no one and nobody sees it (nor e, which never started).
    for i in 0..3 {
        let seen = mesh_of(&lan, i).to_string();
        assert!(
            !seen.contains("node-d") && !seen.contains("node-e"),
            "{seen}"
        );
    }
    for i in 3..4 {
        assert!(alive_peers(&lan, i).is_empty(), "{}", mesh_of(&lan, i));
        let (status, _, body) = lan.inside(i, || {
            http(PORT, "POST", "/v1/chat/completions", &ask(false))
        });
        assert_eq!(status, 404, "{} must not reach node-b: {body}", names[i]);
    }

    // Leaving: kill -9 of c is noticed by a within 2 s.
    let killed = Instant::now();
    drop(nodes[2].guard.take());
    loop {
        let c = mesh_of(&lan, 0)["peers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["node"] == "node-c")
            .cloned()
            .unwrap();
        if c["alive"] == false {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(2),
            "node-c still alive: {c}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "node-c's departure seen by node-a after {} ms",
        killed.elapsed().as_millis()
    );
}

/// Starts `nodes` (node `i` on the LAN's namespace `i`) and waits until they see each other.
fn start_linked(lan: &Lan, nodes: &mut [Node], names: &[&str]) {
    for (i, node) in nodes.iter_mut().enumerate() {
        start(lan, i, node);
    }
    for i in 0..nodes.len() {
        wait_healthy(lan, i);
    }
    wait_until(Duration::from_secs(10), "the nodes did not link", || {
        all_linked(lan, names)
    });
}

/// Whether every node of `nodes` sees all the others alive.
fn all_linked(lan: &Lan, nodes: &[&str]) -> bool {
    (0..nodes.len()).all(|i| {
        let mut want: Vec<String> = nodes
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, n)| (*n).to_owned())
            .collect();
        want.sort();
        alive_peers(lan, i) == want
    })
}

/// What node `i` holds of the shared state: the document's entries and the collection's
/// version vector and chunks.
fn shared_state(lan: &Lan, i: usize) -> (Value, Value, Value) {
    let (status, _, doc) = lan.inside(i, || http(PORT, "GET", "/v1/docs/plant", ""));
    assert_eq!(status, 200, "{doc}");
    let doc: Value = serde_json::from_str(&doc).unwrap();
    let (status, _, delta) =
        lan.inside(i, || http(PORT, "POST", "/v1/knowledge/notes/export", "{}"));
    let delta: Value = if status == 200 {
        serde_json::from_str(&delta).unwrap()
    } else {
        Value::Null
    };
    // Chunks without their vectors (copied with the text): short enough to print.
    let chunks: Vec<Value> = delta["changes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| serde_json::json!([c["id"], c["stamp"], c["chunk"]["text"]]))
        .collect();
    (
        doc["entries"].clone(),
        delta["version"].clone(),
        chunks.into(),
    )
}

/// A delta of collection `notes` holding one chunk, `valve#0`, written by a store of its own
/// (real MiniLM embeddings), so two writers make conflicting versions of the same chunk.
fn written_delta(pki: &Path, writer: &str, note: &str) -> String {
    let home = home();
    let dir = pki.join(writer);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("valve.md");
    std::fs::write(&file, note).unwrap();
    run_ok(home.path(), &["kb", "create", "notes", "--shareable"]);
    run_ok(home.path(), &["kb", "add", "notes", file.to_str().unwrap()]);
    let out = edgewise(home.path())
        .args(["kb", "export", "notes"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn a_healed_partition_converges_shared_documents_and_collections() {
    let _one = ONE_LAN.lock().unwrap_or_else(|e| e.into_inner());
    let pki = tempfile::tempdir().unwrap();
    // Two writers' versions of the same chunk, made before the nodes start (MiniLM runs here,
    // not on the nodes).
    let delta_a = written_delta(
        pki.path(),
        "writer-a",
        "# Valve V-4\n\nValve V-4 in zone 4 was opened at 10:02 after the pressure alarm.",
    );
    let delta_c = written_delta(
        pki.path(),
        "writer-c",
        "# Valve V-4\n\nValve V-4 in zone 4 stays closed until the relief line is inspected.",
    );

    let lan = Lan::new(3);
    let names = ["node-a", "node-b", "node-c"];
    let share = "  share:\n    documents: [plant]\n    collections: [notes]\n";
    let mut nodes = plant_nodes(&lan, pki.path(), &names, "gemma-3-270m", share);
    start_linked(&lan, &mut nodes, &names);

    // Shared while linked: a write on b reaches a and c.
    let patch = |i: usize, body: &str| {
        let (status, _, out) = lan.inside(i, || http(PORT, "PATCH", "/v1/docs/plant", body));
        assert_eq!(status, 200, "{out}");
    };
    patch(1, r#"{"set": {"zone1/pump": "on"}}"#);
    wait_until(
        Duration::from_secs(5),
        "b's write did not reach a and c",
        || (0..3).all(|i| shared_state(&lan, i).0["zone1/pump"]["value"] == "on"),
    );

    // Partition: a's link goes down; both sides notice.
    ip(&["-n", &lan.nodes[0], "link", "set", "eth0", "down"]);
    // The linked side notices within the lease; the cut-off node itself has been seen to keep
    // its neighbours for ~11 s (its links' close waits on the dead network), hence the margin.
    let cut = Instant::now();
    wait_until(
        Duration::from_secs(20),
        "the partition was not noticed",
        || alive_peers(&lan, 0).is_empty() && alive_peers(&lan, 1) == ["node-c"],
    );
    eprintln!(
        "partition noticed on both sides after {} ms",
        cut.elapsed().as_millis()
    );

    // Concurrent conflicting writes on both sides: the same key of the document and the same
    // chunk of the collection.
    patch(
        0,
        r#"{"set": {"zone4/valve": "open", "zone4/by": "node-a"}}"#,
    );
    patch(2, r#"{"set": {"zone4/valve": "closed"}}"#);
    let import = |i: usize, delta: &str| {
        let (status, _, out) = lan.inside(i, || {
            http(
                PORT,
                "POST",
                "/v1/knowledge/notes/import?shareable=true",
                delta,
            )
        });
        assert_eq!(status, 200, "{out}");
    };
    import(0, &delta_a);
    import(2, &delta_c);
    // b and c are still linked: c's writes reach b within a few share rounds (a loaded 2-core
    // runner has been seen to need more than 1.5 s for the collection, which b creates on its
    // first pull).
    wait_until(
        Duration::from_secs(10),
        "c's writes did not reach b although they are still linked",
        || shared_state(&lan, 1) == shared_state(&lan, 2),
    );
    let (a, c) = (shared_state(&lan, 0), shared_state(&lan, 2));
    assert_eq!(a.0["zone4/valve"]["value"], "open", "{a:?}");
    assert_eq!(c.0["zone4/valve"]["value"], "closed", "{c:?}");
    assert_eq!(c.2.as_array().map(Vec::len), Some(1), "{c:?}");
    assert_ne!(a, c, "a is cut off");

    // Heal: within 2 s every node holds the same state, with the same winners.
    ip(&["-n", &lan.nodes[0], "link", "set", "eth0", "up"]);
    let healed = Instant::now();
    loop {
        let states: Vec<_> = (0..3).map(|i| shared_state(&lan, i)).collect();
        if states.iter().all(|s| *s == states[0]) {
            let (doc, version, changes) = &states[0];
            assert_eq!(doc["zone4/by"]["value"], "node-a", "{doc}");
            assert_eq!(doc["zone1/pump"]["value"], "on", "{doc}");
            let valve = &doc["zone4/valve"];
            let both = [valve["value"].clone(), valve["conflicts"][0].clone()];
            assert!(
                both.contains(&"open".into()) && both.contains(&"closed".into()),
                "the losing write stays visible as a conflict: {valve}"
            );
            assert_eq!(version.as_object().unwrap().len(), 2, "{version}");
            let chunks = changes.as_array().unwrap();
            assert_eq!(chunks.len(), 1, "{changes}");
            break;
        }
        assert!(
            healed.elapsed() < Duration::from_secs(2),
            "not converged 2 s after healing: {states:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "all three nodes identical {} ms after the partition healed",
        healed.elapsed().as_millis()
    );

    // Only what mesh.share lists leaves a node: a document b does not share stays on b.
    let (status, _, out) = lan.inside(1, || {
        http(
            PORT,
            "PATCH",
            "/v1/docs/shift-notes",
            r#"{"set": {"who": "b only"}}"#,
        )
    });
    assert_eq!(status, 200, "{out}");
    std::thread::sleep(Duration::from_millis(1500));
    for i in [0, 2] {
        let (_, _, docs) = lan.inside(i, || http(PORT, "GET", "/v1/docs", ""));
        assert!(!docs.contains("shift-notes"), "{docs}");
    }
}

/// An agent for the Qwen model with one built-in tool. `fallback` and `egress_allowed` fill the
/// policy.
fn kv_agent(id: &str, fallback: &str, egress: bool) -> String {
    format!(
        r#"agent_id: "{id}"
version: "1"
runtime:
  type: native
model_config:
  path: qwen2.5-coder-0.5b-instruct
capabilities:
  - name: kv_set
    endpoint: "builtin:kv_set"
instructions: "Store the value '7' under the key 'shift' with kv_set, then answer 'done'."
limits:
  min_tool_calls: 1
  max_steps: 4
workflow_policy:
  fallback: "{fallback}"
  max_retries: 2
  egress_allowed: {egress}
"#
    )
}

fn register(lan: &Lan, i: usize, spec: &str) {
    let (status, _, body) = lan.inside(i, || http(PORT, "POST", "/v1/agents", spec));
    assert_eq!(status, 201, "{body}");
    let summary: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(summary["runs_on"], "mesh", "{summary}");
}

/// Whether the run ran steps and every one has `field` equal to `want`.
fn all_steps(outcome: &Value, field: &str, want: &str) -> bool {
    let steps = outcome["steps"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    !steps.is_empty() && steps.iter().all(|s| s[field] == want)
}

/// Runs agent `id` on node `i` without streaming; its outcome.
fn run_agent(lan: &Lan, i: usize, id: &str, body: &str) -> Value {
    let path = format!("/v1/agents/{id}/runs");
    let (status, _, body) = lan.inside(i, || http(PORT, "POST", &path, body));
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Node `i`'s audit records of `run`, read with `edgewise audit show` (the chain verified).
fn audit_of(home: &Path, run: &str) -> Vec<Value> {
    run_ok(home, &["audit", "verify"]);
    let out = edgewise(home)
        .args(["audit", "show", "--json", "--run", run])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `(kind, node, decision)` of each record, to compare with what should have happened.
fn story(records: &[Value]) -> Vec<(String, String, String)> {
    records
        .iter()
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap_or_default().to_owned();
            (s("kind"), s("node"), s("decision"))
        })
        .collect()
}

/// SSE events of a finished stream as `(event, data)`.
fn sse_events(body: &str) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let mut name = String::new();
    for line in body.lines() {
        if let Some(n) = line.strip_prefix("event: ") {
            name = n.to_owned();
        } else if let Some(d) = line.strip_prefix("data: ") {
            out.push((name.clone(), serde_json::from_str(d).unwrap_or(Value::Null)));
        }
    }
    out
}

/// Nodes `names` on `lan`, linked: the first has only Gemma, the others serve Qwen, and the
/// first has "shift-keeper" (for Qwen, fallback node-b) registered.
fn gemma_in_front(lan: &Lan, pki: &Path, names: &[&str]) -> Vec<Node> {
    let mut nodes = plant_nodes(lan, pki, names, "qwen2.5-coder-0.5b-instruct", "");
    let others: Vec<String> = (1..names.len()).map(|j| lan.addr(j)).collect();
    configure(
        nodes[0].home.path(),
        names[0],
        "gemma-3-270m",
        &lan.addr(0),
        &others,
        "",
    );
    start_linked(lan, &mut nodes, names);
    register(lan, 0, &kv_agent("shift-keeper", "node-b", false));
    nodes
}

/// Starts a run of "shift-keeper" on node 0 (SSE) and calls `meanwhile` once node 1 has taken
/// it; what `meanwhile` returned, and the run's SSE body once it has ended.
fn run_while_b_has_it<T>(lan: &Lan, meanwhile: impl FnOnce() -> T) -> (T, String) {
    std::thread::scope(|s| {
        let caller = s.spawn(|| {
            lan.inside(0, || {
                http(
                    PORT,
                    "POST",
                    "/v1/agents/shift-keeper/runs",
                    r#"{"task": "Record the shift value.", "seed": 1}"#,
                )
            })
        });
        wait_until(Duration::from_secs(60), "node-b never got the run", || {
            mesh_of(lan, 1)["calls_served"].as_u64() >= Some(1)
        });
        let got = meanwhile();
        let (status, head, body) = caller.join().unwrap();
        assert_eq!(status, 200, "{head}\n{body}");
        (got, body)
    })
}

/// The one `finished` outcome of an SSE run body, which has no `error` event.
fn only_outcome(body: &str) -> Value {
    let events = sse_events(body);
    assert!(events.iter().all(|(e, _)| e != "error"), "{body}");
    let mut finished: Vec<Value> = events
        .into_iter()
        .filter(|(e, _)| e == "finished")
        .map(|(_, d)| d)
        .collect();
    assert_eq!(finished.len(), 1, "exactly one result: {body}");
    finished.remove(0)
}

#[test]
fn a_placed_agent_run_survives_a_kill_9_of_its_node_with_one_result() {
    let _one = ONE_LAN.lock().unwrap_or_else(|e| e.into_inner());
    // a has only Gemma; b and c serve Qwen. An agent for Qwen registered on a runs on b (its
    // fallback) until b is killed mid-run, then on c.
    let lan = Lan::new(3);
    let pki = tempfile::tempdir().unwrap();
    let names = ["node-a", "node-b", "node-c"];
    let mut nodes = gemma_in_front(&lan, pki.path(), &names);

    // The moment b takes the run, kill it.
    let ((), body) = run_while_b_has_it(&lan, || {
        std::thread::sleep(Duration::from_millis(300));
        drop(nodes[1].guard.take());
    });
    let outcome = &only_outcome(&body);
    assert_eq!(outcome["status"], "completed", "{outcome}");
    assert!(all_steps(outcome, "node", "node-c"), "{outcome}");
    let steps = outcome["steps"].as_array().unwrap();
    assert!(
        steps
            .iter()
            .any(|s| s["tool"] == "kv_set" && s["decision"] == "call"),
        "{outcome}"
    );
    let run = outcome["run"].as_str().unwrap();

    // a's audit log: both attempts, each step named with the node that ran it.
    let records = audit_of(nodes[0].home.path(), run);
    let story = story(&records);
    let at = |kind: &str, node: &str, decision: &str| {
        story
            .iter()
            .position(|(k, n, d)| k == kind && n == node && d == decision)
            .unwrap_or_else(|| panic!("no {kind} {node} {decision}: {story:?}"))
    };
    let first = at("placement", "node-b", "attempt");
    let failed = at("placement", "node-b", "failed");
    let second = at("placement", "node-c", "attempt");
    let end = at("run_end", "node-c", "completed");
    assert!(
        first < failed && failed < second && second < end,
        "{story:?}"
    );
    assert_eq!(story[0].0, "run_start", "{story:?}");
    assert_eq!(story[0].1, "node-a", "{story:?}");
    let steps_after = story[second..end]
        .iter()
        .filter(|(k, _, _)| k == "step")
        .collect::<Vec<_>>();
    assert_eq!(steps_after.len(), steps.len(), "{story:?}");
    assert!(
        steps_after.iter().all(|(_, n, _)| n == "node-c"),
        "{story:?}"
    );
    // c's own log has the same run, under the same id, in its name.
    let on_c = audit_of(nodes[2].home.path(), run);
    assert!(
        on_c.iter().any(|r| r["kind"] == "run_end"
            && r["node"] == "node-c"
            && r["decision"] == "completed"),
        "{on_c:?}"
    );
    let mesh = mesh_of(&lan, 0);
    assert!(mesh["retries"].as_u64() >= Some(1), "{mesh}");
    eprintln!("placed run {run}: {story:?}");
}

#[test]
fn cancelling_a_placed_run_stops_it_on_the_node_that_runs_it() {
    let _one = ONE_LAN.lock().unwrap_or_else(|e| e.into_inner());
    // a has only Gemma; b serves Qwen and runs the agent registered on a.
    let lan = Lan::new(2);
    let pki = tempfile::tempdir().unwrap();
    let names = ["node-a", "node-b"];
    let nodes = gemma_in_front(&lan, pki.path(), &names);

    // While b runs it (its first step is still prefilling), cancel it on a.
    let (run, body) = run_while_b_has_it(&lan, || {
        let (_, _, runs) = lan.inside(0, || http(PORT, "GET", "/v1/agents/shift-keeper/runs", ""));
        let runs: Value = serde_json::from_str(&runs).unwrap();
        let run = runs["data"][0]["run"].as_str().unwrap().to_owned();
        let path = format!("/v1/agents/shift-keeper/runs/{run}");
        let (status, _, body) = lan.inside(0, || http(PORT, "DELETE", &path, ""));
        assert_eq!(status, 202, "{body}");
        run
    });
    let outcome = only_outcome(&body);
    assert_eq!(outcome["status"], "cancelled", "{outcome}");
    assert_eq!(outcome["run"], run, "{outcome}");

    // b stopped it too, under the same id: its transcript and its audit log say cancelled.
    let path = format!("/v1/agents/shift-keeper/runs/{run}");
    wait_until(
        Duration::from_secs(10),
        "node-b kept running the run",
        || {
            let (status, _, body) = lan.inside(1, || http(PORT, "GET", &path, ""));
            status == 200 && serde_json::from_str::<Value>(&body).unwrap()["status"] == "cancelled"
        },
    );
    let on_b = story(&audit_of(nodes[1].home.path(), &run));
    assert!(
        on_b.iter()
            .any(|(k, n, d)| k == "run_end" && n == "node-b" && d == "cancelled"),
        "{on_b:?}"
    );
    // a's log says so: the attempt on b ended by the cancel, which b confirmed.
    let on_a = audit_of(nodes[0].home.path(), &run);
    assert!(
        on_a.iter().any(|r| r["kind"] == "placement"
            && r["node"] == "node-b"
            && r["decision"] == "failed"
            && r["detail"]
                .as_str()
                .is_some_and(|d| d.contains("the node stopped the run"))),
        "{on_a:?}"
    );
    assert!(
        on_a.iter()
            .any(|r| r["kind"] == "run_end" && r["decision"] == "cancelled"),
        "{on_a:?}"
    );
}

/// An MCP server command line that marks, in the data dir of the node that starts it, that it ran.
const MARK_COMMAND: &str = "sh -c 'touch $EDGEWISE_HOME/mcp-started'";

/// An agent for the Qwen model, placed on node-b with no retry, asking for what a neighbour's run
/// gets only when the running node's `mesh.accept_runs` says so: a command, every file, a
/// collection it does not share, egress.
fn overreaching_agent(id: &str) -> String {
    format!(
        r#"agent_id: "{id}"
version: "1"
runtime:
  type: native
model_config:
  path: qwen2.5-coder-0.5b-instruct
capabilities:
  - name: shell
    endpoint: "mcp+stdio:{MARK_COMMAND}"
  - name: everything
    endpoint: "builtin:read_file"
    root: /
  - name: records
    endpoint: "builtin:search_knowledge"
    collection: patients
workflow_policy:
  fallback: "node-b"
  max_retries: 0
  egress_allowed: true
"#
    )
}

/// The value of counter `name` in node `i`'s `/metrics`.
fn counter(lan: &Lan, i: usize, name: &str) -> f64 {
    let (status, _, body) = lan.inside(i, || http(PORT, "GET", "/metrics", ""));
    assert_eq!(status, 200, "{body}");
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics: {body}"))
}

#[test]
fn a_placed_run_is_held_to_accept_runs_and_keeps_its_kv_in_the_placers_scope() {
    let _one = ONE_LAN.lock().unwrap_or_else(|e| e.into_inner());
    // a has only Gemma; b serves Qwen. Both let their own agents do all that "overreach" asks,
    // so only b's mesh.accept_runs (the default) stands between a's spec and b's commands,
    // files and network.
    let lan = Lan::new(2);
    let pki = tempfile::tempdir().unwrap();
    let names = ["node-a", "node-b"];
    let mut nodes = plant_nodes(&lan, pki.path(), &names, "qwen2.5-coder-0.5b-instruct", "");
    configure(
        nodes[0].home.path(),
        names[0],
        "gemma-3-270m",
        &lan.addr(0),
        &[lan.addr(1)],
        "",
    );
    for node in &nodes {
        let cfg = node.home.path().join("config.yaml");
        let mut yaml = std::fs::read_to_string(&cfg).unwrap();
        yaml.push_str(&format!(
            "agent_policy:\n  mcp_commands: [\"{MARK_COMMAND}\"]\n  file_roots: [/]\n  allow_egress: true\n"
        ));
        std::fs::write(&cfg, yaml).unwrap();
    }
    start_linked(&lan, &mut nodes, &names);
    register(&lan, 0, &kv_agent("shift-keeper", "node-b", false));
    // a's own policy accepts the spec: registering it starts the command on a (in a's home, its
    // base_dir), which fails the MCP handshake; the control that the command runs wherever a
    // policy lets it.
    let body = serde_json::json!({
        "spec": overreaching_agent("overreach"),
        "base_dir": nodes[0].home.path(),
    });
    register(&lan, 0, &body.to_string());
    assert!(
        nodes[0].home.path().join("mcp-started").exists(),
        "the command did not run on node-a, whose agent_policy lists it"
    );

    // Placed on b, refused there with every reason, as often as the breaker would need to open.
    let task = r#"{"task": "Record the shift value.", "seed": 1, "stream": false}"#;
    let mut last_run = String::new();
    for _ in 0..3 {
        let outcome = run_agent(&lan, 0, "overreach", task);
        assert_eq!(outcome["status"], "failed", "{outcome}");
        let error = outcome["error"].as_str().unwrap_or_default();
        for reason in [
            "node-b: refused (403): placed run refused by this node's mesh.accept_runs",
            "capability 'shell' uses the scheme 'mcp+stdio', which mesh.accept_runs.policy.schemes does not list",
            "capability 'everything' uses builtin:read_file, which mesh.accept_runs.builtins",
            "mesh.accept_runs.policy.file_roots",
            "capability 'records' uses builtin:search_knowledge, which mesh.accept_runs.builtins",
            "mesh.accept_runs.policy.allow_egress",
        ] {
            assert!(error.contains(reason), "no '{reason}' in: {error}");
        }
        assert!(!error.contains("agent_policy."), "{error}");
        last_run = outcome["run"].as_str().unwrap().to_owned();
    }
    assert!(
        !nodes[1].home.path().join("mcp-started").exists(),
        "node-b started the command of a neighbour's refused spec"
    );
    assert_eq!(
        counter(&lan, 1, "edgewise_mesh_placed_runs_refused_total"),
        3.0
    );
    let on_b = audit_of(nodes[1].home.path(), &last_run);
    assert!(
        on_b.iter().any(|r| r["kind"] == "placed_run_refused"
            && r["node"] == "node-b"
            && r["decision"] == "refused"
            && r["detail"]
                .as_str()
                .is_some_and(|d| d.starts_with("placed by node-a:")
                    && d.contains("mesh.accept_runs.policy.schemes"))),
        "{on_b:?}"
    );
    // A refusal is an answer: it does not count against b in a's breaker.
    assert_eq!(mesh_of(&lan, 0)["breakers"]["node-b"], "closed");

    // Within the default: b runs it, and its KV lands in a's scope on b, not in b's own agent's
    // namespace of the same id, whose value stays as it was.
    let (status, _, body) = lan.inside(1, || {
        http_with(
            PORT,
            "PUT",
            "/v1/kv/agent:shift-keeper/shift",
            "b's own",
            "Content-Type: application/octet-stream\r\n",
        )
    });
    assert!(status == 200 || status == 201, "{body}");
    let outcome = run_agent(&lan, 0, "shift-keeper", task);
    assert_eq!(outcome["status"], "completed", "{outcome}");
    assert!(all_steps(&outcome, "node", "node-b"), "{outcome}");
    let stored = outcome["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["tool"] == "kv_set" && s["decision"] == "call")
        .unwrap_or_else(|| panic!("no kv_set call: {outcome}"));
    let key = stored["arguments"]["key"]
        .as_str()
        .unwrap()
        .replace(' ', "%20");
    let path = format!("/v1/kv/mesh:node-a:shift-keeper/{key}");
    let (status, _, body) = lan.inside(1, || http(PORT, "GET", &path, ""));
    assert_eq!(status, 200, "GET {path} on node-b: {body}");
    let (status, _, body) = lan.inside(1, || {
        http(PORT, "GET", "/v1/kv/agent:shift-keeper/shift", "")
    });
    assert_eq!((status, body.as_str()), (200, "b's own"));
    // b's own audit records of the run say which node placed it.
    let on_b = audit_of(nodes[1].home.path(), outcome["run"].as_str().unwrap());
    assert!(
        on_b.iter()
            .any(|r| r["kind"] == "run_end" && r["node"] == "node-b" && r["placed_by"] == "node-a"),
        "{on_b:?}"
    );
    assert_eq!(
        counter(&lan, 1, "edgewise_mesh_placed_runs_refused_total"),
        3.0
    );
}

/// A packet capture on `lan`'s node `i` interface, of IP packets only.
struct Capture {
    child: std::process::Child,
    file: std::path::PathBuf,
}

impl Capture {
    fn start(lan: &Lan, i: usize, file: std::path::PathBuf) -> Capture {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &lan.nodes[i]])
            .args(["tcpdump", "-i", "eth0", "-n", "-U", "-s", "0", "-w"])
            .arg(&file)
            .arg("ip")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run tcpdump (make deps installs it)");
        // tcpdump says "listening on eth0" once it captures.
        let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        std::io::BufRead::read_line(&mut err, &mut line).unwrap();
        assert!(line.contains("listening on"), "tcpdump: {line}");
        std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
        Capture { child, file }
    }

    /// Stops the capture and returns tcpdump's one-line summaries of the packets that `filter`
    /// selects, and the raw capture.
    fn stop(mut self, filter: &str) -> (Vec<String>, Vec<u8>) {
        // SIGINT: tcpdump flushes and closes the file.
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        let out = Command::new("tcpdump")
            .args(["-n", "-r"])
            .arg(&self.file)
            .arg(filter)
            .output()
            .unwrap();
        let lines = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect();
        (lines, std::fs::read(&self.file).unwrap())
    }
}

#[test]
fn egress_false_sends_nothing_outside_the_trust_domain_and_true_reaches_the_cloud() {
    let _one = ONE_LAN.lock().unwrap_or_else(|e| e.into_inner());
    // a (Gemma) and b (Qwen): the plant. x: a node of another trust domain (its own CA) on the
    // same LAN, serving Qwen; its OpenAI API is a's configured cloud endpoint.
    let lan = Lan::new(3);
    let pki = tempfile::tempdir().unwrap();
    let mut nodes = plant_nodes(
        &lan,
        pki.path(),
        &["node-a", "node-b"],
        "qwen2.5-coder-0.5b-instruct",
        "",
    );
    let (a, x) = (lan.addr(0), lan.addr(2));
    configure(
        nodes[0].home.path(),
        "node-a",
        "gemma-3-270m",
        &a,
        &[lan.addr(1)],
        "",
    );
    let cfg = nodes[0].home.path().join("config.yaml");
    let mut yaml = std::fs::read_to_string(&cfg).unwrap();
    yaml.push_str(&format!(
        "cloud:\n  url: http://{x}:{PORT}/v1\n  model: qwen2.5-coder-0.5b-instruct\nagent_policy:\n  allow_egress: true\n"
    ));
    std::fs::write(&cfg, yaml).unwrap();
    let other = pki.path().join("other");
    init_ca(pki.path(), "other", other.to_str().unwrap());
    let mut node_x = Node {
        name: "node-x".into(),
        home: home(),
        guard: None,
    };
    let tls = node_x.home.path().join("mesh");
    issue_cert(
        pki.path(),
        "node-x",
        other.to_str().unwrap(),
        tls.to_str().unwrap(),
    );
    std::fs::write(
        node_x.home.path().join("config.yaml"),
        format!(
            "name: node-x\ndefault_model: qwen2.5-coder-0.5b-instruct\nmqtt_listen: \"\"\nmesh:\n  trust_domain: other\n  listen: [tls/{x}:7447]\n"
        ),
    )
    .unwrap();
    start(&lan, 0, &mut nodes[0]);
    start(&lan, 1, &mut nodes[1]);
    // x's API listens on its LAN side too: it is a's cloud.
    start_on(&lan, 2, &mut node_x, "0.0.0.0");
    for i in 0..3 {
        wait_healthy(&lan, i);
    }
    wait_until(Duration::from_secs(10), "a and b did not link", || {
        all_linked(&lan, &["node-a", "node-b"])
    });
    let marker = "patient ZX-4471";
    let task = format!(
        r#"{{"task": "Record the shift value for {marker}.", "seed": 1, "stream": false}}"#
    );
    let from_plant = format!(
        "ip and dst host {x} and (src host {a} or src host {})",
        lan.addr(1)
    );

    // egress_allowed: false. With b up the run stays in the plant; with b gone it fails rather
    // than use the cloud. x sees not one packet from a or b meanwhile.
    let capture = Capture::start(&lan, 2, pki.path().join("false.pcap"));
    register(&lan, 0, &kv_agent("home-only", "", false));
    let outcome = run_agent(&lan, 0, "home-only", &task);
    assert_eq!(outcome["status"], "completed", "{outcome}");
    assert!(all_steps(&outcome, "node", "node-b"), "{outcome}");
    drop(nodes[1].guard.take());
    wait_until(Duration::from_secs(5), "a still sees b", || {
        alive_peers(&lan, 0).is_empty()
    });
    let outcome = run_agent(&lan, 0, "home-only", &task);
    assert_eq!(outcome["status"], "failed", "{outcome}");
    let error = outcome["error"].as_str().unwrap();
    assert!(error.contains("egress_allowed: false"), "{error}");
    let (sent, raw) = capture.stop(&from_plant);
    assert!(sent.is_empty(), "the plant sent to node-x: {sent:?}");
    assert!(!contains(&raw, marker.as_bytes()));

    // The control, egress_allowed: true: the run's steps go to the cloud, and the capture sees
    // them (the task travels in the request).
    let capture = Capture::start(&lan, 2, pki.path().join("true.pcap"));
    register(&lan, 0, &kv_agent("may-leave", "", true));
    let outcome = run_agent(&lan, 0, "may-leave", &task);
    assert_eq!(outcome["status"], "completed", "{outcome}");
    assert!(
        all_steps(&outcome, "model", "cloud:qwen2.5-coder-0.5b-instruct"),
        "{outcome}"
    );
    let (sent, raw) = capture.stop(&from_plant);
    assert!(!sent.is_empty(), "the control reached nothing");
    assert!(
        contains(&raw, marker.as_bytes()),
        "the task never reached the cloud"
    );
    let records = audit_of(nodes[0].home.path(), outcome["run"].as_str().unwrap());
    assert!(
        records
            .iter()
            .any(|r| r["kind"] == "placement" && r["decision"] == "cloud"),
        "{records:?}"
    );
    eprintln!(
        "egress false: 0 packets to node-x; egress true: {} packets to node-x",
        sent.len()
    );
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
