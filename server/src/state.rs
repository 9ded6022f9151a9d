//! The persisted high-water marks that make restarts safe when the clock is behind.
//!
//! The state file records, for every worker id the process holds, `reserved_until`: the first
//! tick *not* yet reserved, together with the identity it belongs to (the worker ids, layout
//! and epoch). Before a generator may issue an ID with tick `t`, `t < reserved_until` must be
//! durable: written to a temporary file, fsynced, renamed over the old file, and the directory
//! fsynced. At start the previous marks are read and each generator begins at or after its
//! mark, so whatever the clock says, no tick that might have been used before a crash is used
//! again.
//!
//! Flow: [`StateStore::open_set`] reads and checks the file once at start (the directory is
//! already locked by `lockfile`); the persistence thread (see `persist`) calls
//! [`StateStore::persist_all`] ahead of need, off the hot path, and raises the generators'
//! durable limits after each successful write. Writes are serialized by a mutex, so the
//! persister and the drain's final write never interleave on the temporary file.
//!
//! Two formats: `snowlease-state v1` (one worker, as every version before several workers
//! per process wrote it, and still written for one worker so a rollback can read it) and
//! `snowlease-state v2` (a contiguous worker set, the `--workers-per-pod` it came from, and one
//! mark per worker).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use snowlease_proto::Layout;

/// File name inside the state directory.
pub const STATE_FILE: &str = "snowlease.state";
const TMP_FILE: &str = "snowlease.state.tmp";
const PROBE_FILE: &str = "snowlease.probe";
const MAGIC: &str = "snowlease-state v1";
const MAGIC_V2: &str = "snowlease-state v2";

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
    /// The state file is missing from a directory that held one.
    #[error("state file {path} is missing, but this state directory held one before (its lock file says so): the last reserved tick is lost, and starting afresh could repeat IDs if the clock is behind. Restore the file, or start with --discard-corrupt-state if you know this worker issued no IDs ahead of the clock")]
    Lost {
        /// The missing file.
        path: PathBuf,
    },
    /// A mark at or past the layout's end of life: this worker can issue nothing more.
    #[error("state file {path} reserves worker {worker} up to {mark}, at or past the layout's end of life ({end_of_life}): this worker id can issue no more IDs with this layout and epoch. If that mark came from a clock error and you know the worker never issued IDs after the real time, start once with --discard-corrupt-state; otherwise choose a later epoch or wider timestamp field with a fresh state directory")]
    PastEndOfLife {
        /// File.
        path: PathBuf,
        /// Worker id.
        worker: u16,
        /// The mark, as a time.
        mark: String,
        /// The layout's end of life.
        end_of_life: String,
    },
}

/// What a version-1 state file holds: one worker's mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    /// Worker id it belongs to.
    pub worker_id: u16,
    /// Layout (and epoch) it belongs to.
    pub layout: Layout,
    /// First tick not yet reserved.
    pub reserved_until: u64,
}

/// The identity a state file belongs to: which worker ids, how they were assigned, which layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    /// First worker id of the contiguous set.
    pub first_worker: u16,
    /// Worker ids in the set, at least 1.
    pub worker_count: u16,
    /// `--workers-per-pod` the set came from; `None` for an explicit id or id range.
    pub workers_per_pod: Option<u16>,
    /// Layout and epoch.
    pub layout: Layout,
}

impl Identity {
    /// One explicitly named worker, as every server before several workers per process.
    pub fn single(worker_id: u16, layout: Layout) -> Identity {
        Identity {
            first_worker: worker_id,
            worker_count: 1,
            workers_per_pod: None,
            layout,
        }
    }

    /// Whether the version-1 format can hold it (one worker, not from a K above 1).
    fn fits_v1(&self) -> bool {
        self.worker_count == 1 && self.workers_per_pod.unwrap_or(1) == 1
    }

    fn set_text(&self) -> String {
        let last = u32::from(self.first_worker) + u32::from(self.worker_count) - 1;
        format!("{}-{last}", self.first_worker)
    }
}

