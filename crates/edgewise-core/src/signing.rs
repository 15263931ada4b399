//! ed25519 signatures over an artifact's identity (kind, name, sha256, size) and, for a Wasm
//! component, what it may do (its grants and limits): models and components share one trust
//! store (the node's `trusted_keys`).
//!
//! The signed message is a fixed, versioned text layout, not JSON, so that field order or
//! whitespace changes in the manifest file can never change what a signature means; the kind is
//! part of it, so a model's signature never passes for a component's. Components are signed in
//! v2 (grants included); a v1 component signature (bytes only) is refused with a request to
//! re-sign, since it would let the same bytes be reinstalled with any grants.

use std::path::Path;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::Grants;

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

/// What was signed. A component's signature covers the grants it is installed with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Artifact<'a> {
    Model,
    Component { grants: &'a Grants },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ManifestSignature {
    /// Hex ed25519 public key of the signer.
    pub public_key: String,
    /// Hex signature over `signed_message`.
    pub signature: String,
}

/// The bytes a signature is made over. Models: v1 (name, sha256, size). Components: v2, which
/// adds one line per grant and limit in a fixed order, lists sorted, values percent-encoded, so
/// two manifests that grant the same get the same message and no value can forge a line.
pub fn signed_message(kind: Artifact, name: &str, sha256: &str, size: u64) -> Vec<u8> {
    match kind {
        Artifact::Model => legacy_message("model", name, sha256, size),
        Artifact::Component { grants } => component_message(grants, name, sha256, size),
    }
}

fn legacy_message(kind: &str, name: &str, sha256: &str, size: u64) -> Vec<u8> {
    format!("edgewise-{kind}-signature-v1\nname={name}\nsha256={sha256}\nsize={size}\n")
        .into_bytes()
}

fn component_message(g: &Grants, name: &str, sha256: &str, size: u64) -> Vec<u8> {
    use std::fmt::Write;
    let mut out = format!(
        "edgewise-component-signature-v2\nname={}\nsha256={}\nsize={size}\n",
        enc(name),
        enc(sha256)
    );
    let mut lines = |key: &str, values: Vec<String>| {
        let mut values = values;
        values.sort();
        values.dedup();
        for v in values {
            let _ = writeln!(out, "{key}={v}");
        }
    };
    lines(
        "interface",
        g.interfaces.iter().map(|i| i.to_string()).collect(),
    );
    lines(
        "file",
        g.files
            .iter()
            .map(|f| {
                format!(
                    "{} guest={} writable={}",
                    enc(&f.path.to_string_lossy()),
                    enc(f
                        .guest
                        .as_deref()
                        .unwrap_or(crate::grants::DEFAULT_GUEST_DIR)),
                    f.writable
                )
            })
            .collect(),
    );
    lines("network", g.network.iter().map(|n| enc(n)).collect());
    lines("kv_bucket", g.kv_buckets.iter().map(|b| enc(b)).collect());
    lines("topic", g.topics.iter().map(|t| enc(t)).collect());
    let unset = || "unset".to_owned();
    let _ = writeln!(
        out,
        "time_limit_ns={}",
        g.time_limit
            .map(|d| d.as_nanos().to_string())
            .unwrap_or_else(unset)
    );
    let _ = writeln!(
        out,
        "memory_limit_bytes={}",
        g.memory_limit
            .map(|b| b.as_u64().to_string())
            .unwrap_or_else(unset)
    );
    out.push_str("end\n");
    out.into_bytes()
}

