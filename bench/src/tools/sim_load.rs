//! `snowlease-bench sim-load`: the client side of `kube/simulate.sh`, through the client crate.
//!
//! One process holds `--clients` [`Client`]s for one endpoint (a headless Service name that
//! resolves to every pod, or a Service IP where kube-proxy gives each connection one random
//! pod) and `--tasks` tasks that take IDs from them as fast as they come. It then
//! 1. warms up until every expected worker (`--expect-workers N`: workers 0..N-1) has handed
//!    out IDs, at most `--warmup-max` seconds, and `--settle` seconds more;
//! 2. measures for `--duration` seconds, counting IDs per time bucket (`--bucket-ms`), per
//!    worker, and with `--per-worker-series` per worker and bucket (the partition scenario
//!    reads from it when a healed pod is used again);
//! 3. checks every ID it received, warm-up included, for uniqueness by runs: each range is
//!    turned into positions of its worker (`tick << sequence_bits | sequence`, see
//!    [`Layout::position`]), consecutive ranges of one worker fold into one run, and the runs
//!    of each worker are sorted and swept. A worker at its ceiling is then a handful of runs,
//!    not millions of IDs or ticks, so billions of IDs per second are checked in a few
//!    megabytes.
//!
//! It writes one JSON report (`--json`) with the figures, the series and the verdict; see
//! [`Report`]. Exit 0 when the IDs are disjoint, all from expected workers, none crossing a
//! tick, at least one arrived and no call failed; 1 otherwise; 2 when it could not run.
//! The ceiling is `N x` one worker's (`stats::ceiling_per_worker`), the share is IDs/s over
//! it: the script compares it with its goals, this tool only measures.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use snowlease::{Client, ClientConfig, Error, IdRange, Layout};

use crate::client_mode::kind;
use crate::stats;

/// Arguments of `sim-load`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Endpoint, `host:port`: a name resolving to every pod (headless Service) or a Service IP.
    #[arg(long)]
    pub addr: String,
    /// Independent clients, each with its own connections and buffer. Through a Service IP a
    /// client has one connection, to the one pod kube-proxy picked, so more clients reach
    /// more pods.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub clients: u32,
    /// Tasks taking IDs, spread over the clients (at least one per client).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub tasks: u32,
    /// Runtime threads (1: a current-thread runtime).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub threads: u32,
    /// Most IDs one call takes.
    #[arg(long, default_value_t = 1 << 22, value_parser = clap::value_parser!(u64).range(1..))]
    pub max: u64,
    /// Workers the cluster holds: 0..N-1. Warm-up waits for each; IDs of any other worker
    /// fail the run; the ceiling is N times one worker's.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=4096))]
    pub expect_workers: u16,
    /// Measured seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds between the last expected worker answering and the measurement.
    #[arg(long, default_value_t = 1.0)]
    pub settle: f64,
    /// Longest warm-up; the measurement starts then even if workers are missing (the report
    /// says how many had answered).
    #[arg(long, default_value_t = 60.0)]
    pub warmup_max: f64,
    /// Width of the series' time buckets, milliseconds.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub bucket_ms: u64,
    /// Also keep a series per worker.
    #[arg(long)]
    pub per_worker_series: bool,
    /// Buffer of each client, in milliseconds of its share of the ceiling. The client refills
    /// when half is gone and asks for at most the room left, so the buffer bounds what one
    /// round trip brings; 50 ms of the rate wanted is what the client's docs advise.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub buffer_ms: u64,
    /// The clients' timeout (`ClientConfig::timeout`, also the connect timeout), ms.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout_ms: u64,
    /// Write the Unix millisecond at which the measurement starts into this file, then.
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
    /// Where the report goes.
    #[arg(long)]
    pub json: PathBuf,
}

impl Args {
    fn check(&self) -> Result<(), String> {
        for (name, v) in [
            ("--duration", self.duration),
            ("--settle", self.settle),
            ("--warmup-max", self.warmup_max),
        ] {
            if !(v.is_finite() && (0.0..=86_400.0).contains(&v)) {
                return Err(format!("{name} {v} is outside 0..=86400 seconds"));
            }
        }
        if self.duration <= 0.0 {
            return Err("--duration must be above 0".into());
        }
        Ok(())
    }
}

