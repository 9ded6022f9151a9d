//! What every path of snowcat shares: the options every subcommand takes ([`Common`], parsed
//! by clap in `main`) and how a run ends badly ([`Failure`], which `main` maps to the exit
//! code). The subcommand modules take a `Common` in and hand a `Failure` back out.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

/// Options every subcommand takes.
#[derive(Debug, Args)]
pub struct Common {
    /// Server address, host:port.
    #[arg(
        long,
        env = "SNOWLEASE_ADDR",
        default_value = "127.0.0.1:7609",
        global = true
    )]
    pub addr: String,
    /// Milliseconds to wait for a connection or a reply before giving up.
    #[arg(long, default_value_t = 5000, global = true, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout_ms: u64,
    /// Token sent in HELLO, for servers that require one (in the stdin mode, a HELLO with it
    /// goes first).
    #[arg(long, env = "SNOWLEASE_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// Speak TLS to the server (the lease port of a server started with --tls-cert).
    #[arg(long, global = true, requires = "tls_ca")]
    pub tls: bool,
    /// With --tls: PEM file of the CA certificates the server's certificate must chain to.
    #[arg(long, global = true, value_name = "FILE", requires = "tls")]
    pub tls_ca: Option<PathBuf>,
    /// With --tls: the name the server's certificate must carry. Default: the host of --addr.
    #[arg(long, global = true, value_name = "NAME", requires = "tls")]
    pub tls_server_name: Option<String>,
    /// With --tls: client certificate (PEM) for servers that require one (--tls-client-ca).
    #[arg(long, global = true, value_name = "FILE", requires_all = ["tls", "tls_key"])]
    pub tls_cert: Option<PathBuf>,
    /// With --tls-cert: its private key (PEM).
    #[arg(long, global = true, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

impl Common {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

/// How a run ended badly; the variant picks the exit code.
#[derive(Debug)]
pub enum Failure {
    /// Bad flags or arguments (exit 2).
    Usage(String),
    /// The server could not be reached (exit 2).
    Connect(String),
    /// The server or the input said no (exit 1).
    Failed(String),
    /// Already reported line by line; exit 1 without another message.
    Reported,
    /// stdout was closed (e.g. `| head`): stop quietly with success.
    StdoutClosed,
}

impl Failure {
    /// Maps an error writing stdout: a closed pipe ends the run quietly.
    pub fn stdout(e: std::io::Error) -> Failure {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            Failure::StdoutClosed
        } else {
            Failure::Failed(format!("cannot write to stdout: {e}"))
        }
    }
}
