//! ed25519 signatures over an artifact's identity (kind, name, sha256, size): models and Wasm
//! components share one trust store (the node's `trusted_keys`).
//!
//! The signed message is a fixed text layout, not JSON, so that field order or whitespace changes in
//! the manifest file can never change what a signature means; the kind is part of it, so a model's
//! signature never passes for a component's.

use std::path::Path;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

/// A key file that cannot be read, written or parsed.
#[derive(Debug, thiserror::Error)]
#[error("key {path}: {message}")]
pub struct KeyError {
    pub path: std::path::PathBuf,
    pub message: String,
}

fn key_error(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError + '_ {
    move |e| KeyError {
        path: path.into(),
        message: e.to_string(),
    }
}

/// What was signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Artifact {
    Model,
    Component,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ManifestSignature {
    /// Hex ed25519 public key of the signer.
    pub public_key: String,
    /// Hex signature over `signed_message`.
    pub signature: String,
}

pub fn signed_message(kind: Artifact, name: &str, sha256: &str, size: u64) -> Vec<u8> {
    let kind = match kind {
        Artifact::Model => "model",
        Artifact::Component => "component",
    };
    format!("edgewise-{kind}-signature-v1\nname={name}\nsha256={sha256}\nsize={size}\n")
        .into_bytes()
}

/// Writes a new secret key (hex, mode 0600) to `path` and returns the public key in hex.
pub fn generate_key(path: &Path) -> Result<String, KeyError> {
    if path.exists() {
        return Err(KeyError {
            path: path.into(),
            message: "already exists; refusing to overwrite a key".into(),
        });
    }
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    write_private(path, hex::encode(key.to_bytes()).as_bytes())?;
    Ok(hex::encode(key.verifying_key().to_bytes()))
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), KeyError> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(path).map_err(key_error(path))?;
    f.write_all(bytes).map_err(key_error(path))
}

pub fn load_signing_key(path: &Path) -> Result<SigningKey, KeyError> {
    let text = std::fs::read_to_string(path).map_err(key_error(path))?;
    let bytes: [u8; 32] = hex::decode(text.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| KeyError {
            path: path.into(),
            message: "expected 64 hex digits (an ed25519 secret key)".into(),
        })?;
    Ok(SigningKey::from_bytes(&bytes))
}

pub fn public_key_hex(key: &SigningKey) -> String {
    hex::encode(key.verifying_key().to_bytes())
}

pub fn sign(
    key: &SigningKey,
    kind: Artifact,
    name: &str,
    sha256: &str,
    size: u64,
) -> ManifestSignature {
    let sig = key.sign(&signed_message(kind, name, sha256, size));
    ManifestSignature {
        public_key: public_key_hex(key),
        signature: hex::encode(sig.to_bytes()),
    }
}

/// Checks `sig` against the trusted keys. The error says which check failed.
pub fn verify(
    sig: &ManifestSignature,
    kind: Artifact,
    name: &str,
    sha256: &str,
    size: u64,
    trusted: &[String],
) -> Result<(), String> {
    let signer = sig.public_key.to_ascii_lowercase();
    if !trusted
        .iter()
        .any(|t| t.trim().eq_ignore_ascii_case(&signer))
    {
        return Err(format!(
            "signed by key {signer}, which is not among the node's trusted_keys"
        ));
    }
    let key_bytes: [u8; 32] = hex::decode(&signer)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or("signature file has a malformed public key")?;
    let key = VerifyingKey::from_bytes(&key_bytes)
        .map_err(|_| "signature file has an invalid public key")?;
    let sig_bytes: [u8; 64] = hex::decode(&sig.signature)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or("signature is not 128 hex digits")?;
    key.verify(
        &signed_message(kind, name, sha256, size),
        &Signature::from_bytes(&sig_bytes),
    )
    .map_err(|_| "signature does not match the manifest (name, sha256, size): the file or its manifest was altered after signing".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_verifies_only_for_the_signed_identity_and_trusted_key() {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let pk = public_key_hex(&key);
        let m = Artifact::Model;
        let sig = sign(&key, m, "m", &"a".repeat(64), 10);
        assert!(verify(&sig, m, "m", &"a".repeat(64), 10, std::slice::from_ref(&pk)).is_ok());
        let err = verify(&sig, m, "m", &"b".repeat(64), 10, std::slice::from_ref(&pk)).unwrap_err();
        assert!(err.contains("does not match"), "{err}");
        // A model's signature is not a component's.
        let c = Artifact::Component;
        assert!(verify(&sig, c, "m", &"a".repeat(64), 10, std::slice::from_ref(&pk)).is_err());
        let err = verify(&sig, m, "m", &"a".repeat(64), 10, &["00".repeat(32)]).unwrap_err();
        assert!(err.contains("not among"), "{err}");
    }
}
