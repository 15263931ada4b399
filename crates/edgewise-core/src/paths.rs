//! The data directory layout. Every crate asks `DataDir` for a path instead of joining strings, so the
//! layout is written down in exactly one place.

use std::path::{Path, PathBuf};

/// Root of everything Edgewise keeps on disk: `$EDGEWISE_HOME`, else `~/.local/share/edgewise`.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// Resolves the data dir from the environment; falls back to `./.edgewise` when no home exists.
    pub fn from_env() -> Self {
        if let Some(dir) = std::env::var_os("EDGEWISE_HOME").filter(|v| !v.is_empty()) {
            return Self::new(dir);
        }
        match dirs::data_dir() {
            Some(d) => Self::new(d.join("edgewise")),
            None => Self::new(".edgewise"),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    /// Verified model files and their manifests.
    pub fn models(&self) -> PathBuf {
        self.root.join("models")
    }
    /// Partial downloads, kept between runs so `pull` can resume.
    pub fn downloads(&self) -> PathBuf {
        self.root.join("downloads")
    }
    /// Saved KV snapshots of named sessions.
    pub fn sessions(&self) -> PathBuf {
        self.root.join("sessions")
    }
    /// User catalog entries, merged over the built-in catalog.
    pub fn catalog_file(&self) -> PathBuf {
        self.root.join("catalog.yaml")
    }
    /// Durable local state (redb): KV namespaces, agents, runs.
    pub fn state_db(&self) -> PathBuf {
        self.root.join("state.redb")
    }
    /// The hash-chained audit log.
    pub fn audit_log(&self) -> PathBuf {
        self.root.join("audit").join("audit.jsonl")
    }
    /// Where relative paths of agents registered over the API resolve (roots, components).
    pub fn agents(&self) -> PathBuf {
        self.root.join("agents")
    }

    /// Where relative paths of specs that neighbours place here resolve. Not under `agents/`: a
    /// placed spec has no directory of its own whose files it may read.
    pub fn placed_runs(&self) -> PathBuf {
        self.root.join("placed-runs")
    }

    /// Installed Wasm components (`edgewise component add`), one directory each.
    pub fn components(&self) -> PathBuf {
        self.root.join("components")
    }
    /// Compiled Wasm artifacts keyed by content hash, so a restart does not recompile.
    pub fn wasm_cache(&self) -> PathBuf {
        self.root.join("cache").join("wasm")
    }
    /// Vector memory: collections (redb) and their saved indexes.
    pub fn knowledge(&self) -> PathBuf {
        self.root.join("knowledge")
    }
    /// The operator's credential for the node's admin routes (mode 0600; `edgewise token rotate`).
    pub fn admin_token(&self) -> PathBuf {
        self.root.join("admin.token")
    }
    /// Node configuration.
    pub fn config_file(&self) -> PathBuf {
        self.root.join("config.yaml")
    }

    /// This node's mesh certificate, key and CA (`edgewise mesh cert issue`).
    pub fn mesh_tls(&self) -> PathBuf {
        self.root.join("mesh")
    }
}
