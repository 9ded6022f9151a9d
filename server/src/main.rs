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
    check_nofile(config.max_connections, config.threads);
    // Signal handlers go in before the server reports it is serving, so a SIGTERM that
    // follows the start line at once still drains instead of killing the process.
    let signals = match Signals::install() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("refusing to start: cannot install signal handlers: {e}");
            return ExitCode::from(2);
        }
    };
    let server = match snowlease_server::start(config) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("refusing to start: {e}");
            return ExitCode::from(2);
        }
    };
    let name = signals.wait();
    tracing::info!(signal = name, "draining");
    server.shutdown();
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

/// Descriptors needed besides the lease connections, per the bounds the server keeps:
/// turned-away connections lingering (per core), admin connections, and a few more for the
/// listeners, the state file, the log and the runtime.
fn nofile_wanted(max_connections: usize, threads: usize) -> u64 {
    let others = snowlease_server::TURNING_AWAY_MAX * threads
        + snowlease_server::admin::MAX_ADMIN_CONNECTIONS
        + 64;
    (max_connections.saturating_add(others)) as u64
}

/// Raises the soft open-file limit towards the hard one so the connection cap, not EMFILE, is
/// what a flood meets (a descriptor shortage stalls accepts on both ports, liveness probe
/// included). Warns when even the hard limit is too low; never refuses to start over it.
fn check_nofile(max_connections: usize, threads: usize) {
    let want = nofile_wanted(max_connections, threads);
    let soft = match rlimit::increase_nofile_limit(want) {
        Ok(soft) => soft,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read or raise the open-file limit");
            return;
        }
    };
    if soft < want {
        tracing::warn!(
            nofile = soft,
            wanted = want,
            "the open-file limit is below --max-connections plus headroom: a connection flood will meet EMFILE before the cap; raise LimitNOFILE / ulimit -n or lower --max-connections"
        );
    }
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| QuietStderr(std::io::stderr()))
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// stderr that drops lines it cannot write. tracing-subscriber reports a failed write with
/// `eprintln!`, which panics when stderr itself is the broken pipe; a log collector going
/// away must not take the ID service down with it.
struct QuietStderr(std::io::Stderr);

impl std::io::Write for QuietStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = self.0.write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = self.0.flush();
        Ok(())
    }
}

/// SIGTERM and SIGINT handlers on a small runtime of their own.
struct Signals {
    rt: tokio::runtime::Runtime,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (term, int) = rt.block_on(async {
            // SIGHUP's default action kills the process; handling it here, for the whole
            // process, keeps a stray `kill -HUP` (or one sent before the token reloader is
            // listening, or with no token file at all) from taking the server down.
            let _hangup_handled = signal(SignalKind::hangup())?;
            Ok::<_, std::io::Error>((
                signal(SignalKind::terminate())?,
                signal(SignalKind::interrupt())?,
            ))
        })?;
        Ok(Signals { rt, term, int })
    }

    /// Blocks until SIGTERM (Kubernetes) or SIGINT (Ctrl-C); returns which.
    fn wait(mut self) -> &'static str {
        self.rt.block_on(async {
            tokio::select! {
                _ = self.term.recv() => "SIGTERM",
                _ = self.int.recv() => "SIGINT",
            }
        })
    }
}
