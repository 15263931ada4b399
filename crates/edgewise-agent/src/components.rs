//! The node's Wasm components as they are now. A call asks the registry for the current version
//! of its component; the registry reloads when the file behind it changed (a `component add`, a
//! `PUT /v1/components/{name}`, a rebuilt `.wasm`), so new calls run the new version while calls
//! in flight finish on the one they hold (hot swap).
//!
//! Checking for a change is one `stat` per call: a new install is a new file (a new inode),
//! however quickly it follows the last one.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use edgewise_core::signing::{self, Artifact, ManifestSignature};
use edgewise_core::{ComponentManifest, DataDir, Grants};
use edgewise_sandbox::store::{
    check_name, manifest_file_beside, ComponentStore, InstalledComponent,
};
use edgewise_sandbox::{LoadedComponent, Sandbox, SandboxConfig, SandboxError};
use sha2::{Digest, Sha256};

/// Which component, with what grants.
#[derive(Debug, Clone, PartialEq)]
pub struct ComponentSource {
    pub target: Target,
    /// Grants from an agent spec's capability entry: they may narrow the manifest's, never
    /// widen them (a `.wasm` file without a manifest has only these). Relative file grants in
    /// them must already be absolute.
    pub grants: Option<Grants>,
    /// Linear memory when the grants name none (the agent's `runtime.memory_limit`).
    pub default_memory: Option<u64>,
    /// Which addresses network grants may reach (the agent's egress under the node's policy).
    pub egress: crate::egress::EgressPolicy,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// Installed under this name (`edgewise component add`).
    Installed(String),
    /// A `.wasm` file, with its manifest beside it.
    File(PathBuf),
}

impl ComponentSource {
    /// An installed component with its manifest's grants, local network only.
    pub fn installed(name: &str) -> Self {
        Self {
            target: Target::Installed(name.to_owned()),
            grants: None,
            default_memory: None,
            egress: crate::egress::EgressPolicy::default(),
        }
    }
}

/// Identity of the file version a load came from.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    #[cfg(unix)]
    inode: u64,
}

impl Stamp {
    fn of(path: &Path) -> std::io::Result<Self> {
        let m = std::fs::metadata(path)?;
        Ok(Self {
            len: m.len(),
            modified: m.modified().ok(),
            #[cfg(unix)]
            inode: std::os::unix::fs::MetadataExt::ino(&m),
        })
    }
}

struct Current {
    stamp: Stamp,
    component: Arc<LoadedComponent>,
}

pub struct ComponentRegistry {
    store: ComponentStore,
    wasm_cache: PathBuf,
    trusted_keys: Vec<String>,
    sandbox: OnceLock<Result<Arc<Sandbox>, String>>,
    loaded: Mutex<Vec<(ComponentSource, Current)>>,
}

impl ComponentRegistry {
    pub fn new(data: &DataDir, trusted_keys: Vec<String>) -> Self {
        Self {
            store: ComponentStore::new(data.components()),
            wasm_cache: data.wasm_cache(),
            trusted_keys,
            sandbox: OnceLock::new(),
            loaded: Mutex::default(),
        }
    }

    pub fn store(&self) -> &ComponentStore {
        &self.store
    }

    /// The node's sandbox, created on first use (it starts a thread and reserves address space).
    pub fn sandbox(&self) -> Result<Arc<Sandbox>, SandboxError> {
        self.sandbox
            .get_or_init(|| {
                Sandbox::new(SandboxConfig {
                    cache_dir: Some(self.wasm_cache.clone()),
                    ..SandboxConfig::default()
                })
                .map(Arc::new)
                .map_err(|e| e.to_string())
            })
            .clone()
            .map_err(SandboxError::Engine)
    }

    fn wasm_path(&self, target: &Target) -> Result<PathBuf, SandboxError> {
        Ok(match target {
            Target::Installed(name) => {
                check_name(name)?;
                self.store.dir().join(name).join("component.wasm")
            }
            Target::File(path) => path.clone(),
        })
    }