/// What a state file of either version holds.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stored {
    identity: Identity,
    marks: Vec<u64>,
}

/// The state directory of one server process.
#[derive(Debug)]
pub struct StateStore {
    dir: PathBuf,
    identity: Identity,
    writes: AtomicU64,
    /// Serializes writers of the temporary file (the persister, the drain, the probe).
    writing: Mutex<()>,
}

/// FNV-1a, enough to catch torn or edited files (not an adversary).
fn checksum(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn seal(body: String) -> String {
    let sum = checksum(&body);
    format!("{body}checksum={sum:016x}\n")
}

fn layout_lines(layout: &Layout) -> String {
    format!(
        "epoch_unix_ms={}\ntimestamp_bits={}\nworker_bits={}\nsequence_bits={}\n",
        layout.epoch_unix_ms(),
        layout.timestamp_bits(),
        layout.worker_bits(),
        layout.sequence_bits(),
    )
}

/// Reads `name=value` lines in order.
struct Fields<'a>(std::str::Lines<'a>);

impl Fields<'_> {
    fn text(&mut self, name: &str) -> Result<&str, String> {
        let line = self.0.next().ok_or(format!("missing {name}"))?;
        line.strip_prefix(name)
            .and_then(|r| r.strip_prefix('='))
            .ok_or(format!("expected {name}=, got {line:?}"))
    }

    fn number(&mut self, name: &str) -> Result<u64, String> {
        let value = self.text(name)?;
        value
            .parse()
            .map_err(|_| format!("{name} is not a number: {value:?}"))
    }

    fn layout(&mut self) -> Result<Layout, String> {
        let epoch = self.number("epoch_unix_ms")?;
        let small = |v: u64| u8::try_from(v).map_err(|_| format!("field width {v} out of range"));
        let t = small(self.number("timestamp_bits")?)?;
        let w = small(self.number("worker_bits")?)?;
        let s = small(self.number("sequence_bits")?)?;
        Layout::widths(epoch, t, w, s).map_err(|e| e.to_string())
    }
}

fn small_u16(v: u64, name: &str) -> Result<u16, String> {
    u16::try_from(v).map_err(|_| format!("{name} out of range"))
}

/// Checks the checksum and splits off the magic line.
fn unseal(text: &str) -> Result<(&str, Fields<'_>), String> {
    let (body, tail) = text
        .rsplit_once("checksum=")
        .ok_or("no checksum line (truncated?)")?;
    let stored = u64::from_str_radix(tail.trim_end(), 16).map_err(|_| "unreadable checksum")?;
    if checksum(body) != stored {
        return Err("checksum mismatch (torn or edited file)".into());
    }
    let mut lines = body.lines();
    let magic = lines.next().unwrap_or("");
    Ok((magic, Fields(lines)))
}

impl Record {
    /// The file's text.
    pub fn encode(&self) -> String {
        seal(format!(
            "{MAGIC}\nworker_id={}\n{}reserved_until={}\n",
            self.worker_id,
            layout_lines(&self.layout),
            self.reserved_until,
        ))
    }

    /// Parses a version-1 file's text; `Err` says what is wrong.
    pub fn decode(text: &str) -> Result<Record, String> {
        match Stored::decode(text)? {
            Stored { identity, marks } if identity.fits_v1() && marks.len() == 1 => Ok(Record {
                worker_id: identity.first_worker,
                layout: identity.layout,
                reserved_until: marks[0],
            }),
            _ => Err(format!("not a {MAGIC:?} file")),
        }
    }
}

impl Stored {
    fn encode(&self) -> String {
        let id = &self.identity;
        if id.fits_v1() {
            return Record {
                worker_id: id.first_worker,
                layout: id.layout,
                reserved_until: self.marks[0],
            }
            .encode();
        }
        let marks: Vec<String> = self.marks.iter().map(u64::to_string).collect();
        seal(format!(
            "{MAGIC_V2}\n{}first_worker={}\nworker_count={}\nworkers_per_pod={}\nreserved_until={}\n",
            layout_lines(&id.layout),
            id.first_worker,
            id.worker_count,
            id.workers_per_pod.unwrap_or(0),
            marks.join(","),
        ))
    }

