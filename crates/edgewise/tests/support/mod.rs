//! Helpers shared by the end-to-end test binaries: a dependency-free loopback HTTP client (tests
//! must see exactly what goes over the wire, chunked SSE included).
// Each test binary uses a part of these.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The admin token of every data dir `home()` makes (an operator may provision the token file
/// like this); `connect*` and `http*` send it unless the caller gives its own `Authorization`.
pub const TEST_ADMIN_TOKEN: &str = "edgewise-test-admin-token-0123456789abcdef";

/// Writes `token` as `home`'s admin token (mode 0600, as the node requires).
pub fn write_admin_token(home: &Path, token: &str) {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(home.join("admin.token"))
        .unwrap();
    writeln!(f, "{token}").unwrap();
}

/// A fresh data dir whose models/ is the pulled models (`make models`), so state and audit log
/// start empty for each test.
pub fn home() -> tempfile::TempDir {
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
    write_admin_token(dir.path(), TEST_ADMIN_TOKEN);
    dir
}

/// Writes `text` as `home`'s config.yaml and returns its path.
pub fn write_config(home: &Path, text: &str) -> PathBuf {
    let path = home.join("config.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The binary under test on data dir `home`, without the caller's config. Configs may name
/// `EDGEWISE_TEST_ADMIN_TOKEN` (e.g. `sync.api_key_env`) to reach another test node.
pub fn edgewise(home: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_edgewise"));
    c.env("EDGEWISE_HOME", home)
        .env_remove("EDGEWISE_CONFIG")
        .env("EDGEWISE_TEST_ADMIN_TOKEN", TEST_ADMIN_TOKEN);
    c
}

/// Kills the process on drop.
pub struct Guard(pub Child);
impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `edgewise serve` on a free loopback port.
pub struct Serve {
    pub guard: Guard,
    pub port: u16,
}

impl Serve {
    pub fn start(home: &Path, config: &Path) -> Serve {
        Self::start_on(home, config, free_port())
    }

    /// On a given port: a node restarted where its peers expect it.
    pub fn start_on(home: &Path, config: &Path, port: u16) -> Serve {
        Self::start_with(home, config, port, &["--no-embeddings"])
    }

    /// With `/v1/embeddings` served (the embedding model loads on first use).
    pub fn start_embedding(home: &Path, config: &Path) -> Serve {
        Self::start_with(home, config, free_port(), &[])
    }

    fn start_with(home: &Path, config: &Path, port: u16, extra: &[&str]) -> Serve {
        let child = edgewise(home)
            .arg("--config")
            .arg(config)
            .arg("serve")
            .args(extra)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn edgewise serve");
        let guard = Guard(child);
        let deadline = Instant::now() + Duration::from_secs(120);
        while http(port, "GET", "/health", "").0 != 200 {
            assert!(Instant::now() < deadline, "edgewise serve did not come up");
            std::thread::sleep(Duration::from_millis(100));
        }
        Serve { guard, port }
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill_9(mut self) {
        self.guard.0.kill().unwrap();
        self.guard.0.wait().unwrap();
    }
}

pub fn connect(port: u16, method: &str, path: &str, body: &str) -> std::io::Result<TcpStream> {
    connect_with(port, method, path, body, "")
}

/// `headers`: extra header lines, each ending in `\r\n`.
pub fn connect_with(
    port: u16,
    method: &str,
    path: &str,
    body: &str,
    headers: &str,
) -> std::io::Result<TcpStream> {
    connect_bytes(port, method, path, body.as_bytes(), headers)
}

fn connect_bytes(
    port: u16,
    method: &str,
    path: &str,
    body: &[u8],
    headers: &str,
) -> std::io::Result<TcpStream> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(180)))?;
    let lower = headers.to_ascii_lowercase();
    // A body that is not JSON is an agent spec's YAML in these tests.
    let content_type = if lower.contains("content-type:") {
        ""
    } else if body.is_empty() || body.starts_with(b"{") || body.starts_with(b"[") {
        "Content-Type: application/json\r\n"
    } else {
        "Content-Type: application/yaml\r\n"
    };
    let auth = if lower.contains("authorization:") {
        String::new()
    } else {
        format!("Authorization: Bearer {TEST_ADMIN_TOKEN}\r\n")
    };
    let host = if lower.contains("host:") {
        ""
    } else {
        "Host: localhost\r\n"
    };
    write!(s, "{method} {path} HTTP/1.1\r\n{host}{headers}{auth}{content_type}Content-Length: {}\r\nConnection: close\r\n\r\n", body.len())?;
    s.write_all(body)?;
    Ok(s)
}

/// A request with a binary body of `content_type`.
pub fn http_bytes(
    port: u16,
    method: &str,
    path: &str,
    body: &[u8],
    content_type: &str,
) -> (u16, String, String) {
    let headers = format!("Content-Type: {content_type}\r\n");
    read_response(connect_bytes(port, method, path, body, &headers))
}

/// One loopback HTTP/1.1 request: (status, head, body); status 0 when nothing answers.
pub fn http(port: u16, method: &str, path: &str, body: &str) -> (u16, String, String) {
    http_with(port, method, path, body, "")
}

/// `http` with extra header lines (each ending in `\r\n`).
pub fn http_with(
    port: u16,
    method: &str,
    path: &str,
    body: &str,
    headers: &str,
) -> (u16, String, String) {
    read_response(connect_with(port, method, path, body, headers))
}

fn read_response(stream: std::io::Result<TcpStream>) -> (u16, String, String) {
    let Ok(mut s) = stream else {
        return (0, String::new(), String::new());
    };
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let raw = String::from_utf8_lossy(&raw);
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (status, head.to_owned(), body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// A finished process, for assertion messages.
pub fn text(o: &std::process::Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}
