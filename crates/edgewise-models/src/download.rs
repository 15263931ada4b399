//! Resumable HTTP download to a `.partial` file. Only `pull` uses it.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use reqwest::blocking::Client;
use reqwest::header::{CONTENT_RANGE, RANGE};
use reqwest::StatusCode;

use crate::{ModelError, Progress};

/// Attempts per file; each attempt resumes from the bytes already on disk.
const ATTEMPTS: usize = 4;

/// The error with its causes: reqwest's top-level message alone ("error sending request") hides
/// whether DNS, TLS or the connection failed.
pub(crate) fn describe(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

pub(crate) fn client() -> Result<Client, ModelError> {
    Client::builder()
        .connect_timeout(Duration::from_secs(20))
        // Blocking reqwest applies this to each read, so it bounds a stalled transfer, not the total.
        .timeout(Duration::from_secs(60))
        .user_agent(concat!("edgewise/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| ModelError::Network {
            url: String::new(),
            message: describe(&e),
        })
}

/// Downloads `url` into `partial`, resuming from its current length. Returns the final length.
pub(crate) fn download_resumable(
    client: &Client,
    url: &str,
    partial: &Path,
    progress: &dyn Progress,
) -> Result<u64, ModelError> {
    let mut last_error = None;
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            std::thread::sleep(Duration::from_millis(500 * (1 << attempt)));
            tracing::warn!(url, attempt, "retrying download");
        }
        match download_once(client, url, partial, progress) {
            Ok(len) => return Ok(len),
            Err(e @ ModelError::Network { .. }) => last_error = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last_error.unwrap_or_else(|| ModelError::Network {
        url: url.into(),
        message: "gave up".into(),
    }))
}

fn download_once(
    client: &Client,
    url: &str,
    partial: &Path,
    progress: &dyn Progress,
) -> Result<u64, ModelError> {
    let have = std::fs::metadata(partial).map(|m| m.len()).unwrap_or(0);
    let net = |e: reqwest::Error| ModelError::Network {
        url: url.into(),
        message: describe(&e),
    };
    let mut req = client.get(url);
    if have > 0 {
        req = req.header(RANGE, format!("bytes={have}-"));
    }
    let mut resp = req.send().map_err(net)?;
    let status = resp.status();
    let append = match status {
        StatusCode::PARTIAL_CONTENT => {
            // Trust the range only when the server says it starts where we stopped.
            let starts_at_have = resp
                .headers()
                .get(CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.starts_with(&format!("bytes {have}-")))
                .unwrap_or(false);
            if !starts_at_have {
                return Err(ModelError::Network {
                    url: url.into(),
                    message: "server sent an unexpected byte range".into(),
                });
            }
            true
        }
        StatusCode::OK => false,
        StatusCode::RANGE_NOT_SATISFIABLE if have > 0 => return Ok(have),
        s if s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS => {
            return Err(ModelError::Network {
                url: url.into(),
                message: format!("HTTP {}", s.as_u16()),
            })
        }
        s => {
            return Err(ModelError::HttpStatus {
                url: url.into(),
                status: s.as_u16(),
            })
        }
    };
    let mut file = OpenOptions::new()
        .create(true)
        .write(true)
        .append(append)
        .truncate(!append)
        .open(partial)
        .map_err(ModelError::io(partial))?;
    let mut written = if append { have } else { 0 };
    progress.set_position(written);
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = resp.read(&mut buf).map_err(|e| ModelError::Network {
            url: url.into(),
            message: describe(&e),
        })?;
        if n == 0 {
            break;
        }
        file.write_all(&buf[..n]).map_err(ModelError::io(partial))?;
        written += n as u64;
        progress.advance(n as u64);
    }
    file.sync_all().map_err(ModelError::io(partial))?;
    Ok(written)
}
