//! `--mode raw`: the server measured through the bare wire protocol, no client library.
//!
//! Each connection is one task that owns its socket. It sends HELLO, then `depth` LEASEs of
//! `batch` IDs, then loops: read whatever replies have arrived, decode them all, and for each
//! one send one new LEASE in a single write, so `depth` requests stay in flight until the stop
//! time. Requests are answered in order, so send times live in a FIFO and a reply's latency is
//! its read time minus the send time at the front. After the stop time no more requests go
//! out and the outstanding replies are drained, bounded by the timeout.
//!
//! With `--bulk N` (protocol version 2) the connection sends HELLO version 2 and BULK_LEASEs
//! of `N` instead of LEASEs; each BULK_LEASED is checked like a client must check it
//! (protocol.md section 11: the run counts sum to 1..=N, every run's worker is in WELCOME's
//! set, no run passes the layout's last tick, each run starts above the last one of its
//! worker on this connection), and every run is expanded into its per-tick blocks, which go to
//! the overlap check and the counters exactly like LEASED blocks. One BULK_LEASED counts as
//! one lease (one round trip), however many runs and blocks it carries.
//!
//! With `--tls` every connection is a TLS session over the same bytes ([`open`] does the
//! handshake before HELLO). `--mode reconnect` ([`reconnect`]) measures connection setup
//! instead: each task opens a connection (TCP, TLS, HELLO/WELCOME), leases once, closes, and
//! starts over, so its leases/s are connections/s.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use hdrhistogram::Histogram;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};

use snowlease::wire::{self, goaway, Request, Response, Run, Welcome, WorkerSet};
use snowlease::Layout;

use crate::settings::Timeline;
use crate::stats::{self, Counters};
use crate::tls::TlsTarget;
use crate::verify::Block;

/// A byte stream the load runs over: TCP or TLS over TCP.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One connection's stream. Boxed for both plaintext and TLS, so the two measure the same
/// code path apart from TLS itself (one indirect call per read or write).
pub type Stream = Box<dyn Io>;

/// What the raw mode needs to know.
#[derive(Debug, Clone)]
pub struct RawParams {
    /// Server address.
    pub addr: String,
    /// Requests kept in flight per connection.
    pub depth: usize,
    /// IDs asked per LEASE.
    pub batch: u32,
    /// Bound on connecting, on each wait for a reply, and on the final drain.
    pub timeout: Duration,
    /// HELLO token, if the server wants one.
    pub token: Option<String>,
    /// Keep every block for the overlap check.
    pub verify: bool,
    /// Send BULK_LEASEs of this many IDs instead of LEASEs (the connections must have
    /// been opened with version 2).
    pub bulk: Option<u32>,
}

/// What one connection brings back.
#[derive(Debug)]
pub struct ConnOutcome {
    /// Blocks received (empty without `verify`).
    pub blocks: Vec<Block>,
    /// Request latencies in nanoseconds, for requests sent in the measured window.
    pub latency: Histogram<u64>,
    /// Errors by kind.
    pub errors: BTreeMap<String, u64>,
}

/// A connected socket after HELLO/WELCOME.
pub struct Opened {
    pub(crate) stream: Stream,
    pub(crate) buf: BytesMut,
    /// What the server said about itself.
    pub welcome: Welcome,
    /// A version-2 WELCOME's worker set and bulk limit; `None` on a version-1 connection.
    pub workers: Option<WorkerSet>,
}

/// Connects, completes the TLS handshake (with `tls`), sends HELLO and waits for WELCOME,
/// all within `timeout`, as a version-1 client.
pub async fn open(
    addr: &str,
    token: Option<&str>,
    timeout: Duration,
    tls: Option<&TlsTarget>,
) -> Result<Opened, String> {
    open_as(wire::VERSION, addr, token, timeout, tls).await
}

