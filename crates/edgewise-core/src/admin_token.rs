//! The node's admin token: the credential of its operator, kept in `<home>/admin.token`.
//!
//! `serve` creates it on first start; `edgewise token rotate` replaces it; the CLI reads it to talk
//! to its own node. Invariant: the file is only ever created with mode 0600 (written to a temporary
//! file that is renamed into place, so a reader never sees half a token), and a file that others
//! can read is refused rather than trusted.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use rand::RngCore;

/// Shortest token accepted from the file: 128 bits of hex.
pub const MIN_TOKEN_LEN: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("admin token {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("admin token {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> TokenError + '_ {
    move |source| TokenError::Io {
        path: path.into(),
        source,
    }
}

/// Reads the token at `path`; `Ok(None)` when there is no file yet.
pub fn read(path: &Path) -> Result<Option<String>, TokenError> {
    // A link could point the node at a file someone else controls.
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(TokenError::Invalid {
            path: path.into(),
            message: "is a symbolic link; the token must be a plain file (`edgewise token rotate` writes one)".into(),
        });
    }
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(path)(e)),
    };
    check_private(path)?;
    let token = text.trim();
    if token.len() < MIN_TOKEN_LEN || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(TokenError::Invalid {
            path: path.into(),
            message: format!(
                "must be at least {MIN_TOKEN_LEN} printable characters without spaces (make a new one with `edgewise token rotate`)"
            ),
        });
    }
    Ok(Some(token.to_owned()))
}

/// The token at `path`, made first if there is none.
pub fn load_or_create(path: &Path) -> Result<String, TokenError> {
    match read(path)? {
        Some(t) => Ok(t),
        None => rotate(path),
    }
}

/// Writes a fresh random token to `path` (mode 0600, atomically) and returns it; the old one stops
/// working as soon as a running node sees the new file.
pub fn rotate(path: &Path) -> Result<String, TokenError> {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let token = hex::encode(bytes);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_error(path))?;
    }
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&tmp).map_err(io_error(&tmp))?;
    file.write_all(format!("{token}\n").as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io_error(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_error(path))?;
    Ok(token)
}

/// Refuses a token file that its group or other users can read or write.
fn check_private(path: &Path) -> Result<(), TokenError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .map_err(io_error(path))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(TokenError::Invalid {
                path: path.into(),
                message: format!(
                    "is readable by other users (mode {:o}); run `chmod 600 {}` or `edgewise token rotate`",
                    mode & 0o777,
                    path.display()
                ),
            });
        }
    }
    Ok(())
}

/// Compares a presented credential with the expected one in time that does not depend on where
/// they differ (a timing side channel would otherwise reveal the token byte by byte).
pub fn matches(presented: &str, expected: &str) -> bool {
    let (a, b) = (presented.as_bytes(), expected.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_a_private_token_once_and_rotates_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.token");
        let first = load_or_create(&path).unwrap();
        assert_eq!(first.len(), 64);
        assert_eq!(load_or_create(&path).unwrap(), first);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let second = rotate(&path).unwrap();
        assert_ne!(first, second);
        assert_eq!(read(&path).unwrap(), Some(second));
    }

    #[cfg(unix)]
    #[test]
    fn refuses_a_token_others_can_read() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.token");
        rotate(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn refuses_a_token_behind_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("elsewhere");
        rotate(&real).unwrap();
        let path = dir.path().join("admin.token");
        std::os::unix::fs::symlink(&real, &path).unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");
    }

    #[test]
    fn refuses_a_short_token() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.token");
        rotate(&path).unwrap();
        let mut f = OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        f.write_all(b"secret\n").unwrap();
        assert!(read(&path).is_err());
    }

    #[test]
    fn compares_whole_tokens() {
        assert!(matches("abc", "abc"));
        assert!(!matches("abd", "abc"));
        assert!(!matches("ab", "abc"));
        assert!(!matches("", "abc"));
    }
}
