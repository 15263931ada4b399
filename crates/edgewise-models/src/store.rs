//! The installed models: `models/<name>/` holding the artifact and `manifest.json` (and
//! `signature.json` once signed).

use std::collections::BTreeMap;
use std::fs::File;

use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use edgewise_core::DataDir;
use serde::{Deserialize, Serialize};

use crate::{gguf, Catalog, ModelError, ModelFormat, NoProgress};
use edgewise_core::signing::{self, Artifact, ManifestSignature};

const MANIFEST: &str = "manifest.json";
const SIGNATURE: &str = "signature.json";
const GGUF_FILE: &str = "model.gguf";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub name: String,
    pub architecture: String,
    pub format: ModelFormat,
    /// sha256 of the artifact as published (the GGUF, or the zip for `bert-zip`).
    pub sha256: String,
    pub size: u64,
    /// sha256 of every installed file, relative to the model directory.
    pub files: BTreeMap<String, String>,
    /// mtime (ns since epoch) of the main file when it was last hashed; a change triggers a rehash at load.
    pub verified_mtime_ns: u128,
}

/// A model ready to hand to the engine.
#[derive(Debug, Clone)]
pub struct ResolvedModel {
    /// The GGUF file, or the directory of a `bert-zip` model.
    pub path: PathBuf,
    pub name: String,
    pub manifest: Option<Manifest>,
}

pub struct ModelStore {
    data: DataDir,
    catalog: Catalog,
}

pub(crate) fn check_name(name: &str) -> Result<(), ModelError> {
    let ok = !name.is_empty()
        && !name.starts_with('.')
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ModelError::BadName { name: name.into() })
    }
}

fn mtime_ns(path: &Path) -> Result<u128, ModelError> {
    let meta = std::fs::metadata(path).map_err(ModelError::io(path))?;
    let t = meta.modified().map_err(ModelError::io(path))?;
    Ok(t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0))
}

impl ModelStore {
    pub fn open(data: DataDir) -> Result<Self, ModelError> {
        let catalog = Catalog::load(&data.catalog_file())?;
        Ok(Self { data, catalog })
    }

