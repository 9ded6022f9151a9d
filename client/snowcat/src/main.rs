//! snowcat: the netcat of the snowlease protocol.
//!
//! Arguments flow through clap into one of five paths, each in its own module: `lease`
//! (pipelined LEASEs, or BULK_LEASEs with `--bulk`, printed as IDs, ranges or runs), `info`
//! and `ping` (HELLO/WELCOME and PING/PONG), `decode` (pure bit arithmetic, optionally asking
//! a server for its layout), and with no subcommand the netcat mode, which turns stdin lines
//! into frames and replies into lines. Every path ends in a [`Failure`] or success, and [`main`] maps that to the exit code:
//! 0 success, 1 the server or the input said no, 2 usage or connect failure.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

mod conn;
mod decode;
mod format;
mod info;
mod lease;
mod netcat;

/// Talk to a snowlease server: lease IDs, inspect it, decode IDs, or type frames by hand.
///
/// With no subcommand, snowcat reads lines from stdin and prints each reply as one line:
///
///   lease 5 [id=N]        ask for 5 IDs (request id optional)
///   bulk 5000000 [id=N]   BULK_LEASE: up to 5,000,000 IDs in runs (after `hello 2`)
///   ping [NONCE]          PING
///   hello [VERSION] [TOKEN]  (VERSION 2 for bulk leases)
///   raw HEX               send bytes as they are (e.g. `raw 00000009 02 00000001 00000005`)
///   # comment             ignored, as are blank lines
///
/// Exit code: 0 no error, 1 a server ERROR, an unparsable line or a closed connection,
/// 2 usage or connect failure.
// This comment is `--help` text, verbatim: its brackets are usage, not intra-doc links.
#[allow(rustdoc::broken_intra_doc_links)]
#[derive(Debug, Parser)]
#[command(name = "snowcat", version, verbatim_doc_comment)]
struct Cli {
    #[command(flatten)]
    common: Common,
    /// Netcat mode: also print the bytes of every frame, `> ` sent and `< ` received.
    #[arg(long)]
    hex: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

/// Options every subcommand takes.
#[derive(Debug, Args)]
struct Common {
    /// Server address, host:port.
    #[arg(
        long,
        env = "SNOWLEASE_ADDR",
        default_value = "127.0.0.1:7609",
        global = true
    )]
    addr: String,
    /// Milliseconds to wait for a connection or a reply before giving up.
    #[arg(long, default_value_t = 5000, global = true, value_parser = clap::value_parser!(u64).range(1..))]
    timeout_ms: u64,
    /// Token sent in HELLO, for servers that require one (in the stdin mode, a HELLO with it
    /// goes first).
    #[arg(long, env = "SNOWLEASE_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// Speak TLS to the server (the lease port of a server started with --tls-cert).
    #[arg(long, global = true, requires = "tls_ca")]
    tls: bool,
    /// With --tls: PEM file of the CA certificates the server's certificate must chain to.
    #[arg(long, global = true, value_name = "FILE", requires = "tls")]
    tls_ca: Option<PathBuf>,
    /// With --tls: the name the server's certificate must carry. Default: the host of --addr.
    #[arg(long, global = true, value_name = "NAME", requires = "tls")]
    tls_server_name: Option<String>,
    /// With --tls: client certificate (PEM) for servers that require one (--tls-client-ca).
    #[arg(long, global = true, value_name = "FILE", requires_all = ["tls", "tls_key"])]
    tls_cert: Option<PathBuf>,
    /// With --tls-cert: its private key (PEM).
    #[arg(long, global = true, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

impl Common {
    fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Lease N IDs and print them one per line (`--bulk`: with BULK_LEASE, protocol version 2).
    Lease(lease::LeaseArgs),
    /// Print what the server says about itself in WELCOME.
    Info(info::InfoArgs),
    /// Measure PING/PONG round trips.
    Ping(info::PingArgs),
    /// Take IDs apart into time, worker and sequence.
    Decode(decode::DecodeArgs),
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = run(cli);
    match result {
        Ok(()) | Err(Failure::StdoutClosed) => ExitCode::SUCCESS,
        Err(Failure::Reported) => ExitCode::from(1),
        Err(Failure::Failed(message)) => {
            eprintln!("snowcat: {message}");
            ExitCode::from(1)
        }
        Err(Failure::Usage(message) | Failure::Connect(message)) => {
            eprintln!("snowcat: {message}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<(), Failure> {
    if cli.hex && cli.command.is_some() {
        return Err(Failure::Usage(
            "--hex only applies to the stdin mode (no subcommand)".into(),
        ));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Failed(format!("cannot start the async runtime: {e}")))?;
    let common = &cli.common;
    runtime.block_on(async {
        match &cli.command {
            None => netcat::run(common, cli.hex).await,
            Some(Command::Lease(args)) => lease::run(common, args).await,
            Some(Command::Info(args)) => info::run_info(common, args).await,
            Some(Command::Ping(args)) => info::run_ping(common, args).await,
            Some(Command::Decode(args)) => decode::run(common, args).await,
        }
    })
}
