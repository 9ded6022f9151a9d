//! Starting the real server binary and holding it while a test or bench talks to it.
//!
//! [`ServerCommand`] builds the command line: an optional wrapper (`prlimit ... --`,
//! `taskset -c 0`), the binary, the caller's arguments, and an environment made hermetic
//! first (inherited `SNOWLEASE_*`, `WORKER_ID`, `POD_NAME`, `KUBERNETES_SERVICE_HOST` and
//! `RUST_LOG` removed) and then given the defaults every spawned server needs, as
//! environment variables so that an explicit flag still wins (clap prefers a flag to its
//! variable, and refuses a flag given twice):
//!
//! | variable | default | why |
//! |---|---|---|
//! | `SNOWLEASE_LISTEN`, `SNOWLEASE_ADMIN_LISTEN` | `127.0.0.1:0` | OS-chosen loopback ports, read back from the log |
//! | `SNOWLEASE_LOG_FORMAT` | `json` | the `serving` line is parsed |
//! | `SNOWLEASE_STATE_DIR` | a fresh temporary directory per server | the server locks its state directory: parallel servers must never share one |
//! | `SNOWLEASE_MAX_CONNECTIONS_PER_PEER` | `0` (no per-peer cap) | every loopback client is one peer, 127.0.0.1; tests of the cap pass `--max-connections-per-peer` |
//! | `SNOWLEASE_FIRST_FRAME_TIMEOUT_MS` | `0` (the idle timeout only) | tests that hold silent connections measure other things; tests of the deadline pass the flag |
//!
//! [`ServerCommand::spawn`] starts it, hands stderr to a reader thread ([`Log::drain`]) and
//! waits (bounded) for the `serving` line, failing at once if the process exits first.
//! [`ServerProcess`] then offers what tests and the bench ask of a running server: its
//! addresses and log, signals, exit, `/proc` figures and the admin port. Dropping it kills
//! the process (SIGKILL) and reaps it, so a failing test leaves nothing behind; the fresh
//! state directory is removed with it.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::http::{self, HttpReply};
use crate::log::{parse_start_line, Log, LogWaitError};
use crate::procfs;

/// Variables removed from the inherited environment besides every `SNOWLEASE_*`: each one
/// changes which worker id the server picks or what it logs.
const SCRUBBED: [&str; 4] = [
    "WORKER_ID",
    "POD_NAME",
    "KUBERNETES_SERVICE_HOST",
    "RUST_LOG",
];

/// Default bound on reaching the `serving` line. A start takes about 15 ms here (bench row
/// 5); the bound only has to outlast a machine loaded by parallel test binaries.
pub const DEFAULT_STARTUP_TIMEOUT: Duration = Duration::from_secs(15);

/// Bound on each admin-port request made through [`ServerProcess`].
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the spawned server keeps its state.
#[derive(Debug, Clone)]
enum StateDir {
    /// A fresh temporary directory, removed with the [`ServerProcess`].
    Fresh,
    /// This directory (the caller owns it).
    At(PathBuf),
    /// Nothing set: the caller's arguments decide.
    Unset,
}

/// How to start a server: program, wrapper, arguments, environment. Built by value:
/// `ServerCommand::new(bin).args([...]).env("WORKER_ID", "3").spawn()`.
#[derive(Debug, Clone)]
pub struct ServerCommand {
    program: PathBuf,
    wrapper: Vec<OsString>,
    args: Vec<OsString>,
    env: Vec<(OsString, Option<OsString>)>,
    state_dir: StateDir,
    startup_timeout: Duration,
    log_file: Option<PathBuf>,
}

/// Why a server did not reach its `serving` line.
#[derive(Debug)]
pub enum SpawnError {
    /// The program (or its wrapper) could not be started.
    Start {
        /// What was run.
        program: PathBuf,
        /// Why not.
        source: io::Error,
    },
    /// A temporary state directory or the log copy could not be created.
    Setup(String),
    /// The process exited before serving.
    Exited {
        /// How it ended.
        status: Option<ExitStatus>,
        /// Everything it wrote to stderr.
        log: Vec<String>,
    },
    /// No `serving` line within the start-up bound; the process was killed.
    TimedOut {
        /// The bound.
        after: Duration,
        /// Everything it wrote to stderr.
        log: Vec<String>,
    },
}

impl fmt::Display for SpawnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpawnError::Start { program, source } => {
                write!(f, "cannot start {}: {source}", program.display())
            }
            SpawnError::Setup(what) => f.write_str(what),
            SpawnError::Exited { status, log } => {
                let status = status.map_or_else(|| "unknown status".into(), |s| s.to_string());
                write!(
                    f,
                    "the server exited ({status}) before serving; its log:\n{}",
                    log.join("\n")
                )
            }
            SpawnError::TimedOut { after, log } => write!(
                f,
                "the server printed no `serving` line within {after:?}; its log:\n{}",
                log.join("\n")
            ),
        }
    }
}

