//! `snowcat lease N`: HELLO for the server's max_lease, then LEASE requests pipelined up to
//! [`MAX_IN_FLIGHT`] at a time, each asking for what is still unasked (at most max_lease).
//! A reply may carry fewer IDs than asked (the rest of a tick); the shortfall goes back into
//! the unasked pool, so N IDs are printed in the end whatever the split. Replies come back in
//! request order, which is checked, and IDs go to a buffered stdout.
//!
//! With `--bulk` the HELLO offers protocol version 2 and the requests are BULK_LEASEs of up to
//! the server's max_bulk; each BULK_LEASED is checked like the client library checks it
//! ([`Pipeline::accept_runs`]: counts, worker set, layout's end, each run above its
//! worker's last) and its runs are expanded into per-tick blocks before anything is printed.

use std::collections::{HashMap, VecDeque};
use std::io::{BufWriter, Write};

use clap::Args;
use tokio::time::Instant;

use snowlease::wire::{self, goaway, Request, Response, Run, WorkerSet};
use snowlease::Layout;

use crate::common::{Common, Failure};
use crate::conn::{self, FrameReader, FrameWriter};

/// Requests kept in flight. Sixteen full requests are 16 ms of one worker's output, more than a
/// loopback or LAN round trip, so the server never waits on snowcat; the bound keeps a huge N
/// from queueing requests the server would answer long after the timeout. Bulk leases use the
/// same bound: a server grants each at most its workers' lead (100 ms by default), so more in
/// flight would only wait for its clock.
const MAX_IN_FLIGHT: usize = 16;

/// Arguments of `snowcat lease`.
#[derive(Debug, Args)]
pub struct LeaseArgs {
    /// How many IDs to lease (may exceed the server's max_lease; requests are split).
    #[arg(value_parser = clap::value_parser!(u64).range(1..))]
    count: u64,
    /// Print `first count` per block received instead of every ID (a block is consecutive
    /// IDs inside one millisecond of one worker; with --bulk, each run's blocks).
    #[arg(long, conflicts_with = "runs")]
    ranges: bool,
    /// Ask with BULK_LEASE (protocol version 2): HELLO offers version 2 and each request asks
    /// for up to the server's max_bulk IDs, answered in runs from every worker it holds.
    #[arg(long)]
    bulk: bool,
    /// With --bulk: print one summary line per run instead of every ID
    /// (`run first=F count=C worker=W ticks=T`).
    #[arg(long, requires = "bulk")]
    runs: bool,
}

/// What a bulk pipeline needs to check and expand runs.
struct Bulk {
    layout: Layout,
    workers: WorkerSet,
    /// End (exclusive) of the last run received from each worker.
    last_end: HashMap<u16, u64>,
}

/// The requests sent and not yet answered, oldest first.
struct Pipeline {
    in_flight: VecDeque<(u32, u32)>,
    unasked: u64,
    next_request_id: u32,
    /// Largest count per request: max_lease, or max_bulk with `bulk`.
    max_ask: u32,
    bulk: Option<Bulk>,
}

impl Pipeline {
    /// Encodes requests until the window is full or nothing is left to ask.
    fn fill(&mut self, out: &mut bytes::BytesMut) {
        while self.in_flight.len() < MAX_IN_FLIGHT && self.unasked > 0 {
            let ask = self.unasked.min(u64::from(self.max_ask)) as u32;
            self.unasked -= u64::from(ask);
            self.next_request_id = self.next_request_id.wrapping_add(1);
            let (request_id, count) = (self.next_request_id, ask);
            let request = if self.bulk.is_some() {
                Request::BulkLease { request_id, count }
            } else {
                Request::Lease { request_id, count }
            };
            request.encode(out);
            self.in_flight.push_back((self.next_request_id, ask));
        }
    }

