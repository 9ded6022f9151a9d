//! snowlease-testkit: one way to run the real `snowlease-server` binary, shared by the
//! server's integration tests and the bench (`snowlease-bench --spawn` and its `serve` and
//! `startup` subcommands).
//!
//! # Layout
//! - [`process`]: [`ServerCommand`] builds the command line (wrapper, arguments, a hermetic
//!   environment with loopback ports, JSON logs and a fresh state directory per server) and
//!   spawns it; [`ServerProcess`] is the running server: addresses, log, signals, exit,
//!   `/proc` figures, the admin port. Dropping it kills and reaps the process.
//! - [`log`]: [`Log`] keeps every stderr line as it arrives and lets a caller wait (bounded)
//!   for a line that satisfies a condition; [`parse_start_line`] reads the addresses out of
//!   the `serving` line.
//! - [`http`]: a small HTTP GET for the admin port and lookups in `/metrics` text.
//! - [`procfs`]: resident memory, descriptors, threads, open-file limits, CPU time, liveness.
//! - [`cli`]: runs a project command-line binary (bench, snowcat) to its end, bounded: exit
//!   code, stdout, stderr; a child still running at the limit is killed and reaped.
//! - [`pki`]: a throwaway CA and the leaf certificates it signs, for TLS tests and the bench.
//!
//! Nothing here knows the wire protocol: tests bring their own clients, so that this crate
//! never hides what a test asserts.

pub mod cli;
pub mod http;
pub mod log;
pub mod pki;
pub mod process;
pub mod procfs;

pub use http::HttpReply;
pub use log::{parse_start_line, Log, LogWaitError};
pub use process::{Finished, ServerCommand, ServerProcess, Signal, SpawnError, Stopped};

/// Debian's libfaketime, preloaded into a server to shift its clock (`LD_PRELOAD` plus
/// `FAKETIME=-10s`, or `FAKETIME_TIMESTAMP_FILE` to change it while it runs).
pub const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

pub use tempfile::TempDir;

/// A fresh, empty temporary directory named `snowlease-{prefix}-...`, removed when dropped
/// (also when the test panics): for token files, state directories shared by a restart, and
/// clock files.
pub fn temp_dir(prefix: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(&format!("snowlease-{prefix}-"))
        .tempdir()
        .unwrap_or_else(|e| panic!("cannot create a temporary directory: {e}"))
}
