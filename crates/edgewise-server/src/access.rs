//! Who may call which route. Three checks run before any handler:
//!
//! 1. `guard_browser`: the `Host` must name this node (an IP address, `localhost` or a configured
//!    `allowed_hosts` name), so a DNS-rebinding page cannot reach it; a request with an `Origin`
//!    must come from a configured `allowed_origins` page; a body must say what it is
//!    (`Content-Type`), and never one of the types a browser may send cross-site without asking.
//! 2. `require_admin`: routes that change or reveal node state need the admin token.
//! 3. `require_api_key`: inference routes need `api_key` when one is set (the admin token also
//!    passes).
//!
//! Invariant: credentials are compared in constant time, and the admin token is read from its file
//! again whenever the file changes, so `edgewise token rotate` takes effect without a restart.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::SystemTime;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HOST, ORIGIN};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use edgewise_core::admin_token;

use crate::{ApiError, AppState};

/// What `guard_browser` and `require_admin` check against.
pub struct Access {
    admin: AdminToken,
    /// Lower-case host names allowed in `Host` besides IP addresses and `localhost`.
    allowed_hosts: Vec<String>,
    /// Exact origins (`scheme://host[:port]`, no trailing slash) allowed in `Origin`.
    allowed_origins: Vec<String>,
}

impl Access {
    /// Reads (or creates) the admin token at `token_file`.
    pub fn new(
        token_file: PathBuf,
        allowed_hosts: &[String],
        allowed_origins: &[String],
    ) -> Result<Self, admin_token::TokenError> {
        Ok(Self {
            admin: AdminToken::load(token_file)?,
            allowed_hosts: allowed_hosts
                .iter()
                .map(|h| h.trim().to_ascii_lowercase())
                .collect(),
            allowed_origins: allowed_origins
                .iter()
                .map(|o| o.trim().trim_end_matches('/').to_ascii_lowercase())
                .collect(),
        })
    }

    fn host_allowed(&self, host: &str) -> bool {
        let Some(name) = host_name(host) else {
            return false;
        };
        let name = name.to_ascii_lowercase();
        name == "localhost"
            || name.parse::<IpAddr>().is_ok()
            || self.allowed_hosts.iter().any(|h| *h == name)
    }

    fn origin_allowed(&self, origin: &str) -> bool {
        let origin = origin.trim_end_matches('/').to_ascii_lowercase();
        self.allowed_origins.iter().any(|o| *o == origin)
    }
}

/// `Host` without its port (IPv6 literals lose their brackets); `None` when it is not of the
/// form `name[:port]` or `[v6][:port]`.
fn host_name(host: &str) -> Option<&str> {
    let port_ok = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    if let Some(rest) = host.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        return (after.is_empty() || after.strip_prefix(':').is_some_and(port_ok)).then_some(v6);
    }
    let name = match host.split_once(':') {
        Some((name, port)) if port_ok(port) => name,
        Some(_) => return None,
        None => host,
    };
    (!name.is_empty()).then_some(name)
}

/// The token file and the token last read from it, with what identified that version of the
/// file (modified and changed times, size): a rotate, a chmod or a removal all change it.
struct AdminToken {
    path: PathBuf,
    current: Mutex<(Option<String>, Option<FileStamp>)>,
}

type FileStamp = (Option<SystemTime>, i64, i64, u64);

impl AdminToken {
    fn load(path: PathBuf) -> Result<Self, admin_token::TokenError> {
        let token = admin_token::load_or_create(&path)?;
        let stamp = stamp(&path);
        Ok(Self {
            path,
            current: Mutex::new((Some(token), stamp)),
        })
    }

    /// Whether `presented` is the token in the file now. A file that is gone, or that others
    /// can read, accepts nothing until the operator rotates the token (fail closed).
    fn accepts(&self, presented: &str) -> bool {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let now = stamp(&self.path);
        if now != current.1 {
            let token = match admin_token::read(&self.path) {
                Ok(Some(token)) => Some(token),
                Ok(None) => {
                    tracing::warn!(path = %self.path.display(), "admin token file is gone; no admin request is accepted until `edgewise token rotate`");
                    None
                }
                Err(e) => {
                    tracing::warn!("{e}; no admin request is accepted until it is fixed");
                    None
                }
            };
            *current = (token, now);
        }
        current
            .0
            .as_deref()
            .is_some_and(|t| admin_token::matches(presented, t))
    }
}

fn stamp(path: &std::path::Path) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(path).ok()?;
    Some((m.modified().ok(), m.ctime(), m.ctime_nsec(), m.len()))
}

