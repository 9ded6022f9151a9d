//! Checks on what servers send, kept free of I/O so every rule has a unit test.
//!
//! The driver runs a WELCOME through [`check_welcome`] before a connection may carry LEASEs
//! (version 1 or 2: the [`Greeting`] it yields says which, and which worker ids may appear on
//! the connection), every LEASED reply through [`check_leased`] and every BULK_LEASED reply
//! through [`check_bulk_leased`] before any of its IDs reach the buffer or a caller. A failed
//! check is a protocol violation: the driver drops the connection and nothing in the reply is
//! ever handed out. Every way to fail is a [`Violation`], whose text names the rule. [`plan`]
//! turns the draw rate into refill thresholds.

use std::net::SocketAddr;
use std::time::Duration;

use crate::client::config::{DEFAULT_ADMIN_PORT, DEFAULT_PORT};
use crate::layout::{Layout, LayoutError};
use crate::wire::{Run, Welcome, WireError, WorkerSet, MAX_VERSION, VERSION, VERSION_2};

/// IDs kept on hand, as time at the current draw rate: 50 ms. Enough to ride out a failover
/// (a refused connect is retried after 25-50 ms and a healthy peer answers within a round
/// trip) without callers waiting, and 20 times shorter than the default `max_age`, so IDs are
/// used long before they would expire.
pub(crate) const REFILL_HORIZON: Duration = Duration::from_millis(50);