/// Runs `sim-load`: `Ok(true)` all checks passed, `Ok(false)` one failed, `Err` could not run.
pub fn run(args: &Args) -> Result<bool, String> {
    args.check()?;
    let runtime = if args.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads as usize)
            .enable_all()
            .build()
    }
    .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let report = runtime.block_on(drive(args))?;
    runtime.shutdown_timeout(Duration::from_secs(1));
    let text =
        serde_json::to_string_pretty(&report).map_err(|e| format!("cannot serialise: {e}"))?;
    std::fs::write(&args.json, text + "\n")
        .map_err(|e| format!("cannot write {}: {e}", args.json.display()))?;
    eprintln!(
        "sim-load: {} IDs in {:.2} s = {} IDs/s ({:.2} % of {}), {} of {} workers, {}, {} client errors",
        stats::thousands(report.ids),
        report.seconds,
        stats::thousands(report.ids_per_s.round() as u64),
        report.share * 100.0,
        stats::thousands(report.ceiling.round() as u64),
        report.workers_seen,
        report.expect_workers,
        report.verify.describe(),
        report.client_errors
    );
    Ok(report.ok)
}

/// The timeline every task follows: warm-up until `measure_from` is set, then buckets.
struct Timeline {
    base: Instant,
    /// Nanoseconds after `base` at which measuring starts, plus one; 0 while warming up.
    measure_from: AtomicU64,
    duration: Duration,
    bucket: Duration,
    /// Workers that handed out IDs during warm-up, one bit each.
    seen: Vec<AtomicU64>,
}

impl Timeline {
    fn measure_from(&self) -> Option<Instant> {
        match self.measure_from.load(Ordering::Acquire) {
            0 => None,
            n => Some(self.base + Duration::from_nanos(n - 1)),
        }
    }

    fn start_measuring(&self, at: Instant) {
        let n = u64::try_from((at - self.base).as_nanos()).unwrap_or(u64::MAX - 1) + 1;
        self.measure_from.store(n, Ordering::Release);
    }

    fn mark_seen(&self, worker: u16) {
        let (word, bit) = (usize::from(worker / 64), worker % 64);
        if let Some(w) = self.seen.get(word) {
            if w.load(Ordering::Relaxed) & (1 << bit) == 0 {
                w.fetch_or(1 << bit, Ordering::Relaxed);
            }
        }
    }

    fn seen_count(&self) -> u32 {
        self.seen
            .iter()
            .map(|w| w.load(Ordering::Relaxed).count_ones())
            .sum()
    }

    fn buckets(&self) -> usize {
        let n = self.duration.as_nanos().div_ceil(self.bucket.as_nanos());
        usize::try_from(n).unwrap_or(usize::MAX)
    }
}

/// Positions handed out, per worker, as runs `[start, end)`; see the module docs.
#[derive(Debug, Default)]
pub struct Fold {
    runs: Vec<Vec<(u64, u64)>>,
    ranges: u64,
    empty: u64,
    crossing_tick: u64,
}

impl Fold {
    /// Adds one range; returns its worker.
    pub fn push(&mut self, layout: &Layout, range: IdRange) -> u16 {
        let parts = layout.decompose(range.first);
        self.ranges += 1;
        if range.count == 0 {
            self.empty += 1;
            return parts.worker;
        }
        if u64::from(parts.sequence) + u64::from(range.count) > u64::from(layout.max_lease()) {
            self.crossing_tick += 1;
        }
        let w = usize::from(parts.worker);
        if self.runs.len() <= w {
            self.runs.resize_with(w + 1, Vec::new);
        }
        let start = layout.position(range.first);
        let end = start + u64::from(range.count);
        let runs = &mut self.runs[w];
        match runs.last_mut() {
            Some(last) if last.1 == start => last.1 = end,
            _ => runs.push((start, end)),
        }
        parts.worker
    }