/// [`open`] with HELLO `version` (2 for bulk leases).
pub async fn open_as(
    version: u16,
    addr: &str,
    token: Option<&str>,
    timeout: Duration,
    tls: Option<&TlsTarget>,
) -> Result<Opened, String> {
    let deadline = Instant::now() + timeout;
    let tcp = match timeout_at(deadline, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(format!("cannot connect to {addr}: {e}")),
        Err(_) => return Err(format!("connecting to {addr} timed out after {timeout:?}")),
    };
    greet_as(version, tcp, addr, token, deadline, tls).await
}

/// On a connected socket: TLS handshake (with `tls`), HELLO version 1, WELCOME, by
/// `deadline`.
pub async fn greet(
    tcp: TcpStream,
    addr: &str,
    token: Option<&str>,
    deadline: Instant,
    tls: Option<&TlsTarget>,
) -> Result<Opened, String> {
    greet_as(wire::VERSION, tcp, addr, token, deadline, tls).await
}

/// [`greet`] with HELLO `version`. A WELCOME must name a version the bench asked for at
/// most, and a version-2 one must be the 35-byte form.
pub async fn greet_as(
    version: u16,
    tcp: TcpStream,
    addr: &str,
    token: Option<&str>,
    deadline: Instant,
    tls: Option<&TlsTarget>,
) -> Result<Opened, String> {
    tcp.set_nodelay(true)
        .map_err(|e| format!("cannot set TCP_NODELAY: {e}"))?;
    let mut stream: Stream = match tls {
        None => Box::new(tcp),
        Some(tls) => match timeout_at(deadline, tls.connect(tcp)).await {
            Ok(Ok(s)) => Box::new(s),
            Ok(Err(e)) => return Err(format!("TLS handshake with {addr} failed: {e}")),
            Err(_) => return Err(format!("TLS handshake with {addr} timed out")),
        },
    };
    let hello = Request::Hello {
        version,
        token: Bytes::copy_from_slice(token.unwrap_or_default().as_bytes()),
    };
    write(&mut stream, &hello.to_bytes(), deadline)
        .await
        .map_err(|e| format!("sending HELLO to {addr}: {e}"))?;
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let (welcome, workers) = loop {
        match wire::decode_response(&mut buf) {
            Ok(Some(Response::Welcome(w))) if w.version == wire::VERSION => break (w, None),
            Ok(Some(Response::WelcomeV2 { welcome, workers }))
                if welcome.version == wire::VERSION_2 && version >= wire::VERSION_2 =>
            {
                break (welcome, Some(workers))
            }
            Ok(Some(other)) => return Err(format!("{addr} answered HELLO with {other:?}")),
            Err(e) => return Err(format!("{addr} sent a malformed frame: {e}")),
            Ok(None) => {}
        }
        match timeout_at(deadline, stream.read_buf(&mut buf)).await {
            Ok(Ok(0)) => return Err(format!("{addr} closed the connection after HELLO")),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(format!("reading WELCOME from {addr}: {e}")),
            Err(_) => return Err(format!("{addr} sent no WELCOME in time")),
        }
    };
    Ok(Opened {
        stream,
        buf,
        welcome,
        workers,
    })
}

/// Writes and flushes (TLS holds records until a flush; TCP's flush is free).
pub(crate) async fn write(
    stream: &mut Stream,
    bytes: &[u8],
    deadline: Instant,
) -> Result<(), String> {
    let write = async {
        stream.write_all(bytes).await?;
        stream.flush().await
    };
    match timeout_at(deadline, write).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("write timed out".into()),
    }
}

/// One request on the wire.
struct Pending {
    request_id: u32,
    asked: u32,
    sent: Instant,
}

/// What a bulk-leasing connection needs to check and expand its replies.
struct Bulk {
    /// IDs per BULK_LEASE.
    count: u32,
    /// The layout WELCOME announced: runs expand into blocks with it.
    layout: Layout,
    /// The workers WELCOME announced: every run's worker must be one of them.
    workers: WorkerSet,
    /// Per worker, one past the position of the last ID received on this connection.
    next_position: BTreeMap<u16, u64>,
}