impl std::error::Error for SpawnError {}

/// A process run to its end by [`ServerCommand::run_to_exit`].
#[derive(Debug)]
pub struct Finished {
    /// How it ended.
    pub status: ExitStatus,
    /// Its stderr, line by line.
    pub log: Vec<String>,
}

impl Finished {
    /// Its stderr as one string.
    pub fn stderr(&self) -> String {
        self.log.join("\n")
    }
}

impl ServerCommand {
    /// The server at `program`, with the defaults above.
    pub fn new(program: impl Into<PathBuf>) -> ServerCommand {
        ServerCommand {
            program: program.into(),
            wrapper: Vec::new(),
            args: Vec::new(),
            env: Vec::new(),
            state_dir: StateDir::Fresh,
            startup_timeout: DEFAULT_STARTUP_TIMEOUT,
            log_file: None,
        }
    }

    /// Runs the server behind `prefix` (e.g. `["prlimit", "--nofile=256:256", "--"]`): the
    /// process started is `prefix[0]`, which must exec the server in place so that the pid,
    /// signals and exit status are the server's.
    pub fn wrapper<I, S>(mut self, prefix: I) -> ServerCommand
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.wrapper = prefix.into_iter().map(|s| s.as_ref().to_owned()).collect();
        self
    }

    /// One more argument for the server.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> ServerCommand {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// More arguments for the server.
    pub fn args<I, S>(mut self, args: I) -> ServerCommand
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|s| s.as_ref().to_owned()));
        self
    }

    /// Sets a variable (after the scrubbing and the defaults, so it overrides both).
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> ServerCommand {
        self.env
            .push((key.as_ref().to_owned(), Some(value.as_ref().to_owned())));
        self
    }

    /// Sets several variables.
    pub fn envs<I, K, V>(self, vars: I) -> ServerCommand
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        vars.into_iter().fold(self, |c, (k, v)| c.env(k, v))
    }

    /// Removes a variable, a default included.
    pub fn env_remove(mut self, key: impl AsRef<OsStr>) -> ServerCommand {
        self.env.push((key.as_ref().to_owned(), None));
        self
    }

    /// Uses `dir` as the state directory (through `SNOWLEASE_STATE_DIR`) instead of a fresh
    /// one: for a restart that must find the previous run's state.
    pub fn state_dir(mut self, dir: impl Into<PathBuf>) -> ServerCommand {
        self.state_dir = StateDir::At(dir.into());
        self
    }

    /// Sets no state directory: the arguments decide (e.g. `--no-state-dir`).
    pub fn without_state_dir(mut self) -> ServerCommand {
        self.state_dir = StateDir::Unset;
        self
    }

    /// Bound on reaching the `serving` line (default [`DEFAULT_STARTUP_TIMEOUT`]).
    pub fn startup_timeout(mut self, bound: Duration) -> ServerCommand {
        self.startup_timeout = bound;
        self
    }

    /// Also copies every stderr line into `path` (created or truncated).
    pub fn log_file(mut self, path: impl Into<PathBuf>) -> ServerCommand {
        self.log_file = Some(path.into());
        self
    }

    /// Whether the arguments set the state directory themselves.
    fn args_choose_state(&self) -> bool {
        self.args.iter().any(|a| {
            let a = a.to_string_lossy();
            a == "--state-dir" || a.starts_with("--state-dir=") || a == "--no-state-dir"
        })
    }

    /// The fresh state directory this start needs, if any.
    fn fresh_state(&self) -> Result<Option<TempDir>, SpawnError> {
        if !matches!(self.state_dir, StateDir::Fresh) || self.args_choose_state() {
            return Ok(None);
        }
        tempfile::Builder::new()
            .prefix("snowlease-state-")
            .tempdir()
            .map(Some)
            .map_err(|e| SpawnError::Setup(format!("cannot create a state directory: {e}")))
    }

    /// The command line with the environment described in the module docs.
    fn command(&self, fresh_state: Option<&Path>) -> Command {
        let mut cmd = match self.wrapper.split_first() {
            None => Command::new(&self.program),
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(&self.program);
                c
            }
        };
        cmd.args(&self.args);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("SNOWLEASE_") {
                cmd.env_remove(key);
            }
        }
        for key in SCRUBBED {
            cmd.env_remove(key);
        }
        cmd.env("SNOWLEASE_LISTEN", "127.0.0.1:0")
            .env("SNOWLEASE_ADMIN_LISTEN", "127.0.0.1:0")
            .env("SNOWLEASE_LOG_FORMAT", "json")
            .env("SNOWLEASE_MAX_CONNECTIONS_PER_PEER", "0")
            .env("SNOWLEASE_FIRST_FRAME_TIMEOUT_MS", "0");
        let state = match &self.state_dir {
            StateDir::At(dir) if !self.args_choose_state() => Some(dir.as_path()),
            _ => fresh_state,
        };
        if let Some(dir) = state {
            cmd.env("SNOWLEASE_STATE_DIR", dir);
        }
        for (key, value) in &self.env {
            match value {
                Some(v) => cmd.env(key, v),
                None => cmd.env_remove(key),
            };
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        cmd
    }

    fn start(&self, fresh: Option<&TempDir>) -> Result<(Child, Arc<Log>), SpawnError> {
        let tee = match &self.log_file {
            Some(path) => Some(std::fs::File::create(path).map_err(|e| {
                SpawnError::Setup(format!("cannot create {}: {e}", path.display()))
            })?),
            None => None,
        };
        let mut child = self
            .command(fresh.map(TempDir::path))
            .spawn()
            .map_err(|source| SpawnError::Start {
                program: self
                    .wrapper
                    .first()
                    .map_or_else(|| self.program.clone(), PathBuf::from),
                source,
            })?;
        let log = Arc::new(Log::default());
        match child.stderr.take() {
            Some(stderr) => {
                let sink = log.clone();
                // Lives as long as the child's stderr: it ends when the process exits.
                thread::spawn(move || sink.drain(stderr, tee));
            }
            None => log.close(),
        }
        Ok((child, log))
    }

    /// Starts the server and waits for its `serving` line.
    pub fn spawn(&self) -> Result<ServerProcess, SpawnError> {
        let fresh = self.fresh_state()?;
        let (child, log) = self.start(fresh.as_ref())?;
        let state_path = match &self.state_dir {
            StateDir::At(dir) if !self.args_choose_state() => Some(dir.clone()),
            _ => fresh.as_ref().map(|d| d.path().to_owned()),
        };
        let unbound = SocketAddr::from(([127, 0, 0, 1], 0));
        // Owned at once, so that a failed start below is still killed and reaped by Drop.
        let mut server = ServerProcess {
            child,
            lease_addr: unbound,
            admin_addr: unbound,
            log,
            serving_line: 0,
            state_path,
            _fresh_state: fresh,
        };
        let deadline = Instant::now() + self.startup_timeout;
        match server
            .log
            .wait_for(0, |l| parse_start_line(l).is_some(), deadline)
        {
            Ok((i, line)) => {
                if let Some((lease, admin)) = parse_start_line(&line) {
                    server.lease_addr = lease;
                    server.admin_addr = admin;
                }
                server.serving_line = i;
                Ok(server)
            }
            Err(LogWaitError::Closed { searched }) => Err(SpawnError::Exited {
                status: server.wait_exit(self.startup_timeout),
                log: searched,
            }),
            Err(LogWaitError::TimedOut { searched }) => {
                server.kill();
                Err(SpawnError::TimedOut {
                    after: self.startup_timeout,
                    log: searched,
                })
            }
        }
    }

    /// Runs the server expecting it to end by itself (a refusal to start), bounded by
    /// `timeout`; a process still running then is killed and reported as
    /// [`SpawnError::TimedOut`].
    pub fn run_to_exit(&self, timeout: Duration) -> Result<Finished, SpawnError> {
        let fresh = self.fresh_state()?;
        let (mut child, log) = self.start(fresh.as_ref())?;
        let deadline = Instant::now() + timeout;
        let closed = log.wait_closed(deadline);
        let status = if closed {
            crate::cli::wait_until(&mut child, deadline)
        } else {
            None
        };
        match status {
            Some(status) => Ok(Finished {
                status,
                log: log.lines(),
            }),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                Err(SpawnError::TimedOut {
                    after: timeout,
                    log: log.lines(),
                })
            }
        }
    }
}

