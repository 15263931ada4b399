//! Keeps only the model pages that inference reads resident.
//!
//! llama.cpp maps the GGUF with `MAP_POPULATE`, so every page of the file counts towards the
//! process's RSS from the start, including the weights it copies into repacked (CPU_REPACK)
//! buffers at load and never reads from the mapping again. Dropping the mapping's page-table
//! entries once after load, then decoding one token, leaves resident exactly what a decode
//! touches; the released pages stay in the page cache, clean, for the kernel to reclaim.
//! (llama.cpp's own `unmap_fragment` does the same for the unused head and tail of a mapping.)

use std::path::Path;

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;

/// Bytes of the file at `path` mapped into this process, released from its page tables.
/// Read-only file mappings only: their pages fault back in from the page cache when touched.
#[cfg(target_os = "linux")]
pub(crate) fn release_file_pages(path: &Path) -> std::io::Result<usize> {
    let path = std::fs::canonicalize(path)?;
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    let mut released = 0;
    for (start, end) in read_only_mappings_of(&maps, &path) {
        // SAFETY: the range is a read-only mapping of a regular file (checked above from
        // /proc/self/maps). MADV_DONTNEED on such a range only drops page-table entries; the
        // next access faults the same file contents back in, so no reader sees different data.
        let rc =
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        released += end - start;
    }
    Ok(released)
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn release_file_pages(_path: &Path) -> std::io::Result<usize> {
    Ok(0)
}

/// `start..end` of each mapping in `maps` (the format of /proc/self/maps) that maps `path`
/// without write permission.
fn read_only_mappings_of(maps: &str, path: &Path) -> Vec<(usize, usize)> {
    let wanted = path.to_string_lossy();
    maps.lines()
        .filter_map(|line| {
            // address perms offset dev inode pathname (the pathname may contain spaces)
            let mut fields = line.splitn(6, ' ');
            let range = fields.next()?;
            let perms = fields.next()?;
            let name = fields.nth(3)?.trim_start();
            if name != wanted || !perms.starts_with('r') || perms.as_bytes().get(1) != Some(&b'-') {
                return None;
            }
            let (start, end) = range.split_once('-')?;
            let start = usize::from_str_radix(start, 16).ok()?;
            let end = usize::from_str_radix(end, 16).ok()?;
            (end > start).then_some((start, end))
        })
        .collect()
}

/// One single-token decode, so the pages every decode reads are resident before the first
/// request; leaves the KV cache empty.
pub(crate) fn warm_up(model: &LlamaModel, ctx: &mut LlamaContext<'_>) -> Result<(), String> {
    let vocab = model.vocab();
    let token = if vocab.bos().0 >= 0 {
        vocab.bos()
    } else {
        LlamaToken(0)
    };
    let mut batch = LlamaBatch::new(1, 1);
    batch.add(token, 0, &[0], true).map_err(|e| e.to_string())?;
    let decoded = ctx.decode(&mut batch).map_err(|e| e.to_string());
    ctx.clear_kv_cache();
    decoded
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d0c0000000-55d0c0021000 r--p 00000000 08:01 1234                       /usr/bin/edgewise
7f0000000000-7f0000400000 r--s 00000000 08:01 99                         /data/models/a b/model.gguf
7f0000400000-7f0000500000 rw-s 00000000 08:01 99                         /data/models/a b/model.gguf
7f0000500000-7f0000600000 r--s 00000000 08:01 98                         /data/models/other.gguf
7f0000600000-7f0000700000 rw-p 00000000 00:00 0 
";

    #[test]
    fn finds_only_read_only_mappings_of_the_file() {
        let found = read_only_mappings_of(MAPS, Path::new("/data/models/a b/model.gguf"));
        assert_eq!(found, vec![(0x7f0000000000, 0x7f0000400000)]);
        assert!(read_only_mappings_of(MAPS, Path::new("/data/models/missing.gguf")).is_empty());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn released_pages_read_back_the_same_bytes() {
        use std::io::Write;
        let mut file = tempfile::NamedTempFile::new().unwrap();
        let data: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
        file.write_all(&data).unwrap();
        file.flush().unwrap();
        let len = data.len();
        let fd = std::os::fd::AsRawFd::as_raw_fd(file.as_file());
        // SAFETY: maps a file we own read-only; unmapped below before the file is dropped.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED);
        // SAFETY: `ptr` maps `len` readable bytes.
        let mapped = unsafe { std::slice::from_raw_parts(ptr as *const u8, len) };
        assert_eq!(mapped, &data[..]);
        let released = release_file_pages(file.path()).unwrap();
        assert_eq!(released, len);
        assert_eq!(mapped, &data[..]);
        // SAFETY: `ptr`/`len` come from the mmap above.
        unsafe { libc::munmap(ptr, len) };
    }
}
