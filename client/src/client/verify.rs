//! Checks on what servers send, kept free of I/O so every rule has a unit test.
//!
//! The driver runs a WELCOME through [`check_welcome`] before a connection may carry LEASEs,
//! and every LEASED reply through [`check_leased`] before its IDs reach the buffer or a
//! caller. A failed check is a protocol violation: the driver drops the connection and the
//! IDs are never handed out. [`plan`] turns the draw rate into refill thresholds.

use std::time::Duration;

use crate::layout::Layout;
use crate::wire::{Welcome, VERSION};

/// IDs kept on hand, as time at the current draw rate: 50 ms. Enough to ride out a failover
/// (a refused connect is retried after 25-50 ms and a healthy peer answers within a round
/// trip) without callers waiting, and 20 times shorter than the default `max_age`, so IDs are
/// used long before they would expire.
pub(crate) const REFILL_HORIZON: Duration = Duration::from_millis(50);

/// Validates a WELCOME and returns the layout it announces. `established` is the layout of
/// the first server this client accepted: every server must agree with it, or IDs handed out
/// by one client could not all be decoded the same way.
pub(crate) fn check_welcome(w: &Welcome, established: Option<Layout>) -> Result<Layout, String> {
    if w.version != VERSION {
        return Err(format!(
            "WELCOME speaks version {}, this client speaks {VERSION}",
            w.version
        ));
    }
    let layout = Layout::widths(
        w.epoch_unix_ms,
        w.timestamp_bits,
        w.worker_bits,
        w.sequence_bits,
    )
    .map_err(|e| format!("WELCOME announces an invalid layout: {e}"))?;
    if w.worker_id > layout.max_worker() {
        return Err(format!(
            "WELCOME worker id {} does not fit {} worker bits",
            w.worker_id, w.worker_bits
        ));
    }
    if w.max_lease == 0 || w.max_lease > layout.max_lease() {
        return Err(format!(
            "WELCOME max_lease {} is outside 1..={}",
            w.max_lease,
            layout.max_lease()
        ));
    }
    match established {
        Some(first) if first != layout => Err(format!(
            "layout {layout} differs from {first} announced by an earlier server; \
             servers behind one client must share a layout"
        )),
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
) -> Result<u64, String> {
    let Some(asked) = asked else {
        return Err(format!(
            "LEASED for request {} with no LEASE outstanding",
            reply.request_id
        ));
    };
    if reply.request_id != asked.request_id {
        return Err(format!(
            "LEASED answers request {}, but the oldest outstanding is {} (replies must come in order)",
            reply.request_id, asked.request_id
        ));
    }
    if reply.count == 0 || reply.count > asked.count {
        return Err(format!(
            "LEASED carries {} IDs for a LEASE of {}",
            reply.count, asked.count
        ));
    }
    let end = reply
        .first_id
        .checked_add(u64::from(reply.count))
        .filter(|&end| end <= 1 << 63)
        .ok_or_else(|| {
            format!(
                "range {}+{} runs past the 63-bit ID space",
                reply.first_id, reply.count
            )
        })?;
    let parts = layout.decompose(reply.first_id);
    if parts.worker != worker {
        return Err(format!(
            "range {} belongs to worker {}, but the server announced worker {worker}",
            reply.first_id, parts.worker
        ));
    }
    if u64::from(parts.sequence) + u64::from(reply.count) > u64::from(layout.max_lease()) {
        return Err(format!(
            "range {}+{} crosses a tick boundary (sequence {} + {} > {})",
            reply.first_id,
            reply.count,
            parts.sequence,
            reply.count,
            layout.max_lease()
        ));
    }
    if let Some(prev) = prev_end {
        if reply.first_id < prev {
            return Err(format!(
                "range starts at {}, below the end {prev} of worker {worker}'s previous range; \
                 its IDs could repeat",
                reply.first_id
            ));
        }
    }
    Ok(end)
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
            let err = check_welcome(&w, None).unwrap_err();
            assert!(err.contains(why), "{why}: {err}");
        }
        let mut other_epoch = welcome();
        other_epoch.epoch_unix_ms += 1;
        let err = check_welcome(&other_epoch, Some(Layout::DEFAULT)).unwrap_err();
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
        check_leased(&Layout::DEFAULT, 7, ASKED, prev, r)
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
        let err = check_leased(&Layout::DEFAULT, 7, None, None, reply(first, 1)).unwrap_err();
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