/// A signal to send with [`ServerProcess::signal`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Graceful drain.
    Term,
    /// Like Term (Ctrl-C).
    Int,
    /// Reload the token and TLS files.
    Hup,
    /// Immediate death.
    Kill,
    /// Freeze.
    Stop,
    /// Thaw.
    Cont,
}

impl Signal {
    fn raw(self) -> rustix::process::Signal {
        use rustix::process::Signal as S;
        match self {
            Signal::Term => S::TERM,
            Signal::Int => S::INT,
            Signal::Hup => S::HUP,
            Signal::Kill => S::KILL,
            Signal::Stop => S::STOP,
            Signal::Cont => S::CONT,
        }
    }
}

/// How [`ServerProcess::stop`] ended the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// It had exited before the stop.
    AlreadyExited(ExitStatus),
    /// It exited within the grace period after SIGTERM.
    Terminated(ExitStatus),
    /// It was still running after the grace period and got SIGKILL.
    Killed,
}

impl fmt::Display for Stopped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stopped::AlreadyExited(s) => write!(f, "had already exited ({s})"),
            Stopped::Terminated(s) => write!(f, "stopped by SIGTERM ({s})"),
            Stopped::Killed => f.write_str("killed: still running after the grace period"),
        }
    }
}

/// A running server started by [`ServerCommand::spawn`].
#[derive(Debug)]
pub struct ServerProcess {
    child: Child,
    lease_addr: SocketAddr,
    admin_addr: SocketAddr,
    log: Arc<Log>,
    serving_line: usize,
    state_path: Option<PathBuf>,
    /// Removed when the process is dropped (after it has been killed).
    _fresh_state: Option<TempDir>,
}

