//! `unix://PATH`: one JSON line out (the arguments), one JSON line back.

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use edgewise_infer::ToolSpec;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use super::{Tool, ToolError};

/// Replies longer than this are cut off: an observation must fit the model's context.
const MAX_REPLY: usize = 64 * 1024;

pub struct UnixTool {
    spec: ToolSpec,
    path: PathBuf,
    timeout: Duration,
}

impl UnixTool {
    pub fn new(spec: ToolSpec, path: PathBuf, timeout: Duration) -> Self {
        Self {
            spec,
            path,
            timeout,
        }
    }

    async fn exchange(&self, args: &Value) -> Result<String, ToolError> {
        let stream = UnixStream::connect(&self.path).await.map_err(|e| {
            ToolError::Failed(format!(
                "cannot connect to {}: {e} (is the service running?)",
                self.path.display()
            ))
        })?;
        let (read, mut write) = stream.into_split();
        let mut line = args.to_string();
        line.push('\n');
        write
            .write_all(line.as_bytes())
            .await
            .map_err(|e| ToolError::Failed(format!("write to {}: {e}", self.path.display())))?;
        let mut reply = String::new();
        let mut reader = BufReader::new(read).take(MAX_REPLY as u64);
        reader
            .read_line(&mut reply)
            .await
            .map_err(|e| ToolError::Failed(format!("read from {}: {e}", self.path.display())))?;
        if reply.trim().is_empty() {
            return Err(ToolError::Failed(format!(
                "{} closed the connection without a reply",
                self.path.display()
            )));
        }
        Ok(reply.trim_end().to_owned())
    }
}

#[async_trait]
impl Tool for UnixTool {
    fn spec(&self) -> &ToolSpec {
        &self.spec
    }

    async fn call(&self, args: Value) -> Result<String, ToolError> {
        match tokio::time::timeout(self.timeout, self.exchange(&args)).await {
            Ok(r) => r,
            Err(_) => Err(ToolError::Failed(format!(
                "{} did not reply within {:?}",
                self.path.display(),
                self.timeout
            ))),
        }
    }
}
