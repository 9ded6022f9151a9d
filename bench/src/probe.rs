//! The two availability rows of issue 11: a light client's latency while heavy ones press on
//! the server.
//!
//! - `--mode fairness`: `--connections` (default 500) raw connections each keep `--depth`
//!   (default 1) whole-tick LEASEs (`--batch`, default 4096) in flight, which drains the
//!   worker at its ceiling; one more connection, idle apart from that, sends a count=1 LEASE
//!   every `--probe-interval-ms` and times each reply ([`idle_probe`]). It has at most one
//!   request out, as an application asking for one ID would: a pipelined probe would
//!   measure its own queue on the connection (it serves requests in order), not the
//!   server's fairness. A reply slower than the interval delays the next probe to the next
//!   tick, so slow service means fewer samples, each the latency a lone request sees.
//! - `--mode peer-cap`: one peer (`--hog-source`, default 127.0.0.1) opens `--connections`
//!   (default 1,100) connections and holds them without sending a byte (or after HELLO with
//!   `--hog-hello`); another peer (`--probe-source`, default 127.0.0.2: every 127/8 address
//!   is loopback on Linux, and the server sees a different source IP) opens a fresh
//!   connection every `--probe-interval-ms`, sends HELLO and a count=1 LEASE, and times
//!   connect to LEASED ([`fresh_connection_probe`]). OVERLOADED (the server's answer at its
//!   connection cap) and every other failure are counted apart from the served probes. The
//!   probing peer first opens one connection of its own (it learns the layout) and keeps it,
//!   idle, for the run; it is opened before the held ones.
//!
//! Probes count when sent inside the measured window; IDs from every probe go to the overlap
//! check with the rest.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::{interval_at, timeout_at, Instant, MissedTickBehavior};

use snowlease::wire::{self, ErrorCode, Request, Response};

use crate::raw::{self, Opened};
use crate::settings::Timeline;
use crate::stats::{self, Counters, Latency};
use crate::verify::Block;

/// Probe connections of `--mode peer-cap` allowed in flight at once. A server that answers
/// within the timeout keeps far fewer open (interval 5 ms, answers in under a millisecond
/// when served, or OVERLOADED at once); the bound only stops a silent server from piling
/// up sockets in the bench.
const MAX_PROBES_IN_FLIGHT: usize = 256;

/// What the probing client saw.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeReport {
    /// What one probe is.
    pub what: String,
    /// Milliseconds between probes.
    pub interval_ms: f64,
    /// Probes sent in the measured window.
    pub sent: u64,
    /// Of those, answered with LEASED.
    pub served: u64,
    /// Of those, answered with ERROR OVERLOADED.
    pub overloaded: u64,
    /// Of those, anything else: another error, a close, a timeout.
    pub failed: u64,
    /// Failures by kind (whole run).
    pub failures: BTreeMap<String, u64>,
    /// Latency of the served probes.
    pub latency: Latency,
    /// `--mode peer-cap`: the peer holding connections.
    pub hog: Option<HogReport>,
}

/// The peer that holds connections open in `--mode peer-cap`.
#[derive(Debug, Clone, Serialize)]
pub struct HogReport {
    /// Its source address.
    pub source: IpAddr,
    /// Connections it tried to open.
    pub asked: u64,
    /// Connections the kernel completed.
    pub opened: u64,
    /// Connections that could not be made at all.
    pub connect_failed: u64,
    /// Connections the server answered with ERROR OVERLOADED (over the run).
    pub turned_away: u64,
    /// Connections the server closed for another reason (over the run).
    pub closed_by_server: u64,
    /// Whether each sent HELLO first.
    pub hello: bool,
}

/// One probe's result.
enum Outcome {
    Served(Block, Duration),
    Overloaded,
    Failed(String),
}

