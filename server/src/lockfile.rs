//! One process per state directory: an exclusive lock taken before anything is written.
//!
//! [`DirLock::acquire`] opens `snowlease.lock` in the state directory and takes an exclusive
//! `flock` on it without waiting. A second process pointed at the same directory (so the same
//! worker ids: the state file refuses any other identity) fails at once with a message that
//! names the holder, read from the file: the lock owner writes its pid, host and start time
//! into it right after locking. The kernel drops the lock when the process dies, however it
//! dies, so a `kill -9` never leaves a stale lock behind.
//!
//! The file also remembers, once the first state file has been written, that this directory
//! has held state: a later start that finds the lock file saying so but no state file knows
//! the state was lost (deleted, a volume swapped) rather than never written, and refuses
//! instead of starting over as a first start.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// File name inside the state directory.
pub const LOCK_FILE: &str = "snowlease.lock";
/// The line the lock file carries once a state file has been written under it.
const STATE_WRITTEN: &str = "state=written";

/// Why the directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds the lock.
    #[error("state directory {dir} is in use by another snowlease-server ({holder}); one worker id must be held by one process. Stop it, or give this server its own worker id and state directory")]
    Held {
        /// The directory.
        dir: PathBuf,
        /// What the holder wrote about itself.
        holder: String,
    },
    /// The lock file cannot be opened, read or written.
    #[error("state directory {dir}: cannot use the lock file: {source}")]
    Io {
        /// The directory.
        dir: PathBuf,
        /// The error.
        source: io::Error,
    },
}

/// An exclusive lock on a state directory, held until dropped (or the process ends).
#[derive(Debug)]
pub struct DirLock {
    file: File,
    dir: PathBuf,
    /// Whether a state file was written under this directory before this start.
    had_state: bool,
    holder: String,
}

impl DirLock {
    /// Creates the directory if needed and locks it, or says who holds it.
    pub fn acquire(dir: &Path) -> Result<DirLock, LockError> {
        let io = |source| LockError::Io {
            dir: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join(LOCK_FILE))
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                return Err(LockError::Held {
                    dir: dir.to_path_buf(),
                    holder: holder_line(&text),
                });
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        let mut previous = String::new();
        file.read_to_string(&mut previous).map_err(io)?;
        let holder = format!(
            "pid {} on host {} since {}",
            std::process::id(),
            hostname(),
            snowlease_proto::layout::format_unix_ms(snowlease_proto::layout::unix_ms_now())
        );
        let mut lock = DirLock {
            file,
            dir: dir.to_path_buf(),
            had_state: previous.lines().any(|l| l == STATE_WRITTEN),
            holder,
        };
        lock.write(lock.had_state).map_err(io)?;
        Ok(lock)
    }

    /// Whether a state file was written under this directory by an earlier start.
    pub fn had_state(&self) -> bool {
        self.had_state
    }

    /// Records that a state file now exists, so its loss is noticed at the next start.
    pub fn note_state_written(&mut self) -> io::Result<()> {
        if !self.had_state {
            self.write(true)?;
            self.had_state = true;
        }
        Ok(())
    }

    fn write(&mut self, state_written: bool) -> io::Result<()> {
        let mut text = format!("holder={}\n", self.holder);
        if state_written {
            text.push_str(STATE_WRITTEN);
            text.push('\n');
        }
        self.file.set_len(0)?;
        self.file.seek(SeekFrom::Start(0))?;
        self.file.write_all(text.as_bytes())?;
        self.file.sync_all()
    }

    /// The locked directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

fn holder_line(text: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix("holder="))
        .map_or_else(|| "holder unknown".to_owned(), str::to_owned)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn tempdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("snowlease-lock-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn a_second_lock_on_the_same_directory_names_the_holder() {
        let dir = tempdir("held");
        let first = DirLock::acquire(&dir).unwrap();
        let err = DirLock::acquire(&dir).unwrap_err().to_string();
        assert!(
            err.contains(&format!("pid {}", std::process::id())) && err.contains("in use"),
            "{err}"
        );
        drop(first);
        assert!(DirLock::acquire(&dir).is_ok());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_lock_file_remembers_that_state_was_written() {
        let dir = tempdir("written");
        let mut lock = DirLock::acquire(&dir).unwrap();
        assert!(!lock.had_state());
        lock.note_state_written().unwrap();
        drop(lock);
        assert!(DirLock::acquire(&dir).unwrap().had_state());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