/// How a server broke the protocol contract; carried by
/// [`Error::Protocol`](crate::client::Error::Protocol). The connection was dropped and
/// nothing in the offending frame was handed out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Violation {
    /// The bytes are not frames of this protocol.
    #[error(transparent)]
    Frame(#[from] WireError),
    /// The peer answered like an HTTP server: the endpoint names a web port (the admin
    /// port, say) instead of the lease port.
    #[error(
        "this looks like an HTTP server, not snowlease's lease port: wrong port? \
         (the lease port is {DEFAULT_PORT}, the admin port {DEFAULT_ADMIN_PORT})"
    )]
    HttpServer,
    /// WELCOME names a version this client does not speak.
    #[error("WELCOME speaks version {got}, this client speaks {VERSION} to {MAX_VERSION}")]
    Version {
        /// The version in WELCOME.
        got: u16,
    },
    /// WELCOME names a version above the one this client offered in HELLO.
    #[error("WELCOME speaks version {got}, above the version {offered} this client offered")]
    VersionNotOffered {
        /// The version in WELCOME.
        got: u16,
        /// The version in HELLO.
        offered: u16,
    },
    /// WELCOME's body does not match the version it names: 27 bytes for version 1, 35 (with
    /// the worker set) for version 2.
    #[error("WELCOME names version {version} but has a {body}-byte body")]
    WelcomeBody {
        /// The version in WELCOME.
        version: u16,
        /// The body's size.
        body: usize,
    },
    /// A version-2 WELCOME announces no worker ids.
    #[error("WELCOME announces an empty worker set")]
    EmptyWorkerSet,
    /// A version-2 WELCOME's worker set does not fit the worker field.
    #[error(
        "WELCOME worker set {first}..={last} does not fit {bits} worker bits",
        last = last_worker(.first, .count)
    )]
    WorkerSetOutOfRange {
        /// First worker id of the set.
        first: u16,
        /// Worker ids in the set.
        count: u16,
        /// The announced worker field width.
        bits: u8,
    },
    /// A version-2 WELCOME's home worker is not one of its worker set.
    #[error(
        "WELCOME home worker {worker} is outside its worker set {first}..={last}",
        last = last_worker(.first, .count)
    )]
    HomeOutsideSet {
        /// The home worker id.
        worker: u16,
        /// First worker id of the set.
        first: u16,
        /// Worker ids in the set.
        count: u16,
    },
    /// A version-2 WELCOME allows no bulk lease at all.
    #[error("WELCOME max_bulk is 0; a version-2 server must allow at least 1")]
    MaxBulk,
    /// WELCOME's layout fields are inconsistent.
    #[error("WELCOME announces an invalid layout: {0}")]
    InvalidLayout(LayoutError),
    /// WELCOME's worker id does not fit its own worker field.
    #[error("WELCOME worker id {worker} does not fit {bits} worker bits")]
    WorkerOutOfRange {
        /// The announced worker id.
        worker: u16,
        /// The announced worker field width.
        bits: u8,
    },
    /// WELCOME's `max_lease` is 0 or above what one tick holds.
    #[error("WELCOME max_lease {max_lease} is outside 1..={limit}")]
    MaxLease {
        /// The announced `max_lease`.
        max_lease: u32,
        /// IDs per tick in the announced layout.
        limit: u32,
    },
    /// This server's layout differs from the first server's.
    #[error(
        "layout {layout} differs from {first} announced by an earlier server; \
         servers behind one client must share a layout"
    )]
    LayoutMismatch {
        /// This server's layout.
        layout: Layout,
        /// The layout of the first server the client accepted.
        first: Layout,
    },
    /// Another live connection already serves this worker id.
    #[error(
        "worker {worker} is already connected at {other}; two addresses reach the same \
         server, or two servers share a worker id"
    )]
    DuplicateWorker {
        /// The worker id.
        worker: u16,
        /// The address of the connection that has it.
        other: SocketAddr,
    },
    /// A second WELCOME on one connection.
    #[error("second WELCOME on one connection")]
    SecondWelcome,
    /// A reply of protocol version 2 (BULK_LEASED) on a connection that speaks version 1:
    /// it answers nothing this client sent.
    #[error("BULK_LEASED (request {request_id}) on a version-1 connection")]
    BulkOnVersion1 {
        /// The reply's request id.
        request_id: u32,
    },
    /// LEASED arrived before WELCOME.
    #[error("LEASED before WELCOME")]
    LeasedBeforeWelcome,
    /// LEASED arrived with no LEASE outstanding.
    #[error("LEASED for request {request_id} with no LEASE outstanding")]
    Unasked {
        /// The reply's request id.
        request_id: u32,
    },
    /// BULK_LEASED arrived with no request outstanding.
    #[error("BULK_LEASED for request {request_id} with no BULK_LEASE outstanding")]
    UnaskedBulk {
        /// The reply's request id.
        request_id: u32,
    },
    /// A LEASED answers a BULK_LEASE, or a BULK_LEASED a LEASE.
    #[error("{reply} answers request {request_id}, which was a {request}")]
    ReplyKind {
        /// The reply's request id.
        request_id: u32,
        /// What arrived: LEASED or BULK_LEASED.
        reply: &'static str,
        /// What was asked: LEASE or BULK_LEASE.
        request: &'static str,
    },
    /// BULK_LEASED carries no IDs or more than asked.
    #[error("BULK_LEASED carries {got} IDs in all for a BULK_LEASE of {asked}")]
    BulkCount {
        /// IDs in all runs together.
        got: u64,
        /// IDs asked for.
        asked: u32,
    },
    /// A BULK_LEASED run of no IDs.
    #[error("BULK_LEASED run at {first_id} has count 0")]
    EmptyRun {
        /// First ID of the run.
        first_id: u64,
    },
    /// A run's IDs carry a worker id outside the set the server announced.
    #[error(
        "run {first_id} belongs to worker {worker}, outside the server's worker set \
         {first}..={last}",
        last = last_worker(.first, .count)
    )]
    RunOutsideSet {
        /// First ID of the run.
        first_id: u64,
        /// The worker field of `first_id`.
        worker: u16,
        /// First worker id of the set.
        first: u16,
        /// Worker ids in the set.
        count: u16,
    },
    /// A run passes the layout's last tick: its IDs would wrap to small ones.
    #[error("run {first_id}+{count} passes the layout's last tick")]
    RunPastEnd {
        /// First ID of the run.
        first_id: u64,
        /// IDs in the run.
        count: u32,
    },
    /// LEASED answers another request than the oldest outstanding one.
    #[error(
        "LEASED answers request {got}, but the oldest outstanding is {expected} \
         (replies must come in order)"
    )]
    OutOfOrder {
        /// The reply's request id.
        got: u32,
        /// The oldest outstanding request's id.
        expected: u32,
    },
    /// LEASED carries no IDs or more than asked.
    #[error("LEASED carries {got} IDs for a LEASE of {asked}")]
    Count {
        /// IDs in the reply.
        got: u32,
        /// IDs asked for.
        asked: u32,
    },
    /// The range runs past the largest ID.
    #[error("range {first_id}+{count} runs past the 63-bit ID space")]
    PastIdSpace {
        /// First ID of the range.
        first_id: u64,
        /// IDs in the range.
        count: u32,
    },
    /// The range's IDs carry another worker id than the server announced.
    #[error(
        "range {first_id} belongs to worker {worker}, but the server announced worker {announced}"
    )]
    OtherWorker {
        /// First ID of the range.
        first_id: u64,
        /// The worker field of `first_id`.
        worker: u16,
        /// The worker id in WELCOME.
        announced: u16,
    },
    /// The range spills past the end of its tick (into the next tick's or another
    /// worker's IDs).
    #[error(
        "range {first_id}+{count} crosses a tick boundary (sequence {sequence} + {count} > \
         {max_lease})"
    )]
    CrossesTick {
        /// First ID of the range.
        first_id: u64,
        /// IDs in the range.
        count: u32,
        /// Sequence field of `first_id`.
        sequence: u32,
        /// IDs per tick.
        max_lease: u32,
    },
    /// The range starts below the end of the worker's previous range: the server's
    /// generator went backwards, and its IDs could repeat ones already handed out.
    #[error(
        "range starts at {first_id}, below the end {prev_end} of worker {worker}'s previous \
         range; its IDs could repeat"
    )]
    BelowPrevious {
        /// First ID of the range.
        first_id: u64,
        /// End (exclusive) of the previous range from this worker.
        prev_end: u64,
        /// The worker id.
        worker: u16,
    },
}