/// Running totals of the probes.
struct Tally {
    latency: Histogram<u64>,
    blocks: Vec<Block>,
    sent: u64,
    served: u64,
    overloaded: u64,
    failed: u64,
    failures: BTreeMap<String, u64>,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            latency: stats::histogram(),
            blocks: Vec::new(),
            sent: 0,
            served: 0,
            overloaded: 0,
            failed: 0,
            failures: BTreeMap::new(),
        }
    }

    /// Adds the outcome of a probe sent at `sent`; only probes sent in the window count.
    fn add(&mut self, outcome: Outcome, sent: Instant, timeline: &Timeline, counters: &Counters) {
        let counting = sent >= timeline.measure_from && sent < timeline.stop_at;
        if counting {
            self.sent += 1;
        }
        match outcome {
            Outcome::Served(block, took) => {
                self.blocks.push(block);
                if counting {
                    self.served += 1;
                    stats::record(&mut self.latency, took);
                    counters.add(u64::from(block.count), 1, 0);
                }
            }
            Outcome::Overloaded => {
                *self.failures.entry("ERROR OVERLOADED".into()).or_default() += 1;
                if counting {
                    self.overloaded += 1;
                    counters.add(0, 0, 1);
                }
            }
            Outcome::Failed(kind) => {
                *self.failures.entry(kind).or_default() += 1;
                if counting {
                    self.failed += 1;
                    counters.add(0, 0, 1);
                }
            }
        }
    }

    fn report(&self, what: &str, interval: Duration, hog: Option<HogReport>) -> ProbeReport {
        ProbeReport {
            what: what.to_owned(),
            interval_ms: interval.as_secs_f64() * 1000.0,
            sent: self.sent,
            served: self.served,
            overloaded: self.overloaded,
            failed: self.failed,
            failures: self.failures.clone(),
            latency: stats::latency(&self.latency),
            hog,
        }
    }
}

/// A count=1 LEASE every `interval` on the opened connection `opened` until the stop time,
/// each reply timed from its send; then the outstanding replies are drained (bounded by
/// `timeout`). Returns the report and the blocks received.
pub async fn idle_probe(
    opened: Opened,
    interval: Duration,
    timeout: Duration,
    timeline: Timeline,
    counters: Arc<Counters>,
) -> (ProbeReport, Vec<Block>) {
    let what = "LEASE count=1, one at a time, on an idle connection beside the load";
    let mut tally = Tally::new();
    if let Err(kind) =
        drive_idle_probe(opened, interval, timeout, &timeline, &counters, &mut tally).await
    {
        *tally.failures.entry(kind).or_default() += 1;
    }
    let report = tally.report(what, interval, None);
    (report, std::mem::take(&mut tally.blocks))
}

async fn drive_idle_probe(
    opened: Opened,
    interval: Duration,
    timeout: Duration,
    timeline: &Timeline,
    counters: &Counters,
    tally: &mut Tally,
) -> Result<(), String> {
    let Opened {
        mut stream,
        mut buf,
        ..
    } = opened;
    let mut ticks = interval_at(Instant::now(), interval);
    // After a reply slower than the interval the next probe goes out at the next tick, not
    // in a burst of the missed ones: the connection stays idle between probes.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut request_id = 0u32;
    // Bounded: no probe starts after stop_at, and each waits at most `timeout`.
    loop {
        if ticks.tick().await >= timeline.stop_at {
            return Ok(());
        }
        request_id = request_id.wrapping_add(1);
        let lease = Request::Lease {
            request_id,
            count: 1,
        }
        .to_bytes();
        let sent = Instant::now();
        let deadline = sent + timeout;
        raw::write(&mut stream, &lease, deadline).await?;
        let response = loop {
            if let Some(r) =
                wire::decode_response(&mut buf).map_err(|e| format!("malformed reply: {e}"))?
            {
                break r;
            }
            match timeout_at(deadline, stream.read_buf(&mut buf)).await {
                Ok(Ok(0)) => return Err("closed".into()),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(format!("io: {}", e.kind())),
                Err(_) => return Err("reply timeout".into()),
            }
        };
        let took = sent.elapsed();
        tally.add(
            classify(response, request_id, took),
            sent,
            timeline,
            counters,
        );
    }
}

/// What a reply to the probe's LEASE `id` means.
fn classify(response: Response, id: u32, took: Duration) -> Outcome {
    match response {
        Response::Leased {
            request_id,
            first_id,
            count,
        } if request_id == id && count >= 1 => Outcome::Served(
            Block {
                first: first_id,
                count,
            },
            took,
        ),
        Response::Error { code, .. } if code == ErrorCode::OVERLOADED => Outcome::Overloaded,
        Response::Error { code, .. } => Outcome::Failed(format!("ERROR {}", code.name())),
        other => Outcome::Failed(format!("unexpected {}", short(&other))),
    }
}

