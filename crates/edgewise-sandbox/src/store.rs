//! Installed components: `<data>/components/<name>/` holds `component.wasm`, `manifest.yaml`
//! (description and grants) and, when signed, `signature.json`. `<name>` is a link to a version
//! directory under `.versions/`; installing writes a new version and switches the link in one
//! rename, so a reader sees the old version or the new one, never half of each (hot swap).

use std::path::{Path, PathBuf};

use edgewise_core::signing::{self, Artifact, ManifestSignature};
use edgewise_core::ComponentManifest;
use sha2::{Digest, Sha256};

use crate::SandboxError;

const WASM: &str = "component.wasm";
const MANIFEST: &str = "manifest.yaml";
const SIGNATURE: &str = "signature.json";
/// Where the versions of each component live; `<name>` is a link to the current one.
const VERSIONS: &str = ".versions";

/// Makes `link` point at `version` in one step (a new link renamed over the old one), so a
/// reader finds the old version or the new one, never none.
#[cfg(unix)]
fn point_at(link: &Path, version: PathBuf) -> std::io::Result<()> {
    let tmp = link.with_file_name(format!(
        ".{}.link",
        link.file_name().unwrap_or_default().to_string_lossy()
    ));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&version, &tmp)?;
    if link.is_dir() && !link.is_symlink() {
        // A component installed before versions existed: a plain directory cannot be renamed
        // over, so it goes first (once).
        std::fs::remove_dir_all(link)?;
    }
    std::fs::rename(&tmp, link)
}

/// Without symlinks: the version directory is copied into place (a brief window without one).
#[cfg(not(unix))]
fn point_at(link: &Path, version: PathBuf) -> std::io::Result<()> {
    let from = link.parent().unwrap_or(Path::new(".")).join(&version);
    let _ = std::fs::remove_dir_all(link);
    std::fs::create_dir_all(link)?;
    for e in std::fs::read_dir(&from)? {
        let e = e?;
        std::fs::copy(e.path(), link.join(e.file_name()))?;
    }
    Ok(())
}

pub struct ComponentStore {
    dir: PathBuf,
}

/// One installed component.
#[derive(Debug, Clone)]
pub struct InstalledComponent {
    pub name: String,
    pub wasm: PathBuf,
    pub manifest: ComponentManifest,
    pub sha256: String,
    pub size: u64,
    pub signature: Option<ManifestSignature>,
}

fn store_err(path: &Path, message: impl Into<String>) -> SandboxError {
    SandboxError::Store {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Names become directory names and tool prefixes: keep them plain.
pub fn check_name(name: &str) -> Result<(), SandboxError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(store_err(
            Path::new(name),
            "invalid component name: use letters, digits, '-' and '_' (at most 64)",
        ))
    }
}

/// The manifest next to a `.wasm` file: `NAME.component.yaml` for `NAME.wasm`; defaults if none.
pub fn manifest_beside(wasm: &Path) -> Result<ComponentManifest, SandboxError> {
    Ok(manifest_file_beside(wasm)?.unwrap_or_default())
}

