//! Applying what servers send: a WELCOME makes a connection ready (once its version, layout,
//! worker id and, in version 2, worker set check out), a LEASED reply is verified against the
//! oldest outstanding request and its range goes to the buffer or to the caller of a direct
//! lease, a BULK_LEASED reply is verified as a whole and then expanded run by run into
//! per-tick blocks for the buffer, a GOAWAY lets the outstanding replies finish, and an ERROR
//! ends the connection. Every `Err` returned here makes the driver drop the connection
//! without using anything in the offending frame.
//!
//! Every frame also counts as a sign of life: it ends the connection's silence (see
//! `latency`), and a LEASED reply's gap since the connection could have answered it updates
//! the connection's usual latency. A late reply to a request that stopped counting as IDs on
//! the way is verified like any other, and its IDs go to the buffer once: the request was
//! never sent twice.

use std::time::Instant;

use tracing::{debug, info};

use super::engine::{Action, Engine};
use super::refill::bulk_hold;
use super::slots::Dest;
use crate::client::buffer::Block;
use crate::client::verify::{self, Asked, Leased, Violation};
use crate::client::{Error, IdRange};
use crate::wire::{Response, Run, Welcome, WorkerSet};

impl Engine {
    /// Applies one frame; an `Err` drops the connection.
    pub(super) fn apply_frame(
        &mut self,
        index: usize,
        frame: Response,
        now: Instant,
    ) -> Result<(), Error> {
        let addr = self.slots[index].addr;
        let protocol = |reason: Violation| Error::Protocol { addr, reason };
        let quiet_since = self.hear(index, now);
        match frame {
            Response::Welcome(w) => self.on_welcome(index, &w, None).map_err(protocol),
            Response::WelcomeV2 { welcome, workers } => self
                .on_welcome(index, &welcome, Some(&workers))
                .map_err(protocol),
            Response::Leased {
                request_id,
                first_id,
                count,
            } => {
                let reply = Leased {
                    request_id,
                    first_id,
                    count,
                };
                self.on_leased(index, reply, quiet_since, now)
                    .map_err(protocol)?;
                self.end_if_drained(index)
            }
            Response::Pong { .. } => Ok(()),
            Response::BulkLeased { request_id, runs } => {
                self.on_bulk_leased(index, request_id, &runs, quiet_since, now)
                    .map_err(protocol)?;
                self.end_if_drained(index)
            }
            Response::GoAway { reason } => {
                let conn = self.slots[index].conn_mut().ok_or(Error::Closed)?;
                conn.draining = Some(reason);
                if conn.outstanding.is_empty() {
                    return Err(Error::GoAway { addr, reason });
                }
                debug!(%addr, "GOAWAY; waiting for {} replies", conn.outstanding.len());
                Ok(())
            }
            Response::Error { code, message, .. } => Err(Error::Server {
                addr,
                code,
                message,
            }),
        }
    }

    /// After a reply: a connection that got GOAWAY ends once nothing is outstanding.
    fn end_if_drained(&self, index: usize) -> Result<(), Error> {
        match self.slots[index].conn() {
            Some(c) if c.outstanding.is_empty() => match c.draining {
                Some(reason) => Err(Error::GoAway {
                    addr: self.slots[index].addr,
                    reason,
                }),
                None => Ok(()),
            },
            _ => Ok(()),
        }
    }

    fn on_welcome(
        &mut self,
        index: usize,
        w: &Welcome,
        set: Option<&WorkerSet>,
    ) -> Result<(), Violation> {
        let greeting = verify::check_welcome(w, set, self.config.protocol_version, self.layout)?;
        let layout = greeting.layout;
        // Replies of one worker are checked in arrival order per worker id, which holds only
        // if each worker id reaches this client through one connection.
        let shared = self.slots.iter().enumerate().find_map(|(i, s)| {
            let other = s.conn().filter(|_| i != index)?.ready?;
            Some((greeting.shared_worker(&other)?, s.addr))
        });
        if let Some((worker, other)) = shared {
            return Err(Violation::DuplicateWorker { worker, other });
        }
        let slot = &mut self.slots[index];
        // Frames come only from live connections (`Engine::on_frame`).
        let Some(conn) = slot.conn_mut() else {
            return Ok(());
        };
        if conn.ready.is_some() {
            return Err(Violation::SecondWelcome);
        }
        conn.ready = Some(greeting);
        slot.failures = 0;
        slot.last_error = None;
        let endpoint = slot.endpoint;
        let (first, count) = (greeting.workers.first_worker, greeting.workers.worker_count);
        info!(addr = %slot.addr, version = w.version, worker_id = w.worker_id,
            workers = %format_args!("{first}+{count}"), %layout, "connected");
        if self.layout.is_none() {
            self.layout = Some(layout);
            self.act(Action::Layout(layout));
        }
        self.note_answering(endpoint);
        self.act(Action::Fatal(None));
        self.act(Action::WakeWaiters);
        Ok(())
    }

