//! Local state that must survive a crash: a namespaced KV store (redb) and the hash-chained audit log.
//!
//! Invariants:
//! - A write that returned `Ok` is on disk (redb commits with immediate durability; audit appends
//!   are fsynced before returning).
//! - Every audit record carries the sha256 of the previous record, so any edit, deletion or
//!   reordering breaks the chain at the first affected record.

mod audit;
pub mod docs;
pub mod knowledge;
mod kv;

pub use audit::{AuditEntry, AuditLog, AuditRecord, ChainBreak};
pub use docs::{DocError, Documents};
pub use knowledge::{Knowledge, KnowledgeError};
pub use kv::{Kv, StoreError, Versioned};

/// Hex sha256 of `bytes`: the digest format used in audit records.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(bytes))
}
