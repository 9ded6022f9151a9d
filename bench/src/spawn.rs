//! `--spawn`: start a `snowlease-server` child on loopback ports chosen by the OS, learn the
//! ports from its start line, and stop it (SIGTERM, then SIGKILL after a grace period) when
//! the [`SpawnedServer`] is dropped.
//!
//! The child's stderr flows line by line through [`parse_start_line`] until the `serving`
//! line names `lease_addr` and `admin_addr`; after that a thread keeps draining the pipe (to
//! `--server-log` or nowhere) so a chatty server never blocks on a full pipe.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The server binary's file name.
pub const SERVER_BIN: &str = "snowlease-server";

/// A running child server.
#[derive(Debug)]
pub struct SpawnedServer {
    child: Child,
    /// The LEASE port it bound.
    pub lease_addr: SocketAddr,
    /// The admin HTTP port it bound.
    pub admin_addr: SocketAddr,
}

/// Where to find the server: `explicit`, else next to the running executable.
pub fn locate(explicit: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(path) = explicit {
        return Ok(path.to_owned());
    }
    let exe = std::env::current_exe()
        .map_err(|e| format!("cannot find this executable's directory: {e}"))?;
    let dir = exe
        .parent()
        .ok_or_else(|| format!("{} has no parent directory", exe.display()))?;
    let candidate = dir.join(SERVER_BIN);
    if candidate.is_file() {
        Ok(candidate)
    } else {
        Err(format!(
            "{} not found next to {}; build it (cargo build --release -p snowlease-server) or pass --server-bin",
            candidate.display(),
            exe.display()
        ))
    }
}

/// Starts `bin` on 127.0.0.1 ports 0 with JSON logs plus `extra` arguments, and waits up to
/// `timeout` for its start line.
pub fn spawn(
    bin: &Path,
    extra: &[String],
    log: Option<&Path>,
    timeout: Duration,
) -> Result<SpawnedServer, String> {
    let mut child = Command::new(bin)
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(["--log-format", "json"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    let Some(stderr) = child.stderr.take() else {
        let _ = child.kill();
        return Err("the server's stderr was not captured".into());
    };
    let mut log_file = match log {
        Some(path) => Some(
            std::fs::File::create(path)
                .map_err(|e| format!("cannot create {}: {e}", path.display()))?,
        ),
        None => None,
    };
    let (found, addrs) = mpsc::channel();
    // The thread lives as long as the child's stderr: it ends when the child exits.
    std::thread::spawn(move || {
        let mut found = Some(found);
        let mut seen = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(file) = log_file.as_mut() {
                let _ = writeln!(file, "{line}");
            }
            if let Some(tx) = &found {
                if let Some(pair) = parse_start_line(&line) {
                    let _ = tx.send(Ok(pair));
                    found = None;
                } else if seen.len() < 20 {
                    seen.push(line);
                }
            }
        }
        if let Some(tx) = found {
            let _ = tx.send(Err(seen.join("\n")));
        }
    });
    let started = Instant::now();
    match addrs.recv_timeout(timeout) {
        Ok(Ok((lease_addr, admin_addr))) => Ok(SpawnedServer {
            child,
            lease_addr,
            admin_addr,
        }),
        Ok(Err(output)) => {
            let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
            Err(format!(
                "{} exited ({status}) before serving; its output:\n{output}",
                bin.display()
            ))
        }
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(format!(
                "{} printed no `serving` line within {:?}",
                bin.display(),
                started.elapsed()
            ))
        }
    }
}

/// Finds `lease_addr` and `admin_addr` in the server's start line, JSON (fields at the top
/// level or under `fields`) or human (`key=value`).
pub fn parse_start_line(line: &str) -> Option<(SocketAddr, SocketAddr)> {
    if let Ok(value) = serde_json::from_str::<serde_json::Value>(line) {
        let field = |name: &str| {
            value
                .get(name)
                .or_else(|| value.get("fields").and_then(|f| f.get(name)))
                .and_then(|v| v.as_str())
                .and_then(|s| s.parse::<SocketAddr>().ok())
        };
        return Some((field("lease_addr")?, field("admin_addr")?));
    }
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|word| word.strip_prefix(name)?.strip_prefix('='))
            .map(|v| v.trim_matches('"'))
            .and_then(|v| v.parse::<SocketAddr>().ok())
    };
    Some((field("lease_addr")?, field("admin_addr")?))
}

/// How long a SIGTERMed server gets to drain before SIGKILL: above its 5 s default drain.
const STOP_GRACE: Duration = Duration::from_secs(8);

impl SpawnedServer {
    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, wait up to [`STOP_GRACE`], then SIGKILL. Returns how it ended.
    pub fn stop(&mut self) -> String {
        if let Ok(Some(status)) = self.child.try_wait() {
            return format!("had already exited ({status})");
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + STOP_GRACE;
        // Bounded by STOP_GRACE; polling a child is the portable way without extra crates.
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return format!("stopped by SIGTERM ({status})");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        format!("killed after {STOP_GRACE:?} without exiting on SIGTERM")
    }
}

impl Drop for SpawnedServer {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn addrs(a: &str, b: &str) -> Option<(SocketAddr, SocketAddr)> {
        Some((a.parse().ok()?, b.parse().ok()?))
    }

    #[test]
    fn a_json_start_line_gives_both_addresses() {
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
    fn a_missing_server_binary_is_reported_with_the_fix() {
        let err = spawn(
            Path::new("/nonexistent/snowlease-server"),
            &[],
            None,
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(err.contains("cannot start"), "{err}");
    }
}