/// The manifest next to a `.wasm` file, if there is one.
pub fn manifest_file_beside(wasm: &Path) -> Result<Option<ComponentManifest>, SandboxError> {
    let path = wasm.with_extension("component.yaml");
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_yaml::from_str(&text).map(Some).map_err(|e| {
            let at = e
                .location()
                .map(|l| format!(":{}:{}", l.line(), l.column()))
                .unwrap_or_default();
            store_err(Path::new(&format!("{}{at}", path.display())), e.to_string())
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(store_err(&path, e.to_string())),
    }
}

impl ComponentStore {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Installs (or replaces) `name` from `wasm`, with `manifest` and, if given, a signature
    /// (kept only with the bytes it was made for: a replaced component is unsigned until signed
    /// again). The caller loads it first, so nothing that cannot run is installed.
    pub fn install(
        &self,
        name: &str,
        wasm: &Path,
        manifest: &ComponentManifest,
        signature: Option<&ManifestSignature>,
    ) -> Result<InstalledComponent, SandboxError> {
        check_name(name)?;
        let bytes = std::fs::read(wasm).map_err(|e| store_err(wasm, e.to_string()))?;
        std::fs::create_dir_all(&self.dir).map_err(|e| store_err(&self.dir, e.to_string()))?;
        // Each install is a version directory of its own; `<name>` points at the current one.
        let versions = self.dir.join(VERSIONS).join(name);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let version = format!("{}-{nanos}", &hex::encode(Sha256::digest(&bytes))[..12]);
        let staging = versions.join(&version);
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(&staging)?;
            std::fs::write(staging.join(WASM), &bytes)?;
            let yaml = serde_yaml::to_string(manifest).map_err(std::io::Error::other)?;
            std::fs::write(staging.join(MANIFEST), yaml)?;
            if let Some(sig) = signature {
                let json = serde_json::to_string_pretty(sig).map_err(std::io::Error::other)?;
                std::fs::write(staging.join(SIGNATURE), json)?;
            }
            Ok(())
        };
        write().map_err(|e| store_err(&staging, e.to_string()))?;
        let target = self.dir.join(name);
        let previous = std::fs::read_link(&target).ok();
        point_at(&target, Path::new(VERSIONS).join(name).join(&version))
            .map_err(|e| store_err(&target, e.to_string()))?;
        // The previous version stays until the next install: a reader that looked it up just
        // before the switch can still read it.
        let previous = previous.and_then(|p| p.file_name().map(|f| f.to_owned()));
        if let Ok(entries) = std::fs::read_dir(&versions) {
            for e in entries.flatten() {
                let f = e.file_name();
                if f != *version && Some(&f) != previous.as_ref() {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        self.get(name)
    }

    pub fn get(&self, name: &str) -> Result<InstalledComponent, SandboxError> {
        check_name(name)?;
        let dir = self.dir.join(name);
        let wasm = dir.join(WASM);
        let bytes = std::fs::read(&wasm).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                SandboxError::NotInstalled {
                    name: name.to_owned(),
                }
            } else {
                store_err(&wasm, e.to_string())
            }
        })?;
        let manifest_path = dir.join(MANIFEST);
        let manifest = match std::fs::read_to_string(&manifest_path) {
            Ok(t) => {
                serde_yaml::from_str(&t).map_err(|e| store_err(&manifest_path, e.to_string()))?
            }
            Err(_) => ComponentManifest::default(),
        };
        let sig_path = dir.join(SIGNATURE);
        let signature = match std::fs::read_to_string(&sig_path) {
            Ok(t) => {
                Some(serde_json::from_str(&t).map_err(|e| store_err(&sig_path, e.to_string()))?)
            }
            Err(_) => None,
        };
        Ok(InstalledComponent {
            name: name.to_owned(),
            wasm,
            manifest,
            sha256: hex::encode(Sha256::digest(&bytes)),
            size: bytes.len() as u64,
            signature,
        })
    }

    /// Installed components by name.
    pub fn list(&self) -> Result<Vec<InstalledComponent>, SandboxError> {
        self.names()?.iter().map(|n| self.get(n)).collect()
    }

    /// Names of the installed components, sorted; reads no component.
    pub fn names(&self) -> Result<Vec<String>, SandboxError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(store_err(&self.dir, e.to_string())),
        };
        let mut names: Vec<String> = entries
            .flatten()
            .filter(|e| e.path().join(WASM).exists())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| !n.starts_with('.'))
            .collect();
        names.sort();
        Ok(names)
    }

    pub fn remove(&self, name: &str) -> Result<(), SandboxError> {
        self.get(name)?;
        let target = self.dir.join(name);
        let removed = if target.is_symlink() {
            std::fs::remove_file(&target)
        } else {
            std::fs::remove_dir_all(&target)
        };
        removed.map_err(|e| store_err(&target, e.to_string()))?;
        let _ = std::fs::remove_dir_all(self.dir.join(VERSIONS).join(name));
        Ok(())
    }

    /// Signs the installed bytes with the installed manifest's grants and limits.
    pub fn sign(
        &self,
        name: &str,
        key: &ed25519_dalek::SigningKey,
    ) -> Result<ManifestSignature, SandboxError> {
        let c = self.get(name)?;
        let grants = Artifact::Component {
            grants: &c.manifest.grants,
        };
        let sig = signing::sign(key, grants, name, &c.sha256, c.size);
        let path = self.dir.join(name).join(SIGNATURE);
        let json =
            serde_json::to_string_pretty(&sig).map_err(|e| store_err(&path, e.to_string()))?;
        std::fs::write(&path, json).map_err(|e| store_err(&path, e.to_string()))?;
        Ok(sig)
    }

    /// With trusted keys configured, only a component signed by one of them, whose bytes and
    /// grants are the ones signed, may load. The error says which check failed.
    pub fn verify(&self, c: &InstalledComponent, trusted: &[String]) -> Result<(), SandboxError> {
        if trusted.is_empty() {
            return Ok(());
        }
        let Some(sig) = &c.signature else {
            return Err(store_err(
                &c.wasm,
                format!("unsigned: the node requires signatures (trusted_keys is set); sign it with `edgewise component sign {} --key KEY`", c.name),
            ));
        };
        signing::verify(
            sig,
            Artifact::Component {
                grants: &c.manifest.grants,
            },
            &c.name,
            &c.sha256,
            c.size,
            trusted,
        )
        .map_err(|reason| store_err(&c.wasm, format!("signature check failed: {reason}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replacing_keeps_the_current_and_the_previous_version_only() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("components");
        // A component installed before versions existed: a plain directory.
        std::fs::create_dir_all(dir.join("x")).unwrap();
        std::fs::write(dir.join("x").join(WASM), b"legacy").unwrap();
        let store = ComponentStore::new(&dir);
        assert_eq!(store.get("x").unwrap().size, 6);
        let src = tmp.path().join("x.wasm");
        let m = ComponentManifest::default();
        for body in ["one", "two!", "three"] {
            std::fs::write(&src, body).unwrap();
            let c = store.install("x", &src, &m, None).unwrap();
            assert_eq!(c.size, body.len() as u64);
        }
        let versions = std::fs::read_dir(dir.join(VERSIONS).join("x"))
            .unwrap()
            .count();
        assert_eq!(versions, 2);
        assert_eq!(store.list().unwrap().len(), 1);
        store.remove("x").unwrap();
        assert!(!dir.join(VERSIONS).join("x").exists());
        assert!(store.list().unwrap().is_empty());
    }

    #[test]
    fn install_replace_sign_and_tamper() {
        let tmp = tempfile::tempdir().unwrap();
        let store = ComponentStore::new(tmp.path().join("components"));
        let src = tmp.path().join("x.wasm");
        std::fs::write(&src, b"first").unwrap();
        let m = ComponentManifest::default();
        let c = store.install("x", &src, &m, None).unwrap();
        assert_eq!(c.size, 5);
        std::fs::write(&src, b"second").unwrap();
        let c = store.install("x", &src, &m, None).unwrap();
        assert_eq!(c.size, 6);
        assert_eq!(store.list().unwrap().len(), 1);

        let key = ed25519_dalek::SigningKey::from_bytes(&[9u8; 32]);
        let pk = signing::public_key_hex(&key);
        let trusted = vec![pk];
        assert!(store
            .verify(&c, &trusted)
            .unwrap_err()
            .to_string()
            .contains("unsigned"));
        store.sign("x", &key).unwrap();
        store.verify(&store.get("x").unwrap(), &trusted).unwrap();
        // One byte changed after signing.
        std::fs::write(&c.wasm, b"secont").unwrap();
        let err = store
            .verify(&store.get("x").unwrap(), &trusted)
            .unwrap_err();
        assert!(err.to_string().contains("altered"), "{err}");

        assert!(check_name("../etc").is_err());
        store.remove("x").unwrap();
        assert!(store.get("x").is_err());
    }

    #[test]
    fn a_signed_components_grants_cannot_be_widened_after_signing() {
        let tmp = tempfile::tempdir().unwrap();
        let store = ComponentStore::new(tmp.path().join("components"));
        let src = tmp.path().join("x.wasm");
        std::fs::write(&src, b"bytes").unwrap();
        let m: ComponentManifest =
            serde_yaml::from_str("grants:\n  interfaces: [logging]\n").unwrap();
        store.install("x", &src, &m, None).unwrap();
        let key = ed25519_dalek::SigningKey::from_bytes(&[9u8; 32]);
        let trusted = vec![signing::public_key_hex(&key)];
        store.sign("x", &key).unwrap();
        store.verify(&store.get("x").unwrap(), &trusted).unwrap();
        // The same bytes and signature, the manifest edited to grant inference.
        let manifest = tmp.path().join("components/x").join(MANIFEST);
        std::fs::write(&manifest, "grants:\n  interfaces: [logging, inference]\n").unwrap();
        let err = store
            .verify(&store.get("x").unwrap(), &trusted)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("grants") && err.contains("new signature"),
            "{err}"
        );
    }
}
