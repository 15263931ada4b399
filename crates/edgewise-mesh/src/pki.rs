//! The mesh's certificates: one CA per trust domain (`edgewise mesh ca init`) and one certificate
//! per node signed by it (`edgewise mesh cert issue`). Holding a certificate of the domain's CA is
//! what membership means; the certificate names the node (its DNS subject alternative name, which
//! `identity` checks, and its common name), and every certificate expires.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::MeshError;

/// File names inside a node's TLS directory.
pub const CA_CERT: &str = "ca.pem";
pub const CA_KEY: &str = "ca.key";
pub const NODE_CERT: &str = "node.pem";
pub const NODE_KEY: &str = "node.key";

/// Paths of one node's TLS material.
#[derive(Debug, Clone)]
pub struct NodeTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl NodeTls {
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            ca: dir.join(CA_CERT),
            cert: dir.join(NODE_CERT),
            key: dir.join(NODE_KEY),
        }
    }

    /// Every file exists; else an error that says which one and how to make it.
    pub fn check(&self) -> Result<(), MeshError> {
        for (path, what) in [
            (&self.ca, "the mesh CA certificate"),
            (&self.cert, "this node's certificate"),
            (&self.key, "this node's private key"),
        ] {
            if !path.is_file() {
                return Err(MeshError::Config(format!(
                    "{what} {} is missing: run `edgewise mesh ca init` once per trust domain and `edgewise mesh cert issue NODE` for this node, then copy the node's directory here (or set mesh.tls_dir)",
                    path.display()
                )));
            }
        }
        Ok(())
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> MeshError + '_ {
    move |e| MeshError::Pki(format!("{}: {e}", path.display()))
}

fn pki(e: rcgen::Error) -> MeshError {
    MeshError::Pki(e.to_string())
}

/// Writes `<dir>/ca.pem` and `<dir>/ca.key` for the trust domain `domain`; refuses to replace an
/// existing CA (every node's certificate would stop working).
pub fn init_ca(dir: &Path, domain: &str) -> Result<PathBuf, MeshError> {
    let (cert_path, key_path) = (dir.join(CA_CERT), dir.join(CA_KEY));
    if cert_path.exists() || key_path.exists() {
        return Err(MeshError::Pki(format!(
            "{} already holds a mesh CA; remove it first if you really mean to replace it (every node certificate it signed stops working)",
            dir.display()
        )));
    }
    let key = KeyPair::generate().map_err(pki)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(pki)?;
    params
        .distinguished_name
        .push(DnType::CommonName, format!("edgewise mesh CA {domain}"));
    params
        .distinguished_name
        .push(DnType::OrganizationName, domain);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = params.self_signed(&key).map_err(pki)?;
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    write_private(&key_path, key.serialize_pem().as_bytes())?;
    std::fs::write(&cert_path, cert.pem()).map_err(io(&cert_path))?;
    Ok(cert_path)
}

/// How long a node certificate is valid unless `--days` says otherwise.
pub const DEFAULT_CERT_DAYS: u32 = 365;
/// The longest validity `--days` may ask for (ten years).
pub const MAX_CERT_DAYS: u32 = 3650;

/// [`issue_for_days`] with [`DEFAULT_CERT_DAYS`].
pub fn issue(ca_dir: &Path, node: &str, out: &Path) -> Result<NodeTls, MeshError> {
    issue_for_days(ca_dir, node, out, DEFAULT_CERT_DAYS)
}

/// Signs a certificate for `node`, valid for `days` from now, with the CA in `ca_dir` and writes
/// `ca.pem`, `node.pem` and `node.key` into `out`: the directory that node uses as
/// `mesh.tls_dir`. A certificate that never expires cannot be retired, so every one does.
pub fn issue_for_days(
    ca_dir: &Path,
    node: &str,
    out: &Path,
    days: u32,
) -> Result<NodeTls, MeshError> {
    crate::check_node_name(node)?;
    if !(1..=MAX_CERT_DAYS).contains(&days) {
        return Err(MeshError::Pki(format!(
            "--days {days}: a node certificate is valid for 1 to {MAX_CERT_DAYS} days"
        )));
    }
    let (ca_cert_path, ca_key_path) = (ca_dir.join(CA_CERT), ca_dir.join(CA_KEY));
    let ca_pem = std::fs::read_to_string(&ca_cert_path).map_err(|e| {
        MeshError::Pki(format!(
            "{}: {e} (run `edgewise mesh ca init` first, or pass --ca DIR)",
            ca_cert_path.display()
        ))
    })?;
    let ca_key_pem = std::fs::read_to_string(&ca_key_path).map_err(io(&ca_key_path))?;
    let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(pki)?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).map_err(pki)?;

    let key = KeyPair::generate().map_err(pki)?;
    let mut params = CertificateParams::new(vec![node.to_owned()]).map_err(pki)?;
    params.distinguished_name.push(DnType::CommonName, node);
    // An hour back: a member whose clock is a little behind still accepts it at once.
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(i64::from(days));
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    // One certificate serves both ends of a link: it listens and it connects.
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = params.signed_by(&key, &issuer).map_err(pki)?;

    let tls = NodeTls::in_dir(out);
    if tls.key.exists() || tls.cert.exists() {
        return Err(MeshError::Pki(format!(
            "{} already holds a node certificate; remove it first to issue a new one",
            out.display()
        )));
    }
    std::fs::create_dir_all(out).map_err(io(out))?;
    write_private(&tls.key, key.serialize_pem().as_bytes())?;
    std::fs::write(&tls.cert, cert.pem()).map_err(io(&tls.cert))?;
    if std::fs::canonicalize(&ca_cert_path).ok() != std::fs::canonicalize(&tls.ca).ok() {
        std::fs::write(&tls.ca, &ca_pem).map_err(io(&tls.ca))?;
    }
    Ok(tls)
}

/// Private keys are readable by their owner only.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), MeshError> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(io(path))?;
    file.write_all(bytes).map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_issues_node_certificates_and_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        init_ca(&ca, "plant-a").unwrap();
        let err = init_ca(&ca, "plant-a").unwrap_err().to_string();
        assert!(err.contains("already holds a mesh CA"), "{err}");

        let tls = issue(&ca, "gateway-1", &dir.path().join("gateway-1")).unwrap();
        tls.check().unwrap();
        let cert = std::fs::read_to_string(&tls.cert).unwrap();
        assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"));
        assert_eq!(
            std::fs::read(&tls.ca).unwrap(),
            std::fs::read(ca.join(CA_CERT)).unwrap()
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&tls.key).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "key readable by others: {mode:o}");
        }
        let missing = NodeTls::in_dir(&dir.path().join("nowhere"))
            .check()
            .unwrap_err();
        assert!(missing.to_string().contains("mesh cert issue"), "{missing}");
    }

    #[test]
    fn node_names_that_break_key_expressions_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        init_ca(&ca, "plant-a").unwrap();
        for bad in ["", "a/b", "a*", "$x", "a b", "x?"] {
            assert!(issue(&ca, bad, &dir.path().join("out")).is_err(), "{bad:?}");
        }
    }
}
