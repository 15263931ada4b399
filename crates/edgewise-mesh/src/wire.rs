//! Bytes on the wire for calls between nodes: a request is one query payload, a response is a
//! head reply followed by body replies, in order, ending when the query completes.

use serde::{Deserialize, Serialize};

use crate::MeshError;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestHead {
    /// The calling node, as it names itself (a member of the trust domain: its link is mTLS).
    pub from: String,
    /// HTTP method of the API the call runs.
    #[serde(default = "post")]
    pub method: String,
    /// HTTP path of the API the call runs, e.g. `/v1/chat/completions`.
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseHead {
    pub status: u16,
    pub content_type: String,
}

fn post() -> String {
    "POST".into()
}

const HEAD: u8 = b'H';
const BODY: u8 = b'B';

/// Head as one JSON line, then the body's bytes.
pub fn encode_request(head: &RequestHead, body: &[u8]) -> Vec<u8> {
    let mut out = serde_json::to_vec(head).unwrap_or_default();
    out.push(b'\n');
    out.extend_from_slice(body);
    out
}

pub fn decode_request(bytes: &[u8]) -> Result<(RequestHead, &[u8]), MeshError> {
    let split = bytes
        .iter()
        .position(|&b| b == b'\n')
        .ok_or_else(|| MeshError::Protocol("call without a head line".into()))?;
    let head = serde_json::from_slice(&bytes[..split])
        .map_err(|e| MeshError::Protocol(format!("call head: {e}")))?;
    Ok((head, &bytes[split + 1..]))
}

pub fn encode_head(head: &ResponseHead) -> Vec<u8> {
    let mut out = vec![HEAD];
    out.extend(serde_json::to_vec(head).unwrap_or_default());
    out
}

pub fn encode_body(chunk: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(chunk.len() + 1);
    out.push(BODY);
    out.extend_from_slice(chunk);
    out
}

#[derive(Debug, PartialEq)]
pub enum Frame<'a> {
    Head(ResponseHead),
    Body(&'a [u8]),
}

pub fn decode_reply(bytes: &[u8]) -> Result<Frame<'_>, MeshError> {
    match bytes.split_first() {
        Some((&HEAD, rest)) => serde_json::from_slice(rest)
            .map(Frame::Head)
            .map_err(|e| MeshError::Protocol(format!("response head: {e}"))),
        Some((&BODY, rest)) => Ok(Frame::Body(rest)),
        _ => Err(MeshError::Protocol(
            "reply is neither a head nor a body".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_garbage_is_an_error() {
        let head = RequestHead {
            from: "a".into(),
            method: "POST".into(),
            path: "/v1/chat/completions".into(),
        };
        let bytes = encode_request(&head, b"{\"x\":\n1}");
        let (back, body) = decode_request(&bytes).unwrap();
        assert_eq!(back, head);
        assert_eq!(body, b"{\"x\":\n1}");
        let rh = ResponseHead {
            status: 200,
            content_type: "text/event-stream".into(),
        };
        assert_eq!(decode_reply(&encode_head(&rh)).unwrap(), Frame::Head(rh));
        assert_eq!(
            decode_reply(&encode_body(b"data: x")).unwrap(),
            Frame::Body(b"data: x")
        );
        assert!(decode_request(b"no newline").is_err());
        // Callers from before methods were carried meant POST.
        let (old, _) = decode_request(b"{\"from\":\"a\",\"path\":\"/v1/completions\"}\n").unwrap();
        assert_eq!(old.method, "POST");
        assert!(decode_reply(b"").is_err());
        assert!(decode_reply(b"Xjunk").is_err());
        assert!(decode_reply(b"Hnot json").is_err());
    }
}
