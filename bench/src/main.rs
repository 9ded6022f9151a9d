//! `snowlease-bench`: parses the command line, optionally spawns a server, runs
//! [`snowlease_bench::run`] on a runtime of `--threads` threads, prints the table, writes the
//! JSON and SVG files, and exits 0 (IDs received, none overlapping), 1 (no IDs or an overlap)
//! or 2 (could not start). With a subcommand (`serve`, `startup`, `idle-conns`,
//! `verify-ranges`, `sim-load`: [`snowlease_bench::tools`]) it runs that instead, with the same exit
//! codes.

use std::net::IpAddr;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use snowlease::client::TlsOptions;
use snowlease_bench::report::Report;
use snowlease_bench::tools::Tool;
use snowlease_bench::{spawn, svg, tls, Mode, Settings};

/// Load-test a snowlease server and check every ID it hands out is unique.
#[derive(Debug, Parser)]
#[command(
    name = "snowlease-bench",
    version,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    /// A tool for scripts instead of a load run.
    #[command(subcommand)]
    tool: Option<Tool>,
    /// Server address (ignored with --spawn).
    #[arg(long, env = "SNOWLEASE_ADDR", default_value = "127.0.0.1:7609")]
    addr: String,
    /// Start a snowlease-server on loopback ports for the run, and stop it after.
    #[arg(long)]
    spawn: bool,
    /// The server binary for --spawn (default: snowlease-server next to this binary).
    #[arg(long, requires = "spawn")]
    server_bin: Option<PathBuf>,
    /// Threads of the spawned server (its --threads).
    #[arg(long, default_value_t = 1, requires = "spawn")]
    server_threads: usize,
    /// Extra argument for the spawned server (repeatable), e.g. --server-arg=--max-lead-ms=50.
    /// Arguments after `--` go to the spawned server too.
    #[arg(long, allow_hyphen_values = true, requires = "spawn")]
    server_arg: Vec<String>,
    /// Arguments for the spawned server, after `--`.
    #[arg(last = true, requires = "spawn")]
    server_args: Vec<String>,
    /// Write the spawned server's log here.
    #[arg(long, requires = "spawn")]
    server_log: Option<PathBuf>,
    /// What to drive the server with.
    #[arg(long, value_enum, default_value_t = Mode::Raw)]
    mode: Mode,
    /// Raw mode: TCP connections (default 4). Reconnect: tasks, each one connection at a
    /// time (4). Fairness: connections draining whole ticks (500). Peer-cap: connections the
    /// first peer holds (1,100).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=60_000))]
    connections: Option<u32>,
    /// Raw and fairness modes: LEASE requests kept in flight per connection (default 8;
    /// fairness 1).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    depth: Option<u32>,
    /// IDs per LEASE (raw) or per lease() call (client-lease); at most the server's max_lease.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..))]
    batch: u32,
    /// Raw and fairness modes: send BULK_LEASEs of N IDs (protocol version 2, HELLO version
    /// 2) instead of LEASEs of --batch; N at most the server's max_bulk (4,194,304). Every run
    /// of every reply is expanded into blocks for --verify. In fairness mode only the load
    /// connections bulk-lease; the probe stays a version-1 LEASE count=1.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=i64::from(snowlease::wire::MAX_BULK)))]
    bulk: Option<u32>,
    /// Client modes: tasks sharing one client.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    tasks: u32,
    /// Runtime worker threads for the load generator. 1 by default so that, on a two-core
    /// machine, the server keeps the other core.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    threads: u32,
    /// Measured seconds (fractions allowed).
    #[arg(long, default_value_t = 10.0, value_parser = seconds)]
    duration: f64,
    /// Unmeasured seconds before the measurement (default 0; fairness and peer-cap 1).
    #[arg(long, value_parser = seconds_or_zero)]
    warmup: Option<f64>,
    /// Fairness and peer-cap: milliseconds between probes.
    #[arg(long, default_value_t = 5.0, value_parser = probe_interval)]
    probe_interval_ms: f64,
    /// Peer-cap: source address of the connections held open.
    #[arg(long, default_value = "127.0.0.1")]
    hog_source: IpAddr,
    /// Peer-cap: the held connections send HELLO (default: never a byte).
    #[arg(long)]
    hog_hello: bool,
    /// Peer-cap: source address of the probes (another peer to the server).
    #[arg(long, default_value = "127.0.0.2")]
    probe_source: IpAddr,
    /// Milliseconds to wait for a connection, for any one reply, and for the final drain.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..))]
    timeout_ms: u64,
    /// Check that no two blocks of IDs overlap (on by default).
    #[arg(long, overrides_with = "no_verify")]
    verify: bool,
    /// Skip the overlap check (saves the memory of keeping every block).
    #[arg(long)]
    no_verify: bool,
    /// Client mode: time one next_id() call in this many (1 = every call).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..))]
    sample_every: u64,
    /// Speak TLS (needs --tls-ca, except with --spawn, which then starts the server with a
    /// throwaway certificate generated for the run).
    #[arg(long)]
    tls: bool,
    /// With --tls: PEM file of the CA the server's certificate must chain to.
    #[arg(long, value_name = "FILE", requires = "tls")]
    tls_ca: Option<PathBuf>,
    /// With --tls: the name the server's certificate must carry (default: the host of --addr).
    #[arg(long, value_name = "NAME", requires = "tls")]
    tls_server_name: Option<String>,
    /// HELLO token, for servers that require one.
    #[arg(long, env = "SNOWLEASE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Write all results and the per-second series as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write an SVG chart of IDs/s per second against the ceiling here.
    #[arg(long)]
    svg: Option<PathBuf>,
    /// No per-second progress lines on stderr.
    #[arg(long, short)]
    quiet: bool,
}

