//! The background task: turns callers' demand into few large LEASE requests.
//!
//! Callers never talk to the network. They pop IDs from the shared buffer; when a take
//! leaves the buffer below the driver's low-water trigger, or a caller finds it empty, they
//! poke `Shared::wake`. The driver wakes on that, on frames and closures reported by
//! connection tasks, on name resolutions, on direct `lease` commands, and on a timer. Each
//! time it
//!
//! 1. applies what arrived: WELCOMEs and LEASED replies are verified (see `verify`), good
//!    ranges go to the buffer (or to the caller of a direct lease), and anything that breaks
//!    the contract drops the connection without handing out its IDs;
//! 2. drops ranges older than `max_age`, updates the draw-rate estimate, and times out
//!    silent connections;
//! 3. re-resolves names and reconnects lost servers whose jittered backoff has passed;
//! 4. sends direct leases, then, if IDs on hand plus in flight are below the low mark,
//!    pipelines maximal LEASEs to the least-busy connections (at most `max_in_flight` each)
//!    until the rate-sized target is covered, and re-arms the buffer's trigger.
//!
//! All connection state lives in this one task, so it needs no locks of its own; the only
//! lock it shares is the buffer's, taken twice per pass for a few instructions.

mod replies;
mod slots;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::config::{ClientConfig, Target};
use super::conn::{ConnEvent, ConnId};
use super::rate::RateEstimator;
use super::shared::{lock, Command, DirectLease, Shared};
use super::verify;
use super::Error;
use crate::wire::{Request, VERSION};
use slots::{Dest, Endpoint, Outstanding, Slot, SlotState};

/// Events handled per pass before refilling: 256. Replies are applied in a batch so one
/// refill decision covers them all, yet a flood of frames cannot keep the driver from
/// refilling and expiring for long (each event is a few checks and one buffer push).
const EVENT_BATCH: usize = 256;

/// Capacity of the channel from connection tasks to the driver: 1,024 events, the replies
/// of 64 connections with 16 LEASEs in flight each, so it fills only if a server floods
/// frames, and then that server's socket is read no faster than the driver can check.
const EVENT_QUEUE: usize = 1024;

/// Everything the driver reacts to besides commands and wakes.
#[derive(Debug)]
pub(crate) enum Event {
    Conn(ConnId, ConnEvent),
    Resolved(usize, Result<Vec<SocketAddr>, Error>),
}

impl From<(ConnId, ConnEvent)> for Event {
    fn from((id, event): (ConnId, ConnEvent)) -> Event {
        Event::Conn(id, event)
    }
}

/// See the module docs.
#[derive(Debug)]
pub(crate) struct Driver {
    config: ClientConfig,
    shared: Arc<Shared>,
    commands: mpsc::UnboundedReceiver<Command>,
    events_tx: mpsc::Sender<Event>,
    events: mpsc::Receiver<Event>,
    endpoints: Vec<Endpoint>,
    slots: Vec<Slot>,
    next_conn_id: ConnId,
    /// End of the last range accepted from each worker id, across reconnects.
    last_end: HashMap<u16, u64>,
    rate: RateEstimator,
    drawn_seen: u64,
    direct: VecDeque<DirectLease>,
    /// Where the search for a connection to load starts, so ties rotate.
    cursor: usize,
    /// IDs were delivered since waiters were last notified.
    delivered: bool,
    /// Expiry, timeout and rate period: `max_age / 8` within 1..=100 ms, so ranges are
    /// dropped between 7/8 and all of `max_age`, and timeouts are noticed within 100 ms.
    tick: Duration,
    next_tick: Instant,
    hello: Request,
}

