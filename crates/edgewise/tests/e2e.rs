//! End-to-end: the real `edgewise` binary as processes, the real default model, the official OpenAI
//! Python client, and a loopback file server for `pull`. Model-loading tests run one at a time.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::Digest;

mod support;
use support::http;

static MODEL_LOCK: Mutex<()> = Mutex::new(());

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_edgewise"))
}

/// The data dir holding the pulled models (`make models`).
fn models_home() -> PathBuf {
    let home = std::env::var_os("EDGEWISE_HOME")
        .map(PathBuf::from)
        .expect("EDGEWISE_HOME must point at the pulled models (make test sets it)");
    assert!(
        home.join("models/qwen2.5-coder-0.5b-instruct/manifest.json")
            .exists(),
        "run `make models` first ({})",
        home.display()
    );
    home
}

/// `/metrics` of a server on the models home: an admin route, so with the token the node made there.
fn metrics_of(port: u16) -> (u16, String) {
    let token = std::fs::read_to_string(models_home().join("admin.token")).expect("admin.token");
    let auth = format!("Authorization: Bearer {}\r\n", token.trim());
    let (status, _, body) = support::http_with(port, "GET", "/metrics", "", &auth);
    (status, body)
}

fn python() -> PathBuf {
    std::env::var_os("EDGEWISE_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python"))
}

/// A running `edgewise serve`, killed on drop.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(home: &Path, config: Option<&Path>, extra: &[&str]) -> Server {
        let mut cmd = bin();
        cmd.env("EDGEWISE_HOME", home)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(extra)
            .stderr(Stdio::piped())
            .stdout(Stdio::null());
        if let Some(c) = config {
            cmd.arg("--config").arg(c);
        }
        let mut child = cmd.spawn().expect("spawn edgewise serve");
        let stderr = child.stderr.take().expect("stderr");
        let mut lines = BufReader::new(stderr).lines();
        let deadline = Instant::now() + Duration::from_secs(120);
        let port = loop {
            assert!(Instant::now() < deadline, "server did not start in time");
            let line = lines
                .next()
                .expect("server exited before listening")
                .expect("read stderr");
            if let Some(addr) = line.split("http://").nth(1) {
                break addr
                    .split(' ')
                    .next()
                    .and_then(|a| a.rsplit(':').next())
                    .and_then(|p| p.parse().ok())
                    .expect("port");
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Server { child, port }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }

    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("proc status");
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .expect("VmRSS")
    }
}

fn assert_success(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A chat-only server with the given node config (YAML); the temp dir holds the config file.
fn server_with_config(yaml: &str) -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, yaml).unwrap();
    let server = Server::start(&models_home(), Some(&config), &["--no-embeddings"]);
    (dir, server)
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn run_answers_17_plus_25_with_42() {
    let _g = MODEL_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let out = bin()
        .env("EDGEWISE_HOME", models_home())
        .args([
            "run",
            "--temperature",
            "0",
            "What is 17 + 25? Reply with just the number.",
        ])
        .output()
        .unwrap();
    assert_success(&out);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42");
}