fn short(r: &Response) -> String {
    let text = format!("{r:?}");
    text.split([' ', '(', '{']).next().unwrap_or("").to_owned()
}

/// `--mode peer-cap`'s two peers.
#[derive(Debug, Clone)]
pub struct PeerCap {
    /// The server.
    pub server: SocketAddr,
    /// Source of the held connections.
    pub hog_source: IpAddr,
    /// Connections held.
    pub hog_connections: usize,
    /// Whether the held connections send HELLO first.
    pub hog_hello: bool,
    /// Source of the probes.
    pub probe_source: IpAddr,
    /// Between probes.
    pub interval: Duration,
    /// Bound on each connect and each reply.
    pub timeout: Duration,
    /// HELLO token.
    pub token: Option<String>,
}

/// A connection from `source` to `server`, bounded by `deadline`.
async fn connect_from(
    source: IpAddr,
    server: SocketAddr,
    deadline: Instant,
) -> Result<TcpStream, String> {
    let socket = match source {
        IpAddr::V4(_) => TcpSocket::new_v4(),
        IpAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(|e| format!("socket: {}", e.kind()))?;
    socket
        .bind(SocketAddr::new(source, 0))
        .map_err(|e| format!("cannot bind {source}: {e}"))?;
    match timeout_at(deadline, socket.connect(server)).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        Ok(Err(e)) => Err(format!("connect: {}", e.kind())),
        Err(_) => Err("connect timeout".into()),
    }
}

fn hello_bytes(token: Option<&str>) -> BytesMut {
    Request::Hello {
        version: wire::VERSION,
        token: Bytes::copy_from_slice(token.unwrap_or_default().as_bytes()),
    }
    .to_bytes()
}

/// Counts of the held connections' fates, shared by their watcher tasks.
#[derive(Default)]
struct HogCounts {
    turned_away: AtomicU64,
    closed: AtomicU64,
}

/// The peer holding connections: open, watched, and given up at [`Hog::finish`].
pub struct Hog {
    report: HogReport,
    watchers: Vec<tokio::task::JoinHandle<()>>,
    counts: Arc<HogCounts>,
}

impl Hog {
    /// Opens the held connections (256 at a time), each watched by a task that reads what
    /// the server sends, counting OVERLOADED and closes.
    pub async fn open(p: &PeerCap) -> Result<Hog, String> {
        let counts = Arc::new(HogCounts::default());
        let mut watchers = Vec::with_capacity(p.hog_connections);
        let (mut opened, mut failed) = (0u64, 0u64);
        let hello = hello_bytes(p.token.as_deref());
        let mut first_error = None;
        for chunk in (0..p.hog_connections).collect::<Vec<_>>().chunks(256) {
            let deadline = Instant::now() + p.timeout;
            let attempts = futures::future::join_all(
                chunk
                    .iter()
                    .map(|_| connect_from(p.hog_source, p.server, deadline)),
            )
            .await;
            for attempt in attempts {
                match attempt {
                    Ok(mut s) => {
                        if p.hog_hello && s.write_all(&hello).await.is_err() {
                            failed += 1;
                            continue;
                        }
                        opened += 1;
                        watchers.push(tokio::spawn(watch_held(s, counts.clone())));
                    }
                    Err(e) => {
                        failed += 1;
                        first_error.get_or_insert(e);
                    }
                }
            }
        }
        if opened == 0 {
            return Err(format!(
                "no connection from {} could be opened: {}",
                p.hog_source,
                first_error.unwrap_or_default()
            ));
        }
        let report = HogReport {
            source: p.hog_source,
            asked: p.hog_connections as u64,
            opened,
            connect_failed: failed,
            turned_away: 0,
            closed_by_server: 0,
            hello: p.hog_hello,
        };
        Ok(Hog {
            report,
            watchers,
            counts,
        })
    }

    /// Closes every held connection and reports what became of them.
    pub fn finish(self) -> HogReport {
        for w in &self.watchers {
            w.abort();
        }
        let mut report = self.report;
        report.turned_away = self.counts.turned_away.load(Ordering::Relaxed);
        report.closed_by_server = self.counts.closed.load(Ordering::Relaxed);
        report
    }
}