    /// Checks a reply of `count` IDs against the oldest request and returns the shortfall to
    /// the unasked pool.
    fn accept(&mut self, name: &str, request_id: u32, count: u64) -> Result<(), Failure> {
        let Some((expected_id, asked)) = self.in_flight.pop_front() else {
            return Err(Failure::Failed(format!(
                "{name} id={request_id} arrived with no request outstanding"
            )));
        };
        if request_id != expected_id {
            return Err(Failure::Failed(format!(
                "replies out of order: expected {name} id={expected_id}, got id={request_id}"
            )));
        }
        if count == 0 || count > u64::from(asked) {
            return Err(Failure::Failed(format!(
                "{name} id={request_id} carries {count} IDs for a request of {asked}"
            )));
        }
        self.unasked += u64::from(asked) - count;
        Ok(())
    }

    /// Checks a BULK_LEASED against the oldest request, the worker set, the layout's end and
    /// each worker's last run, all before any of it is printed.
    fn accept_runs(&mut self, request_id: u32, runs: &[Run]) -> Result<(), Failure> {
        let Some(bulk) = &mut self.bulk else {
            return Err(Failure::Failed(
                "BULK_LEASED in reply to a LEASE".to_owned(),
            ));
        };
        let total = runs.iter().map(|r| u64::from(r.count)).sum();
        let mut ends = bulk.last_end.clone();
        for run in runs {
            let bad = |why: &str| {
                Failure::Failed(format!(
                    "BULK_LEASED id={request_id} run first={} count={}: {why}",
                    run.first_id, run.count
                ))
            };
            let worker = bulk.layout.decompose(run.first_id).worker;
            if !bulk.workers.contains(worker) {
                return Err(bad(&format!("worker {worker} is outside the server's set")));
            }
            if run.first_id >= 1 << 63 || !bulk.layout.run_fits(run.first_id, run.count) {
                return Err(bad("empty or past the layout's last tick"));
            }
            if ends.get(&worker).is_some_and(|&end| run.first_id < end) {
                return Err(bad("below the end of the worker's previous run"));
            }
            let (last, n) = bulk
                .layout
                .blocks(run.first_id, run.count)
                .last()
                .unwrap_or((run.first_id, 1));
            ends.insert(worker, last + u64::from(n));
        }
        bulk.last_end = ends;
        self.accept("BULK_LEASED", request_id, total)
    }
}

/// Runs `snowcat lease`.
pub async fn run(common: &Common, args: &LeaseArgs) -> Result<(), Failure> {
    let timeout = common.timeout();
    let (mut reader, mut writer) = conn::connect(common, timeout).await?;
    let version = if args.bulk {
        wire::VERSION_2
    } else {
        wire::VERSION
    };
    let (welcome, workers) = conn::handshake_version(
        &mut reader,
        &mut writer,
        common.token.as_deref(),
        version,
        timeout,
    )
    .await?;
    if welcome.max_lease == 0 {
        return Err(Failure::Failed("the server announced max_lease 0".into()));
    }
    let layout = welcome
        .layout()
        .map_err(|_| Failure::Failed("the server announced an invalid layout".into()))?;
    let (max_ask, bulk) = match (args.bulk, workers) {
        (false, _) => (welcome.max_lease, None),
        (true, None) => {
            return Err(Failure::Failed(
                "the server speaks protocol version 1 only; --bulk needs version 2".into(),
            ))
        }
        (true, Some(workers)) => {
            let bulk = Bulk {
                layout,
                workers,
                last_end: HashMap::new(),
            };
            (workers.max_bulk.max(1), Some(bulk))
        }
    };
    let mut pipeline = Pipeline {
        in_flight: VecDeque::with_capacity(MAX_IN_FLIGHT),
        unasked: args.count,
        next_request_id: 0,
        max_ask,
        bulk,
    };
    let stdout = std::io::stdout();
    let mut out = BufWriter::with_capacity(64 * 1024, stdout.lock());
    let result = pump(
        &mut pipeline,
        &mut reader,
        &mut writer,
        &mut out,
        args,
        timeout,
    )
    .await;
    out.flush().map_err(Failure::stdout)?;
    result
}

