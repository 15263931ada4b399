use std::path::PathBuf;

/// Everything that can go wrong finding, fetching, checking or trusting a model. Each message names
/// the model or file and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("unknown model '{name}': not in the catalog and not a file. Known models: {known}. Add it to {catalog} or pass a path to a .gguf file")]
    UnknownModel {
        name: String,
        known: String,
        catalog: PathBuf,
    },
    #[error("model '{name}' is not installed; run `edgewise pull {name}`")]
    NotInstalled { name: String },
    #[error("network error fetching {url}: {message}. Check connectivity and run the command again; the download resumes where it stopped")]
    Network { url: String, message: String },
    #[error("{url} answered HTTP {status}")]
    HttpStatus { url: String, status: u16 },
    #[error("package registry: {message}")]
    Registry { message: String },
    #[error("sha256 mismatch for {what}: expected {expected}, got {actual}. The file was discarded; pull again, or check the catalog entry")]
    HashMismatch {
        what: String,
        expected: String,
        actual: String,
    },
    #[error("size mismatch for {what}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        what: String,
        expected: u64,
        actual: u64,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("archive {path}: {message}")]
    Archive { path: PathBuf, message: String },
    #[error("invalid GGUF {path}: {reason}")]
    InvalidGguf { path: PathBuf, reason: String },
    #[error("catalog {path}: {message}")]
    Catalog { path: PathBuf, message: String },
    #[error("manifest {path}: {message}")]
    Manifest { path: PathBuf, message: String },
    #[error("model '{name}' refused: {reason}")]
    Untrusted { name: String, reason: String },
    #[error("key {path}: {message}")]
    Key { path: PathBuf, message: String },
    #[error("model '{name}' already exists; remove it first with `edgewise models rm {name}`")]
    AlreadyExists { name: String },
    #[error("invalid model name '{name}': use letters, digits, '.', '-' and '_' only")]
    BadName { name: String },
}

impl ModelError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> ModelError {
        let path = path.into();
        move |source| ModelError::Io { path, source }
    }
}

impl From<edgewise_core::signing::KeyError> for ModelError {
    fn from(e: edgewise_core::signing::KeyError) -> Self {
        ModelError::Key {
            path: e.path,
            message: e.message,
        }
    }
}
