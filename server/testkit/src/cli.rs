//! Runs a command-line binary of the project (the bench, snowcat) to its end, bounded: the
//! arguments and standard input go in, the exit code, stdout and stderr come out.
//!
//! Both pipes are read by threads for the whole run, so a chatty child never blocks on a full
//! pipe. The exit is waited on, not polled: a thread blocks in `waitid` until the child has
//! exited (leaving it unreaped, so its pid stays its own), and the caller waits for that
//! thread with a deadline. A child still running at the deadline is killed and reaped: a
//! failed test leaves no process behind.

use std::fmt;
use std::io::{self, Read, Write};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use rustix::io::Errno;
use rustix::process::{Pid, WaitId, WaitIdOptions};

/// How a run ended and what it printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// The exit code; -1 when a signal ended the process.
    pub code: i32,
    /// Everything it wrote to stdout.
    pub stdout: String,
    /// Everything it wrote to stderr.
    pub stderr: String,
}

/// Why [`run`] has no [`Output`].
#[derive(Debug)]
pub enum RunError {
    /// The process could not be started.
    Spawn(io::Error),
    /// It was still running after this long, and was killed.
    TimedOut {
        /// The limit.
        after: Duration,
    },
    /// Its stdout or stderr could not be read, or was not UTF-8 text.
    Output(io::Error),
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunError::Spawn(e) => write!(f, "cannot start: {e}"),
            RunError::TimedOut { after } => write!(f, "still running after {after:?}"),
            RunError::Output(e) => write!(f, "cannot read its output: {e}"),
        }
    }
}

impl std::error::Error for RunError {}

/// Runs `command` to its end with `stdin` as its standard input (`None`: `/dev/null`), its
/// stdout and stderr captured; a process still running after `limit` is killed and the answer
/// is [`RunError::TimedOut`].
pub fn run(
    command: &mut Command,
    stdin: Option<&str>,
    limit: Duration,
) -> Result<Output, RunError> {
    let input = if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    };
    let mut child = command
        .stdin(input)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(RunError::Spawn)?;
    let writer = child.stdin.take().zip(stdin).map(|(mut pipe, text)| {
        let text = text.to_owned();
        // A child that exits early closes the pipe; that is its business, not an error here.
        thread::spawn(move || {
            let _ = pipe.write_all(text.as_bytes());
        })
    });
    let stdout = read_to_end(child.stdout.take());
    let stderr = read_to_end(child.stderr.take());
    let status = wait_or_kill(&mut child, limit).ok_or(RunError::TimedOut { after: limit })?;
    if let Some(writer) = writer {
        let _ = writer.join();
    }
    Ok(Output {
        code: status.code().unwrap_or(-1),
        stdout: joined(stdout)?,
        stderr: joined(stderr)?,
    })
}

/// Waits for `child` to exit, up to `limit`; one still running then is killed (SIGKILL) and
/// reaped, and the answer is `None`.
pub fn wait_or_kill(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let status = wait_until(child, Instant::now() + limit);
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    status
}

/// Waits for `child` to exit until `deadline` and reaps it; `None` (the child left running)
/// if it has not exited by then. Blocks in `waitid` on a thread instead of polling.
pub fn wait_until(child: &mut Child, deadline: Instant) -> Option<ExitStatus> {
    if let Ok(Some(status)) = child.try_wait() {
        return Some(status);
    }
    let pid = Pid::from_child(child);
    let (exited, seen) = mpsc::channel();
    thread::spawn(move || {
        // WNOWAIT: the child stays a zombie until `child.wait()` reaps it, so a kill by the
        // caller can never reach a process that took over its pid.
        let options = WaitIdOptions::EXITED | WaitIdOptions::NOWAIT;
        while let Err(Errno::INTR) = rustix::process::waitid(WaitId::Pid(pid), options) {}
        let _ = exited.send(());
    });
    let left = deadline.saturating_duration_since(Instant::now());
    seen.recv_timeout(left).ok()?;
    child.wait().ok()
}

/// A thread reading `pipe` (when there is one) to its end.
fn read_to_end<R: Read + Send + 'static>(pipe: Option<R>) -> JoinHandle<io::Result<String>> {
    thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut pipe) = pipe {
            pipe.read_to_string(&mut text)?;
        }
        Ok(text)
    })
}

fn joined(reader: JoinHandle<io::Result<String>>) -> Result<String, RunError> {
    reader
        .join()
        .map_err(|_| RunError::Output(io::Error::other("the reader thread panicked")))?
        .map_err(RunError::Output)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_run_returns_the_exit_code_and_both_streams_with_stdin_passed_through() {
        let out = run(
            Command::new("sh").args(["-c", "cat; echo oops >&2; exit 3"]),
            Some("one\ntwo\n"),
            Duration::from_secs(30),
        )
        .unwrap();
        assert_eq!(
            out,
            Output {
                code: 3,
                stdout: "one\ntwo\n".into(),
                stderr: "oops\n".into(),
            }
        );
    }

    #[test]
    fn without_stdin_the_child_reads_end_of_file() {
        let out = run(&mut Command::new("cat"), None, Duration::from_secs(30)).unwrap();
        assert_eq!((out.code, out.stdout.as_str()), (0, ""));
    }

    #[test]
    fn a_child_still_running_at_the_limit_is_killed_and_reaped() {
        let mut child = Command::new("sleep").arg("600").spawn().unwrap();
        let pid = child.id();
        assert_eq!(wait_or_kill(&mut child, Duration::from_millis(50)), None);
        assert!(!crate::procfs::alive(pid));
        let err = run(
            Command::new("sleep").arg("600"),
            None,
            Duration::from_millis(50),
        )
        .unwrap_err();
        assert!(matches!(err, RunError::TimedOut { .. }), "{err}");
    }

    #[test]
    fn wait_until_leaves_a_running_child_running_and_reaps_one_that_exited() {
        let mut child = Command::new("sleep").arg("600").spawn().unwrap();
        let soon = std::time::Instant::now() + Duration::from_millis(50);
        assert_eq!(wait_until(&mut child, soon), None);
        assert!(crate::procfs::alive(child.id()));
        child.kill().unwrap();
        let later = std::time::Instant::now() + Duration::from_secs(30);
        assert!(wait_until(&mut child, later).is_some_and(|s| !s.success()));
    }

    #[test]
    fn output_that_is_not_utf8_is_an_error() {
        let err = run(
            Command::new("printf").arg("\\377"),
            None,
            Duration::from_secs(30),
        )
        .unwrap_err();
        assert!(matches!(err, RunError::Output(_)), "{err}");
    }
}