    fn decode(text: &str) -> Result<Stored, String> {
        let (magic, mut f) = unseal(text)?;
        match magic {
            MAGIC => {
                let worker = small_u16(f.number("worker_id")?, "worker_id")?;
                let layout = f.layout()?;
                let mark = f.number("reserved_until")?;
                Ok(Stored {
                    identity: Identity::single(worker, layout),
                    marks: vec![mark],
                })
            }
            MAGIC_V2 => {
                let layout = f.layout()?;
                let first_worker = small_u16(f.number("first_worker")?, "first_worker")?;
                let worker_count = small_u16(f.number("worker_count")?, "worker_count")?;
                let per_pod = small_u16(f.number("workers_per_pod")?, "workers_per_pod")?;
                let marks = f
                    .text("reserved_until")?
                    .split(',')
                    .map(|m| m.parse().map_err(|_| format!("mark {m:?} is not a number")))
                    .collect::<Result<Vec<u64>, String>>()?;
                if worker_count == 0 || marks.len() != usize::from(worker_count) {
                    return Err(format!("{} marks for {worker_count} workers", marks.len()));
                }
                Ok(Stored {
                    identity: Identity {
                        first_worker,
                        worker_count,
                        workers_per_pod: (per_pod > 0).then_some(per_pod),
                        layout,
                    },
                    marks,
                })
            }
            other => Err(format!(
                "first line {other:?} is neither {MAGIC:?} nor {MAGIC_V2:?}"
            )),
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StateError {
    let path = path.to_path_buf();
    move |source| StateError::Io { path, source }
}

impl StateStore {
    /// Opens the state directory of one worker (creating it), reads the previous mark if
    /// any, and checks it belongs to this identity. Returns the store and the previous
    /// `reserved_until`.
    pub fn open(
        dir: &Path,
        worker_id: u16,
        layout: Layout,
        discard_corrupt: bool,
    ) -> Result<(StateStore, Option<u64>), StateError> {
        let (store, marks) =
            Self::open_set(dir, Identity::single(worker_id, layout), discard_corrupt)?;
        Ok((store, marks.map(|m| m[0])))
    }

    /// Opens the state directory of a worker set (creating it), reads the previous marks if
    /// any (one per worker, in order), and checks they belong to this identity and leave the
    /// workers something to issue.
    pub fn open_set(
        dir: &Path,
        identity: Identity,
        discard_corrupt: bool,
    ) -> Result<(StateStore, Option<Vec<u64>>), StateError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let path = dir.join(STATE_FILE);
        let store = StateStore {
            dir: dir.to_path_buf(),
            identity,
            writes: AtomicU64::new(0),
            writing: Mutex::new(()),
        };
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((store, None)),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                return store.corrupt(path, "not UTF-8".into(), discard_corrupt)
            }
            Err(e) => return Err(io_err(&path)(e)),
        };
        let stored = match Stored::decode(&text) {
            Ok(r) => r,
            Err(reason) => return store.corrupt(path, reason, discard_corrupt),
        };
        check_identity(&path, &stored.identity, &identity)?;
        if !discard_corrupt {
            check_marks(&path, &identity, &stored.marks)?;
        } else if check_marks(&path, &identity, &stored.marks).is_err() {
            tracing::warn!(path = %path.display(), "discarding a mark past the end of life as --discard-corrupt-state asks");
            return Ok((store, None));
        }
        Ok((store, Some(stored.marks)))
    }

    fn corrupt(
        self,
        path: PathBuf,
        reason: String,
        discard: bool,
    ) -> Result<(StateStore, Option<Vec<u64>>), StateError> {
        if discard {
            tracing::warn!(path = %path.display(), %reason, "discarding corrupt state file as --discard-corrupt-state asks");
            Ok((self, None))
        } else {
            Err(StateError::Corrupt { path, reason })
        }
    }

