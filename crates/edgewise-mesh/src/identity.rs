//! Who sent a mesh message. mTLS only proves that a link's far end is *some* member of the trust
//! domain; Zenoh routes messages over several links and its key expressions name no sender. So
//! every message that claims a node (an advert, a call, a reply's head) is sealed with that
//! node's certificate key, and the receiver checks the signature, the
//! certificate's chain to the domain CA, its validity period and that its name (the DNS name in
//! its subject alternative names, which `mesh cert issue` sets to the node name) is the node the
//! message claims. A message that fails is forged: dropped and reported ([`Forged`]).
//!
//! Envelope, all integers big-endian:
//! `EW1` · kind (1 byte) · cert length (u16) · cert DER · signature length (u16) · signature ·
//! signed length (u32) · signed bytes · payload (the rest). The signature covers
//! `edgewise-mesh/1` · kind · signed length · signed bytes · payload. (An answer's body chunks
//! are not sealed: they are encrypted with a key only the called node can agree,
//! `confidential`.)

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{KeyPair, SigningKey};
use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};
use sha2::{Digest, Sha256};
use webpki::{EndEntityCert, KeyUsage};

use crate::{MeshError, NodeTls};

const MAGIC: &[u8; 3] = b"EW1";
const CONTEXT: &[u8] = b"edgewise-mesh/1";

/// What a sealed message is, so a signature for one kind is never accepted as another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Advert = b'A' as isize,
    Call = b'Q' as isize,
    ReplyHead = b'H' as isize,
}

impl Kind {
    fn byte(self) -> u8 {
        self as isize as u8
    }
}

/// Certificates verified lately, by the SHA-256 of their DER: the chain is checked once, the
/// validity period at every use.
const VERIFIED_CACHE: usize = 256;

/// This node's key and certificate: seals what it sends.
pub struct Signer {
    key: KeyPair,
    cert: Vec<u8>,
}

impl Signer {
    /// Reads `node.key` and `node.pem` of `tls`.
    pub fn load(tls: &NodeTls) -> Result<Self, MeshError> {
        let key_pem = read(&tls.key)?;
        let key = KeyPair::from_pem(&key_pem)
            .map_err(|e| MeshError::Pki(format!("{}: {e}", tls.key.display())))?;
        let cert = pem_der(&read(&tls.cert)?, &tls.cert)?;
        Ok(Self { key, cert })
    }

    pub fn cert_der(&self) -> &[u8] {
        &self.cert
    }

    /// `signed` and `payload` sealed as `kind`, with this node's certificate.
    pub fn seal(&self, kind: Kind, signed: &[u8], payload: &[u8]) -> Vec<u8> {
        let sig = self
            .key
            .sign(&signed_message(kind, signed, payload))
            .unwrap_or_default();
        let cert: &[u8] = &self.cert;
        let mut out =
            Vec::with_capacity(16 + cert.len() + sig.len() + signed.len() + payload.len());
        out.extend_from_slice(MAGIC);
        out.push(kind.byte());
        out.extend_from_slice(&(cert.len() as u16).to_be_bytes());
        out.extend_from_slice(cert);
        out.extend_from_slice(&(sig.len() as u16).to_be_bytes());
        out.extend_from_slice(&sig);
        out.extend_from_slice(&(signed.len() as u32).to_be_bytes());
        out.extend_from_slice(signed);
        out.extend_from_slice(payload);
        out
    }
}

/// A sealed message, parsed but not yet verified.
#[derive(Debug)]
pub struct Envelope<'a> {
    pub kind: Kind,
    pub cert: &'a [u8],
    sig: &'a [u8],
    pub signed: &'a [u8],
    pub payload: &'a [u8],
}

/// Splits a sealed message of `kind`; any other shape is an error.
pub fn open(bytes: &[u8], kind: Kind) -> Result<Envelope<'_>, String> {
    let mut at = Cursor(bytes);
    if at.take(3)? != MAGIC {
        return Err("not a sealed message (no EW1 envelope)".into());
    }
    let k = at.take(1)?[0];
    if k != kind.byte() {
        return Err(format!(
            "sealed as kind '{}', expected '{}'",
            k.escape_ascii(),
            kind.byte().escape_ascii()
        ));
    }
    let cert_len = u16::from_be_bytes(at.take(2)?.try_into().unwrap_or_default()) as usize;
    let cert = at.take(cert_len)?;
    let sig_len = u16::from_be_bytes(at.take(2)?.try_into().unwrap_or_default()) as usize;
    let sig = at.take(sig_len)?;
    let signed_len = u32::from_be_bytes(at.take(4)?.try_into().unwrap_or_default()) as usize;
    let signed = at.take(signed_len)?;
    Ok(Envelope {
        kind,
        cert,
        sig,
        signed,
        payload: at.0,
    })
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("sealed message cut short".into());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
}

