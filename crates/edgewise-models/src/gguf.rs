//! A bounds-checked reader of GGUF headers. llama.cpp trusts the header; a truncated or corrupted file
//! can crash it. We read the header first, check every length against the file size, and compute each
//! tensor's byte extent, so a bad file is refused with a reason instead of reaching C++.
//!
//! Invariant: no input makes this module panic or allocate more than the file's size.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use crate::ModelError;

const MAGIC: &[u8; 4] = b"GGUF";
const MAX_DIMS: u32 = 4;
const DEFAULT_ALIGNMENT: u64 = 32;

/// What the header says, plus the checks' results.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufInfo {
    pub version: u32,
    pub tensor_count: u64,
    /// String-valued metadata (e.g. `general.architecture`, `tokenizer.chat_template`).
    pub strings: BTreeMap<String, String>,
    /// Integer-valued metadata (e.g. `qwen2.context_length`).
    pub integers: BTreeMap<String, i128>,
    /// Bytes the tensor data needs after the header; the file holds at least this much.
    pub data_bytes: u64,
}

impl GgufInfo {
    pub fn architecture(&self) -> Option<&str> {
        self.strings.get("general.architecture").map(String::as_str)
    }
}

/// Reads and checks the header of the GGUF at `path`.
pub fn inspect(path: &Path) -> Result<GgufInfo, ModelError> {
    let invalid = |reason: String| ModelError::InvalidGguf {
        path: path.into(),
        reason,
    };
    let file = File::open(path).map_err(ModelError::io(path))?;
    let len = file.metadata().map_err(ModelError::io(path))?.len();
    parse(BufReader::with_capacity(1 << 16, file), len).map_err(invalid)
}

/// Parses a header from `reader` for a file of `file_len` bytes.
pub fn parse(reader: impl Read, file_len: u64) -> Result<GgufInfo, String> {
    let mut r = Reader {
        inner: reader,
        pos: 0,
        len: file_len,
    };
    let magic = r.bytes(4)?;
    if magic != MAGIC {
        return Err(format!(
            "not a GGUF file (magic {:02x?}, expected \"GGUF\")",
            magic
        ));
    }
    let version = r.u32()?;
    if !(2..=3).contains(&version) {
        return Err(format!(
            "unsupported GGUF version {version} (supported: 2, 3)"
        ));
    }
    let tensor_count = r.u64()?;
    let kv_count = r.u64()?;
    // Every tensor info and kv pair takes at least 8 bytes; more than that cannot fit.
    if tensor_count > file_len / 8 || kv_count > file_len / 8 {
        return Err(format!("header claims {tensor_count} tensors and {kv_count} metadata keys, more than the {file_len}-byte file can hold"));
    }
    let mut info = GgufInfo {
        version,
        tensor_count,
        strings: BTreeMap::new(),
        integers: BTreeMap::new(),
        data_bytes: 0,
    };
    for i in 0..kv_count {
        let key = r.string().map_err(|e| format!("metadata key {i}: {e}"))?;
        let ty = r.u32()?;
        read_value(&mut r, ty, &key, &mut info, 0).map_err(|e| format!("metadata '{key}': {e}"))?;
    }
    let alignment = match info.integers.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(&a) if a > 0 && a <= 1 << 20 && (a as u64).is_power_of_two() => a as u64,
        Some(a) => return Err(format!("general.alignment {a} is not a power of two")),
    };
    let mut data_end = 0u64;
    for i in 0..tensor_count {
        let name = r.string().map_err(|e| format!("tensor {i}: {e}"))?;
        let n_dims = r.u32()?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(format!(
                "tensor '{name}': {n_dims} dimensions (1 to {MAX_DIMS} allowed)"
            ));
        }
        let mut elements: u64 = 1;
        let mut first_dim = 1;
        for d in 0..n_dims {
            let dim = r.u64()?;
            if d == 0 {
                first_dim = dim;
            }
            elements = elements
                .checked_mul(dim)
                .ok_or_else(|| format!("tensor '{name}': element count overflows"))?;
        }
        let ty = r.u32()?;
        let offset = r.u64()?;
        if offset % alignment != 0 {
            return Err(format!(
                "tensor '{name}': data offset {offset} is not aligned to {alignment}"
            ));
        }
        let bytes = match tensor_type_size(ty) {
            Some((block, block_bytes)) => {
                if first_dim % block != 0 {
                    return Err(format!("tensor '{name}': row of {first_dim} is not a multiple of the type's block size {block}"));
                }
                (elements / block)
                    .checked_mul(block_bytes)
                    .ok_or_else(|| format!("tensor '{name}': size overflows"))?
            }
            // A type newer than this table: its offset is still checked below.
            None => 0,
        };
        let end = offset
            .checked_add(bytes)
            .ok_or_else(|| format!("tensor '{name}': extent overflows"))?;
        data_end = data_end.max(end);
    }
    let data_start = r.pos.div_ceil(alignment) * alignment;
    let needed = data_start
        .checked_add(data_end)
        .ok_or("tensor data extent overflows")?;
    if needed > file_len {
        return Err(format!(
            "truncated: tensor data needs {needed} bytes but the file has {file_len} ({} missing). Download it again",
            needed - file_len
        ));
    }
    info.data_bytes = data_end;
    Ok(info)
}

