//! The `snowlease-server` binary: flags in, a running server, signals to a graceful drain.
//!
//! Parses [`Args`], sets up logging, resolves the configuration (refusing bad worker ids,
//! layouts or state files with a message naming the value), starts the server and waits for
//! SIGTERM or SIGINT, then drains and exits 0.

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use snowlease_server::config::{Args, Environment, LogFormat, WorkerSource};

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging(args.log_format);
    let config = match args.resolve(&Environment::detect()) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("refusing to start: {e}");
            return ExitCode::from(2);
        }
    };
    if config.worker_source == WorkerSource::Default {
        tracing::warn!("no WORKER_ID, POD_NAME or hostname ordinal: running as worker 0. Fine for a single server; give every other server its own WORKER_ID");
    }
    let server = match snowlease_server::start(config) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("refusing to start: {e}");
            return ExitCode::from(2);
        }
    };
    match wait_for_signal() {
        Ok(name) => tracing::info!(signal = name, "draining"),
        Err(e) => tracing::error!(error = %e, "cannot wait for signals; draining now"),
    }
    server.shutdown();
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Blocks until SIGTERM (Kubernetes) or SIGINT (Ctrl-C); returns which.
fn wait_for_signal() -> std::io::Result<&'static str> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        Ok(tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        })
    })
}