    /// Adds another fold's runs (they are merged and checked by [`Fold::verdict`]).
    pub fn absorb(&mut self, other: Fold) {
        if self.runs.len() < other.runs.len() {
            self.runs.resize_with(other.runs.len(), Vec::new);
        }
        for (mine, theirs) in self.runs.iter_mut().zip(other.runs) {
            mine.extend(theirs);
        }
        self.ranges += other.ranges;
        self.empty += other.empty;
        self.crossing_tick += other.crossing_tick;
    }

    /// Sorts each worker's runs and sweeps them: a run starting before the furthest end seen
    /// so far shares IDs with an earlier one. Workers at or above `expect` are unexpected.
    pub fn verdict(mut self, layout: &Layout, expect: u16) -> RunVerdict {
        let mut v = RunVerdict {
            ranges: self.ranges,
            runs: 0,
            ids: 0,
            overlaps: 0,
            empty: self.empty,
            crossing_tick: self.crossing_tick,
            unexpected_worker: 0,
            example_overlap: None,
            ok: false,
        };
        for (w, runs) in self.runs.iter_mut().enumerate() {
            if runs.is_empty() {
                continue;
            }
            if w >= usize::from(expect) {
                v.unexpected_worker += runs.len() as u64;
            }
            runs.sort_unstable();
            let mut furthest: Option<(u64, u64)> = None;
            for &(start, end) in runs.iter() {
                v.runs += 1;
                v.ids += end - start;
                if let Some(prev) = furthest {
                    if start < prev.1 {
                        v.overlaps += 1;
                        v.example_overlap.get_or_insert_with(|| {
                            let id = |p: u64| layout.id_at(w as u16, p).unwrap_or(0);
                            [[id(prev.0), prev.1 - prev.0], [id(start), end - start]]
                        });
                    }
                }
                if furthest.is_none_or(|p| end > p.1) {
                    furthest = Some((start, end));
                }
            }
        }
        v.ok = v.ids > 0
            && v.overlaps == 0
            && v.empty == 0
            && v.crossing_tick == 0
            && v.unexpected_worker == 0;
        v
    }
}

/// What the uniqueness check found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunVerdict {
    /// Ranges received (each consecutive integers inside one tick of one worker).
    pub ranges: u64,
    /// Runs of consecutive positions they folded into.
    pub runs: u64,
    /// IDs in them.
    pub ids: u64,
    /// Runs sharing an ID with an earlier run of the same worker.
    pub overlaps: u64,
    /// Ranges of zero IDs.
    pub empty: u64,
    /// Ranges running past the end of their tick.
    pub crossing_tick: u64,
    /// Runs of workers outside 0..expect.
    pub unexpected_worker: u64,
    /// The first overlapping pair, as `[first_id, count]` (count in positions).
    pub example_overlap: Option<[[u64; 2]; 2]>,
    /// All checks passed and at least one ID arrived.
    pub ok: bool,
}

impl RunVerdict {
    /// One line for the log.
    pub fn describe(&self) -> String {
        format!(
            "{} ranges in {} runs, {} overlapping, {} crossing a tick, {} from unexpected workers: {}",
            stats::thousands(self.ranges),
            stats::thousands(self.runs),
            self.overlaps,
            self.crossing_tick,
            self.unexpected_worker,
            if self.ok { "disjoint" } else { "FAILED" }
        )
    }
}