fn signed_message(kind: Kind, signed: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(CONTEXT.len() + 5 + signed.len() + payload.len());
    m.extend_from_slice(CONTEXT);
    m.push(kind.byte());
    m.extend_from_slice(&(signed.len() as u32).to_be_bytes());
    m.extend_from_slice(signed);
    m.extend_from_slice(payload);
    m
}

/// A certificate that verified: whose it is and until when.
#[derive(Clone)]
struct Known {
    node: String,
    not_after: SystemTime,
}

/// Checks sealed messages against the trust domain's CA.
#[derive(Clone)]
pub struct Verifier {
    anchor: Arc<TrustAnchor<'static>>,
    verified: Arc<Mutex<HashMap<[u8; 32], Known>>>,
}

/// Signature algorithms a node key may use (`rcgen`'s default is P-256).
static ALGS: &[&dyn rustls_pki_types::SignatureVerificationAlgorithm] = &[
    webpki::ring::ECDSA_P256_SHA256,
    webpki::ring::ECDSA_P384_SHA384,
    webpki::ring::ED25519,
];

impl Verifier {
    /// Trusts the CA certificate `ca.pem` of `tls`.
    pub fn load(tls: &NodeTls) -> Result<Self, MeshError> {
        let der = pem_der(&read(&tls.ca)?, &tls.ca)?;
        Self::from_ca_der(der)
    }

    pub fn from_ca_der(der: Vec<u8>) -> Result<Self, MeshError> {
        let cert = CertificateDer::from(der);
        let anchor = webpki::anchor_from_trusted_cert(&cert)
            .map_err(|e| MeshError::Pki(format!("the mesh CA certificate is unusable: {e:?}")))?
            .to_owned();
        Ok(Self {
            anchor: Arc::new(anchor),
            verified: Arc::default(),
        })
    }

    /// The node whose certificate sealed `env`. Errors say what is wrong.
    pub fn verify(&self, env: &Envelope<'_>) -> Result<String, String> {
        let cert = env.cert;
        let node = self.certificate_name(cert, SystemTime::now())?;
        let der = CertificateDer::from(cert);
        let ee =
            EndEntityCert::try_from(&der).map_err(|e| format!("unreadable certificate: {e:?}"))?;
        let message = signed_message(env.kind, env.signed, env.payload);
        if ALGS
            .iter()
            .any(|alg| ee.verify_signature(*alg, &message, env.sig).is_ok())
        {
            Ok(node)
        } else {
            Err(format!("bad signature for {node}'s certificate"))
        }
    }

    /// The node name of `cert` when it chains to the CA and is valid at `now`.
    pub fn certificate_name(&self, cert: &[u8], now: SystemTime) -> Result<String, String> {
        let id: [u8; 32] = Sha256::digest(cert).into();
        if let Some(known) = lock(&self.verified).get(&id).cloned() {
            if now > known.not_after {
                return Err(format!("{}'s certificate has expired", known.node));
            }
            return Ok(known.node);
        }
        let der = CertificateDer::from(cert);
        let ee =
            EndEntityCert::try_from(&der).map_err(|e| format!("unreadable certificate: {e:?}"))?;
        let time = UnixTime::since_unix_epoch(now.duration_since(UNIX_EPOCH).unwrap_or_default());
        ee.verify_for_usage(
            ALGS,
            std::slice::from_ref(&*self.anchor),
            &[],
            time,
            KeyUsage::client_auth(),
            None,
            None,
        )
        .map_err(|e| match e {
            webpki::Error::CertExpired { .. } => "the certificate has expired".to_owned(),
            webpki::Error::CertNotValidYet { .. } => "the certificate is not valid yet".to_owned(),
            e => format!("the certificate is not one of this trust domain's: {e:?}"),
        })?;
        let mut names = ee
            .valid_dns_names()
            .filter(|n| crate::check_node_name(n).is_ok());
        let (Some(node), None) = (names.next(), names.next()) else {
            return Err("the certificate names no single node".into());
        };
        let node = node.to_owned();
        let not_after = not_after(cert).unwrap_or(now);
        let mut cache = lock(&self.verified);
        if cache.len() >= VERIFIED_CACHE {
            cache.clear();
        }
        cache.insert(
            id,
            Known {
                node: node.clone(),
                not_after,
            },
        );
        Ok(node)
    }
}

/// When `cert` (DER) stops being valid.
pub fn not_after(cert: &[u8]) -> Option<SystemTime> {
    use x509_parser::prelude::FromDer;
    let (_, parsed) = x509_parser::certificate::X509Certificate::from_der(cert).ok()?;
    let secs = parsed.validity().not_after.timestamp();
    Some(UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).ok()?))
}

/// The first certificate of a PEM file, as DER.
pub fn pem_der(pem: &str, path: &Path) -> Result<Vec<u8>, MeshError> {
    use rustls_pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .map(|c| c.to_vec())
        .map_err(|e| MeshError::Pki(format!("{}: not a PEM certificate ({e:?})", path.display())))
}

fn read(path: &Path) -> Result<String, MeshError> {
    std::fs::read_to_string(path).map_err(|e| MeshError::Pki(format!("{}: {e}", path.display())))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
