//! snowlease-bench: throughput and latency of a snowlease server, with every ID checked for
//! uniqueness.
//!
//! # Layout
//! - [`run`] sets up the connections (or the client), fixes the [`Timeline`], starts the
//!   [`stats::Sampler`], runs the load, and folds the per-connection results into a
//!   [`report::Report`].
//! - [`raw`] drives the bare protocol: pipelined LEASEs per connection, or (`reconnect`) one
//!   LEASE per fresh connection, which measures connection setup.
//! - [`client_mode`] drives [`snowlease::Client`]: `next_id()` or `lease(n)` from many tasks.
//! - [`stats`] holds the counters, the per-second series and the latency math; [`verify`]
//!   the overlap check; [`report`] the table and JSON; [`svg`] the chart; [`spawn`] starts
//!   and stops a server child for `--spawn`; [`tls`] sets up `--tls` (and a throwaway
//!   certificate for a spawned server).
//!
//! The load generator runs on one tokio runtime of `--threads` threads (default 1): on the
//! two-core machines this project targets, one core for the bench leaves the other to the
//! server; a bench competing with the server for cores would measure the scheduler.

pub mod client_mode;
pub mod raw;
pub mod report;
pub mod sim_load;
pub mod spawn;
pub mod stats;
pub mod svg;
pub mod tls;
pub mod verify;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::time::Instant;

use snowlease::client::TlsOptions;
use snowlease::wire::Welcome;
use snowlease::{Client, ClientConfig, Layout};

use crate::report::Report;
use crate::stats::{Counters, Sampler};
use crate::verify::Block;

/// What to drive the server with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Pipelined LEASEs over the bare protocol.
    Raw,
    /// `Client::next_id()` from many tasks.
    Client,
    /// `Client::lease(batch)` from many tasks.
    ClientLease,
    /// Connection setup: each of `--connections` tasks connects (TLS too with `--tls`),
    /// sends HELLO, leases `--batch` once and closes, over and over.
    Reconnect,
}

impl Mode {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Raw => "raw",
            Mode::Client => "client",
            Mode::ClientLease => "client-lease",
            Mode::Reconnect => "reconnect",
        }
    }
}

/// Everything a run needs, already validated by the command line.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Load shape.
    pub mode: Mode,
    /// Server address.
    pub addr: String,
    /// Raw mode: connections.
    pub connections: usize,
    /// Raw mode: requests in flight per connection.
    pub depth: usize,
    /// IDs per LEASE (raw) or per `lease()` call (client-lease).
    pub batch: u32,
    /// Client modes: tasks sharing the client.
    pub tasks: usize,
    /// Runtime worker threads.
    pub threads: usize,
    /// Measured time.
    pub duration: Duration,
    /// Unmeasured time before it.
    pub warmup: Duration,
    /// Bound on connecting, on each reply and on the drain.
    pub timeout: Duration,
    /// Check every block for overlaps.
    pub verify: bool,
    /// Client mode: time one `next_id()` call in this many.
    pub sample_every: u64,
    /// HELLO token.
    pub token: Option<String>,
    /// Speak TLS with these options; `None` = plaintext.
    pub tls: Option<TlsOptions>,
    /// No progress lines.
    pub quiet: bool,
}

/// When load starts, when measuring starts, and when sending stops.
#[derive(Debug, Clone, Copy)]
pub struct Timeline {
    /// Results from before this are not counted (warmup).
    pub measure_from: Instant,
    /// No requests are sent from this moment; replies still in flight are drained.
    pub stop_at: Instant,
}

impl Timeline {
    /// A timeline starting now.
    pub fn starting_now(warmup: Duration, duration: Duration) -> Timeline {
        let measure_from = Instant::now() + warmup;
        Timeline {
            measure_from,
            stop_at: measure_from + duration,
        }
    }
}

/// What every connection or task returns, merged.
struct Merged {
    blocks: Vec<Block>,
    latency: Histogram<u64>,
    errors: BTreeMap<String, u64>,
}

