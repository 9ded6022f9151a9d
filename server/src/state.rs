//! The persisted high-water mark that makes restarts safe when the clock is behind.
//!
//! The state file records `reserved_until`, the first tick *not* yet reserved, together with
//! the identity it belongs to (worker id, layout, epoch). Before the generator may issue an ID
//! with tick `t`, `t < reserved_until` must be durable: written to a temporary file, fsynced,
//! renamed over the old file, and the directory fsynced. At start the previous mark is read and
//! the generator begins at or after it, so whatever the clock says, no tick that might have
//! been used before a crash is used again.
//!
//! Flow: [`StateStore::open`] reads and checks the file once at start; the persistence thread
//! (see `lib.rs`) calls [`StateStore::persist`] ahead of need, off the hot path, and raises the
//! generator's durable limit after each successful write.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use snowlease_proto::Layout;

/// File name inside the state directory.
pub const STATE_FILE: &str = "snowlease.state";
const TMP_FILE: &str = "snowlease.state.tmp";
const MAGIC: &str = "snowlease-state v1";

/// Why the state file stops the server from starting.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Reading, writing or syncing failed.
    #[error("state file {path}: {source}")]
    Io {
        /// File or directory involved.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The file is not a state file this version can read, or its checksum does not match.
    #[error("state file {path} is corrupt ({reason}); refusing to start because the last reserved tick is unknown. Restore it, or start with --discard-corrupt-state if you know this worker issued no IDs ahead of the clock")]
    Corrupt {
        /// File.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The file belongs to a different identity; using it could repeat IDs.
    #[error("state file {path} was written with {field} = {stored}, but the server is configured with {field} = {configured}; changing it can repeat IDs. Use a fresh state directory for a new identity")]
    Mismatch {
        /// File.
        path: PathBuf,
        /// Which setting differs.
        field: &'static str,
        /// Value in the file.
        stored: String,
        /// Value configured.
        configured: String,
    },
}

/// What a state file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    /// Worker id it belongs to.
    pub worker_id: u16,
    /// Layout (and epoch) it belongs to.
    pub layout: Layout,
    /// First tick not yet reserved.
    pub reserved_until: u64,
}

/// The state directory of one worker.
#[derive(Debug)]
pub struct StateStore {
    dir: PathBuf,
    worker_id: u16,
    layout: Layout,
    writes: AtomicU64,
}