/// The JSON report.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Endpoint.
    pub addr: String,
    /// Clients, tasks, runtime threads, most IDs per call.
    pub clients: u32,
    /// Tasks.
    pub tasks: u32,
    /// Runtime threads.
    pub threads: u32,
    /// Most IDs per call.
    pub max: u64,
    /// Workers expected.
    pub expect_workers: u16,
    /// Seconds from the first client's WELCOME to every expected worker answering (or the
    /// warm-up limit).
    pub warmup_s: f64,
    /// Workers that had answered when measuring started.
    pub workers_at_start: u32,
    /// Unix milliseconds at which measuring started.
    pub started_unix_ms: u64,
    /// Measured seconds.
    pub seconds: f64,
    /// IDs taken in the measured window.
    pub ids: u64,
    /// `ids / seconds`.
    pub ids_per_s: f64,
    /// Successful calls in the window.
    pub calls: u64,
    /// Expected workers x one worker's IDs per second.
    pub ceiling: f64,
    /// `ids_per_s / ceiling`.
    pub share: f64,
    /// Workers that handed out IDs in the window.
    pub workers_seen: u32,
    /// Expected workers that handed out nothing in the window.
    pub missing_workers: Vec<u16>,
    /// IDs per worker in the window (index = worker).
    pub per_worker_ids: Vec<u64>,
    /// Bucket width of the series.
    pub bucket_ms: u64,
    /// IDs per bucket over the window.
    pub series: Vec<u64>,
    /// IDs per bucket per worker (with `--per-worker-series`).
    pub worker_series: Option<BTreeMap<u16, Vec<u64>>>,
    /// The uniqueness check over every ID received (warm-up included).
    pub verify: RunVerdict,
    /// Failed calls in the window.
    pub client_errors: u64,
    /// Failed calls during warm-up.
    pub warmup_errors: u64,
    /// Failed calls by kind (warm-up included).
    pub error_kinds: BTreeMap<String, u64>,
    /// CPU seconds (user + system) this process used in the window.
    pub cpu_s: f64,
    /// Peak resident memory of this process, kB.
    pub max_rss_kb: u64,
    /// The verdict is ok and no call failed.
    pub ok: bool,
}

/// What one task brings back; also what all of them saw, added up ([`TaskOutcome::merge`]).
#[derive(Default)]
struct TaskOutcome {
    fold: Fold,
    series: Vec<u64>,
    per_worker: Vec<u64>,
    worker_series: Vec<Vec<u64>>,
    calls: u64,
    errors: u64,
    warmup_errors: u64,
    error_kinds: BTreeMap<String, u64>,
}

/// Ranges from one call: everything buffered, up to `max` IDs ([`Client::lease_bulk`]).
async fn take(client: &Client, max: u64) -> Result<Vec<IdRange>, Error> {
    client.lease_bulk(max).await
}

/// Pause after a failed call, so a failing client is not spun on: a guess, harmless because
/// the client's own calls already wait (up to its timeout) before failing.
const AFTER_ERROR: Duration = Duration::from_millis(10);

async fn task(
    client: Client,
    layout: Layout,
    max: u64,
    timeline: Arc<Timeline>,
    per_worker_series: bool,
    workers: usize,
) -> TaskOutcome {
    let buckets = timeline.buckets();
    let mut out = TaskOutcome {
        fold: Fold::default(),
        series: vec![0; buckets],
        per_worker: vec![0; workers],
        worker_series: if per_worker_series {
            vec![vec![0; buckets]; workers]
        } else {
            Vec::new()
        },
        calls: 0,
        errors: 0,
        warmup_errors: 0,
        error_kinds: BTreeMap::new(),
    };
    // Bounded: every call returns within the client's timeout, and the loop ends at the end
    // of the window (the coordinator always opens it, at the latest after --warmup-max).
    loop {
        let result = take(&client, max).await;
        let now = Instant::now();
        let from = timeline.measure_from();
        let slot = from.filter(|f| now >= *f).map(|f| {
            let i = (now - f).as_nanos() / timeline.bucket.as_nanos();
            usize::try_from(i).unwrap_or(usize::MAX)
        });
        if slot.is_some_and(|i| i >= buckets) {
            // After the window: the IDs were handed out, so they are checked, not counted.
            if let Ok(ranges) = result {
                for r in ranges {
                    out.fold.push(&layout, r);
                }
            }
            break;
        }
        match result {
            Ok(ranges) => {
                if slot.is_some() {
                    out.calls += 1;
                }
                for r in ranges {
                    let w = out.fold.push(&layout, r);
                    let n = u64::from(r.count);
                    match slot {
                        Some(i) => {
                            out.series[i] += n;
                            if let Some(c) = out.per_worker.get_mut(usize::from(w)) {
                                *c += n;
                            }
                            if let Some(s) = out.worker_series.get_mut(usize::from(w)) {
                                s[i] += n;
                            }
                        }
                        None => timeline.mark_seen(w),
                    }
                }
            }
            Err(e) => {
                *out.error_kinds.entry(kind(&e)).or_default() += 1;
                if slot.is_some() {
                    out.errors += 1;
                } else {
                    out.warmup_errors += 1;
                }
                if !e.is_retryable() {
                    break;
                }
                tokio::time::sleep(AFTER_ERROR).await;
            }
        }
    }
    out
}