/// The state of one driven connection.
struct Driver<'a> {
    params: &'a RawParams,
    /// `Some` with `--bulk`: BULK_LEASEs instead of LEASEs.
    bulk: Option<Bulk>,
    timeline: Timeline,
    counters: &'a Counters,
    in_flight: VecDeque<Pending>,
    next_request_id: u32,
    out: BytesMut,
    outcome: ConnOutcome,
    /// The server said GOAWAY: send nothing more.
    going_away: bool,
}

/// Drives one opened connection until the stop time and the drain are over.
pub async fn drive(
    opened: Opened,
    params: Arc<RawParams>,
    timeline: Timeline,
    counters: Arc<Counters>,
) -> ConnOutcome {
    let Opened {
        mut stream,
        mut buf,
        welcome,
        workers,
    } = opened;
    let bulk = match bulk_context(&params, &welcome, workers) {
        Ok(bulk) => bulk,
        Err(kind) => {
            return ConnOutcome {
                blocks: Vec::new(),
                latency: stats::histogram(),
                errors: BTreeMap::from([(kind, 1)]),
            }
        }
    };
    let mut driver = Driver {
        params: &params,
        bulk,
        timeline,
        counters: &counters,
        in_flight: VecDeque::with_capacity(params.depth),
        next_request_id: 0,
        out: BytesMut::with_capacity(params.depth * 13),
        outcome: ConnOutcome {
            blocks: Vec::new(),
            latency: stats::histogram(),
            errors: BTreeMap::new(),
        },
        going_away: false,
    };
    if let Err(kind) = driver.run(&mut stream, &mut buf).await {
        driver.error(kind);
    }
    driver.outcome
}

/// The layout a server announced in WELCOME.
pub(crate) fn welcome_layout(w: &Welcome) -> Result<Layout, String> {
    w.layout()
        .map_err(|e| format!("the server announced an invalid layout: {e}"))
}

/// The bulk context of a connection driven with `--bulk` (`None` without it).
fn bulk_context(
    params: &RawParams,
    welcome: &Welcome,
    workers: Option<WorkerSet>,
) -> Result<Option<Bulk>, String> {
    let Some(count) = params.bulk else {
        return Ok(None);
    };
    let workers =
        workers.ok_or("--bulk on a version-1 connection (the server sent no version-2 WELCOME)")?;
    Ok(Some(Bulk {
        count,
        layout: welcome_layout(welcome)?,
        workers,
        next_position: BTreeMap::new(),
    }))
}