/// The last worker id of a set, for messages (a `u32`, so a bogus set cannot overflow).
fn last_worker(first: &u16, count: &u16) -> u32 {
    (u32::from(*first) + u32::from(*count)).saturating_sub(1)
}

impl Violation {
    /// The violation a frame decoder's error stands for: a length prefix that spells
    /// `HTTP` (the start of `HTTP/1.1 400 Bad Request`, 1,213,486,160 as a length) means the
    /// peer is a web server.
    pub(crate) fn from_wire(e: WireError) -> Violation {
        match e {
            WireError::TooLong(len) if &len.to_be_bytes() == b"HTTP" => Violation::HttpServer,
            e => Violation::Frame(e),
        }
    }
}

/// What a connection learned from an accepted WELCOME.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Greeting {
    /// The version the connection speaks.
    pub version: u16,
    /// The layout every server of this client shares.
    pub layout: Layout,
    /// The home worker: every LEASED on the connection carries it.
    pub worker: u16,
    /// Largest LEASE count.
    pub max_lease: u32,
    /// The worker ids whose IDs may arrive on the connection: the server process's set in
    /// version 2, the home worker alone in version 1 (then `max_bulk` is 0).
    pub workers: WorkerSet,
}

impl Greeting {
    /// Largest BULK_LEASE count, or `None` on a version-1 connection.
    pub fn max_bulk(&self) -> Option<u32> {
        (self.version >= VERSION_2).then_some(self.workers.max_bulk)
    }

    /// A worker id both connections may issue, if any: two connections whose worker sets
    /// overlap reach one server process twice (or two servers share worker ids).
    pub fn shared_worker(&self, other: &Greeting) -> Option<u16> {
        let (a, b) = (&self.workers, &other.workers);
        let first = a.first_worker.max(b.first_worker);
        (a.contains(first) && b.contains(first)).then_some(first)
    }
}

/// Validates a WELCOME (with the worker set of a version-2 one) and returns what it
/// announces. `offered` is the version this client sent in HELLO: the server may answer that
/// or lower. `established` is the layout of the first server this client accepted: every
/// server must agree with it, or IDs handed out by one client could not all be decoded the
/// same way.
pub(crate) fn check_welcome(
    w: &Welcome,
    set: Option<&WorkerSet>,
    offered: u16,
    established: Option<Layout>,
) -> Result<Greeting, Violation> {
    if !(VERSION..=MAX_VERSION).contains(&w.version) {
        return Err(Violation::Version { got: w.version });
    }
    if w.version > offered {
        return Err(Violation::VersionNotOffered {
            got: w.version,
            offered,
        });
    }
    if (w.version >= VERSION_2) != set.is_some() {
        let body = if set.is_some() { 35 } else { 27 };
        return Err(Violation::WelcomeBody {
            version: w.version,
            body,
        });
    }
    let layout = w.layout().map_err(Violation::InvalidLayout)?;
    if w.worker_id > layout.max_worker() {
        return Err(Violation::WorkerOutOfRange {
            worker: w.worker_id,
            bits: w.worker_bits,
        });
    }
    if w.max_lease == 0 || w.max_lease > layout.max_lease() {
        return Err(Violation::MaxLease {
            max_lease: w.max_lease,
            limit: layout.max_lease(),
        });
    }
    if let Some(first) = established.filter(|&first| first != layout) {
        return Err(Violation::LayoutMismatch { layout, first });
    }
    let workers = match set {
        Some(set) => check_worker_set(set, w.worker_id, &layout)?,
        None => WorkerSet {
            first_worker: w.worker_id,
            worker_count: 1,
            max_bulk: 0,
        },
    };
    Ok(Greeting {
        version: w.version,
        layout,
        worker: w.worker_id,
        max_lease: w.max_lease,
        workers,
    })
}