    /// Makes one worker's `reserved_until` durable (a store of one worker).
    pub fn persist(&self, reserved_until: u64) -> Result<(), StateError> {
        self.persist_all(&[reserved_until])
    }

    /// Makes every worker's `reserved_until` durable, in worker order: temp file, fsync,
    /// rename, directory fsync. A crash at any point leaves either the old marks or the new
    /// ones, never a torn file.
    pub fn persist_all(&self, marks: &[u64]) -> Result<(), StateError> {
        let text = Stored {
            identity: self.identity,
            marks: marks.to_vec(),
        }
        .encode();
        let _writing = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        let tmp = self.dir.join(TMP_FILE);
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(io_err(&tmp))?;
        f.write_all(text.as_bytes()).map_err(io_err(&tmp))?;
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

    /// Checks that the directory still takes a durable write, without touching the state
    /// file: writes, fsyncs and removes a small probe file. An idle server calls this instead
    /// of rewriting its marks, so readiness notices a full or read-only disk before a lease
    /// does.
    pub fn probe(&self) -> Result<(), StateError> {
        let _writing = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        let path = self.dir.join(PROBE_FILE);
        let result = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .and_then(|mut f| {
                f.write_all(b"snowlease write probe\n")?;
                f.sync_all()
            });
        let _ = fs::remove_file(&path);
        result.map_err(io_err(&path))
    }

    /// Successful writes so far.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The identity it was opened for.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }
}

fn check_identity(path: &Path, stored: &Identity, wanted: &Identity) -> Result<(), StateError> {
    let mismatch = |field, stored: String, configured: String| StateError::Mismatch {
        path: path.to_path_buf(),
        field,
        stored,
        configured,
    };
    if stored.first_worker != wanted.first_worker || stored.worker_count != wanted.worker_count {
        return Err(if stored.worker_count == 1 && wanted.worker_count == 1 {
            mismatch(
                "worker_id",
                stored.first_worker.to_string(),
                wanted.first_worker.to_string(),
            )
        } else {
            mismatch("worker ids", stored.set_text(), wanted.set_text())
        });
    }
    if let (Some(a), Some(b)) = (stored.workers_per_pod, wanted.workers_per_pod) {
        if a != b {
            return Err(mismatch("workers_per_pod", a.to_string(), b.to_string()));
        }
    }
    let (sl, wl) = (stored.layout, wanted.layout);
    if sl.epoch_unix_ms() != wl.epoch_unix_ms() {
        return Err(mismatch(
            "epoch",
            snowlease_proto::layout::format_unix_ms(sl.epoch_unix_ms()),
            snowlease_proto::layout::format_unix_ms(wl.epoch_unix_ms()),
        ));
    }
    if sl != wl {
        let widths = |l: Layout| {
            format!(
                "{}/{}/{}",
                l.timestamp_bits(),
                l.worker_bits(),
                l.sequence_bits()
            )
        };
        return Err(mismatch("layout", widths(sl), widths(wl)));
    }
    Ok(())
}

/// Refuses a mark at or past the layout's last tick plus one: nothing could be issued, and
/// arithmetic on it near `u64::MAX` would wrap.
fn check_marks(path: &Path, identity: &Identity, marks: &[u64]) -> Result<(), StateError> {
    let layout = identity.layout;
    for (i, &mark) in marks.iter().enumerate() {
        if mark > layout.max_tick() {
            let fmt = snowlease_proto::layout::format_unix_ms;
            let mark_ms = layout
                .epoch_unix_ms()
                .checked_add(mark)
                .map_or_else(|| format!("tick {mark}"), fmt);
            return Err(StateError::PastEndOfLife {
                path: path.to_path_buf(),
                worker: identity.first_worker + i as u16,
                mark: mark_ms,
                end_of_life: fmt(layout.end_of_life_unix_ms()),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn tempdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("snowlease-state-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    /// Why opening the state in `dir` as `worker` with `layout` is refused.
    fn refusal(dir: &Path, worker: u16, layout: Layout) -> String {
        StateStore::open(dir, worker, layout, false)
            .unwrap_err()
            .to_string()
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
        let err = refusal(&dir, 1, Layout::DEFAULT);
        assert!(err.contains("is corrupt"), "{err}");
        fs::write(
            &path,
            text.replace("reserved_until=5000", "reserved_until=9000"),
        )
        .unwrap();
        let err = refusal(&dir, 1, Layout::DEFAULT);
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
        let err = refusal(&dir, 4, Layout::DEFAULT);
        assert!(
            err.contains("worker_id = 3") && err.contains("worker_id = 4"),
            "{err}"
        );
        let other = Layout::widths(Layout::DEFAULT.epoch_unix_ms(), 40, 11, 12).unwrap();
        let err = refusal(&dir, 3, other);
        assert!(
            err.contains("41/10/12") && err.contains("40/11/12"),
            "{err}"
        );
        let later = Layout::widths(Layout::DEFAULT.epoch_unix_ms() + 1, 41, 10, 12).unwrap();
        let err = refusal(&dir, 3, later);
        assert!(err.contains("epoch"), "{err}");
        fs::remove_dir_all(dir).unwrap();
    }

    fn identity(first: u16, count: u16, per_pod: Option<u16>) -> Identity {
        Identity {
            first_worker: first,
            worker_count: count,
            workers_per_pod: per_pod,
            layout: Layout::DEFAULT,
        }
    }

    #[test]
    fn a_worker_set_keeps_one_mark_per_worker_and_refuses_another_set_or_k() {
        let dir = tempdir("set");
        let set = identity(64, 32, Some(32));
        let (store, prev) = StateStore::open_set(&dir, set, false).unwrap();
        assert_eq!(prev, None);
        let marks: Vec<u64> = (0..32).map(|i| 1_000 + i).collect();
        store.persist_all(&marks).unwrap();
        let (_, prev) = StateStore::open_set(&dir, set, false).unwrap();
        assert_eq!(prev, Some(marks));
        let err = StateStore::open_set(&dir, identity(64, 16, Some(16)), false)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("worker ids = 64-95") && err.contains("64-79"),
            "{err}"
        );
        let err = StateStore::open_set(&dir, identity(64, 32, Some(16)), false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("workers_per_pod = 32"), "{err}");
        // The same set named explicitly is the same workers: accepted.
        assert!(StateStore::open_set(&dir, identity(64, 32, None), false).is_ok());
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn one_worker_is_still_written_in_the_version_1_format() {
        let dir = tempdir("v1");
        let (store, _) = StateStore::open_set(&dir, identity(7, 1, Some(1)), false).unwrap();
        store.persist_all(&[42]).unwrap();
        let text = fs::read_to_string(dir.join(STATE_FILE)).unwrap();
        assert!(
            text.starts_with("snowlease-state v1\nworker_id=7\n"),
            "{text}"
        );
        assert_eq!(Record::decode(&text).unwrap().reserved_until, 42);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_mark_past_the_end_of_life_refuses_to_start_and_never_wraps() {
        let dir = tempdir("eol");
        let (store, _) = StateStore::open(&dir, 1, Layout::DEFAULT, false).unwrap();
        for mark in [Layout::DEFAULT.max_tick() + 1, u64::MAX - 3] {
            store.persist(mark).unwrap();
            let err = refusal(&dir, 1, Layout::DEFAULT);
            assert!(err.contains("past the layout's end of life"), "{err}");
        }
        // The operator's override starts afresh.
        let (_, prev) = StateStore::open(&dir, 1, Layout::DEFAULT, true).unwrap();
        assert_eq!(prev, None);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_probe_leaves_the_state_file_alone() {
        let dir = tempdir("probe");
        let (store, _) = StateStore::open(&dir, 1, Layout::DEFAULT, false).unwrap();
        store.persist(9).unwrap();
        let before = fs::read(dir.join(STATE_FILE)).unwrap();
        store.probe().unwrap();
        assert_eq!(fs::read(dir.join(STATE_FILE)).unwrap(), before);
        assert!(!dir.join(PROBE_FILE).exists());
        fs::remove_dir_all(dir).unwrap();
    }
}