impl Driver<'_> {
    async fn run(&mut self, stream: &mut Stream, buf: &mut BytesMut) -> Result<(), String> {
        let drain_until = self.timeline.stop_at + self.params.timeout;
        self.top_up(Instant::now());
        self.flush(stream).await?;
        // Bounded in time: every wait has a deadline and sending stops at `stop_at`.
        while !self.in_flight.is_empty() {
            let now = Instant::now();
            let deadline = if now < self.timeline.stop_at {
                now + self.params.timeout
            } else {
                drain_until
            };
            match timeout_at(deadline, stream.read_buf(buf)).await {
                Ok(Ok(0)) => return Err("closed".into()),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(format!("io: {}", e.kind())),
                Err(_) if now >= self.timeline.stop_at => return Err("drain timeout".into()),
                Err(_) => return Err("reply timeout".into()),
            }
            let now = Instant::now();
            self.take_replies(buf, now)?;
            if now < self.timeline.stop_at && !self.going_away {
                self.top_up(now);
                self.flush(stream).await?;
            }
        }
        Ok(())
    }

    /// Encodes LEASEs (BULK_LEASEs with `--bulk`) until `depth` are in flight.
    fn top_up(&mut self, now: Instant) {
        while self.in_flight.len() < self.params.depth {
            self.next_request_id = self.next_request_id.wrapping_add(1);
            let request_id = self.next_request_id;
            let (request, asked) = match &self.bulk {
                Some(bulk) => (
                    Request::BulkLease {
                        request_id,
                        count: bulk.count,
                    },
                    bulk.count,
                ),
                None => (
                    Request::Lease {
                        request_id,
                        count: self.params.batch,
                    },
                    self.params.batch,
                ),
            };
            request.encode(&mut self.out);
            self.in_flight.push_back(Pending {
                request_id,
                asked,
                sent: now,
            });
        }
    }

    async fn flush(&mut self, stream: &mut Stream) -> Result<(), String> {
        if self.out.is_empty() {
            return Ok(());
        }
        let deadline = Instant::now() + self.params.timeout;
        let result = write(stream, &self.out, deadline).await;
        self.out.clear();
        result.map_err(|e| format!("write: {e}"))
    }

    /// Decodes every complete reply in `buf`, all stamped with the read time `now`.
    fn take_replies(&mut self, buf: &mut BytesMut, now: Instant) -> Result<(), String> {
        let (mut ids, mut leases, mut errors) = (0u64, 0u64, 0u64);
        let counting = now >= self.timeline.measure_from && now < self.timeline.stop_at;
        let result = loop {
            let response = match wire::decode_response(buf) {
                Ok(Some(r)) => r,
                Ok(None) => break Ok(()),
                Err(e) => break Err(format!("malformed reply: {e}")),
            };
            match response {
                Response::Leased {
                    request_id,
                    first_id,
                    count,
                } => {
                    let pending = self.answered(request_id)?;
                    if count == 0 || count > pending.asked {
                        self.error("protocol: LEASED count outside 1..=asked".into());
                        errors += 1;
                    }
                    if self.params.verify {
                        self.outcome.blocks.push(Block {
                            first: first_id,
                            count,
                        });
                    }
                    if pending.sent >= self.timeline.measure_from {
                        stats::record(&mut self.outcome.latency, now - pending.sent);
                    }
                    ids += u64::from(count);
                    leases += 1;
                }
                Response::BulkLeased { request_id, runs } => {
                    let pending = self.answered(request_id)?;
                    let Some(bulk) = self.bulk.as_mut() else {
                        break Err("protocol: BULK_LEASED on a LEASE connection".into());
                    };
                    let took = take_runs(bulk, &runs, pending.asked, self.params.verify);
                    for kind in took.errors {
                        self.error(kind);
                        errors += 1;
                    }
                    self.outcome.blocks.extend(took.blocks);
                    if pending.sent >= self.timeline.measure_from {
                        stats::record(&mut self.outcome.latency, now - pending.sent);
                    }
                    ids += took.ids;
                    leases += 1;
                }
                Response::Error {
                    request_id, code, ..
                } => {
                    self.answered(request_id)?;
                    self.error(format!("ERROR {}", code.name()));
                    errors += 1;
                }
                Response::GoAway { reason } => {
                    self.going_away = true;
                    self.error(format!("GOAWAY {}", goaway::name(reason)));
                    errors += 1;
                }
                other => break Err(format!("protocol: unexpected {other:?}")),
            }
        };
        if counting {
            self.counters.add(ids, leases, errors);
        }
        result
    }

    /// Pops the oldest request, which `request_id` must answer.
    fn answered(&mut self, request_id: u32) -> Result<Pending, String> {
        let pending = self
            .in_flight
            .pop_front()
            .ok_or_else(|| format!("protocol: reply {request_id} with nothing in flight"))?;
        if pending.request_id != request_id {
            return Err(format!(
                "protocol: reply {request_id} out of order (expected {})",
                pending.request_id
            ));
        }
        Ok(pending)
    }

    fn error(&mut self, kind: String) {
        *self.outcome.errors.entry(kind).or_default() += 1;
    }
}