/// Holds one connection, reading whatever the server sends, until the server closes it or
/// the task is aborted.
async fn watch_held(mut s: TcpStream, counts: Arc<HogCounts>) {
    let mut buf = BytesMut::with_capacity(256);
    let mut overloaded = false;
    while let Ok(n) = s.read_buf(&mut buf).await {
        if n == 0 {
            break;
        }
        while let Ok(Some(r)) = wire::decode_response(&mut buf) {
            if matches!(r, Response::Error { code, .. } if code == ErrorCode::OVERLOADED) {
                overloaded = true;
            }
        }
    }
    let counter = if overloaded {
        &counts.turned_away
    } else {
        &counts.closed
    };
    counter.fetch_add(1, Ordering::Relaxed);
}

/// One probe every `interval` from the other peer until the stop time, each a fresh
/// connection: connect, HELLO, LEASE count=1, its reply. Returns the report (with `hog`'s
/// side) and the blocks received.
pub async fn fresh_connection_probe(
    p: &PeerCap,
    hog: Hog,
    timeline: Timeline,
    counters: Arc<Counters>,
) -> (ProbeReport, Vec<Block>) {
    let mut tally = Tally::new();
    let limit = Arc::new(Semaphore::new(MAX_PROBES_IN_FLIGHT));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut ticks = interval_at(Instant::now(), p.interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
    // Bounded: launches stop at stop_at; each probe is bounded by its timeout.
    loop {
        let now = ticks.tick().await;
        if now >= timeline.stop_at {
            break;
        }
        let Ok(permit) = limit.clone().acquire_owned().await else {
            break;
        };
        let (p, tx) = (p.clone(), tx.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let outcome = one_probe(&p, started).await;
            drop(permit);
            let _ = tx.send((outcome, started));
        });
    }
    drop(tx);
    while let Some((outcome, started)) = rx.recv().await {
        tally.add(outcome, started, &timeline, &counters);
    }
    let hog = hog.finish();
    let what = format!(
        "from {}: connect, HELLO, LEASE count=1 on a fresh connection, while {} holds {} connections",
        p.probe_source, hog.source, hog.opened
    );
    let report = tally.report(&what, p.interval, Some(hog));
    (report, tally.blocks)
}

/// Connects from the probing peer and completes HELLO/WELCOME. The caller keeps the
/// connection open for the run: closed, its slot would free up at a moment the bench cannot
/// see, and whether the held connections or a probe took it would be a race.
pub async fn welcome_from(p: &PeerCap) -> Result<Opened, String> {
    let deadline = Instant::now() + p.timeout;
    let tcp = connect_from(p.probe_source, p.server, deadline).await?;
    let label = format!("{} (from {})", p.server, p.probe_source);
    raw::greet(tcp, &label, p.token.as_deref(), deadline, None).await
}

async fn one_probe(p: &PeerCap, started: Instant) -> Outcome {
    let deadline = started + p.timeout;
    let mut s = match connect_from(p.probe_source, p.server, deadline).await {
        Ok(s) => s,
        Err(e) => return Outcome::Failed(e),
    };
    let mut out = BytesMut::new();
    out.extend_from_slice(&hello_bytes(p.token.as_deref()));
    Request::Lease {
        request_id: 1,
        count: 1,
    }
    .encode(&mut out);
    // A server that turned the connection away may have closed it already: its ERROR
    // still waits in the receive buffer, so a failed write is not the verdict.
    let _ = timeout_at(deadline, s.write_all(&out)).await;
    let mut buf = BytesMut::with_capacity(256);
    loop {
        loop {
            match wire::decode_response(&mut buf) {
                Ok(Some(Response::Welcome(_))) => {}
                Ok(Some(r)) => return classify(r, 1, started.elapsed()),
                Ok(None) => break,
                Err(e) => return Outcome::Failed(format!("malformed reply: {e}")),
            }
        }
        match timeout_at(deadline, s.read_buf(&mut buf)).await {
            Ok(Ok(0)) => return Outcome::Failed("closed".into()),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Outcome::Failed(format!("io: {}", e.kind())),
            Err(_) => return Outcome::Failed("timeout".into()),
        }
    }
}