/// (elements per block, bytes per block) of ggml tensor types, from ggml.h.
fn tensor_type_size(ty: u32) -> Option<(u64, u64)> {
    Some(match ty {
        0 => (1, 4),      // F32
        1 => (1, 2),      // F16
        2 => (32, 18),    // Q4_0
        3 => (32, 20),    // Q4_1
        6 => (32, 22),    // Q5_0
        7 => (32, 24),    // Q5_1
        8 => (32, 34),    // Q8_0
        9 => (32, 36),    // Q8_1
        10 => (256, 84),  // Q2_K
        11 => (256, 110), // Q3_K
        12 => (256, 144), // Q4_K
        13 => (256, 176), // Q5_K
        14 => (256, 210), // Q6_K
        15 => (256, 292), // Q8_K
        16 => (256, 66),  // IQ2_XXS
        17 => (256, 74),  // IQ2_XS
        18 => (256, 98),  // IQ3_XXS
        19 => (256, 50),  // IQ1_S
        20 => (32, 18),   // IQ4_NL
        21 => (256, 110), // IQ3_S
        22 => (256, 82),  // IQ2_S
        23 => (256, 136), // IQ4_XS
        24 => (1, 1),     // I8
        25 => (1, 2),     // I16
        26 => (1, 4),     // I32
        27 => (1, 8),     // I64
        28 => (1, 8),     // F64
        29 => (256, 56),  // IQ1_M
        30 => (1, 2),     // BF16
        34 => (256, 54),  // TQ1_0
        35 => (256, 66),  // TQ2_0
        39 => (32, 17),   // MXFP4
        _ => return None,
    })
}

const MAX_NESTING: u32 = 4;

fn read_value<R: Read>(
    r: &mut Reader<R>,
    ty: u32,
    key: &str,
    info: &mut GgufInfo,
    depth: u32,
) -> Result<(), String> {
    let top = depth == 0;
    match ty {
        0 => store_int(info, key, top, r.bytes(1)?[0] as i128),
        1 => store_int(info, key, top, r.bytes(1)?[0] as i8 as i128),
        2 => store_int(info, key, top, u16::from_le_bytes(r.array()?) as i128),
        3 => store_int(info, key, top, i16::from_le_bytes(r.array()?) as i128),
        4 => store_int(info, key, top, r.u32()? as i128),
        5 => store_int(info, key, top, i32::from_le_bytes(r.array()?) as i128),
        6 => drop(r.bytes(4)?),
        7 => {
            let b = r.bytes(1)?[0];
            if b > 1 {
                return Err(format!("bool value {b}"));
            }
        }
        8 => {
            let s = r.string()?;
            if top {
                info.strings.insert(key.to_owned(), s);
            }
        }
        9 => {
            if depth >= MAX_NESTING {
                return Err("arrays nested too deeply".into());
            }
            let elem = r.u32()?;
            let n = r.u64()?;
            if n > r.remaining() {
                return Err(format!(
                    "array of {n} elements is longer than the rest of the file"
                ));
            }
            for _ in 0..n {
                read_value(r, elem, key, info, depth + 1)?;
            }
        }
        10 => store_int(info, key, top, r.u64()? as i128),
        11 => store_int(info, key, top, i64::from_le_bytes(r.array()?) as i128),
        12 => drop(r.bytes(8)?),
        other => return Err(format!("unknown value type {other}")),
    }
    Ok(())
}

