//! The driver's decisions, free of I/O: events and the time in, actions out.
//!
//! # Data flow
//! ```text
//!  shell (driver.rs)                     Engine                          shell
//!  frame / close of conn X  --on_frame/on_closed-->  endpoints, slots,   --poll_action-->  connect, send (BULK_)LEASE,
//!  resolution of endpoint E --on_resolved-------->   outstanding LEASEs,                   close, resolve, buffer
//!  caller's lease / gone    --on_lease/on_caller_gone->  direct leases,                     a range, answer a caller,
//!  buffer level + now       --maintain----------->   rate, last ends                        publish layout/errors, arm
//! ```
//! The shell (`driver.rs`) owns the sockets, the tasks and the shared buffer; the engine
//! owns the model of every endpoint, address, connection and outstanding request. Each input
//! updates the model and queues [`Action`]s, which the shell takes with
//! [`Engine::poll_action`] and performs in order. Nothing here spawns, sleeps, locks or reads
//! a clock: time comes in as `now` and backoff jitter from a seeded generator, so unit tests
//! can drive the engine through any history (see `tests`).
//!
//! The work is split by topic: `slots` (endpoints, addresses, resolving and connecting),
//! `recheck` (early re-resolution after a loss), `replies` (applying frames), `refill`
//! (timeouts, silence, choosing connections, sizing refills: a LEASE, or on a version-2
//! connection a BULK_LEASE once the plan wants more than one LEASE from it), `latency`
//! (per-connection reply gaps).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use super::slots::{Dest, Endpoint, Slot, SlotState};
use crate::client::buffer::Block;
use crate::client::config::{ClientConfig, Target};
use crate::client::rate::RateEstimator;
use crate::client::{Error, IdRange};
use crate::layout::Layout;
use crate::wire::{Request, Response};

/// Identifies a connection for its whole life; never reused, so events from a connection
/// the engine already dropped are recognised and ignored.
pub(crate) type ConnId = u64;

/// Identifies a caller waiting for a direct lease; the shell holds its reply channel.
pub(crate) type CallerId = u64;

/// What the shell must do, in the order queued.
#[derive(Debug)]
pub(crate) enum Action {
    /// Open connection `conn` to `addr` (an address of endpoint `endpoint`): TCP, TLS if
    /// configured, HELLO; then report its frames and its end as `conn`.
    Connect {
        conn: ConnId,
        addr: SocketAddr,
        endpoint: usize,
    },
    /// Write a request on `conn`.
    Send { conn: ConnId, request: Request },
    /// Close `conn`; its later events are ignored.
    Close { conn: ConnId },
    /// Resolve endpoint `endpoint`'s name and report the addresses.
    Resolve { endpoint: usize, name: String },
    /// Verified IDs for the shared buffer.
    Buffer(Block),
    /// The blocks of one verified BULK_LEASED for the shared buffer, in order, pushed under
    /// one lock.
    BufferAll(Vec<Block>),
    /// Hand `range` to the caller of a direct lease; if it gave up, buffer `block` instead
    /// (the IDs are still good).
    Answer {
        caller: CallerId,
        range: IdRange,
        block: Block,
    },
    /// The servers' layout, from the first accepted WELCOME.
    Layout(Layout),
    /// The latest failure, for callers who time out.
    LastError(Error),
    /// Why `connect` should give up now (every server refused us for good), or `None`.
    Fatal(Option<Error>),
    /// Set the buffer's low-water trigger (0: do not wake the driver).
    Arm(u64),
    /// Wake callers waiting on the buffer: IDs arrived, a server greeted us, or a verdict.
    WakeWaiters,
}

/// The buffer as the shell saw it at the start of a pass, after dropping expired ranges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Level {
    /// IDs on hand.
    pub available: u64,
    /// IDs ever drawn (wrapping counter).
    pub drawn: u64,
}

/// A caller's request for one contiguous range straight from a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Direct {
    pub(super) caller: CallerId,
    pub(super) count: u32,
}

