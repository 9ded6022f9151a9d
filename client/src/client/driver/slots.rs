//! Servers as the driver tracks them: each configured endpoint, each address it resolves
//! to (a [`Slot`]), and the connection on that address with its outstanding LEASEs and
//! BULK_LEASEs.
//!
//! A slot is either live (a connection task exists) or waiting out a jittered backoff. A
//! waiting slot whose time has come first asks its endpoint for a fresh resolution (names
//! only; a Kubernetes headless Service may have replaced the pod), then reconnects if its
//! address is still listed. Addresses a resolution no longer lists are removed once their
//! connection ends; new ones get slots that connect at once. Names are resolved every
//! `resolve_interval`, and sooner after a loss (see `recheck`).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use super::engine::{Action, CallerId, ConnId, Engine};
use super::latency::Latency;
use super::recheck::Recheck;
use crate::client::config::Target;
use crate::client::verify::Greeting;
use crate::client::Error;

/// A configured endpoint.
#[derive(Debug)]
pub(super) struct Endpoint {
    pub(super) target: Target,
    pub(super) resolving: bool,
    /// When the last resolution finished (successfully or not).
    pub(super) resolved_at: Option<Instant>,
    pub(super) next_resolve: Instant,
    pub(super) failures: u32,
    /// Most of its connections that answered at once (see `recheck`).
    pub(super) peak: usize,
    /// Early re-resolutions after a loss, while it has fewer than `peak` answering.
    pub(super) recheck: Option<Recheck>,
}

/// One server address and its connection, if any.
#[derive(Debug)]
pub(super) struct Slot {
    pub(super) addr: SocketAddr,
    pub(super) endpoint: usize,
    /// Still in the endpoint's latest resolution; an unlisted slot is removed when its
    /// connection ends instead of reconnecting.
    pub(super) listed: bool,
    /// Failures since the last WELCOME; drives the backoff.
    pub(super) failures: u32,
    pub(super) last_error: Option<Error>,
    pub(super) state: SlotState,
}

#[derive(Debug)]
pub(super) enum SlotState {
    Waiting { retry_at: Instant },
    Live(Conn),
}

/// A connection as the engine sees it; the shell holds the socket.
#[derive(Debug)]
pub(super) struct Conn {
    pub(super) id: ConnId,
    /// Set by the WELCOME: the version, the home worker, the worker set and the limits.
    pub(super) ready: Option<Greeting>,
    /// GOAWAY reason: send nothing more, reconnect once the outstanding replies are in.
    pub(super) draining: Option<u16>,
    pub(super) outstanding: VecDeque<Outstanding>,
    pub(super) next_request_id: u32,
    /// When the connection last sent a frame (or was opened).
    pub(super) heard: Instant,
    /// How quickly it usually answers.
    pub(super) latency: Latency,
    /// Its silence was noticed (and acted on) and it has not answered since.
    pub(super) silent: bool,
    /// After a BULK_LEASED that carried less than asked (every worker of the server was at
    /// the end of its lead), refills skip this connection until then, so that the next
    /// request finds milliseconds already open instead of waiting in the server for each
    /// one (see `refill::bulk_hold`).
    pub(super) drained_until: Option<Instant>,
}

impl Conn {
    /// When this connection counts as silent unless a frame arrives first: its usual quiet
    /// limit after it was last heard from or its oldest request was sent, whichever is later.
    /// `None` while nothing is outstanding (an idle connection owes nothing).
    pub(super) fn silent_at(&self, cap: Duration) -> Option<Instant> {
        let oldest = self.outstanding.front()?;
        Some(self.heard.max(oldest.sent) + self.latency.limit(cap))
    }

    /// Whether the connection has owed a reply for longer than usual.
    pub(super) fn is_silent(&self, now: Instant, cap: Duration) -> bool {
        self.silent_at(cap).is_some_and(|t| now >= t)
    }

    /// Ready for another LEASE: greeted, not draining, below `max_in_flight`, answering.
    pub(super) fn usable(&self, max_in_flight: usize, now: Instant, cap: Duration) -> bool {
        self.ready.is_some()
            && self.draining.is_none()
            && self.outstanding.len() < max_in_flight
            && !self.is_silent(now, cap)
    }
}

#[derive(Debug)]
pub(super) struct Outstanding {
    pub(super) request_id: u32,
    pub(super) count: u32,
    /// A BULK_LEASE (its runs always go to the buffer), not a LEASE.
    pub(super) bulk: bool,
    pub(super) sent: Instant,
    pub(super) dest: Dest,
}

