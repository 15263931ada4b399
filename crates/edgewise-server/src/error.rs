//! Errors in OpenAI's JSON shape, with the status code a client can act on.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use edgewise_infer::InferError;
use serde_json::json;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub code: Option<&'static str>,
    pub param: Option<String>,
    pub message: String,
    pub retry_after_s: Option<u32>,
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            code: None,
            param: None,
            message: message.into(),
            retry_after_s: None,
        }
    }
    pub fn param(mut self, p: &str) -> Self {
        self.param = Some(p.into());
        self
    }
    pub fn model_not_found(model: &str, served: &[String]) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            kind: "invalid_request_error",
            code: Some("model_not_found"),
            param: Some("model".into()),
            message: format!(
                "The model '{model}' does not exist on this node. Served models: {}",
                served.join(", ")
            ),
            retry_after_s: None,
        }
    }
    pub fn unauthorized() -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            kind: "invalid_request_error",
            code: Some("invalid_api_key"),
            param: None,
            message: "missing or wrong API key: send 'Authorization: Bearer <key>'".into(),
            retry_after_s: None,
        }
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            ..Self::bad_request(message)
        }
    }
    pub fn unprocessable(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            ..Self::bad_request(message)
        }
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            kind: "server_error",
            code: None,
            param: None,
            message: message.into(),
            retry_after_s: None,
        }
    }
}

impl From<InferError> for ApiError {
    fn from(e: InferError) -> Self {
        let message = e.to_string();
        match e {
            InferError::ContextOverflow { .. } | InferError::PromptTooLong { .. } => Self {
                code: Some("context_length_exceeded"),
                ..Self::bad_request(message).param("messages")
            },
            InferError::QueueFull { .. } => Self {
                status: StatusCode::SERVICE_UNAVAILABLE,
                kind: "server_error",
                code: Some("server_overloaded"),
                param: None,
                message,
                retry_after_s: Some(1),
            },
            InferError::EmptyPrompt
            | InferError::Grammar(_)
            | InferError::Template(_)
            | InferError::InvalidRequest(_) => Self::bad_request(message),
            _ => Self::internal(message),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}});
        let mut resp = (self.status, axum::Json(body)).into_response();
        if let Some(s) = self.retry_after_s {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        resp
    }
}
