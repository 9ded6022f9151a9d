//! Demand: turning the buffer's level and callers' direct leases into LEASE and BULK_LEASE
//! requests.
//!
//! Each pass, connections whose oldest request has waited past `request_timeout` are
//! dropped (their direct leases go back to the queue), connections that have gone silent
//! are noticed, direct leases are sent, and then, if the IDs on hand plus those on the way
//! are below the low mark of the current [`plan`], requests go to the least-busy usable
//! connections (at most `max_in_flight` each) until the rate-sized target is covered. The
//! shortfall is shared evenly among the usable connections; a version-2 connection whose
//! share is more than one LEASE (`max_lease`, one tick of one worker) gets it in one
//! BULK_LEASE (at most `max_bulk`), which the server fills from every worker it holds, and
//! otherwise maximal LEASEs are pipelined as in version 1 ([`ask_for`]). So an idle or slow
//! client keeps using LEASE, which a server answers ahead of queued bulk leases, and a fast
//! one needs one round trip per connection per refill instead of one per 4,096 IDs. A
//! connection whose last BULK_LEASED came back short (its server had nothing more within its
//! lead) is skipped by refills for a moment ([`bulk_hold`]), so the next request finds
//! milliseconds already open rather than waiting in the server for each one. Last, the
//! buffer's trigger is re-armed so callers wake the driver when the level falls below the
//! mark again.
//!
//! "On the way" means outstanding on a connection that is answering: a silent connection's
//! requests (see `latency`) do not count, and it gets no new ones, so the demand it cannot
//! serve moves to the servers that answer within one silence limit, not one request
//! timeout. Direct leases waiting on a silent connection are sent again elsewhere (hedged)
//! when another connection is usable; the silent one's late reply, if any, then goes to the
//! buffer, so each range still reaches exactly one place.
//!
//! [`plan`]: crate::client::verify::plan

use std::time::{Duration, Instant};

use tracing::warn;

use super::engine::{Action, Direct, Engine, Level};
use super::slots::{Conn, Dest, Outstanding, Slot};
use crate::client::verify;
use crate::client::verify::Greeting;
use crate::client::Error;
use crate::wire::Request;

impl Engine {
    pub(super) fn time_out_dead_connections(&mut self, now: Instant) {
        let limit = self.config.request_timeout;
        for index in (0..self.slots.len()).rev() {
            let stale = self.slots[index].conn().is_some_and(|c| {
                c.outstanding
                    .front()
                    .is_some_and(|o| now.saturating_duration_since(o.sent) > limit)
            });
            if stale {
                let addr = self.slots[index].addr;
                self.fail(
                    index,
                    Error::RequestTimeout {
                        addr,
                        timeout: limit,
                    },
                    now,
                );
            }
        }
    }

    /// Notices connections that went silent since the last pass: their direct leases are
    /// hedged to a usable connection if there is one.
    pub(super) fn notice_silence(&mut self, now: Instant) {
        let cap = self.config.request_timeout;
        for index in 0..self.slots.len() {
            let addr = self.slots[index].addr;
            let Some(conn) = self.slots[index].conn_mut() else {
                continue;
            };
            if conn.silent || !conn.is_silent(now, cap) {
                continue;
            }
            conn.silent = true;
            let quiet = now.saturating_duration_since(conn.heard);
            let usual = conn.latency.estimate();
            let owed = conn.outstanding.len();
            warn!(%addr, ?quiet, ?usual, owed, "server silent; asking the others");
            self.hedge(index, now);
            self.recheck_soon(self.slots[index].endpoint, now);
        }
    }

