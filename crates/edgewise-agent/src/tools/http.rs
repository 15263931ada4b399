//! `http(s)://` endpoints and `builtin:http_request`, under the egress policy. The host is resolved
//! once, every address checked, and the connection pinned to a checked address (no second lookup
//! that could answer differently); redirects are not followed.

use std::time::Duration;

use async_trait::async_trait;
use edgewise_infer::ToolSpec;
use reqwest::Url;
use serde_json::Value;

use super::{resolve_destination, Tool, ToolError};
use crate::egress::EgressPolicy;

const MAX_BODY: usize = 64 * 1024;

pub struct HttpTool {
    spec: ToolSpec,
    /// Base URL of a capability; `None` for `http_request`, whose calls carry the URL.
    base: Option<Url>,
    egress: EgressPolicy,
    timeout: Duration,
    /// URL schemes its calls may use.
    schemes: Vec<String>,
}

/// What an HTTP tool may use unless told otherwise.
fn web_schemes() -> Vec<String> {
    vec!["http".into(), "https".into()]
}

impl HttpTool {
    pub fn fixed(
        spec: ToolSpec,
        base: String,
        egress: EgressPolicy,
        timeout: Duration,
    ) -> Result<Self, String> {
        let base = Url::parse(&base).map_err(|e| format!("invalid URL: {e}"))?;
        Ok(Self {
            spec,
            base: Some(base),
            egress,
            timeout,
            schemes: web_schemes(),
        })
    }

    pub fn free(spec: ToolSpec, egress: EgressPolicy, timeout: Duration) -> Self {
        Self {
            spec,
            base: None,
            egress,
            timeout,
            schemes: web_schemes(),
        }
    }

    /// Only URLs of `schemes` (a subset of `http`, `https`): a placed run's `http_request` gets
    /// only those its `mesh.accept_runs.policy.schemes` lists.
    pub fn only_schemes(self, schemes: Vec<String>) -> Self {
        Self { schemes, ..self }
    }

    fn target(&self, args: &Value) -> Result<Url, ToolError> {
        match &self.base {
            Some(base) => {
                let path = args.get("path").and_then(Value::as_str).unwrap_or("");
                if path.contains("://") || path.starts_with("//") {
                    return Err(ToolError::Refused(format!(
                        "path '{path}' must be relative to {base}"
                    )));
                }
                let joined = format!("{}{}", base.as_str().trim_end_matches('/'), {
                    if path.is_empty() || path.starts_with('/') {
                        path.to_owned()
                    } else {
                        format!("/{path}")
                    }
                });
                Url::parse(&joined)
                    .map_err(|e| ToolError::Refused(format!("invalid URL {joined}: {e}")))
            }
            None => {
                let url = args
                    .get("url")
                    .and_then(Value::as_str)
                    .ok_or_else(|| ToolError::Refused("`url` is required".into()))?;
                Url::parse(url).map_err(|e| ToolError::Refused(format!("invalid URL {url}: {e}")))
            }
        }
    }
}

#[async_trait]
impl Tool for HttpTool {
    fn spec(&self) -> &ToolSpec {
        &self.spec
    }

    async fn call(&self, args: Value) -> Result<String, ToolError> {
        let url = self.target(&args)?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(ToolError::Refused(format!(
                "only http and https URLs are allowed, not {}",
                url.scheme()
            )));
        }
        if !self.schemes.iter().any(|s| s == url.scheme()) {
            return Err(ToolError::Refused(format!(
                "{} URLs are not allowed here (the policy's schemes list: {})",
                url.scheme(),
                if self.schemes.is_empty() {
                    "none of http, https".to_owned()
                } else {
                    self.schemes.join(", ")
                }
            )));
        }
        let host = url
            .host_str()
            .ok_or_else(|| ToolError::Refused(format!("{url} has no host")))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = url.port_or_known_default().unwrap_or(80);
        let addrs = resolve_destination(&host, port, &self.egress).await?;
        let client = reqwest::Client::builder()
            .timeout(self.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .resolve(&host, addrs[0])
            .build()
            .map_err(|e| ToolError::Failed(format!("http client: {e}")))?;
        let method = args
            .get("method")
            .and_then(Value::as_str)
            .unwrap_or("GET")
            .to_ascii_uppercase();
        let method = reqwest::Method::from_bytes(method.as_bytes())
            .map_err(|_| ToolError::Refused(format!("unknown HTTP method {method}")))?;
        let mut req = client.request(method, url.clone());
        if let Some(body) = args.get("body") {
            req = req.body(match body {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            });
        }
        let resp = req
            .send()
            .await
            .map_err(|e| ToolError::Failed(format!("{url}: {e}")))?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| ToolError::Failed(format!("{url}: {e}")))?;
        let mut text = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_BODY)]).into_owned();
        if bytes.len() > MAX_BODY {
            text.push_str(&format!(
                "\n[truncated: {} of {} bytes shown]",
                MAX_BODY,
                bytes.len()
            ));
        }
        if status.is_client_error() || status.is_server_error() {
            return Err(ToolError::Failed(format!(
                "{url} answered {status}: {text}"
            )));
        }
        Ok(text)
    }
}
