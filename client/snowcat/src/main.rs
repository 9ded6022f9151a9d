//! snowcat: the netcat of the snowlease protocol.
//!
//! Arguments flow through clap into one of five paths, each in its own module: `lease`
//! (pipelined LEASEs, or BULK_LEASEs with `--bulk`, printed as IDs, ranges or runs), `info`
//! and `ping` (HELLO/WELCOME and PING/PONG), `decode` (pure bit arithmetic, optionally asking
//! a server for its layout), and with no subcommand the netcat mode, which turns stdin lines
//! into frames and replies into lines. Every path ends in a [`Failure`] or success, and [`main`] maps that to the exit code:
//! 0 success, 1 the server or the input said no, 2 usage or connect failure.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod common;
mod conn;
mod decode;
mod format;
mod info;
mod lease;
mod netcat;

use common::{Common, Failure};

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