fn secs(v: f64) -> Duration {
    Duration::from_secs_f64(v)
}

/// `--clients` clients of the address, each with a buffer of `--buffer-ms` of its share of
/// the expected workers' ceiling.
async fn connect_all(args: &Args) -> Result<Vec<Client>, String> {
    let timeout = Duration::from_millis(args.timeout_ms);
    // Sized with the default layout's tick (the one the simulation runs); only the buffer's
    // size depends on it, never a check.
    let per_ms = u64::from(Layout::DEFAULT.max_lease());
    let capacity = (u64::from(args.expect_workers) * per_ms * args.buffer_ms
        / u64::from(args.clients))
    .max(snowlease::client::DEFAULT_BUFFER_CAPACITY);
    let config = ClientConfig::new([args.addr.clone()])
        .timeout(timeout)
        .connect_timeout(timeout)
        .buffer_capacity(capacity);
    let connects =
        futures::future::join_all((0..args.clients).map(|_| Client::connect(config.clone()))).await;
    let mut clients = Vec::with_capacity(connects.len());
    for c in connects {
        clients.push(c.map_err(|e| format!("the client could not connect to {}: {e}", args.addr))?);
    }
    Ok(clients)
}

impl TaskOutcome {
    /// Waits for every task and adds up what it saw; a task that failed counts as an error.
    async fn merge(
        handles: Vec<tokio::task::JoinHandle<TaskOutcome>>,
        buckets: usize,
        workers: usize,
        per_worker_series: bool,
    ) -> TaskOutcome {
        let mut m = TaskOutcome {
            series: vec![0; buckets],
            per_worker: vec![0; workers],
            worker_series: vec![vec![0; buckets]; if per_worker_series { workers } else { 0 }],
            ..TaskOutcome::default()
        };
        for h in handles {
            match h.await {
                Ok(o) => m.absorb(o),
                Err(e) => {
                    *m.error_kinds
                        .entry(format!("task failed: {e}"))
                        .or_default() += 1;
                    m.errors += 1;
                }
            }
        }
        m
    }

    fn absorb(&mut self, o: TaskOutcome) {
        self.fold.absorb(o.fold);
        add(&mut self.series, &o.series);
        add(&mut self.per_worker, &o.per_worker);
        for (mine, theirs) in self.worker_series.iter_mut().zip(&o.worker_series) {
            add(mine, theirs);
        }
        self.calls += o.calls;
        self.errors += o.errors;
        self.warmup_errors += o.warmup_errors;
        for (k, n) in o.error_kinds {
            *self.error_kinds.entry(k).or_default() += n;
        }
    }
}

/// The measured window, as [`window`] ran it.
struct Window {
    warmup_s: f64,
    workers_at_start: u32,
    started_unix_ms: u64,
    cpu_s: f64,
}

