//! Node security end to end: each test attacks one promise of SECURITY.md against a real
//! `edgewise serve` on loopback, the way a web page on the same machine, a DNS-rebinding page or a
//! client without the operator's token would.

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::{edgewise, home, http, http_with, write_config, Serve, TEST_ADMIN_TOKEN};

/// A spec that registers on any node serving the default model, and runs a while.
const SPEC: &str = r#"agent_id: "probe"
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
  max_steps: 4
"#;

fn node(config: &str) -> (tempfile::TempDir, Serve) {
    let home = home();
    let config = write_config(home.path(), config);
    let serve = Serve::start(home.path(), &config);
    (home, serve)
}

fn registered_agents(port: u16) -> Vec<String> {
    let (status, _, body) = http(port, "GET", "/v1/agents", "");
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["id"].as_str().map(str::to_owned))
        .collect()
}

fn wrapped_spec() -> String {
    serde_json::json!({"spec": SPEC, "base_dir": "/tmp"}).to_string()
}

#[test]
fn a_registration_without_the_admin_token_is_refused() {
    let (_home, node) = node("mqtt_listen: \"\"\n");
    for auth in [
        "Authorization: Bearer \r\n",
        "Authorization: Bearer wrong-token-of-the-right-length-000000\r\n",
        "Authorization: Basic Zm9vOmJhcg==\r\n",
    ] {
        let (status, _, body) = http_with(node.port, "POST", "/v1/agents", SPEC, auth);
        assert_eq!(status, 401, "{auth}: {body}");
        assert!(body.contains("admin token"), "{body}");
    }
    // Reading node state needs it too; inference and health do not.
    for path in [
        "/v1/agents",
        "/v1/kv/plant",
        "/v1/docs",
        "/v1/knowledge",
        "/v1/components",
        "/metrics",
    ] {
        let (status, _, body) =
            http_with(node.port, "GET", path, "", "Authorization: Bearer nope\r\n");
        assert_eq!(status, 401, "{path}: {body}");
    }
    assert_eq!(
        http_with(node.port, "GET", "/v1/models", "", "Authorization: x\r\n").0,
        200
    );
    assert_eq!(
        http_with(node.port, "GET", "/health", "", "Authorization: x\r\n").0,
        200
    );
    assert!(registered_agents(node.port).is_empty());
    // The operator's token works.
    let (status, _, body) = http(node.port, "POST", "/v1/agents", SPEC);
    assert_eq!(status, 201, "{body}");
}

#[test]
fn a_cross_origin_text_plain_registration_from_a_web_page_is_refused() {
    let (_home, node) =
        node("mqtt_listen: \"\"\nallowed_origins: [\"http://console.plant.local:8080\"]\n");
    // What `fetch(url, {method: "POST", mode: "no-cors", body})` sends: no preflight, so the node
    // must refuse it by itself. Even a page that somehow had the token is refused by its Origin.
    let page = "Origin: http://evil.example\r\nContent-Type: text/plain;charset=UTF-8\r\n";
    let (status, _, body) = http_with(node.port, "POST", "/v1/agents", &wrapped_spec(), page);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("allowed_origins"), "{body}");
    let (status, _, body) = http_with(
        node.port,
        "POST",
        "/v1/agents",
        &wrapped_spec(),
        "Origin: null\r\nContent-Type: application/json\r\n",
    );
    assert_eq!(status, 403, "a sandboxed page's null origin: {body}");
    // A body a page can send without a preflight is refused even without an Origin.
    for simple in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ] {
        let header = format!("Content-Type: {simple}\r\n");
        let (status, _, body) =
            http_with(node.port, "POST", "/v1/agents", &wrapped_spec(), &header);
        assert_eq!(status, 415, "{simple}: {body}");
        let (status, _, body) = http_with(node.port, "PUT", "/v1/kv/plant/valve", "open", &header);
        assert_eq!(status, 415, "{simple} on kv: {body}");
    }
    assert!(registered_agents(node.port).is_empty());
    // The configured console origin may call the node.
    let (status, _, body) = http_with(
        node.port,
        "POST",
        "/v1/agents",
        &wrapped_spec(),
        "Origin: http://console.plant.local:8080\r\nContent-Type: application/json\r\n",
    );
    assert_eq!(status, 201, "{body}");
    assert_eq!(registered_agents(node.port), ["probe"]);
}

