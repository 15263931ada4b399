//! Namespaced key-value store on redb. Namespaces isolate agents (`agent:<id>`), components and the
//! runtime's own records (namespaces starting with `edgewise.`).
//!
//! Every key has a version, bumped in the same transaction as each write or removal (a removed
//! key keeps its version, so a deletion is a change others can see). Versions make conditional
//! writes (`set_if`, HTTP `If-Match`) and the sync manager's conflict detection possible.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

const KV: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("kv");
/// (namespace, key) → version: the number of writes and removals the key has seen.
const VERSIONS: TableDefinition<(&str, &str), u64> = TableDefinition::new("kv_versions");

/// One key as `list_versioned` and `set_if` see it; `value` is `None` for a removed key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    pub key: String,
    pub value: Option<Vec<u8>>,
    pub version: u64,
}

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
        self.set_if(namespace, key, Some(value), None).map(|_| ())
    }

    /// Writes (`Some`) or removes (`None`) the key if its version is `expected` (any version when
    /// `expected` is `None`), in one transaction. `Ok(Ok(new version))` when written;
    /// `Ok(Err(current))` when the version did not match, with nothing changed.
    pub fn set_if(
        &self,
        namespace: &str,
        key: &str,
        value: Option<&[u8]>,
        expected: Option<u64>,
    ) -> Result<Result<u64, Versioned>, StoreError> {
        Ok(self
            .write(namespace, key, value, expected)?
            .map(|(version, _)| version))
    }

    /// Removes the key if its version is `expected` (any when `None`): `Ok(Some(new version))`
    /// when it was there, `Ok(None)` when it was absent (nothing changes).
    pub fn remove_if(
        &self,
        namespace: &str,
        key: &str,
        expected: Option<u64>,
    ) -> Result<Result<Option<u64>, Versioned>, StoreError> {
        Ok(self
            .write(namespace, key, None, expected)?
            .map(|(version, changed)| changed.then_some(version)))
    }

    /// `set_if` that also says whether anything changed (a removal of an absent key does not).
    fn write(
        &self,
        namespace: &str,
        key: &str,
        value: Option<&[u8]>,
        expected: Option<u64>,
    ) -> Result<Result<(u64, bool), Versioned>, StoreError> {
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        let outcome = {
            let mut t = tx.open_table(KV).map_err(|e| self.err(e))?;
            let mut versions = tx.open_table(VERSIONS).map_err(|e| self.err(e))?;
            let version = versions
                .get((namespace, key))
                .map_err(|e| self.err(e))?
                .map_or(0, |v| v.value());
            match expected {
                Some(want) if want != version => {
                    let current = t.get((namespace, key)).map_err(|e| self.err(e))?;
                    Err(Versioned {
                        key: key.to_owned(),
                        value: current.map(|v| v.value().to_vec()),
                        version,
                    })
                }
                _ => {
                    let existed = match value {
                        Some(v) => {
                            t.insert((namespace, key), v).map_err(|e| self.err(e))?;
                            true
                        }
                        None => t
                            .remove((namespace, key))
                            .map_err(|e| self.err(e))?
                            .is_some(),
                    };
                    // Removing an absent key changes nothing and keeps the version.
                    if existed {
                        versions
                            .insert((namespace, key), version + 1)
                            .map_err(|e| self.err(e))?;
                        Ok((version + 1, true))
                    } else {
                        Ok((version, false))
                    }
                }
            }
        };
        tx.commit().map_err(|e| self.err(e))?;
        Ok(outcome)
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
        Ok(matches!(self.remove_if(namespace, key, None)?, Ok(Some(_))))
    }

    /// The key's version: 0 if it was never written.
    pub fn version(&self, namespace: &str, key: &str) -> Result<u64, StoreError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = match tx.open_table(VERSIONS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
            Err(e) => return Err(self.err(e)),
        };
        let v = t.get((namespace, key)).map_err(|e| self.err(e))?;
        Ok(v.map_or(0, |v| v.value()))
    }

    /// Every key of a namespace that was ever written, removed ones included (value `None`), in
    /// key order, read in one transaction. Keys written before versions existed show version 0.
    pub fn list_versioned(&self, namespace: &str) -> Result<Vec<Versioned>, StoreError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let mut out: std::collections::BTreeMap<String, Versioned> = Default::default();
        match tx.open_table(KV) {
            Ok(values) => {
                for item in values.range((namespace, "")..).map_err(|e| self.err(e))? {
                    let (k, v) = item.map_err(|e| self.err(e))?;
                    let (ns, key) = k.value();
                    if ns != namespace {
                        break;
                    }
                    let value = Some(v.value().to_vec());
                    out.insert(
                        key.to_owned(),
                        Versioned {
                            key: key.to_owned(),
                            value,
                            version: 0,
                        },
                    );
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(self.err(e)),
        }
        match tx.open_table(VERSIONS) {
            Ok(versions) => {
                for item in versions.range((namespace, "")..).map_err(|e| self.err(e))? {
                    let (k, v) = item.map_err(|e| self.err(e))?;
                    let (ns, key) = k.value();
                    if ns != namespace {
                        break;
                    }
                    out.entry(key.to_owned())
                        .or_insert_with(|| Versioned {
                            key: key.to_owned(),
                            value: None,
                            version: 0,
                        })
                        .version = v.value();
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(self.err(e)),
        }
        Ok(out.into_values().collect())
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
    fn versions_count_changes_and_guard_conditional_writes() {
        let dir = tempfile::tempdir().unwrap();
        let kv = Kv::open(&dir.path().join("s.redb")).unwrap();
        assert_eq!(kv.version("n", "k").unwrap(), 0);
        kv.set("n", "k", b"a").unwrap();
        assert_eq!(kv.set_if("n", "k", Some(b"b"), Some(1)).unwrap(), Ok(2));
        let stale = kv
            .set_if("n", "k", Some(b"c"), Some(1))
            .unwrap()
            .unwrap_err();
        assert_eq!(
            (stale.value.as_deref(), stale.version),
            (Some(&b"b"[..]), 2)
        );
        assert_eq!(kv.get("n", "k").unwrap().as_deref(), Some(&b"b"[..]));
        // A removal is a change with a version; removing it again is not.
        assert!(kv.remove("n", "k").unwrap());
        assert!(!kv.remove("n", "k").unwrap());
        let listed = kv.list_versioned("n").unwrap();
        assert_eq!(
            listed,
            [Versioned {
                key: "k".into(),
                value: None,
                version: 3
            }]
        );
        // Creating only if absent: expected version of a removed key is its last version.
        assert_eq!(kv.set_if("n", "new", Some(b"x"), Some(0)).unwrap(), Ok(1));
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