    /// Records a frame from the slot's connection at `now`; returns when it was last heard
    /// from before.
    fn hear(&mut self, index: usize, now: Instant) -> Instant {
        let addr = self.slots[index].addr;
        let Some(conn) = self.slots[index].conn_mut() else {
            return now;
        };
        if std::mem::take(&mut conn.silent) {
            let quiet = now.saturating_duration_since(conn.heard);
            info!(%addr, ?quiet, "answering again");
        }
        std::mem::replace(&mut conn.heard, now)
    }

    fn on_leased(
        &mut self,
        index: usize,
        reply: Leased,
        quiet_since: Instant,
        now: Instant,
    ) -> Result<(), Violation> {
        let layout = self.layout.unwrap_or_default();
        let Some(conn) = self.slots[index].conn_mut() else {
            return Ok(());
        };
        let worker = conn.ready.ok_or(Violation::LeasedBeforeWelcome)?.worker;
        let asked = conn.outstanding.front().map(|o| Asked {
            request_id: o.request_id,
            count: o.count,
            bulk: o.bulk,
        });
        let prev = self.last_end.get(&worker).copied();
        let end = verify::check_leased(&layout, worker, asked, prev, reply)?;
        let Some(done) = conn.outstanding.pop_front() else {
            return Err(Violation::Unasked {
                request_id: reply.request_id,
            });
        };
        conn.latency
            .observe(now.saturating_duration_since(quiet_since.max(done.sent)));
        self.last_end.insert(worker, end);
        let range = IdRange {
            first: reply.first_id,
            count: reply.count,
        };
        let block = Block {
            next: range.first,
            end,
            received: now,
        };
        match done.dest {
            Dest::Caller(caller) => self.act(Action::Answer {
                caller,
                range,
                block,
            }),
            Dest::Buffer => {
                self.act(Action::Buffer(block));
                self.delivered = true;
            }
        }
        Ok(())
    }

    /// Verifies a BULK_LEASED as a whole; only then records every run's end per worker and
    /// hands the runs, expanded into per-tick blocks, to the buffer.
    fn on_bulk_leased(
        &mut self,
        index: usize,
        request_id: u32,
        runs: &[Run],
        quiet_since: Instant,
        now: Instant,
    ) -> Result<(), Violation> {
        let layout = self.layout.unwrap_or_default();
        let last_end = &self.last_end;
        let Some(conn) = self.slots[index].conn_mut() else {
            return Ok(());
        };
        let greeting = conn.ready.ok_or(Violation::LeasedBeforeWelcome)?;
        if greeting.max_bulk().is_none() {
            return Err(Violation::BulkOnVersion1 { request_id });
        }
        let asked = conn.outstanding.front().map(|o| Asked {
            request_id: o.request_id,
            count: o.count,
            bulk: o.bulk,
        });
        let ends = verify::check_bulk_leased(
            &layout,
            &greeting.workers,
            asked,
            |worker| last_end.get(&worker).copied(),
            request_id,
            runs,
        )?;
        let Some(done) = conn.outstanding.pop_front() else {
            return Err(Violation::UnaskedBulk { request_id });
        };
        conn.latency
            .observe(now.saturating_duration_since(quiet_since.max(done.sent)));
        // Less than asked: the server had nothing more within its lead.
        let total: u64 = runs.iter().map(|r| u64::from(r.count)).sum();
        conn.drained_until = (total < u64::from(done.count))
            .then(|| now + bulk_hold(self.available_seen.saturating_add(total), self.rate_seen));
        self.last_end.extend(ends);
        let blocks = runs
            .iter()
            .flat_map(|run| layout.blocks(run.first_id, run.count))
            .map(|(first, count)| Block {
                next: first,
                end: first + u64::from(count),
                received: now,
            })
            .collect();
        self.act(Action::BufferAll(blocks));
        self.delivered = true;
        Ok(())
    }
}
