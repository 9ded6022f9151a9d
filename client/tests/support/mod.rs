//! Helpers for tests that make servers go quiet: the real server binary started as a child
//! process (so it can be stopped with SIGSTOP and resumed with SIGCONT), and an in-process
//! TCP proxy that can hold every byte in both directions, which looks the same to a client
//! (connections stay open, nothing answers) without needing the binary.
//!
//! A test finds the binary with [`server_binary`]: `SNOWLEASE_SERVER_BIN`, else the
//! `snowlease-server` that cargo built beside this test (`target/{release,debug}`, or under
//! `CARGO_TARGET_DIR`). `cargo test -p snowlease` alone does not build it;
//! `cargo test --workspace` and `cargo build -p snowlease-server` do.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use snowlease::client::Backoff;
use snowlease::ClientConfig;
use snowlease_testkit::{self as testkit, Signal};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// How long an admin request may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// The server binary to run, if there is one: see the module docs.
pub fn server_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("SNOWLEASE_SERVER_BIN") {
        return Some(PathBuf::from(path));
    }
    let mut dirs = Vec::new();
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        let target = PathBuf::from(target);
        dirs.push(target.join("release"));
        dirs.push(target.join("debug"));
    }
    // This test runs as target/<profile>/deps/<name>-<hash>.
    if let Some(profile) = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.to_path_buf()))
    {
        if let Some(target) = profile.parent() {
            dirs.push(target.join("release"));
        }
        dirs.push(profile);
    }
    dirs.into_iter()
        .map(|dir| dir.join("snowlease-server"))
        .find(|path| path.is_file())
}

/// The binary, or `None` after saying loudly why the test is skipped. Under CI (`CI` set) a
/// missing binary fails the test instead, so CI cannot skip it silently.
pub fn server_binary_or_skip(test: &str) -> Option<PathBuf> {
    let found = server_binary();
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{test}: no snowlease-server binary (set SNOWLEASE_SERVER_BIN or build it)"
        );
        eprintln!(
            "SKIPPED {test}: no snowlease-server binary; set SNOWLEASE_SERVER_BIN or run \
             `cargo build -p snowlease-server` first"
        );
    }
    found
}

/// A server binary running as a child process (the shared harness, `snowlease-testkit`),
/// killed when dropped, with the default connection limits a client meets in production.
pub struct ServerProcess {
    process: testkit::ServerProcess,
    /// The lease port.
    pub addr: SocketAddr,
    /// The admin (HTTP) port.
    pub admin: SocketAddr,
}

impl ServerProcess {
    /// Starts `bin` as worker `worker_id` with one serving thread on loopback ports picked by
    /// the OS and a fresh state directory; `pin` runs it under `taskset -c <pin>`.
    pub fn start(bin: &PathBuf, worker_id: u16, pin: Option<&str>) -> ServerProcess {
        let worker = worker_id.to_string();
        ServerProcess::start_with(bin, &["--worker-id", &worker, "--threads", "1"], pin)
    }

    /// Starts `bin` with `args` (worker ids, threads, ...) on loopback ports picked by the OS
    /// and a fresh state directory; `pin` runs it under `taskset -c <pin>` (which execs it,
    /// so [`ServerProcess::pid`] is the server's).
    pub fn start_with(bin: &PathBuf, args: &[&str], pin: Option<&str>) -> ServerProcess {
        let mut command = testkit::ServerCommand::new(bin)
            .args(args)
            // The harness lifts these two limits for hostile tests; clients meet the defaults.
            .env_remove("SNOWLEASE_MAX_CONNECTIONS_PER_PEER")
            .env_remove("SNOWLEASE_FIRST_FRAME_TIMEOUT_MS");
        if let Some(cpus) = pin {
            command = command.wrapper(["taskset", "-c", cpus]);
        }
        let process = command.spawn().unwrap_or_else(|e| panic!("{e}"));
        ServerProcess {
            addr: process.lease_addr(),
            admin: process.admin_addr(),
            process,
        }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// SIGTERM: the server drains (GOAWAY to every connection) and exits.
    pub fn terminate(&self) {
        self.signal(Signal::Term);
    }

    /// Waits up to `limit` for the process to exit; returns whether it did.
    pub fn wait_exit(&mut self, limit: Duration) -> bool {
        self.process.wait_exit(limit).is_some()
    }

    /// SIGSTOP: the process stops; its sockets stay open and the kernel still accepts
    /// connections into the backlog, but nothing is read or answered.
    pub fn stop(&self) {
        self.signal(Signal::Stop);
    }

    /// SIGCONT: the process carries on where it stopped.
    pub fn resume(&self) {
        self.signal(Signal::Cont);
    }

    fn signal(&self, signal: Signal) {
        self.process
            .signal(signal)
            .unwrap_or_else(|e| panic!("{signal:?}: {e}"));
    }
}

/// A TCP proxy on an OS-assigned loopback port in front of `upstream` that can go silent:
/// while paused it accepts connections and keeps them open but forwards no byte either way
/// (what a client sees of a server stopped with SIGSTOP or behind a silent drop); resumed, it
/// delivers what it held and carries on.
pub struct PausableProxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    paused: watch::Sender<bool>,
}

impl PausableProxy {
    /// Starts the proxy on the current runtime.
    pub async fn start(upstream: SocketAddr) -> PausableProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (paused, watch) = watch::channel(false);
        let paused_rx = Arc::new(watch);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let watch = (*paused_rx).clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::join!(pump(cr, sw, watch.clone()), pump(sr, cw, watch));
                });
            }
        });
        PausableProxy { addr, paused }
    }

    /// Stops forwarding.
    pub fn pause(&self) {
        self.paused.send_replace(true);
    }

    /// Forwards again, held bytes first.
    pub fn resume(&self) {
        self.paused.send_replace(false);
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut paused: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if paused.wait_for(|p| !*p).await.is_err() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        // Bytes read just before a pause are held until the resume, like everything else.
        if paused.wait_for(|p| !*p).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// The body of `GET path` on an admin port.
pub fn http_get(addr: SocketAddr, path: &str) -> String {
    testkit::http::get(addr, path, &[], HTTP_TIMEOUT)
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
        .body
}

/// The value of the sample `name` (with its labels, e.g. `m{worker="1"}`) in Prometheus text,
/// 0 if absent.
pub fn metric(text: &str, name: &str) -> f64 {
    testkit::http::metric_value(text, name).unwrap_or(0.0)
}

/// Short timeouts and backoff so failure paths finish quickly.
pub fn quick(endpoints: impl IntoIterator<Item = String>) -> ClientConfig {
    ClientConfig::new(endpoints)
        .timeout(Duration::from_secs(5))
        .backoff(Backoff {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(100),
        })
}
