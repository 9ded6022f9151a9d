//! Applying what servers send: a WELCOME makes a connection ready (once its layout and
//! worker id check out), a LEASED reply is verified against the oldest outstanding request and
//! its range goes to the buffer or to the caller of a direct lease, a GOAWAY lets the
//! outstanding replies finish, and an ERROR ends the connection. Every `Err` returned here
//! makes the driver drop the connection without using anything it sent.
//!
//! Every frame also counts as a sign of life: it ends the connection's silence (see
//! `latency`), and a LEASED reply's gap since the connection could have answered it updates
//! the connection's usual latency. A late reply to a request that stopped counting as IDs on
//! the way is verified like any other, and its IDs go to the buffer once: the request was
//! never sent twice.

use std::time::Instant;

use tracing::{debug, info};

use super::engine::{Action, Engine};
use super::slots::Dest;
use crate::client::buffer::Block;
use crate::client::verify::{self, Asked, Leased, Violation};
use crate::client::{Error, IdRange};
use crate::wire::{Response, Welcome};

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
            // A version-2 WELCOME carries version 2, which the version check refuses.
            Response::Welcome(w) | Response::WelcomeV2 { welcome: w, .. } => {
                self.on_welcome(index, &w).map_err(protocol)
            }
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
                match self.slots[index].conn() {
                    Some(c) if c.outstanding.is_empty() => match c.draining {
                        Some(reason) => Err(Error::GoAway { addr, reason }),
                        None => Ok(()),
                    },
                    _ => Ok(()),
                }
            }
            Response::Pong { .. } => Ok(()),
            // This client speaks version 1, so a version-2 frame answers nothing it sent.
            Response::BulkLeased { request_id, .. } => {
                Err(protocol(Violation::BulkOnVersion1 { request_id }))
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

    fn on_welcome(&mut self, index: usize, w: &Welcome) -> Result<(), Violation> {
        let layout = verify::check_welcome(w, self.layout)?;
        if let Some(other) = self.slots.iter().find(|s| {
            s.conn()
                .and_then(|c| c.ready)
                .is_some_and(|r| r.0 == w.worker_id)
        }) {
            return Err(Violation::DuplicateWorker {
                worker: w.worker_id,
                other: other.addr,
            });
        }
        let slot = &mut self.slots[index];
        // Frames come only from live connections (`Engine::on_frame`).
        let Some(conn) = slot.conn_mut() else {
            return Ok(());
        };
        if conn.ready.is_some() {
            return Err(Violation::SecondWelcome);
        }
        conn.ready = Some((w.worker_id, w.max_lease));
        slot.failures = 0;
        slot.last_error = None;
        let endpoint = slot.endpoint;
        info!(addr = %slot.addr, worker_id = w.worker_id, %layout, "connected");
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
        let (worker, _) = conn.ready.ok_or(Violation::LeasedBeforeWelcome)?;
        let asked = conn.outstanding.front().map(|o| Asked {
            request_id: o.request_id,
            count: o.count,
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
}