    /// Moves the direct leases outstanding on slot `index` to the front of the queue, if
    /// another connection can take them; their original requests now feed the buffer.
    fn hedge(&mut self, index: usize, now: Instant) {
        let (limit, cap) = (self.config.max_in_flight, self.config.request_timeout);
        let elsewhere = self
            .slots
            .iter()
            .enumerate()
            .any(|(i, s)| i != index && s.conn().is_some_and(|c| c.usable(limit, now, cap)));
        let Some(conn) = self.slots[index].conn_mut().filter(|_| elsewhere) else {
            return;
        };
        let mut hedged = Vec::new();
        for o in &mut conn.outstanding {
            if let Dest::Caller(caller) = o.dest {
                o.dest = Dest::Buffer;
                hedged.push(Direct {
                    caller,
                    count: o.count,
                });
            }
        }
        for direct in hedged.into_iter().rev() {
            self.direct.push_front(direct);
        }
    }

    /// The usable connection with the fewest requests outstanding; ties go to the one after
    /// the last pick, so idle servers share the load. A refill (`refill`) skips connections
    /// whose server was drained a moment ago (`Conn::drained_until`); a caller's direct lease
    /// does not.
    fn pick(&mut self, now: Instant, refill: bool) -> Option<usize> {
        let n = self.slots.len();
        let (limit, cap) = (self.config.max_in_flight, self.config.request_timeout);
        let best = (0..n)
            .map(|i| (self.cursor + i) % n)
            .filter_map(|i| {
                let c = self.slots[i].conn()?;
                let ok = if refill {
                    self.takes_refills(c, now)
                } else {
                    c.usable(limit, now, cap)
                };
                ok.then_some((c.outstanding.len(), i))
            })
            .min_by_key(|&(len, _)| len)
            .map(|(_, i)| i)?;
        self.cursor = best + 1;
        Some(best)
    }

    /// IDs asked for the buffer on connections that are answering.
    fn on_the_way(&self, now: Instant) -> u64 {
        let cap = self.config.request_timeout;
        self.slots
            .iter()
            .filter_map(Slot::conn)
            .filter(|c| !c.is_silent(now, cap))
            .flat_map(|c| &c.outstanding)
            .filter(|o| o.dest == Dest::Buffer)
            .map(|o| u64::from(o.count))
            .sum()
    }

    /// Sends `ask` on slot `index`'s connection; returns the count asked.
    fn send(&mut self, index: usize, ask: Ask, dest: Dest, now: Instant) -> u32 {
        let Some(conn) = self.slots[index].conn_mut() else {
            return 0;
        };
        let (bulk, count) = match ask {
            Ask::Lease(count) => (false, count.clamp(1, conn.ready.map_or(1, |r| r.max_lease))),
            Ask::Bulk(count) => (true, count.max(1)),
        };
        let request_id = conn.next_request_id;
        conn.next_request_id = conn.next_request_id.wrapping_add(1).max(1);
        conn.outstanding.push_back(Outstanding {
            request_id,
            count,
            bulk,
            sent: now,
            dest,
        });
        let conn = conn.id;
        let request = if bulk {
            Request::BulkLease { request_id, count }
        } else {
            Request::Lease { request_id, count }
        };
        self.act(Action::Send { conn, request });
        count
    }

    /// Connections a refill may use right now: usable and not drained a moment ago.
    fn refillable(&self, now: Instant) -> u64 {
        let usable = self
            .slots
            .iter()
            .filter_map(Slot::conn)
            .filter(|c| self.takes_refills(c, now))
            .count();
        u64::try_from(usable).unwrap_or(u64::MAX)
    }

    fn takes_refills(&self, c: &Conn, now: Instant) -> bool {
        let (limit, cap) = (self.config.max_in_flight, self.config.request_timeout);
        c.usable(limit, now, cap) && c.drained_until.is_none_or(|t| now >= t)
    }

    pub(super) fn send_direct(&mut self, now: Instant) {
        while !self.direct.is_empty() {
            let Some(index) = self.pick(now, false) else {
                return;
            };
            if let Some(lease) = self.direct.pop_front() {
                let ask = Ask::Lease(lease.count);
                self.send(index, ask, Dest::Caller(lease.caller), now);
            }
        }
    }