impl ServerProcess {
    /// The process id (the server's own: a wrapper must exec it in place).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Where the lease port listens.
    pub fn lease_addr(&self) -> SocketAddr {
        self.lease_addr
    }

    /// Where the admin port listens.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The state directory it was given, when the harness chose it.
    pub fn state_dir(&self) -> Option<&Path> {
        self.state_path.as_deref()
    }

    /// Every stderr line so far, and more as they come.
    pub fn log(&self) -> &Arc<Log> {
        &self.log
    }

    /// The lines up to and including the `serving` line.
    pub fn startup_log(&self) -> Vec<String> {
        let mut lines = self.log.lines();
        lines.truncate(self.serving_line + 1);
        lines
    }

    /// Waits for a line, written at any time since the start, that satisfies `pred`.
    pub fn wait_for_log(
        &self,
        pred: impl Fn(&str) -> bool,
        deadline: Instant,
    ) -> Result<String, LogWaitError> {
        self.log.wait_for(0, pred, deadline).map(|(_, line)| line)
    }

    /// Sends `signal`.
    pub fn signal(&self, signal: Signal) -> io::Result<()> {
        let pid = i32::try_from(self.pid())
            .ok()
            .and_then(rustix::process::Pid::from_raw)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no such pid"))?;
        rustix::process::kill_process(pid, signal.raw()).map_err(io::Error::from)
    }

    /// Whether it still runs (exists and is not a zombie).
    pub fn is_alive(&self) -> bool {
        procfs::alive(self.pid())
    }

    /// Its exit status, if it has exited (reaping it).
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits (bounded) for it to exit; `None` if it still runs after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        // The end of stderr comes with the exit: wait on that first, then reap.
        self.log.wait_closed(deadline);
        crate::cli::wait_until(&mut self.child, deadline)
    }

    /// SIGKILL, and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, up to `grace` for it to exit, then SIGKILL.
    pub fn stop(&mut self, grace: Duration) -> Stopped {
        if let Some(status) = self.try_status() {
            return Stopped::AlreadyExited(status);
        }
        let _ = self.signal(Signal::Term);
        match self.wait_exit(grace) {
            Some(status) => Stopped::Terminated(status),
            None => {
                self.kill();
                Stopped::Killed
            }
        }
    }

    /// Resident memory in KiB, while it runs.
    pub fn rss_kib(&self) -> Option<u64> {
        procfs::rss_kib(self.pid())
    }

    /// Open file descriptors, while it runs.
    pub fn open_fds(&self) -> Option<usize> {
        procfs::open_fds(self.pid())
    }

    /// Threads, while it runs.
    pub fn threads(&self) -> Option<usize> {
        procfs::threads(self.pid())
    }

    /// `GET path` on the admin port with extra `headers`.
    pub fn http_get(&self, path: &str, headers: &[(&str, &str)]) -> io::Result<HttpReply> {
        http::get(self.admin_addr, path, headers, HTTP_TIMEOUT)
    }

    /// The body of `/metrics`.
    pub fn metrics(&self) -> io::Result<String> {
        let reply = self.http_get("/metrics", &[])?;
        if reply.status == 200 {
            Ok(reply.body)
        } else {
            Err(io::Error::other(format!(
                "/metrics answered {}: {}",
                reply.status, reply.body
            )))
        }
    }

    /// The value of one series of `/metrics` (see [`http::metric_value`]); `None` when the
    /// scrape fails or the series is missing.
    pub fn metric(&self, series: &str) -> Option<f64> {
        http::metric_value(&self.metrics().ok()?, series)
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