impl Driver {
    pub fn new(
        config: ClientConfig,
        targets: Vec<Target>,
        shared: Arc<Shared>,
        commands: mpsc::UnboundedReceiver<Command>,
    ) -> Driver {
        let now = Instant::now();
        let (events_tx, events) = mpsc::channel(EVENT_QUEUE);
        let mut driver = Driver {
            tick: (config.max_age / 8).clamp(Duration::from_millis(1), Duration::from_millis(100)),
            hello: Request::Hello {
                version: VERSION,
                token: config.token.clone(),
            },
            config,
            shared,
            commands,
            events_tx,
            events,
            endpoints: Vec::new(),
            slots: Vec::new(),
            next_conn_id: 1,
            last_end: HashMap::new(),
            rate: RateEstimator::new(now),
            drawn_seen: 0,
            direct: VecDeque::new(),
            cursor: 0,
            delivered: false,
            next_tick: now,
        };
        for target in targets {
            driver.add_endpoint(target, now);
        }
        driver
    }

    fn add_endpoint(&mut self, target: Target, now: Instant) {
        let index = self.endpoints.len();
        if let Target::Addr(addr) = target {
            if !self.slots.iter().any(|s| s.addr == addr) {
                self.slots.push(Slot::new(addr, index, now));
            }
        }
        self.endpoints.push(Endpoint {
            target,
            resolving: false,
            resolved_at: None,
            next_resolve: now,
            failures: 0,
        });
    }

    /// Runs until every client handle is gone or `close` is called.
    pub async fn run(mut self) {
        self.maintain(Instant::now());
        loop {
            let deadline = self.next_deadline();
            tokio::select! {
                biased;
                command = self.commands.recv() => {
                    if !self.on_command(command) {
                        return;
                    }
                }
                Some(event) = self.events.recv() => self.on_event(event),
                () = self.shared.wake.notified() => {}
                () = tokio::time::sleep_until(deadline) => {}
            }
            for _ in 0..EVENT_BATCH {
                match self.events.try_recv() {
                    Ok(event) => self.on_event(event),
                    Err(_) => break,
                }
            }
            while let Ok(command) = self.commands.try_recv() {
                if !self.on_command(Some(command)) {
                    return;
                }
            }
            self.maintain(Instant::now());
        }
    }

    /// Returns false when the driver must stop.
    fn on_command(&mut self, command: Option<Command>) -> bool {
        match command {
            Some(Command::Lease(lease)) => {
                self.direct.push_back(lease);
                true
            }
            Some(Command::Close(ack)) => {
                self.shutdown();
                let _ = ack.send(());
                false
            }
            None => {
                self.shutdown();
                false
            }
        }
    }

    fn shutdown(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        self.slots.clear();
        self.direct.clear();
        self.shared.buffer().clear();
        self.shared.refilled.notify_waiters();
        debug!("snowlease client closed");
    }

    fn next_deadline(&self) -> Instant {
        let retries = self.slots.iter().filter_map(|s| match s.state {
            SlotState::Waiting { retry_at } => Some(retry_at),
            SlotState::Live(_) => None,
        });
        let resolves = self
            .endpoints
            .iter()
            .filter(|e| matches!(e.target, Target::Name(_)) && !e.resolving)
            .map(|e| e.next_resolve);
        retries
            .chain(resolves)
            .fold(self.next_tick, |a, b| a.min(b))
    }

    fn maintain(&mut self, now: Instant) {
        if now >= self.next_tick {
            self.time_out_silent_connections(now);
            self.next_tick = now + self.tick;
        }
        self.resolve_and_connect(now);
        self.send_direct(now);
        self.refill(now);
        if std::mem::take(&mut self.delivered) {
            self.shared.refilled.notify_waiters();
        }
    }

    fn on_event(&mut self, event: Event) {
        let now = Instant::now();
        match event {
            Event::Resolved(index, result) => self.on_resolved(index, result, now),
            Event::Conn(id, event) => {
                let Some(index) = self.slots.iter().position(|s| s.conn_id() == Some(id)) else {
                    return;
                };
                let result = match event {
                    ConnEvent::Frame(frame) => self.on_frame(index, frame, now),
                    ConnEvent::Closed(why) => Err(why),
                };
                if let Err(why) = result {
                    self.fail(index, why, now);
                }
            }
        }
    }

