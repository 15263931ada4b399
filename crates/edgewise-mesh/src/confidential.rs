//! Call bodies and answers readable only by the caller and the called node. Zenoh delivers a
//! query to every queryable on its key, and any member may declare one on any call key, so a
//! request in the clear would reach whoever listens on `edgewise/call/<victim>`. Each node
//! therefore holds an X25519 key for this run of the process and publishes its public half in its
//! sealed advert; a caller agrees a key with it from a fresh ephemeral key per call and encrypts
//! the body (ChaCha20-Poly1305); the answer's chunks use a second key from the same agreement, so
//! only the node whose advert was sealed by its certificate can read the call or write its answer.
//!
//! Binding: the request's ciphertext authenticates the exact head it was sealed with (its
//! associated data), so another member cannot re-seal a call it overheard under its own head;
//! every answer chunk authenticates the call it answers (the hash of the call as sent) and its
//! place, and the last chunk says it is the last, so a dropped or cut answer is detected.

use curve25519_dalek::montgomery::MontgomeryPoint;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use ring::hkdf::{Salt, HKDF_SHA256};

/// A node's key agreement key (secret half kept in memory only).
pub struct KxKey {
    secret: [u8; 32],
    pub public: [u8; 32],
}

impl KxKey {
    pub fn generate() -> Self {
        let secret: [u8; 32] = rand::random();
        Self {
            secret,
            public: MontgomeryPoint::mul_base_clamped(secret).to_bytes(),
        }
    }
}

/// The two keys of one call: the request's and the answer's.
pub struct CallKeys {
    request: LessSafeKey,
    answer: LessSafeKey,
}

struct Len32;

impl ring::hkdf::KeyType for Len32 {
    fn len(&self) -> usize {
        32
    }
}

fn derive(shared: [u8; 32], nonce: &str, eph: &[u8; 32], to: &[u8; 32]) -> Option<CallKeys> {
    // An all-zero shared secret means a low-order public key: refuse it.
    if shared == [0; 32] {
        return None;
    }
    let prk = Salt::new(HKDF_SHA256, nonce.as_bytes()).extract(&shared);
    let key = |label: &[u8]| -> Option<LessSafeKey> {
        let info: [&[u8]; 3] = [label, eph, to];
        let mut bytes = [0u8; 32];
        prk.expand(&info, Len32).ok()?.fill(&mut bytes).ok()?;
        Some(LessSafeKey::new(
            UnboundKey::new(&CHACHA20_POLY1305, &bytes).ok()?,
        ))
    };
    Some(CallKeys {
        request: key(b"edgewise-mesh/1 request")?,
        answer: key(b"edgewise-mesh/1 answer")?,
    })
}

/// The caller's side: keys for a call `nonce` to the node whose public key is `to`, and the
/// ephemeral public key that goes with the call.
pub fn caller_keys(to: &[u8; 32], nonce: &str) -> Option<(CallKeys, [u8; 32])> {
    let eph = KxKey::generate();
    let shared = MontgomeryPoint(*to).mul_clamped(eph.secret).to_bytes();
    Some((derive(shared, nonce, &eph.public, to)?, eph.public))
}

/// The called node's side, from the caller's ephemeral public key.
pub fn callee_keys(mine: &KxKey, eph: &[u8; 32], nonce: &str) -> Option<CallKeys> {
    let shared = MontgomeryPoint(*eph).mul_clamped(mine.secret).to_bytes();
    derive(shared, nonce, eph, &mine.public)
}

fn seq_nonce(seq: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&seq.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

/// The first byte of an answer chunk's plaintext: more follow, or this is the last.
const MORE: u8 = 0;
const LAST: u8 = 1;

impl CallKeys {
    /// The body, bound to `head` (the signed head bytes it goes with).
    pub fn seal_request(&self, head: &[u8], body: &[u8]) -> Vec<u8> {
        seal(&self.request, 0, head, body)
    }

    pub fn open_request(&self, head: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        open(&self.request, 0, head, sealed)
    }

    /// Chunk `seq` of the answer to the call whose hash is `call`; `last` for the final one.
    pub fn seal_chunk(&self, call: &[u8], seq: u64, chunk: &[u8], last: bool) -> Vec<u8> {
        let mut plain = Vec::with_capacity(chunk.len() + 1);
        plain.push(if last { LAST } else { MORE });
        plain.extend_from_slice(chunk);
        seal(&self.answer, seq, call, &plain)
    }

    /// Chunk `seq` of the answer to `call`, and whether it is the last.
    pub fn open_chunk(&self, call: &[u8], seq: u64, sealed: &[u8]) -> Option<(Vec<u8>, bool)> {
        let mut plain = open(&self.answer, seq, call, sealed)?;
        let last = match plain.first()? {
            &MORE => false,
            &LAST => true,
            _ => return None,
        };
        plain.remove(0);
        Some((plain, last))
    }
}

fn seal(key: &LessSafeKey, seq: u64, aad: &[u8], plain: &[u8]) -> Vec<u8> {
    let mut out = plain.to_vec();
    // Sealing fails only for inputs beyond 256 GiB.
    let _ = key.seal_in_place_append_tag(seq_nonce(seq), Aad::from(aad), &mut out);
    out
}

fn open(key: &LessSafeKey, seq: u64, aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
    let mut buf = sealed.to_vec();
    let plain = key
        .open_in_place(seq_nonce(seq), Aad::from(aad), &mut buf)
        .ok()?;
    Some(plain.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_called_node_reads_the_call_and_only_its_answer_is_accepted() {
        let b = KxKey::generate();
        let (keys, eph) = caller_keys(&b.public, "n1").unwrap();
        let sealed = keys.seal_request(b"head", b"prompt");
        assert_ne!(&sealed[..6], b"prompt");
        let at_b = callee_keys(&b, &eph, "n1").unwrap();
        assert_eq!(at_b.open_request(b"head", &sealed).unwrap(), b"prompt");
        // Under another head (a member re-sealing an overheard call as its own): nothing.
        assert!(at_b.open_request(b"other head", &sealed).is_none());
        // Another node's key reads nothing; nor does the right key with another nonce.
        let x = KxKey::generate();
        assert!(callee_keys(&x, &eph, "n1")
            .unwrap()
            .open_request(b"head", &sealed)
            .is_none());
        assert!(callee_keys(&b, &eph, "n2")
            .unwrap()
            .open_request(b"head", &sealed)
            .is_none());
        // Chunks open only in their place, for their call, and say which is the last.
        let c = at_b.seal_chunk(b"call", 3, b"token", false);
        assert_eq!(
            keys.open_chunk(b"call", 3, &c).unwrap(),
            (b"token".to_vec(), false)
        );
        assert!(keys.open_chunk(b"call", 4, &c).is_none());
        assert!(keys.open_chunk(b"another call", 3, &c).is_none());
        let end = at_b.seal_chunk(b"call", 4, b"", true);
        assert_eq!(
            keys.open_chunk(b"call", 4, &end).unwrap(),
            (Vec::new(), true)
        );
        // A low-order point gives no keys.
        assert!(callee_keys(&b, &[0; 32], "n1").is_none());
    }
}
