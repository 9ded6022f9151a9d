//! The server's stderr, kept whole and waited on.
//!
//! A reader thread ([`Log::drain`]) moves every line of the child's stderr into a [`Log`] as
//! it arrives (and, when asked, into a file), for the whole life of the process: the pipe
//! never fills, so a chatty server never blocks on it, and every line stays searchable.
//! [`Log::wait_for`] blocks on a condition variable until a line after a given index
//! satisfies a predicate, the deadline passes, or the stream ends (the process exited):
//! waiting on the condition, never on a fixed time.
//!
//! [`parse_start_line`] finds the addresses in the `serving` line, JSON (flat or under
//! `fields`) or human (`key=value`).

use std::fmt;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Instant;

/// Every line a process has written to stderr so far.
#[derive(Debug, Default)]
pub struct Log {
    state: Mutex<State>,
    grew: Condvar,
}

#[derive(Debug, Default)]
struct State {
    lines: Vec<String>,
    /// The stream ended: the process exited (or closed its stderr).
    closed: bool,
}

/// Why [`Log::wait_for`] returned without a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogWaitError {
    /// The deadline passed.
    TimedOut {
        /// The lines searched.
        searched: Vec<String>,
    },
    /// The stream ended first: the process exited.
    Closed {
        /// The lines searched.
        searched: Vec<String>,
    },
}

impl fmt::Display for LogWaitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LogWaitError::TimedOut { searched } => {
                write!(f, "no such line before the deadline; got {searched:?}")
            }
            LogWaitError::Closed { searched } => {
                write!(
                    f,
                    "the process closed stderr (exited) first; got {searched:?}"
                )
            }
        }
    }
}

impl std::error::Error for LogWaitError {}

impl Log {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the lines inconsistent: keep reading.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lines so far.
    pub fn len(&self) -> usize {
        self.lock().lines.len()
    }

    /// No line yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A copy of every line so far.
    pub fn lines(&self) -> Vec<String> {
        self.lock().lines.clone()
    }

    /// A copy of the lines from index `from` on.
    pub fn lines_from(&self, from: usize) -> Vec<String> {
        let state = self.lock();
        state.lines[from.min(state.lines.len())..].to_vec()
    }

    /// Whether any line so far contains `needle`.
    pub fn contains(&self, needle: &str) -> bool {
        self.lock().lines.iter().any(|l| l.contains(needle))
    }

