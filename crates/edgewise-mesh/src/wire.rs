//! Bytes on the wire for calls between nodes: a request is one query payload, a response is a
//! head reply followed by body replies, in order, ending when the query completes. Every one of
//! them is sealed by its sender ([`crate::identity`]); what is checked against what is the
//! business of the caller and the callee in `lib.rs`.

use serde::{Deserialize, Serialize};

use crate::identity::{self, Envelope, Kind, Signer};
use crate::MeshError;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestHead {
    /// The calling node; the callee takes it only from the certificate that sealed the call.
    pub from: String,
    /// The called node: a call sealed for another node is not run.
    pub to: String,
    /// HTTP method of the API the call runs.
    pub method: String,
    /// HTTP path of the API the call runs, e.g. `/v1/chat/completions`.
    pub path: String,
    /// Random, hex: each call runs once (replays are refused), and every reply names it.
    pub nonce: String,
    /// When the caller sealed it (Unix ms): calls older than the allowed skew are refused.
    pub sent_ms: u64,
    /// The caller's ephemeral X25519 public key, hex: the body is encrypted to the called node
    /// (`confidential`).
    pub eph: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseHead {
    pub status: u16,
    pub content_type: String,
    /// The nonce of the call this answers.
    pub nonce: String,
    /// The call this answers: [`call_hash`] of its payload as received, hex. The caller takes
    /// only a head that names the call it sent.
    pub call: String,
}

/// What identifies one call as sent: the SHA-256 of its whole payload (head, signature, body).
pub fn call_hash(payload: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::digest(payload).into()
}

/// The head as it is signed; the body's encryption is bound to exactly these bytes.
pub fn head_bytes(head: &RequestHead) -> Vec<u8> {
    serde_json::to_vec(head).unwrap_or_default()
}

/// The head (as [`head_bytes`]) and the (encrypted) body, signed.
pub fn seal_request(signer: &Signer, head: &[u8], body: &[u8]) -> Vec<u8> {
    signer.seal(Kind::Call, head, body)
}

/// A call's envelope and head, not yet verified.
pub fn open_request(bytes: &[u8]) -> Result<(Envelope<'_>, RequestHead), MeshError> {
    let env = identity::open(bytes, Kind::Call).map_err(MeshError::Protocol)?;
    let head = serde_json::from_slice(env.signed)
        .map_err(|e| MeshError::Protocol(format!("call head: {e}")))?;
    Ok((env, head))
}

pub fn seal_head(signer: &Signer, head: &ResponseHead) -> Vec<u8> {
    let head = serde_json::to_vec(head).unwrap_or_default();
    signer.seal(Kind::ReplyHead, &head, &[])
}

/// A body chunk, encrypted with the answer key of its call (which authenticates it).
const CHUNK: u8 = b'C';

pub fn chunk_frame(encrypted: Vec<u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(encrypted.len() + 1);
    out.push(CHUNK);
    out.extend(encrypted);
    out
}

#[derive(Debug)]
pub enum Frame<'a> {
    Head(ResponseHead, Envelope<'a>),
    /// Still encrypted.
    Body(&'a [u8]),
}

/// A reply's frame, not yet verified.
pub fn open_reply(bytes: &[u8]) -> Result<Frame<'_>, MeshError> {
    if let Some((&CHUNK, rest)) = bytes.split_first() {
        return Ok(Frame::Body(rest));
    }
    let env = identity::open(bytes, Kind::ReplyHead).map_err(MeshError::Protocol)?;
    let head = serde_json::from_slice(env.signed)
        .map_err(|e| MeshError::Protocol(format!("response head: {e}")))?;
    Ok(Frame::Head(head, env))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_garbage_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        crate::init_ca(&dir.path().join("ca"), "plant").unwrap();
        let tls = crate::issue(&dir.path().join("ca"), "a", &dir.path().join("a")).unwrap();
        let signer = Signer::load(&tls).unwrap();
        let head = RequestHead {
            from: "a".into(),
            to: "b".into(),
            method: "POST".into(),
            path: "/v1/chat/completions".into(),
            nonce: "00ff".into(),
            sent_ms: 1,
            eph: "11".into(),
        };
        let bytes = seal_request(&signer, &head_bytes(&head), b"{\"x\":\n1}");
        let (env, back) = open_request(&bytes).unwrap();
        assert_eq!(back, head);
        assert_eq!(env.payload, b"{\"x\":\n1}");
        let rh = ResponseHead {
            status: 200,
            content_type: "text/event-stream".into(),
            nonce: "00ff".into(),
            call: hex::encode(call_hash(&bytes)),
        };
        match open_reply(&seal_head(&signer, &rh)).unwrap() {
            Frame::Head(h, _) => assert_eq!(h, rh),
            other => panic!("{other:?}"),
        }
        match open_reply(&chunk_frame(b"sealed".to_vec())).unwrap() {
            Frame::Body(b) => assert_eq!(b, b"sealed"),
            other => panic!("{other:?}"),
        }
        assert!(open_request(b"no envelope").is_err());
        assert!(open_request(&bytes[..20]).is_err());
        assert!(open_reply(b"").is_err());
        assert!(open_reply(b"EW1Xjunk").is_err());
        assert!(open_reply(&signer.seal(Kind::ReplyHead, b"not json", &[])).is_err());
    }
}