#[test]
fn openai_client_works_against_serve() {
    let _g = MODEL_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let home = models_home();
    let server = Server::start(&home, None, &[]);
    // Idle with the default model loaded, after it has served a chat request (so the pages a
    // generation touches are resident): RSS within model size + 200 MB.
    let (status, _, body) = http(
        server.port,
        "POST",
        "/v1/chat/completions",
        r#"{"model":"qwen2.5-coder-0.5b-instruct","messages":[{"role":"user","content":"Write a poem about the sea."}],"max_tokens":64,"temperature":1.0,"seed":7}"#,
    );
    assert_eq!(status, 200, "{body}");
    let model_bytes = std::fs::metadata(home.join("models/qwen2.5-coder-0.5b-instruct/model.gguf"))
        .unwrap()
        .len();
    let rss = server.rss_kib() * 1024;
    eprintln!(
        "idle RSS {:.1} MB, model {:.1} MB",
        rss as f64 / 1e6,
        model_bytes as f64 / 1e6
    );
    assert!(
        rss <= model_bytes + 200_000_000,
        "idle RSS {rss} exceeds model {model_bytes} + 200 MB"
    );

    let out = Command::new(python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/openai_client.py"))
        .args([
            &server.url(),
            "qwen2.5-coder-0.5b-instruct",
            "all-minilm-l6-v2",
        ])
        .output()
        .expect("run the openai client script (make venv)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && stdout.contains("all openai client checks passed"));

    // Malformed JSON: 400 with OpenAI's error shape.
    let (status, _, body) = http(server.port, "POST", "/v1/chat/completions", "{\"model\": ");
    assert_eq!(status, 400);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("malformed request body"),
        "{body}"
    );
    let (status, _, body) = http(
        server.port,
        "POST",
        "/v1/chat/completions",
        r#"{"model":"qwen2.5-coder-0.5b-instruct","messages":[{"role":"robot","content":"x"}]}"#,
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("unknown role 'robot'"), "{body}");

    let (status, metrics) = metrics_of(server.port);
    assert_eq!(status, 200);
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(-1.0)
    };
    assert!(value("edgewise_completion_tokens_total") > 0.0, "{metrics}");
    assert!(
        value("edgewise_prefix_cache_hit_ratio") > 0.0,
        "repeated system prompts should hit the prefix cache\n{metrics}"
    );
    assert!(
        metrics.contains(
            "edgewise_http_requests_total{route=\"/v1/chat/completions\",status=\"404\"}"
        ),
        "{metrics}"
    );
}

#[test]
fn full_queue_answers_503_with_retry_after_and_never_hangs() {
    let _g = MODEL_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let (_dir, server) = server_with_config("parallel: 1\nqueue_depth: 1\nkv_cells: 4096\n");
    let server = Arc::new(server);
    let body = r#"{"model":"qwen2.5-coder-0.5b-instruct","max_tokens":48,"messages":[{"role":"user","content":"Write a story about a pump."}]}"#;
    let start = Instant::now();
    let handles: Vec<_> = (0..6)
        .map(|_| {
            let s = server.clone();
            std::thread::spawn(move || http(s.port, "POST", "/v1/chat/completions", body))
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let ok = results.iter().filter(|r| r.0 == 200).count();
    let busy: Vec<_> = results.iter().filter(|r| r.0 == 503).collect();
    assert_eq!(
        ok + busy.len(),
        6,
        "only 200 or 503: {:?}",
        results.iter().map(|r| r.0).collect::<Vec<_>>()
    );
    assert!(
        ok >= 1 && !busy.is_empty(),
        "expected both served and refused requests, got {ok} ok / {} busy",
        busy.len()
    );
    assert!(busy
        .iter()
        .all(|r| r.1.to_ascii_lowercase().contains("retry-after: 1")
            && r.2.contains("server_overloaded")));
    assert!(start.elapsed() < Duration::from_secs(120));
}

/// Serves one file on loopback with Range support. The first response is cut after half the bytes to
/// exercise resume; `hits` counts requests that asked for a range.
fn file_server(bytes: Vec<u8>) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let ranged = Arc::new(AtomicUsize::new(0));
    let r = ranged.clone();
    std::thread::spawn(move || {
        for (i, stream) in listener.incoming().enumerate().take(20) {
            let Ok(mut s) = stream else { continue };
            let mut reader = BufReader::new(s.try_clone().unwrap());
            let mut from = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
                    from = v.trim().trim_end_matches('-').parse().unwrap_or(0);
                    r.fetch_add(1, Ordering::SeqCst);
                }
            }
            let rest = &bytes[from.min(bytes.len())..];
            let head = if from > 0 {
                format!("HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {from}-{}/{}\r\nContent-Length: {}\r\n\r\n", bytes.len() - 1, bytes.len(), rest.len())
            } else {
                format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", rest.len())
            };
            let _ = s.write_all(head.as_bytes());
            let cut = if i == 0 { rest.len() / 2 } else { rest.len() };
            let _ = s.write_all(&rest[..cut]);
        }
    });
    (port, ranged)
}

fn tiny_gguf() -> Vec<u8> {
    edgewise_models::gguf::write_fixture(&[("general.architecture", "llama")], &[("w", 4096)])
}

