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

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use snowlease::client::Backoff;
use snowlease::ClientConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// How long a server binary may take to print its start line.
const START_TIMEOUT: Duration = Duration::from_secs(30);

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

/// A server binary running as a child process, killed when dropped.
pub struct ServerProcess {
    child: Child,
    /// The lease port.
    pub addr: SocketAddr,
    /// The admin (HTTP) port.
    pub admin: SocketAddr,
    state_dir: PathBuf,
}

static NEXT_DIR: AtomicU64 = AtomicU64::new(0);

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
        let state_dir = std::env::temp_dir().join(format!(
            "snowlease-client-test-{}-{}",
            std::process::id(),
            NEXT_DIR.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&state_dir).unwrap();
        let mut cmd = match pin {
            Some(cpus) => {
                let mut c = Command::new("taskset");
                c.args(["-c", cpus]).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        cmd.args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .args(["--log-format", "json"])
            .args(args)
            .arg("--state-dir")
            .arg(&state_dir)
            .env_remove("WORKER_ID")
            .env_remove("POD_NAME")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn snowlease-server");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            // Keep draining after the start line, so the server never blocks on a full pipe.
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let unbound = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut server = ServerProcess {
            child,
            addr: unbound,
            admin: unbound,
            state_dir,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        while server.addr == unbound {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx
                .recv_timeout(left)
                .expect("the server printed no `serving` line");
            if line.contains("\"serving\"") {
                server.addr = json_string(&line, "lease_addr").parse().unwrap();
                server.admin = json_string(&line, "admin_addr").parse().unwrap();
            }
        }
        server
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM: the server drains (GOAWAY to every connection) and exits.
    pub fn terminate(&self) {
        self.signal("TERM");
    }

    /// Waits up to `limit` for the process to exit; returns whether it did.
    pub fn wait_exit(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            // Signal 0 checks the process exists; a zombie (exited, not yet reaped) still
            // does, so look at its state instead.
            let state = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
                .unwrap_or_default();
            let gone = state
                .rfind(')')
                .and_then(|i| state[i + 2..].chars().next())
                .is_none_or(|c| c == 'Z' || c == 'X');
            if gone {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    /// SIGSTOP: the process stops; its sockets stay open and the kernel still accepts
    /// connections into the backlog, but nothing is read or answered.
    pub fn stop(&self) {
        self.signal("STOP");
    }

    /// SIGCONT: the process carries on where it stopped.
    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name} failed");
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}

/// The string value of `"name":"..."` in a JSON log line, flat or nested under `fields`.
fn json_string(line: &str, name: &str) -> String {
    let key = format!("\"{name}\":\"");
    let start = line.find(&key).map(|i| i + key.len()).unwrap();
    let len = line[start..].find('"').unwrap();
    line[start..start + len].to_owned()
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

/// The body of `GET path` on an admin port (HTTP/1.1, `Connection: close`).
pub fn http_get(addr: SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(START_TIMEOUT)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    let body = text.find("\r\n\r\n").map_or(0, |i| i + 4);
    text[body..].to_owned()
}

/// The value of the sample `name` (with its labels, e.g. `m{worker="1"}`) in Prometheus text,
/// 0 if absent.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

/// User plus system CPU time of process `pid` so far, in seconds (`/proc/PID/stat`, fields 14
/// and 15, in clock ticks of 1/100 s, which Linux fixes at 100 for user space).
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The command name (field 2) may hold spaces; fields after it follow its closing ')'.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

/// On-CPU time of every thread of process `pid` so far, in seconds, from
/// `/proc/PID/task/*/schedstat` (nanoseconds): the same time as [`cpu_seconds`] without its
/// 10 ms granularity. Threads that ended are not counted.
pub fn cpu_seconds_precise(pid: u32) -> f64 {
    let mut ns = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        if let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) {
            ns += text
                .split_whitespace()
                .next()
                .map_or(0, |v| v.parse().unwrap());
        }
    }
    ns as f64 / 1e9
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