fn bearer(req: &Request) -> Option<&str> {
    req.headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

fn forbidden(message: String) -> Response {
    ApiError {
        status: StatusCode::FORBIDDEN,
        ..ApiError::bad_request(message)
    }
    .into_response()
}

/// Refuses requests a browser page could make without the operator's consent (see the module doc).
pub async fn guard_browser(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let access = &state.access;
    let mut hosts = req.headers().get_all(HOST).iter();
    let host = match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => {
            return ApiError::bad_request("the request has more than one Host header")
                .into_response()
        }
        (Some(h), None) => Some(h.to_str().unwrap_or("(not text)").to_owned()),
        (None, _) => req.uri().authority().map(|a| a.to_string()),
    };
    // An absolute-form target names the host it is for: it must be the Host that was checked.
    if let (Some(h), Some(authority)) = (&host, req.uri().authority()) {
        if !authority.as_str().eq_ignore_ascii_case(h) {
            return ApiError::bad_request(format!(
                "the request target names '{authority}' but Host is '{h}'"
            ))
            .into_response();
        }
    }
    match host {
        Some(h) if access.host_allowed(&h) => {}
        Some(h) => {
            return ApiError {
                status: StatusCode::MISDIRECTED_REQUEST,
                ..ApiError::bad_request(format!(
                    "Host '{h}' is not a name of this node (DNS rebinding?); use its IP address or localhost, or add the name to allowed_hosts in config.yaml"
                ))
            }
            .into_response()
        }
        None => return ApiError::bad_request("the request has no Host header").into_response(),
    }
    if let Some(origin) = req.headers().get(ORIGIN) {
        let origin = origin.to_str().unwrap_or("(not text)");
        if !access.origin_allowed(origin) {
            return forbidden(format!(
                "requests from web pages are refused (Origin '{origin}'); add the page's origin to allowed_origins in config.yaml to let it call this node"
            ));
        }
    }
    if let Err(e) = check_content_type(&req) {
        return e.into_response();
    }
    next.run(req).await
}

/// The content types a route's body may have: JSON everywhere, plus the raw forms some routes take.
fn accepted_types(path: &str) -> &'static [&'static str] {
    match path {
        "/v1/agents" => &[
            "application/json",
            "application/yaml",
            "application/x-yaml",
            "text/yaml",
        ],
        "/v1/components/{name}" => &[
            "application/json",
            "application/wasm",
            "application/octet-stream",
        ],
        "/v1/docs/{name}/sync" => &["application/octet-stream"],
        // A KV value is any bytes; only the types a browser sends without a preflight are refused.
        "/v1/kv/{ns}/{key}" => &[],
        _ => &["application/json"],
    }
}

/// Types a page may send cross-site without a CORS preflight: never accepted as a body.
const SIMPLE_TYPES: [&str; 3] = [
    "text/plain",
    "application/x-www-form-urlencoded",
    "multipart/form-data",
];

fn check_content_type(req: &Request) -> Result<(), ApiError> {
    if matches!(
        *req.method(),
        Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS
    ) {
        return Ok(());
    }
    let empty = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim() == "0");
    let given = req
        .headers()
        .get(CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or("").to_owned());
    let Some(given) = given else {
        return if empty {
            Ok(())
        } else {
            Err(ApiError::bad_request(
                "the request body has no Content-Type; send 'Content-Type: application/json'",
            ))
        };
    };
    let mime = given
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let path = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| req.uri().path().to_owned());
    let accepted = accepted_types(&path);
    let ok = if accepted.is_empty() {
        !mime.is_empty() && !SIMPLE_TYPES.contains(&mime.as_str())
    } else {
        accepted.contains(&mime.as_str())
    };
    if ok {
        return Ok(());
    }
    let want = if accepted.is_empty() {
        "application/octet-stream".to_owned()
    } else {
        accepted.join(" or ")
    };
    Err(ApiError {
        status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ..ApiError::bad_request(format!(
            "Content-Type '{given}' is not accepted by {path}; send {want}"
        ))
    })
}

/// Admin routes: the admin token, always.
pub async fn require_admin(State(state): State<AppState>, req: Request, next: Next) -> Response {
    match bearer(&req) {
        Some(t) if state.access.admin.accepts(t) => next.run(req).await,
        _ => ApiError {
            message: "this route needs the node's admin token: send 'Authorization: Bearer <token>' with the token from <home>/admin.token (`edgewise token show`)".into(),
            ..ApiError::unauthorized()
        }
        .into_response(),
    }
}

/// Inference routes: `api_key` when configured (or the admin token); open otherwise.
pub async fn require_api_key(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if let Some(key) = &state.api_key {
        let ok = bearer(&req)
            .is_some_and(|t| admin_token::matches(t, key) || state.access.admin.accepts(t));
        if !ok {
            return ApiError::unauthorized().into_response();
        }
    }
    next.run(req).await
}