    /// Drops a slot's connection, hands its unanswered direct leases to other servers, and
    /// schedules a reconnect after a jittered backoff.
    fn fail(&mut self, index: usize, why: Error, now: Instant) {
        let slot = &mut self.slots[index];
        let SlotState::Live(conn) =
            std::mem::replace(&mut slot.state, SlotState::Waiting { retry_at: now })
        else {
            return;
        };
        for o in conn.outstanding.into_iter().rev() {
            if let Dest::Caller(reply) = o.dest {
                self.direct.push_front(DirectLease {
                    count: o.count,
                    reply,
                });
            }
        }
        let delay = self.config.backoff.delay(slot.failures);
        slot.failures = slot.failures.saturating_add(1);
        slot.state = SlotState::Waiting {
            retry_at: now + delay,
        };
        if conn.ready.is_some() {
            warn!(addr = %slot.addr, error = %why, retry_in = ?delay, "connection lost");
        } else if slot.failures == 1 {
            warn!(addr = %slot.addr, error = %why, retry_in = ?delay, "cannot connect");
        } else {
            debug!(addr = %slot.addr, error = %why, retry_in = ?delay, "still cannot connect");
        }
        slot.last_error = Some(why.clone());
        *lock(&self.shared.last_error) = Some(why);
        if !slot.listed {
            self.slots.remove(index);
        }
        self.update_fatal();
    }

    /// Publishes a fatal error while no server is usable and every one of them refused us
    /// for a reason retrying cannot fix, so `connect` fails fast on a wrong token or on
    /// something that is not a snowlease server.
    fn update_fatal(&mut self) {
        let all_resolved = self
            .endpoints
            .iter()
            .all(|e| matches!(e.target, Target::Addr(_)) || e.resolved_at.is_some());
        let all_fatal = !self.slots.is_empty()
            && self.slots.iter().all(|s| {
                s.conn().is_none_or(|c| c.ready.is_none())
                    && s.last_error.as_ref().is_some_and(|e| !e.is_retryable())
            });
        let fatal = if all_resolved && all_fatal {
            self.slots.iter().find_map(|s| s.last_error.clone())
        } else {
            None
        };
        let changed = fatal.is_some();
        *lock(&self.shared.fatal) = fatal;
        if changed {
            self.shared.refilled.notify_waiters();
        }
    }

    fn time_out_silent_connections(&mut self, now: Instant) {
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
        // A send error means the task ended; its Closed event is on the way.
        let _ = conn
            .handle
            .requests
            .send(Request::Lease { request_id, count });
        conn.outstanding.push_back(Outstanding {
            request_id,
            count,
            sent: now,
            dest,
        });
        count
    }

    fn send_direct(&mut self, now: Instant) {
        while let Some(front) = self.direct.front() {
            if front.reply.is_closed() {
                self.direct.pop_front();
                continue;
            }
            let Some(index) = self.pick() else {
                return;
            };
            if let Some(lease) = self.direct.pop_front() {
                self.send_lease(index, lease.count, Dest::Caller(lease.reply), now);
            }
        }
    }

    fn refill(&mut self, now: Instant) {
        // Ranges at least this old will pass max_age before the next tick.
        let cutoff = now.checked_sub(self.config.max_age.saturating_sub(self.tick));
        let (available, drawn) = {
            let mut buffer = self.shared.buffer();
            if let Some(cutoff) = cutoff {
                buffer.expire(cutoff);
            }
            (buffer.available(), buffer.drawn())
        };
        let rate = self.rate.observe(drawn.wrapping_sub(self.drawn_seen), now);
        self.drawn_seen = drawn;
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
        self.shared.buffer().arm(wake_below);
    }
}