/// `edgewise pull tiny` with a user catalog entry pointing at the loopback file server.
fn pull_tiny(home: &Path, port: u16, sha: &str, size: usize) -> std::process::Output {
    std::fs::write(
        home.join("catalog.yaml"),
        catalog_entry("tiny", port, sha, size),
    )
    .unwrap();
    bin()
        .env("EDGEWISE_HOME", home)
        .args(["pull", "tiny"])
        .output()
        .unwrap()
}

fn catalog_entry(name: &str, port: u16, sha: &str, size: usize) -> String {
    format!("- name: {name}\n  architecture: llama\n  format: gguf\n  size: {size}\n  sha256: {sha}\n  sources:\n    - url: http://127.0.0.1:{port}/model.gguf\n")
}

#[test]
fn pull_resumes_an_interrupted_download_and_verifies_it() {
    let home = tempfile::tempdir().unwrap();
    let bytes = tiny_gguf();
    let sha = hex::encode(sha2::Sha256::digest(&bytes));
    let (port, ranged) = file_server(bytes.clone());
    let out = pull_tiny(home.path(), port, &sha, bytes.len());
    assert_success(&out);
    assert!(
        ranged.load(Ordering::SeqCst) >= 1,
        "the second attempt must resume with a Range request"
    );
    assert_eq!(
        std::fs::read(home.path().join("models/tiny/model.gguf")).unwrap(),
        bytes
    );
    let out = bin()
        .env("EDGEWISE_HOME", home.path())
        .args(["models", "verify", "tiny"])
        .output()
        .unwrap();
    assert!(out.status.success());
}

#[test]
fn pull_with_wrong_hash_is_refused_and_leaves_nothing_behind() {
    let home = tempfile::tempdir().unwrap();
    let bytes = tiny_gguf();
    let (port, _) = file_server(bytes.clone());
    let out = pull_tiny(home.path(), port, &"ab".repeat(32), bytes.len());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("sha256 mismatch for tiny"), "{err}");
    assert!(!home.path().join("models/tiny").exists());
    let leftovers: Vec<_> = std::fs::read_dir(home.path().join("downloads"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
}

#[test]
fn truncated_gguf_unknown_model_and_bad_signatures_are_clear_errors() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let run = |args: &[&str]| {
        let out = bin().env("EDGEWISE_HOME", h).args(args).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned()
                + &String::from_utf8_lossy(&out.stdout),
        )
    };
    let good = h.join("good.gguf");
    std::fs::write(&good, tiny_gguf()).unwrap();
    let cut = h.join("cut.gguf");
    let bytes = tiny_gguf();
    std::fs::write(&cut, &bytes[..bytes.len() - 1000]).unwrap();

    let (ok, msg) = run(&["models", "import", cut.to_str().unwrap(), "--name", "cut"]);
    assert!(
        !ok && msg.contains("truncated") && msg.contains("1000 missing"),
        "{msg}"
    );
    let (ok, msg) = run(&["run", "-m", cut.to_str().unwrap(), "hi"]);
    assert!(
        !ok && msg.contains("truncated"),
        "loading a truncated file directly: {msg}"
    );
    let (ok, msg) = run(&["run", "-m", "no-such-model", "hi"]);
    assert!(
        !ok && msg.contains("unknown model 'no-such-model'")
            && msg.contains("qwen2.5-coder-0.5b-instruct"),
        "{msg}"
    );

    assert!(run(&["models", "import", good.to_str().unwrap(), "--name", "good"]).0);
    let (ok, msg) = run(&["models", "keygen", "--out", h.join("k1").to_str().unwrap()]);
    assert!(ok, "{msg}");
    let pk1 = msg
        .lines()
        .find_map(|l| l.strip_prefix("public key: "))
        .unwrap()
        .to_owned();
    assert!(run(&["models", "keygen", "--out", h.join("k2").to_str().unwrap()]).0);
    std::fs::write(
        h.join("config.yaml"),
        format!("trusted_keys: [\"{pk1}\"]\n"),
    )
    .unwrap();

    let sign_with = |key: &str| {
        assert!(
            run(&[
                "models",
                "sign",
                "good",
                "--key",
                h.join(key).to_str().unwrap()
            ])
            .0
        )
    };
    let (ok, msg) = run(&["run", "-m", "good", "hi"]);
    assert!(!ok && msg.contains("unsigned"), "{msg}");
    sign_with("k2");
    let (ok, msg) = run(&["run", "-m", "good", "hi"]);
    assert!(
        !ok && msg.contains("not among the node's trusted_keys"),
        "{msg}"
    );
    // Signed by the trusted key, then the manifest is altered: the signature no longer matches.
    sign_with("k1");
    let manifest = h.join("models/good/manifest.json");
    let mut m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&manifest).unwrap()).unwrap();
    let sha = m["sha256"].as_str().unwrap().to_owned();
    let flipped = if sha.starts_with('0') { "1" } else { "0" };
    m["sha256"] = serde_json::json!(format!("{flipped}{}", &sha[1..]));
    std::fs::write(&manifest, m.to_string()).unwrap();
    let (ok, msg) = run(&["run", "-m", "good", "hi"]);
    assert!(!ok && msg.contains("does not match the manifest"), "{msg}");
}

