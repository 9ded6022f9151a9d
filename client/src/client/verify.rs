//! Checks on what servers send, kept free of I/O so every rule has a unit test.
//!
//! The driver runs a WELCOME through [`check_welcome`] before a connection may carry LEASEs,
//! and every LEASED reply through [`check_leased`] before its IDs reach the buffer or a
//! caller. A failed check is a protocol violation: the driver drops the connection and the
//! IDs are never handed out. Every way to fail is a [`Violation`], whose text names the
//! rule. [`plan`] turns the draw rate into refill thresholds.

use std::net::SocketAddr;
use std::time::Duration;

use crate::client::config::{DEFAULT_ADMIN_PORT, DEFAULT_PORT};
use crate::layout::{Layout, LayoutError};
use crate::wire::{Welcome, WireError, VERSION};

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
    #[error("WELCOME speaks version {got}, this client speaks {VERSION}")]
    Version {
        /// The version in WELCOME.
        got: u16,
    },
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

/// Validates a WELCOME and returns the layout it announces. `established` is the layout of
/// the first server this client accepted: every server must agree with it, or IDs handed out
/// by one client could not all be decoded the same way.
pub(crate) fn check_welcome(w: &Welcome, established: Option<Layout>) -> Result<Layout, Violation> {
    if w.version != VERSION {
        return Err(Violation::Version { got: w.version });
    }
    let layout = Layout::widths(
        w.epoch_unix_ms,
        w.timestamp_bits,
        w.worker_bits,
        w.sequence_bits,
    )
    .map_err(Violation::InvalidLayout)?;
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
    match established {
        Some(first) if first != layout => Err(Violation::LayoutMismatch { layout, first }),
        _ => Ok(layout),
    }
}

/// What was asked: the oldest outstanding LEASE on the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Asked {
    pub request_id: u32,
    pub count: u32,
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
    let asked = asked.ok_or(Violation::Unasked { request_id })?;
    if request_id != asked.request_id {
        return Err(Violation::OutOfOrder {
            got: request_id,
            expected: asked.request_id,
        });
    }
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
        Welcome {
            version: 1,
            worker_id: 7,
            epoch_unix_ms: Layout::DEFAULT.epoch_unix_ms(),
            timestamp_bits: 41,
            worker_bits: 10,
            sequence_bits: 12,
            max_lease: 4096,
            server_unix_ms: 0,
        }
    }

    #[test]
    fn a_well_formed_welcome_yields_its_layout() {
        assert_eq!(check_welcome(&welcome(), None), Ok(Layout::DEFAULT));
        assert_eq!(
            check_welcome(&welcome(), Some(Layout::DEFAULT)),
            Ok(Layout::DEFAULT)
        );
    }

    #[test]
    fn welcomes_with_bad_fields_or_another_layout_are_refused() {
        type Breaker = fn(&mut Welcome);
        let cases: [(Breaker, &str); 5] = [
            (|w| w.version = 2, "version 2"),
            (|w| w.sequence_bits = 13, "invalid layout"),
            (|w| w.worker_id = 1024, "does not fit"),
            (|w| w.max_lease = 0, "max_lease 0"),
            (|w| w.max_lease = 4097, "max_lease 4097"),
        ];
        for (break_it, why) in cases {
            let mut w = welcome();
            break_it(&mut w);
            let err = check_welcome(&w, None).unwrap_err().to_string();
            assert!(err.contains(why), "{why}: {err}");
        }
        let mut other_epoch = welcome();
        other_epoch.epoch_unix_ms += 1;
        let err = check_welcome(&other_epoch, Some(Layout::DEFAULT))
            .unwrap_err()
            .to_string();
        assert!(err.contains("must share a layout"), "{err}");
    }

    const ASKED: Option<Asked> = Some(Asked {
        request_id: 4,
        count: 100,
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