/// See the module docs.
#[derive(Debug)]
pub(crate) struct Engine {
    pub(super) config: ClientConfig,
    pub(super) endpoints: Vec<Endpoint>,
    pub(super) slots: Vec<Slot>,
    pub(super) next_conn_id: ConnId,
    /// End of the last range accepted from each worker id, across reconnects.
    pub(super) last_end: HashMap<u16, u64>,
    pub(super) rate: RateEstimator,
    pub(super) drawn_seen: u64,
    /// The draw rate (IDs/s) and the IDs on hand at the last refill pass.
    pub(super) rate_seen: f64,
    pub(super) available_seen: u64,
    pub(super) direct: VecDeque<Direct>,
    /// Where the search for a connection to load starts, so ties rotate.
    pub(super) cursor: usize,
    /// The layout of the first accepted WELCOME; every later server must match it.
    pub(super) layout: Option<Layout>,
    /// IDs were delivered since waiters were last woken.
    pub(super) delivered: bool,
    /// Expiry, timeout and rate period: `max_age / 8` within 1..=100 ms, so ranges are
    /// dropped between 7/8 and all of `max_age`, and timeouts are noticed within 100 ms.
    pub(super) tick: Duration,
    pub(super) next_tick: Instant,
    pub(super) rng: fastrand::Rng,
    actions: VecDeque<Action>,
}

impl Engine {
    /// An engine for these endpoints whose first pass at `now` starts resolving and
    /// connecting. `seed` drives the backoff jitter.
    pub fn new(config: ClientConfig, targets: Vec<Target>, now: Instant, seed: u64) -> Engine {
        let mut engine = Engine {
            tick: (config.max_age / 8).clamp(Duration::from_millis(1), Duration::from_millis(100)),
            config,
            endpoints: Vec::new(),
            slots: Vec::new(),
            next_conn_id: 1,
            last_end: HashMap::new(),
            rate: RateEstimator::new(now),
            drawn_seen: 0,
            rate_seen: 0.0,
            available_seen: 0,
            direct: VecDeque::new(),
            cursor: 0,
            layout: None,
            delivered: false,
            next_tick: now,
            rng: fastrand::Rng::with_seed(seed),
            actions: VecDeque::new(),
        };
        for target in targets {
            engine.add_endpoint(target, now);
        }
        engine
    }