impl Merged {
    fn new() -> Merged {
        Merged {
            blocks: Vec::new(),
            latency: stats::histogram(),
            errors: BTreeMap::new(),
        }
    }

    fn absorb(
        &mut self,
        blocks: Vec<Block>,
        latency: &Histogram<u64>,
        errors: BTreeMap<String, u64>,
    ) {
        self.blocks.extend(blocks);
        // Both histograms share bounds, so adding cannot fail; a failure would only lose samples.
        let _ = self.latency.add(latency);
        for (kind, n) in errors {
            *self.errors.entry(kind).or_default() += n;
        }
    }
}

/// Runs the benchmark. `Err` means it could not start (no server, bad batch for the server).
pub async fn run(settings: &Settings) -> Result<Report, String> {
    let counters = Arc::new(Counters::default());
    let (merged, layout, mut workers, sampler) = match settings.mode {
        Mode::Raw => run_raw(settings, &counters).await?,
        Mode::Reconnect => run_reconnect(settings, &counters).await?,
        Mode::Client | Mode::ClientLease => run_client(settings, &counters).await?,
    };
    let series = sampler.finish();
    let Merged {
        mut blocks,
        latency,
        errors,
    } = merged;
    workers.extend(blocks.iter().map(|b| layout.decompose(b.first).worker));
    let verdict = settings.verify.then(|| verify::check_disjoint(&mut blocks));
    Ok(Report::build(
        settings, &counters, &layout, workers, &latency, errors, verdict, series,
    ))
}

type Ran = (Merged, Layout, BTreeSet<u16>, Sampler);

fn tls_target(settings: &Settings) -> Result<Option<tls::TlsTarget>, String> {
    settings
        .tls
        .as_ref()
        .map(|options| tls::TlsTarget::new(options, &settings.addr))
        .transpose()
}

fn raw_params(settings: &Settings) -> Arc<raw::RawParams> {
    Arc::new(raw::RawParams {
        addr: settings.addr.clone(),
        depth: settings.depth,
        batch: settings.batch,
        timeout: settings.timeout,
        token: settings.token.clone(),
        verify: settings.verify,
    })
}

async fn run_raw(settings: &Settings, counters: &Arc<Counters>) -> Result<Ran, String> {
    let mut opened = Vec::with_capacity(settings.connections);
    let tls = tls_target(settings)?;
    let attempts = futures::future::join_all((0..settings.connections).map(|_| {
        raw::open(
            &settings.addr,
            settings.token.as_deref(),
            settings.timeout,
            tls.as_ref(),
        )
    }))
    .await;
    for attempt in attempts {
        opened.push(attempt?);
    }
    let Some(first) = opened.first() else {
        return Err("no connections".into());
    };
    let layout = announced_layout(&first.welcome, settings.batch)?;
    let workers: BTreeSet<u16> = opened.iter().map(|o| o.welcome.worker_id).collect();
    let params = raw_params(settings);
    let (timeline, sampler) = start_clock(settings, counters, "leases/s");
    let handles: Vec<_> = opened
        .into_iter()
        .map(|o| tokio::spawn(raw::drive(o, params.clone(), timeline, counters.clone())))
        .collect();
    let merged = merge_raw(handles).await;
    Ok((merged, layout, workers, sampler))
}

async fn run_reconnect(settings: &Settings, counters: &Arc<Counters>) -> Result<Ran, String> {
    let tls = tls_target(settings)?.map(Arc::new);
    // One connection first: refuses early (no server, bad batch, TLS mismatch) and learns
    // the layout.
    let probe = raw::open(
        &settings.addr,
        settings.token.as_deref(),
        settings.timeout,
        tls.as_deref(),
    )
    .await?;
    let w = probe.welcome;
    drop(probe);
    let layout = announced_layout(&w, settings.batch)?;
    let params = raw_params(settings);
    let (timeline, sampler) = start_clock(settings, counters, "conns/s ");
    let handles: Vec<_> = (0..settings.connections)
        .map(|_| {
            tokio::spawn(raw::reconnect(
                params.clone(),
                tls.clone(),
                timeline,
                counters.clone(),
            ))
        })
        .collect();
    let merged = merge_raw(handles).await;
    Ok((merged, layout, BTreeSet::from([w.worker_id]), sampler))
}

