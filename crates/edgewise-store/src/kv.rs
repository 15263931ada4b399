//! Namespaced key-value store on redb. Namespaces isolate agents (`agent:<id>`), components and the
//! runtime's own records (namespaces starting with `edgewise.`).

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, TableDefinition};

const KV: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("kv");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state database {path} is open in another edgewise process (is `edgewise serve` running? use its API instead)")]
    InUse { path: PathBuf },
    #[error("state database {path}: {message}")]
    Db { path: PathBuf, message: String },
    #[error("audit log {path}: {source}")]
    AuditIo {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("audit log {path}: {message}")]
    AuditFormat { path: PathBuf, message: String },
}

pub struct Kv {
    db: Database,
    path: PathBuf,
}

impl Kv {
    /// Opens (creating if needed) the database file. One process at a time may hold it.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Db {
                path: path.into(),
                message: format!("cannot create {}: {e}", dir.display()),
            })?;
        }
        let db = Database::create(path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::InUse { path: path.into() },
            other => StoreError::Db {
                path: path.into(),
                message: other.to_string(),
            },
        })?;
        Ok(Self {
            db,
            path: path.into(),
        })
    }

    fn err(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Db {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }

    /// Durable when it returns.
    pub fn set(&self, namespace: &str, key: &str, value: &[u8]) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut t = tx.open_table(KV).map_err(|e| self.err(e))?;
            t.insert((namespace, key), value).map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))
    }

    pub fn get(&self, namespace: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = match tx.open_table(KV) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(self.err(e)),
        };
        let v = t.get((namespace, key)).map_err(|e| self.err(e))?;
        Ok(v.map(|v| v.value().to_vec()))
    }

    /// Returns whether the key existed.
    pub fn remove(&self, namespace: &str, key: &str) -> Result<bool, StoreError> {
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        let existed = {
            let mut t = tx.open_table(KV).map_err(|e| self.err(e))?;
            let old = t.remove((namespace, key)).map_err(|e| self.err(e))?;
            old.is_some()
        };
        tx.commit().map_err(|e| self.err(e))?;
        Ok(existed)
    }

    /// Keys and values of one namespace, in key order.
    pub fn list(&self, namespace: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = match tx.open_table(KV) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(self.err(e)),
        };
        let mut out = Vec::new();
        for item in t.range((namespace, "")..).map_err(|e| self.err(e))? {
            let (k, v) = item.map_err(|e| self.err(e))?;
            let (ns, key) = k.value();
            if ns != namespace {
                break;
            }
            out.push((key.to_owned(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// JSON convenience for the runtime's own records.
    pub fn set_json(
        &self,
        namespace: &str,
        key: &str,
        value: &serde_json::Value,
    ) -> Result<(), StoreError> {
        self.set(namespace, key, value.to_string().as_bytes())
    }

    pub fn get_json(
        &self,
        namespace: &str,
        key: &str,
    ) -> Result<Option<serde_json::Value>, StoreError> {
        match self.get(namespace, key)? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| self.err(format!("record {namespace}/{key} is not JSON: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_do_not_leak_into_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let kv = Kv::open(&dir.path().join("s.redb")).unwrap();
        kv.set("a", "k1", b"1").unwrap();
        kv.set("a", "k2", b"2").unwrap();
        kv.set("ab", "k1", b"x").unwrap();
        kv.set("b", "k1", b"y").unwrap();
        let keys: Vec<String> = kv.list("a").unwrap().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["k1", "k2"]);
        assert_eq!(kv.get("b", "k1").unwrap().as_deref(), Some(&b"y"[..]));
        assert!(kv.remove("a", "k1").unwrap());
        assert!(!kv.remove("a", "k1").unwrap());
        assert_eq!(kv.get("a", "k1").unwrap(), None);
    }

    #[test]
    fn values_survive_reopen_and_a_second_opener_is_told_why_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        {
            let kv = Kv::open(&path).unwrap();
            kv.set("n", "k", b"v").unwrap();
            let second = Kv::open(&path).err().unwrap().to_string();
            assert!(
                second.contains("open in another edgewise process"),
                "{second}"
            );
        }
        let kv = Kv::open(&path).unwrap();
        assert_eq!(kv.get("n", "k").unwrap().as_deref(), Some(&b"v"[..]));
    }
}