#[test]
fn a_rebinding_host_is_refused_and_configured_names_are_served() {
    let (_home, node) = node("mqtt_listen: \"\"\nallowed_hosts: [gateway.plant.local]\n");
    let p = node.port;
    for host in [
        format!("evil.example:{p}"),
        "attacker.localhost.example".into(),
    ] {
        let header = format!("Host: {host}\r\n");
        for (method, path, body) in [
            ("GET", "/v1/agents", ""),
            ("POST", "/v1/agents", SPEC),
            ("POST", "/v1/chat/completions", "{}"),
        ] {
            let (status, _, answer) = http_with(p, method, path, body, &header);
            assert_eq!(status, 421, "{host} {method} {path}: {answer}");
        }
    }
    for host in ["[::1]evil.example", "evil.example:80:80", ":8080"] {
        let header = format!("Host: {host}\r\n");
        assert_eq!(
            http_with(p, "GET", "/v1/agents", "", &header).0,
            421,
            "{host}"
        );
    }
    // Even liveness says nothing to a rebinding page (it would name the models).
    assert_eq!(
        http_with(p, "GET", "/health", "", "Host: evil.example\r\n").0,
        421
    );
    // Two Host headers, or a target naming another host than Host, are not guessed at.
    let two = "Host: localhost\r\nHost: evil.example\r\n";
    assert_eq!(http_with(p, "GET", "/v1/agents", "", two).0, 400);
    let absolute = format!("http://evil.example:{p}/v1/agents");
    assert_eq!(http(p, "GET", &absolute, "").0, 400);
    assert!(registered_agents(p).is_empty());
    for host in [
        format!("localhost:{p}"),
        format!("127.0.0.1:{p}"),
        format!("[::1]:{p}"),
        format!("GATEWAY.plant.local:{p}"),
    ] {
        let header = format!("Host: {host}\r\n");
        let (status, _, answer) = http_with(p, "GET", "/v1/agents", "", &header);
        assert_eq!(status, 200, "{host}: {answer}");
    }
}

