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

use edgewise_core::grants::DOCUMENT_BUCKET_PREFIX;
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
    /// For a run a neighbour placed here: the most the component gets, whatever its manifest
    /// grants.
    pub placed: Option<PlacedCeiling>,
}

/// The most a component gets in a run a neighbour placed here (from `mesh.accept_runs` and
/// `mesh.share`). Its manifest was written, and signed, for this node's own agents: in a placed
/// run its grants are cut down to this, never taken as they are.
#[derive(Debug, Clone, PartialEq)]
pub struct PlacedCeiling {
    /// Directories file grants must lie in (`mesh.accept_runs.policy.file_roots`), absolute and
    /// resolved; none by default, so no file grant stays.
    pub file_roots: Vec<PathBuf>,
    /// Whether network grants may stay at all (`mesh.accept_runs.policy` allows egress or lists
    /// local destinations); those that stay are still held to the run's egress policy.
    pub network: bool,
    /// The shared documents (`mesh.share.documents`): the only `doc:NAME` buckets that stay.
    pub documents: Vec<String>,
    /// Linear memory at most (`mesh.accept_runs.limits.memory_limit`).
    pub memory_limit: edgewise_core::ByteSize,
}

impl PlacedCeiling {
    /// `grants` within this ceiling: file grants outside `file_roots`, network grants where none
    /// may stay and documents not shared are dropped (and logged); memory is lowered to the
    /// ceiling. File paths in `grants` must be absolute and resolved (links followed). The
    /// component's own KV buckets stay: in a placed run they live under the placing node's scope
    /// (`NodeServices`), apart from this node's agents' state.
    pub fn confine(&self, component: &str, mut grants: Grants) -> Grants {
        let before = grants.clone();
        grants
            .files
            .retain(|f| self.file_roots.iter().any(|r| within(&f.path, r)));
        if !self.network {
            grants.network.clear();
        }
        grants
            .kv_buckets
            .retain(|b| match b.strip_prefix(DOCUMENT_BUCKET_PREFIX) {
                Some(doc) => self.documents.iter().any(|d| d == doc),
                None => true,
            });
        let memory = grants
            .memory_limit
            .map_or(self.memory_limit, |m| m.min(self.memory_limit));
        grants.memory_limit = Some(memory);
        let dropped = |a: &[String], b: &[String]| -> Vec<String> {
            a.iter().filter(|x| !b.contains(x)).cloned().collect()
        };
        let files: Vec<String> = before
            .files
            .iter()
            .filter(|f| !grants.files.contains(f))
            .map(|f| f.path.display().to_string())
            .collect();
        let network = dropped(&before.network, &grants.network);
        let documents = dropped(&before.kv_buckets, &grants.kv_buckets);
        if !(files.is_empty() && network.is_empty() && documents.is_empty()) {
            tracing::warn!(
                component,
                ?files,
                ?network,
                ?documents,
                "grants a placed run may not use dropped (mesh.accept_runs.policy, mesh.share)"
            );
        }
        grants
    }
}

/// Whether `path` lies in `root`, by path components; a `..` is never inside anything.
fn within(path: &Path, root: &Path) -> bool {
    !path
        .components()
        .any(|c| c == std::path::Component::ParentDir)
        && path.starts_with(root)
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
            placed: None,
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
        let grants = match &source.placed {
            // Compared with links followed, as a spec's grants are.
            Some(ceiling) => ceiling.confine(&name, canonical_files(grants, &wasm)?),
            None => grants,
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

    /// The attack: a neighbour's run uses an installed component whose manifest grants files,
    /// the network, a document this node does not share and a large memory, all meant for this
    /// node's own agents.
    #[test]
    fn a_placed_run_keeps_of_a_manifests_grants_only_what_accept_runs_allows() {
        let file = |p: &str| edgewise_core::FileGrant {
            path: p.into(),
            guest: None,
            writable: true,
        };
        let manifest = Grants {
            files: vec![file("/srv/edgewise/files/logs"), file("/etc")],
            network: vec!["10.0.0.9:502".into()],
            kv_buckets: vec![
                "predictions".into(),
                "doc:plant".into(),
                "doc:payroll".into(),
            ],
            memory_limit: Some(edgewise_core::ByteSize::gib(1)),
            ..Grants::default()
        };
        let least = PlacedCeiling {
            file_roots: Vec::new(),
            network: false,
            documents: vec!["plant".into()],
            memory_limit: edgewise_core::ByteSize::mib(64),
        };
        let g = least.confine("sensor-reader", manifest.clone());
        assert!(g.files.is_empty(), "{g:?}");
        assert!(g.network.is_empty(), "{g:?}");
        assert_eq!(g.kv_buckets, ["predictions", "doc:plant"]);
        assert_eq!(g.memory_limit, Some(edgewise_core::ByteSize::mib(64)));
        // Widened by the operator: files under a listed root, and the network (still held to
        // the run's egress policy when loaded).
        let widened = PlacedCeiling {
            file_roots: vec!["/srv/edgewise/files".into()],
            network: true,
            ..least
        };
        let g = widened.confine("sensor-reader", manifest);
        assert_eq!(g.files, [file("/srv/edgewise/files/logs")]);
        assert_eq!(g.network, ["10.0.0.9:502"]);
        // A manifest asking less memory than the ceiling keeps its own.
        let small = Grants {
            memory_limit: Some(edgewise_core::ByteSize::mib(8)),
            ..Grants::default()
        };
        let g = widened.confine("sensor-reader", small);
        assert_eq!(g.memory_limit, Some(edgewise_core::ByteSize::mib(8)));
        assert!(!within(
            Path::new("/srv/edgewise/files/../../etc"),
            Path::new("/srv/edgewise/files")
        ));
    }

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