/// What one BULK_LEASED gave: its IDs, its blocks (with `verify`), and what was wrong.
#[derive(Debug, Default)]
struct TakenRuns {
    ids: u64,
    blocks: Vec<Block>,
    errors: Vec<String>,
}

/// Checks a BULK_LEASED's runs as protocol.md section 11 asks of a client and expands them
/// into blocks. A run that fails a check is counted as an error and neither counted nor
/// kept; the IDs of the others are.
fn take_runs(bulk: &mut Bulk, runs: &[Run], asked: u32, verify: bool) -> TakenRuns {
    let mut taken = TakenRuns::default();
    let total: u64 = runs.iter().map(|r| u64::from(r.count)).sum();
    if total == 0 || total > u64::from(asked) {
        taken
            .errors
            .push("protocol: BULK_LEASED run counts outside 1..=asked".into());
    }
    for run in runs {
        let worker = bulk.layout.decompose(run.first_id).worker;
        if !bulk.workers.contains(worker) {
            taken
                .errors
                .push("protocol: BULK_LEASED run of a worker outside the set".into());
            continue;
        }
        if !bulk.layout.run_fits(run.first_id, run.count) {
            taken
                .errors
                .push("protocol: BULK_LEASED run past the last tick".into());
            continue;
        }
        let start = bulk.layout.position(run.first_id);
        let floor = bulk.next_position.entry(worker).or_insert(0);
        if start < *floor {
            taken
                .errors
                .push("protocol: BULK_LEASED run not above its worker's last".into());
            continue;
        }
        *floor = start + u64::from(run.count);
        taken.ids += u64::from(run.count);
        if verify {
            taken.blocks.extend(
                bulk.layout
                    .blocks(run.first_id, run.count)
                    .map(|(first, count)| Block { first, count }),
            );
        }
    }
    taken
}

/// `--mode reconnect`: until the stop time, open a connection, lease `batch` once, close.
/// Latency is connect to LEASED; a failure is counted and the loop goes on.
pub async fn reconnect(
    params: Arc<RawParams>,
    tls: Option<Arc<TlsTarget>>,
    timeline: Timeline,
    counters: Arc<Counters>,
) -> ConnOutcome {
    let mut outcome = ConnOutcome {
        blocks: Vec::new(),
        latency: stats::histogram(),
        errors: BTreeMap::new(),
    };
    // Bounded in time: each pass is bounded by the timeout and no pass starts after stop_at.
    while Instant::now() < timeline.stop_at {
        let started = Instant::now();
        let result = once(&params, tls.as_deref()).await;
        let now = Instant::now();
        let counting = started >= timeline.measure_from && now < timeline.stop_at;
        match result {
            Ok(block) => {
                if counting {
                    stats::record(&mut outcome.latency, now - started);
                    counters.add(u64::from(block.count), 1, 0);
                }
                if params.verify {
                    outcome.blocks.push(block);
                }
            }
            Err(kind) => {
                if counting {
                    counters.add(0, 0, 1);
                }
                *outcome.errors.entry(kind).or_default() += 1;
            }
        }
    }
    outcome
}