    /// The next action for the shell, oldest first.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    pub(super) fn act(&mut self, action: Action) {
        self.actions.push_back(action);
    }

    /// A frame arrived on `conn`.
    pub fn on_frame(&mut self, conn: ConnId, frame: Response, now: Instant) {
        let Some(index) = self.slot_of(conn) else {
            return;
        };
        if let Err(why) = self.apply_frame(index, frame, now) {
            self.fail(index, why, now);
        }
    }

    /// `conn` ended; `why` is its last word.
    pub fn on_closed(&mut self, conn: ConnId, why: Error, now: Instant) {
        if let Some(index) = self.slot_of(conn) {
            self.fail(index, why, now);
        }
    }

    /// A caller asks for `count` consecutive IDs straight from a server.
    pub fn on_lease(&mut self, caller: CallerId, count: u32) {
        self.direct.push_back(Direct { caller, count });
    }

    /// The caller of a direct lease gave up: do not send its request, and buffer the reply
    /// of one already sent.
    pub fn on_caller_gone(&mut self, caller: CallerId) {
        self.direct.retain(|d| d.caller != caller);
        for conn in self.slots.iter_mut().filter_map(Slot::conn_mut) {
            for o in &mut conn.outstanding {
                if o.dest == Dest::Caller(caller) {
                    o.dest = Dest::Buffer;
                }
            }
        }
    }

    /// Ranges received at or before this instant will pass `max_age` before the next tick:
    /// the shell drops them from the buffer before it reads the [`Level`] for
    /// [`Engine::maintain`].
    pub fn expiry_cutoff(&self, now: Instant) -> Option<Instant> {
        now.checked_sub(self.config.max_age.saturating_sub(self.tick))
    }

    /// One pass after the inputs: time out dead connections, resolve and connect, notice
    /// silent connections, send direct leases, refill, and wake waiters if IDs arrived.
    pub fn maintain(&mut self, now: Instant, level: Level) {
        if now >= self.next_tick {
            self.time_out_dead_connections(now);
            self.next_tick = now + self.tick;
        }
        self.resolve_and_connect(now);
        self.notice_silence(now);
        self.send_direct(now);
        self.refill(now, level);
        if std::mem::take(&mut self.delivered) {
            self.act(Action::WakeWaiters);
        }
    }

    /// When [`Engine::maintain`] must run next even if nothing arrives.
    pub fn next_deadline(&self) -> Instant {
        let retries = self.slots.iter().filter_map(Slot::retry_at);
        let resolves = self
            .endpoints
            .iter()
            .filter(|e| matches!(e.target, Target::Name(_)) && !e.resolving)
            .flat_map(|e| [Some(e.next_resolve), e.recheck.map(|r| r.at)])
            .flatten();
        // A connection about to count as silent changes what is on the way.
        let cap = self.config.request_timeout;
        let silences = self
            .slots
            .iter()
            .filter_map(Slot::conn)
            .filter(|c| !c.silent)
            .filter_map(|c| c.silent_at(cap));
        // A drained connection can be asked again.
        let holds = self.slots.iter().filter_map(|s| s.conn()?.drained_until);
        retries
            .chain(resolves)
            .chain(silences)
            .chain(holds)
            .fold(self.next_tick, |a, b| a.min(b))
    }

    fn slot_of(&self, conn: ConnId) -> Option<usize> {
        self.slots.iter().position(|s| s.conn_id() == Some(conn))
    }

    /// Drops a slot's connection, hands its unanswered direct leases to other servers, and
    /// schedules a reconnect after a jittered backoff.
    pub(super) fn fail(&mut self, index: usize, why: Error, now: Instant) {
        self.recheck_soon(self.slots[index].endpoint, now);
        let slot = &mut self.slots[index];
        let SlotState::Live(conn) =
            std::mem::replace(&mut slot.state, SlotState::Waiting { retry_at: now })
        else {
            return;
        };
        // Unanswered requests consumed no IDs (protocol.md 5.7, 9.11): direct leases go to
        // another server; the buffer's (LEASE or BULK_LEASE) are asked again by the next
        // refill, which no longer counts them as on the way.
        for o in conn.outstanding.iter().rev() {
            if let Dest::Caller(caller) = o.dest {
                self.direct.push_front(Direct {
                    caller,
                    count: o.count,
                });
            }
        }
        let delay = self.config.backoff.delay_from(slot.failures, &mut self.rng);
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
        if !slot.listed {
            self.slots.remove(index);
        }
        self.act(Action::Close { conn: conn.id });
        self.act(Action::LastError(why));
        self.update_fatal();
    }

    /// Publishes a fatal error while no server is usable and every one of them refused us:
    /// for a reason retrying cannot fix, or, before any server ever greeted this client, by
    /// refusing the TCP connection (nothing listens there). `connect` then fails at once on
    /// a wrong token, a wrong port or something that is not a snowlease server, instead of
    /// after its whole timeout. Once a server has greeted us, a refusal is a restart in
    /// progress and callers wait for it as usual.
    fn update_fatal(&mut self) {
        let all_resolved = self
            .endpoints
            .iter()
            .all(|e| matches!(e.target, Target::Addr(_)) || e.resolved_at.is_some());
        let first_contact = self.layout.is_none();
        let refuses = |e: &Error| !e.is_retryable() || (first_contact && e.is_refused());
        let all_fatal = !self.slots.is_empty()
            && self.slots.iter().all(|s| {
                s.conn().is_none_or(|c| c.ready.is_none())
                    && s.last_error.as_ref().is_some_and(refuses)
            });
        let fatal = if all_resolved && all_fatal {
            self.slots.iter().find_map(|s| s.last_error.clone())
        } else {
            None
        };
        let changed = fatal.is_some();
        self.act(Action::Fatal(fatal));
        if changed {
            self.act(Action::WakeWaiters);
        }
    }
}