/// FNV-1a, enough to catch torn or edited files (not an adversary).
fn checksum(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

impl Record {
    /// The file's text.
    pub fn encode(&self) -> String {
        let body = format!(
            "{MAGIC}\nworker_id={}\nepoch_unix_ms={}\ntimestamp_bits={}\nworker_bits={}\nsequence_bits={}\nreserved_until={}\n",
            self.worker_id,
            self.layout.epoch_unix_ms(),
            self.layout.timestamp_bits(),
            self.layout.worker_bits(),
            self.layout.sequence_bits(),
            self.reserved_until,
        );
        let sum = checksum(&body);
        format!("{body}checksum={sum:016x}\n")
    }

    /// Parses a file's text; `Err` says what is wrong.
    pub fn decode(text: &str) -> Result<Record, String> {
        let (body, tail) = text
            .rsplit_once("checksum=")
            .ok_or("no checksum line (truncated?)")?;
        let stored = u64::from_str_radix(tail.trim_end(), 16).map_err(|_| "unreadable checksum")?;
        if checksum(body) != stored {
            return Err("checksum mismatch (torn or edited file)".into());
        }
        let mut lines = body.lines();
        if lines.next() != Some(MAGIC) {
            return Err(format!("first line is not {MAGIC:?}"));
        }
        let mut field = |name: &str| -> Result<u64, String> {
            let line = lines.next().ok_or(format!("missing {name}"))?;
            let value = line
                .strip_prefix(name)
                .and_then(|r| r.strip_prefix('='))
                .ok_or(format!("expected {name}=, got {line:?}"))?;
            value
                .parse()
                .map_err(|_| format!("{name} is not a number: {value:?}"))
        };
        let worker_id = field("worker_id")?;
        let epoch = field("epoch_unix_ms")?;
        let t = field("timestamp_bits")?;
        let w = field("worker_bits")?;
        let s = field("sequence_bits")?;
        let reserved_until = field("reserved_until")?;
        let small = |v: u64| u8::try_from(v).map_err(|_| format!("field width {v} out of range"));
        let layout =
            Layout::widths(epoch, small(t)?, small(w)?, small(s)?).map_err(|e| e.to_string())?;
        Ok(Record {
            worker_id: u16::try_from(worker_id).map_err(|_| "worker_id out of range")?,
            layout,
            reserved_until,
        })
    }
}

impl StateStore {
    /// Opens the state directory (creating it), reads the previous mark if any, and checks it
    /// belongs to this identity. Returns the store and the previous `reserved_until`.
    pub fn open(
        dir: &Path,
        worker_id: u16,
        layout: Layout,
        discard_corrupt: bool,
    ) -> Result<(StateStore, Option<u64>), StateError> {
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StateError::Io { path, source }
        };
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let path = dir.join(STATE_FILE);
        let store = StateStore {
            dir: dir.to_path_buf(),
            worker_id,
            layout,
            writes: AtomicU64::new(0),
        };
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((store, None)),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                return store.corrupt(path, "not UTF-8".into(), discard_corrupt)
            }
            Err(e) => return Err(io_err(&path)(e)),
        };
        let record = match Record::decode(&text) {
            Ok(r) => r,
            Err(reason) => return store.corrupt(path, reason, discard_corrupt),
        };
        let mismatch = |field, stored: String, configured: String| StateError::Mismatch {
            path: path.clone(),
            field,
            stored,
            configured,
        };
        if record.worker_id != worker_id {
            return Err(mismatch(
                "worker_id",
                record.worker_id.to_string(),
                worker_id.to_string(),
            ));
        }
        if record.layout.epoch_unix_ms() != layout.epoch_unix_ms() {
            return Err(mismatch(
                "epoch",
                snowlease_proto::layout::format_unix_ms(record.layout.epoch_unix_ms()),
                snowlease_proto::layout::format_unix_ms(layout.epoch_unix_ms()),
            ));
        }
        if record.layout != layout {
            let widths = |l: Layout| {
                format!(
                    "{}/{}/{}",
                    l.timestamp_bits(),
                    l.worker_bits(),
                    l.sequence_bits()
                )
            };
            return Err(mismatch("layout", widths(record.layout), widths(layout)));
        }
        Ok((store, Some(record.reserved_until)))
    }

    fn corrupt(
        self,
        path: PathBuf,
        reason: String,
        discard: bool,
    ) -> Result<(StateStore, Option<u64>), StateError> {
        if discard {
            tracing::warn!(path = %path.display(), %reason, "discarding corrupt state file as --discard-corrupt-state asks");
            Ok((self, None))
        } else {
            Err(StateError::Corrupt { path, reason })
        }
    }

    /// Makes `reserved_until` durable: temp file, fsync, rename, directory fsync. A crash at
    /// any point leaves either the old mark or the new one, never a torn file.
    pub fn persist(&self, reserved_until: u64) -> Result<(), StateError> {
        let record = Record {
            worker_id: self.worker_id,
            layout: self.layout,
            reserved_until,
        };
        let tmp = self.dir.join(TMP_FILE);
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StateError::Io { path, source }
        };
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(io_err(&tmp))?;
        f.write_all(record.encode().as_bytes())
            .map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
        drop(f);
        let path = self.dir.join(STATE_FILE);
        fs::rename(&tmp, &path).map_err(io_err(&path))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&self.dir))?;
        self.writes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Successful writes so far.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("snowlease-state-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn a_written_mark_is_read_back() {
        let dir = tempdir("roundtrip");
        let (store, prev) = StateStore::open(&dir, 7, Layout::DEFAULT, false).unwrap();
        assert_eq!(prev, None);
        store.persist(123_456).unwrap();
        store.persist(223_456).unwrap();
        let (_, prev) = StateStore::open(&dir, 7, Layout::DEFAULT, false).unwrap();
        assert_eq!(prev, Some(223_456));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_crash_between_write_and_rename_keeps_the_old_mark() {
        let dir = tempdir("crash");
        let (store, _) = StateStore::open(&dir, 1, Layout::DEFAULT, false).unwrap();
        store.persist(1_000).unwrap();
        // What a crash after writing the temp file but before the rename leaves behind.
        let half = Record {
            worker_id: 1,
            layout: Layout::DEFAULT,
            reserved_until: 9_000,
        }
        .encode();
        fs::write(dir.join(TMP_FILE), &half[..half.len() / 2]).unwrap();
        let (_, prev) = StateStore::open(&dir, 1, Layout::DEFAULT, false).unwrap();
        assert_eq!(prev, Some(1_000));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_corrupt_or_truncated_file_refuses_to_start() {
        let dir = tempdir("corrupt");
        let (store, _) = StateStore::open(&dir, 1, Layout::DEFAULT, false).unwrap();
        store.persist(5_000).unwrap();
        let path = dir.join(STATE_FILE);
        let text = fs::read_to_string(&path).unwrap();
        fs::write(&path, &text[..text.len() - 10]).unwrap();
        let err = StateStore::open(&dir, 1, Layout::DEFAULT, false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("is corrupt"), "{err}");
        fs::write(
            &path,
            text.replace("reserved_until=5000", "reserved_until=9000"),
        )
        .unwrap();
        let err = StateStore::open(&dir, 1, Layout::DEFAULT, false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("checksum mismatch"), "{err}");
        // The operator override starts afresh.
        let (_, prev) = StateStore::open(&dir, 1, Layout::DEFAULT, true).unwrap();
        assert_eq!(prev, None);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_mismatched_identity_refuses_naming_both_values() {
        let dir = tempdir("mismatch");
        let (store, _) = StateStore::open(&dir, 3, Layout::DEFAULT, false).unwrap();
        store.persist(1).unwrap();
        let err = StateStore::open(&dir, 4, Layout::DEFAULT, false)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("worker_id = 3") && err.contains("worker_id = 4"),
            "{err}"
        );
        let other = Layout::widths(Layout::DEFAULT.epoch_unix_ms(), 40, 11, 12).unwrap();
        let err = StateStore::open(&dir, 3, other, false)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("41/10/12") && err.contains("40/11/12"),
            "{err}"
        );
        let later = Layout::widths(Layout::DEFAULT.epoch_unix_ms() + 1, 41, 10, 12).unwrap();
        let err = StateStore::open(&dir, 3, later, false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("epoch"), "{err}");
        fs::remove_dir_all(dir).unwrap();
    }
}
