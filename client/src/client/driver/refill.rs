//! Demand: turning the buffer's level and callers' direct leases into LEASE requests.
//!
//! Each pass, connections whose oldest request has waited past `request_timeout` are
//! dropped (their direct leases go back to the queue), direct leases are sent, and then, if
//! the IDs on hand plus those on the way are below the low mark of the current [`plan`],
//! maximal LEASEs are pipelined to the least-busy ready connections (at most `max_in_flight`
//! each) until the rate-sized target is covered. Last, the buffer's trigger is re-armed so
//! callers wake the driver when the level falls below the mark again.
//!
//! [`plan`]: crate::client::verify::plan

use std::time::Instant;

use super::engine::{Action, Engine, Level};
use super::slots::{Dest, Outstanding, Slot};
use crate::client::verify;
use crate::client::Error;
use crate::wire::Request;

impl Engine {
    pub(super) fn time_out_silent_connections(&mut self, now: Instant) {
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

    /// The ready connection with the fewest requests outstanding and room for one more;
    /// ties go to the one after the last pick, so idle servers share the load.
    fn pick(&mut self) -> Option<usize> {
        let n = self.slots.len();
        let limit = self.config.max_in_flight;
        let best = (0..n)
            .map(|i| (self.cursor + i) % n)
            .filter_map(|i| {
                let c = self.slots[i].conn()?;
                let usable =
                    c.ready.is_some() && c.draining.is_none() && c.outstanding.len() < limit;
                usable.then_some((c.outstanding.len(), i))
            })
            .min_by_key(|&(len, _)| len)
            .map(|(_, i)| i)?;
        self.cursor = best + 1;
        Some(best)
    }

    fn send_lease(&mut self, index: usize, count: u32, dest: Dest, now: Instant) -> u32 {
        let Some(conn) = self.slots[index].conn_mut() else {
            return 0;
        };
        let max = conn.ready.map_or(1, |r| r.1);
        let count = count.clamp(1, max);
        let request_id = conn.next_request_id;
        conn.next_request_id = conn.next_request_id.wrapping_add(1).max(1);
        conn.outstanding.push_back(Outstanding {
            request_id,
            count,
            sent: now,
            dest,
        });
        let conn = conn.id;
        self.act(Action::Send {
            conn,
            request: Request::Lease { request_id, count },
        });
        count
    }

    pub(super) fn send_direct(&mut self, now: Instant) {
        while !self.direct.is_empty() {
            let Some(index) = self.pick() else {
                return;
            };
            if let Some(lease) = self.direct.pop_front() {
                self.send_lease(index, lease.count, Dest::Caller(lease.caller), now);
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
        let mut in_flight: u64 = self
            .slots
            .iter()
            .filter_map(Slot::conn)
            .flat_map(|c| &c.outstanding)
            .filter(|o| matches!(o.dest, Dest::Buffer))
            .map(|o| u64::from(o.count))
            .sum();
        let capacity = self.config.buffer_capacity;
        if available + in_flight < plan.low_mark {
            while available + in_flight < plan.fill_to {
                // Whole leases (the server caps them at max_lease), trimmed only where they
                // would overflow the capacity.
                let room = capacity.saturating_sub(available + in_flight);
                let Some(index) = self.pick().filter(|_| room > 0) else {
                    break;
                };
                let count = u32::try_from(room).unwrap_or(u32::MAX);
                in_flight += u64::from(self.send_lease(index, count, Dest::Buffer, now));
            }
        }
        // Below the low mark with nothing more to send means replies are coming (they wake
        // the driver) or no server is up (reconnects wake it): callers need not.
        let wake_below = if available + in_flight >= plan.low_mark {
            plan.low_mark.saturating_sub(in_flight)
        } else {
            0
        };
        self.act(Action::Arm(wake_below));
    }
}
