//! Helpers shared by the end-to-end test binaries: a dependency-free loopback HTTP client (tests
//! must see exactly what goes over the wire, chunked SSE included).
// Each test binary uses a part of these.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

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
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(180)))?;
    write!(s, "{method} {path} HTTP/1.1\r\nHost: localhost\r\n{headers}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())?;
    Ok(s)
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
    let Ok(mut s) = connect_with(port, method, path, body, headers) else {
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