/// Warm-up until every expected worker answered (at most `--warmup-max`), `--settle`, then
/// the measured window: its start goes to `--ready-file`, and this process's CPU time over it
/// is returned.
async fn window(args: &Args, timeline: &Timeline) -> Result<Window, String> {
    // Warm-up: bounded by --warmup-max, polled every 20 ms (a guess: fine-grained next to
    // the settle time, cheap next to the load).
    let warm_deadline = timeline.base + secs(args.warmup_max);
    while timeline.seen_count() < u32::from(args.expect_workers) && Instant::now() < warm_deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let warmup_s = timeline.base.elapsed().as_secs_f64();
    tokio::time::sleep(secs(args.settle)).await;
    let workers_at_start = timeline.seen_count();
    let cpu_before = cpu_seconds();
    let started = Instant::now();
    let started_unix_ms = snowlease::layout::unix_ms_now();
    timeline.start_measuring(started);
    if let Some(path) = &args.ready_file {
        std::fs::write(path, format!("{started_unix_ms}\n"))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    tokio::time::sleep_until(started + timeline.duration).await;
    let cpu_s = cpu_seconds() - cpu_before;

    Ok(Window {
        warmup_s,
        workers_at_start,
        started_unix_ms,
        cpu_s,
    })
}

/// `--tasks` load tasks (at least one per client) spread over the clients.
fn spawn_tasks(
    args: &Args,
    clients: &[Client],
    layout: Layout,
    timeline: &Arc<Timeline>,
    workers: usize,
) -> (usize, Vec<tokio::task::JoinHandle<TaskOutcome>>) {
    let tasks = args.tasks.max(args.clients) as usize;
    let handles = (0..tasks)
        .map(|i| {
            tokio::spawn(task(
                clients[i % clients.len()].clone(),
                layout,
                args.max,
                timeline.clone(),
                args.per_worker_series,
                workers,
            ))
        })
        .collect();
    (tasks, handles)
}

async fn drive(args: &Args) -> Result<Report, String> {
    let expect = args.expect_workers;
    let clients = connect_all(args).await?;
    let layout = clients[0].layout();
    let workers = usize::from(expect);
    let timeline = Arc::new(Timeline {
        base: Instant::now(),
        measure_from: AtomicU64::new(0),
        duration: secs(args.duration),
        bucket: Duration::from_millis(args.bucket_ms),
        seen: (0..usize::from(layout.max_worker()) / 64 + 1)
            .map(|_| AtomicU64::new(0))
            .collect(),
    });
    let (tasks, handles) = spawn_tasks(args, &clients, layout, &timeline, workers);

    let Window {
        warmup_s,
        workers_at_start,
        started_unix_ms,
        cpu_s,
    } = window(args, &timeline).await?;
    let TaskOutcome {
        fold,
        series,
        per_worker,
        worker_series,
        calls,
        errors,
        warmup_errors,
        error_kinds,
    } = TaskOutcome::merge(handles, timeline.buckets(), workers, args.per_worker_series).await;
    for c in &clients {
        c.close().await;
    }
    let verify = fold.verdict(&layout, expect);
    let ids: u64 = series.iter().sum();
    let seconds = timeline.duration.as_secs_f64();
    let ceiling = f64::from(expect) * stats::ceiling_per_worker(&layout);
    let ids_per_s = ids as f64 / seconds;
    let missing_workers: Vec<u16> = (0..expect)
        .filter(|w| per_worker[usize::from(*w)] == 0)
        .collect();
    Ok(Report {
        addr: args.addr.clone(),
        clients: args.clients,
        tasks: tasks as u32,
        threads: args.threads,
        max: args.max,
        expect_workers: expect,
        warmup_s,
        workers_at_start,
        started_unix_ms,
        seconds,
        ids,
        ids_per_s,
        calls,
        ceiling,
        share: ids_per_s / ceiling,
        workers_seen: u32::from(expect) - missing_workers.len() as u32,
        missing_workers,
        per_worker_ids: per_worker,
        bucket_ms: args.bucket_ms,
        series,
        worker_series: args.per_worker_series.then(|| {
            worker_series
                .into_iter()
                .enumerate()
                .map(|(w, s)| (w as u16, s))
                .collect()
        }),
        ok: verify.ok && errors == 0 && warmup_errors == 0,
        verify,
        client_errors: errors,
        warmup_errors,
        error_kinds,
        cpu_s,
        max_rss_kb: max_rss_kb(),
    })
}

fn add(into: &mut [u64], from: &[u64]) {
    for (a, b) in into.iter_mut().zip(from) {
        *a += b;
    }
}

/// User + system CPU seconds of this process (0 where unavailable).
fn cpu_seconds() -> f64 {
    snowlease_testkit::procfs::cpu_seconds(std::process::id()).unwrap_or(0.0)
}

/// Peak resident memory (`VmHWM`) of this process in kB (0 where unavailable).
fn max_rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn id(tick: u64, worker: u16, seq: u32) -> u64 {
        Layout::DEFAULT.compose(tick, worker, seq)
    }

    /// A fold of `ranges` (first ID, count), pushed in order in the default layout.
    fn fold(ranges: impl IntoIterator<Item = (u64, u32)>) -> Fold {
        let mut f = Fold::default();
        for (first, count) in ranges {
            f.push(&Layout::DEFAULT, IdRange { first, count });
        }
        f
    }

    #[test]
    fn whole_ticks_of_a_worker_in_order_fold_into_one_run() {
        let l = Layout::DEFAULT;
        let halves = (10..20).flat_map(|tick| [(id(tick, 3, 0), 2048), (id(tick, 3, 2048), 2048)]);
        let f = fold(halves.chain([(id(10, 4, 0), 1)]));
        let v = f.verdict(&l, 8);
        assert!(v.ok, "{v:?}");
        assert_eq!((v.ranges, v.runs, v.ids), (21, 2, 10 * 4096 + 1));
    }

    #[test]
    fn the_same_id_from_two_folds_is_an_overlap_with_an_example() {
        let l = Layout::DEFAULT;
        let mut a = fold([(id(5, 1, 0), 4096)]);
        a.absorb(fold([(id(5, 1, 4095), 1)]));
        let v = a.verdict(&l, 2);
        assert_eq!(v.overlaps, 1);
        assert!(!v.ok);
        assert_eq!(
            v.example_overlap,
            Some([[id(5, 1, 0), 4096], [id(5, 1, 4095), 1]])
        );
    }

    #[test]
    fn a_long_run_is_not_hidden_by_a_short_one_inside_it() {
        let l = Layout::DEFAULT;
        let whole_ticks = (0..4).map(|tick| (id(tick, 0, 0), 4096));
        let f = fold(whole_ticks.chain([(id(1, 0, 5), 1), (id(3, 0, 5), 1)]));
        assert_eq!(f.verdict(&l, 1).overlaps, 2);
    }

    #[test]
    fn equal_positions_of_different_workers_do_not_overlap() {
        let l = Layout::DEFAULT;
        let f = fold((0..4).map(|w| (id(7, w, 0), 4096)));
        let v = f.verdict(&l, 4);
        assert!(v.ok, "{v:?}");
        assert_eq!(v.runs, 4);
    }

    #[test]
    fn foreign_workers_tick_crossings_and_empty_ranges_fail() {
        let l = Layout::DEFAULT;
        let v = fold([(id(7, 9, 0), 1)]).verdict(&l, 4);
        assert_eq!((v.unexpected_worker, v.ok), (1, false));
        assert_eq!(fold([(id(7, 0, 4000), 97)]).verdict(&l, 4).crossing_tick, 1);
        assert!(
            !fold([(id(7, 0, 0), 0)]).verdict(&l, 4).ok,
            "an empty range and no IDs is no proof"
        );
        assert!(!Fold::default().verdict(&l, 4).ok);
    }

    #[test]
    fn the_window_splits_into_whole_buckets() {
        let t = Timeline {
            base: Instant::now(),
            measure_from: AtomicU64::new(0),
            duration: Duration::from_millis(1050),
            bucket: Duration::from_millis(100),
            seen: vec![AtomicU64::new(0), AtomicU64::new(0)],
        };
        assert_eq!(t.buckets(), 11);
        assert!(t.measure_from().is_none());
        t.start_measuring(t.base);
        assert_eq!(t.measure_from(), Some(t.base));
        t.mark_seen(3);
        t.mark_seen(3);
        t.mark_seen(70);
        assert_eq!(t.seen_count(), 2);
    }
}