/// A version-2 WELCOME's worker set: not empty, within the worker field, holding the home
/// worker, and allowing bulk leases of at least one ID.
fn check_worker_set(set: &WorkerSet, home: u16, layout: &Layout) -> Result<WorkerSet, Violation> {
    let (first, count) = (set.first_worker, set.worker_count);
    if count == 0 {
        return Err(Violation::EmptyWorkerSet);
    }
    if u32::from(first) + u32::from(count) - 1 > u32::from(layout.max_worker()) {
        return Err(Violation::WorkerSetOutOfRange {
            first,
            count,
            bits: layout.worker_bits(),
        });
    }
    if !set.contains(home) {
        return Err(Violation::HomeOutsideSet {
            worker: home,
            first,
            count,
        });
    }
    if set.max_bulk == 0 {
        return Err(Violation::MaxBulk);
    }
    Ok(*set)
}

/// What was asked: the oldest outstanding request on the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Asked {
    pub request_id: u32,
    pub count: u32,
    /// A BULK_LEASE, not a LEASE.
    pub bulk: bool,
}

/// The request `asked` if `request_id` answers it and the reply is of its kind (`bulk`).
fn answers(asked: Option<Asked>, request_id: u32, bulk: bool) -> Result<Asked, Violation> {
    let asked = asked.ok_or(if bulk {
        Violation::UnaskedBulk { request_id }
    } else {
        Violation::Unasked { request_id }
    })?;
    if request_id != asked.request_id {
        return Err(Violation::OutOfOrder {
            got: request_id,
            expected: asked.request_id,
        });
    }
    if asked.bulk != bulk {
        let (reply, request) = if bulk {
            ("BULK_LEASED", "LEASE")
        } else {
            ("LEASED", "BULK_LEASE")
        };
        return Err(Violation::ReplyKind {
            request_id,
            reply,
            request,
        });
    }
    Ok(asked)
}

/// A LEASED reply as received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Leased {
    pub request_id: u32,
    pub first_id: u64,
    pub count: u32,
}

/// Validates a LEASED reply from `worker` and returns the end (exclusive) of its range.
///
/// Replies come in request order, so the reply must answer `asked`, the oldest outstanding
/// request; it may carry fewer IDs than asked but never none or more. The range must be IDs
/// of that worker within one tick (so it cannot spill into another worker's IDs), and it must
/// start at or above `prev_end`, the end of the last range accepted from the same worker: a
/// range below it means the server's generator went backwards (a restart without its state,
/// a clock step, a duplicated worker id) and its IDs may repeat ones already handed out.
pub(crate) fn check_leased(
    layout: &Layout,
    worker: u16,
    asked: Option<Asked>,
    prev_end: Option<u64>,
    reply: Leased,
) -> Result<u64, Violation> {
    let Leased {
        request_id,
        first_id,
        count,
    } = reply;
    let asked = answers(asked, request_id, false)?;
    if count == 0 || count > asked.count {
        return Err(Violation::Count {
            got: count,
            asked: asked.count,
        });
    }
    let end = first_id
        .checked_add(u64::from(count))
        .filter(|&end| end <= 1 << 63)
        .ok_or(Violation::PastIdSpace { first_id, count })?;
    let parts = layout.decompose(first_id);
    if parts.worker != worker {
        return Err(Violation::OtherWorker {
            first_id,
            worker: parts.worker,
            announced: worker,
        });
    }
    let max_lease = layout.max_lease();
    if u64::from(parts.sequence) + u64::from(count) > u64::from(max_lease) {
        return Err(Violation::CrossesTick {
            first_id,
            count,
            sequence: parts.sequence,
            max_lease,
        });
    }
    match prev_end {
        Some(prev_end) if first_id < prev_end => Err(Violation::BelowPrevious {
            first_id,
            prev_end,
            worker,
        }),
        _ => Ok(end),
    }
}

