//! `--mode client` and `--mode client-lease`: the server measured through
//! [`snowlease::Client`], the way applications use it.
//!
//! `--tasks` tasks share one client. In `client` mode each loops on `next_id()`; most calls
//! are a pop from the client's local buffer (tens of nanoseconds), so timing every call would
//! cost as much as the call: only one call in `--sample-every` is timed (default 16), which
//! keeps the overhead near 2 % and still gives thousands of samples per second. The clock is
//! read and the shared counters updated once per [`CHECK_EVERY`] calls, and the task yields
//! there too: a call served from the buffer never suspends, so without the yield one task
//! would hold the runtime thread (and starve the client's own refill task). In `client-lease`
//! mode every `lease(batch)` call is timed. IDs are folded into blocks for the overlap check.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use hdrhistogram::Histogram;
use tokio::time::Instant;

use snowlease::{Client, Error};

use crate::settings::Timeline;
use crate::stats::{self, Counters};
use crate::verify::{Block, Runs};

/// Calls between clock reads, counter updates and yields. At ~50 ns a call that is every
/// few microseconds: fine-grained enough for the stop time and the per-second series.
pub const CHECK_EVERY: u64 = 64;

/// What one task brings back.
#[derive(Debug)]
pub struct TaskOutcome {
    /// Blocks received (empty without verify).
    pub blocks: Vec<Block>,
    /// Call latencies in nanoseconds.
    pub latency: Histogram<u64>,
    /// Errors by kind.
    pub errors: BTreeMap<String, u64>,
    /// Worker ids seen, from one ID per check (enough: a worker serving any share of the
    /// load shows up within a few checks).
    pub workers: BTreeSet<u16>,
}

/// Which client call a task makes.
#[derive(Debug, Clone, Copy)]
pub enum Call {
    /// `next_id()`, timing one call in `sample_every`.
    NextId {
        /// Time one call in this many.
        sample_every: u64,
    },
    /// `lease(batch)`, timing every call.
    Lease {
        /// IDs asked per call.
        batch: u32,
    },
}

/// Short name of a client error, so the error table groups by kind rather than by message.
pub(crate) fn kind(e: &Error) -> String {
    let debug = format!("{e:?}");
    let name: String = debug
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    format!("client {name}")
}

/// Runs one task until the stop time.
pub async fn task(
    client: Client,
    call: Call,
    timeline: Timeline,
    counters: Arc<Counters>,
    verify: bool,
) -> TaskOutcome {
    let mut runs = Runs::default();
    let mut blocks = Vec::new();
    let mut latency = stats::histogram();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut workers = BTreeSet::new();
    let mut last_id = None;
    let (mut ids, mut calls, mut failed) = (0u64, 0u64, 0u64);
    let every = match call {
        Call::NextId { sample_every } => sample_every.max(1),
        Call::Lease { .. } => 1,
    };
    // Bounded in time: the clock is checked every CHECK_EVERY calls, and a call that waits
    // is bounded by the client's own timeout.
    for i in 0u64.. {
        let started = (i % every == 0).then(Instant::now);
        let result = match call {
            Call::NextId { .. } => client.next_id().await.map(|id| Block {
                first: id,
                count: 1,
            }),
            Call::Lease { batch } => client.lease(batch).await.map(|r| Block {
                first: r.first,
                count: r.count,
            }),
        };
        if let Some(started) = started.filter(|s| *s >= timeline.measure_from) {
            stats::record(&mut latency, started.elapsed());
        }
        match result {
            Ok(block) => {
                ids += u64::from(block.count);
                calls += 1;
                last_id = Some(block.first);
                if verify {
                    match call {
                        Call::NextId { .. } => runs.push(block.first),
                        Call::Lease { .. } => blocks.push(block),
                    }
                }
            }
            Err(e) => {
                failed += 1;
                let fatal = !e.is_retryable();
                *errors.entry(kind(&e)).or_default() += 1;
                if fatal {
                    break;
                }
            }
        }
        if (i + 1) % CHECK_EVERY == 0 || failed > 0 {
            if let Some(id) = last_id.take() {
                workers.insert(client.decode(id).worker);
            }
            let now = Instant::now();
            if now >= timeline.measure_from && now < timeline.stop_at {
                counters.add(ids, calls, failed);
            }
            (ids, calls, failed) = (0, 0, 0);
            if now >= timeline.stop_at {
                break;
            }
            tokio::task::yield_now().await;
        }
    }
    blocks.extend(runs.into_blocks());
    TaskOutcome {
        blocks,
        latency,
        errors,
        workers,
    }
}
