//! `snowlease-bench serve [--server-bin P] [--server-log F] -- SERVER_ARGS...`: a server for
//! a script, started through the shared harness.
//!
//! Prints `{"pid":N,"lease_addr":"127.0.0.1:P","admin_addr":"127.0.0.1:Q","state_dir":D}`
//! as one line on stdout once the server is serving (pid is the server's, for `/proc`), then
//! waits. SIGTERM or SIGINT stops the server gracefully (SIGTERM, then SIGKILL after 8 s) and
//! exits 0 if it exited 0; a server that exits by itself ends this with exit 1. The signal
//! handlers are installed before the server starts, so a signal at any moment stops both.
//! CPU affinity and the session (autogroup) are inherited: pin this command and the server
//! is pinned.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::signal::unix::{signal, SignalKind};

use crate::spawn;

/// Arguments of `serve`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The server binary (default: snowlease-server next to this binary).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Copy the server's log here.
    #[arg(long)]
    server_log: Option<PathBuf>,
    /// Bound on reaching the `serving` line, in milliseconds.
    #[arg(long, default_value_t = 15_000)]
    startup_timeout_ms: u64,
    /// Arguments for the server, after `--`.
    #[arg(last = true)]
    server_args: Vec<String>,
}

#[derive(Serialize)]
struct Serving {
    pid: u32,
    lease_addr: String,
    admin_addr: String,
    state_dir: Option<PathBuf>,
}

/// Runs `serve`.
pub fn run(args: &Args) -> Result<bool, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let (mut term, mut int) = rt
        .block_on(async {
            Ok::<_, std::io::Error>((
                signal(SignalKind::terminate())?,
                signal(SignalKind::interrupt())?,
            ))
        })
        .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    let bin = spawn::locate(args.server_bin.as_deref())?;
    let mut server = spawn::spawn(
        &bin,
        &args.server_args,
        args.server_log.as_deref(),
        Duration::from_millis(args.startup_timeout_ms),
    )?;
    let line = serde_json::to_string(&Serving {
        pid: server.pid(),
        lease_addr: server.lease_addr().to_string(),
        admin_addr: server.admin_addr().to_string(),
        state_dir: server.state_dir().map(ToOwned::to_owned),
    })
    .map_err(|e| format!("cannot serialise: {e}"))?;
    let mut out = std::io::stdout();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .map_err(|e| format!("cannot write to stdout: {e}"))?;
    let log = server.log().clone();
    let signalled = rt.block_on(async {
        // A day: the bound only keeps the blocking wait finite; a signal or the exit ends it.
        let exited = tokio::task::spawn_blocking(move || {
            log.wait_closed(Instant::now() + Duration::from_secs(86_400))
        });
        tokio::select! {
            _ = term.recv() => true,
            _ = int.recv() => true,
            _ = exited => false,
        }
    });
    let stopped = server.stop(spawn::STOP_GRACE);
    eprintln!("snowlease-bench serve: server {stopped}");
    rt.shutdown_timeout(Duration::from_secs(1));
    Ok(signalled && matches!(stopped, snowlease_testkit::Stopped::Terminated(s) if s.success()))
}