/// Validates a BULK_LEASED reply on a connection whose server holds `workers`, and returns
/// every run's worker and end (exclusive), in order, for the caller to record once the whole
/// reply passed.
///
/// Like a LEASED, the reply must answer `asked`, the oldest outstanding request, which must
/// be a BULK_LEASE; together its runs carry at least one ID and at most the count asked, and
/// none is empty. Every run must be of a worker in the announced set, stay within the
/// layout's last tick (so its expansion into blocks never wraps to small IDs), and start at
/// or above the end of everything received from its worker before: `prev_end` for the
/// worker's last range from earlier replies, then the runs before it in this reply (so runs
/// of one worker that overlap or come out of order are refused too).
pub(crate) fn check_bulk_leased(
    layout: &Layout,
    workers: &WorkerSet,
    asked: Option<Asked>,
    prev_end: impl Fn(u16) -> Option<u64>,
    request_id: u32,
    runs: &[Run],
) -> Result<Vec<(u16, u64)>, Violation> {
    let asked = answers(asked, request_id, true)?;
    let total: u64 = runs.iter().map(|r| u64::from(r.count)).sum();
    if total == 0 || total > u64::from(asked.count) {
        return Err(Violation::BulkCount {
            got: total,
            asked: asked.count,
        });
    }
    let mut ends: Vec<(u16, u64)> = Vec::with_capacity(runs.len());
    for &Run { first_id, count } in runs {
        if count == 0 {
            return Err(Violation::EmptyRun { first_id });
        }
        if first_id >= 1 << 63 {
            return Err(Violation::PastIdSpace { first_id, count });
        }
        let worker = layout.decompose(first_id).worker;
        if !workers.contains(worker) {
            return Err(Violation::RunOutsideSet {
                first_id,
                worker,
                first: workers.first_worker,
                count: workers.worker_count,
            });
        }
        let past_end = Violation::RunPastEnd { first_id, count };
        if !layout.run_fits(first_id, count) {
            return Err(past_end);
        }
        let last_position = layout.position(first_id) + u64::from(count) - 1;
        let last = layout.id_at(worker, last_position).ok_or(past_end)?;
        let before = ends
            .iter()
            .rev()
            .find(|(w, _)| *w == worker)
            .map(|&(_, end)| end)
            .or_else(|| prev_end(worker));
        if let Some(prev_end) = before.filter(|&end| first_id < end) {
            return Err(Violation::BelowPrevious {
                first_id,
                prev_end,
                worker,
            });
        }
        ends.push((worker, last + 1));
    }
    Ok(ends)
}

/// Refill thresholds for one draw rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Below this many IDs (on hand plus in flight) the driver leases more.
    pub low_mark: u64,
    /// ... until on hand plus in flight reaches this.
    pub fill_to: u64,
}