/// One connection: open, one LEASE, its reply, close.
async fn once(params: &RawParams, tls: Option<&TlsTarget>) -> Result<Block, String> {
    let Opened {
        mut stream,
        mut buf,
        ..
    } = open(&params.addr, params.token.as_deref(), params.timeout, tls).await?;
    let deadline = Instant::now() + params.timeout;
    let lease = Request::Lease {
        request_id: 1,
        count: params.batch,
    };
    write(&mut stream, &lease.to_bytes(), deadline).await?;
    loop {
        match wire::decode_response(&mut buf) {
            Ok(Some(Response::Leased {
                first_id, count, ..
            })) => {
                return Ok(Block {
                    first: first_id,
                    count,
                })
            }
            Ok(Some(other)) => return Err(format!("unexpected {other:?}")),
            Err(e) => return Err(format!("malformed reply: {e}")),
            Ok(None) => {}
        }
        match timeout_at(deadline, stream.read_buf(&mut buf)).await {
            Ok(Ok(0)) => return Err("closed".into()),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(format!("io: {}", e.kind())),
            Err(_) => return Err("reply timeout".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn bulk() -> Bulk {
        Bulk {
            count: 10_000,
            layout: Layout::DEFAULT,
            workers: WorkerSet {
                first_worker: 4,
                worker_count: 2,
                max_bulk: wire::MAX_BULK,
            },
            next_position: BTreeMap::new(),
        }
    }

    fn run(tick: u64, worker: u16, sequence: u32, count: u32) -> Run {
        Run {
            first_id: Layout::DEFAULT.compose(tick, worker, sequence),
            count,
        }
    }

    /// Requires that taking the runs found nothing wrong.
    #[track_caller]
    fn assert_no_error(taken: &TakenRuns) {
        assert!(taken.errors.is_empty(), "{:?}", taken.errors);
    }

    /// Requires that the first error found is the one that says `what`.
    #[track_caller]
    fn assert_first_error(taken: &TakenRuns, what: &str) {
        assert!(taken.errors[0].contains(what), "{:?}", taken.errors);
    }

    #[test]
    fn runs_expand_into_per_tick_blocks_of_every_worker() {
        let mut b = bulk();
        let runs = [run(100, 4, 4000, 4096 + 200), run(100, 5, 0, 10)];
        let taken = take_runs(&mut b, &runs, 10_000, true);
        assert_no_error(&taken);
        assert_eq!(taken.ids, 4096 + 210);
        let l = Layout::DEFAULT;
        let want = [
            (l.compose(100, 4, 4000), 96),
            (l.compose(101, 4, 0), 4096),
            (l.compose(102, 4, 0), 104),
            (l.compose(100, 5, 0), 10),
        ];
        let got: Vec<(u64, u32)> = taken.blocks.iter().map(|b| (b.first, b.count)).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn without_verify_runs_are_counted_but_not_kept() {
        let taken = take_runs(&mut bulk(), &[run(7, 4, 0, 5000)], 10_000, false);
        assert_eq!((taken.ids, taken.blocks.len()), (5000, 0));
    }

    #[test]
    fn a_run_of_a_foreign_worker_is_an_error_and_not_counted() {
        let taken = take_runs(
            &mut bulk(),
            &[run(7, 4, 0, 5), run(7, 9, 0, 5)],
            10_000,
            true,
        );
        assert_eq!(taken.ids, 5);
        assert_eq!(taken.blocks.len(), 1);
        assert_first_error(&taken, "outside the set");
    }

    #[test]
    fn more_ids_than_asked_is_an_error() {
        let taken = take_runs(&mut bulk(), &[run(7, 4, 0, 11)], 10, true);
        assert_first_error(&taken, "outside 1..=asked");
    }

    #[test]
    fn a_run_not_above_its_workers_last_is_an_error() {
        let mut b = bulk();
        assert_no_error(&take_runs(&mut b, &[run(7, 4, 0, 100)], 10_000, true));
        let again = take_runs(&mut b, &[run(7, 4, 50, 10)], 10_000, true);
        assert_eq!(again.ids, 0);
        assert_first_error(&again, "not above");
        // Another worker has its own floor.
        assert_no_error(&take_runs(&mut b, &[run(7, 5, 0, 10)], 10_000, true));
    }

    #[test]
    fn a_run_past_the_last_tick_is_an_error() {
        let last = Layout::DEFAULT.max_tick();
        let taken = take_runs(&mut bulk(), &[run(last, 4, 4000, 200)], 10_000, true);
        assert_eq!(taken.ids, 0);
        assert_first_error(&taken, "last tick");
    }
}