/// Where a LEASE's range goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Dest {
    Buffer,
    Caller(CallerId),
}

impl Slot {
    pub(super) fn new(addr: SocketAddr, endpoint: usize, now: Instant) -> Slot {
        Slot {
            addr,
            endpoint,
            listed: true,
            failures: 0,
            last_error: None,
            state: SlotState::Waiting { retry_at: now },
        }
    }

    pub(super) fn conn(&self) -> Option<&Conn> {
        match &self.state {
            SlotState::Live(c) => Some(c),
            SlotState::Waiting { .. } => None,
        }
    }

    pub(super) fn conn_mut(&mut self) -> Option<&mut Conn> {
        match &mut self.state {
            SlotState::Live(c) => Some(c),
            SlotState::Waiting { .. } => None,
        }
    }

    pub(super) fn conn_id(&self) -> Option<ConnId> {
        self.conn().map(|c| c.id)
    }

    pub(super) fn retry_at(&self) -> Option<Instant> {
        match self.state {
            SlotState::Waiting { retry_at } => Some(retry_at),
            SlotState::Live(_) => None,
        }
    }
}

impl Engine {
    pub(super) fn resolve_and_connect(&mut self, now: Instant) {
        for index in 0..self.endpoints.len() {
            let ep = &self.endpoints[index];
            let Target::Name(name) = &ep.target else {
                continue;
            };
            if ep.resolving {
                continue;
            }
            let name = name.clone();
            // A slot due to reconnect wants addresses newer than its failure.
            let stale_for_slot = self.slots.iter().any(|s| {
                s.endpoint == index
                    && s.retry_at()
                        .is_some_and(|t| t <= now && ep.resolved_at.is_none_or(|r| r < t))
            });
            let due = now >= ep.next_resolve || stale_for_slot;
            if self.recheck_due(index, now) || due {
                self.start_resolve(index, name);
            }
        }
        for index in 0..self.slots.len() {
            let slot = &self.slots[index];
            let Some(retry_at) = slot.retry_at() else {
                continue;
            };
            let ep = &self.endpoints[slot.endpoint];
            let fresh = match ep.target {
                Target::Addr(_) => true,
                Target::Name(_) => ep.resolved_at.is_some_and(|r| r >= retry_at),
            };
            if retry_at <= now && fresh {
                self.connect(index, now);
            }
        }
    }

    fn start_resolve(&mut self, index: usize, name: String) {
        self.endpoints[index].resolving = true;
        self.act(Action::Resolve {
            endpoint: index,
            name,
        });
    }

    pub(super) fn on_resolved(
        &mut self,
        index: usize,
        result: Result<Vec<SocketAddr>, Error>,
        now: Instant,
    ) {
        let ep = &mut self.endpoints[index];
        ep.resolving = false;
        ep.resolved_at = Some(now);
        let addrs = match result {
            Ok(addrs) => addrs,
            Err(why) => {
                // Keep the addresses we have; DNS blips should not cut working servers off.
                let delay = self.config.backoff.delay_from(ep.failures, &mut self.rng);
                ep.failures = ep.failures.saturating_add(1);
                ep.next_resolve = now + delay;
                warn!(error = %why, retry_in = ?delay, "resolution failed");
                self.act(Action::LastError(why));
                return;
            }
        };
        ep.failures = 0;
        ep.next_resolve = now + self.config.resolve_interval;
        for slot in self.slots.iter_mut().filter(|s| s.endpoint == index) {
            slot.listed = addrs.contains(&slot.addr);
        }
        self.slots
            .retain(|s| s.listed || s.endpoint != index || s.conn().is_some());
        for addr in addrs {
            if !self.slots.iter().any(|s| s.addr == addr) {
                debug!(%addr, "new server address");
                self.slots.push(Slot::new(addr, index, now));
            }
        }
    }

    fn connect(&mut self, index: usize, now: Instant) {
        let id = self.next_conn_id;
        self.next_conn_id += 1;
        let slot = &mut self.slots[index];
        slot.state = SlotState::Live(Conn {
            id,
            ready: None,
            draining: None,
            outstanding: VecDeque::new(),
            next_request_id: 1,
            heard: now,
            latency: Latency::default(),
            silent: false,
            drained_until: None,
        });
        let (addr, endpoint) = (slot.addr, slot.endpoint);
        self.act(Action::Connect {
            conn: id,
            addr,
            endpoint,
        });
    }

    pub(super) fn add_endpoint(&mut self, target: Target, now: Instant) {
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
            peak: 0,
            recheck: None,
        });
    }
}