    /// Whether the stream has ended.
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Waits until a line at index `from` or later satisfies `pred`, and returns its index
    /// and text; gives up at `deadline` or when the stream ends without one.
    pub fn wait_for(
        &self,
        from: usize,
        pred: impl Fn(&str) -> bool,
        deadline: Instant,
    ) -> Result<(usize, String), LogWaitError> {
        let mut state = self.lock();
        // Lines already searched are not searched again.
        let mut next = from;
        loop {
            let start = next.min(state.lines.len());
            if let Some(i) = state.lines[start..].iter().position(|l| pred(l)) {
                return Ok((start + i, state.lines[start + i].clone()));
            }
            next = state.lines.len();
            let searched = || state.lines[from.min(state.lines.len())..].to_vec();
            if state.closed {
                return Err(LogWaitError::Closed {
                    searched: searched(),
                });
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(LogWaitError::TimedOut {
                    searched: searched(),
                });
            }
            state = self
                .grew
                .wait_timeout(state, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Waits until the stream ends (the process exited); `false` at the deadline.
    pub fn wait_closed(&self, deadline: Instant) -> bool {
        let mut state = self.lock();
        while !state.closed {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            state = self
                .grew
                .wait_timeout(state, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }

    /// Appends a line and wakes every waiter.
    pub fn push(&self, line: String) {
        self.lock().lines.push(line);
        self.grew.notify_all();
    }

    /// Marks the end of the stream and wakes every waiter.
    pub fn close(&self) {
        self.lock().closed = true;
        self.grew.notify_all();
    }

    /// Reads `stream` line by line into the log (and `tee`) until it ends, then closes the
    /// log. Meant for a thread of its own; lines that are not UTF-8 are kept lossily.
    pub fn drain(&self, stream: impl Read, mut tee: Option<impl Write>) {
        let mut reader = BufReader::new(stream);
        let mut raw = Vec::new();
        loop {
            raw.clear();
            match reader.read_until(b'\n', &mut raw) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            if let Some(file) = tee.as_mut() {
                // The copy is for people; a failing disk must not stall the pipe.
                let _ = file.write_all(&raw);
            }
            let text = String::from_utf8_lossy(&raw);
            self.push(text.trim_end_matches(['\n', '\r']).to_owned());
        }
        if let Some(file) = tee.as_mut() {
            let _ = file.flush();
        }
        self.close();
    }
}

/// Finds `lease_addr` and `admin_addr` in the server's start line: JSON (fields at the top
/// level or under `fields`) or human (`key=value`, the value optionally quoted).
pub fn parse_start_line(line: &str) -> Option<(SocketAddr, SocketAddr)> {
    if let Ok(value) = serde_json::from_str::<serde_json::Value>(line) {
        let field = |name: &str| {
            value
                .get(name)
                .or_else(|| value.get("fields").and_then(|f| f.get(name)))
                .and_then(serde_json::Value::as_str)
                .and_then(|s| s.parse().ok())
        };
        return Some((field("lease_addr")?, field("admin_addr")?));
    }
    if !line.contains("serving") {
        return None;
    }
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|word| word.strip_prefix(name)?.strip_prefix('='))
            .map(|v| v.trim_matches('"'))
            .and_then(|v| v.parse().ok())
    };
    Some((field("lease_addr")?, field("admin_addr")?))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    fn addrs(a: &str, b: &str) -> Option<(SocketAddr, SocketAddr)> {
        Some((a.parse().ok()?, b.parse().ok()?))
    }

    #[test]
    fn a_json_start_line_gives_both_addresses_flat_or_nested() {
        let line = r#"{"timestamp":"t","level":"INFO","message":"serving","worker_id":5,"lease_addr":"127.0.0.1:37545","admin_addr":"127.0.0.1:45421","threads":2}"#;
        assert_eq!(
            parse_start_line(line),
            addrs("127.0.0.1:37545", "127.0.0.1:45421")
        );
        let nested = r#"{"fields":{"message":"serving","lease_addr":"127.0.0.1:1","admin_addr":"127.0.0.1:2"}}"#;
        assert_eq!(
            parse_start_line(nested),
            addrs("127.0.0.1:1", "127.0.0.1:2")
        );
    }

    #[test]
    fn a_human_start_line_gives_both_addresses() {
        let line = "2026-11-28T03:01:29Z  INFO snowlease_server: serving worker_id=5 lease_addr=127.0.0.1:41234 admin_addr=\"127.0.0.1:41235\" threads=2";
        assert_eq!(
            parse_start_line(line),
            addrs("127.0.0.1:41234", "127.0.0.1:41235")
        );
    }

    #[test]
    fn other_lines_are_not_start_lines() {
        assert_eq!(parse_start_line(r#"{"message":"no --state-dir"}"#), None);
        assert_eq!(parse_start_line("WARN something lease_addr=nope"), None);
        assert_eq!(parse_start_line(""), None);
    }

    #[test]
    fn a_waiter_wakes_for_a_line_pushed_later_and_not_for_earlier_ones() {
        let log = Arc::new(Log::default());
        log.push("ready once".into());
        let from = log.len();
        let writer = {
            let log = log.clone();
            std::thread::spawn(move || {
                log.push("noise".into());
                log.push("ready twice".into());
            })
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let (i, line) = log
            .wait_for(from, |l| l.starts_with("ready"), deadline)
            .unwrap();
        assert_eq!((i, line.as_str()), (2, "ready twice"));
        writer.join().unwrap();
    }

    #[test]
    fn a_wait_ends_at_the_deadline_or_when_the_stream_closes() {
        let log = Log::default();
        log.push("a".into());
        let err = log.wait_for(0, |l| l == "b", Instant::now()).unwrap_err();
        assert_eq!(
            err,
            LogWaitError::TimedOut {
                searched: vec!["a".into()]
            }
        );
        log.close();
        let far = Instant::now() + Duration::from_secs(3600);
        assert!(matches!(
            log.wait_for(0, |l| l == "b", far),
            Err(LogWaitError::Closed { .. })
        ));
        assert!(log.wait_closed(far));
    }

    #[test]
    fn drain_keeps_every_line_copies_them_and_closes_at_the_end() {
        let log = Log::default();
        let mut copy = Vec::new();
        log.drain(&b"one\r\ntwo\n\xffthree"[..], Some(&mut copy));
        assert_eq!(log.lines(), vec!["one", "two", "\u{fffd}three"]);
        assert_eq!(copy, b"one\r\ntwo\n\xffthree");
        assert!(log.is_closed());
        assert_eq!(log.lines_from(1), vec!["two", "\u{fffd}three"]);
        assert!(log.contains("thr"));
    }
}
