//! `--spawn` (and the `serve` and `startup` subcommands): a `snowlease-server` child started
//! through `snowlease-testkit`, the same harness the server's own tests use: loopback ports
//! chosen by the OS and read back from its `serving` line, JSON logs, a fresh state
//! directory of its own unless the arguments choose one, stderr drained for the whole run
//! (into `--server-log` too when given).

use std::path::{Path, PathBuf};
use std::time::Duration;

use snowlease_testkit::{ServerCommand, ServerProcess};

/// The server binary's file name.
pub const SERVER_BIN: &str = "snowlease-server";

/// How long a SIGTERMed server gets to drain before SIGKILL: above its 5 s default drain.
pub const STOP_GRACE: Duration = Duration::from_secs(8);

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

/// The command for `bin` with `extra` arguments, copying its log to `log` when given.
pub fn command(bin: &Path, extra: &[String], log: Option<&Path>) -> ServerCommand {
    let cmd = ServerCommand::new(bin).args(extra);
    match log {
        Some(path) => cmd.log_file(path),
        None => cmd,
    }
}

/// Starts `bin` with `extra` arguments and waits up to `timeout` for its start line.
pub fn spawn(
    bin: &Path,
    extra: &[String],
    log: Option<&Path>,
    timeout: Duration,
) -> Result<ServerProcess, String> {
    command(bin, extra, log)
        .startup_timeout(timeout)
        .spawn()
        .map_err(|e| format!("{}: {e}", bin.display()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

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

    #[test]
    fn locate_takes_an_explicit_path_as_given() {
        assert_eq!(
            locate(Some(Path::new("/opt/x/snowlease-server"))),
            Ok(PathBuf::from("/opt/x/snowlease-server"))
        );
    }
}