fn store_int(info: &mut GgufInfo, key: &str, top: bool, v: i128) {
    if top {
        info.integers.insert(key.to_owned(), v);
    }
}

struct Reader<R> {
    inner: R,
    pos: u64,
    len: u64,
}

impl<R: Read> Reader<R> {
    fn remaining(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }

    fn bytes(&mut self, n: u64) -> Result<Vec<u8>, String> {
        if n > self.remaining() {
            return Err(format!(
                "truncated header: needs {n} bytes at offset {}, file has {}",
                self.pos, self.len
            ));
        }
        let mut buf = vec![0u8; n as usize];
        self.inner
            .read_exact(&mut buf)
            .map_err(|e| format!("read at offset {}: {e}", self.pos))?;
        self.pos += n;
        Ok(buf)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let v = self.bytes(N as u64)?;
        v.try_into().map_err(|_| "short read".to_string())
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn string(&mut self) -> Result<String, String> {
        let n = self.u64()?;
        let b = self.bytes(n)?;
        String::from_utf8(b).map_err(|_| "string is not UTF-8".to_string())
    }
}

/// Writes a minimal valid GGUF (v3) with the given string metadata and F32 tensors of the given
/// element counts. Used by tests to make fixtures instead of committing binary files.
pub fn write_fixture(strings: &[(&str, &str)], tensors: &[(&str, u64)]) -> Vec<u8> {
    let mut out = Vec::new();
    let put_str = |out: &mut Vec<u8>, s: &str| {
        out.extend((s.len() as u64).to_le_bytes());
        out.extend(s.as_bytes());
    };
    out.extend(MAGIC);
    out.extend(3u32.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend((strings.len() as u64).to_le_bytes());
    for (k, v) in strings {
        put_str(&mut out, k);
        out.extend(8u32.to_le_bytes());
        put_str(&mut out, v);
    }
    let mut offset = 0u64;
    let mut data_end = 0u64;
    for (name, n) in tensors {
        put_str(&mut out, name);
        out.extend(1u32.to_le_bytes());
        out.extend(n.to_le_bytes());
        out.extend(0u32.to_le_bytes());
        out.extend(offset.to_le_bytes());
        data_end = offset + n * 4;
        offset += (n * 4).div_ceil(DEFAULT_ALIGNMENT) * DEFAULT_ALIGNMENT;
    }
    while !(out.len() as u64).is_multiple_of(DEFAULT_ALIGNMENT) {
        out.push(0);
    }
    out.resize(out.len() + data_end as usize, 0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn fixture() -> Vec<u8> {
        write_fixture(
            &[("general.architecture", "llama"), ("general.name", "tiny")],
            &[("a", 64), ("b", 100)],
        )
    }

    #[test]
    fn valid_fixture_parses_with_metadata() {
        let f = fixture();
        let info = parse(&f[..], f.len() as u64).unwrap();
        assert_eq!(info.architecture(), Some("llama"));
        assert_eq!(info.tensor_count, 2);
    }

    #[test]
    fn truncated_file_is_refused_with_missing_byte_count() {
        let f = fixture();
        let cut = &f[..f.len() - 10];
        let err = parse(cut, cut.len() as u64).unwrap_err();
        assert!(
            err.contains("truncated") && err.contains("10 missing"),
            "{err}"
        );
    }

    #[test]
    fn wrong_magic_is_refused() {
        let err = parse(&b"GGML\x03\0\0\0"[..], 8).unwrap_err();
        assert!(err.contains("not a GGUF"), "{err}");
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]
        /// Random byte flips, truncations and garbage never panic.
        #[test]
        fn corrupted_headers_never_panic(flips in proptest::collection::vec((0usize..400, any::<u8>()), 0..8), cut in 0usize..600) {
            let mut f = fixture();
            for (i, b) in flips { if i < f.len() { f[i] = b; } }
            f.truncate(cut.min(f.len()));
            let _ = parse(&f[..], f.len() as u64);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut f = b"GGUF\x03\0\0\0".to_vec();
            f.extend(bytes);
            let _ = parse(&f[..], f.len() as u64);
        }
    }
}
