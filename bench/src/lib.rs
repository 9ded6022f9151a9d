//! snowlease-bench: throughput and latency of a snowlease server, with every ID checked for
//! uniqueness.
//!
//! # Layout
//! - [`run`] sets up the connections (or the client), fixes the [`Timeline`], starts the
//!   [`stats::Sampler`], runs the load, and folds the per-connection results into a
//!   [`report::Report`].
//! - [`raw`] drives the bare protocol: pipelined LEASEs per connection (or, with `--bulk`,
//!   version-2 BULK_LEASEs), or (`reconnect`) one LEASE per fresh connection, which measures
//!   connection setup.
//! - [`client_mode`] drives [`snowlease::Client`]: `next_id()` or `lease(n)` from many tasks.
//! - [`probe`] times a light client beside heavy ones: `fairness` (a count=1 LEASE on an idle
//!   connection while hundreds drain the worker at its ceiling) and `peer-cap` (a second
//!   peer's fresh connections while one peer holds connections open).
//! - [`settings`]: the load's shape as the command line validated it ([`Settings`], [`Mode`])
//!   and its [`Timeline`], which every driver module reads.
//! - [`stats`] holds the counters, the per-second series and the latency math; [`verify`]
//!   the overlap check; [`report`] the table and JSON; [`svg`] the chart; [`spawn`] starts
//!   and stops a server child for `--spawn` (through `snowlease-testkit`); [`tls`] sets up
//!   `--tls` (and a throwaway certificate for a spawned server).
//! - [`tools`]: the subcommands scripts call instead of speaking the protocol themselves
//!   (`serve`, `startup`, `idle-conns`, `verify-ranges`).
//!
//! The load generator runs on one tokio runtime of `--threads` threads (default 1): on the
//! two-core machines this project targets, one core for the bench leaves the other to the
//! server; a bench competing with the server for cores would measure the scheduler.

pub mod client_mode;
pub mod probe;
pub mod raw;
pub mod report;
pub mod settings;
pub mod spawn;
pub mod stats;
pub mod svg;
pub mod tls;
pub mod tools;
pub mod verify;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;

use hdrhistogram::Histogram;

use snowlease::wire::{self, Welcome};
use snowlease::{Client, ClientConfig, Layout};

use crate::probe::ProbeReport;
use crate::report::Report;
use crate::stats::{Counters, Sampler};
use crate::verify::Block;

pub use settings::{Mode, Settings, Timeline};

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
    let ran = match settings.mode {
        Mode::Raw => run_raw(settings, &counters).await?,
        Mode::Reconnect => run_reconnect(settings, &counters).await?,
        Mode::Client | Mode::ClientLease => run_client(settings, &counters).await?,
        Mode::Fairness => run_fairness(settings, &counters).await?,
        Mode::PeerCap => run_peer_cap(settings, &counters).await?,
    };
    let series = ran.sampler.finish();
    let Merged {
        mut blocks,
        latency,
        errors,
    } = ran.merged;
    let mut workers = ran.workers;
    workers.extend(blocks.iter().map(|b| ran.layout.decompose(b.first).worker));
    let verdict = settings.verify.then(|| verify::check_disjoint(&mut blocks));
    let mut report = Report::build(
        settings,
        &counters,
        &ran.layout,
        workers,
        &latency,
        errors,
        verdict,
        series,
    );
    report.probe = ran.probe;
    Ok(report)
}

/// What a mode hands back to [`run`].
struct Ran {
    merged: Merged,
    layout: Layout,
    workers: BTreeSet<u16>,
    sampler: Sampler,
    probe: Option<ProbeReport>,
}

impl Ran {
    fn new(merged: Merged, layout: Layout, workers: BTreeSet<u16>, sampler: Sampler) -> Ran {
        Ran {
            merged,
            layout,
            workers,
            sampler,
            probe: None,
        }
    }
}

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
        bulk: settings.bulk,
    })
}

async fn run_raw(settings: &Settings, counters: &Arc<Counters>) -> Result<Ran, String> {
    let tls = tls_target(settings)?;
    let (opened, layout) = open_many(settings, settings.connections, tls.as_ref()).await?;
    let workers = load_workers(&opened);
    let (_, sampler, handles) = drive_all(settings, counters, opened);
    let merged = merge_raw(handles).await;
    Ok(Ran::new(merged, layout, workers, sampler))
}

/// Starts the clock and one [`raw::drive`] task per opened connection: the load of the raw
/// and fairness modes.
fn drive_all(
    settings: &Settings,
    counters: &Arc<Counters>,
    opened: Vec<raw::Opened>,
) -> (
    Timeline,
    Sampler,
    Vec<tokio::task::JoinHandle<raw::ConnOutcome>>,
) {
    let params = raw_params(settings);
    let (timeline, sampler) = start_clock(settings, counters, "leases/s");
    let handles = opened
        .into_iter()
        .map(|o| tokio::spawn(raw::drive(o, params.clone(), timeline, counters.clone())))
        .collect();
    (timeline, sampler, handles)
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
    Ok(Ran::new(
        merged,
        layout,
        BTreeSet::from([w.worker_id]),
        sampler,
    ))
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
    Ok(Ran::new(merged, layout, workers, sampler))
}