    pub fn data_dir(&self) -> &DataDir {
        &self.data
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    fn model_dir(&self, name: &str) -> PathBuf {
        self.data.models().join(name)
    }

    pub fn manifest(&self, name: &str) -> Result<Manifest, ModelError> {
        check_name(name)?;
        let path = self.model_dir(name).join(MANIFEST);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ModelError::NotInstalled { name: name.into() })
            }
            Err(e) => return Err(ModelError::io(&path)(e)),
        };
        serde_json::from_str(&text).map_err(|e| ModelError::Manifest {
            path,
            message: e.to_string(),
        })
    }

    /// Whether `name` is a model this node can use by name: a catalog entry (installed or
    /// pullable) or a model installed under that name (`models import`).
    pub fn knows(&self, name: &str) -> bool {
        self.catalog().get(name).is_some() || self.manifest(name).is_ok()
    }

    /// Every name `knows` accepts, catalog entries first.
    pub fn known_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .catalog()
            .entries()
            .iter()
            .map(|e| e.name.clone())
            .collect();
        for m in self.list().unwrap_or_default() {
            if !names.contains(&m.name) {
                names.push(m.name);
            }
        }
        names
    }

    pub fn list(&self) -> Result<Vec<Manifest>, ModelError> {
        let dir = self.data.models();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(ModelError::io(&dir)(e)),
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            if let Ok(m) = self.manifest(&name) {
                out.push(m);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// The main file (GGUF) or directory (BERT) of an installed model.
    fn artifact_path(&self, m: &Manifest) -> PathBuf {
        match m.format {
            ModelFormat::Gguf => self.model_dir(&m.name).join(GGUF_FILE),
            ModelFormat::BertZip => self.model_dir(&m.name),
        }
    }

    fn main_file(&self, m: &Manifest) -> PathBuf {
        match m.format {
            ModelFormat::Gguf => self.model_dir(&m.name).join(GGUF_FILE),
            ModelFormat::BertZip => self.model_dir(&m.name).join("model.safetensors"),
        }
    }

    /// Installs a verified artifact under `name` with one atomic directory rename.
    pub(crate) fn install(
        &self,
        name: &str,
        architecture: &str,
        format: ModelFormat,
        file: &Path,
        sha256: &str,
        size: u64,
    ) -> Result<Manifest, ModelError> {
        check_name(name)?;
        let models = self.data.models();
        std::fs::create_dir_all(&models).map_err(ModelError::io(&models))?;
        let target = self.model_dir(name);
        if target.exists() {
            return Err(ModelError::AlreadyExists { name: name.into() });
        }
        let staging = tempfile::Builder::new()
            .prefix(&format!(".staging-{name}-"))
            .tempdir_in(&models)
            .map_err(ModelError::io(&models))?;
        let mut files = BTreeMap::new();
        match format {
            ModelFormat::Gguf => {
                let dest = staging.path().join(GGUF_FILE);
                if std::fs::hard_link(file, &dest).is_err() {
                    std::fs::copy(file, &dest).map_err(ModelError::io(&dest))?;
                }
                files.insert(GGUF_FILE.to_owned(), sha256.to_owned());
            }
            ModelFormat::BertZip => {
                let f = File::open(file).map_err(ModelError::io(file))?;
                let mut zip = zip::ZipArchive::new(f).map_err(|e| ModelError::Archive {
                    path: file.into(),
                    message: e.to_string(),
                })?;
                zip.extract(staging.path())
                    .map_err(|e| ModelError::Archive {
                        path: file.into(),
                        message: e.to_string(),
                    })?;
                for required in ["model.safetensors", "tokenizer.json", "config.json"] {
                    let p = staging.path().join(required);
                    if !p.is_file() {
                        return Err(ModelError::Archive {
                            path: file.into(),
                            message: format!("missing {required}"),
                        });
                    }
                    files.insert(
                        required.to_owned(),
                        crate::pull::sha256_file(&p, &NoProgress)?.0,
                    );
                }
            }
        }
        let main = match format {
            ModelFormat::Gguf => staging.path().join(GGUF_FILE),
            ModelFormat::BertZip => staging.path().join("model.safetensors"),
        };
        let manifest = Manifest {
            name: name.into(),
            architecture: architecture.into(),
            format,
            sha256: sha256.into(),
            size,
            files,
            verified_mtime_ns: mtime_ns(&main)?,
        };
        write_json(&staging.path().join(MANIFEST), &manifest)?;
        let staged = staging.keep();
        std::fs::rename(&staged, &target).map_err(|e| {
            let _ = std::fs::remove_dir_all(&staged);
            ModelError::io(&target)(e)
        })?;
        Ok(manifest)
    }

    /// Copies a local GGUF into the store after checking its header.
    pub fn import(&self, path: &Path, name: &str) -> Result<Manifest, ModelError> {
        check_name(name)?;
        if self.model_dir(name).exists() {
            return Err(ModelError::AlreadyExists { name: name.into() });
        }
        let info = gguf::inspect(path)?;
        let arch = info.architecture().unwrap_or("unknown").to_owned();
        let downloads = self.data.downloads();
        std::fs::create_dir_all(&downloads).map_err(ModelError::io(&downloads))?;
        let copy = downloads.join(format!("{name}.import"));
        std::fs::copy(path, &copy).map_err(ModelError::io(path))?;
        let (sha, size) = crate::pull::sha256_file(&copy, &NoProgress)?;
        let result = self.install(name, &arch, ModelFormat::Gguf, &copy, &sha, size);
        let _ = std::fs::remove_file(&copy);
        result
    }

    /// Rehashes every file of an installed model against its manifest.
    pub fn verify(&self, name: &str) -> Result<Manifest, ModelError> {
        let mut m = self.manifest(name)?;
        for (file, expected) in &m.files {
            let path = self.model_dir(name).join(file);
            let (actual, _) = crate::pull::sha256_file(&path, &NoProgress)?;
            if &actual != expected {
                return Err(ModelError::HashMismatch {
                    what: path.display().to_string(),
                    expected: expected.clone(),
                    actual,
                });
            }
        }
        if m.format == ModelFormat::Gguf {
            gguf::inspect(&self.main_file(&m))?;
        }
        m.verified_mtime_ns = mtime_ns(&self.main_file(&m))?;
        write_json(&self.model_dir(name).join(MANIFEST), &m)?;
        Ok(m)
    }

    pub fn remove(&self, name: &str) -> Result<(), ModelError> {
        self.manifest(name)?;
        let dir = self.model_dir(name);
        std::fs::remove_dir_all(&dir).map_err(ModelError::io(&dir))
    }

    pub fn sign(
        &self,
        name: &str,
        key: &ed25519_dalek::SigningKey,
    ) -> Result<ManifestSignature, ModelError> {
        let m = self.manifest(name)?;
        let sig = signing::sign(key, Artifact::Model, &m.name, &m.sha256, m.size);
        write_json(&self.model_dir(name).join(SIGNATURE), &sig)?;
        Ok(sig)
    }

    /// Finds a model by catalog name, installed name or file path, without checking it.
    pub fn resolve(&self, name_or_path: &str) -> Result<ResolvedModel, ModelError> {
        let as_path = Path::new(name_or_path);
        if check_name(name_or_path).is_ok() {
            match self.manifest(name_or_path) {
                Ok(m) => {
                    return Ok(ResolvedModel {
                        path: self.artifact_path(&m),
                        name: m.name.clone(),
                        manifest: Some(m),
                    })
                }
                Err(ModelError::NotInstalled { .. })
                    if self.catalog.get(name_or_path).is_some() =>
                {
                    return Err(ModelError::NotInstalled {
                        name: name_or_path.into(),
                    })
                }
                Err(ModelError::NotInstalled { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        if as_path.is_file() || as_path.is_dir() {
            let name = as_path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            return Ok(ResolvedModel {
                path: as_path.into(),
                name,
                manifest: None,
            });
        }
        Err(ModelError::UnknownModel {
            name: name_or_path.into(),
            known: self.catalog.names(),
            catalog: self.data.catalog_file(),
        })
    }

    /// Resolves and checks a model before the engine loads it: header and size, a rehash when the
    /// file changed since it was verified, and signatures when `trusted_keys` is not empty.
    pub fn open_for_load(
        &self,
        name_or_path: &str,
        trusted_keys: &[String],
    ) -> Result<ResolvedModel, ModelError> {
        let resolved = self.resolve(name_or_path)?;
        let Some(m) = &resolved.manifest else {
            if !trusted_keys.is_empty() {
                return Err(ModelError::Untrusted {
                    name: name_or_path.into(),
                    reason: "the node requires signed models (trusted_keys is set); import it with `edgewise models import` and sign it".into(),
                });
            }
            if resolved.path.is_file() {
                gguf::inspect(&resolved.path)?;
            }
            return Ok(resolved);
        };
        let main = self.main_file(m);
        if m.format == ModelFormat::Gguf {
            let actual = std::fs::metadata(&main)
                .map_err(ModelError::io(&main))?
                .len();
            if actual != m.size {
                return Err(ModelError::SizeMismatch {
                    what: main.display().to_string(),
                    expected: m.size,
                    actual,
                });
            }
            gguf::inspect(&main)?;
        }
        if mtime_ns(&main)? != m.verified_mtime_ns {
            tracing::info!(model = %m.name, "model file changed since it was verified; rehashing");
            self.verify(&m.name)?;
        }
        if !trusted_keys.is_empty() {
            let sig_path = self.model_dir(&m.name).join(SIGNATURE);
            let sig: ManifestSignature = match std::fs::read_to_string(&sig_path) {
                Ok(t) => serde_json::from_str(&t).map_err(|e| ModelError::Untrusted {
                    name: m.name.clone(),
                    reason: format!("signature file {} is malformed: {e}", sig_path.display()),
                })?,
                Err(_) => {
                    return Err(ModelError::Untrusted {
                        name: m.name.clone(),
                        reason: format!("unsigned: {} is missing and the node requires signatures (trusted_keys is set)", sig_path.display()),
                    })
                }
            };
            signing::verify(
                &sig,
                Artifact::Model,
                &m.name,
                &m.sha256,
                m.size,
                trusted_keys,
            )
            .map_err(|reason| ModelError::Untrusted {
                name: m.name.clone(),
                reason,
            })?;
        }
        Ok(resolved)
    }
}

fn write_json(path: &Path, value: &impl Serialize) -> Result<(), ModelError> {
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_string_pretty(value).map_err(|e| ModelError::Manifest {
        path: path.into(),
        message: e.to_string(),
    })?;
    std::fs::write(&tmp, text).map_err(ModelError::io(&tmp))?;
    File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(ModelError::io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(ModelError::io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, ModelStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = ModelStore::open(DataDir::new(dir.path())).unwrap();
        (dir, s)
    }

    fn tiny_gguf(dir: &Path) -> PathBuf {
        let p = dir.join("tiny.gguf");
        std::fs::write(
            &p,
            gguf::write_fixture(&[("general.architecture", "llama")], &[("t", 64)]),
        )
        .unwrap();
        p
    }

    #[test]
    fn import_verify_and_remove_round_trip() {
        let (dir, s) = store();
        assert!(!s.knows("tiny"));
        let m = s.import(&tiny_gguf(dir.path()), "tiny").unwrap();
        assert_eq!(m.architecture, "llama");
        assert_eq!(s.list().unwrap().len(), 1);
        // An imported model is a model name like a catalog entry (`model_config.path: tiny`).
        assert!(s.knows("tiny") && s.known_names().contains(&"tiny".to_owned()));
        s.verify("tiny").unwrap();
        s.open_for_load("tiny", &[]).unwrap();
        s.remove("tiny").unwrap();
        assert!(!s.knows("tiny"));
        assert!(matches!(
            s.resolve("tiny"),
            Err(ModelError::UnknownModel { .. })
        ));
    }

    #[test]
    fn truncated_import_is_refused_and_leaves_nothing() {
        let (dir, s) = store();
        let p = tiny_gguf(dir.path());
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 100]).unwrap();
        let err = s.import(&p, "tiny").unwrap_err().to_string();
        assert!(err.contains("truncated"), "{err}");
        assert!(s.list().unwrap().is_empty());
    }

    #[test]
    fn modified_file_is_caught_by_rehash_at_load() {
        let (dir, s) = store();
        s.import(&tiny_gguf(dir.path()), "tiny").unwrap();
        let f = dir.path().join("models/tiny/model.gguf");
        let mut bytes = std::fs::read(&f).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&f, &bytes).unwrap();
        let err = s.open_for_load("tiny", &[]).unwrap_err().to_string();
        assert!(err.contains("sha256 mismatch"), "{err}");
    }

    #[test]
    fn unsigned_and_badly_signed_models_are_refused_when_keys_are_trusted() {
        let (dir, s) = store();
        s.import(&tiny_gguf(dir.path()), "tiny").unwrap();
        let key = ed25519_dalek::SigningKey::from_bytes(&[9u8; 32]);
        let pk = signing::public_key_hex(&key);
        let err = s
            .open_for_load("tiny", std::slice::from_ref(&pk))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unsigned"), "{err}");
        s.sign("tiny", &key).unwrap();
        s.open_for_load("tiny", std::slice::from_ref(&pk)).unwrap();
        // A signature by another key is refused, naming the check.
        let other = ed25519_dalek::SigningKey::from_bytes(&[1u8; 32]);
        s.sign("tiny", &other).unwrap();
        let err = s.open_for_load("tiny", &[pk]).unwrap_err().to_string();
        assert!(err.contains("not among the node's trusted_keys"), "{err}");
    }

    #[test]
    fn unknown_name_lists_known_models() {
        let (_d, s) = store();
        let err = s.resolve("no-such-model").unwrap_err().to_string();
        assert!(err.contains("qwen2.5-coder-0.5b-instruct"), "{err}");
    }
}