#[test]
fn the_admin_token_is_made_private_on_first_start_and_rotates_without_a_restart() {
    let home = home();
    std::fs::remove_file(home.path().join("admin.token")).unwrap();
    let config = write_config(home.path(), "mqtt_listen: \"\"\n");
    let node = Serve::start(home.path(), &config);
    let file = home.path().join("admin.token");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "admin.token mode {mode:o}");
    let show = edgewise(home.path())
        .args(["token", "show"])
        .output()
        .unwrap();
    assert!(show.status.success(), "{}", support::text(&show));
    let first = String::from_utf8(show.stdout).unwrap().trim().to_owned();
    assert_eq!(first, std::fs::read_to_string(&file).unwrap().trim());
    assert!(first.len() >= 32 && first != TEST_ADMIN_TOKEN);
    let with = |t: &str| {
        http_with(
            node.port,
            "GET",
            "/v1/agents",
            "",
            &format!("Authorization: Bearer {t}\r\n"),
        )
        .0
    };
    assert_eq!(with(&first), 200);
    assert_eq!(with(TEST_ADMIN_TOKEN), 401);

    let rotate = edgewise(home.path())
        .args(["token", "rotate"])
        .output()
        .unwrap();
    assert!(rotate.status.success(), "{}", support::text(&rotate));
    let second = String::from_utf8(rotate.stdout).unwrap().trim().to_owned();
    assert_ne!(first, second);
    assert_eq!(with(&first), 401, "the old token must stop working at once");
    assert_eq!(with(&second), 200);

    // A token file others can read, or none at all, accepts nothing until the operator acts.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert_eq!(
        with(&second),
        401,
        "a world-readable token must stop working"
    );
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(with(&second), 200);
    std::fs::remove_file(&file).unwrap();
    assert_eq!(with(&second), 401, "a removed token must stop working");
    let rotate = edgewise(home.path())
        .args(["token", "rotate"])
        .output()
        .unwrap();
    let third = String::from_utf8(rotate.stdout).unwrap().trim().to_owned();
    assert_eq!(with(&third), 200);

    // A token file others can read is refused at start, with the fix in the message.
    drop(node);
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = edgewise(home.path())
        .arg("--config")
        .arg(&config)
        .args(["serve", "--no-embeddings", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        support::text(&out).contains("chmod 600"),
        "{}",
        support::text(&out)
    );
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn two_hundred_concurrent_run_requests_are_bounded_and_the_node_stays_healthy() {
    let (_home, node) = node(
        "mqtt_listen: \"\"\nparallel: 2\nlimits:\n  concurrent_runs: 3\n  concurrent_runs_per_agent: 2\n",
    );
    let p = node.port;
    let (status, _, body) = http(p, "POST", "/v1/agents", SPEC);
    assert_eq!(status, 201, "{body}");
    let before = rss_kib(node.guard.0.id());
    // 200 requests from 20 threads; each reads only the status line and head of its answer.
    let answers: Vec<(u16, String)> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..20)
            .map(|_| {
                s.spawn(move || {
                    (0..10)
                        .map(|_| {
                            let body =
                                r#"{"task": "Store 7 under shift.", "stream": true, "seed": 1}"#;
                            let mut conn =
                                support::connect(p, "POST", "/v1/agents/probe/runs", body).unwrap();
                            head_of(&mut conn)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect()
    });
    let accepted = answers.iter().filter(|(s, _)| *s == 200).count();
    let refused: Vec<_> = answers.iter().filter(|(s, _)| *s == 429).collect();
    assert_eq!(accepted + refused.len(), 200, "{answers:?}");
    assert!(
        (1..=10).contains(&accepted),
        "{accepted} runs started at once"
    );
    assert!(refused
        .iter()
        .all(|(_, head)| head.to_ascii_lowercase().contains("retry-after: 1")));
    assert_eq!(http(p, "GET", "/health", "").0, 200);
    let after = rss_kib(node.guard.0.id());
    assert!(
        after < before + 256 * 1024,
        "RSS grew from {before} to {after} KiB"
    );
    // Every run that was started either ends or is cancelled; none is left running unbounded.
    let (_, _, runs) = http(p, "GET", "/v1/agents/probe/runs", "");
    let runs: Value = serde_json::from_str(&runs).unwrap();
    for r in runs["data"].as_array().unwrap() {
        let path = format!("/v1/agents/probe/runs/{}", r["run"].as_str().unwrap());
        http(p, "DELETE", &path, "");
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let body = r#"{"task": "Store 7 under shift.", "stream": false, "seed": 1}"#;
        let (status, _, answer) = http(p, "POST", "/v1/agents/probe/runs", body);
        if status == 200 {
            break;
        }
        assert_eq!(status, 429, "{answer}");
        assert!(
            Instant::now() < deadline,
            "the node never admitted a run again"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Reads a response's status and head, then drops the connection (the run goes on).
fn head_of(conn: &mut std::net::TcpStream) -> (u16, String) {
    use std::io::Read;
    let mut raw = Vec::new();
    let mut buf = [0u8; 1024];
    while !raw.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&raw).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, head)
}

#[test]
fn absurd_request_sizes_are_refused_with_what_to_change() {
    let (_home, node) = node("mqtt_listen: \"\"\n");
    let stop = "x".repeat(10_000);
    let body = serde_json::json!({
        "model": "qwen2.5-coder-0.5b-instruct",
        "messages": [{"role": "user", "content": "hi"}],
        "stop": [stop],
    })
    .to_string();
    let (status, _, answer) = http(node.port, "POST", "/v1/chat/completions", &body);
    assert_eq!(status, 400, "{answer}");
    assert!(answer.contains("stop"), "{answer}");
    // A body over the route's limit is refused before it is read whole.
    let huge = format!("{{\"task\": \"{}\"}}", "a".repeat(9 << 20));
    let (status, _, answer) = http(node.port, "POST", "/v1/agents/probe/runs", &huge);
    assert_eq!(status, 413, "{answer}");
    assert_eq!(http(node.port, "GET", "/health", "").0, 200);
}

#[test]
fn an_embedding_slot_stays_taken_when_its_client_disconnects() {
    let home = home();
    let config = write_config(
        home.path(),
        "mqtt_listen: \"\"\nlimits:\n  concurrent_embeddings: 1\n",
    );
    let node = Serve::start_embedding(home.path(), &config);
    let p = node.port;
    let long: Vec<String> = (0..64)
        .map(|i| {
            format!("reading {i}: ") + &"the pump pressure in zone four rose again ".repeat(12)
        })
        .collect();
    let big = serde_json::json!({"model": "all-minilm-l6-v2", "input": long}).to_string();
    // A client that starts a long embedding and hangs up: the work goes on, and so must its slot.
    let conn = support::connect(p, "POST", "/v1/embeddings", &big).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    drop(conn);
    let small = r#"{"model": "all-minilm-l6-v2", "input": "zone four"}"#;
    let (status, head, body) = http(p, "POST", "/v1/embeddings", small);
    assert_eq!(
        status, 503,
        "a second embedding ran beside the first: {body}"
    );
    assert!(
        head.to_ascii_lowercase().contains("retry-after: 1"),
        "{head}"
    );
    // Once the first is done, the slot is free again.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (status, _, body) = http(p, "POST", "/v1/embeddings", small);
        if status == 200 {
            break;
        }
        assert_eq!(status, 503, "{body}");
        assert!(Instant::now() < deadline, "the slot never came back");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A connection to the node from the loopback address `from` (127.0.0.x: another client).
fn connect_from(from: [u8; 4], port: u16) -> std::net::TcpStream {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket
        .bind(&std::net::SocketAddr::from((from, 0)).into())
        .unwrap();
    socket
        .connect(&std::net::SocketAddr::from(([127, 0, 0, 1], port)).into())
        .unwrap();
    let c: std::net::TcpStream = socket.into();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c
}

/// Slow, idle and greedy clients cannot hold the node's sockets: connections beyond
/// `limits.connections` (or beyond `limits.connections_per_client` from one address) are answered
/// 503 at once; a connection that does not finish a request head (slowloris), or idles after
/// one, is closed after `limits.request_head_timeout`; a body must arrive within
/// `limits.request_body_timeout`, trickled or not; a client that stops reading its answers is
/// cut off after `limits.send_timeout`.
#[test]
fn slow_idle_and_greedy_clients_cannot_hold_the_nodes_connections() {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    let (_home, node) = node(
        "mqtt_listen: \"\"\nlimits:\n  connections: 6\n  connections_per_client: 4\n  request_head_timeout: 1s\n  request_body_timeout: 1s\n  send_timeout: 1s\n",
    );
    let from = |ip: [u8; 4]| connect_from(ip, node.port);
    let metrics = format!(
        "GET /metrics HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {TEST_ADMIN_TOKEN}\r\n\r\n"
    );
    // A kept-alive connection that saw itself as the only one open (the start-up probes'
    // connections have closed) keeps one slot.
    let deadline = Instant::now() + Duration::from_secs(10);
    let kept_alive = loop {
        let mut c = from([127, 0, 0, 1]);
        c.write_all(metrics.as_bytes()).unwrap();
        let (status, head) = head_of(&mut c);
        assert_eq!(status, 200, "{head}");
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no content-length: {head}"));
        let body_start = head.find("\r\n\r\n").unwrap() + 4;
        let mut body = head.as_bytes()[body_start..].to_vec();
        let mut rest = vec![0; length - body.len()];
        c.read_exact(&mut rest).unwrap();
        body.extend(rest);
        if String::from_utf8_lossy(&body)
            .lines()
            .any(|l| l == "edgewise_http_connections_open 1")
        {
            break c;
        }
        assert!(Instant::now() < deadline, "other connections stay open");
        std::thread::sleep(Duration::from_millis(50));
    };
    let slow_from = |ip: [u8; 4]| {
        let mut c = from(ip);
        c.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n")
            .unwrap();
        c
    };
    let refused = |ip: [u8; 4]| {
        let mut c = from(ip);
        let _ = c.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n");
        let (status, head) = head_of(&mut c);
        assert_eq!(status, 503, "{head}");
        assert!(head.contains("Retry-After: 1"), "{head}");
    };
    // Clients that never finish their request heads: 127.0.0.1 takes its four slots, and a fifth
    // connection from it is answered at once, not queued ...
    let mut held: Vec<TcpStream> = (0..3).map(|_| slow_from([127, 0, 0, 1])).collect();
    held.push(kept_alive);
    refused([127, 0, 0, 1]);
    // ... while another address is still served, until the node's six are taken.
    held.extend((0..2).map(|_| slow_from([127, 0, 0, 2])));
    refused([127, 0, 0, 3]);
    // Within the head timeout each is cut off, the slow ones mid-head and the kept-alive one
    // idle (well before our own 10 s read timeout).
    for mut c in held {
        let mut rest = Vec::new();
        let read = c.read_to_end(&mut rest);
        assert!(
            read.is_ok(),
            "a client still holds its connection: {read:?}"
        );
    }
    // The node serves again, and counted the refusals.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _, body) = http(node.port, "GET", "/metrics", "");
        if status == 200 {
            assert!(
                body.contains("edgewise_http_connections_refused_total 2"),
                "{body}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "the node does not serve again");
        std::thread::sleep(Duration::from_millis(50));
    }
    // A body that stops arriving, or arrives a byte at a time, is answered once the body
    // timeout has passed, while its client is still sending.
    let body_head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n";
    let mut stalled = from([127, 0, 0, 1]);
    stalled.write_all(body_head).unwrap();
    stalled.write_all(b"{\"model\":").unwrap();
    let (status, head) = head_of(&mut stalled);
    assert!(status == 408 || status == 400, "{head}");
    let mut trickled = from([127, 0, 0, 1]);
    trickled.write_all(body_head).unwrap();
    let mut writer = trickled.try_clone().unwrap();
    let sending = std::thread::spawn(move || {
        for _ in 0..60 {
            if writer.write_all(b" ").is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    });
    let (status, head) = head_of(&mut trickled);
    assert!(
        status == 408 || status == 400,
        "a trickled body is still read: {head}"
    );
    assert!(!sending.is_finished() || status != 0);
    drop(trickled);
    // A client that sends requests but never reads the answers is cut off once the node's
    // writes stall, instead of holding the connection and the node's buffers.
    let greedy = from([127, 0, 0, 1]);
    let small: libc::c_int = 4096;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&greedy);
    // SAFETY: a plain setsockopt on a socket this test owns.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&small as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    greedy
        .set_write_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let mut greedy = greedy;
    let requests = b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n".repeat(1000);
    let cut_off = (0..200).find_map(|_| greedy.write_all(&requests).err());
    let kind = cut_off.map(|e| e.kind());
    assert!(
        matches!(
            kind,
            Some(std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset)
        ),
        "a client that reads nothing still holds its connection: {kind:?}"
    );
    let _ = sending.join();
}