async fn pump(
    pipeline: &mut Pipeline,
    reader: &mut FrameReader,
    writer: &mut FrameWriter,
    out: &mut impl Write,
    args: &LeaseArgs,
    timeout: std::time::Duration,
) -> Result<(), Failure> {
    let mut requests = bytes::BytesMut::new();
    let mut received = 0u64;
    loop {
        pipeline.fill(&mut requests);
        if !requests.is_empty() {
            writer
                .send(&requests, Instant::now() + timeout)
                .await
                .map_err(|e| Failure::Failed(format!("sending a request failed: {e}")))?;
            requests.clear();
        }
        if pipeline.in_flight.is_empty() {
            return Ok(());
        }
        let frame = reader
            .next_frame(Instant::now() + timeout)
            .await
            .map_err(|e| Failure::Failed(format!("{e} after {received} of {} IDs", args.count)))?;
        match frame.response {
            Response::Leased {
                request_id,
                first_id,
                count,
            } if pipeline.bulk.is_none() => {
                pipeline.accept("LEASED", request_id, u64::from(count))?;
                received += u64::from(count);
                print_block(out, first_id, count, args.ranges).map_err(Failure::stdout)?;
            }
            Response::BulkLeased { request_id, runs } => {
                pipeline.accept_runs(request_id, &runs)?;
                let layout = pipeline.bulk.as_ref().map_or(Layout::DEFAULT, |b| b.layout);
                for run in &runs {
                    received += u64::from(run.count);
                    print_run(out, &layout, run, args).map_err(Failure::stdout)?;
                }
            }
            Response::Error {
                request_id,
                code,
                message,
            } => {
                return Err(Failure::Failed(format!(
                    "server ERROR for request {request_id}: {code:?}: {message} \
                     (after {received} of {} IDs)",
                    args.count
                )))
            }
            Response::GoAway { reason } => {
                return Err(Failure::Failed(format!(
                    "server sent GOAWAY {} after {received} of {} IDs",
                    goaway::name(reason),
                    args.count
                )))
            }
            other => {
                return Err(Failure::Failed(format!(
                    "unexpected reply: {}",
                    crate::format::response_line(&other, &Layout::DEFAULT)
                )))
            }
        }
    }
}

fn print_block(out: &mut impl Write, first: u64, count: u32, ranges: bool) -> std::io::Result<()> {
    if ranges {
        return writeln!(out, "{first} {count}");
    }
    for id in first..first.saturating_add(u64::from(count)) {
        writeln!(out, "{id}")?;
    }
    Ok(())
}