    /// The current version of `source`, loaded if the file changed since the last call.
    pub fn current(&self, source: &ComponentSource) -> Result<Arc<LoadedComponent>, SandboxError> {
        let path = self.wasm_path(&source.target)?;
        let stamp = match Stamp::of(&path) {
            Ok(s) => s,
            // The store's error says what is missing and how to install it.
            Err(_) => {
                return Err(match self.load(source) {
                    Err(e) => e,
                    Ok(_) => missing(&path),
                })
            }
        };
        {
            let loaded = self.lock();
            if let Some((_, c)) = loaded.iter().find(|(s, _)| s == source) {
                if c.stamp == stamp {
                    return Ok(c.component.clone());
                }
            }
        }
        let component = Arc::new(self.load(source)?);
        let mut loaded = self.lock();
        loaded.retain(|(s, _)| s != source);
        loaded.push((
            source.clone(),
            Current {
                stamp,
                component: component.clone(),
            },
        ));
        if let Target::Installed(name) = &source.target {
            tracing::info!(component = %name, sha256 = %component.sha256, "component version loaded");
        }
        Ok(component)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(ComponentSource, Current)>> {
        self.loaded.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Loads `source` as it is on disk now (signature checked for installed components; a
    /// node that requires signatures loads no `.wasm` file from a spec).
    fn load(&self, source: &ComponentSource) -> Result<LoadedComponent, SandboxError> {
        let (name, wasm, manifest, base) = match &source.target {
            Target::Installed(name) => {
                let c = self.store.get(name)?;
                self.store.verify(&c, &self.trusted_keys)?;
                let base = c.wasm.parent().map(Path::to_path_buf).unwrap_or_default();
                (c.name, c.wasm, Some(c.manifest), base)
            }
            Target::File(path) => {
                if self.requires_signatures() {
                    return Err(SandboxError::UnsignedFile { path: path.clone() });
                }
                let name = path
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "component".into());
                let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
                (name, path.clone(), manifest_file_beside(path)?, base)
            }
        };
        let grants = match (manifest, &source.grants) {
            (Some(m), None) => resolve_files(m.grants, &base),
            (None, Some(spec)) => spec.clone(),
            (None, None) => Grants::default(),
            // Compared with links followed: a link inside a granted directory that points out
            // of it is not inside it.
            (Some(m), Some(spec)) => {
                let ceiling = canonical_files(resolve_files(m.grants, &base), &wasm)?;
                let spec = canonical_files(spec.clone(), &wasm)?;
                ceiling
                    .narrowed_by(&spec)
                    .map_err(|source| SandboxError::GrantsWidened {
                        component: name.clone(),
                        source,
                    })?
            }
        };
        let egress = &source.egress;
        self.sandbox()?.load(
            &name,
            &wasm,
            grants,
            source.default_memory,
            &|ip: IpAddr| egress.allows_ip(ip),
        )
    }

    /// Whether this node loads only components signed by a trusted key.
    pub fn requires_signatures(&self) -> bool {
        !self.trusted_keys.is_empty()
    }

    /// Installs (or replaces) `name` from the file `wasm`: it is loaded first, so nothing that
    /// cannot run is installed, and a signature that comes with it must hold for these bytes.
    /// Running calls finish on the old version; new ones get the new one.
    pub fn install(
        &self,
        name: &str,
        wasm: &Path,
        manifest: &ComponentManifest,
        signature: Option<&ManifestSignature>,
    ) -> Result<(InstalledComponent, Arc<LoadedComponent>), SandboxError> {
        check_name(name)?;
        let bytes = std::fs::read(wasm).map_err(|e| SandboxError::Load {
            path: wasm.to_path_buf(),
            message: format!("cannot read: {e}"),
        })?;
        if let (Some(sig), true) = (signature, self.requires_signatures()) {
            let sha256 = hex::encode(Sha256::digest(&bytes));
            // The signature covers the grants it is installed with: other grants need a new one.
            signing::verify(
                sig,
                Artifact::Component {
                    grants: &manifest.grants,
                },
                name,
                &sha256,
                bytes.len() as u64,
                &self.trusted_keys,
            )
            .map_err(|why| SandboxError::Store {
                path: wasm.to_path_buf(),
                message: format!("signature check failed: {why}"),
            })?;
        }
        let check = self.sandbox()?.load(
            name,
            wasm,
            manifest.grants.clone(),
            None,
            &crate::egress::is_local,
        )?;
        drop(check);
        let installed = self.store.install(name, wasm, manifest, signature)?;
        let current = self.current(&ComponentSource::installed(name))?;
        Ok((installed, current))
    }

    /// Removes an installed component; calls in flight finish, new ones find it gone.
    pub fn remove(&self, name: &str) -> Result<(), SandboxError> {
        self.store.remove(name)?;
        self.lock()
            .retain(|(s, _)| s.target != Target::Installed(name.to_owned()));
        Ok(())
    }
}

/// Relative file grants resolve against the manifest's directory.
fn resolve_files(mut grants: Grants, base: &Path) -> Grants {
    for f in &mut grants.files {
        if f.path.is_relative() {
            f.path = base.join(&f.path);
        }
    }
    grants
}

/// File grants with every link followed (each directory must exist to be granted anyway).
fn canonical_files(mut grants: Grants, wasm: &Path) -> Result<Grants, SandboxError> {
    for f in &mut grants.files {
        f.path = std::fs::canonicalize(&f.path).map_err(|e| SandboxError::Load {
            path: wasm.to_path_buf(),
            message: format!("file grant {}: {e}", f.path.display()),
        })?;
    }
    Ok(grants)
}

fn missing(path: &Path) -> SandboxError {
    SandboxError::Load {
        path: path.to_path_buf(),
        message: "no such file".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_installed_component_says_how_to_install_one() {
        let tmp = tempfile::tempdir().unwrap();
        let reg = ComponentRegistry::new(&DataDir::new(tmp.path()), Vec::new());
        let err = reg
            .current(&ComponentSource::installed("nothere"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("no component named 'nothere'"), "{err}");
        assert!(reg
            .current(&ComponentSource::installed("../x"))
            .unwrap_err()
            .to_string()
            .contains("invalid component name"));
    }
}