#[test]
fn chat_session_saved_in_one_process_is_resumed_in_another() {
    let _g = MODEL_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let models = models_home();
    let home = tempfile::tempdir().unwrap();
    // A separate home (for the sessions dir) that reuses the pulled model through a symlink.
    std::fs::create_dir_all(home.path().join("models")).unwrap();
    std::os::unix::fs::symlink(
        models.join("models/qwen2.5-coder-0.5b-instruct"),
        home.path().join("models/qwen2.5-coder-0.5b-instruct"),
    )
    .unwrap();
    let chat = |input: &str| {
        let mut child = bin()
            .env("EDGEWISE_HOME", home.path())
            .args(["chat", "--temperature", "0", "--max-tokens", "24"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (_, err) = chat("My name is Ada and I run pump 7. Reply OK.\n/save plant\n/exit\n");
    assert!(err.contains("saved 2 messages"), "{err}");
    assert!(home.path().join("sessions/plant.kv").exists());
    let (out, err) = chat("/load plant\nWhat is my name? Answer with the name only.\n");
    assert!(err.contains("restored 2 messages"), "{err}");
    assert!(
        out.contains("Ada"),
        "the resumed chat must remember the saved history: {out}"
    );
    let (_, err) = chat("/load ../etc\n/load missing\n");
    assert!(
        err.contains("session name '../etc'") && err.contains("no saved session 'missing'"),
        "{err}"
    );
}

#[test]
fn api_key_is_required_when_configured() {
    let _g = MODEL_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let (_dir, server) = server_with_config("api_key: s3cret\nkv_cells: 4096\nparallel: 2\n");
    let (status, _, body) = http(server.port, "GET", "/v1/models", "");
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("invalid_api_key"));
    let (status, _, _) = http(server.port, "GET", "/health", "");
    assert_eq!(status, 200, "health stays open for liveness probes");
    let mut s = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    write!(s, "GET /v1/models HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer s3cret\r\nConnection: close\r\n\r\n").unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
}

#[test]
fn client_disconnect_mid_stream_cancels_generation() {
    let _g = MODEL_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let (_dir, server) = server_with_config("kv_cells: 4096\nparallel: 2\n");
    // The schema forces at least 1000 numbers, so the answer cannot end early on its own.
    let body = r#"{"model":"qwen2.5-coder-0.5b-instruct","stream":true,"max_tokens":2000,"messages":[{"role":"user","content":"List numbers."}],"response_format":{"type":"json_schema","json_schema":{"name":"n","schema":{"type":"array","items":{"type":"integer"},"minItems":1000}}}}"#;
    {
        let mut s = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        write!(s, "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
        let mut buf = [0u8; 2048];
        let n = s.read(&mut buf).unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        // The socket closes here, a few tokens into a 2000-token answer.
    }
    let active = |metrics: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("edgewise_active_sequences "))
            .map(|v| v.trim().to_owned())
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, metrics) = metrics_of(server.port);
        // 2000 tokens take ~40 s here, so reaching 0 within 10 s means the generation was cancelled.
        if active(&metrics).as_deref() == Some("0") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "generation still active 10 s after the client disconnected:\n{metrics}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