async fn run_client(settings: &Settings, counters: &Arc<Counters>) -> Result<Ran, String> {
    let mut config = ClientConfig::new([settings.addr.clone()])
        .timeout(settings.timeout)
        .connect_timeout(settings.timeout);
    if let Some(token) = &settings.token {
        config = config.token(token.clone().into_bytes());
    }
    if let Some(tls) = &settings.tls {
        config = config.tls(tls.clone());
    }
    let client = Client::connect(config)
        .await
        .map_err(|e| format!("the client could not connect to {}: {e}", settings.addr))?;
    let layout = client.layout();
    if settings.mode == Mode::ClientLease && settings.batch > layout.max_lease() {
        return Err(format!(
            "--batch {} exceeds the server's max_lease {}",
            settings.batch,
            layout.max_lease()
        ));
    }
    let call = match settings.mode {
        Mode::ClientLease => client_mode::Call::Lease {
            batch: settings.batch,
        },
        _ => client_mode::Call::NextId {
            sample_every: settings.sample_every,
        },
    };
    let (timeline, sampler) = start_clock(settings, counters, "calls/s ");
    let handles: Vec<_> = (0..settings.tasks)
        .map(|_| {
            tokio::spawn(client_mode::task(
                client.clone(),
                call,
                timeline,
                counters.clone(),
                settings.verify,
            ))
        })
        .collect();
    let mut merged = Merged::new();
    let mut workers = BTreeSet::new();
    for handle in handles {
        match handle.await {
            Ok(o) => {
                workers.extend(o.workers);
                merged.absorb(o.blocks, &o.latency, o.errors);
            }
            Err(e) => merged.absorb(Vec::new(), &stats::histogram(), panicked(&e)),
        }
    }
    client.close().await;
    Ok((merged, layout, workers, sampler))
}

/// The layout a server announced in WELCOME; refuses a `--batch` it would not grant.
fn announced_layout(w: &Welcome, batch: u32) -> Result<Layout, String> {
    let layout = Layout::widths(
        w.epoch_unix_ms,
        w.timestamp_bits,
        w.worker_bits,
        w.sequence_bits,
    )
    .map_err(|e| format!("the server announced an invalid layout: {e}"))?;
    if batch > w.max_lease {
        return Err(format!(
            "--batch {batch} exceeds the server's max_lease {}",
            w.max_lease
        ));
    }
    Ok(layout)
}

/// The run's warmup and measurement window, starting now, and the sampler printing `label`
/// once a second over it.
fn start_clock(
    settings: &Settings,
    counters: &Arc<Counters>,
    label: &'static str,
) -> (Timeline, Sampler) {
    let timeline = Timeline::starting_now(settings.warmup, settings.duration);
    let sampler = Sampler::start(
        counters.clone(),
        timeline.measure_from.into_std(),
        timeline.stop_at.into_std(),
        settings.quiet,
        label,
    );
    (timeline, sampler)
}

/// Waits for every raw connection task and merges what they saw; a task that panicked
/// counts as an error, not as a crash of the whole run.
async fn merge_raw(handles: Vec<tokio::task::JoinHandle<raw::ConnOutcome>>) -> Merged {
    let mut merged = Merged::new();
    for handle in handles {
        match handle.await {
            Ok(o) => merged.absorb(o.blocks, &o.latency, o.errors),
            Err(e) => merged.absorb(Vec::new(), &stats::histogram(), panicked(&e)),
        }
    }
    merged
}

fn panicked(e: &tokio::task::JoinError) -> BTreeMap<String, u64> {
    BTreeMap::from([(format!("task failed: {e}"), 1)])
}