fn seconds(text: &str) -> Result<f64, String> {
    let v = seconds_or_zero(text)?;
    if v > 0.0 {
        Ok(v)
    } else {
        Err("must be above 0".into())
    }
}

fn probe_interval(text: &str) -> Result<f64, String> {
    number_in(text, 0.1..=60_000.0, "milliseconds", "ms")
}

fn seconds_or_zero(text: &str) -> Result<f64, String> {
    number_in(text, 0.0..=86_400.0, "seconds", "seconds")
}

/// `text` as a finite number inside `range`; the errors name it a number of `unit` and
/// write the range with `short` after it ("0.1..=60000 ms").
fn number_in(
    text: &str,
    range: RangeInclusive<f64>,
    unit: &str,
    short: &str,
) -> Result<f64, String> {
    let v: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of {unit}"))?;
    if v.is_finite() && range.contains(&v) {
        Ok(v)
    } else {
        Err(format!(
            "{text} is outside {}..={} {short}",
            range.start(),
            range.end()
        ))
    }
}

impl Cli {
    fn settings(&self, addr: String, tls: Option<TlsOptions>) -> Settings {
        let mode = self.mode;
        Settings {
            mode,
            addr,
            connections: self.connections.unwrap_or(mode.default_connections()) as usize,
            depth: self.depth.unwrap_or(mode.default_depth()) as usize,
            batch: self.batch,
            bulk: self.bulk,
            tasks: self.tasks as usize,
            threads: self.threads as usize,
            duration: Duration::from_secs_f64(self.duration),
            warmup: Duration::from_secs_f64(self.warmup.unwrap_or(mode.default_warmup())),
            timeout: Duration::from_millis(self.timeout_ms),
            verify: !self.no_verify,
            sample_every: self.sample_every,
            token: self.token.clone(),
            tls,
            quiet: self.quiet,
            probe_interval: Duration::from_secs_f64(self.probe_interval_ms / 1000.0),
            hog_source: self.hog_source,
            hog_hello: self.hog_hello,
            probe_source: self.probe_source,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.tool {
        Some(tool) => tool.run(),
        None => run(&cli),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(message) => {
            eprintln!("snowlease-bench: {message}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: &Cli) -> Result<bool, String> {
    if cli.bulk.is_some() && !matches!(cli.mode, Mode::Raw | Mode::Fairness) {
        return Err(format!(
            "--bulk works with --mode raw and --mode fairness, not --mode {}",
            cli.mode.name()
        ));
    }
    let mut server = None;
    // With --spawn --tls and no CA given, the run makes its own CA and server certificate;
    // the files live until the run ends.
    let throwaway = match (cli.spawn && cli.tls, &cli.tls_ca) {
        (true, None) => Some(tls::throwaway()?),
        _ => None,
    };
    let tls_options = match (&cli.tls_ca, &throwaway) {
        (Some(ca), _) => Some(tls::options(ca, cli.tls_server_name.as_deref())),
        (None, Some(t)) => Some(tls::options(&t.ca, cli.tls_server_name.as_deref())),
        (None, None) if cli.tls => {
            return Err("--tls needs --tls-ca FILE (or --spawn, which makes a certificate)".into())
        }
        (None, None) => None,
    };
    let addr = if cli.spawn {
        let bin = spawn::locate(cli.server_bin.as_deref())?;
        let mut args = vec!["--threads".to_owned(), cli.server_threads.to_string()];
        if let Some(t) = &throwaway {
            for (flag, path) in [("--tls-cert", &t.cert), ("--tls-key", &t.key)] {
                args.push(flag.to_owned());
                args.push(path.display().to_string());
            }
        }
        args.extend(cli.server_arg.iter().cloned());
        args.extend(cli.server_args.iter().cloned());
        let spawned = spawn::spawn(
            &bin,
            &args,
            cli.server_log.as_deref(),
            Duration::from_secs(15),
        )?;
        eprintln!(
            "spawned {} (pid {}) on {}, admin {}",
            bin.display(),
            spawned.pid(),
            spawned.lease_addr(),
            spawned.admin_addr()
        );
        let addr = spawned.lease_addr().to_string();
        server = Some(spawned);
        addr
    } else {
        cli.addr.clone()
    };
    let settings = cli.settings(addr, tls_options);
    // Every connection is a descriptor: the probe modes hold over a thousand.
    let _ = rlimit::increase_nofile_limit(settings.connections as u64 + 1024);
    let runtime = build_runtime(settings.threads)?;
    let result = runtime.block_on(snowlease_bench::run(&settings));
    runtime.shutdown_timeout(Duration::from_secs(1));
    if let Some(mut server) = server {
        eprintln!("server {}", server.stop(spawn::STOP_GRACE));
    }
    let report = result?;
    print!("{}", report.table());
    write_outputs(cli, &report)?;
    Ok(report.ok())
}

fn build_runtime(threads: usize) -> Result<tokio::runtime::Runtime, String> {
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    builder
        .enable_all()
        .thread_name("bench")
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))
}

fn write_outputs(cli: &Cli, report: &Report) -> Result<(), String> {
    if let Some(path) = &cli.json {
        let text = serde_json::to_string_pretty(report)
            .map_err(|e| format!("cannot serialise the report: {e}"))?;
        std::fs::write(path, text + "\n")
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    if let Some(path) = &cli.svg {
        let title = format!(
            "snowlease-bench {}: {} IDs/s",
            report.settings.mode,
            snowlease_bench::stats::thousands(report.ids_per_sec.round() as u64)
        );
        let chart = svg::chart(
            &report.series,
            report.ceiling_ids_per_sec,
            report.workers.len().max(1),
            &title,
        );
        std::fs::write(path, chart).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(())
}