/// Percent-encodes everything but a plain set, so a value never contains a space, `=` or a
/// line break of the layout.
fn enc(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.:/*@+~,".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
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
    let sig = Signature::from_bytes(&sig_bytes);
    if key
        .verify(&signed_message(kind, name, sha256, size), &sig)
        .is_ok()
    {
        return Ok(());
    }
    if let Artifact::Component { .. } = kind {
        if key
            .verify(&legacy_message("component", name, sha256, size), &sig)
            .is_ok()
        {
            return Err(format!(
                "signed in the v1 format, which covers the bytes but not the grants: re-sign it (`edgewise component sign {name} --key KEY` on a node holding the key) so the signature covers what it may do"
            ));
        }
        return Err("signature does not match the component (name, sha256, size, grants and limits): the file or its manifest was altered after signing; an install with other grants needs a new signature".to_string());
    }
    Err("signature does not match the manifest (name, sha256, size): the file or its manifest was altered after signing".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FileGrant, HostInterface};
    use std::time::Duration;

    fn key() -> (SigningKey, Vec<String>) {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let pk = public_key_hex(&key);
        (key, vec![pk])
    }

    #[test]
    fn signature_verifies_only_for_the_signed_identity_and_trusted_key() {
        let (key, trusted) = key();
        let m = Artifact::Model;
        let sig = sign(&key, m, "m", &"a".repeat(64), 10);
        assert!(verify(&sig, m, "m", &"a".repeat(64), 10, &trusted).is_ok());
        let err = verify(&sig, m, "m", &"b".repeat(64), 10, &trusted).unwrap_err();
        assert!(err.contains("does not match"), "{err}");
        // A model's signature is not a component's.
        let g = Grants::default();
        let c = Artifact::Component { grants: &g };
        assert!(verify(&sig, c, "m", &"a".repeat(64), 10, &trusted).is_err());
        let err = verify(&sig, m, "m", &"a".repeat(64), 10, &["00".repeat(32)]).unwrap_err();
        assert!(err.contains("not among"), "{err}");
    }

    fn narrow_grants() -> Grants {
        Grants {
            interfaces: [HostInterface::Logging].into(),
            kv_buckets: vec!["predictions".into()],
            time_limit: Some(Duration::from_millis(500)),
            ..Grants::default()
        }
    }

    #[test]
    fn a_component_signature_covers_its_grants_and_limits() {
        let (key, trusted) = key();
        let sha = "c".repeat(64);
        let signed = narrow_grants();
        let sig = sign(&key, Artifact::Component { grants: &signed }, "x", &sha, 9);
        let check = |g: &Grants| {
            verify(
                &sig,
                Artifact::Component { grants: g },
                "x",
                &sha,
                9,
                &trusted,
            )
        };
        check(&signed).unwrap();
        let widened: Vec<(&str, Grants)> = vec![
            (
                "an interface",
                Grants {
                    interfaces: [HostInterface::Logging, HostInterface::Inference].into(),
                    ..narrow_grants()
                },
            ),
            (
                "a bucket",
                Grants {
                    kv_buckets: vec!["predictions".into(), "doc:plant".into()],
                    ..narrow_grants()
                },
            ),
            (
                "a longer time limit",
                Grants {
                    time_limit: Some(Duration::from_secs(60)),
                    ..narrow_grants()
                },
            ),
            (
                "no time limit named",
                Grants {
                    time_limit: None,
                    ..narrow_grants()
                },
            ),
            (
                "a memory limit",
                Grants {
                    memory_limit: Some(bytesize::ByteSize::gib(2)),
                    ..narrow_grants()
                },
            ),
            (
                "an address",
                Grants {
                    network: vec!["example.com:443".into()],
                    ..narrow_grants()
                },
            ),
            (
                "a topic",
                Grants {
                    topics: vec!["alerts".into()],
                    ..narrow_grants()
                },
            ),
            (
                "a directory",
                Grants {
                    files: vec![FileGrant {
                        path: "/".into(),
                        guest: None,
                        writable: true,
                    }],
                    ..narrow_grants()
                },
            ),
        ];
        for (what, g) in widened {
            let err = check(&g).expect_err(what);
            assert!(
                err.contains("grants") && err.contains("new signature"),
                "{what}: {err}"
            );
        }
    }

    #[test]
    fn a_v1_component_signature_is_refused_with_a_request_to_re_sign() {
        let (key, trusted) = key();
        let sha = "d".repeat(64);
        let v1 = key.sign(&legacy_message("component", "calc", &sha, 5));
        let sig = ManifestSignature {
            public_key: trusted[0].clone(),
            signature: hex::encode(v1.to_bytes()),
        };
        let g = Grants::default();
        let err = verify(
            &sig,
            Artifact::Component { grants: &g },
            "calc",
            &sha,
            5,
            &trusted,
        )
        .unwrap_err();
        assert!(
            err.contains("v1") && err.contains("edgewise component sign calc"),
            "{err}"
        );
    }

    #[test]
    fn the_component_message_is_a_fixed_canonical_layout() {
        let g = Grants {
            files: vec![FileGrant {
                path: "data dir".into(),
                guest: None,
                writable: false,
            }],
            network: vec![
                "b.example:443".into(),
                "a.example:*".into(),
                "a.example:*".into(),
            ],
            interfaces: [HostInterface::Tools, HostInterface::Keyvalue].into(),
            kv_buckets: vec!["doc:plant".into()],
            topics: vec![],
            time_limit: Some(Duration::from_millis(1500)),
            memory_limit: Some(bytesize::ByteSize::b(100_000_000)),
        };
        let text = String::from_utf8(signed_message(
            Artifact::Component { grants: &g },
            "calc",
            "ab",
            7,
        ))
        .unwrap();
        assert_eq!(
            text,
            "edgewise-component-signature-v2\nname=calc\nsha256=ab\nsize=7\n\
             interface=keyvalue\ninterface=tools\n\
             file=data%20dir guest=/data writable=false\n\
             network=a.example:*\nnetwork=b.example:443\n\
             kv_bucket=doc:plant\n\
             time_limit_ns=1500000000\nmemory_limit_bytes=100000000\nend\n"
        );
        // A value cannot forge a line of another field.
        let forged = Grants {
            topics: vec!["a\nnetwork=evil:*".into()],
            ..Grants::default()
        };
        let honest = Grants {
            topics: vec!["a".into()],
            network: vec!["evil:*".into()],
            ..Grants::default()
        };
        assert_ne!(
            signed_message(Artifact::Component { grants: &forged }, "x", "s", 1),
            signed_message(Artifact::Component { grants: &honest }, "x", "s", 1)
        );
        // What is stored is what was signed: the manifest survives its YAML round trip exactly.
        let yaml = serde_yaml::to_string(&g).unwrap();
        let back: Grants = serde_yaml::from_str(&yaml).unwrap();
        assert_eq!(
            signed_message(Artifact::Component { grants: &back }, "calc", "ab", 7),
            signed_message(Artifact::Component { grants: &g }, "calc", "ab", 7),
            "{yaml}"
        );
    }
}