/// Opens `n` load connections with HELLO (all at once; version 2 with `--bulk`) and learns
/// the layout from the first; with `--bulk`, refuses a server that cannot take it.
async fn open_many(
    settings: &Settings,
    n: usize,
    tls: Option<&tls::TlsTarget>,
) -> Result<(Vec<raw::Opened>, Layout), String> {
    let version = match settings.bulk {
        Some(_) => wire::VERSION_2,
        None => wire::VERSION,
    };
    let attempts = futures::future::join_all((0..n).map(|_| {
        raw::open_as(
            version,
            &settings.addr,
            settings.token.as_deref(),
            settings.timeout,
            tls,
        )
    }))
    .await;
    let opened = attempts.into_iter().collect::<Result<Vec<_>, _>>()?;
    let Some(first) = opened.first() else {
        return Err("no connections".into());
    };
    let layout = announced_layout(&first.welcome, settings.batch)?;
    if let Some(count) = settings.bulk {
        bulk_accepted(first, count)?;
    }
    Ok((opened, layout))
}

/// Refuses `--bulk count` on a server that answered version 1 or announces a smaller limit.
fn bulk_accepted(first: &raw::Opened, count: u32) -> Result<(), String> {
    let Some(set) = first.workers else {
        return Err(format!(
            "--bulk needs protocol version 2, and the server answered HELLO version 2 with \
             version {}",
            first.welcome.version
        ));
    };
    if count > set.max_bulk {
        return Err(format!(
            "--bulk {count} exceeds the server's max_bulk {}",
            set.max_bulk
        ));
    }
    Ok(())
}

/// The workers the load connections can be served from: each one's home worker, and with
/// version 2 every worker of the announced set (a bulk lease draws from all of them).
fn load_workers(opened: &[raw::Opened]) -> BTreeSet<u16> {
    let mut workers: BTreeSet<u16> = opened.iter().map(|o| o.welcome.worker_id).collect();
    for set in opened.iter().filter_map(|o| o.workers) {
        // Widened: a hostile set reaching past u16::MAX must not overflow.
        let first = u32::from(set.first_worker);
        let ids = first..first + u32::from(set.worker_count);
        workers.extend(ids.filter_map(|w| u16::try_from(w).ok()));
    }
    workers
}

async fn run_fairness(settings: &Settings, counters: &Arc<Counters>) -> Result<Ran, String> {
    let tls = tls_target(settings)?;
    // With --bulk the probe is an application asking for one ID the version-1 way: a
    // connection of its own, HELLO version 1, LEASE count=1. Without, it is one more of the
    // same connections.
    let probe_apart = settings.bulk.is_some();
    let n = settings.connections + usize::from(!probe_apart);
    let (mut opened, layout) = open_many(settings, n, tls.as_ref()).await?;
    let idle = if probe_apart {
        raw::open(
            &settings.addr,
            settings.token.as_deref(),
            settings.timeout,
            tls.as_ref(),
        )
        .await?
    } else {
        opened.pop().ok_or("no connections")?
    };
    let mut workers = load_workers(&opened);
    workers.insert(idle.welcome.worker_id);
    let (timeline, sampler, handles) = drive_all(settings, counters, opened);
    let (report, blocks) = probe::idle_probe(
        idle,
        settings.probe_interval,
        settings.timeout,
        timeline,
        counters.clone(),
    )
    .await;
    let mut merged = merge_raw(handles).await;
    if settings.verify {
        merged.absorb(blocks, &stats::histogram(), BTreeMap::new());
    }
    let mut ran = Ran::new(merged, layout, workers, sampler);
    ran.probe = Some(report);
    Ok(ran)
}

async fn run_peer_cap(settings: &Settings, counters: &Arc<Counters>) -> Result<Ran, String> {
    if settings.tls.is_some() {
        return Err(
            "--mode peer-cap speaks plaintext only (its probes bind a source address)".into(),
        );
    }
    let server = resolve(&settings.addr).await?;
    let p = probe::PeerCap {
        server,
        hog_source: settings.hog_source,
        hog_connections: settings.connections,
        hog_hello: settings.hog_hello,
        probe_source: settings.probe_source,
        interval: settings.probe_interval,
        timeout: settings.timeout,
        token: settings.token.clone(),
    };
    // One connection from the probing peer first: refuses early (no server, no such source
    // address) and learns the layout. It stays open, idle, until the end.
    let first = probe::welcome_from(&p).await?;
    let layout = announced_layout(&first.welcome, 1)?;
    let hog = probe::Hog::open(&p).await?;
    let (timeline, sampler) = start_clock(settings, counters, "probes/s");
    let (report, blocks) = probe::fresh_connection_probe(&p, hog, timeline, counters.clone()).await;
    let mut merged = Merged::new();
    merged.absorb(blocks, &stats::histogram(), BTreeMap::new());
    let workers = BTreeSet::from([first.welcome.worker_id]);
    drop(first);
    let mut ran = Ran::new(merged, layout, workers, sampler);
    ran.probe = Some(report);
    Ok(ran)
}

/// The first address `addr` resolves to.
async fn resolve(addr: &str) -> Result<SocketAddr, String> {
    tokio::net::lookup_host(addr)
        .await
        .map_err(|e| format!("cannot resolve {addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("{addr} resolves to no address"))
}

/// The layout a server announced in WELCOME; refuses a `--batch` it would not grant.
fn announced_layout(w: &Welcome, batch: u32) -> Result<Layout, String> {
    let layout = raw::welcome_layout(w)?;
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
