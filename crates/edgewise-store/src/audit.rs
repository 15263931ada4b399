//! The audit log: one JSON line per record, each hashing the previous one.
//!
//! Line format: `{"hash":"<sha256 of RECORD>","record":RECORD}` where RECORD is the exact JSON text
//! that was hashed (so verification never depends on re-serialising) and carries `seq` and `prev`,
//! the previous line's hash (64 zeros for the first). Appends take an exclusive file lock, so
//! several processes may share one log, and are fsynced before `append` returns.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{sha256_hex, StoreError};

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
const PREFIX: &str = "{\"hash\":\"";
const MIDDLE: &str = "\",\"record\":";

/// What a caller records. Content fields are optional so a node may keep digests only.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct AuditRecord {
    /// `run_start`, `step`, `run_end`, `run_interrupted`, …
    pub kind: String,
    pub node: String,
    pub agent: String,
    pub run: String,
    /// The neighbour that placed the run on this node, if one did: tells its records apart from
    /// those of this node's own agent of the same id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placed_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments_sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_bytes: Option<u64>,
    /// What happened: `call`, `answer`, `refused`, `tool_error`, `completed`, `failed`, …
    pub decision: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(default)]
    pub duration_ms: u64,
}

/// A record as stored: the caller's fields plus its place in the chain.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AuditEntry {
    pub seq: u64,
    pub time: String,
    pub prev: String,
    #[serde(flatten)]
    pub record: AuditRecord,
}

/// The first record at which verification failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("audit chain broken at record {seq} (line {line}): {reason}")]
pub struct ChainBreak {
    /// The record's sequence number as expected from its position.
    pub seq: u64,
    pub line: u64,
    pub reason: String,
}

pub struct AuditLog {
    path: PathBuf,
    /// Serialises appends within this process; the file lock covers other processes.
    append_lock: Mutex<()>,
}

struct Tail {
    seq: u64,
    hash: String,
}

impl AuditLog {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::AuditIo {
                path: dir.into(),
                source,
            })?;
        }
        Ok(Self {
            path: path.into(),
            append_lock: Mutex::new(()),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, source: std::io::Error) -> StoreError {
        StoreError::AuditIo {
            path: self.path.clone(),
            source,
        }
    }

    /// Appends and fsyncs; the record is durable when this returns.
    pub fn append(&self, record: &AuditRecord) -> Result<AuditEntry, StoreError> {
        let _guard = self.append_lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| self.io(e))?;
        file.lock().map_err(|e| self.io(e))?;
        let result = self.append_locked(&mut file, record);
        let _ = file.unlock();
        result
    }

    fn append_locked(
        &self,
        file: &mut File,
        record: &AuditRecord,
    ) -> Result<AuditEntry, StoreError> {
        let tail = self.read_tail(file)?;
        let entry = AuditEntry {
            seq: tail.as_ref().map_or(0, |t| t.seq + 1),
            time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            prev: tail.map_or_else(|| GENESIS.to_owned(), |t| t.hash),
            record: record.clone(),
        };
        let body = serde_json::to_string(&entry).map_err(|e| StoreError::AuditFormat {
            path: self.path.clone(),
            message: e.to_string(),
        })?;
        let line = format!("{PREFIX}{}{MIDDLE}{body}}}\n", sha256_hex(body.as_bytes()));
        file.write_all(line.as_bytes()).map_err(|e| self.io(e))?;
        file.sync_data().map_err(|e| self.io(e))?;
        Ok(entry)
    }

    /// The last complete record's seq and hash. A torn final line (a crash mid-append, never
    /// acknowledged) is cut off so the chain continues from the last durable record.
    fn read_tail(&self, file: &mut File) -> Result<Option<Tail>, StoreError> {
        let len = file.metadata().map_err(|e| self.io(e))?.len();
        if len == 0 {
            return Ok(None);
        }
        let mut window = 4096u64;
        loop {
            let start = len.saturating_sub(window);
            file.seek(SeekFrom::Start(start)).map_err(|e| self.io(e))?;
            let mut buf = Vec::with_capacity((len - start) as usize);
            Read::by_ref(file)
                .take(len - start)
                .read_to_end(&mut buf)
                .map_err(|e| self.io(e))?;
            let complete_end = match buf.iter().rposition(|&b| b == b'\n') {
                Some(i) => i,
                None if start == 0 => {
                    file.set_len(0).map_err(|e| self.io(e))?;
                    return Ok(None);
                }
                None => {
                    window *= 2;
                    continue;
                }
            };
            if complete_end + 1 < buf.len() {
                tracing::warn!(path = %self.path.display(), "audit log ended in a torn record; cutting it off");
                file.set_len(start + complete_end as u64 + 1)
                    .map_err(|e| self.io(e))?;
            }
            let line_start = buf[..complete_end]
                .iter()
                .rposition(|&b| b == b'\n')
                .map(|i| i + 1);
            let line_start = match line_start {
                Some(i) => i,
                None if start == 0 => 0,
                None => {
                    window *= 2;
                    continue;
                }
            };
            let line = String::from_utf8_lossy(&buf[line_start..complete_end]).into_owned();
            let (hash, entry) = split_line(&line).map_err(|message| StoreError::AuditFormat {
                path: self.path.clone(),
                message: format!("last record unreadable ({message}); run `edgewise audit verify`"),
            })?;
            return Ok(Some(Tail {
                seq: entry.seq,
                hash: hash.to_owned(),
            }));
        }
    }

    /// Walks the whole chain; returns the number of records, or the first break.
    pub fn verify(&self) -> Result<Result<u64, ChainBreak>, StoreError> {
        let file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Ok(0)),
            Err(e) => return Err(self.io(e)),
        };
        let mut reader = BufReader::new(file);
        let mut prev = GENESIS.to_owned();
        let mut seq = 0u64;
        let mut raw = Vec::new();
        loop {
            raw.clear();
            let n = reader.read_until(b'\n', &mut raw).map_err(|e| self.io(e))?;
            if n == 0 {
                return Ok(Ok(seq));
            }
            let brk = |reason: String| ChainBreak {
                seq,
                line: seq + 1,
                reason,
            };
            if raw.last() != Some(&b'\n') {
                return Ok(Err(brk(
                    "the last record is incomplete (a crash during a write?)".into(),
                )));
            }
            let line = match std::str::from_utf8(&raw[..raw.len() - 1]) {
                Ok(l) => l,
                Err(_) => return Ok(Err(brk("the record is not valid UTF-8".into()))),
            };
            let (hash, entry) = match split_line(line) {
                Ok(x) => x,
                Err(m) => return Ok(Err(brk(m))),
            };
            let body = &line[PREFIX.len() + 64 + MIDDLE.len()..line.len() - 1];
            let actual = sha256_hex(body.as_bytes());
            if actual != hash {
                return Ok(Err(brk(format!(
                    "content does not match its hash (stored {hash}, computed {actual})"
                ))));
            }
            if entry.seq != seq {
                return Ok(Err(brk(format!(
                    "sequence number {} where {seq} was expected (a record was removed or reordered)",
                    entry.seq
                ))));
            }
            if entry.prev != prev {
                return Ok(Err(brk(format!(
                    "`prev` is {} but the previous record's hash is {prev} (a record was removed, inserted or altered)",
                    entry.prev
                ))));
            }
            prev = hash.to_owned();
            seq += 1;
        }
    }

    /// Records in order, optionally only those of one run. Unreadable lines are skipped here;
    /// `verify` is the tool that reports them.
    pub fn entries(&self, run: Option<&str>) -> Result<Vec<AuditEntry>, StoreError> {
        let file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.io(e)),
        };
        let mut out = Vec::new();
        for line in BufReader::new(file).lines() {
            let line = line.map_err(|e| self.io(e))?;
            if let Ok((_, entry)) = split_line(&line) {
                if run.is_none_or(|r| entry.record.run == r) {
                    out.push(entry);
                }
            }
        }
        Ok(out)
    }
}