/// Sizes refills: aim for [`REFILL_HORIZON`] of IDs at `rate` per second, at least
/// `low_water` and at most `capacity`; refill when half of that is gone. `low_mark` is at
/// least 1, so an empty buffer with nothing in flight always triggers a lease.
pub(crate) fn plan(rate: f64, low_water: u64, capacity: u64) -> Plan {
    // `as` saturates, and a NaN rate becomes 0.
    let horizon = (rate * REFILL_HORIZON.as_secs_f64()).ceil() as u64;
    let target = horizon.min(capacity).max(low_water.min(capacity));
    let low_mark = (target / 2).max(low_water).max(1);
    Plan {
        low_mark,
        fill_to: target.max(low_mark),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn welcome() -> Welcome {
        Welcome::announcing(1, 7, &Layout::DEFAULT, 0)
    }

    fn set(first_worker: u16, worker_count: u16) -> WorkerSet {
        WorkerSet {
            first_worker,
            worker_count,
            max_bulk: 1 << 22,
        }
    }

    #[test]
    fn a_well_formed_welcome_of_either_version_yields_its_layout_and_workers() {
        let v1 = check_welcome(&welcome(), None, 2, None).unwrap();
        assert_eq!((v1.version, v1.layout, v1.worker), (1, Layout::DEFAULT, 7));
        assert_eq!(v1.max_bulk(), None, "no bulk leases on version 1");
        assert_eq!(
            v1.workers,
            WorkerSet {
                max_bulk: 0,
                ..set(7, 1)
            }
        );
        assert_eq!(
            check_welcome(&welcome(), None, 1, Some(Layout::DEFAULT)),
            Ok(v1)
        );
        let mut w = welcome();
        w.version = 2;
        let v2 = check_welcome(&w, Some(&set(4, 4)), 2, Some(Layout::DEFAULT)).unwrap();
        assert_eq!((v2.version, v2.worker, v2.workers), (2, 7, set(4, 4)));
        assert_eq!(v2.max_bulk(), Some(1 << 22));
    }

    #[test]
    fn welcomes_with_bad_fields_or_another_layout_are_refused() {
        type Breaker = fn(&mut Welcome);
        let cases: [(Breaker, &str); 4] = [
            (|w| w.sequence_bits = 13, "invalid layout"),
            (|w| w.worker_id = 1024, "does not fit"),
            (|w| w.max_lease = 0, "max_lease 0"),
            (|w| w.max_lease = 4097, "max_lease 4097"),
        ];
        for (break_it, why) in cases {
            let mut w = welcome();
            break_it(&mut w);
            let err = check_welcome(&w, None, 2, None).unwrap_err().to_string();
            assert!(err.contains(why), "{why}: {err}");
        }
        let mut other_epoch = welcome();
        other_epoch.epoch_unix_ms += 1;
        let err = check_welcome(&other_epoch, None, 2, Some(Layout::DEFAULT))
            .unwrap_err()
            .to_string();
        assert!(err.contains("must share a layout"), "{err}");
    }

    #[test]
    fn welcomes_whose_version_or_worker_set_cannot_be_trusted_are_refused() {
        // (case, version named, worker set sent, version offered, what the error says)
        let cases: [(&str, u16, Option<WorkerSet>, u16, &str); 10] = [
            ("version 0", 0, None, 2, "speaks version 0"),
            ("version 3", 3, Some(set(7, 1)), 2, "speaks version 3"),
            (
                "2 to a client offering 1",
                2,
                Some(set(7, 1)),
                1,
                "above the version 1",
            ),
            (
                "2 with the 27-byte body",
                2,
                None,
                2,
                "version 2 but has a 27-byte",
            ),
            (
                "1 with the 35-byte body",
                1,
                Some(set(7, 1)),
                2,
                "version 1 but has a 35-byte",
            ),
            ("an empty set", 2, Some(set(7, 0)), 2, "empty worker set"),
            (
                "a set past the worker field",
                2,
                Some(set(1000, 30)),
                2,
                "1000..=1029 does not fit 10",
            ),
            (
                "a set without the home worker",
                2,
                Some(set(8, 4)),
                2,
                "home worker 7 is outside its worker set 8..=11",
            ),
            (
                "a set at the top of u16",
                2,
                Some(set(u16::MAX, u16::MAX)),
                2,
                "does not fit",
            ),
            (
                "max_bulk 0",
                2,
                Some(WorkerSet {
                    max_bulk: 0,
                    ..set(7, 1)
                }),
                2,
                "max_bulk is 0",
            ),
        ];
        for (case, version, workers, offered, says) in cases {
            let mut w = welcome();
            w.version = version;
            let err = check_welcome(&w, workers.as_ref(), offered, None)
                .unwrap_err()
                .to_string();
            assert!(err.contains(says), "{case}: {err}");
        }
    }

    #[test]
    fn connections_share_a_worker_exactly_when_their_sets_overlap() {
        let greet = |first, count| {
            let mut w = welcome();
            w.version = 2;
            w.worker_id = first;
            check_welcome(&w, Some(&set(first, count)), 2, None).unwrap()
        };
        let v1 = |worker| {
            let mut w = welcome();
            w.worker_id = worker;
            check_welcome(&w, None, 2, None).unwrap()
        };
        assert_eq!(greet(0, 4).shared_worker(&greet(4, 4)), None);
        assert_eq!(greet(0, 4).shared_worker(&greet(3, 4)), Some(3));
        assert_eq!(greet(3, 4).shared_worker(&greet(0, 4)), Some(3));
        assert_eq!(greet(0, 32).shared_worker(&greet(10, 1)), Some(10));
        assert_eq!(v1(5).shared_worker(&greet(4, 4)), Some(5));
        assert_eq!(v1(5).shared_worker(&v1(6)), None);
        assert_eq!(v1(5).shared_worker(&v1(5)), Some(5));
    }

    const ASKED: Option<Asked> = Some(Asked {
        request_id: 4,
        count: 100,
        bulk: false,
    });

    fn reply(first_id: u64, count: u32) -> Leased {
        Leased {
            request_id: 4,
            first_id,
            count,
        }
    }

    fn check(prev: Option<u64>, r: Leased) -> Result<u64, String> {
        check_leased(&Layout::DEFAULT, 7, ASKED, prev, r).map_err(|v| v.to_string())
    }

    #[test]
    fn a_reply_within_contract_is_accepted_even_when_short() {
        let first = Layout::DEFAULT.compose(1000, 7, 0);
        assert_eq!(check(None, reply(first, 100)), Ok(first + 100));
        assert_eq!(check(Some(first), reply(first, 1)), Ok(first + 1));
    }

    #[test]
    fn counts_outside_one_to_asked_are_violations() {
        let first = Layout::DEFAULT.compose(1000, 7, 0);
        for count in [0, 101, u32::MAX] {
            let err = check(None, reply(first, count)).unwrap_err();
            assert!(err.contains("for a LEASE of 100"), "{err}");
        }
    }

    #[test]
    fn replies_out_of_order_or_unasked_are_violations() {
        let first = Layout::DEFAULT.compose(1000, 7, 0);
        let mut r = reply(first, 1);
        r.request_id = 5;
        assert!(check(None, r)
            .unwrap_err()
            .contains("oldest outstanding is 4"));
        let err = check_leased(&Layout::DEFAULT, 7, None, None, reply(first, 1))
            .unwrap_err()
            .to_string();
        assert!(err.contains("no LEASE outstanding"), "{err}");
        let bulk = Some(Asked {
            bulk: true,
            ..ASKED.unwrap()
        });
        let err = check_leased(&Layout::DEFAULT, 7, bulk, None, reply(first, 1))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("LEASED answers request 4, which was a BULK_LEASE"),
            "{err}"
        );
    }

    const ASKED_BULK: Option<Asked> = Some(Asked {
        request_id: 9,
        count: 10_000,
        bulk: true,
    });

    fn run(tick: u64, worker: u16, sequence: u32, count: u32) -> Run {
        Run {
            first_id: Layout::DEFAULT.compose(tick, worker, sequence),
            count,
        }
    }

    /// Checks a BULK_LEASED of `runs` for request 9 (10,000 asked) from the set 4..=7, where
    /// worker 5 last ended at tick 1000 sequence 100.
    fn check_bulk(runs: &[Run]) -> Result<Vec<(u16, u64)>, String> {
        let prev = |worker| (worker == 5).then(|| Layout::DEFAULT.compose(1000, 5, 100));
        check_bulk_leased(&Layout::DEFAULT, &set(4, 4), ASKED_BULK, prev, 9, runs)
            .map_err(|v| v.to_string())
    }

    #[test]
    fn a_bulk_reply_within_contract_yields_each_runs_end_in_order() {
        let l = Layout::DEFAULT;
        let runs = [
            run(1000, 5, 100, 3996 + 4096),
            run(1000, 4, 0, 1000),
            run(1002, 5, 0, 8),
            run(2000, 7, 4000, 100),
        ];
        assert_eq!(
            check_bulk(&runs),
            Ok(vec![
                (5, l.compose(1001, 5, 4095) + 1),
                (4, l.compose(1000, 4, 999) + 1),
                (5, l.compose(1002, 5, 7) + 1),
                (7, l.compose(2001, 7, 3) + 1),
            ])
        );
        // Short of what was asked is fine; exactly the rest of the worker's last range too.
        assert!(check_bulk(&[run(1000, 5, 100, 1)]).is_ok());
    }

    #[test]
    fn bulk_replies_that_break_the_contract_are_violations() {
        let top = Layout::DEFAULT.max_tick();
        let cases: [(&str, Vec<Run>, &str); 10] = [
            ("no runs", vec![], "carries 0 IDs in all"),
            (
                "a run of zero",
                vec![run(2000, 4, 0, 5), run(2000, 6, 0, 0)],
                "has count 0",
            ),
            (
                "more than asked",
                vec![run(2000, 4, 0, 6000), run(2000, 6, 0, 4001)],
                "10001 IDs in all for a BULK_LEASE of 10000",
            ),
            (
                "counts that overflow u32 together",
                vec![run(2000, 4, 0, u32::MAX), run(2000, 6, 0, u32::MAX)],
                "8589934590 IDs in all",
            ),
            (
                "a worker outside the set",
                vec![run(2000, 4, 0, 10), run(2000, 8, 0, 10)],
                "worker 8, outside the server's worker set 4..=7",
            ),
            (
                "a run past the last tick",
                vec![run(top, 4, 4000, 200)],
                "passes the layout's last tick",
            ),
            (
                "a run below the worker's last ID",
                vec![run(1000, 5, 99, 10)],
                "below the end",
            ),
            (
                "overlapping runs of one worker",
                vec![run(2000, 6, 0, 4096), run(2000, 6, 4095, 10)],
                "could repeat",
            ),
            (
                "runs of one worker out of order",
                vec![run(2001, 6, 0, 10), run(2000, 6, 0, 10)],
                "could repeat",
            ),
            (
                "an ID past 63 bits",
                vec![Run {
                    first_id: (1 << 63) | Layout::DEFAULT.compose(2000, 4, 0),
                    count: 1,
                }],
                "63-bit",
            ),
        ];
        for (case, runs, says) in cases {
            let err = check_bulk(&runs).unwrap_err();
            assert!(err.contains(says), "{case}: {err}");
        }
    }

    #[test]
    fn a_bulk_reply_to_another_request_or_to_a_lease_is_a_violation() {
        let runs = [run(2000, 4, 0, 10)];
        let set = set(4, 4);
        let none = |_| None;
        let check = |asked, request_id| {
            check_bulk_leased(&Layout::DEFAULT, &set, asked, none, request_id, &runs)
                .unwrap_err()
                .to_string()
        };
        assert!(check(ASKED_BULK, 10).contains("oldest outstanding is 9"));
        assert!(check(None, 9).contains("no BULK_LEASE outstanding"));
        let lease = Some(Asked {
            bulk: false,
            ..ASKED_BULK.unwrap()
        });
        assert!(check(lease, 9).contains("BULK_LEASED answers request 9, which was a LEASE"));
    }

    #[test]
    fn a_range_below_the_workers_previous_range_is_a_violation() {
        let prev_end = Layout::DEFAULT.compose(1000, 7, 50);
        let below = Layout::DEFAULT.compose(999, 7, 0);
        assert!(check(Some(prev_end), reply(below, 10))
            .unwrap_err()
            .contains("could repeat"));
        let overlapping = Layout::DEFAULT.compose(1000, 7, 49);
        assert!(check(Some(prev_end), reply(overlapping, 10)).is_err());
        assert!(check(Some(prev_end), reply(prev_end, 10)).is_ok());
    }

    #[test]
    fn ranges_of_another_worker_or_across_ticks_are_violations() {
        let other = Layout::DEFAULT.compose(1000, 8, 0);
        assert!(check(None, reply(other, 10))
            .unwrap_err()
            .contains("belongs to worker 8"));
        let late = Layout::DEFAULT.compose(1000, 7, 4090);
        assert!(check(None, reply(late, 10))
            .unwrap_err()
            .contains("crosses a tick"));
        let top = (1u64 << 63) - 5;
        assert!(check(None, reply(top, 10)).is_err());
        assert!(check(None, reply(u64::MAX, 10)).is_err());
    }

    #[test]
    fn an_http_status_line_read_as_a_length_is_named_an_http_server() {
        // "HTTP/1.1 400 Bad Request": the first four bytes as a length prefix.
        let http = WireError::TooLong(u32::from_be_bytes(*b"HTTP"));
        assert_eq!(http, WireError::TooLong(1_213_486_160));
        let text = Violation::from_wire(http).to_string();
        assert!(
            text.contains("HTTP server") && text.contains("7610"),
            "{text}"
        );
        let other = Violation::from_wire(WireError::TooLong(2000));
        assert_eq!(other, Violation::Frame(WireError::TooLong(2000)));
    }

    #[test]
    fn refills_follow_the_rate_between_low_water_and_capacity() {
        let idle = plan(0.0, 4096, 262_144);
        assert_eq!(
            idle,
            Plan {
                low_mark: 4096,
                fill_to: 4096
            }
        );
        let busy = plan(4_000_000.0, 4096, 262_144);
        assert_eq!(
            busy,
            Plan {
                low_mark: 100_000,
                fill_to: 200_000
            }
        );
        let flat_out = plan(1e12, 4096, 262_144);
        assert_eq!(flat_out.fill_to, 262_144);
        let nothing = plan(f64::NAN, 0, 10);
        assert_eq!(nothing.low_mark, 1, "an empty buffer always refills");
        assert_eq!(plan(1e6, 10, 10).fill_to, 10);
    }
}