/// A checked run: one summary line with `--runs`, else its blocks as IDs or ranges.
fn print_run(
    out: &mut impl Write,
    layout: &Layout,
    run: &Run,
    args: &LeaseArgs,
) -> std::io::Result<()> {
    if args.runs {
        let worker = layout.decompose(run.first_id).worker;
        let ticks = layout.blocks(run.first_id, run.count).count();
        return writeln!(
            out,
            "run first={} count={} worker={worker} ticks={ticks}",
            run.first_id, run.count
        );
    }
    for (first, count) in layout.blocks(run.first_id, run.count) {
        print_block(out, first, count, args.ranges)?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn pipeline(unasked: u64) -> Pipeline {
        Pipeline {
            in_flight: VecDeque::new(),
            unasked,
            next_request_id: 0,
            max_ask: 4096,
            bulk: None,
        }
    }

    fn bulk_pipeline(unasked: u64) -> Pipeline {
        Pipeline {
            max_ask: 1 << 22,
            bulk: Some(Bulk {
                layout: Layout::DEFAULT,
                workers: WorkerSet {
                    first_worker: 4,
                    worker_count: 4,
                    max_bulk: 1 << 22,
                },
                last_end: HashMap::new(),
            }),
            ..pipeline(unasked)
        }
    }

    fn run(tick: u64, worker: u16, sequence: u32, count: u32) -> Run {
        Run {
            first_id: Layout::DEFAULT.compose(tick, worker, sequence),
            count,
        }
    }

    #[test]
    fn requests_are_split_at_max_lease_and_bounded_in_flight() {
        let mut p = pipeline(4096 * 20 + 5);
        let mut buf = bytes::BytesMut::new();
        p.fill(&mut buf);
        assert_eq!(p.in_flight.len(), MAX_IN_FLIGHT);
        assert!(p.in_flight.iter().all(|&(_, n)| n == 4096));
        assert_eq!(buf.len(), MAX_IN_FLIGHT * 13);
        assert_eq!(p.unasked, 4096 * (20 - MAX_IN_FLIGHT as u64) + 5);
    }

    #[test]
    fn a_partial_reply_returns_the_shortfall_to_the_pool() {
        let mut p = pipeline(10);
        p.fill(&mut bytes::BytesMut::new());
        assert_eq!(p.unasked, 0);
        p.accept("LEASED", 1, 4).unwrap();
        assert_eq!(p.unasked, 6);
    }

    #[test]
    fn replies_out_of_order_or_oversized_are_refused() {
        let mut p = pipeline(8192);
        p.fill(&mut bytes::BytesMut::new());
        assert!(p.accept("LEASED", 2, 1).is_err());
        let mut p = pipeline(5);
        p.fill(&mut bytes::BytesMut::new());
        assert!(p.accept("LEASED", 1, 6).is_err());
    }

    #[test]
    fn bulk_requests_ask_for_up_to_max_bulk_and_runs_are_checked_before_use() {
        let mut p = bulk_pipeline(5_000_000);
        let mut buf = bytes::BytesMut::new();
        p.fill(&mut buf);
        assert_eq!(p.in_flight, [(1, 1 << 22), (2, 5_000_000 - (1 << 22))]);
        assert_eq!(&buf[4..5], &[wire::opcode::BULK_LEASE]);
        // Short of what was asked: the rest goes back to the pool.
        p.accept_runs(1, &[run(100, 4, 0, 8192), run(100, 5, 10, 100)])
            .unwrap();
        assert_eq!(p.unasked, (1 << 22) - 8292);
        let text = |r: Result<(), Failure>| match r {
            Err(Failure::Failed(text)) => text,
            other => panic!("{other:?}"),
        };
        // (request id, runs, what the error says), each on a fresh pipeline that asked for
        // 100 IDs as request 1 and already got the runs above.
        let cases = [
            (
                1,
                vec![run(200, 8, 0, 10)],
                "worker 8 is outside the server's set",
            ),
            (
                1,
                vec![run(101, 4, 0, 10)],
                "below the end of the worker's previous run",
            ),
            (1, vec![run(300, 6, 0, 0)], "empty or past"),
            (
                1,
                vec![run(Layout::DEFAULT.max_tick(), 6, 4095, 2)],
                "past the layout's last tick",
            ),
            (
                1,
                vec![run(300, 6, 0, 60), run(300, 7, 0, 41)],
                "101 IDs for a request of 100",
            ),
            (
                3,
                vec![run(300, 6, 0, 10)],
                "expected BULK_LEASED id=1, got id=3",
            ),
        ];
        for (request_id, runs, says) in cases {
            let mut q = bulk_pipeline(100);
            q.fill(&mut bytes::BytesMut::new());
            q.bulk.as_mut().unwrap().last_end = p.bulk.as_ref().unwrap().last_end.clone();
            let err = text(q.accept_runs(request_id, &runs));
            assert!(err.contains(says), "{says}: {err}");
        }
    }

    #[test]
    fn blocks_print_as_ids_or_ranges() {
        let mut out = Vec::new();
        print_block(&mut out, 10, 3, false).unwrap();
        print_block(&mut out, 20, 2, true).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "10\n11\n12\n20 2\n");
    }

    #[test]
    fn runs_print_as_their_blocks_or_one_summary_line() {
        let l = Layout::DEFAULT;
        let r = run(7, 3, 4094, 4);
        let args = |ranges, runs| LeaseArgs {
            count: 4,
            ranges,
            bulk: true,
            runs,
        };
        let mut out = Vec::new();
        print_run(&mut out, &l, &r, &args(true, false)).unwrap();
        print_run(&mut out, &l, &r, &args(false, true)).unwrap();
        let (a, b) = (l.compose(7, 3, 4094), l.compose(8, 3, 0));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!("{a} 2\n{b} 2\nrun first={a} count=4 worker=3 ticks=2\n")
        );
        let mut ids = Vec::new();
        print_run(&mut ids, &l, &r, &args(false, false)).unwrap();
        assert_eq!(
            String::from_utf8(ids).unwrap(),
            format!("{a}\n{}\n{b}\n{}\n", a + 1, b + 1)
        );
    }
}