    pub(super) fn refill(&mut self, now: Instant, level: Level) {
        let available = level.available;
        let rate = self
            .rate
            .observe(level.drawn.wrapping_sub(self.drawn_seen), now);
        self.drawn_seen = level.drawn;
        let plan = verify::plan(rate, self.config.low_water, self.config.buffer_capacity);
        (self.rate_seen, self.available_seen) = (rate, available);
        let mut in_flight = self.on_the_way(now);
        let capacity = self.config.buffer_capacity;
        if available + in_flight < plan.low_mark {
            let share =
                (plan.fill_to - available - in_flight).div_ceil(self.refillable(now).max(1));
            while available + in_flight < plan.fill_to {
                let room = capacity.saturating_sub(available + in_flight);
                let Some(index) = self.pick(now, true).filter(|_| room > 0) else {
                    break;
                };
                let want = share.min(plan.fill_to - available - in_flight);
                let ask = ask_for(self.slots[index].conn().and_then(|c| c.ready), want, room);
                in_flight += u64::from(self.send(index, ask, Dest::Buffer, now));
            }
        }
        // Below the low mark with nothing more to send means replies are coming (they wake
        // the driver, and so does the moment a connection would count as silent) or no server
        // is up (reconnects wake it): callers need not.
        let wake_below = if available + in_flight >= plan.low_mark {
            plan.low_mark.saturating_sub(in_flight)
        } else {
            0
        };
        self.act(Action::Arm(wake_below));
    }
}

/// Longest a drained connection is skipped by refills: 25 ms, half the refill horizon
/// ([`REFILL_HORIZON`](crate::client::verify::REFILL_HORIZON), 50 ms), so a hold never
/// outlasts the part of the horizon the buffer is meant to keep in reserve. In practice the
/// hold is shorter: see [`bulk_hold`].
pub(super) const MAX_BULK_HOLD: Duration = Duration::from_millis(25);

/// How long refills skip a connection whose BULK_LEASED came back short, with `available`
/// IDs on hand and callers drawing `rate` per second: half the time the buffer lasts, at
/// most [`MAX_BULK_HOLD`].
///
/// A short bulk reply means every worker of the server is at the end of its lead: the next
/// request would wait in the server for its clock to open each millisecond, one wake-up and
/// one small reply per millisecond. Asked after the hold instead, the server finds the
/// milliseconds that opened meanwhile and answers at once with all of them, while the half
/// of the buffer left covers the round trip. The throughput is the same (the server issues
/// what its clock allows either way); the server's work per ID is not. (Measured with the
/// ignored test `measure_bulk_leases_against_version_1` in `tests/bulk.rs`.)
pub(super) fn bulk_hold(available: u64, rate: f64) -> Duration {
    let lasts = if rate > 0.0 {
        Duration::try_from_secs_f64(available as f64 / rate / 2.0).unwrap_or(MAX_BULK_HOLD)
    } else {
        MAX_BULK_HOLD
    };
    lasts.min(MAX_BULK_HOLD)
}

/// One request to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ask {
    /// LEASE of this many IDs (the connection's `max_lease` at most).
    Lease(u32),
    /// BULK_LEASE of this many IDs.
    Bulk(u32),
}

/// What to ask a connection greeted with `greeting` for, when the plan wants `want` more IDs
/// from it and the buffer has `room` for more.
///
/// A version-2 connection asked for more than one LEASE's worth (with room for it) gets one
/// BULK_LEASE of `want`, at most the room and the server's `max_bulk`. Anything else gets a
/// whole LEASE of `max_lease` (the server may grant less, up to the end of its tick), trimmed
/// only where it would overflow the buffer's capacity, exactly as in version 1.
pub(super) fn ask_for(greeting: Option<Greeting>, want: u64, room: u64) -> Ask {
    let max_lease = greeting.map_or(1, |g| g.max_lease);
    let lease = Ask::Lease(u32::try_from(room.min(u64::from(max_lease))).unwrap_or(max_lease));
    match greeting.and_then(|g| g.max_bulk()) {
        Some(max_bulk) if want.min(room) > u64::from(max_lease) => {
            let count = want.min(room).min(u64::from(max_bulk));
            u32::try_from(count).map_or(lease, Ask::Bulk)
        }
        _ => lease,
    }
}
