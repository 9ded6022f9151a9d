//! The optional shared token: loaded from `--token-file`, compared in constant time, reloaded
//! on SIGHUP or when the file changes, never logged.
//!
//! The file is read once at start ([`TokenStore::load`]); the admin thread calls
//! [`TokenStore::reload_if_changed`] once a second and on SIGHUP. Connections read the current
//! token only while checking their first frame, so a reload never drops an authenticated
//! connection; new connections must present the new token.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use snowlease_proto::wire::MAX_TOKEN_LEN;

/// The current token and where it comes from.
#[derive(Debug)]
pub struct TokenStore {
    path: PathBuf,
    current: RwLock<(Arc<[u8]>, Option<SystemTime>)>,
}

/// Why a token file is unusable.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Could not read it.
    #[error("token file {path}: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// Error.
        source: std::io::Error,
    },
    /// Empty or too long for HELLO's one-byte length.
    #[error("token file {path}: the token must be 1..={MAX_TOKEN_LEN} bytes after trimming whitespace, got {len}")]
    Length {
        /// File.
        path: PathBuf,
        /// Bytes found.
        len: usize,
    },
}

fn read(path: &Path) -> Result<(Arc<[u8]>, Option<SystemTime>), TokenError> {
    let io = |source| TokenError::Io {
        path: path.to_path_buf(),
        source,
    };
    let bytes = std::fs::read(path).map_err(io)?;
    let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let token = bytes.trim_ascii();
    if token.is_empty() || token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::Length {
            path: path.to_path_buf(),
            len: token.len(),
        });
    }
    Ok((Arc::from(token), modified))
}

impl TokenStore {
    /// Reads the token file; refuses an empty or over-long token.
    pub fn load(path: &Path) -> Result<TokenStore, TokenError> {
        Ok(TokenStore {
            path: path.to_path_buf(),
            current: RwLock::new(read(path)?),
        })
    }

    /// Re-reads the file if its modification time changed (or `force`). A file that became
    /// unreadable or invalid keeps the old token and is reported.
    pub fn reload_if_changed(&self, force: bool) -> Result<bool, TokenError> {
        let modified = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        let stale = {
            let cur = self.current.read().unwrap_or_else(|e| e.into_inner());
            force || cur.1 != modified
        };
        if !stale {
            return Ok(false);
        }
        let fresh = read(&self.path)?;
        let mut cur = self.current.write().unwrap_or_else(|e| e.into_inner());
        let changed = *cur.0 != *fresh.0;
        *cur = fresh;
        Ok(changed)
    }

    /// Whether `presented` is the current token, in time independent of where they differ.
    pub fn check(&self, presented: &[u8]) -> bool {
        let token = self
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .clone();
        constant_time_eq(&token, presented)
    }
}

/// Compares without an early exit, so timing does not reveal the matching prefix. The length
/// is not secret (it travels in HELLO), only the bytes are.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        diff |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0xff);
    }
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn equal_tokens_match_and_any_difference_does_not() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret!"));
        assert!(!constant_time_eq(b"secret", b""));
        assert!(!constant_time_eq(b"", b"\xff"));
    }

    #[test]
    fn a_changed_file_is_picked_up_and_a_bad_one_keeps_the_old_token() {
        let dir = std::env::temp_dir().join(format!("snowlease-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let path = dir.join("token");
        std::fs::write(&path, "first\n").expect("write");
        let store = TokenStore::load(&path).expect("load");
        assert!(store.check(b"first"));
        std::fs::write(&path, "second").expect("write");
        assert!(store.reload_if_changed(true).expect("reload"));
        assert!(store.check(b"second") && !store.check(b"first"));
        std::fs::write(&path, "   ").expect("write");
        assert!(store.reload_if_changed(true).is_err());
        assert!(store.check(b"second"));
        std::fs::remove_dir_all(dir).expect("cleanup");
    }
}