fn split_line(line: &str) -> Result<(&str, AuditEntry), String> {
    let fixed = PREFIX.len() + 64 + MIDDLE.len();
    if line.len() < fixed + 1
        || !line.starts_with(PREFIX)
        || !line.is_char_boundary(PREFIX.len() + 64)
        || !line.is_char_boundary(fixed)
        || &line[PREFIX.len() + 64..fixed] != MIDDLE
        || !line.ends_with('}')
    {
        return Err("not an audit record line".into());
    }
    let hash = &line[PREFIX.len()..PREFIX.len() + 64];
    let body = &line[fixed..line.len() - 1];
    let entry: AuditEntry =
        serde_json::from_str(body).map_err(|e| format!("record is not valid JSON: {e}"))?;
    Ok((hash, entry))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: u32) -> AuditRecord {
        AuditRecord {
            kind: "step".into(),
            node: "n".into(),
            agent: "a".into(),
            run: format!("r{}", i % 2),
            step: Some(i),
            tool: Some("t".into()),
            arguments: Some(serde_json::json!({"x": i, "s": "ünïcode"})),
            decision: "call".into(),
            ..Default::default()
        }
    }

    fn log_with(n: u32) -> (tempfile::TempDir, AuditLog) {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(&dir.path().join("a/audit.jsonl")).unwrap();
        for i in 0..n {
            log.append(&rec(i)).unwrap();
        }
        (dir, log)
    }

    #[test]
    fn a_fresh_chain_verifies_and_filters_by_run() {
        let (_d, log) = log_with(5);
        assert_eq!(log.verify().unwrap(), Ok(5));
        let r1 = log.entries(Some("r1")).unwrap();
        assert_eq!(r1.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 3]);
        assert_eq!(r1[0].record, rec(1));
    }

    #[test]
    fn every_single_byte_flip_is_caught_at_or_before_its_record() {
        let (_d, log) = log_with(4);
        let original = std::fs::read(log.path()).unwrap();
        let line_of = |pos: usize| original[..pos].iter().filter(|&&b| b == b'\n').count() as u64;
        for pos in 0..original.len() {
            let mut bytes = original.clone();
            bytes[pos] ^= 0x01;
            std::fs::write(log.path(), &bytes).unwrap();
            let brk = log.verify().unwrap().expect_err("flip went unnoticed");
            assert!(
                brk.seq <= line_of(pos),
                "flip at {pos} reported at {}",
                brk.seq
            );
        }
    }

    #[test]
    fn removing_a_record_names_the_next_one() {
        let (_d, log) = log_with(4);
        let text = std::fs::read_to_string(log.path()).unwrap();
        let kept: Vec<&str> = text
            .lines()
            .enumerate()
            .filter(|(i, _)| *i != 1)
            .map(|(_, l)| l)
            .collect();
        std::fs::write(log.path(), kept.join("\n") + "\n").unwrap();
        let brk = log.verify().unwrap().unwrap_err();
        assert_eq!(brk.seq, 1);
        assert!(brk.reason.contains("sequence number 2"), "{}", brk.reason);
    }

    #[test]
    fn a_torn_tail_is_cut_and_the_chain_continues() {
        let (_d, log) = log_with(3);
        let mut f = OpenOptions::new().append(true).open(log.path()).unwrap();
        f.write_all(b"{\"hash\":\"abc").unwrap();
        drop(f);
        assert!(log.verify().unwrap().is_err());
        log.append(&rec(9)).unwrap();
        assert_eq!(log.verify().unwrap(), Ok(4));
    }
}
